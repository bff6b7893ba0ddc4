"""One trainer for every model. It only calls the model interface (`loss`, `encode`), never a
model's internals, so a variant's own objective (beta, free bits, capacity, IWAE, ...) is what
gets optimized.

Speed: the model is split once into a static graph definition and array state (`nnx.split`);
a chunk of `train.chunk_steps` optimizer steps runs as one `jax.jit`-compiled `lax.scan`, or, for
conv nets on CPU (`train.loop`), as a loop of asynchronously dispatched jitted steps, over a
device-resident copy of the training data (batches gathered by a per-epoch permutation, or drawn
with replacement per step when the run is counted in `train.steps`; dynamic binarization and a
generated source's rendering happen on the device). The host syncs once per chunk: progress bar,
NaN/Inf guard, TensorBoard scalars.

Determinism: every random draw comes from keys derived from `train.seed` and the step or epoch
number (fold_in), so a run resumed from a checkpoint retraces the uninterrupted run exactly.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vaekit.config import Config, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model

log = logging.getLogger("vaekit")

# Sub-keys of the run's root key (train.seed), by purpose.
_INIT, _TRAIN, _SHUFFLE, _EVAL = 0, 1, 2, 3

COLLAPSE_KL = 0.01  # nats: a dimension below this carries (almost) no information
ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al. 2015: Var_x E_q[u] above this marks an active unit


class TrainingDiverged(VaekitError):
    """A loss or gradient became NaN/Inf; training stopped without saving the bad state."""


# --------------------------------------------------------------------------- optimizer


def total_steps(t: TrainConfig, steps_per_epoch: int) -> int:
    """Optimizer steps of the whole run: `train.steps`, or epochs times steps per epoch."""
    return t.steps if t.steps is not None else t.epochs * steps_per_epoch


def learning_rate_schedule(t: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """The configured schedule, with optional linear warm-up, as a function of the step.

    steps_per_epoch: steps of one pass over the training data (the "iwae" stages count these).
    """
    lr, total = t.learning_rate, max(1, total_steps(t, steps_per_epoch))
    schedules = {
        "constant": lambda: optax.constant_schedule(lr),
        "cosine": lambda: optax.cosine_decay_schedule(lr, total),
        "exponential": lambda: optax.exponential_decay(lr, t.decay_steps, t.decay_rate),
        "step": lambda: optax.exponential_decay(lr, t.decay_steps, t.decay_rate, staircase=True),
        # Burda et al. 2015: stage i = 0..7 lasts 3^i epochs at lr * 10^(-i/7).
        "iwae": lambda: optax.piecewise_constant_schedule(
            lr, {sum(3**j for j in range(i)) * steps_per_epoch: 10 ** (-1 / 7) for i in range(1, 8)}
        ),
    }
    base = schedules[t.lr_schedule]()
    if t.warmup_steps == 0:
        return base
    return lambda step: base(step) * jnp.minimum(1.0, (step + 1) / t.warmup_steps)


def make_optimizer(t: TrainConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(t, steps_per_epoch)
    if t.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, weight_decay=t.weight_decay)
    else:
        opt = optax.adam(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps)
    if t.grad_clip > 0:
        opt = optax.chain(optax.clip_by_global_norm(t.grad_clip), opt)
    return opt, schedule


def init_state(cfg: Config, image_shape, num_classes, steps_per_epoch: int):
    """A fresh model and the full training-state pytree (what a checkpoint holds)."""
    root = jax.random.PRNGKey(cfg.train.seed)
    model = build_model(cfg, image_shape, num_classes=num_classes, rngs=nnx.Rngs(params=jax.random.fold_in(root, _INIT)))
    model.train()
    _, params, rest = nnx.split(model, nnx.Param, ...)
    tx, _ = make_optimizer(cfg.train, steps_per_epoch)
    state = {
        "params": params,
        "rest": rest,
        "opt_state": tx.init(params),
        "step": jnp.zeros((), jnp.int32),
        "epoch": jnp.zeros((), jnp.int32),
        "key": jax.random.fold_in(root, _TRAIN),
        "best_val_elbo": jnp.full((), -jnp.inf, jnp.float32),
    }
    return model, state


# --------------------------------------------------------------------------- trainer


def resolve_loop(loop: str, model: nnx.Module) -> str:
    """`train.loop` with "auto" decided: "steps" for a model with convolutions on CPU, else "scan".

    XLA's CPU backend runs convolutions inside a loop body (a `lax.scan`) several times slower
    than the same convolutions outside one (jax-ml/jax#12868): a scanned chunk of the
    `shapes-beta` conv VAE took 2.4 s a step against 0.4 s for the same step jitted alone. A
    conv step costs far more than dispatching it, so a host loop of jitted steps loses nothing
    there, while an MLP step is short enough that one scan per chunk wins. The model's own
    layers decide, so any variant with convolutions gets the same treatment.
    """
    if loop != "auto":
        return loop
    has_conv = any(isinstance(node, (nnx.Conv, nnx.ConvTranspose)) for _, node in nnx.iter_graph(model))
    return "steps" if has_conv and jax.default_backend() == "cpu" else "scan"


class Trainer:
    """Trains any registered model on resident arrays. Usable without a run directory.

    trainer = Trainer(config, splits); trainer.fit_epoch(); trainer.validate()
    """

    def __init__(self, cfg: Config, splits, *, chunk_callback=None):
        t = cfg.train
        n = splits.num_train
        if t.batch_size > n:
            raise VaekitError(f"train.batch_size {t.batch_size} is larger than the training set ({n} examples)")
        self.cfg, self.splits = cfg, splits
        data_epoch = n // t.batch_size  # the last incomplete batch is dropped; reshuffled every epoch
        # An "epoch" of the host loop is one pass over the data, or, with train.steps, eval_every
        # steps (the last one possibly shorter); each ends with a validation and a metrics record.
        self.steps_per_epoch = data_epoch if t.steps is None else t.eval_every
        self.total_steps = total_steps(t, data_epoch)
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        self.model, self.state = init_state(cfg, splits.image_shape, splits.num_classes, data_epoch)
        self.graphdef = nnx.graphdef(self.model)
        self.model.eval()
        self.graphdef_eval = nnx.graphdef(self.model)
        self.model.train()
        self.tx, self.lr_fn = make_optimizer(t, data_epoch)
        # Images and labels; a generated source's records (all of them: its transform reads them).
        keep = splits.train.keys() if splits.train_transform is not None else ("x", "y")
        self.train_data = {k: jnp.asarray(v) for k, v in splits.train.items() if k in keep}
        self.root = jax.random.PRNGKey(t.seed)
        self.chunk_callback = chunk_callback
        self.loop = resolve_loop(t.loop, self.model)
        if self.loop == "scan":
            self._chunk = jax.jit(self._train_chunk, donate_argnums=(0,))
        else:
            self._step = jax.jit(self._train_step, donate_argnums=(0,))
            self._chunk = self._run_steps
        self._eval_batch = jax.jit(self._eval_step)

    # -- compiled regions -------------------------------------------------------------

    def gather(self, data: dict, batch_idx: jax.Array) -> dict:
        """The model's batch for example indices (B,): rows of the resident data, then the
        source's device-side transform when it has one (the shapes grid renders its images)."""
        batch = {k: v[batch_idx] for k, v in data.items()}
        transform = self.splits.train_transform
        return batch if transform is None else transform(batch)

    def _train_step(self, state: dict, data: dict, batch_idx: jax.Array):
        """One optimizer step on the examples ``batch_idx`` (B,) of the resident training data."""
        key = jax.random.fold_in(state["key"], state["step"])
        bin_key, sample_key = jax.random.split(key)
        batch = self.gather(data, batch_idx)
        if self.cfg.data.binarize == "dynamic":  # a fresh binarization of this batch, drawn on device
            batch["x"] = jax.random.bernoulli(bin_key, batch["x"]).astype(jnp.float32)

        def loss_fn(params, rest):
            # copy=True: fresh Variables at this trace level, so BatchNorm may update its statistics
            model = nnx.merge(self.graphdef, params, rest, copy=True)
            loss, metrics = model.loss(batch, rngs=nnx.Rngs(sample=sample_key), step=state["step"])
            _, _, rest = nnx.split(model, nnx.Param, ...)  # updated BatchNorm statistics
            return loss, (metrics, rest)

        (_, (metrics, rest)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], state["rest"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
        metrics = dict(metrics, grad_norm=optax.tree.norm(grads), lr=self.lr_fn(state["step"]))
        new = dict(state, params=optax.apply_updates(state["params"], updates), rest=rest,
                   opt_state=opt_state, step=state["step"] + 1)
        return new, metrics

    def _train_chunk(self, state: dict, data: dict, idx: jax.Array):
        """Run idx.shape[0] optimizer steps; idx (S, B) holds the example indices of each step."""
        return jax.lax.scan(lambda st, b: self._train_step(st, data, b), state, idx)

    def _run_steps(self, state: dict, data: dict, idx: jax.Array):
        """`_train_chunk` as a host loop of jitted steps (`train.loop=steps`).

        Each call is dispatched asynchronously, so the host still waits only once per chunk,
        when the caller reads the stacked metrics.
        """
        per_step = []
        for i in range(idx.shape[0]):
            state, metrics = self._step(state, data, idx[i])
            per_step.append(metrics)
        return state, jax.tree.map(lambda *v: jnp.stack(v), *per_step)

    def _eval_step(self, state: dict, batch: dict, key: jax.Array):
        model = nnx.merge(self.graphdef_eval, state["params"], state["rest"])
        _, metrics = model.loss(batch, rngs=nnx.Rngs(sample=key), step=state["step"])
        return metrics, model.encode(batch["x"], batch.get("y")).mean

    # -- host loop --------------------------------------------------------------------

    def epoch_indices(self, epoch: int, steps: int | None = None, first_step: int = 0) -> jax.Array:
        """(steps, B) example indices of an epoch, derived from the seed.

        A pass over the data takes a fresh permutation keyed by the epoch number. With
        train.steps every index is drawn uniformly with replacement, keyed by the global step
        (`first_step` + i), so a step's batch never depends on where epochs begin and end.
        """
        shuffle = jax.random.fold_in(self.root, _SHUFFLE)
        n, b = self.splits.num_train, self.cfg.train.batch_size
        steps = self.steps_per_epoch if steps is None else steps
        if self.cfg.train.steps is not None:
            draw = lambda i: jax.random.randint(jax.random.fold_in(shuffle, i), (b,), 0, n)  # noqa: E731
            return jax.vmap(draw)(jnp.arange(first_step, first_step + steps))
        key = jax.random.fold_in(shuffle, epoch)
        return jax.random.permutation(key, n)[: steps * b].reshape(steps, b)

    def fit_epoch(self) -> dict:
        """One epoch of training. Returns epoch-mean metrics (host floats) and throughput."""
        epoch, step0 = int(self.state["epoch"]), int(self.state["step"])
        if self.cfg.train.steps is None:
            steps = self.steps_per_epoch  # a pass over the data
        else:
            # Up to the next multiple of eval_every (validations stay on that grid, also after a
            # resume that raised train.steps), and no further than train.steps.
            to_grid = self.steps_per_epoch - step0 % self.steps_per_epoch
            remaining = self.total_steps - step0
            steps = min(to_grid, remaining) if remaining > 0 else to_grid
        idx = self.epoch_indices(epoch, steps, first_step=step0)
        s = self.cfg.train.chunk_steps
        sums: dict[str, np.ndarray] = {}
        t0 = time.perf_counter()
        for start in range(0, steps, s):
            first_step = step0 + start
            new_state, metrics = self._chunk(self.state, self.train_data, idx[start : start + s])
            metrics = jax.device_get(metrics)  # the one host sync per chunk
            _guard_finite(metrics, first_step, epoch)
            self.state = new_state
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + np.sum(v, axis=0)
            if self.chunk_callback is not None:
                self.chunk_callback(first_step, metrics)
        seconds = time.perf_counter() - t0
        self.state["epoch"] = self.state["epoch"] + 1
        out = {f"train/{k}": (v / steps) for k, v in sums.items()}
        out["train/seconds"] = seconds
        out["train/examples_per_s"] = steps * self.cfg.train.batch_size / seconds
        return out

    def validate(self, split: dict | None = None, prefix: str = "val") -> dict:
        """Mean metrics over a split (default: validation), in eval mode, with a fixed key."""
        split = self.splits.val if split is None else split
        x, y = split["x"], split.get("y")
        bs = self.cfg.train.eval_batch_size
        key = jax.random.fold_in(self.root, _EVAL)
        sums: dict[str, np.ndarray] = {}
        means = []
        n = len(x)
        for i, start in enumerate(range(0, n, bs)):  # full batches share one compilation, the tail one more
            batch = {"x": jnp.asarray(x[start : start + bs])}
            if y is not None:
                batch["y"] = jnp.asarray(y[start : start + bs])
            m, mu = jax.device_get(self._eval_batch(self.state, batch, jax.random.fold_in(key, i)))
            w = len(batch["x"])
            for k, v in m.items():
                sums[k] = sums.get(k, 0.0) + w * np.asarray(v, np.float64)
            means.append(mu)
        out = {f"{prefix}/{k}": v / n for k, v in sums.items()}
        variance = np.var(np.concatenate(means), axis=0)
        out[f"{prefix}/active_units"] = int(np.sum(variance > ACTIVE_UNIT_VARIANCE))
        return out


def _guard_finite(metrics: dict, first_step: int, epoch: int) -> None:
    for name in ("loss", "grad_norm"):
        values = np.asarray(metrics[name])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            step = first_step + int(bad[0])
            raise TrainingDiverged(
                f"{name} became {values[bad[0]]} at step {step} (epoch {epoch + 1}); stopped without saving "
                f"that state. Try a lower train.learning_rate or train.grad_clip=1.0"
            )


def collapse_warning(kl_per_dim, active_units: int, latent_dim: int) -> str | None:
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
    out = {}
    for k, v in metrics.items():
        a = np.asarray(v)
        out[k] = a.item() if a.ndim == 0 else a.tolist()
    return out


__all__ = [
    "Trainer",
    "train",
    "write_pictures",
    "TrainingDiverged",
    "collapse_warning",
    "init_state",
    "learning_rate_schedule",
    "make_optimizer",
]


# --------------------------------------------------------------------------- a whole run


def progress_bar(enabled: bool, label: str, unit: str):
    """The rich progress bar of training and evaluation: label, bar, done/total unit, times, status."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    return Progress(
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
        transient=False,
    )


def _epoch_line(record: dict, epochs: int, latent_dim: int, counted_in_steps: bool = False) -> str:
    where = f"step {record['step']:,}" if counted_in_steps else f"epoch {record['epoch']}/{epochs}"
    return (
        f"{where}  train ELBO {record['train/elbo']:.2f}  "
        f"val ELBO {record['val/elbo']:.2f}  val KL {record['val/kl']:.2f}  "
        f"active units {record['val/active_units']}/{latent_dim}  "
        f"{record['train/examples_per_s']:,.0f} ex/s"
    )


def write_pictures(run_dir: Path, model, splits, seed: int, n: int = 64) -> None:
    """samples.png (prior samples) and reconstructions.png (validation inputs and outputs)."""
    from vaekit import plots

    model.eval()
    rngs = nnx.Rngs(sample=jax.random.fold_in(jax.random.PRNGKey(seed), 7))
    plots.save_images(run_dir / "samples.png", np.asarray(model.sample(n, rngs=rngs)), ncols=8,
                      title=f"{n} samples from the prior (decoder means)")
    x = splits.val["x"][:32]
    y = splits.val.get("y")
    x_hat = np.asarray(model.reconstruct(jnp.asarray(x), None if y is None else jnp.asarray(y[:32])))
    plots.save_reconstructions(run_dir / "reconstructions.png", x, x_hat)
    model.train()


def train(
    cfg: Config,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool = True,
) -> Path:
    """Train `cfg` into runs_dir/name (or continue the run at `resume`). Returns the run directory.

    Nothing is written until the config, the data and the run directory have been checked, and a
    run directory is never replaced unless `overwrite` is set.
    """
    from tensorboardX import SummaryWriter

    from vaekit import checkpoint as ck
    from vaekit import plots
    from vaekit.data import load_configured

    if resume is not None:
        run_dir = ck.check_run_dir(resume)
    else:
        name = name or f"{cfg.preset or 'run'}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = ck.prepare_run_dir(runs_dir, name, overwrite)
    splits = load_configured(cfg.data)
    trainer = Trainer(cfg, splits)
    history: list[dict] = []
    info: dict = {}
    if resume is not None:
        info = ck.read_json(run_dir / ck.RUN_FILE)
        if info.get("num_train", splits.num_train) != splits.num_train:
            raise VaekitError(f"run '{run_dir}' was trained on {info['num_train']:,} examples but its data now "
                              f"has {splits.num_train:,}; it cannot be resumed")
        ckpt = ck.Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
        if ckpt.latest_epoch() is None:
            raise VaekitError(f"run '{run_dir}' has no checkpoint to resume from")
        trainer.state = ckpt.restore("latest", trainer.state)
        done = int(trainer.state["epoch"])
        # Epoch records written after the restored checkpoint are retraced, so drop them.
        history = [r for r in ck.read_metrics(run_dir) if r.get("epoch", 0) <= done]
        ck.write_text_atomic(run_dir / ck.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
        log.info("resuming %s after epoch %d, step %d/%d", run_dir, done, int(trainer.state["step"]), trainer.total_steps)
    else:
        ck.create_run_dir(run_dir, overwrite)
        ckpt = ck.Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
    ck.write_config(run_dir, cfg)
    info |= {
        "vaekit_version": _version(),
        "image_shape": list(splits.image_shape),
        "num_classes": splits.num_classes,
        "num_train": splits.num_train,
        "steps_per_epoch": trainer.steps_per_epoch,
        "status": "running",
    }
    info.pop("final", None)
    ck.write_json_atomic(run_dir / ck.RUN_FILE, info)

    writer = SummaryWriter(str(run_dir / "tensorboard"))
    bar = progress_bar(progress, "training", "steps")
    start_epoch = int(trainer.state["epoch"])
    num_epochs = trainer.num_epochs
    start_step = int(trainer.state["step"])
    task = bar.add_task("training", total=trainer.total_steps, completed=start_step, status="")

    def on_chunk(first_step: int, metrics: dict) -> None:
        for i, (loss, beta, gnorm) in enumerate(zip(metrics["loss"], metrics["beta"], metrics["grad_norm"])):
            writer.add_scalar("step/loss", float(loss), first_step + i + 1)
            writer.add_scalar("step/beta", float(beta), first_step + i + 1)
            writer.add_scalar("step/grad_norm", float(gnorm), first_step + i + 1)
        bar.update(task, advance=len(metrics["loss"]), status=f"loss {float(np.mean(metrics['loss'])):.2f}")

    trainer.chunk_callback = on_chunk
    best = float(trainer.state["best_val_elbo"])
    counted_in_steps = cfg.train.steps is not None
    latent_dim = cfg.model.latent_dim
    try:
        with bar:
            epoch = start_epoch - 1
            while int(trainer.state["step"]) < trainer.total_steps:
                epoch += 1
                record = {"epoch": epoch + 1}
                record.update(trainer.fit_epoch())
                record.update(trainer.validate())
                record["step"] = int(trainer.state["step"])
                record = jsonable(record)
                with open(run_dir / ck.METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
                x_axis = record["step"] if counted_in_steps else epoch + 1
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k != "epoch":
                        writer.add_scalar(f"epoch/{k}", v, x_axis)
                for j, v in enumerate(record["val/kl_per_dim"]):
                    writer.add_scalar(f"kl_per_dim/{j:03d}", v, x_axis)
                writer.flush()
                history.append(record)
                bar.console.print(_epoch_line(record, num_epochs, latent_dim, counted_in_steps))
                warning = collapse_warning(record["val/kl_per_dim"], record["val/active_units"], latent_dim)
                if warning:
                    log.warning(warning)
                if record["val/elbo"] > best:
                    best = record["val/elbo"]
                    trainer.state["best_val_elbo"] = jnp.asarray(best, jnp.float32)
                    ckpt.save("best", epoch + 1, trainer.state)
                if (epoch + 1) % cfg.train.checkpoint_every == 0 or record["step"] >= trainer.total_steps:
                    ckpt.save("latest", epoch + 1, trainer.state)
                info.update(status="running", epoch=epoch + 1, step=record["step"], best_val_elbo=best)
                ck.write_json_atomic(run_dir / ck.RUN_FILE, info)
    except TrainingDiverged as e:
        info.update(status="diverged", error=str(e))
        ck.write_json_atomic(run_dir / ck.RUN_FILE, info)
        raise
    except KeyboardInterrupt:
        info.update(status="interrupted")
        ck.write_json_atomic(run_dir / ck.RUN_FILE, info)
        raise
    finally:
        writer.close()
        ckpt.close()

    model = nnx.merge(trainer.graphdef, trainer.state["params"], trainer.state["rest"])
    write_pictures(run_dir, model, splits, cfg.train.seed)
    if history:
        plots.save_curves(run_dir / "curves.png", history)
        plots.save_kl_heatmap(run_dir / "kl_per_dim.png", history)
        last = history[-1]
        info["final"] = {k: v for k, v in last.items() if not isinstance(v, list)}
    info.update(status="complete")
    ck.write_json_atomic(run_dir / ck.RUN_FILE, info)
    return run_dir


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaekit")
    except PackageNotFoundError:
        return "unknown"
