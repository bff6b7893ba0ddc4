"""The VAE: a diagonal-Gaussian posterior q(z|x), a prior object p(z) (N(0, I)), and a configurable
likelihood p(x|z), for images or flat vectors. It implements the interface of `models.base`.

The estimators are written once, against the posterior and prior *objects*: draws come with
their log-density (`sample_and_log_prob`), and the KL term is the closed form where one is
registered (`priors.CLOSED_FORM_KL`) and a Monte Carlo estimate from the same draws where not.
A variant that swaps the posterior (a flow), the prior (a VampPrior) or adds a condition
(`models.cvae`) overrides `encode`, `prior` or `condition` and inherits the rest.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vaekit.core import objectives
from vaekit.config.schema import ModelConfig, ObjectiveConfig
from vaekit.data.spec import DataSpec
from vaekit.core.distributions import LIKELIHOODS, DiagonalGaussian, posterior_scale
from vaekit.errors import VaekitError
from vaekit.core.metrics import mean_of
from vaekit.models.base import DEFAULT_GROUPS, Capabilities, ModelBase, ParamGroup
from vaekit.models.user_nets import UserDecoder, UserEncoder
from vaekit.nets import build_decoder, build_encoder, output_layer
from vaekit.core.flows import IAF, POSTERIORS, FlowPosterior, planar_params, planar_transform
from vaekit.core.priors import PRIORS, StandardNormal, VampPrior, kl_divergence

PLANAR_INIT_SCALE = 0.1  # the planar steps' parameter outputs start at this fraction of the default initial scale


@dataclasses.dataclass(frozen=True)
class VAEConfig(ModelConfig):
    """model.kind=vae's keys: the posterior q(z|x) and the prior p(z). The kinds that take another
    posterior or prior derive their config from this one (cvae, factorvae); a variant whose config
    does not has the diagonal Gaussian and N(0, I) (`latent_config`)."""

    posterior: str = "gaussian"  # q(z|x) (`core.flows.POSTERIORS`): "gaussian", or a flow on it: "planar" (Rezende & Mohamed 2015), "iaf" (Kingma et al. 2016)
    flow_steps: int = 4  # number of planar or IAF steps
    flow_hidden: int = 100  # IAF: width of each step's MADE hidden layer and of the encoder context h
    prior: str = "normal"  # p(z) (`core.priors.PRIORS`): "normal" (N(0, I)) or "vamp" (VampPrior, Tomczak & Welling 2018)
    prior_components: int = 500  # VampPrior: number of pseudo-inputs K

    def check(self) -> None:
        if self.posterior not in POSTERIORS:
            raise VaekitError(f"model.posterior must be one of {', '.join(POSTERIORS)}; got '{self.posterior}'")
        if self.prior not in PRIORS:
            raise VaekitError(f"model.prior must be one of {', '.join(PRIORS)}; got '{self.prior}'")
        for key in ("flow_steps", "flow_hidden", "prior_components"):
            if getattr(self, key) <= 0:
                raise VaekitError(f"model.{key} must be positive, got {getattr(self, key)}")


_GAUSSIAN_NORMAL = VAEConfig()


def latent_config(model: ModelConfig) -> VAEConfig:
    """The posterior and prior keys of `model`: its own where its kind has them, else those of the
    diagonal Gaussian and N(0, I)."""
    return model if isinstance(model, VAEConfig) else _GAUSSIAN_NORMAL


def variational_objective(cfg: ObjectiveConfig, step, q, prior, z, log_qz, log_px_z, log_pz, latent_dim: int):
    """The ELBO-family loss (a batch mean) and its metrics from k draws, for any latent-variable
    model with a posterior object q and a prior object: z (k, B, D), log q(z|x), log p(x|z) and
    log p(z) (k, B). objective.kind "elbo": recon + the KL term (closed form or Monte Carlo) under
    the beta schedule, free bits or capacity; "iwae": -mean_B log (1/k) sum_i w_i. Metrics are the
    true ELBO's parts (beta = 1) as exact means, and the KL per dimension where it is closed form."""
    kl = kl_divergence(q, prior, z, log_qz)  # (B,), and (B, D) in closed form
    recon = -jnp.mean(log_px_z, axis=0)  # (B,)
    if cfg.kind == "iwae":
        loss = -jnp.mean(objectives.iwae_bound((log_px_z + log_pz - log_qz).T))
        info = {"beta": jnp.ones(())}
    else:
        penalty, info = objectives.kl_term(kl, step, cfg, latent_dim=latent_dim)
        loss = jnp.mean(recon) + penalty
    metrics = {
        "loss": mean_of(jnp.broadcast_to(loss, recon.shape)),
        "recon": mean_of(recon),
        "kl": mean_of(kl.total),
        "elbo": mean_of(-(recon + kl.total)),
        **info,
    }
    if kl.per_dim is not None:
        metrics["kl_per_dim"] = mean_of(kl.per_dim)  # (D,)
    return loss, metrics


class VAE(ModelBase):
    """Variational autoencoder with a diagonal-Gaussian posterior and an N(0, I) prior."""

    kind = "vae"
    config_class = VAEConfig
    user_nets = True

    def __init__(self, model: ModelConfig, objective: ObjectiveConfig, spec: DataSpec, *, rngs: nnx.Rngs,
                 encoder: nnx.Module | None = None, decoder: nnx.Module | None = None):
        """encoder, decoder: a user's modules in place of the nets `model.net` builds (`models.user_nets`)."""
        params_per_entry = self._bind(model, objective, spec)
        latent = latent_config(model)
        self.latent_dim = model.latent_dim
        condition = self.condition_mode(model)
        d = model.latent_dim
        if encoder is not None and latent.posterior != "gaussian":
            raise VaekitError(f"model.posterior={latent.posterior} needs vaekit's own encoder (its head gives the "
                              f"flow's parameters); with your encoder use model.posterior=gaussian")
        # The encoder's head: the base Gaussian's mean and scale, then what the posterior needs more
        # (planar: u, w, b of every step; IAF: the context h of its MADE layers).
        extra = {"gaussian": 0, "planar": latent.flow_steps * (2 * d + 1), "iaf": latent.flow_hidden}[latent.posterior]
        self.encoder = (UserEncoder(encoder, spec.shape, d, self.cond_dim) if encoder is not None else
                        build_encoder(model, spec.shape, 2 * d + extra, cond_dim=self.cond_dim, condition=condition,
                                      rngs=rngs))
        if latent.posterior == "planar":
            # The planar steps' u, w, b outputs start at a tenth of the default initial scale, b at 0,
            # so each step's tanh(w.z + b) starts in its linear range. At the default scale 16
            # amortized steps start as saturated folds and trained 1.4 nats worse (90.39 against
            # 88.95 after 135 epochs; docs/results.md).
            head = output_layer(self.encoder)
            head.kernel[...] = head.kernel[...].at[..., 2 * d :].multiply(PLANAR_INIT_SCALE)
            head.bias[...] = head.bias[...].at[2 * d :].set(0.0)
        self.decoder = (UserDecoder(decoder, d, spec.shape, params_per_entry, model.likelihood, self.cond_dim)
                        if decoder is not None else
                        build_decoder(model, d, spec.shape, params_per_entry, cond_dim=self.cond_dim,
                                      condition=condition, rngs=rngs))
        self.flow = IAF(d, latent.flow_hidden, latent.flow_steps, rngs=rngs) if latent.posterior == "iaf" else None
        if latent.prior == "vamp":
            if self.cond_dim:
                raise VaekitError("model.prior=vamp encodes unlabelled pseudo-inputs; it does not combine with a "
                                  "conditional model")
            self.prior = VampPrior(self.encoder, spec.shape, latent.prior_components, d, model.posterior_scale,
                                   rngs=rngs)
        else:
            self.prior = nnx.data(StandardNormal(d))  # data, so a variant may put a Module here
        self.capabilities = self.capabilities_for(model)

    def _bind(self, model: ModelConfig, objective: ObjectiveConfig, spec: DataSpec) -> int:
        """A constructor's common start (this kind and its variants): check the data kind, keep the
        configs, the condition width and the likelihood. Returns the likelihood's parameters per entry."""
        if spec.kind not in self.capabilities_for(model).data_kinds:
            raise VaekitError(f"model.kind '{self.kind}' does not take {spec.kind} data")
        self.model_cfg, self.objective, self.spec = model, objective, spec
        self.cond_dim = self.condition_dim(spec)
        params_per_entry, self._likelihood = LIKELIHOODS[model.likelihood]
        return params_per_entry

    @classmethod
    def capabilities_for(cls, model: ModelConfig) -> Capabilities:
        # A per-dimension KL exists only in closed form: a Gaussian posterior against N(0, I).
        latent = latent_config(model)
        return Capabilities(kl_per_dim=latent.posterior == "gaussian" and latent.prior == "normal")

    def condition_dim(self, spec: DataSpec) -> int:
        """Width of the condition vector the nets take (0: unconditional)."""
        return 0

    def condition_mode(self, model: ModelConfig) -> str | None:
        """How the nets take the condition (`nets.conditioning`); None for an unconditional model."""
        return None

    def condition(self, y: jax.Array | None) -> jax.Array | None:
        """The nets' condition for labels y (N,); an unconditional model ignores y."""
        return None

    def param_groups(self) -> dict[str, ParamGroup]:
        return DEFAULT_GROUPS

    def _as_data(self, x: jax.Array) -> jax.Array:
        """float32 data; images given as (N, H, W) get their channel axis."""
        x = jnp.asarray(x, jnp.float32)
        return x[..., None] if self.spec.is_images and x.ndim == 3 and self.spec.shape[-1] == 1 else x

    # ------------------------------------------------------------------ distributions

    def encode(self, x: jax.Array, y: jax.Array | None = None) -> DiagonalGaussian | FlowPosterior:
        """q(z|x[, y]) for data (N, *event): a DiagonalGaussian with (N, D) parameters, or a flow on one."""
        h = self.encoder(self._as_data(x), self.condition(y))
        d = self.latent_dim
        base = DiagonalGaussian(h[..., :d], posterior_scale(h[..., d : 2 * d], self.model_cfg.posterior_scale))
        latent, extra = latent_config(self.model_cfg), h[..., 2 * d :]
        if latent.posterior == "planar":
            return FlowPosterior(base, planar_transform(*planar_params(extra, d, latent.flow_steps)))
        if latent.posterior == "iaf":
            return FlowPosterior(base, lambda z: self.flow(z, extra))
        return base

    def decode(self, z: jax.Array, y: jax.Array | None = None):
        """p(x|z[, y]) for latents (..., D): a likelihood with parameters (..., *event[, 256])."""
        return self._likelihood(self.decoder(z, self.condition(y)), self.model_cfg, self.spec.event_ndim)

    # ------------------------------------------------------------------ estimators

    def _draws(self, batch: dict, k: int, rngs: nnx.Rngs):
        """q, k reparameterized draws z (k, B, D), and log q(z|x), log p(x|z), log p(z), each (k, B)."""
        x, y = self._as_data(batch["x"]), batch.get("y")
        q = self.encode(x, y)
        z, log_qz = q.sample_and_log_prob(rngs.sample(), (k,))
        log_px_z = self.decode(z, y).log_prob(x)  # x (B, ...) broadcasts against (k, B, ...)
        return q, z, log_qz, log_px_z, self.prior.log_prob(z)

    def log_weights(self, batch: dict, k: int, *, rngs: nnx.Rngs) -> jax.Array:
        """log p(x, z_i) - log q(z_i | x) for k draws z_i ~ q(z|x): (B, k).

        logmeanexp over k is the IWAE bound (and, for large k, the NLL estimate); the mean over k
        is an unbiased estimate of the ELBO.
        """
        _, _, log_qz, log_px_z, log_pz = self._draws(batch, k, rngs)
        return (log_px_z + log_pz - log_qz).T

    def loss(self, batch: dict, *, rngs: nnx.Rngs, step: jax.Array) -> tuple[jax.Array, dict]:
        """The training objective (a batch mean, to minimize) and metrics.

        objective.kind "elbo": -E_q[log p(x|z)] (one draw) + the KL term (closed form or Monte
        Carlo, see `priors.kl_divergence`) weighted by the beta schedule, with free bits or
        capacity control when configured. objective.kind "iwae": -mean_B log (1/k) sum_i w_i
        over k draws. Metrics report the true ELBO (beta = 1, no free bits) as exact means.
        """
        k = self.objective.iwae_k if self.objective.kind == "iwae" else 1
        q, z, log_qz, log_px_z, log_pz = self._draws(batch, k, rngs)
        loss, metrics = variational_objective(self.objective, step, q, self.prior, z, log_qz, log_px_z, log_pz,
                                              self.latent_dim)
        metrics.update(self.layer_kls(q, z, log_qz))
        return loss, metrics

    def layer_kls(self, q, z: jax.Array, log_qz: jax.Array) -> dict:
        """Per-layer KL metrics ({"kl/<layer>": Mean}) from the loss's own draws; none for one layer."""
        return {}

    # ------------------------------------------------------------------ data out

    def reconstruct(self, x: jax.Array, y: jax.Array | None = None) -> jax.Array:
        """Decoder mean at the posterior mean: data (N, *event) (in [0, 1] for Bernoulli/categorical).

        Use the model in eval mode (`model.eval()`; `load_run` returns it so) for BatchNorm nets.
        """
        return self.decode(self.encode(x, y).mean, y).mean()

    def sample(self, n: int, *, rngs: nnx.Rngs, y: jax.Array | None = None, temperature: float = 1.0) -> jax.Array:
        """Decoder means at n prior draws (the prior's spread scaled by temperature): (n, *event)."""
        z = self.prior.sample(rngs.sample(), (n,), temperature)
        return self.decode(z, y).mean()
