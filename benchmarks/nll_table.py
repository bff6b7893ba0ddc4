"""Test NLL of the richer-posterior and richer-prior presets next to the plain VAE and the papers.

    .venv/bin/python benchmarks/nll_table.py --epochs 30                       # every preset, 30 epochs each
    .venv/bin/python benchmarks/nll_table.py --minutes 20 --set train.lr_schedule=cosine --set train.adam_eps=1e-4
    .venv/bin/python benchmarks/nll_table.py --presets mnist-mlp mnist-iaf --epochs 5 --limit 1000 --samples 500

Each preset is trained with dynamic binarization and scored by `vaekit evaluate` at k importance
samples on the first `--limit` test images (all 10,000 by default). With `--minutes`, each preset
first measures its epoch time: a one-epoch and a six-epoch run fill the compilation cache (a
learning-rate schedule over the run compiles the run's length into the step, so each length is its
own program), then the difference of another one-epoch and six-epoch run, over 5, is the time of
an epoch without start-up or compilation. It then trains as many epochs as fit the budget: a fixed
epoch count, so that other work on the machine can only slow the run down, not change its result.
`--set` overrides apply to every preset alike. The JSON is rewritten after every preset.

Probes measure well only on a quiet machine. So the budget can be fixed in two steps: probe every
preset first (`--minutes 20 --probe-only`, nothing else running), then train with the epoch counts
it printed (`--epochs-of mnist-iaf=600 ...`), while the machine does other work if it must.
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


def preset_epochs(text: str) -> tuple[str, int]:
    """argparse type of --epochs-of: "mnist-iaf=544" -> ("mnist-iaf", 544)."""
    preset, _, epochs = text.partition("=")
    if not preset or not epochs.isdigit() or int(epochs) < 1:
        raise argparse.ArgumentTypeError(f"expected PRESET=EPOCHS with EPOCHS a positive integer, got '{text}'")
    return preset, int(epochs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--minutes", type=float, help="train each preset for this wall-clock budget instead of --epochs")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--limit", type=int)
    p.add_argument("--runs-dir")
    p.add_argument("--json")
    p.add_argument("--probe-only", action="store_true", help="with --minutes: print each preset's epochs and stop")
    p.add_argument("--epochs-of", action="append", default=[], type=preset_epochs, metavar="PRESET=EPOCHS",
                   help="train PRESET for EPOCHS epochs, without a probe (repeatable)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a config override applied to every preset (repeatable)")
    args = p.parse_args()

    import jax

    import vaekit
    from common import cpu_info
    from vaekit.evaluate import evaluate

    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vaekit-nll-table-"))
    device = jax.devices()[0].device_kind
    machine = cpu_info()["model"] if jax.default_backend() == "cpu" else device
    out = {"device": device, "machine": machine, "date": time.strftime("%Y-%m-%d"), "overrides": args.overrides,
           "minutes": args.minutes, "rows": []}
    rows = out["rows"]

    def record(row: dict) -> None:
        rows.append(row)
        if args.json:
            Path(args.json).write_text(json.dumps(out, indent=2))

    def trained(preset: str, epochs: int, name: str) -> tuple[Path, float]:
        cfg = vaekit.resolve(preset, None, [*args.overrides, f"train.epochs={epochs}"])
        t0 = time.perf_counter()
        run_dir = vaekit.train(cfg, runs_dir=runs, name=name, progress=False, overwrite=True)
        return run_dir, time.perf_counter() - t0

    fixed = dict(args.epochs_of)
    for preset in args.presets:
        epochs, epoch_s = fixed.get(preset, args.epochs), None
        if args.minutes and preset not in fixed:
            for n in (1, 6):  # both lengths once, so that neither timed run includes a compilation
                trained(preset, n, f"{preset}-probe")
            one, six = (trained(preset, n, f"{preset}-probe")[1] for n in (1, 6))
            epoch_s = max(six - one, 1e-3) / 5
            epochs = max(1, math.floor(args.minutes * 60 / epoch_s))
            print(f"{preset}: {epoch_s:.2f} s an epoch -> {epochs} epochs", flush=True)
            if args.probe_only:
                record({"preset": preset, "probe_epoch_seconds": epoch_s, "epochs": epochs})
                continue
        run_dir, train_s = trained(preset, epochs, preset)
        r = evaluate(vaekit.load_run(run_dir), samples=args.samples, limit=args.limit, progress=False)
        record(dict(r, preset=preset, epochs=epochs, probe_epoch_seconds=epoch_s, train_seconds=train_s))
        print(f"{preset}: {epochs} epochs, {train_s:.0f} s, NLL {r['nll']:.2f} ± {r['nll_stderr']:.2f}", flush=True)

    if args.probe_only:
        print(" ".join(f"--epochs-of {r['preset']}={r['epochs']}" for r in rows))
        return
    print(f"\nMNIST test NLL (k = {args.samples}, {rows[0]['examples']} test images, dynamic binarization), "
          f"{out['date']}, {machine}; overrides for every preset: {' '.join(args.overrides) or 'none'}\n")
    print("| model | epochs | train (s) | NLL (nats) | ELBO | IWAE k=50 | active units |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        au = f"{r['active_units']}/{r['latent_dim']}" if "active_units" in r else ""
        print(f"| vaekit `{r['preset']}` | {r['epochs']} | {r['train_seconds']:.0f} | {r['nll']:.2f} ± {r['nll_stderr']:.2f} "
              f"| {r['elbo']:.2f} | {r['iwae_k50']:.2f} | {au} |")
    for paper, model, nll in PUBLISHED:
        print(f"| {paper}: {model} | | | {nll:.2f} | | | |")


if __name__ == "__main__":
    main()
