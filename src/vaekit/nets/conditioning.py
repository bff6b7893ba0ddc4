"""How a condition c (a one-hot label, (N, K)) enters an encoder or a decoder.

Three modes, set by a conditional model's `model.condition`:

- "concat": c is concatenated to the input (to the flattened data of an MLP encoder, as K
  constant channels to a conv encoder's image, to z for a decoder). Sohn et al. 2015.
- "film": after every hidden layer, h <- h * (1 + gamma(c)) + beta(c), per feature or channel,
  with gamma and beta a linear function of c (Perez et al. 2018).
- "cbn": conditional BatchNorm: every hidden layer is batch-normalized without an affine part,
  then scaled and shifted by per-class gamma and beta (initialized to 1 and 0; de Vries et al.
  2017). In an MLP this adds a BatchNorm to every hidden layer.

A net receives `cond_dim` (K, or 0 for an unconditional net) and the mode; `hidden_conditioner`
returns the module applied after each hidden layer, or None for "concat" and unconditional nets.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.nets.cpu_conv import batch_norm

MODES = ("concat", "film", "cbn")


def _per_feature(v: jax.Array, h: jax.Array) -> jax.Array:
    """(N..., F) condition values reshaped to broadcast against h (N..., [spatial...], F)."""
    extra = h.ndim - v.ndim
    return v.reshape(*v.shape[:-1], *([1] * extra), v.shape[-1])


class FiLM(nnx.Module):
    """h * (1 + gamma(c)) + beta(c) with [gamma, beta] = Linear(c)."""

    def __init__(self, cond_dim: int, features: int, *, rngs: nnx.Rngs):
        self.proj = nnx.Linear(cond_dim, 2 * features, rngs=rngs)

    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        gamma, beta = jnp.split(self.proj(c), 2, axis=-1)
        return h * (1.0 + _per_feature(gamma, h)) + _per_feature(beta, h)


class ConditionalBatchNorm(nnx.Module):
    """BatchNorm without its own affine part, then a per-class scale and shift (c @ scale, c @ bias)."""

    def __init__(self, cond_dim: int, features: int, *, rngs: nnx.Rngs):
        self.norm = nnx.BatchNorm(features, momentum=0.9, use_scale=False, use_bias=False, rngs=rngs)
        self.scale = nnx.Param(jnp.ones((cond_dim, features)))
        self.bias = nnx.Param(jnp.zeros((cond_dim, features)))

    def __call__(self, h: jax.Array, c: jax.Array) -> jax.Array:
        h = batch_norm(self.norm, h)  # on CPU with faster channel sums for images; else self.norm(h)
        return h * _per_feature(c @ self.scale[...], h) + _per_feature(c @ self.bias[...], h)


def hidden_conditioner(mode: str | None, cond_dim: int, features: int, *, rngs: nnx.Rngs):
    """The module a hidden layer of `features` applies with the condition, or None."""
    if not cond_dim or mode in (None, "concat"):
        return None
    if mode == "film":
        return FiLM(cond_dim, features, rngs=rngs)
    if mode == "cbn":
        return ConditionalBatchNorm(cond_dim, features, rngs=rngs)
    raise ValueError(f"unknown conditioning mode {mode!r} (valid: {', '.join(MODES)})")


def broadcast_condition(c: jax.Array | None, lead: tuple[int, ...]) -> jax.Array | None:
    """c (N, K) broadcast to lead + (K,): a decoder's z may carry leading draw axes (k, N, D)."""
    return None if c is None else jnp.broadcast_to(c, (*lead, c.shape[-1]))


__all__ = ["MODES", "ConditionalBatchNorm", "FiLM", "broadcast_condition", "hidden_conditioner"]
