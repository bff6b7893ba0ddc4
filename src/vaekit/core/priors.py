"""Priors p(z) over a latent vector, and the KL divergence of a posterior from one.

A prior is an object with `log_prob(z) -> (...)` (summed over the latent axis) and
`sample(key, shape) -> (*shape, D)`; a prior with parameters (a VampPrior, a mixture) is an
`nnx.Module` and is trained with the model. `kl_divergence` uses a closed form where one is
registered for the (posterior, prior) pair and a Monte Carlo estimate from the posterior's own
draws where none is, so a flow posterior or a learned prior needs no special case anywhere.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx, struct

from vaekit.core.distributions import LOG_2PI, DiagonalGaussian, posterior_scale, standard_normal_log_prob


@struct.dataclass
class StandardNormal:
    """N(0, I) over D latent dimensions."""

    dim: int = struct.field(pytree_node=False)

    def log_prob(self, z: jax.Array) -> jax.Array:
        return standard_normal_log_prob(z)

    def sample(self, key: jax.Array, shape: tuple[int, ...] = (), temperature: float = 1.0) -> jax.Array:
        """Draws (*shape, D); `temperature` scales the standard deviation."""
        return temperature * jax.random.normal(key, (*shape, self.dim))


#: (posterior type, prior type) -> closed-form KL per latent dimension (..., D).
CLOSED_FORM_KL: dict[tuple[type, type], Callable] = {
    (DiagonalGaussian, StandardNormal): lambda q, p: q.kl_per_dim(),
}


@struct.dataclass
class KL:
    """KL(q(z|x) || p(z)) per example (B,), and per latent dimension (B, D) where a closed form gives it."""

    total: jax.Array
    per_dim: jax.Array | None
    closed_form: bool = struct.field(pytree_node=False)

    @classmethod
    def of_per_dim(cls, per_dim: jax.Array) -> KL:
        """The closed-form KL of per-dimension values (B, D)."""
        return cls(jnp.sum(per_dim, axis=-1), per_dim, True)


def kl_divergence(q, prior, z: jax.Array, log_q: jax.Array) -> KL:
    """KL(q || prior) for each example.

    z: (k, B, D) draws from q with their log densities log_q (k, B). With a registered closed
    form the draws are not used; otherwise the estimate is mean_k [log q(z) - log p(z)], which
    is unbiased and uses the very draws of the reconstruction term.
    """
    closed = CLOSED_FORM_KL.get((type(q), type(prior)))
    if closed is not None:
        return KL.of_per_dim(closed(q, prior))
    return KL(jnp.mean(log_q - prior.log_prob(z), axis=0), None, False)




class VampPrior(nnx.Module):
    """The VampPrior (Tomczak and Welling 2018): p(z) = (1/K) sum_k q0(z | u_k), a mixture of the
    encoder's Gaussian posteriors at K learned pseudo-inputs u_k.

    The pseudo-inputs are parameterized as in the paper's code, u = hardtanh(W) = clip(W, 0, 1),
    with W drawn from N(init_mean, init_std) (their later MNIST runs: 0.05, 0.01; a negative
    mean would start every u at 0, where clip passes no gradient). The encoder is the model's
    own module, shared, so the prior follows the posterior during training. With a flow
    posterior the components are the flow's Gaussian base q0.
    """

    def __init__(self, encoder, event_shape, components: int, latent_dim: int, scale_kind: str, *,
                 init_mean: float = 0.05, init_std: float = 0.01, rngs: nnx.Rngs):
        self.encoder = encoder
        self.scale_kind = scale_kind
        self.dim = latent_dim
        self.pseudo = nnx.Param(init_mean + init_std * jax.random.normal(rngs.params(), (components, *event_shape)))

    def pseudo_inputs(self) -> jax.Array:
        return jnp.clip(self.pseudo[...], 0.0, 1.0)

    def components(self) -> DiagonalGaussian:
        """q0(z|u_k) for every pseudo-input: parameters (K, D)."""
        h = self.encoder(self.pseudo_inputs())
        return DiagonalGaussian(h[..., : self.dim], posterior_scale(h[..., self.dim : 2 * self.dim], self.scale_kind))

    def log_prob(self, z: jax.Array) -> jax.Array:
        """log (1/K) sum_k N(z; m_k, s_k^2) for z (..., D): (...), the squares expanded into matmuls so
        that k draws of B examples against K components never make a (k, B, K, D) array."""
        c = self.components()
        inv_var = 1.0 / c.scale**2  # (K, D)
        quad = (z**2) @ inv_var.T - 2.0 * z @ (c.mean * inv_var).T + jnp.sum(c.mean**2 * inv_var, axis=-1)  # (..., K)
        log_norm = -jnp.sum(jnp.log(c.scale), axis=-1) - 0.5 * self.dim * LOG_2PI  # (K,)
        k = c.mean.shape[0]
        return jax.nn.logsumexp(log_norm - 0.5 * quad, axis=-1) - jnp.log(k)

    def sample(self, key: jax.Array, shape: tuple[int, ...] = (), temperature: float = 1.0) -> jax.Array:
        """Pick a component uniformly, then draw from it (spread scaled by temperature): (*shape, D)."""
        c = self.components()
        pick_key, noise_key = jax.random.split(key)
        k = jax.random.randint(pick_key, shape, 0, c.mean.shape[0])
        return c.mean[k] + temperature * c.scale[k] * jax.random.normal(noise_key, (*shape, self.dim))


#: model.prior: p(z) by name (a VAE builds the one its config names).
PRIORS = {"normal": StandardNormal, "vamp": VampPrior}

__all__ = ["CLOSED_FORM_KL", "KL", "PRIORS", "StandardNormal", "VampPrior", "kl_divergence"]
