"""Image losses (SSIM, MS-SSIM, the L1 mix), the `sharp` model kind and the VAE-GAN."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import group_step_check, synthetic_splits, tiny_config
from vaekit.core import image_losses
from vaekit.errors import VaekitError
from vaekit.models import build_model


def _pair(n=3, side=48, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.random((n, side, side, 1)).astype(np.float32)
    # a smoothed copy plus noise: structured differences, SSIM well inside (0, 1)
    y = np.clip(0.6 * x + 0.4 * np.roll(x, 1, axis=1) + 0.05 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    return x, y


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity

    x, y = _pair()
    ours = np.asarray(image_losses.ssim(jnp.asarray(x), jnp.asarray(y)))
    for i in range(len(x)):
        ref = structural_similarity(x[i, ..., 0], y[i, ..., 0], data_range=1.0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, K1=0.01, K2=0.03)
        assert ours[i] == pytest.approx(ref, abs=2e-5)
        assert 0.2 < ref < 0.95


def _np_ms_ssim(x, y, scales, window=11, sigma=1.5):
    """MS-SSIM from the formula: direct window sums at every valid position, float64."""
    r = np.arange(window) - (window - 1) / 2
    g = np.exp(-(r**2) / (2 * sigma**2))
    w2 = np.outer(g, g) / np.outer(g, g).sum()
    weights = np.asarray(image_losses.MS_SSIM_WEIGHTS[:scales])
    weights = weights / weights.sum()
    c1, c2 = 0.01**2, 0.03**2
    x, y = x.astype(np.float64), y.astype(np.float64)
    out = 1.0
    for j in range(scales):
        h, w = x.shape
        px = np.lib.stride_tricks.sliding_window_view(x, (window, window))  # (h', w', win, win): every valid position
        py = np.lib.stride_tricks.sliding_window_view(y, (window, window))
        mx, my = (w2 * px).sum((-2, -1)), (w2 * py).sum((-2, -1))
        vx, vy = (w2 * px * px).sum((-2, -1)) - mx**2, (w2 * py * py).sum((-2, -1)) - my**2
        cxy = (w2 * px * py).sum((-2, -1)) - mx * my
        ls = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
        css = (2 * cxy + c2) / (vx + vy + c2)
        term = np.mean(ls * css) if j == scales - 1 else np.mean(css)
        out *= max(term, 1e-6) ** weights[j]
        x = x[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        y = y[: h // 2 * 2, : w // 2 * 2].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
    return out


def test_ms_ssim_matches_the_formula():
    ms_ssim = jax.jit(image_losses.ms_ssim, static_argnames=("scales", "window"))  # one program, not op by op
    x, y = _pair(n=2, side=44, seed=1)
    ours = np.asarray(ms_ssim(jnp.asarray(x), jnp.asarray(y), scales=3, window=11))
    ref = [_np_ms_ssim(x[i, ..., 0], y[i, ..., 0], 3) for i in range(2)]
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert not np.allclose(ours, np.asarray(jax.jit(image_losses.ssim)(jnp.asarray(x), jnp.asarray(y))), rtol=1e-3)
    # 7x7 windows on MNIST-sized images, the mnist-msssim preset's geometry
    x, y = _pair(n=1, side=28, seed=2)
    ours = float(ms_ssim(jnp.asarray(x), jnp.asarray(y), scales=3, window=7)[0])
    assert ours == pytest.approx(_np_ms_ssim(x[0, ..., 0], y[0, ..., 0], 3, window=7), rel=1e-4)


def test_five_scale_weights_and_identity():
    assert image_losses.scale_weights(5) == pytest.approx(image_losses.MS_SSIM_WEIGHTS)
    assert sum(image_losses.scale_weights(3)) == pytest.approx(1.0)
    x, _ = _pair(n=2, side=176)
    np.testing.assert_allclose(np.asarray(image_losses.ms_ssim(jnp.asarray(x), jnp.asarray(x))), 1.0, atol=1e-5)
    mix = image_losses.msssim_l1(jnp.asarray(x), jnp.asarray(x * 0.5), scales=5)
    assert np.all(np.asarray(mix) > 0.16 * 0.2)  # the L1 part alone is 0.16 * mean(x / 2)


def test_images_too_small_for_the_scales():
    with pytest.raises(VaekitError, match="needs images of at least 176x176; these are 28x28"):
        image_losses.check_size((28, 28, 1), 5, 11)
    image_losses.check_size((28, 28, 1), 3, 7)
    cfg = tiny_config(model={"kind": "sharp", "net": "conv", "conv_channels": (8,), "recon_loss": "msssim_l1"})
    with pytest.raises(VaekitError, match="model.recon_loss=msssim_l1 with 5 scale"):
        build_model(cfg, synthetic_splits(n=8, shape=(28, 28, 1)).spec, rngs=nnx.Rngs(0))


def test_cli_small_images_exit_2(tmp_path, capsys):
    from vaekit.cli import main

    rc = main(["train", "--runs-dir", str(tmp_path), "--preset", "mnist-msssim", "--set", "model.msssim_scales=5",
               "--set", "data.limit=200", "--set", "train.epochs=1", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "5 scale(s) and a 7x7 window needs images of at least 112x112" in err[0]


def test_sharp_model_has_no_likelihood_and_evaluate_says_so(tmp_path):
    from vaekit.runs.run import Run
    from vaekit.evaluate import evaluate

    splits = synthetic_splits(n=8, shape=(16, 16, 1))
    cfg = tiny_config(model={"kind": "sharp", "recon_loss": "ssim", "ssim_window": 7})
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0))
    assert not model.capabilities.likelihood_bound and model.capabilities.best_metric == "loss"
    run = Run(tmp_path, cfg, model, {"data_spec": splits.spec.to_dict()}, [], "best")
    with pytest.raises(VaekitError, match="vaekit evaluate needs a model with a likelihood bound"):
        evaluate(run, split="test", samples=10)
    with pytest.raises(VaekitError, match="no likelihood"):
        model.decode(jnp.zeros((1, 4))).log_prob(jnp.zeros((1, 16, 16, 1)))
    with pytest.raises(VaekitError, match="needs a likelihood"):
        build_model(tiny_config(model={"kind": "sharp"}, objective={"kind": "iwae"}), splits.spec, rngs=nnx.Rngs(0))


def test_sharp_loss_is_the_weighted_image_loss_plus_kl():
    splits = synthetic_splits(n=16, shape=(16, 16, 1))
    cfg = tiny_config(model={"kind": "sharp", "recon_loss": "msssim_l1", "msssim_scales": 2, "ssim_window": 7,
                             "recon_weight": 3.0})
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0))
    batch = {"x": jnp.asarray(splits.val["x"][:4])}
    graphdef, state = nnx.split(model)
    loss, metrics = jax.jit(lambda st, b: nnx.merge(graphdef, st).loss(b, rngs=nnx.Rngs(sample=5),
                                                                        step=jnp.asarray(0)))(state, batch)
    # the same draw by hand
    q = model.encode(batch["x"])
    z, _ = q.sample_and_log_prob(nnx.Rngs(sample=5).sample())
    x_hat = jax.nn.sigmoid(model.decoder(z, None)[..., 0])
    r = image_losses.msssim_l1(batch["x"], x_hat, scales=2, window=7)
    expected = 3.0 * 256 * np.mean(np.asarray(r)) + float(jnp.mean(q.kl()))
    assert float(loss) == pytest.approx(expected, rel=1e-4)


# --------------------------------------------------------------------------- perceptual


def test_perceptual_feature_net_is_in_no_group():
    from vaekit.training.state import split_model

    splits = synthetic_splits(n=8, shape=(28, 28, 1))
    cfg = tiny_config(model={"kind": "sharp", "recon_loss": "perceptual"})
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0))
    _, groups, rest = split_model(model)
    grouped = {p for s in groups.values() for p, _ in nnx.to_flat_state(s)}
    frozen = {p for p, _ in nnx.to_flat_state(rest) if "frozen" in p}
    assert frozen and not any("frozen" in p for p in grouped)
    assert any("encoder" in p for p in grouped)
    with pytest.raises(VaekitError, match="takes 28x28x1 images; these are 8x8x1"):
        build_model(cfg, synthetic_splits(n=8).spec, rngs=nnx.Rngs(0))


def test_perceptual_distance_is_zero_on_equal_images_and_grows():
    from vaekit.nets.features import load_shipped

    net = load_shipped("mnist")
    x = jnp.asarray(synthetic_splits(n=8, shape=(28, 28, 1)).val["x"][:2])
    zero = image_losses.perceptual(net.activations(x), net.activations(x))
    np.testing.assert_allclose(np.asarray(zero), 0.0, atol=1e-7)
    small = image_losses.perceptual(net.activations(x), net.activations(x * 0.9))
    big = image_losses.perceptual(net.activations(x), net.activations(x * 0.3))
    assert np.all(np.asarray(big) > np.asarray(small)) and np.all(np.asarray(small) > 0)


# --------------------------------------------------------------------------- VAE-GAN


def _gan(stabilizer="smoothing"):
    splits = synthetic_splits(n=16, shape=(8, 8, 1))
    cfg = tiny_config(model={"kind": "vaegan", "disc_channels": (4, 8), "stabilizer": stabilizer,
                             "disc_learning_rate": 5e-4})
    return build_model(cfg, splits.spec, rngs=nnx.Rngs(0)), {"x": jnp.asarray(splits.val["x"][:4])}, cfg


def test_vaegan_groups_change_only_their_own_parameters():
    """Each group's loss has a gradient in its own parameters (with R1, whose penalty
    differentiates through the images), and one Trainer step follows only that one: the
    discriminator's loss, from the same discriminator pass as the decoder's, also has a gradient in
    the decoder, which the step must not apply."""
    from vaekit.training.loop import Trainer

    splits = synthetic_splits(n=16, shape=(8, 8, 1))
    cfg = tiny_config(model={"kind": "vaegan", "disc_channels": (4, 8), "stabilizer": "r1",
                             "disc_learning_rate": 5e-4}, train={"batch_size": 8, "learning_rate": 1e-3})
    tr = Trainer(cfg, splits)
    params = tr.state.params
    assert set(params) == {"encoder", "decoder", "discriminator"}
    assert tr.model.param_groups()["discriminator"].learning_rate == 5e-4
    paths = {g: [p for p, _ in nnx.to_flat_state(s)] for g, s in params.items()}
    assert all("discriminator" in p for p in paths["discriminator"])
    assert all("encoder" in p for p in paths["encoder"]) and all("decoder" in p for p in paths["decoder"])
    grads = group_step_check(tr, 8, {"encoder": 1e-3, "decoder": 1e-3, "discriminator": 5e-4})
    norm = lambda g: float(jnp.sqrt(sum(jnp.sum(v**2) for v in jax.tree.leaves(g))))  # noqa: E731
    for g in params:
        assert norm(grads[g, g]) > 0, g
    assert norm(grads["discriminator", "decoder"]) > 0  # through the fakes; the step ignored it


def test_vaegan_discriminator_loss_closed_form():
    """With smoothing the discriminator's loss is BCE(real, 0.9) + BCE(rec, 0) + BCE(gen, 0), by hand."""
    model, batch, cfg = _gan()

    @nnx.jit  # one program instead of op by op
    def by_hand(model):
        losses, _ = model.loss(batch, rngs=nnx.Rngs(sample=3), step=jnp.asarray(0))
        rngs = nnx.Rngs(sample=3)
        q = model.encode(batch["x"])
        z, _ = q.sample_and_log_prob(rngs.sample())
        x_rec = model.decode(z).mean()
        x_gen = model.decode(model.prior.sample(rngs.sample(), (4,))).mean()
        return losses, [model.discriminator(v) for v in (batch["x"], x_rec, x_gen)]

    losses, ((f_real, lr), (f_rec, lf), (_, lg)) = by_hand(model)
    sig = lambda v: 1 / (1 + np.exp(-np.asarray(v, np.float64)))  # noqa: E731
    expected = np.mean(-(0.9 * np.log(sig(lr)) + 0.1 * np.log(1 - sig(lr))) - np.log(1 - sig(lf)) - np.log(1 - sig(lg)))
    assert float(losses["discriminator"]) == pytest.approx(expected, rel=1e-5)
    llike = 0.5 * np.sum((np.asarray(f_real) - np.asarray(f_rec)) ** 2, axis=(1, 2, 3)).mean()
    gen = np.mean(-np.log(sig(lf)) - np.log(sig(lg)))
    assert float(losses["decoder"]) == pytest.approx(cfg.model.gamma * llike + gen, rel=1e-5)


def test_vaegan_trains_through_the_trainer():
    from vaekit.training.loop import Trainer

    splits = synthetic_splits(n=60, shape=(8, 8, 1))
    cfg = tiny_config(model={"kind": "vaegan", "disc_channels": (4, 8)}, train={"epochs": 1, "batch_size": 20})
    trainer = Trainer(cfg, splits)
    before = jax.tree.map(np.asarray, trainer.state.params)
    out = trainer.fit_epoch()
    assert np.isfinite(out["train/loss"])
    after = trainer.state.params
    for g in before:  # every group moved
        assert any(not np.array_equal(a, np.asarray(b)) for a, b in zip(jax.tree.leaves(before[g]),
                                                                           jax.tree.leaves(after[g])))
    assert "val/mse" in trainer.validate()
