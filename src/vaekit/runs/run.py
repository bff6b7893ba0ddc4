"""`load_run`: a trained run directory back as a model, its config and its records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from vaekit.config import Config
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.runs.checkpoint import Checkpointer
from vaekit.runs.layout import RUN_FILE, check_run_dir, read_config, read_json, read_metrics

@dataclasses.dataclass
class Run:
    """A trained run, loaded back: its model (in eval mode), config and recorded metrics."""

    path: Path
    config: Config
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
