"""Tests of vaekit.plots: pixel-exact grids, any channel count, atomic writes."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image

from vaekit import plots


def _rng(seed=0):
    return np.random.default_rng(seed)


def _expected_tile(image: np.ndarray, scale: int) -> np.ndarray:
    """The data as 0..255 pixels, each repeated scale x scale times (computed here, not by plots)."""
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.repeat(np.repeat(pixels, scale, axis=0), scale, axis=1)


def _read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im).copy(), im.mode, im.format


def _find(picture: np.ndarray, tile: np.ndarray) -> list[tuple[int, int]]:
    """Every (x, y) where ``tile`` occurs exactly in ``picture`` (2-D, uint8)."""
    windows = sliding_window_view(picture, tile.shape)
    hits = np.argwhere((windows == tile).all(axis=(-2, -1)))
    return [(int(x), int(y)) for y, x in hits]


def test_grid_tiles_are_exact_integer_upscales(tmp_path):
    images = _rng().random((10, 28, 28, 1), dtype=np.float32)
    path = tmp_path / "samples.png"
    plots.save_images(path, images, ncols=4, title="10 samples", row_labels=["a", "b", "c"])
    picture, mode, fmt = _read(path)
    assert fmt == "PNG" and mode == "L"
    # Found independently of the layout the module reports: the first tile, upscaled 2x
    # (28 px -> 56 px, the smallest integer scale reaching MIN_TILE), is in the file, once.
    first = _expected_tile(images[0, ..., 0], 2)
    hits = _find(picture, first)
    assert len(hits) == 1
    _, scale, origins = plots.render_images(images, 4, title="10 samples", row_labels=["a", "b", "c"])
    assert scale == 2 and hits == [origins[0][0]]
    for i, (x, y) in enumerate(origins[0]):
        np.testing.assert_array_equal(picture[y : y + 56, x : x + 56], _expected_tile(images[i, ..., 0], 2))
    # Tiles do not overlap and are separated.
    xs = sorted({x for x, _ in origins[0]})
    assert all(b - a >= 56 + 1 for a, b in zip(xs, xs[1:]))
    # The title is drawn (dark text pixels) above the first tile.
    assert picture[: origins[0][0][1], :].min() < 100


def test_reading_size_and_cap():
    _, scale, _ = plots.render_images(np.zeros((4, 64, 64, 1)), 4)
    assert scale == 1  # already readable: never resampled
    _, scale, _ = plots.render_images(np.zeros((4, 8, 8, 1)), 4)
    assert scale == 7
    picture, scale, _ = plots.render_images(np.zeros((200, 28, 28, 1)), 100)
    assert scale == 1 and picture.size[0] <= plots.MAX_SIDE + 50  # a huge grid is not blown up


@pytest.mark.parametrize("channels, mode", [(3, "RGB"), (4, "RGBA")])
def test_rgb_and_rgba_are_exact(tmp_path, channels, mode):
    images = _rng(1).random((5, 20, 20, channels), dtype=np.float32)
    path = tmp_path / "colour.png"
    plots.save_images(path, images, ncols=3, title="colour")
    picture, got_mode, _ = _read(path)
    assert got_mode == mode
    _, scale, origins = plots.render_images(images, 3, title="colour")
    assert scale == 3
    for i, (x, y) in enumerate(origins[0]):
        np.testing.assert_array_equal(picture[y : y + 60, x : x + 60], _expected_tile(images[i], 3))


@pytest.mark.parametrize("channels", [2, 5, 10])
def test_other_channel_counts_one_panel_per_channel(tmp_path, channels):
    images = _rng(2).random((6, 16, 16, channels), dtype=np.float32)
    path = tmp_path / f"c{channels}.png"
    plots.save_images(path, images, ncols=3, title="odd channels")  # used to raise TypeError: Invalid shape
    picture, mode, _ = _read(path)
    assert mode == "L"
    picture_again, scale, origins = plots.render_images(images, 3, title="odd channels")
    assert len(origins) == min(channels, plots.MAX_PANELS)
    for k, panel in enumerate(origins):
        for i, (x, y) in enumerate(panel):
            np.testing.assert_array_equal(picture[y : y + 16 * scale, x : x + 16 * scale],
                                          _expected_tile(images[i, ..., k], scale))
    np.testing.assert_array_equal(np.asarray(picture_again), picture)


def test_greyscale_vectors_uint8_bool_and_nan(tmp_path):
    grey = _rng(3).random((4, 9, 9), dtype=np.float32)  # (N, H, W)
    _, scale, origins = plots.render_images(grey, 2)
    plots.save_images(tmp_path / "grey.png", grey, ncols=2)
    picture, _, _ = _read(tmp_path / "grey.png")
    x, y = origins[0][3]
    np.testing.assert_array_equal(picture[y : y + 9 * scale, x : x + 9 * scale], _expected_tile(grey[3], scale))

    vectors = _rng(4).random((3, 12))  # (N, D): 1 x D strips
    picture, scale, origins = plots.render_images(vectors, 3)
    x, y = origins[0][2]
    np.testing.assert_array_equal(np.asarray(picture)[y : y + scale, x : x + 12 * scale],
                                  _expected_tile(vectors[2:3], scale))

    u8 = _rng(5).integers(0, 256, (2, 28, 28, 1), dtype=np.uint8)  # taken as 0..255
    picture, _, origins = plots.render_images(u8, 2)
    x, y = origins[0][1]
    np.testing.assert_array_equal(np.asarray(picture)[y : y + 56, x : x + 56], u8[1, ..., 0].repeat(2, 0).repeat(2, 1))

    b = np.zeros((1, 28, 28), bool)
    b[0, :5] = True
    picture, _, origins = plots.render_images(b, 1)
    x, y = origins[0][0]
    assert np.asarray(picture)[y, x] == 255 and np.asarray(picture)[y + 55, x] == 0

    nan = np.full((1, 28, 28), np.nan, np.float32)
    picture, _, origins = plots.render_images(nan, 1)
    x, y = origins[0][0]
    assert np.asarray(picture)[y : y + 56, x : x + 56].max() == 0


def test_reconstructions_traversal_and_matplotlib_writers(tmp_path):
    x = _rng(6).random((16, 28, 28, 1), dtype=np.float32)
    plots.save_reconstructions(tmp_path / "reconstructions.png", x, 1.0 - x, ncols=8)
    picture, _, _ = _read(tmp_path / "reconstructions.png")
    assert _find(picture, _expected_tile(1.0 - x[9, ..., 0], 2))  # an output tile, exact
    plots.save_traversal(tmp_path / "traversal.png", x[:15], ["z0 KL 1.00", "z1 KL 0.50", "z2 KL 0.01"],
                         np.linspace(-2, 2, 5))
    assert _find(_read(tmp_path / "traversal.png")[0], _expected_tile(x[14, ..., 0], 2))
    history = [{"epoch": e, "train/loss": 1.0 / e, "val/loss": 1.1 / e, "val/kl_per_dim": [0.1 * e, 0.001]}
               for e in (1, 2, 3)]
    plots.save_curves(tmp_path / "curves.png", history)
    plots.save_kl_heatmap(tmp_path / "kl_per_dim.png", history)
    layers = {"z1": (0, 2), "z2": (2, 3)}
    plots.save_kl_heatmap(tmp_path / "none.png", history, layers={})  # one layer only: nothing drawn
    for h in history:
        h.update({"val/kl_per_dim": [0.5, 1e-4, 0.02 * h["epoch"]], "val/kl/z1": 3.0, "val/active_units/z1": 1})
    plots.save_kl_heatmap(tmp_path / "layers.png", history, layers=layers)
    for name in ("curves.png", "kl_per_dim.png", "layers.png"):
        assert _read(tmp_path / name)[2] == "PNG"
    # A long run's heatmaps stay a readable size (one column per epoch, at most 14 inches wide):
    # 1,000 epochs once gave a kl_per_dim.png 30,000 pixels wide.
    long = [{"epoch": e, "val/kl_per_dim": [0.1, 0.001, 0.02]} for e in range(1, 1001)]
    plots.save_kl_heatmap(tmp_path / "kl_per_dim.png", long)
    plots.save_kl_heatmap(tmp_path / "layers.png", long, layers=layers)
    for name in ("kl_per_dim.png", "layers.png"):
        assert _read(tmp_path / name)[0].shape[1] < 1600
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "curves.png", "kl_per_dim.png", "layers.png", "reconstructions.png", "traversal.png"]  # no temporary files left


def test_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "samples.png"
    plots.save_images(path, np.zeros((4, 8, 8, 1)), ncols=2)
    before = path.read_bytes()

    def broken_save(self, fp, *args, **kwargs):
        with open(fp, "wb") as f:
            f.write(b"half a PNG")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        plots.save_images(path, np.ones((4, 8, 8, 1)), ncols=2)
    assert path.read_bytes() == before  # the old picture is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]  # and the temporary file is gone


def test_image_grid_api_unchanged():
    images = _rng(7).random((5, 3, 4, 1), dtype=np.float32)
    grid = plots.image_grid(images, 2)
    assert grid.shape == (3 * 5 + 2, 2 * 6 + 2, 1) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[2:5, 2:6], images[0])
    assert grid[0, 0, 0] == 0.5
    assert plots.image_grid(images[..., 0], 5, pad=0).shape == (3, 20, 1)
