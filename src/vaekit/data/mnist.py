"""MNIST from the IDX files shipped inside the package.

The four gzip-compressed IDX files live in ``vaekit/data/mnist/`` (see the README
there for attribution and checksums). Loading them:

1. decompresses each file, turning a truncated or corrupt gzip into a
   :class:`~vaekit.errors.VaekitError` that names the file;
2. verifies the SHA-256 of the *decompressed* bytes (those are the same whatever
   gzip produced the ``.gz``), so a damaged or substituted file never trains a model
   silently;
3. parses the IDX header with numpy, checking the magic number and dimensions.

Parsing all four files takes about a second, so the raw uint8 arrays are cached per
process. The cached arrays are read-only; the splits built from them by
:func:`load_mnist_splits` are fresh float32 copies, so callers can modify those.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import zlib
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np

from vaekit.data.memory import empty_aligned, frozen
from vaekit.errors import VaekitError

#: Expected SHA-256 of each decompressed IDX file, keyed by its name without ``.gz``.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

#: Shape each file must have once parsed.
_EXPECTED_SHAPES = {
    "train-images-idx3-ubyte": (60_000, 28, 28),
    "train-labels-idx1-ubyte": (60_000,),
    "t10k-images-idx3-ubyte": (10_000, 28, 28),
    "t10k-labels-idx1-ubyte": (10_000,),
}

#: The standard split of the 60,000 training images: the first 50,000 train, the
#: last 10,000 validate (the split used by most of the VAE literature).
NUM_TRAIN = 50_000

#: IDX type code for unsigned bytes, the only element type MNIST uses.
_IDX_UBYTE = 0x08


def default_directory() -> Traversable:
    """Return the package-data folder holding the bundled MNIST ``.gz`` files."""
    return files("vaekit.data") / "mnist"


def read_idx(directory: str | Path | Traversable | None, name: str) -> np.ndarray:
    """Read, verify and parse one MNIST IDX file.

    Args:
        directory: folder containing ``<name>.gz``; ``None`` means the bundled copy.
        name: one of the keys of :data:`SHA256`, e.g. ``"train-labels-idx1-ubyte"``.

    Returns:
        A read-only uint8 array of the shape recorded in the IDX header.

    Raises:
        VaekitError: the file is missing, is not a complete gzip stream, its
            decompressed SHA-256 differs from the published one, or its IDX header
            is not the expected one.
    """
    folder = default_directory() if directory is None else directory
    if isinstance(folder, str):
        folder = Path(folder)
    source = folder / f"{name}.gz"
    try:
        compressed = source.read_bytes()
    except FileNotFoundError:
        raise VaekitError(f"MNIST file missing: {source}") from None
    except OSError as exc:
        raise VaekitError(f"MNIST file {source} cannot be read: {exc}") from None

    try:
        raw = gzip.decompress(compressed)
    except (EOFError, OSError, zlib.error) as exc:
        # EOFError: truncated stream; BadGzipFile (an OSError): not gzip at all;
        # zlib.error: damaged deflate data.
        raise VaekitError(f"MNIST file {source} is not a valid gzip file ({exc}); restore it from the vaekit package") from None

    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[name]:
        raise VaekitError(
            f"MNIST file {source} failed its checksum (SHA-256 of the decompressed data is {digest}, "
            f"expected {SHA256[name]}); the file is damaged or not the original MNIST"
        )
    return _parse_idx(raw, name, source)


def _parse_idx(raw: bytes, name: str, source: object) -> np.ndarray:
    """Parse an IDX byte string (header: 0, 0, type code, ndim, then big-endian uint32 dims)."""
    expected = _EXPECTED_SHAPES[name]
    # The checksum has already passed, so these checks only fire if the tables above
    # and the data disagree; they keep a wrong reshape from ever happening silently.
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != len(expected):
        raise VaekitError(f"MNIST file {source} has an unexpected IDX magic number {raw[:4].hex()}")
    header_len = 4 + 4 * len(expected)
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=len(expected), offset=4))
    if dims != expected or len(raw) != header_len + int(np.prod(dims)):
        raise VaekitError(f"MNIST file {source} has dimensions {dims}, expected {expected}")
    # frombuffer over immutable bytes gives a read-only array without a copy, which
    # is what we want for the per-process cache.
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


@functools.lru_cache(maxsize=4)
def _load_raw_cached(directory: str | None) -> dict[str, np.ndarray]:
    # Labels first: they are small, so a damaged copy fails fast.
    order = ("train-labels-idx1-ubyte", "t10k-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "train-images-idx3-ubyte")
    arrays = {name: read_idx(directory, name) for name in order}
    return {
        "train_x": arrays["train-images-idx3-ubyte"],
        "train_y": arrays["train-labels-idx1-ubyte"],
        "test_x": arrays["t10k-images-idx3-ubyte"],
        "test_y": arrays["t10k-labels-idx1-ubyte"],
    }


def load_mnist_raw(directory: str | Path | None = None) -> dict[str, np.ndarray]:
    """Return the verified MNIST arrays as read-only uint8, cached per process.

    Args:
        directory: folder with the four ``.gz`` files; ``None`` (the default) uses the
            copy bundled with vaekit.

    Returns:
        ``{"train_x": (60000, 28, 28) uint8, "train_y": (60000,) uint8,
        "test_x": (10000, 28, 28) uint8, "test_y": (10000,) uint8}``.

    Raises:
        VaekitError: see :func:`read_idx`.
    """
    # Normalise the cache key so "d", "./d" and Path("d") share one entry. Failed
    # loads raise and are therefore never cached: fixing the file and retrying works.
    key = None if directory is None else str(Path(directory).resolve())
    return _load_raw_cached(key)


def _to_float(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 28, 28) -> new float32 (N, 28, 28, 1) array in [0, 1], aligned for the device."""
    out = empty_aligned((*images.shape, 1), np.float32)
    np.copyto(out[..., 0], images)
    np.divide(out, 255.0, out=out)  # in place: one float32 copy, not two
    return out


def load_mnist_splits(
    path: str | None = None, *, val_size: int = 10_000, seed: int = 0, limit: int | None = None,
    data_config=None,  # the run's DataConfig: this source has no options of its own
) -> dict[str, dict[str, np.ndarray]]:
    """Data-source loader for ``"mnist"`` (see ``vaekit.data.DATA_SOURCES``).

    The splits are fixed, as in the literature: train is the first 50,000 training
    images, val the last 10,000, test the 10,000 t10k images. ``val_size`` and
    ``seed`` are part of the loader signature but not used here; ``limit`` keeps the
    first ``limit`` training images only (what ``load_data`` would keep), so that a
    small run converts no more than it trains on.

    Args:
        path: folder with the four ``.gz`` files, or ``None`` for the bundled copy.

    Returns:
        ``{"train": {"x", "y"}, "val": {...}, "test": {...}}`` with x float32
        (N, 28, 28, 1) in [0, 1] and y int32 (N,), all read-only.
    """
    del val_size, seed  # fixed splits; accepted only to match the loader protocol
    raw = load_mnist_raw(path)
    train_x, train_y = raw["train_x"], raw["train_y"]
    n = NUM_TRAIN if limit is None else min(limit, NUM_TRAIN)
    splits = {
        "train": {"x": _to_float(train_x[:n]), "y": train_y[:n].astype(np.int32)},
        "val": {"x": _to_float(train_x[NUM_TRAIN:]), "y": train_y[NUM_TRAIN:].astype(np.int32)},
        "test": {"x": _to_float(raw["test_x"]), "y": raw["test_y"].astype(np.int32)},
    }
    # New arrays that only these splits hold: read-only, so that the trainer uses them in place.
    return {name: {k: frozen(v) for k, v in split.items()} for name, split in splits.items()}
