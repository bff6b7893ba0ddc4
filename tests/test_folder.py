"""Image folders (data.source=folder), residual nets (model.net=resnet) and the folder presets."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from vaekit import config as config_lib
from vaekit.config import ModelConfig
from vaekit.data import load_configured
from vaekit.data.folder import decode, split_order
from vaekit.errors import VaekitError
from vaekit.nets import build_decoder, build_encoder
from vaekit.nets.resnet import PreActBlock


def _folder(root, n_per_class=30, size=(12, 10), classes=("a", "b"), broken=1):
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n_per_class):
            img = np.full((*size, 3), 40 + 150 * c, np.uint8) + rng.integers(0, 30, (*size, 3)).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    for i in range(broken):
        (root / classes[0] / f"broken{i}.png").write_bytes(b"not an image")
    return root


def _data_cfg(path, **kw):
    cfg = config_lib.resolve("folder-conv64", None, [f"data.path={path}"] + [f"data.{k}={v}" for k, v in kw.items()])
    return cfg.data


def test_folder_splits_labels_and_resizing(tmp_path):
    root = _folder(tmp_path / "imgs")
    splits = load_configured(_data_cfg(root, image_size=8, val_size=5))
    assert splits.spec.shape == (8, 8, 3) and splits.num_classes == 2
    sizes = [len(getattr(splits, s)["x"]) for s in ("train", "val", "test")]
    assert sum(sizes) == 60 and sizes[1] + sizes[2] in (9, 10) and max(sizes[1:]) == 5  # 61 files, one unreadable
    x, y = splits.train["x"], splits.train["y"]
    assert x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    # class b images are brighter by 150/255: the labels follow the subfolders
    np.testing.assert_allclose(x[y == 1].mean() - x[y == 0].mean(), 150 / 255, atol=0.03)
    index = json.loads(splits.run_files["data_index.json"])
    assert index["unreadable"] == ["a/broken0.png"] and len(index["test"]) == sizes[2]
    again = load_configured(_data_cfg(root, image_size=8, val_size=5))
    np.testing.assert_array_equal(again.test["x"], splits.test["x"])  # same split every time
    other = load_configured(_data_cfg(root, image_size=8, val_size=5, seed=1))
    assert not np.array_equal(other.test["x"], splits.test["x"])


def test_split_of_a_file_does_not_depend_on_the_others():
    files = [f"f{i}.png" for i in range(50)]
    rank = {f: r for r, f in enumerate(np.array(files)[split_order(files, 3)])}
    rank2 = {f: r for r, f in enumerate(np.array(files[:40])[split_order(files[:40], 3)])}
    order = sorted(files[:40], key=rank.get)
    assert order == sorted(files[:40], key=rank2.get)


def test_decode_resizes_shorter_side_and_center_crops(tmp_path):
    img = np.zeros((20, 40, 3), np.uint8)
    img[:, 10:30] = 255  # a bright band in the middle 20 columns: the center crop keeps exactly it
    Image.fromarray(img).save(tmp_path / "w.png")
    out = decode(tmp_path / "w.png", "rgb", 10)
    assert out.shape == (10, 10, 3) and out[:, 1:-1].min() >= 250 and out.min() > 200  # bicubic blurs the edge
    grey = decode(tmp_path / "w.png", "grey", None)
    assert grey.shape == (20, 40, 1) and grey[0, 20, 0] == 255 and grey[0, 0, 0] == 0
    assert decode(tmp_path / "missing.png", "rgb", None) is None


@pytest.mark.parametrize("make,message", [
    (lambda root: root.mkdir(), "has no PNG or JPEG images"),
    (lambda root: _folder(root, n_per_class=0, broken=3), "none of its 3 image files could be read"),
    (lambda root: (_folder(root, n_per_class=10), Image.new("RGB", (5, 5)).save(root / "b" / "odd.png")),
     "different sizes"),
])
def test_bad_folders(tmp_path, make, message):
    root = tmp_path / "imgs"
    make(root)
    with pytest.raises(VaekitError, match=message):
        load_configured(_data_cfg(root, image_size="none"))


def test_folder_keys_only_for_folder_source():
    with pytest.raises(VaekitError, match="belongs to data.source folder, not 'mnist'"):
        config_lib.resolve("mnist-mlp", None, ["data.image_size=32"])
    with pytest.raises(VaekitError, match="needs data.path"):
        config_lib.resolve("folder-conv64", None, [])


def test_preactivation_block_matches_its_formula():
    block = PreActBlock(3, rngs=nnx.Rngs(0))
    block.eval()  # BatchNorm with its initial running stats (0, 1): x / sqrt(1 + eps)
    x = jax.random.normal(jax.random.key(1), (2, 5, 5, 3))
    eps = block.norm1.epsilon

    def conv(layer, h):
        k = np.asarray(layer.kernel[...])
        out = jax.lax.conv_general_dilated(h, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return out + np.asarray(layer.bias[...])

    h = conv(block.conv1, jax.nn.relu(x / np.sqrt(1 + eps)))
    expected = x + conv(block.conv2, jax.nn.relu(h / np.sqrt(1 + eps)))
    np.testing.assert_allclose(block(x), expected, rtol=1e-5, atol=1e-5)


def test_resnet_shapes_and_gradients():
    blocks = 2
    cfg = ModelConfig(net="resnet", conv_channels=(4, 8), resnet_blocks=blocks, conv_dense=6, latent_dim=3)
    enc = build_encoder(cfg, (8, 8, 2), 7, rngs=nnx.Rngs(0))
    dec = build_decoder(cfg, 3, (8, 8, 2), 2, rngs=nnx.Rngs(1))
    x = jax.random.uniform(jax.random.key(0), (4, 8, 8, 2))
    shape_of = lambda m, a: nnx.eval_shape(lambda m, a: m(a), m, a).shape  # noqa: E731  (traced, not run)
    assert shape_of(enc, x) == (4, 7) and shape_of(dec, jnp.zeros((5, 4, 3))) == (5, 4, 8, 8, 2, 2)
    assert len(enc.stages[0]) == blocks

    # Gradient of a scalar through the encoder against central finite differences (float64-free:
    # a direction derivative with a step large enough for float32).
    enc.eval()  # BatchNorm on its running statistics: a fixed function of the parameters
    graphdef, params, rest = nnx.split(enc, nnx.Param, ...)
    f = jax.jit(lambda p: jnp.sum(nnx.merge(graphdef, p, rest)(x) ** 2))
    grads = jax.jit(jax.grad(f))(params)
    direction = jax.tree.map(lambda g: g / (optax_norm(grads) + 1e-12), grads)
    h = 1e-2
    plus = f(jax.tree.map(lambda p, d: p + h * d, params, direction))
    minus = f(jax.tree.map(lambda p, d: p - h * d, params, direction))
    np.testing.assert_allclose((plus - minus) / (2 * h), optax_norm(grads), rtol=2e-2)


def optax_norm(tree):
    return jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(tree)))


def test_resnet_rejects_bad_sides_and_film():
    with pytest.raises(VaekitError, match="divisible by 4"):
        build_encoder(ModelConfig(net="resnet", conv_channels=(4, 4)), (10, 10, 1), 3, rngs=nnx.Rngs(0))
    with pytest.raises(VaekitError, match="by concatenation only"):
        build_encoder(ModelConfig(net="resnet", conv_channels=(4,)), (8, 8, 1), 3, cond_dim=2, condition="film",
                      rngs=nnx.Rngs(0))


def test_folder_conv64_preset_trains_and_evaluates_through_the_cli(tmp_path):
    from vaekit.cli import main

    root = _folder(tmp_path / "imgs", n_per_class=100, size=(20, 24), broken=0)
    runs = tmp_path / "runs"
    args = ["train", "--preset", "folder-conv64", "--runs-dir", str(runs), "--name", "f", "--no-progress",
            "--set", f"data.path={root}", "--set", "data.image_size=8", "--set", "model.conv_channels=[8]",
            "--set", "model.latent_dim=8", "--set", "train.epochs=1", "--set", "train.batch_size=40",
            "--set", "train.loggers=[]"]
    assert main(args) == 0
    info = json.loads((runs / "f" / "run.json").read_text())
    assert info["data_spec"]["shape"] == [8, 8, 3] and info["num_train"] == 160
    assert (runs / "f" / "data_index.json").exists() and (runs / "f" / "samples.png").exists()
    assert np.isfinite(info["final"]["val/elbo"])
    assert main(["evaluate", str(runs / "f"), "--samples", "2", "--limit", "4", "--batch-size", "4"]) == 0
    # bad input: one line, exit 2, nothing written
    assert main(args[:6] + ["g"] + args[7:] + ["--set", "data.path=" + str(tmp_path / "nothing")]) == 2
    assert not (runs / "g").exists()


def _numbered_folder(root, n):
    """n grey 4x4 images whose pixels are all 8 * i: the value names the image."""
    root.mkdir()
    for i in range(n):
        Image.fromarray(np.full((4, 4), 8 * i, np.uint8)).save(root / f"{i:02d}.png")
    return root


def test_stream_batches_read_the_given_rows_sharded_by_process(tmp_path):
    root = _numbered_folder(tmp_path / "imgs", 30)
    splits = load_configured(_data_cfg(root, image_size=4, color="grey", stream="yes", val_size=3))
    stream = splits.stream
    assert "x" not in splits.train and splits.num_train == stream.num_examples == 24
    ids = lambda b: np.rint(b["x"][:, 0, 0, 0] * 255 / 8).astype(int)  # noqa: E731
    names = np.array([int(f[:2]) for f in stream.files])
    rows = np.random.default_rng(0).integers(0, 24, size=(5, 6))
    full = [ids(b) for b in stream.batches(rows)]
    assert len(full) == 5
    np.testing.assert_array_equal(np.stack(full), names[rows])  # batch s holds exactly the images of rows[s]
    # two processes read the two halves of the same global batches
    halves = [[ids(b) for b in stream.batches(rows, process_index=p, process_count=2)] for p in range(2)]
    for step in range(5):
        np.testing.assert_array_equal(np.concatenate([halves[0][step], halves[1][step]]), full[step])
    np.testing.assert_array_equal(ids(splits.examples("train", 5)), names[:5])


def test_streamed_split_refuses_static_binarization(tmp_path):
    root = _numbered_folder(tmp_path / "imgs", 30)
    with pytest.raises(VaekitError, match="data.binarize=static .* streamed training split"):
        load_configured(_data_cfg(root, image_size=4, color="grey", stream="yes", val_size=3, binarize="static"))


@pytest.mark.parametrize("budget", [{"epochs": 2}, {"steps": 8, "eval_every": 4}])  # a permutation / with replacement
def test_streamed_training_equals_resident_training_on_the_same_batches(tmp_path, budget):
    from conftest import tiny_config
    from vaekit.training.loop import Trainer

    root = _numbered_folder(tmp_path / "imgs", 30)
    common = dict(image_size=4, color="grey", val_size=3)
    streamed = load_configured(_data_cfg(root, stream="yes", **common))
    resident = load_configured(_data_cfg(root, stream="no", **common))
    np.testing.assert_array_equal(streamed.examples("train")["x"], resident.train["x"])
    cfg = tiny_config(train={**budget, "batch_size": 6, "chunk_steps": 2}, data={"binarize": "dynamic"})
    a, b = Trainer(cfg, streamed), Trainer(cfg, resident)
    for _ in range(2):  # the same seed draws the same batches, streamed or resident
        ma, mb = a.fit_epoch(), b.fit_epoch()
        np.testing.assert_allclose(ma["train/loss"], mb["train/loss"], rtol=1e-5)
    assert a.loop == "stream"
    for x, y in zip(jax.tree.leaves(a.state.params), jax.tree.leaves(b.state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
