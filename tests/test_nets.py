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
    """Shapes only, so the model and its outputs are traced, never computed (`nnx.eval_shape`)."""
    cfg = ModelConfig(net="conv", conv_channels=(8, 8), latent_dim=3, likelihood=likelihood)
    model = nnx.eval_shape(lambda: VAE(cfg, ObjectiveConfig(), DataSpec("images", (28, 28, 1)), rngs=nnx.Rngs(0)))
    model.eval()
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 28, 28)), jnp.float32)  # (N, H, W) accepted

    def outputs(m):
        return (m.encode(x).mean, m.reconstruct(x), m.sample(4, rngs=nnx.Rngs(1)),
                m.log_weights({"x": x}, 3, rngs=nnx.Rngs(1)))

    shapes = [o.shape for o in nnx.eval_shape(outputs, model)]
    assert shapes == [(2, 3), (2, 28, 28, 1), (4, 28, 28, 1), (2, 3)]


def test_conv_rejects_sides_not_divisible():
    with pytest.raises(VaekitError, match="divisible by 8"):
        build_encoder(ModelConfig(net="conv", conv_channels=(8, 8, 8)), (28, 28, 1), 4, rngs=nnx.Rngs(0))


def test_batchnorm_uses_batch_stats_in_train_and_running_stats_in_eval():
    cfg = ModelConfig(net="conv", conv_channels=(4, 4), latent_dim=2)
    enc = build_encoder(cfg, (8, 8, 1), 4, rngs=nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 1)) * 5 + 3
    call = nnx.jit(lambda m, x: m(x))  # state updates come back to `enc`, as from an eager call
    before = np.array(enc.norms[0].mean[...])
    enc.train()
    a = call(enc, x)
    assert not np.allclose(np.array(enc.norms[0].mean[...]), before)  # running stats moved
    enc.eval()
    frozen = np.array(enc.norms[0].mean[...])
    b1, b2 = call(enc, x), call(enc, x[:1])
    np.testing.assert_allclose(np.array(enc.norms[0].mean[...]), frozen)  # eval never updates them
    np.testing.assert_allclose(b1[:1], b2, rtol=1e-4, atol=1e-5)  # eval output independent of the batch
    assert not np.allclose(a, b1)


def _call(net, x, c=None):
    return net(x, c)


def _reference_conv_net(net, x, c=None):
    """The conv encoder/decoder computed with the nnx layers whole (bias included), as written."""
    from vaekit.nets.conditioning import ConditionalBatchNorm
    from vaekit.nets.conv import ConvEncoder

    def _apply_norm(norm, h, c):
        if isinstance(norm, ConditionalBatchNorm):
            return norm.norm(h) * (c @ norm.scale[...])[:, None, None] + (c @ norm.bias[...])[:, None, None]
        return norm(h)

    if isinstance(net, ConvEncoder):
        h = x
        for layer, norm in zip(net.convs, net.norms):
            h = jax.nn.relu(_apply_norm(norm, layer(h), c))
        h = jax.nn.relu(net.dense(h.reshape(h.shape[0], -1)))
        return net.head(h)
    h = jax.nn.relu(net.dense(x))
    h = jax.nn.relu(net.project(h)).reshape(h.shape[0], net.h0, net.w0, -1)
    for i, deconv in enumerate(net.deconvs):
        h = deconv(h)
        if i < len(net.norms):
            h = jax.nn.relu(_apply_norm(net.norms[i], h, c))
    return h.reshape(x.shape[0], *net.image_shape, net.params_per_channel)


@pytest.mark.parametrize("condition", [None, "cbn"])
@pytest.mark.parametrize("part", ["encoder", "decoder"])
def test_conv_nets_in_training_equal_the_nnx_layers_whole(part, condition):
    """On CPU a conv followed by a training-mode BatchNorm runs without its bias (the batch mean
    cancels it) and adds the bias to the running mean instead, and the BatchNorm takes its channel
    sums as matrix-vector products: output, gradients and running averages equal the nnx layers run
    whole; the bias gradient is exactly 0."""
    cfg = ModelConfig(net="conv", conv_channels=(4, 6), conv_dense=8, latent_dim=3)
    k = 3 if condition else 0
    build = build_encoder if part == "encoder" else build_decoder
    args = ((16, 16, 1), 6) if part == "encoder" else (3, (16, 16, 1), 1)
    net = build(cfg, *args, cond_dim=k, condition=condition, rngs=nnx.Rngs(0))
    for layer in (net.convs if part == "encoder" else net.deconvs):
        layer.bias[...] = jax.random.normal(jax.random.key(5), layer.bias.shape)  # non-zero biases
    net.train()
    x = (jax.random.uniform(jax.random.key(0), (8, 16, 16, 1)) if part == "encoder"
         else jax.random.normal(jax.random.key(0), (8, 3)))
    c = jax.nn.one_hot(jnp.arange(8) % 3, 3) if condition else None
    graphdef, params, stats = nnx.split(net, nnx.Param, ...)

    def run(params, call):
        m = nnx.merge(graphdef, params, stats, copy=True)
        y = call(m, x, c)
        return jnp.sum(jnp.sin(y)), (y, nnx.state(m, nnx.BatchStat))

    value_and_grad = jax.jit(jax.value_and_grad(run, has_aux=True), static_argnums=1)  # one program, not op by op
    (v0, (y0, s0)), g0 = value_and_grad(params, _reference_conv_net)
    (v1, (y1, s1)), g1 = value_and_grad(params, _call)
    tol = dict(rtol=1e-4, atol=1e-4)  # float32, fast variance E[x^2] - E[x]^2 with unit-size biases
    np.testing.assert_allclose(y1, y0, **tol)
    for a, b in zip(jax.tree.leaves(s1), jax.tree.leaves(s0)):  # running means and variances
        np.testing.assert_allclose(a, b, **tol)
    flat0, flat1 = dict(nnx.to_flat_state(g0)), dict(nnx.to_flat_state(g1))
    layers = "convs" if part == "encoder" else "deconvs"
    n_normed = len(net.norms)
    for path, g in flat1.items():
        ref = flat0[path][...]
        if path[0] == layers and path[-1] == "bias" and path[1] < n_normed:
            np.testing.assert_array_equal(g[...], 0.0)  # cancelled by the batch norm
            kernel_scale = float(np.max(np.abs(flat0[(*path[:-1], "kernel")][...])))
            assert np.max(np.abs(ref)) < 1e-2 * kernel_scale  # the reference's is float noise
        else:
            # float32 sums in another order (and XLA's unoptimized code in the suite) differ by ~1e-4 of the scale
            np.testing.assert_allclose(g[...], ref, rtol=1e-3, atol=5e-4 * max(1.0, float(np.max(np.abs(ref)))))
    net.eval()  # evaluation mode runs the layers whole
    np.testing.assert_allclose(*nnx.jit(lambda m: (m(x, c), _reference_conv_net(m, x, c)))(net), **tol)
