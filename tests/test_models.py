"""Conformance: every registered model kind passes the same checks, so a new kind is covered as
soon as it is registered in `vaekit.models.MODELS`."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from flax.traverse_util import flatten_dict

from conftest import synthetic_splits, synthetic_token_splits, tiny_config
from vaekit.core import metrics as metrics_lib
from vaekit.runs.run import load_run
from vaekit.models import MODELS, Model, build_model
from vaekit.runs.train import train

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


def _loss_fn(model, batch):
    """A jitted (params, rest) -> ((total loss, metrics), gradients) of the model's loss on `batch`:
    one compilation per kind, where running it eagerly compiles each of its operations alone."""
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def loss_fn(p, rest):
        model = nnx.merge(graphdef, p, rest, copy=True)
        loss, metrics = model.loss(batch, rngs=nnx.Rngs(sample=1), step=jnp.asarray(0))
        return (sum(loss.values()) if isinstance(loss, dict) else loss), metrics

    return jax.jit(jax.value_and_grad(loss_fn, has_aux=True)), params, rest


def check_finite_loss_and_gradients(model, cfg, splits):
    """The kind's loss, metrics and gradients are finite, and some gradient is not zero; the best
    metric and the per-dimension KL are among the metrics; the same seed builds the same model."""
    model.train()
    value_and_grad, params, rest = _loss_fn(model, _batch(splits))
    (loss, metrics), grads = value_and_grad(params, rest)
    assert np.isfinite(float(loss))
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    assert any(float(jnp.max(jnp.abs(g))) > 0 for g in jax.tree.leaves(grads))
    values = metrics_lib.values(metrics)
    assert "loss" in values and np.isfinite(float(values["loss"]))
    caps = model.capabilities
    assert caps.best_metric in values
    if caps.kl_per_dim:
        assert values["kl_per_dim"].shape == (model.latent_dim,)
    # The same seed builds the same model, which has the same loss.
    twin = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))
    twin.train()
    for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(twin))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    _, twin_params, twin_rest = nnx.split(twin, nnx.Param, ...)
    assert float(value_and_grad(twin_params, twin_rest)[0][0]) == float(loss)


def check_data_in_data_out_shapes(model, cfg, splits):
    """Encode, decode, reconstruct and sample take and give arrays of the data's shapes (a flow's
    density of its own draws equals the one it drew them with), in one jitted call."""
    model.eval()
    batch = _batch(splits)
    x, y = batch["x"], _y(model, batch)
    ys = None if y is None else jnp.arange(5) % splits.num_classes

    @nnx.jit
    def outputs(model):
        out = {"reconstruct": model.reconstruct(x, y), "sample": model.sample(5, rngs=nnx.Rngs(sample=0), y=ys)}
        if model.capabilities.latent_vector:
            q = model.encode(x, y)
            z, log_q = q.sample_and_log_prob(jax.random.PRNGKey(0), (3,))
            out |= {"mean": q.mean, "z": z, "log_q": log_q, "decoded": model.decode(q.mean, y).mean(),
                    "prior": model.prior.sample(jax.random.PRNGKey(1), (4,))}
            if hasattr(q, "log_prob"):  # a flow's density is known only along its own draws
                out["log_prob"] = q.log_prob(z)
        return out

    out = outputs(model)
    shape = splits.spec.shape
    if model.capabilities.latent_vector:
        d = model.latent_dim
        assert out["mean"].shape == (6, d) and out["z"].shape == (3, 6, d) and out["log_q"].shape == (3, 6)
        if "log_prob" in out:
            np.testing.assert_allclose(np.asarray(out["log_prob"]), np.asarray(out["log_q"]), rtol=1e-5, atol=1e-4)
        assert out["decoded"].shape == (6, *shape) and out["prior"].shape == (4, d)
    assert out["reconstruct"].shape == (6, *shape)
    assert out["sample"].shape == (5, *shape)


def check_iwae_bounds_nondecreasing_in_k(model, cfg, splits):
    """The k-sample bounds of an untrained model (a loose posterior) grow with k; a kind without
    posterior draws gives one exact value per example."""
    if not model.capabilities.likelihood_bound:
        return
    model.eval()
    batch = _batch(splits, 8)
    lw = nnx.jit(lambda m: m.log_weights(batch, 2000, rngs=nnx.Rngs(sample=0)))(model)
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


def check_trains_saves_and_loads(cfg, splits, runs_dir):
    """`train` runs the kind end to end (epochs, checkpoints, pictures) and `load_run` restores
    exactly the state its last checkpoint holds, into a model that reconstructs and scores."""
    import orbax.checkpoint as ocp

    run_dir = train(cfg, data=splits, runs_dir=runs_dir, name="run", progress=False)
    run = load_run(run_dir, checkpoint="latest")
    assert run.info["model_kind"] == cfg.model.kind and run.spec == splits.spec
    assert math.isfinite(run.info["final"]["val/loss"])
    assert (run_dir / "curves.png").is_file()  # train.pictures (and samples.png for image data)
    assert (run_dir / "samples.png").is_file() == splits.spec.is_images
    latest = max((run_dir / "checkpoints" / "latest").iterdir(), key=lambda p: int(p.name))
    saved = ocp.StandardCheckpointer().restore(latest / "model")  # the stored arrays as they are on disk
    saved = {"/".join(map(str, path[:-1])): v for path, v in flatten_dict(saved).items()}  # .../kernel/value
    loaded = {"/".join(map(str, path)): v[...] for path, v in nnx.to_flat_state(nnx.state(run.model))}
    assert loaded and sorted(loaded) == sorted(saved)
    for path, value in loaded.items():
        np.testing.assert_array_equal(np.asarray(value), np.asarray(saved[path]), err_msg=path)
    batch = _batch(splits)
    y = _y(run.model, batch)
    assert np.all(np.isfinite(nnx.jit(lambda m: m.reconstruct(batch["x"], y))(run.model)))


CHECKS = (check_finite_loss_and_gradients, check_data_in_data_out_shapes, check_iwae_bounds_nondecreasing_in_k)


@pytest.mark.parametrize("kind", KINDS)
def test_conformance(kind, splits, tmp_path):
    """Every check on one model of the kind, built once from its small config (params seed 0)."""
    cfg = _cfg(kind)
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))
    assert isinstance(model, Model) and model.kind == cfg.model.kind
    for check in CHECKS:
        check(model, cfg, splits)
    check_trains_saves_and_loads(_cfg(kind, train={"epochs": 1, "batch_size": 20, "chunk_steps": 3, "pictures": True}),
                                 splits, tmp_path)


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
    test_conformance(kind, image_splits, tmp_path)
    run = load_run(tmp_path / "run")
    assert run.model.kind == "learned-prior" and "val/kl_per_dim" not in run.history[-1]  # Monte Carlo KL
    assert float(jnp.max(jnp.abs(run.model.prior.log_scale[...] - jnp.log(0.5)))) > 0  # the prior was trained
    with pytest.raises(VaekitError, match="belongs to model.kind learned-prior"):
        _cfg("vae", model={"prior_init_scale": 0.5})
