"""The conv forms benchmarks/conv_throughput.py measures besides the two `vaekit.nets.cpu_conv` uses.

Each computes exactly what the layer computes (up to float rounding) from its kernel and bias:
`form(x (N, H, W, C), kernel, bias or None, precision) -> y`, a `form=` for `cpu_conv.conv` and
`cpu_conv.conv_transpose` (tests/test_cpu_conv.py checks each against the nnx layer, in value and
gradient). Conventions as in cpu_conv's docstring:

Convolution, 4x4 stride 2 SAME:

* `conv_s2d` (cpu_conv's): space-to-depth, then a 2x2 stride-1 VALID convolution;
* `conv_s2d_matmul`: the same, the 2x2 window gathered as four slices (16 * C channels) and
  contracted with one matmul (XLA's dot kernels instead of its convolution);
* `conv_patches`: `lax.conv_general_dilated_patches` + one matmul (im2col the direct way);
* `conv_native`: `lax.conv_general_dilated`, what nnx.Conv computes.

Transposed convolution, 4x4 stride 2 SAME:

* `conv_transpose_subpixel`: the form vaekit's nets used before `conv_transpose_d2s`: a 3x3
  stride-1 convolution to 4 * O channels (9 taps for each of the 4 output phases, of which 4 are
  non-zero: 2.25x the useful FLOPs), then depth-to-space;
* `conv_transpose_d2s` (cpu_conv's): one 2x2 stride-1 convolution to 4 * O channels, depth-to-space, a crop;
* `conv_transpose_d2s_matmul`: the same, the 2x2 window as four slices and one matmul;
* `conv_transpose_native`: `lax.conv_transpose`, what nnx.ConvTranspose computes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vaekit.nets.cpu_conv import (NHWC, KernelFn, add_bias, conv_s2d, conv_transpose_d2s, d2s_crop, d2s_kernel,
                                  depth_to_space, s2d_input, s2d_kernel)


def windows2x2(s: jax.Array, oh: int, ow: int) -> jax.Array:
    """(N, oh+1, ow+1, K) -> (N, oh, ow, 4K): the 2x2 window at each position, (dy, dx, K) order."""
    return jnp.concatenate([s[:, dy : dy + oh, dx : dx + ow] for dy in (0, 1) for dx in (0, 1)], axis=-1)


def conv_s2d_matmul(x, kernel, bias=None, precision=None):
    """4x4 stride-2 SAME convolution as space-to-depth, 2x2 windows gathered by slicing, one matmul."""
    s, oh, ow = s2d_input(x)
    k = s2d_kernel(kernel)
    patches = windows2x2(s, oh, ow)  # (N, oh, ow, 16C), order (a_y, a_x, b_y, b_x, c)
    y = jnp.dot(patches, k.reshape(-1, k.shape[-1]), precision=precision)
    return add_bias(y, bias)


def conv_patches(x, kernel, bias=None, precision=None):
    """4x4 stride-2 SAME convolution as lax.conv_general_dilated_patches + one matmul."""
    p = jax.lax.conv_general_dilated_patches(x, (4, 4), (2, 2), "SAME", dimension_numbers=NHWC,
                                             precision=precision)  # (N, oh, ow, C*16), order (c, ky, kx)
    c, o = kernel.shape[2:]
    y = jnp.dot(p, kernel.transpose(2, 0, 1, 3).reshape(16 * c, o), precision=precision)
    return add_bias(y, bias)


def conv_native(x, kernel, bias=None, precision=None):
    """Reference: lax.conv_general_dilated, 4x4 stride 2 SAME (what nnx.Conv computes)."""
    y = jax.lax.conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=NHWC, precision=precision)
    return add_bias(y, bias)


# Sub-pixel form: along each axis, output 2i + q = sum over taps k with k + q even
# of w[k] x[i + m]; tap k -> (m + 1, q): 0 -> (0, 0), 1 -> (1, 1), 2 -> (1, 0), 3 -> (2, 1).
_TAP_OFFSET = np.array([0, 1, 1, 2])
_TAP_PHASE = np.array([0, 1, 0, 1])


def subpixel_kernel(kernel: jax.Array) -> jax.Array:
    """(4, 4, I, O) transposed-conv kernel -> (3, 3, I, 4O) stride-1 kernel, phases (qy, qx, O)."""
    i, o = kernel.shape[2:]
    out = jnp.zeros((3, 3, i, 2, 2, o), kernel.dtype)
    m, q = _TAP_OFFSET, _TAP_PHASE
    out = out.at[m[:, None], m[None, :], :, q[:, None], q[None, :]].set(kernel)
    return out.reshape(3, 3, i, 4 * o)


def conv_transpose_subpixel(x, kernel, bias=None, precision=None):
    """vaekit's form before `conv_transpose_d2s`: 3x3 stride-1 convolution to 4O channels, then depth-to-space."""
    y = jax.lax.conv_general_dilated(x, subpixel_kernel(kernel), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=NHWC, precision=precision)
    return add_bias(depth_to_space(y), bias)


def conv_transpose_d2s_matmul(x, kernel, bias=None, precision=None):
    """`conv_transpose_d2s` with the 2x2 window gathered by slicing and one matmul."""
    n, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    k = d2s_kernel(kernel)
    z = jnp.dot(windows2x2(xp, h + 1, w + 1), k.reshape(-1, k.shape[-1]), precision=precision)
    return d2s_crop(z, bias)


def conv_transpose_native(x, kernel, bias=None, precision=None):
    """Reference: lax.conv_transpose, 4x4 stride 2 SAME (what nnx.ConvTranspose computes)."""
    y = jax.lax.conv_transpose(x, kernel, (2, 2), "SAME", dimension_numbers=NHWC, precision=precision)
    return add_bias(y, bias)


#: Every form of the convolution, by name (the library's is "s2d").
CONV_FORMS: dict[str, KernelFn] = {
    "native": conv_native,
    "s2d": conv_s2d,
    "s2d_matmul": conv_s2d_matmul,
    "patches": conv_patches,
}
#: Every form of the transposed convolution, by name (the library's is "d2s").
CONV_TRANSPOSE_FORMS: dict[str, KernelFn] = {
    "native": conv_transpose_native,
    "subpixel": conv_transpose_subpixel,
    "d2s": conv_transpose_d2s,
    "d2s_matmul": conv_transpose_d2s_matmul,
}
