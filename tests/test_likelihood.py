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
    a = log_likelihood(model, {"x": x}, samples=200, chunk=50, batch_size=10)
    b = log_likelihood(model, {"x": x}, samples=200, chunk=50, batch_size=3)  # tail calls mix examples and rounds
    c = log_likelihood(model, {"x": x[4:]}, samples=200, chunk=50, batch_size=10)
    for key in ("log_px", "elbo", "iwae_5", "iwae_50", "mc_error"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, err_msg=key)  # an example's draws are its own
    assert not np.allclose(a["log_px"][4:], c["log_px"])  # keyed by position in the data: another subset, other draws
    np.testing.assert_array_equal(a["log_px"], log_likelihood(model, {"x": x}, samples=200, chunk=50, batch_size=10)["log_px"])


def _log_mean_exp(a, axis=-1):
    from scipy.special import logsumexp

    return logsumexp(a, axis=axis) - np.log(a.shape[axis])


def test_chunked_estimate_equals_all_draws_at_once(ppca):
    """The chunked, slot-scheduled estimate against the same draws taken in one go and reduced in float64."""
    w, b, s, x, _ = ppca
    model = PPCA(w, b, s, exact=False, mean_shift=0.3, scale_factor=1.5)
    x = x[:7]
    est = log_likelihood(model, {"x": x}, samples=120, chunk=40, batch_size=4, seed=5)
    key = jax.random.PRNGKey(5)
    lw = np.stack([np.concatenate([np.asarray(model.log_weights({"x": x[i : i + 1]}, 40, rngs=nnx.Rngs(
        sample=jax.random.fold_in(jax.random.fold_in(key, i), r)))[0], np.float64) for r in range(3)]) for i in range(7)])
    np.testing.assert_allclose(est["log_px"], _log_mean_exp(lw), rtol=1e-6)
    np.testing.assert_allclose(est["elbo"], lw.mean(axis=1), rtol=1e-6)
    iwae5 = _log_mean_exp(lw.reshape(7, 24, 5)).mean(axis=1)  # every disjoint group of 5 of the 120 draws
    np.testing.assert_allclose(est["iwae_5"], iwae5, rtol=1e-6)
    np.testing.assert_allclose(est["iwae_1"], est["elbo"], rtol=1e-9)  # the 1-sample bound is the ELBO estimate
    np.testing.assert_allclose(est["log_px_half"], _log_mean_exp(lw[:, :40]), rtol=1e-6)  # the first half of 3 chunks
    w_ = np.exp(lw - lw.max(axis=1, keepdims=True))  # delta method: sd(w) / (sqrt(n) mean(w))
    np.testing.assert_allclose(est["mc_error"], w_.std(axis=1, ddof=1) / np.sqrt(120) / w_.mean(axis=1), rtol=1e-5)
    np.testing.assert_array_equal(est["draws"], 120)


def test_adaptive_with_zero_error_is_the_fixed_k_estimate(ppca):
    w, b, s, x, _ = ppca
    model = PPCA(w, b, s, exact=False, mean_shift=0.3, scale_factor=1.5)
    fixed = log_likelihood(model, {"x": x}, samples=300, chunk=50, batch_size=16)
    adaptive = log_likelihood(model, {"x": x}, samples=300, chunk=50, batch_size=16, mc_error=1e-9, min_samples=50)
    np.testing.assert_array_equal(adaptive["draws"], 300)  # E -> 0: every example draws the cap
    np.testing.assert_array_equal(adaptive["pilot_draws"], 50)  # after a pilot of other draws that sized it
    np.testing.assert_allclose(adaptive["log_px"], fixed["log_px"], rtol=1e-12)  # the estimate: the fixed-k draws
    np.testing.assert_array_equal(fixed["pilot_draws"], 0)


def test_adaptive_estimate_is_within_its_stated_error_of_the_exact_log_likelihood(ppca):
    w, b, s, x, exact = ppca
    model = PPCA(w, b, s, exact=False, mean_shift=0.3, scale_factor=1.5)
    target = 0.02
    est = log_likelihood(model, {"x": x}, samples=20_000, chunk=100, batch_size=40, mc_error=target)
    assert np.mean(est["mc_error"] < 1.2 * target) > 0.9  # the pilot sized the draws for the target
    assert np.all(est["draws"] < 20_000) and np.all(est["draws"] >= 100)
    assert est["draws"].min() < est["draws"].max()  # examples differ in how many draws they need
    z = (est["log_px"] - exact) / est["mc_error"]
    assert np.mean(np.abs(z) < 2) > 0.8  # per example, within two stated errors for most of the 40
    mean_error = np.sqrt(np.sum(est["mc_error"] ** 2)) / len(x)
    assert abs(est["log_px"].mean() - exact.mean()) < 3 * mean_error


def test_stated_error_matches_the_spread_over_independent_draws(ppca):
    """Copies of one example get independent draws: their spread is the Monte Carlo error the estimator states."""
    w, b, s, x, exact = ppca
    model = PPCA(w, b, s, exact=False, mean_shift=0.6, scale_factor=1.8)
    est = log_likelihood(model, {"x": np.repeat(x[:1], 1000, axis=0)}, samples=40, chunk=20, batch_size=200)
    assert est["log_px"].std() == pytest.approx(np.median(est["mc_error"]), rel=0.2)
    # log p-hat is low on average (log is concave), the more so with fewer draws: half the draws, lower still
    low, lower = exact[0] - est["log_px"].mean(), exact[0] - est["log_px_half"].mean()
    assert 0.03 < low < lower


def test_an_estimate_never_uses_fewer_than_min_samples_draws(ppca):
    w, b, s, x, _ = ppca
    exact_q = PPCA(w, b, s, exact=True)  # every weight equals p(x) (to float32 rounding): no Monte Carlo error
    est = log_likelihood(exact_q, {"x": x[:8]}, samples=1000, chunk=10, batch_size=4, mc_error=1e-3, min_samples=25)
    np.testing.assert_array_equal(est["draws"], 30)  # 25 rounded up to whole chunks, never fewer
    loose = PPCA(w, b, s, exact=False, mean_shift=0.3, scale_factor=1.5)
    est = log_likelihood(loose, {"x": x[:9]}, samples=1000, chunk=10, batch_size=4, mc_error=1e9, min_samples=25)
    np.testing.assert_array_equal(est["draws"][:8], 30)
    assert est["draws"][8] >= 30  # the last example alone: idle slots compute its decided rounds sooner


def test_the_cost_is_said_once_before_the_wait(ppca, caplog):
    w, b, s, x, _ = ppca
    with caplog.at_level("INFO", logger="vaekit"):
        log_likelihood(PPCA(w, b, s, exact=True), {"x": x}, samples=100, chunk=10, batch_size=8)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("NLL: about")]
    assert len(lines) == 1 and "for 40 examples x 100 draws" in lines[0], lines


@pytest.mark.parametrize("kwargs, message", [({"mc_error": -0.1}, "--mc-error must be >= 0"),
                                             ({"min_samples": 0}, "--min-samples must be >= 1"),
                                             ({"chunk": 0}, "--chunk must be >= 1")])
def test_bad_settings_are_refused(ppca, kwargs, message):
    from vaekit.errors import VaekitError

    w, b, s, x, _ = ppca
    with pytest.raises(VaekitError, match=message):
        log_likelihood(PPCA(w, b, s, exact=True), {"x": x}, samples=10, **kwargs)


def test_evaluate_writes_json_through_the_run(tmp_path, monkeypatch):
    from vaekit.runs.train import train

    splits = synthetic_splits()
    monkeypatch.setattr("vaekit.data.load_data", lambda *a, **k: splits)
    run = train(tiny_config(train={"epochs": 1}), runs_dir=tmp_path, name="r", progress=False)
    s = evaluate(run, split="test", samples=100, limit=20, progress=False)
    assert s["examples"] == 20 and s["samples"] == 100 and s["draws_mean"] == 100 and s["mc_error_target"] == 0
    assert s["nll"] <= -s["elbo"] + 1e-6
    assert s["bits_per_dim"] == pytest.approx(s["nll"] / (64 * np.log(2)))
    import json

    saved = json.loads((run / "evaluation.json").read_text())
    assert saved["test-k100-n20"]["nll"] == pytest.approx(s["nll"])
    a = evaluate(run, split="test", samples=400, limit=20, chunk=50, mc_error=1e9, min_samples=50, progress=False)
    assert a["draws_mean"] == 50 and a["draws_max"] == 50 and a["mc_error_target"] == 1e9
    # the mean's Monte Carlo error is the examples' root-mean-square error over sqrt(n)
    assert a["mc_error_mean"] / np.sqrt(20) <= a["nll_mc_error"] <= a["mc_error_max"] / np.sqrt(20)
    saved = json.loads((run / "evaluation.json").read_text())
    assert set(saved) == {"test-k100-n20", "test-k400-n20-e1e+09"}
