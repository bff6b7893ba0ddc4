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
    names = list(presets)  # `vaekit presets` shows them in this order: each base preset before its -paper variant
    assert names == sorted(names) and names.index("mnist-hvae") < names.index("mnist-hvae-paper")
    pairs = [(n.removesuffix("-paper"), n) for n in names if n.endswith("-paper") and n.removesuffix("-paper") in names]
    assert len(pairs) >= 5 and all(names.index(base) < names.index(paper) for base, paper in pairs)


@pytest.mark.parametrize("name", sorted(C.list_presets()))
def test_every_shipped_preset_resolves_and_validates(name):
    if name == "mnist-vqvae-prior":  # a prior over a trained VQ-VAE's codes: it needs that run
        with pytest.raises(VaekitError, match="needs model.parent=RUN"):
            C.resolve(name)
        return
    path = {"folder-conv64": "/data/images", "folder-resnet64": "/data/images", "text-vae": "/data/sentences.txt"}
    cfg = C.resolve(name, None, [f"data.path={path[name]}"] if name in path else [])
    assert cfg.preset == name and C.from_dict(cfg.to_dict()) == cfg


def test_a_preset_for_your_own_data_asks_for_it():
    with pytest.raises(VaekitError, match="preset text-vae needs data.path: it is the sentence VAE for your corpus"):
        C.resolve("text-vae")
    assert C.resolve("text-vae", None, ["data.path=my.txt"]).data.path == "my.txt"
    assert C.resolve("text-demo").data.path is None  # the demo trains on the shipped corpus


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
    ("train.epoch=3", "unknown config key 'train.epoch' (did you mean 'train.epochs'?)"),
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


# --------------------------------------------------------------------------- three layers


# Every key of the flat ModelConfig and DataConfig that config.yaml files listed before each kind
# and source declared its own keys, at the defaults they had.
FLAT_MODEL_KEYS = {"kind": "vae", "net": "mlp", "latent_dim": 50, "hidden": [200, 200], "activation": "tanh",
                   "conv_channels": [32, 64], "conv_dense": 0, "resnet_blocks": 1, "likelihood": "bernoulli",
                   "sigma": 0.1, "min_scale": 0.001, "posterior_scale": "softplus", "posterior": "gaussian",
                   "flow_steps": 4, "flow_hidden": 100, "prior": "normal", "prior_components": 500}
FLAT_DATA_KEYS = {"source": "mnist", "path": None, "limit": None, "binarize": "none", "seed": 0, "val_size": 10_000,
                  "max_len": 30, "vocab_size": 10_000, "lowercase": True, "val_path": None, "test_path": None,
                  "image_size": None, "color": "rgb", "stream": "auto"}


@pytest.mark.parametrize("preset,sets", [
    ("shapes-tcvae", []), ("mnist-ladder", []), ("mnist-vqvae", []), ("text-vae", ["data.path=s.txt"]), ("mnist-planar", []),
    ("folder-conv64", ["data.path=/data/images"]), ("mnist-cvae", ["model.condition=film"]),
])
def test_an_old_config_yaml_with_every_flat_key_loads(preset, sets):
    """A run directory written before the split lists every key of the flat sections: the keys its
    kind and source no longer have are at their defaults and load silently, to the same config."""
    cfg = C.resolve(preset, None, sets)
    old = cfg.to_dict()
    old["model"] = {**FLAT_MODEL_KEYS, **old["model"]}
    old["data"] = {**FLAT_DATA_KEYS, **old["data"]}
    assert C.from_dict(old) == cfg
    assert type(C.from_dict(old).model) is type(cfg.model) and type(C.from_dict(old).data) is type(cfg.data)


def test_sections_are_the_classes_their_kind_and_source_declare():
    from vaekit.data.folder import FolderDataConfig
    from vaekit.data.text import TextDataConfig
    from vaekit.models.cvae import CVAEConfig
    from vaekit.models.disentangle import TCVAEConfig
    from vaekit.models.vae import VAEConfig

    cfg = C.resolve("text-vae", None, ["data.path=s.txt"])
    assert type(cfg.data) is TextDataConfig and "max_len" not in C.resolve().to_dict()["data"]
    assert type(C.resolve("folder-conv64", None, ["data.path=/d"]).data) is FolderDataConfig
    assert type(C.resolve().model) is VAEConfig and issubclass(CVAEConfig, VAEConfig)
    tc = C.resolve("shapes-tcvae").model
    assert type(tc) is TCVAEConfig and "posterior" not in C.resolve("shapes-tcvae").to_dict()["model"]
    # frozen dataclasses: replace, to_dict and pickling work on the declared classes
    import dataclasses
    import pickle

    assert dataclasses.replace(cfg.data, max_len=7).max_len == 7
    assert pickle.loads(pickle.dumps(cfg)) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.max_len = 3


@pytest.mark.parametrize("preset,sets,message", [
    ("mnist-mlp", ["data.image_size=32"],
     "config key 'data.image_size' belongs to data.source folder, not 'mnist' (valid keys for 'mnist': source, path,"),
    ("mnist-mlp", ["data.max_len=12"], "config key 'data.max_len' belongs to data.source text, not 'mnist'"),
    ("folder-conv64", ["data.path=/d", "data.source=mnist"],
     "config key 'data.image_size' belongs to data.source folder, not 'mnist'"),
    ("text-vae", ["data.color=grey"], "config key 'data.color' belongs to data.source folder, not 'text'"),
    ("mnist-mlp", ["data.colour=grey"], "unknown config key 'data.colour' (did you mean 'data.color'?)"),
    ("shapes-tcvae", ["model.posterior=planar"],
     "config key 'model.posterior' belongs to model.kind vae / cvae / factorvae, not 'tcvae'"),
    ("mnist-planar", ["model.kind=hvae"], "config key 'model.posterior' belongs to model.kind vae / cvae / factorvae"),
    ("mnist-ladder", ["model.prior=vamp"], "config key 'model.prior' belongs to model.kind vae / cvae / factorvae"),
    ("mnist-mlp", ["model.posterior=plnar"], "model.posterior must be one of gaussian, planar, iaf; got 'plnar'"),
    ("folder-conv64", [], "data.source 'folder' needs data.path=DIRECTORY"),
    ("folder-conv64", ["data.path=/d", "data.color=gray"], "did you mean 'grey'"),
    ("text-vae", ["data.vocab_size=4"], "data.vocab_size must be at least 5"),
])
def test_a_key_of_another_kind_or_source_is_one_line_naming_its_owner(preset, sets, message):
    with pytest.raises(VaekitError) as e:
        C.resolve(preset, None, sets)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_a_key_of_another_kind_or_source_is_refused_even_at_its_default_except_in_an_old_run(tmp_path):
    """Nothing a user sets is ignored: a key the kind or source does not have is one line, whatever
    its value; a run's config.yaml written before the sections were split (every key listed) loads."""
    file = tmp_path / "c.yaml"
    file.write_text("model: {kind: tcvae, posterior: gaussian, flow_steps: 4}\n")
    for preset, path, sets in [("mnist-planar", str(file), []), ("shapes-tcvae", None, ["model.posterior=gaussian"]),
                               (None, None, ["data.color=rgb"]), (None, None, ["model.condition=concat"])]:
        with pytest.raises(VaekitError, match="belongs to"):
            C.resolve(preset, path, sets)
    old = C.resolve("shapes-tcvae").to_dict()
    old["model"] |= {"posterior": "gaussian", "flow_steps": 4, "prior": "normal"}
    old["data"] |= {"color": "rgb", "max_len": 30}
    assert C.from_dict(old) == C.resolve("shapes-tcvae")


def test_valid_names_come_from_the_registries(monkeypatch):
    from vaekit.core import distributions, flows, priors
    from vaekit import nets
    from vaekit.nets import mlp

    with pytest.raises(VaekitError) as e:
        C.resolve(None, None, ["model.likelihood=laplace"])
    assert f"model.likelihood must be one of {', '.join(distributions.LIKELIHOODS)}; got 'laplace'" in str(e.value)
    monkeypatch.setitem(distributions.LIKELIHOODS, "laplace", distributions.LIKELIHOODS["gaussian"])
    assert C.resolve(None, None, ["model.likelihood=laplace"]).model.likelihood == "laplace"
    for registry, key, name in [(nets.ENCODERS, "net", "mine"), (mlp.ACTIVATIONS, "activation", "mish"),
                                (distributions.POSTERIOR_SCALES, "posterior_scale", "exp"),
                                (flows.POSTERIORS, "posterior", "sylvester"), (priors.PRIORS, "prior", "mixture")]:
        with pytest.raises(VaekitError, match=f"model.{key} must be one of"):
            C.resolve(None, None, [f"model.{key}={name}"])
        monkeypatch.setitem(registry, name, None)
        assert getattr(C.resolve(None, None, [f"model.{key}={name}"]).model, key) == name


def test_a_registered_source_declares_its_keys(monkeypatch):
    import dataclasses

    from vaekit import data

    @dataclasses.dataclass(frozen=True)
    class SoundConfig(C.DataConfig):
        source: str = "sound"
        rate: int = 16_000

    monkeypatch.setitem(data.DATA_SOURCES, "sound", data.DATA_SOURCES["arrays"])
    monkeypatch.setitem(data.SOURCE_CONFIGS, "sound", SoundConfig)
    assert C.resolve(None, None, ["data.source=sound", "data.rate=8000"]).data == SoundConfig(rate=8000, binarize="dynamic")
    with pytest.raises(VaekitError, match="config key 'data.rate' belongs to data.source sound, not 'mnist'"):
        C.resolve(None, None, ["data.rate=8000"])


def test_the_schema_is_the_bottom_of_the_package():
    """config/schema.py imports no vaekit module but errors (models, nets, data and core import it)."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    tree = ast.parse(Path(C.__file__).with_name("schema.py").read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("vaekit")} <= {"vaekit.errors"}
    assert not {"jax", "numpy", "flax"} & {m.split(".")[0] for m in imported}
    probe = ("import sys, vaekit.config.schema; "
             "print(sorted(m for m in sys.modules if m.startswith(('vaekit.', 'jax', 'numpy', 'flax'))))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert set(eval(out)) <= {"vaekit.config", "vaekit.config.overrides", "vaekit.config.resolve",
                              "vaekit.config.schema", "vaekit.errors"}, out


def test_overrides_from_python_as_a_dict_equal_the_cli_strings():
    sets = ["train.epochs=3", "model.hidden=[64, 32]", "data.path=my data.npz", "train.steps=null",
            "objective.beta=0.5", "train.loggers=[tensorboard]"]
    as_dict = {"train.epochs": 3, "model.hidden": (64, 32), "data.path": "my data.npz", "train.steps": None,
               "objective.beta": 0.5, "train.loggers": ["tensorboard"]}
    from vaekit.config.overrides import override_texts

    assert [C.parse_override(t) for t in override_texts(as_dict)] == [C.parse_override(t) for t in sets]
    assert C.resolve("mnist-mlp", None, as_dict) == C.resolve("mnist-mlp", None, sets)
    cfg, layers = C.resolve_layers("mnist-mlp", None, {"train.epochs": 3})
    assert cfg.train.epochs == 3 and layers["overrides"] == ["train.epochs=3"]
    with pytest.raises(VaekitError, match="list of 'section.key=value' strings or a dict"):
        C.resolve("mnist-mlp", None, "train.epochs=3")
