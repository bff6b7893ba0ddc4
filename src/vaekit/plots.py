"""Pictures of a run: image grids (samples, reconstructions, interpolations, traversals),
curves and KL heatmaps.

Image grids are written pixel-exact with Pillow, not through a matplotlib figure (which
resamples: a 28x28 digit came out blurred at about 40 px). Every tile of a grid is an
exact integer upscale of its image (each pixel becomes an ``s x s`` block), where
``s`` is the smallest integer that makes a tile at least :data:`MIN_TILE` pixels on its
longer side (28x28 MNIST -> 2, 64x64 -> 1), lowered when the grid would exceed
:data:`MAX_SIDE` pixels. Tiles are separated by :data:`SEPARATOR` grey pixels; a title
and row labels are drawn in a white margin with Pillow's default font. Grids are always
written as PNG (lossless).

Pixel values: floats are clipped to [0, 1] and mapped to 0..255 by ``round(255 * v)``
(NaN shows as 0, black); uint8 is taken as 0..255; booleans as 0/255.

Channels (the last axis of (N, H, W, C)):

* 1: greyscale; 3: RGB.
* 4: RGBA, written as an RGBA PNG (alpha kept, so a viewer shows transparent pixels
  over its own background).
* 2 or 5 and more: one greyscale grid per channel, side by side, each headed
  "channel k" (at most :data:`MAX_PANELS` of them; the title says when some are left
  out). Nothing is blended or dropped silently.

(N, H, W) is greyscale; (N, D) vectors are drawn as 1 x D strips.

Curves and heatmaps (:func:`save_curves`, :func:`save_kl_heatmap`) and a model's own picture
data (:func:`save_picture`: bars, maps, image grids) use matplotlib.

All writers take host arrays and a path, and write atomically (a temporary file in the
same directory renamed into place), so an interrupted run never leaves a half-written
picture.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

from vaekit.models.base import Bars, Heatmap, ImageGrid, PictureData  # noqa: E402
from vaekit.runs.layout import atomic_write  # noqa: E402

#: Smallest size in pixels of a tile's longer side that integer upscaling aims for.
MIN_TILE = 56
#: Largest width or height of a grid of tiles before the upscale factor is lowered (never below 1).
MAX_SIDE = 4096
#: Pixels of separator between tiles (and around the grid), after upscaling.
SEPARATOR = 2
#: Most per-channel panels drawn for images whose channel count is not 1, 3 or 4.
MAX_PANELS = 8

_SEPARATOR_GREY = 128
_MARGIN = 4  # white border around everything, pixels
_PANEL_GAP = 10  # white gap between per-channel panels, pixels


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile images (N, H, W, C) in [0, 1] into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) array.

    The grid is float32 at the images' own resolution (no upscaling) with 0.5 grey padding;
    (N, H, W) images get one channel and (N, D) vectors become (N, 1, D, 1) strips.
    """
    images = np.clip(np.nan_to_num(_as_nhwc(np.asarray(images, np.float32)), nan=0.0), 0.0, 1.0)
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 0.5, np.float32)
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def _as_nhwc(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) view of images given as (N, H, W, C), (N, H, W) or (N, D) vectors."""
    if images.ndim == 2:
        return images[:, None, :, None]
    if images.ndim == 3:
        return images[..., None]
    if images.ndim == 4:
        return images
    raise ValueError(f"images must have shape (N, H, W, C), (N, H, W) or (N, D), got {images.shape}")


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Pixels as uint8 0..255: floats clipped to [0, 1] and rounded (NaN -> 0), uint8 as is, bool -> 0/255."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_:
        return images.astype(np.uint8) * np.uint8(255)
    v = np.nan_to_num(images.astype(np.float32), nan=0.0)
    return np.rint(np.clip(v, 0.0, 1.0) * 255.0).astype(np.uint8)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)  # FreeType font (Pillow >= 10.1)
    except TypeError:  # older Pillow: the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw: ImageDraw.ImageDraw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom


def _wrap(draw, text: str, font, width: int) -> list[str]:
    """Greedy word wrap of ``text`` to lines at most ``width`` pixels wide (a long word stays whole)."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if line and _text_size(draw, candidate, font)[0] > width:
                lines.append(line)
                line = word
            else:
                line = candidate
        lines.append(line)
    return lines


def _upscale_factor(h: int, w: int, nrows: int, ncols_total: int) -> int:
    s = max(1, -(-MIN_TILE // max(h, w)))
    while s > 1 and max(nrows * (h * s + SEPARATOR), ncols_total * (w * s + SEPARATOR)) + SEPARATOR > MAX_SIDE:
        s -= 1
    return s


def render_images(images: np.ndarray, ncols: int = 8, title: str | None = None, row_labels=None):
    """Draw a grid of images as a Pillow image (what :func:`save_images` writes).

    Args:
        images: (N, H, W, C), (N, H, W) or (N, D); see the module docstring for values
            and channels.
        ncols: tiles per row (at most N).
        title: text above the grid, wrapped to its width.
        row_labels: one label per row of tiles, drawn left of the grid.

    Returns:
        ``(picture, scale, origins)``: the ``PIL.Image.Image`` (mode ``L``, ``RGB`` or
        ``RGBA``), the integer upscale factor, and ``origins[p][i] = (x, y)``, the
        top-left pixel of tile ``i`` in panel ``p`` (one panel unless the images are
        drawn per channel). Tile ``i`` of panel ``p`` is exactly
        ``to_uint8(images)[i, ..., p].repeat(scale, 0).repeat(scale, 1)`` (all channels
        for 1, 3 or 4 channels).
    """
    pixels = to_uint8(_as_nhwc(np.asarray(images)))
    n, h, w, c = pixels.shape
    if n == 0:
        raise ValueError("no images to draw")
    ncols = max(1, min(int(ncols), n))
    nrows = -(-n // ncols)

    if c in (1, 3, 4):
        mode = {1: "L", 3: "RGB", 4: "RGBA"}[c]
        panels = [pixels]
        headers: list[str] = []
    else:
        mode = "L"
        shown = min(c, MAX_PANELS)
        panels = [pixels[..., k : k + 1] for k in range(shown)]
        headers = [f"channel {k}" for k in range(shown)]
        note = f"{c} channels, one grey panel each" + (f"; channels 0-{shown - 1} shown" if shown < c else "")
        title = f"{title} ({note})" if title else note
    white = {"L": 255, "RGB": (255, 255, 255), "RGBA": (255, 255, 255, 255)}[mode]
    black = {"L": 0, "RGB": (0, 0, 0), "RGBA": (0, 0, 0, 255)}[mode]
    sep_fill = np.array({"L": [_SEPARATOR_GREY], "RGB": [_SEPARATOR_GREY] * 3,
                         "RGBA": [_SEPARATOR_GREY] * 3 + [255]}[mode], np.uint8)

    s = _upscale_factor(h, w, nrows, ncols * len(panels))
    th, tw = h * s, w * s
    grid_h = nrows * (th + SEPARATOR) + SEPARATOR
    grid_w = ncols * (tw + SEPARATOR) + SEPARATOR

    font = _font()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    line_h = _text_size(measure, "Ag", font)[1] + 3
    labels = [str(v) for v in row_labels][:nrows] if row_labels is not None else []
    label_w = max((_text_size(measure, t, font)[0] for t in labels), default=0)
    left = _MARGIN + (label_w + 6 if labels else 0)
    content_w = len(panels) * grid_w + (len(panels) - 1) * _PANEL_GAP
    width = left + content_w + _MARGIN
    title_lines = _wrap(measure, title, font, max(width - 2 * _MARGIN, 240)) if title else []
    width = max(width, max((_text_size(measure, t, font)[0] for t in title_lines), default=0) + 2 * _MARGIN)
    top = _MARGIN + len(title_lines) * line_h + (line_h if headers else 0)
    height = top + grid_h + _MARGIN

    canvas = np.empty((height, width, c if c in (3, 4) else 1), np.uint8)
    canvas[...] = np.array(white, np.uint8).reshape(-1)
    origins: list[list[tuple[int, int]]] = []
    for p, panel in enumerate(panels):
        x0 = left + p * (grid_w + _PANEL_GAP)
        canvas[top : top + grid_h, x0 : x0 + grid_w] = sep_fill
        up = panel.repeat(s, axis=1).repeat(s, axis=2)  # exact nearest-neighbour upscale
        tiles = []
        for i in range(n):
            r, col = divmod(i, ncols)
            y, x = top + SEPARATOR + r * (th + SEPARATOR), x0 + SEPARATOR + col * (tw + SEPARATOR)
            canvas[y : y + th, x : x + tw] = up[i]
            tiles.append((x, y))
        origins.append(tiles)

    picture = Image.fromarray(canvas[..., 0] if canvas.shape[-1] == 1 else canvas, mode)
    draw = ImageDraw.Draw(picture)
    for k, line in enumerate(title_lines):
        draw.text((_MARGIN, _MARGIN + k * line_h), line, fill=black, font=font)
    for p, header in enumerate(headers):
        draw.text((left + p * (grid_w + _PANEL_GAP), top - line_h), header, fill=black, font=font)
    for r, label in enumerate(labels):
        tw_label, th_label = _text_size(measure, label, font)
        y = top + SEPARATOR + r * (th + SEPARATOR) + (th - th_label) // 2
        draw.text((left - 6 - tw_label, y), label, fill=black, font=font)
    return picture, s, origins


def save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (its format from the suffix, PNG by default) and close it."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)


def save_images(path, images: np.ndarray, ncols: int = 8, title: str | None = None, row_labels=None) -> None:
    """Write a grid of images (N, H, W, C) to a PNG, pixel-exact; optional title and one label per row.

    See :func:`render_images` and the module docstring (upscaling, channels, values).
    """
    picture, _, _ = render_images(images, ncols, title=title, row_labels=row_labels)
    atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def save_reconstructions(path, x: np.ndarray, x_hat: np.ndarray, ncols: int = 8) -> None:
    """Inputs and their reconstructions in alternating rows (labelled "input" and "output")."""
    n = (len(x) // ncols) * ncols or len(x)
    rows = []
    for s in range(0, n, ncols):
        # Each to 0..255 on its own: inputs may be uint8 while outputs are floats.
        rows += [to_uint8(_as_nhwc(np.asarray(x[s : s + ncols]))), to_uint8(_as_nhwc(np.asarray(x_hat[s : s + ncols])))]
    labels = ["input", "output"] * (len(rows) // 2)
    save_images(path, np.concatenate(rows), ncols, title="inputs and their reconstructions", row_labels=labels)


def save_bars(path, bars: Bars) -> None:
    """A bar chart of `bars.heights` (e.g. assignments per code, most used first) on a symlog axis."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(bars.heights)), bars.heights, width=1.0)
    ax.set_yscale("symlog", linthresh=1)
    ax.set_xlabel(bars.xlabel)
    ax.set_ylabel(bars.ylabel)
    ax.set_title(bars.title, fontsize=9)
    save_figure(fig, Path(path))


def save_heatmap(path, heatmap: Heatmap) -> None:
    """A map of values (h, w) from 0 to `heatmap.vmax` (e.g. the code entropy at each grid position)."""
    fig, ax = plt.subplots(figsize=(4, 3.4))
    im = ax.imshow(heatmap.values, cmap="viridis", vmin=0, vmax=heatmap.vmax, interpolation="nearest")
    fig.colorbar(im, ax=ax, label=heatmap.colorbar)
    ax.set_title(heatmap.title, fontsize=9)
    save_figure(fig, Path(path))


def save_picture(path, data: PictureData) -> None:
    """Draw a model's picture data (`ModelBase.picture_data`) to `path`."""
    if isinstance(data, ImageGrid):
        save_images(path, data.images, ncols=data.ncols, title=data.title)
    elif isinstance(data, Bars):
        save_bars(path, data)
    elif isinstance(data, Heatmap):
        save_heatmap(path, data)
    else:
        raise TypeError(f"no drawing for picture data of type {type(data).__name__}")


def save_curves(path, history: list[dict]) -> None:
    """Loss, reconstruction and KL per epoch, train and validation, from metrics.jsonl epoch records."""
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(axes, ("loss", "recon", "kl"), ("loss", "reconstruction (nats)", "KL (nats)")):
        for split, style in (("train", "-o"), ("val", "--s")):
            ys = [h.get(f"{split}/{key}") for h in history]
            if any(y is not None for y in ys):
                ax.plot(epochs, [np.nan if y is None else y for y in ys], style, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


def _heatmap_width(columns: int) -> float:
    """Figure width (inches) of a heatmap with one column per epoch: wider with more epochs, at most 14."""
    return min(14.0, max(4.0, 0.3 * columns + 3))


def _epoch_ticks(ax, epochs: list[int], most: int = 30) -> None:
    """Label a heatmap's columns with their epochs: every column up to `most`, else about 10 of them."""
    step = 1 if len(epochs) <= most else int(np.ceil(len(epochs) / 10))
    ticks = list(range(0, len(epochs), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([str(epochs[i]) for i in ticks], fontsize=7)


def save_kl_heatmap(path, history: list[dict], layers: dict | None = None, key: str = "val/kl_per_dim") -> None:
    """KL of each latent dimension (rows) per epoch (columns), on a log scale: shows which units are
    in use. With `layers` ({name: (start, stop)} of the code, a hierarchical model's), one panel per
    layer, titled with the layer's KL and active units at the last epoch; nothing without layers."""
    records = [h for h in history if key in h]
    if not records or layers == {}:
        return
    kl = np.asarray([h[key] for h in records], np.float64).T  # (D, epochs)
    panels = layers or {None: (0, kl.shape[0])}
    heights = [max(1.2, 0.1 * (b - a) + 0.8) if layers else max(3, 0.12 * (b - a) + 1.5) for a, b in panels.values()]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, figsize=(_heatmap_width(kl.shape[1]), sum(heights)),
                             gridspec_kw={"height_ratios": heights})
    last = records[-1]
    top = max(0.0, float(np.log10(max(kl.max(), 1e-4))))
    for ax, (name, (a, b)) in zip(axes[:, 0], panels.items()):
        im = ax.imshow(np.log10(np.maximum(kl[a:b], 1e-4)), aspect="auto", cmap="viridis", interpolation="nearest",
                       vmin=-4, vmax=top)
        if name is None:
            ax.set_title("KL per latent dimension (validation)", fontsize=10)
        else:
            total, units = last.get(f"val/kl/{name}"), last.get(f"val/active_units/{name}")
            parts = [f"{name}: {b - a} units"] + ([f"{units} active"] if units is not None else []) + (
                [f"KL {total:.2f} nats"] if total is not None else [])
            ax.set_title(", ".join(parts) + f" (epoch {last['epoch']})", fontsize=9)
        ax.set_ylabel("latent dimension")
        _epoch_ticks(ax, [h["epoch"] for h in records])
        fig.colorbar(im, ax=ax, label="log10 KL (nats); < -2 is inactive")
    axes[-1, 0].set_xlabel("epoch")
    fig.tight_layout()
    save_figure(fig, path)


def save_traversal(path, images: np.ndarray, labels: list[str], values: np.ndarray) -> None:
    """A latent traversal grid: images (rows * cols, H, W, C), one row per latent, labelled."""
    cols = len(values)
    save_images(path, images, ncols=cols, row_labels=labels,
                title=f"latent traversals from {values[0]:g} to {values[-1]:g} (rows ordered by KL)")
