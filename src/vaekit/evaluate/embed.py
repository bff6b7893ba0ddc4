"""Embeddings of a trained model: posterior means and scales of a split or an .npz file, streamed.

    vaekit embed runs/<a> --split test --out codes.npz
    vaekit embed runs/<a> --data my.npz --out codes.parquet      # Parquet needs pyarrow

Data of any size goes through in batches: an .npz member is read row block by row block
straight from the archive (no whole-array load; compressed archives too), each block is
prepared as the run prepares its evaluation data (uint8 scaled to [0, 1], greyscale given a
channel axis, binarized with the run's evaluation seed for a binarized model: the same result
as binarizing the whole array at once), encoded by one jitted function, and appended to the
output (.npz members or Parquet row groups), which is renamed into place only when complete.

Output arrays: ``mean`` float32 (N, D) (E_q[z|x]), ``scale`` float32 (N, D) (the posterior's
standard deviations, where it has them), and ``y`` int32 (N,) when the data has labels.

:func:`examples` gives whole arrays for the commands that need them at once (anomaly scores,
latent tools), with the same checks; :func:`linear_probe` is a logistic-regression accuracy of
codes, evidence of what the representation holds (shown in the report).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError
from vaekit.runs.layout import atomic_write, check_out

EMBED_BATCH = 1024  # examples per encoded block


# --------------------------------------------------------------------------- reading data


def _eval_binarize_seed(run) -> int | None:
    """Seed of the run's evaluation binarization, or None for a run on continuous data."""
    from vaekit.data import EVAL_BINARIZATION_SEED

    mode = run.config.data.binarize
    return None if mode == "none" else (run.config.data.seed if mode == "static" else EVAL_BINARIZATION_SEED)


class NpzReader:
    """Row blocks of the ``x`` (and ``y``) arrays of an .npz archive, read without loading them whole.

    Checks on open: the file is an .npz with ``x`` of ndim 2..4 and, if present, ``y`` of one
    label per row. Values are checked block by block (:func:`vaekit.data.arrays.validate_images`).
    """

    def __init__(self, path: str | Path):
        self.path = str(path)
        if not os.path.exists(self.path):
            raise VaekitError(f"data file not found: {self.path}")
        if os.path.isdir(self.path) or not zipfile.is_zipfile(self.path):
            raise VaekitError(f"data file {self.path} is not an .npz archive (expected arrays saved with np.savez)")
        with zipfile.ZipFile(self.path) as zf:
            names = set(zf.namelist())
        if "x.npy" not in names:
            found = ", ".join(sorted(n.removesuffix(".npy") for n in names)) or "none"
            raise VaekitError(f"data file {self.path} has no array 'x' (keys found: {found})")
        self.x_shape, self.x_dtype = self._header("x")
        if len(self.x_shape) not in (2, 3, 4) or self.x_shape[0] == 0:
            raise VaekitError(f"data file {self.path}: array 'x' has shape {self.x_shape}; expected vectors (N, D) "
                              f"or images (N, H, W) or (N, H, W, C), N > 0")
        self.has_y = "y.npy" in names
        if self.has_y:
            y_shape, _ = self._header("y")
            if y_shape != (self.x_shape[0],):
                raise VaekitError(f"data file {self.path}: array 'y' has shape {y_shape}; expected "
                                  f"({self.x_shape[0]},), one label per example")

    def __len__(self) -> int:
        return self.x_shape[0]

    @property
    def example_shape(self) -> tuple[int, ...]:
        """One example's shape as the model sees it ((H, W) greyscale gets its channel axis)."""
        shape = self.x_shape[1:]
        return (*shape, 1) if len(shape) == 2 and len(self.x_shape) == 3 else shape

    def _open(self, key: str):
        zf = zipfile.ZipFile(self.path)
        try:
            f = zf.open(f"{key}.npy")
            version = np.lib.format.read_magic(f)
            fmt = np.lib.format
            shape, fortran, dtype = (fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0)(f)
        except Exception as e:  # a damaged archive or member
            zf.close()
            raise VaekitError(f"data file {self.path}: array '{key}' cannot be read ({e})") from None
        if dtype.hasobject:
            zf.close()
            raise VaekitError(f"data file {self.path}: array '{key}' has a non-numeric (object) dtype")
        return zf, f, tuple(shape), fortran, dtype

    def _header(self, key: str):
        zf, _, shape, _, dtype = self._open(key)
        zf.close()
        return shape, dtype

    def _blocks(self, key: str, rows: int) -> Iterator[np.ndarray]:
        zf, f, shape, fortran, dtype = self._open(key)
        with zf, f:
            if fortran and len(shape) > 1:  # column-major rows are not contiguous: read it whole
                yield from np.array_split(np.lib.format.read_array(f), max(1, -(-shape[0] // rows)))
                return
            row_bytes = dtype.itemsize * math.prod(shape[1:])
            for start in range(0, shape[0], rows):
                n = min(rows, shape[0] - start)
                buf = f.read(n * row_bytes)
                if len(buf) != n * row_bytes:
                    raise VaekitError(f"data file {self.path}: array '{key}' is truncated")
                yield np.frombuffer(buf, dtype).reshape(n, *shape[1:])

    def blocks(self, rows: int = EMBED_BATCH) -> Iterator[dict[str, np.ndarray]]:
        """Yield {"x": float32 block (checked, scaled), ["y": int32 block]} of at most `rows` examples."""
        from vaekit.data.arrays import validate_images, validate_labels

        ys = self._blocks("y", rows) if self.has_y else None
        for x in self._blocks("x", rows):
            out = {"x": validate_images(x, "x", self.path)}
            if ys is not None:
                out["y"] = validate_labels(next(ys), len(x), "y", self.path)
            yield out


def check_shape(run, shape: tuple[int, ...], where: str) -> None:
    """One line when examples of `shape` are not what the run was trained on."""
    if tuple(shape) != tuple(run.spec.shape):
        raise VaekitError(f"{where} has examples of shape {tuple(shape)} but run '{run.path}' was trained on "
                          f"{tuple(run.spec.shape)}")


def iter_examples(run, *, data: str | Path | None = None, split: str | None = None, limit: int | None = None,
                  batch_size: int = EMBED_BATCH) -> tuple[int, Iterator[dict[str, np.ndarray]]]:
    """(number of examples, iterator of blocks {"x", ["y"]}) of an .npz file or a split of the run's data.

    Blocks are prepared as the run's evaluation data: a binarized model's data is binarized with
    the run's evaluation seed (for a split, the split already is). Exactly one of `data` and
    `split` must be given.
    """
    if (data is None) == (split is None):
        raise VaekitError("give exactly one of --data F.npz and --split S")
    if limit is not None and limit <= 0:
        raise VaekitError(f"--limit must be positive, got {limit}")
    if split is not None:
        if split not in ("train", "val", "test"):
            raise VaekitError(f"--split must be train, val or test, got '{split}'")
        arrays = run.data().examples(split, limit)
        arrays = {k: v for k, v in arrays.items() if k in ("x", "y")}
        n = len(arrays["x"])
        return n, ({k: v[i : i + batch_size] for k, v in arrays.items()} for i in range(0, n, batch_size))
    reader = NpzReader(data)
    check_shape(run, reader.example_shape, f"data file {data}")
    n = len(reader) if limit is None else min(limit, len(reader))
    seed = _eval_binarize_seed(run)

    def gen():
        rng = None if seed is None or not run.spec.is_images else np.random.default_rng(seed)
        done = 0
        for block in reader.blocks(batch_size):
            block = {k: v[: n - done] for k, v in block.items()}
            if rng is not None:  # the same stream as binarize_fixed(all of x, seed)
                u = rng.random(block["x"].shape, dtype=np.float32)
                block["x"] = np.less(u, block["x"], out=u)
            yield block
            done += len(block["x"])
            if done >= n:
                return

    return n, gen()


def examples(run, *, data: str | Path | None = None, split: str | None = None,
             limit: int | None = None) -> dict[str, np.ndarray]:
    """All examples {"x", ["y"]} of an .npz file or a split, prepared as in :func:`iter_examples`."""
    _, blocks = iter_examples(run, data=data, split=split, limit=limit)
    parts = list(blocks)
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --------------------------------------------------------------------------- encoding


def encoder_fn(model, batch_size: int = EMBED_BATCH):
    """A function (x (B, ...), y (B,) or None) -> (mean (B, D), scale (B, D) or None) on the host.

    One jitted call per block, padded to `batch_size` rows so that one shape is compiled.
    """
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def run(st, xb, yb):
        q = nnx.merge(graphdef, st).encode(xb, yb)
        return q.mean, q.scale  # scale: None where the posterior is not a diagonal Gaussian

    def encode(x: np.ndarray, y: np.ndarray | None = None):
        n = len(x)
        idx = np.minimum(np.arange(batch_size), n - 1) if n < batch_size else np.arange(n)
        mean, scale = run(state, jnp.asarray(x[idx]), None if y is None else jnp.asarray(y[idx]))
        mean = np.asarray(mean, np.float32)[:n]
        if scale is not None:
            scale = np.broadcast_to(np.asarray(scale, np.float32), (len(idx), mean.shape[1]))[:n].copy()
        return mean, scale

    return encode


def _condition(run, block: dict) -> np.ndarray | None:
    """Labels to pass the encoder: a conditional model's class labels, required."""
    if not run.model.capabilities.conditional:
        return None
    if "y" not in block:
        raise VaekitError(f"run '{run.path}' is a conditional model: its data needs class labels 'y'")
    return block["y"]


def encode_all(run, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = EMBED_BATCH):
    """Posterior means and scales of whole arrays: (mean (N, D), scale (N, D) or None)."""
    from vaekit.models import require

    require(run.model, "latent_vector", "encoding")
    enc = encoder_fn(run.model, min(batch_size, len(x)))
    cond = y if run.model.capabilities.conditional else None
    parts = [enc(x[i : i + batch_size], None if cond is None else cond[i : i + batch_size])
             for i in range(0, len(x), batch_size)]
    mean = np.concatenate([p[0] for p in parts])
    scale = None if parts[0][1] is None else np.concatenate([p[1] for p in parts])
    return mean, scale


# --------------------------------------------------------------------------- writing


class _NpzStreamWriter:
    """Write named arrays of known shape into an .npz, rows appended in order.

    Each array streams into its own .npy file next to the archive (a zip archive takes one
    member at a time); `close` stores them in the archive and removes them.
    """

    def __init__(self, path: Path):
        self.path = path
        self.files: dict[str, tuple] = {}

    def open(self, name: str, shape: tuple[int, ...], dtype) -> None:
        part = self.path.with_name(f"{self.path.name}.{name}.npy")
        f = open(part, "wb")
        np.lib.format.write_array_header_2_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                                                 "fortran_order": False, "shape": tuple(shape)})
        self.files[name] = (f, np.dtype(dtype), part)

    def append(self, name: str, rows: np.ndarray) -> None:
        f, dtype, _ = self.files[name]
        f.write(np.ascontiguousarray(rows, dtype).tobytes())

    def close(self, complete: bool = True) -> None:
        try:
            for f, _, _ in self.files.values():
                f.close()
            if complete:
                with zipfile.ZipFile(self.path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
                    for name, (_, _, part) in self.files.items():
                        zf.write(part, f"{name}.npy")
        finally:
            for _, _, part in self.files.values():
                part.unlink(missing_ok=True)


def out_kind(out: Path) -> str:
    suffix = out.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise VaekitError("--out .parquet needs pyarrow (pip install 'vaekit[parquet]'); or write .npz") from None
        return "parquet"
    raise VaekitError(f"--out must end in .npz or .parquet, got '{out}'")


def embed(run, out: str | Path, *, data: str | Path | None = None, split: str | None = None,
          limit: int | None = None, batch_size: int = EMBED_BATCH) -> dict:
    """Write posterior means (and scales, labels) of `data` or `split` to `out` (.npz or .parquet).

    The output is written to a temporary file next to `out` and renamed when complete; on any
    error nothing is left behind. Returns {"path", "examples", "latent_dim", "keys"}.
    """
    from vaekit.models import require

    out = check_out(out, (".npz", ".parquet"))
    kind = out_kind(out)
    require(run.model, "latent_vector", "vaekit embed")
    n, blocks = iter_examples(run, data=data, split=split, limit=limit, batch_size=batch_size)
    enc = encoder_fn(run.model, min(batch_size, n))
    keys: list[str] = []

    def write(tmp):
        writer = None
        try:
            for block in blocks:
                mean, scale = enc(block["x"], _condition(run, block))
                cols = {"mean": mean, **({"scale": scale} if scale is not None else {}),
                        **({"y": block["y"].astype(np.int32)} if "y" in block else {})}
                if writer is None:
                    keys.extend(cols)
                    writer = _open_writer(kind, tmp, cols, n)
                writer.append(cols)
            if writer is None:
                raise VaekitError("no examples to embed")
        except BaseException:
            if writer is not None:
                try:
                    writer.close(complete=False)
                except Exception:
                    pass
            raise
        writer.close()

    atomic_write(out, write)
    return {"path": str(out), "examples": n, "latent_dim": int(run.model.latent_dim), "keys": keys}


class _Writer:
    def append(self, cols: dict) -> None: ...

    def close(self, complete: bool = True) -> None: ...


def _open_writer(kind: str, tmp: Path, first: dict, n: int) -> _Writer:
    if kind == "npz":
        w = _NpzStreamWriter(tmp)
        for k, v in first.items():
            w.open(k, (n, *v.shape[1:]), v.dtype)

        class NpzWriter(_Writer):
            def append(self, cols):
                for k, v in cols.items():
                    w.append(k, v)

            def close(self, complete=True):
                w.close(complete)

        return NpzWriter()

    import pyarrow as pa
    import pyarrow.parquet as pq

    def table(cols):
        arrays, names = [], []
        for k, v in cols.items():
            if v.ndim == 2:  # (B, D) -> a fixed-size list column
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]))
            else:
                arrays.append(pa.array(v))
            names.append(k)
        return pa.Table.from_arrays(arrays, names=names)

    pw = pq.ParquetWriter(tmp, table(first).schema)

    class ParquetWriter(_Writer):
        def append(self, cols):
            pw.write_table(table(cols))

        def close(self, complete=True):
            pw.close()

    return ParquetWriter()


# --------------------------------------------------------------------------- linear probe


def linear_probe(z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray,
                 *, max_iter: int = 1000, seed: int = 0) -> dict:
    """Accuracy of a multinomial logistic regression on codes (standardized), trained on one set and
    tested on another: how linearly the representation separates the labels.

    Returns {"accuracy", "chance" (the most frequent test class's share), "train_examples",
    "test_examples", "classes"}.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    classes = np.unique(y_train)
    if len(classes) < 2:
        raise VaekitError("a linear probe needs at least two classes in its training labels")
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, random_state=seed))
    clf.fit(z_train, y_train)
    acc = float(clf.score(z_test, y_test))
    _, counts = np.unique(y_test, return_counts=True)
    return {"accuracy": acc, "chance": float(counts.max() / len(y_test)), "train_examples": int(len(z_train)),
            "test_examples": int(len(z_test)), "classes": int(len(classes))}


def probe_run(run, *, num_train: int = 5000, num_test: int = 2000) -> dict | None:
    """Linear probe of a run's posterior means: fit on the first `num_train` training examples,
    score on the first `num_test` test examples. None when the data has no labels."""
    splits = run.data()
    train, test = splits.examples("train", num_train), splits.examples("test", num_test)
    if "y" not in train or "y" not in test or len(np.unique(train["y"])) < 2:
        return None
    z_tr, _ = encode_all(run, train["x"], train["y"])
    z_te, _ = encode_all(run, test["x"], test["y"])
    return linear_probe(z_tr, train["y"], z_te, test["y"])


__all__ = ["NpzReader", "check_shape", "embed", "encode_all", "encoder_fn", "examples",
           "iter_examples", "linear_probe", "probe_run"]
