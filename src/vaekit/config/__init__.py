"""Typed, frozen configuration for a vaekit run, with YAML presets and `section.key=value` overrides.

A run is fully described by one `Config` (data, model, objective, train). `config.yaml` in a run
directory is that config, resolved, so a run can always be rebuilt from its own directory.

Three layers:

- `schema`: the frozen dataclasses with the keys every run has (imports nothing of vaekit but its
  errors; the modules below the config, models, nets, data and core, import it directly);
- `overrides`: YAML files and presets, `--set` parsing, coercion to the fields' types, did-you-mean;
- `resolve`: preset -> file -> `--set`, with each model kind's and data source's own config class
  looked up from the registries, and `validate`.
"""

from vaekit.config.overrides import list_presets, load_preset, parse_override, read_yaml
from vaekit.config.resolve import (DEFAULT_PRESET, data_config_class, default_run_name, from_dict, merge,
                                   model_config_class, resolve, resolve_data, resolve_layers, validate)
from vaekit.config.schema import (BINARIZE_MODES, KL_OPTIONS, PRECISIONS, SECTIONS, Config, DataConfig, ModelConfig,
                                  ObjectiveConfig, TrainConfig, changed_objective)

__all__ = ["BINARIZE_MODES", "Config", "DEFAULT_PRESET", "DataConfig", "KL_OPTIONS", "ModelConfig", "ObjectiveConfig",
           "PRECISIONS", "SECTIONS", "TrainConfig", "changed_objective", "data_config_class", "default_run_name",
           "from_dict", "list_presets", "load_preset", "merge", "model_config_class", "parse_override", "read_yaml",
           "resolve", "resolve_data", "resolve_layers", "validate"]
