"""Conformance: every registered model kind passes the same checks, so a new kind is covered as
soon as it is registered in `vaekit.models.MODELS`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import synthetic_splits, synthetic_token_splits, tiny_config
from vaekit.core import metrics as metrics_lib
from vaekit.runs.run import load_run
from vaekit.models import MODELS, Model, build_model
from vaekit.runs.train import train
from vaekit.training.loop import Trainer

# Every registered kind, and the VAE with each posterior and prior option (the options every
# Gaussian-latent kind accepts). A kind built on a trained run (`needs_parent_run`, e.g. vqprior)
# runs these checks in its own test file, on a parent run made there.
# A deep kind's own defaults, made small so that the checks compile quickly (a ladder of two
# stochastic layers still takes the top-down path; tests/test_ladder.py covers more depth).
SMALL = {"ladder": {"lower_dims": (6,), "mlp_layers": 1}}
VARIANTS = [(k, SMALL.get(k, {})) for k in sorted(MODELS) if not MODELS[k].needs_parent_run] + [
    ("vae", {"posterior": "planar", "flow_steps": 2}),
    ("vae", {"posterior": "iaf", "flow_steps": 2, "flow_hidden": 16}),
    ("vae", {"prior": "vamp", "prior_components": 7}),
    ("hvae", {"batch_norm": True}),
]
KINDS = [pytest.param(v, id="-".join([v[0], *map(str, v[1].values())])) for v in VARIANTS]


def _cfg(kind, **sections):
    if isinstance(kind, tuple):  # a variant: (kind, model options)
        kind, options = kind
        sections.setdefault("model", {}).update(options)
    sections.setdefault("model", {})["kind"] = kind
    return tiny_config(**sections)


def _batch(splits, n=6):
    return {k: jnp.asarray(v[:n]) for k, v in splits.val.items()}


def _y(model, batch):
    return batch["y"] if model.capabilities.conditional else None


@pytest.fixture(scope="module")
def image_splits():
    return synthetic_splits(n=120)


@pytest.fixture(scope="module")
def token_splits():
    return synthetic_token_splits(n=120)


@pytest.fixture
def splits(request, image_splits, token_splits):
    """Synthetic data of the kind the test's model takes: images, or token sentences for a kind
    whose class declares `capabilities.data_kinds` without images."""
    kind = request.node.callspec.params.get("kind") if hasattr(request.node, "callspec") else None
    return token_splits if kind and "images" not in MODELS[kind[0]].capabilities.data_kinds else image_splits


@pytest.mark.parametrize("kind", KINDS)
def test_builds_with_finite_loss_and_gradients(kind, splits):
    model = build_model(_cfg(kind), splits.spec, rngs=nnx.Rngs(params=0))
    assert isinstance(model, Model) and model.kind == kind[0]
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(splits)

    def loss_fn(p):
        loss, metrics = nnx.merge(graphdef, p, rest, copy=True).loss(batch, rngs=nnx.Rngs(sample=1), step=jnp.asarray(0))
        total = sum(loss.values()) if isinstance(loss, dict) else loss
        return total, metrics

    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
    values = metrics_lib.values(metrics)
    assert "loss" in values and np.isfinite(float(values["loss"]))
    caps = model.capabilities
    assert caps.best_metric in values
    if caps.kl_per_dim:
        assert values["kl_per_dim"].shape == (model.latent_dim,)


@pytest.mark.parametrize("kind", KINDS)
def test_data_in_data_out_shapes(kind, splits):
    model = build_model(_cfg(kind), splits.spec, rngs=nnx.Rngs(params=0))
    model.eval()
    batch = _batch(splits)
    x, y = batch["x"], _y(model, batch)
    shape = splits.spec.shape
    if model.capabilities.latent_vector:
        q = model.encode(x, y)
        assert q.mean.shape == (6, model.latent_dim)
        z, log_q = q.sample_and_log_prob(jax.random.PRNGKey(0), (3,))
        assert z.shape == (3, 6, model.latent_dim) and log_q.shape == (3, 6)
        if hasattr(q, "log_prob"):  # a flow's density is known only along its own draws
            np.testing.assert_allclose(np.asarray(q.log_prob(z)), np.asarray(log_q), rtol=1e-5, atol=1e-4)
        assert model.decode(q.mean, y).mean().shape == (6, *shape)
        assert model.prior.sample(jax.random.PRNGKey(1), (4,)).shape == (4, model.latent_dim)
    assert model.reconstruct(x, y).shape == (6, *shape)
    ys = None if y is None else jnp.arange(5) % splits.num_classes
    assert model.sample(5, rngs=nnx.Rngs(sample=0), y=ys).shape == (5, *shape)


@pytest.mark.parametrize("kind", KINDS)
def test_iwae_bounds_nondecreasing_in_k(kind, splits):
    model = build_model(_cfg(kind), splits.spec, rngs=nnx.Rngs(params=0))  # untrained: a loose posterior
    if not model.capabilities.likelihood_bound:
        pytest.skip(f"{kind[0]} has no likelihood bound")
    model.eval()
    lw = model.log_weights(_batch(splits, 8), 2000, rngs=nnx.Rngs(sample=0))
    assert lw.shape == (8, 2000)
    lw = np.asarray(lw, np.float64)
    bounds = []
    for k in (1, 5, 50):  # the k-sample bound averaged over 2000 / k disjoint groups of draws
        groups = lw[:, : (2000 // k) * k].reshape(8, -1, k)
        bounds.append(np.mean(np.log(np.mean(np.exp(groups - groups.max(-1, keepdims=True)), -1))
                              + groups.max(-1)))
    if model.capabilities.log_weights != "sampled":  # no posterior draws: one exact value per example
        np.testing.assert_array_equal(lw, np.broadcast_to(lw[:, :1], lw.shape))
        return
    assert bounds[0] < bounds[1] < bounds[2], bounds


@pytest.mark.parametrize("kind", KINDS)
def test_same_seed_same_model_and_loss(kind, splits):
    a = build_model(_cfg(kind), splits.spec, rngs=nnx.Rngs(params=3))
    b = build_model(_cfg(kind), splits.spec, rngs=nnx.Rngs(params=3))
    batch = _batch(splits)
    la, _ = a.loss(batch, rngs=nnx.Rngs(sample=7), step=jnp.asarray(0))
    lb, _ = b.loss(batch, rngs=nnx.Rngs(sample=7), step=jnp.asarray(0))
    assert jax.tree.map(float, la) == jax.tree.map(float, lb)


@pytest.mark.parametrize("kind", KINDS)
def test_trains_saves_and_loads_identically(kind, splits, tmp_path, monkeypatch):
    cfg = _cfg(kind, train={"epochs": 1, "batch_size": 20, "chunk_steps": 3})
    monkeypatch.setattr("vaekit.data.load_configured", lambda data_cfg, **kw: splits)
    run_dir = train(cfg, runs_dir=tmp_path, name="run", progress=False)
    trainer = Trainer(cfg, splits)
    for _ in range(1):
        trainer.fit_epoch()
    run = load_run(run_dir, checkpoint="latest")
    assert run.info["model_kind"] == kind[0] and run.spec == splits.spec
    # The loaded model equals the one training ended with (retraced here from the same seed).
    from vaekit.training.state import merge_model

    trained = merge_model(trainer.graphdef_eval, trainer.state.params, trainer.state.rest)
    batch = _batch(splits)
    y = _y(run.model, batch)
    np.testing.assert_array_equal(np.asarray(run.model.reconstruct(batch["x"], y)),
                                  np.asarray(trained.reconstruct(batch["x"], y)))
    if run.model.capabilities.likelihood_bound:
        np.testing.assert_array_equal(np.asarray(run.model.log_weights(batch, 4, rngs=nnx.Rngs(sample=0))),
                                      np.asarray(trained.log_weights(batch, 4, rngs=nnx.Rngs(sample=0))))
    assert math.isfinite(run.info["final"]["val/loss"])


def test_the_documented_example_kind_is_an_installable_plugin(image_splits, tmp_path, monkeypatch):
    """docs/architecture.md's "adding a model kind in one file" is tests/plugin_example, a package
    whose "vaekit.models" entry point registers the kind: installed, the registry finds it, and it
    passes the conformance checks, trains its prior and keeps its config keys to itself."""
    import re
    from pathlib import Path

    from plugin_example import installed
    from vaekit.errors import VaekitError
    from vaekit.models.registry import BUILTIN, Registry

    doc = (Path(__file__).parents[1] / "docs" / "architecture.md").read_text()
    code = re.search(r"## Adding a model kind in one file.*?```python\n(.*?)```", doc, re.S).group(1)
    assert code in (installed.HERE / "vaekit_learned_prior.py").read_text()  # the plugin is the documented code
    len(MODELS)  # the registry has read the entry points of this session before the plugin is installed
    installed.install(tmp_path / "site", monkeypatch)
    registry = Registry(BUILTIN)  # what `vaekit.models.MODELS` is: entry points read at the first lookup
    monkeypatch.setitem(MODELS, "learned-prior", registry["learned-prior"])
    kind = ("learned-prior", {"prior_init_scale": 0.5})
    for check in (test_builds_with_finite_loss_and_gradients, test_data_in_data_out_shapes,
                  test_iwae_bounds_nondecreasing_in_k, test_same_seed_same_model_and_loss):
        check(kind, image_splits)
    test_trains_saves_and_loads_identically(kind, image_splits, tmp_path, monkeypatch)
    run = load_run(tmp_path / "run")
    assert run.model.kind == "learned-prior" and "val/kl_per_dim" not in run.history[-1]  # Monte Carlo KL
    assert float(jnp.max(jnp.abs(run.model.prior.log_scale[...] - jnp.log(0.5)))) > 0  # the prior was trained
    with pytest.raises(VaekitError, match="belongs to model.kind learned-prior"):
        _cfg("vae", model={"prior_init_scale": 0.5})
