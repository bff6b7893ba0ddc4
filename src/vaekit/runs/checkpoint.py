"""Orbax checkpoints of a run: periodic ("latest") and best-by-validation ("best").

Checkpoints are written by Orbax, which writes to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint with a half-written one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import jax
import numpy as np

from vaekit.errors import VaekitError
from vaekit.runs.layout import CHECKPOINT_DIR

log = logging.getLogger("vaekit")


class Checkpointer:
    """Periodic ("latest", keep N) and best-by-validation ("best", keep 1) Orbax checkpoints.

    A "latest" checkpoint holds two items: "model" (the model's whole state: parameters of every
    group, frozen parameters, BatchNorm statistics and other non-gradient state) and "train"
    (optimizer states, step, epoch, RNG key, best validation value), what resuming needs. The
    trainer saves only "model" as "best": `load_run` restores only "model" (so a change to the
    optimizer or the training state never breaks loading a finished run), and resuming reads
    "latest". That also spares Adam's two moment copies of every parameter in each best save
    (0.25 s of a 10-epoch mnist-mlp run, docs/results.md). Steps of the Orbax managers are
    epochs.
    """

    def __init__(self, run_dir: Path, keep: int = 2, asynchronous: bool | None = None):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        root = Path(run_dir).absolute() / CHECKPOINT_DIR
        # Asynchronous saves (Orbax writes in a background thread while training goes on) in a
        # single process; with several processes every save is a collective and stays synchronous.
        self.asynchronous = jax.process_count() == 1 if asynchronous is None else asynchronous
        opts = dict(create=True, enable_async_checkpointing=self.asynchronous)
        self.managers = {
            "latest": ocp.CheckpointManager(root / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts)),
            "best": ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts)),
        }

    def save(self, which: str, epoch: int, items: dict) -> None:
        """Save {item name: pytree} as checkpoint `epoch` of `which`."""
        mngr = self.managers[which]
        if self.asynchronous:
            mngr.wait_until_finished()  # this manager's previous save, before its steps are read or deleted
            # A host copy to write from: the trainer donates its state's buffers to the next step,
            # and on CPU a device array and its numpy view share memory.
            items = jax.tree.map(np.array, items)
        if epoch in mngr.all_steps():  # re-saving an epoch (e.g. best after resume): replace it
            mngr.delete(epoch)
        args = {name: self._ocp.args.StandardSave(tree) for name, tree in items.items()}
        mngr.save(epoch, args=self._ocp.args.Composite(**args))
        if not self.asynchronous:
            mngr.wait_until_finished()

    def wait(self) -> None:
        """Until every save in flight is on disk (complete, renamed into place)."""
        for m in self.managers.values():
            m.wait_until_finished()

    def latest_epoch(self, which: str = "latest") -> int | None:
        return self.managers[which].latest_step()

    def restore(self, which: str, targets: dict, epoch: int | None = None) -> dict:
        """Restore the items named in `targets` ({name: pytree of arrays or ShapeDtypeStructs})."""
        mngr = self.managers[which]
        epoch = mngr.latest_step() if epoch is None else epoch
        if epoch is None:
            raise VaekitError(f"no '{which}' checkpoint in {mngr.directory}")
        where = Path(str(mngr.directory)) / str(epoch)
        missing = [name for name in targets if not (where / name).exists()]
        if missing:
            if (where / "default").exists():
                raise VaekitError(f"checkpoint {where} was written by vaekit 0.1 (one item holding model and "
                                  f"optimizer together); this version reads 'model' and 'train' items: retrain the run")
            raise VaekitError(f"checkpoint {where} has no '{missing[0]}' item")
        args = {}
        for name, tree in targets.items():
            # Restored with the target's sharding (replicated over a data-parallel mesh, possibly
            # spanning processes), else on this process's first device: a checkpoint saved from
            # several devices or processes loads anywhere.
            here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None) or here), tree)
            args[name] = self._ocp.args.StandardRestore(abstract)
        # Every stored value is read first: a restore that fails on a damaged file leaves Orbax's other
        # reads pending, and at exit they print pages of "Exception ignored" and "Event loop is closed".
        problem = next((p for p in map(unreadable, (where / name for name in targets)) if p), None)
        if problem is None:
            try:
                restored = mngr.restore(epoch, args=self._ocp.args.Composite(**args))
            except Exception as e:  # Orbax raises many types for truncated / corrupted files
                problem = _restore_problem(e)
        if problem is not None:
            raise VaekitError(f"checkpoint {where} is corrupted or incomplete: {problem}")
        return {name: restored[name] for name in targets}

    def restore_intact(self, which: str, targets: dict) -> tuple[dict, int]:
        """(items, epoch) of the newest checkpoint of `which` that restores; a damaged newer one is
        skipped with one warning line. Raises the newest one's error when none restores."""
        first_error = None
        for epoch in sorted(self.managers[which].all_steps(), reverse=True):
            try:
                items = self.restore(which, targets, epoch)
            except VaekitError as e:
                first_error = first_error or e
                continue
            if first_error is not None:
                log.warning("%s; resuming from the intact checkpoint of epoch %d instead", first_error, epoch)
            return items, epoch
        if first_error is not None:
            raise first_error
        raise VaekitError(f"no '{which}' checkpoint in {self.managers[which].directory}")

    def close(self) -> None:
        """Finish the saves in flight, then release the managers."""
        for m in self.managers.values():
            m.wait_until_finished()
            m.close()


def _restore_problem(e: BaseException) -> str:
    """The damaged array and file behind an Orbax restore error, in one line (TensorStore's own
    message, the innermost cause, names them; Orbax's outer one holds a bound-method repr)."""
    chain = []
    while e is not None and len(chain) < 20:
        chain.append(e)
        e = e.__cause__ or e.__context__
    for err in reversed(chain):
        text = " ".join(str(err).split())
        m = re.search(r'Error (?:reading|opening) "([^"]+)" in OCDBT database at local file "([^"]+)"(?::\s*(.*))?', text)
        if m:
            array = re.sub(r"(\.value)?/[^/]*$", "", m.group(1))
            detail = re.sub(r"^[A-Z_]+: ", "", (m.group(3) or "").strip())
            return f"cannot read array '{array}' from {m.group(2).rstrip('/')}" + (f" ({detail[:120]})" if detail else "")
    for err in reversed(chain):
        text = " ".join(str(err).split()).split(" See full TensorStore details")[0].strip()
        if text:
            return text[:200]
    return type(chain[0]).__name__


def unreadable(item: Path) -> str | None:
    """What cannot be read of a checkpoint item (one line), or None when all of it reads.

    Every array is opened and read through TensorStore's public API, from the OCDBT database Orbax
    writes (or the item's plain files): a damaged index or manifest names the file, a truncated or
    missing data file or a damaged compressed chunk names the array. All opens, then all reads, are
    issued at once and every one is awaited, so none is left pending. The cost is one more read and
    decode of what the restore reads next (from the page cache): 0.04-0.14 s for 25 MB of float32
    arrays next to a 0.10-0.20 s restore (2-core AMD EPYC, shared; a few ms for mnist-mlp's model).
    A flipped bit in an uncompressed value is not found (OCDBT stores no checksums).
    """
    import tensorstore as ts

    if (item / "manifest.ocdbt").is_file():
        kvstore = {"driver": "ocdbt", "base": f"file://{item.absolute()}/"}
    else:
        kvstore = {"driver": "file", "path": f"{item.absolute()}/"}
    try:
        store = ts.KvStore.open(kvstore).result()
        keys = [key.decode(errors="replace") for key in store.list().result()]
    except Exception as e:  # TensorStore reports a damaged index or manifest as ValueError
        return _unreadable_file(e, item)
    drivers = {"/.zarray": "zarr", "/zarr.json": "zarr3"}
    arrays = {key[: -len(end)]: driver for key in keys for end, driver in drivers.items() if key.endswith(end)}
    opened = {name: ts.open({"driver": driver, "kvstore": {**kvstore, "path": f"{name}/"}}, open=True)
              for name, driver in arrays.items()}
    problem = _first_failure(opened, item)
    if problem is None:
        problem = _first_failure({name: array.result().read() for name, array in opened.items()}, item)
    return problem


def _first_failure(futures: dict, item: Path) -> str | None:
    """Await every TensorStore future of {array name: future}; the first failure, as one line."""
    first = None
    for name, future in futures.items():
        try:
            future.result()
        except Exception as e:
            array = re.sub(r"\.value$", "", name)  # an NNX variable's value: "encoder.kernel.value"
            first = first or f"cannot read array '{array}' from {item} ({_detail(str(e))})"
    return first


def _detail(text: str) -> str:
    """TensorStore's message without its status code and file prefix, on one line, at most 120 characters."""
    text = " ".join(text.split()).split(" See full TensorStore details")[0]
    return re.sub(r"^[A-Z_]+: (Error \w+ [^:]*: )?", "", text)[:120]


def _unreadable_file(e: BaseException, item: Path) -> str:
    """A damaged file of the item's index, named relative to the item."""
    text = " ".join(str(e).split())
    m = re.search(r'local file "([^"]+)"', text)
    name = Path(m.group(1)).relative_to(item.absolute()) if m and m.group(1).startswith(str(item.absolute())) else "its index"
    return f"cannot read {name} from {item} ({_detail(text)})"
