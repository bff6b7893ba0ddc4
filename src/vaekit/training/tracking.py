"""Optional experiment tracking with MLflow (`pip install 'vaekit[mlflow]'`).

The default record of a run stays metrics.jsonl and TensorBoard, with no extra dependency. With
`train.loggers` naming `mlflow`, the trainer also logs, through :class:`MlflowLogger`:

    log_params(config dict)          once: every config key as a flat parameter ("model.latent_dim")
    log_metrics(record, step)        per epoch: every numeric entry of the metrics.jsonl record
                                     ("val/elbo"; lists such as kl_per_dim as "val/kl_per_dim/007")
    log_artifact(path)               the pictures and files of the run directory
    close(status)                    ends the MLflow run ("FINISHED", "FAILED", "KILLED")

Where it logs: `tracking_uri` if given, else the `MLFLOW_TRACKING_URI` environment variable,
else a file store `mlruns/` beside the run directory (`mlflow ui --backend-store-uri
runs/mlruns`). MLflow 3 keeps file stores in maintenance mode and refuses them unless
`MLFLOW_ALLOW_FILE_STORE=true`; the logger sets that variable for a file store it is asked to
use (only when it is unset). The MLflow run is named after the run directory and tagged with
its path. A resumed vaekit run (`vaekit train --resume`) continues the same MLflow run: its id
is kept in run.json as "mlflow_run_id".
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from vaekit.errors import VaekitError

MLFLOW_EXPERIMENT = "vaekit"


def _is_file_store(uri: str) -> bool:
    return uri.startswith("file:") or "://" not in uri and not uri.startswith(("sqlite:", "databricks", "http"))


def flatten_config(config: dict, prefix: str = "") -> dict[str, str]:
    """{"model": {"latent_dim": 50}} -> {"model.latent_dim": "50"} (values as strings, lists as text)."""
    out: dict[str, str] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= flatten_config(v, key + ".")
        else:
            out[key] = "null" if v is None else str(v)
    return out


def metrics_of(record: dict) -> dict[str, float]:
    """The finite numbers of a metrics record, lists expanded as key/index; "epoch" and "step" left out."""
    out: dict[str, float] = {}
    for k, v in record.items():
        if k in ("epoch", "step") or isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            if math.isfinite(v):
                out[k] = float(v)
        elif isinstance(v, (list, tuple)) and all(isinstance(e, (int, float)) for e in v):
            out |= {f"{k}/{i:03d}": float(e) for i, e in enumerate(v) if math.isfinite(e)}
    return out


class MlflowLogger:
    """Log one vaekit run to MLflow: parameters, per-epoch metrics and artifacts.

    run_dir: the vaekit run directory (names the MLflow run and places the default store).
    tracking_uri, experiment: where and under which experiment to log (see the module docstring).
    """

    def __init__(self, run_dir: str | Path, *, tracking_uri: str | None = None,
                 experiment: str = MLFLOW_EXPERIMENT, run_name: str | None = None, run_id: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise VaekitError("train.loggers names mlflow, which is not installed: "
                              "pip install 'vaekit[mlflow]'") from None
        run_dir = Path(run_dir)
        uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or (run_dir.absolute().parent / "mlruns").as_uri()
        if _is_file_store(uri):
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.tracking_uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(experiment)
            run = self._reopen(run_id, exp_id) if run_id else None
            self.resumed = run is not None
            if run is None:
                run = self.client.create_run(exp_id, run_name=run_name or run_dir.name,
                                             tags={"vaekit.run_dir": str(run_dir.absolute())})
        except Exception as e:  # an unreachable server, a refused store: one line
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise VaekitError(f"MLflow tracking at {uri} failed: {first[:200]}") from None
        self.run_id = run.info.run_id
        self.experiment_id = exp_id
        self._closed = False

    def _reopen(self, run_id: str, exp_id: str):
        """The MLflow run of an earlier part of this vaekit run (a resume), marked running again;
        None when the store no longer has it (a new MLflow run is made instead)."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            return None
        if run.info.experiment_id != exp_id:
            return None
        self.client.update_run(run_id, status="RUNNING")
        return run

    def log_params(self, config: dict) -> None:
        """Every config key (flattened, "section.key") as an MLflow parameter, in batches of 100.

        MLflow parameters cannot change: on a resumed run, keys already logged with the same value
        are skipped, and a value that changed (an override given with --resume) is recorded as the
        tag "resume.<key>" instead.
        """
        from mlflow.entities import Param, RunTag

        logged = self.client.get_run(self.run_id).data.params if self.resumed else {}
        flat = {k: v[:6000] for k, v in flatten_config(config).items()}
        params = [Param(k, v) for k, v in flat.items() if k not in logged]
        tags = [RunTag(f"resume.{k}", v) for k, v in flat.items() if k in logged and logged[k] != v]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i : i + 100])
        if tags:
            self.client.log_batch(self.run_id, tags=tags)

    def log_metrics(self, record: dict, step: int) -> None:
        """The numbers of one metrics record (an epoch of metrics.jsonl) at `step`."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, int(step)) for k, v in metrics_of(record).items()]
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Copy a file (or a directory's files) into the MLflow run's artifacts; a missing path is skipped."""
        path = Path(path)
        if not path.exists():
            return
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def close(self, status: str = "FINISHED") -> None:
        """End the MLflow run with `status` ("FINISHED", "FAILED", "KILLED"); a second call does nothing."""
        if not self._closed:
            self._closed = True
            self.client.set_terminated(self.run_id, status=status)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close("FINISHED" if exc_type is None else ("KILLED" if exc_type is KeyboardInterrupt else "FAILED"))
        return False


RUN_ARTIFACTS = ("config.yaml", "run.json", "metrics.jsonl", "samples.png", "reconstructions.png", "curves.png",
                 "kl_per_dim.png", "layers.png")


def log_run_artifacts(logger: MlflowLogger, run_dir: str | Path) -> None:
    """The run directory's config, records and pictures (those that exist) as artifacts."""
    for name in RUN_ARTIFACTS:
        logger.log_artifact(Path(run_dir) / name)


LOGGERS = {"mlflow": MlflowLogger}  # train.loggers names besides the built-in "tensorboard"

__all__ = ["LOGGERS", "MlflowLogger", "flatten_config", "log_run_artifacts", "metrics_of"]
