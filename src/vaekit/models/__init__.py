"""Model kinds, chosen by `model.kind` through a registry: adding a kind is one file and one entry.

Every kind implements the interface in `vaekit.models.base` (loss, log_weights, encode, decode,
prior, reconstruct, sample, param_groups, capabilities), has the constructor signature
`Model(model_cfg, objective_cfg, spec, *, rngs)` with `spec` a `DataSpec` (a kind built on a trained
run takes that run's model too, `parent=`, handed by `build_model`), and declares its own config
keys as `config_class` (a `ModelConfig` subclass). tests/test_models.py runs every
registered kind through the same conformance checks.
"""

from flax import nnx

from vaekit.config import Config
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models.base import Capabilities, Model, ParamGroup, require
from vaekit.models.cvae import CVAE, CVAEConfig
from vaekit.models.disentangle import DIPVAE, TCVAE, FactorVAE
from vaekit.models.hierarchical import HVAE, HVAEConfig
from vaekit.models.sharp import SharpConfig, SharpVAE
from vaekit.models.vaegan import VAEGAN, VAEGANConfig
from vaekit.models.ladder import LadderConfig, LadderVAE
from vaekit.models.textvae import LanguageModel, TextConfig, TextVAE
from vaekit.models.vae import VAE
from vaekit.models.vqvae import VQVAE, VQVAEConfig
from vaekit.models.vqprior import VQPrior, VQPriorConfig

MODELS = {"vae": VAE, "cvae": CVAE, "hvae": HVAE, "ladder": LadderVAE, "vqvae": VQVAE, "vqprior": VQPrior,
          "tcvae": TCVAE, "factorvae": FactorVAE, "dipvae": DIPVAE,
          "sharp": SharpVAE, "vaegan": VAEGAN, "textvae": TextVAE, "lm": LanguageModel}


def build_model(config: Config, spec: DataSpec, *, rngs: nnx.Rngs, **handed):
    """Construct the model named by `config.model.kind` for data of `spec`, parameters from `rngs`.

    `handed`: what the kind is built on besides its config, passed on to its constructor: for a
    kind built on a trained run (`needs_parent_run`), `parent=` that run's model, which
    `vaekit.runs.run.resolve_parent(config)` loads (a model never reads a run directory itself).
    """
    cls = MODELS.get(config.model.kind)
    if cls is None:
        raise VaekitError(f"unknown model.kind '{config.model.kind}' (valid: {', '.join(MODELS)})")
    if cls.needs_parent_run and "parent" not in handed:
        raise VaekitError(f"model.kind={config.model.kind} is built on a trained run: hand it "
                          f"build_model(..., **handed) with `cfg, handed = vaekit.runs.run.resolve_parent(cfg)`")
    return cls(config.model, config.objective, spec, rngs=rngs, **handed)


def abstract_model(config: Config, spec: DataSpec, **handed):
    """The model's structure with shape-only arrays (no parameters drawn): what restoring needs.
    Handed modules (a parent run's model, concrete or itself abstract) pass through as arguments."""
    return nnx.eval_shape(lambda h: build_model(config, spec, rngs=nnx.Rngs(0), **h), handed)


__all__ = ["CVAE", "CVAEConfig", "Capabilities", "HVAE", "HVAEConfig", "LadderConfig", "LadderVAE", "MODELS", "Model", "ParamGroup", "VAE", "VQPrior", "VQPriorConfig", "VQVAE", "VQVAEConfig", "abstract_model",
           "build_model", "require"]
