"""The run directory: its layout, Orbax checkpoints, and `load_run` to bring a trained model back.

    runs/<name>/
      config.yaml          the fully resolved Config (enough to rebuild the model)
      run.json             data spec, model kind and capabilities, status, progress, final metrics
      metrics.jsonl        one JSON record per epoch (train/..., val/... metrics)
      tensorboard/         TensorBoard event files (per-step and per-epoch scalars)
      checkpoints/latest/  the last `train.keep_checkpoints` periodic checkpoints (by epoch)
      checkpoints/best/    the checkpoint with the best validation ELBO
      samples.png, reconstructions.png, curves.png, kl_per_dim.png
      lock                 while a process trains the run: its pid and host (JSON); removed on exit

Checkpoints are written by Orbax, which writes to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint with a half-written one.

Locks: one process at a time trains a run directory. `RunLock` creates `lock` exclusively; a
second process gets one line. A lock whose process is gone (same host, pid not alive: SIGKILL,
power loss) is stale: `run_status` reports the run as "interrupted" and `--resume` takes it over.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx

from vaekit import config as config_lib
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.runs.layout import write_text_atomic

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "lock"

log = logging.getLogger("vaekit")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.ndarray, jax.Array)):
        return np.asarray(o).tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VaekitError(f"cannot read {path}: {e}") from None


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by an interruption: keep what came before it
    return out


def prepare_run_dir(runs_dir: str | Path, name: str, overwrite: bool) -> Path:
    """Check that runs_dir/name may be written. It is never replaced without `overwrite`."""
    if not name or "/" in name or name in (".", ".."):
        raise VaekitError(f"run name '{name}' is not a valid directory name")
    path = Path(runs_dir) / name
    if path.exists() and not overwrite:
        raise VaekitError(f"run directory '{path}' already exists; choose another --name or pass --overwrite")
    if path.exists() and not path.is_dir():
        raise VaekitError(f"'{path}' exists and is not a directory")
    return path


def create_run_dir(path: Path, overwrite: bool) -> Path:
    """Create the run directory; with `overwrite`, an existing run there is removed first."""
    if path.exists() and overwrite:
        if not is_run_dir(path) and any(path.iterdir()):
            raise VaekitError(f"refusing to overwrite '{path}': it is not empty and not a vaekit run directory")
        owner = lock_owner(path)
        if owner is not None and owner_alive(owner):
            raise VaekitError(_in_use(path, owner))
        shutil.rmtree(path)
    try:
        path.mkdir(parents=True, exist_ok=False)
    except FileExistsError:  # another process created it since prepare_run_dir checked
        raise VaekitError(f"run directory '{path}' already exists (another vaekit process just created it); "
                          f"choose another --name") from None
    return path


# --------------------------------------------------------------------------- locks


def lock_owner(run_dir: Path) -> dict | None:
    """The lock file's contents ({"pid", "host", "started"}), or None when the run is not locked."""
    try:
        owner = json.loads((Path(run_dir) / LOCK_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError):
        return {"pid": None, "host": None}  # being written this instant, or damaged
    return owner if isinstance(owner, dict) else {"pid": None, "host": None}


def owner_alive(owner: dict) -> bool:
    """Whether a lock's process still runs. A process on another host cannot be checked: alive."""
    pid, host = owner.get("pid"), owner.get("host")
    if host != socket.gethostname() or not isinstance(pid, int):
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: dead all the same
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _in_use(run_dir: Path, owner: dict) -> str:
    return (f"run '{run_dir}' is in use by process {owner.get('pid')} on {owner.get('host')} "
            f"(lock file {Path(run_dir) / LOCK_FILE}; if that process is gone, delete the file)")


class RunLock:
    """The run directory's lock: created exclusively, holding this process's pid and host; released
    (deleted) by `release`. A stale lock (same host, dead pid) is taken over and reported."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.held = False
        self.stale: dict | None = None  # the dead owner this lock took over, if any

    def acquire(self) -> RunLock:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = lock_owner(self.path.parent)
                if owner is None:
                    continue  # released meanwhile: try again
                if owner.get("pid") is None:  # being written by its owner right now
                    time.sleep(0.2)
                    owner = lock_owner(self.path.parent) or {}
                if owner_alive(owner):
                    raise VaekitError(_in_use(self.path.parent, owner)) from None
                self.stale = owner
                with contextlib.suppress(FileNotFoundError):
                    self.path.unlink()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise VaekitError(f"could not lock run '{self.path.parent}': another process keeps taking it")

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = lock_owner(self.path.parent)
        if owner is not None and owner.get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


def run_status(run_dir: Path, info: dict) -> tuple[str, str]:
    """(status, detail) of a run: run.json's status, except that a "running" run whose process is
    gone (no lock, or a stale one) is "interrupted". detail names the owner or the dead process."""
    status = info.get("status", "unknown")
    if status != "running":
        return status, ""
    owner = lock_owner(run_dir)
    if owner is None:
        return "interrupted", "its process ended without updating run.json"
    if owner_alive(owner):
        return "running", f"process {owner.get('pid')} on {owner.get('host')}"
    return "interrupted", f"its process {owner.get('pid')} on {owner.get('host')} died"


def is_run_dir(path: Path) -> bool:
    path = Path(path)
    return (path / CONFIG_FILE).is_file() and (path / RUN_FILE).is_file()


def check_run_dir(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise VaekitError(f"run directory '{path}' does not exist")
    if not is_run_dir(path):
        raise VaekitError(f"'{path}' is not a vaekit run directory (no {CONFIG_FILE} and {RUN_FILE})")
    return path


def write_config(run_dir: Path, cfg: config_lib.Config) -> None:
    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> config_lib.Config:
    path = Path(run_dir) / CONFIG_FILE
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise VaekitError(f"cannot read {path}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        raise VaekitError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if doc is not None and not isinstance(doc, dict):
        raise VaekitError(f"{path} must hold a mapping of config sections, got {type(doc).__name__}")
    try:
        return config_lib.from_dict(doc or {})
    except VaekitError as e:
        raise VaekitError(f"{path}: {e}") from None


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"


# --------------------------------------------------------------------------- Orbax


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


# --------------------------------------------------------------------------- load_run


@dataclasses.dataclass
class Run:
    """A trained run, loaded back: its model (in eval mode), config and recorded metrics."""

    path: Path
    config: config_lib.Config
    model: nnx.Module
    info: dict  # run.json: data_spec, status, epoch, final metrics
    history: list[dict]  # metrics.jsonl epoch records
    checkpoint: str  # "best" or "latest"

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_run_info(self.info)

    def data(self, **overrides):
        """The run's data splits, loaded as the run was trained (binarization included). Files the
        data source wrote into the run (a vocabulary) must come out the same, or the data is not
        encoded as in training: one line then."""
        from vaekit.data import load_configured

        splits = load_configured(self.config.data, **overrides)
        for name, text in splits.run_files.items():
            saved = Path(self.path) / name
            if saved.is_file() and saved.read_text(encoding="utf-8") != text:
                raise VaekitError(f"the run's data now gives another {name} than {saved} (did the data file change "
                                  f"since training?); its examples would not be encoded as in training")
        return splits


def load_run(path: str | Path, *, checkpoint: str = "best") -> Run:
    """Load a run directory: build the model abstractly from config.yaml and run.json (no
    parameters drawn) and restore only the checkpoint's "model" item into it.

    checkpoint: "best" (best validation value of the model's best metric; the default) or
    "latest" (the last saved epoch).
    """
    from vaekit.models import abstract_model

    if checkpoint not in ("best", "latest"):
        raise VaekitError(f"checkpoint must be 'best' or 'latest', got '{checkpoint}'")
    run_dir = check_run_dir(path)
    cfg = read_config(run_dir)
    info = read_json(run_dir / RUN_FILE)
    graphdef, abstract = nnx.split(abstract_model(cfg, DataSpec.from_run_info(info)))
    ckpt = Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
    try:
        if ckpt.latest_epoch(checkpoint) is None:
            raise VaekitError(f"run '{run_dir}' has no '{checkpoint}' checkpoint yet")
        state = ckpt.restore(checkpoint, {"model": abstract})["model"]
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state)
    model.eval()
    return Run(run_dir, cfg, model, info, read_metrics(run_dir), checkpoint)
