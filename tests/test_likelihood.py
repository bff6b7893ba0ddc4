"""The importance-sampled log-likelihood against closed forms (probabilistic PCA) and bound orderings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from vaekit.data.spec import DataSpec
from vaekit.core.distributions import DiagonalGaussian, standard_normal_log_prob
from vaekit.evaluate import log_likelihood
from vaekit.evaluate.likelihood import evaluate
from vaekit.models import build_model

from conftest import synthetic_splits, tiny_config


class PPCA(nnx.Module):
    """z ~ N(0, I_d), x = W z + b + N(0, s^2 I): log p(x) is Gaussian in closed form.

    q(z|x) is the exact posterior N(M^-1 W^T (x - b), s^2 M^-1), M = W^T W + s^2 I, diagonalized
    when `exact=False` (and its scale inflated), so importance sampling has work to do.
    """

    def __init__(self, w, b, s, *, exact: bool, mean_shift=0.0, scale_factor=1.0):
        self.w, self.b, self.s = jnp.asarray(w), jnp.asarray(b), s
        self.exact, self.mean_shift, self.scale_factor = exact, mean_shift, scale_factor
        d = w.shape[1]
        m = w.T @ w + s**2 * np.eye(d)
        self.minv = jnp.asarray(np.linalg.inv(m))
        self.chol = jnp.asarray(np.linalg.cholesky(s**2 * np.linalg.inv(m)))

    def log_weights(self, batch, k, *, rngs):
        x = batch["x"]  # (B, D)
        mean = (x - self.b) @ self.w @ self.minv.T  # (B, d)
        eps = jax.random.normal(rngs.sample(), (k, *mean.shape))
        if self.exact:
            z = mean + eps @ self.chol.T  # exact full-covariance posterior
            cov = self.chol @ self.chol.T
            log_q = jax.scipy.stats.multivariate_normal.logpdf(z, mean, cov)
        else:
            q = DiagonalGaussian(mean + self.mean_shift, self.scale_factor * jnp.sqrt(jnp.diag(self.chol @ self.chol.T)))
            z = q.mean + q.scale * eps
            log_q = q.log_prob(z)
        log_px_z = jnp.sum(jax.scipy.stats.norm.logpdf(x, z @ self.w.T + self.b, self.s), axis=-1)
        return (log_px_z + standard_normal_log_prob(z) - log_q).T  # (B, k)


@pytest.fixture(scope="module")
def ppca():
    rng = np.random.default_rng(0)
    dim, d, s = 6, 2, 0.5
    w, b = rng.normal(size=(dim, d)), rng.normal(size=dim)
    z = rng.normal(size=(40, d))
    x = z @ w.T + b + s * rng.normal(size=(40, dim))
    exact = stats.multivariate_normal(b, w @ w.T + s**2 * np.eye(dim)).logpdf(x)
    return w, b, s, x.astype(np.float32), exact


def test_exact_posterior_gives_exact_log_likelihood(ppca):
    w, b, s, x, exact = ppca
    est = log_likelihood(PPCA(w, b, s, exact=True), {"x": x}, samples=10, chunk=5, batch_size=16)
    np.testing.assert_allclose(est["log_px"], exact, atol=2e-3)
    np.testing.assert_allclose(est["elbo"], exact, atol=2e-3)  # every weight equals p(x)


def test_approximate_posterior_converges_with_large_k(ppca):
    w, b, s, x, exact = ppca
    model = PPCA(w, b, s, exact=False, mean_shift=0.2, scale_factor=1.3)
    est = log_likelihood(model, {"x": x}, samples=5000, chunk=500, batch_size=40)
    assert abs(est["log_px"].mean() - exact.mean()) < 0.05
    assert est["elbo"].mean() < exact.mean() - 0.1  # the ELBO is visibly looser


def test_bounds_increase_with_k_and_nll_below_negative_elbo():
    splits = synthetic_splits(n=60)
    model = build_model(tiny_config(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(params=0))  # untrained: a loose posterior
    model.eval()
    x = splits.train["x"][:60]
    est = log_likelihood(model, {"x": x}, samples=1000, chunk=100, batch_size=30)
    m = {k: v.mean() for k, v in est.items()}
    # E[IWAE_k] is non-decreasing in k; averaged over 60 examples x many groups the order is clear
    assert m["iwae_1"] < m["iwae_5"] < m["iwae_50"] < m["log_px"]
    assert np.all(est["log_px"] >= est["elbo"])  # per example: log-mean-exp >= mean (Jensen)
    assert abs(m["iwae_1"] - m["elbo"]) < 0.05 * abs(m["elbo"])


def test_k1_equals_elbo():
    model = build_model(tiny_config(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(params=0))
    x = synthetic_splits(n=20).train["x"]
    est = log_likelihood(model, {"x": x}, samples=1, batch_size=7)
    np.testing.assert_allclose(est["log_px"], est["elbo"], rtol=1e-6)
    np.testing.assert_allclose(est["iwae_1"], est["elbo"], rtol=1e-6)


def test_results_do_not_depend_on_batching():
    model = build_model(tiny_config(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(params=0))
    x = synthetic_splits(n=20).train["x"][:10]
    a = log_likelihood(model, {"x": x}, samples=200, chunk=50, batch_size=10)["log_px"]
    b = log_likelihood(model, {"x": x}, samples=200, chunk=50, batch_size=10)["log_px"]
    np.testing.assert_array_equal(a, b)  # seeded: the same evaluation gives the same number


def test_evaluate_writes_json_through_the_run(tmp_path, monkeypatch):
    from vaekit.runs.train import train

    splits = synthetic_splits()
    monkeypatch.setattr("vaekit.data.load_data", lambda *a, **k: splits)
    run = train(tiny_config(train={"epochs": 1}), runs_dir=tmp_path, name="r", progress=False)
    s = evaluate(run, split="test", samples=100, limit=20, progress=False)
    assert s["examples"] == 20 and s["samples"] == 100
    assert s["nll"] <= -s["elbo"] + 1e-6
    assert s["bits_per_dim"] == pytest.approx(s["nll"] / (64 * np.log(2)))
    import json

    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["test-k100-n20"]["nll"] == pytest.approx(s["nll"])
