"""A run's pictures: prior samples, reconstructions, a model's own pictures, the curves.

With `vaekit.plots`, the only code that draws: the model calls (`sample`, `reconstruct`) run as
compiled computations here and return arrays; plots turns arrays into PNG files. matplotlib is
imported only when a run draws (a run that stops earlier never imports it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class eval_mode:
    """Context manager: the model in eval mode inside, and every layer's own mode restored after."""

    _FLAGS = ("use_running_average", "deterministic")

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        self.saved = [(node, flag, getattr(node, flag)) for _, node in nnx.iter_graph(self.model)
                      if isinstance(node, nnx.Module) for flag in self._FLAGS if hasattr(node, flag)]
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        for node, flag, value in self.saved:
            setattr(node, flag, value)
        return False


def sample_grid(model, n: int, key, num_classes: int | None, per_class: int = 8, max_classes: int = 16):
    """Prior samples for the run's picture: (images, ncols, row labels).

    A conditional model gets one row of `per_class` samples per class (the first `max_classes`
    classes); any other model n samples in rows of 8.
    """
    if model.capabilities.conditional:
        classes = min(num_classes, max_classes)
        y = jnp.repeat(jnp.arange(classes), per_class)
        return np.asarray(_sample(model, len(y), key, y)), per_class, [f"y={c}" for c in range(classes)]
    return np.asarray(_sample(model, n, key, None)), 8, None


# The pictures' model calls, each one compiled computation: run eagerly, every op of the decoder
# was traced, lowered and looked up in the compilation cache on its own (write_pictures took
# 0.2 s of a warm mnist-mlp run, most of it that).
@functools.partial(nnx.jit, static_argnums=(1,))
def _sample(model, n: int, key: jax.Array, y: jax.Array | None) -> jax.Array:
    rngs = nnx.Rngs(sample=key)
    return model.sample(n, rngs=rngs) if y is None else model.sample(n, rngs=rngs, y=y)


@nnx.jit
def _reconstruct(model, x: jax.Array, y: jax.Array | None) -> jax.Array:
    return model.reconstruct(x, y)


def write_pictures(run_dir: Path, model, splits, seed: int, n: int = 64) -> None:
    """samples.png (prior samples; one row per class for a conditional model) and reconstructions.png
    (validation inputs and outputs), for image data, and the pictures of the model's
    `picture_data(splits, key)`. The model's train/eval mode is left as given."""
    from vaekit import plots

    if not splits.spec.is_images:
        return
    with eval_mode(model):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 7)
        images, ncols, rows = sample_grid(model, n, key, splits.num_classes)
        title = "samples per class (decoder means)" if rows else f"{len(images)} samples from the prior (decoder means)"
        plots.save_images(run_dir / "samples.png", images, ncols=ncols, title=title, row_labels=rows)
        x = splits.val["x"][:32]
        y = splits.val.get("y")
        x_hat = np.asarray(_reconstruct(model, jnp.asarray(x), None if y is None else jnp.asarray(y[:32])))
        plots.save_reconstructions(run_dir / "reconstructions.png", x, x_hat)
        for name, data in model.picture_data(splits, key).items():  # a model's own, e.g. its codebook's use
            plots.save_picture(run_dir / name, data)


def write_curves(run_dir: Path, history: list[dict], latent_layers: dict) -> None:
    """curves.png (the metrics by epoch), kl_per_dim.png and layers.png (KL per latent dimension,
    and per stochastic layer) from the run's epoch records."""
    from vaekit import plots

    plots.save_curves(run_dir / "curves.png", history)
    plots.save_kl_heatmap(run_dir / "kl_per_dim.png", history)
    plots.save_kl_heatmap(run_dir / "layers.png", history, layers=latent_layers)


__all__ = ["eval_mode", "sample_grid", "write_curves", "write_pictures"]
