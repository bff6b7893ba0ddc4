"""Faster CPU forms of the conv nets' 4x4 stride-2 "SAME" convolution and transposed convolution.

XLA's CPU backend runs strided convolutions, and above all their gradients (convolutions with a
dilated input or a dilated kernel), far below its matmul speed. Every form here computes exactly
`layer(x)` (up to float rounding) from the layer's own `kernel` and `bias`, so checkpoints do not
change, but only with stride-1 convolutions or plain matmuls, whose gradients are again stride-1
convolutions or matmuls:

Convolution, `nnx.Conv(i, o, (4, 4), strides=2, padding="SAME")`; along each axis, with the input
padded to 2 * out + 2 (SAME: one zero before, one or two after), output i = sum over taps
k = 2a + b (a, b in {0, 1}) of w[k] x_pad[2(i + a) + b]. `conv_s2d`: space-to-depth of the padded
input (pixel pairs b -> channels, 4 * C channels), then a 2x2 stride-1 VALID convolution with the
kernel regrouped to (2, 2, 4 * C, O).

Transposed convolution, `nnx.ConvTranspose(i, o, (4, 4), strides=2, padding="SAME")`
(`lax.conv_transpose`, kernel not flipped); along each axis, with x padded by one on each side,
output 2i + q = sum over d in {0, 1} of w[2d + q] x_pad[i + q + d]. `conv_transpose_d2s`: a 2x2
stride-1 VALID convolution to 4 * O channels (every tap used) on the padded input, depth-to-space,
then a one-pixel crop on each side: re-indexing the odd outputs 2i + 1 = 2(i + 1) - 1 puts both
phases on the same 2x2 window x_pad[i' + d], i' = 0..H, so one convolution computes them all (the
transpose of `conv_s2d`); the crop wastes (H+1)^2/H^2 - 1 of the FLOPs (1.56x at 4x4 inputs, 1.13x
at 16x16).

These two won the side-by-side measurements of benchmarks/conv_throughput.py; the other forms
measured there (native, a matmul over gathered windows, im2col patches, the sub-pixel transposed
convolution vaekit used before) are in benchmarks/conv_forms.py.

`conv(layer, x)` and `conv_transpose(layer, x)` are the entry points for the nets: they use these
forms on CPU and fall back to `layer(x)` on other backends and for any layer that is not 4x4
stride 2 SAME (other kernel sizes, dilation, groups, a mask, `transpose_kernel=True`). A form is a
function `(x (N, H, W, C), kernel, bias or None, precision) -> y`; `form=` picks another.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit._compat import variable_can_update

NHWC = ("NHWC", "HWIO", "NHWC")  # lax dimension numbers of channels-last images and HWIO kernels


# --------------------------------------------------------------------------- helpers


def _pair(v) -> tuple[int, int]:
    if v is None:
        return (1, 1)
    return (int(v), int(v)) if isinstance(v, int) else tuple(int(a) for a in v)


def _is_4x4_s2_same(layer) -> bool:
    pad = layer.padding
    return (
        tuple(layer.kernel_size) == (4, 4)
        and _pair(layer.strides) == (2, 2)
        and isinstance(pad, str)
        and pad.upper() == "SAME"
        and _pair(layer.kernel_dilation) == (1, 1)
        and layer.mask is None
    )


def conv_applies(layer) -> bool:
    """Whether `conv` computes `layer` itself (CPU, a plain 4x4 stride-2 SAME nnx.Conv)."""
    return (
        jax.default_backend() == "cpu"
        and isinstance(layer, nnx.Conv)
        and _is_4x4_s2_same(layer)
        and _pair(layer.input_dilation) == (1, 1)
        and layer.feature_group_count == 1
    )


def conv_transpose_applies(layer) -> bool:
    """Whether `conv_transpose` computes `layer` itself (CPU, a plain 4x4 stride-2 SAME ConvTranspose)."""
    return (
        jax.default_backend() == "cpu"
        and isinstance(layer, nnx.ConvTranspose)
        and _is_4x4_s2_same(layer)
        and not layer.transpose_kernel
    )


def fast_form_applies(layer) -> bool:
    """Whether `conv` or `conv_transpose` computes `layer` in a faster form (which can leave the bias out)."""
    return conv_applies(layer) or conv_transpose_applies(layer)


def _params(layer, x):
    """The layer's kernel and bias, promoted with x to the layer's dtype, as the layer does."""
    kernel = layer.kernel[...]
    bias = layer.bias[...] if layer.bias is not None else None
    x, kernel, bias = layer.promote_dtype((x, kernel, bias), dtype=layer.dtype)
    return x, kernel, bias


def _batched(fn, x: jax.Array, *args, **kwargs) -> jax.Array:
    """Apply fn on (N, H, W, C) to x with any number of leading batch axes (or none)."""
    lead = x.shape[:-3]
    y = fn(x.reshape(-1, *x.shape[-3:]), *args, **kwargs)
    return y.reshape(*lead, *y.shape[1:])


def _same_pads(n: int) -> tuple[int, tuple[int, int]]:
    """Output size and (low, high) padding of a 4-wide stride-2 SAME window over n pixels."""
    out = -(-n // 2)
    total = max((out - 1) * 2 + 4 - n, 0)
    return out, (total // 2, total - total // 2)


def space_to_depth(x: jax.Array) -> jax.Array:
    """(N, 2A, 2B, C) -> (N, A, B, 4C), channels ordered (row parity, column parity, C)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, h // 2, w // 2, 4 * c)


def depth_to_space(y: jax.Array) -> jax.Array:
    """(N, A, B, 4C) with channels (row parity, column parity, C) -> (N, 2A, 2B, C)."""
    n, a, b, c4 = y.shape
    c = c4 // 4
    return y.reshape(n, a, b, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * a, 2 * b, c)


# --------------------------------------------------------------------------- convolution


def s2d_input(x: jax.Array) -> tuple[jax.Array, int, int]:
    """The SAME-padded input (N, H, W, C), space-to-depth: (N, oh + 1, ow + 1, 4C), oh, ow."""
    n, h, w, c = x.shape
    oh, ph = _same_pads(h)
    ow, pw = _same_pads(w)
    xp = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))  # (N, 2 oh + 2, 2 ow + 2, C)
    return space_to_depth(xp), oh, ow


def s2d_kernel(kernel: jax.Array) -> jax.Array:
    """(4, 4, C, O) stride-2 kernel -> (2, 2, 4C, O): [a_y, a_x, (b_y, b_x, c), o] = w[2a_y+b_y, 2a_x+b_x, c, o]."""
    c, o = kernel.shape[2:]
    return kernel.reshape(2, 2, 2, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(2, 2, 4 * c, o)


def conv_s2d(x, kernel, bias=None, precision=None):
    """4x4 stride-2 SAME convolution as space-to-depth + 2x2 stride-1 VALID convolution."""
    s, _, _ = s2d_input(x)
    y = jax.lax.conv_general_dilated(s, s2d_kernel(kernel), (1, 1), "VALID", dimension_numbers=NHWC,
                                     precision=precision)
    return add_bias(y, bias)  # in the row view: see "per-channel reductions" below


# --------------------------------------------------------------------------- transposed convolution


def d2s_kernel(kernel: jax.Array) -> jax.Array:
    """(4, 4, I, O) transposed-conv kernel -> (2, 2, I, 4O) for `conv_transpose_d2s`.

    [d_y, d_x, i, (p_y, p_x, o)] = w[2 d_y + 1 - p_y, 2 d_x + 1 - p_x, i, o]: channel phase p = 0
    holds the odd outputs (taps 1, 3), p = 1 the even ones (taps 0, 2).
    """
    i, o = kernel.shape[2:]
    k = kernel.reshape(2, 2, 2, 2, i, o)[:, ::-1, :, ::-1]  # (d_y, p_y, d_x, p_x, I, O)
    return k.transpose(0, 2, 4, 1, 3, 5).reshape(2, 2, i, 4 * o)


def d2s_crop(z: jax.Array, bias) -> jax.Array:
    """(N, H+1, W+1, 4O) -> (N, 2H, 2W, O): depth-to-space, then drop the first and last row/column."""
    y = depth_to_space(z)
    return add_bias(y[:, 1:-1, 1:-1], bias)


def conv_transpose_d2s(x, kernel, bias=None, precision=None):
    """4x4 stride-2 SAME transposed convolution as one 2x2 stride-1 convolution to 4O channels + d2s."""
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    z = jax.lax.conv_general_dilated(xp, d2s_kernel(kernel), (1, 1), "VALID", dimension_numbers=NHWC,
                                     precision=precision)  # (N, H+1, W+1, 4O)
    return d2s_crop(z, bias)


# --------------------------------------------------------------------------- entry points

KernelFn = Callable[..., jax.Array]

#: The forms `conv` and `conv_transpose` use on CPU (chosen by benchmarks/conv_throughput.py).
CONV_FORM: KernelFn = conv_s2d
CONV_TRANSPOSE_FORM: KernelFn = conv_transpose_d2s


def conv(layer: nnx.Conv, x: jax.Array, *, form: KernelFn | None = None, use_bias: bool = True) -> jax.Array:
    """`layer(x)` for an `nnx.Conv`; a 4x4 stride-2 SAME one on CPU runs in the faster form (or `form`).

    `use_bias=False` leaves the layer's bias out; only the faster form can (check `conv_applies`).
    """
    if not conv_applies(layer):
        if not use_bias:
            raise ValueError("use_bias=False needs a layer that conv_applies to")
        return layer(x)
    x, kernel, bias = _params(layer, x)
    return _batched(form or CONV_FORM, x, kernel, bias if use_bias else None, precision=layer.precision)


def conv_transpose(layer: nnx.ConvTranspose, x: jax.Array, *, form: KernelFn | None = None,
                   use_bias: bool = True) -> jax.Array:
    """`layer(x)` for an `nnx.ConvTranspose`; a 4x4 stride-2 SAME one on CPU runs in the faster form (or `form`).

    `use_bias=False` leaves the layer's bias out; only the faster form can (check `conv_transpose_applies`).
    """
    if not conv_transpose_applies(layer):
        if not use_bias:
            raise ValueError("use_bias=False needs a layer that conv_transpose_applies to")
        return layer(x)
    x, kernel, bias = _params(layer, x)
    return _batched(form or CONV_TRANSPOSE_FORM, x, kernel, bias if use_bias else None,
                    precision=layer.precision)


# --------------------------------------------------------------------------- per-channel reductions
#
# A profile of the shapes-beta step showed a fifth of its work in XLA CPU's reduce-window kernels:
# every per-channel reduction over (N, H, W) of a channels-last activation (BatchNorm's mean and mean
# square, and in the backward pass the gradients of every per-channel scale, shift and bias) is
# rewritten by XLA into a reduce-window, ~1.3 ms on one core for a 64x32x32x32 array.
#
# * `batch_norm` takes its channel sums as matrix-vector products with a vector of ones
#   (`channel_sums`), a batch of two over the two halves of the rows (one alone ran on one thread). A dot
#   does not fuse its operand's producer, so the elementwise work stays in the channels-last shape,
#   where XLA vectorizes it (a reduction in the (N*H, W*C) row view is faster alone, but pulled the
#   transposes of the stride-1 conv forms into row-shaped fusions that ran 3-5x slower). The
#   shapes-beta step: 55 -> 45 ms on two cores, 93 -> 80 ms on one (docs/results.md).
# * `add_bias` adds a bias in the row view, so that its gradient is a fast row sum.


def channel_sums(x: jax.Array, dtype=None) -> jax.Array:
    """Sum of x (..., C) over everything but the last axis, in `dtype` (default x's).

    A batch of two matrix-vector products with ones, one per half of the rows, instead of XLA CPU's
    reduce-window: a single product runs on one thread, and slicing the halves apart cost copies.
    """
    dtype = dtype or x.dtype
    x2 = x.reshape(-1, x.shape[-1])
    m, c = x2.shape
    h = m // 2
    if h == 0:
        return jnp.sum(x2, axis=0, dtype=dtype)
    halves = (x2 if m % 2 == 0 else x2[: 2 * h]).reshape(2, h, c)  # a bitcast for an even row count
    s = jnp.einsum("bm,bmc->bc", jnp.ones((2, h), x2.dtype), halves, precision=jax.lax.Precision.HIGHEST,
                   preferred_element_type=dtype).sum(axis=0)
    return s + x2[-1].astype(dtype) if m % 2 else s


def add_bias(x: jax.Array, bias: jax.Array | None) -> jax.Array:
    """x + bias over the last axis, in the row view (so the bias gradient is a fast row sum)."""
    if bias is None:
        return x
    if x.ndim < 3:
        return x + bias
    w = x.shape[-2]  # the row view (N * H, W * C), the bias tiled W times along a row
    return (x.reshape(-1, w * x.shape[-1]) + jnp.tile(bias, w)).reshape(x.shape)


def batch_norm_applies(layer, x) -> bool:
    """Whether `batch_norm` computes `layer(x)` itself (CPU, channels-last input of rank >= 3)."""
    return (
        jax.default_backend() == "cpu"
        and isinstance(layer, nnx.BatchNorm)
        and x.ndim >= 3
        and layer.axis in (-1, x.ndim - 1)
        and layer.axis_name is None
        and layer.use_fast_variance
    )


def batch_norm(layer: nnx.BatchNorm, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
    """`layer(x, use_running_average)` for an `nnx.BatchNorm` over the last axis, with fast reductions.

    Same statistics (E[x^2] - E[x]^2, clipped at 0), the same running-average update of
    `layer.mean` / `layer.var` in training mode, the same normalization ((x - mean) * rsqrt(var +
    eps) * scale + bias); only the per-channel sums are `channel_sums`, and the backward pass is
    written out (two channel sums). Falls back to `layer(x, ...)` off CPU and for inputs of rank < 3,
    another axis, `axis_name` or slow variance.
    """
    if not batch_norm_applies(layer, x):
        return layer(x, use_running_average)
    use_ra = layer.use_running_average if use_running_average is None else use_running_average
    if use_ra is None:
        return layer(x, use_running_average)  # let nnx raise its error
    scale = layer.scale[...] if layer.scale is not None else None
    bias = layer.bias[...] if layer.bias is not None else None
    x, mean, var, scale, bias = layer.promote_dtype((x, layer.mean[...], layer.var[...], scale, bias),
                                                    dtype=layer.dtype)
    if use_ra:
        mul = jax.lax.rsqrt(var + layer.epsilon)
        if scale is not None:
            mul = mul * scale
        y = (x - mean) * mul
        if bias is not None:
            y = y + bias
    else:
        stat_dtype = jnp.promote_types(layer.dtype or x.dtype, jnp.float32)
        c = x.shape[-1]
        s = jnp.ones((c,), x.dtype) if scale is None else scale
        b = jnp.zeros((c,), x.dtype) if bias is None else bias
        y, mean, var = _bn_train(float(layer.epsilon), stat_dtype, x, s, b)
        can_update = variable_can_update(layer.mean) or variable_can_update(layer.var)
        sg = jax.lax.stop_gradient if can_update else (lambda v: v)
        layer.mean[...] = sg(layer.momentum * layer.mean[...] + (1 - layer.momentum) * mean)
        layer.var[...] = sg(layer.momentum * layer.var[...] + (1 - layer.momentum) * var)
    # nnx.BatchNorm's output dtype: layer.dtype, else that of the promoted inputs (inexact)
    out = layer.dtype if layer.dtype is not None else jnp.result_type(*(a for a in (x, scale, bias) if a is not None))
    return jnp.asarray(y, out if jnp.issubdtype(out, jnp.inexact) else jnp.promote_types(jnp.float32, out))


def _bn_train_fwd(eps, stat_dtype, x, scale, bias):
    n = x.size // x.shape[-1]
    mean = channel_sums(x, stat_dtype) / n
    mean2 = channel_sums(x.astype(stat_dtype) * x.astype(stat_dtype)) / n
    var = jnp.maximum(0.0, mean2 - mean * mean)
    r = jax.lax.rsqrt(var + eps)
    mul = r * scale
    y = x * mul.astype(x.dtype) + (bias - mean * mul).astype(x.dtype)
    return (y, mean, var), (x, mean, r, scale)


def _bn_train_bwd(eps, stat_dtype, res, cts):
    """Gradients of (y, mean, var) = batch-norm(x) w.r.t. x, scale, bias: two channel sums, one pass.

    With xhat = (x - mu) r, y = xhat * scale + bias, n values per channel, S1 = sum gy,
    S2 = sum gy * x: d bias = S1, d scale = r (S2 - mu S1) and
    dx = r scale (gy - S1 / n - xhat d_scale / n) + g_mu / n + 2 g_var (x - mu) / n,
    written as A gy + B x + C with per-channel A, B, C (the variance is treated as unclipped).
    """
    x, mean, r, scale = res
    gy, g_mean, g_var = cts
    n = x.size // x.shape[-1]
    s1 = channel_sums(gy, stat_dtype)
    s2 = channel_sums(gy.astype(stat_dtype) * x.astype(stat_dtype))
    d_bias = s1
    d_scale = r * (s2 - mean * s1)
    a = r * scale
    b = -r * r * scale * d_scale / n + 2.0 * g_var / n
    c = -a * s1 / n + r * r * mean * scale * d_scale / n + g_mean / n - 2.0 * g_var * mean / n
    dt = x.dtype
    dx = gy * a.astype(dt) + x * b.astype(dt) + c.astype(dt)
    return dx, d_scale.astype(scale.dtype), d_bias.astype(scale.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _bn_train(eps, stat_dtype, x, scale, bias):
    """Training-mode batch norm of x (..., C): (y, batch mean, batch variance)."""
    return _bn_train_fwd(eps, stat_dtype, x, scale, bias)[0]


_bn_train.defvjp(_bn_train_fwd, _bn_train_bwd)
