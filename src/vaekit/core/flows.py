"""Normalizing-flow posteriors: a diagonal Gaussian q0(z0|x) pushed through invertible steps.

    z0 ~ q0(z0|x),  z_T = f_T o ... o f_1 (z0),  log q(z_T|x) = log q0(z0|x) - sum_t log |det df_t/dz|

`FlowPosterior` has the posterior interface (`mean`, `sample_and_log_prob`), so the VAE's
estimators and the Monte Carlo KL (`priors.kl_divergence`, no closed form) work unchanged.

- Planar flows (Rezende and Mohamed 2015): f(z) = z + u_hat tanh(w.z + b), with u_hat the
  projection of u that keeps f invertible (w.u_hat >= -1). The parameters u, w, b of every step
  come from the encoder for each example (amortized, as in the paper).
- Inverse autoregressive flow (Kingma et al. 2016): [m, s] = MADE(z, h); sigma = sigmoid(s);
  z <- sigma * z + (1 - sigma) * m; log det = sum log sigma. h is a context vector from the
  encoder; the variable order is reversed between steps.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.core.distributions import DiagonalGaussian, Posterior

# --------------------------------------------------------------------------- planar


def planar_params(raw: jax.Array, dim: int, steps: int):
    """Split an encoder's raw (..., steps * (2 D + 1)) output into u, w (..., steps, D) and b (..., steps)."""
    raw = raw.reshape(*raw.shape[:-1], steps, 2 * dim + 1)
    return raw[..., :dim], raw[..., dim : 2 * dim], raw[..., 2 * dim]


def planar_step(z: jax.Array, u: jax.Array, w: jax.Array, b: jax.Array):
    """One planar step for z (..., D) with per-example u, w (..., D), b (...): (f(z), log |det|)."""
    wu = jnp.sum(w * u, axis=-1, keepdims=True)
    # u_hat = u + (m(w.u) - w.u) w / |w|^2, m(a) = -1 + softplus(a): w.u_hat > -1, so f is invertible.
    u_hat = u + (jax.nn.softplus(wu) - 1.0 - wu) * w / (jnp.sum(w**2, axis=-1, keepdims=True) + 1e-8)
    a = jnp.sum(w * z, axis=-1) + b  # (...)
    h = jnp.tanh(a)
    z = z + u_hat * h[..., None]
    psi = (1.0 - h**2)[..., None] * w  # h'(a) w
    log_det = jnp.log(jnp.abs(1.0 + jnp.sum(u_hat * psi, axis=-1)) + 1e-8)
    return z, log_det


# --------------------------------------------------------------------------- IAF


def made_masks(dim: int, hidden: int, reverse: bool) -> tuple[np.ndarray, np.ndarray]:
    """MADE masks (Germain et al. 2015) for input -> hidden (D, H) and hidden -> output (H, D).

    Input i has degree order[i] in 1..D; hidden units have degrees cycling through 1..D-1; a
    hidden unit sees inputs of degree <= its own, an output of degree d sees hidden units of
    degree < d. So output d depends only on inputs of lower degree: the step's Jacobian is
    triangular in the order.
    """
    order = np.arange(dim, 0, -1) if reverse else np.arange(1, dim + 1)
    hid = (np.arange(hidden) % max(1, dim - 1)) + 1
    m_in = (hid[None, :] >= order[:, None]).astype(np.float32)
    m_out = (order[None, :] > hid[:, None]).astype(np.float32)
    return m_in, m_out


class IAFStep(nnx.Module):
    """One IAF step: a one-hidden-layer MADE of z (with the context h added to its hidden layer)."""

    def __init__(self, dim: int, hidden: int, reverse: bool, *, rngs: nnx.Rngs):
        m_in, m_out = made_masks(dim, hidden, reverse)
        self.mask_in, self.mask_out = nnx.Variable(jnp.asarray(m_in)), nnx.Variable(jnp.asarray(m_out))
        self.w_in = nnx.Linear(dim, hidden, rngs=rngs)
        self.context = nnx.Linear(hidden, hidden, use_bias=False, rngs=rngs)
        init = nnx.initializers.normal(0.01)  # start near the identity map (sigma ~ sigmoid(1.5))
        self.w_m = nnx.Linear(hidden, dim, kernel_init=init, rngs=rngs)
        self.w_s = nnx.Linear(hidden, dim, kernel_init=init, rngs=rngs)

    def __call__(self, z: jax.Array, h: jax.Array):
        hid = z @ (self.w_in.kernel[...] * self.mask_in[...]) + self.w_in.bias[...] + self.context(h)
        hid = jax.nn.elu(hid)
        m = hid @ (self.w_m.kernel[...] * self.mask_out[...]) + self.w_m.bias[...]
        s = hid @ (self.w_s.kernel[...] * self.mask_out[...]) + self.w_s.bias[...] + 1.5  # forget-gate bias
        sigma = jax.nn.sigmoid(s)
        return sigma * z + (1.0 - sigma) * m, jnp.sum(jax.nn.log_sigmoid(s), axis=-1)


class IAF(nnx.Module):
    """`steps` IAF steps, alternating the variable order."""

    def __init__(self, dim: int, hidden: int, steps: int, *, rngs: nnx.Rngs):
        self.steps = nnx.List([IAFStep(dim, hidden, reverse=bool(t % 2), rngs=rngs) for t in range(steps)])

    def __call__(self, z: jax.Array, h: jax.Array):
        log_det = jnp.zeros(z.shape[:-1], z.dtype)
        for step in self.steps:
            z, ld = step(z, h)
            log_det = log_det + ld
        return z, log_det


# --------------------------------------------------------------------------- the posterior


class FlowPosterior(Posterior):
    """q(z|x): a DiagonalGaussian base and a flow; `transform(z0) -> (z, sum log |det|)`.

    z0 may carry leading draw axes (k, B, D); the flow's per-example parameters broadcast.
    """

    def __init__(self, base: DiagonalGaussian, transform):
        self.base = base
        self.transform = transform

    @property
    def mean(self) -> jax.Array:
        """The base mean pushed through the flow: a representative code (N, D), not E[z]."""
        return self.transform(self.base.mean)[0]

    def sample_and_log_prob(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        z0, log_q0 = self.base.sample_and_log_prob(key, sample_shape)
        z, log_det = self.transform(z0)
        return z, log_q0 - log_det


def planar_transform(u: jax.Array, w: jax.Array, b: jax.Array):
    """The planar flow with per-example parameters u, w (B, T, D), b (B, T) as a transform."""

    def transform(z):
        log_det = jnp.zeros(z.shape[:-1], z.dtype)
        for t in range(u.shape[-2]):
            z, ld = planar_step(z, u[..., t, :], w[..., t, :], b[..., t])
            log_det = log_det + ld
        return z, log_det

    return transform


#: model.posterior: the flow each posterior applies to the diagonal Gaussian q0(z0|x) (None: q0 itself).
POSTERIORS = {"gaussian": None, "planar": planar_transform, "iaf": IAF}

__all__ = ["IAF", "IAFStep", "FlowPosterior", "POSTERIORS", "made_masks", "planar_params", "planar_step", "planar_transform"]
