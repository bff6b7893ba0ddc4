"""The run directory: its layout, Orbax checkpoints, and `load_run` to bring a trained model back.

    runs/<name>/
      config.yaml          the fully resolved Config (enough to rebuild the model)
      run.json             data spec, model kind and capabilities, status, progress, final metrics
      metrics.jsonl        one JSON record per epoch (train/..., val/... metrics)
      tensorboard/         TensorBoard event files (per-step and per-epoch scalars)
      checkpoints/latest/  the last `train.keep_checkpoints` periodic checkpoints (by epoch)
      checkpoints/best/    the checkpoint with the best validation ELBO
      samples.png, reconstructions.png, curves.png, kl_per_dim.png

Checkpoints are written by Orbax, which writes to a temporary directory and renames it when
complete, so an interrupted save never replaces a good checkpoint with a half-written one.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np
import yaml
from flax import nnx

from vaekit import config as config_lib
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError

CONFIG_FILE = "config.yaml"
RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"

# Orbax logs every save at INFO; a training log has no use for that.
logging.getLogger("absl").setLevel(logging.WARNING)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=False)
    return path


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
    try:
        doc = yaml.safe_load((Path(run_dir) / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise VaekitError(f"cannot read {Path(run_dir) / CONFIG_FILE}: {e}") from None
    return config_lib.from_dict(doc or {})


# --------------------------------------------------------------------------- Orbax


class Checkpointer:
    """Periodic ("latest", keep N) and best-by-validation ("best", keep 1) Orbax checkpoints.

    A checkpoint holds two items: "model" (the model's whole state: parameters of every group,
    frozen parameters, BatchNorm statistics and other non-gradient state) and "train"
    (optimizer states, step, epoch, RNG key, best validation value). `load_run` restores only
    "model", so a change to the optimizer or the training state never breaks loading a finished
    run. Steps of the Orbax managers are epochs.
    """

    def __init__(self, run_dir: Path, keep: int = 2):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        root = Path(run_dir).absolute() / CHECKPOINT_DIR
        opts = dict(create=True, enable_async_checkpointing=False)
        self.managers = {
            "latest": ocp.CheckpointManager(root / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=keep, **opts)),
            "best": ocp.CheckpointManager(root / "best", options=ocp.CheckpointManagerOptions(max_to_keep=1, **opts)),
        }

    def save(self, which: str, epoch: int, items: dict) -> None:
        """Save {item name: pytree} as checkpoint `epoch` of `which`."""
        mngr = self.managers[which]
        if epoch in mngr.all_steps():  # re-saving an epoch (e.g. best after resume): replace it
            mngr.delete(epoch)
        args = {name: self._ocp.args.StandardSave(tree) for name, tree in items.items()}
        mngr.save(epoch, args=self._ocp.args.Composite(**args))
        mngr.wait_until_finished()

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
            abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)
            args[name] = self._ocp.args.StandardRestore(abstract)
        try:
            restored = mngr.restore(epoch, args=self._ocp.args.Composite(**args))
        except Exception as e:  # Orbax raises many types for truncated / corrupted files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VaekitError(f"checkpoint {where} is corrupted or incomplete ({first[:160]})") from None
        return {name: restored[name] for name in targets}

    def close(self) -> None:
        for m in self.managers.values():
            m.close()


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
        """The run's data splits, loaded as the run was trained (binarization included)."""
        from vaekit.data import load_configured

        return load_configured(self.config.data, **overrides)


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
