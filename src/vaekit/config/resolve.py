"""Resolving a run's config: preset -> config file -> `--set` overrides, then validation.

Resolution order (one rule, `resolve_layers`): the preset first (the `--preset` flag, else a
`preset:` key in the config file, else the default `mnist-mlp`), then the config file's sections,
then the `--set` overrides in the order given. Every layer is recorded in the run (run.json
"config_layers"); config.yaml holds the fully resolved result. A run is counted in epochs or in
steps: an explicit `train.epochs` in the file or a `--set` on a preset counted in `train.steps`
clears the preset's steps (setting both explicitly is an error).
Every value is validated once, here, so the library below can trust its config.

Which keys a section has is looked up where they are declared: `model.kind` picks its class's
`config_class` from the model registry (`vaekit.models.MODELS`), `data.source` its class from
`vaekit.data.SOURCE_CONFIGS`; the valid nets, likelihoods and activations are their registries'
names. The registries are imported inside the functions that read them, so importing this
module imports neither JAX nor the models, and `resolve_data`, which reads the data section
alone, imports only the (numpy) data package: `vaekit train` starts loading data with it before
JAX is imported.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from vaekit.config.overrides import (apply_keys, closest, coerce, field_default, field_types, list_presets,
                                     load_preset, override_texts, parse_override, read_yaml)
from vaekit.config.schema import (BINARIZE_MODES, KL_OPTIONS, LOOPS, PRECISIONS, SECTIONS, Config, DataConfig,
                                  ModelConfig, changed_objective)
from vaekit.errors import VaekitError

log = logging.getLogger("vaekit")

DEFAULT_PRESET = "mnist-mlp"

# The key that picks the section's config class, by section.
_SELECTOR = {"model": "kind", "data": "source"}


# --------------------------------------------------------------------------- config classes from the registries


def model_config_class(kind: str) -> type[ModelConfig]:
    """The config dataclass that `model.kind` declares (its keys), from the model registry
    (`ModelBase.config_class`)."""
    from vaekit.models import MODELS

    if kind not in MODELS:
        raise VaekitError(f"unknown model.kind '{kind}'{closest(kind, MODELS)}")
    return MODELS[kind].config_class


def data_config_class(source: str) -> type[DataConfig]:
    """The config dataclass that `data.source` declares (`vaekit.data.SOURCE_CONFIGS`); a source
    without options of its own (or one not registered yet: `load_data` reports it) has DataConfig."""
    from vaekit.data import SOURCE_CONFIGS

    return SOURCE_CONFIGS.get(source, DataConfig)


def _classes(section: str) -> dict[str, type]:
    """{kind or source name: its config class}, every registered one."""
    if section == "model":
        from vaekit.models import MODELS

        return {name: model_config_class(name) for name in MODELS}
    from vaekit.data import DATA_SOURCES

    return {name: data_config_class(name) for name in DATA_SOURCES}


def _config_class(section: str, name: str) -> type:
    return model_config_class(name) if section == "model" else data_config_class(name)


def _foreign_key(section: str, key: str, name: str, cls: type) -> VaekitError:
    """The error for a key that `cls` (the config of kind or source `name`) lacks."""
    selector = _SELECTOR[section]
    names = list(field_types(cls))
    classes = _classes(section)
    owners = [n for n, c in classes.items() if key in field_types(c)]
    if owners:
        return VaekitError(f"config key '{section}.{key}' belongs to {section}.{selector} {' / '.join(owners)}, not "
                           f"'{name}' (valid keys for '{name}': {', '.join(names)})")
    # The nearest key of any kind or source (the next try names its owner), else this one's keys.
    every = [*names, *dict.fromkeys(k for c in classes.values() for k in field_types(c) if k not in names)]
    hint = closest(key, every, section)
    return VaekitError(f"unknown config key '{section}.{key}'{hint if 'did you mean' in hint else closest(key, names)}")


def _at_its_default(section: str, key: str, value) -> bool:
    """Whether `value` is the default of `key` in every registered class that declares it: a key
    that says nothing, accepted by the kinds and sources without it (a run's config.yaml from
    before the sections were split lists every key of the former flat DataConfig/ModelConfig)."""
    owners = [c for c in _classes(section).values() if key in field_types(c)]
    if not owners:
        return False
    try:
        value = coerce(value, field_types(owners[0])[key], f"{section}.{key}")
    except VaekitError:
        return False
    return all(field_default(c, key) == value for c in owners)


def _as_class(base, cls: type, section: str, name: str, updates: dict):
    """`base` as the config class `cls` of kind or source `name`: the keys both classes have keep
    their values; a key `cls` lacks may be dropped only at its default (nothing set is lost), or
    where `updates` sets it again (which `_apply_section` checks)."""
    fields = field_types(cls)
    for key in field_types(type(base)):
        value = getattr(base, key)
        if key not in fields and key not in updates and value != field_default(type(base), key):
            raise _foreign_key(section, key, name, cls)
    return cls(**{key: getattr(base, key) for key in field_types(type(base)) if key in fields})


def _apply_section(base, updates: dict, section: str, lenient: bool = False):
    """`base` with the section's `updates` applied. model.kind and data.source decide which keys
    exist, so they are applied first: the section becomes the class they declare. `lenient`: a key
    of another kind or source is dropped when it holds its default (a config.yaml written before
    the sections were split lists them all); otherwise it is an error, so nothing set is ignored."""
    if not isinstance(updates, dict):
        raise VaekitError(f"config section '{section}' must be a mapping, got {updates!r}")
    if section not in _SELECTOR:
        return apply_keys(base, updates, section)
    selector = _SELECTOR[section]
    name = coerce(updates.get(selector, getattr(base, selector)), str, f"{section}.{selector}")
    cls = _config_class(section, name)
    if type(base) is not cls:
        base = _as_class(base, cls, section, name, updates)
    own = field_types(cls)
    for key, value in updates.items():
        if key not in own and not (lenient and _at_its_default(section, key, value)):
            raise _foreign_key(section, key, name, cls)
    return apply_keys(base, {k: v for k, v in updates.items() if k in own}, section)


def merge(config: Config, updates: dict, lenient: bool = False) -> Config:
    """Apply a nested dict (as read from YAML) on top of `config`; the model and data sections
    become the classes their kind and source declare (`lenient`: see `_apply_section`)."""
    if not isinstance(updates, dict):
        raise VaekitError(f"a config file must hold a mapping of sections, got {type(updates).__name__}")
    new = config
    for section, values in updates.items():
        if section in ("description", "preset", "requires"):
            continue
        if section not in SECTIONS:
            raise VaekitError(f"unknown config section '{section}'{closest(section, SECTIONS)}")
        new = dataclasses.replace(new, **{section: _apply_section(getattr(new, section), values or {}, section, lenient)})
    for section in _SELECTOR:  # a section no layer named still becomes its kind's or source's class
        if section not in updates:
            new = dataclasses.replace(new, **{section: _apply_section(getattr(new, section), {}, section)})
    return new


# --------------------------------------------------------------------------- the layers


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
    return _apply_section(data, {"source": "arrays"}, "data") if data.path is not None and data.source == "mnist" \
        else data


def resolve_data(preset: str | None = None, config_file: str | None = None,
                 overrides: list[str] | dict = ()) -> DataConfig | None:
    """The data section alone, as `resolve_layers` resolves it, or None where that fails.

    Only the layers' `data` keys are read, so neither the model registry nor JAX is imported:
    `vaekit train` starts loading the data with this (`vaekit.data.prefetch`) while it imports
    them. It is only a head start: the full resolution still checks everything and reports any
    error, and data is used only when its config equals the full one's (`load_configured`).
    """
    try:
        doc, name, _ = _config_file_and_preset(preset, config_file)
        data = _apply_section(DataConfig(), {}, "data")
        for layer in (load_preset(name), doc, *(parse_override(text) for text in override_texts(overrides))):
            section = layer.get("data")
            if section:
                data = _apply_section(data, section, "data")
        return _path_means_arrays(data)
    except VaekitError:
        return None


def resolve(preset: str | None = None, config_file: str | None = None, overrides: list[str] | dict = ()) -> Config:
    """The preset, then the config file, then the overrides, validated (see `resolve_layers`).

        vaekit.resolve("mnist-conv", overrides={"train.epochs": 3, "model.latent_dim": 16})
    """
    return resolve_layers(preset, config_file, overrides)[0]


def resolve_layers(preset: str | None = None, config_file: str | None = None,
                   overrides: list[str] | dict = ()) -> tuple[Config, dict]:
    """(config, layers): the one precedence order, and a record of every layer that went into it.

    1. the preset: `preset` (the --preset flag), else the file's `preset:` key, else DEFAULT_PRESET;
    2. the config file's sections (`config_file`), if any;
    3. the `section.key=value` overrides, in order (or a dict {"section.key": value}).
    `layers` is {"preset": name, "preset_from": "flag" | "file" | "default", "file": path or None,
    "overrides": [...]}, for run.json. An explicit train.epochs (file or override) on a preset that
    counts in train.steps clears train.steps; the user setting both is an error.
    """
    overrides = override_texts(overrides)
    doc, name, source = _config_file_and_preset(preset, config_file)
    if source == "flag" and doc.get("preset") and doc["preset"] != preset:
        log.warning("--preset %s takes precedence over 'preset: %s' in %s", preset, doc["preset"], config_file)
    preset_doc = load_preset(name)
    cfg = dataclasses.replace(merge(Config(), preset_doc), preset=name)
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
    _check_required(cfg, name, preset_doc.get("requires") or {})
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
    """Rebuild a Config from `Config.to_dict()` output (e.g. a run's config.yaml, also one written
    before the sections were split, which lists other kinds' and sources' keys at their defaults)."""
    cfg = dataclasses.replace(merge(Config(), doc, lenient=True), preset=doc.get("preset"))
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- validation


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise VaekitError(message)


def _one_of(value: str, options, key: str) -> None:
    options = list(options)
    _check(value in options, f"{key} must be one of {', '.join(options)}; got '{value}'{closest(value, options)}")


def validate(cfg: Config) -> None:
    """Reject values no run can use, with one line naming the key and the problem. The names a
    key may take come from the registries that implement them."""
    _validate_data(cfg.data)
    _validate_model(cfg.model)
    _validate_objective(cfg)
    _validate_train(cfg)


def _check_required(cfg: Config, preset: str, required: dict) -> None:
    """A preset's `requires:` ({"section.key": why}): keys the user must set (a preset "for your
    corpus" must not train on a stand-in without saying so)."""
    for key, why in required.items():
        section, field = key.split(".")
        if getattr(getattr(cfg, section), field) is None:
            raise VaekitError(f"preset {preset} needs {key}: {why}")


def _section_class(value, cls: type, section: str) -> None:
    selector = _SELECTOR[section]
    _check(type(value) is cls, f"the {section} section is a {type(value).__name__}, not the {cls.__name__} of "
                               f"{section}.{selector} '{getattr(value, selector)}' (vaekit.config.merge or resolve "
                               f"builds it)")


def _validate_data(d: DataConfig) -> None:
    _one_of(d.binarize, BINARIZE_MODES, "data.binarize")
    _check(d.limit is None or d.limit > 0, f"data.limit must be positive, got {d.limit}")
    _check(d.val_size > 0, f"data.val_size must be positive, got {d.val_size}")
    _check(d.source != "arrays" or d.path is not None, "data.source 'arrays' needs data.path=FILE.npz")
    _section_class(d, data_config_class(d.source), "data")
    d.check()


def _validate_model(m: ModelConfig) -> None:
    from vaekit.core.distributions import LIKELIHOODS, POSTERIOR_SCALES
    from vaekit.nets import ENCODERS
    from vaekit.nets.mlp import ACTIVATIONS

    _check(m.latent_dim > 0, f"model.latent_dim must be positive, got {m.latent_dim}")
    _one_of(m.net, ENCODERS, "model.net")
    _check(m.resnet_blocks >= 0, f"model.resnet_blocks must be >= 0, got {m.resnet_blocks}")
    _one_of(m.activation, ACTIVATIONS, "model.activation")
    _one_of(m.likelihood, LIKELIHOODS, "model.likelihood")
    _one_of(m.posterior_scale, POSTERIOR_SCALES, "model.posterior_scale")
    _check(all(h > 0 for h in m.hidden), f"model.hidden sizes must be positive, got {list(m.hidden)}")
    _check(len(m.conv_channels) > 0 and all(c > 0 for c in m.conv_channels),
           f"model.conv_channels must be a non-empty list of positive ints, got {list(m.conv_channels)}")
    _check(m.conv_dense >= 0, f"model.conv_dense must be >= 0, got {m.conv_dense}")
    _check(m.sigma > 0, f"model.sigma must be positive, got {m.sigma}")
    _check(m.min_scale > 0, f"model.min_scale must be positive, got {m.min_scale}")
    _section_class(m, model_config_class(m.kind), "model")
    m.check()


def _validate_objective(cfg: Config) -> None:
    from vaekit.core.objectives import BETA_SCHEDULES, OBJECTIVE_KINDS

    o = cfg.objective
    _one_of(o.kind, OBJECTIVE_KINDS, "objective.kind")
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


def _validate_train(cfg: Config) -> None:
    from vaekit.training.optim import LR_SCHEDULES, OPTIMIZERS
    from vaekit.training.tracking import LOGGERS

    t = cfg.train
    _check(t.epochs > 0, f"train.epochs must be positive, got {t.epochs}")
    _check(t.max_minutes >= 0, f"train.max_minutes must be zero (off) or positive, got {t.max_minutes}")
    _check(t.steps is None or t.steps > 0, f"train.steps must be positive, got {t.steps}")
    _check(t.eval_every > 0, f"train.eval_every must be positive, got {t.eval_every}")
    _check(t.batch_size > 0, f"train.batch_size must be positive, got {t.batch_size}")
    _one_of(t.optimizer, OPTIMIZERS, "train.optimizer")
    _check(t.learning_rate > 0, f"train.learning_rate must be positive, got {t.learning_rate}")
    _check(0 <= t.adam_b1 < 1 and 0 <= t.adam_b2 < 1, "train.adam_b1 and train.adam_b2 must be in [0, 1)")
    _check(t.adam_eps > 0, f"train.adam_eps must be positive, got {t.adam_eps}")
    _check(t.weight_decay >= 0, f"train.weight_decay must be >= 0, got {t.weight_decay}")
    _one_of(t.lr_schedule, LR_SCHEDULES, "train.lr_schedule")
    _check(t.warmup_steps >= 0, f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
    _check(0 < t.decay_rate <= 1, f"train.decay_rate must be in (0, 1], got {t.decay_rate}")
    _check(t.decay_steps > 0, f"train.decay_steps must be positive, got {t.decay_steps}")
    _check(t.grad_clip >= 0, f"train.grad_clip must be >= 0, got {t.grad_clip}")
    _one_of(t.loop, LOOPS, "train.loop")
    _one_of(t.precision, PRECISIONS, "train.precision")
    _check(t.chunk_steps > 0, f"train.chunk_steps must be positive, got {t.chunk_steps}")
    _check(t.eval_batch_size > 0, f"train.eval_batch_size must be positive, got {t.eval_batch_size}")
    _check(t.checkpoint_every > 0, f"train.checkpoint_every must be positive, got {t.checkpoint_every}")
    _check(t.keep_checkpoints > 0, f"train.keep_checkpoints must be positive, got {t.keep_checkpoints}")
    for name in t.loggers:
        _one_of(name, ("tensorboard", *LOGGERS), "train.loggers")
    _check(t.log_every >= 1, f"train.log_every must be >= 1, got {t.log_every}")
    _check(t.devices == "all" or (t.devices.isdigit() and int(t.devices) > 0),
           f"train.devices must be 'all' or a positive integer, got '{t.devices}'")
