"""Where a run's records go: metrics.jsonl, TensorBoard, MLflow and the console, behind one interface.

    sink.step_scalars(first_step, metrics)   after every chunk: that chunk's per-step host metrics
    sink.write(record, x)                    after every validation: the epoch's record, at x
                                             (the epoch, or the step for a run counted in steps)
    sink.close(status)                       once: "complete", or how the run ended early

The epoch loop hands each record to every sink of its list; which sinks a run has is
`train.loggers` (metrics.jsonl and the console always, on process 0).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from vaekit.runs.layout import METRICS_FILE

log = logging.getLogger("vaekit")

COLLAPSE_KL = 0.01  # nats: a dimension below this carries (almost) no information


class Sink:
    """A destination of the run's records; each method does nothing unless a sink overrides it."""

    def step_scalars(self, first_step: int, metrics: dict) -> None:
        """Per-step metrics of the chunk whose first step is `first_step` (host arrays, one entry a step)."""

    def write(self, record: dict, x: int) -> None:
        """One epoch's record (`jsonable`), at x on the curves' axis."""

    def close(self, status: str) -> None:
        """The run ended: "complete", or "diverged", "failed", "interrupted"."""


class MetricsFile(Sink):
    """metrics.jsonl: one JSON line per epoch record, appended as it comes."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / METRICS_FILE

    def write(self, record: dict, x: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")


class TensorBoard(Sink):
    """tensorboardX event files under run_dir/tensorboard: step curves and epoch scalars."""

    def __init__(self, run_dir: Path, log_every: int):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"))
        self.every = log_every

    def step_scalars(self, first_step: int, metrics: dict) -> None:
        # One point per `every` steps (their mean, at the group's last step): a scalar per step
        # costs ~50 us of Python each, 0.75 s of a 10-epoch mnist-mlp run.
        for name in ("loss", "beta", "grad_norm"):
            values = np.asarray(metrics.get(name, ()), np.float64)
            for start in range(0, len(values), self.every):
                group = values[start : start + self.every]
                self.writer.add_scalar(f"step/{name}", float(group.mean()), first_step + start + len(group))

    def write(self, record: dict, x: int) -> None:
        for k, v in record.items():
            if isinstance(v, (int, float)) and k != "epoch":
                self.writer.add_scalar(f"epoch/{k}", v, x)
        for j, v in enumerate(record.get("val/kl_per_dim", ())):
            self.writer.add_scalar(f"kl_per_dim/{j:03d}", v, x)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


class Mlflow(Sink):
    """An MLflow run (`vaekit.training.tracking`): the config as parameters, each record's numbers
    as metrics, and at a complete end the run directory's pictures and files as artifacts. A
    resumed run continues the MLflow run of `run_id`."""

    def __init__(self, run_dir: Path, config: dict, run_id: str | None):
        from vaekit.training.tracking import MlflowLogger

        self.run_dir = Path(run_dir)
        self.logger = MlflowLogger(run_dir, run_id=run_id)
        self.logger.log_params(config)

    @property
    def run_id(self) -> str:
        return self.logger.run_id

    def write(self, record: dict, x: int) -> None:
        self.logger.log_metrics(record, x)

    def close(self, status: str) -> None:
        if status == "complete":
            from vaekit.training.tracking import log_run_artifacts

            log_run_artifacts(self.logger, self.run_dir)
            self.logger.close("FINISHED")
        else:
            self.logger.close("FAILED" if status in ("diverged", "failed") else "KILLED")


class Console(Sink):
    """The progress bar (steps, the last chunk's loss) and one whole line per validation, with a
    warning when the posterior has collapsed."""

    def __init__(self, bar, task, epochs: int, latent_dim: int, counted_in_steps: bool):
        self.bar, self.task = bar, task
        self.epochs, self.latent_dim, self.counted_in_steps = epochs, latent_dim, counted_in_steps

    def step_scalars(self, first_step: int, metrics: dict) -> None:
        self.bar.update(self.task, advance=len(metrics["loss"]), status=f"loss {float(np.mean(metrics['loss'])):.2f}")

    def write(self, record: dict, x: int) -> None:
        self.bar.console.print(epoch_line(record, self.epochs, self.latent_dim, self.counted_in_steps), soft_wrap=True)
        if "val/kl_per_dim" in record:
            warning = collapse_warning(record["val/kl_per_dim"], record.get("val/active_units"), self.latent_dim)
            if warning:
                log.warning(warning)


def epoch_line(record: dict, epochs: int, latent_dim: int, counted_in_steps: bool = False) -> str:
    """One whole line per validation: the ELBO where the model has one, else the loss."""
    where = f"step {record['step']:,}" if counted_in_steps else f"epoch {record['epoch']}/{epochs}"
    key = "elbo" if "val/elbo" in record else "loss"
    parts = [where, f"train {key.upper() if key == 'elbo' else key} {record[f'train/{key}']:.2f}",
             f"val {key.upper() if key == 'elbo' else key} {record[f'val/{key}']:.2f}"]
    if "val/kl" in record:
        parts.append(f"val KL {record['val/kl']:.2f}")
    if "val/active_units" in record:
        parts.append(f"active units {record['val/active_units']}/{latent_dim}")
    parts.append(f"{record['train/examples_per_s']:,.0f} ex/s")
    return "  ".join(parts)


def collapse_warning(kl_per_dim, active_units: int | None, latent_dim: int) -> str | None:
    """A one-line warning when the posterior has (nearly) collapsed to the prior, else None."""
    kl = np.asarray(kl_per_dim)
    if np.all(kl < COLLAPSE_KL) or active_units == 0:
        return (
            f"posterior collapse: every latent dimension has KL < {COLLAPSE_KL} nats "
            f"({active_units}/{latent_dim} active units). Remedies: KL annealing "
            f"(objective.beta_schedule=linear|cyclical), free bits (objective.free_bits=0.5), a lower "
            f"objective.beta, or a weaker decoder"
        )
    return None


def jsonable(metrics: dict) -> dict:
    """Metrics as JSON values: scalars as numbers, arrays as (nested) lists."""
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        out[k] = a.item() if a.ndim == 0 else a.tolist()
    return out


__all__ = ["COLLAPSE_KL", "Console", "MetricsFile", "Mlflow", "Sink", "TensorBoard", "collapse_warning", "epoch_line",
           "jsonable"]
