"""Model kinds, chosen by `model.kind` through a registry (`models.registry`): adding a kind is one
file and one entry, or an installed package's "vaekit.models" entry point.

Every kind implements the interface in `vaekit.models.base` (loss, log_weights, encode, decode,
prior, reconstruct, sample, param_groups, capabilities), has the constructor signature
`Model(model_cfg, objective_cfg, spec, *, rngs)` with `spec` a `DataSpec` (a kind built on a trained
run takes that run's model too, `parent=`, handed by `build_model`), and declares its own config
keys as `config_class` (a `ModelConfig` subclass). tests/test_models.py runs every
registered kind through the same conformance checks.
"""

from vaekit.models.base import Capabilities, Model, ParamGroup, require
from vaekit.models.cvae import CVAE, CVAEConfig
from vaekit.models.hierarchical import HVAE, HVAEConfig
from vaekit.models.ladder import LadderConfig, LadderVAE
from vaekit.models.registry import MODELS, abstract_model, build_model
from vaekit.models.vae import VAE, VAEConfig
from vaekit.models.vqprior import VQPrior, VQPriorConfig
from vaekit.models.vqvae import VQVAE, VQVAEConfig

__all__ = ["CVAE", "CVAEConfig", "Capabilities", "HVAE", "HVAEConfig", "LadderConfig", "LadderVAE", "MODELS", "Model", "ParamGroup", "VAE", "VAEConfig", "VQPrior", "VQPriorConfig", "VQVAE", "VQVAEConfig", "abstract_model",
           "build_model", "require"]
