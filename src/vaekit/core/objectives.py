"""Pure functions for the terms of VAE objectives: KL weight schedules, free bits, capacity, IWAE.

Every function takes the training step as a (possibly traced) array, so a schedule's value
changes without recompiling the training step. Per-example values stay unreduced until the
model's `loss` reduces them in one place.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from vaekit.config.schema import ObjectiveConfig
from vaekit.core.priors import KL


#: objective.kind: the evidence lower bound (with the KL options below), or the importance-weighted
#: bound of objective.iwae_k draws (Burda et al. 2015), which has no KL term.
OBJECTIVE_KINDS = ("elbo", "iwae")


def _cyclical(t: jax.Array, total: float, cfg: ObjectiveConfig) -> jax.Array:
    period = total / cfg.cycles
    tau = jnp.mod(t, period) / period
    return jnp.where(t >= total, 1.0, jnp.clip(tau / cfg.cycle_ratio, 0.0, 1.0))


#: objective.beta_schedule -> the fraction of beta at step t (float32) of anneal_steps `total`.
BETA_SCHEDULES = {
    "constant": lambda t, total, cfg: jnp.ones_like(t),
    "linear": lambda t, total, cfg: jnp.clip(t / total, 0.0, 1.0),
    "sigmoid": lambda t, total, cfg: jax.nn.sigmoid(10.0 * (t / total - 0.5)),
    "cyclical": _cyclical,
}


def beta_at(step: jax.Array, cfg: ObjectiveConfig) -> jax.Array:
    """The KL weight at `step`.

    - constant: beta.
    - linear: beta * min(1, step / anneal_steps)  (linear warm-up, then held).
    - sigmoid: beta * sigmoid(10 * (step / anneal_steps - 0.5)), ~0.007*beta at 0, ~0.993*beta at anneal_steps.
    - cyclical (Fu et al. 2019): `cycles` cycles of length anneal_steps / cycles; within each the weight
      rises linearly from 0 to beta over the first `cycle_ratio` of the cycle and is held at beta for the
      rest; after anneal_steps it stays at beta.
    """
    if cfg.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"unknown beta schedule {cfg.beta_schedule!r}")
    t = jnp.asarray(step, jnp.float32)
    return cfg.beta * BETA_SCHEDULES[cfg.beta_schedule](t, float(cfg.anneal_steps), cfg)


def capacity_at(step: jax.Array, cfg: ObjectiveConfig) -> jax.Array:
    """Capacity target C: rises linearly from 0 to capacity_max over capacity_steps, then held."""
    t = jnp.asarray(step, jnp.float32)
    return cfg.capacity_max * jnp.clip(t / cfg.capacity_steps, 0.0, 1.0)


def free_bits_kl(kl_per_dim: jax.Array, free_bits: float) -> jax.Array:
    """Free-bits KL (Kingma et al. 2016): sum_d max(lambda, mean_batch KL_d).

    kl_per_dim: (B, D). A dimension whose batch-averaged KL is below lambda contributes the
    constant lambda, hence no gradient; above lambda it is penalized as usual.
    """
    return jnp.sum(jnp.maximum(jnp.mean(kl_per_dim, axis=0), free_bits))


def kl_term(kl: KL, step: jax.Array, cfg: ObjectiveConfig, *, latent_dim: int = 1) -> tuple[jax.Array, dict]:
    """The KL part of the training loss (a batch mean) and the schedule values used.

    kl: a `vaekit.core.priors.KL` (per-example totals (B,), and (B, D) per dimension when a closed
    form gives them; `KL.of_per_dim` makes one from a (B, D) array). With capacity control on
    (capacity_max > 0) the term is gamma * |KL - C(step)| (Burgess et al. 2018); otherwise
    beta(step) * KL, where KL uses free bits when free_bits > 0: per dimension where the
    per-dimension KL is known, else over the latent vector as one group with a budget of
    free_bits * latent_dim nats (a Monte Carlo KL has no per-dimension split).
    """
    per_dim = kl.per_dim
    kl_mean = jnp.mean(kl.total)
    beta = beta_at(step, cfg)
    info = {"beta": beta}
    if cfg.capacity_max > 0:
        c = capacity_at(step, cfg)
        info["capacity"] = c
        return cfg.capacity_gamma * jnp.abs(kl_mean - c), info
    if cfg.free_bits <= 0:
        penalized = kl_mean
    elif per_dim is not None:
        penalized = free_bits_kl(per_dim, cfg.free_bits)
    else:
        penalized = jnp.maximum(kl_mean, cfg.free_bits * latent_dim)
    return beta * penalized, info


def iwae_bound(log_weights: jax.Array) -> jax.Array:
    """log (1/k) sum_i w_i per example, from log weights (B, k), computed with logsumexp: (B,)."""
    k = log_weights.shape[-1]
    return jax.nn.logsumexp(log_weights, axis=-1) - math.log(k)
