"""The PixelCNN code prior (nets/pixelcnn.py, models/vqprior.py): masked-convolution causality,
the prior's likelihood against a direct computation, ancestral sampling, the two-stage bound, the
frozen parent and its checksum, and the conformance checks every kind gets, on a tiny parent run."""

import itertools
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import replace, synthetic_splits, tiny_config
from test_vqvae import TRAIN, tiny_vq_run
from vaekit.runs.run import load_run, resolve_parent
from vaekit.errors import VaekitError
from vaekit.core.metrics import values
from vaekit.models import VAE, build_model
from vaekit.nets.pixelcnn import GatedPixelCNN
from vaekit.runs.train import train

PRIOR = {"kind": "vqprior", "prior_channels": 8, "prior_layers": 1}


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n=120)  # the data the parent run (test_vqvae.vq_run) was trained on


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return tiny_vq_run(tmp_path_factory)


def _prior_cfg(parent, **model):
    return tiny_config(model={**PRIOR, "parent": str(parent), **model}, train=TRAIN)


def _net(k=3, layers=2, channels=8, seed=0):
    """A PixelCNN with random biases too (at zero, the first position's logits would tie exactly)."""
    net = GatedPixelCNN(k, channels, layers, 3, rngs=nnx.Rngs(params=seed))
    graphdef, state = nnx.split(net)
    flat = nnx.to_flat_state(state)
    keys = iter(jax.random.split(jax.random.PRNGKey(seed + 1), len(flat)))
    state = nnx.from_flat_state([(path, v.replace(0.5 * jax.random.normal(next(keys), v.shape)) if path[-1] == "bias"
                                  else v) for path, v in flat])
    return nnx.merge(graphdef, state)


# --------------------------------------------------------------------------- the PixelCNN


def test_masked_convolutions_are_causal_without_a_blind_spot():
    """d logits(i) / d input(j) is exactly zero for every j >= i (raster order), nonzero for every j < i."""
    net = _net(k=5, layers=2)
    emb = jax.random.normal(jax.random.PRNGKey(0), (1, 4, 4, 8))
    jac = jax.jit(jax.jacrev(lambda e: jnp.sum(net.logits_from_embeddings(e)[0], -1)))(emb)  # (4, 4, 1, 4, 4, 8)
    dep = np.abs(np.asarray(jac)).sum(axis=(2, 5)).reshape(16, 16)  # [output i, input j]
    for i in range(16):
        assert np.all(dep[i, i:] == 0), (i, dep[i])
        assert np.all(dep[i, :i] > 0), (i, dep[i])


def test_prior_log_likelihood_against_a_direct_computation():
    net = _net(k=3)
    grids = jnp.asarray(list(itertools.product(range(3), repeat=4)), jnp.int32).reshape(-1, 2, 2)  # all 81
    logp = np.asarray(nnx.jit(lambda n, g: n.log_prob(g))(net, grids), np.float64)
    logits_of = nnx.jit(lambda n, codes: n(codes))  # each call below: one program, not op by op
    np.testing.assert_allclose(np.exp(logp).sum(), 1.0, rtol=1e-5)  # a distribution over every grid
    # Direct: the chain rule, position by position, each conditional read with the later positions
    # replaced by other codes (which must not matter), log-softmax in numpy.
    rng = np.random.default_rng(0)
    codes = np.asarray(grids[::7])
    direct = np.zeros(len(codes))
    for p in range(4):
        masked = codes.reshape(-1, 4).copy()
        masked[:, p:] = rng.integers(0, 3, masked[:, p:].shape)
        logits = np.asarray(logits_of(net, jnp.asarray(masked.reshape(-1, 2, 2))), np.float64).reshape(-1, 4, 3)[:, p]
        logits -= logits.max(-1, keepdims=True)
        log_softmax = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        direct += log_softmax[np.arange(len(codes)), codes.reshape(-1, 4)[:, p]]
    np.testing.assert_allclose(logp[::7], direct, rtol=1e-5, atol=1e-5)


def test_ancestral_sampling_is_reproducible_and_draws_the_model_distribution():
    net = _net(k=3)
    graphdef, state = nnx.split(net)
    draw = jax.jit(lambda s, key, t, k, n: nnx.merge(graphdef, s).sample(key, n, (2, 2), t, k),
                   static_argnums=(2, 3, 4))
    a, b = draw(state, jax.random.PRNGKey(5), 1.0, 0, 500), draw(state, jax.random.PRNGKey(5), 1.0, 0, 500)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(draw(state, jax.random.PRNGKey(6), 1.0, 0, 500)))
    grids = np.asarray(list(itertools.product(range(3), repeat=4)))
    p = np.exp(np.asarray(nnx.jit(lambda n, g: n.log_prob(g))(net, jnp.asarray(grids.reshape(-1, 2, 2))), np.float64))
    many = draw(state, jax.random.PRNGKey(5), 1.0, 0, 20000)
    index = np.asarray(many).reshape(-1, 4) @ (3 ** np.arange(3, -1, -1))
    freq = np.bincount(index, minlength=81) / len(index)
    assert np.max(np.abs(freq - p)) < 4 * np.sqrt(p.max() / 20000) + 1e-3
    # top_k = 1 is the greedy path, whatever the key; a low temperature concentrates on it
    g1, g2 = draw(state, jax.random.PRNGKey(1), 1.0, 1, 500), draw(state, jax.random.PRNGKey(2), 1.0, 1, 500)
    np.testing.assert_array_equal(np.asarray(g1), np.asarray(g2))
    cold = np.asarray(draw(state, jax.random.PRNGKey(3), 0.05, 0, 500))
    assert np.mean(np.all(cold == np.asarray(g1)[:1], axis=(1, 2))) > 0.9


# --------------------------------------------------------------------------- the stage-2 model


def test_two_stage_bound_and_the_frozen_parent(parent, splits):
    cfg = _prior_cfg(parent)
    assert cfg.model.parent == str(parent.absolute()) and not cfg.model.parent_sha256
    cfg, handed = resolve_parent(cfg)  # the parent's model, handed to the kind; its checksum recorded
    assert len(cfg.model.parent_sha256) == 64 and handed["parent"].kind == "vqvae"
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0), **handed)
    stage1 = load_run(parent).model
    x = jnp.asarray(splits.val["x"][:5])

    @nnx.jit  # one program instead of op by op
    def bounds(model, stage1):
        q = stage1.encode(x)
        prior = model.pixelcnn.log_prob(q.codes)
        return (model.log_weights({"x": x}, 2, rngs=nnx.Rngs(0)), stage1.decode(q.z_q).log_prob(x) + prior, prior,
                stage1.log_weights({"x": x}, 1, rngs=nnx.Rngs(0))[:, 0])  # the last: under a uniform prior

    lw, expected, prior, stage1_lw = map(np.asarray, bounds(model, stage1))
    np.testing.assert_allclose(lw, np.repeat(expected[:, None], 2, 1), rtol=1e-5)
    np.testing.assert_allclose(lw[:, 0] - stage1_lw, prior + 4 * np.log(8), rtol=1e-4, atol=1e-4)
    # Only the PixelCNN's parameters are trained; the parent's are in no group.
    group = model.param_groups()["prior"].filter
    trained = nnx.state(model, group)
    n_trained = sum(v.size for v in jax.tree.leaves(trained))
    assert n_trained == sum(v.size for v in jax.tree.leaves(nnx.state(model.pixelcnn, nnx.Param)))


def test_trains_saves_and_loads_with_a_frozen_parent(parent, splits, tmp_path):
    """What the conformance suite checks of every kind, on a tiny prior over the tiny parent."""
    cfg = replace(_prior_cfg(parent), "train", pictures=True)
    run = load_run(train(cfg, data=splits, runs_dir=tmp_path, name="prior", progress=False), checkpoint="latest")
    assert run.info["model_kind"] == "vqprior" and run.spec == splits.spec
    assert len(run.config.model.parent_sha256) == 64  # recorded in config.yaml when training started
    last = run.history[-1]
    assert np.isfinite(last["train/grad_norm"]) and last["train/grad_norm"] > 0
    assert last["val/elbo"] == pytest.approx(-(last["val/recon"] + last["val/prior_nll"]), rel=1e-5)
    # The restored model scores the validation split as the trained one did before saving.
    val = {"x": jnp.asarray(splits.val["x"])}
    _, metrics = jax.jit(lambda b: run.model.loss(b, rngs=nnx.Rngs(0), step=jnp.asarray(0)))(val)
    assert float(values(metrics)["elbo"]) == pytest.approx(last["val/elbo"], rel=1e-5)
    stage1 = load_run(parent).model
    for a, b in zip(jax.tree.leaves(nnx.state(run.model.parent)), jax.tree.leaves(nnx.state(stage1))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the parent did not move
    x = jnp.asarray(splits.val["x"][:3])
    outputs = nnx.jit(lambda m: (m.reconstruct(x), m.sample(3, rngs=nnx.Rngs(sample=0))))(run.model)
    assert [o.shape for o in outputs] == [x.shape, x.shape]
    assert (run.path / "samples_t0.7.png").is_file()


def test_bad_parents_are_one_line(parent, splits, tmp_path):
    with pytest.raises(VaekitError, match="needs model.parent=RUN"):
        tiny_config(model=PRIOR)
    with pytest.raises(VaekitError, match="does not exist"):
        resolve_parent(_prior_cfg(tmp_path / "nowhere"))
    with pytest.raises(VaekitError, match="is built on a trained run"):
        build_model(_prior_cfg(parent), splits.spec, rngs=nnx.Rngs(params=0))  # no parent handed
    not_vq = VAE(tiny_config().model, tiny_config().objective, splits.spec, rngs=nnx.Rngs(params=0))
    with pytest.raises(VaekitError, match="is a vae run, not a vqvae run"):
        build_model(_prior_cfg(parent), splits.spec, rngs=nnx.Rngs(params=0), parent=not_vq)
    changed = tmp_path / "changed"
    shutil.copytree(parent, changed)
    cfg, _ = resolve_parent(_prior_cfg(changed), weights=False)  # as training records it
    files = [p for p in (changed / "checkpoints" / "best").rglob("*") if p.is_file()]
    blob = max(files, key=lambda p: p.stat().st_size)
    blob.write_bytes(blob.read_bytes()[:-1] + bytes([blob.read_bytes()[-1] ^ 1]))
    with pytest.raises(VaekitError, match="changed since this vqprior was trained on it"):
        resolve_parent(cfg)
    shutil.rmtree(changed)
    with pytest.raises(VaekitError, match="does not exist"):
        resolve_parent(cfg, weights=False)  # what load_run asks of a vanished parent
    from vaekit.cli import main

    assert main(["train", "--preset", "mnist-vqvae-prior", "--no-progress"]) == 2
