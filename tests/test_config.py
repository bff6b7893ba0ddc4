"""Config resolution, overrides, presets and validation messages."""

import pytest

from vaekit import config as C
from vaekit.errors import VaekitError


def test_default_preset_is_the_iwae_paper_model():
    cfg = C.resolve()
    assert cfg.preset == "mnist-mlp"
    assert cfg.model.hidden == (200, 200) and cfg.model.latent_dim == 50 and cfg.model.activation == "tanh"
    assert cfg.data.binarize == "dynamic" and cfg.train.batch_size == 100 and cfg.train.learning_rate == 1e-3


def test_presets_listed_with_descriptions():
    presets = C.list_presets()
    assert {"mnist-mlp", "mnist-conv"} <= set(presets)
    assert all(presets.values())


@pytest.mark.parametrize("name", sorted(C.list_presets()))
def test_every_shipped_preset_resolves_and_validates(name):
    if name == "mnist-vqvae-prior":  # a prior over a trained VQ-VAE's codes: it needs that run
        with pytest.raises(VaekitError, match="needs model.parent=RUN"):
            C.resolve(name)
        return
    cfg = C.resolve(name, None, ["data.path=/data/images"] if name.startswith("folder-") else [])
    assert cfg.preset == name and C.from_dict(cfg.to_dict()) == cfg


def test_overrides_are_typed_and_applied_last(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  epochs: 7\nmodel:\n  hidden: [10, 20]\n")
    cfg = C.resolve("mnist-conv", str(f), ["train.epochs=3", "model.latent_dim=8", "data.limit=512",
                                           "train.learning_rate=3e-4", "data.path=none"])
    assert cfg.train.epochs == 3 and cfg.model.latent_dim == 8 and cfg.data.limit == 512
    assert cfg.model.hidden == (10, 20) and cfg.train.learning_rate == pytest.approx(3e-4)
    assert cfg.model.net == "conv" and cfg.data.path is None


def test_round_trip_through_dict():
    cfg = C.resolve(None, None, ["model.hidden=[64,32]", "objective.beta=2"])
    assert C.from_dict(cfg.to_dict()) == cfg


def test_data_path_selects_arrays_source():
    assert C.resolve(None, None, ["data.path=x.npz"]).data.source == "arrays"


@pytest.mark.parametrize("override,message", [
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'epochs'?)"),
    ("trian.epochs=3", "unknown config section 'trian' (did you mean 'train'?)"),
    ("model.latent_dim=0", "model.latent_dim must be positive"),
    ("train.learning_rate=-1e-3", "train.learning_rate must be positive"),
    ("objective.beta=-1", "objective.beta must be >= 0"),
    ("train.epochs=2.5", "train.epochs must be an integer"),
    ("train.batch_size=abc", "train.batch_size must be an integer"),
    ("data.binarize=dynamc", "did you mean 'dynamic'"),
    ("model.likelihood=gauss", "model.likelihood must be one of"),
    ("data.limit=-5", "data.limit must be positive"),
    ("train.epochs", "must look like section.key=value"),
    ("train.steps=0", "train.steps must be positive"),
    ("train.eval_every=0", "train.eval_every must be positive"),
    ("train.loop=scanned", "did you mean 'scan'"),
])
def test_bad_values_name_the_problem(override, message):
    with pytest.raises(VaekitError) as e:
        C.resolve(None, None, [override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_preset_suggests_closest():
    with pytest.raises(VaekitError, match="did you mean 'mnist-mlp'"):
        C.resolve("mnist-mpl")


def test_bad_config_file(tmp_path):
    with pytest.raises(VaekitError, match="does not exist"):
        C.resolve(None, str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(VaekitError, match="not valid YAML"):
        C.resolve(None, str(bad))


def test_resolve_data_is_the_data_section_of_the_full_resolution(tmp_path):
    """`vaekit train` starts loading the data from `resolve_data` before the model registry (and JAX)
    import: it must give what `resolve_layers` gives, and None where that would fail."""
    import subprocess
    import sys

    file = tmp_path / "c.yaml"
    file.write_text("preset: mnist-beta\ndata: {binarize: static, seed: 4}\ntrain: {epochs: 3}\n")
    cases = [(None, None, []), ("mnist-conv", None, ["data.limit=500"]), (None, str(file), ["data.seed=7"]),
             ("mnist-mlp", str(file), []), (None, None, ["data.path=/some/x.npz", "data.val_size=9"])]
    for preset, path, sets in cases:
        data = C.resolve_data(preset, path, sets)
        assert data is not None and data == C.resolve_layers(preset, path, sets)[0].data, (preset, path, sets)
    assert C.resolve_data(None, str(file), ["data.seed=7"]).seed == 7
    assert C.resolve_data(None, None, ["data.path=/some/x.npz"]).source == "arrays"
    for bad in (("no-such-preset", None, []), (None, str(tmp_path / "missing.yaml"), []),
                (None, None, ["data.nonsense=1"]), (None, None, ["data.seed"])):
        assert C.resolve_data(*bad) is None
    probe = "import sys, vaekit.config, vaekit.data; print('jax' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
