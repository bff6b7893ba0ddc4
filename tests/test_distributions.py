"""Every log-density and KL here against scipy or Monte Carlo."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vaekit.config import ModelConfig
from vaekit.core.distributions import (
    LIKELIHOODS,
    Bernoulli,
    Categorical256,
    DiagonalGaussian,
    Gaussian,
    posterior_scale,
    standard_normal_log_prob,
)

RNG = np.random.default_rng(0)


def test_gaussian_posterior_log_prob_matches_scipy():
    mean, scale = RNG.normal(size=(3, 5)), RNG.uniform(0.2, 2.0, size=(3, 5))
    z = RNG.normal(size=(3, 5))
    q = DiagonalGaussian(jnp.asarray(mean), jnp.asarray(scale))
    expected = stats.norm.logpdf(z, mean, scale).sum(-1)
    np.testing.assert_allclose(q.log_prob(jnp.asarray(z)), expected, rtol=1e-5)
    np.testing.assert_allclose(standard_normal_log_prob(jnp.asarray(z)), stats.norm.logpdf(z).sum(-1), rtol=1e-5)


def test_kl_closed_form_matches_monte_carlo():
    q = DiagonalGaussian(jnp.array([[0.5, -1.0, 0.0]]), jnp.array([[0.3, 1.5, 1.0]]))
    z = q.sample(jax.random.key(0), (400_000,))  # (S, 1, 3)
    mc = jnp.mean(q.log_prob(z) - standard_normal_log_prob(z))
    assert q.kl()[0] == pytest.approx(float(mc), abs=0.01)
    # per dimension, and zero exactly at the prior
    np.testing.assert_allclose(q.kl_per_dim().sum(-1), q.kl(), rtol=1e-6)
    assert float(DiagonalGaussian(jnp.zeros((1, 4)), jnp.ones((1, 4))).kl()[0]) == pytest.approx(0.0, abs=1e-7)


def test_reparameterized_sample_moments_and_gradient():
    q = DiagonalGaussian(jnp.array([2.0, -1.0]), jnp.array([0.5, 3.0]))
    z = q.sample(jax.random.key(1), (200_000,))
    np.testing.assert_allclose(z.mean(0), [2.0, -1.0], atol=0.03)
    np.testing.assert_allclose(z.std(0), [0.5, 3.0], rtol=0.01)
    # d/dmean E[z] = 1: the draw is differentiable in the parameters
    g = jax.grad(lambda m: DiagonalGaussian(m, jnp.ones(2)).sample(jax.random.key(2)).sum())(jnp.zeros(2))
    np.testing.assert_allclose(g, [1.0, 1.0])


def test_bernoulli_log_prob_matches_scipy_including_extreme_logits():
    logits = RNG.normal(scale=4, size=(2, 4, 4, 1))
    logits[0, 0, 0, 0] = 60.0  # saturated: naive log(sigmoid) would give -inf for x = 0
    x = (RNG.uniform(size=logits.shape) < 0.5).astype(np.float32)
    p = 1 / (1 + np.exp(-logits))
    expected = stats.bernoulli.logpmf(x, np.clip(p, 1e-300, 1 - 1e-16)).sum((1, 2, 3))
    expected[0] = np.sum(x[0] * logits[0] - np.logaddexp(0, logits[0]))  # exact for the saturated one
    got = Bernoulli(jnp.asarray(logits)).log_prob(jnp.asarray(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.all(np.isfinite(got))



@pytest.mark.parametrize("shape", [(3, 28, 28, 1), (3, 5, 5, 1)])  # grouped logs (784 = 49 x 16), and one log each
def test_bernoulli_log_prob_and_gradients_against_float64_numpy(shape):
    """Values (grouped logs) and the hand-written gradients, with x broadcast against k sample draws."""
    k = 4
    logits = RNG.normal(scale=5, size=(k, *shape))
    logits[0, 0, 0, 0, 0], logits[1, 0, 0, 1, 0] = 80.0, -80.0
    x = RNG.uniform(size=shape)  # in [0, 1], not only binary: the density is x l - softplus(l)
    x[0] = x[0] > 0.5
    expected = np.sum(x * logits - np.logaddexp(0.0, logits), axis=(2, 3, 4))
    lp = Bernoulli(jnp.asarray(logits, jnp.float32)).log_prob(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(np.asarray(lp), expected, rtol=1e-5, atol=2e-3)
    w = RNG.normal(size=(k, shape[0]))  # a weighted sum, so each example's cotangent differs

    def f(lg, xx):
        return jnp.sum(jnp.asarray(w, jnp.float32) * Bernoulli(lg).log_prob(xx))

    g_logits, g_x = jax.grad(f, argnums=(0, 1))(jnp.asarray(logits, jnp.float32), jnp.asarray(x, jnp.float32))
    wb = w.reshape(k, shape[0], 1, 1, 1)
    np.testing.assert_allclose(np.asarray(g_logits), wb * (x - 1.0 / (1.0 + np.exp(-logits))), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(g_x), np.sum(wb * logits, axis=0), rtol=1e-4, atol=1e-4)


def test_gaussian_likelihood_matches_scipy_with_constant():
    loc, scale = RNG.uniform(size=(2, 3, 3, 2)), RNG.uniform(0.05, 1.0, size=(2, 3, 3, 2))
    x = RNG.uniform(size=(2, 3, 3, 2))
    got = Gaussian(jnp.asarray(loc), jnp.asarray(scale)).log_prob(jnp.asarray(x))
    np.testing.assert_allclose(got, stats.norm.logpdf(x, loc, scale).sum((1, 2, 3)), rtol=1e-5)


def test_fixed_sigma_gaussian_is_mse_plus_constant():
    cfg = ModelConfig(likelihood="gaussian", sigma=0.1)
    raw = RNG.uniform(size=(2, 4, 4, 1, 1))
    x = RNG.uniform(size=(2, 4, 4, 1))
    lik = LIKELIHOODS["gaussian"][1](jnp.asarray(raw), cfg)
    sq = ((x - raw[..., 0]) ** 2).sum((1, 2, 3))
    const = 16 * (np.log(0.1) + 0.5 * np.log(2 * np.pi))
    np.testing.assert_allclose(lik.log_prob(jnp.asarray(x)), -sq / (2 * 0.01) - const, rtol=1e-5)


def test_learned_gaussian_scale_respects_floor():
    cfg = ModelConfig(likelihood="gaussian_learned", min_scale=1e-3)
    raw = np.full((1, 2, 2, 1, 2), -50.0)
    lik = LIKELIHOODS["gaussian_learned"][1](jnp.asarray(raw), cfg)
    assert float(lik.scale.min()) >= 1e-3


def test_categorical_log_prob_matches_scipy():
    logits = RNG.normal(size=(2, 3, 3, 1, 256))
    levels = RNG.integers(0, 256, size=(2, 3, 3, 1))
    x = levels / 255.0
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    expected = np.zeros(2)
    for b in range(2):
        for idx in np.ndindex(3, 3, 1):
            expected[b] += stats.multinomial.logpmf(np.eye(256)[levels[(b, *idx)]], 1, probs[(b, *idx)])
    got = Categorical256(jnp.asarray(logits)).log_prob(jnp.asarray(x, jnp.float32))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    mean = Categorical256(jnp.asarray(logits)).mean()
    np.testing.assert_allclose(mean, (probs * np.arange(256) / 255).sum(-1), rtol=1e-4)


def test_likelihood_broadcasts_draws_against_data():
    logits = jnp.asarray(RNG.normal(size=(5, 2, 4, 4, 1)))  # (k, B, H, W, C)
    x = jnp.asarray((RNG.uniform(size=(2, 4, 4, 1)) < 0.5).astype(np.float32))
    lp = Bernoulli(logits).log_prob(x)
    assert lp.shape == (5, 2)
    np.testing.assert_allclose(lp[3], Bernoulli(logits[3]).log_prob(x), rtol=1e-6)


@pytest.mark.parametrize("kind", ["softplus", "logvar"])
def test_posterior_scale_is_positive_and_finite(kind):
    raw = jnp.array([-1e4, -50.0, 0.0, 50.0, 1e4])
    s = posterior_scale(raw, kind)
    assert np.all(np.isfinite(s)) and np.all(s > 0)
    if kind == "logvar":
        np.testing.assert_allclose(posterior_scale(jnp.array([0.0, 2.0]), kind), [1.0, np.e], rtol=1e-6)
    else:
        np.testing.assert_allclose(posterior_scale(jnp.array([0.0]), kind), [np.log(2) + 1e-4], rtol=1e-6)
