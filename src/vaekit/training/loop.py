"""The `Trainer`: a run's state and compiled steps, and the host loop of chunks, epochs and validation.

    trainer = Trainer(config, splits); trainer.fit_epoch(); trainer.validate()

Speed: the model is split once into a static graph definition and array state (`nnx.split`);
a chunk of `train.chunk_steps` optimizer steps runs as one `jax.jit`-compiled `lax.scan`, or, for
conv nets on CPU (`train.loop`), as a loop of asynchronously dispatched jitted steps, over a
device-resident copy of the training data (batches gathered by a per-epoch permutation, or drawn
with replacement per step when the run is counted in `train.steps`; the data's own transform,
dynamic binarization or a generated source's rendering, runs on the device). The host syncs once
per chunk: progress bar, NaN/Inf guard, TensorBoard scalars. A streamed source (`splits.stream`,
a folder too large for memory) instead feeds host batches, read ahead by its reader threads, to
the same step (`step.fed_train_step`), one jitted call per step.

Epochs: a pass over the data is `data_pass_steps` steps (the last incomplete batch dropped);
the host loop's epoch, which ends with a validation and a metrics record, is `epoch_steps`
steps: a pass over the data, or `train.eval_every` steps when the run is counted in `train.steps`.

Several devices (`train.devices`) and processes (`vaekit.distributed`): a one-axis mesh; state
and resident data replicated, each step's batch sharded on the batch axis inside the same jitted
step (explicit in/out shardings), so gradients, BatchNorm statistics and metric sums are reduced
across devices by XLA and the run equals the one-device run up to float rounding.

Determinism: every random draw comes from keys derived from `train.seed` and the step or epoch
number (fold_in), so a run resumed from a checkpoint retraces the uninterrupted run exactly.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit import distributed
from vaekit import nets as nets_lib
from vaekit.config import Config
from vaekit.core import metrics as metrics_lib
from vaekit.errors import VaekitError
from vaekit.training.optim import group_optimizers, total_steps
from vaekit.training.state import EVAL, SHUFFLE, TrainState, init_state, split_model
from vaekit.training.step import (StepProgram, eval_step, first_nonfinite, gather, guard_finite, guarded_fed_step,
                                  guarded_step, train_step)

log = logging.getLogger("vaekit")

#: Set by `vaekit.runs.train`'s SIGINT handler: a Ctrl-C that Python swallowed (a KeyboardInterrupt
#: raised inside a gc callback is printed and ignored) still stops the loop after its chunk.
INTERRUPTED = threading.Event()


@contextlib.contextmanager
def compilation_cache(enabled: bool):
    """JAX's persistent compilation cache on or off (`train.compilation_cache`) inside, and JAX's
    previous setting back after: the setting is the run's, not the process's."""
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", enabled)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", before)


def _with_run_cache_setting(method):
    """A Trainer method that compiles, run under the run's `compilation_cache` setting."""

    @functools.wraps(method)
    def run(self, *args, **kwargs):
        with compilation_cache(self.cfg.train.compilation_cache):
            return method(self, *args, **kwargs)

    return run


def _resident(x) -> jax.Array:
    """A training array on the (one) device. A read-only numpy array is put there as it is, which on
    the CPU backend aliases its memory when aligned (data.memory): nothing can change it under the
    device array. Any other array is copied, as a caller may still write to it."""
    if isinstance(x, np.ndarray) and not x.flags.writeable:
        return jax.device_put(x)
    return jnp.asarray(x)


def _copy_tree(tree):
    """A copy of every array of `tree` (a chunk's backup of the state it donates)."""
    return jax.tree.map(jnp.copy, tree)


_copy_tree_jit = jax.jit(_copy_tree)  # module-level: trainers of the same shapes in a process share it


@functools.partial(jax.jit, static_argnames=("steps", "batch", "n", "with_replacement"))
def _epoch_indices(root: jax.Array, position: jax.Array, *, steps: int, batch: int, n: int,
                   with_replacement: bool) -> jax.Array:
    """(steps, batch) indices into range(n), as one compiled program (op by op, every operation of
    the draw compiled alone on first use). `position`: the epoch, whose key permutes the data; or,
    `with_replacement`, the global step of the first row, each row drawn with its own step's key."""
    shuffle = jax.random.fold_in(root, SHUFFLE)
    if with_replacement:
        draw = lambda i: jax.random.randint(jax.random.fold_in(shuffle, i), (batch,), 0, n)  # noqa: E731
        return jax.vmap(draw)(position + jnp.arange(steps))
    return jax.random.permutation(jax.random.fold_in(shuffle, position), n)[: steps * batch].reshape(steps, batch)


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


def scan_chunk(program: StepProgram, state: TrainState, data: dict, idx: jax.Array, guarded: bool = True):
    """Run idx.shape[0] optimizer steps as one `lax.scan`; idx (S, B) holds the example indices of
    each step. `guarded`: every step through `guarded_step` (the last good state comes back)."""
    if not guarded:
        return jax.lax.scan(lambda st, b: train_step(program, st, data, b), state, idx)

    def body(carry, b):
        st, ok, metrics = guarded_step(program, *carry, data, b)
        return (st, ok), metrics

    (state, _), metrics = jax.lax.scan(body, (state, jnp.asarray(True)), idx)
    return state, metrics


def step_loop(state: TrainState, step, step_args, ok: jax.Array):
    """Run `step(state, ok, *args)` for each args of `step_args`; (last state, stacked metrics).

    Each call is dispatched asynchronously, so the host still waits only once per chunk, when
    the caller reads the stacked metrics.
    """
    per_step = []
    for args in step_args:
        state, ok, metrics = step(state, ok, *args)
        per_step.append(metrics)
    return state, jax.tree.map(lambda *v: jnp.stack(v), *per_step)


class Trainer:
    """Trains any registered model on resident arrays (or a streamed source). Usable without a run
    directory: `fit_epoch()` trains one host epoch, `validate()` gives exact mean metrics.

    handed: what `build_model` is handed besides the config (a parent run's model, your own
    encoder/decoder modules; see `state.init_state`).

    Chunks: `run_chunk(state, data, idx)` runs the steps of idx (S, B) without the per-step NaN
    guard; `run_guarded_chunk` (None for a streamed source) with it. Both donate `state`.
    """

    def __init__(self, cfg: Config, splits, *, chunk_callback=None, handed: dict | None = None):
        t = cfg.train
        if t.batch_size > splits.num_train:
            raise VaekitError(f"train.batch_size {t.batch_size} is larger than the training set "
                              f"({splits.num_train} examples)")
        self.cfg, self.splits, self.chunk_callback = cfg, splits, chunk_callback
        self.data_pass_steps = splits.num_train // t.batch_size  # the last incomplete batch is dropped
        # A host epoch is one pass over the data, or, with train.steps, eval_every steps (the last
        # one possibly shorter); each ends with a validation and a metrics record.
        self.epoch_steps = self.data_pass_steps if t.steps is None else t.eval_every
        self.total_steps = total_steps(t, self.data_pass_steps)
        self.num_epochs = -(-self.total_steps // self.epoch_steps)
        self.mesh = _data_mesh(t)
        with compilation_cache(t.compilation_cache):
            self.model, self.state = init_state(cfg, splits.spec, self.data_pass_steps, **(handed or {}))
        self.capabilities = self.model.capabilities
        self.root = jax.random.PRNGKey(t.seed)
        self.stream = splits.stream
        self.loop = resolve_loop(t.loop, self.model) if self.stream is None else "stream"
        self.graphdef, self.graphdef_eval = _graphs(self.model, t.precision)
        # With a mesh: state and resident data replicated on every device, the batch split on the
        # mesh's axis inside the step (`step.shard_batch`), explicit in/out shardings on every jit.
        self.program = StepProgram(
            self.graphdef, self.graphdef_eval, group_optimizers(self.model, t, self.data_pass_steps),
            alternating=self.capabilities.update == "alternating", latent_vector=self.capabilities.latent_vector,
            transform=splits.training_batch,
            batch_sharding=None if self.mesh is None else distributed.batch_sharding(self.mesh))
        self.train_step = functools.partial(train_step, self.program)  # pure: (state, data, idx) -> (state, metrics)
        self.gather = functools.partial(gather, self.program)  # pure: (data, idx, key) -> the model's batch
        # Resident training data: uploaded once, straight from the host (replicated with a mesh).
        self.train_data = None if self.stream is not None else (
            {k: _resident(v) for k, v in splits.train.items()} if self.mesh is None else self.replicate(splits.train))
        if self.mesh is not None:
            self.state = self.replicate(self.state)
            log.info("data parallel over %d devices (%d process(es)): %d examples per device per step",
                     self.mesh.size, jax.process_count(), t.batch_size // self.mesh.size)
        self._compile()

    def _compile(self) -> None:
        """The jitted chunk drivers, backup copy and validation batch of `self.loop`.

        Resident data: each chunk runs without the per-step NaN guard (`run_chunk`), from a copy of
        its input state (`_backup`); only a chunk whose metrics are not all finite runs again from
        that copy with the guard (`run_guarded_chunk`; jit compiles it on that first call), which
        returns the last good state. The guard's select of old or new state after every step held
        each step's optimizer update back until the whole gradient was checked: mnist-mlp
        1.28-1.31 against 1.59-1.68 ms a step on two cores (docs/results.md). A streamed
        source guards every step (its batches are read once): no rerun, no copy.
        """
        program, jit_kw = self.program, {}
        if self.mesh is not None:
            rep = distributed.replicated(self.mesh)
            jit_kw = dict(in_shardings=rep, out_shardings=rep)
        jit = functools.partial(jax.jit, donate_argnums=(0,), **jit_kw)
        self._backup = _copy_tree_jit if self.mesh is None else jax.jit(_copy_tree, **jit_kw)
        if self.loop == "stream":
            fed_kw = dict(jit_kw, in_shardings=(rep, rep, program.batch_sharding)) if jit_kw else {}  # batch: split
            self._fed_step = jax.jit(functools.partial(guarded_fed_step, program), donate_argnums=(0,), **fed_kw)
            self.run_chunk, self.run_guarded_chunk = self._run_fed_steps, None
        elif self.loop == "scan":
            self.run_chunk = jit(functools.partial(scan_chunk, program, guarded=False))
            self.run_guarded_chunk = jit(functools.partial(scan_chunk, program))
        else:
            self._step = jit(self.train_step)
            self._guarded_step = jit(functools.partial(guarded_step, program))
            self.run_chunk = functools.partial(self._run_steps, guarded=False)
            self.run_guarded_chunk = self._run_steps
        self._eval_batch = jax.jit(functools.partial(eval_step, program), **jit_kw)

    def replicate(self, tree):
        """Arrays -> global arrays replicated over the mesh (unchanged without a mesh)."""
        return tree if self.mesh is None else distributed.put_replicated(tree, self.mesh)

    # -- chunk drivers (train.loop=steps, a streamed source) ---------------------------

    def _run_steps(self, state: TrainState, data: dict, idx: jax.Array, guarded: bool = True):
        """`scan_chunk` as a host loop of jitted steps (`train.loop=steps`)."""
        steps = ((data, idx[i]) for i in range(idx.shape[0]))
        if guarded:
            return step_loop(state, self._guarded_step, steps, self.replicate(jnp.asarray(True)))

        def unguarded(st, ok, *args):
            st, metrics = self._step(st, *args)
            return st, ok, metrics

        return step_loop(state, unguarded, steps, self.replicate(jnp.asarray(True)))

    def _run_fed_steps(self, state: TrainState, feed, steps: np.ndarray):
        """A chunk of a streamed source: one jitted step per host batch from `feed` (one per row of
        `steps`, the chunk's example indices, which `feed` reads). Each process puts its own rows of
        the global batch on its own devices."""

        def put(local: dict) -> dict:
            if self.mesh is None:
                return jax.device_put(local)
            return {k: jax.make_array_from_process_local_data(self.program.batch_sharding, np.asarray(v))
                    for k, v in local.items()}

        fed = ((put(next(feed)),) for _ in range(len(steps)))
        return step_loop(state, self._fed_step, fed, self.replicate(jnp.asarray(True)))

    # -- host loop ----------------------------------------------------------------------

    def epoch_indices(self, epoch: int, steps: int | None = None, first_step: int = 0) -> jax.Array:
        """(steps, B) example indices of an epoch, derived from the seed.

        A pass over the data takes a fresh permutation keyed by the epoch number. With
        train.steps every index is drawn uniformly with replacement, keyed by the global step
        (`first_step` + i), so a step's batch never depends on where epochs begin and end.
        """
        steps = self.epoch_steps if steps is None else steps
        drawn = self.cfg.train.steps is not None
        return _epoch_indices(self.root, jnp.asarray(first_step if drawn else epoch), steps=steps,
                              batch=self.cfg.train.batch_size, n=self.splits.num_train, with_replacement=drawn)

    def _epoch_length(self, step0: int) -> int:
        """Steps of the epoch that starts at global step `step0`."""
        if self.cfg.train.steps is None:
            return self.epoch_steps  # a pass over the data
        # Up to the next multiple of eval_every (validations stay on that grid, also after a
        # resume that raised train.steps), and no further than train.steps.
        to_grid = self.epoch_steps - step0 % self.epoch_steps
        remaining = self.total_steps - step0
        return min(to_grid, remaining) if remaining > 0 else to_grid

    def _epoch_batches(self, epoch: int, steps: int, step0: int):
        """(data, idx): the resident data and the epoch's (steps, B) indices on the device, or, for a
        streamed source, its feed of host batches (read and decoded ahead by the stream's threads)
        and the indices it reads."""
        if self.stream is None:
            return self.train_data, self.replicate(self.epoch_indices(epoch, steps, first_step=step0))
        idx = jax.device_get(self.epoch_indices(epoch, steps, first_step=step0))  # the resident path's batches
        return self.stream.batches(idx, process_index=jax.process_index(), process_count=jax.process_count()), idx

    def _fit_chunk(self, data, chunk_idx, first_step: int, epoch: int) -> dict:
        """Train one chunk, rerun guarded from its backup if a step diverged; its host metrics.

        The state is donated: from here on only the chunk's result is valid. That result is the
        last good state even when a step diverged (`step.guarded_step`), so the trainer stays
        usable after TrainingDiverged.
        """
        backup = None if self.run_guarded_chunk is None else self._backup(self.state)
        self.state, metrics = self.run_chunk(self.state, data, chunk_idx)
        metrics = jax.device_get(metrics)  # the one host sync per chunk
        if backup is not None and first_nonfinite(metrics) is not None:  # again from its start, guarded
            self.state, metrics = self.run_guarded_chunk(backup, data, chunk_idx)
            metrics = jax.device_get(metrics)
        del backup
        guard_finite(metrics, first_step, epoch)
        if INTERRUPTED.is_set():  # a Ctrl-C that Python swallowed (raised inside a gc callback)
            raise KeyboardInterrupt
        return metrics

    @_with_run_cache_setting
    def fit_epoch(self) -> dict:
        """One epoch of training. Returns epoch-mean metrics (host floats) and throughput."""
        epoch, step0 = int(self.state.epoch), int(self.state.step)
        steps = self._epoch_length(step0)
        data, idx = self._epoch_batches(epoch, steps, step0)
        s = self.cfg.train.chunk_steps
        acc = metrics_lib.Accumulator()
        t0 = time.perf_counter()
        for start in range(0, steps, s):
            metrics = self._fit_chunk(data, idx[start : start + s], step0 + start, epoch)
            acc.add(metrics, stacked=True)
            if self.chunk_callback is not None:
                self.chunk_callback(step0 + start, metrics_lib.values(metrics))
        seconds = time.perf_counter() - t0
        self.state = self.state.replace(epoch=self.state.epoch + 1)
        out = acc.result("train/")
        out["train/seconds"] = seconds
        out["train/examples_per_s"] = steps * self.cfg.train.batch_size / seconds
        return out

    @_with_run_cache_setting
    def validate(self, split: dict | None = None, prefix: str = "val") -> dict:
        """Exact mean metrics over a split (default: validation), in eval mode, with a fixed key."""
        split = self.splits.val if split is None else split
        n, bs = len(split["x"]), self.cfg.train.eval_batch_size
        key = jax.random.fold_in(self.root, EVAL)
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


def _data_mesh(t):
    """The data-parallel mesh of `train.devices` (None on one device in one process), checked
    against the batch size."""
    mesh = distributed.data_mesh(t.devices)
    if mesh is not None and t.batch_size % mesh.size:
        raise VaekitError(f"train.batch_size {t.batch_size} is not divisible by the {mesh.size} devices "
                          f"(train.devices={t.devices}, {jax.process_count()} process(es)); the batch is split evenly")
    return mesh


def _graphs(model, precision: str) -> tuple:
    """(training graphdef, eval graphdef) of the model, left in train mode.

    train.precision=bf16: the training graph's hidden layers compute in bfloat16; the eval graph
    (validation, pictures, evaluate) stays float32.
    """
    with nets_lib.compute_dtype(model, precision) as n_bf16:
        graphdef, _, _ = split_model(model)
    if precision != "fp32" and not n_bf16:
        raise VaekitError(f"train.precision={precision} applies to the MLP, conv and ResNet encoder/decoder nets; "
                          f"model.kind '{model.kind}' has none (leave train.precision at fp32)")
    if n_bf16:
        log.info("train.precision=%s: %d hidden layers of the encoder/decoder nets compute in bfloat16 while "
                 "training; parameters, optimizer state, output layers, losses and validation stay float32",
                 precision, n_bf16)
    model.eval()
    graphdef_eval, _, _ = split_model(model)
    model.train()
    return graphdef, graphdef_eval


__all__ = ["INTERRUPTED", "Trainer", "compilation_cache", "resolve_loop", "scan_chunk", "step_loop"]
