"""vaekit: variational autoencoders on JAX, Flax NNX and Optax.

    import vaekit
    run = vaekit.load_run("runs/mnist-mlp-...")
    q = run.model.encode(x)            # posterior over z
    x_hat = run.model.reconstruct(x)   # decoder mean at the posterior mean
"""

from vaekit.checkpoint import Run, load_run
from vaekit.config import Config, DataConfig, ModelConfig, ObjectiveConfig, TrainConfig, list_presets, resolve
from vaekit.data import Splits, load_data
from vaekit.errors import VaekitError
from vaekit.models import MODELS, VAE, build_model
from vaekit.train import Trainer, train

__all__ = [
    "MODELS",
    "VAE",
    "Config",
    "DataConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "Run",
    "Splits",
    "TrainConfig",
    "Trainer",
    "VaekitError",
    "build_model",
    "list_presets",
    "load_data",
    "load_run",
    "resolve",
    "train",
]
