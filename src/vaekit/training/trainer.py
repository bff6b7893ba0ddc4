"""One trainer for every model. It calls only the model interface (`loss`, and `encode` for active
units where the model declares a latent vector), never a model's internals, so a variant's own
objective (beta, free bits, capacity, IWAE, a discriminator, ...) is what gets optimized.

Parameter groups: a model declares `param_groups()` ({name: ParamGroup(filter, learning_rate)});
each group has its own Optax optimizer and state, parameters in no group stay frozen, and one
jitted step updates every group, simultaneously (one gradient point) or alternating (group by
group, each at the parameters the previous groups left) as `model.capabilities.update` says.

Speed: the model is split once into a static graph definition and array state (`nnx.split`);
a chunk of `train.chunk_steps` optimizer steps runs as one `jax.jit`-compiled `lax.scan`, or, for
conv nets on CPU (`train.loop`), as a loop of asynchronously dispatched jitted steps, over a
device-resident copy of the training data (batches gathered by a per-epoch permutation, or drawn
with replacement per step when the run is counted in `train.steps`; the data's own transform,
dynamic binarization or a generated source's rendering, runs on the device). The host syncs once
per chunk: progress bar, NaN/Inf guard, TensorBoard scalars. A streamed source (`splits.stream`,
a folder too large for memory) instead feeds host batches, read ahead by its reader threads, to
the same step (`_fed_train_step`), one jitted call per step.

Several devices (`train.devices`) and processes (`vaekit.distributed`): a one-axis mesh; state
and resident data replicated, each step's batch sharded on the batch axis inside the same jitted
step (explicit in/out shardings), so gradients, BatchNorm statistics and metric sums are reduced
across devices by XLA and the run equals the one-device run up to float rounding. Only process 0
writes the run directory; every process takes part in the Orbax checkpoints.

Determinism: every random draw comes from keys derived from `train.seed` and the step or epoch
number (fold_in), so a run resumed from a checkpoint retraces the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import shutil
import signal
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vaekit import distributed
from vaekit.core import metrics as metrics_lib
from vaekit import nets as nets_lib
from vaekit.config import Config, TrainConfig
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.runs import checkpoint, layout
from vaekit.progress import bar_shown, progress_bar

log = logging.getLogger("vaekit")

# Sub-keys of the run's root key (train.seed), by purpose.
_INIT, _TRAIN, _SHUFFLE, _EVAL = 0, 1, 2, 3
RNG_STREAMS = ("sample", "dropout", "noise")  # the streams a model's loss receives

COLLAPSE_KL = 0.01  # nats: a dimension below this carries (almost) no information


class TrainingDiverged(VaekitError):
    """A loss or gradient became NaN/Inf; training stopped without saving the bad state."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during `train`: run.json says "interrupted"; `run_dir` continues with --resume."""

    def __init__(self, run_dir: Path):
        super().__init__(str(run_dir))
        self.run_dir = run_dir


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


def global_norm(tree) -> jax.Array:
    """The L2 norm of every leaf of `tree` together (`optax.tree.norm`), as one dot product per leaf.

    XLA's CPU backend turns a large sum of squares into a blocked reduce-window (for accuracy),
    which on the `mnist-mlp` step cost 76 us for the 784x200 kernel alone; a dot is a BLAS kernel.
    """
    return jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(tree)))


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` with the norm of `global_norm`: updates scaled by
    max_norm / norm where their norm exceeds max_norm."""

    def clip(updates, params=None):
        norm = global_norm(updates)
        return jax.tree.map(lambda u: jnp.where(norm < max_norm, u, u / norm * max_norm), updates)

    return optax.stateless(clip)


def make_optimizer(t: TrainConfig, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(t, steps_per_epoch)
    if t.optimizer == "adamw":
        opt = optax.adamw(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps, weight_decay=t.weight_decay)
    else:
        opt = optax.adam(schedule, b1=t.adam_b1, b2=t.adam_b2, eps=t.adam_eps)
    if t.grad_clip > 0:
        opt = optax.chain(clip_by_global_norm(t.grad_clip), opt)
    return opt, schedule


def group_optimizers(model, t: TrainConfig, steps_per_epoch: int) -> dict[str, tuple]:
    """{group name: (optax transform, learning-rate schedule)} for the model's parameter groups."""
    out = {}
    for name, group in model.param_groups().items():
        changes = dict(group.train_overrides)
        if group.learning_rate is not None:
            changes["learning_rate"] = group.learning_rate
        cfg = dataclasses.replace(t, **changes) if changes else t
        out[name] = make_optimizer(cfg, steps_per_epoch)
    return out


def split_model(model) -> tuple:
    """(graphdef, {group: parameters}, rest): rest is every other variable, frozen parameters and
    BatchNorm statistics included. A parameter matching several groups belongs to the first."""
    groups = model.param_groups()
    graphdef, *states, rest = nnx.split(model, *(g.filter for g in groups.values()), ...)
    return graphdef, dict(zip(groups, states)), rest


def merge_model(graphdef, params: dict, rest, copy: bool = False):
    return nnx.merge(graphdef, *params.values(), rest, copy=copy)


def full_model_state(params: dict, rest) -> nnx.State:
    """The model's whole state (what the "model" checkpoint item holds), from its split parts."""
    return nnx.merge_state(*params.values(), rest)


def init_state(cfg: Config, spec, steps_per_epoch: int, **handed):
    """A fresh model and the training-state pytree (what a latest checkpoint holds, as two items).

    Built inside one `nnx.jit`: run eagerly, every initializer and optimizer-state op was its own
    small computation, each traced, lowered and looked up in the compilation cache (0.26-0.32 s
    for mnist-mlp with a warm cache, 0.15 s as one; cold, one compilation instead of dozens). The
    values are the same bits as eagerly (tested). `handed` goes to `build_model` (a parent run's
    model, from `vaekit.runs.run.resolve_parent`), as an argument of the compiled function.
    """
    return nnx.jit(functools.partial(_init_state, cfg, spec, steps_per_epoch))(handed)


def _init_state(cfg: Config, spec, steps_per_epoch: int, handed: dict | None = None):
    root = jax.random.PRNGKey(cfg.train.seed)
    model = build_model(cfg, spec, rngs=nnx.Rngs(params=jax.random.fold_in(root, _INIT)), **(handed or {}))
    model.train()
    _, params, rest = split_model(model)
    txs = group_optimizers(model, cfg.train, steps_per_epoch)
    state = {
        "params": params,
        "rest": rest,
        "opt_state": {g: txs[g][0].init(params[g]) for g in params},
        "step": jnp.zeros((), jnp.int32),
        "epoch": jnp.zeros((), jnp.int32),
        "key": jax.random.fold_in(root, _TRAIN),
        "best": jnp.full((), jnp.nan, jnp.float32),  # best validation value of the model's best_metric
    }
    return model, state


def checkpoint_items(state: dict) -> dict:
    """The training state as the two checkpoint items: "model" (everything load_run needs) and
    "train" (optimizer states, counters, RNG key, best validation value)."""
    train = {k: v for k, v in state.items() if k not in ("params", "rest")}
    return {"model": full_model_state(state["params"], state["rest"]), "train": train}


def state_from_items(items: dict, like: dict, model) -> dict:
    """Inverse of `checkpoint_items`, split into the model's groups as `like` is."""
    nnx.update(model, items["model"])
    _, params, rest = split_model(model)
    return dict(like, params=params, rest=rest, **items["train"])


# --------------------------------------------------------------------------- trainer


def _resident(x) -> jax.Array:
    """A training array on the (one) device. A read-only numpy array is put there as it is, which on
    the CPU backend aliases its memory when aligned (data.memory): nothing can change it under the
    device array. Any other array is copied, as a caller may still write to it."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return jax.device_put(x)
    return jnp.asarray(x)


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


def step_rngs(key: jax.Array) -> nnx.Rngs:
    """The model's RNG streams for one step or batch, split from one key."""
    return nnx.Rngs(**dict(zip(RNG_STREAMS, jax.random.split(key, len(RNG_STREAMS)))))


class Trainer:
    """Trains any registered model on resident arrays. Usable without a run directory.

    trainer = Trainer(config, splits); trainer.fit_epoch(); trainer.validate()
    """

    def __init__(self, cfg: Config, splits, *, chunk_callback=None, handed: dict | None = None):
        t = cfg.train
        n = splits.num_train
        if t.batch_size > n:
            raise VaekitError(f"train.batch_size {t.batch_size} is larger than the training set ({n} examples)")
        self.cfg, self.splits = cfg, splits
        # Set either way: a process that trains several runs gets each run's own setting.
        jax.config.update("jax_enable_compilation_cache", t.compilation_cache)
        data_epoch = n // t.batch_size  # the last incomplete batch is dropped; reshuffled every epoch
        # An "epoch" of the host loop is one pass over the data, or, with train.steps, eval_every
        # steps (the last one possibly shorter); each ends with a validation and a metrics record.
        self.steps_per_epoch = data_epoch if t.steps is None else t.eval_every
        self.total_steps = total_steps(t, data_epoch)
        self.num_epochs = -(-self.total_steps // self.steps_per_epoch)
        # Data parallel (train.devices): None on one device in one process, the plain path.
        self.mesh = distributed.data_mesh(t.devices)
        if self.mesh is not None and t.batch_size % self.mesh.size:
            raise VaekitError(f"train.batch_size {t.batch_size} is not divisible by the {self.mesh.size} devices "
                              f"(train.devices={t.devices}, {jax.process_count()} process(es)); the batch is split evenly")
        self.model, self.state = init_state(cfg, splits.spec, data_epoch, **(handed or {}))
        self.capabilities = self.model.capabilities
        # train.precision=bf16: the training graph's hidden layers compute in bfloat16; the eval
        # graph (validation, pictures, evaluate) stays float32.
        with nets_lib.compute_dtype(self.model, t.precision) as n_bf16:
            self.graphdef, _, _ = split_model(self.model)
        if t.precision != "fp32" and not n_bf16:
            raise VaekitError(f"train.precision={t.precision} applies to the MLP, conv and ResNet encoder/decoder nets; "
                              f"model.kind '{self.model.kind}' has none (leave train.precision at fp32)")
        if n_bf16:
            log.info("train.precision=%s: %d hidden layers of the encoder/decoder nets compute in bfloat16 while "
                     "training; parameters, optimizer state, output layers, losses and validation stay float32",
                     t.precision, n_bf16)
        self.model.eval()
        self.graphdef_eval, _, _ = split_model(self.model)
        self.model.train()
        self.optimizers = group_optimizers(self.model, t, data_epoch)
        # Every per-example array reaches the model (labels, masks, a generated source's records).
        # A streamed source (splits.stream) feeds host batches instead (`_run_fed_steps`).
        self.stream = splits.stream
        self.root = jax.random.PRNGKey(t.seed)
        self.chunk_callback = chunk_callback
        self.loop = resolve_loop(t.loop, self.model) if self.stream is None else "stream"
        # With a mesh: state and resident data replicated on every device, the batch split on the
        # mesh's axis inside the step (`_shard_batch`), explicit in/out shardings on every jit.
        jit_kw, self._batch_sharding = {}, None
        # Resident training data: uploaded once, straight from the host (replicated with a mesh).
        self.train_data = None if self.stream is not None else (
            {k: _resident(v) for k, v in splits.train.items()} if self.mesh is None else self.replicate(splits.train))
        if self.mesh is not None:
            rep = distributed.replicated(self.mesh)
            jit_kw = dict(in_shardings=rep, out_shardings=rep)
            self._batch_sharding = distributed.batch_sharding(self.mesh)
            self.state = self.replicate(self.state)
            log.info("data parallel over %d devices (%d process(es)): %d examples per device per step",
                     self.mesh.size, jax.process_count(), t.batch_size // self.mesh.size)
        # Resident data: each chunk runs without the per-step NaN guard (`_chunk`), from a copy of
        # its input state (`_backup`); only a chunk whose metrics are not all finite runs again
        # from that copy with the guard (`_guarded_chunk`; jit compiles it on that first call),
        # which returns the last good state. The guard's select of old or new state after every
        # step held each step's optimizer update back until the whole gradient was checked:
        # mnist-mlp 1.28-1.31 against 1.59-1.68 ms a step on two cores (docs/results.md). A
        # streamed source guards every step (its batches are read once): no rerun, no copy.
        self._backup = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), **jit_kw)
        if self.loop == "stream":
            fed_kw = dict(jit_kw, in_shardings=(rep, rep, self._batch_sharding)) if jit_kw else {}  # batch: split
            self._fed_step = jax.jit(self._guarded_fed_step, donate_argnums=(0,), **fed_kw)
            self._chunk, self._guarded_chunk = self._run_fed_steps, None
        elif self.loop == "scan":
            self._chunk = jax.jit(functools.partial(self._train_chunk, guarded=False), donate_argnums=(0,), **jit_kw)
            self._guarded_chunk = jax.jit(self._train_chunk, donate_argnums=(0,), **jit_kw)
        else:
            self._step = jax.jit(self._train_step, donate_argnums=(0,), **jit_kw)
            self._guarded_step_fn = jax.jit(self._guarded_step, donate_argnums=(0,), **jit_kw)
            self._chunk = functools.partial(self._run_steps, guarded=False)
            self._guarded_chunk = self._run_steps
        self._eval_batch = jax.jit(self._eval_step, **jit_kw)

    def replicate(self, tree):
        """Arrays -> global arrays replicated over the mesh (unchanged without a mesh)."""
        return tree if self.mesh is None else distributed.put_replicated(tree, self.mesh)

    def _shard_batch(self, tree):
        """Traced: constrain per-example arrays to be split on the mesh's axis (no-op without a mesh)."""
        if self._batch_sharding is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, self._batch_sharding)

    # -- compiled regions -------------------------------------------------------------

    def gather(self, data: dict, batch_idx: jax.Array, key: jax.Array) -> dict:
        """The model's batch for example indices (B,): rows of the resident data, then the
        data's device-side transform (rendering, dynamic binarization) drawn from `key`."""
        batch_idx = self._shard_batch(batch_idx)  # each device gathers its own rows
        return self._shard_batch(self.splits.training_batch({k: v[batch_idx] for k, v in data.items()}, key))

    def _train_step(self, state: dict, data: dict, batch_idx: jax.Array):
        """One optimizer step (every parameter group) on the resident examples ``batch_idx`` (B,)."""
        return self._update(state, lambda key: self.gather(data, batch_idx, key))

    def _fed_train_step(self, state: dict, batch: dict):
        """One optimizer step on a batch fed from the host (a streamed source), split over the
        mesh as a gathered batch is."""
        return self._update(state, lambda key: self._shard_batch(self.splits.training_batch(batch, key)))

    def _update(self, state: dict, make_batch):
        """The optimizer step on the batch `make_batch(data_key)` (its device-side draws from data_key)."""
        data_key, model_key = jax.random.split(jax.random.fold_in(state["key"], state["step"]))
        batch = make_batch(data_key)
        step = state["step"]

        def loss_fn(params, rest):
            # copy=True: fresh Variables at this trace level, so BatchNorm (or any non-gradient
            # state such as an EMA codebook) may update inside value_and_grad.
            model = merge_model(self.graphdef, params, rest, copy=True)
            loss, metrics = model.loss(batch, rngs=step_rngs(model_key), step=step)
            _, _, rest = split_model(model)
            return loss, (metrics, rest)

        params, rest, opt_state = dict(state["params"]), state["rest"], dict(state["opt_state"])
        names = list(params)
        if self.capabilities.update == "alternating" and len(names) > 1:
            grads = {}
            for g in names:  # each group's gradient at the parameters the groups before it left
                def group_loss(pg, g=g):
                    loss, aux = loss_fn(dict(params, **{g: pg}), rest)
                    return (loss[g] if isinstance(loss, dict) else loss), aux

                (_, (metrics, rest)), grads[g] = jax.value_and_grad(group_loss, has_aux=True)(params[g])
                params[g], opt_state[g] = self._apply(g, grads[g], params[g], opt_state[g], step)
        else:
            losses, vjp, (metrics, rest) = jax.vjp(lambda p: loss_fn(p, rest), params, has_aux=True)
            if isinstance(losses, dict):  # group g follows the gradient of its own loss
                grads = {g: vjp({h: jnp.asarray(h == g, losses[h].dtype) for h in losses})[0][g] for g in names}
            else:
                grads = vjp(jnp.ones_like(losses))[0]
            for g in names:
                params[g], opt_state[g] = self._apply(g, grads[g], params[g], opt_state[g], step)
        metrics = dict(metrics, grad_norm=global_norm(grads), lr=self.optimizers[names[0]][1](step))
        new = dict(state, params=params, rest=rest, opt_state=opt_state, step=step + 1)
        return new, metrics

    def _apply(self, group: str, grads, params, opt_state, step):
        tx = self.optimizers[group][0]
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    def _guarded_step(self, state: dict, ok: jax.Array, data: dict, batch_idx: jax.Array):
        """`_train_step` that keeps the old state when this step's loss or gradient norm is NaN/Inf,
        or an earlier step of the chunk's was (`ok` false): the chunk returns the last good state,
        which the host keeps when it stops the run (the input state was donated)."""
        new, metrics = self._train_step(state, data, batch_idx)
        return _keep_if_finite(new, state, ok, metrics)

    def _guarded_fed_step(self, state: dict, ok: jax.Array, batch: dict):
        """`_guarded_step` on a host-fed batch."""
        new, metrics = self._fed_train_step(state, batch)
        return _keep_if_finite(new, state, ok, metrics)

    def _train_chunk(self, state: dict, data: dict, idx: jax.Array, guarded: bool = True):
        """Run idx.shape[0] optimizer steps; idx (S, B) holds the example indices of each step.
        `guarded`: every step through `_guarded_step` (the last good state comes back)."""
        if not guarded:
            return jax.lax.scan(lambda st, b: self._train_step(st, data, b), state, idx)

        def body(carry, b):
            st, ok, metrics = self._guarded_step(*carry, data, b)
            return (st, ok), metrics

        (state, _), metrics = jax.lax.scan(body, (state, jnp.asarray(True)), idx)
        return state, metrics

    def _run_steps(self, state: dict, data: dict, idx: jax.Array, guarded: bool = True):
        """`_train_chunk` as a host loop of jitted steps (`train.loop=steps`)."""
        steps = ((data, idx[i]) for i in range(idx.shape[0]))
        if guarded:
            return self._step_loop(state, self._guarded_step_fn, steps)

        def unguarded(st, ok, *args):
            st, metrics = self._step(st, *args)
            return st, ok, metrics

        return self._step_loop(state, unguarded, steps)

    def _run_fed_steps(self, state: dict, feed, steps: np.ndarray):
        """A chunk of a streamed source: one jitted step per host batch from `feed` (one per row of
        `steps`, the chunk's example indices, which `feed` reads). Each process puts its own rows of
        the global batch on its own devices."""

        def put(local: dict) -> dict:
            if self.mesh is None:
                return jax.device_put(local)
            return {k: jax.make_array_from_process_local_data(self._batch_sharding, np.asarray(v))
                    for k, v in local.items()}

        return self._step_loop(state, self._fed_step, ((put(next(feed)),) for _ in range(len(steps))))

    def _step_loop(self, state: dict, step, step_args):
        """Run `step(state, ok, *args)` for each args of `step_args`; (last state, stacked metrics).

        Each call is dispatched asynchronously, so the host still waits only once per chunk,
        when the caller reads the stacked metrics.
        """
        per_step = []
        ok = self.replicate(jnp.asarray(True))
        for args in step_args:
            state, ok, metrics = step(state, ok, *args)
            per_step.append(metrics)
        return state, jax.tree.map(lambda *v: jnp.stack(v), *per_step)

    def _eval_step(self, state: dict, batch: dict, key: jax.Array):
        if self.mesh is not None and len(batch["x"]) % self.mesh.size == 0:  # a short last batch stays whole
            batch = self._shard_batch(batch)
        model = merge_model(self.graphdef_eval, state["params"], state["rest"])
        _, metrics = model.loss(batch, rngs=step_rngs(key), step=state["step"])
        if not self.capabilities.latent_vector:
            return metrics, None
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
        if self.stream is None:
            data, idx = self.train_data, self.replicate(self.epoch_indices(epoch, steps, first_step=step0))
        else:  # host batches of these steps, read and decoded ahead by the stream's threads
            idx = jax.device_get(self.epoch_indices(epoch, steps, first_step=step0))  # the resident path's batches
            data = self.stream.batches(idx, process_index=jax.process_index(), process_count=jax.process_count())
        s = self.cfg.train.chunk_steps
        acc = metrics_lib.Accumulator()
        t0 = time.perf_counter()
        for start in range(0, steps, s):
            first_step = step0 + start
            # The state is donated: from here on only the chunk's result is valid. That result is
            # the last good state even when a step diverged (`_guarded_step`), so the trainer
            # stays usable after TrainingDiverged.
            chunk_idx = idx[start : start + s]
            backup = None if self._guarded_chunk is None else self._backup(self.state)
            self.state, metrics = self._chunk(self.state, data, chunk_idx)
            metrics = jax.device_get(metrics)  # the one host sync per chunk
            if backup is not None and _first_nonfinite(metrics) is not None:  # again from its start, guarded
                self.state, metrics = self._guarded_chunk(backup, data, chunk_idx)
                metrics = jax.device_get(metrics)
            del backup
            _guard_finite(metrics, first_step, epoch)
            if _SIGINT.is_set():  # a Ctrl-C that Python swallowed (raised inside a gc callback)
                raise KeyboardInterrupt
            acc.add(metrics, stacked=True)
            if self.chunk_callback is not None:
                self.chunk_callback(first_step, metrics_lib.values(metrics))
        seconds = time.perf_counter() - t0
        self.state["epoch"] = self.state["epoch"] + 1
        out = acc.result("train/")
        out["train/seconds"] = seconds
        out["train/examples_per_s"] = steps * self.cfg.train.batch_size / seconds
        return out

    def validate(self, split: dict | None = None, prefix: str = "val") -> dict:
        """Exact mean metrics over a split (default: validation), in eval mode, with a fixed key."""
        split = self.splits.val if split is None else split
        n = len(split["x"])
        bs = self.cfg.train.eval_batch_size
        key = jax.random.fold_in(self.root, _EVAL)
        acc = metrics_lib.Accumulator()
        means = []
        for i, start in enumerate(range(0, n, bs)):  # full batches share one compilation, the tail one more
            batch = self.replicate({k: np.asarray(v[start : start + bs]) for k, v in split.items()})  # host -> device once
            m, mu = jax.device_get(self._eval_batch(self.state, batch, self.replicate(jax.random.fold_in(key, i))))
            acc.add(m)
            if mu is not None:
                means.append(mu)
        out = acc.result(f"{prefix}/")
        if means:
            codes = np.concatenate(means)
            out[f"{prefix}/active_units"] = metrics_lib.active_unit_count(codes)
            layers = metrics_lib.active_units_per_layer(codes, self.model.latent_layers)
            out |= {f"{prefix}/active_units/{layer}": count for layer, count in layers.items()}
        return out


def _keep_if_finite(new: dict, old: dict, ok: jax.Array, metrics: dict):
    """(new state if ok and this step's loss and gradient norm are finite else old, ok, metrics)."""
    ok = ok & _all_finite(metrics["loss"], metrics["grad_norm"])
    return jax.tree.map(lambda n, o: jax.lax.select(ok, n, o), new, old), ok, metrics


def _all_finite(*trees) -> jax.Array:
    """A traced bool: every floating-point leaf of the trees is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _first_nonfinite(metrics: dict) -> tuple[str, int, float] | None:
    """(metric, index in the chunk, value) of the first non-finite loss or gradient norm of a chunk's
    host metrics, or None when every step's are finite."""
    for name in ("loss", "grad_norm"):
        values = np.asarray(metrics_lib.values({name: metrics[name]})[name])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            return name, int(bad[0]), float(values[bad[0]])
    return None


def _guard_finite(metrics: dict, first_step: int, epoch: int) -> None:
    bad = _first_nonfinite(metrics)
    if bad is not None:
        name, index, value = bad
        raise TrainingDiverged(
            f"{name} became {value} at step {first_step + index} (epoch {epoch + 1}); stopped without saving "
            f"that state (the trainer keeps the state before it). Try a lower train.learning_rate or "
            f"train.grad_clip=1.0"
        )


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
    "RunInterrupted",
    "collapse_warning",
    "init_state",
    "learning_rate_schedule",
    "make_optimizer",
]


# --------------------------------------------------------------------------- a whole run


def _epoch_line(record: dict, epochs: int, latent_dim: int, counted_in_steps: bool = False) -> str:
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


class eval_mode:
    """Context manager: the model in eval mode inside, and every layer's own mode restored after."""

    _FLAGS = ("use_running_average", "deterministic")

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = [(node, flag, getattr(node, flag)) for _, node in nnx.iter_graph(self.model)
                      if isinstance(node, nnx.Module) for flag in self._FLAGS if hasattr(node, flag)]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for node, flag, value in self.saved:
            setattr(node, flag, value)
        return False


def sample_grid(model, n: int, key, num_classes: int | None, per_class: int = 8, max_classes: int = 16):
    """Prior samples for the run's picture: (images, ncols, row labels).

    A conditional model gets one row of `per_class` samples per class (the first `max_classes`
    classes); any other model n samples in rows of 8.
    """
    if model.capabilities.conditional:
        classes = min(num_classes, max_classes)
        y = jnp.repeat(jnp.arange(classes), per_class)
        return np.asarray(_sample(model, len(y), key, y)), per_class, [f"y={c}" for c in range(classes)]
    return np.asarray(_sample(model, n, key, None)), 8, None


# The pictures' model calls, each one compiled computation: run eagerly, every op of the decoder
# was traced, lowered and looked up in the compilation cache on its own (write_pictures took
# 0.2 s of a warm mnist-mlp run, most of it that).
@functools.partial(nnx.jit, static_argnums=(1,))
def _sample(model, n: int, key: jax.Array, y: jax.Array | None) -> jax.Array:
    rngs = nnx.Rngs(sample=key)
    return model.sample(n, rngs=rngs) if y is None else model.sample(n, rngs=rngs, y=y)


@nnx.jit
def _reconstruct(model, x: jax.Array, y: jax.Array | None) -> jax.Array:
    return model.reconstruct(x, y)


def write_pictures(run_dir: Path, model, splits, seed: int, n: int = 64) -> None:
    """samples.png (prior samples; one row per class for a conditional model) and reconstructions.png
    (validation inputs and outputs), for image data, and the pictures of the model's
    `picture_data(splits, key)`. The model's train/eval mode is left as given."""
    from vaekit import plots

    if not splits.spec.is_images:
        return
    with eval_mode(model):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
        images, ncols, rows = sample_grid(model, n, key, splits.num_classes)
        title = "samples per class (decoder means)" if rows else f"{len(images)} samples from the prior (decoder means)"
        plots.save_images(run_dir / "samples.png", images, ncols=ncols, title=title, row_labels=rows)
        x = splits.val["x"][:32]
        y = splits.val.get("y")
        x_hat = np.asarray(_reconstruct(model, jnp.asarray(x), None if y is None else jnp.asarray(y[:32])))
        plots.save_reconstructions(run_dir / "reconstructions.png", x, x_hat)
        for name, data in model.picture_data(splits, key).items():  # a model's own, e.g. its codebook's use
            plots.save_picture(run_dir / name, data)


def train(
    cfg: Config,
    *,
    runs_dir: str | Path = "runs",
    name: str | None = None,
    overwrite: bool = False,
    resume: str | Path | None = None,
    progress: bool = True,
    layers: dict | None = None,
) -> Path:
    """Train `cfg` into runs_dir/name (or continue the run at `resume`). Returns the run directory.

    Nothing is written until the config, the data and the run directory have been checked, and a
    run directory is never replaced unless `overwrite` is set. The run directory is locked while
    this trains it (checkpoint.RunLock). `layers` (config.resolve_layers) goes to run.json as
    "config_layers"; on resume, its overrides are added as "resume_overrides".

    Resume continues from the newest intact "latest" checkpoint (a damaged newer one is skipped with
    a warning); a run stopped before its first checkpoint is trained again from the start.
    Ctrl-C marks the run "interrupted" and raises `RunInterrupted` naming its directory.
    """
    main = distributed.is_main()  # several processes: only process 0 writes the run directory
    with _watch_sigint():
        return _train(cfg, runs_dir, name, overwrite, resume, progress, layers, main)


_SIGINT = threading.Event()


@contextlib.contextmanager
def _watch_sigint():
    """Remember Ctrl-C while training, besides raising KeyboardInterrupt as Python does.

    A KeyboardInterrupt raised while the interpreter runs a gc callback (JAX installs one) is
    printed and ignored; the trainer checks this flag after every chunk, so such a Ctrl-C still
    stops the run. A handler the caller installed is left alone, as is any thread but the main one.
    """
    _SIGINT.clear()
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return

    def on_sigint(signum, frame):
        _SIGINT.set()
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _SIGINT.clear()


def _train(cfg, runs_dir, name, overwrite, resume, progress, layers, main) -> Path:
    from vaekit.config import default_run_name
    from vaekit.data import load_configured
    from vaekit.runs.run import resolve_parent

    lock = None
    try:
        if resume is not None:
            run_dir = layout.check_run_dir(resume)
            if main:
                lock = layout.RunLock(run_dir).acquire()  # first: another live process may be training it
                if lock.stale is not None:
                    log.warning("run %s was interrupted (its process %s on %s died); resuming it", run_dir,
                                lock.stale.get("pid"), lock.stale.get("host"))
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(distributed.agreed_time()))
            name = name or f"{default_run_name(cfg)}-{stamp}"
            run_dir = layout.prepare_run_dir(runs_dir, name, overwrite)
        cfg, handed = resolve_parent(cfg)  # a parent run checked, its checksum recorded in config.yaml
        splits = load_configured(cfg.data)
        trainer = Trainer(cfg, splits, handed=handed)
        if resume is None:
            distributed.barrier("vaekit-run-dir-checked")  # every process checked it before process 0 makes it
            if main:
                layout.create_run_dir(run_dir, overwrite)
                lock = layout.RunLock(run_dir).acquire()
            distributed.barrier("vaekit-run-dir-created")
        return _train_run(cfg, run_dir, trainer, splits, resume is not None, progress, layers)
    except KeyboardInterrupt as e:
        if resume is not None and not isinstance(e, RunInterrupted):  # stopped while loading: run untouched
            raise RunInterrupted(run_dir) from None
        raise
    finally:
        if lock is not None:
            lock.release()


def _train_run(cfg: Config, run_dir: Path, trainer: Trainer, splits, resuming: bool, progress: bool,
               layers: dict | None) -> Path:
    """`train` once the run directory exists and is locked: restore, loop, pictures, status."""
    from tensorboardX import SummaryWriter

    history: list[dict] = []
    info: dict = {}
    main = distributed.is_main()
    if resuming:
        info = layout.read_json(run_dir / layout.RUN_FILE)
        if info.get("num_train", splits.num_train) != splits.num_train:
            raise VaekitError(f"run '{run_dir}' was trained on {info['num_train']:,} examples but its data now "
                              f"has {splits.num_train:,}; it cannot be resumed")
    info_written = False
    writer = ckpt = tracker = None
    try:
        ckpt = checkpoint.Checkpointer(run_dir, keep=cfg.train.keep_checkpoints)
        if resuming:
            if ckpt.latest_epoch() is None:  # stopped before its first checkpoint: nothing to lose
                log.info("run %s has no checkpoint yet; training it from the start", run_dir)
            else:
                items, _ = ckpt.restore_intact("latest", checkpoint_items(trainer.state))
                trainer.state = state_from_items(items, trainer.state, trainer.model)
            done = int(trainer.state["epoch"])
            # Epoch records written after the restored checkpoint are retraced, so drop them.
            history = [r for r in layout.read_metrics(run_dir) if r.get("epoch", 0) <= done]
            if main:
                layout.write_text_atomic(run_dir / layout.METRICS_FILE, "".join(json.dumps(r) + "\n" for r in history))
            if done:
                log.info("resuming %s after epoch %d, step %d/%d", run_dir, done, int(trainer.state["step"]),
                         trainer.total_steps)
            if layers:
                info.setdefault("config_layers", {}).setdefault("resume_overrides", []).extend(layers.get("overrides", []))
        elif layers is not None:
            info["config_layers"] = layers
        if main:
            layout.write_config(run_dir, cfg)
            for name, text in splits.run_files.items():  # what the data contributes (a vocabulary)
                layout.write_text_atomic(run_dir / name, text)
        info |= {
            "vaekit_version": _version(),
            "data_spec": splits.spec.to_dict(),
            "model_kind": cfg.model.kind,
            "parameters": _parameter_count(trainer.state["params"]),
            "code_width": trainer.model.latent_dim,  # the whole code ([z1..zL] for several layers)
            "capabilities": dataclasses.asdict(trainer.capabilities),
            "num_train": splits.num_train,
            "steps_per_epoch": trainer.steps_per_epoch,
            "total_steps": trainer.total_steps,
            "status": "running",
        }
        for stale in ("final", "error", "stopped_by"):  # what an earlier invocation ended with
            info.pop(stale, None)
        _write_info(run_dir, info)
        info_written = True
        on = "tensorboard" in cfg.train.loggers and main
        writer = SummaryWriter(str(run_dir / "tensorboard")) if on else _NoWriter()
        if "mlflow" in cfg.train.loggers and main:
            from vaekit.training.tracking import MlflowLogger

            tracker = MlflowLogger(run_dir, run_id=info.get("mlflow_run_id") if resuming else None)
            tracker.log_params(cfg.to_dict())
            if info.get("mlflow_run_id") != tracker.run_id:
                info["mlflow_run_id"] = tracker.run_id
                _write_info(run_dir, info)
        _loop(cfg, run_dir, trainer, info, history, writer, ckpt, progress and main, tracker)
        writer.close()
        ckpt.close()
        writer = ckpt = None
        # This process's own copy: process 0 draws alone, without the others.
        state = distributed.local_copy({k: trainer.state[k] for k in ("params", "rest")})
        model = merge_model(trainer.graphdef, state["params"], state["rest"])
        try:
            from vaekit import plots  # here, where the pictures are drawn: a run that stops earlier never imports matplotlib

            if main:
                write_pictures(run_dir, model, splits, cfg.train.seed)
            if history and main:
                plots.save_curves(run_dir / "curves.png", history)
                plots.save_kl_heatmap(run_dir / "kl_per_dim.png", history)
                plots.save_kl_heatmap(run_dir / "layers.png", history, layers=model.latent_layers)
        except Exception as e:  # the checkpoints are saved; say what failed instead of leaving "running"
            raise _PicturesFailed(f"writing pictures: {type(e).__name__}: {e}") from e
        if history:
            info["final"] = {k: v for k, v in history[-1].items() if not isinstance(v, list)}
        if tracker is not None:
            from vaekit.training.tracking import log_run_artifacts

            log_run_artifacts(tracker, run_dir)
            tracker.close("FINISHED")
            tracker = None
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
        if writer is not None:
            writer.close()
        if ckpt is not None:
            ckpt.close()
        if tracker is not None:  # still open: the run ended early
            tracker.close("FAILED" if info.get("status") in ("diverged", "failed") else "KILLED")
    info.update(status="stopped" if info.get("stopped_by") else "complete")
    _write_info(run_dir, info)
    return run_dir


def _parameter_count(params: dict) -> int:
    """Trainable parameters (every group's), as `vaekit info` shows them."""
    return int(sum(np.prod(np.shape(x)) for x in jax.tree.leaves(params)))


def _write_info(run_dir: Path, info: dict) -> None:
    """run.json, written by process 0 only (the one process of a single-process run)."""

    if distributed.is_main():
        layout.write_json_atomic(run_dir / layout.RUN_FILE, info)


class _NoWriter:
    """Stands in for TensorBoard's writer when `train.loggers` leaves it out."""

    def add_scalar(self, *args, **kwargs) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


class _PicturesFailed(Exception):
    """A failure after training, while drawing the run's pictures (the checkpoints are saved)."""


def _loop(cfg: Config, run_dir: Path, trainer: Trainer, info: dict, history: list, writer, ckpt, progress: bool,
          tracker=None):
    """The epoch loop: fit, validate, record, checkpoint, until the run's last step."""

    bar = progress_bar(progress, "training", "steps")
    start_step = int(trainer.state["step"])
    task = bar.add_task("training", total=trainer.total_steps, completed=start_step, status="compiling")
    if not bar_shown(bar):  # no bar to show the status on: a whole line on stderr instead
        log.info("compiling the training step (the first chunk waits for it)")

    every = cfg.train.log_every

    def on_chunk(first_step: int, metrics: dict) -> None:
        # One TensorBoard point per `every` steps (their mean, at the group's last step): a scalar
        # per step costs ~50 us of Python each, 0.75 s of a 10-epoch mnist-mlp run.
        for name in ("loss", "beta", "grad_norm"):
            values = np.asarray(metrics.get(name, ()), np.float64)
            for start in range(0, len(values), every):
                group = values[start : start + every]
                writer.add_scalar(f"step/{name}", float(group.mean()), first_step + start + len(group))
        bar.update(task, advance=len(metrics["loss"]), status=f"loss {float(np.mean(metrics['loss'])):.2f}")

    trainer.chunk_callback = on_chunk
    caps = trainer.capabilities
    best_key, sign = f"val/{caps.best_metric}", (1.0 if caps.best_mode == "max" else -1.0)
    best = float(trainer.state["best"])  # NaN until the first validation
    counted_in_steps = cfg.train.steps is not None
    latent_dim = trainer.model.latent_dim  # the code's size (all layers of a hierarchical model)
    budget, started = cfg.train.max_minutes * 60.0, time.perf_counter()  # this invocation's training time
    with bar:
        epoch = int(trainer.state["epoch"]) - 1
        while int(trainer.state["step"]) < trainer.total_steps:
            epoch += 1
            record = {"epoch": epoch + 1}
            record.update(trainer.fit_epoch())
            bar.update(task, status="validating")
            record.update(trainer.validate())
            record["step"] = int(trainer.state["step"])
            record = jsonable(record)
            if distributed.is_main():
                with open(run_dir / layout.METRICS_FILE, "a") as f:
                    f.write(json.dumps(record) + "\n")
            x_axis = record["step"] if counted_in_steps else epoch + 1
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    writer.add_scalar(f"epoch/{k}", v, x_axis)
            for j, v in enumerate(record.get("val/kl_per_dim", ())):
                writer.add_scalar(f"kl_per_dim/{j:03d}", v, x_axis)
            writer.flush()
            if tracker is not None:
                tracker.log_metrics(record, x_axis)
            history.append(record)
            if distributed.is_main():
                bar.console.print(_epoch_line(record, trainer.num_epochs, latent_dim, counted_in_steps), soft_wrap=True)
            if "val/kl_per_dim" in record:
                warning = collapse_warning(record["val/kl_per_dim"], record.get("val/active_units"), latent_dim)
                if warning:
                    log.warning(warning)
            value = record[best_key]
            if not np.isfinite(value):
                raise TrainingDiverged(f"validation {caps.best_metric} is {value} after epoch {epoch + 1}; "
                                       f"stopped. Try a lower train.learning_rate or train.grad_clip=1.0")
            if np.isnan(best) or sign * value > sign * best:
                best = value
                trainer.state["best"] = trainer.replicate(jnp.asarray(best, jnp.float32))
                ckpt.save("best", epoch + 1, {"model": checkpoint_items(trainer.state)["model"]})
            out_of_time = budget > 0 and time.perf_counter() - started >= budget
            if (epoch + 1) % cfg.train.checkpoint_every == 0 or record["step"] >= trainer.total_steps or out_of_time:
                ckpt.save("latest", epoch + 1, checkpoint_items(trainer.state))
            info.update(status="running", epoch=epoch + 1, step=record["step"], best_metric=best_key, best=best)
            if out_of_time:
                info["stopped_by"] = f"train.max_minutes={cfg.train.max_minutes:g}"
                log.info("train.max_minutes=%g reached after epoch %d (step %d of %d); `vaekit train --resume %s` "
                         "continues", cfg.train.max_minutes, epoch + 1, record["step"], trainer.total_steps, run_dir)
            _write_info(run_dir, info)
            if out_of_time:
                break


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaekit")
    except PackageNotFoundError:
        return "unknown"
