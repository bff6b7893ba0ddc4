"""Tests of the data layer: bundled MNIST, user .npz arrays, limit and binarization."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest

from vaekit.data import (
    DATA_SOURCES,
    EVAL_BINARIZATION_SEED,
    Splits,
    binarize_fixed,
    load_data,
)
from vaekit.data.mnist import default_directory, load_mnist_raw
from vaekit.errors import VaekitError
from conftest import random_images, write_npz

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


@pytest.fixture(scope="module")
def mnist() -> Splits:
    return load_data("mnist")


# ----------------------------------------------------------------------------- MNIST


def test_mnist_shapes_dtypes_ranges(mnist):
    assert mnist.image_shape == (28, 28, 1)
    assert mnist.num_classes == 10
    assert mnist.binarize == "none"
    for name, n in (("train", 50_000), ("val", 10_000), ("test", 10_000)):
        split = getattr(mnist, name)
        assert set(split) == {"x", "y"}
        assert split["x"].shape == (n, 28, 28, 1) and split["x"].dtype == np.float32
        assert split["y"].shape == (n,) and split["y"].dtype == np.int32
        assert split["x"].min() == 0.0 and split["x"].max() == 1.0
        assert split["y"].min() == 0 and split["y"].max() == 9


def test_mnist_label_counts(mnist):
    train_counts = np.bincount(mnist.train["y"], minlength=10) + np.bincount(mnist.val["y"], minlength=10)
    assert train_counts.tolist() == TRAIN_COUNTS
    assert np.bincount(mnist.test["y"], minlength=10).tolist() == TEST_COUNTS


def test_mnist_mean_pixel(mnist):
    total = mnist.train["x"].sum(dtype=np.float64) + mnist.val["x"].sum(dtype=np.float64)
    mean = total / (60_000 * 28 * 28)
    assert abs(mean - 33.318 / 255) < 1e-3


def test_mnist_splits_are_the_standard_ones(mnist):
    raw = load_mnist_raw()
    np.testing.assert_array_equal(mnist.val["y"], raw["train_y"][50_000:])
    np.testing.assert_array_equal(mnist.train["x"][123, :, :, 0] * 255, raw["train_x"][123])
    assert not raw["train_x"].flags.writeable  # the per-process cache cannot be modified


def _copy_mnist(tmp_path):
    src = default_directory()
    for name in MNIST_FILES:
        (tmp_path / f"{name}.gz").write_bytes((src / f"{name}.gz").read_bytes())
    return tmp_path


def test_mnist_checksum_mismatch(tmp_path):
    folder = _copy_mnist(tmp_path)
    target = folder / "train-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(target.read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # one wrong label; header and length stay valid
    target.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(VaekitError, match="train-labels-idx1-ubyte") as info:
        DATA_SOURCES["mnist"](str(folder), val_size=10_000, seed=0, limit=None)
    assert "checksum" in str(info.value)
    assert "\n" not in str(info.value)


def test_mnist_truncated_gzip(tmp_path):
    folder = _copy_mnist(tmp_path)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    data = target.read_bytes()
    target.write_bytes(data[: len(data) // 2])
    with pytest.raises(VaekitError, match="t10k-labels-idx1-ubyte.gz is not a valid gzip"):
        load_mnist_raw(folder)


def test_mnist_not_gzip_and_missing(tmp_path):
    folder = _copy_mnist(tmp_path)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(VaekitError, match="train-labels-idx1-ubyte.gz is not a valid gzip"):
        load_mnist_raw(folder)
    (folder / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(VaekitError, match="MNIST file missing: .*train-labels-idx1-ubyte.gz"):
        load_mnist_raw(folder)


def test_mnist_from_a_good_copy(tmp_path):
    folder = _copy_mnist(tmp_path)
    raw = load_mnist_raw(folder)
    np.testing.assert_array_equal(raw["test_y"], load_mnist_raw()["test_y"])


# ------------------------------------------------------------------ options: limit etc.


def test_limit(mnist):
    small = load_data("mnist", limit=1000)
    assert small.train["x"].shape == (1000, 28, 28, 1) and small.train["y"].shape == (1000,)
    np.testing.assert_array_equal(small.train["x"], mnist.train["x"][:1000])
    assert len(small.val["x"]) == 10_000 and len(small.test["x"]) == 10_000
    assert small.num_classes == 10


@pytest.mark.parametrize("limit", [0, -5, 2.5])
def test_bad_limit(limit):
    with pytest.raises(VaekitError, match="limit must be a positive integer"):
        load_data("mnist", limit=limit)


def test_bad_binarize_and_source():
    with pytest.raises(VaekitError, match="none, dynamic, static"):
        load_data("mnist", binarize="stochastic")
    with pytest.raises(VaekitError, match="unknown data source 'cifar'.*arrays.*mnist"):
        load_data("cifar")
    with pytest.raises(VaekitError, match="needs a path"):
        load_data("arrays")


def test_splits_is_frozen(mnist):
    with pytest.raises(dataclasses.FrozenInstanceError):
        mnist.binarize = "static"
    assert "train=50000" in repr(mnist)


# ------------------------------------------------------------------------ binarization


def test_binarize_fixed():
    x = np.random.default_rng(0).random((300, 4, 4, 1), dtype=np.float32)
    a, b, c = binarize_fixed(x, 1), binarize_fixed(x, 1), binarize_fixed(x, 2)
    assert a.dtype == np.float32 and a.shape == x.shape
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert set(np.unique(a).tolist()) == {0.0, 1.0}
    np.testing.assert_array_equal(binarize_fixed(x[:77], 1), a[:77])  # prefix property
    assert binarize_fixed(np.zeros((2, 3, 3, 1), np.float32), 0).max() == 0.0
    assert binarize_fixed(np.ones((2, 3, 3, 1), np.float32), 0).min() == 1.0


@pytest.mark.parametrize("chunk", [7, 64, 1 << 18])
def test_binarize_fixed_in_pieces_equals_one_draw_of_all_uniforms(monkeypatch, chunk):
    """The uniforms are drawn in pieces of one stream: the same draws as one call, u < x."""
    import vaekit.data as data_mod

    monkeypatch.setattr(data_mod, "_BINARIZE_CHUNK", chunk)
    x = np.random.default_rng(5).random((37, 5, 3, 1), dtype=np.float32)  # 555 values, odd
    u = np.random.default_rng(9).random(x.shape, dtype=np.float32)
    np.testing.assert_array_equal(binarize_fixed(x, 9), (u < x).astype(np.float32))
    p = np.full((200, 50), 0.3, np.float32)  # Bernoulli(0.3): mean within 4 standard errors
    assert abs(binarize_fixed(p, 1).mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / p.size)


def test_static_binarization(mnist):
    s0 = load_data("mnist", binarize="static", seed=0, limit=5000)
    s0_again = load_data("mnist", binarize="static", seed=0, limit=5000)
    s1 = load_data("mnist", binarize="static", seed=1, limit=5000)
    assert s0.binarize == "static"
    for name in ("train", "val", "test"):
        x0, x1 = getattr(s0, name)["x"], getattr(s1, name)["x"]
        assert x0.dtype == np.float32
        assert set(np.unique(x0).tolist()) == {0.0, 1.0}
        np.testing.assert_array_equal(x0, getattr(s0_again, name)["x"])
        assert not np.array_equal(x0, x1)
        continuous = getattr(mnist, name)["x"][: len(x0)]
        assert abs(float(x0.mean()) - float(continuous.mean())) < 0.01
    # Exactly the documented draw, and limit does not change the draw of kept rows.
    np.testing.assert_array_equal(s0.val["x"], binarize_fixed(mnist.val["x"], 0))
    np.testing.assert_array_equal(s0.train["x"], binarize_fixed(mnist.train["x"][:5000], 0))
    np.testing.assert_array_equal(s0.train["y"], mnist.train["y"][:5000])


def test_dynamic_binarization(mnist):
    d1 = load_data("mnist", binarize="dynamic", seed=0, limit=2000)
    d2 = load_data("mnist", binarize="dynamic", seed=7, limit=2000)
    np.testing.assert_array_equal(d1.train["x"], mnist.train["x"][:2000])  # continuous
    assert len(np.unique(d1.train["x"])) > 2
    for name in ("val", "test"):
        x = getattr(d1, name)["x"]
        assert set(np.unique(x).tolist()) == {0.0, 1.0}
        # Same evaluation data whatever the run's seed.
        np.testing.assert_array_equal(x, getattr(d2, name)["x"])
        np.testing.assert_array_equal(x, binarize_fixed(getattr(mnist, name)["x"], EVAL_BINARIZATION_SEED))


# ------------------------------------------------------------------------- .npz arrays




def test_arrays_basic_carving(tmp_path):
    x = random_images(50)
    y = np.arange(50) % 3
    path = write_npz(tmp_path, x=x, y=y)
    s = load_data(path=path)  # path alone selects the "arrays" source
    assert s.image_shape == (6, 5, 1)  # (N, H, W) gets a channel axis
    assert s.num_classes == 3
    assert s.train["x"].shape == (40, 6, 5, 1) and s.val["x"].shape == (5, 6, 5, 1)
    np.testing.assert_array_equal(s.train["x"][..., 0], x[:40])
    np.testing.assert_array_equal(s.val["x"][..., 0], x[45:])
    np.testing.assert_array_equal(s.val["y"], y[45:])
    assert s.train["y"].dtype == np.int32
    np.testing.assert_array_equal(s.test["x"][..., 0], x[40:45])  # test: the block before validation
    np.testing.assert_array_equal(s.test["y"], y[40:45])


def test_arrays_val_size_and_limit(tmp_path):
    path = write_npz(tmp_path, x=random_images(1000, (3, 3)))
    s = load_data("arrays", path=path, val_size=7, limit=20)
    assert len(s.val["x"]) == 7 and len(s.train["x"]) == 20
    assert s.num_classes is None and set(s.train) == {"x"}
    # At least one validation example even for tiny data.
    tiny = load_data(path=write_npz(tmp_path, "tiny.npz", x=random_images(4, (2, 2))))
    assert len(tiny.train["x"]) == 2 and len(tiny.val["x"]) == 1 and len(tiny.test["x"]) == 1


def test_arrays_explicit_splits(tmp_path):
    x, xv, xt = random_images(40, (4, 4, 3), 0), random_images(8, (4, 4, 3), 1), random_images(9, (4, 4, 3), 2)
    path = write_npz(tmp_path, x=x, y=np.zeros(40, np.int64), x_val=xv, y_val=np.ones(8, np.uint8),
                x_test=xt, y_test=np.full(9, 4, np.int16))
    s = load_data(path=path)
    assert s.image_shape == (4, 4, 3)
    assert len(s.train["x"]) == 40 and len(s.val["x"]) == 8 and len(s.test["x"]) == 9
    np.testing.assert_array_equal(s.test["x"], xt)
    assert s.num_classes == 5  # max over all splits + 1
    # x_val only: test is carved from the end of x.
    s2 = load_data(path=write_npz(tmp_path, "b.npz", x=x, x_val=xv))
    assert len(s2.train["x"]) == 36 and len(s2.test["x"]) == 4
    np.testing.assert_array_equal(s2.test["x"], x[36:])


def test_arrays_uint8_and_bool(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 4, 4, 1), dtype=np.uint8)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = 0, 255
    s = load_data(path=write_npz(tmp_path, x=x))
    assert s.train["x"].dtype == np.float32 and s.train["x"].min() == 0.0 and s.train["x"].max() == 1.0
    np.testing.assert_allclose(s.train["x"] * 255, x[:16], atol=1e-4)
    b = load_data(path=write_npz(tmp_path, "b.npz", x=x > 128))
    np.testing.assert_array_equal(b.train["x"], (x[:16] > 128).astype(np.float32))


def test_arrays_binarization_of_carved_test(tmp_path):
    path = write_npz(tmp_path, x=random_images(100))
    for mode in ("static", "dynamic"):
        s = load_data(path=path, binarize=mode)
        assert s.test["x"] is not s.val["x"]
        for name in ("val", "test"):
            assert set(np.unique(getattr(s, name)["x"]).tolist()) == {0.0, 1.0}


def test_registry_is_used(monkeypatch):
    def fake(path, *, val_size, seed, limit, data_config):  # every loader takes the DataConfig
        assert (path, val_size, seed, limit, data_config) == (None, 10_000, 3, 2, None)
        x = np.full((4, 2, 2, 1), 0.5, np.float32)
        extra = np.arange(4)
        return {"train": {"x": x, "extra": extra}, "val": {"x": x[:1]}, "test": {"x": x[:1]}}

    monkeypatch.setitem(DATA_SOURCES, "fake", fake)
    s = load_data("fake", binarize="static", seed=3, limit=2)
    assert s.image_shape == (2, 2, 1) and s.num_classes is None
    assert len(s.train["x"]) == 2 and s.train["extra"].tolist() == [0, 1]  # extra arrays are limited too


# Each bad input, with a substring its message must contain.
BAD_NPZ = {
    "no_x": (dict(images=random_images(10)), ["no array 'x'", "'images'"]),
    "ndim": (dict(x=np.zeros(10, np.float32)), ["ndim 1", "(N, D)", "(N, H, W)"]),
    "ndim5": (dict(x=np.zeros((2, 2, 2, 2, 2), np.float32)), ["ndim 5"]),
    "empty": (dict(x=np.zeros((0, 3, 3), np.float32)), ["empty"]),
    "strings": (dict(x=np.array([[["a"]]] * 3)), ["non-numeric dtype"]),
    "complex": (dict(x=np.zeros((3, 2, 2), np.complex64)), ["non-numeric dtype complex64"]),
    "int64": (dict(x=np.zeros((3, 2, 2), np.int64)), ["integer dtype int64", "uint8"]),
    "range": (dict(x=np.array([-0.5, 0.2, 2.0] * 4, np.float32).reshape(3, 2, 2)), ["out of range", "min -0.5", "max 2"]),
    "y_length": (dict(x=random_images(10), y=np.zeros(9, np.int64)), ["'y'", "(9,)", "expected (10,)"]),
    "y_float": (dict(x=random_images(10), y=np.zeros(10, np.float32)), ["'y'", "float32", "integers"]),
    "y_negative": (dict(x=random_images(10), y=np.array([0, 1, -1, -2, 3, 0, 0, 0, 0, 0])), ["2 negative labels"]),
    "y_val_without_x_val": (dict(x=random_images(10), y_val=np.zeros(3, np.int64)), ["'y_val' but no 'x_val'"]),
    "labels_inconsistent": (dict(x=random_images(10), y=np.zeros(10, np.int64), x_val=random_images(3)), ["has 'y' but no 'y_val'", "(y, y_val)"]),
    "val_shape": (dict(x=random_images(10), x_val=random_images(3, (5, 5))), ["'x_val' images have shape"]),
    "bad_x_val": (dict(x=random_images(10), x_val=random_images(3) + 1), ["'x_val'", "out of range"]),
    "too_few": (dict(x=random_images(3)), ["1 training examples", "at least 2"]),
}


@pytest.mark.parametrize("case", sorted(BAD_NPZ))
def test_arrays_bad_inputs(tmp_path, case):
    arrays, substrings = BAD_NPZ[case]
    path = write_npz(tmp_path, **arrays)
    with pytest.raises(VaekitError) as info:
        load_data(path=path)
    message = str(info.value)
    assert "\n" not in message and path in message
    for s in substrings:
        assert s in message, (s, message)


def test_arrays_nan_inf(tmp_path):
    x = random_images(10)
    x[0, 0, 0] = x[1, 1, 1] = np.nan
    x[2, 2, 2] = np.inf
    with pytest.raises(VaekitError, match=r"3 non-finite values \(2 NaN, 1 Inf\)"):
        load_data(path=write_npz(tmp_path, x=x.astype(np.float64)))


def test_arrays_bad_files(tmp_path):
    with pytest.raises(VaekitError, match="data file not found"):
        load_data(path=str(tmp_path / "nope.npz"))
    with pytest.raises(VaekitError, match="is a directory"):
        load_data(path=str(tmp_path))
    text = tmp_path / "text.npz"
    text.write_text("hello")
    with pytest.raises(VaekitError, match="not a valid .npz"):
        load_data(path=str(text))
    good = write_npz(tmp_path, x=random_images(10))
    truncated = tmp_path / "truncated.npz"
    data = open(good, "rb").read()
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(VaekitError, match="not a valid .npz|cannot be read"):
        load_data(path=str(truncated))
    npy = tmp_path / "single.npy"
    np.save(npy, random_images(10))
    with pytest.raises(VaekitError, match="not an .npz"):
        load_data(path=str(npy))
    objects = tmp_path / "objects.npz"
    np.savez(objects, x=np.array([None, 1, "a"], dtype=object))
    with pytest.raises(VaekitError, match="'x' has a non-numeric \\(object\\) dtype"):
        load_data(path=str(objects))


def test_mnist_is_the_default_without_path():
    assert load_data(limit=10).image_shape == (28, 28, 1)


def test_package_data_is_readable():
    assert (default_directory() / "README.md").read_text().startswith("# MNIST")


def test_prefetch_hands_its_splits_or_its_error_to_the_next_load(tmp_path, monkeypatch):
    """`vaekit train` loads the data in a thread while it imports: the load that follows gets exactly
    those splits (or the loader's error, raised there), once; another config loads on its own."""
    import threading

    from vaekit.config import DataConfig
    from vaekit.data import load_configured, prefetch

    calls = []

    def loader(path, **kw):
        calls.append(threading.current_thread().name)
        return DATA_SOURCES["arrays"](path, **kw)

    monkeypatch.setitem(DATA_SOURCES, "counted", loader)
    cfg = DataConfig(source="counted", path=write_npz(tmp_path, x=random_images(40)), binarize="static", seed=3)
    direct = load_configured(cfg)
    prefetch(cfg)
    handed = load_configured(cfg)
    assert calls == ["MainThread", "vaekit-data-prefetch"]  # loaded once more, in the thread
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(handed, name)["x"], getattr(direct, name)["x"])
    prefetch(cfg)
    other = load_configured(dataclasses.replace(cfg, seed=4))  # not what was prefetched: loaded here
    assert calls[-1] == "MainThread" and not np.array_equal(other.train["x"], handed.train["x"])
    load_configured(cfg)  # the pending prefetch of cfg is still taken
    assert calls.count("vaekit-data-prefetch") == 2 and len(calls) == 4
    prefetch(bad := dataclasses.replace(cfg, path=str(tmp_path / "missing.npz")))
    with pytest.raises(VaekitError, match="missing.npz"):
        load_configured(bad)
    with pytest.raises(VaekitError, match="missing.npz"):  # taken once: the next call loads (and fails) itself
        load_configured(bad)
    assert calls[-2:] == ["vaekit-data-prefetch", "MainThread"]
    from vaekit.data import drop_prefetched

    prefetch(cfg)
    drop_prefetched()  # what `vaekit train` does when it fails before the data is taken
    here = calls.count("MainThread")
    load_configured(cfg)  # loads here (the dropped thread may still append its own call)
    assert calls.count("MainThread") == here + 1


def test_library_made_arrays_are_aligned_read_only_and_the_trainer_uses_them_in_place():
    """MNIST's pixels and binarized splits are new, 64-byte aligned and read-only, so the trainer
    puts them on the CPU device without a copy; an array a caller may still write to is copied."""
    import jax

    from vaekit.data import _binarize_splits
    from vaekit.data.memory import ALIGNMENT, empty_aligned
    from vaekit.data.mnist import _to_float
    from vaekit.training.loop import Trainer
    from conftest import synthetic_splits, tiny_config

    raw = np.arange(3 * 28 * 28, dtype=np.int64).reshape(3, 28, 28).astype(np.uint8)
    x = _to_float(raw)
    np.testing.assert_array_equal(x, raw[..., None].astype(np.float32) / np.float32(255))
    for odd in ((3,), (5, 7), (1, 2, 3)):
        assert empty_aligned(odd, np.float32).ctypes.data % ALIGNMENT == 0
    src = synthetic_splits(n=60)
    binarized = _binarize_splits({"train": src.train, "val": src.val, "test": src.test}, "static", 0)
    for name, split in binarized.items():
        assert split["x"].ctypes.data % ALIGNMENT == 0 and not split["x"].flags.writeable
        np.testing.assert_array_equal(split["x"], binarize_fixed(getattr(src, name)["x"], 0))
    assert src.train["x"].flags.writeable  # the caller's arrays are left as they were
    frozen = dataclasses.replace(src, train=binarized["train"])
    on_device = Trainer(tiny_config(), frozen).train_data["x"]
    if jax.default_backend() == "cpu":
        assert on_device.unsafe_buffer_pointer() == frozen.train["x"].ctypes.data  # aliased, not copied
    writable = empty_aligned(src.train["x"].shape, np.float32)  # aligned, but the caller may still write
    writable[:] = src.train["x"]
    copied = Trainer(tiny_config(), dataclasses.replace(src, train={**src.train, "x": writable})).train_data["x"]
    before = np.asarray(copied).copy()
    writable[:] = 0.5  # a caller writing to its own array afterwards changes nothing on the device
    np.testing.assert_array_equal(np.asarray(copied), before)
