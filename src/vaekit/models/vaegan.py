"""VAE-GAN (Larsen et al. 2016): a VAE whose reconstruction is judged in a discriminator's
feature space, and whose decoder is also trained adversarially.

    encoder        q(z|x), a diagonal Gaussian; decoder x~ = Dec(z) in [0, 1] (sigmoid)
    discriminator  Dis(x): 4x4 stride-2 conv + LeakyReLU(0.2) blocks, then a linear logit;
                   Dis_l(x) = the last conv block's activations (the learned similarity space)

    L_prior = KL(q(z|x) || N(0, I))                                 (beta, schedules: the VAE's)
    L_llike = 0.5 * sum (Dis_l(x) - Dis_l(x~))^2                    (-log N(Dis_l(x); Dis_l(x~), I) + const)
    L_GAN   = BCE(Dis(x), real) + BCE(Dis(x~), fake) + BCE(Dis(Dec(z_p)), fake),   z_p ~ N(0, I)

Three parameter groups, each following the gradient of its own loss, in one step:

    encoder        L_prior + L_llike
    decoder        gamma * L_llike + L_gen,  L_gen = -log Dis(x~) - log Dis(Dec(z_p))   (non-saturating)
    discriminator  L_GAN (+ R1)              own learning rate: model.disc_learning_rate

Stabilizers (`model.stabilizer`): "smoothing" (one-sided label smoothing: real targets
1 - label_smoothing; Salimans et al. 2016), "r1" (r1_weight / 2 * E ||grad_x Dis(x)||^2 on real
data; Mescheder et al. 2018), or "none". The loss is not a likelihood bound
(`capabilities.likelihood_bound` False); the best checkpoint has the lowest validation pixel MSE
of reconstructions.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config.schema import ModelConfig
from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities, ParamGroup
from vaekit.models.sharp import ImageLossVAE
from vaekit.nets.cpu_conv import conv

STABILIZERS = ("smoothing", "r1", "none")


@dataclasses.dataclass(frozen=True)
class VAEGANConfig(ModelConfig):
    kind: str = "vaegan"
    disc_channels: tuple[int, ...] = (32, 64)  # discriminator: channels of its 4x4 stride-2 conv blocks
    gamma: float = 0.1  # decoder: weight of the feature-space reconstruction against the adversarial loss (docs/models.md)
    disc_learning_rate: float | None = None  # the discriminator's learning rate (None: train.learning_rate)
    stabilizer: str = "smoothing"  # smoothing (one-sided label smoothing), r1 (gradient penalty on real data), none
    label_smoothing: float = 0.1  # smoothing: real targets are 1 - label_smoothing
    r1_weight: float = 10.0  # r1: weight gamma_R1 of (gamma_R1 / 2) E ||grad_x Dis(x)||^2

    def check(self) -> None:
        if not self.disc_channels or any(c <= 0 for c in self.disc_channels):
            raise VaekitError(f"model.disc_channels must be a non-empty list of positive ints, got {list(self.disc_channels)}")
        if self.gamma < 0:
            raise VaekitError(f"model.gamma must be >= 0, got {self.gamma}")
        if self.disc_learning_rate is not None and self.disc_learning_rate <= 0:
            raise VaekitError(f"model.disc_learning_rate must be positive, got {self.disc_learning_rate}")
        if self.stabilizer not in STABILIZERS:
            raise VaekitError(f"model.stabilizer must be one of {', '.join(STABILIZERS)}; got '{self.stabilizer}'")
        if not 0 <= self.label_smoothing < 1:
            raise VaekitError(f"model.label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.r1_weight < 0:
            raise VaekitError(f"model.r1_weight must be >= 0, got {self.r1_weight}")
        if self.likelihood != "bernoulli":
            raise VaekitError("model.kind=vaegan has a sigmoid decoder judged by its discriminator: leave "
                              "model.likelihood at bernoulli")


class Discriminator(nnx.Module):
    """(N, H, W, C) -> (features (N, h, w, c_last), logit (N,))."""

    def __init__(self, image_shape, channels, *, rngs: nnx.Rngs):
        h, w, c = image_shape
        f = 2 ** len(channels)
        if h % f or w % f:
            raise VaekitError(f"a discriminator with {len(channels)} stride-2 layers needs image sides divisible by "
                              f"{f}; got {h}x{w} (set model.disc_channels to fewer layers)")
        ins = (c, *channels[:-1])
        self.convs = nnx.List([nnx.Conv(i, o, (4, 4), strides=2, padding="SAME", rngs=rngs)
                               for i, o in zip(ins, channels)])
        self.head = nnx.Linear((h // f) * (w // f) * channels[-1], 1, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = x
        for layer in self.convs:
            h = jax.nn.leaky_relu(conv(layer, h), 0.2)
        return h, self.head(h.reshape(h.shape[0], -1))[:, 0]


def _bce(logits: jax.Array, target: float) -> jax.Array:
    """Binary cross-entropy of logits against a constant target in [0, 1], per example."""
    return -(target * jax.nn.log_sigmoid(logits) + (1.0 - target) * jax.nn.log_sigmoid(-logits))


class VAEGAN(ImageLossVAE):
    """Larsen et al.'s VAE/GAN (module docstring)."""

    kind = "vaegan"
    config_class = VAEGANConfig

    def __init__(self, model: VAEGANConfig, objective, spec: DataSpec, *, rngs: nnx.Rngs, **nets):
        super().__init__(model, objective, spec, rngs=rngs, **nets)
        self.discriminator = Discriminator(spec.shape, model.disc_channels, rngs=rngs)

    @classmethod
    def capabilities_for(cls, model) -> Capabilities:
        return Capabilities(likelihood_bound=False, best_metric="mse", best_mode="min", data_kinds=("images",))

    def param_groups(self) -> dict[str, ParamGroup]:
        def under(name):
            return nnx.All(nnx.Param, nnx.PathContains(name))

        return {"encoder": ParamGroup(under("encoder")),
                "decoder": ParamGroup(under("decoder")),
                "discriminator": ParamGroup(under("discriminator"), self.model_cfg.disc_learning_rate)}

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[dict, dict]:
        """{"encoder", "decoder", "discriminator"} losses (batch means) and metrics (module docstring)."""
        m = self.model_cfg
        x, y, x_rec, penalty, kl_metrics = self._reconstruct_with_kl(batch, rngs, step)  # x_rec (B, H, W, C)
        b = x.shape[0]
        x_gen = self.decode(self.prior.sample(rngs.sample(), (b,)), y).mean()

        # One discriminator pass over real, reconstructed and generated images.
        feats, logits = self.discriminator(jnp.concatenate([x, x_rec, x_gen]))
        f_real, f_rec = feats[:b], feats[b : 2 * b]
        l_real, l_rec, l_gen = logits[:b], logits[b : 2 * b], logits[2 * b :]
        llike = 0.5 * jnp.sum((f_real - f_rec) ** 2, axis=(1, 2, 3))  # (B,)
        gen = _bce(l_rec, 1.0) + _bce(l_gen, 1.0)  # non-saturating: -log D(x~) - log D(x_p)

        # The discriminator's own loss, from the same pass: the trainer differentiates each group's
        # loss with respect to that group's parameters only, so this loss never moves the decoder.
        real_target = 1.0 - m.label_smoothing if m.stabilizer == "smoothing" else 1.0
        l_fake = logits[b:]
        disc = _bce(l_real, real_target) + _bce(l_rec, 0.0) + _bce(l_gen, 0.0)  # (B,)
        if m.stabilizer == "r1":
            grad_x = jax.grad(lambda xr: jnp.sum(self.discriminator(xr)[1]))(x)
            disc = disc + 0.5 * m.r1_weight * jnp.sum(grad_x**2, axis=(1, 2, 3))

        losses = {"encoder": penalty + jnp.mean(llike), "decoder": m.gamma * jnp.mean(llike) + jnp.mean(gen),
                  "discriminator": jnp.mean(disc)}
        total = losses["encoder"] + losses["decoder"] + losses["discriminator"]
        metrics = {
            "loss": mean_of(jnp.broadcast_to(total, (b,))),
            "recon": mean_of(llike),
            "loss/decoder": mean_of(jnp.broadcast_to(losses["decoder"], (b,))),
            "loss/discriminator": mean_of(disc),
            "d_real": mean_of(jax.nn.sigmoid(l_real)),  # the discriminator's mean belief that real data is real
            "d_fake": mean_of(jax.nn.sigmoid(l_fake)),
            **kl_metrics,
        }
        return losses, metrics


__all__ = ["Discriminator", "STABILIZERS", "VAEGAN", "VAEGANConfig"]
