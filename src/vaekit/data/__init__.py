"""Datasets for vaekit: train/validation/test splits as numpy arrays.

:func:`load_data` is the entry point. It looks the source up in
:data:`DATA_SOURCES`, then applies the options that every source shares: ``limit``
(a smaller training set) and ``binarize`` (Bernoulli-distributed pixels for models
with a Bernoulli likelihood).

Adding a source
---------------
A source is a function registered in :data:`DATA_SOURCES` under its name::

    def loader(path: str | None, *, val_size: int, seed: int, limit: int | None) -> dict[str, dict[str, np.ndarray]]

It returns ``{"train": split, "val": split, "test": split}`` where each split is
``{"x": float32 (N, H, W, C) in [0, 1]}`` plus optionally ``"y": int32 (N,)`` (for all
three splits or for none) and any further per-example arrays (sliced along with
``x`` by ``limit``). A generated source may instead give a training split of compact
per-example records without ``"x"`` (the shapes grid gives grid indices) together with
``"train_transform"``: a traceable function that turns a gathered batch of those records
into ``{"x": ..., ...}`` on the device (see :attr:`Splits.train_transform`). It raises :class:`~vaekit.errors.VaekitError` for any problem
the user can fix. A source whose data is not images or vectors returns its ``"spec"`` (a
:class:`DataSpec`: token data), and ``"run_files"`` ({file name: text}, e.g. a vocabulary) that
the trainer writes into the run directory. Every loader also takes ``data_config``, the whole
``DataConfig`` (None from a direct `load_data` call), for options of its own, which the source
declares as a ``DataConfig`` subclass in :data:`SOURCE_CONFIGS`. ``val_size``, ``seed`` and ``limit`` may be ignored: a source that
generates data can use ``limit`` to generate only that many training examples (or
more than a default), and :func:`load_data` afterwards keeps the first ``limit``
training examples of whatever the loader returned.

Binarization and evaluation data
--------------------------------
``"static"`` binarizes every split once with :func:`binarize_fixed` and the given
seed (each split with that same seed, so a test split that is the validation split
stays identical to it, and the draw does not depend on ``limit``). ``"dynamic"`` leaves the training images continuous (the trainer draws a fresh
Bernoulli sample for each batch) but binarizes validation and test once with
:data:`EVAL_BINARIZATION_SEED`, a constant: evaluation data for a binarized model is
then the same in every run and every evaluation, so numbers are comparable across
runs, seeds and checkpoints.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import threading
from collections.abc import Callable

import numpy as np

from vaekit.config.schema import BINARIZE_MODES, DataConfig
from vaekit.data.arrays import load_arrays_splits
from vaekit.data.folder import FolderDataConfig, load_folder_splits
from vaekit.data.memory import empty_aligned, frozen
from vaekit.data.mnist import load_mnist_splits
from vaekit.data.spec import DataSpec
from vaekit.data.text import TextDataConfig, load_text_splits
from vaekit.errors import VaekitError

__all__ = [
    "BINARIZE_MODES",
    "DATA_SOURCES",
    "DataSpec",
    "load_configured",
    "prefetch",
    "EVAL_BINARIZATION_SEED",
    "JAX_FREE_SOURCES",
    "SOURCE_CONFIGS",
    "drop_prefetched",
    "Splits",
    "binarize_fixed",
    "load_data",
]

#: Seed of the one binarization of validation/test data under ``binarize="dynamic"``.
#: It is a constant, not the run's seed, so that every run evaluates on the very same
#: binary images and their numbers can be compared.
EVAL_BINARIZATION_SEED = 20151101

#: Most examples :meth:`Splits.examples` renders from a generated training split.
MAX_GENERATED_EXAMPLES = 200_000

Split = dict[str, np.ndarray]
Loader = Callable[..., dict[str, Split]]


def _load_shapes_source(*args, **kwargs) -> dict[str, Split]:
    """data/shapes.py's loader, imported when it is used: the shapes grid renders with JAX, which
    `import vaekit.data` (and so `vaekit.config`) leaves unloaded (see `JAX_FREE_SOURCES`)."""
    from vaekit.data.shapes import load_shapes_source

    return load_shapes_source(*args, **kwargs)


#: Data sources by name. See the module docstring for the loader signature.
DATA_SOURCES: dict[str, Loader] = {
    "mnist": load_mnist_splits,
    "arrays": load_arrays_splits,
    "shapes": _load_shapes_source,  # dSprites-style factor grid, generated (no file)
    "folder": load_folder_splits,  # a folder of PNG/JPEG images, class subfolders as labels (data/folder.py)
    "text": load_text_splits,  # one sentence per line (or the shipped demo corpus): token ids, masks, vocabulary
}

#: The config class of each source with options of its own (a `DataConfig` subclass: its keys are
#: accepted with that `data.source` only); the others take `DataConfig`. `vaekit.config` looks it up.
SOURCE_CONFIGS: dict[str, type[DataConfig]] = {
    "folder": FolderDataConfig,
    "text": TextDataConfig,
}

#: Sources whose loaders compute with numpy alone, never JAX: `vaekit train` starts loading them
#: (`prefetch`) before JAX is imported or jax.distributed has started.
JAX_FREE_SOURCES = frozenset({"mnist", "arrays", "folder", "text"})


@dataclasses.dataclass(frozen=True, repr=False)
class Splits:
    """The three splits of a dataset, ready for training and evaluation.

    Attributes:
        train, val, test: dicts of per-example arrays (see `data.spec` for the keys): ``"x"``
            (float32 (N, H, W, C) in [0, 1] for images, (N, D) for vectors) plus ``"y"``
            int32 (N,) when the data has labels. With ``binarize="static"`` every ``x`` holds
            only 0.0 and 1.0; with ``"dynamic"`` val and test do, train does not (each
            training batch is drawn by :meth:`training_batch`).
        spec: the :class:`DataSpec` (kind, one example's shape, classes).
        binarize: ``"none"``, ``"dynamic"`` or ``"static"``.
        train_transform: ``None`` for arrays of data. For a generated source, a traceable
            function that renders a gathered batch of ``train`` records into the model's
            batch (``{"x", "y"}``); ``train`` then holds those records (e.g. ``{"index",
            "y"}``) and no ``"x"``.
    """

    train: Split
    val: Split
    test: Split
    spec: DataSpec
    binarize: str
    train_transform: Callable[[Split], Split] | None = None
    run_files: dict[str, str] = dataclasses.field(default_factory=dict)  # {file name: text} for the run directory (a vocabulary)
    stream: object | None = None  # a training split read from disk batch by batch (data/folder.py FolderStream); train then holds no "x"

    def __post_init__(self):
        if self.spec.num_examples != self.num_train:  # the spec carries the training set's size
            object.__setattr__(self, "spec", dataclasses.replace(self.spec, num_examples=self.num_train))

    @property
    def num_classes(self) -> int | None:
        return self.spec.num_classes

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One example's shape (H, W, C) for images (``spec.shape`` for any data)."""
        return self.spec.shape

    def training_batch(self, batch: Split, key) -> Split:
        """Traceable: a gathered batch of training rows -> the model's batch, on the device.

        Renders a generated source's records (:attr:`train_transform`) and, with
        ``binarize="dynamic"``, draws a fresh Bernoulli binarization of ``x`` from ``key``.
        """
        import jax
        import jax.numpy as jnp

        if self.train_transform is not None:
            batch = self.train_transform(batch)
        if self.binarize == "dynamic":
            batch = dict(batch, x=jax.random.bernoulli(key, batch["x"]).astype(jnp.float32))
        return batch

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(next(iter(self.train.values())))

    def examples(self, split: str, n: int | None = None) -> Split:
        """The first ``n`` examples of a split as host arrays with ``"x"`` (rendering a
        generated training split through :attr:`train_transform`, in jitted chunks).

        Raises:
            VaekitError: ``n`` is ``None`` or above 200,000 for a generated training split
                (the whole shapes grid would be 12 GB of float32 images).
        """
        if split == "train" and self.stream is not None:
            return self.stream.examples(n)
        rows = {k: v[:n] for k, v in getattr(self, split).items()}
        if "x" in rows or self.train_transform is None:
            return rows
        size = len(next(iter(rows.values())))
        if n is None or size > MAX_GENERATED_EXAMPLES:
            raise VaekitError(f"the generated training split has {self.num_train:,} examples; ask for at most "
                              f"{MAX_GENERATED_EXAMPLES:,} of them (e.g. --limit)")
        import jax

        transform = jax.jit(self.train_transform)
        parts = [jax.device_get(transform({k: v[i : i + 2048] for k, v in rows.items()})) for i in range(0, size, 2048)]
        return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}

    def __repr__(self) -> str:
        # The default repr would print pixel arrays; a summary is what one wants to see.
        sizes = ", ".join(f"{name}={len(getattr(self, name)['x'])}" for name in ("val", "test"))
        sizes = f"train={self.num_train}, {sizes}"
        return f"Splits({sizes}, spec={self.spec}, binarize={self.binarize!r})"


_BINARIZE_CHUNK = 1 << 18  # uniforms drawn per piece by binarize_fixed


def binarize_fixed(x: np.ndarray, seed: int) -> np.ndarray:
    """Draw one Bernoulli sample of images whose pixels are probabilities.

    Each pixel becomes 1 with probability equal to its value: ``u < x`` with ``u``
    uniform in [0, 1) from ``np.random.default_rng(seed)``. The result is a new
    float32 array of 0.0/1.0 of ``x``'s shape, the same for the same seed and shape.
    Because the uniforms are drawn in row-major order, the result for ``x[:k]`` equals
    the first ``k`` rows of the result for ``x``.
    """
    rng = np.random.default_rng(seed)
    out = empty_aligned(x.shape, np.float32)
    flat_x, flat_out = np.ascontiguousarray(x).reshape(-1), out.reshape(-1)
    # The uniforms in cache-sized pieces of one stream (the same draws as one call for the whole
    # array): 5x faster than drawing them all into an array as large as x.
    u = np.empty(min(flat_x.size, _BINARIZE_CHUNK), np.float32)
    for start in range(0, flat_x.size, _BINARIZE_CHUNK):
        k = min(_BINARIZE_CHUNK, flat_x.size - start)
        rng.random(out=u[:k], dtype=np.float32)
        np.less(u[:k], flat_x[start : start + k], out=flat_out[start : start + k])  # True/False -> 1.0/0.0
    return out



def _binarize_splits(splits: dict[str, Split], mode: str, seed: int) -> dict[str, Split]:
    """Apply ``mode`` to the x of each split (see the module docstring)."""
    if mode == "none":
        return splits
    out: dict[str, Split] = {}
    done: dict[int, np.ndarray] = {}  # id(original x) -> binarized x
    for name in ("train", "val", "test"):
        split = splits[name]
        if (mode == "dynamic" and name == "train") or "x" not in split:
            # Generated training records (no "x") are drawn on the device by train_transform,
            # binary already for the shapes grid; they are never binarized here.
            out[name] = split
            continue
        split_seed = seed if mode == "static" else EVAL_BINARIZATION_SEED
        x = split["x"]
        # When test *is* the validation data (an .npz without x_test), binarize it once
        # so that test stays identical to val.
        if id(x) not in done:
            done[id(x)] = frozen(binarize_fixed(x, split_seed))  # new, held only here: the trainer uses it in place
        out[name] = {**split, "x": done[id(x)]}
    return out


def _num_classes(splits: dict[str, Split]) -> int | None:
    """``max(y) + 1`` over all splits, or ``None`` when the data has no labels."""
    top = max((int(s["y"].max()) for s in splits.values() if "y" in s and s["y"].size), default=None)
    return None if top is None else top + 1


# At most one entry, {DataConfig: Future of its Splits}: the data of the run `vaekit train` is
# about to start (see `prefetch`).
_PREFETCHED: dict = {}


def prefetch(data_cfg) -> None:
    """Start loading `data_cfg`'s splits in a background thread.

    The next `load_configured` call for an equal config (and no overrides) takes the result, or
    raises the loader's error there, as if it had loaded the data itself. `vaekit train` calls
    this as soon as the data section of its config is known (`config.resolve_data`), so that
    reading, converting and binarizing the data (numpy, which releases the GIL for large arrays)
    overlaps the imports of JAX, Flax, the models, Orbax and matplotlib: MNIST's splits take
    0.3-1.1 s on the development machine, the imports about 1 s (docs/results.md). Nothing is
    written, so an error before the data is needed (a run directory that exists) costs only the
    thread's work. Calling it again for the config under way starts nothing.
    """
    if data_cfg in _PREFETCHED:  # already under way: nothing to start
        return
    future = concurrent.futures.Future()

    def load() -> None:
        try:
            future.set_result(_load_configured(data_cfg))
        except BaseException as e:  # raised by result() in the thread that takes the data
            future.set_exception(e)

    _PREFETCHED.clear()
    _PREFETCHED[data_cfg] = future
    # A daemon thread (an executor's would be joined at exit): a command that fails before it
    # takes the data does not wait for it.
    threading.Thread(target=load, name="vaekit-data-prefetch", daemon=True).start()


def drop_prefetched() -> None:
    """Forget a `prefetch` that no `load_configured` took (its thread finishes on its own)."""
    _PREFETCHED.clear()


def load_configured(data_cfg, **overrides) -> "Splits":
    """`load_data` with the fields of a `vaekit.config.DataConfig` (keyword overrides win).

    A `prefetch` of an equal config, without overrides, is taken instead of loading again."""
    future = None if overrides else _PREFETCHED.pop(data_cfg, None)
    return _load_configured(data_cfg, **overrides) if future is None else future.result()


def _load_configured(data_cfg, **overrides) -> "Splits":
    kwargs = dict(source=data_cfg.source, path=data_cfg.path, limit=data_cfg.limit, binarize=data_cfg.binarize,
                  seed=data_cfg.seed, val_size=data_cfg.val_size)
    kwargs.update(overrides)
    return load_data(**kwargs, data_config=data_cfg)


def load_data(
    source: str = "mnist",
    *,
    path: str | None = None,
    limit: int | None = None,
    binarize: str = "none",
    seed: int = 0,
    val_size: int = 10_000,
    data_config=None,
) -> Splits:
    """Load a dataset as train/validation/test splits.

    Args:
        source: a name in :data:`DATA_SOURCES` (``"mnist"``, ``"arrays"``, ...).
            Giving ``path`` while ``source`` is the default ``"mnist"`` selects
            ``"arrays"``; other sources receive ``path`` as they are.
        path: the ``.npz`` file for ``"arrays"`` (required there).
        limit: keep only the first ``limit`` training examples (applied after the
            split; validation and test are untouched; all are kept if there are
            fewer). ``None`` keeps all.
        binarize: ``"none"`` (continuous pixels), ``"static"`` (every split binarized
            once with ``seed``) or ``"dynamic"`` (train continuous, val/test binarized
            once with :data:`EVAL_BINARIZATION_SEED`); see the module docstring.
        seed: seed of the static binarization (and passed to the source loader).
        val_size: for ``"arrays"`` without ``x_val``: the most examples to carve off
            the end of ``x`` for validation (at most a tenth of them).

    Returns:
        A :class:`Splits`. Arrays that vaekit made itself (MNIST's pixels, binarized images) are
        read-only and 64-byte aligned, so that the trainer uses them on the CPU device without a
        copy (`data.memory`); copy one (``x.copy()``) to change it.

    Raises:
        VaekitError: unknown source or binarize mode, a bad ``limit``, or any problem
            the source reports with its data.
    """
    if binarize not in BINARIZE_MODES:
        raise VaekitError(f"unknown binarize mode {binarize!r}; valid modes: {', '.join(BINARIZE_MODES)}")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit <= 0):
        raise VaekitError(f"limit must be a positive integer, got {limit!r}")
    if path is not None and source == "mnist":
        source = "arrays"
    if source not in DATA_SOURCES:
        raise VaekitError(f"unknown data source {source!r}; available: {', '.join(sorted(DATA_SOURCES))}")

    # Every loader gets the whole DataConfig (None from a direct call): options of its own (text:
    # max_len, vocab_size; folder: image_size, color) live there.
    splits = DATA_SOURCES[source](path, val_size=val_size, seed=seed, limit=limit, data_config=data_config)
    given_spec, run_files = splits.pop("spec", None), splits.pop("run_files", {})
    transform = splits.pop("train_transform", None)
    stream = splits.pop("stream", None)
    if stream is not None and binarize == "static":
        raise VaekitError("data.binarize=static binarizes the training set once in memory; a streamed training "
                          "split takes data.binarize=dynamic or none")
    num_classes = _num_classes(splits)  # before limit: the class count is the dataset's

    if limit is not None and limit < len(next(iter(splits["train"].values()))):
        # Copy the kept rows so that the full training array can be freed.
        splits["train"] = {k: v[:limit].copy() for k, v in splits["train"].items()}

    # Binarize after limiting: less work, and the same result (see binarize_fixed).
    splits = _binarize_splits(splits, binarize, seed)
    shape = splits["val"]["x"].shape[1:]
    spec = given_spec or DataSpec("images" if len(shape) == 3 else "vectors", shape, num_classes)
    if spec.kind == "tokens" and binarize != "none":
        raise VaekitError(f"data.binarize={binarize} applies to images; token data cannot be binarized")
    return Splits(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        spec=spec,
        binarize=binarize,
        train_transform=transform,
        run_files=run_files,
        stream=stream,
    )
