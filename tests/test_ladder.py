"""The ladder VAE against independent computations: the precision-weighted merge against the
normalized product of two Gaussians, log q of the posterior's own draws, per-layer KLs (summing to
the total, the top one against its closed form), batch statistics moved once per step, and a
linear-Gaussian ladder whose exact log p(x) the k = 5000 estimate must match."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.stats import multivariate_normal, norm

from conftest import synthetic_splits, tiny_config
from vaekit.core import metrics as metrics_lib
from vaekit.config import ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.core.distributions import DiagonalGaussian
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.models.ladder import LadderConfig, LadderVAE, precision_weighted


def _small(**model):
    splits = synthetic_splits(n=40)
    options = {"kind": "ladder", "lower_dims": [5, 3], "latent_dim": 2, "hidden": [16, 12, 8]} | model
    return build_model(tiny_config(model=options), splits.spec, rngs=nnx.Rngs(params=0)), splits


def _batch(splits, n=8):
    return {k: jnp.asarray(v[:n]) for k, v in splits.val.items()}


def test_merge_is_the_normalized_product_of_the_two_gaussians():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=(2, 3, 4))
    s1, s2 = rng.uniform(0.2, 2.0, size=(2, 3, 4))
    merged = precision_weighted(DiagonalGaussian(jnp.asarray(m1), jnp.asarray(s1)),
                                DiagonalGaussian(jnp.asarray(m2), jnp.asarray(s2)))
    # N(z; m1, s1^2) N(z; m2, s2^2) = N(m1; m2, s1^2 + s2^2) N(z; m, s^2): divide out the constant.
    for z in rng.normal(size=(5, 3, 4)) * 2:
        product = norm.logpdf(z, m1, s1) + norm.logpdf(z, m2, s2) - norm.logpdf(m1, m2, np.sqrt(s1**2 + s2**2))
        np.testing.assert_allclose(np.asarray(merged.log_prob(jnp.asarray(z))), product.sum(-1), rtol=1e-5, atol=1e-5)
    # And it integrates to one: its log-density on a fine 1-D grid sums to 1.
    grid = np.linspace(-12, 12, 20001)
    one = DiagonalGaussian(merged.mean[0, :1], merged.scale[0, :1])
    dens = np.exp(np.asarray(one.log_prob(jnp.asarray(grid[:, None], jnp.float32)), np.float64))
    assert np.sum(dens) * (grid[1] - grid[0]) == pytest.approx(1.0, abs=1e-4)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_log_prob_of_the_posterior_draws_is_the_density_they_came_with(mode):
    model, splits = _small()
    getattr(model, mode)()
    x = _batch(splits)["x"]

    @nnx.jit  # one program instead of op by op
    def densities(model):
        q = model.encode(x)
        z, log_q = q.sample_and_log_prob(jax.random.PRNGKey(0), (7,))
        # Independently: the top layer is the bottom-up Gaussian alone, each lower one the merge
        # with the prior's conditional at the draw above it.
        z1, z2, z3 = z[..., :5], z[..., 5:8], z[..., 8:]
        top = q.up[2].log_prob(z3)
        mid = precision_weighted(q.up[1], model.prior.conditional(1, z3)).log_prob(z2)
        low = precision_weighted(q.up[0], model.prior.conditional(0, z2)).log_prob(z1)
        return z, log_q, q.log_prob(z), top + mid + low

    z, log_q, score, by_layer = densities(model)
    assert z.shape == (7, 8, 5 + 3 + 2) and log_q.shape == (7, 8)
    np.testing.assert_allclose(np.asarray(score), np.asarray(log_q), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(by_layer), np.asarray(log_q), rtol=1e-5, atol=1e-4)


def test_layer_kls_sum_to_the_kl_and_the_top_one_is_its_closed_form():
    model, splits = _small()
    model.eval()
    batch = _batch(splits)
    _, m = nnx.jit(lambda model: model.loss(batch, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0)))(model)
    m = metrics_lib.values(m)
    layers = [float(m[f"kl/z{i}"]) for i in (1, 2, 3)]
    assert sum(layers) == pytest.approx(float(m["kl"]), rel=1e-4, abs=1e-4)
    assert list(model.latent_layers) == ["z1", "z2", "z3"]
    for name, (a, b) in model.latent_layers.items():  # each layer's dimensions sum to its KL
        assert float(np.sum(m["kl_per_dim"][a:b])) == pytest.approx(float(m[f"kl/{name}"]), rel=1e-4, abs=1e-5)
    # With many draws, kl/z3 = E_q[log q(z3|x) - log N(z3; 0, I)] is KL(q(z3|x) || N(0, I)).
    @nnx.jit
    def draws(model):
        q = model.encode(batch["x"])
        z, log_qz = q.sample_and_log_prob(jax.random.PRNGKey(1), (4000,))
        log_q, log_p = q.layer_log_probs(z)
        return log_q[2] - log_p[2], q.up[2].kl(), sum(log_q), log_qz, sum(log_p), model.prior.log_prob(z)

    per_draw, closed, sum_q, log_qz, sum_p, log_pz = map(np.asarray, draws(model))  # per_draw: (4000, B)
    stderr = per_draw.std(0) / np.sqrt(4000)
    assert np.all(np.abs(per_draw.mean(0) - closed) < 4 * stderr + 1e-4), (per_draw.mean(0), closed)
    np.testing.assert_allclose(sum_q, log_qz, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(sum_p, log_pz, rtol=1e-5, atol=1e-4)


def test_a_training_loss_moves_every_running_average_once():
    """The top-down nets run for the posterior's draw and again for the prior's score and the
    per-layer KLs; only the draw may move their batch statistics (one momentum step per loss)."""
    a, splits = _small()
    b, _ = _small()
    fresh, _ = _small()
    batch = _batch(splits)
    a.train(), b.train()
    a.loss(batch, rngs=nnx.Rngs(sample=3), step=jnp.asarray(0))
    # The same one pass by hand: the bottom-up, the posterior's draw with the loss's key, the decoder.
    q = b.encode(batch["x"])
    z, _ = q.sample_and_log_prob(nnx.Rngs(sample=3).sample(), (1,))
    b.decode(z)
    stats_a, stats_b = nnx.state(a, nnx.BatchStat), nnx.state(b, nnx.BatchStat)
    moved = [float(jnp.max(jnp.abs(x - y))) for x, y in zip(jax.tree.leaves(stats_a),
                                                              jax.tree.leaves(nnx.state(fresh, nnx.BatchStat)))]
    assert min(moved) > 1e-4  # every layer's statistics moved
    for x, y in zip(jax.tree.leaves(stats_a), jax.tree.leaves(stats_b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def test_samples_follow_the_top_down_prior():
    model, _ = _small()
    model.eval()
    z = model.prior.sample(jax.random.PRNGKey(0), (3000,))
    assert z.shape == (3000, 10)
    top = np.asarray(z[:, 8:])
    np.testing.assert_allclose(top.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(top.std(0), 1.0, atol=0.1)
    # z2 given z3 has the conditional's spread: the standardized residuals are N(0, 1).
    p = model.prior.conditional(1, z[:, 8:])
    r = np.asarray((z[:, 5:8] - p.mean) / p.scale)
    np.testing.assert_allclose(r.mean(0), 0.0, atol=0.1)
    np.testing.assert_allclose(r.std(0), 1.0, atol=0.1)
    cold = model.prior.sample(jax.random.PRNGKey(0), (3000,), temperature=0.0)
    np.testing.assert_allclose(np.asarray(cold[:, 8:]), 0.0)


def test_linear_gaussian_ladder_nll_matches_the_closed_form():
    """Three linear-Gaussian layers (no hidden blocks, no batch norm): log p(x) is Gaussian in
    closed form, and the k = 5000 estimate through `log_weights` must match it within 0.05 nats;
    the same estimate with a shifted decoder must not."""
    from vaekit.evaluate.likelihood import log_likelihood

    dx, dims, sigma = 4, (2, 2, 1), 0.5
    cfg = LadderConfig(lower_dims=dims[:-1], latent_dim=dims[-1], mlp_layers=0, batch_norm=False,
                       likelihood="gaussian", sigma=sigma, posterior_scale="logvar")
    model = LadderVAE(cfg, ObjectiveConfig(), DataSpec("vectors", (dx,)), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    # p(z_i | z_{i+1}) = N(z_{i+1} A_i + a_i, s_i^2 I) for i = 0, 1; p(x | z_1) = N(z_1 B + b, sigma^2 I).
    A = [rng.normal(size=(dims[i + 1], dims[i])) for i in range(2)]
    a = [rng.normal(size=dims[i]) * 0.3 for i in range(2)]
    s = [0.7, 0.8]
    B, b = rng.normal(size=(dims[0], dx)), rng.normal(size=dx) * 0.3

    def set_linear(layer, kernel, bias):
        layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)

    for i in range(2):
        set_linear(model.prior.heads[i], np.concatenate([A[i], np.zeros_like(A[i])], 1),
                   np.concatenate([a[i], np.full(dims[i], np.log(s[i] ** 2))]))
    set_linear(model.decoder_out, B, b)
    # x given layer i: x = z_i M_i + c_i + noise with covariance S_i (composed down the chain).
    M, c, S = [B], [b], [sigma**2 * np.eye(dx)]
    for i in range(2):
        M.append(A[i] @ M[i])
        c.append(a[i] @ M[i] + c[i])
        S.append(s[i] ** 2 * M[i].T @ M[i] + S[i])
    # Bottom-up heads (each reads x): the Gaussian in z_i that p(x | z_i) is proportional to, its
    # variance inflated by 1.3 and made diagonal; at the top the exact posterior (z_3 is 1-D).
    for i in range(3):
        prec = M[i] @ np.linalg.solve(S[i], M[i].T) + (np.eye(dims[i]) if i == 2 else 0.0)
        gain = np.linalg.solve(S[i], M[i].T) @ np.linalg.inv(prec)  # (dx, d_i): mean = (x - c_i) gain
        var = np.diag(np.linalg.inv(prec)) * (1.0 if i == 2 else 1.3)
        set_linear(model.up_heads[i], np.concatenate([gain, np.zeros((dx, dims[i]))], 1),
                   np.concatenate([-c[i] @ gain, np.log(var)]))
    mean_x, cov = c[2], S[2] + M[2].T @ M[2]  # z_3 ~ N(0, I)
    x = rng.multivariate_normal(mean_x, cov, size=6).astype(np.float32)
    exact = multivariate_normal(mean_x, cov).logpdf(x)
    est = log_likelihood(model, {"x": x}, samples=5000, chunk=500, batch_size=6)["log_px"]
    np.testing.assert_allclose(est, exact, atol=0.05)
    set_linear(model.decoder_out, B, b + 0.3)
    shifted = log_likelihood(model, {"x": x}, samples=5000, chunk=500, batch_size=6)["log_px"]
    assert np.max(np.abs(shifted - exact)) > 0.2


def test_bad_ladder_configs_say_which_key():
    with pytest.raises(VaekitError, match="model.hidden must give one width per stochastic layer"):
        tiny_config(model={"kind": "ladder", "hidden": [8, 8]})
    with pytest.raises(VaekitError, match="model.net must be mlp"):
        tiny_config(model={"kind": "ladder", "net": "conv"})
    with pytest.raises(VaekitError, match="'model.prior' belongs to model.kind vae / cvae / factorvae, not 'ladder'"):
        tiny_config(model={"kind": "ladder", "prior": "vamp"})
    with pytest.raises(VaekitError, match="model.lower_dims sizes must be positive"):
        tiny_config(model={"kind": "ladder", "lower_dims": [4, 0]})
    with pytest.raises(VaekitError, match="belongs to model.kind ladder"):
        tiny_config(model={"kind": "vae", "lower_dims": [4]})
    # Any depth: one stochastic layer (no lower layers) is a plain VAE with the ladder's nets.
    cfg = tiny_config(model={"kind": "ladder", "lower_dims": []})
    model = build_model(cfg, synthetic_splits(n=40).spec, rngs=nnx.Rngs(params=0))
    assert model.latent_layers == {"z1": (0, 4)}
