"""Training-step time of the `shapes-beta` conv VAE: scan vs step loop, native vs sub-pixel deconvs.

    .venv/bin/python benchmarks/conv_speed.py [--steps 6]

Two measures make conv training usable on CPU (docs/architecture.md):

1. `train.loop=steps`: a chunk as a host loop of jitted steps instead of one `lax.scan`
   (XLA CPU runs convolutions inside a loop body much slower, jax-ml/jax#12868);
2. the decoder's 4x4 stride-2 transposed convolutions in sub-pixel form on CPU
   (`vaekit.nets.conv.conv_transpose`).

Prints seconds per optimizer step (batch 64, after compilation) of the whole trainer for both
loops, and the decoder's gradient time with `nnx.ConvTranspose` against the sub-pixel form.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import vaekit  # noqa: F401  (first: its XLA CPU settings must be in place before JAX starts)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import seconds_per_step  # noqa: E402


def trainer_step_seconds(loop: str, steps: int) -> float:
    import vaekit

    cfg = vaekit.resolve("shapes-beta", None, ["data.val_size=100", f"train.loop={loop}", f"train.chunk_steps={steps}"])
    return seconds_per_step(cfg, steps)


def decoder_grad_seconds(native: bool, repeats: int = 5) -> float:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    import vaekit
    from vaekit.models import build_model
    from vaekit.nets import conv

    cfg = vaekit.resolve("shapes-beta", None, [])
    model = build_model(cfg, (64, 64, 1), num_classes=None, rngs=nnx.Rngs(0))
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    z = jax.random.normal(jax.random.PRNGKey(0), (64, cfg.model.latent_dim))
    original = conv.conv_transpose
    if native:
        conv.conv_transpose = lambda layer, x: layer(x)
    try:
        grad = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p, rest, copy=True).decoder(z) ** 2)))
        jax.block_until_ready(grad(params))
        t0 = time.perf_counter()
        for _ in range(repeats):
            jax.block_until_ready(grad(params))
        return (time.perf_counter() - t0) / repeats
    finally:
        conv.conv_transpose = original


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per loop kind")
    args = p.parse_args()
    import jax

    print(f"shapes-beta, batch 64, backend {jax.default_backend()}, {time.strftime('%Y-%m-%d')}")
    native, sub = decoder_grad_seconds(True), decoder_grad_seconds(False)
    print(f"decoder gradient: nnx.ConvTranspose {native * 1e3:.0f} ms, sub-pixel {sub * 1e3:.0f} ms "
          f"({native / sub:.1f}x)")
    scan, loop = trainer_step_seconds("scan", args.steps), trainer_step_seconds("steps", args.steps)
    print(f"trainer step (sub-pixel decoder): lax.scan chunk {scan:.3f} s, jitted-step loop {loop:.3f} s "
          f"({scan / loop:.1f}x)")


if __name__ == "__main__":
    main()
