"""Dense stacks with optional batch normalization whose running averages move only when asked.

The hierarchical models (`models.ladder`, `models.hierarchical`) run some of their nets several
times in one loss evaluation on the same input (the posterior's draw, then the prior's score of
it). `nnx.BatchNorm` would move its running averages on every train-mode call; here only a call
with `update=True` moves them, so each training step moves them once.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.nets.mlp import ACTIVATIONS


class BatchNorm(nnx.Module):
    """Batch normalization over the last axis, with running averages that only a call with
    `update=True` moves (nnx.BatchNorm moves them on every train-mode call).

    `use_running_average` is what `model.train()` / `model.eval()` switch.
    """

    def __init__(self, features: int, *, momentum: float = 0.9, epsilon: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.mean = nnx.BatchStat(jnp.zeros((features,)))
        self.var = nnx.BatchStat(jnp.ones((features,)))
        self.momentum, self.epsilon = momentum, epsilon
        self.use_running_average = False

    def __call__(self, h: jax.Array, update: bool = True) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            axes = tuple(range(h.ndim - 1))  # every example (and draw) of the batch
            mean = jnp.mean(h, axis=axes)
            var = jnp.mean(jnp.square(h - mean), axis=axes)
            if update:
                m = self.momentum
                self.mean[...] = m * self.mean[...] + (1 - m) * jax.lax.stop_gradient(mean)
                self.var[...] = m * self.var[...] + (1 - m) * jax.lax.stop_gradient(var)
        return (h - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


class DenseBlock(nnx.Module):
    """Dense layers of the given `widths`: Linear -> [BatchNorm] -> activation each; (..., d_in) ->
    (..., widths[-1]), or the identity when `widths` is empty."""

    def __init__(self, d_in: int, widths: tuple[int, ...], activation: str, batch_norm: bool, *, rngs: nnx.Rngs):
        ins = (d_in, *widths[:-1])
        self.dense = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(ins, widths)])
        self.norms = nnx.List([BatchNorm(w) if batch_norm else None for w in widths])
        self.activation = activation
        self.out_dim = widths[-1] if widths else d_in

    def __call__(self, h: jax.Array, update: bool = True) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for dense, norm in zip(self.dense, self.norms):
            h = dense(h)
            h = act(h if norm is None else norm(h, update))
        return h


class DenseNet(nnx.Module):
    """A `DenseBlock` of `sizes[1:-1]` and a linear output layer of `sizes[-1]` (no activation):
    the batch-normalized counterpart of `nets.mlp.MLP`, (..., sizes[0]) -> (..., sizes[-1])."""

    def __init__(self, sizes: tuple[int, ...], activation: str, batch_norm: bool, *, rngs: nnx.Rngs):
        self.block = DenseBlock(sizes[0], tuple(sizes[1:-1]), activation, batch_norm, rngs=rngs)
        self.head = nnx.Linear(self.block.out_dim, sizes[-1], rngs=rngs)

    def __call__(self, h: jax.Array, update: bool = True) -> jax.Array:
        return self.head(self.block(h, update))


class DenseEncoder(nnx.Module):
    """(N, *event) -> (N, out_dim): a batch-normalized `DenseNet` on the flattened data (`model.net=mlp`
    with `model.batch_norm=true`; the counterpart of `nets.mlp.MLPEncoder`, without a condition)."""

    def __init__(self, event_shape, hidden, out_dim, activation, *, rngs: nnx.Rngs):
        self.event_ndim = len(event_shape)
        self.net = DenseNet((math.prod(event_shape), *hidden, out_dim), activation, True, rngs=rngs)

    def __call__(self, x: jax.Array, update: bool = True) -> jax.Array:
        return self.net(x.reshape(*x.shape[: x.ndim - self.event_ndim], -1), update)


class DenseDecoder(nnx.Module):
    """(..., D) -> (..., *event, P): the batch-normalized counterpart of `nets.mlp.MLPDecoder`."""

    def __init__(self, latent_dim, hidden, event_shape, params_per_channel, activation, *, rngs: nnx.Rngs):
        self.event_shape, self.params_per_channel = tuple(event_shape), params_per_channel
        out = math.prod(event_shape) * params_per_channel
        self.net = DenseNet((latent_dim, *tuple(reversed(hidden)), out), activation, True, rngs=rngs)

    def __call__(self, z: jax.Array, update: bool = True) -> jax.Array:
        return self.net(z, update).reshape(*z.shape[:-1], *self.event_shape, self.params_per_channel)
