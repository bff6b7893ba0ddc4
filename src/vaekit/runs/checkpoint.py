"""Orbax checkpoints of a run: periodic ("latest") and best-by-validation ("best").

Checkpoints are written by Orbax, which writes to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint with a half-written one.
"""

from __future__ import annotations

import asyncio
import contextlib
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
        try:
            with _drained_orbax_loops():
                restored = mngr.restore(epoch, args=self._ocp.args.Composite(**args))
        except Exception as e:  # Orbax raises many types for truncated / corrupted files
            raise VaekitError(f"checkpoint {where} is corrupted or incomplete: {_restore_problem(e)}") from None
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


_FAILED_RESTORE_LOOPS: list = []  # see _drained_orbax_loops


@contextlib.contextmanager
def _drained_orbax_loops():
    """Orbax runs a restore in a fresh asyncio loop and closes it as soon as the first array read
    fails, leaving the other reads pending: at exit their coroutines print "Exception ignored ..."
    with pages of TensorStore JSON, and TensorStore callbacks print "Event loop is closed". While
    restoring, that loop is run with a clean shutdown instead: pending tasks are cancelled and
    awaited before the loop closes. A restore that failed leaves its loop open instead (kept in
    `_FAILED_RESTORE_LOOPS`): TensorStore reads that were already under way complete on their own
    threads and call back into the loop, and a closed loop prints "Event loop is closed" then,
    often at exit, after the one-line error; an open loop that nobody runs drops the callbacks.
    (Only Orbax's private helper changes, and only inside this block; an Orbax without it restores
    as it always did.)"""
    try:
        from orbax.checkpoint._src import asyncio_utils
    except ImportError:
        yield
        return
    original = getattr(asyncio_utils, "_run_sync_via_new_loop", None)
    if original is None:
        yield
        return

    def run_and_drain(coro):
        loop = asyncio.new_event_loop()
        failed = True
        try:
            asyncio.set_event_loop(loop)
            result = loop.run_until_complete(coro)
            failed = False
            return result
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for task in pending:
                    task.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                asyncio.set_event_loop(None)
                if failed:
                    _FAILED_RESTORE_LOOPS.append(loop)
                else:
                    loop.close()

    asyncio_utils._run_sync_via_new_loop = run_and_drain
    try:
        yield
    finally:
        asyncio_utils._run_sync_via_new_loop = original
