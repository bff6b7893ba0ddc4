"""Model kinds, chosen by `model.kind` through a registry: adding a kind is one file and one entry.

Every kind implements the interface in `vaekit.models.base` (loss, log_weights, encode, decode,
prior, reconstruct, sample, param_groups, capabilities), has the constructor signature
`Model(model_cfg, objective_cfg, spec, *, rngs)` with `spec` a `DataSpec`, and declares its own
config keys as `config_class` (a `ModelConfig` subclass). tests/test_models.py runs every
registered kind through the same conformance checks.
"""

from flax import nnx

from vaekit.config import Config
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models.base import Capabilities, Model, ParamGroup, require
from vaekit.models.cvae import CVAE, CVAEConfig
from vaekit.models.hierarchical import HVAE, HVAEConfig
from vaekit.models.vae import VAE

MODELS = {"vae": VAE, "cvae": CVAE, "hvae": HVAE}


def build_model(config: Config, spec: DataSpec, *, rngs: nnx.Rngs):
    """Construct the model named by `config.model.kind` for data of `spec`, parameters from `rngs`."""
    cls = MODELS.get(config.model.kind)
    if cls is None:
        raise VaekitError(f"unknown model.kind '{config.model.kind}' (valid: {', '.join(MODELS)})")
    return cls(config.model, config.objective, spec, rngs=rngs)


def abstract_model(config: Config, spec: DataSpec):
    """The model's structure with shape-only arrays (no parameters drawn): what restoring needs."""
    return nnx.eval_shape(lambda: build_model(config, spec, rngs=nnx.Rngs(0)))


__all__ = ["CVAE", "CVAEConfig", "Capabilities", "HVAE", "HVAEConfig", "MODELS", "Model", "ParamGroup", "VAE", "abstract_model",
           "build_model", "require"]
