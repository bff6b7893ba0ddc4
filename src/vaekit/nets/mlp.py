"""Fully connected encoder/decoder bodies. Images are flattened here, inside the net."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

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
    """Dense layers with an activation between them (none after the last)."""

    def __init__(self, sizes: tuple[int, ...], activation: str, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation

    def __call__(self, h: jax.Array) -> jax.Array:
        act = ACTIVATIONS[self.activation]
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i < len(self.layers) - 1:
                h = act(h)
        return h


class MLPEncoder(nnx.Module):
    """(N, H, W, C) -> (N, out_dim) through hidden layers; the last layer has no activation."""

    def __init__(self, image_shape, hidden, out_dim, activation, *, rngs: nnx.Rngs):
        self.net = MLP((math.prod(image_shape), *hidden, out_dim), activation, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.net(x.reshape(*x.shape[:-3], -1))  # (..., H*W*C)


class MLPDecoder(nnx.Module):
    """(..., D) -> (..., H, W, C, P): P raw outputs per pixel channel (the likelihood's parameters)."""

    def __init__(self, latent_dim, hidden, image_shape, params_per_channel, activation, *, rngs: nnx.Rngs):
        self.image_shape = tuple(image_shape)
        self.params_per_channel = params_per_channel
        out = math.prod(image_shape) * params_per_channel
        self.net = MLP((latent_dim, *tuple(reversed(hidden)), out), activation, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        return self.net(z).reshape(*z.shape[:-1], *self.image_shape, self.params_per_channel)
