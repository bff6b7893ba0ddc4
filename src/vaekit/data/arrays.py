"""User data from an ``.npz`` file.

The file holds an image array ``x`` of shape (N, H, W) or (N, H, W, C) and,
optionally, integer class labels ``y`` of shape (N,). Separate validation and test
sets may be given as ``x_val``/``y_val`` and ``x_test``/``y_test``; other keys are
ignored. Pixels must be uint8 in 0..255 (scaled to [0, 1]), floats in [0, 1], or
booleans. Every problem is reported as a one-line :class:`~vaekit.errors.VaekitError`
naming the file, the array and what is wrong, because a bad array would otherwise
surface as a NaN loss or a shape error deep inside a jitted training step.
"""

from __future__ import annotations

import os
import zipfile
import zlib

import numpy as np

from vaekit.errors import VaekitError

#: Keys this loader reads; anything else in the archive is ignored.
KNOWN_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Open ``path`` and return the known arrays it contains (read eagerly, file closed)."""
    if not os.path.exists(path):
        raise VaekitError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise VaekitError(f"data path {path} is a directory; expected an .npz file")
    try:
        # allow_pickle=False: a data file must never be able to run code.
        archive = np.load(path, allow_pickle=False)
    except ValueError:
        # np.load falls back to unpickling unknown content, which we refuse; its
        # message ("pickled data") would only confuse, so say what we expected.
        raise VaekitError(f"data file {path} is not a valid .npz archive (expected arrays saved with np.savez)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise VaekitError(f"data file {path} is not a valid .npz archive ({exc})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        # np.load also reads plain .npy files; those have no named arrays.
        raise VaekitError(f"data file {path} is a single .npy array, not an .npz archive; save it with np.savez(path, x=...)")
    with archive:
        keys = list(archive.files)
        if "x" not in keys:
            found = ", ".join(repr(k) for k in keys) or "none"
            raise VaekitError(f"data file {path} has no array 'x' (keys found: {found}); save images with np.savez(path, x=...)")
        out = {}
        for key in KNOWN_KEYS:
            if key not in keys:
                continue
            try:
                out[key] = archive[key]
            except ValueError:
                # Object arrays need pickle, which we refuse; they are never numeric anyway.
                raise VaekitError(f"data file {path}: array '{key}' has a non-numeric (object) dtype") from None
            # zlib.error: a damaged member of an np.savez_compressed archive.
            except (OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
                raise VaekitError(f"data file {path}: array '{key}' cannot be read ({exc})") from None
    return out


def validate_images(x: np.ndarray, key: str, path: str) -> np.ndarray:
    """Check one image array and return it as float32 (N, H, W, C) in [0, 1].

    Args:
        x: the array as stored; (N, H, W) gets a trailing channel axis.
        key: its name in the archive, used in error messages.
        path: the file, used in error messages.

    Raises:
        VaekitError: wrong ndim, empty, non-numeric dtype, NaN/Inf, or values
            outside [0, 1] (floats) / 0..255 (uint8); other integer dtypes are refused
            because 0/1 data and 0..255 data cannot be told apart safely.
    """
    where = f"data file {path}: array '{key}'"
    if x.ndim not in (3, 4):
        raise VaekitError(f"{where} has shape {x.shape} (ndim {x.ndim}); expected (N, H, W) or (N, H, W, C)")
    if x.size == 0:
        raise VaekitError(f"{where} is empty (shape {x.shape})")

    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        np.divide(out, 255.0, out=out)  # in place: a single float32 copy
    elif x.dtype == np.bool_:
        out = x.astype(np.float32)
    elif np.issubdtype(x.dtype, np.integer):
        raise VaekitError(
            f"{where} has integer dtype {x.dtype}; store pixels as uint8 (0..255) or as floats in [0, 1]"
        )
    elif np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        num_bad = int(bad.sum())
        if num_bad:
            num_nan = int(np.isnan(x).sum())
            raise VaekitError(f"{where} contains {num_bad} non-finite values ({num_nan} NaN, {num_bad - num_nan} Inf)")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise VaekitError(f"{where} has values out of range [0, 1]: min {lo:g}, max {hi:g}; float pixels must lie in [0, 1]")
        # float32 inputs are used as they are (no copy); others are converted once.
        out = x.astype(np.float32, copy=False)
    else:
        raise VaekitError(f"{where} has non-numeric dtype {x.dtype}; expected uint8, bool or float pixels")

    if out.ndim == 3:
        out = out[..., None]  # a view: grayscale images get one channel
    return out


def validate_labels(y: np.ndarray, n: int, key: str, path: str) -> np.ndarray:
    """Check integer labels for ``n`` images and return them as int32 (N,).

    Raises:
        VaekitError: not 1-D of length ``n``, not an integer dtype, or negative.
    """
    where = f"data file {path}: array '{key}'"
    if y.ndim != 1 or y.shape[0] != n:
        raise VaekitError(f"{where} has shape {y.shape}; expected ({n},), one label per image")
    if not np.issubdtype(y.dtype, np.integer):
        raise VaekitError(f"{where} has dtype {y.dtype}; labels must be non-negative integers")
    num_negative = int((y < 0).sum())
    if num_negative:
        raise VaekitError(f"{where} has {num_negative} negative labels (min {int(y.min())}); labels must be non-negative integers")
    if n and int(y.max()) > np.iinfo(np.int32).max:
        raise VaekitError(f"{where} has a label {int(y.max())} too large for int32")
    return y.astype(np.int32, copy=False)


def load_arrays_splits(
    path: str | None = None, *, val_size: int = 10_000, seed: int = 0, limit: int | None = None
) -> dict[str, dict[str, np.ndarray]]:
    """Data-source loader for ``"arrays"`` (see ``vaekit.data.DATA_SOURCES``).

    Splits:
      * ``x_val``/``y_val`` in the file become the validation split; without them,
        validation is carved from the END of ``x`` (no shuffling, so shuffle your data
        first if it is ordered): the last ``max(1, min(val_size, N // 10))`` examples.
      * ``x_test``/``y_test`` become the test split; without them **test is the
        validation split** (the very same arrays, ``test["x"] is val["x"]``), so the
        reported "test" numbers are then validation numbers.
      * Labels must be given for every split or for none.

    Args:
        path: the ``.npz`` file (required).
        val_size: largest number of examples to carve for validation.
        seed, limit: unused (the carve is deterministic and ``load_data`` applies
            ``limit`` after it); part of the loader signature.

    Raises:
        VaekitError: for any of the problems listed in :func:`validate_images` and
            :func:`validate_labels`, a missing/invalid file, inconsistent keys or image
            shapes across splits, or fewer than 2 training examples.
    """
    del seed, limit
    if path is None:
        raise VaekitError("data source 'arrays' needs a path to an .npz file")
    path = os.fspath(path)
    if val_size < 1:
        raise VaekitError(f"val_size must be at least 1, got {val_size}")
    arrays = _read_npz(path)
    has_labels = "y" in arrays

    def split(x_key: str, y_key: str) -> dict[str, np.ndarray] | None:
        if x_key not in arrays:
            if y_key in arrays:
                raise VaekitError(f"data file {path} has '{y_key}' but no '{x_key}'")
            return None
        x = validate_images(arrays.pop(x_key), x_key, path)
        out = {"x": x}
        if y_key in arrays:
            out["y"] = validate_labels(arrays.pop(y_key), x.shape[0], y_key, path)
        if ("y" in out) != has_labels:
            missing = y_key if has_labels else "y"
            raise VaekitError(f"data file {path}: labels must be given for every split or none, but '{missing}' is missing")
        return out

    train = split("x", "y")
    val = split("x_val", "y_val")
    test = split("x_test", "y_test")

    image_shape = train["x"].shape[1:]
    for name, part in (("x_val", val), ("x_test", test)):
        if part is not None and part["x"].shape[1:] != image_shape:
            raise VaekitError(
                f"data file {path}: '{name}' images have shape {part['x'].shape[1:]} but 'x' images have {image_shape}"
            )

    if val is None:
        n = train["x"].shape[0]
        # At least one validation example so that evaluation never averages over nothing.
        n_val = max(1, min(val_size, n // 10))
        # Slices are views: carving costs no memory.
        val = {k: v[n - n_val :] for k, v in train.items()}
        train = {k: v[: n - n_val] for k, v in train.items()}

    if train["x"].shape[0] < 2:
        raise VaekitError(f"data file {path} leaves {train['x'].shape[0]} training examples; at least 2 are needed")
    if test is None:
        test = dict(val)  # same arrays, separate dict
    return {"train": train, "val": val, "test": test}
