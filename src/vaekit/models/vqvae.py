"""VQ-VAE (van den Oord et al. 2017): a conv encoder to a grid of vectors z_e (N, h, w, D), each
replaced by its nearest codebook vector e_k (K of them), and a conv decoder p(x|z_q).

    loss = -log p(x | z_q) + ||sg[z_e] - e||^2 (codebook = "loss") + beta ||z_e - sg[e]||^2

The decoder's gradient reaches the encoder straight through the quantizer (z_e + sg[z_q - z_e]).
With `model.codebook=ema` the codebook is not trained by gradient: it follows exponential moving
averages of the assignment counts N_k and of the sums m_k of the encoder outputs assigned to it,

    N_k <- g N_k + (1 - g) n_k,   m_k <- g m_k + (1 - g) sum_{i: k_i = k} z_e,i,
    e_k = m_k / N~_k,   N~_k = (N_k + eps) / (sum_j N_j + K eps) * sum_j N_j   (Laplace smoothing).

Those statistics are `CodebookStat` variables (not `nnx.Param`): updated inside `loss` in train
mode, carried through the train step with the model's other non-gradient state and saved in its
checkpoints. A code whose usage average N_k falls below `model.restart_threshold` (assignments per
batch) is restarted at a random encoder output of the current batch (the "noise" RNG stream).

Likelihood bound: the posterior is a point mass at the nearest codes and the prior is uniform over
the K^(h w) code grids, so log p(x) >= log p(x | z_q(x)) - h w log K, computed exactly (no draws:
`Capabilities.log_weights="bound"`). A learned prior over the codes (`models.vqprior`) tightens its second term.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from vaekit.config.schema import ModelConfig, ObjectiveConfig, changed_objective
from vaekit.data.spec import DataSpec
from vaekit.core.distributions import LIKELIHOODS, Posterior
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import (DEFAULT_GROUPS, Bars, Capabilities, Heatmap, ModelBase, ParamGroup, PictureData,
                                apply_batched)
from vaekit.nets.cpu_conv import conv, conv_transpose

log = logging.getLogger("vaekit")

CODEBOOK_UPDATES = ("ema", "loss")


@dataclasses.dataclass(frozen=True)
class VQVAEConfig(ModelConfig):
    kind: str = "vqvae"
    codebook_size: int = 512  # K: number of code vectors
    code_dim: int = 64  # D: size of each code vector
    stages: int = 2  # 4x4 stride-2 conv stages: the code grid is (H / 2^stages) x (W / 2^stages)
    channels: int = 32  # width of the encoder's and decoder's conv layers
    res_blocks: int = 2  # residual blocks (ReLU, 3x3 conv, ReLU, 1x1 conv) at the grid's resolution, each net
    commitment: float = 0.25  # beta: weight of the commitment term ||z_e - sg[e]||^2
    codebook: str = "ema"  # codebook update: "ema" (moving averages) or "loss" (gradient of ||sg[z_e] - e||^2)
    ema_decay: float = 0.99  # g: decay of the EMA codebook statistics
    ema_epsilon: float = 1e-5  # Laplace smoothing of the EMA cluster sizes
    restart_threshold: float = 0.01  # restart a code used less than this per batch on average (0: never)

    def check(self) -> None:
        if self.codebook_size < 2:
            raise VaekitError(f"model.codebook_size must be >= 2 (one code carries no information), got "
                              f"{self.codebook_size}")
        for key, value in (("code_dim", self.code_dim), ("stages", self.stages), ("channels", self.channels)):
            if value <= 0:
                raise VaekitError(f"model.{key} must be positive, got {value}")
        if self.res_blocks < 0:
            raise VaekitError(f"model.res_blocks must be >= 0, got {self.res_blocks}")
        if self.codebook not in CODEBOOK_UPDATES:
            raise VaekitError(f"model.codebook must be one of {', '.join(CODEBOOK_UPDATES)}; got '{self.codebook}'")
        if not 0 < self.ema_decay < 1:
            raise VaekitError(f"model.ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.ema_epsilon <= 0 or self.commitment < 0 or self.restart_threshold < 0:
            raise VaekitError("model.ema_epsilon must be positive, model.commitment and model.restart_threshold >= 0")


def code_grid(image_shape, stages: int) -> tuple[int, int]:
    """(h, w) of the code grid for images (H, W, C) after `stages` halvings; one line if it does not divide."""
    h, w = image_shape[0], image_shape[1]
    f = 2**stages
    if h % f or w % f:
        raise VaekitError(f"model.stages={stages} halves the image side {stages} times: the sides must be divisible "
                          f"by {f}, got {h}x{w} (set model.stages lower)")
    return h // f, w // f


def check_objective(kind: str, objective: ObjectiveConfig) -> None:
    """The VQ kinds have no KL term to weight and no posterior draws to importance-weight: refuse
    objective options that would otherwise be ignored."""
    changed = changed_objective(objective)
    if changed:
        raise VaekitError(f"model.kind '{kind}' has no KL term or posterior draws: {changed} cannot apply (leave "
                          f"the objective section at its defaults)")


# --------------------------------------------------------------------------- nets


class ResBlock(nnx.Module):
    """x + 1x1conv(relu(3x3conv(relu(x)))), at constant resolution."""

    def __init__(self, channels: int, hidden: int, *, rngs: nnx.Rngs):
        self.conv3 = nnx.Conv(channels, hidden, (3, 3), padding="SAME", rngs=rngs)
        self.conv1 = nnx.Conv(hidden, channels, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv1(jax.nn.relu(self.conv3(jax.nn.relu(x))))


class GridEncoder(nnx.Module):
    """Images (N, H, W, C) -> z_e (N, h, w, D): stride-2 4x4 convs, a 3x3 conv, residual blocks, a 1x1 conv."""

    def __init__(self, in_channels: int, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        c = cfg.channels
        ins = (in_channels,) + (c,) * (cfg.stages - 1)
        self.down = nnx.List([nnx.Conv(i, c, (4, 4), strides=2, padding="SAME", rngs=rngs) for i in ins])
        self.mid = nnx.Conv(c, c, (3, 3), padding="SAME", rngs=rngs)
        self.blocks = nnx.List([ResBlock(c, max(1, c // 2), rngs=rngs) for _ in range(cfg.res_blocks)])
        self.out = nnx.Conv(c, cfg.code_dim, (1, 1), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.down:
            x = jax.nn.relu(conv(layer, x))
        x = self.mid(x)
        for block in self.blocks:
            x = block(x)
        return self.out(jax.nn.relu(x))


class GridDecoder(nnx.Module):
    """z_q (N, h, w, D) -> raw likelihood parameters (N, H, W, C, P): the encoder mirrored."""

    def __init__(self, image_shape, params_per_channel: int, cfg: VQVAEConfig, *, rngs: nnx.Rngs):
        c = cfg.channels
        self.image_shape, self.p = tuple(image_shape), params_per_channel
        self.inp = nnx.Conv(cfg.code_dim, c, (3, 3), padding="SAME", rngs=rngs)
        self.blocks = nnx.List([ResBlock(c, max(1, c // 2), rngs=rngs) for _ in range(cfg.res_blocks)])
        outs = (c,) * (cfg.stages - 1) + (image_shape[-1] * params_per_channel,)
        self.up = nnx.List([nnx.ConvTranspose(c, o, (4, 4), strides=2, padding="SAME", rngs=rngs) for o in outs])

    def __call__(self, z: jax.Array) -> jax.Array:
        lead = z.shape[:-3]
        h = self.inp(z.reshape(-1, *z.shape[-3:]))
        for block in self.blocks:
            h = block(h)
        h = jax.nn.relu(h)
        for i, layer in enumerate(self.up):
            h = conv_transpose(layer, h)
            if i < len(self.up) - 1:
                h = jax.nn.relu(h)
        return h.reshape(*lead, *self.image_shape, self.p)


# --------------------------------------------------------------------------- codebook


class CodebookStat(nnx.Variable):
    """Non-gradient codebook state (EMA statistics, usage, restart count, an EMA codebook itself):
    in no optimizer group, carried through the train step as the model's other state, checkpointed."""


@struct.dataclass
class Quantized(Posterior):
    """The quantizer's output for encoder outputs z_e (..., D)."""

    codes: jax.Array  # (...) int32 code indices
    z_q: jax.Array  # (..., D) the chosen code vectors (no gradient path to the encoder)
    z_e: jax.Array  # (..., D) the encoder outputs

    @property
    def mean(self) -> jax.Array:
        """The posterior is a point mass at z_q."""
        return self.z_q

    @property
    def straight_through(self) -> jax.Array:
        """z_q in value, with the identity as its gradient to z_e: z_e + sg[z_q - z_e]."""
        return self.z_e + jax.lax.stop_gradient(self.z_q - self.z_e)


def batch_perplexity(codes: jax.Array, k: int) -> jax.Array:
    """exp(entropy) of the code frequencies in `codes` (any shape): K when uniform, 1 when one code."""
    return _perplexity(jnp.bincount(codes.reshape(-1), length=k))


def _perplexity(counts: jax.Array) -> jax.Array:
    """exp(entropy) of the frequencies `counts` (K,)."""
    p = counts / jnp.sum(counts)
    return jnp.exp(-jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)))


class Codebook(nnx.Module):
    """K code vectors of size D, nearest-neighbour quantization, EMA or gradient updates, restarts."""

    def __init__(self, k: int, d: int, *, ema: bool, decay: float, epsilon: float, threshold: float, rngs: nnx.Rngs):
        self.k, self.d, self.ema = k, d, ema
        self.decay, self.epsilon, self.threshold = decay, epsilon, threshold
        bound = math.sqrt(3.0 / d)  # unit-variance vectors, on the encoder's initial scale
        init = jax.random.uniform(rngs.params(), (k, d), minval=-bound, maxval=bound)
        # With restarts, the usage averages start at zero: the first training step restarts every
        # code that no input chose at an encoder output of the batch (a data-dependent start, so
        # the codebook does not begin with a handful of codes near the encoder's outputs); a
        # restarted code then gets N_k = 1, and counts as dead again after about
        # log(threshold) / log(decay) steps without an assignment (458 at the defaults). Without
        # restarts, N_k = 1 and m_k = e_k: the initial codes stay where they are until used.
        start = 0.0 if threshold > 0 else 1.0
        self.cluster_size = CodebookStat(jnp.full((k,), start))  # N_k: moving average of assignments per batch
        if ema:
            self.embedding = CodebookStat(init)  # e_k = m_k / N~_k
            self.embed_sum = CodebookStat(start * init)  # m_k: moving average of the assigned encoder outputs' sum
        else:
            self.embedding = nnx.Param(init)
            # A restart moves a code that the optimizer owns: the move is kept here, the code is
            # embedding + shift, and the gradient still reaches `embedding`.
            self.shift = CodebookStat(jnp.zeros((k, d)))
        self.restarts = CodebookStat(jnp.zeros((), jnp.int32))  # codes restarted so far
        self.deterministic = False  # train()/eval() set this: statistics update in train mode only

    def vectors(self) -> jax.Array:
        """The codebook (K, D)."""
        e = self.embedding[...]
        return e if self.ema else e + self.shift[...]

    def quantize(self, z_e: jax.Array) -> Quantized:
        """Nearest code (Euclidean) for each vector of z_e (..., D). Pure: no state changes."""
        e = self.vectors()
        flat = z_e.reshape(-1, self.d)
        dist = jnp.sum(flat**2, 1, keepdims=True) - 2.0 * flat @ e.T + jnp.sum(e**2, 1)[None]  # (N, K)
        codes = jnp.argmin(dist, axis=1).astype(jnp.int32)
        return Quantized(codes.reshape(z_e.shape[:-1]), jnp.take(e, codes, axis=0).reshape(z_e.shape), z_e)

    def lookup(self, codes: jax.Array) -> jax.Array:
        """Code vectors (..., D) for indices (...)."""
        return jnp.take(self.vectors(), codes, axis=0)

    def update(self, q: Quantized, key: jax.Array) -> jax.Array:
        """One step of the codebook statistics from a training batch's quantization; restarts dead
        codes at random encoder outputs of the batch. Returns the number restarted (int32)."""
        z = jax.lax.stop_gradient(q.z_e).reshape(-1, self.d)  # (N, D)
        codes = q.codes.reshape(-1)
        g = self.decay
        size = g * self.cluster_size[...] + (1 - g) * jnp.bincount(codes, length=self.k)  # (K,)
        dead = size < self.threshold  # (K,); never with threshold 0
        new = z[jax.random.randint(key, (self.k,), 0, z.shape[0])]  # (K, D): a random batch output per code
        if self.ema:
            embed_sum = g * self.embed_sum[...] + (1 - g) * jax.ops.segment_sum(z, codes, self.k)  # (K, D)
            n = jnp.sum(size)
            smoothed = (size + self.epsilon) / (n + self.k * self.epsilon) * n
            embedding = embed_sum / smoothed[:, None]
            self.embedding[...] = jnp.where(dead[:, None], new, embedding)
            self.embed_sum[...] = jnp.where(dead[:, None], new, embed_sum)  # with N_k = 1 below: e_k = new
        else:
            param = jax.lax.stop_gradient(self.embedding[...])
            self.shift[...] = jnp.where(dead[:, None], new - param, self.shift[...])
        self.cluster_size[...] = jnp.where(dead, 1.0, size)
        restarted = jnp.sum(dead).astype(jnp.int32)
        self.restarts[...] = self.restarts[...] + restarted
        return restarted


# --------------------------------------------------------------------------- the posterior and prior objects


@struct.dataclass
class UniformCodes:
    """The uniform prior over code grids (h, w) of K codes: log p(codes) = -h w log K."""

    k: int = struct.field(pytree_node=False)
    grid: tuple[int, int] = struct.field(pytree_node=False)

    def log_prob(self, codes: jax.Array) -> jax.Array:
        """(..., h, w) int codes -> (...)."""
        return jnp.full(codes.shape[:-2], -self.grid[0] * self.grid[1] * math.log(self.k))

    def sample(self, key: jax.Array, shape: tuple[int, ...] = (), temperature: float = 1.0) -> jax.Array:
        """Uniform codes (*shape, h, w); the temperature of a uniform distribution changes nothing."""
        return jax.random.randint(key, (*shape, *self.grid), 0, self.k)


# --------------------------------------------------------------------------- code statistics and pictures


def code_statistics(codes: np.ndarray, k: int) -> dict:
    """Usage of codes (N, h, w): counts per code (K,), perplexity, codes in use, and the entropy of
    the code at each grid position over the N examples (h, w), in nats."""
    codes = np.asarray(codes)
    positions = codes.reshape(len(codes), -1)  # (N, h w)
    at = np.arange(positions.shape[1]) * k  # code c at position j counts in bin j K + c
    per_position = np.bincount((positions + at).ravel(), minlength=k * len(at)).reshape(len(at), k)  # (h w, K)
    counts = per_position.sum(0)
    p = counts[counts > 0] / codes.size
    q = per_position / len(codes)
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(q > 0, q * np.log(q), 0.0).sum(-1).reshape(codes.shape[1:])
    return {"counts": counts, "perplexity": float(np.exp(-(p * np.log(p)).sum())),
            "codes_in_use": int((counts > 0).sum()), "entropy": entropy}


def validation_codes(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The codes (N, h, w) of images x under `model.encode`, jitted, in batches."""
    return apply_batched(model, lambda m, xb: m.encode(xb).codes, x, batch_size)


def code_pictures(codes: np.ndarray, k: int) -> dict[str, PictureData]:
    """codebook_usage.png (assignments per code, most used first) and code_entropy.png (the entropy of
    the code at each grid position, against the uniform log K), for codes (N, h, w), as picture data."""
    stats = code_statistics(codes, k)
    usage = Bars(np.sort(stats["counts"])[::-1], "code (most used first)", "assignments",
                 f"codebook usage over {len(codes):,} validation images: {stats['codes_in_use']}/{k} codes in use, "
                 f"perplexity {stats['perplexity']:.1f}")
    entropy = Heatmap(stats["entropy"], math.log(k), f"nats (uniform: log K = {math.log(k):.2f})",
                      "entropy of the code at each position")
    return {"codebook_usage.png": usage, "code_entropy.png": entropy}


# --------------------------------------------------------------------------- the model


class VQVAE(ModelBase):
    """Vector-quantized autoencoder with a uniform code prior (stage 1 of the VQ-VAE recipe)."""

    kind = "vqvae"
    config_class = VQVAEConfig

    def __init__(self, model: VQVAEConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs):
        if spec.kind != "images" or len(spec.shape) != 3:
            raise VaekitError(f"model.kind '{self.kind}' needs image data (H, W, C); this data is {spec.kind} "
                              f"{tuple(spec.shape)}")
        check_objective(self.kind, objective)
        self.model_cfg, self.spec = model, spec
        self.grid = code_grid(spec.shape, model.stages)
        self.latent_dim = self.grid[0] * self.grid[1]  # code positions
        params_per_entry, self._likelihood = LIKELIHOODS[model.likelihood]
        self.encoder = GridEncoder(spec.shape[-1], model, rngs=rngs)
        self.codebook = Codebook(model.codebook_size, model.code_dim, ema=model.codebook == "ema",
                                 decay=model.ema_decay, epsilon=model.ema_epsilon,
                                 threshold=model.restart_threshold, rngs=rngs)
        self.decoder = GridDecoder(spec.shape, params_per_entry, model, rngs=rngs)
        self.prior = UniformCodes(model.codebook_size, self.grid)
        self.capabilities = Capabilities(likelihood_bound=True, log_weights="bound", latent_vector=False,
                                         kl_per_dim=False, best_metric="elbo", data_kinds=("images",))

    def param_groups(self) -> dict[str, ParamGroup]:
        return DEFAULT_GROUPS  # an EMA codebook is CodebookStat: in no group

    def _as_data(self, x: jax.Array) -> jax.Array:
        x = jnp.asarray(x, jnp.float32)
        return x[..., None] if x.ndim == 3 and self.spec.shape[-1] == 1 else x

    # ------------------------------------------------------------------ distributions

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> Quantized:
        """The quantized posterior of images (N, H, W, C): codes (N, h, w), z_q and z_e (N, h, w, D);
        `mean` is z_q (a point mass)."""
        return self.codebook.quantize(self.encoder(self._as_data(x)))

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """p(x | z) for code vectors z (..., h, w, D)."""
        return self._likelihood(self.decoder(z), self.model_cfg, 3)

    def decode_codes(self, codes: jax.Array):
        """p(x | codes) for integer code grids (..., h, w)."""
        return self.decode(self.codebook.lookup(codes))

    # ------------------------------------------------------------------ estimators

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """log p(x | z_q(x)) + log p(z_q(x)) (uniform prior: -h w log K), the same for all k: (B, k)."""
        x = self._as_data(batch["x"])
        q = self.encode(x)
        bound = self.decode(q.z_q).log_prob(x) + self.prior.log_prob(q.codes)
        return jnp.broadcast_to(bound[:, None], (bound.shape[0], k))

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """-log p(x|z_q) + codebook term (codebook=loss) + beta * commitment, a batch mean; in train
        mode the EMA statistics update and dead codes restart. Metrics: the bound as "elbo" (its KL is
        the constant h w log K), perplexity and codes in use of the batch's codes, restarts."""
        cfg = self.model_cfg
        x = self._as_data(batch["x"])
        q = self.encode(x)
        recon = -self.decode(q.straight_through).log_prob(x)  # (B,)
        sq = lambda a, b: jnp.sum((a - b) ** 2, axis=(1, 2, 3))  # noqa: E731  (B,)
        commitment = sq(q.z_e, jax.lax.stop_gradient(q.z_q))
        loss = recon + cfg.commitment * commitment
        if not self.codebook.ema:  # the codebook term moves the codes towards the encoder outputs
            loss = loss + sq(jax.lax.stop_gradient(q.z_e), q.z_q)  # z_q: gathered from the codebook
        restarted = jnp.zeros((), jnp.int32)
        if not self.codebook.deterministic:
            key = rngs.noise() if "noise" in rngs else rngs.sample()
            restarted = self.codebook.update(q, key)
        kl = jnp.full(recon.shape, self.latent_dim * math.log(cfg.codebook_size))
        counts = jnp.bincount(q.codes.reshape(-1), length=cfg.codebook_size)
        metrics = {
            "loss": mean_of(loss),
            "recon": mean_of(recon),
            "kl": mean_of(kl),
            "elbo": mean_of(-(recon + kl)),
            "commitment": mean_of(commitment),
            "perplexity": _perplexity(counts),
            "codes_in_use": jnp.sum(counts > 0),
            "restarts": restarted,
            "restarts_total": self.codebook.restarts[...],
        }
        return jnp.mean(loss), metrics

    # ------------------------------------------------------------------ data out

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Decoder mean at the nearest codes: (N, H, W, C)."""
        return self.decode(self.encode(x).z_q).mean()

    def picture_data(self, splits, key: jax.Array) -> dict[str, PictureData]:
        """The codebook's usage and the per-position code entropy over the validation split."""
        return code_pictures(validation_codes(self, splits.val["x"]), self.model_cfg.codebook_size)

    def sample(self, n: int, *, rngs: nnx.Rngs, y: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
        """Decoder means at n code grids drawn uniformly (a stage-1 model has no learned prior)."""
        log.info("model.kind=%s has no learned prior: sampling draws every code uniformly (train a "
                 "vqprior run on it for real samples)", self.kind)
        return self.decode_codes(self.prior.sample(rngs.sample(), (n,))).mean()


__all__ = ["Codebook", "CodebookStat", "Quantized", "UniformCodes", "VQVAE", "VQVAEConfig", "batch_perplexity",
           "code_grid", "code_pictures", "code_statistics", "validation_codes"]
