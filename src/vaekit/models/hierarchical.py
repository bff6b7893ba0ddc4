"""A VAE with two stochastic layers (Burda et al. 2015): 784-(200-200)-100-(100-100)-50.

    generative:  p(z2) = N(0, I),  p(z1|z2) = N(mu(z2), sigma(z2)^2),  p(x|z1)
    inference:   q(z1|x) = N(.), q(z2|z1) = N(.)

The latent vector is the concatenation [z1, z2] (z1_dim + latent_dim entries): the posterior
object draws both layers and returns their joint log-density, the prior object scores and draws
both, and the decoder reads z1. Everything else is the VAE's (`models.vae`): the KL term is the
Monte Carlo estimate of KL(q(z1, z2|x) || p(z1, z2)) from the same draws, `log_weights` gives the
IWAE bounds and the NLL, and the objective options (beta, annealing, free bits, IWAE training)
apply unchanged.

With `model.batch_norm=true` the four nets (q(z1|x), q(z2|z1), p(z1|z2), p(x|z1)) normalize every
hidden layer (`nets.dense`: batch statistics in train mode, running averages in eval mode; the
net builders give q(z1|x) and p(x|z1) when asked with `batch_norm=True`). The
nets that run more than once in a loss evaluation move their running averages on one call only,
so each training step moves them once: q(z2|z1) on the posterior's draw (not on a score of it),
p(z1|z2) on the per-layer KL (`layer_kls`, once per loss), not on the prior's scores of the same
draws in log p(z) and the Monte Carlo KL.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config.schema import ModelConfig
from vaekit.core.distributions import (DiagonalGaussian, Posterior, posterior_scale, standard_normal_log_prob,
                                  standard_normal_log_prob_per_dim)
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities
from vaekit.models.vae import VAE
from vaekit.nets import build_decoder, build_encoder
from vaekit.nets.dense import DenseNet
from vaekit.nets.mlp import MLP


@dataclasses.dataclass(frozen=True)
class HVAEConfig(ModelConfig):
    kind: str = "hvae"
    z1_dim: int = 100  # width of the lower stochastic layer z1 (model.latent_dim is the top layer z2)
    hidden2: tuple[int, ...] = (100, 100)  # hidden sizes between z1 and z2 (q(z2|z1); p(z1|z2) mirrors them)
    batch_norm: bool = False  # batch normalization on every hidden layer of the four nets (model.net=mlp)

    def check(self) -> None:
        if self.z1_dim <= 0 or any(h <= 0 for h in self.hidden2):
            raise VaekitError("model.z1_dim and model.hidden2 sizes must be positive")
        if self.batch_norm and self.net != "mlp":
            raise VaekitError(f"model.batch_norm=true builds batch-normalized dense nets; model.net must be mlp, "
                              f"got '{self.net}'")


def _gaussian(h: jax.Array, dim: int, kind: str) -> DiagonalGaussian:
    return DiagonalGaussian(h[..., :dim], posterior_scale(h[..., dim : 2 * dim], kind))


def _dense(sizes: tuple[int, ...], activation: str, batch_norm: bool, *, rngs: nnx.Rngs) -> nnx.Module:
    """The dense net (..., sizes[0]) -> (..., sizes[-1]): batch-normalized or the plain MLP."""
    return DenseNet(sizes, activation, True, rngs=rngs) if batch_norm else MLP(sizes, activation, rngs=rngs)


def _run(net: nnx.Module, h: jax.Array, update: bool) -> jax.Array:
    """Apply a `_dense` net; `update`: whether its batch norms' running averages move (train mode)."""
    return net(h, update) if isinstance(net, DenseNet) else net(h)


class TwoLayerPosterior(Posterior):
    """q(z1|x) q(z2|z1) over the concatenated [z1, z2]."""

    def __init__(self, q1: DiagonalGaussian, q2_of):
        self.q1, self.q2_of = q1, q2_of

    @property
    def mean(self) -> jax.Array:
        m1 = self.q1.mean
        return jnp.concatenate([m1, self.q2_of(m1).mean], axis=-1)

    def sample_and_log_prob(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        k1, k2 = jax.random.split(key)
        z1, log_q1 = self.q1.sample_and_log_prob(k1, sample_shape)
        z2, log_q2 = self.q2_of(z1, update=True).sample_and_log_prob(k2)  # the draw moves the running averages
        return jnp.concatenate([z1, z2], axis=-1), log_q1 + log_q2

    def log_prob(self, z: jax.Array) -> jax.Array:
        z1 = z[..., : self.q1.mean.shape[-1]]
        return self.q1.log_prob(z1) + self.q2_of(z1).log_prob(z[..., self.q1.mean.shape[-1] :])


class TwoLayerPrior(nnx.Module):
    """p(z2) p(z1|z2) over [z1, z2]; p(z1|z2) is a net, so the prior is a module trained with the model."""

    def __init__(self, z1_dim: int, z2_dim: int, hidden2, activation: str, scale_kind: str, batch_norm: bool = False,
                 *, rngs: nnx.Rngs):
        self.z1_dim, self.z2_dim, self.scale_kind = z1_dim, z2_dim, scale_kind
        self.net = _dense((z2_dim, *tuple(reversed(hidden2)), 2 * z1_dim), activation, batch_norm, rngs=rngs)

    def conditional(self, z2: jax.Array, update: bool = False) -> DiagonalGaussian:
        return _gaussian(_run(self.net, z2, update), self.z1_dim, self.scale_kind)

    def log_prob(self, z: jax.Array) -> jax.Array:
        z1, z2 = z[..., : self.z1_dim], z[..., self.z1_dim :]
        return standard_normal_log_prob(z2) + self.conditional(z2).log_prob(z1)

    def sample(self, key: jax.Array, shape: tuple[int, ...] = (), temperature: float = 1.0) -> jax.Array:
        k2, k1 = jax.random.split(key)
        z2 = temperature * jax.random.normal(k2, (*shape, self.z2_dim))
        p1 = self.conditional(z2)
        z1 = p1.mean + temperature * p1.scale * jax.random.normal(k1, p1.mean.shape)
        return jnp.concatenate([z1, z2], axis=-1)


class HVAE(VAE):
    """Two stochastic layers; the VAE's estimators over the joint code [z1, z2]."""

    kind = "hvae"
    config_class = HVAEConfig
    user_nets = False  # its nets are the layers' own

    def __init__(self, model: HVAEConfig, objective, spec, *, rngs: nnx.Rngs):
        params_per_entry = self._bind(model, objective, spec)
        self.z1_dim, self.latent_dim = model.z1_dim, model.z1_dim + model.latent_dim  # the code is [z1, z2]
        self.layer_dims = (model.z1_dim, model.latent_dim)
        act, bn, d1, d2 = model.activation, model.batch_norm, model.z1_dim, model.latent_dim
        self.encoder = build_encoder(model, spec.shape, 2 * d1, batch_norm=bn, rngs=rngs)  # q(z1|x)
        self.decoder = build_decoder(model, d1, spec.shape, params_per_entry, batch_norm=bn, rngs=rngs)  # p(x|z1)
        self.encoder2 = _dense((d1, *model.hidden2, 2 * d2), act, bn, rngs=rngs)  # q(z2|z1)
        self.prior = TwoLayerPrior(d1, d2, model.hidden2, act, model.posterior_scale, bn, rngs=rngs)
        self.flow = None
        self.capabilities = self.capabilities_for(model)

    @classmethod
    def capabilities_for(cls, model) -> Capabilities:
        return Capabilities()  # a Monte Carlo KL, per layer and per dimension (`layer_kls`)

    def layer_kls(self, q, z, log_qz) -> dict:
        """Monte Carlo KL of each layer and of each dimension from the loss's draws z = [z1, z2]
        (k, B, .). Given the layer it is conditioned on, each Gaussian is diagonal, so the KL splits
        over dimensions: E[log q(z1_d|x) - log p(z1_d|z2)] and E[log q(z2_d|z1) - log N(z2_d; 0, 1)].
        The dimensions sum to their layer's KL ("kl/z1", "kl/z2") and the layers to the total."""
        z1, z2 = z[..., : self.z1_dim], z[..., self.z1_dim :]
        # The one call per loss that moves p(z1|z2)'s running averages (with model.batch_norm).
        p1 = self.prior.conditional(z2, update=True)
        kl1 = jnp.mean(q.q1.log_prob_per_dim(z1) - p1.log_prob_per_dim(z1), axis=0)  # (B, z1_dim)
        kl2 = jnp.mean(q.q2_of(z1).log_prob_per_dim(z2) - standard_normal_log_prob_per_dim(z2), axis=0)  # (B, d2)
        return {"kl/z1": mean_of(jnp.sum(kl1, -1)), "kl/z2": mean_of(jnp.sum(kl2, -1)),
                "kl_per_dim": mean_of(jnp.concatenate([kl1, kl2], axis=-1))}

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> TwoLayerPosterior:
        """q(z1|x) q(z2|z1): a posterior over [z1, z2] with (N, z1_dim + latent_dim) codes."""
        q1 = _gaussian(self.encoder(self._as_data(x)), self.z1_dim, self.model_cfg.posterior_scale)
        kind, d2 = self.model_cfg.posterior_scale, self.model_cfg.latent_dim
        return TwoLayerPosterior(q1, lambda z1, update=False: _gaussian(_run(self.encoder2, z1, update), d2, kind))

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """p(x|z1) for codes [z1, z2] (..., z1_dim + latent_dim) (z2 acts only through the prior)."""
        return self._likelihood(self.decoder(z[..., : self.z1_dim]), self.model_cfg, self.spec.event_ndim)
