"""Conditional VAE (Sohn et al. 2015): q(z|x, y), p(x|z, y) and an N(0, I) prior, for labelled data.

Everything but the condition is the VAE's: the label y (N,) becomes a one-hot vector that the
encoder and the decoder take in the mode `model.condition` names (concatenation, FiLM or
conditional BatchNorm; `nets.conditioning`). Its likelihood bound is of log p(x|y), so
`vaekit evaluate` reports the conditional NLL -log p(x|y).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from vaekit.data.spec import DataSpec
from vaekit.errors import VaekitError
from vaekit.models.base import Capabilities
from vaekit.models.vae import VAE, VAEConfig
from vaekit.nets import CONDITIONING_MODES


@dataclasses.dataclass(frozen=True)
class CVAEConfig(VAEConfig):
    kind: str = "cvae"
    condition: str = "concat"  # how y enters the nets: "concat" (one-hot input), "film", "cbn" (conditional BatchNorm)

    def check(self) -> None:
        super().check()
        if self.condition not in CONDITIONING_MODES:
            raise VaekitError(f"model.condition must be one of {', '.join(CONDITIONING_MODES)}; got '{self.condition}'")


class CVAE(VAE):
    """A VAE whose encoder and decoder both see the class label."""

    kind = "cvae"
    config_class = CVAEConfig

    @classmethod
    def capabilities_for(cls, model) -> Capabilities:
        return Capabilities(conditional=True)

    def condition_dim(self, spec: DataSpec) -> int:
        if not spec.num_classes:
            raise VaekitError("model.kind=cvae needs labelled data (a 'y' array of class labels); this data has none")
        return spec.num_classes

    def condition_mode(self, model: CVAEConfig) -> str:
        return model.condition

    def condition(self, y: jax.Array | None) -> jax.Array:
        if y is None:
            raise VaekitError("a conditional VAE needs labels y for every call (encode, decode, sample, loss)")
        return jax.nn.one_hot(jnp.asarray(y), self.cond_dim)

    def sample(self, n, *, rngs, y=None, temperature=1.0):
        """Decoder means at n prior draws for labels y (n,) (required)."""
        if y is None:
            raise VaekitError("a conditional VAE samples for given labels: pass y (n,) class labels")
        return super().sample(n, rngs=rngs, y=y, temperature=temperature)
