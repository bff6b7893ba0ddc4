"""Pictures of a run: image grids (samples, reconstructions, interpolations), curves, KL heatmaps.

All writers take host arrays and a path, and write atomically (a temporary file renamed into
place), so an interrupted run never leaves a half-written picture.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: runs on servers and in CI

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def image_grid(images: np.ndarray, ncols: int, pad: int = 2) -> np.ndarray:
    """Tile images (N, H, W, C) in [0, 1] into one (rows*(H+pad)+pad, cols*(W+pad)+pad, C) array."""
    images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
    if images.ndim == 3:
        images = images[..., None]
    n, h, w, c = images.shape
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), np.float32) * 0.5
    for i in range(n):
        r, col = divmod(i, ncols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def _save_figure(fig, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)


def save_images(path, images: np.ndarray, ncols: int = 8, title: str | None = None, row_labels=None) -> None:
    """Write a grid of images (N, H, W, C) to a PNG; optional title and one label per row."""
    grid = image_grid(images, ncols)
    nrows = -(-len(images) // max(1, min(ncols, len(images))))
    scale = 0.9 if images.shape[1] <= 32 else 1.4
    fig, ax = plt.subplots(figsize=(max(2.0, ncols * scale * 0.6), max(2.0, nrows * scale * 0.6)))
    cmap = "gray" if grid.shape[-1] == 1 else None
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    if row_labels is not None:
        h = images.shape[1] + 2
        ax.set_yticks([2 + h * i + images.shape[1] / 2 for i in range(len(row_labels))])
        ax.set_yticklabels(row_labels, fontsize=7)
    else:
        ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    _save_figure(fig, path)


def save_reconstructions(path, x: np.ndarray, x_hat: np.ndarray, ncols: int = 8) -> None:
    """Inputs and their reconstructions in alternating rows (row 2i: inputs, row 2i+1: outputs)."""
    n = (len(x) // ncols) * ncols or len(x)
    rows = []
    for s in range(0, n, ncols):
        rows += [x[s : s + ncols], x_hat[s : s + ncols]]
    save_images(path, np.concatenate(rows), ncols, title="inputs (odd rows) and reconstructions (even rows)")


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
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def save_kl_heatmap(path, history: list[dict], key: str = "val/kl_per_dim") -> None:
    """KL of each latent dimension (rows) per epoch (columns): shows which units are in use."""
    rows = [h[key] for h in history if key in h]
    if not rows:
        return
    kl = np.asarray(rows, np.float64).T  # (D, epochs)
    fig, ax = plt.subplots(figsize=(max(4, 0.3 * kl.shape[1] + 3), max(3, 0.12 * kl.shape[0] + 1.5)))
    im = ax.imshow(np.log10(np.maximum(kl, 1e-4)), aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("epoch")
    ax.set_ylabel("latent dimension")
    ax.set_xticks(range(kl.shape[1]))
    ax.set_xticklabels([str(h["epoch"]) for h in history if key in h], fontsize=7)
    fig.colorbar(im, ax=ax, label="log10 KL (nats); < -2 is inactive")
    ax.set_title("KL per latent dimension (validation)", fontsize=10)
    _save_figure(fig, path)


def save_traversal(path, images: np.ndarray, labels: list[str], values: np.ndarray) -> None:
    """A latent traversal grid: images (rows * cols, H, W, C), one row per latent, labelled."""
    cols = len(values)
    save_images(path, images, ncols=cols, row_labels=labels,
                title=f"latent traversals from {values[0]:g} to {values[-1]:g} (rows ordered by KL)")
