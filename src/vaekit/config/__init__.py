"""Typed, frozen configuration for a vaekit run, with YAML presets and `section.key=value` overrides.

A run is fully described by one `Config` (data, model, objective, train). `config.yaml` in a run
directory is that config, resolved, so a run can always be rebuilt from its own directory.

Resolution order (one rule, `resolve_layers`): the preset first (the `--preset` flag, else a
`preset:` key in the config file, else the default `mnist-mlp`), then the config file's sections,
then the `--set` overrides in the order given. Every layer is recorded in the run (run.json
"config_layers"); config.yaml holds the fully resolved result. A run is counted in epochs or in
steps: an explicit `train.epochs` in the file or a `--set` on a preset counted in `train.steps`
clears the preset's steps (setting both explicitly is an error).
Every value is validated once, here, so the library below can trust its config.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vaekit.data import BINARIZE_MODES
from vaekit.errors import VaekitError


def _yaml_load(text: str):
    """yaml.safe_load with libyaml's C parser where PyYAML has it (the same documents, parsed ~10x faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


log = logging.getLogger("vaekit")


@dataclasses.dataclass(frozen=True)
class DataConfig:
    source: str = "mnist"  # registered data source: "mnist", "arrays" (a user .npz, set by `path`), "shapes"
    path: str | None = None  # .npz file with `x` (N, H, W[, C]) and optional `y`; implies source "arrays"
    limit: int | None = None  # use only the first N training examples (None: all)
    binarize: str = "none"  # "none" (continuous [0,1]), "dynamic" (fresh Bernoulli draw per batch), "static" (one seeded draw)
    seed: int = 0  # seed of the static binarization draw (and of generated sources' subsets)
    val_size: int = 10_000  # validation size where the source carves one (arrays without x_val, shapes); MNIST's is fixed
    max_len: int = 30  # text: most tokens per sentence (then <eos>); longer sentences are truncated
    vocab_size: int = 10_000  # text: vocabulary size, the specials <pad> <unk> <bos> <eos> included
    lowercase: bool = True  # text: lower-case sentences before tokenizing
    val_path: str | None = None  # text: validation sentences (else carved from data.path with data.seed)
    test_path: str | None = None  # text: test sentences (else carved from data.path with data.seed)
    image_size: int | None = None  # folder: resize (shorter side) and center-crop every image to this square side (None: all must share one size)
    color: str = "rgb"  # folder: "rgb" (3 channels) or "grey" (1 channel)
    stream: str = "auto"  # folder: "yes" (training images read from disk with Grain), "no" (decoded into memory), "auto" (stream above 2 GiB)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The keys every model kind has. A kind with keys of its own declares a subclass of this
    (e.g. `CVAEConfig` in models/cvae.py) as its class's `config_class`; a key is accepted only
    for the kinds that declare it."""

    kind: str = "vae"  # registered model class (`vaekit.models.MODELS`)
    net: str = "mlp"  # encoder/decoder body: "mlp", "conv" or "resnet" (pre-activation residual stages)
    latent_dim: int = 50  # dimensions of z
    hidden: tuple[int, ...] = (200, 200)  # MLP hidden sizes (the decoder mirrors them)
    activation: str = "tanh"  # MLP activation: tanh, relu, gelu, silu, elu, softplus, leaky_relu
    conv_channels: tuple[int, ...] = (32, 64)  # channels of the 4x4 stride-2 conv stack (decoder mirrors)
    conv_dense: int = 0  # width of a dense layer between the conv stack and the latent heads (0: none)
    resnet_blocks: int = 1  # model.net=resnet: pre-activation residual blocks per stage (one stage per conv_channels entry)
    likelihood: str = "bernoulli"  # p(x|z): bernoulli, gaussian (fixed sigma), gaussian_learned, categorical
    sigma: float = 0.1  # standard deviation of the fixed-sigma Gaussian likelihood
    min_scale: float = 1e-3  # floor of a learned Gaussian likelihood's standard deviation
    posterior_scale: str = "softplus"  # q(z|x) std parameterization: "softplus" (+1e-4) or "logvar" (clamped)
    posterior: str = "gaussian"  # q(z|x): "gaussian", or a flow on it: "planar" (Rezende & Mohamed 2015), "iaf" (Kingma et al. 2016)
    flow_steps: int = 4  # number of planar or IAF steps
    flow_hidden: int = 100  # IAF: width of each step's MADE hidden layer and of the encoder context h
    prior: str = "normal"  # p(z): "normal" (N(0, I)) or "vamp" (VampPrior, Tomczak & Welling 2018)
    prior_components: int = 500  # VampPrior: number of pseudo-inputs K
    encoder: str | None = None  # your own encoder's class "package.module:Class" (recorded by training from Python with encoder=)
    encoder_args: dict = dataclasses.field(default_factory=dict)  # its constructor arguments: loading and resuming rebuild it
    decoder: str | None = None  # your own decoder's class, as model.encoder
    decoder_args: dict = dataclasses.field(default_factory=dict)  # its constructor arguments

    def check(self) -> None:
        """Validate the kind's own keys (a subclass overrides this); raise VaekitError."""


@dataclasses.dataclass(frozen=True)
class ObjectiveConfig:
    kind: str = "elbo"  # "elbo" (analytic KL) or "iwae" (k-sample importance-weighted bound)
    iwae_k: int = 5  # number of importance samples of the IWAE objective
    beta: float = 1.0  # weight of the KL term (its final value when annealed); 1 is the true ELBO
    beta_schedule: str = "constant"  # constant, linear, sigmoid, cyclical
    anneal_steps: int = 10_000  # length of the annealing schedule in training steps
    cycles: int = 4  # cyclical schedule: number of cycles within anneal_steps
    cycle_ratio: float = 0.5  # cyclical schedule: fraction of each cycle spent rising from 0 to beta
    free_bits: float = 0.0  # nats per latent dimension not penalized (0: off); Kingma et al. 2016
    capacity_max: float = 0.0  # capacity control target C_max in nats (0: off); Burgess et al. 2018
    capacity_steps: int = 100_000  # steps over which C rises linearly from 0 to capacity_max
    capacity_gamma: float = 1000.0  # weight gamma of |KL - C|


PRECISIONS = ("fp32", "bf16")  # train.precision: the compute dtype of the nets' hidden layers while training
KL_OPTIONS = ("beta", "beta_schedule", "free_bits", "capacity_max")  # what acts on an ELBO's KL term


def changed_objective(objective: ObjectiveConfig, keys=("kind", *KL_OPTIONS)) -> str:
    """The options among `keys` that differ from their defaults, as "objective.k=v, ..." ("" if none):
    for a model or bound that would otherwise ignore them."""
    default = ObjectiveConfig()
    return ", ".join(f"objective.{k}={getattr(objective, k)}" for k in keys
                     if getattr(objective, k) != getattr(default, k))


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10  # passes over the training split; setting it explicitly on a steps-counted preset clears `steps`
    max_minutes: float = 0.0  # stop after the first epoch (or validation) that ends past this much training time in this invocation (0: off); --resume continues
    steps: int | None = None  # count training in optimizer steps instead: batches drawn uniformly with replacement
    eval_every: int = 1000  # with `steps`: steps between validations, metrics records and checkpoints
    batch_size: int = 100  # examples per step
    seed: int = 0  # seeds parameters, shuffling, binarization draws and posterior samples
    optimizer: str = "adam"  # "adam" or "adamw"
    learning_rate: float = 1e-3  # peak learning rate
    adam_b1: float = 0.9  # Adam first-moment decay
    adam_b2: float = 0.999  # Adam second-moment decay
    adam_eps: float = 1e-8  # Adam epsilon (the IWAE paper used 1e-4)
    weight_decay: float = 0.0  # decoupled weight decay (adamw only)
    lr_schedule: str = "constant"  # constant, cosine, exponential, step, iwae (Burda et al. 3^i-epoch stages)
    warmup_steps: int = 0  # linear learning-rate warm-up from 0
    decay_rate: float = 0.1  # exponential/step: factor applied every decay_steps
    decay_steps: int = 10_000  # exponential/step: steps per decay_rate
    grad_clip: float = 0.0  # clip gradients to this global norm (0: off)
    chunk_steps: int = 100  # steps per chunk: the host syncs (progress, NaN guard) once per chunk
    loop: str = "auto"  # a chunk as one compiled lax.scan ("scan") or as jitted steps ("steps"); auto: steps for conv nets on CPU
    eval_batch_size: int = 1000  # batch size of validation passes
    checkpoint_every: int = 1  # save a checkpoint every N epochs (with `steps`: every N validations) (the best-by-validation one is kept too)
    keep_checkpoints: int = 2  # how many periodic checkpoints to keep
    compilation_cache: bool = True  # reuse compiled steps across runs (JAX's persistent cache; also VAEKIT_COMPILATION_CACHE=0)
    log_every: int = 10  # TensorBoard's step/* curves: one point per N training steps, the mean over them (1: every step)
    loggers: tuple[str, ...] = ("tensorboard",)  # where metrics go besides metrics.jsonl: tensorboard, mlflow (pip install 'vaekit[mlflow]')
    devices: str = "1"  # data parallel over this many local devices per process ("all": every one); batch_size is global
    precision: str = "fp32"  # fp32, or bf16: the encoder/decoder nets' hidden layers compute in bfloat16 while training (parameters, optimizer state, output layers, losses and validation stay float32)


@dataclasses.dataclass(frozen=True)
class Config:
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    objective: ObjectiveConfig = ObjectiveConfig()
    train: TrainConfig = TrainConfig()
    preset: str | None = None  # the preset this config started from (informational)

    def to_dict(self) -> dict[str, Any]:
        """Plain-YAML-friendly dict (tuples become lists)."""

        def plain(v):
            if isinstance(v, tuple):
                return [plain(e) for e in v]
            return v

        out: dict[str, Any] = {"preset": self.preset}
        for sec in SECTIONS:
            out[sec] = {k: plain(v) for k, v in dataclasses.asdict(getattr(self, sec)).items()}
        return out


SECTIONS = ("data", "model", "objective", "train")
_SECTION_TYPES = {s: t for s, t in zip(SECTIONS, (DataConfig, ModelConfig, ObjectiveConfig, TrainConfig))}

ACTIVATIONS = ("tanh", "relu", "gelu", "silu", "elu", "softplus", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian", "gaussian_learned", "categorical")
BETA_SCHEDULES = ("constant", "linear", "sigmoid", "cyclical")
LR_SCHEDULES = ("constant", "cosine", "exponential", "step", "iwae")
LOGGERS = ("tensorboard", "mlflow")


# --------------------------------------------------------------------------- parsing


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(options)})"


@dataclasses.dataclass(frozen=True)
class _Typed:
    """A `--set` value: the YAML reading of the text and the text the user typed. A string field
    takes the typed text where YAML read something else (`yes` is the word, not a boolean)."""

    value: Any
    raw: str


def _is_str_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in typing.get_args(annotation)
    return annotation is str


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's declared type, or raise VaekitError."""
    if isinstance(value, _Typed):
        typed = value
        value = typed.value
        if _is_str_field(annotation) and value is not None and not isinstance(value, (str, list, dict)):
            value = typed.raw.strip()
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            value = _yaml_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise VaekitError(f"{where} must be a list, got {value!r}")
        return tuple(_coerce(v, args[0], where) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise VaekitError(f"{where} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            try:
                f = float(value)
            except (TypeError, ValueError):
                raise VaekitError(f"{where} must be an integer, got {value!r}") from None
            if not f.is_integer():
                raise VaekitError(f"{where} must be an integer, got {value!r}")
            return int(f)
        return int(value)
    if annotation is float:
        if isinstance(value, bool):
            raise VaekitError(f"{where} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise VaekitError(f"{where} must be a number, got {value!r}") from None
    if annotation is str:
        if isinstance(value, bool):  # YAML reads yes/no/on/off/true/false unquoted as booleans
            raise VaekitError(f"{where} was read as the YAML boolean {str(value).lower()}; put the word in quotes "
                              f"in the YAML file (e.g. {where.split('.')[-1]}: \"none\")")
        if isinstance(value, (dict, list)):
            raise VaekitError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def model_config_class(kind: str) -> type:
    """The config dataclass that `model.kind` declares (its keys), from the model registry."""
    from vaekit.models import MODELS

    if kind not in MODELS:
        raise VaekitError(f"unknown model.kind '{kind}'{_closest(kind, MODELS)}")
    return MODELS[kind].config_class


def _unknown_model_key(key: str, kind: str, names: list[str]) -> VaekitError:
    from vaekit.models import MODELS

    owners = [k for k, m in MODELS.items() if key in {f.name for f in dataclasses.fields(m.config_class)}]
    if owners:
        return VaekitError(f"config key 'model.{key}' belongs to model.kind {' / '.join(owners)}, not '{kind}' "
                           f"(valid keys for '{kind}': {', '.join(names)})")
    return VaekitError(f"unknown config key 'model.{key}'{_closest(key, names)}")


def _apply_section(base, updates: dict, section: str):
    if not isinstance(updates, dict):
        raise VaekitError(f"config section '{section}' must be a mapping, got {updates!r}")
    if section == "model":
        # The kind decides which keys exist, so it is applied first; switching kinds keeps the
        # values of the keys both kinds have.
        kind = _coerce(updates.get("kind", base.kind), str, "model.kind")
        cls = model_config_class(kind)
        if type(base) is not cls:
            shared = {f.name for f in dataclasses.fields(cls)} & {f.name for f in dataclasses.fields(base)}
            base = cls(**{name: getattr(base, name) for name in shared})
    cls = type(base)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    changes = {}
    for key, value in updates.items():
        if key not in names:
            if section == "model":
                raise _unknown_model_key(key, base.kind, names)
            raise VaekitError(f"unknown config key '{section}.{key}'{_closest(key, names)}")
        changes[key] = _coerce(value, hints[key], f"{section}.{key}")
    return dataclasses.replace(base, **changes)


def merge(config: Config, updates: dict) -> Config:
    """Apply a nested dict (as read from YAML) on top of `config`."""
    if not isinstance(updates, dict):
        raise VaekitError(f"a config file must hold a mapping of sections, got {type(updates).__name__}")
    new = config
    for section, values in updates.items():
        if section in ("description", "preset"):
            continue
        if section not in SECTIONS:
            raise VaekitError(f"unknown config section '{section}'{_closest(section, SECTIONS)}")
        new = dataclasses.replace(new, **{section: _apply_section(getattr(new, section), values or {}, section)})
    return new


def parse_override(text: str) -> dict:
    """`section.key=value` -> {"section": {"key": value}} with the value parsed as YAML."""
    if "=" not in text:
        raise VaekitError(f"override '{text}' must look like section.key=value")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise VaekitError(f"override key '{path}' must be section.key, e.g. train.epochs")
    try:
        value = _yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: _Typed(value, raw)}}


# --------------------------------------------------------------------------- presets


def _preset_dir():
    return resources.files("vaekit") / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, from the YAML files shipped in vaekit/presets."""
    out = {}
    for entry in sorted(_preset_dir().iterdir(), key=lambda p: p.name):
        if entry.name.endswith(".yaml"):
            doc = _yaml_load(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(doc.get("description", "")).strip()
    return out


DEFAULT_PRESET = "mnist-mlp"


def load_preset(name: str) -> dict:
    names = list_presets()
    if name not in names:
        raise VaekitError(f"unknown preset '{name}'{_closest(name, names)}")
    return _yaml_load((_preset_dir() / f"{name}.yaml").read_text()) or {}


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise VaekitError(f"config file '{p}' does not exist")
    try:
        doc = _yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise VaekitError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    return doc or {}


def _config_file_and_preset(preset: str | None, config_file: str | None) -> tuple[dict, str, str]:
    """(the config file's mapping, the preset's name, where the name came from: "flag" | "file" |
    "default"): --preset, else the file's `preset:` key, else DEFAULT_PRESET."""
    doc = read_yaml(config_file) if config_file is not None else {}
    if not isinstance(doc, dict):
        raise VaekitError(f"config file '{config_file}' must hold a mapping of sections, got {type(doc).__name__}")
    file_preset = doc.get("preset")
    if file_preset is not None and not isinstance(file_preset, str):
        raise VaekitError(f"config file '{config_file}': preset must be a preset name, got {file_preset!r}")
    if preset is not None:
        return doc, preset, "flag"
    if file_preset:
        return doc, file_preset, "file"
    return doc, DEFAULT_PRESET, "default"


def _path_means_arrays(data: DataConfig) -> DataConfig:
    """A data.path given with the default source (mnist) names an .npz: source "arrays"."""
    return dataclasses.replace(data, source="arrays") if data.path is not None and data.source == "mnist" else data


def resolve_data(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] = ()) -> DataConfig | None:
    """The data section alone, as `resolve_layers` resolves it, or None where that fails.

    Only the layers' `data` keys are read, so neither the model registry nor JAX is imported:
    `vaekit train` starts loading the data with this (`vaekit.data.prefetch`) while it imports
    them. It is only a head start: the full resolution still checks everything and reports any
    error, and data is used only when its config equals the full one's (`load_configured`).
    """
    try:
        doc, name, _ = _config_file_and_preset(preset, config_file)
        data = DataConfig()
        for layer in (load_preset(name), doc, *(parse_override(text) for text in overrides)):
            section = layer.get("data")
            if section:
                data = _apply_section(data, section, "data")
        return _path_means_arrays(data)
    except VaekitError:
        return None


def resolve(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """The preset, then the config file, then the overrides, validated (see `resolve_layers`)."""
    return resolve_layers(preset, config_file, overrides)[0]


def resolve_layers(preset: str | None = None, config_file: str | None = None,
                   overrides: list[str] = ()) -> tuple[Config, dict]:
    """(config, layers): the one precedence order, and a record of every layer that went into it.

    1. the preset: `preset` (the --preset flag), else the file's `preset:` key, else DEFAULT_PRESET;
    2. the config file's sections (`config_file`), if any;
    3. the `section.key=value` overrides, in order.
    `layers` is {"preset": name, "preset_from": "flag" | "file" | "default", "file": path or None,
    "overrides": [...]}, for run.json. An explicit train.epochs (file or override) on a preset that
    counts in train.steps clears train.steps; the user setting both is an error.
    """
    doc, name, source = _config_file_and_preset(preset, config_file)
    if source == "flag" and doc.get("preset") and doc["preset"] != preset:
        log.warning("--preset %s takes precedence over 'preset: %s' in %s", preset, doc["preset"], config_file)
    cfg = dataclasses.replace(merge(Config(), load_preset(name)), preset=name)
    preset_steps = cfg.train.steps
    explicit: set[str] = set()  # train keys the user set, in the file or with --set
    if config_file is not None:
        cfg = merge(cfg, doc)
        explicit |= set((doc.get("train") or {}) if isinstance(doc.get("train"), dict) else ())
    for text in overrides:
        update = parse_override(text)
        cfg = merge(cfg, update)
        explicit |= set(update.get("train", ()))
    if "epochs" in explicit and cfg.train.steps is not None:
        if "steps" in explicit:
            raise VaekitError("train.epochs and train.steps are both set (a run counts in one): drop one, or "
                              "set train.steps=none to count in epochs")
        # The preset counted in steps; the user asked for epochs: the explicit choice wins.
        log.info("counting the run in train.epochs=%d (preset %s counted in train.steps=%s)",
                 cfg.train.epochs, name, preset_steps)
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=None))
    cfg = dataclasses.replace(cfg, data=_path_means_arrays(cfg.data))
    validate(cfg)
    layers = {"preset": name, "preset_from": source, "file": None if config_file is None else str(config_file),
              "overrides": list(overrides)}
    return cfg, layers


def default_run_name(cfg: Config) -> str:
    """The stem of a run's default name: the preset's name when the run's data and net are the
    preset's, else `<data>-<net>` (the data source, or the .npz file's stem) with `-<kind>` for a
    model kind other than vae."""
    if cfg.preset is not None and cfg.preset in list_presets():
        p = merge(Config(), load_preset(cfg.preset))
        same = (cfg.data.source, cfg.data.path, cfg.model.net, cfg.model.kind) == (
            p.data.source, p.data.path, p.model.net, p.model.kind)
        if same:
            return cfg.preset
    data = Path(cfg.data.path).stem if cfg.data.path else cfg.data.source
    parts = [data, cfg.model.net] + ([cfg.model.kind] if cfg.model.kind != "vae" else [])
    name = "-".join(parts)
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def from_dict(doc: dict) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (e.g. a run's config.yaml)."""
    cfg = dataclasses.replace(merge(Config(), doc), preset=doc.get("preset"))
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- validation


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise VaekitError(message)


def _one_of(value: str, options, key: str) -> None:
    _check(value in options, f"{key} must be one of {', '.join(options)}; got '{value}'{_closest(value, options)}")


def validate(cfg: Config) -> None:
    """Reject values no run can use, with one line naming the key and the problem."""
    d, m, o, t = cfg.data, cfg.model, cfg.objective, cfg.train
    _one_of(d.binarize, BINARIZE_MODES, "data.binarize")
    _check(d.limit is None or d.limit > 0, f"data.limit must be positive, got {d.limit}")
    _check(d.val_size > 0, f"data.val_size must be positive, got {d.val_size}")
    _check(d.source != "arrays" or d.path is not None, "data.source 'arrays' needs data.path=FILE.npz")
    _check(d.max_len > 0, f"data.max_len must be positive, got {d.max_len}")
    _check(d.vocab_size >= 5, f"data.vocab_size must be at least 5 (<pad> <unk> <bos> <eos> and one word), got {d.vocab_size}")
    text_keys = [k for k in ("max_len", "vocab_size", "lowercase", "val_path", "test_path")
                 if getattr(d, k) != getattr(DataConfig, k)]
    _check(d.source == "text" or not text_keys,
           f"data.{', data.'.join(text_keys)} apply to data.source=text only (this run's source is '{d.source}')")
    _check(m.latent_dim > 0, f"model.latent_dim must be positive, got {m.latent_dim}")
    _one_of(m.net, ("mlp", "conv", "resnet"), "model.net")
    _check(m.resnet_blocks >= 0, f"model.resnet_blocks must be >= 0, got {m.resnet_blocks}")
    _one_of(m.activation, ACTIVATIONS, "model.activation")
    _one_of(m.likelihood, LIKELIHOODS, "model.likelihood")
    _one_of(m.posterior_scale, ("softplus", "logvar"), "model.posterior_scale")
    _one_of(m.posterior, ("gaussian", "planar", "iaf"), "model.posterior")
    _check(m.flow_steps > 0, f"model.flow_steps must be positive, got {m.flow_steps}")
    _check(m.flow_hidden > 0, f"model.flow_hidden must be positive, got {m.flow_hidden}")
    _one_of(m.prior, ("normal", "vamp"), "model.prior")
    _check(m.prior_components > 0, f"model.prior_components must be positive, got {m.prior_components}")
    _check(all(h > 0 for h in m.hidden), f"model.hidden sizes must be positive, got {list(m.hidden)}")
    _check(len(m.conv_channels) > 0 and all(c > 0 for c in m.conv_channels),
           f"model.conv_channels must be a non-empty list of positive ints, got {list(m.conv_channels)}")
    _check(m.conv_dense >= 0, f"model.conv_dense must be >= 0, got {m.conv_dense}")
    _check(m.sigma > 0, f"model.sigma must be positive, got {m.sigma}")
    _check(m.min_scale > 0, f"model.min_scale must be positive, got {m.min_scale}")
    _check(type(m) is model_config_class(m.kind), f"model section is not the config of model.kind '{m.kind}'")
    m.check()
    _one_of(o.kind, ("elbo", "iwae"), "objective.kind")
    _check(o.iwae_k >= 1, f"objective.iwae_k must be >= 1, got {o.iwae_k}")
    _check(o.beta >= 0, f"objective.beta must be >= 0, got {o.beta}")
    _one_of(o.beta_schedule, BETA_SCHEDULES, "objective.beta_schedule")
    _check(o.anneal_steps > 0, f"objective.anneal_steps must be positive, got {o.anneal_steps}")
    _check(o.cycles >= 1, f"objective.cycles must be >= 1, got {o.cycles}")
    _check(0 < o.cycle_ratio <= 1, f"objective.cycle_ratio must be in (0, 1], got {o.cycle_ratio}")
    _check(o.free_bits >= 0, f"objective.free_bits must be >= 0, got {o.free_bits}")
    _check(o.capacity_max >= 0, f"objective.capacity_max must be >= 0, got {o.capacity_max}")
    _check(o.capacity_steps > 0, f"objective.capacity_steps must be positive, got {o.capacity_steps}")
    _check(o.capacity_gamma >= 0, f"objective.capacity_gamma must be >= 0, got {o.capacity_gamma}")
    if o.kind == "iwae":  # the IWAE bound has no KL term for these to act on: say so instead of ignoring them
        ignored = changed_objective(o, KL_OPTIONS)
        _check(not ignored, f"objective.kind=iwae optimizes the importance-weighted bound, which has no KL term; "
                            f"{ignored} cannot apply (use objective.kind=elbo)")
    _check(t.epochs > 0, f"train.epochs must be positive, got {t.epochs}")
    _check(t.max_minutes >= 0, f"train.max_minutes must be zero (off) or positive, got {t.max_minutes}")
    _check(t.steps is None or t.steps > 0, f"train.steps must be positive, got {t.steps}")
    _check(t.eval_every > 0, f"train.eval_every must be positive, got {t.eval_every}")
    _check(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}")
    _one_of(t.optimizer, ("adam", "adamw"), "train.optimizer")
    _check(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
    _check(0 <= t.adam_b1 < 1 and 0 <= t.adam_b2 < 1, "train.adam_b1 and train.adam_b2 must be in [0, 1)")
    _check(t.adam_eps > 0, f"train.adam_eps must be positive, got {t.adam_eps}")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _one_of(t.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(0 < t.decay_rate <= 1, f"train.decay_rate must be in (0, 1], got {t.decay_rate}")
    _check(t.decay_steps > 0, f"train.decay_steps must be positive, got {t.decay_steps}")
    _check(t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}")
    _one_of(t.loop, ("auto", "scan", "steps"), "train.loop")
    _one_of(t.precision, PRECISIONS, "train.precision")
    _check(t.chunk_steps > 0, f"train.chunk_steps must be positive, got {t.chunk_steps}")
    _check(t.eval_batch_size > 0, f"train.eval_batch_size must be positive, got {t.eval_batch_size}")
    _check(t.checkpoint_every > 0, f"train.checkpoint_every must be positive, got {t.checkpoint_every}")
    _check(t.keep_checkpoints > 0, f"train.keep_checkpoints must be positive, got {t.keep_checkpoints}")
    for name in t.loggers:
        _one_of(name, LOGGERS, "train.loggers")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _check(t.devices == "all" or (t.devices.isdigit() and int(t.devices) > 0),
           f"train.devices must be 'all' or a positive integer, got '{t.devices}'")
    _one_of(d.color, ("rgb", "grey"), "data.color")
    _one_of(d.stream, ("auto", "yes", "no"), "data.stream")
    _check(d.image_size is None or d.image_size > 0, f"data.image_size must be positive, got {d.image_size}")
    _check(d.source == "folder" or (d.image_size is None and d.color == "rgb" and d.stream == "auto"),
           f"data.image_size, data.color and data.stream apply to data.source=folder only (this run's source is '{d.source}')")
    _check(d.source != "folder" or d.path is not None, "data.source 'folder' needs data.path=DIRECTORY")
