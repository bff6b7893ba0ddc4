"""The VAE: a Gaussian posterior q(z|x), a standard-normal prior, and a configurable likelihood.

It implements the model interface that the trainer and every evaluator call (and nothing else):

    loss(batch, *, rngs, step) -> (scalar, metrics)   training objective, as configured
    log_weights(batch, k, *, rngs) -> (B, k)           log p(x, z) - log q(z|x) for k draws
    encode(x) -> DiagonalGaussian                      q(z|x)
    decode(z) -> likelihood                            p(x|z), a distribution over images
    reconstruct(x) -> images                           decoder mean at the posterior mean
    sample(n, *, rngs, temperature) -> images          decoder mean at prior draws

Batches are dicts: "x" (B, H, W, C) float in [0, 1] (binary when the likelihood needs it), and
optionally "y" (B,) int labels, which this unconditional model ignores.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit import objectives
from vaekit.config import ModelConfig, ObjectiveConfig
from vaekit.distributions import LIKELIHOODS, DiagonalGaussian, posterior_scale, standard_normal_log_prob
from vaekit.nets import build_decoder, build_encoder


def as_images(x: jax.Array) -> jax.Array:
    """(N, H, W) -> (N, H, W, 1); anything else unchanged; always float32."""
    x = jnp.asarray(x, jnp.float32)
    return x[..., None] if x.ndim == 3 else x


class VAE(nnx.Module):
    """Variational autoencoder with a diagonal-Gaussian posterior and an N(0, I) prior."""

    def __init__(
        self,
        model: ModelConfig,
        objective: ObjectiveConfig,
        image_shape: tuple[int, int, int],
        *,
        num_classes: int | None = None,
        rngs: nnx.Rngs,
    ):
        del num_classes  # unconditional; the argument keeps every model's constructor alike
        self.model_cfg = model
        self.objective = objective
        self.image_shape = tuple(image_shape)
        self.latent_dim = model.latent_dim
        params_per_channel, self._likelihood = LIKELIHOODS[model.likelihood]
        self.encoder = build_encoder(model, image_shape, 2 * model.latent_dim, rngs=rngs)
        self.decoder = build_decoder(model, model.latent_dim, image_shape, params_per_channel, rngs=rngs)

    # ------------------------------------------------------------------ distributions

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> DiagonalGaussian:
        """q(z|x) for images (N, H, W[, C]) -> DiagonalGaussian with (N, D) parameters."""
        h = self.encoder(as_images(x))
        mean, raw = jnp.split(h, 2, axis=-1)
        return DiagonalGaussian(mean, posterior_scale(raw, self.model_cfg.posterior_scale))

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """p(x|z) for latents (..., D): a likelihood whose parameters are (..., H, W, C[, 256])."""
        return self._likelihood(self.decoder(z), self.model_cfg)

    def prior_log_prob(self, z: jax.Array) -> jax.Array:
        return standard_normal_log_prob(z)

    # ------------------------------------------------------------------ estimators

    def _draws(self, batch: dict, k: int, rngs: nnx.Rngs):
        """k reparameterized posterior draws and their log densities, each (k, B)."""
        x = as_images(batch["x"])
        y = batch.get("y")
        q = self.encode(x, y)
        z = q.sample(rngs.sample(), (k,))  # (k, B, D)
        log_px_z = self.decode(z, y).log_prob(x)  # (k, B): x (B, ...) broadcasts against (k, B, ...)
        log_pz = self.prior_log_prob(z)  # (k, B)
        log_qz = q.log_prob(z)  # (k, B)
        return q, log_px_z, log_pz, log_qz

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """log p(x, z_i) - log q(z_i | x) for k draws z_i ~ q(z|x): (B, k).

        logmeanexp over k is the IWAE bound (and, for large k, the NLL estimate); the mean over k
        is an unbiased estimate of the ELBO.
        """
        _, log_px_z, log_pz, log_qz = self._draws(batch, k, rngs)
        return (log_px_z + log_pz - log_qz).T

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """The training objective (a batch mean, to minimize) and metrics.

        objective.kind "elbo": -E_q[log p(x|z)] (one draw) + KL term, where the KL is the closed form
        weighted by the beta schedule, with free bits or capacity control when configured.
        objective.kind "iwae": -mean_B log (1/k) sum_i w_i over k draws; with k = 1 this is exactly
        the single-draw ELBO estimate -mean(log_weights).
        Metrics always report the true ELBO (closed-form KL, beta = 1, no free bits).
        """
        cfg = self.objective
        k = cfg.iwae_k if cfg.kind == "iwae" else 1
        q, log_px_z, log_pz, log_qz = self._draws(batch, k, rngs)
        kl_per_dim = q.kl_per_dim()  # (B, D)
        kl = jnp.mean(jnp.sum(kl_per_dim, axis=-1))
        recon = -jnp.mean(log_px_z)
        if cfg.kind == "iwae":
            bound = objectives.iwae_bound((log_px_z + log_pz - log_qz).T)  # (B,)
            loss = -jnp.mean(bound)
            info = {"beta": jnp.ones(())}
        else:
            penalty, info = objectives.kl_term(kl_per_dim, step, cfg)
            loss = recon + penalty
        metrics = {
            "loss": loss,
            "recon": recon,
            "kl": kl,
            "elbo": -(recon + kl),
            "kl_per_dim": jnp.mean(kl_per_dim, axis=0),  # (D,)
            **info,
        }
        return loss, metrics

    # ------------------------------------------------------------------ images

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Decoder mean at the posterior mean: images (N, H, W, C) in [0, 1] for Bernoulli/categorical.

        Use the model in eval mode (`model.eval()`; `load_run` returns it so) for BatchNorm nets.
        """
        return self.decode(self.encode(x, y).mean, y).mean()

    def sample(self, n: int, *, rngs: nnx.Rngs, temperature: float = 1.0, y: jax.Array | None = None) -> jax.Array:
        """Decoder means at n prior draws z ~ N(0, temperature^2 I): images (n, H, W, C)."""
        z = temperature * jax.random.normal(rngs.sample(), (n, self.latent_dim))
        return self.decode(z, y).mean()
