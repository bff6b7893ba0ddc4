"""Encoder/decoder output shapes and BatchNorm train/eval behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaekit.config import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models import VAE
from vaekit.nets import build_decoder, build_encoder


@pytest.mark.parametrize("net,shape,channels", [
    ("mlp", (28, 28, 1), (32, 64)),
    ("conv", (28, 28, 1), (32, 64)),
    ("mlp", (64, 64, 3), (32, 64)),
    ("conv", (64, 64, 3), (32, 32, 64, 64)),
    ("conv", (32, 32, 1), (16, 32, 32)),
])
def test_encoder_decoder_shapes(net, shape, channels):
    cfg = ModelConfig(net=net, hidden=(16,), conv_channels=channels, conv_dense=8, latent_dim=5)
    enc = build_encoder(cfg, shape, 10, rngs=nnx.Rngs(0))
    dec = build_decoder(cfg, 5, shape, 2, rngs=nnx.Rngs(0))
    shape_of = lambda m, *a: nnx.eval_shape(lambda m, x: m(x), m, jnp.zeros(a)).shape  # noqa: E731  (traced, not run)
    assert shape_of(enc, 3, *shape) == (3, 10)
    assert shape_of(dec, 3, 5) == (3, *shape, 2)
    assert shape_of(dec, 4, 3, 5) == (4, 3, *shape, 2)  # leading draw axis


@pytest.mark.parametrize("likelihood,width", [("bernoulli", 1), ("categorical", 256), ("gaussian_learned", 2)])
def test_vae_images_in_images_out(likelihood, width):
    cfg = ModelConfig(net="conv", conv_channels=(8, 8), latent_dim=3, likelihood=likelihood)
    model = VAE(cfg, ObjectiveConfig(), DataSpec("images", (28, 28, 1)), rngs=nnx.Rngs(0))
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28)), jnp.float32)  # (N, H, W) accepted
    assert model.encode(x).mean.shape == (2, 3)
    assert model.reconstruct(x).shape == (2, 28, 28, 1)
    assert model.sample(4, rngs=nnx.Rngs(1)).shape == (4, 28, 28, 1)
    assert model.log_weights({"x": x}, 3, rngs=nnx.Rngs(1)).shape == (2, 3)


def test_conv_rejects_sides_not_divisible():
    with pytest.raises(VaekitError, match="divisible by 8"):
        build_encoder(ModelConfig(net="conv", conv_channels=(8, 8, 8)), (28, 28, 1), 4, rngs=nnx.Rngs(0))


def test_batchnorm_uses_batch_stats_in_train_and_running_stats_in_eval():
    cfg = ModelConfig(net="conv", conv_channels=(4, 4), latent_dim=2)
    enc = build_encoder(cfg, (8, 8, 1), 4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1)) * 5 + 3
    before = np.array(enc.norms[0].mean[...])
    enc.train()
    a = enc(x)
    assert not np.allclose(np.array(enc.norms[0].mean[...]), before)  # running stats moved
    enc.eval()
    frozen = np.array(enc.norms[0].mean[...])
    b1, b2 = enc(x), enc(x[:1])
    np.testing.assert_allclose(np.array(enc.norms[0].mean[...]), frozen)  # eval never updates them
    np.testing.assert_allclose(b1[:1], b2, rtol=1e-4, atol=1e-5)  # eval output independent of the batch
    assert not np.allclose(a, b1)
