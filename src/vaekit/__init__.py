"""vaekit: variational autoencoders on JAX, Flax NNX and Optax.

    import vaekit
    run = vaekit.load_run("runs/mnist-mlp-...")
    q = run.model.encode(x)            # posterior over z
    x_hat = run.model.reconstruct(x)   # decoder mean at the posterior mean
"""

from vaekit import _xla

_xla.configure()  # before anything below can start JAX's backends
_xla.configure_cache()  # JAX reads its cache settings from the environment when it is imported

from vaekit.checkpoint import Run, load_run  # noqa: E402
from vaekit.config import Config, DataConfig, ModelConfig, ObjectiveConfig, TrainConfig, list_presets, resolve  # noqa: E402
from vaekit.data import DataSpec, Splits, load_data  # noqa: E402
from vaekit.errors import VaekitError  # noqa: E402
from vaekit.models import CVAE, MODELS, VAE, Capabilities, ParamGroup, build_model  # noqa: E402
from vaekit.train import Trainer, train  # noqa: E402

__all__ = [
    "CVAE",
    "Capabilities",
    "DataSpec",
    "MODELS",
    "ParamGroup",
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
