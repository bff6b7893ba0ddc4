"""`train()`: one run from config to run directory, read top to bottom.

    check where the run goes -> load the data -> build the trainer -> make and lock the directory
    -> restore (resume) -> record the run -> epochs (fit, validate, record, checkpoint)
    -> pictures -> status

Nothing is written until the config, the data and the run directory have been checked, and a
run directory is never replaced unless `overwrite` is set. run.json's "status" says how the run
ended: "complete", "stopped" (train.max_minutes), "interrupted" (Ctrl-C), "diverged" (NaN/Inf),
"failed". Only process 0 writes the run directory; every process takes part in the Orbax
checkpoints.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vaekit import distributed
from vaekit.config import Config
from vaekit.errors import VaekitError
from vaekit.progress import bar_shown, progress_bar
from vaekit.runs import checkpoint, layout
from vaekit.training import sinks as sinks_lib
from vaekit.training.loop import INTERRUPTED, Trainer, compilation_cache
from vaekit.training.pictures import write_curves, write_pictures
from vaekit.training.state import checkpoint_items, merge_model, state_from_items
from vaekit.training.step import TrainingDiverged

log = logging.getLogger("vaekit")

PYTHON_DATA = "python"  # run.json "data_origin" of a run trained on data handed to train()


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: run.json says "interrupted"; `run_dir` continues with --resume."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


class _PicturesFailed(Exception):
    """A failure after training, while drawing the run's pictures (the checkpoints are saved)."""


def train(
    cfg: Config,
    *,
    data=None,
    out: str | Path | None = None,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool = True,
    layers: dict | None = None,
    encoder=None,
    decoder=None,
) -> Path:
    """Train `cfg` into `out` (or runs_dir/name; or continue the run at `resume`). Returns the run directory.

    data: None (load `cfg.data`), a `vaekit.data.Splits`, or a dict of arrays {"x": (N, ...),
        and optionally "y", "x_val", "y_val", "x_test", "y_test"} read as an .npz file's are
        (`vaekit.data.arrays`; data.binarize, data.limit and data.val_size apply). run.json
        records that the data came from Python: such a run resumes with the same `data` again.
    encoder, decoder: your own `nnx.Module`s in place of the nets `model.net` builds (`build_model`
        has the contract); config.yaml records their import paths and constructor arguments
        (`models.user_nets.record`), from which the run loads and resumes.
    layers: `config.resolve_layers`'s record, kept in run.json as "config_layers"; on resume,
        its overrides are added as "resume_overrides".

    The run directory is locked while this trains it (`layout.RunLock`). Resume continues from the
    newest intact "latest" checkpoint (a damaged newer one is skipped with a warning); a run
    stopped before its first checkpoint is trained again from the start. Ctrl-C marks the run
    "interrupted" and raises `RunInterrupted` naming its directory. JAX's compilation-cache
    setting is `train.compilation_cache` while this runs, and the caller's again after.
    """
    if out is not None and (name is not None or resume is not None):
        raise VaekitError("give the run directory as out=... or as runs_dir/name (or resume=...), not both")
    if out is not None:
        runs_dir, name = Path(out).parent, Path(out).name
    with _watch_sigint(), compilation_cache(cfg.train.compilation_cache):
        return _train(cfg, data, runs_dir, name, overwrite, resume, progress, layers, encoder, decoder)


@contextlib.contextmanager
def _watch_sigint():
    """Remember Ctrl-C while training, besides raising KeyboardInterrupt as Python does.

    A KeyboardInterrupt raised while the interpreter runs a gc callback (JAX installs one) is
    printed and ignored; the trainer checks this flag (`loop.INTERRUPTED`) after every chunk, so
    such a Ctrl-C still stops the run. A handler the caller installed is left alone, as is any
    thread but the main one.
    """
    INTERRUPTED.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        INTERRUPTED.clear()


def _train(cfg, data, runs_dir, name, overwrite, resume, progress, layers, encoder, decoder) -> Path:
    """Check, load, build, then make and lock the run directory; `_train_run` does the rest."""
    from vaekit.runs.run import resolve_parent

    main = distributed.is_main()  # several processes: only process 0 writes the run directory
    lock = None
    try:
        if resume is not None:
            run_dir = layout.check_run_dir(resume)
            lock = _lock_existing(run_dir) if main else None  # first: another live process may be training it
            if data is None:
                _check_configured_data(run_dir)
            if _already_complete(run_dir, cfg):
                return run_dir
        else:
            run_dir = layout.prepare_run_dir(runs_dir, name or _free_name(runs_dir, _default_name(cfg)), overwrite)
        cfg, handed = resolve_parent(cfg)  # a parent run checked, its checksum recorded in config.yaml
        cfg, nets = _own_nets(cfg, encoder, decoder)
        splits = load_splits(cfg, data)
        trainer = Trainer(cfg, splits, handed=handed | nets)
        if resume is None:
            _say_binarized(cfg, data)  # once the data and model are known to fit: a refused run says only why
            distributed.barrier("vaekit-run-dir-checked")  # every process checked it before process 0 makes it
            if main:
                run_dir = _create(run_dir, overwrite, rename=name is None and jax.process_count() == 1)
                lock = layout.RunLock(run_dir).acquire()
            distributed.barrier("vaekit-run-dir-created")
        return _train_run(cfg, run_dir, trainer, splits, resume is not None, progress, layers, data is not None)
    except KeyboardInterrupt as e:
        if resume is not None and not isinstance(e, RunInterrupted):  # stopped while loading: run untouched
            raise RunInterrupted(run_dir) from None
        raise
    finally:
        if lock is not None:
            lock.release()


def _say_binarized(cfg: Config, data) -> None:
    """Your own images under a binarizing preset: say that their grey levels become 0/1 draws."""
    from vaekit.data import Splits

    own = cfg.data.source == "arrays" or (data is not None and not isinstance(data, Splits))  # an .npz or arrays
    if own and cfg.data.binarize != "none":
        log.info("data.binarize=%s: your images' grey levels are treated as the probabilities of 0/1 pixels (%s), "
                 "as the Bernoulli likelihood needs; --set data.binarize=none keeps them grey", cfg.data.binarize,
                 "a fresh draw each batch" if cfg.data.binarize == "dynamic" else "drawn once")


def _already_complete(run_dir: Path, cfg) -> bool:
    """A complete run resumed at its own length has nothing to train: say so and change nothing."""
    info = layout.read_json(run_dir / layout.RUN_FILE)
    own = layout.read_config(run_dir).train
    if info.get("status") != "complete" or (own.epochs, own.steps) != (cfg.train.epochs, cfg.train.steps):
        return False
    counted = ("steps", f"step {info.get('step')} of {cfg.train.steps}") if cfg.train.steps is not None else \
        ("epochs", f"epoch {info.get('epoch')} of {cfg.train.epochs}")
    log.info("run %s is complete (%s): nothing to train, nothing changed; --set train.%s=N trains it longer",
             run_dir, counted[1], counted[0])
    return True


def _lock_existing(run_dir: Path) -> layout.RunLock:
    lock = layout.RunLock(run_dir).acquire()
    if lock.stale is not None:
        log.warning("run %s was interrupted (its process %s on %s died); resuming it", run_dir,
                    lock.stale.get("pid"), lock.stale.get("host"))
    return lock


def _default_name(cfg: Config) -> str:
    from vaekit.config import default_run_name

    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(distributed.agreed_time()))
    return f"{default_run_name(cfg)}-{stamp}"


def _free_name(runs_dir, stem: str) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... where runs_dir already has it: two runs started in the same
    second get their own directories."""
    name, n = stem, 1
    while (Path(runs_dir) / name).exists():
        n += 1
        name = f"{stem}-{n}"
    return name


def _create(run_dir: Path, overwrite: bool, rename: bool) -> Path:
    """Create the run directory; a default-named one that another process created since it was
    checked takes the next free name instead (`rename`), a chosen name is an error."""
    stem = run_dir.name
    while True:
        try:
            return layout.create_run_dir(run_dir, overwrite)
        except layout.RunDirTaken:
            if not rename:
                raise
            run_dir = run_dir.with_name(_free_name(run_dir.parent, stem))


def _own_nets(cfg: Config, encoder, decoder) -> tuple[Config, dict]:
    """(cfg recording your own encoder/decoder, {role: module} for `build_model`): none given, (cfg, {})."""
    nets = {role: net for role, net in (("encoder", encoder), ("decoder", decoder)) if net is not None}
    if not nets:
        return cfg, {}
    from vaekit.models import user_nets

    return user_nets.record(cfg, encoder, decoder), nets


def load_splits(cfg: Config, data=None):
    """The run's `Splits`: `cfg.data` loaded (data None), `data` itself, or a dict of arrays read
    as the "arrays" source reads an .npz file's, with the config's binarize, limit and val_size."""
    from vaekit.data import Splits, load_configured, load_data
    from vaekit.data.arrays import KNOWN_KEYS

    if data is None:
        return load_configured(cfg.data)
    if isinstance(data, Splits):
        return data
    if not isinstance(data, Mapping):
        raise VaekitError(f"data must be a vaekit.data.Splits or a dict of arrays ({', '.join(KNOWN_KEYS)}); "
                          f"got {type(data).__name__}")
    d = cfg.data
    return load_data("arrays", path=data, limit=d.limit, binarize=d.binarize, seed=d.seed, val_size=d.val_size,
                     data_config=d)


def _train_run(cfg: Config, run_dir: Path, trainer: Trainer, splits, resuming: bool, progress: bool,
               layers: dict | None, python_data: bool) -> Path:
    """`train` once the run directory exists and is locked: restore, record, epochs, pictures, status."""
    main = distributed.is_main()
    info = _resumable_info(run_dir, splits) if resuming else {}
    info_written = False
    ckpt = sinks = None
    try:
        ckpt = checkpoint.Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
        history = _restore(run_dir, trainer, ckpt, main) if resuming else []
        _record_layers(info, layers, resuming)
        if main:
            _write_config_and_data_files(run_dir, cfg, splits)
        for stale in ("final", "error", "stopped_by", "data_origin"):  # what an earlier invocation ended with
            info.pop(stale, None)
        info |= _run_facts(cfg, trainer, splits, python_data)
        _write_info(run_dir, info)
        info_written = True
        sinks = _open_sinks(cfg, run_dir, info, resuming) if main else []
        _epochs(cfg, run_dir, trainer, info, history, sinks, ckpt, progress and main)
        ckpt.close()
        ckpt = None
        _pictures(cfg, run_dir, trainer, splits, history, main)
        if history:
            info["final"] = {k: v for k, v in history[-1].items() if not isinstance(v, list)}
        _close_sinks(sinks, "complete")
        sinks = None
    except TrainingDiverged as e:
        info.update(status="diverged", error=str(e))
        _write_info(run_dir, info)
        raise
    except KeyboardInterrupt:
        if not resuming and not info_written and main:  # a new run stopped before it was written: nothing to keep
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        if info_written:
            info.update(status="interrupted")
            _write_info(run_dir, info)
        raise RunInterrupted(run_dir) from None
    except _PicturesFailed as e:
        info.update(status="failed", error=str(e))
        _write_info(run_dir, info)
        raise e.__cause__ from None
    except Exception as e:
        if not resuming and not info_written and main:  # a new run that never started: leave no half-made directory
            shutil.rmtree(run_dir, ignore_errors=True)
        elif info_written:  # a resume refused before it began leaves the run as it was
            info.update(status="failed", error=str(e) if isinstance(e, VaekitError) else f"{type(e).__name__}: {e}")
            _write_info(run_dir, info)
        raise
    finally:
        if ckpt is not None:
            ckpt.close()
        if sinks is not None:  # still open: the run ended early
            _close_sinks(sinks, info.get("status", "interrupted"))
    info.update(status="stopped" if info.get("stopped_by") else "complete")
    _write_info(run_dir, info)
    return run_dir


def _check_configured_data(run_dir: Path) -> None:
    """A run to resume from its config's data was trained on it, not on arrays given in Python."""
    if layout.read_json(run_dir / layout.RUN_FILE).get("data_origin") == PYTHON_DATA:
        raise VaekitError(f"run '{run_dir}' was trained on data handed to vaekit.train(data=...); resume it from "
                          f"Python with the same data: vaekit.train(cfg, data=..., resume='{run_dir}')")


def _resumable_info(run_dir: Path, splits) -> dict:
    """run.json of a run to resume, once its data is known to fit it."""
    info = layout.read_json(run_dir / layout.RUN_FILE)
    if info.get("num_train", splits.num_train) != splits.num_train:
        raise VaekitError(f"run '{run_dir}' was trained on {info['num_train']:,} examples but its data now "
                          f"has {splits.num_train:,}; it cannot be resumed")
    return info


def _restore(run_dir: Path, trainer: Trainer, ckpt, main: bool) -> list[dict]:
    """Load the newest intact "latest" checkpoint into the trainer; the epoch records up to it
    (later ones are retraced, so metrics.jsonl drops them)."""
    if ckpt.latest_epoch() is None:  # stopped before its first checkpoint: nothing to lose
        log.info("run %s has no checkpoint yet; training it from the start", run_dir)
    else:
        items, _ = ckpt.restore_intact("latest", checkpoint_items(trainer.state))
        trainer.state = state_from_items(items, trainer.state, trainer.model)
    done = int(trainer.state.epoch)
    history = [r for r in layout.read_metrics(run_dir) if r.get("epoch", 0) <= done]
    if main:
        layout.write_text_atomic(run_dir / layout.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
    if done:
        log.info("resuming %s after epoch %d, step %d/%d", run_dir, done, int(trainer.state.step), trainer.total_steps)
    return history


def _write_config_and_data_files(run_dir: Path, cfg: Config, splits) -> None:
    """config.yaml, and the files the data contributes (a vocabulary)."""
    layout.write_config(run_dir, cfg)
    for name, text in splits.run_files.items():
        layout.write_text_atomic(run_dir / name, text)


def _record_layers(info: dict, layers: dict | None, resuming: bool) -> None:
    if resuming and layers:
        info.setdefault("config_layers", {}).setdefault("resume_overrides", []).extend(layers.get("overrides", []))
    elif not resuming and layers is not None:
        info["config_layers"] = layers


def _run_facts(cfg: Config, trainer: Trainer, splits, python_data: bool) -> dict:
    """What run.json says of the run while it trains."""
    from vaekit._version import version

    facts = {
        "vaekit_version": version(),
        "data_spec": splits.spec.to_dict(),
        "model_kind": cfg.model.kind,
        "parameters": int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(trainer.state.params))),  # trainable
        "code_width": trainer.model.latent_dim,  # the whole code ([z1..zL] for several layers)
        "capabilities": dataclasses.asdict(trainer.capabilities),
        "num_train": splits.num_train,
        "steps_per_epoch": trainer.epoch_steps,  # steps between two validations
        "total_steps": trainer.total_steps,
        "status": "running",
    }
    if python_data:  # not in config.yaml: `Run.data()` and a resume from the CLI say so instead of loading cfg.data
        facts["data_origin"] = PYTHON_DATA
    return facts


def _write_info(run_dir: Path, info: dict) -> None:
    """run.json, written by process 0 only (the one process of a single-process run)."""
    if distributed.is_main():
        layout.write_json_atomic(run_dir / layout.RUN_FILE, info)


def _open_sinks(cfg: Config, run_dir: Path, info: dict, resuming: bool) -> list:
    """metrics.jsonl, and the loggers `train.loggers` names (process 0 only)."""
    out: list[sinks_lib.Sink] = [sinks_lib.MetricsFile(run_dir)]
    if "tensorboard" in cfg.train.loggers:
        out.append(sinks_lib.TensorBoard(run_dir, cfg.train.log_every))
    if "mlflow" in cfg.train.loggers:
        mlflow = sinks_lib.Mlflow(run_dir, cfg.to_dict(), run_id=info.get("mlflow_run_id") if resuming else None)
        out.append(mlflow)
        if info.get("mlflow_run_id") != mlflow.run_id:
            info["mlflow_run_id"] = mlflow.run_id
            _write_info(run_dir, info)
    return out


def _close_sinks(sinks: list, status: str) -> None:
    for sink in sinks:
        sink.close(status)


def _epochs(cfg: Config, run_dir: Path, trainer: Trainer, info: dict, history: list, sinks: list, ckpt,
            progress: bool) -> None:
    """The epoch loop: fit, validate, record, checkpoint, until the run's last step (or train.max_minutes)."""
    bar = progress_bar(progress, "training", "steps")
    task = bar.add_task("training", total=trainer.total_steps, completed=int(trainer.state.step), status="compiling")
    if not bar_shown(bar):  # no bar to show the status on: a whole line on stderr instead
        log.info("compiling the training step (the first chunk waits for it)")
    counted_in_steps = cfg.train.steps is not None
    if distributed.is_main():
        sinks = [*sinks, sinks_lib.Console(bar, task, trainer.num_epochs, trainer.model.latent_dim, counted_in_steps)]

    def on_chunk(first_step: int, metrics: dict) -> None:
        for sink in sinks:
            sink.step_scalars(first_step, metrics)

    trainer.chunk_callback = on_chunk
    budget, started = cfg.train.max_minutes * 60.0, time.perf_counter()  # this invocation's training time
    with bar:
        while int(trainer.state.step) < trainer.total_steps:
            epoch = int(trainer.state.epoch) + 1  # the epoch this iteration trains (1-based)
            record = {"epoch": epoch, **trainer.fit_epoch()}
            bar.update(task, status="validating")
            record = sinks_lib.jsonable({**record, **trainer.validate(), "step": int(trainer.state.step)})
            for sink in sinks:
                sink.write(record, record["step"] if counted_in_steps else epoch)
            history.append(record)
            out_of_time = budget > 0 and time.perf_counter() - started >= budget
            _checkpoint(cfg, trainer, ckpt, info, record, out_of_time)
            if out_of_time:
                info["stopped_by"] = f"train.max_minutes={cfg.train.max_minutes:g}"
                log.info("train.max_minutes=%g reached after epoch %d (step %d of %d); `vaekit train --resume %s` "
                         "continues", cfg.train.max_minutes, epoch, record["step"], trainer.total_steps, run_dir)
            _write_info(run_dir, info)
            if out_of_time:
                break


def _checkpoint(cfg: Config, trainer: Trainer, ckpt, info: dict, record: dict, out_of_time: bool) -> None:
    """After an epoch's record: stop on a non-finite validation value, save "best" when it
    improved and "latest" every train.checkpoint_every epochs, at the end and when out of time."""
    caps, epoch = trainer.capabilities, record["epoch"]
    best_key, sign = f"val/{caps.best_metric}", (1.0 if caps.best_mode == "max" else -1.0)
    value, best = record[best_key], float(trainer.state.best)  # best: NaN until the first validation
    if not np.isfinite(value):
        raise TrainingDiverged(f"validation {caps.best_metric} is {value} after epoch {epoch}; "
                               f"stopped. Try a lower train.learning_rate or train.grad_clip=1.0")
    if np.isnan(best) or sign * value > sign * best:
        best = value
        trainer.state = trainer.state.replace(best=trainer.replicate(jnp.asarray(best, jnp.float32)))
        ckpt.save("best", epoch, {"model": checkpoint_items(trainer.state)["model"]})
    if epoch % cfg.train.checkpoint_every == 0 or record["step"] >= trainer.total_steps or out_of_time:
        ckpt.save("latest", epoch, checkpoint_items(trainer.state))
    info.update(status="running", epoch=epoch, step=record["step"], best_metric=best_key, best=best)


def _pictures(cfg: Config, run_dir: Path, trainer: Trainer, splits, history: list, main: bool) -> None:
    """The run's pictures, drawn by process 0 from its own copy of the model (without the others);
    none with train.pictures=false."""
    if not cfg.train.pictures:
        return
    state = distributed.local_copy({"params": trainer.state.params, "rest": trainer.state.rest})
    model = merge_model(trainer.graphdef, state["params"], state["rest"])
    if not main:
        return
    try:
        write_pictures(run_dir, model, splits, cfg.train.seed)
        if history:
            write_curves(run_dir, history, model.latent_layers)
    except Exception as e:  # the checkpoints are saved; say what failed instead of leaving "running"
        raise _PicturesFailed(f"writing pictures: {type(e).__name__}: {e}") from e


__all__ = ["PYTHON_DATA", "RunInterrupted", "load_splits", "train"]
