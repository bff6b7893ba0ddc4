"""A gated PixelCNN (van den Oord et al. 2016, "Conditional Image Generation with PixelCNN
Decoders") over a grid of discrete codes: logits (N, h, w, K) for every position given the
positions before it in raster order (rows top to bottom, each row left to right).

Two stacks of masked convolutions remove the original PixelCNN's blind spot:
- the vertical stack sees the rows above: a k x k kernel whose rows below the centre are
  masked (and, in the first layer, the centre row too, so position (i, j) sees rows < i only);
- the horizontal stack sees the current row to the left: a 1 x k kernel whose columns right of
  the centre are masked (and, in the first layer, the centre column: type "A"; later layers
  keep it: type "B"), plus a 1x1 link from the vertical stack at the same position.
Each gated layer computes tanh(a) * sigmoid(b) on both stacks, with a residual connection on
the horizontal one; the output head reads the horizontal stack.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

_NHWC = ("NHWC", "HWIO", "NHWC")


def causal_mask(kh: int, kw: int, stack: str, include_centre: bool) -> np.ndarray:
    """(kh, kw) 0/1 mask of a vertical ("v") or horizontal ("h") stack kernel."""
    m = np.ones((kh, kw), np.float32)
    ch, cw = kh // 2, kw // 2
    if stack == "v":
        m[ch + 1 :] = 0  # rows below the centre
        if not include_centre:
            m[ch] = 0
    else:
        m[:, cw + 1 :] = 0  # columns right of the centre
        if not include_centre:
            m[:, cw] = 0
    return m


class MaskedConv(nnx.Module):
    """A stride-1 SAME convolution whose kernel is multiplied by `causal_mask` on every call."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int], stack: str, include_centre: bool, *,
                 rngs: nnx.Rngs):
        self.kernel_size, self.stack, self.include_centre = tuple(kernel), stack, include_centre
        init = nnx.initializers.lecun_normal()
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mask = causal_mask(*self.kernel_size, self.stack, self.include_centre)[:, :, None, None]
        w = self.kernel[...] * mask
        y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_NHWC)
        return y + self.bias[...]


def _gate(h: jax.Array) -> jax.Array:
    a, b = jnp.split(h, 2, axis=-1)
    return jnp.tanh(a) * jax.nn.sigmoid(b)


class GatedLayer(nnx.Module):
    """One gated layer of both stacks (type B: each position sees itself in the previous layer)."""

    def __init__(self, c: int, k: int, *, rngs: nnx.Rngs):
        self.v = MaskedConv(c, 2 * c, (k, k), "v", True, rngs=rngs)
        self.h = MaskedConv(c, 2 * c, (1, k), "h", True, rngs=rngs)
        self.v_to_h = nnx.Conv(2 * c, 2 * c, (1, 1), rngs=rngs)
        self.h_out = nnx.Conv(c, c, (1, 1), rngs=rngs)

    def __call__(self, v: jax.Array, h: jax.Array) -> tuple[jax.Array, jax.Array]:
        v_pre = self.v(v)
        h_new = _gate(self.h(h) + self.v_to_h(v_pre))
        return _gate(v_pre), h + self.h_out(h_new)


class GatedPixelCNN(nnx.Module):
    """Codes (N, h, w) int -> logits (N, h, w, K) of p(code_ij | codes before ij in raster order)."""

    def __init__(self, num_codes: int, channels: int, layers: int, kernel: int, *, rngs: nnx.Rngs):
        self.num_codes = num_codes
        self.embed = nnx.Embed(num_codes, channels, rngs=rngs)
        # Type A: position (i, j) sees neither itself nor anything after it.
        self.v_in = MaskedConv(channels, channels, (kernel, kernel), "v", False, rngs=rngs)
        self.h_in = MaskedConv(channels, channels, (1, kernel), "h", False, rngs=rngs)
        self.v_to_h_in = nnx.Conv(channels, channels, (1, 1), rngs=rngs)
        self.layers = nnx.List([GatedLayer(channels, kernel, rngs=rngs) for _ in range(layers)])
        self.head = nnx.Conv(channels, channels, (1, 1), rngs=rngs)
        self.out = nnx.Conv(channels, num_codes, (1, 1), rngs=rngs)

    def logits_from_embeddings(self, e: jax.Array) -> jax.Array:
        """Logits (N, h, w, K) from code embeddings (N, h, w, C) (differentiable in the input)."""
        v = self.v_in(e)
        h = self.h_in(e) + self.v_to_h_in(v)
        # In the first layer the vertical stack excludes row i, so the horizontal stack may take it
        # at its own position; (i, j) still sees only rows < i and (i, < j).
        for layer in self.layers:
            v, h = layer(v, h)
        return self.out(jax.nn.relu(self.head(jax.nn.relu(h))))

    def __call__(self, codes: jax.Array) -> jax.Array:
        return self.logits_from_embeddings(self.embed(codes))

    def log_prob(self, codes: jax.Array) -> jax.Array:
        """log p(codes) (N,) for code grids (N, h, w): the sum over positions of the conditionals."""
        logp = jax.nn.log_softmax(self(codes), axis=-1)
        picked = jnp.take_along_axis(logp, codes[..., None], axis=-1)[..., 0]
        return jnp.sum(picked, axis=(-2, -1))

    def sample(self, key: jax.Array, n: int, grid: tuple[int, int], temperature: float = 1.0,
               top_k: int = 0) -> jax.Array:
        """Ancestral draws (n, h, w): one `lax.fori_loop` over the h * w positions in raster order,
        each drawing from softmax(logits / temperature) restricted to the top_k codes (0: all)."""
        gh, gw = grid

        def body(p, codes):
            i, j = p // gw, p % gw
            logits = self(codes)[:, i, j] / temperature  # (n, K)
            if top_k:
                kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
                logits = jnp.where(logits >= kth, logits, -jnp.inf)
            draw = jax.random.categorical(jax.random.fold_in(key, p), logits).astype(codes.dtype)
            return codes.at[:, i, j].set(draw)

        return jax.lax.fori_loop(0, gh * gw, body, jnp.zeros((n, gh, gw), jnp.int32))


__all__ = ["GatedPixelCNN", "MaskedConv", "causal_mask"]
