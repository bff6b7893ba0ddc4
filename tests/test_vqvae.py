"""VQ-VAE (models/vqvae.py): the EMA codebook update, straight-through gradients, restarts,
perplexity, the uniform-prior bound, the EMA state through a train step and a checkpoint, bad input."""

import itertools
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import replace, shared_run, synthetic_splits, tiny_config
from vaekit.runs.run import load_run
from vaekit.data import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import values
from vaekit.models import build_model
from vaekit.models.vqvae import Codebook, Quantized, batch_perplexity, code_pictures, code_statistics
from vaekit.runs.train import train

TINY = {"kind": "vqvae", "codebook_size": 8, "code_dim": 4, "channels": 8, "res_blocks": 1, "stages": 2}
TRAIN = {"epochs": 1, "batch_size": 20, "chunk_steps": 3}


def _cfg(**model):
    return tiny_config(model={**TINY, **model}, train=TRAIN)


@pytest.fixture(scope="module")
def splits():
    return synthetic_splits(n=120)


def tiny_vq_run(tmp_path_factory):
    """A tiny trained vqvae run (6 steps on the synthetic images), trained once per session for
    every worker (`conftest.shared_run`): also the parent of tests/test_vqprior.py."""
    def make(runs, name):  # with its pictures: the codebook's are checked here, the prior's samples in test_vqprior
        cfg = _cfg()
        train(replace(cfg, "train", pictures=True), data=synthetic_splits(n=120), runs_dir=runs, name=name, progress=False)

    return shared_run(tmp_path_factory, "vq", make)


@pytest.fixture(scope="module")
def vq_run(tmp_path_factory):
    return tiny_vq_run(tmp_path_factory)


def _codebook(e, size, embed_sum=None, threshold=0.0, ema=True):
    book = Codebook(len(e), e.shape[1], ema=ema, decay=0.9, epsilon=1e-5, threshold=threshold, rngs=nnx.Rngs(0))
    book.embedding[...] = jnp.asarray(e)
    book.cluster_size[...] = jnp.asarray(size)
    if ema:
        book.embed_sum[...] = jnp.asarray(e * size[:, None] if embed_sum is None else embed_sum)
    return book


def test_ema_update_matches_the_closed_form():
    e = np.array([[0.0, 0.0], [1.0, 1.0], [-2.0, 1.0]], np.float32)
    size = np.array([2.0, 0.5, 1.0], np.float32)
    m = np.array([[0.2, -0.1], [0.4, 0.6], [-1.5, 0.8]], np.float32)
    z = np.array([[0.1, -0.2], [0.9, 1.2], [1.1, 0.8], [-0.1, 0.1], [1.0, 0.9]], np.float32)
    book = _codebook(e, size, m)
    q = book.quantize(jnp.asarray(z))
    codes = np.argmin(((z[:, None] - e[None]) ** 2).sum(-1), 1)
    np.testing.assert_array_equal(np.asarray(q.codes), codes)  # [0, 1, 1, 0, 1]: code 2 unused
    assert int(book.update(q, jax.random.PRNGKey(0))) == 0
    g, eps, k = 0.9, 1e-5, 3
    onehot = np.eye(k)[codes]
    n_new = g * size + (1 - g) * onehot.sum(0)
    m_new = g * m + (1 - g) * onehot.T @ z
    n = n_new.sum()
    e_new = m_new / ((n_new + eps) / (n + k * eps) * n)[:, None]
    np.testing.assert_allclose(np.asarray(book.cluster_size[...]), n_new, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(book.embed_sum[...]), m_new, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(book.embedding[...]), e_new, rtol=1e-5)


def test_a_restart_revives_a_code_no_input_selects():
    for ema in (True, False):
        e = np.array([[0.0, 0.0], [1.0, 1.0], [50.0, 50.0]], np.float32)  # code 2 is far from every input
        book = _codebook(e, np.array([1.0, 1.0, 0.0], np.float32), threshold=0.5, ema=ema)
        z = jnp.asarray([[0.1, 0.0], [0.9, 1.1], [3.0, 3.0]])
        q = book.quantize(z)
        assert 2 not in np.asarray(q.codes)
        assert int(book.update(q, jax.random.PRNGKey(1))) == 1  # only code 2 is below the threshold
        new = np.asarray(book.vectors()[2])
        assert any(np.allclose(new, row) for row in np.asarray(z)), new  # moved onto a batch output
        assert float(book.cluster_size[2]) == 1.0 and int(book.restarts[...]) == 1
        np.testing.assert_allclose(np.asarray(book.vectors()[:2]), np.asarray(book.vectors()[:2]))
        hits = np.asarray(book.quantize(jnp.asarray(new)[None]).codes)
        assert hits[0] == 2 or np.allclose(np.asarray(book.vectors()[hits[0]]), new)  # now selectable


def test_perplexity_against_numpy():
    codes = np.random.default_rng(0).integers(0, 6, (5, 3, 3))
    p = np.bincount(codes.ravel(), minlength=10) / codes.size
    p = p[p > 0]
    np.testing.assert_allclose(float(batch_perplexity(jnp.asarray(codes), 10)), np.exp(-(p * np.log(p)).sum()),
                               rtol=1e-5)
    assert float(batch_perplexity(jnp.zeros((4, 2), jnp.int32), 10)) == pytest.approx(1.0)


def test_code_statistics_against_numpy():
    codes = np.random.default_rng(1).integers(0, 4, (50, 2, 3))
    codes[:, 0, 0] = 2  # one position always the same code: zero entropy there
    stats = code_statistics(codes, 6)
    for i, j in itertools.product(range(2), range(3)):
        _, n = np.unique(codes[:, i, j], return_counts=True)
        p = n / n.sum()
        assert stats["entropy"][i, j] == pytest.approx(-(p * np.log(p)).sum(), abs=1e-12)
    assert stats["entropy"][0, 0] == 0 and stats["codes_in_use"] == 4
    assert stats["perplexity"] == pytest.approx(float(batch_perplexity(jnp.asarray(codes), 6)), rel=1e-5)


def test_code_pictures_are_data_that_plots_draws(tmp_path):
    """The model returns what its pictures show (sorted usage bars, the entropy map against log K);
    only `plots` draws them."""
    from vaekit import plots
    from vaekit.models.base import Bars, Heatmap, ImageGrid

    codes = np.random.default_rng(2).integers(0, 4, (30, 2, 3))
    pictures = code_pictures(codes, 6)
    usage, entropy = pictures["codebook_usage.png"], pictures["code_entropy.png"]
    assert isinstance(usage, Bars) and isinstance(entropy, Heatmap)
    np.testing.assert_array_equal(usage.heights, np.sort(np.bincount(codes.ravel(), minlength=6))[::-1])
    assert entropy.values.shape == (2, 3) and entropy.vmax == pytest.approx(math.log(6))
    pictures["grid.png"] = ImageGrid(np.zeros((4, 5, 5, 1), np.float32), 2, "a grid")
    for name, data in pictures.items():
        plots.save_picture(tmp_path / name, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code_entropy.png", "codebook_usage.png", "grid.png"]


def test_straight_through_gradient_reaches_the_encoder_unchanged(splits):
    """With no commitment term and an EMA codebook, the encoder's gradient is the decoder input's."""
    model = build_model(_cfg(commitment=0.0), splits.spec, rngs=nnx.Rngs(params=0))
    model.eval()  # no statistics updates: the loss is a pure function
    x = jnp.asarray(splits.val["x"][:6])
    graphdef, enc_params, rest = nnx.split(model, nnx.All(nnx.Param, nnx.PathContains("encoder")), ...)

    @jax.jit
    def grads(enc_params, rest):
        m = nnx.merge(graphdef, enc_params, rest, copy=True)
        z_e = m.encoder(x)
        q = m.codebook.quantize(z_e)
        recon = lambda z: jnp.mean(-m.decode(z).log_prob(x))  # noqa: E731
        g_dec = jax.grad(recon)(q.z_q)  # the decoder input's gradient
        g_enc = jax.grad(lambda ze: recon(Quantized(q.codes, q.z_q, ze).straight_through))(z_e)
        # the loss's gradient for the encoder's parameters, and g_dec pulled back through the encoder
        loss_of = lambda p: nnx.merge(graphdef, p, rest, copy=True).loss(  # noqa: E731
            {"x": x}, rngs=nnx.Rngs(0), step=jnp.asarray(0))[0]
        pulled = jax.vjp(lambda p: nnx.merge(graphdef, p, rest, copy=True).encoder(x), enc_params)[1](g_dec)[0]
        return g_dec, g_enc, jax.grad(loss_of)(enc_params), pulled

    g_dec, g_enc, from_loss, pulled = grads(enc_params, rest)
    np.testing.assert_allclose(np.asarray(g_enc), np.asarray(g_dec), rtol=1e-6, atol=1e-8)
    assert float(jnp.max(jnp.abs(g_dec))) > 0
    for a, b in zip(jax.tree.leaves(from_loss), jax.tree.leaves(pulled)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-7)


def test_codebook_loss_gradient_matches_the_closed_form(splits):
    """codebook=loss: only ||sg[z_e] - e||^2 moves the codes: d/de_k = (2/B) sum_{i: k_i = k} (e_k - z_e,i)."""
    model = build_model(_cfg(codebook="loss"), splits.spec, rngs=nnx.Rngs(params=0))
    model.eval()
    x = jnp.asarray(splits.val["x"][:6])
    graphdef, book, rest = nnx.split(model, nnx.All(nnx.Param, nnx.PathContains("codebook")), ...)

    @jax.jit
    def run(book, rest):
        loss = lambda b: nnx.merge(graphdef, b, rest, copy=True).loss(  # noqa: E731
            {"x": x}, rngs=nnx.Rngs(0), step=jnp.asarray(0))[0]
        return jax.grad(loss)(book), nnx.merge(graphdef, book, rest, copy=True).encode(x)

    grad, q = run(book, rest)
    codes, z_e = np.asarray(q.codes).reshape(-1), np.asarray(q.z_e).reshape(-1, 4)
    e = np.asarray(model.codebook.vectors())
    expected = np.zeros_like(e)
    np.add.at(expected, codes, 2.0 / 6 * (e[codes] - z_e))
    np.testing.assert_allclose(np.asarray(jax.tree.leaves(grad)[0]), expected, rtol=1e-4, atol=1e-6)


def test_bound_is_log_likelihood_at_the_codes_minus_grid_log_k(splits):
    model = build_model(_cfg(), splits.spec, rngs=nnx.Rngs(params=1))
    model.eval()
    x = (np.asarray(splits.val["x"][:5]) > 0.5).astype(np.float32)

    @nnx.jit  # one program instead of op by op
    def outputs(model):
        batch = {"x": jnp.asarray(x)}
        return (model.log_weights(batch, 3, rngs=nnx.Rngs(0)), model.reconstruct(batch["x"]),
                model.loss(batch, rngs=nnx.Rngs(0), step=jnp.asarray(0))[1])

    lw, p, metrics = outputs(model)
    lw, p = np.asarray(lw), np.asarray(p, np.float64)  # Bernoulli means at z_q
    ll = (x * np.log(p) + (1 - x) * np.log1p(-p)).sum(axis=(1, 2, 3))
    expected = ll - 4 * math.log(8)  # a 2x2 grid of 8 codes
    assert lw.shape == (5, 3)
    np.testing.assert_allclose(lw, np.repeat(expected[:, None], 3, 1), rtol=1e-4)
    np.testing.assert_allclose(float(values(metrics)["elbo"]), expected.mean(), rtol=1e-4)


def test_ema_state_survives_the_train_step_and_a_checkpoint(vq_run, splits):
    run = load_run(vq_run, checkpoint="latest")
    book, fresh = run.model.codebook, build_model(_cfg(), splits.spec, rngs=nnx.Rngs(params=0)).codebook
    assert not np.allclose(np.asarray(book.cluster_size[...]), np.asarray(fresh.cluster_size[...]))  # updated
    assert not np.allclose(np.asarray(book.embed_sum[...]), np.asarray(fresh.embed_sum[...]))
    assert int(book.restarts[...]) == run.history[-1]["val/restarts_total"] > 0  # the first step placed codes
    assert (run.path / "codebook_usage.png").is_file() and (run.path / "code_entropy.png").is_file()
    # The restored codebook scores the validation split exactly as the trained one did before saving.
    _, metrics = jax.jit(lambda b: run.model.loss(b, rngs=nnx.Rngs(0), step=jnp.asarray(0)))(
        {"x": jnp.asarray(splits.val["x"])})
    np.testing.assert_allclose(float(values(metrics)["elbo"]), run.history[-1]["val/elbo"], rtol=1e-5)


def test_sampling_a_stage_one_run_says_it_draws_uniformly(splits, caplog):
    model = build_model(_cfg(), splits.spec, rngs=nnx.Rngs(params=0))
    with caplog.at_level(logging.INFO, logger="vaekit"):
        out = model.sample(3, rngs=nnx.Rngs(sample=0))
    assert out.shape == (3, 8, 8, 1)
    assert sum("uniformly" in r.getMessage() for r in caplog.records) == 1


def test_bad_input_is_one_line(splits, tmp_path):
    with pytest.raises(VaekitError, match="codebook_size must be >= 2"):
        _cfg(codebook_size=1)
    with pytest.raises(VaekitError, match="objective.beta=4.0 cannot apply"):
        build_model(tiny_config(model=TINY, objective={"beta": 4.0}), splits.spec, rngs=nnx.Rngs(params=0))
    with pytest.raises(VaekitError, match="divisible by 8, got 28x28"):
        build_model(_cfg(stages=3), DataSpec("images", (28, 28, 1), 10), rngs=nnx.Rngs(params=0))
    from vaekit.cli import main

    assert main(["train", "--preset", "mnist-vqvae", "--set", "model.codebook_size=1", "--no-progress"]) == 2
    assert main(["train", "--preset", "mnist-vqvae", "--set", "model.stages=3", "--set", "data.limit=200",
                 "--no-progress", "--runs-dir", str(tmp_path)]) == 2
    assert not any(tmp_path.iterdir())  # refused before a run directory was made
