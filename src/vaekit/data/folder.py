"""A folder of PNG/JPEG images (`data.source=folder`, `data.path=DIRECTORY`).

Every .png/.jpg/.jpeg file under the folder, recursively, is one example. When every image lies
in a first-level subfolder and there are at least two of them, the subfolders are classes
(sorted by name: label 0, 1, ...). Images are decoded with Pillow, as RGB (3 channels) or
greyscale (1 channel) by `data.color`; with `data.image_size` each is resized so its shorter side
is that size and center-cropped to a square, without it all must share one size. Files Pillow
cannot read are skipped and counted (an error only when none is readable).

The split is seeded and depends only on the file names and `data.seed`: each file's place is a
hash of its path relative to the folder, so the same folder gives the same train/val/test split in
every process and every later `vaekit evaluate`. Test and validation take min(val_size, N/10)
images each. The run directory keeps the split's file lists in data_index.json.

Resident or streamed (`data.stream`): the index reads every file's header once (size; the
unreadable ones are skipped). A training split up to 2 GiB as float32 (`RESIDENT_BYTES`) is
decoded once into memory on a thread pool (Pillow releases the GIL while decoding): the trainer's
fast resident path. A larger one, or any with `data.stream=yes`, is a `FolderStream`: Grain reads
and decodes each step's batch from disk on its reader threads, ahead of the trainer, each process
only its own rows. Validation and test images are always decoded into memory. The start-up log
line says which path the run takes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from vaekit.config.overrides import closest
from vaekit.config.schema import DataConfig
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

SUFFIXES = (".png", ".jpg", ".jpeg")
INDEX_FILE = "data_index.json"  # in the run directory: which file went to which split
RESIDENT_BYTES = 2 * 2**30  # data.stream=auto: a training split up to this size (float32) is held in memory
COLORS = ("rgb", "grey")
STREAM_MODES = ("auto", "yes", "no")


@dataclasses.dataclass(frozen=True)
class FolderDataConfig(DataConfig):
    """The keys of data.source=folder (`vaekit.data.SOURCE_CONFIGS`)."""

    source: str = "folder"
    image_size: int | None = None  # resize (shorter side) and center-crop every image to this square side (None: all must share one size)
    color: str = "rgb"  # "rgb" (3 channels) or "grey" (1 channel)
    stream: str = "auto"  # "yes" (training images read from disk with Grain), "no" (decoded into memory), "auto" (stream above 2 GiB)

    def check(self) -> None:
        if self.path is None:
            raise VaekitError("data.source 'folder' needs data.path=DIRECTORY")
        if self.image_size is not None and self.image_size <= 0:
            raise VaekitError(f"data.image_size must be positive, got {self.image_size}")
        if self.color not in COLORS:
            raise VaekitError(f"data.color must be one of {', '.join(COLORS)}; got '{self.color}'"
                              f"{closest(self.color, COLORS)}")
        if self.stream not in STREAM_MODES:
            raise VaekitError(f"data.stream must be one of {', '.join(STREAM_MODES)}; got '{self.stream}'"
                              f"{closest(self.stream, STREAM_MODES)}")


def scan(root: str | Path) -> tuple[list[str], list[str] | None]:
    """(image paths relative to root, sorted; class names or None) of a folder."""
    root = Path(root)
    if not root.is_dir():
        raise VaekitError(f"data.path '{root}' is not a directory")
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                   if p.suffix.lower() in SUFFIXES and p.is_file())
    if not files:
        raise VaekitError(f"folder '{root}' has no PNG or JPEG images")
    tops = {f.split("/")[0] for f in files if "/" in f}
    classes = sorted(tops) if len(tops) >= 2 and all("/" in f for f in files) else None
    return files, classes


def decode(path: str | Path, color: str, size: int | None) -> np.ndarray | None:
    """One image as uint8 (H, W, C), resized and center-cropped to size x size when given; None
    when Pillow cannot read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if color == "grey" else "RGB")
            if size is not None:
                w, h = im.size
                scale = size / min(w, h)
                nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
                if (nw, nh) != (w, h):
                    im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
                left, top = (nw - size) // 2, (nh - size) // 2
                im = im.crop((left, top, left + size, top + size))
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None
    return a[..., None] if a.ndim == 2 else a


def split_order(files: list[str], seed: int) -> np.ndarray:
    """Indices of `files` in their seeded order: a hash of (seed, relative path) for each file,
    so that one file's place does not depend on the others."""
    keys = [hashlib.blake2b(f"{seed}\0{f}".encode(), digest_size=8).digest() for f in files]
    return np.array(sorted(range(len(files)), key=keys.__getitem__), dtype=np.int64)


def probe(path: str | Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header (nothing decoded), or None when Pillow cannot
    read it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError):
        return None


def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=min(32, (os.cpu_count() or 1) + 4))


class FolderStream:
    """The training images of a folder too large to hold in memory, read from disk with Grain.

    `batches` reads the host batches of given example indices: the trainer passes the same
    `epoch_indices` it uses for a resident split, so a streamed run draws the same batches as a
    resident one (a permutation per epoch, or with replacement under train.steps), and a resumed
    run the same as an uninterrupted one. Each process reads and decodes only its own B / P rows of
    every batch (the rows its devices get), on Grain's reader threads, with batches prefetched
    ahead of the trainer.
    """

    def __init__(self, root: Path, files: list[str], labels: np.ndarray | None, color: str, size: int | None,
                 shape: tuple[int, int, int]):
        self.root, self.files, self.labels, self.color, self.size = root, files, labels, color, size
        self.shape = shape
        self.num_examples = len(files)

    def example(self, i: int) -> dict:
        """Training example i as {"x": float32 (H, W, C) in [0, 1], "y": int32 ()}."""
        image = decode(self.root / self.files[i], self.color, self.size)
        if image is None or image.shape != self.shape:
            raise VaekitError(f"cannot read image '{self.root / self.files[i]}' while training (it was readable "
                              f"when the folder was indexed)")
        out = {"x": image.astype(np.float32) / 255.0}
        if self.labels is not None:
            out["y"] = self.labels[i]
        return out

    def examples(self, n: int | None = None) -> dict:
        """The first n training examples (all when None), decoded, as arrays."""
        with _pool() as pool:
            rows = list(pool.map(self.example, range(min(n or self.num_examples, self.num_examples))))
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def batches(self, indices: np.ndarray, *, process_index: int = 0, process_count: int = 1,
                threads: int | None = None):
        """An iterator over this process's part ({"x": (B/P, H, W, C), "y": (B/P,)}) of each batch
        of `indices` ((steps, B) training example indices, the trainer's `epoch_indices`):
        process p reads rows p*B/P ... (p+1)*B/P - 1 of every batch."""
        import grain

        indices = np.asarray(indices)
        local = indices.shape[1] // process_count
        rows = indices[:, process_index * local:(process_index + 1) * local].reshape(-1)
        ds = grain.MapDataset.source(rows).map(lambda i: self.example(int(i))).batch(local, drop_remainder=True)
        threads = threads or min(16, os.cpu_count() or 1)
        return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)))


def load_folder_splits(path: str | None, *, val_size: int, seed: int, limit: int | None, data_config=None) -> dict:
    """The folder's train/val/test splits (see the module docstring); a `data.DATA_SOURCES` loader.

    data_config: the run's `FolderDataConfig` (`image_size`, `color`, `stream`); None: native
    size, RGB, automatic choice. Also returns "run_files": {INDEX_FILE: the split's file names and
    the skipped files, JSON}, and for a streamed training split "stream": a `FolderStream` (the
    split itself then holds only "index" and "y").
    """
    cfg = data_config if isinstance(data_config, FolderDataConfig) else FolderDataConfig()
    image_size, color, stream_mode = cfg.image_size, cfg.color, cfg.stream
    if path is None:
        raise VaekitError("data.source 'folder' needs data.path=DIRECTORY")
    root = Path(path)
    files, classes = scan(root)
    order = split_order(files, seed)
    n_eval = max(1, min(val_size, len(files) // 10))
    if len(files) < 2 * n_eval + 1:
        raise VaekitError(f"folder '{root}' has {len(files)} image(s); it needs at least 3 for train, val and test")
    parts = {"test": order[:n_eval], "val": order[n_eval:2 * n_eval], "train": order[2 * n_eval:]}
    if limit is not None:
        parts["train"] = parts["train"][:limit]  # index only what the run uses
    wanted = np.concatenate(list(parts.values()))
    # The index: every file's header (size), read once; unreadable files are skipped.
    with _pool() as pool:
        sizes = dict(zip(wanted.tolist(), pool.map(lambda i: probe(root / files[i]), wanted)))
    bad = [files[i] for i, wh in sizes.items() if wh is None]
    if len(bad) == len(sizes):
        raise VaekitError(f"folder '{root}': none of its {len(files):,} image files could be read")
    if image_size is None:
        distinct = sorted({wh for wh in sizes.values() if wh is not None})
        if len(distinct) > 1:
            (w1, h1), (w2, h2) = distinct[:2]
            raise VaekitError(f"folder '{root}' has images of different sizes ({w1}x{h1} and {w2}x{h2}); set "
                              f"data.image_size to resize and crop them to one square size")
        (w, h), = distinct
    else:
        w = h = image_size
    shape = (h, w, 1 if color == "grey" else 3)
    keep = {name: [int(i) for i in idx if sizes[int(i)] is not None] for name, idx in parts.items()}
    for name, idx in keep.items():
        if not idx:
            raise VaekitError(f"folder '{root}': no readable image left for the {name} split")
    train_bytes = len(keep["train"]) * int(np.prod(shape)) * 4
    stream = stream_mode == "yes" or (stream_mode == "auto" and train_bytes > RESIDENT_BYTES)
    class_of = {c: k for k, c in enumerate(classes or [])}
    labels = {name: np.array([class_of[files[i].split("/")[0]] for i in idx], np.int32) if classes else None
              for name, idx in keep.items()}
    out, index = {}, {"folder": str(root.absolute()), "seed": seed, "classes": classes, "unreadable": bad}
    for name, idx in keep.items():
        index[name] = [files[i] for i in idx]
        if name == "train" and stream:
            out["stream"] = FolderStream(root, index[name], labels[name], color, image_size, shape)
            split = {"index": np.arange(len(idx), dtype=np.int32)}
        else:
            with _pool() as pool:
                images = list(pool.map(lambda i: decode(root / files[i], color, image_size), idx))
            broken = [files[i] for i, im in zip(idx, images) if im is None or im.shape != shape]
            if broken:
                raise VaekitError(f"folder '{root}': cannot decode '{broken[0]}' (its header was readable)")
            x = np.stack(images).astype(np.float32)
            x /= 255.0  # in place: one float32 copy of the split, not two
            split = {"x": x}
        if labels[name] is not None:
            split["y"] = labels[name]
        out[name] = split
    out["run_files"] = {INDEX_FILE: json.dumps(index, indent=1) + "\n"}
    log.info("folder %s: %d images of %dx%dx%d%s%s; train %d / val %d / test %d (split seeded by data.seed=%d); "
             "training images %s", root, len(files), *shape,
             f", {len(classes)} classes" if classes else "",
             f", {len(bad)} unreadable file(s) skipped (first: {bad[0]})" if bad else "",
             len(keep["train"]), len(keep["val"]), len(keep["test"]), seed,
             f"streamed from disk with Grain ({train_bytes / 2**30:.1f} GiB as float32, data.stream={stream_mode})"
             if stream else f"decoded into memory ({train_bytes / 2**20:,.0f} MiB, data.stream={stream_mode})")
    return out


__all__ = ["COLORS", "INDEX_FILE", "RESIDENT_BYTES", "STREAM_MODES", "SUFFIXES", "FolderDataConfig", "FolderStream", "decode",
           "load_folder_splits", "probe", "scan", "split_order"]
