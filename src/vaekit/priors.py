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
from flax import struct

from vaekit.distributions import DiagonalGaussian, standard_normal_log_prob


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


def kl_divergence(q, prior, z: jax.Array, log_q: jax.Array) -> KL:
    """KL(q || prior) for each example.

    z: (k, B, D) draws from q with their log densities log_q (k, B). With a registered closed
    form the draws are not used; otherwise the estimate is mean_k [log q(z) - log p(z)], which
    is unbiased and uses the very draws of the reconstruction term.
    """
    closed = CLOSED_FORM_KL.get((type(q), type(prior)))
    if closed is not None:
        per_dim = closed(q, prior)
        return KL(jnp.sum(per_dim, axis=-1), per_dim, True)
    return KL(jnp.mean(log_q - prior.log_prob(z), axis=0), None, False)


__all__ = ["CLOSED_FORM_KL", "KL", "StandardNormal", "kl_divergence"]
