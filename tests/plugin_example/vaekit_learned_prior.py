"""docs/architecture.md's "adding a model kind in one file", as an installable plugin: its pyproject.toml
registers LearnedPriorVAE in the "vaekit.models" entry-point group (tests/test_models.py checks that
the code below is the documented one)."""

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config import ModelConfig
from vaekit.core.distributions import DiagonalGaussian
from vaekit.errors import VaekitError
from vaekit.models.base import Capabilities
from vaekit.models.vae import VAE


@dataclasses.dataclass(frozen=True)
class LearnedPriorConfig(ModelConfig):
    kind: str = "learned-prior"
    prior_init_scale: float = 1.0  # initial standard deviation of p(z)

    def check(self):
        if self.prior_init_scale <= 0:
            raise VaekitError("model.prior_init_scale must be positive")


class GaussianPrior(nnx.Module):
    """A prior with parameters: an nnx.Module, trained with the model."""

    def __init__(self, dim, scale):
        self.loc = nnx.Param(jnp.zeros(dim))
        self.log_scale = nnx.Param(jnp.full(dim, jnp.log(scale)))

    def _dist(self):
        return DiagonalGaussian(self.loc[...], jnp.exp(self.log_scale[...]))

    def log_prob(self, z):
        return self._dist().log_prob(z)

    def sample(self, key, shape=(), temperature=1.0):
        d = self._dist()
        return d.mean + temperature * d.scale * jax.random.normal(key, (*shape, d.mean.shape[-1]))


class LearnedPriorVAE(VAE):
    kind = "learned-prior"
    config_class = LearnedPriorConfig

    def __init__(self, model, objective, spec, *, rngs):
        super().__init__(model, objective, spec, rngs=rngs)
        self.prior = GaussianPrior(model.latent_dim, model.prior_init_scale)

    @classmethod
    def capabilities_for(cls, model):
        return Capabilities(kl_per_dim=False)  # no closed form registered: Monte Carlo KL, no per-dim split
