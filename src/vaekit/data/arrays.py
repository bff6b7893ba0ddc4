"""User data from an ``.npz`` file, or the same arrays as a dict from Python
(``vaekit.train(cfg, data={"x": ..., "x_val": ...})``).

Arrays read (other keys are ignored in a file; a dict with other keys is refused, as they are
most likely misspelt):

* ``x``: the training data, one of
    - images (N, H, W) (greyscale, returned as (N, H, W, 1)) or (N, H, W, C);
      pixels uint8 in 0..255 (scaled to [0, 1]), floats in [0, 1], or booleans;
    - vectors (N, D): floats are any finite values (returned as float32, not
      range-checked); uint8 is scaled to [0, 1] and booleans become 0/1, as for pixels.
* ``y`` (optional): integer class labels (N,), non-negative.
* ``x_val``/``y_val`` and ``x_test``/``y_test`` (optional): a validation and a test
  set, of the same per-example shape as ``x``.

Splits. Arrays given in the file always win. What is missing is carved off the END of
``x`` (no shuffling: shuffle your data first if it is ordered), the same way every
time (the carve does not depend on the seed), each carved split having
``max(1, min(val_size, N // 10))`` examples, N being the length of ``x``:

* no ``x_val``: validation is the last such block of ``x``;
* no ``x_test``: test is the block just before it (or the last block of ``x`` when
  ``x_val`` is given), so test never overlaps validation or training, and the numbers
  ``vaekit evaluate`` reports for the test split are not those of the split that chose
  the best checkpoint. With neither given, ``x`` is ``[train | test | val]``.

Labels: give them for every split in the file or for none. With ``y`` and ``x_val``
in the file, ``y_val`` is required too (likewise ``y_test`` with ``x_test``); carved
splits take their labels from ``y``. A split without labels would break code that
expects labels on every split, so a partial set is refused with a message naming the
missing arrays.

Folders of image files are not read (yet); the error for a directory gives a
one-line command that converts a folder of PNGs into an ``.npz``.

Every problem is reported as a one-line :class:`~vaekit.errors.VaekitError` naming the
file, the array and what is wrong, because a bad array would otherwise surface as a
NaN loss or a shape error deep inside a jitted training step.
"""

from __future__ import annotations

import os
import shlex
import zipfile
import zlib
from collections.abc import Mapping

import numpy as np

from vaekit.errors import VaekitError

#: Keys this loader reads; anything else in the archive is ignored.
KNOWN_KEYS = ("x", "y", "x_val", "y_val", "x_test", "y_test")


#: Suffixes counted as image files in the message for a directory.
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def convert_command(folder: str, out: str) -> str:
    """A shell command that stacks the PNG files of ``folder`` (sorted by name) into ``out``
    as ``x`` uint8 (N, H, W) or (N, H, W, C); the images must share one size and mode."""
    code = ("import glob,sys,numpy as np;from PIL import Image;"
            "f=sorted(glob.glob(glob.escape(sys.argv[1])+'/*.png'));"
            "np.savez(sys.argv[2],x=np.stack([np.asarray(Image.open(p)) for p in f]))")
    return f'python -c "{code}" {shlex.quote(folder)} {shlex.quote(out)}'


def _directory_message(path: str) -> str:
    try:
        names = os.listdir(path)
    except OSError:
        names = []
    images = sum(os.path.splitext(n)[1].lower() in _IMAGE_SUFFIXES for n in names)
    found = f" ({images} image files)" if images else ""
    out = os.path.normpath(path) + ".npz"
    return (
        f"data path {path} is a directory{found}: for a folder of images add --set data.source=folder (or train "
        f"--preset folder-conv64 --set data.path={shlex.quote(path)}); for arrays give an .npz file, e.g. convert same-size PNGs "
        f"with `{convert_command(path, out)}` and use {out}"
    )


def _origin(path: str | None) -> str:
    """How messages name where the arrays came from: the file, or the dict handed from Python (None)."""
    return "the data dict" if path is None else f"data file {path}"


def _dict_arrays(data: Mapping) -> dict[str, np.ndarray]:
    """The known arrays of a dict handed from Python, as numpy arrays (checked as a file's are)."""
    unknown = [k for k in data if k not in KNOWN_KEYS]
    if unknown:
        raise VaekitError(f"the data dict has unknown keys {', '.join(repr(k) for k in unknown)}; "
                          f"valid keys: {', '.join(KNOWN_KEYS)}")
    if "x" not in data:
        found = ", ".join(repr(k) for k in data) or "none"
        raise VaekitError(f"the data dict has no array 'x' (keys found: {found}); give the training examples as "
                          f"data={{'x': array of shape (N, ...)}}")
    out = {}
    for key, value in data.items():
        try:
            out[key] = np.asarray(value)
        except ValueError as exc:  # ragged nested lists
            raise VaekitError(f"the data dict: '{key}' is not an array ({exc})") from None
        if out[key].dtype == object:
            raise VaekitError(f"the data dict: array '{key}' has a non-numeric (object) dtype")
    return out


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """Open ``path`` and return the known arrays it contains (read eagerly, file closed)."""
    if not os.path.exists(path):
        raise VaekitError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise VaekitError(_directory_message(path))
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
    """Check one data array and return it as float32: images (N, H, W, C) in [0, 1], vectors (N, D).

    Args:
        x: the array as stored; (N, H, W) gets a trailing channel axis; (N, D) is a set
            of D-dimensional vectors (floats: any finite values).
        key: its name in the archive, used in error messages.
        path: the file, used in error messages (None: the dict handed from Python).

    Raises:
        VaekitError: wrong ndim, empty, non-numeric dtype, NaN/Inf, values outside
            [0, 1] (float images) / 0..255 (uint8), or float vectors too large for
            float32; other integer dtypes are refused because 0/1 data and 0..255 data
            cannot be told apart safely.
    """
    where = f"{_origin(path)}: array '{key}'"
    if x.ndim not in (2, 3, 4):
        raise VaekitError(
            f"{where} has shape {x.shape} (ndim {x.ndim}); expected vectors (N, D) or images (N, H, W) or (N, H, W, C)"
        )
    vectors = x.ndim == 2
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
        if vectors:
            limit = float(np.finfo(np.float32).max)
            if lo < -limit or hi > limit:
                raise VaekitError(f"{where} has values too large for float32: min {lo:g}, max {hi:g}")
        elif lo < 0.0 or hi > 1.0:
            raise VaekitError(f"{where} has values out of range [0, 1]: min {lo:g}, max {hi:g}; float pixels must lie in [0, 1]")
        # float32 inputs are used as they are (no copy); others are converted once.
        out = x.astype(np.float32, copy=False)
    else:
        raise VaekitError(f"{where} has non-numeric dtype {x.dtype}; expected uint8, bool or float pixels")

    if out.ndim == 3:
        out = out[..., None]  # a view: grayscale images get one channel
    return out


def validate_labels(y: np.ndarray, n: int, key: str, path: str) -> np.ndarray:
    """Check integer labels for ``n`` examples and return them as int32 (N,).

    Raises:
        VaekitError: not 1-D of length ``n``, not an integer dtype, or negative.
    """
    where = f"{_origin(path)}: array '{key}'"
    if y.ndim != 1 or y.shape[0] != n:
        raise VaekitError(f"{where} has shape {y.shape}; expected ({n},), one label per example")
    if not np.issubdtype(y.dtype, np.integer):
        raise VaekitError(f"{where} has dtype {y.dtype}; labels must be non-negative integers")
    num_negative = int((y < 0).sum())
    if num_negative:
        raise VaekitError(f"{where} has {num_negative} negative labels (min {int(y.min())}); labels must be non-negative integers")
    if n and int(y.max()) > np.iinfo(np.int32).max:
        raise VaekitError(f"{where} has a label {int(y.max())} too large for int32")
    return y.astype(np.int32, copy=False)


def load_arrays_splits(
    path: str | Mapping | None = None, *, val_size: int = 10_000, seed: int = 0, limit: int | None = None,
    data_config=None,  # the run's DataConfig: this source has no options of its own
) -> dict[str, dict[str, np.ndarray]]:
    """Data-source loader for ``"arrays"`` (see ``vaekit.data.DATA_SOURCES``).

    Splits (see the module docstring): ``x_val``/``x_test`` in the file are used as
    they are; a missing one is carved off the end of ``x``, validation last and test
    just before it, each of ``max(1, min(val_size, len(x) // 10))`` examples. The
    three splits never share examples. Carved splits are views of ``x`` (no copy).

    Args:
        path: the ``.npz`` file (required), or a dict of the same arrays handed from Python.
        val_size: largest number of examples to carve for validation (and for test).
        seed, limit: unused (the carve is deterministic and ``load_data`` applies
            ``limit`` after it); part of the loader signature.

    Returns:
        ``{"train": {"x", ["y"]}, "val": {...}, "test": {...}}``; ``x`` float32
        (N, H, W, C) images in [0, 1] or (N, D) vectors, ``y`` int32 (N,).

    Raises:
        VaekitError: for any of the problems listed in :func:`validate_images` and
            :func:`validate_labels`, a missing/invalid file, labels for some splits but
            not all, inconsistent shapes across splits, or fewer than 2 training
            examples left after carving.
    """
    del seed, limit
    if path is None:
        raise VaekitError("data source 'arrays' needs a path to an .npz file")
    if val_size < 1:
        raise VaekitError(f"val_size must be at least 1, got {val_size}")
    if isinstance(path, Mapping):
        return split_arrays(_dict_arrays(path), val_size=val_size)
    path = os.fspath(path)
    return split_arrays(_read_npz(path), val_size=val_size, path=path)


def split_arrays(arrays: dict[str, np.ndarray], *, val_size: int, path: str | None = None) -> dict[str, dict]:
    """The splits of `load_arrays_splits` from the arrays themselves ({"x", ...} as in the file;
    `path`: the file they came from, for messages, None for a dict handed from Python)."""
    where = _origin(path)
    arrays = dict(arrays)
    for x_key, y_key in (("x_val", "y_val"), ("x_test", "y_test")):
        if y_key in arrays and x_key not in arrays:
            raise VaekitError(f"{where} has '{y_key}' but no '{x_key}'")
    # Labels for every split in the file or for none (the label key of each x present).
    label_keys = ["y"] + [y for x, y in (("x_val", "y_val"), ("x_test", "y_test")) if x in arrays]
    given = [k for k in label_keys if k in arrays]
    missing = [k for k in label_keys if k not in arrays]
    if given and missing:
        names = lambda keys: ", ".join(f"'{k}'" for k in keys)  # noqa: E731
        raise VaekitError(
            f"{where} has {names(given)} but no {names(missing)}: give labels for every split "
            f"({', '.join(label_keys)}) or for none"
        )

    def split(x_key: str, y_key: str) -> dict[str, np.ndarray] | None:
        if x_key not in arrays:
            return None
        x = validate_images(arrays.pop(x_key), x_key, path)
        out = {"x": x}
        if y_key in arrays:
            out["y"] = validate_labels(arrays.pop(y_key), x.shape[0], y_key, path)
        return out

    train = split("x", "y")
    val = split("x_val", "y_val")
    test = split("x_test", "y_test")

    shape = train["x"].shape[1:]
    for name, part in (("x_val", val), ("x_test", test)):
        if part is not None and part["x"].shape[1:] != shape:
            kind = "examples" if len(shape) == 1 else "images"
            raise VaekitError(
                f"{where}: '{name}' {kind} have shape {part['x'].shape[1:]} but 'x' {kind} have {shape}"
            )

    n = train["x"].shape[0]
    # At least one example per carved split so that evaluation never averages over nothing.
    n_carve = max(1, min(val_size, n // 10))
    end = n  # train is x[:end] once the missing splits are carved off its end
    carved = []
    # Slices are views: carving costs no memory. Validation is the last block (as it was
    # before test was carved too, so a run's validation data did not change); test precedes it.
    if val is None:
        val = {k: v[end - n_carve : end] for k, v in train.items()}
        end -= n_carve
        carved.append(f"{n_carve} for validation")
    if test is None:
        test = {k: v[end - n_carve : end] for k, v in train.items()}
        end -= n_carve
        carved.append(f"{n_carve} for test")
    if end < 2:
        detail = f" after carving {' and '.join(carved)} from the {n} in 'x'" if carved else ""
        hint = " (give x_val/x_test in the file, or more examples in 'x')" if carved else ""
        raise VaekitError(f"{where} leaves {max(end, 0)} training examples{detail}; at least 2 are needed{hint}")
    train = {k: v[:end] for k, v in train.items()}
    return {"train": train, "val": val, "test": test}
