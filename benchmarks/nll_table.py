"""Test NLL of the richer-posterior and richer-prior presets next to the plain VAE and the papers.

    .venv/bin/python benchmarks/nll_table.py --epochs 30                       # every preset, 30 epochs each
    .venv/bin/python benchmarks/nll_table.py --minutes 20                      # equal wall-clock budget per preset
    .venv/bin/python benchmarks/nll_table.py --presets mnist-mlp mnist-iaf --epochs 5 --limit 1000 --samples 500

Each preset is trained with dynamic binarization and scored by `vaekit evaluate` at k importance
samples on the first `--limit` test images (all 10,000 by default). With `--minutes`, each preset
first measures its epoch time in a one-epoch run and then trains as many epochs as fit the budget.
The published rows are as the papers report them (dynamically binarized MNIST unless noted).
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

PRESETS = ("mnist-mlp", "mnist-hvae", "mnist-ladder", "mnist-planar", "mnist-iaf", "mnist-vamp")
PUBLISHED = [
    ("Burda et al. 2015", "VAE, 1 stochastic layer", 86.76),
    ("Burda et al. 2015", "VAE, 2 stochastic layers", 85.33),
    ("Burda et al. 2015", "IWAE k=50, 2 stochastic layers", 82.90),
    ("Rezende and Mohamed 2015", "planar flow K=80", 85.10),
    ("Tomczak and Welling 2018", "VAE + VampPrior", 85.57),
    ("Tomczak and Welling 2018", "HVAE + VampPrior", 83.19),
    ("Sønderby et al. 2016", "LVAE", 81.74),
    ("Kingma et al. 2016", "IAF", 79.10),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--minutes", type=float, help="train each preset for this wall-clock budget instead of --epochs")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--limit", type=int)
    p.add_argument("--runs-dir")
    p.add_argument("--json")
    args = p.parse_args()

    import jax

    import vaekit
    from vaekit.evaluate import evaluate

    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vaekit-nll-table-"))
    rows = []
    for preset in args.presets:
        epochs = args.epochs
        if args.minutes:
            t0 = time.perf_counter()
            vaekit.train(vaekit.resolve(preset, None, ["train.epochs=1"]), runs_dir=runs, name=f"{preset}-probe",
                         progress=False, overwrite=True)
            epochs = max(1, math.floor(args.minutes * 60 / (time.perf_counter() - t0)))
        cfg = vaekit.resolve(preset, None, [f"train.epochs={epochs}"])
        t0 = time.perf_counter()
        run_dir = vaekit.train(cfg, runs_dir=runs, name=preset, progress=False, overwrite=True)
        train_s = time.perf_counter() - t0
        r = evaluate(vaekit.load_run(run_dir), samples=args.samples, limit=args.limit, progress=False)
        rows.append(dict(r, preset=preset, epochs=epochs, train_seconds=train_s))
        print(f"{preset}: {epochs} epochs, {train_s:.0f} s, NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f}", flush=True)

    device = jax.devices()[0].device_kind
    print(f"\nMNIST test NLL (k = {args.samples}, {rows[0]['examples']} test images, dynamic binarization), "
          f"{time.strftime('%Y-%m-%d')}, {device}\n")
    print("| model | epochs | train (s) | NLL (nats) | ELBO | IWAE k=50 | active units |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        au = f"{r['active_units']}/{r['latent_dim']}" if "active_units" in r else ""
        print(f"| vaekit `{r['preset']}` | {r['epochs']} | {r['train_seconds']:.0f} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} "
              f"| {r['elbo']:.2f} | {r['iwae_k50']:.2f} | {au} |")
    for paper, model, nll in PUBLISHED:
        print(f"| {paper}: {model} | | | {nll:.2f} | | | |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": device, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
