"""VAE (k = 1) against IWAE training (k = 5, 50) on `mnist-mlp`: same epochs, same seed.

    .venv/bin/python benchmarks/objectives.py --epochs 10 --limit 2000

Each model trains with dynamic binarization, then `vaekit evaluate` scores the test split with
k = 5000 (the first `--limit` images). Beside the one-layer rows of Burda et al. 2015, Table 1
(VAE 86.76, IWAE k=5 85.54, IWAE k=50 84.78 nats, after 3,280 epochs).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

PAPER = {1: 86.76, 5: 85.54, 50: 84.78}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--ks", default="1,5,50", help="IWAE k values to train (1 = the plain VAE)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--limit", type=int, default=None, help="score the first N test images (default: all)")
    p.add_argument("--json")
    args = p.parse_args()

    import vaekit
    from vaekit.evaluate import evaluate

    runs = Path(tempfile.mkdtemp(prefix="vaekit-obj-"))
    rows = []
    for k in [int(v) for v in args.ks.split(",")]:
        kind = ["objective.kind=elbo"] if k == 1 else ["objective.kind=iwae", f"objective.iwae_k={k}"]
        cfg = vaekit.resolve("mnist-mlp", None, [f"train.epochs={args.epochs}", *kind])
        t0 = time.perf_counter()
        run_dir = vaekit.train(cfg, runs_dir=runs, name=f"k{k}", progress=False)
        train_s = time.perf_counter() - t0
        s = evaluate(vaekit.load_run(run_dir), samples=args.samples, limit=args.limit, progress=False)
        rows.append({"k": k, "train_seconds": train_s, **s})
        print(f"k={k}: trained {train_s:.0f} s, NLL {s['nll']:.2f}, active units {s['active_units']}", flush=True)

    print(f"\nmnist-mlp, {args.epochs} epochs, dynamic binarization, seed 0, {time.strftime('%Y-%m-%d')}; "
          f"NLL with k = {args.samples} on {rows[0]['examples']} test images")
    print(f"{'objective':<14}{'NLL':>14}{'ELBO':>10}{'active units':>14}{'train s':>9}{'paper NLL':>11}")
    for r in rows:
        name = "VAE (k=1)" if r["k"] == 1 else f"IWAE k={r['k']}"
        print(f"{name:<14}{r['nll']:>8.2f}±{r['nll_stderr']:.2f}{r['elbo']:>10.2f}{r['active_units']:>10}/50"
              f"{r['train_seconds']:>9.0f}{PAPER.get(r['k'], float('nan')):>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
