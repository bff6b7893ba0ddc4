"""Training with your own encoder and decoder (`build_model(..., encoder=, decoder=)`,
`vaekit.models.user_nets`): the contract's check, the run's record of the modules, loading and
resuming by import path; and third-party kinds through the "vaekit.models" entry points."""

import dataclasses
import importlib.metadata
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import synthetic_splits, tiny_config
from plugin_example import installed
from vaekit.errors import VaekitError
from vaekit.models import build_model, user_nets
from vaekit.models.registry import BUILTIN, Registry
from vaekit.runs.run import load_run
from vaekit.runs.train import train

LATENT = 4


class MyEncoder(nnx.Module):
    """x (N, *shape) -> (mean, raw_scale), each (N, latent_dim)."""

    def __init__(self, shape: list[int], hidden: int, latent_dim: int, *, rngs: nnx.Rngs):
        self.shape, self.hidden, self.latent_dim = shape, hidden, latent_dim
        self.body = nnx.Linear(math.prod(shape), hidden, rngs=rngs)
        self.mean = nnx.Linear(hidden, latent_dim, rngs=rngs)
        self.raw_scale = nnx.Linear(hidden, latent_dim, rngs=rngs)

    def __call__(self, x):
        h = jnp.tanh(self.body(x.reshape(x.shape[0], -1)))
        return self.mean(h), self.raw_scale(h)


class MyDecoder(nnx.Module):
    """z (N, latent_dim) -> Bernoulli logits (N, *shape)."""

    def __init__(self, latent_dim: int, hidden: int, shape: list[int], *, rngs: nnx.Rngs):
        self.latent_dim, self.hidden, self.shape = latent_dim, hidden, shape
        self.body = nnx.Linear(latent_dim, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, math.prod(shape), rngs=rngs)

    def __call__(self, z):
        return self.out(jnp.tanh(self.body(z))).reshape(z.shape[0], *self.shape)


class LabelledEncoder(nnx.Module):
    """(x (N, *shape), one-hot c (N, K)) -> (mean, raw_scale): what a conditional kind calls."""

    def __init__(self, size: int, classes: int, latent_dim: int, *, rngs: nnx.Rngs):
        self.size, self.classes, self.latent_dim = size, classes, latent_dim
        self.head = nnx.Linear(size + classes, 2 * latent_dim, rngs=rngs)

    def __call__(self, x, c):
        h = self.head(jnp.concatenate([x.reshape(x.shape[0], -1), c], axis=-1))
        return h[:, : self.latent_dim], h[:, self.latent_dim :]


class Forgetful(nnx.Module):
    """Breaks the recording rule: `width` is not kept on the instance."""

    def __init__(self, width: int, *, rngs: nnx.Rngs):
        self.layer = nnx.Linear(width, width, rngs=rngs)


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n=60)


def _nets(shape, latent=LATENT, seed=0):
    shape = list(shape)
    return (MyEncoder(shape, 16, latent, rngs=nnx.Rngs(seed)), MyDecoder(latent, 16, shape, rngs=nnx.Rngs(seed + 1)))


def _cfg(**train):
    return tiny_config(model={"latent_dim": LATENT}, train={"epochs": 1, "batch_size": 20, "chunk_steps": 3, **train})


def test_the_contract_is_checked_at_build_in_one_line(splits):
    cfg, shape = _cfg(), splits.spec.shape
    encoder, decoder = _nets(shape)
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0), encoder=encoder, decoder=decoder)
    assert model.encoder.net is encoder and model.decoder.net is decoder
    batch = {"x": jnp.asarray(splits.val["x"][:6])}
    assert np.isfinite(float(model.loss(batch, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))[0]))
    assert model.log_weights(batch, 3, rngs=nnx.Rngs(sample=0)).shape == (6, 3)  # (k, N, D) draws decoded
    wrong_encoder = MyEncoder(list(shape), 16, 2 * LATENT, rngs=nnx.Rngs(0))
    with pytest.raises(VaekitError, match=r"^encoder MyEncoder returned mean of shape \(2, 8\) for latent_dim 4: "
                                          r"expected \(2, 4\)$"):
        build_model(cfg, splits.spec, rngs=nnx.Rngs(0), encoder=wrong_encoder)
    wrong_decoder = MyDecoder(LATENT, 16, [math.prod(shape)], rngs=nnx.Rngs(0))
    with pytest.raises(VaekitError, match=r"^decoder MyDecoder returned shape \(2, 64\) for likelihood bernoulli and "
                                          r"data of shape \(8, 8, 1\): expected \(2, 8, 8, 1\)$"):
        build_model(cfg, splits.spec, rngs=nnx.Rngs(0), decoder=wrong_decoder)
    with pytest.raises(VaekitError, match="^decoder MyDecoder failed on an input of shape \\(2, 4\\): "):
        build_model(cfg, splits.spec, rngs=nnx.Rngs(0), decoder=MyDecoder(LATENT + 1, 16, list(shape),
                                                                            rngs=nnx.Rngs(0)))
    hvae = tiny_config(model={"kind": "hvae"})
    with pytest.raises(VaekitError, match="model.kind 'hvae' builds its own nets; your encoder fit model.kind vae"):
        build_model(hvae, splits.spec, rngs=nnx.Rngs(0), encoder=encoder)


def test_a_conditional_kind_hands_your_nets_the_label(splits):
    cfg = tiny_config(model={"kind": "cvae", "latent_dim": LATENT})
    encoder = LabelledEncoder(math.prod(splits.spec.shape), 2, LATENT, rngs=nnx.Rngs(0))
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0), encoder=encoder)
    x, y = jnp.asarray(splits.val["x"][:6]), jnp.asarray(splits.val["y"][:6])
    q = model.encode(x, y)
    h = encoder.head(jnp.concatenate([x.reshape(6, -1), jax.nn.one_hot(y, 2)], axis=-1))
    np.testing.assert_allclose(np.asarray(q.mean), np.asarray(h[:, :LATENT]), rtol=1e-6)
    assert np.isfinite(float(model.loss({"x": x, "y": y}, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))[0]))
    with pytest.raises(VaekitError, match="^encoder LabelledEncoder failed on an input of shape"):
        build_model(tiny_config(model={"latent_dim": LATENT}), splits.spec, rngs=nnx.Rngs(0), encoder=encoder)


def test_the_record_follows_the_constructor_or_says_what_is_missing(splits):
    encoder, decoder = _nets(splits.spec.shape)
    cfg = user_nets.record(_cfg(), encoder, decoder)
    assert cfg.model.encoder == "test_user_nets:MyEncoder" and cfg.model.decoder == "test_user_nets:MyDecoder"
    assert cfg.model.encoder_args == {"shape": [8, 8, 1], "hidden": 16, "latent_dim": LATENT}
    with pytest.raises(VaekitError, match="^encoder Forgetful does not keep its constructor argument 'width' as "
                                          "self.width: "):
        user_nets.record(cfg, Forgetful(3, rngs=nnx.Rngs(0)))
    missing = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, encoder="mypkg.nets:MyEncoder"))
    with pytest.raises(VaekitError, match=r"^model.encoder 'mypkg.nets:MyEncoder' cannot be imported: "
                                          r"ModuleNotFoundError: No module named 'mypkg' \(install or put it on "
                                          r"PYTHONPATH to load this run\)$"):
        build_model(missing, splits.spec, rngs=nnx.Rngs(0))


def test_a_run_with_its_own_nets_saves_loads_and_resumes_identically(splits, tmp_path):
    """The run's config.yaml names the classes; loading and resuming rebuild them from it."""
    cfg = user_nets.record(_cfg(), *_nets(splits.spec.shape))
    once = train(cfg, data=splits, runs_dir=tmp_path, name="once", progress=False)
    run = load_run(once, checkpoint="latest")
    assert isinstance(run.model.encoder.net, MyEncoder) and run.config.model.decoder_args["shape"] == [8, 8, 1]
    two = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, epochs=2))
    straight = train(two, data=splits, runs_dir=tmp_path, name="straight", progress=False)
    straight = load_run(straight, checkpoint="latest")
    resumed = load_run(train(two, data=splits, resume=once, progress=False), checkpoint="latest")
    x = jnp.asarray(splits.val["x"][:6])
    np.testing.assert_array_equal(np.asarray(resumed.model.reconstruct(x)), np.asarray(straight.model.reconstruct(x)))


def test_plugin_kinds_load_on_first_lookup_and_a_broken_one_is_one_warning(tmp_path, monkeypatch, caplog):
    calls = []
    real = importlib.metadata.entry_points
    monkeypatch.setattr("importlib.metadata.entry_points", lambda **kw: calls.append(kw) or real(**kw))
    installed.install(tmp_path / "site", monkeypatch)
    installed.write_dist_info(tmp_path / "site", "broken-kinds", "1.0", {"vaekit.models": {
        "missing": "no_such_module:Kind", "not-a-model": "math:sqrt", "vae": "vaekit_learned_prior:LearnedPriorVAE"}})
    registry = Registry(BUILTIN)
    assert not calls  # nothing read until the registry is used
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        assert "learned-prior" in registry and registry["vae"] is BUILTIN["vae"]
    assert calls == [{"group": "vaekit.models"}]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3 and all("\n" not in w for w in warnings)
    assert any(w.startswith("model kind plugin 'missing' (no_such_module:Kind) did not load and is skipped: "
                            "ModuleNotFoundError") for w in warnings)
    assert any("'not-a-model' (math:sqrt) is not a model class" in w for w in warnings)
    assert any("'vae' (vaekit_learned_prior:LearnedPriorVAE) has the name of a built-in kind" in w for w in warnings)
