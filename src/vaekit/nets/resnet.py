"""Residual encoder/decoder bodies (`model.net=resnet`): pre-activation residual blocks in stages.

A pre-activation block (He et al. 2016, "Identity Mappings in Deep Residual Networks") is

    h + conv3x3(relu(bn(conv3x3(relu(bn(h))))))

with the identity as the shortcut: normalization and nonlinearity sit inside the residual branch,
so the signal path from input to output is a sum of branches.

Encoder: for each width c_i of `model.conv_channels`, a 4x4 stride-2 convolution to c_i (halving
the side) and `model.resnet_blocks` blocks at c_i; then BN + ReLU, flatten, an optional dense
layer (`model.conv_dense`) and the head. Decoder, the mirror: a dense projection to the smallest
grid at the last width, then per stage `resnet_blocks` blocks and a 4x4 stride-2 transposed
convolution doubling the side (to the next width, the last one to C * P outputs after BN + ReLU).
So any depth (blocks per stage) and width (channels per stage) take images whose sides are
divisible by 2 ** len(conv_channels). The stride-2 layers are the conv net's (`nets/cpu_conv.py`
runs them in a faster form on CPU). A label condition is concatenated (encoder: as input channels,
decoder: to z).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.nets.conditioning import broadcast_condition
from vaekit.nets.conv import check_side, flatten_lead
from vaekit.nets.cpu_conv import batch_norm, conv, conv_transpose


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, rngs=rngs)


def _check_condition(condition: str | None) -> None:
    if condition not in (None, "concat"):
        raise VaekitError(f"model.net=resnet takes a label condition by concatenation only (condition 'concat'), "
                          f"not '{condition}'")


class PreActBlock(nnx.Module):
    """x + conv(relu(bn(conv(relu(bn(x)))))): two 3x3 convolutions at one width, (N, H, W, C) -> same."""

    def __init__(self, channels: int, *, rngs: nnx.Rngs):
        self.norm1, self.norm2 = _bn(channels, rngs), _bn(channels, rngs)
        self.conv1 = nnx.Conv(channels, channels, (3, 3), padding="SAME", rngs=rngs)
        self.conv2 = nnx.Conv(channels, channels, (3, 3), padding="SAME", rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = self.conv1(jax.nn.relu(batch_norm(self.norm1, x)))
        return x + self.conv2(jax.nn.relu(batch_norm(self.norm2, h)))


class ResNetEncoder(nnx.Module):
    """(..., H, W, C) -> (..., out_dim); an optional condition c (N, K) joins as input channels."""

    def __init__(self, image_shape, channels, blocks: int, dense: int, out_dim: int, *, cond_dim: int = 0,
                 condition: str | None = None, rngs: nnx.Rngs):
        h0, w0 = check_side(image_shape, channels)
        self.condition = condition if cond_dim else None
        _check_condition(self.condition)
        ins = (image_shape[-1] + (cond_dim if self.condition else 0), *channels[:-1])
        self.downs = nnx.List([nnx.Conv(i, o, (4, 4), strides=2, padding="SAME", rngs=rngs)
                               for i, o in zip(ins, channels)])
        self.stages = nnx.List([nnx.List([PreActBlock(c, rngs=rngs) for _ in range(blocks)]) for c in channels])
        self.norm = _bn(channels[-1], rngs)
        flat = h0 * w0 * channels[-1]
        self.dense = nnx.Linear(flat, dense, rngs=rngs) if dense else None
        self.head = nnx.Linear(dense or flat, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array | None = None) -> jax.Array:
        h, lead = flatten_lead(x, 3)  # (N, H, W, C)
        if self.condition:
            c = broadcast_condition(c, lead).reshape(h.shape[0], -1)  # (N, K)
            h = jnp.concatenate([h, jnp.broadcast_to(c[:, None, None, :].astype(h.dtype), (*h.shape[:3], c.shape[-1]))], -1)
        for down, stage in zip(self.downs, self.stages):
            h = conv(down, h)  # (N, H/2, W/2, c_i)
            for block in stage:
                h = block(h)
        h = jax.nn.relu(batch_norm(self.norm, h)).reshape(h.shape[0], -1)
        if self.dense is not None:
            h = jax.nn.relu(self.dense(h))
        return self.head(h).reshape(*lead, -1)


class ResNetDecoder(nnx.Module):
    """(..., D) -> (..., H, W, C, P): P raw outputs per pixel channel; optional condition c (N, K)."""

    def __init__(self, latent_dim, channels, blocks: int, dense: int, image_shape, params_per_channel, *,
                 cond_dim: int = 0, condition: str | None = None, rngs: nnx.Rngs):
        self.h0, self.w0 = check_side(image_shape, channels)
        self.image_shape = tuple(image_shape)
        self.params_per_channel = params_per_channel
        self.condition = condition if cond_dim else None
        _check_condition(self.condition)
        d_in = latent_dim + (cond_dim if self.condition else 0)
        self.dense = nnx.Linear(d_in, dense, rngs=rngs) if dense else None
        self.project = nnx.Linear(dense or d_in, self.h0 * self.w0 * channels[-1], rngs=rngs)
        widths = tuple(reversed(channels))  # stage widths, smallest grid first
        outs = (*widths[1:], image_shape[-1] * params_per_channel)
        self.stages = nnx.List([nnx.List([PreActBlock(c, rngs=rngs) for _ in range(blocks)]) for c in widths])
        self.norms = nnx.List([_bn(c, rngs) for c in widths])
        self.ups = nnx.List([nnx.ConvTranspose(i, o, (4, 4), strides=2, padding="SAME", rngs=rngs)
                             for i, o in zip(widths, outs)])

    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        h, lead = flatten_lead(z, 1)  # (N, D)
        if self.condition:
            h = jnp.concatenate([h, broadcast_condition(c, lead).reshape(h.shape[0], -1).astype(h.dtype)], -1)
        if self.dense is not None:
            h = jax.nn.relu(self.dense(h))
        h = self.project(h).reshape(h.shape[0], self.h0, self.w0, -1)  # (N, H0, W0, c_last)
        for stage, norm, up in zip(self.stages, self.norms, self.ups):
            for block in stage:
                h = block(h)
            h = conv_transpose(up, jax.nn.relu(batch_norm(norm, h)))  # side doubled
        return h.reshape(*lead, *self.image_shape, self.params_per_channel)


__all__ = ["PreActBlock", "ResNetDecoder", "ResNetEncoder"]
