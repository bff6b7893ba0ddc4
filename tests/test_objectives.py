"""Schedules, free bits, capacity and the IWAE bound: values, gradients, and no recompilation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaekit.data.spec import DataSpec
from vaekit.core import metrics as metrics_lib
from vaekit.core import objectives
from vaekit.core.priors import KL
from vaekit.config import ObjectiveConfig
from vaekit.models import build_model

from conftest import tiny_config


def beta(schedule, step, **kw):
    return float(objectives.beta_at(jnp.asarray(step), ObjectiveConfig(beta_schedule=schedule, **kw)))


def test_constant_and_linear_schedules():
    assert beta("constant", 123, beta=4.0) == 4.0
    assert beta("linear", 0, anneal_steps=100) == 0.0
    assert beta("linear", 25, anneal_steps=100) == pytest.approx(0.25)
    assert beta("linear", 100, anneal_steps=100) == pytest.approx(1.0)
    assert beta("linear", 5000, anneal_steps=100, beta=2.0) == pytest.approx(2.0)


def test_sigmoid_schedule():
    assert beta("sigmoid", 50, anneal_steps=100) == pytest.approx(0.5)
    assert beta("sigmoid", 0, anneal_steps=100) == pytest.approx(1 / (1 + math.exp(5)), rel=1e-5)
    assert beta("sigmoid", 100, anneal_steps=100) == pytest.approx(1 / (1 + math.exp(-5)), rel=1e-5)


def test_cyclical_schedule_m_cycles_ratio_r():
    kw = dict(anneal_steps=400, cycles=4, cycle_ratio=0.5)  # period 100, rising over 50 steps
    assert beta("cyclical", 0, **kw) == 0.0
    assert beta("cyclical", 25, **kw) == pytest.approx(0.5)
    assert beta("cyclical", 50, **kw) == pytest.approx(1.0)
    assert beta("cyclical", 99, **kw) == pytest.approx(1.0)
    assert beta("cyclical", 100, **kw) == 0.0  # a new cycle starts
    assert beta("cyclical", 310, **kw) == pytest.approx(0.2)
    assert beta("cyclical", 400, **kw) == pytest.approx(1.0)  # after the last cycle: held
    assert beta("cyclical", 10, anneal_steps=400, cycles=2, cycle_ratio=0.25) == pytest.approx(0.2)


def test_free_bits_value_and_gradient_below_and_above_lambda():
    kl = jnp.array([[0.1, 2.0], [0.3, 3.0]])  # batch means: 0.2 (below 0.5) and 2.5 (above)
    assert float(objectives.free_bits_kl(kl, 0.5)) == pytest.approx(0.5 + 2.5)
    g = jax.grad(lambda k: objectives.free_bits_kl(k, 0.5))(kl)
    np.testing.assert_allclose(g[:, 0], 0.0)  # no gradient pushes a dimension below lambda
    np.testing.assert_allclose(g[:, 1], 0.5)  # d mean / d element = 1/B above lambda


def test_capacity_term_sign_and_gradient():
    cfg = ObjectiveConfig(capacity_max=10.0, capacity_steps=100, capacity_gamma=2.0)
    kl = jnp.full((4, 2), 1.0)  # total KL 2 per example
    term, info = objectives.kl_term(KL.of_per_dim(kl), jnp.asarray(50), cfg)  # C = 5 > KL
    assert float(info["capacity"]) == pytest.approx(5.0)
    assert float(term) == pytest.approx(2.0 * 3.0)
    g = jax.grad(lambda k: objectives.kl_term(KL.of_per_dim(k), jnp.asarray(50), cfg)[0])(kl)
    assert np.all(g < 0)  # KL below capacity: the loss pushes KL up
    g = jax.grad(lambda k: objectives.kl_term(KL.of_per_dim(k), jnp.asarray(0), cfg)[0])(kl)  # C = 0 < KL
    assert np.all(g > 0)


def test_iwae_bound_is_log_mean_exp():
    lw = np.array([[-1.0, -2.0, -3.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(objectives.iwae_bound(jnp.asarray(lw)),
                               np.log(np.exp(lw).mean(1)), rtol=1e-6)


def _model(cfg):
    return build_model(cfg, DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(params=0))


def test_iwae_loss_with_k1_equals_single_draw_elbo_exactly():
    cfg = tiny_config(objective={"kind": "iwae", "iwae_k": 1})
    model = _model(cfg)
    x = (np.random.default_rng(0).uniform(size=(6, 8, 8, 1)) < 0.4).astype(np.float32)
    batch = {"x": jnp.asarray(x)}

    @nnx.jit  # one program instead of op by op
    def estimates(model):
        loss, _ = model.loss(batch, rngs=nnx.Rngs(sample=3), step=jnp.asarray(0))
        lw = model.log_weights(batch, 1, rngs=nnx.Rngs(sample=3))
        q, _, _, log_px_z, _ = model._draws(batch, 20_000, nnx.Rngs(sample=4))
        elbo = jnp.mean(log_px_z) - jnp.mean(q.kl())
        lw_many = model.log_weights(batch, 20_000, rngs=nnx.Rngs(sample=5))
        return loss, jnp.mean(lw), elbo, jnp.mean(lw_many)

    loss, mean_lw, elbo, mean_lw_many = map(float, estimates(model))
    assert loss == pytest.approx(-mean_lw, rel=1e-6)
    # and the single-draw estimate averages to the ELBO with the closed-form KL
    assert mean_lw_many == pytest.approx(elbo, abs=0.05)


def test_elbo_loss_reports_true_elbo_under_beta_and_free_bits():
    cfg = tiny_config(objective={"beta": 4.0, "free_bits": 0.5})
    model = _model(cfg)
    batch = {"x": jnp.asarray((np.random.default_rng(1).uniform(size=(6, 8, 8, 1)) < 0.4).astype(np.float32))}
    loss, m = model.loss(batch, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))
    m = metrics_lib.values(m)
    fb = float(jnp.sum(jnp.maximum(m["kl_per_dim"], 0.5)))
    assert float(loss) == pytest.approx(float(m["recon"]) + 4.0 * fb, rel=1e-5)
    assert float(m["elbo"]) == pytest.approx(-(float(m["recon"]) + float(m["kl"])), rel=1e-6)


def test_changing_the_step_does_not_recompile():
    cfg = tiny_config(objective={"beta_schedule": "cyclical", "anneal_steps": 100})
    model = _model(cfg)
    graphdef, state = nnx.split(model)
    traces = []

    @jax.jit
    def f(state, batch, step):
        traces.append(1)
        return nnx.merge(graphdef, state).loss(batch, rngs=nnx.Rngs(sample=0), step=step)[1]["beta"]

    batch = {"x": jnp.zeros((4, 8, 8, 1))}
    values = [float(f(state, batch, jnp.asarray(s))) for s in (0, 10, 25, 60)]
    assert len(traces) == 1
    assert values == pytest.approx([0.0, 0.8, 0.0, 0.8])  # period 25, rising over 12.5 steps
