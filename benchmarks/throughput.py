"""Training throughput of `mnist-mlp` (vaekit) next to Pythae 0.1.2 and a plain PyTorch loop, in one run.

    .venv/bin/python benchmarks/throughput.py [--epochs 2] [--skip-peer] [--skip-torch] [--json out.json]

All train the 784-200-200-50 tanh VAE, Bernoulli likelihood, Adam 1e-3, batch 100, on MNIST (50,000
training images, 10,000 validation images evaluated every epoch): vaekit and Pythae on statically
binarized images (Pythae's trainer takes a fixed data set), the plain PyTorch loop
(`peers/torch_plain.py --model mlp`, eager, torch.optim.Adam) with a fresh binarization of every
batch as the preset does. The first epoch (compilation for vaekit, allocator warm-up for torch) is
excluded; examples/s counts training images per second of training time, and "epoch" adds the
validation pass. The machine's limit is a 2048x2048 float32 matmul's FLOP/s measured in the same
run; the fraction printed is FLOPs/example x examples/s over that. "bare MLP step" is the ceiling
of the MLP itself: a jitted, scanned gradient step of the same six dense layers (mean squared
error, plain SGD, no sampling, no metrics), 100 steps per call. Every result records the CPU model
and flags from /proc/cpuinfo.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    TORCH_PEER,
    cpu_busy,
    cpu_flags_summary,
    cpu_info,
    matmul_flops_per_s,
    mlp_vae_flops_per_example,
    run_peer,
)


def vaekit_throughput(epochs: int, seed: int = 0) -> dict:
    from vaekit import config as config_lib
    from vaekit.data import load_data
    from vaekit.training.loop import Trainer

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
    n = trainer.epoch_steps * cfg.train.batch_size
    return {
        "examples_per_s": n / train_s,
        "epoch_examples_per_s": (n + len(splits.val["x"])) / (train_s + val_s),
        "train_seconds": train_s,
        "val_seconds": val_s,
        "first_epoch_seconds": per_epoch[0][0],
        "val_neg_elbo": -float(per_epoch[-1][3]["val/elbo"]),
    }


def bare_mlp_examples_per_s(batch: int = 100, steps: int = 100, repeats: int = 5) -> float:
    """Examples/s of a bare jitted MLP gradient step (the six dense layers of mnist-mlp, tanh, MSE, SGD).

    No VAE sampling, likelihood, Adam or metrics: the ceiling the MLP's matmuls set on this machine.
    `steps` steps run in one `lax.scan` per call; the best of `repeats` calls counts.
    """
    import jax
    import jax.numpy as jnp

    sizes = [(784, 200), (200, 200), (200, 100), (50, 200), (200, 200), (200, 784)]
    keys = jax.random.split(jax.random.key(0), len(sizes) + 1)
    params = [(jax.random.normal(k, s) / jnp.sqrt(s[0]), jnp.zeros(s[1])) for k, s in zip(keys, sizes)]
    x = (jax.random.uniform(keys[-1], (steps, batch, 784)) < 0.3).astype(jnp.float32)

    def loss(params, xb):
        h = xb
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            if i == 2:
                h = h[:, :50]  # the mean half feeds the decoder, as the VAE's mean does
            elif i != len(params) - 1:
                h = jnp.tanh(h)
        return jnp.mean((h - xb) ** 2)

    @jax.jit
    def run(params, x):
        def step(p, xb):
            g = jax.grad(loss)(p, xb)
            return jax.tree.map(lambda a, b: a - 1e-3 * b, p, g), None

        return jax.lax.scan(step, params, x)[0]

    jax.block_until_ready(run(params, x))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(params, x))
        best = min(best, time.perf_counter() - t0)
    return steps * batch / best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2, help="epochs per library; the first is excluded (default 2)")
    p.add_argument("--skip-peer", action="store_true", help="measure vaekit and the matmul only (no Pythae, no torch)")
    p.add_argument("--skip-torch", action="store_true", help="leave out the plain PyTorch loop")
    p.add_argument("--json", help="write all numbers here")
    args = p.parse_args()

    info = cpu_info()
    busy_before = cpu_busy()
    flops_peak = matmul_flops_per_s()
    bare = bare_mlp_examples_per_s()
    ours = vaekit_throughput(args.epochs)
    peer = None if args.skip_peer else run_peer({"epochs": args.epochs, "quiet": True})
    plain = None if args.skip_peer or args.skip_torch else run_peer({"model": "mlp", "epochs": args.epochs, "quiet": True},
                                                                     script=TORCH_PEER)
    flops_peak_after = matmul_flops_per_s()
    peak = max(flops_peak, flops_peak_after)
    per_example = mlp_vae_flops_per_example()

    rows = [("vaekit", ours)] + ([("pythae 0.1.2", peer)] if peer else []) + ([("plain torch", plain)] if plain else [])
    print(f"\nmnist-mlp training throughput, {time.strftime('%Y-%m-%d')}, {platform.machine()}")
    print(f"CPU: {info['model']}, {info['cores']} cores, {cpu_flags_summary(info['flags'])} "
          f"(others busy {100 * busy_before:.0f}% before the run)")
    print(f"matmul 2048^3 float32: {flops_peak / 1e9:.1f} GFLOP/s before, {flops_peak_after / 1e9:.1f} after")
    print(f"{'library':<14}{'train ex/s':>12}{'epoch ex/s':>12}{'x pythae':>10}{'x torch':>9}{'% of matmul':>13}"
          f"{'val -ELBO':>11}")
    for name, r in rows:
        ratio = r["examples_per_s"] / peer["examples_per_s"] if peer else float("nan")
        ratio_t = r["examples_per_s"] / plain["examples_per_s"] if plain else float("nan")
        frac = per_example * r["examples_per_s"] / peak
        print(f"{name:<14}{r['examples_per_s']:>12,.0f}{r['epoch_examples_per_s']:>12,.0f}{ratio:>10.2f}{ratio_t:>9.2f}"
              f"{100 * frac:>12.1f}%{r['val_neg_elbo']:>11.2f}")
    print(f"{'bare MLP step':<14}{bare:>12,.0f}{'':>12}{'':>10}{'':>9}{100 * per_example * bare / peak:>12.1f}%"
          f"   (ceiling: jitted dense layers only)")
    if args.json:
        Path(args.json).write_text(json.dumps({"vaekit": ours, "peer": peer, "torch_plain": plain,
                                               "bare_mlp_examples_per_s": bare,
                                               "matmul_flops": [flops_peak, flops_peak_after],
                                               "flops_per_example": per_example, "cpu": info,
                                               "busy_before": busy_before, "date": time.strftime("%Y-%m-%d")},
                                              indent=2))


if __name__ == "__main__":
    main()
