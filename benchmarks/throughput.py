"""Training throughput of `mnist-mlp` (vaekit) next to Pythae 0.1.2, measured in the same run.

    .venv/bin/python benchmarks/throughput.py [--epochs 2] [--skip-peer]

Both train the 784-200-200-50 tanh VAE, Bernoulli likelihood, Adam 1e-3, batch 100, on statically
binarized MNIST (50,000 training images, 10,000 validation images evaluated every epoch). The first
epoch (compilation for vaekit, allocator warm-up for torch) is excluded; examples/s counts training
images per second of training time, and "epoch" adds the validation pass. The machine's limit is a
2048x2048 float32 matmul's FLOP/s measured in the same run; the fraction printed is
FLOPs/example x examples/s over that.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import matmul_flops_per_s, mlp_vae_flops_per_example, run_peer  # noqa: E402


def vaekit_throughput(epochs: int, seed: int = 0) -> dict:
    from vaekit import config as config_lib
    from vaekit.data import load_data
    from vaekit.train import Trainer

    cfg = config_lib.resolve("mnist-mlp", None, ["data.binarize=static", f"train.seed={seed}", f"train.epochs={epochs}"])
    splits = load_data("mnist", binarize="static", seed=seed)
    trainer = Trainer(cfg, splits)
    per_epoch = []
    for _ in range(epochs):
        m = trainer.fit_epoch()
        t0 = time.perf_counter()
        v = trainer.validate()
        per_epoch.append((m["train/seconds"], time.perf_counter() - t0, m, v))
    timed = per_epoch[1:] if epochs > 1 else per_epoch
    train_s = sum(t for t, _, _, _ in timed) / len(timed)
    val_s = sum(v for _, v, _, _ in timed) / len(timed)
    n = trainer.steps_per_epoch * cfg.train.batch_size
    return {
        "examples_per_s": n / train_s,
        "epoch_examples_per_s": (n + len(splits.val["x"])) / (train_s + val_s),
        "train_seconds": train_s,
        "val_seconds": val_s,
        "first_epoch_seconds": per_epoch[0][0],
        "val_neg_elbo": -float(per_epoch[-1][3]["val/elbo"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per library; the first is excluded (default 2)")
    p.add_argument("--skip-peer", action="store_true", help="measure vaekit and the matmul only")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()

    flops_peak = matmul_flops_per_s()
    ours = vaekit_throughput(args.epochs)
    peer = None if args.skip_peer else run_peer({"epochs": args.epochs, "quiet": True})
    flops_peak_after = matmul_flops_per_s()
    peak = max(flops_peak, flops_peak_after)
    per_example = mlp_vae_flops_per_example()

    rows = [("vaekit", ours)] + ([("pythae 0.1.2", peer)] if peer else [])
    print(f"\nmnist-mlp training throughput, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}")
    print(f"matmul 2048^3 float32: {flops_peak / 1e9:.1f} GFLOP/s before, {flops_peak_after / 1e9:.1f} after")
    print(f"{'library':<14}{'train ex/s':>12}{'epoch ex/s':>12}{'x peer':>8}{'% of matmul':>13}{'val -ELBO':>11}")
    for name, r in rows:
        ratio = r["examples_per_s"] / peer["examples_per_s"] if peer else float("nan")
        frac = per_example * r["examples_per_s"] / peak
        print(f"{name:<14}{r['examples_per_s']:>12,.0f}{r['epoch_examples_per_s']:>12,.0f}{ratio:>8.2f}"
              f"{100 * frac:>12.1f}%{r['val_neg_elbo']:>11.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"vaekit": ours, "peer": peer, "matmul_flops": [flops_peak, flops_peak_after],
                                               "flops_per_example": per_example}, indent=2))


if __name__ == "__main__":
    main()
