"""Convolutional encoder/decoder bodies: 4x4 stride-2 Conv + BatchNorm + ReLU stacks, mirrored.

Each conv layer halves the spatial size ("SAME" padding), each transposed conv doubles it, so the
image side must be divisible by 2 ** len(channels): 28x28 with 2 layers, 32x32 or 64x64 with up to
5 or 6. BatchNorm uses batch statistics in train mode and running averages in eval mode; the mode
is switched with `model.train()` / `model.eval()`.

CPU speed: XLA's CPU backend runs strided convolutions, and above all their gradients (convolutions
with a dilated input or kernel), far below its stride-1 speed. On CPU every 4x4 stride-2 layer runs
in a stride-1 form from `nets/cpu_conv.py`: the encoder's convolutions as space-to-depth followed by
a 2x2 convolution, the decoder's transposed convolutions as one 2x2 convolution to four output
phases followed by depth-to-space (benchmarks/conv_throughput.py measured both, and the
alternatives). The parameters are the `nnx.Conv` / `nnx.ConvTranspose` kernel and bias, unchanged,
so checkpoints move freely between backends, and the results equal the nnx layers up to float
rounding, values and gradients (tested). Other backends (cuDNN) run the native layers.
In training mode on CPU each BatchNorm takes its channel sums as matrix-vector products
(`cpu_conv.batch_norm`), and the conv in front of it runs without its bias, which the batch mean
cancels (`_conv_norm`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.nets.cpu_conv import batch_norm, conv, conv_transpose, fast_form_applies
from vaekit.nets.conditioning import ConditionalBatchNorm, FiLM, broadcast_condition


def check_side(image_shape, channels):
    h, w, _ = image_shape
    f = 2 ** len(channels)
    if h % f or w % f:
        raise VaekitError(
            f"a conv net with {len(channels)} stride-2 layers needs image sides divisible by {f}; got {h}x{w} "
            f"(set model.conv_channels to fewer layers)"
        )
    return h // f, w // f


def flatten_lead(x: jax.Array, event_ndim: int):
    lead = x.shape[:-event_ndim]
    return x.reshape(-1, *x.shape[-event_ndim:]), lead


class ConvEncoder(nnx.Module):
    """(..., H, W, C) -> (..., out_dim); with a condition c (N, K) per `nets.conditioning`."""

    def __init__(self, image_shape, channels, dense, out_dim, *, cond_dim: int = 0, condition: str | None = None,
                 rngs: nnx.Rngs):
        h0, w0 = check_side(image_shape, channels)
        self.condition = condition if cond_dim else None
        extra = cond_dim if self.condition == "concat" else 0  # one-hot label channels
        ins = (image_shape[-1] + extra, *channels[:-1])
        self.convs = nnx.List(
            [nnx.Conv(i, o, (4, 4), strides=2, padding="SAME", rngs=rngs) for i, o in zip(ins, channels)]
        )
        self.norms = nnx.List([_norm(self.condition, cond_dim, o, rngs) for o in channels])
        self.films = nnx.List([_film(self.condition, cond_dim, o, rngs) for o in channels])
        flat = h0 * w0 * channels[-1]
        self.dense = nnx.Linear(flat, dense, rngs=rngs) if dense else None
        self.head = nnx.Linear(dense or flat, out_dim, rngs=rngs)

    def __call__(self, x: jax.Array, c: jax.Array | None = None) -> jax.Array:
        h, lead = flatten_lead(x, 3)  # (N, H, W, C)
        c = None if c is None else broadcast_condition(c, lead).reshape(h.shape[0], -1)  # (N, K)
        if self.condition == "concat":
            h = jnp.concatenate([h, jnp.broadcast_to(c[:, None, None, :], (*h.shape[:3], c.shape[-1]))], axis=-1)
        for layer, norm, film in zip(self.convs, self.norms, self.films):
            h = jax.nn.relu(_conv_norm(conv, layer, norm, h, c))
            if film is not None:
                h = film(h, c)
        h = h.reshape(h.shape[0], -1)
        if self.dense is not None:
            h = jax.nn.relu(self.dense(h))
        return self.head(h).reshape(*lead, -1)


class ConvDecoder(nnx.Module):
    """(..., D) -> (..., H, W, C, P): P raw outputs per pixel channel; optional condition c (N, K)."""

    def __init__(self, latent_dim, channels, dense, image_shape, params_per_channel, *, cond_dim: int = 0,
                 condition: str | None = None, rngs: nnx.Rngs):
        self.h0, self.w0 = check_side(image_shape, channels)
        self.image_shape = tuple(image_shape)
        self.params_per_channel = params_per_channel
        self.condition = condition if cond_dim else None
        top = channels[-1]
        d_in = latent_dim + (cond_dim if self.condition == "concat" else 0)
        self.dense = nnx.Linear(d_in, dense, rngs=rngs) if dense else None
        self.project = nnx.Linear(dense or d_in, self.h0 * self.w0 * top, rngs=rngs)
        # Mirror of the encoder: top -> ... -> channels[0] -> C * P, doubling the side each time.
        outs = (*reversed(channels[:-1]), image_shape[-1] * params_per_channel)
        ins = tuple(reversed(channels))
        self.deconvs = nnx.List(
            [nnx.ConvTranspose(i, o, (4, 4), strides=2, padding="SAME", rngs=rngs) for i, o in zip(ins, outs)]
        )
        self.norms = nnx.List([_norm(self.condition, cond_dim, o, rngs) for o in outs[:-1]])
        self.films = nnx.List([_film(self.condition, cond_dim, o, rngs) for o in outs[:-1]])

    def __call__(self, z: jax.Array, c: jax.Array | None = None) -> jax.Array:
        h, lead = flatten_lead(z, 1)  # (N, D)
        c = None if c is None else broadcast_condition(c, lead).reshape(h.shape[0], -1)  # (N, K)
        if self.condition == "concat":
            h = jnp.concatenate([h, c.astype(h.dtype)], axis=-1)
        if self.dense is not None:
            h = jax.nn.relu(self.dense(h))
        h = jax.nn.relu(self.project(h)).reshape(h.shape[0], self.h0, self.w0, -1)
        for i, deconv in enumerate(self.deconvs):
            if i < len(self.norms):
                h = jax.nn.relu(_conv_norm(conv_transpose, deconv, self.norms[i], h, c))
                if self.films[i] is not None:
                    h = self.films[i](h, c)
            else:
                h = conv_transpose(deconv, h)
        return h.reshape(*lead, *self.image_shape, self.params_per_channel)


def _norm(condition, cond_dim, features, rngs):
    """BatchNorm, or conditional BatchNorm in "cbn" mode."""
    if condition == "cbn":
        return ConditionalBatchNorm(cond_dim, features, rngs=rngs)
    return nnx.BatchNorm(features, momentum=0.9, rngs=rngs)


def _film(condition, cond_dim, features, rngs):
    return FiLM(cond_dim, features, rngs=rngs) if condition == "film" else None


def _apply_norm(norm, h, c):
    """The layer's (conditional) BatchNorm; on CPU with `cpu_conv.batch_norm`'s faster channel sums."""
    return norm(h, c) if isinstance(norm, ConditionalBatchNorm) else batch_norm(norm, h)


def _conv_norm(op, layer, norm, h, c):
    """norm(op(layer, h)), with the layer's bias left out of the convolution in training mode.

    A BatchNorm on batch statistics subtracts each channel's batch mean, so a per-channel constant
    added before it cancels: the output is the same without the bias, whose gradient is exactly 0
    (with it, float noise of ~1e-9 that Adam's normalization turns into steps of about lr / 10).
    Only the batch mean itself includes the bias, so it is added to the running mean here, which
    then moves exactly as the layer's own would. On CPU this drops a bias add per layer and its
    gradient's channel reduction: the `shapes-beta` step's work on one core went from 110.7 to
    99.1 ms (docs/results.md). In evaluation mode (running averages), and where the faster conv
    form does not apply (`op` = `cpu_conv.conv` or `conv_transpose`), the layer runs whole.
    """
    bn = norm.norm if isinstance(norm, ConditionalBatchNorm) else norm
    if layer.bias is None or bn.use_running_average is not False or not fast_form_applies(layer):
        return _apply_norm(norm, op(layer, h), c)
    out = _apply_norm(norm, op(layer, h, use_bias=False), c)
    shift = (1.0 - bn.momentum) * jax.lax.stop_gradient(layer.bias[...])
    bn.mean[...] = bn.mean[...] + shift.astype(bn.mean[...].dtype)
    return out
