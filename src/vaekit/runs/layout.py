"""The run directory's layout and the files vaekit writes.

    runs/<name>/
      config.yaml          the fully resolved Config (enough to rebuild the model)
      run.json             data spec, model kind and capabilities, status, progress, final metrics
      metrics.jsonl        one JSON record per epoch (train/..., val/... metrics)
      tensorboard/         TensorBoard event files (per-step and per-epoch scalars)
      checkpoints/latest/  the last `train.keep_checkpoints` periodic checkpoints (by epoch)
      checkpoints/best/    the checkpoint with the best validation ELBO
      samples.png, reconstructions.png, curves.png, kl_per_dim.png
      lock                 while a process trains the run: its pid and host (JSON); removed on exit

Every file is written atomically (a temporary file renamed into place), so an interruption or an
error never leaves a half-written picture, record or export; every output path a user names is
checked before any work starts.

Locks: one process at a time trains a run directory. `RunLock` creates `lock` exclusively; a
second process gets one line. A lock whose process is gone (same host, pid not alive: SIGKILL,
power loss) is stale: `run_status` reports the run as "interrupted" and `--resume` takes it over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vaekit.errors import VaekitError

if TYPE_CHECKING:
    import yaml

    from vaekit.config import Config

# numpy, yaml and the config package are imported where used: the CLI's modules import this one for
# its atomic writes and path checks, and `vaekit --help` imports no more than it needs.

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = "lock"

log = logging.getLogger("vaekit")


def write_json_atomic(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(o):
    import numpy as np

    if isinstance(o, np.ndarray) or hasattr(o, "__array__"):
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


def newest_checkpoint(run_dir: Path, which: str) -> int | None:
    """The epoch of the newest finished `which` ("best" or "latest") checkpoint of a run, from its
    directory names alone (Orbax names each finished checkpoint by its epoch), or None."""
    folder = Path(run_dir) / CHECKPOINT_DIR / which
    epochs = [int(p.name) for p in folder.iterdir() if p.name.isdigit()] if folder.is_dir() else []
    return max(epochs, default=None)


def stale_result(run_dir: Path, entry: dict) -> str | None:
    """Why a result of `vaekit evaluate` no longer describes the run (its checkpoint has been
    replaced by a newer one since it was scored), or None when it still does or cannot be told."""
    which, epoch = entry.get("checkpoint"), entry.get("checkpoint_epoch")
    if which not in ("best", "latest") or epoch is None:
        return None
    now = newest_checkpoint(run_dir, which)
    if now is None or now == epoch:
        return None
    return f"stale: scored the {which} checkpoint of epoch {epoch}; the run's is now epoch {now}"


class RunDirTaken(VaekitError):
    """The run directory was created by another process between the check and the creation."""


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
        raise RunDirTaken(f"run directory '{path}' already exists (another vaekit process just created it); "
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


def write_config(run_dir: Path, cfg: Config) -> None:
    import yaml

    write_text_atomic(run_dir / CONFIG_FILE, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def read_config(run_dir: Path) -> Config:
    import yaml

    from vaekit.config import from_dict

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
        return from_dict(doc or {})
    except VaekitError as e:
        raise VaekitError(f"{path}: {e}") from None


def resume_config(run_dir: Path, overrides=()) -> Config:
    """The config a run resumes with: its own config.yaml, where `overrides` (`section.key=value`
    strings or a dict) may change only the run's length, train.epochs or train.steps, whichever the
    run counts in, and its time budget train.max_minutes (0 lifts it); anything else is one line,
    since the checkpoints hold that config's model."""
    from vaekit.config import merge, parse_override, validate
    from vaekit.config.overrides import override_texts

    cfg = read_config(run_dir)
    length = "train.steps" if cfg.train.steps is not None else "train.epochs"  # how this run counts
    allowed = {length, "train.max_minutes"}
    for text in override_texts(overrides):
        update = parse_override(text)
        if list(update) != ["train"] or not {f"train.{k}" for k in update["train"]} <= allowed:
            raise VaekitError(f"with --resume only {length} and train.max_minutes may change (this run is counted "
                              f"in {length.split('.')[1]}); got '{text}'")
        cfg = merge(cfg, update)
    validate(cfg)
    return cfg


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: the problem and where it is."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{problem}{where}"

def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary file next to ``path``, then rename it into place.

    On any error (or an interrupt) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    # The process id keeps concurrent writers apart; a plain name (not mkstemp) keeps the
    # file's permissions the umask's, as for any other file a run writes.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def check_out(out: str | Path, allowed: tuple[str, ...]) -> Path:
    """An output path with an allowed suffix in an existing directory; one line otherwise."""
    path = Path(out)
    if path.suffix.lower() not in allowed:
        raise VaekitError(f"--out must end in {' or '.join(allowed)}, got '{out}'")
    if not path.parent.exists():
        raise VaekitError(f"directory '{path.parent}' for --out does not exist")
    if path.is_dir():
        raise VaekitError(f"--out '{out}' is a directory")
    return path
