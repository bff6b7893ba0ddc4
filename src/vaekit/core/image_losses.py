"""Image reconstruction losses that are not likelihoods: SSIM, MS-SSIM, their mix with L1, and a
perceptual distance. Pure functions on images (..., H, W, C) in [0, 1] that return per-image
(unreduced) values; the caller reduces.

SSIM (Wang et al. 2004) compares local means, variances and the covariance under a Gaussian
window (11x11, sigma 1.5), with C1 = (0.01 L)^2, C2 = (0.03 L)^2 for the dynamic range L = 1:

    l = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1),   cs = (2 s_xy + C2) / (s_x^2 + s_y^2 + C2)

over "valid" window positions (no padding). MS-SSIM (Wang, Simoncelli & Bovik 2003) repeats this
on M scales, halving the image (2x2 average) between them, and combines the spatial means

    MS-SSIM = mean(l_M cs_M)^{w_M} * prod_{j < M} mean(cs_j)^{w_j}

with the paper's weights w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333) for M = 5 (fewer scales:
the first M weights renormalized to sum 1); SSIM is the one-scale case. A scale's mean cs is
clipped below at 1e-6 before the power, as common implementations do (it can be negative early in
training). Scale M must still hold a whole window: the image side must be at least
window * 2^(M-1) (176 px for 5 scales of 11), which a 28x28 digit does not have; `check_size`
says so in one line.

Mix (Zhao et al. 2017): alpha (1 - MS-SSIM) + (1 - alpha) L1 with alpha = 0.84. Zhao et al.
weight the L1 term of a patch by the coarsest scale's Gaussian around the patch centre; a
whole-image loss averages every pixel's term, which that weighting leaves the plain mean absolute
error (up to the image border), so the L1 term here is mean |x - y| per image.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vaekit.errors import VaekitError

MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
K1, K2 = 0.01, 0.03
ZHAO_ALPHA = 0.84


def gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    """Normalized 1-D Gaussian taps (size,), centred."""
    r = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).astype(np.float32)


def scale_weights(scales: int) -> tuple[float, ...]:
    """The paper's five MS-SSIM weights for 5 scales; the first `scales` renormalized to sum 1 for fewer."""
    if not 1 <= scales <= len(MS_SSIM_WEIGHTS):
        raise VaekitError(f"MS-SSIM takes 1 to {len(MS_SSIM_WEIGHTS)} scales, got {scales}")
    if scales == len(MS_SSIM_WEIGHTS):
        return MS_SSIM_WEIGHTS  # as published (they sum to 1.0001)
    w = MS_SSIM_WEIGHTS[:scales]
    return tuple(v / sum(w) for v in w)


def min_side(scales: int, window: int) -> int:
    """The smallest image side that still holds a whole window at the coarsest scale."""
    return window * 2 ** (scales - 1)


def check_size(shape, scales: int, window: int, what: str = "MS-SSIM") -> None:
    """One-line VaekitError when images (H, W, C) are too small for `scales` scales of `window`."""
    h, w = shape[0], shape[1]
    need = min_side(scales, window)
    if min(h // 2 ** (scales - 1), w // 2 ** (scales - 1)) < window:
        raise VaekitError(f"{what} with {scales} scale(s) and a {window}x{window} window needs images of at least "
                          f"{need}x{need}; these are {h}x{w} (use fewer scales or a smaller window)")


def _filter(x: jax.Array, taps: jax.Array) -> jax.Array:
    """Separable "valid" filtering of (N, H, W, C) images, each channel alone."""
    c = x.shape[-1]
    k = taps.shape[0]
    dn = ("NHWC", "HWIO", "NHWC")
    kh = jnp.tile(taps.reshape(k, 1, 1, 1), (1, 1, 1, c))
    kw = jnp.tile(taps.reshape(1, k, 1, 1), (1, 1, 1, c))
    x = jax.lax.conv_general_dilated(x, kh, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)
    return jax.lax.conv_general_dilated(x, kw, (1, 1), "VALID", dimension_numbers=dn, feature_group_count=c)


def _ssim_maps(x: jax.Array, y: jax.Array, taps: jax.Array, data_range: float = 1.0):
    """Per-position luminance l and contrast-structure cs maps, (N, H', W', C)."""
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, my = _filter(x, taps), _filter(y, taps)
    sxx = _filter(x * x, taps) - mx * mx
    syy = _filter(y * y, taps) - my * my
    sxy = _filter(x * y, taps) - mx * my
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    cs = (2 * sxy + c2) / (sxx + syy + c2)
    return lum, cs


def _pool(x: jax.Array) -> jax.Array:
    """2x2 average pooling (an odd last row or column is dropped)."""
    n, h, w, c = x.shape
    x = x[:, : h // 2 * 2, : w // 2 * 2]
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(x: jax.Array, y: jax.Array, *, scales: int = 5, window: int = 11, sigma: float = 1.5,
            data_range: float = 1.0) -> jax.Array:
    """MS-SSIM of image pairs (..., H, W, C): (...) in (0, 1] (see the module docstring)."""
    lead = x.shape[:-3]
    x = jnp.asarray(x, jnp.float32).reshape(-1, *x.shape[-3:])
    y = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (*lead, *y.shape[-3:])).reshape(x.shape)
    check_size(x.shape[1:], scales, window)
    taps = jnp.asarray(gaussian_window(window, sigma))
    weights = scale_weights(scales)
    total = jnp.zeros(x.shape[0], jnp.float32)
    for j, wj in enumerate(weights):
        lum, cs = _ssim_maps(x, y, taps, data_range)
        term = jnp.mean(lum * cs, axis=(1, 2, 3)) if j == scales - 1 else jnp.mean(cs, axis=(1, 2, 3))
        total = total + wj * jnp.log(jnp.maximum(term, 1e-6))
        if j < scales - 1:
            x, y = _pool(x), _pool(y)
    return jnp.exp(total).reshape(lead)


def ssim(x: jax.Array, y: jax.Array, *, window: int = 11, sigma: float = 1.5, data_range: float = 1.0) -> jax.Array:
    """Mean SSIM of image pairs (..., H, W, C): (...); MS-SSIM's one-scale case, without its clip."""
    lead = x.shape[:-3]
    x = jnp.asarray(x, jnp.float32).reshape(-1, *x.shape[-3:])
    y = jnp.broadcast_to(jnp.asarray(y, jnp.float32), (*lead, *y.shape[-3:])).reshape(x.shape)
    check_size(x.shape[1:], 1, window, "SSIM")
    lum, cs = _ssim_maps(x, y, jnp.asarray(gaussian_window(window, sigma)), data_range)
    return jnp.mean(lum * cs, axis=(1, 2, 3)).reshape(lead)


def l1(x: jax.Array, y: jax.Array) -> jax.Array:
    """Mean absolute error per image (..., H, W, C) -> (...)."""
    return jnp.mean(jnp.abs(x - y), axis=(-3, -2, -1))


def msssim_l1(x, y, *, alpha: float = ZHAO_ALPHA, scales: int = 5, window: int = 11, sigma: float = 1.5) -> jax.Array:
    """Zhao et al.'s mix: alpha (1 - MS-SSIM) + (1 - alpha) mean |x - y|, per image."""
    return alpha * (1.0 - ms_ssim(x, y, scales=scales, window=window, sigma=sigma)) + (1.0 - alpha) * l1(x, y)


def perceptual(acts_x: list[jax.Array], acts_y: list[jax.Array]) -> jax.Array:
    """Sum over layers of the mean squared difference of two images' activations: (N,)."""
    total = 0.0
    for a, b in zip(acts_x, acts_y):
        total = total + jnp.mean((a - b) ** 2, axis=tuple(range(1, a.ndim)))
    return total


__all__ = ["MS_SSIM_WEIGHTS", "ZHAO_ALPHA", "check_size", "gaussian_window", "l1", "min_side", "ms_ssim",
           "msssim_l1", "perceptual", "scale_weights", "ssim"]
