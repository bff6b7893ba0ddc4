"""Exact metric reduction: a metric is a sum over a denominator, never a mean of means.

A model's `loss` returns metrics as `Mean(total, count)` pairs (`mean_of` builds them from
per-example or per-token values and an optional mask). The trainer and the evaluators add the
totals and the counts over batches and divide once at the end, so a masked token average and a
short last batch are exact. A plain array in a metrics dict counts as one observation per batch
(a schedule value such as beta, the learning rate, a gradient norm).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class Mean:
    """A running mean as (sum of values, number of values); `total` may be a vector (e.g. (D,))."""

    total: jax.Array
    count: jax.Array

    @property
    def value(self) -> jax.Array:
        """total / count; a count with fewer axes (e.g. stacked over steps, (S,) for totals (S, D))
        lines up with the leading axes of the total."""
        count = self.count
        if count.ndim < self.total.ndim:
            count = count.reshape(count.shape + (1,) * (self.total.ndim - count.ndim))
        return self.total / count


def mean_of(values: jax.Array, mask: jax.Array | None = None, axis=0) -> Mean:
    """Mean(sum of values, count) over `axis` (default: the batch axis), counting only where mask is 1.

    values: (B, ...) per-example (or (B, T) per-token) values; mask: broadcastable to values,
    1.0 where a value counts and 0.0 elsewhere. The count is the number of counted entries
    along the reduced axes, so `mean_of(v, mask, axis=(0, 1))` is the exact masked token mean.
    """
    values = jnp.asarray(values)
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    if mask is None:
        count = np.prod([values.shape[a] for a in axes])
        return Mean(jnp.sum(values, axis=axes), jnp.asarray(count, values.dtype))
    mask = jnp.broadcast_to(jnp.asarray(mask, values.dtype), values.shape)
    total = jnp.sum(values * mask, axis=axes)
    count = jnp.sum(mask, axis=axes)
    return Mean(total, count)


class Accumulator:
    """Adds metrics dicts (of `Mean`s or plain values, possibly stacked over steps) on the host."""

    def __init__(self):
        self.totals: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, metrics: dict, stacked: bool = False) -> None:
        """Add one batch's metrics, or with `stacked` a leading axis of steps (summed over)."""
        for key, value in metrics.items():
            if isinstance(value, Mean):
                total, count = np.asarray(value.total, np.float64), np.asarray(value.count, np.float64)
            else:  # a plain value counts once per batch (per step when stacked)
                total = np.asarray(value, np.float64)
                count = np.ones(total.shape[:1] if stacked else ())
            if stacked:
                total, count = total.sum(axis=0), count.sum(axis=0)
            self.totals[key] = self.totals.get(key, 0.0) + total
            self.counts[key] = self.counts.get(key, 0.0) + count

    def result(self, prefix: str = "") -> dict[str, np.ndarray]:
        """{prefix + key: total / count}."""
        return {f"{prefix}{k}": self.totals[k] / self.counts[k] for k in self.totals}


def values(metrics: dict) -> dict:
    """A metrics dict with every `Mean` divided out (for one batch, on device or host)."""
    return jax.tree.map(lambda m: m.value if isinstance(m, Mean) else m, metrics,
                        is_leaf=lambda m: isinstance(m, Mean))


__all__ = ["ACTIVE_UNIT_VARIANCE", "Accumulator", "Mean", "active_unit_count", "active_units_per_layer", "mean_of", "values"]


ACTIVE_UNIT_VARIANCE = 0.01  # Burda et al. 2015: Var_x E_q[u|x] above this marks an active unit


def active_unit_count(posterior_means: np.ndarray, threshold: float = ACTIVE_UNIT_VARIANCE) -> int:
    """Active units of codes (N, D): dimensions whose posterior mean varies over the data."""
    return int(np.sum(np.var(posterior_means, axis=0) > threshold))


def active_units_per_layer(posterior_means: np.ndarray, layers: dict) -> dict[str, int]:
    """{layer: active units of its slice} for a model's `latent_layers` ({name: (start, stop)})."""
    return {name: active_unit_count(posterior_means[:, a:b]) for name, (a, b) in layers.items()}
