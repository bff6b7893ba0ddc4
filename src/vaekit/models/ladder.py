"""The ladder VAE (Sønderby et al. 2016): L stochastic layers with top-down inference.

    generative:  p(z_L) = N(0, I),  p(z_i|z_{i+1}) = N(mu_p,i, sigma_p,i^2),  p(x|z_1)
    bottom-up:   d_1 = MLP(x), d_i = MLP(d_{i-1});  (mu_hat_i, sigma_hat_i) = heads(d_i)
    inference:   q(z_L|x) = N(mu_hat_L, sigma_hat_L^2), and below the top, q(z_i|z_{i+1}, x) is the
                 precision-weighted product of the bottom-up Gaussian and the generative top-down
                 one p(z_i|z_{i+1}) at the posterior's own draw of z_{i+1}:
                 sigma_q^2 = 1 / (sigma_hat^-2 + sigma_p^-2),  mu_q = (mu_hat sigma_hat^-2 + mu_p sigma_p^-2) sigma_q^2

The top-down nets are the generative model's (shared between p and q, as in the paper), so the
posterior object keeps the bottom-up Gaussians and the prior module, and reruns the top-down pass
to score any code: `log_prob(z)` equals the density `sample_and_log_prob` returns with its draws.
The code is the concatenation [z_1, ..., z_L] (bottom to top); everything else is the VAE's
(`models.vae`): the KL term is the Monte Carlo estimate from the loss's draws, `log_weights` gives
the IWAE bounds and the NLL, and beta, annealing (the paper's KL warm-up is
`objective.beta_schedule=linear`), free bits and IWAE training apply unchanged.

Batch normalization (the paper's, on every hidden layer) uses batch statistics in train mode and
running averages in eval mode (`nets.dense`). The top-down nets run several times in one loss evaluation (the
posterior's draw, then the prior's score of the same draw), all with the same input; only the
posterior's draw updates their running averages, so each training step moves them once.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.config.schema import ModelConfig
from vaekit.core.distributions import (DiagonalGaussian, Posterior, posterior_scale, standard_normal_log_prob,
                                  standard_normal_log_prob_per_dim)
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import Capabilities
from vaekit.models.vae import VAE
from vaekit.nets.dense import DenseBlock


@dataclasses.dataclass(frozen=True)
class LadderConfig(ModelConfig):
    kind: str = "ladder"
    latent_dim: int = 4  # width of the top stochastic layer z_L
    lower_dims: tuple[int, ...] = (64, 32, 16, 8)  # widths of z_1 .. z_{L-1}, bottom to top (L - 1 entries; any depth)
    # width of the deterministic block at each stochastic layer, bottom to top (L entries, or one for all)
    hidden: tuple[int, ...] = (512, 256, 128, 64, 32)
    mlp_layers: int = 2  # dense layers per deterministic block (0: each Gaussian head reads the layer below linearly)
    batch_norm: bool = True  # batch normalization on every hidden layer (Sønderby et al.: needed for deep ladders)
    activation: str = "leaky_relu"

    @property
    def layer_dims(self) -> tuple[int, ...]:
        """Widths of z_1 .. z_L, bottom to top."""
        return (*self.lower_dims, self.latent_dim)

    def width(self, i: int) -> int:
        """Width of the deterministic block at stochastic layer i (0-based); 0 with mlp_layers = 0."""
        return 0 if self.mlp_layers == 0 else self.hidden[i] if len(self.hidden) > 1 else self.hidden[0]

    def check(self) -> None:
        if self.net != "mlp":
            raise VaekitError(f"model.kind=ladder builds its own MLP blocks; model.net must be mlp, got '{self.net}'")
        if any(d <= 0 for d in self.lower_dims):
            raise VaekitError(f"model.lower_dims sizes must be positive, got {list(self.lower_dims)}")
        if self.mlp_layers < 0:
            raise VaekitError(f"model.mlp_layers must be >= 0, got {self.mlp_layers}")
        if self.mlp_layers > 0 and len(self.hidden) not in (1, len(self.layer_dims)):
            raise VaekitError(f"model.hidden must give one width per stochastic layer ({len(self.layer_dims)}: "
                              f"model.lower_dims and the top layer model.latent_dim) or one for all, got "
                              f"{list(self.hidden)}")


def precision_weighted(a: DiagonalGaussian, b: DiagonalGaussian) -> DiagonalGaussian:
    """The normalized product of two diagonal Gaussians (parameters broadcast):
    sigma^2 = 1 / (sigma_a^-2 + sigma_b^-2), mu = (mu_a sigma_a^-2 + mu_b sigma_b^-2) sigma^2."""
    prec_a, prec_b = 1.0 / jnp.square(a.scale), 1.0 / jnp.square(b.scale)
    prec = prec_a + prec_b
    return DiagonalGaussian((a.mean * prec_a + b.mean * prec_b) / prec, jax.lax.rsqrt(prec))


def _gaussian(h: jax.Array, dim: int, kind: str) -> DiagonalGaussian:
    return DiagonalGaussian(h[..., :dim], posterior_scale(h[..., dim : 2 * dim], kind))


def split_layers(z: jax.Array, dims) -> list[jax.Array]:
    """[z_1, ..., z_L] from a code (..., sum(dims))."""
    bounds = [0, *itertools.accumulate(dims)]
    return [z[..., a:b] for a, b in zip(bounds[:-1], bounds[1:])]


# --------------------------------------------------------------------------- prior and posterior


class LadderPrior(nnx.Module):
    """p(z_L) prod_i p(z_i|z_{i+1}) over [z_1, ..., z_L]: the generative top-down pass, a module
    trained with the model (the posterior uses its conditionals too)."""

    def __init__(self, cfg: LadderConfig, *, rngs: nnx.Rngs):
        self.dims = cfg.layer_dims
        self.scale_kind = cfg.posterior_scale
        blocks, heads = [], []
        for i in range(len(self.dims) - 1):  # z_{i+1} -> z_i, through the width of layer i+1 (mirrors the bottom-up)
            block = DenseBlock(self.dims[i + 1], (cfg.width(i + 1),) * cfg.mlp_layers, cfg.activation, cfg.batch_norm,
                               rngs=rngs)
            blocks.append(block)
            heads.append(nnx.Linear(block.out_dim, 2 * self.dims[i], rngs=rngs))
        self.blocks, self.heads = nnx.List(blocks), nnx.List(heads)

    def conditional(self, i: int, z_above: jax.Array, update: bool = False) -> DiagonalGaussian:
        """p(z_i | z_{i+1}) (0-based i < L - 1) for z_{i+1} (..., d_{i+1})."""
        return _gaussian(self.heads[i](self.blocks[i](z_above, update)), self.dims[i], self.scale_kind)

    def layer_log_probs(self, z: jax.Array) -> list[jax.Array]:
        """[log p(z_1|z_2), ..., log p(z_{L-1}|z_L), log p(z_L)], each (...)."""
        zs = split_layers(z, self.dims)
        return [self.conditional(i, zs[i + 1]).log_prob(zs[i]) for i in range(len(zs) - 1)] + [
            standard_normal_log_prob(zs[-1])]

    def log_prob(self, z: jax.Array) -> jax.Array:
        return sum(self.layer_log_probs(z))

    def sample(self, key: jax.Array, shape: tuple[int, ...] = (), temperature: float = 1.0) -> jax.Array:
        """Ancestral draws (*shape, sum(dims)); `temperature` scales every layer's spread."""
        keys = jax.random.split(key, len(self.dims))
        zs = [temperature * jax.random.normal(keys[-1], (*shape, self.dims[-1]))]
        for i in reversed(range(len(self.dims) - 1)):
            p = self.conditional(i, zs[0])
            zs.insert(0, p.mean + temperature * p.scale * jax.random.normal(keys[i], p.mean.shape))
        return jnp.concatenate(zs, axis=-1)


class LadderPosterior(Posterior):
    """q(z_L|x) prod_i q(z_i|z_{i+1}, x) over [z_1, ..., z_L]: the bottom-up Gaussians `up` (each
    (N, d_i)) merged top-down with the prior's conditionals at the posterior's own draws."""

    def __init__(self, up: list[DiagonalGaussian], prior: LadderPrior):
        self.up, self.prior = up, prior

    def _top_down(self, pick, update: bool = False):
        """Walk from the top: pick(i, q_i) gives z_i from layer i's posterior. Returns the codes, the
        posteriors q_i and the prior conditionals p_i (None at the top), bottom to top."""
        n = len(self.up)
        zs, qs, ps = [None] * n, [None] * n, [None] * n
        qs[-1] = self.up[-1]
        zs[-1] = pick(n - 1, qs[-1])
        for i in reversed(range(n - 1)):
            ps[i] = self.prior.conditional(i, zs[i + 1], update)
            qs[i] = precision_weighted(self.up[i], ps[i])
            zs[i] = pick(i, qs[i])
        return zs, qs, ps

    @property
    def mean(self) -> jax.Array:
        """The code of the top-down pass through each layer's posterior mean: (N, sum(dims))."""
        zs, _, _ = self._top_down(lambda i, q: q.mean)
        return jnp.concatenate(zs, axis=-1)

    def sample_and_log_prob(self, key: jax.Array, sample_shape: tuple[int, ...] = ()):
        """Reparameterized draws (*sample_shape, N, sum(dims)) and log q(z|x) (*sample_shape, N)."""
        keys = jax.random.split(key, len(self.up))
        log_q = []

        def draw(i, q):
            # The top layer's parameters are (N, d); the lower ones already carry the sample axes.
            z, lq = q.sample_and_log_prob(keys[i], sample_shape if i == len(self.up) - 1 else ())
            log_q.append(lq)
            return z

        zs, _, _ = self._top_down(draw, update=True)  # the one pass that moves the top-down running averages
        return jnp.concatenate(zs, axis=-1), sum(log_q)

    def layer_log_probs(self, z: jax.Array, per_dim: bool = False) -> tuple[list[jax.Array], list[jax.Array]]:
        """([log q(z_i|z_{i+1}, x)], [log p(z_i|z_{i+1})]) for a code z (..., N, sum(dims)), bottom to top;
        each (..., N), or with `per_dim` each dimension's term (..., N, d_i) (the Gaussians are diagonal)."""
        given = split_layers(z, [q.mean.shape[-1] for q in self.up])
        zs, qs, ps = self._top_down(lambda i, q: given[i])
        log_q = [q.log_prob_per_dim(zi) for q, zi in zip(qs, zs)]
        log_p = [p.log_prob_per_dim(zi) for p, zi in zip(ps[:-1], zs[:-1])] + [standard_normal_log_prob_per_dim(zs[-1])]
        if per_dim:
            return log_q, log_p
        return [jnp.sum(a, axis=-1) for a in log_q], [jnp.sum(a, axis=-1) for a in log_p]

    def log_prob(self, z: jax.Array) -> jax.Array:
        return sum(self.layer_log_probs(z)[0])


# --------------------------------------------------------------------------- the model


class LadderVAE(VAE):
    """L stochastic layers, top-down inference; the VAE's estimators over the code [z_1, ..., z_L]."""

    kind = "ladder"
    config_class = LadderConfig
    user_nets = False  # its nets are the layers' own

    def __init__(self, model: LadderConfig, objective, spec, *, rngs: nnx.Rngs):
        params_per_entry = self._bind(model, objective, spec)
        self.dims = self.layer_dims = model.layer_dims
        self.latent_dim = sum(self.dims)  # the code is [z_1, ..., z_L]
        m, act, bn = model.mlp_layers, model.activation, model.batch_norm
        # Bottom-up: d_1 = block(x), d_i = block(d_{i-1}); a Gaussian head on each d_i.
        up_blocks, up_heads, d_in = [], [], math.prod(spec.shape)
        for i, d in enumerate(self.dims):
            block = DenseBlock(d_in, (model.width(i),) * m, act, bn, rngs=rngs)
            up_blocks.append(block)
            up_heads.append(nnx.Linear(block.out_dim, 2 * d, rngs=rngs))
            d_in = block.out_dim
        self.up_blocks, self.up_heads = nnx.List(up_blocks), nnx.List(up_heads)
        # p(x|z_1): a block of layer 1's width, then the likelihood's parameters.
        self.decoder = DenseBlock(self.dims[0], (model.width(0),) * m, act, bn, rngs=rngs)
        self.decoder_out = nnx.Linear(self.decoder.out_dim, math.prod(spec.shape) * params_per_entry, rngs=rngs)
        self.params_per_entry = params_per_entry
        self.prior = LadderPrior(model, rngs=rngs)
        self.capabilities = self.capabilities_for(model)

    @classmethod
    def capabilities_for(cls, model) -> Capabilities:
        return Capabilities()  # a Monte Carlo KL, per layer and per dimension (`layer_kls`)

    def layer_kls(self, q: LadderPosterior, z, log_qz) -> dict:
        """Monte Carlo KL of each layer and of each dimension from the loss's draws z (k, B, .):
        E[log q(z_i,d|z_{i+1}, x) - log p(z_i,d|z_{i+1})] (at the top, against N(0, 1)); both are
        diagonal given the layer above, so the dimensions sum to their layer's KL ("kl/z<i>") and
        the layers to the total."""
        log_q, log_p = q.layer_log_probs(z, per_dim=True)
        per_dim = [jnp.mean(lq - lp, axis=0) for lq, lp in zip(log_q, log_p)]  # each (B, d_i)
        out = {f"kl/z{i + 1}": mean_of(jnp.sum(kl, axis=-1)) for i, kl in enumerate(per_dim)}
        return out | {"kl_per_dim": mean_of(jnp.concatenate(per_dim, axis=-1))}

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> LadderPosterior:
        """The bottom-up pass: a posterior over [z_1, ..., z_L] with (N, sum(dims)) codes."""
        x = self._as_data(x)
        h = x.reshape(*x.shape[: x.ndim - self.spec.event_ndim], -1)
        up = []
        for block, head, d in zip(self.up_blocks, self.up_heads, self.dims):
            h = block(h)
            up.append(_gaussian(head(h), d, self.model_cfg.posterior_scale))
        return LadderPosterior(up, self.prior)

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """p(x|z_1) for codes [z_1, ..., z_L] (..., sum(dims)) (the upper layers act through the prior)."""
        raw = self.decoder_out(self.decoder(z[..., : self.dims[0]]))
        raw = raw.reshape(*z.shape[:-1], *self.spec.shape, self.params_per_entry)
        return self._likelihood(raw, self.model_cfg, self.spec.event_ndim)
