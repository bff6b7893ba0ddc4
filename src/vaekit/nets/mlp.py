"""Fully connected encoder/decoder bodies for any data shape (flattened inside the net), with an
optional condition (see `nets.conditioning`)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.nets.conditioning import broadcast_condition, hidden_conditioner

ACTIVATIONS = {
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "elu": jax.nn.elu,
    "softplus": jax.nn.softplus,
    "leaky_relu": jax.nn.leaky_relu,
}


class MLP(nnx.Module):
    """Dense layers with an activation between them (none after the last).

    With a condition of `cond_dim` > 0: "concat" widens the input by cond_dim (the caller
    concatenates), "film" modulates every hidden layer after its activation, "cbn" normalizes
    every hidden layer before its activation with a per-class scale and shift.
    """

    def __init__(self, sizes: tuple[int, ...], activation: str, *, cond_dim: int = 0, condition: str | None = None,
                 rngs: nnx.Rngs):
        concat = cond_dim if condition == "concat" else 0
        ins = (sizes[0] + concat, *sizes[1:-1])
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(ins, sizes[1:])])
        self.conditioners = nnx.List([hidden_conditioner(condition, cond_dim, f, rngs=rngs) for f in sizes[1:-1]])
        self.activation = activation
        self.condition = condition if cond_dim else None

    def __call__(self, h: jax.Array, c: jax.Array | None = None) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        c = broadcast_condition(c, h.shape[:-1])
        if self.condition == "concat":
            h = jnp.concatenate([h, c.astype(h.dtype)], axis=-1)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i == last:
                break
            cond = self.conditioners[i]
            if self.condition == "cbn":
                h = act(cond(h, c))
            else:
                h = act(h)
                if cond is not None:
                    h = cond(h, c)
        return h


class MLPEncoder(nnx.Module):
    """(N, *event) -> (N, out_dim) through hidden layers; the last layer has no activation."""

    def __init__(self, event_shape, hidden, out_dim, activation, *, cond_dim: int = 0, condition: str | None = None,
                 rngs: nnx.Rngs):
        self.event_ndim = len(event_shape)
        self.net = MLP((math.prod(event_shape), *hidden, out_dim), activation, cond_dim=cond_dim,
                       condition=condition, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array | None = None) -> jax.Array:
        return self.net(x.reshape(*x.shape[: x.ndim - self.event_ndim], -1), c)  # (..., prod(event))


class MLPDecoder(nnx.Module):
    """(..., D) -> (..., *event, P): P raw outputs per data entry (the likelihood's parameters)."""

    def __init__(self, latent_dim, hidden, event_shape, params_per_channel, activation, *, cond_dim: int = 0,
                 condition: str | None = None, rngs: nnx.Rngs):
        self.event_shape = tuple(event_shape)
        self.params_per_channel = params_per_channel
        out = math.prod(event_shape) * params_per_channel
        self.net = MLP((latent_dim, *tuple(reversed(hidden)), out), activation, cond_dim=cond_dim,
                       condition=condition, rngs=rngs)

    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        return self.net(z, c).reshape(*z.shape[:-1], *self.event_shape, self.params_per_channel)
