"""Disentangling objectives on the VAE: beta-TCVAE, FactorVAE and DIP-VAE-I/II.

All three keep the VAE's Gaussian posterior, N(0, I) prior, decoder, `log_weights` (so the
likelihood bound, `vaekit evaluate`, active units, traversals and the disentanglement metrics work
as for any VAE) and change only the training objective:

* "tcvae" (Chen et al. 2018): the KL term split into index-code mutual information, total
  correlation and dimension-wise KL, weighted alpha, beta, gamma:
      loss = E[-log p(x|z)] + alpha I(x; z) + beta KL(q(z) || prod_d q(z_d)) + gamma sum_d KL(q(z_d) || p(z_d)).
  log q(z) and log q(z_d) of the aggregate posterior come from the minibatch (`tc_decomposition`).
* "factorvae" (Kim and Mnih 2018): the ELBO plus gamma times a discriminator's estimate of the
  total correlation; the discriminator (its own parameter group and optimizer) learns to tell
  codes z ~ q(z) from codes with every dimension permuted independently across the batch.
* "dipvae" (Kumar et al. 2018): the ELBO plus lambda_od * sum of squared off-diagonal entries and
  lambda_d * sum of squared (diagonal - 1) of a covariance of the aggregate posterior:
  Cov[mu(x)] (variant "i") or E[Sigma(x)] + Cov[mu(x)] (variant "ii") over the batch.

FactorVAE and DIP-VAE add their penalty to the VAE's ELBO loss, so objective.beta, annealing,
free bits and capacity still apply to the KL term; beta-TCVAE replaces the KL term with its three
weighted parts, so those objective options do not combine with it (a one-line error says so).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vaekit.config.schema import ModelConfig, ObjectiveConfig, changed_objective
from vaekit.data.spec import DataSpec
from vaekit.core.distributions import LOG_2PI
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import ParamGroup
from vaekit.models.vae import VAE, VAEConfig, variational_objective

TC_ESTIMATORS = ("mws", "stratified")
DIP_VARIANTS = ("i", "ii")


# --------------------------------------------------------------------------- pure estimators


def pairwise_log_density(z: jax.Array, mean: jax.Array, scale: jax.Array) -> jax.Array:
    """log q(z_i,d | x_j) per dimension for every pair (i, j) of a batch: (B, D) each -> (B, B, D)."""
    u = (z[:, None, :] - mean[None, :, :]) / scale[None, :, :]
    return -0.5 * u**2 - jnp.log(scale)[None, :, :] - 0.5 * LOG_2PI


def log_importance_weights(batch_size: int, dataset_size: int | None, estimator: str) -> jax.Array:
    """log w_ij (B, B): the weight of q(z_i | x_j) in the estimate q(z_i) ~= sum_j w_ij q(z_i | x_j).

    "mws" (minibatch weighted sampling): w_ij = 1/B, the plain minibatch average of the posteriors.
        Chen et al. write 1/(N B); that moves log q(z) and every log q(z_d) by the constant -log N
        (the same gradients) but shifts the reported MI, TC and dimension-wise KL by multiples of
        log N, so vaekit uses 1/B and the three terms estimate the quantities they name.
    "stratified" (minibatch stratified sampling, Chen et al. appendix C.2), with M = B - 1 and N
        the data set size: w_ii = 1/N for the example's own posterior, (N - M)/(N M) for one other
        example (the next one, cyclically), 1/M for the remaining M - 1; every row sums to 1. A
        batch larger than the data set (a validation pass of a small run) counts as the data set.
    """
    b = batch_size
    if estimator == "mws":
        return jnp.full((b, b), -math.log(b))
    if estimator != "stratified":
        raise VaekitError(f"the TC estimator must be one of {', '.join(TC_ESTIMATORS)}; got '{estimator}'")
    if dataset_size is None:
        raise VaekitError("the stratified TC estimator needs the data set size (DataSpec.num_examples)")
    if b == 1:
        return jnp.zeros((1, 1))
    n, m = float(max(dataset_size, b)), b - 1
    w = jnp.full((b, b), 1.0 / m)
    idx = jnp.arange(b)
    w = w.at[idx, (idx + 1) % b].set((n - m) / (n * m))
    w = w.at[idx, idx].set(1.0 / n)
    return jnp.log(w)


def tc_decomposition(z: jax.Array, mean: jax.Array, scale: jax.Array, log_weights: jax.Array) -> dict:
    """Per-example terms of the KL decomposition (Chen et al. 2018), from one draw per example.

    z, mean, scale: (B, D) draws z_i ~ q(z | x_i) and the batch's posterior parameters;
    log_weights: (B, B) from `log_importance_weights`. Returns (B,) arrays whose batch means
    estimate

        mi     = E[log q(z|x) - log q(z)]                 index-code mutual information
        tc     = E[log q(z) - sum_d log q(z_d)]            total correlation
        dim_kl = E[sum_d log q(z_d) - log p(z_d)]          dimension-wise KL to N(0, I)

    They telescope: mi + tc + dim_kl = log q(z|x) - log p(z), the one-draw Monte Carlo KL.
    """
    pair = pairwise_log_density(z, mean, scale)  # (B, B, D)
    log_q_cond = jnp.sum(jnp.diagonal(pair, axis1=0, axis2=1).T, axis=-1)  # (B,) log q(z_i | x_i)
    log_q_joint = jax.nn.logsumexp(log_weights + jnp.sum(pair, axis=-1), axis=1)  # (B,) log q(z_i)
    log_q_dims = jax.nn.logsumexp(log_weights[:, :, None] + pair, axis=1)  # (B, D) log q(z_i,d)
    log_p_dims = -0.5 * z**2 - 0.5 * LOG_2PI  # (B, D)
    return {
        "mi": log_q_cond - log_q_joint,
        "tc": log_q_joint - jnp.sum(log_q_dims, axis=-1),
        "dim_kl": jnp.sum(log_q_dims - log_p_dims, axis=-1),
    }


def permute_dims(z: jax.Array, key: jax.Array) -> jax.Array:
    """Each column of z (B, D) permuted across the batch by its own random permutation: draws from
    prod_d q(z_d) when the rows are draws from q(z) (Kim and Mnih 2018, Algorithm 1)."""
    keys = jax.random.split(key, z.shape[-1])
    return jax.vmap(lambda col, k: jax.random.permutation(k, col), in_axes=(1, 0), out_axes=1)(z, keys)


def dip_covariance(mean: jax.Array, scale: jax.Array, variant: str) -> jax.Array:
    """The covariance (D, D) of the aggregate posterior that DIP-VAE pushes towards I.

    "i": Cov_batch[mu(x)] = E[mu mu^T] - E[mu] E[mu]^T (over the batch, divided by B);
    "ii": E_batch[diag(sigma(x)^2)] + Cov_batch[mu(x)], the covariance of the mixture q(z).
    """
    centered = mean - jnp.mean(mean, axis=0)
    cov = centered.T @ centered / mean.shape[0]
    if variant == "ii":
        cov = cov + jnp.diag(jnp.mean(scale**2, axis=0))
    return cov


def dip_penalties(cov: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sum_{i != j} cov_ij^2, sum_i (cov_ii - 1)^2) of a (D, D) covariance."""
    diag = jnp.diagonal(cov)
    return jnp.sum(cov**2) - jnp.sum(diag**2), jnp.sum((diag - 1.0) ** 2)


# --------------------------------------------------------------------------- configs


def _non_negative(**values: float) -> None:
    for name, value in values.items():
        if value < 0:
            raise VaekitError(f"model.{name} must be >= 0, got {value}")


@dataclasses.dataclass(frozen=True)
class TCVAEConfig(ModelConfig):
    kind: str = "tcvae"
    alpha: float = 1.0  # weight of the index-code mutual information I(x; z)
    beta: float = 6.0  # weight of the total correlation KL(q(z) || prod_d q(z_d)) (the beta of beta-TCVAE)
    gamma: float = 1.0  # weight of the dimension-wise KL sum_d KL(q(z_d) || p(z_d))
    estimator: str = "mws"  # log q(z) from the minibatch: "mws" (weighted sampling) or "stratified" (uses the data set size)

    def check(self) -> None:
        _non_negative(alpha=self.alpha, beta=self.beta, gamma=self.gamma)
        if self.estimator not in TC_ESTIMATORS:
            raise VaekitError(f"model.estimator must be one of {', '.join(TC_ESTIMATORS)}; got '{self.estimator}'")


@dataclasses.dataclass(frozen=True)
class FactorVAEConfig(VAEConfig):
    kind: str = "factorvae"
    gamma: float = 35.0  # weight of the discriminator's total-correlation estimate added to the ELBO loss
    discriminator_hidden: tuple[int, ...] = (1000,) * 6  # the discriminator MLP's hidden sizes (leaky ReLU 0.2), 2 logits out
    discriminator_lr: float = 1e-4  # the discriminator's learning rate (its own Adam; schedule and clipping as train.*)
    discriminator_betas: tuple[float, float] = (0.5, 0.9)  # the discriminator's Adam b1, b2 (Kim and Mnih 2018)

    def check(self) -> None:
        super().check()
        _non_negative(gamma=self.gamma)
        if not self.discriminator_hidden or any(h <= 0 for h in self.discriminator_hidden):
            raise VaekitError(f"model.discriminator_hidden must be a non-empty list of positive sizes, got "
                              f"{list(self.discriminator_hidden)}")
        if len(self.discriminator_betas) != 2 or not all(0 <= b < 1 for b in self.discriminator_betas):
            raise VaekitError(f"model.discriminator_betas must be two numbers in [0, 1), got {list(self.discriminator_betas)}")
        if self.discriminator_lr <= 0:
            raise VaekitError(f"model.discriminator_lr must be positive, got {self.discriminator_lr}")


@dataclasses.dataclass(frozen=True)
class DIPVAEConfig(ModelConfig):
    kind: str = "dipvae"
    variant: str = "i"  # "i": penalize Cov[mu(x)]; "ii": penalize E[Sigma(x)] + Cov[mu(x)]
    lambda_od: float = 10.0  # weight of the squared off-diagonal covariance entries
    lambda_d: float | None = None  # weight of the squared (diagonal - 1); None: 10 * lambda_od for "i", lambda_od for "ii" (the paper's rule)

    def check(self) -> None:
        if self.variant not in DIP_VARIANTS:
            raise VaekitError(f"model.variant must be one of {', '.join(DIP_VARIANTS)}; got '{self.variant}'")
        _non_negative(lambda_od=self.lambda_od)
        if self.lambda_d is not None and self.lambda_d < 0:
            raise VaekitError(f"model.lambda_d must be >= 0, got {self.lambda_d}")

    @property
    def diagonal_weight(self) -> float:
        """lambda_d, or the paper's default for the variant."""
        if self.lambda_d is not None:
            return self.lambda_d
        return self.lambda_od * (10.0 if self.variant == "i" else 1.0)


# --------------------------------------------------------------------------- models


class _PenalizedVAE(VAE):
    """A VAE whose training loss is its ELBO loss (objective.kind=elbo) plus a model's penalty."""

    def __init__(self, model, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        if objective.kind != "elbo":
            raise VaekitError(f"model.kind={self.kind} adds its penalty to the ELBO; objective.kind={objective.kind} "
                              f"cannot apply (use objective.kind=elbo)")
        super().__init__(model, objective, spec, rngs=rngs, **nets)

    def _elbo_loss(self, batch: dict, rngs: nnx.Rngs, step: jax.Array):
        """(ELBO loss with the objective's KL options, metrics, posterior q, draw z (B, D))."""
        q, z, log_qz, log_px_z, log_pz = self._draws(batch, 1, rngs)
        loss, metrics = variational_objective(self.objective, step, q, self.prior, z, log_qz, log_px_z, log_pz,
                                              self.latent_dim)
        return loss, metrics, q, z[0]


class TCVAE(VAE):
    """beta-TCVAE: the KL term decomposed and reweighted (see the module docstring)."""

    kind = "tcvae"
    config_class = TCVAEConfig

    def __init__(self, model: TCVAEConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        ignored = changed_objective(objective)
        if ignored:
            raise VaekitError(f"model.kind=tcvae weights its KL terms with model.alpha, model.beta and model.gamma; "
                              f"{ignored} cannot apply (leave the objective section at its defaults)")
        if model.estimator == "stratified" and spec.num_examples is None:
            raise VaekitError("model.estimator=stratified needs the training set's size, which this data spec lacks "
                              "(DataSpec.num_examples); use model.estimator=mws")
        super().__init__(model, objective, spec, rngs=rngs, **nets)

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """E[-log p(x|z)] + alpha MI + beta TC + gamma dim-KL (batch means, one draw); metrics add the
        three terms ("mi", "tc", "dim_kl") and the true ELBO with its closed-form KL."""
        cfg = self.model_cfg
        q, z, log_qz, log_px_z, log_pz = self._draws(batch, 1, rngs)
        # The true ELBO's parts as metrics (the objective is at its defaults: beta = 1, no KL options).
        _, metrics = variational_objective(self.objective, step, q, self.prior, z, log_qz, log_px_z, log_pz,
                                           self.latent_dim)
        del metrics["beta"]  # the objective's beta, always 1 here: model.beta weights the TC term
        log_w = log_importance_weights(z.shape[1], self.spec.num_examples, cfg.estimator)
        terms = tc_decomposition(z[0], q.mean, q.scale, log_w)  # each (B,)
        per_example = -log_px_z[0] + cfg.alpha * terms["mi"] + cfg.beta * terms["tc"] + cfg.gamma * terms["dim_kl"]
        metrics |= {"loss": mean_of(per_example), **{name: mean_of(value) for name, value in terms.items()}}
        return jnp.mean(per_example), metrics


class Discriminator(nnx.Module):
    """z (..., D) -> 2 logits (..., 2): class 0 "drawn from q(z)", class 1 "dimensions permuted".

    Dense layers of `hidden` sizes with leaky ReLU (slope 0.2) between them (Kim and Mnih: 6 x 1000).
    """

    def __init__(self, latent_dim: int, hidden: tuple[int, ...], *, rngs: nnx.Rngs):
        sizes = (latent_dim, *hidden, 2)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])

    def __call__(self, z: jax.Array) -> jax.Array:
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.leaky_relu(layer(h), negative_slope=0.2)
        return self.layers[-1](h)


class FactorVAE(_PenalizedVAE):
    """FactorVAE: the ELBO plus gamma times a discriminator's total-correlation estimate.

    Two parameter groups: "vae" (encoder, decoder) minimizes the ELBO loss + gamma E[logit_0 - logit_1]
    (the discriminator's log odds D(z) / (1 - D(z)), Kim and Mnih eq. 3), and "discriminator"
    minimizes the cross-entropy of telling z from `permute_dims(z)`. Both come from the same batch:
    the codes z of the VAE term and their column-wise permutation, drawn on the device from the
    "sample" stream (the paper draws the permuted codes from a second batch; permuting the same
    batch, as disentanglement_lib does, gives draws of the same product of marginals).
    """

    kind = "factorvae"
    config_class = FactorVAEConfig

    def __init__(self, model: FactorVAEConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        super().__init__(model, objective, spec, rngs=rngs, **nets)
        self.discriminator = Discriminator(self.latent_dim, model.discriminator_hidden, rngs=rngs)

    def param_groups(self) -> dict[str, ParamGroup]:
        in_disc = nnx.PathContains("discriminator")
        return {"vae": ParamGroup(nnx.All(nnx.Param, nnx.Not(in_disc))),
                "discriminator": ParamGroup(nnx.All(nnx.Param, in_disc), learning_rate=self.model_cfg.discriminator_lr,
                                            train_overrides={"adam_b1": self.model_cfg.discriminator_betas[0],
                                                             "adam_b2": self.model_cfg.discriminator_betas[1]})}

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[dict, dict]:
        """{"vae": ELBO loss + gamma TC estimate, "discriminator": its cross-entropy} and metrics
        ("tc": the estimate, "disc_loss", "disc_accuracy" on the codes and their permutation)."""
        elbo_loss, metrics, _, z = self._elbo_loss(batch, rngs, step)
        # One discriminator pass over the codes and their permutation. The trainer differentiates
        # each group's loss with respect to its own parameters only: the cross-entropy moves only
        # the discriminator, and the TC term only the VAE.
        both = self.discriminator(jnp.concatenate([z, permute_dims(z, rngs.sample())]))  # (2B, 2)
        tc = both[: z.shape[0], 0] - both[: z.shape[0], 1]  # (B,) log D(z) / (1 - D(z))
        vae_loss = elbo_loss + self.model_cfg.gamma * jnp.mean(tc)
        labels = jnp.concatenate([jnp.zeros(z.shape[0], jnp.int32), jnp.ones(z.shape[0], jnp.int32)])
        ce = optax.softmax_cross_entropy_with_integer_labels(both, labels)  # (2B,)
        correct = (jnp.argmax(both, axis=-1) == labels).astype(jnp.float32)
        metrics |= {
            "loss": mean_of(jnp.broadcast_to(vae_loss, tc.shape)),
            "tc": mean_of(tc),
            "disc_loss": mean_of(ce),
            "disc_accuracy": mean_of(correct),
        }
        return {"vae": vae_loss, "discriminator": jnp.mean(ce)}, metrics


class DIPVAE(_PenalizedVAE):
    """DIP-VAE-I / -II: the ELBO plus the covariance penalties of `dip_covariance`."""

    kind = "dipvae"
    config_class = DIPVAEConfig

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """ELBO loss + lambda_od * off-diagonal + lambda_d * diagonal penalty; metrics add both
        penalties ("dip_offdiag", "dip_diag", batch values)."""
        cfg = self.model_cfg
        elbo_loss, metrics, q, _ = self._elbo_loss(batch, rngs, step)
        off, diag = dip_penalties(dip_covariance(q.mean, q.scale, cfg.variant))
        loss = elbo_loss + cfg.lambda_od * off + cfg.diagonal_weight * diag
        metrics |= {"loss": mean_of(jnp.broadcast_to(loss, q.mean.shape[:1])), "dip_offdiag": off, "dip_diag": diag}
        return loss, metrics


__all__ = ["DIPVAE", "DIPVAEConfig", "Discriminator", "FactorVAE", "FactorVAEConfig", "TCVAE", "TCVAEConfig",
           "dip_covariance", "dip_penalties", "log_importance_weights", "pairwise_log_density", "permute_dims",
           "tc_decomposition"]
