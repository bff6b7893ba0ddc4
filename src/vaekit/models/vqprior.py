"""Stage 2 of the VQ-VAE recipe: a gated PixelCNN prior p(z) over the code grids of a frozen,
trained stage-1 run (`model.parent`, a `vqvae` run directory).

The parent is loaded read-only when the model is built (its "best" checkpoint): its parameters
sit in no optimizer group and its codebook statistics are never updated (only its pure
`encode` / `decode` are called). Its path and a SHA-256 of its config.yaml and best checkpoint
files are recorded in this run's config (`model.parent`, `model.parent_sha256`, filled in when
the config is built) and checked whenever the model is built again (training, resuming,
`load_run`): a parent changed since then is refused in one line.

    loss         = -log p_prior(z_q(x))                          (nats per image)
    log_weights  = log p(x | z_q(x)) + log p_prior(z_q(x))       the two-stage bound on log p(x)

Sampling draws codes ancestrally (one compiled loop over the positions, with temperature and
top-k) and decodes them with the parent's decoder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.config import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities, ImageGrid, ModelBase, ParamGroup, PictureData
from vaekit.models.vqvae import VQVAE, batch_perplexity, check_objective, code_pictures, validation_codes
from vaekit.nets.pixelcnn import GatedPixelCNN


def parent_checksum(run_dir: str | Path) -> str:
    """SHA-256 over a stage-1 run's config.yaml and every file of its best checkpoint (relative
    path and contents, in sorted order): what a prior trained on it depends on."""
    from vaekit.runs.layout import CHECKPOINT_DIR, CONFIG_FILE, check_run_dir

    run_dir = check_run_dir(run_dir)
    best = run_dir / CHECKPOINT_DIR / "best"
    files = sorted(p for p in best.rglob("*") if p.is_file()) if best.is_dir() else []
    if not files:
        raise VaekitError(f"model.parent '{run_dir}' has no best checkpoint yet (train it first)")
    digest = hashlib.sha256()
    for path in [run_dir / CONFIG_FILE, *files]:
        digest.update(str(path.relative_to(run_dir)).encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclasses.dataclass(frozen=True)
class VQPriorConfig(ModelConfig):
    kind: str = "vqprior"
    parent: str = ""  # the stage-1 vqvae run directory (required); recorded as an absolute path
    parent_sha256: str = ""  # checksum of the parent's config and best checkpoint; filled in from `parent` when empty
    prior_channels: int = 64  # channels of both PixelCNN stacks
    prior_layers: int = 6  # gated layers after the first (masked, type A) one
    prior_kernel: int = 3  # odd kernel side of the masked convolutions
    top_k: int = 0  # sampling: draw each code among the top_k most likely only (0: all K)

    def __post_init__(self):
        # The parent is fixed when the config is made (a preset, the --set overrides, a run's
        # config.yaml): the absolute path, and its checksum unless one is recorded already.
        if self.parent:
            path = Path(self.parent).expanduser().absolute()
            if not (path / "run.json").is_file():
                raise VaekitError(f"model.parent '{path}' is not a run directory (no run.json): give a trained "
                                  f"vqvae run")
            object.__setattr__(self, "parent", str(path))
            if not self.parent_sha256:
                object.__setattr__(self, "parent_sha256", parent_checksum(path))

    def check(self) -> None:
        if not self.parent:
            raise VaekitError("model.kind=vqprior needs model.parent=RUN: the directory of a trained vqvae run")
        if self.prior_channels <= 0 or self.prior_layers < 0:
            raise VaekitError("model.prior_channels must be positive and model.prior_layers >= 0")
        if self.prior_kernel < 1 or self.prior_kernel % 2 == 0:
            raise VaekitError(f"model.prior_kernel must be odd, got {self.prior_kernel}")
        if self.top_k < 0:
            raise VaekitError(f"model.top_k must be >= 0, got {self.top_k}")


def load_parent(cfg: VQPriorConfig, *, rngs: nnx.Rngs | None = None) -> VQVAE:
    """The parent vqvae model (eval mode) with its best checkpoint, after checking that it is a
    vqvae run and unchanged. With `rngs` inside a shape-only trace (`abstract_model`, which
    `load_run` restores into) only its structure is built: the weights come from the prior's own
    checkpoint, which holds the frozen parent too."""
    from vaekit.runs.layout import RUN_FILE, read_config, read_json
    from vaekit.runs.run import load_run

    cfg.check()
    parent_cfg = read_config(cfg.parent)
    if parent_cfg.model.kind != "vqvae":
        raise VaekitError(f"model.parent '{cfg.parent}' is a {parent_cfg.model.kind} run, not a vqvae run")
    digest = parent_checksum(cfg.parent)
    if digest != cfg.parent_sha256:
        raise VaekitError(f"model.parent '{cfg.parent}' changed since this prior was configured: its checksum is "
                          f"{digest[:12]}..., the run recorded {cfg.parent_sha256[:12]}... (retrain the prior)")
    if rngs is not None and isinstance(jnp.zeros(()), jax.core.Tracer):
        spec = DataSpec.from_run_info(read_json(Path(cfg.parent) / RUN_FILE))
        parent = VQVAE(parent_cfg.model, parent_cfg.objective, spec, rngs=rngs)
        parent.eval()
        return parent
    return load_run(cfg.parent, checkpoint="best").model


class VQPrior(ModelBase):
    """A PixelCNN prior over a frozen VQ-VAE's codes; the pair is the generative model."""

    kind = "vqprior"
    config_class = VQPriorConfig
    needs_parent_run = True  # built on a trained stage-1 run (`model.parent`)

    def __init__(self, model: VQPriorConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs):
        check_objective(self.kind, objective)
        self.model_cfg, self.spec = model, spec
        parent = load_parent(model, rngs=rngs)
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
        x = self.parent._as_data(batch["x"])
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


__all__ = ["VQPrior", "VQPriorConfig", "load_parent", "parent_checksum"]
