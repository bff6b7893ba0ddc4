"""A trained run loaded back (`load_run`), and the trained run another kind is built on (`resolve_parent`).

This module sits above models and data: it reads a run directory (runs.layout, runs.checkpoint),
builds the model it describes and restores its weights. Nothing below it reads a run directory:
a kind built on a trained run (`ModelBase.needs_parent_run`, e.g. vqprior over a stage-1 vqvae) is
handed that run's model by its caller, who resolves it here.

    cfg, handed = resolve_parent(cfg)                  # {} for every kind not built on a run
    model = build_model(cfg, spec, rngs=rngs, **handed)

Training calls `resolve_parent(cfg)` once, before config.yaml is written, and writes the config it
returns: the parent's checksum is recorded there (`model.parent_sha256`) and every later build
(`--resume`, `load_run`) checks the parent against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

from flax import nnx

from vaekit.config import Config
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models import MODELS, abstract_model
from vaekit.runs.checkpoint import Checkpointer
from vaekit.runs.layout import (CHECKPOINT_DIR, CONFIG_FILE, RUN_FILE, check_run_dir, is_run_dir, read_config,
                                read_json, read_metrics)


@dataclasses.dataclass
class Run:
    """A trained run, loaded back: its model (in eval mode), config and recorded metrics."""

    path: Path
    config: Config
    model: nnx.Module
    info: dict  # run.json: data_spec, status, epoch, final metrics
    history: list[dict]  # metrics.jsonl epoch records
    checkpoint: str  # "best" or "latest"
    checkpoint_epoch: int | None = None  # the epoch of the checkpoint the model was restored from

    @property
    def spec(self) -> DataSpec:
        return DataSpec.from_run_info(self.info)

    def data(self, **overrides):
        """The run's data splits, loaded as the run was trained (binarization included). Files the
        data source wrote into the run (a vocabulary) must come out the same, or the data is not
        encoded as in training: one line then."""
        from vaekit.data import load_configured

        if self.info.get("data_origin") == "python":
            raise VaekitError(f"run '{self.path}' was trained on arrays given in Python (vaekit.train(data=...)), "
                              f"which the run directory does not hold; load them as you did for training")
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
    "latest" (the last saved epoch). A kind built on a trained run needs that run unchanged (its
    structure comes from there; its weights are in this run's checkpoint too).
    """
    if checkpoint not in ("best", "latest"):
        raise VaekitError(f"checkpoint must be 'best' or 'latest', got '{checkpoint}'")
    run_dir = check_run_dir(path)
    cfg = read_config(run_dir)
    info = read_json(run_dir / RUN_FILE)
    cfg, handed = resolve_parent(cfg, weights=False)
    graphdef, abstract = nnx.split(abstract_model(cfg, DataSpec.from_run_info(info), **handed))
    ckpt = Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
    try:
        epoch = ckpt.latest_epoch(checkpoint)  # once: a run still training may save a newer one meanwhile
        if epoch is None:
            other = "latest" if checkpoint == "best" else "best"
            hint = f"; --checkpoint {other} loads its {other} one" if ckpt.latest_epoch(other) is not None else ""
            raise VaekitError(f"run '{run_dir}' has no '{checkpoint}' checkpoint yet{hint}")
        state = ckpt.restore(checkpoint, {"model": abstract}, epoch=epoch)["model"]
    finally:
        ckpt.close()
    model = nnx.merge(graphdef, state)
    model.eval()
    return Run(run_dir, cfg, model, info, read_metrics(run_dir), checkpoint, epoch)


# --------------------------------------------------------------------------- parent runs


def parent_checksum(run_dir: str | Path) -> str:
    """SHA-256 over a run's config.yaml and every file of its best checkpoint (relative path and
    contents, in sorted order): what a model trained on that run depends on."""
    run_dir = Path(run_dir)
    best = run_dir / CHECKPOINT_DIR / "best"
    files = sorted(p for p in best.rglob("*") if p.is_file()) if best.is_dir() else []
    if not files:
        raise VaekitError(f"model.parent '{run_dir}' has no best checkpoint yet (train it first)")
    digest = hashlib.sha256()
    for path in [run_dir / CONFIG_FILE, *files]:
        digest.update(str(path.relative_to(run_dir)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def resolve_parent(cfg: Config, *, weights: bool = True) -> tuple[Config, dict]:
    """(cfg, what `build_model` is handed) for `cfg`'s kind.

    A kind not built on a trained run: (cfg, {}). One that is (`needs_parent_run`; its config
    names the run as `model.parent` and records its checksum as `model.parent_sha256`): the parent
    is checked (a run directory with a best checkpoint, unchanged since the checksum was
    recorded) and handed as {"parent": its model in eval mode}, with the weights of its best
    checkpoint, or shape-only with `weights=False` (what `load_run` restores into: the weights
    come from the child's checkpoint). The config comes back with the checksum recorded when it
    had none: training writes that config, so the parent is checked against it from then on.
    """
    cls = MODELS.get(cfg.model.kind)
    if cls is None or not cls.needs_parent_run:
        return cfg, {}
    m = cfg.model
    cfg.model.check()
    where = Path(m.parent)
    if not where.exists():
        raise VaekitError(f"model.parent '{where}' does not exist (the run model.kind={m.kind} is built on)")
    if not is_run_dir(where):
        raise VaekitError(f"model.parent '{where}' is not a run directory (no {CONFIG_FILE} and {RUN_FILE}): "
                          f"give a trained run")
    digest = parent_checksum(where)
    if m.parent_sha256 and digest != m.parent_sha256:
        raise VaekitError(f"model.parent '{where}' changed since this {m.kind} was trained on it: its checksum is "
                          f"{digest[:12]}..., the run recorded {m.parent_sha256[:12]}... (retrain the {m.kind})")
    if weights:
        parent = load_run(where, checkpoint="best").model
    else:
        parent_cfg, handed = resolve_parent(read_config(where), weights=False)
        parent = abstract_model(parent_cfg, DataSpec.from_run_info(read_json(where / RUN_FILE)), **handed)
        parent.eval()
    if not m.parent_sha256:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(m, parent_sha256=digest))
    return cfg, {"parent": parent}


__all__ = ["Run", "load_run", "parent_checksum", "resolve_parent"]
