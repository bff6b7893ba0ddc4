"""beta-TCVAE, FactorVAE and DIP-VAE (models/disentangle.py): the estimators against closed forms
and numpy, the FactorVAE permutation, and the discriminator's parameter group."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy.special import logsumexp
from scipy.stats import norm

from conftest import group_step_check, synthetic_splits, tiny_config
from vaekit.config import ObjectiveConfig
from vaekit.data import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import values
from vaekit.models import build_model
from vaekit.models.disentangle import (DIPVAEConfig, FactorVAEConfig, TCVAE, TCVAEConfig, dip_covariance,
                                       dip_penalties, log_importance_weights, permute_dims, tc_decomposition)
from vaekit.training.loop import Trainer
from vaekit.training.state import split_model

# --------------------------------------------------------------------------- beta-TCVAE estimators


def _gaussian_tc_setup():
    """A data set of N posterior means mu_n ~ N(0, A) with q(z|n) = N(mu_n, eps^2 I): the aggregate
    posterior is N(0, A + eps^2 I) up to the finite-N error, so MI, TC and dim-KL have closed forms."""
    a = np.array([[1.0, 0.8, 0.3], [0.8, 1.0, 0.5], [0.3, 0.5, 1.0]])
    eps, n = 0.5, 100_000
    rng = np.random.default_rng(0)
    mus = rng.multivariate_normal(np.zeros(3), a, size=n).astype(np.float32)
    c = a + eps**2 * np.eye(3)
    diag = np.diag(c)
    exact = {
        "tc": 0.5 * (np.sum(np.log(diag)) - np.linalg.slogdet(c)[1]),
        "mi": 0.5 * np.linalg.slogdet(c)[1] - 3 * np.log(eps),  # h(q(z)) - h(q(z|n))
        "dim_kl": np.sum(0.5 * (diag - 1.0 - np.log(diag))),
    }
    return mus, eps, exact, rng


@pytest.mark.parametrize("estimator", ["mws", "stratified"])
def test_tc_estimators_match_the_closed_form_of_a_correlated_gaussian(estimator):
    mus, eps, exact, rng = _gaussian_tc_setup()
    assert exact["tc"] > 0.3  # a clearly non-zero total correlation
    batch = 1000
    log_w = log_importance_weights(batch, len(mus), estimator)
    decompose = jax.jit(tc_decomposition)
    estimates = []
    for _ in range(20):  # 20 batches of 1,000: 20,000 draws
        mean = jnp.asarray(mus[rng.choice(len(mus), batch, replace=False)])
        scale = jnp.full(mean.shape, eps)
        z = mean + scale * jnp.asarray(rng.standard_normal(mean.shape), jnp.float32)
        terms = decompose(z, mean, scale, log_w)
        estimates.append({k: float(jnp.mean(v)) for k, v in terms.items()})
    for name in ("tc", "mi", "dim_kl"):
        got = np.mean([e[name] for e in estimates])
        assert abs(got - exact[name]) < 0.05, (estimator, name, got, exact[name])


def test_tc_decomposition_matches_numpy_and_telescopes_to_the_kl():
    rng = np.random.default_rng(1)
    b, d = 7, 3
    mean = rng.normal(size=(b, d))
    scale = rng.uniform(0.3, 1.5, size=(b, d))
    z = mean + scale * rng.normal(size=(b, d))
    for estimator, n in (("mws", None), ("stratified", 50)):
        w = np.asarray(jnp.exp(log_importance_weights(b, n, estimator)), np.float64)
        out = {k: np.asarray(v) for k, v in tc_decomposition(jnp.asarray(z, jnp.float32), jnp.asarray(mean, jnp.float32),
                                                               jnp.asarray(scale, jnp.float32), jnp.log(w)).items()}
        pair = norm.logpdf(z[:, None, :], mean[None], scale[None])  # (B, B, D) log q(z_i,d | x_j)
        cond = np.array([np.sum(norm.logpdf(z[i], mean[i], scale[i])) for i in range(b)])
        joint = np.array([np.log(np.sum(w[i] * np.exp(pair[i].sum(-1)))) for i in range(b)])
        dims = np.array([[np.log(np.sum(w[i] * np.exp(pair[i, :, k]))) for k in range(d)] for i in range(b)])
        prior = norm.logpdf(z).sum(-1)
        np.testing.assert_allclose(out["mi"], cond - joint, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["tc"], joint - dims.sum(-1), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["dim_kl"], dims.sum(-1) - prior, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(out["mi"] + out["tc"] + out["dim_kl"], cond - prior, rtol=1e-4, atol=1e-4)


def test_stratified_weights():
    b, n = 5, 40
    w = np.exp(np.asarray(log_importance_weights(b, n, "stratified"), np.float64))
    m = b - 1
    expected = np.full((b, b), 1 / m)
    for i in range(b):
        expected[i, (i + 1) % b] = (n - m) / (n * m)
        expected[i, i] = 1 / n
    np.testing.assert_allclose(w, expected, rtol=1e-6)
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(log_importance_weights(b, None, "mws"))), 1 / b, rtol=1e-6)
    # a batch larger than the data set counts as the data set: weights stay positive and sum to 1
    w_small = np.exp(np.asarray(log_importance_weights(8, 3, "stratified"), np.float64))
    assert np.all(w_small > 0) and np.allclose(w_small.sum(1), 1.0)
    np.testing.assert_array_equal(np.asarray(log_importance_weights(1, 10, "stratified")), [[0.0]])


def _model(kind, spec=None, objective=None, **options):
    cfg = tiny_config(model={"kind": kind, "hidden": (16,), "latent_dim": 3, **options})
    spec = spec or DataSpec("images", (8, 8, 1), 2, num_examples=500)
    return build_model(dataclasses.replace(cfg, objective=objective or cfg.objective), spec, rngs=nnx.Rngs(params=0))


def _loss_and_draw(model, x, seed):
    """The model's loss on x with `nnx.Rngs(sample=seed)`, and the loss's own draw rebuilt:
    z = mean + scale * eps with eps from the stream's first 'sample' key. One program:
    (loss, metrics, mean, scale, z, recon = -log p(x|z), the stream's second key)."""

    @nnx.jit
    def run(model):
        loss, metrics = model.loss({"x": x}, rngs=nnx.Rngs(sample=seed), step=jnp.asarray(0))
        rngs = nnx.Rngs(sample=seed)
        q = model.encode(x)
        z = (q.mean + q.scale * jax.random.normal(rngs.sample(), (1, *q.mean.shape)))[0]
        return loss, metrics, q.mean, q.scale, z, -model.decode(z).log_prob(x), rngs.sample()

    loss, metrics, *arrays, key = run(model)
    return (loss, metrics, *(np.asarray(a, np.float64) for a in arrays), key)


@pytest.mark.parametrize("estimator", ["mws", "stratified"])
def test_tcvae_loss_against_numpy(estimator):
    model = _model("tcvae", alpha=0.5, beta=6.0, gamma=2.0, estimator=estimator)
    x = jnp.asarray(synthetic_splits(n=40).val["x"][:10])
    loss, metrics, mean, scale, z, recon, _ = _loss_and_draw(model, x, 3)
    b = len(x)
    w = np.exp(np.asarray(log_importance_weights(b, 500, estimator), np.float64))
    pair = norm.logpdf(z[:, None, :], mean[None], scale[None])
    joint = logsumexp(pair.sum(-1), b=w, axis=1)
    dims = np.stack([logsumexp(pair[:, :, k], b=w, axis=1) for k in range(3)], -1)
    cond = norm.logpdf(z, mean, scale).sum(-1)
    mi, tc, dim_kl = cond - joint, joint - dims.sum(-1), dims.sum(-1) - norm.logpdf(z).sum(-1)
    expected = np.mean(recon + 0.5 * mi + 6.0 * tc + 2.0 * dim_kl)
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    v = values(metrics)
    for name, ref in (("mi", mi), ("tc", tc), ("dim_kl", dim_kl), ("recon", recon)):
        np.testing.assert_allclose(float(v[name]), np.mean(ref), rtol=1e-4, atol=1e-4)
    kl = 0.5 * (scale**2 + mean**2 - 1 - np.log(scale**2))
    np.testing.assert_allclose(float(v["elbo"]), np.mean(-recon - kl.sum(-1)), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(v["kl_per_dim"]), kl.mean(0), rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- DIP-VAE


@pytest.mark.parametrize("variant", ["i", "ii"])
def test_dip_covariance_against_numpy(variant):
    rng = np.random.default_rng(2)
    mean = rng.normal(size=(64, 4)) @ rng.normal(size=(4, 4))
    scale = rng.uniform(0.1, 2.0, size=(64, 4))
    cov = np.asarray(dip_covariance(jnp.asarray(mean), jnp.asarray(scale), variant), np.float64)
    expected = np.cov(mean, rowvar=False, bias=True)
    if variant == "ii":
        expected = expected + np.diag(np.mean(scale**2, axis=0))
    np.testing.assert_allclose(cov, expected, rtol=1e-5, atol=1e-6)
    off, diag = dip_penalties(jnp.asarray(expected))
    np.testing.assert_allclose(float(off), np.sum((expected - np.diag(np.diag(expected))) ** 2), rtol=1e-5)
    np.testing.assert_allclose(float(diag), np.sum((np.diag(expected) - 1) ** 2), rtol=1e-5)


@pytest.mark.parametrize("variant,lambda_d,weight", [("i", None, 30.0), ("ii", None, 3.0), ("i", 7.0, 7.0)])
def test_dipvae_loss_against_numpy(variant, lambda_d, weight):
    assert DIPVAEConfig(variant=variant, lambda_od=3.0, lambda_d=lambda_d).diagonal_weight == weight
    objective = ObjectiveConfig(beta=2.0)  # the ELBO part keeps the objective's beta
    model = _model("dipvae", objective=objective, variant=variant, lambda_od=3.0, lambda_d=lambda_d)
    x = jnp.asarray(synthetic_splits(n=40).val["x"][:10])
    loss, metrics, mean, scale, _, recon, _ = _loss_and_draw(model, x, 4)
    cov = np.cov(mean, rowvar=False, bias=True) + (np.diag(np.mean(scale**2, 0)) if variant == "ii" else 0)
    off = np.sum(cov**2) - np.sum(np.diag(cov) ** 2)
    diag = np.sum((np.diag(cov) - 1) ** 2)
    kl = np.sum(0.5 * (scale**2 + mean**2 - 1 - np.log(scale**2)), -1)
    expected = np.mean(recon) + 2.0 * np.mean(kl) + 3.0 * off + weight * diag
    np.testing.assert_allclose(float(loss), expected, rtol=1e-4)
    v = values(metrics)
    np.testing.assert_allclose([float(v["dip_offdiag"]), float(v["dip_diag"])], [off, diag], rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- FactorVAE


def test_permute_dims_permutes_each_dimension_independently():
    b, d = 64, 6
    z = jnp.arange(b, dtype=jnp.float32)[:, None] + 1000.0 * jnp.arange(d)  # column k: k*1000 + 0..63
    out = np.asarray(jax.jit(permute_dims)(z, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(np.sort(out, axis=0), np.asarray(z))  # every marginal unchanged
    orders = out - 1000.0 * np.arange(d)  # each column's permutation of 0..63
    assert all(not np.array_equal(orders[:, 0], orders[:, k]) for k in range(1, d))  # not one shared permutation
    assert not np.array_equal(orders[:, 0], np.arange(b))
    # rows are no longer the original codes: the joint is broken, only the marginals kept
    assert np.mean(np.all(out == np.asarray(z), axis=1)) < 0.1
    again = np.asarray(permute_dims(z, jax.random.PRNGKey(0)))
    np.testing.assert_array_equal(out, again)  # a function of the key


def test_factorvae_loss_terms_against_numpy():
    model = _model("factorvae", gamma=5.0, discriminator_hidden=(8, 8))
    x = jnp.asarray(synthetic_splits(n=40).val["x"][:10])
    losses, metrics, mean, scale, z, recon, second = _loss_and_draw(model, x, 5)
    z = jnp.asarray(z, jnp.float32)
    z_perm = permute_dims(z, second)  # the loss's second draw from the stream
    discriminator = nnx.jit(lambda m, z: m.discriminator(z))
    logits = np.asarray(discriminator(model, jnp.concatenate([z, z_perm])), np.float64)  # (2B, 2)
    log_soft = logits - logsumexp(logits, axis=1, keepdims=True)
    b = len(x)
    labels = np.r_[np.zeros(b, int), np.ones(b, int)]
    ce = -log_soft[np.arange(2 * b), labels]
    tc = logits[:b, 0] - logits[:b, 1]
    kl = np.sum(0.5 * (scale**2 + mean**2 - 1 - np.log(scale**2)), -1)
    np.testing.assert_allclose(float(losses["vae"]), np.mean(recon + kl) + 5.0 * np.mean(tc), rtol=1e-4)
    np.testing.assert_allclose(float(losses["discriminator"]), np.mean(ce), rtol=1e-4)
    v = values(metrics)
    np.testing.assert_allclose(float(v["tc"]), np.mean(tc), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(v["disc_accuracy"]), np.mean(np.argmax(logits, 1) == labels))


def test_discriminator_group_changes_only_its_own_parameters():
    """One Trainer step: each group moves by one Adam step on the gradient of its own loss (Adam's
    first step is -lr * g / (|g| + eps)). The discriminator's loss does depend on the VAE's
    parameters (one discriminator pass serves both losses); the step must ignore that gradient."""
    splits = synthetic_splits(n=60)
    cfg = tiny_config(model={"kind": "factorvae", "hidden": (16,), "latent_dim": 3, "discriminator_hidden": (8, 8),
                             "discriminator_lr": 3e-3, "gamma": 5.0},
                      train={"batch_size": 20, "learning_rate": 1e-3})
    tr = Trainer(cfg, splits)
    assert set(tr.state.params) == {"vae", "discriminator"}
    disc_paths = {p for p, _ in nnx.to_flat_state(tr.state.params["discriminator"])}
    assert disc_paths and all(p[0] == "discriminator" for p in disc_paths)
    assert not any(p[0] == "discriminator" for p, _ in nnx.to_flat_state(tr.state.params["vae"]))
    grads = group_step_check(tr, 20, {"vae": 1e-3, "discriminator": 3e-3})
    cross = grads["discriminator", "vae"]  # the discriminator's loss on the VAE's parameters
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(cross))  # exists, and the step ignored it
    assert len(split_model(tr.model)[1]) == 2


# --------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize("kind,options,objective,message", [
    ("tcvae", {"estimator": "exact"}, {}, "model.estimator must be one of mws, stratified"),
    ("tcvae", {"beta": -1.0}, {}, "model.beta must be >= 0"),
    ("tcvae", {"posterior": "iaf"}, {}, "'model.posterior' belongs to model.kind vae / cvae / factorvae, not 'tcvae'"),
    ("tcvae", {}, {"beta": 4.0}, "objective.beta=4.0 cannot apply"),
    ("dipvae", {"variant": "iii"}, {}, "model.variant must be one of i, ii"),
    ("dipvae", {}, {"kind": "iwae"}, "objective.kind=iwae cannot apply"),
    ("factorvae", {"discriminator_hidden": []}, {}, "model.discriminator_hidden"),
    ("factorvae", {"discriminator_lr": 0.0}, {}, "model.discriminator_lr must be positive"),
])
def test_bad_settings_are_one_line_errors(kind, options, objective, message):
    with pytest.raises(VaekitError, match=message) as err:
        cfg = tiny_config(model={"kind": kind, "hidden": (16,), "latent_dim": 3, **options}, objective=objective)
        build_model(cfg, DataSpec("images", (8, 8, 1), 2, num_examples=100), rngs=nnx.Rngs(params=0))
    assert "\n" not in str(err.value)


def test_stratified_needs_the_data_set_size_and_splits_carry_it():
    cfg = TCVAEConfig(hidden=(8,), latent_dim=2, estimator="stratified")
    with pytest.raises(VaekitError, match="num_examples"):
        TCVAE(cfg, ObjectiveConfig(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(0))
    splits = synthetic_splits(n=30)
    assert splits.spec.num_examples == 30
    assert DataSpec.from_dict(splits.spec.to_dict()) == splits.spec
    assert FactorVAEConfig().discriminator_hidden == (1000,) * 6
