"""train.precision=bf16: which layers compute in bfloat16, what stays float32, and that a bf16
training step is the float32 step up to bfloat16 rounding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import step_loss, synthetic_splits, tiny_config
from vaekit import config as config_lib
from vaekit import nets
from vaekit.errors import VaekitError
from vaekit.models import build_model
from vaekit.training.loop import Trainer


@pytest.mark.parametrize("net, hidden_layers", [
    ({"hidden": (16, 8)}, 4),  # MLP: 2 hidden dense layers in the encoder, 2 in the decoder
    ({"net": "conv", "conv_channels": (4, 8), "conv_dense": 16}, 6),  # 2 convs + dense; project + 1 deconv + dense
])
def test_compute_dtype_sets_the_hidden_layers_only_and_restores_them(net, hidden_layers):
    splits = synthetic_splits(n=8, shape=(8, 8, 1))
    model = build_model(tiny_config(model=net), splits.spec, rngs=nnx.Rngs(0))
    outputs = {id(nets.OUTPUT_LAYER[type(m)](m)) for _, m in nnx.iter_modules(model) if type(m) in nets.OUTPUT_LAYER}
    assert len(outputs) == 2  # the encoder's head and the decoder's last layer
    with nets.compute_dtype(model, "bf16") as n:
        assert n == hidden_layers
        for _, layer in nnx.iter_modules(model):
            if isinstance(layer, (nnx.Linear, nnx.Conv, nnx.ConvTranspose)):
                assert layer.dtype == (None if id(layer) in outputs else jnp.bfloat16)
    assert all(getattr(layer, "dtype", None) is None for _, layer in nnx.iter_modules(model)
               if isinstance(layer, (nnx.Linear, nnx.Conv, nnx.ConvTranspose)))
    with nets.compute_dtype(model, "fp32") as n:
        assert n == 0


def _trainers(model_cfg):
    splits = synthetic_splits(n=64, shape=(8, 8, 1), binarize="static")
    make = lambda p: Trainer(tiny_config(model=model_cfg, train={"batch_size": 32, "precision": p}), splits)  # noqa: E731
    return make("fp32"), make("bf16")


@pytest.mark.parametrize("model_cfg", [{"hidden": (64, 32)}, {"net": "conv", "conv_channels": (8, 16), "conv_dense": 32}])
def test_a_bf16_step_is_the_fp32_step_up_to_rounding(model_cfg):
    fp32, bf16 = _trainers(model_cfg)
    idx = jnp.arange(32)
    lowered = {name: jax.jit(tr.train_step).lower(tr.state, tr.train_data, idx)
               for name, tr in (("fp32", fp32), ("bf16", bf16))}
    hlo = {name: step.as_text() for name, step in lowered.items()}
    assert "bf16" in hlo["bf16"] and "bf16" not in hlo["fp32"]  # the option reaches the compiled step
    for a, b in zip(jax.tree.leaves(fp32.state.params), jax.tree.leaves(bf16.state.params)):
        np.testing.assert_array_equal(a, b)  # the same initial parameters

    def loss_and_grad(tr):
        return jax.jit(jax.value_and_grad(step_loss(tr, idx)))(tr.state.params)

    (l32, g32), (l16, g16) = loss_and_grad(fp32), loss_and_grad(bf16)
    assert float(l16) != float(l32) and abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32))
    v32, v16 = (np.concatenate([np.ravel(x) for x in jax.tree.leaves(g)]) for g in (g32, g16))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))  # gradients of float32 parameters
    assert v16 @ v32 / (np.linalg.norm(v16) * np.linalg.norm(v32)) > 0.99

    # One step each (the steps lowered above): the bf16 trainer's parameters and optimizer state stay
    # float32, and its validation runs the float32 graph (the same state validates the same in both).
    for name, tr in (("fp32", fp32), ("bf16", bf16)):
        tr.state, _ = lowered[name].compile()(tr.state, tr.train_data, idx)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves((bf16.state.params, bf16.state.opt_state))
               if jnp.issubdtype(x.dtype, jnp.floating))
    fp32.state = jax.tree.map(jnp.copy, bf16.state)
    a, b = fp32.validate(), bf16.validate()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_precision_is_checked():
    with pytest.raises(VaekitError, match="train.precision must be one of fp32, bf16; got 'fp16'"):
        config_lib.resolve("mnist-mlp", None, ["train.precision=fp16"])


def test_bf16_on_a_model_without_such_nets_is_refused_before_anything_is_written(tmp_path, capsys):
    from vaekit.cli import main

    argv = ["train", "--preset", "mnist-vqvae", "--set", "train.precision=bf16", "--set", "train.epochs=1",
            "--set", "data.limit=200", "--runs-dir", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.kind 'vqvae' has none" in err, err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
