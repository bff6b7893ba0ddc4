"""Model classes, chosen by `model.kind` through a registry (add a variant: add an entry).

Every model implements the interface documented in `vaekit.models.vae` (loss, log_weights,
encode, decode, reconstruct, sample) and has the constructor signature
`Model(model_cfg, objective_cfg, image_shape, *, num_classes, rngs)`.
"""

from flax import nnx

from vaekit.config import Config
from vaekit.models.vae import VAE

MODELS = {"vae": VAE}


def build_model(config: Config, image_shape, *, num_classes: int | None = None, rngs: nnx.Rngs):
    """Construct the model named by `config.model.kind`, with parameters drawn from `rngs`."""
    from vaekit.errors import VaekitError

    cls = MODELS.get(config.model.kind)
    if cls is None:
        raise VaekitError(f"unknown model.kind '{config.model.kind}' (valid: {', '.join(MODELS)})")
    return cls(config.model, config.objective, tuple(image_shape), num_classes=num_classes, rngs=rngs)


__all__ = ["MODELS", "VAE", "build_model"]
