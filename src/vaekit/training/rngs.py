"""The RNG streams a model's `loss` receives, split from one key per step or batch (training,
validation and the likelihood estimates alike)."""

from __future__ import annotations

import jax
from flax import nnx

RNG_STREAMS = ("sample", "dropout", "noise")


def step_rngs(key: jax.Array) -> nnx.Rngs:
    """The model's RNG streams for one step or batch, split from one key."""
    return nnx.Rngs(**dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS)))))


__all__ = ["RNG_STREAMS", "step_rngs"]
