"""The model interface: the one seam between a model and the trainer, evaluators, plots and CLI.

Every model kind is an `nnx.Module` built as `Model(model_cfg, objective_cfg, spec, *, rngs)`
(`spec` a `vaekit.data.spec.DataSpec`: the data kind, one example's shape, classes, vocabulary)
with these methods:

    loss(batch, *, rngs, step) -> (loss, metrics)
        The training objective, with everything the model's config asks for (beta, annealing,
        free bits, capacity, IWAE, a discriminator, codebook terms). `loss` is a scalar to
        minimize, or {group name: scalar} when the model has several parameter groups.
        `metrics` maps names to `vaekit.core.metrics.Mean` (exact sums over denominators) or plain
        scalars. `step` is a traced array; `rngs` has the streams "sample", "dropout", "noise".
        This is the only method the trainer needs.
    log_weights(batch, k, *, rngs) -> (B, k)            [capability likelihood_bound]
        log p(x, z_i) - log q(z_i | x) for k draws: IWAE bounds, the NLL estimate, the ELBO.
    encode(x, y=None) -> posterior                    a `mean` and `sample_and_log_prob` (`log_prob` where known)
    decode(z, y=None) -> likelihood                   `log_prob(x)`, `mean()`, `sample(key)`
    prior                                             `log_prob(z)`, `sample(key, shape)`
    reconstruct(x, y=None), sample(n, *, rngs, y=None, temperature=1.0) -> data
    param_groups() -> {name: ParamGroup}             what each optimizer updates
    latent_layers (optional) -> {layer: (start, stop)}   slices of the code per stochastic layer:
                                                      active units are reported per layer too
    picture_data(splits, key) (optional) -> {file name: ImageGrid | Bars | Heatmap}
                                                      the kind's own pictures as data; `plots` draws them

What else a command may use, the model declares in `capabilities` (a `Capabilities`), and a
command checks it with `require` instead of assuming: a model without a likelihood bound is
told so in one line by `vaekit evaluate`, never met with an AttributeError.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, ClassVar, Protocol, runtime_checkable

import jax
import numpy as np
from flax import nnx

from vaekit.config.schema import ModelConfig
from vaekit.errors import VaekitError


@dataclasses.dataclass(frozen=True)
class Capabilities:
    """What a model offers beyond `loss`; the trainer, evaluators, plots and CLI read these."""

    likelihood_bound: bool = True  # log_weights: `vaekit evaluate` (NLL, IWAE bounds), the ELBO metric
    # What log_weights gives: "sampled" importance weights (a k-sample estimate), a "bound" that is
    # the same for every draw (a VQ-VAE's), or the "exact" log-likelihood (a language model); the
    # last two are scored once per example.
    log_weights: str = "sampled"
    latent_vector: bool = True  # encode(x).mean is a flat (N, D) code: active units, interpolation, traversal, disentanglement
    kl_per_dim: bool = True  # metrics carry "kl_per_dim" (D,): the KL heatmap, collapse warnings, traversal order
    conditional: bool = False  # a label y conditions the model: `--label`, class-conditional sample grids
    best_metric: str = "elbo"  # the validation metric that picks the "best" checkpoint
    best_mode: str = "max"  # "max" or "min" of best_metric
    update: str = "simultaneous"  # several parameter groups: "simultaneous" (one gradient point) or "alternating" (in order)
    data_kinds: tuple[str, ...] = ("images", "vectors")  # the data spec kinds the model accepts


@dataclasses.dataclass(frozen=True)
class ParamGroup:
    """Parameters updated by one optimizer.

    filter: an NNX filter selecting the group's parameters (a Variable type, a path predicate,
        `nnx.All(...)`); parameters in no group stay frozen (a pretrained part).
    learning_rate: this group's peak learning rate (None: `train.learning_rate`); the rest of
        the optimizer (schedule, Adam moments, clipping) follows the train config.
    train_overrides: other `train.*` optimizer fields for this group only, e.g.
        {"adam_b1": 0.5, "adam_b2": 0.9} for a discriminator (names of `TrainConfig` fields).
    """

    filter: Any = nnx.Param
    learning_rate: float | None = None
    train_overrides: tuple[tuple[str, Any], ...] | dict = ()


DEFAULT_GROUPS = {"model": ParamGroup(nnx.Param)}


@runtime_checkable
class Model(Protocol):
    """The methods every registered model kind has (see the module docstring)."""

    kind: ClassVar[str]
    capabilities: Capabilities

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[Any, dict]: ...

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> Any: ...

    def decode(self, z: jax.Array, y: jax.Array | None = None) -> Any: ...

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array: ...

    def sample(self, n: int, *, rngs: nnx.Rngs, y: jax.Array | None = None, temperature: float = 1.0) -> jax.Array: ...

    def param_groups(self) -> dict[str, ParamGroup]: ...


class ModelBase(nnx.Module):
    """The base of every registered kind: each optional member of the interface, with its default.

    Code outside a model reads these members directly: a kind that has more (several stochastic
    layers, pictures of its own, a parent run) overrides the default here, so no caller needs a
    `getattr(model, name, default)` for a member the interface does not declare.
    """

    kind: ClassVar[str]
    #: The kind's config dataclass: `ModelConfig` or a subclass with the kind's own keys.
    config_class: ClassVar[type] = ModelConfig
    #: A kind built on a trained run (`model.parent`, e.g. vqprior's stage-1 VQ-VAE).
    needs_parent_run: ClassVar[bool] = False
    #: Whether the constructor takes a user's `encoder=`/`decoder=` modules (`models.user_nets`).
    user_nets: ClassVar[bool] = False
    capabilities: ClassVar[Capabilities] = Capabilities()
    #: Width of the whole code (all layers of a hierarchical model); 0 for a model without one.
    latent_dim: int = 0
    #: Widths of the code's stochastic layers [z1, ..., zL], bottom to top; () for a one-layer model.
    layer_dims: tuple[int, ...] = ()

    @property
    def latent_layers(self) -> dict[str, tuple[int, int]]:
        """Named slices of the code, one per stochastic layer: {"z1": (0, d1), "z2": (d1, d1 + d2), ...}
        from `layer_dims`; validation and evaluate report active units per layer. Empty for one layer."""
        bounds = [0, *itertools.accumulate(self.layer_dims)]
        return {f"z{i + 1}": (bounds[i], bounds[i + 1]) for i in range(len(self.layer_dims))}

    def picture_data(self, splits, key: jax.Array) -> dict[str, PictureData]:
        """Pictures of the kind's own, as data: {file name: what to draw}, drawn by `vaekit.plots`
        after samples.png and reconstructions.png (none by default). `splits`: the run's data
        (the validation split's images), `key`: the pictures' random key."""
        return {}


# --------------------------------------------------------------------------- pictures as data
# A model says what its own pictures show; `vaekit.plots.save_picture` draws them (a model never
# imports matplotlib).


@dataclasses.dataclass(frozen=True)
class ImageGrid:
    """Images (N, H, W, C) in [0, 1], drawn as one grid of `ncols` columns under a title."""

    images: np.ndarray
    ncols: int = 8
    title: str | None = None


@dataclasses.dataclass(frozen=True)
class Bars:
    """One bar per entry of `heights` (K,), on a symmetric-log y axis (counts that span decades)."""

    heights: np.ndarray
    xlabel: str
    ylabel: str
    title: str


@dataclasses.dataclass(frozen=True)
class Heatmap:
    """A map `values` (h, w) coloured from 0 to `vmax`, with a labelled colour bar."""

    values: np.ndarray
    vmax: float
    colorbar: str
    title: str


PictureData = ImageGrid | Bars | Heatmap


CAPABILITY_NEEDS = {
    "likelihood_bound": "a likelihood bound (log_weights)",
    "latent_vector": "a continuous latent vector",
    "kl_per_dim": "a per-dimension KL",
    "conditional": "a label condition",
}


def apply_batched(module: nnx.Module, method, x, batch_size: int):
    """`method(module, batch)` over the rows of x in batches of `batch_size`, on the host.

    Compiled once per batch shape, with the module's arrays an argument of the compiled function
    (not constants baked into it); the outputs (an array or a pytree of arrays, one row per
    example) are concatenated along their first axis.
    """
    graphdef, state = nnx.split(module)
    fn = jax.jit(lambda st, xb: method(nnx.merge(graphdef, st), xb))
    parts = [jax.device_get(fn(state, x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
    return jax.tree.map(lambda *p: np.concatenate(p), *parts)


def require(model, capability: str, command: str) -> None:
    """Raise a one-line VaekitError when `model` lacks `capability`, naming the command."""
    if not dataclasses.asdict(model.capabilities)[capability]:
        raise VaekitError(f"{command} needs a model with {CAPABILITY_NEEDS[capability]}; model.kind '{model.kind}' "
                          f"has none")


__all__ = ["Bars", "CAPABILITY_NEEDS", "Capabilities", "DEFAULT_GROUPS", "Heatmap", "ImageGrid", "Model", "ModelBase",
           "ParamGroup", "PictureData", "apply_batched", "require"]
