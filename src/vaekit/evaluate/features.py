"""Feature nets for evaluation: the net for a run's images (`for_run`: the user's, else one vaekit
ships for the run's data), training one (`train_classifier`, benchmarks/feature_net.py), writing it
in the documented .npz layout (`save`) and its label accuracy. The nets themselves and their file
layout are `vaekit.nets.features`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.nets.features import SHIPPED, FeatureNet, load, load_shipped, sha256, to_arrays


def save(path: str | Path, net: FeatureNet, meta: dict | None = None) -> str:
    """Write the net to PATH.npz and PATH.json ({"sha256", **meta}); returns the digest."""
    from vaekit.runs.layout import atomic_write, write_text_atomic

    path = Path(path)
    arrays = to_arrays(net)

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    digest = sha256(path)
    write_text_atomic(path.with_suffix(".json"), json.dumps({"sha256": digest, **(meta or {})}, indent=2) + "\n")
    return digest


def shipped_for(data_source: str, shape) -> str | None:
    """The name of a shipped net that suits a run's data (its source and image shape), or None."""
    if data_source == "mnist" and tuple(shape) == (28, 28, 1):
        return "mnist"
    if data_source == "shapes" and tuple(shape) == (64, 64, 1):
        return "shapes"
    return None


def for_run(run, path: str | Path | None = None) -> tuple[FeatureNet, str]:
    """(net, description) for a loaded run: the user's `path`, else a shipped net for the run's
    data; a one-line VaekitError when neither exists or the net does not take the run's images."""
    spec = run.spec
    if not spec.is_images:
        raise VaekitError(f"sample-quality metrics need image data; run '{run.path}' has {spec.kind}")
    if path is not None:
        net, what = load(path), str(path)
    else:
        name = shipped_for(run.config.data.source, spec.shape)
        if name is None:
            source = run.config.data.path or run.config.data.source
            raise VaekitError(f"vaekit ships no feature net for '{source}' {spec.shape} images; quality metrics need "
                              f"one: pass --features NET.npz (layout: vaekit.nets.features)")
        net, what = load_shipped(name), f"vaekit {name} ({SHIPPED[name][0]})"
    if net.input_shape != tuple(spec.shape):
        raise VaekitError(f"feature net {what} takes {net.input_shape} images; the run's are {tuple(spec.shape)}")
    return net, what


def train_classifier(net: FeatureNet, x: np.ndarray, labels: list[np.ndarray], *, epochs: int = 3,
                     batch_size: int = 128, learning_rate: float = 1e-3, seed: int = 0, log=None) -> FeatureNet:
    """Train `net` in place by Adam (cosine-decayed learning rate) on the summed cross-entropy of its heads; labels: one int (N,)
    array per head. Batches follow a seeded permutation per epoch; `log(epoch, seconds, loss)` per epoch."""
    import time

    import optax

    steps = len(x) // batch_size
    tx = optax.adam(optax.cosine_decay_schedule(learning_rate, epochs * steps))  # decays to 0 over the run
    graphdef, params = nnx.split(net)
    opt_state = tx.init(params)
    ys = np.stack([np.asarray(y, np.int32) for y in labels], axis=1)  # (N, heads)

    def loss_fn(p, xb, yb):
        logits = nnx.merge(graphdef, p).logits(xb)
        return sum(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(l, yb[:, j])) for j, l in enumerate(logits))

    @jax.jit
    def step(p, o, xb, yb):
        loss, g = jax.value_and_grad(loss_fn)(p, xb, yb)
        updates, o = tx.update(g, o, p)
        return optax.apply_updates(p, updates), o, loss

    rng = np.random.default_rng(seed)
    for epoch in range(epochs):
        t0, total = time.perf_counter(), 0.0
        order = rng.permutation(len(x))
        for i in range(steps):
            idx = order[i * batch_size : (i + 1) * batch_size]
            params, opt_state, loss = step(params, opt_state, jnp.asarray(x[idx]), jnp.asarray(ys[idx]))
            if i % 50 == 0:
                total += float(loss)
        if log is not None:
            log(epoch + 1, time.perf_counter() - t0, total / len(range(0, steps, 50)))
    nnx.update(net, params)
    return net


def accuracy(net: FeatureNet, x: np.ndarray, labels: list[np.ndarray], batch_size: int = 1000) -> list[float]:
    """Per-head accuracy of `net` on images x (N, H, W, C) and one label array (N,) per head."""
    from vaekit.models.base import apply_batched

    preds = apply_batched(net, lambda n, xb: [jnp.argmax(logits, -1) for logits in n.logits(xb)], x, batch_size)
    return [float(np.mean(p == np.asarray(y))) for p, y in zip(preds, labels)]


__all__ = ["accuracy", "for_run", "save", "shipped_for", "train_classifier"]
