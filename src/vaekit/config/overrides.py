"""Reading config layers: YAML files and presets, `section.key=value` overrides, values coerced to
the dataclass fields' types, and did-you-mean suggestions for misspelt names.

Nothing here knows a model kind or a data source: `vaekit.config.resolve` decides which class a
section is and hands this module the keys to apply (`apply_keys`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from vaekit.errors import VaekitError


def yaml_load(text: str):
    """yaml.safe_load with libyaml's C parser where PyYAML has it (the same documents, parsed ~10x faster)."""
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def closest(name: str, options, section: str | None = None) -> str:
    """" (did you mean 'x'?)" for the option nearest `name`, else " (valid: a, b, ...)"; with
    `section`, the suggestion is the whole key a user types ('train.epochs')."""
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    if match:
        return f" (did you mean '{section}.{match[0]}'?)" if section else f" (did you mean '{match[0]}'?)"
    return f" (valid: {', '.join(options)})"


@dataclasses.dataclass(frozen=True)
class Typed:
    """A `--set` value: the YAML reading of the text and the text the user typed. A string field
    takes the typed text where YAML read something else (`yes` is the word, not a boolean)."""

    value: Any
    raw: str


def _is_str_field(annotation: Any) -> bool:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return str in typing.get_args(annotation)
    return annotation is str


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the dataclass field's declared type, or raise VaekitError."""
    if isinstance(value, Typed):
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
        return coerce(value, inner[0], where)
    if origin is tuple:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if isinstance(value, str):
            value = yaml_load(value if value.startswith("[") else f"[{value}]")
        if not isinstance(value, (list, tuple)):
            raise VaekitError(f"{where} must be a list, got {value!r}")
        return tuple(coerce(v, args[0], where) for v in value)
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


def field_types(cls: type) -> dict[str, Any]:
    """{field name: its declared type} of a config dataclass, in declaration order."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def field_default(cls: type, name: str) -> Any:
    """The default value of field `name` of the config dataclass `cls`."""
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    return field.default_factory() if field.default is dataclasses.MISSING else field.default


def apply_keys(base, updates: dict, section: str):
    """`base` (a config dataclass) with `updates` {key: value} coerced to its fields' types; every
    key must be one of its fields."""
    if not updates:
        return base
    types_ = field_types(type(base))
    changes = {}
    for key, value in updates.items():
        if key not in types_:
            raise VaekitError(f"unknown config key '{section}.{key}'{closest(key, list(types_), section)}")
        changes[key] = coerce(value, types_[key], f"{section}.{key}")
    return dataclasses.replace(base, **changes)


def override_texts(overrides) -> list[str]:
    """Overrides as `section.key=value` strings: a list of them as given (the CLI's `--set`), or a
    mapping {"section.key": value} from Python, each value written as the YAML the CLI would read."""
    if isinstance(overrides, str):
        raise VaekitError(f"overrides must be a list of 'section.key=value' strings or a dict, got the string "
                          f"{overrides!r}")
    if not isinstance(overrides, Mapping):
        return list(overrides)

    def text(value) -> str:
        if isinstance(value, tuple):
            value = list(value)
        return yaml.safe_dump(value, default_flow_style=True, width=10**9).strip().removesuffix("\n...").strip()

    return [f"{key}={text(value)}" for key, value in overrides.items()]


def parse_override(text: str) -> dict:
    """`section.key=value` -> {"section": {"key": value}} with the value parsed as YAML."""
    if "=" not in text:
        raise VaekitError(f"override '{text}' must look like section.key=value")
    path, raw = text.split("=", 1)
    parts = path.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise VaekitError(f"override key '{path}' must be section.key, e.g. train.epochs")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return {parts[0]: {parts[1]: Typed(value, raw)}}


# --------------------------------------------------------------------------- files and presets


def _preset_dir():
    return resources.files("vaekit") / "presets"


def list_presets() -> dict[str, str]:
    """Preset name -> one-line description, from the YAML files shipped in vaekit/presets."""
    out = {}
    for entry in sorted(_preset_dir().iterdir(), key=lambda p: p.name.removesuffix(".yaml")):  # a base before its -paper
        if entry.name.endswith(".yaml"):
            doc = yaml_load(entry.read_text()) or {}
            out[entry.name[: -len(".yaml")]] = str(doc.get("description", "")).strip()
    return out


def load_preset(name: str) -> dict:
    names = list_presets()
    if name not in names:
        raise VaekitError(f"unknown preset '{name}'{closest(name, names)}")
    return yaml_load((_preset_dir() / f"{name}.yaml").read_text()) or {}


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise VaekitError(f"config file '{p}' does not exist")
    try:
        doc = yaml_load(p.read_text())
    except yaml.YAMLError as e:
        raise VaekitError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    return doc or {}
