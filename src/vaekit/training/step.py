"""The training and validation steps: module-level pure functions of (program, state, batch).

    new_state, metrics = train_step(program, state, data, batch_idx)
    metrics, code_means = eval_step(program, state, batch, key)

`StepProgram` holds what is static for a run (graph definitions, Optax transforms, the data's
device-side transform, the batch sharding); a caller binds it with `functools.partial` before
`jax.jit`, so a compiled step closes over nothing that changes. The step calls only the model
interface (`loss`, and `encode` for active units where the model has a latent vector), so a
variant's own objective (beta, free bits, capacity, IWAE, a discriminator, ...) is what gets
optimized.

Parameter groups: each group has its own Optax transform and state; one step updates every
group, simultaneously (one gradient point, each group following the gradient of its own loss
when the loss is {group: scalar}) or alternating (group by group, each at the parameters the
previous groups left), as `model.capabilities.update` says.

The finite guard: `guarded_step` keeps the old state when a step's loss or gradient norm is
NaN/Inf (or an earlier step of the chunk's was), so a chunk returns the last good state;
`guard_finite` raises `TrainingDiverged` on the host, naming the step.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vaekit.core import metrics as metrics_lib
from vaekit.errors import VaekitError
from vaekit.training.optim import global_norm
from vaekit.training.rngs import step_rngs
from vaekit.training.state import TrainState, merge_model, split_model


class TrainingDiverged(VaekitError):
    """A loss or gradient became NaN/Inf; training stopped without saving the bad state."""


@dataclasses.dataclass(frozen=True, eq=False)
class StepProgram:
    """What is static in a run's steps (bound with functools.partial, never traced).

    graphdef: the model's training graph (train mode, hidden layers in the compute dtype).
    graphdef_eval: the eval graph (eval mode, float32): validation.
    optimizers: {group: (optax transform, learning-rate schedule)}, in the state's group order.
    alternating: update the groups one after another (`Capabilities.update == "alternating"`).
    latent_vector: the model's `encode(x).mean` is a flat code (validation counts active units).
    transform: `Splits.training_batch`: gathered rows -> the model's batch, with `key`'s draws.
    batch_sharding: the mesh's batch sharding (data parallel), or None on one device.
    """

    graphdef: nnx.GraphDef
    graphdef_eval: nnx.GraphDef
    optimizers: dict
    alternating: bool
    latent_vector: bool
    transform: Callable
    batch_sharding: jax.sharding.Sharding | None = None


def shard_batch(program: StepProgram, tree):
    """Traced: constrain per-example arrays to be split on the mesh's axis (no-op without a mesh)."""
    if program.batch_sharding is None:
        return tree
    return jax.lax.with_sharding_constraint(tree, program.batch_sharding)


def gather(program: StepProgram, data: dict, batch_idx: jax.Array, key: jax.Array) -> dict:
    """The model's batch for example indices (B,): rows of the resident data, then the data's
    device-side transform (rendering, dynamic binarization) drawn from `key`."""
    batch_idx = shard_batch(program, batch_idx)  # each device gathers its own rows
    return shard_batch(program, program.transform({k: v[batch_idx] for k, v in data.items()}, key))


def train_step(program: StepProgram, state: TrainState, data: dict, batch_idx: jax.Array):
    """One optimizer step (every parameter group) on the resident examples ``batch_idx`` (B,)."""
    return update(program, state, lambda key: gather(program, data, batch_idx, key))


def fed_train_step(program: StepProgram, state: TrainState, batch: dict):
    """One optimizer step on a batch fed from the host (a streamed source), split over the mesh
    as a gathered batch is."""
    return update(program, state, lambda key: shard_batch(program, program.transform(batch, key)))


def update(program: StepProgram, state: TrainState, make_batch) -> tuple[TrainState, dict]:
    """The optimizer step on the batch `make_batch(data_key)` (its device-side draws from data_key)."""
    data_key, model_key = jax.random.split(jax.random.fold_in(state.key, state.step))
    loss_fn = functools.partial(_loss, program, make_batch(data_key), model_key, state.step)
    apply = functools.partial(_apply, program)
    if program.alternating and len(state.params) > 1:
        params, opt_state, rest, metrics, grads = _alternating(state, loss_fn, apply)
    else:
        params, opt_state, rest, metrics, grads = _simultaneous(state, loss_fn, apply)
    first = next(iter(program.optimizers))
    metrics = dict(metrics, grad_norm=global_norm(grads), lr=program.optimizers[first][1](state.step))
    return state.replace(params=params, rest=rest, opt_state=opt_state, step=state.step + 1), metrics


def _loss(program: StepProgram, batch: dict, model_key, step, params: dict, rest):
    """(loss, (metrics, rest after the forward pass)) of the training graph at `params`."""
    # copy=True: fresh Variables at this trace level, so BatchNorm (or any non-gradient state such
    # as an EMA codebook) may update inside value_and_grad.
    model = merge_model(program.graphdef, params, rest, copy=True)
    loss, metrics = model.loss(batch, rngs=step_rngs(model_key), step=step)
    _, _, rest = split_model(model)
    return loss, (metrics, rest)


def _apply(program: StepProgram, group: str, grads, params, opt_state):
    updates, opt_state = program.optimizers[group][0].update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state


def _simultaneous(state: TrainState, loss_fn, apply):
    """Every group's gradient at one point; a {group: loss} gives each group its own loss's."""
    params, opt_state = dict(state.params), dict(state.opt_state)
    losses, vjp, (metrics, rest) = jax.vjp(lambda p: loss_fn(p, state.rest), params, has_aux=True)
    if isinstance(losses, dict):  # group g follows the gradient of its own loss
        grads = {g: vjp({h: jnp.asarray(h == g, losses[h].dtype) for h in losses})[0][g] for g in params}
    else:
        grads = vjp(jnp.ones_like(losses))[0]
    for g in params:
        params[g], opt_state[g] = apply(g, grads[g], params[g], opt_state[g])
    return params, opt_state, rest, metrics, grads


def _alternating(state: TrainState, loss_fn, apply):
    """Group by group: each group's gradient at the parameters the groups before it left."""
    params, opt_state, rest, grads = dict(state.params), dict(state.opt_state), state.rest, {}
    for g in list(params):
        def group_loss(pg, g=g, rest=rest):
            loss, aux = loss_fn(dict(params, **{g: pg}), rest)
            return (loss[g] if isinstance(loss, dict) else loss), aux

        (_, (metrics, rest)), grads[g] = jax.value_and_grad(group_loss, has_aux=True)(params[g])
        params[g], opt_state[g] = apply(g, grads[g], params[g], opt_state[g])
    return params, opt_state, rest, metrics, grads


def guarded_step(program: StepProgram, state: TrainState, ok: jax.Array, data: dict, batch_idx: jax.Array):
    """`train_step` that keeps the old state when this step's loss or gradient norm is NaN/Inf,
    or an earlier step of the chunk's was (`ok` false): the chunk returns the last good state,
    which the host keeps when it stops the run (the input state was donated)."""
    new, metrics = train_step(program, state, data, batch_idx)
    return keep_if_finite(new, state, ok, metrics)


def guarded_fed_step(program: StepProgram, state: TrainState, ok: jax.Array, batch: dict):
    """`guarded_step` on a host-fed batch."""
    new, metrics = fed_train_step(program, state, batch)
    return keep_if_finite(new, state, ok, metrics)


def eval_step(program: StepProgram, state: TrainState, batch: dict, key: jax.Array):
    """(metrics, code means (B, D) or None) of the eval graph on one validation batch."""
    sharding = program.batch_sharding
    if sharding is not None and len(batch["x"]) % sharding.mesh.size == 0:  # a short last batch stays whole
        batch = shard_batch(program, batch)
    model = merge_model(program.graphdef_eval, state.params, state.rest)
    _, metrics = model.loss(batch, rngs=step_rngs(key), step=state.step)
    if not program.latent_vector:
        return metrics, None
    return metrics, model.encode(batch["x"], batch.get("y")).mean


def keep_if_finite(new: TrainState, old: TrainState, ok: jax.Array, metrics: dict):
    """(new state if ok and this step's loss and gradient norm are finite else old, ok, metrics)."""
    ok = ok & all_finite(metrics["loss"], metrics["grad_norm"])
    return jax.tree.map(lambda n, o: jax.lax.select(ok, n, o), new, old), ok, metrics


def all_finite(*trees) -> jax.Array:
    """A traced bool: every floating-point leaf of the trees is finite."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees) if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def first_nonfinite(metrics: dict) -> tuple[str, int, float] | None:
    """(metric, index in the chunk, value) of the first non-finite loss or gradient norm of a chunk's
    host metrics, or None when every step's are finite."""
    for name in ("loss", "grad_norm"):
        values = np.asarray(metrics_lib.values({name: metrics[name]})[name])
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            return name, int(bad[0]), float(values[bad[0]])
    return None


def guard_finite(metrics: dict, first_step: int, epoch: int) -> None:
    """Raise `TrainingDiverged` naming the first step of a chunk whose loss or gradient norm is not finite."""
    bad = first_nonfinite(metrics)
    if bad is not None:
        name, index, value = bad
        raise TrainingDiverged(
            f"{name} became {value} at step {first_step + index} (epoch {epoch + 1}); stopped without saving "
            f"that state (the trainer keeps the state before it). Try a lower train.learning_rate or "
            f"train.grad_clip=1.0"
        )


__all__ = ["StepProgram", "TrainingDiverged", "all_finite", "eval_step", "fed_train_step",
           "first_nonfinite", "gather", "guard_finite", "guarded_fed_step", "guarded_step", "keep_if_finite",
           "shard_batch", "train_step", "update"]
