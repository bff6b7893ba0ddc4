"""Test NLL of `mnist-mlp` (k = 5000 importance samples) next to Pythae 0.1.2 and the IWAE paper.

    .venv/bin/python benchmarks/mnist_nll.py --epochs 10            # static binarization, with the peer
    .venv/bin/python benchmarks/mnist_nll.py --preset mnist-nll-budget --skip-peer   # dynamic, 121 epochs

Side by side (same run, same epochs, same statically binarized data): vaekit and Pythae each train
the 784-200-200-50 tanh VAE, then both are scored with k = 1000 on the first 1,000 test images
(Pythae's own `get_nll`, vaekit's `evaluate`); vaekit is also scored with k = 5000 on all 10,000
test images, the protocol of Burda et al. 2015 (VAE, one stochastic layer: 86.76 nats after
3,280 epochs with dynamic binarization).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import run_peer  # noqa: E402

PAPER_NLL = 86.76


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="mnist-mlp")
    p.add_argument("--epochs", type=int, help="override the preset's epochs")
    p.add_argument("--binarize", default=None, help="override data.binarize (default: static with the peer)")
    p.add_argument("--samples", type=int, default=5000)
    p.add_argument("--skip-peer", action="store_true")
    p.add_argument("--runs-dir", default=None, help="keep the run here (default: a temporary directory)")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()

    import vaekit
    from vaekit.evaluate import evaluate

    binarize = args.binarize or ("dynamic" if args.skip_peer else "static")
    overrides = [f"data.binarize={binarize}"] + ([f"train.epochs={args.epochs}"] if args.epochs else [])
    cfg = vaekit.resolve(args.preset, None, overrides)
    runs = Path(args.runs_dir or tempfile.mkdtemp(prefix="vaekit-nll-"))
    t0 = time.perf_counter()
    run_dir = vaekit.train(cfg, runs_dir=runs, name=f"{args.preset}-{binarize}-{cfg.train.epochs}ep", progress=False)
    train_s = time.perf_counter() - t0
    run = vaekit.load_run(run_dir)
    full = evaluate(run, samples=args.samples, progress=False)
    small = evaluate(run, samples=1000, limit=1000, progress=False)
    peer = None
    if not args.skip_peer:
        peer = run_peer({"epochs": cfg.train.epochs, "nll_samples": 1000, "nll_limit": 1000, "quiet": True})

    print(f"\nMNIST test NLL, {args.preset}, {cfg.train.epochs} epochs, {binarize} binarization, "
          f"{time.strftime('%Y-%m-%d')}")
    print(f"vaekit training: {train_s:.0f} s (incl. validation, checkpoints, pictures)")
    print(f"{'model':<34}{'NLL (nats)':>12}{'k':>6}{'test images':>13}{'time (s)':>10}")
    print(f"{'vaekit':<34}{full['nll']:>8.2f}±{full['nll_stderr']:.2f}{args.samples:>6}{full['examples']:>13}"
          f"{full['seconds']:>10.1f}")
    print(f"{'vaekit':<34}{small['nll']:>12.2f}{1000:>6}{small['examples']:>13}{small['seconds']:>10.1f}")
    if peer:
        print(f"{'pythae 0.1.2 (get_nll)':<34}{peer['nll']:>12.2f}{peer['nll_k']:>6}{peer['nll_n']:>13}"
              f"{peer['nll_seconds']:>10.1f}")
    print(f"{'Burda et al. 2015 (3,280 epochs)':<34}{PAPER_NLL:>12.2f}{5000:>6}{10000:>13}{'':>10}")
    print(f"vaekit ELBO {full['elbo']:.2f}, IWAE k=5 {full['iwae_k5']:.2f}, k=50 {full['iwae_k50']:.2f}, "
          f"active units {full['active_units']}/50")
    if args.json:
        Path(args.json).write_text(json.dumps({"config": cfg.to_dict(), "train_seconds": train_s, "vaekit_full": full,
                                               "vaekit_k1000_n1000": small, "peer": peer}, indent=2))


if __name__ == "__main__":
    main()
