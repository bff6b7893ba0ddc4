"""Sample quality: how close a model's samples are to real data, in a feature net's space.

Both sets of images go through the same feature net (`nets.features`: vaekit's shipped MNIST
net, or a user's own) and are compared on its penultimate features (N, F):

- Fréchet distance (FID, Heusel et al. 2017): ||mu_r - mu_g||^2 + tr(S_r) + tr(S_g)
  - 2 tr((S_r^{1/2} S_g S_r^{1/2})^{1/2}), the 2-Wasserstein distance between Gaussians fitted to
  the two feature sets. tr((S_r S_g)^{1/2}) is computed as the sum of the square roots of the
  eigenvalues of the symmetric S_r^{1/2} S_g S_r^{1/2} (same eigenvalues), in float64, which is
  stable where scipy's general `sqrtm` of the non-symmetric product can return complex noise.
- precision and recall (Kynkäänniemi et al. 2019, k = 3): each real feature vector gets a ball
  reaching its k-th nearest real neighbour; precision is the fraction of generated vectors inside
  some real ball, recall the fraction of real vectors inside some generated ball (balls from the
  generated set's own k-th neighbours). Recall shows a collapse to a few modes that FID can hide.
- label accuracy (conditional models): the fraction of samples drawn for label c that the
  feature net classifies as c.

`vaekit quality RUN` draws 10,000 samples and compares them with the test split; the floor (what
real data scores against real data) is in docs/evaluation.md.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.models.base import apply_batched

QUALITY_FILE = "quality.json"
QUALITY_SEED = 20170626  # seed of the samples of every quality evaluation (reproducible numbers)


# --------------------------------------------------------------------------- the metrics


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (F,), covariance (F, F)) of feature vectors (N, F), in float64 (unbiased covariance)."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise VaekitError(f"need at least two feature vectors (N, F); got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, s1, mu2, s2) -> float:
    """Fréchet distance between N(mu1, s1) and N(mu2, s2) (see the module docstring)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.size, mu1.size):
        raise VaekitError(f"Fréchet distance: mismatched shapes {mu1.shape}, {s1.shape}, {mu2.shape}, {s2.shape}")
    r = _psd_sqrt(s1)
    eig = np.linalg.eigvalsh(r @ s2 @ r)
    cross = np.sum(np.sqrt(np.clip(eig, 0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2.0 * cross)


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, F) and (M, F)."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))


def _sq_dists(a: jax.Array, b: jax.Array) -> jax.Array:
    """Squared Euclidean distances (A, B), clipped at 0 (the expansion can round below it)."""
    return jnp.maximum(jnp.sum(a * a, 1)[:, None] - 2.0 * a @ b.T + jnp.sum(b * b, 1)[None, :], 0.0)


_sq_dists_jit = jax.jit(_sq_dists)


@jax.jit
def _inside_block(rows: jax.Array, centres: jax.Array, radii: jax.Array) -> jax.Array:
    return jnp.any(_sq_dists(rows, centres) <= radii[None, :], axis=1)


def kth_neighbour_radii(f: np.ndarray, k: int = 3, block: int = 1000) -> np.ndarray:
    """Squared distance from each row of f (N, F) to its k-th nearest other row: (N,)."""
    if len(f) <= k:
        raise VaekitError(f"precision/recall with k = {k} needs more than {k} feature vectors; got {len(f)}")
    f = jnp.asarray(f, jnp.float32)
    # The k + 1 smallest of a row include the point itself (distance 0): the k-th neighbour is the
    # (k+1)-th smallest. numpy's partition is linear time; XLA's CPU top_k sorted each 10,000-wide
    # row and took 40x longer.
    return np.concatenate([np.partition(np.asarray(_sq_dists_jit(f[i : i + block], f)), k, axis=1)[:, k]
                           for i in range(0, len(f), block)])


def coverage(points: np.ndarray, centres: np.ndarray, radii: np.ndarray, block: int = 1000) -> float:
    """Fraction of `points` (N, F) inside at least one ball (centres (M, F), squared radii (M,))."""
    c, r = jnp.asarray(centres, jnp.float32), jnp.asarray(radii, jnp.float32)
    p = jnp.asarray(points, jnp.float32)
    inside = np.concatenate([np.asarray(_inside_block(p[i : i + block], c, r)) for i in range(0, len(p), block)])
    return float(np.mean(inside))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of `fake` against `real` features."""
    precision = coverage(fake, real, kth_neighbour_radii(real, k))
    recall = coverage(real, fake, kth_neighbour_radii(fake, k))
    return precision, recall


def featurize(net, x: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """The net's penultimate features (N, F) of images x (N, H, W, C), jitted, in batches."""
    return apply_batched(net, lambda n, xb: n.features(xb), np.asarray(x, np.float32), batch_size)


def compare_features(real: np.ndarray, fake: np.ndarray, k: int = 3) -> dict:
    """FID, precision and recall of feature vectors fake (M, F) against real (N, F)."""
    precision, recall = precision_recall(real, fake, k)
    return {"fid": fid(real, fake), "precision": precision, "recall": recall}


def compare(net, real_x: np.ndarray, fake_x: np.ndarray, *, k: int = 3, batch_size: int = 1000) -> dict:
    """FID, precision and recall of images fake_x against real_x, in `net`'s feature space."""
    return compare_features(featurize(net, real_x, batch_size), featurize(net, fake_x, batch_size), k)


def head_accuracy(net, feats: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of images, given by their features (N, F), that the net's first head classifies as
    their label (N,): the label accuracy of samples, without featurizing them again."""
    pred = np.argmax(np.asarray(net.head_logits(jnp.asarray(feats))[0]), axis=-1)
    return float(np.mean(pred == np.asarray(labels)))


# --------------------------------------------------------------------------- a run


def samples_label_accuracy(run, images: np.ndarray, label: int) -> tuple[float, str] | None:
    """(accuracy, net name) of samples drawn for `label` under the net vaekit ships for the run's
    data; None when it ships none (`vaekit sample --label` then reports nothing more)."""
    from vaekit.evaluate.features import accuracy, shipped_for
    from vaekit.nets.features import SHIPPED, load_shipped

    name = shipped_for(run.config.data.source, run.spec.shape) if run.spec.is_images else None
    if name is None:
        return None
    acc = accuracy(load_shipped(name), np.asarray(images, np.float32), [np.full(len(images), label)])[0]
    return acc, f"vaekit {name} ({SHIPPED[name][0]})"



def draw_samples(model, n: int, *, num_classes: int | None = None, seed: int = QUALITY_SEED,
                 batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray | None]:
    """n prior samples (decoder means) of a model in eval mode; a conditional model gets labels
    0..K-1 in turn (a balanced set), returned with them."""
    conditional = model.capabilities.conditional
    labels = np.arange(n) % num_classes if conditional else None
    graphdef, state = nnx.split(model)

    @jax.jit
    def draw_with(st, key, y):
        return nnx.merge(graphdef, st).sample(y.shape[0], rngs=nnx.Rngs(sample=key), y=y if conditional else None)

    def draw(key, y):
        return draw_with(state, key, y)

    key = jax.random.PRNGKey(seed)
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        m = min(batch_size, n - start)
        y = jnp.asarray(labels[start : start + m]) if conditional else jnp.zeros((m,), jnp.int32)
        out.append(np.asarray(draw(jax.random.fold_in(key, i), y)))
    return np.concatenate(out), labels


def quality(run, *, samples: int = 10_000, split: str = "test", reference: int | None = None,
            features_path: str | Path | None = None, k: int = 3, seed: int = QUALITY_SEED, on_phase=None) -> dict:
    """Sample quality of a loaded run (`checkpoint.load_run`): FID, precision and recall of
    `samples` prior samples against the `split` images (the first `reference` of them; None: all),
    and label accuracy for a conditional model. Writes RUN/quality.json (atomically) and returns
    its contents."""
    from vaekit.runs.layout import write_json_atomic
    from vaekit.evaluate.features import for_run
    from vaekit.training.pictures import eval_mode

    if samples <= k:
        raise VaekitError(f"--samples must be more than k = {k}, got {samples}")
    if reference is not None and reference <= k:
        raise VaekitError(f"--reference must be more than k = {k}, got {reference}")
    if split not in ("train", "val", "test"):
        raise VaekitError(f"--split must be train, val or test, got '{split}'")
    say = on_phase or (lambda text: None)
    net, net_name = for_run(run, features_path)
    t0 = time.perf_counter()
    # Continuous images even for a binarized run: its samples are decoder means (grey levels), and
    # the feature net was trained on grey-level digits.
    real = run.data(binarize="none").examples(split, reference)
    say(f"sampling {samples:,} images")
    with eval_mode(run.model):
        fake, labels = draw_samples(run.model, samples, num_classes=run.spec.num_classes, seed=seed)
    say(f"comparing with {len(real['x']):,} {split} images in the feature net's space")
    fake_features = featurize(net, fake)
    result = compare_features(featurize(net, real["x"]), fake_features, k)
    if labels is not None:
        result["label_accuracy"] = head_accuracy(net, fake_features, labels)
    result |= {"samples": samples, "reference": f"{len(real['x']):,} {split} images", "k": k, "seed": seed,
               "feature_net": net_name, "checkpoint": run.checkpoint, "seconds": round(time.perf_counter() - t0, 1)}
    write_json_atomic(Path(run.path) / QUALITY_FILE, result)
    return result


__all__ = ["QUALITY_FILE", "compare", "compare_features", "coverage", "draw_samples", "featurize", "fid",
           "frechet_distance", "gaussian_stats", "head_accuracy", "kth_neighbour_radii", "precision_recall", "quality",
           "samples_label_accuracy"]
