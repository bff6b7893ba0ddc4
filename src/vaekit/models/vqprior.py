"""Stage 2 of the VQ-VAE recipe: a gated PixelCNN prior p(z) over the code grids of a frozen,
trained stage-1 run (`model.parent`, a `vqvae` run directory).

The model is handed the parent's model (`parent=`, in eval mode) by whoever builds it:
`vaekit.runs.run.resolve_parent` loads it from the parent's "best" checkpoint, after checking it
against the SHA-256 of its config.yaml and best checkpoint files recorded in this run's config
(`model.parent_sha256`, filled in when training starts); a parent changed since then is refused in
one line (training, resuming, `load_run`). Its parameters sit in no optimizer group and its
codebook statistics are never updated (only its pure `encode` / `decode` are called); this run's
checkpoints hold it too.

    loss         = -log p_prior(z_q(x))                          (nats per image)
    log_weights  = log p(x | z_q(x)) + log p_prior(z_q(x))       the two-stage bound on log p(x)

Sampling draws codes ancestrally (one compiled loop over the positions, with temperature and
top-k) and decodes them with the parent's decoder.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.config.schema import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities, ImageGrid, ModelBase, ParamGroup, PictureData
from vaekit.models.vqvae import VQVAE, batch_perplexity, check_objective, code_pictures, validation_codes
from vaekit.nets.pixelcnn import GatedPixelCNN


@dataclasses.dataclass(frozen=True)
class VQPriorConfig(ModelConfig):
    kind: str = "vqprior"
    parent: str = ""  # the stage-1 vqvae run directory (required); recorded as an absolute path
    parent_sha256: str = ""  # checksum of the parent's config and best checkpoint; recorded when training starts
    prior_channels: int = 64  # channels of both PixelCNN stacks
    prior_layers: int = 6  # gated layers after the first (masked, type A) one
    prior_kernel: int = 3  # odd kernel side of the masked convolutions
    top_k: int = 0  # sampling: draw each code among the top_k most likely only (0: all K)

    def __post_init__(self):
        # An absolute path, so that the run's config.yaml names the parent from any directory.
        if self.parent:
            object.__setattr__(self, "parent", str(Path(self.parent).expanduser().absolute()))

    def check(self) -> None:
        if not self.parent:
            raise VaekitError("model.kind=vqprior needs model.parent=RUN: the directory of a trained vqvae run")
        if self.prior_channels <= 0 or self.prior_layers < 0:
            raise VaekitError("model.prior_channels must be positive and model.prior_layers >= 0")
        if self.prior_kernel < 1 or self.prior_kernel % 2 == 0:
            raise VaekitError(f"model.prior_kernel must be odd, got {self.prior_kernel}")
        if self.top_k < 0:
            raise VaekitError(f"model.top_k must be >= 0, got {self.top_k}")


class VQPrior(ModelBase):
    """A PixelCNN prior over a frozen VQ-VAE's codes; the pair is the generative model."""

    kind = "vqprior"
    config_class = VQPriorConfig
    needs_parent_run = True  # built on a trained stage-1 run (`model.parent`), handed as `parent=`

    def __init__(self, model: VQPriorConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs,
                 parent: VQVAE):
        check_objective(self.kind, objective)
        model.check()
        self.model_cfg, self.spec = model, spec
        if parent.kind != "vqvae":
            raise VaekitError(f"model.parent '{model.parent}' is a {parent.kind} run, not a vqvae run")
        if tuple(parent.spec.shape) != tuple(spec.shape):
            raise VaekitError(f"model.parent '{model.parent}' was trained on examples of shape "
                              f"{tuple(parent.spec.shape)}; this data's are {tuple(spec.shape)}")
        self.parent = parent
        self.grid, self.latent_dim = parent.grid, parent.latent_dim
        k = parent.model_cfg.codebook_size
        self.pixelcnn = GatedPixelCNN(k, model.prior_channels, model.prior_layers, model.prior_kernel, rngs=rngs)
        # The codes are a function of x: the two-stage bound has no draws.
        self.capabilities = Capabilities(likelihood_bound=True, log_weights="bound", latent_vector=False,
                                         kl_per_dim=False, best_metric="elbo", data_kinds=("images",))

    @property
    def prior(self) -> GatedPixelCNN:
        """p(codes): `log_prob(codes)`; draws with `sample`."""
        return self.pixelcnn

    def param_groups(self) -> dict[str, ParamGroup]:
        # Only the PixelCNN's parameters: the parent's stay frozen.
        return {"prior": ParamGroup(nnx.All(nnx.Param, nnx.PathContains("pixelcnn")))}

    def encode(self, x: jax.Array, y: jax.Array | None = None):
        """The parent's quantized posterior (codes, z_q)."""
        return self.parent.encode(x)

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """The parent's p(x | z) for code vectors z (..., h, w, D)."""
        return self.parent.decode(z)

    def _terms(self, batch: dict):
        x = jnp.asarray(batch["x"], jnp.float32).reshape(-1, *self.spec.shape)  # (B, H, W, C), as the parent reads it
        q = jax.lax.stop_gradient(self.parent.encode(x))
        log_px = jax.lax.stop_gradient(self.parent.decode(q.z_q).log_prob(x))  # (B,)
        return q.codes, log_px, self.pixelcnn.log_prob(q.codes)

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """log p(x | z_q(x)) + log p_prior(z_q(x)), the same for all k: (B, k)."""
        _, log_px, log_pz = self._terms(batch)
        bound = log_px + log_pz
        return jnp.broadcast_to(bound[:, None], (bound.shape[0], k))

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array):
        """-log p_prior(codes of x) per image; metrics: the two-stage bound ("elbo"), its terms, and the
        prior's NLL against the uniform prior's h w log K."""
        codes, log_px, log_pz = self._terms(batch)
        nll = -log_pz
        uniform = self.latent_dim * math.log(self.pixelcnn.num_codes)
        metrics = {
            "loss": mean_of(nll),
            "prior_nll": mean_of(nll),  # the "kl" of the bound: -log p_prior(z_q)
            "recon": mean_of(-log_px),
            "elbo": mean_of(log_px + log_pz),
            "prior_bits_saved": mean_of((uniform - nll) / math.log(2)),  # against the uniform prior
            "perplexity": batch_perplexity(codes, self.pixelcnn.num_codes),
        }
        return jnp.mean(nll), metrics

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        return self.parent.reconstruct(x)

    def picture_data(self, splits, key: jax.Array) -> dict[str, PictureData]:
        """The parent's code usage and per-position entropy, and samples at temperature 0.7 next to
        samples.png (temperature 1)."""
        images = np.asarray(self.sample(64, rngs=nnx.Rngs(sample=key), temperature=0.7))
        return {**code_pictures(validation_codes(self, splits.val["x"]), self.pixelcnn.num_codes),
                "samples_t0.7.png": ImageGrid(images, 8, "64 samples from the prior, temperature 0.7 (decoder means)")}

    def sample_codes(self, n: int, key: jax.Array, temperature: float = 1.0, top_k: int | None = None) -> jax.Array:
        """n code grids (n, h, w) drawn ancestrally, compiled as one loop over positions."""
        top_k = self.model_cfg.top_k if top_k is None else top_k
        if not 0 <= top_k <= self.pixelcnn.num_codes:
            raise VaekitError(f"top_k must be in [0, {self.pixelcnn.num_codes}], got {top_k}")
        graphdef, state = nnx.split(self.pixelcnn)
        return _draw_codes(graphdef, state, key, jnp.asarray(temperature, jnp.float32), n, tuple(self.grid), int(top_k))

    def sample(self, n: int, *, rngs: nnx.Rngs, y: jax.Array | None = None, temperature: float = 1.0,
               top_k: int | None = None) -> jax.Array:
        """Decoder means of n code grids from the prior (logits / temperature, top-k: `model.top_k`)."""
        codes = self.sample_codes(n, rngs.sample(), temperature, top_k)
        return self.parent.decode_codes(codes).mean()


@functools.partial(jax.jit, static_argnums=(0, 4, 5, 6))
def _draw_codes(graphdef, state, key, temperature, n: int, grid: tuple, top_k: int) -> jax.Array:
    """Jitted ancestral sampling: compiled once per PixelCNN structure, n, grid and top_k (the
    temperature is an argument)."""
    return nnx.merge(graphdef, state).sample(key, n, grid, temperature, top_k)


__all__ = ["VQPrior", "VQPriorConfig"]
