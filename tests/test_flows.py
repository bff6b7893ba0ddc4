"""Flow posteriors and the VampPrior against independent computations: log-determinants against
slogdet of the autodiff Jacobian, the IAF's triangular structure, the VampPrior against numpy."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp
from scipy.stats import norm

from vaekit.core.flows import IAF, IAFStep, planar_step, planar_transform
from vaekit.core.priors import VampPrior


def _slogdet_jacobian(f, z):
    """log |det df/dz| per example for f: (D,) -> (D,), by jax.jacfwd."""
    return jnp.stack([jnp.linalg.slogdet(jax.jacfwd(f)(zi))[1] for zi in z])


def test_planar_log_det_matches_the_jacobian_and_stays_invertible():
    rng = np.random.default_rng(0)
    d = 5
    z = jnp.asarray(rng.normal(size=(4, d)), jnp.float32)
    u = jnp.asarray(rng.normal(size=(4, 3, d)) * 2, jnp.float32)  # large u: the constraint must act
    w = jnp.asarray(rng.normal(size=(4, 3, d)), jnp.float32)
    b = jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)
    out, log_det = jax.jit(lambda u, w, b, z: planar_transform(u, w, b)(z))(u, w, b, z)
    # Each jitted function below compiles once and runs for every example, not op by op.
    jacobian_log_det = jax.jit(lambda u, w, b, z: jnp.linalg.slogdet(
        jax.jacfwd(lambda zi: planar_transform(u, w, b)(zi)[0])(z))[1])
    for i in range(4):
        expected = jacobian_log_det(u[i], w[i], b[i], z[i])
        assert float(log_det[i]) == pytest.approx(float(expected), abs=1e-4)
    # The projected u_hat keeps w . u_hat >= -1, so 1 + u_hat . psi > 0 for every z.
    step = jax.jit(planar_step)
    for zz in (z * 10, -z * 10, jnp.zeros_like(z)):
        _, ld = step(zz, u[:, 0], w[:, 0], b[:, 0])
        assert np.all(np.isfinite(np.asarray(ld)))


@pytest.mark.parametrize("reverse", [False, True])
def test_iaf_step_is_autoregressive_with_the_right_log_det(reverse):
    d, hidden = 6, 12
    step = IAFStep(d, hidden, reverse, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(step)
    # Move every weight so that the near-identity initialization hides no dependency.
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x if x.ndim == 2 and set(np.unique(np.asarray(x))) <= {0.0, 1.0} else x + 0.5 * jax.random.normal(k, x.shape)
              for x, k in zip(leaves, keys)]
    step = nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))
    h = jax.random.normal(jax.random.PRNGKey(2), (hidden,))
    z = jax.random.normal(jax.random.PRNGKey(3), (d,))
    # jac[i, j] = d out_i / d z_j, in one program with the step's own log-determinant
    jac, log_det = nnx.jit(lambda step: (jax.jacfwd(lambda zz: step(zz, h)[0])(z), step(z, h)[1]))(step)
    jac = np.asarray(jac)
    order = np.arange(d, 0, -1) if reverse else np.arange(1, d + 1)
    later = order[None, :] > order[:, None]  # z_j comes after out_i in the MADE order
    assert np.all(jac[later] == 0.0)
    assert np.any(np.abs(jac[~later & ~np.eye(d, dtype=bool)]) > 1e-6)  # and it does depend on earlier ones
    assert float(log_det) == pytest.approx(float(np.linalg.slogdet(jac)[1]), abs=1e-4)


def test_iaf_chain_log_det_matches_the_jacobian():
    d, hidden = 4, 8
    flow = IAF(d, hidden, 3, rngs=nnx.Rngs(0))
    h = jax.random.normal(jax.random.PRNGKey(0), (2, hidden))
    z = jax.random.normal(jax.random.PRNGKey(1), (2, d))
    @nnx.jit  # one program instead of op by op
    def log_dets(flow):
        each = [jnp.linalg.slogdet(jax.jacfwd(lambda zi, i=i: flow(zi, h[i])[0])(z[i]))[1] for i in range(2)]
        return flow(z, h)[1], jnp.stack(each)

    log_det, expected = log_dets(flow)
    for i in range(2):
        assert float(log_det[i]) == pytest.approx(float(expected[i]), abs=1e-4)


def test_vamp_prior_log_prob_is_the_numpy_mixture():
    d, k = 3, 5
    encoder = nnx.Linear(8, 2 * d, rngs=nnx.Rngs(0))  # any encoder: pseudo-inputs (K, 8) -> (K, 2D)
    prior = VampPrior(encoder, (8,), k, d, "softplus", init_mean=0.5, init_std=0.3, rngs=nnx.Rngs(1))
    c = prior.components()
    mean, scale = np.asarray(c.mean, np.float64), np.asarray(c.scale, np.float64)
    z = np.random.default_rng(0).normal(size=(2, 4, d))
    per_comp = norm.logpdf(z[..., None, :], mean, scale).sum(-1)  # (2, 4, K)
    expected = logsumexp(per_comp, axis=-1) - np.log(k)
    np.testing.assert_allclose(np.asarray(prior.log_prob(jnp.asarray(z, jnp.float32))), expected, rtol=1e-4, atol=1e-4)
    draws = prior.sample(jax.random.PRNGKey(0), (3000,))
    assert draws.shape == (3000, d)
    # The draws follow the mixture: their mean is the components' average mean.
    np.testing.assert_allclose(np.asarray(draws).mean(0), mean.mean(0), atol=4 * scale.max() / np.sqrt(3000) + 0.05)


def test_two_layer_linear_gaussian_nll_matches_the_closed_form():
    """A linear-Gaussian two-layer model: log p(x) is Gaussian in closed form, and the k = 5000
    importance-sampled estimate from `log_weights` must match it within 0.05 nats."""
    from scipy.stats import multivariate_normal

    from vaekit.config import ObjectiveConfig
    from vaekit.data.spec import DataSpec
    from vaekit.models.hierarchical import HVAE, HVAEConfig

    dx, d1, d2, sigma = 4, 2, 1, 0.5
    cfg = HVAEConfig(hidden=(), hidden2=(), z1_dim=d1, latent_dim=d2, likelihood="gaussian", sigma=sigma,
                     posterior_scale="logvar")
    model = HVAE(cfg, ObjectiveConfig(), DataSpec("vectors", (dx,)), rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    A, a = rng.normal(size=(d2, d1)), rng.normal(size=d1) * 0.3  # p(z1|z2) = N(z2 A + a, s1^2)
    s1 = 0.7
    B, b = rng.normal(size=(d1, dx)), rng.normal(size=dx) * 0.3  # p(x|z1) = N(z1 B + b, sigma^2)
    # Exact marginal: x = (z2 A + a + s1 e1) B + b + sigma e.
    cov = B.T @ (A.T @ A + s1**2 * np.eye(d1)) @ B + sigma**2 * np.eye(dx)
    mean_x = a @ B + b

    def set_linear(layer, kernel, bias):
        layer.kernel[...] = jnp.asarray(kernel, jnp.float32)
        layer.bias[...] = jnp.asarray(bias, jnp.float32)

    # The generative nets: raw scale outputs are log-variances ("logvar"), constant.
    set_linear(model.prior.net.layers[0], np.concatenate([A, np.zeros((d2, d1))], 1),
               np.concatenate([a, np.full(d1, np.log(s1**2))]))
    set_linear(model.decoder.net.layers[0], B, b)
    # The inference nets: the exact q(z2|z1) (z2 is 1-D, so p(z2|z1) is one Gaussian) and a
    # diagonal, slightly inflated version of the exact p(z1|x).
    prec2 = 1.0 + (A @ A.T)[0, 0] / s1**2
    k2 = (A / s1**2 / prec2).T  # mean of z2|z1 = (z1 - a) A^T / s1^2 / prec2
    set_linear(model.encoder2.layers[0], np.concatenate([k2, np.zeros((d1, d2))], 1),
               np.concatenate([-a @ k2, np.full(d2, np.log(1 / prec2))]))
    cov1 = A.T @ A + s1**2 * np.eye(d1)  # prior covariance of z1
    post_cov1 = np.linalg.inv(np.linalg.inv(cov1) + B @ B.T / sigma**2)
    gain = post_cov1 @ B / sigma**2  # E[z1|x] = a + gain (x - mean_x)... written as x K + c
    set_linear(model.encoder.net.layers[0], np.concatenate([gain.T, np.zeros((dx, d1))], 1),
               np.concatenate([a - mean_x @ gain.T, np.log(1.3 * np.diag(post_cov1))]))
    x = rng.multivariate_normal(mean_x, cov, size=6).astype(np.float32)
    exact = multivariate_normal(mean_x, cov).logpdf(x)
    from vaekit.evaluate.likelihood import log_likelihood

    est = log_likelihood(model, {"x": x}, samples=5000, chunk=500, batch_size=6)["log_px"]
    np.testing.assert_allclose(est, exact, atol=0.05)


def test_two_layer_model_reports_kl_and_active_units_per_layer():
    from conftest import synthetic_splits, tiny_config
    from vaekit.core import metrics as metrics_lib
    from vaekit.training.loop import Trainer

    splits = synthetic_splits(n=80)
    cfg = tiny_config(model={"kind": "hvae", "z1_dim": 4, "hidden2": [8], "latent_dim": 3})
    trainer = Trainer(cfg, splits)
    batch = {k: jnp.asarray(v[:6]) for k, v in splits.val.items()}
    _, m = trainer.model.loss(batch, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))
    m = metrics_lib.values(m)
    assert float(m["kl/z1"]) + float(m["kl/z2"]) == pytest.approx(float(m["kl"]), rel=1e-4, abs=1e-4)
    out = trainer.validate()
    assert out["val/active_units/z1"] + out["val/active_units/z2"] == out["val/active_units"]
    assert "val/kl/z1" in out and "val/kl/z2" in out
    # Per dimension: z1 (4) then z2 (3); each layer's dimensions sum to its KL.
    kl_d = np.asarray(m["kl_per_dim"])
    assert kl_d.shape == (7,)
    assert kl_d[:4].sum() == pytest.approx(float(m["kl/z1"]), rel=1e-4, abs=1e-5)
    assert kl_d[4:].sum() == pytest.approx(float(m["kl/z2"]), rel=1e-4, abs=1e-5)
    assert len(out["val/kl_per_dim"]) == 7


def test_two_layer_kl_per_dimension_against_independent_monte_carlo():
    """kl_per_dim of the two-layer model, recomputed in float64 numpy from the same draws: the
    Gaussian log-densities of each dimension of q(z1|x), p(z1|z2), q(z2|z1) and N(0, 1)."""
    from conftest import synthetic_splits, tiny_config
    from vaekit.core import metrics as metrics_lib
    from vaekit.models import build_model

    splits = synthetic_splits(n=40)
    cfg = tiny_config(model={"kind": "hvae", "z1_dim": 4, "hidden2": [8], "latent_dim": 3})
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))
    model.eval()
    x = jnp.asarray(splits.val["x"][:6])
    q = model.encode(x)
    z, log_qz = q.sample_and_log_prob(jax.random.PRNGKey(4), (3000,))
    got = np.asarray(metrics_lib.values(model.layer_kls(q, z, log_qz))["kl_per_dim"])

    def log_n(v, mean, scale):
        v, mean, scale = (np.asarray(a, np.float64) for a in (v, mean, scale))
        return norm.logpdf(v, mean, scale)

    z1, z2 = z[..., :4], z[..., 4:]
    p1, q2 = model.prior.conditional(z2), q.q2_of(z1)
    kl1 = (log_n(z1, q.q1.mean, q.q1.scale) - log_n(z1, p1.mean, p1.scale)).mean(0)
    kl2 = (log_n(z2, q2.mean, q2.scale) - norm.logpdf(np.asarray(z2, np.float64))).mean(0)
    want = np.concatenate([kl1, kl2], -1).mean(0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert np.all(want[:4] > -0.05)  # a KL estimate from 3,000 draws: near non-negative


def test_two_layer_run_draws_its_layers_picture(tmp_path, monkeypatch):
    from conftest import synthetic_splits, tiny_config
    from vaekit.runs.train import train

    splits = synthetic_splits(n=80)
    monkeypatch.setattr("vaekit.data.load_data", lambda *a, **k: splits)
    cfg = tiny_config(model={"kind": "hvae", "z1_dim": 4, "hidden2": [8], "latent_dim": 3},
                      train={"epochs": 2, "pictures": True})
    run = train(cfg, runs_dir=tmp_path, name="h", progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(len(r["val/kl_per_dim"]) == 7 for r in records)
    assert (run / "layers.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _hvae_bn(n=80):
    from conftest import synthetic_splits, tiny_config
    from vaekit.models import build_model

    splits = synthetic_splits(n=n)
    cfg = tiny_config(model={"kind": "hvae", "z1_dim": 4, "hidden2": [8, 6], "latent_dim": 3, "batch_norm": True,
                             "activation": "leaky_relu"})
    return (lambda: build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))), splits


def test_batch_normalized_two_layer_model_moves_each_running_average_once_per_loss():
    """q(z2|z1) runs for the draw (and would for a score), p(z1|z2) for log p(z), the Monte Carlo KL
    and the per-layer KL: one loss must move every running average exactly as one pass by hand
    (encode, draw, decode, the per-layer KL) does, and eval mode must use the running averages."""
    from vaekit.nets.dense import BatchNorm

    build, splits = _hvae_bn()
    a, b, fresh = build(), build(), build()
    hidden = a.model_cfg.hidden
    # every hidden layer of the four nets: q(z1|x) and p(x|z1) over model.hidden, the two between z1 and z2
    assert sum(isinstance(m, BatchNorm) for _, m in nnx.iter_modules(a)) == 2 * len(hidden) + 2 * 2
    batch = {k: jnp.asarray(v[:8]) for k, v in splits.val.items()}
    a.train(), b.train()
    # Each computation in one nnx.jit (its running-average updates come back to the model).
    nnx.jit(lambda m: m.loss(batch, rngs=nnx.Rngs(sample=3), step=jnp.asarray(0)))(a)

    @nnx.jit
    def by_hand(m):
        q = m.encode(batch["x"])
        z, log_q = q.sample_and_log_prob(nnx.Rngs(sample=3).sample(), (1,))
        m.decode(z)
        m.layer_kls(q, z, log_q)

    by_hand(b)
    leaves = lambda m: jax.tree.leaves(nnx.state(m, nnx.BatchStat))  # noqa: E731
    moved = [float(jnp.max(jnp.abs(x - y))) for x, y in zip(leaves(a), leaves(fresh))]
    assert min(moved) > 1e-4  # every layer's statistics moved
    for x, y in zip(leaves(a), leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)
    # Eval mode: one example's posterior does not depend on the rest of the batch.
    a.eval()
    mean = nnx.jit(lambda m, x: m.encode(x).q1.mean)
    np.testing.assert_allclose(np.asarray(mean(a, batch["x"][:1])), np.asarray(mean(a, batch["x"])[:1]),
                               rtol=1e-5, atol=1e-6)

    @nnx.jit
    def scores(m):
        q = m.encode(batch["x"])
        z, log_q = q.sample_and_log_prob(jax.random.PRNGKey(5), (4,))
        return q.log_prob(z), log_q

    # The score of the posterior's draws is the density they came with (train and eval mode).
    for mode in ("train", "eval"):
        getattr(a, mode)()
        np.testing.assert_allclose(*map(np.asarray, scores(a)), rtol=1e-5, atol=1e-4)


def test_batch_normalized_two_layer_model_trains_and_scores(tmp_path):
    from conftest import synthetic_splits, tiny_config
    from vaekit.errors import VaekitError
    from vaekit.training.loop import Trainer

    build, splits = _hvae_bn()
    cfg = tiny_config(model={"kind": "hvae", "z1_dim": 4, "hidden2": [8], "latent_dim": 3, "batch_norm": True},
                      train={"epochs": 3})
    trainer = Trainer(cfg, splits)
    first = trainer.validate()["val/elbo"]
    for _ in range(3):
        trainer.fit_epoch()
    out = trainer.validate()
    assert np.isfinite(out["val/elbo"]) and out["val/elbo"] > first
    assert out["val/active_units/z1"] + out["val/active_units/z2"] == out["val/active_units"]
    with pytest.raises(VaekitError, match="model.net must be mlp"):
        tiny_config(model={"kind": "hvae", "net": "conv", "batch_norm": True})


def test_planar_steps_start_in_the_linear_range_of_tanh(monkeypatch):
    # The encoder's planar outputs start at PLANAR_INIT_SCALE of the default scale (bias 0), so
    # each step's tanh argument w.z + b starts small: near-linear steps, not saturated folds.
    from conftest import tiny_config

    from vaekit.data.spec import DataSpec
    from vaekit.core.flows import planar_params
    from vaekit.models import build_model, vae
    from vaekit.nets import output_layer

    cfg = tiny_config(model={"posterior": "planar", "flow_steps": 8, "latent_dim": 4})
    spec, d = DataSpec("images", (8, 8, 1), 2), 4
    x = jax.random.uniform(jax.random.PRNGKey(1), (64, 8, 8, 1))

    def first_arguments(scale):
        monkeypatch.setattr(vae, "PLANAR_INIT_SCALE", scale)
        model = build_model(cfg, spec, rngs=nnx.Rngs(0))
        raw = model.encoder(x)
        u, w, b = planar_params(raw[:, 2 * d :], d, 8)
        z0 = model.encode(x).base.sample_and_log_prob(jax.random.PRNGKey(2))[0]
        return output_layer(model.encoder), jnp.abs(jnp.sum(w[:, 0] * z0, axis=-1) + b[:, 0])

    scale = vae.PLANAR_INIT_SCALE
    head, small = first_arguments(scale)
    _, default = first_arguments(1.0)
    np.testing.assert_array_equal(np.asarray(head.bias[...][2 * d :]), 0.0)
    ratio = np.std(np.asarray(head.kernel[...][:, 2 * d :])) / np.std(np.asarray(head.kernel[...][:, : 2 * d]))
    assert 0.05 < ratio < 0.2  # a tenth of the base head's spread (both drawn at the default scale)
    np.testing.assert_allclose(float(jnp.mean(small)) / float(jnp.mean(default)), scale, rtol=0.3)
    assert float(jnp.max(jnp.abs(jnp.tanh(small) - small))) < 0.01  # tanh is linear there to 1%
