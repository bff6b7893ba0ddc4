"""vaekit.nets.cpu_conv, and the other forms benchmarks/conv_forms.py measures: every CPU form equals
the nnx layer it replaces, in value and gradient."""

import importlib.util
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vaekit.nets import cpu_conv as cc


def _benchmark_forms():
    """benchmarks/conv_forms.py, by file (benchmarks/ is not a package on the path)."""
    path = Path(__file__).parents[1] / "benchmarks" / "conv_forms.py"
    spec = importlib.util.spec_from_file_location("conv_forms", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


forms = _benchmark_forms()

# (height, width, in channels, out channels): odd channel counts, odd and even sides
SHAPES = [(28, 28, 3, 5), (64, 64, 1, 3), (7, 7, 5, 3), (8, 6, 2, 7)]


def _close(a, b, scale=None):
    a, b = np.asarray(a), np.asarray(b)
    scale = max(1.0, float(np.max(np.abs(b)))) if scale is None else scale
    np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-5 * scale)


def _value_and_grads(layer, x, calls):
    """For each call: f(x) = <call(layer, x), g> with g fixed: (output, value, d/dx, d/d(params)).

    All in one jitted function (one compilation per test instead of one per eager op).
    """
    graphdef, params = nnx.split(layer)
    g = jax.random.normal(jax.random.key(7), jax.eval_shape(lambda: layer(x)).shape)

    @jax.jit
    def run(x, params):
        out = []
        for call in calls:
            def f(x, params, call=call):
                y = call(nnx.merge(graphdef, params), x)
                return jnp.vdot(y, g), y

            (v, y), (gx, gp) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, params)
            out.append((y, v, gx, gp))
        return out

    return run(x, params)


def _compare(layer, x, form_calls):
    ref, *results = _value_and_grads(layer, x, [lambda m, x: m(x), *form_calls])
    for y1, v1, gx1, gp1 in results:
        assert y1.shape == ref[0].shape
        _close(y1, ref[0])
        _close(v1, ref[1])
        _close(gx1, ref[2])
        jax.tree.map(_close, gp1, ref[3])


def _layer(cls, h, w, ci, co, **kw):
    layer = cls(ci, co, (4, 4), strides=2, padding="SAME", rngs=nnx.Rngs(h * 100 + w), **kw)
    layer.bias[...] = jax.random.normal(jax.random.key(3), (co,))  # a non-zero bias
    x = jax.random.normal(jax.random.key(h + ci), (2, h, w, ci))
    return layer, x


def _form_calls(entry, names, table):
    return [lambda m, x, f=table[name]: entry(m, x, form=f) for name in names if name != "native"]


# The default forms (what the nets use) on every shape; every benchmarked form on one shape.
@pytest.mark.parametrize("h,w,ci,co,names",
                         [(*s, ("s2d",)) for s in SHAPES[1:]] + [(*SHAPES[0], tuple(forms.CONV_FORMS))])
def test_conv_forms_equal_nnx_conv(h, w, ci, co, names):
    assert forms.CONV_FORMS["s2d"] is cc.CONV_FORM
    layer, x = _layer(nnx.Conv, h, w, ci, co)
    _compare(layer, x, _form_calls(cc.conv, names, forms.CONV_FORMS))


@pytest.mark.parametrize(
    "h,w,ci,co,names",
    [(*s, ("d2s",)) for s in SHAPES[1:]] + [(*SHAPES[0], tuple(forms.CONV_TRANSPOSE_FORMS))],
)
def test_conv_transpose_forms_equal_nnx_conv_transpose(h, w, ci, co, names):
    assert forms.CONV_TRANSPOSE_FORMS["d2s"] is cc.CONV_TRANSPOSE_FORM
    h, w = max(1, h // 2), max(1, w // 2)  # decoder inputs are the small side
    layer, x = _layer(nnx.ConvTranspose, h, w, ci, co)
    _compare(layer, x, _form_calls(cc.conv_transpose, names, forms.CONV_TRANSPOSE_FORMS))


def test_default_entry_points_and_batch_axes():
    conv, x = _layer(nnx.Conv, 16, 16, 3, 5)
    tconv, z = _layer(nnx.ConvTranspose, 8, 8, 3, 5)
    _compare(conv, x, [cc.conv])
    _compare(tconv, z, [cc.conv_transpose])
    # several leading batch axes, and none (nnx adds and removes one)
    x3 = x.reshape(1, 2, 16, 16, 3)
    ours = jax.jit(lambda: (cc.conv(conv, x3), cc.conv(conv, x[0]), cc.conv_transpose(tconv, z[0])))()
    theirs = jax.jit(lambda: (conv(x3), conv(x[0]), tconv(z[0])))()
    jax.tree.map(_close, ours, theirs)


def test_jit_and_no_bias():
    layer = nnx.Conv(3, 4, (4, 4), strides=2, padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (2, 12, 12, 3))
    _close(jax.jit(cc.conv)(layer, x), layer(x))
    t = nnx.ConvTranspose(3, 4, (4, 4), strides=2, padding="SAME", use_bias=False, rngs=nnx.Rngs(0))
    _close(jax.jit(cc.conv_transpose)(t, x), t(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: nnx.Conv(3, 4, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0)),
        lambda: nnx.Conv(3, 4, (4, 4), strides=1, padding="SAME", rngs=nnx.Rngs(0)),
        lambda: nnx.Conv(3, 4, (4, 4), strides=2, padding="VALID", rngs=nnx.Rngs(0)),
        lambda: nnx.Conv(4, 4, (4, 4), strides=2, padding="SAME", feature_group_count=2, rngs=nnx.Rngs(0)),
        lambda: nnx.ConvTranspose(3, 4, (3, 3), strides=2, padding="SAME", rngs=nnx.Rngs(0)),
        lambda: nnx.ConvTranspose(3, 4, (4, 4), strides=2, padding="SAME", transpose_kernel=True, rngs=nnx.Rngs(0)),
    ],
)
def test_other_layers_fall_back_to_the_layer(make):
    layer = make()
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, layer.in_features))
    applies = cc.conv_applies(layer) or cc.conv_transpose_applies(layer)
    assert not applies
    fn = cc.conv if isinstance(layer, nnx.Conv) else cc.conv_transpose
    np.testing.assert_array_equal(fn(layer, x), layer(x))


def test_the_forms_apply_on_cpu_only(monkeypatch):
    layer, x = _layer(nnx.Conv, 8, 8, 2, 3)
    assert cc.conv_applies(layer) == (jax.default_backend() == "cpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert not cc.conv_applies(layer)
    np.testing.assert_array_equal(cc.conv(layer, x), layer(x))


@pytest.mark.parametrize("shape", [(3, 7, 5, 3), (2, 3, 4, 4, 3)])
def test_batch_norm_equals_nnx(shape):
    c = shape[-1]
    x = 1.5 + 2.0 * jax.random.normal(jax.random.key(0), shape)
    bn = nnx.BatchNorm(c, momentum=0.9, rngs=nnx.Rngs(0))
    bn.scale[...] = 1.0 + 0.3 * jax.random.normal(jax.random.key(1), (c,))
    bn.bias[...] = 0.3 * jax.random.normal(jax.random.key(2), (c,))
    bn.train()
    graphdef, state = nnx.split(bn)
    g = jax.random.normal(jax.random.key(3), shape)

    @jax.jit
    def both(x, state):
        out = []
        for call in (lambda m, x: m(x), cc.batch_norm):
            def loss(x, state, call=call):
                m = nnx.merge(graphdef, state, copy=True)
                y = call(m, x)
                return jnp.vdot(y, g), (y, nnx.state(m))

            out.append(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(x, state))
        return out

    ((v0, (y0, s0)), (gx0, gs0)), ((v1, (y1, s1)), (gx1, gs1)) = both(x, state)
    _close(y1, y0)
    _close(v1, v0)
    _close(gx1, gx0)
    _close(gs1["scale"][...], gs0["scale"][...])
    _close(gs1["bias"][...], gs0["bias"][...])
    _close(s1["mean"][...], s0["mean"][...])  # the running averages move the same way
    _close(s1["var"][...], s0["var"][...])
    # evaluation mode uses the running averages
    m = nnx.merge(graphdef, s0)
    m.eval()
    _close(cc.batch_norm(m, x), m(x))
    _close(cc.batch_norm(m, x, use_running_average=False), m(x, use_running_average=False))


def test_channel_sums_and_add_bias():
    x = jax.random.normal(jax.random.key(0), (3, 5, 7, 4))
    b = jnp.arange(4.0)
    _close(cc.channel_sums(x), jnp.sum(x, axis=(0, 1, 2)))
    _close(cc.add_bias(x, b), x + b)
    g = jax.grad(lambda b: jnp.sum(jnp.sin(cc.add_bias(x, b))))(b)
    _close(g, jax.grad(lambda b: jnp.sum(jnp.sin(x + b)))(b))


@pytest.mark.parametrize("shape", [(7, 5, 3), (64, 8, 8, 16), (1, 1, 4), (2, 3, 3, 5), (1, 4)])
def test_channel_sums_equal_float64(shape):
    x = np.asarray(jax.random.normal(jax.random.key(3), shape)) + 3.0  # an offset, as activations have
    expected = x.astype(np.float64).reshape(-1, shape[-1]).sum(axis=0)
    np.testing.assert_allclose(np.asarray(cc.channel_sums(jnp.asarray(x))), expected, rtol=1e-5)
    half = cc.channel_sums(jnp.asarray(x, jnp.bfloat16), jnp.float32)  # bf16 in, float32 sums
    assert half.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(half), expected, rtol=2e-2)
