"""A VAE whose reconstruction term is an image loss, not a likelihood: for sharper images.

    loss = recon_weight * (H W C) * R(x, x_hat) + beta * KL(q(z|x) || p(z))

x_hat is the decoder's output (a sigmoid, in [0, 1]) at one posterior draw; R is a per-pixel-scale
image loss chosen by `model.recon_loss` (`vaekit.core.image_losses`):

    "l1"          mean |x - x_hat|  (recon_weight 10: a Laplace likelihood of scale 0.1, constants dropped)
    "ssim"        1 - SSIM
    "msssim"      1 - MS-SSIM (Wang et al. 2003)
    "msssim_l1"   0.84 (1 - MS-SSIM) + 0.16 L1 (Zhao et al. 2017)
    "perceptual"  the summed mean squared differences of a frozen feature net's activations of x and
                  x_hat (every conv block and the penultimate features; `nets.features`)

Scaling R by the number of pixels keeps its weight against the KL independent of the image size.
The KL term, beta and its schedules are the VAE's. Without a likelihood there is no NLL and no
ELBO: `capabilities.likelihood_bound` is False, so `vaekit evaluate` says so in one line; the
best checkpoint is the lowest validation loss.

The perceptual loss's feature net is part of the model (saved in its checkpoints) but in no
parameter group: `param_groups` leaves it out, so no optimizer changes it.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from vaekit.core import image_losses

from vaekit.core import objectives
from vaekit.config.schema import ModelConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities, ParamGroup
from vaekit.models.vae import VAE
from vaekit.core.priors import kl_divergence

RECON_LOSSES = ("l1", "ssim", "msssim", "msssim_l1", "perceptual")


@dataclasses.dataclass(frozen=True)
class SharpConfig(ModelConfig):
    kind: str = "sharp"
    recon_loss: str = "l1"  # l1, ssim, msssim, msssim_l1 (Zhao et al. 2017), perceptual (a frozen feature net)
    recon_weight: float = 10.0  # weight of the reconstruction loss per pixel (times H*W*C) against the KL
    msssim_scales: int = 5  # MS-SSIM scales (Wang et al.: 5; fewer: the first weights renormalized)
    ssim_window: int = 11  # side of the Gaussian SSIM window (odd)
    ssim_sigma: float = 1.5  # standard deviation of the SSIM window
    msssim_alpha: float = 0.84  # msssim_l1: weight of 1 - MS-SSIM against L1 (Zhao et al.: 0.84)
    features: str | None = None  # perceptual: a feature net .npz (vaekit.nets.features); None: vaekit's MNIST net

    def check(self) -> None:
        if self.recon_loss not in RECON_LOSSES:
            raise VaekitError(f"model.recon_loss must be one of {', '.join(RECON_LOSSES)}; got '{self.recon_loss}'")
        if self.recon_weight <= 0:
            raise VaekitError(f"model.recon_weight must be positive, got {self.recon_weight}")
        if not 1 <= self.msssim_scales <= 5:
            raise VaekitError(f"model.msssim_scales must be in 1..5, got {self.msssim_scales}")
        if self.ssim_window < 3 or self.ssim_window % 2 == 0:
            raise VaekitError(f"model.ssim_window must be odd and >= 3, got {self.ssim_window}")
        if self.ssim_sigma <= 0:
            raise VaekitError(f"model.ssim_sigma must be positive, got {self.ssim_sigma}")
        if not 0 <= self.msssim_alpha <= 1:
            raise VaekitError(f"model.msssim_alpha must be in [0, 1], got {self.msssim_alpha}")
        if self.features is not None and self.recon_loss != "perceptual":
            raise VaekitError(f"model.features is the perceptual loss's feature net; model.recon_loss={self.recon_loss} "
                              f"does not use it (set model.recon_loss=perceptual, or drop model.features)")
        if self.likelihood != "bernoulli":
            raise VaekitError("model.kind=sharp has no likelihood: its decoder outputs sigmoid images scored by "
                              "model.recon_loss; leave model.likelihood at bernoulli")


@struct.dataclass
class ImageOutput:
    """The decoder's output of a model without a likelihood: images in [0, 1] and no density."""

    logits: jax.Array  # (..., H, W, C)

    def mean(self) -> jax.Array:
        return jax.nn.sigmoid(self.logits)

    def sample(self, key: jax.Array) -> jax.Array:
        return self.mean()

    def log_prob(self, x: jax.Array) -> jax.Array:
        raise VaekitError("this model's decoder has no likelihood (its reconstruction term is an image loss)")


class FrozenFeatures(nnx.Module):
    """A feature net held by a model and trained by no optimizer (see `SharpVAE.param_groups`)."""

    def __init__(self, path: str | None, shape):
        from vaekit.nets import features

        if path is None:
            if tuple(shape) != (28, 28, 1):
                raise VaekitError(f"the perceptual loss uses vaekit's MNIST feature net, which takes 28x28x1 images; "
                                  f"these are {'x'.join(map(str, shape))}: set model.features=NET.npz")
            self.net = features.load_shipped("mnist")
        else:
            self.net = features.load(path)
        if self.net.input_shape != tuple(shape):
            raise VaekitError(f"model.features takes {self.net.input_shape} images; the data's are {tuple(shape)}")

    def __call__(self, x: jax.Array) -> list[jax.Array]:
        return self.net.activations(x)


def frozen_out(groups: dict[str, ParamGroup], name: str = "frozen") -> dict[str, ParamGroup]:
    """`groups` with every parameter under the attribute `name` left out of each group's filter."""
    return {g: dataclasses.replace(p, filter=nnx.All(p.filter, nnx.Not(nnx.PathContains(name))))
            for g, p in groups.items()}


class ImageLossVAE(VAE):
    """What a Gaussian-latent VAE trained without a likelihood shares: image data, objective.kind
    elbo (its KL term), a sigmoid decoder (`ImageOutput`), no `log_weights`. Subclasses write `loss`."""

    def __init__(self, model, objective, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        if spec.kind != "images":
            raise VaekitError(f"model.kind '{self.kind}' needs image data; this data is {spec.kind}")
        if objective.kind != "elbo":
            raise VaekitError(f"objective.kind={objective.kind} needs a likelihood; model.kind '{self.kind}' has none "
                              f"(use objective.kind=elbo: its KL term and beta apply)")
        super().__init__(model, objective, spec, rngs=rngs, **nets)

    @classmethod
    def capabilities_for(cls, model) -> Capabilities:
        return Capabilities(likelihood_bound=False, best_metric="loss", best_mode="min", data_kinds=("images",))

    def decode(self, z: jax.Array, y: jax.Array | None = None) -> ImageOutput:
        """Decoder images for latents (..., D): an `ImageOutput` whose mean() is (..., H, W, C) in [0, 1]."""
        return ImageOutput(self.decoder(z, self.condition(y))[..., 0])

    def _reconstruct_with_kl(self, batch: dict, rngs: nnx.Rngs, step: jax.Array):
        """One posterior draw per image and its decoder image: (x, y, x_hat (B, H, W, C), the KL
        term under the objective's beta / free bits / capacity, metrics "kl", "mse", "kl_per_dim"
        and the schedule's)."""
        x, y = self._as_data(batch["x"]), batch.get("y")
        q = self.encode(x, y)
        z, log_qz = q.sample_and_log_prob(rngs.sample())
        x_hat = self.decode(z, y).mean()
        kl = kl_divergence(q, self.prior, z[None], log_qz[None])
        penalty, info = objectives.kl_term(kl, step, self.objective, latent_dim=self.latent_dim)
        metrics = {"kl": mean_of(kl.total), "mse": mean_of(jnp.mean((x - x_hat) ** 2, axis=(1, 2, 3))), **info}
        if kl.per_dim is not None:
            metrics["kl_per_dim"] = mean_of(kl.per_dim)
        return x, y, x_hat, penalty, metrics

    def log_weights(self, batch, k, *, rngs):
        raise VaekitError(f"model.kind '{self.kind}' has no likelihood bound (its reconstruction term is not a "
                          f"likelihood)")


class SharpVAE(ImageLossVAE):
    """A Gaussian-latent VAE trained with an image loss (module docstring)."""

    kind = "sharp"
    config_class = SharpConfig

    def __init__(self, model: SharpConfig, objective, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        super().__init__(model, objective, spec, rngs=rngs, **nets)
        loss = model.recon_loss
        if loss in ("msssim", "msssim_l1"):
            image_losses.check_size(spec.shape, model.msssim_scales, model.ssim_window,
                                    f"model.recon_loss={loss}")
        elif loss == "ssim":
            image_losses.check_size(spec.shape, 1, model.ssim_window, "model.recon_loss=ssim")
        self.frozen = FrozenFeatures(model.features, spec.shape) if loss == "perceptual" else None

    def param_groups(self) -> dict[str, ParamGroup]:
        return frozen_out({"model": ParamGroup(nnx.Param)})

    def recon_loss(self, x: jax.Array, x_hat: jax.Array) -> jax.Array:
        """The per-image reconstruction term R(x, x_hat) (B,), before the weight."""
        m = self.model_cfg
        kw = dict(scales=m.msssim_scales, window=m.ssim_window, sigma=m.ssim_sigma)
        if m.recon_loss == "l1":
            return image_losses.l1(x, x_hat)
        if m.recon_loss == "ssim":
            return 1.0 - image_losses.ssim(x, x_hat, window=m.ssim_window, sigma=m.ssim_sigma)
        if m.recon_loss == "msssim":
            return 1.0 - image_losses.ms_ssim(x, x_hat, **kw)
        if m.recon_loss == "msssim_l1":
            return image_losses.msssim_l1(x, x_hat, alpha=m.msssim_alpha, **kw)
        return image_losses.perceptual(self.frozen(x), self.frozen(x_hat))

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """recon_weight * H*W*C * R(x, x_hat) + the KL term (beta, schedules, free bits, capacity)."""
        x, _, x_hat, penalty, metrics = self._reconstruct_with_kl(batch, rngs, step)
        recon = self.model_cfg.recon_weight * math.prod(self.spec.shape) * self.recon_loss(x, x_hat)  # (B,)
        loss = jnp.mean(recon) + penalty
        return loss, {"loss": mean_of(jnp.broadcast_to(loss, recon.shape)), "recon": mean_of(recon), **metrics}


__all__ = ["RECON_LOSSES", "FrozenFeatures", "ImageLossVAE", "ImageOutput", "SharpConfig", "SharpVAE", "frozen_out"]
