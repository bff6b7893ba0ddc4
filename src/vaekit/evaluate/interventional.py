"""Interventional disentanglement scores: the FactorVAE score (Kim & Mnih, 2018) and the beta-VAE
score (Higgins et al., 2017), following disentanglement_lib (Locatello et al., 2019).

They draw observations with one factor held fixed, so they take an encoder
``encode_fn(observations) -> codes (N, L)`` and a ground-truth source (`GroundTruthSource`:
``factor_sizes``, ``sample_classes(n, rng)``, ``render(classes)``), not arrays.
`vaekit.evaluate.disentanglement.compute_all` runs them with the observational metrics.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from vaekit.errors import VaekitError

class GroundTruthSource(Protocol):
    """What the interventional metrics need from a dataset with known factors."""

    factor_sizes: tuple[int, ...]

    def sample_classes(self, n: int, rng: np.random.Generator) -> np.ndarray: ...

    def render(self, classes: np.ndarray) -> Any: ...


EncodeFn = Callable[[Any], Any]


def as_codes(codes: Any, name: str) -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] < 2 or codes.shape[1] < 1:
        raise VaekitError(f"{name} must have shape (N, L) with N >= 2 and L >= 1, got {codes.shape}")
    if not (np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)):
        raise VaekitError(f"{name} must be numeric, got dtype {codes.dtype}")
    codes = codes.astype(np.float64, copy=False)
    num_bad = int((~np.isfinite(codes)).sum())
    if num_bad:
        raise VaekitError(f"{name} contain {num_bad} non-finite values (NaN or Inf)")
    return codes


def check_count(name: str, value: int, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise VaekitError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _interventional_sizes(num_train: int, num_test: int, batch_size: int, min_batch: int) -> tuple[int, int, int]:
    """The checked (num_train, num_test, batch_size) of an interventional score."""
    return check_count("num_train", num_train), check_count("num_test", num_test), check_count(
        "batch_size", batch_size, min_batch)


def encode_classes(
    encode_fn: EncodeFn, source: GroundTruthSource, classes: np.ndarray, *, encode_batch_size: int = 1024
) -> np.ndarray:
    """Render ``classes`` with the source and encode them, ``encode_batch_size`` at a time.

    Returns:
        float64 codes (N, L).

    Raises:
        VaekitError: the encoder returns a wrongly shaped or non-finite array.
    """
    encode_batch_size = check_count("encode_batch_size", encode_batch_size)
    parts = []
    for start in range(0, classes.shape[0], encode_batch_size):
        chunk = classes[start : start + encode_batch_size]
        codes = np.asarray(encode_fn(source.render(chunk)))
        if codes.ndim != 2 or codes.shape[0] != chunk.shape[0]:
            raise VaekitError(f"encode_fn returned shape {codes.shape} for {chunk.shape[0]} observations; expected (N, L)")
        parts.append(codes)
    if not parts:
        raise VaekitError("no observations to encode")
    return as_codes(np.concatenate(parts, axis=0), "codes from encode_fn")


def _source_factors(source: GroundTruthSource) -> int:
    sizes = tuple(int(s) for s in source.factor_sizes)
    if not sizes or min(sizes) < 1:
        raise VaekitError(f"ground-truth source has invalid factor_sizes {sizes}")
    return len(sizes)


def _fixed_factor_groups(
    source: GroundTruthSource, num_groups: int, batch_size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``num_groups`` groups of ``batch_size`` class rows, each sharing one random factor's value.

    Returns:
        ``(factor index per group (G,), classes (G * batch_size, F))``.
    """
    num_factors = _source_factors(source)
    index = rng.integers(0, num_factors, size=num_groups)
    classes = np.array(source.sample_classes(num_groups * batch_size, rng), dtype=np.int64, copy=True)
    groups = classes.reshape(num_groups, batch_size, num_factors)
    rows = np.arange(num_groups)
    groups[rows, :, index] = groups[rows, 0, index][:, None]
    return index, groups.reshape(num_groups * batch_size, num_factors)


def _factorvae_votes(
    encode_fn, source, num_votes, batch_size, rng, global_var, active, encode_batch_size
) -> np.ndarray:
    """Votes (F, num_active): how often fixing factor f made active latent a the least variable."""
    index, classes = _fixed_factor_groups(source, num_votes, batch_size, rng)
    codes = encode_classes(encode_fn, source, classes, encode_batch_size=encode_batch_size)
    codes = codes.reshape(num_votes, batch_size, -1)
    local_var = np.var(codes, axis=1, ddof=1)
    argmin = np.argmin(local_var[:, active] / global_var[active], axis=1)
    votes = np.zeros((_source_factors(source), int(active.sum())), dtype=np.int64)
    np.add.at(votes, (index, argmin), 1)
    return votes


def factorvae_score(
    encode_fn: EncodeFn,
    source: GroundTruthSource,
    *,
    num_train: int = 800,
    num_test: int = 500,
    batch_size: int = 64,
    num_variance_estimate: int = 10_000,
    prune_threshold: float = 0.05,
    seed: int = 0,
    encode_batch_size: int = 1024,
) -> dict:
    """FactorVAE score (Kim & Mnih, 2018).

    The global variance of each latent is estimated from ``num_variance_estimate``
    random observations; latents with standard deviation below ``prune_threshold``
    are dropped. Each vote picks a factor uniformly, fixes it to a random value,
    draws ``batch_size`` observations with the other factors random, divides each
    latent's variance over the batch by its global variance and votes (factor,
    least-variable latent). A majority-vote classifier maps each latent to its most
    frequent factor; accuracy on ``num_train`` training votes and on ``num_test``
    fresh votes.

    Returns:
        ``{"train_accuracy", "eval_accuracy", "num_active_dims"}`` (accuracies 0.0
        when every latent is pruned).
    """
    num_train, num_test, batch_size = _interventional_sizes(num_train, num_test, batch_size, 2)
    num_variance_estimate = check_count("num_variance_estimate", num_variance_estimate, 2)
    rng = np.random.default_rng(seed)
    classes = np.asarray(source.sample_classes(num_variance_estimate, rng))
    codes = encode_classes(encode_fn, source, classes, encode_batch_size=encode_batch_size)
    global_var = np.var(codes, axis=0, ddof=1)
    active = np.sqrt(global_var) >= prune_threshold
    if not active.any():
        return {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}
    args = (batch_size, rng, global_var, active, encode_batch_size)
    train_votes = _factorvae_votes(encode_fn, source, num_train, *args)
    classifier = np.argmax(train_votes, axis=0)  # the most frequent factor of each latent
    columns = np.arange(train_votes.shape[1])
    eval_votes = _factorvae_votes(encode_fn, source, num_test, *args)
    return {
        "train_accuracy": float(train_votes[classifier, columns].sum() / train_votes.sum()),
        "eval_accuracy": float(eval_votes[classifier, columns].sum() / eval_votes.sum()),
        "num_active_dims": int(active.sum()),
    }


def _betavae_points(encode_fn, source, num_points, batch_size, rng, encode_batch_size) -> tuple[np.ndarray, np.ndarray]:
    """Features (P, L) = mean |z1 - z2| over pairs sharing one factor, and that factor (P,)."""
    num_factors = _source_factors(source)
    index = rng.integers(0, num_factors, size=num_points)
    first = np.array(source.sample_classes(num_points * batch_size, rng), dtype=np.int64).reshape(num_points, batch_size, -1)
    second = np.array(source.sample_classes(num_points * batch_size, rng), dtype=np.int64).reshape(num_points, batch_size, -1)
    rows = np.arange(num_points)
    second[rows, :, index] = first[rows, :, index]
    both = np.concatenate([first, second], axis=1).reshape(2 * num_points * batch_size, num_factors)
    codes = encode_classes(encode_fn, source, both, encode_batch_size=encode_batch_size)
    codes = codes.reshape(num_points, 2, batch_size, -1)
    return np.mean(np.abs(codes[:, 0] - codes[:, 1]), axis=1), index


def betavae_score(
    encode_fn: EncodeFn,
    source: GroundTruthSource,
    *,
    num_train: int = 1000,
    num_test: int = 500,
    batch_size: int = 64,
    seed: int = 0,
    encode_batch_size: int = 1024,
) -> dict:
    """beta-VAE score (Higgins et al., 2017).

    Each point picks a factor uniformly and draws ``batch_size`` pairs of
    observations, the two of a pair sharing that factor's value (random per pair)
    and all else random; its feature is the mean absolute difference of the pairs'
    codes. A ``LogisticRegression`` predicts the factor from the feature; accuracy on
    ``num_train`` training points and ``num_test`` fresh points.

    Returns:
        ``{"train_accuracy", "eval_accuracy"}``.
    """
    num_train, num_test, batch_size = _interventional_sizes(num_train, num_test, batch_size, 1)
    rng = np.random.default_rng(seed)
    xtr, ytr = _betavae_points(encode_fn, source, num_train, batch_size, rng, encode_batch_size)
    xte, yte = _betavae_points(encode_fn, source, num_test, batch_size, rng, encode_batch_size)
    if np.unique(ytr).size < 2:
        raise VaekitError("beta-VAE score needs training points for at least two factors; raise num_train")
    model = LogisticRegression(max_iter=1000, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(xtr, ytr)
    return {"train_accuracy": float(model.score(xtr, ytr)), "eval_accuracy": float(model.score(xte, yte))}
