"""Tests of the user .npz loader (vaekit.data.arrays): carved test split, label rule,
folder hint, flat vectors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vaekit.data import load_data
from vaekit.data.arrays import load_arrays_splits
from vaekit.errors import VaekitError
from conftest import random_images, write_npz




def _error(path, **kwargs) -> str:
    with pytest.raises(VaekitError) as info:
        load_arrays_splits(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ------------------------------------------------------------------------ test split


def test_test_split_is_carved_apart_from_validation(tmp_path):
    x, y = random_images(50), np.arange(50) % 3
    path = write_npz(tmp_path, x=x, y=y)
    s = load_arrays_splits(path, val_size=10_000, seed=0)
    # [train | test | val]: validation is still the last block, test the block before it.
    assert [len(s[k]["x"]) for k in ("train", "val", "test")] == [40, 5, 5]
    np.testing.assert_array_equal(s["train"]["x"][..., 0], x[:40])
    np.testing.assert_array_equal(s["test"]["x"][..., 0], x[40:45])
    np.testing.assert_array_equal(s["val"]["x"][..., 0], x[45:])
    np.testing.assert_array_equal(s["test"]["y"], y[40:45])
    np.testing.assert_array_equal(s["val"]["y"], y[45:])
    assert s["test"]["x"] is not s["val"]["x"]
    # Deterministic, and the same whatever the run's seed.
    again = load_arrays_splits(path, val_size=10_000, seed=7)
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(again[name]["x"], s[name]["x"])


def test_test_split_same_size_rule_as_validation(tmp_path):
    path = write_npz(tmp_path, x=random_images(1000, (3, 3)))
    s = load_arrays_splits(path, val_size=7)
    assert [len(s[k]["x"]) for k in ("train", "val", "test")] == [986, 7, 7]
    s = load_arrays_splits(path)  # a tenth each
    assert [len(s[k]["x"]) for k in ("train", "val", "test")] == [800, 100, 100]
    tiny = load_arrays_splits(write_npz(tmp_path, "tiny.npz", x=random_images(4, (2, 2))))
    assert [len(tiny[k]["x"]) for k in ("train", "val", "test")] == [2, 1, 1]


def test_given_splits_take_precedence(tmp_path):
    x, xv, xt = random_images(40, (4, 4, 3), 0), random_images(8, (4, 4, 3), 1), random_images(9, (4, 4, 3), 2)
    # x_val only: test is carved from the end of x.
    s = load_arrays_splits(write_npz(tmp_path, "a.npz", x=x, x_val=xv))
    np.testing.assert_array_equal(s["val"]["x"], xv)
    np.testing.assert_array_equal(s["test"]["x"], x[36:])
    np.testing.assert_array_equal(s["train"]["x"], x[:36])
    # x_test only: validation is carved from the end of x.
    s = load_arrays_splits(write_npz(tmp_path, "b.npz", x=x, x_test=xt))
    np.testing.assert_array_equal(s["test"]["x"], xt)
    np.testing.assert_array_equal(s["val"]["x"], x[36:])
    np.testing.assert_array_equal(s["train"]["x"], x[:36])
    # Both: nothing carved.
    s = load_arrays_splits(write_npz(tmp_path, "c.npz", x=x, x_val=xv, x_test=xt))
    assert [len(s[k]["x"]) for k in ("train", "val", "test")] == [40, 8, 9]


def test_load_data_test_is_not_validation(tmp_path):
    path = write_npz(tmp_path, x=random_images(100))
    for binarize in ("none", "static", "dynamic"):
        s = load_data(path=path, binarize=binarize)
        assert len(s.test["x"]) == 10 and len(s.val["x"]) == 10 and len(s.train["x"]) == 80
        assert not np.array_equal(s.test["x"], s.val["x"])


def test_too_few_examples_after_carving(tmp_path):
    path = write_npz(tmp_path, x=random_images(3))
    message = _error(path)
    assert path in message and "leaves 1 training examples" in message
    assert "1 for validation and 1 for test" in message and "at least 2" in message


# ------------------------------------------------------------------------ labels


@pytest.mark.parametrize(
    "arrays, given, missing, rule",
    [
        (dict(y=np.zeros(20, np.int64), x_val=random_images(4)), "'y'", "'y_val'", "(y, y_val)"),
        (dict(y=np.zeros(20, np.int64), x_test=random_images(4)), "'y'", "'y_test'", "(y, y_test)"),
        (dict(y=np.zeros(20, np.int64), x_val=random_images(4), x_test=random_images(5)), "'y'", "'y_val', 'y_test'",
         "(y, y_val, y_test)"),
        (dict(y=np.zeros(20, np.int64), x_val=random_images(4), y_val=np.zeros(4, np.int64), x_test=random_images(5)),
         "'y', 'y_val'", "'y_test'", "(y, y_val, y_test)"),
        (dict(x_val=random_images(4), y_val=np.zeros(4, np.int64)), "'y_val'", "'y'", "(y, y_val)"),
    ],
)
def test_partial_labels_name_the_missing_arrays(tmp_path, arrays, given, missing, rule):
    path = write_npz(tmp_path, x=random_images(20), **arrays)
    message = _error(path)
    assert f"data file {path} has {given} but no {missing}: give labels for every split {rule} or for none" in message


def test_labels_on_every_split(tmp_path):
    x, y = random_images(30), np.arange(30) % 4
    s = load_arrays_splits(write_npz(tmp_path, x=x, y=y, x_val=random_images(5), y_val=np.arange(5)))
    assert all(s[k]["y"].dtype == np.int32 for k in ("train", "val", "test"))
    np.testing.assert_array_equal(s["test"]["y"], y[27:])  # carved test takes its labels from y
    unlabelled = load_arrays_splits(write_npz(tmp_path, "b.npz", x=x, x_val=random_images(5)))
    assert all(set(unlabelled[k]) == {"x"} for k in ("train", "val", "test"))


# ------------------------------------------------------------------------ folders


def test_directory_error_gives_a_working_conversion(tmp_path):
    folder = tmp_path / "my digits"  # a space: the command must quote the path
    folder.mkdir()
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (12, 7, 6), dtype=np.uint8)
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{i:03d}.png")
    message = _error(str(folder))
    assert "is a directory (12 image files)" in message and "--set data.source=folder" in message
    command = message.split("`")[1]
    assert command.startswith("python -c ")
    # Run the suggested command as a user would (with this interpreter as `python`).
    subprocess.run(["bash", "-c", command.replace("python", f'"{sys.executable}"', 1)], check=True, timeout=60)
    out = str(tmp_path / "my digits.npz")
    assert os.path.exists(out) and f"use {out}" in message
    s = load_arrays_splits(out)
    np.testing.assert_allclose(s["train"]["x"][..., 0], pictures[:10] / 255.0, atol=1e-6)


def test_empty_directory_still_explains(tmp_path):
    message = _error(str(tmp_path))
    assert "is a directory:" in message and "--set data.source=folder" in message


# ------------------------------------------------------------------------ vectors


def test_float_vectors_any_finite_values(tmp_path):
    x = np.random.default_rng(0).normal(0.0, 50.0, (40, 7))  # float64, far outside [0, 1]
    y = np.arange(40) % 2
    s = load_arrays_splits(write_npz(tmp_path, x=x, y=y, x_val=np.ones((3, 7), np.float16), y_val=np.zeros(3, np.int8)))
    assert s["train"]["x"].dtype == np.float32 and s["train"]["x"].shape == (36, 7)
    np.testing.assert_array_equal(s["train"]["x"], x[:36].astype(np.float32))
    np.testing.assert_array_equal(s["test"]["x"], x[36:].astype(np.float32))
    assert s["val"]["x"].shape == (3, 7) and s["val"]["x"].dtype == np.float32
    np.testing.assert_array_equal(s["test"]["y"], y[36:])


def test_uint8_and_bool_vectors_are_pixels(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (20, 9), dtype=np.uint8)
    s = load_arrays_splits(write_npz(tmp_path, x=x))
    assert s["train"]["x"].shape == (16, 9)
    np.testing.assert_allclose(s["train"]["x"] * 255.0, x[:16], atol=1e-4)
    b = load_arrays_splits(write_npz(tmp_path, "b.npz", x=x > 100))
    np.testing.assert_array_equal(b["val"]["x"], (x[18:] > 100).astype(np.float32))


@pytest.mark.parametrize(
    "arrays, substrings",
    [
        (dict(x=np.array([[0.0, np.nan], [1.0, 2.0], [np.inf, 0.0]] * 4)), ["8 non-finite values (4 NaN, 4 Inf)"]),
        (dict(x=np.full((10, 3), 1e300)), ["too large for float32"]),
        (dict(x=np.zeros((10, 3), np.int64)), ["integer dtype int64"]),
        (dict(x=np.zeros((10, 3)), x_val=np.zeros((2, 4))), ["'x_val' examples have shape (4,)", "(3,)"]),
        (dict(x=np.zeros((10, 3)), x_test=np.zeros((2, 3, 1))), ["'x_test'", "(3, 1, 1)"]),
        (dict(x=np.zeros(10)), ["ndim 1", "(N, D)", "(N, H, W)"]),
    ],
)
def test_bad_vectors(tmp_path, arrays, substrings):
    path = write_npz(tmp_path, **arrays)
    message = _error(path)
    assert path in message
    for s in substrings:
        assert s in message, (s, message)


def test_images_keep_their_shapes(tmp_path):
    s = load_arrays_splits(write_npz(tmp_path, x=random_images(20, (4, 5))))
    assert s["train"]["x"].shape == (16, 4, 5, 1)
    s = load_arrays_splits(write_npz(tmp_path, "c.npz", x=random_images(20, (4, 5, 2))))
    assert s["train"]["x"].shape == (16, 4, 5, 2)
    message = _error(write_npz(tmp_path, "bad.npz", x=random_images(20, (4, 5)) * 3))
    assert "out of range [0, 1]" in message  # float images are still range-checked
