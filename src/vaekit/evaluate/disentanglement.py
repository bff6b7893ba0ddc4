"""Disentanglement metrics, following disentanglement_lib (Locatello et al., 2019).

Two kinds of metric:

* **Observational** metrics take arrays: ``codes`` (N, L), the representation of N
  observations (for a VAE, the posterior means), and ``factors`` (N, F), the
  integer ground-truth factor classes of the same observations:
  :func:`mig`, :func:`sap` and :func:`dci`.
* **Interventional** metrics need to draw observations with one factor held fixed,
  so they take an encoder and a ground-truth source: :func:`factorvae_score` and
  :func:`betavae_score`.

The encoder is a plain callable ``encode_fn(observations) -> codes (N, L)`` (numpy or
JAX arrays). The ground-truth source is any object with

* ``factor_sizes``: the number of classes of each factor;
* ``sample_classes(n, rng)``: ``n`` rows of factor classes (N, F), each factor
  uniform and independent, drawn from a :class:`numpy.random.Generator`;
* ``render(classes)``: the observations for those classes, as ``encode_fn`` takes them.

:class:`vaekit.data.shapes.ShapesData` is such a source (``render`` draws images). A
source whose ``render`` returns, say, the factor values lets the metrics run on
synthetic codes without images. :func:`compute_all` runs every metric.

All results are python floats/lists (JSON-serializable), and every function is
deterministic for a given ``seed``. See ``docs/disentanglement.md`` for the
algorithms, the defaults and where they differ from disentanglement_lib.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from joblib import Parallel, delayed
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.inspection import permutation_importance
from sklearn.metrics import mutual_info_score
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from vaekit._compat import tree_nodes
from vaekit.errors import VaekitError
from vaekit.evaluate.interventional import (EncodeFn, GroundTruthSource, as_codes, betavae_score, check_count,
                                            encode_classes, factorvae_score)

__all__ = [
    "GroundTruthSource",
    "betavae_score",
    "compute_all",
    "dci",
    "dci_importance_matrix",
    "encode_classes",
    "evaluate_run",
    "factorvae_score",
    "headline",
    "mig",
    "sap",
]

#: Importance methods of :func:`dci`.
DCI_IMPORTANCE_METHODS = ("gain", "permutation")


# ----------------------------------------------------------------------------- checks


def _as_factors(factors: Any, n: int, name: str, *, need_variation: bool = True) -> np.ndarray:
    factors = np.asarray(factors)
    if factors.ndim != 2 or factors.shape[0] != n or factors.shape[1] < 1:
        raise VaekitError(f"{name} must have shape ({n}, F) with F >= 1 (one row per code), got {factors.shape}")
    if not np.issubdtype(factors.dtype, np.integer):
        raise VaekitError(f"{name} must be integer factor classes, got dtype {factors.dtype}")
    if need_variation:
        for j in range(factors.shape[1]):
            if np.all(factors[:, j] == factors[0, j]):
                raise VaekitError(f"{name}: factor {j} takes a single value, so no metric can be computed for it")
    return factors.astype(np.int64, copy=False)


def _pair(train_codes, train_factors, test_codes, test_factors) -> tuple[np.ndarray, ...]:
    xtr = as_codes(train_codes, "train codes")
    ytr = _as_factors(train_factors, xtr.shape[0], "train factors")
    xte = as_codes(test_codes, "test codes")
    yte = _as_factors(test_factors, xte.shape[0], "test factors", need_variation=False)
    if xte.shape[1] != xtr.shape[1]:
        raise VaekitError(f"train codes have {xtr.shape[1]} dimensions but test codes have {xte.shape[1]}")
    if yte.shape[1] != ytr.shape[1]:
        raise VaekitError(f"train factors have {ytr.shape[1]} columns but test factors have {yte.shape[1]}")
    return xtr, ytr, xte, yte


def _top_two_gap(matrix: np.ndarray) -> np.ndarray:
    """Per column, the largest entry minus the second largest (0 stands in when L == 1)."""
    ordered = np.sort(matrix, axis=0)[::-1]
    second = ordered[1] if ordered.shape[0] > 1 else np.zeros(ordered.shape[1])
    return ordered[0] - second


def _entropy(p: np.ndarray, base: int, axis: int) -> np.ndarray:
    """Entropy (in the given base) of the distributions along ``axis``, as scipy.stats.entropy."""
    p = p / p.sum(axis=axis, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return terms.sum(axis=axis) / np.log(base)


# ------------------------------------------------------------------------------- MIG


def _discretize(codes: np.ndarray, num_bins: int) -> np.ndarray:
    """Each latent into ``num_bins`` equal-width bins over its range (disentanglement_lib)."""
    out = np.empty(codes.shape, dtype=np.int64)
    for i in range(codes.shape[1]):
        edges = np.histogram(codes[:, i], num_bins)[1]
        out[:, i] = np.digitize(codes[:, i], edges[:-1])
    return out


def mig(codes: Any, factors: Any, *, num_bins: int = 20) -> dict:
    """Mutual Information Gap (Chen et al., 2018).

    Each latent is discretized into ``num_bins`` equal-width histogram bins; the
    mutual information (nats) of every (latent, factor) pair is computed with
    :func:`sklearn.metrics.mutual_info_score`; per factor, the gap between the two
    most informative latents is divided by the factor's entropy.

    Returns:
        ``{"mig": mean over factors, "per_factor": [gap / entropy per factor]}``.
    """
    codes = as_codes(codes, "codes")
    factors = _as_factors(factors, codes.shape[0], "factors")
    num_bins = check_count("num_bins", num_bins, 2)
    binned = _discretize(codes, num_bins)
    num_latents, num_factors = codes.shape[1], factors.shape[1]
    mi = np.zeros((num_latents, num_factors))
    for i in range(num_latents):
        for j in range(num_factors):
            mi[i, j] = mutual_info_score(factors[:, j], binned[:, i])
    entropy = np.array([mutual_info_score(factors[:, j], factors[:, j]) for j in range(num_factors)])
    per_factor = _top_two_gap(mi) / entropy
    return {"mig": float(per_factor.mean()), "per_factor": [float(v) for v in per_factor]}


# ------------------------------------------------------------------------------- SAP


def _sap_column(x: np.ndarray, ytr: np.ndarray, xte: np.ndarray, yte: np.ndarray) -> float:
    classifier = LinearSVC(C=0.01, class_weight="balanced", random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        classifier.fit(x[:, None], ytr)
    return float(np.mean(classifier.predict(xte[:, None]) == yte))


def sap(train_codes: Any, train_factors: Any, test_codes: Any, test_factors: Any) -> dict:
    """Separated Attribute Predictability (Kumar et al., 2018), discrete factors.

    For every (latent, factor) pair a ``LinearSVC(C=0.01, class_weight="balanced")``
    is trained on that single latent (train split) and scored by its accuracy on the
    test split; per factor, the gap between the two best latents; the mean over
    factors.

    Returns:
        ``{"sap": mean gap, "per_factor": [gap per factor]}``.
    """
    xtr, ytr, xte, yte = _pair(train_codes, train_factors, test_codes, test_factors)
    scores = np.zeros((xtr.shape[1], ytr.shape[1]))
    for i in range(xtr.shape[1]):
        for j in range(ytr.shape[1]):
            scores[i, j] = _sap_column(xtr[:, i], ytr[:, j], xte[:, i], yte[:, j])
    gaps = _top_two_gap(scores)
    return {"sap": float(gaps.mean()), "per_factor": [float(v) for v in gaps]}


# ------------------------------------------------------------------------------- DCI


def _gain_importance(model: HistGradientBoostingClassifier, num_features: int) -> np.ndarray:
    """Total split gain per feature over all trees of a fitted model.

    The same quantity as GradientBoostingClassifier.feature_importances_ (the summed
    loss reduction of the splits on each feature; LightGBM/XGBoost "gain"), read from
    the fitted trees. The trees are private to scikit-learn (`vaekit._compat.tree_nodes`),
    so this raises AttributeError if a future version changes them; :func:`dci` then falls
    back to permutation importance.
    """
    total = np.zeros(num_features)
    for nodes in tree_nodes(model):
        split = nodes["is_leaf"] == 0
        total += np.bincount(nodes["feature_idx"][split], weights=nodes["gain"][split], minlength=num_features)
    return total


def _dci_factor(
    xtr: np.ndarray, y: np.ndarray, xte: np.ndarray, yte: np.ndarray, importance: str, max_iter: int, seed: int
) -> tuple[np.ndarray, float, float, str]:
    """Fit the trees for one factor: (importance per latent, train acc, test acc, method)."""
    # One thread per fit: factors run in parallel processes instead, and OpenMP
    # threads spinning on a busy 2-core machine slow training down many times over.
    with threadpool_limits(1):
        model = HistGradientBoostingClassifier(
            max_iter=max_iter, max_depth=3, learning_rate=0.1, early_stopping=False, random_state=seed
        )
        model.fit(xtr, y)
        method = importance
        values = None
        if importance == "gain":
            try:
                values = _gain_importance(model, xtr.shape[1])
            except (AttributeError, KeyError, TypeError, ValueError):
                method = "permutation"
        if values is None:
            result = permutation_importance(model, xte, yte, n_repeats=5, random_state=seed, scoring="accuracy")
            values = result.importances_mean
        train_acc = float(model.score(xtr, y))
        test_acc = float(model.score(xte, yte))
    values = np.clip(np.nan_to_num(values), 0.0, None)  # permutation importance can dip below 0
    if values.sum() > 0:
        values = values / values.sum()  # each factor's column sums to 1, as feature_importances_
    return values, train_acc, test_acc, method


def dci_importance_matrix(
    train_codes: Any,
    train_factors: Any,
    test_codes: Any,
    test_factors: Any,
    *,
    seed: int = 0,
    importance: str = "gain",
    max_iter: int = 100,
    n_jobs: int = 2,
) -> tuple[np.ndarray, float, float, str]:
    """Per factor, gradient-boosted trees on all latents: the (L, F) importance matrix.

    Returns:
        ``(importance (L, F) with columns summing to 1 (or 0), mean train accuracy,
        mean test accuracy, method actually used)``.
    """
    xtr, ytr, xte, yte = _pair(train_codes, train_factors, test_codes, test_factors)
    if importance not in DCI_IMPORTANCE_METHODS:
        raise VaekitError(f"unknown DCI importance {importance!r}; choose one of {', '.join(DCI_IMPORTANCE_METHODS)}")
    max_iter = check_count("max_iter", max_iter)
    n_jobs = check_count("n_jobs", n_jobs)
    jobs = [delayed(_dci_factor)(xtr, ytr[:, j], xte, yte[:, j], importance, max_iter, seed) for j in range(ytr.shape[1])]
    if n_jobs == 1 or len(jobs) == 1:
        results = [fn(*args, **kwargs) for fn, args, kwargs in jobs]
    else:
        results = Parallel(n_jobs=min(n_jobs, len(jobs)))(jobs)
    matrix = np.stack([r[0] for r in results], axis=1)
    methods = {r[3] for r in results}
    method = "permutation" if "permutation" in methods else "gain"
    return matrix, float(np.mean([r[1] for r in results])), float(np.mean([r[2] for r in results])), method


def _dci_scores(matrix: np.ndarray) -> tuple[float, float]:
    """(disentanglement, completeness) of an (L, F) importance matrix, as disentanglement_lib."""
    num_latents, num_factors = matrix.shape
    weights = matrix if matrix.sum() > 0 else np.ones_like(matrix)
    if num_factors > 1:
        per_code = 1.0 - _entropy(matrix + 1e-11, num_factors, axis=1)
        disentanglement = float(np.sum(per_code * weights.sum(axis=1) / weights.sum()))
    else:
        disentanglement = 1.0  # one factor: every code trivially captures at most one
    if num_latents > 1:
        per_factor = 1.0 - _entropy(matrix + 1e-11, num_latents, axis=0)
        completeness = float(np.sum(per_factor * weights.sum(axis=0) / weights.sum()))
    else:
        completeness = 1.0
    return disentanglement, completeness


def dci(
    train_codes: Any,
    train_factors: Any,
    test_codes: Any,
    test_factors: Any,
    *,
    seed: int = 0,
    importance: str = "gain",
    max_iter: int = 100,
    n_jobs: int = 2,
) -> dict:
    """Disentanglement, Completeness and Informativeness (Eastwood & Williams, 2018).

    Per factor, a gradient-boosted tree classifier on all latents
    (``HistGradientBoostingClassifier``, ``max_iter`` rounds of depth-3 trees, as the
    reference's ``GradientBoostingClassifier`` defaults) gives each latent an
    importance: ``"gain"``, the total split gain of the latent over all trees (what
    ``feature_importances_`` measures), or ``"permutation"``, the mean drop of test
    accuracy when the latent is shuffled (5 repeats, negatives clipped to 0). Each
    factor's importances are normalized to sum to 1. Disentanglement is
    ``sum_i w_i (1 - H_F(row_i))`` with ``w_i`` the share of latent ``i`` in the total
    importance; completeness the same over columns with entropy base L;
    informativeness the mean train/test accuracy of the classifiers.

    Args:
        n_jobs: factors fitted in parallel processes (joblib), one thread each.

    Returns:
        ``{"disentanglement", "completeness", "informativeness_train",
        "informativeness_test", "importance": (L, F) nested list,
        "importance_method": "gain" or "permutation"}``.
    """
    matrix, train_acc, test_acc, method = dci_importance_matrix(
        train_codes, train_factors, test_codes, test_factors, seed=seed, importance=importance, max_iter=max_iter, n_jobs=n_jobs
    )
    disentanglement, completeness = _dci_scores(matrix)
    return {
        "disentanglement": disentanglement,
        "completeness": completeness,
        "informativeness_train": train_acc,
        "informativeness_test": test_acc,
        "importance": matrix.tolist(),
        "importance_method": method,
    }


# --------------------------------------------------------------------------- all


def compute_all(
    encode_fn: EncodeFn,
    data_source: GroundTruthSource,
    *,
    num_train: int = 10_000,
    num_test: int = 5_000,
    seed: int = 0,
    batch_size: int = 64,
    factorvae_train: int = 800,
    factorvae_test: int = 500,
    betavae_train: int = 1000,
    betavae_test: int = 500,
    variance_estimate: int = 10_000,
    dci_importance: str = "gain",
    dci_max_iter: int = 100,
    n_jobs: int = 2,
    encode_batch_size: int = 1024,
    on_phase: Callable[[str], None] | None = None,
) -> dict:
    """Every metric for one encoder on one ground-truth source.

    ``on_phase``, if given, is called with one line of text as each phase (encoding, then each
    metric) starts and ends, so a caller can show progress through a run of several minutes.

    ``num_train`` + ``num_test`` observations with uniform random factors are encoded
    once (train first, then test, from ``np.random.default_rng(seed)``) and feed MIG
    (train codes), SAP and DCI. The interventional scores draw their own
    observations with ``seed``, ``batch_size`` per group, so each equals a standalone
    call of :func:`factorvae_score` / :func:`betavae_score` with the same arguments.
    ``dci_importance`` and ``dci_max_iter`` are :func:`dci`'s ``importance`` and
    ``max_iter`` (boosting rounds per factor; DCI's time grows with them and with the
    number of classes of each factor).

    Returns:
        ``{"mig": {...}, "sap": {...}, "dci": {...}, "factorvae": {...},
        "betavae": {...}, "settings": {...}, "seconds": {metric: wall seconds}}``;
        everything but ``"seconds"`` is deterministic for a given seed.
    """
    num_train = check_count("num_train", num_train, 2)
    num_test = check_count("num_test", num_test)
    seconds: dict[str, float] = {}

    say = on_phase or (lambda text: None)
    say(f"[1/6] encoding {num_train + num_test:,} images ...")
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    train_factors = np.asarray(data_source.sample_classes(num_train, rng), dtype=np.int64)
    test_factors = np.asarray(data_source.sample_classes(num_test, rng), dtype=np.int64)
    train_codes = encode_classes(encode_fn, data_source, train_factors, encode_batch_size=encode_batch_size)
    test_codes = encode_classes(encode_fn, data_source, test_factors, encode_batch_size=encode_batch_size)
    seconds["encode"] = time.perf_counter() - start
    say(f"[1/6] encoded in {seconds['encode']:.1f} s")

    results: dict[str, Any] = {}
    steps = {
        "mig": lambda: mig(train_codes, train_factors),
        "sap": lambda: sap(train_codes, train_factors, test_codes, test_factors),
        "dci": lambda: dci(train_codes, train_factors, test_codes, test_factors, seed=seed, importance=dci_importance,
                            max_iter=dci_max_iter, n_jobs=n_jobs),
        "factorvae": lambda: factorvae_score(
            encode_fn, data_source, num_train=factorvae_train, num_test=factorvae_test, batch_size=batch_size,
            num_variance_estimate=variance_estimate, seed=seed, encode_batch_size=encode_batch_size,
        ),
        "betavae": lambda: betavae_score(
            encode_fn, data_source, num_train=betavae_train, num_test=betavae_test, batch_size=batch_size,
            seed=seed, encode_batch_size=encode_batch_size,
        ),
    }
    labels = {"mig": "MIG", "sap": "SAP", "dci": "DCI (a gradient-boosted classifier per factor)",
              "factorvae": "FactorVAE score", "betavae": "beta-VAE score"}
    for i, (name, step) in enumerate(steps.items(), start=2):
        say(f"[{i}/6] {labels[name]} ...")
        start = time.perf_counter()
        results[name] = step()
        seconds[name] = time.perf_counter() - start
        say(f"[{i}/6] {labels[name].split(' (')[0]} done in {seconds[name]:.1f} s")
    results["settings"] = {
        "num_train": num_train,
        "num_test": num_test,
        "seed": int(seed),
        "batch_size": int(batch_size),
        "factorvae_train": int(factorvae_train),
        "factorvae_test": int(factorvae_test),
        "betavae_train": int(betavae_train),
        "betavae_test": int(betavae_test),
        "variance_estimate": int(variance_estimate),
        "dci_importance": results["dci"]["importance_method"],
        "dci_max_iter": int(dci_max_iter),
        "num_latents": int(train_codes.shape[1]),
        "factor_sizes": [int(s) for s in data_source.factor_sizes],
    }
    results["seconds"] = {k: round(v, 3) for k, v in seconds.items()}
    return results


# --------------------------------------------------------------------------- runs


def headline(result: dict) -> dict[str, float]:
    """The one number of each metric in a :func:`compute_all` result: MIG, SAP, DCI
    disentanglement, and the FactorVAE and beta-VAE scores' evaluation accuracies."""
    return {"mig": result["mig"]["mig"], "sap": result["sap"]["sap"], "dci": result["dci"]["disentanglement"],
            "factorvae_score": result["factorvae"]["eval_accuracy"], "betavae_score": result["betavae"]["eval_accuracy"]}


def evaluate_run(run, *, num_train: int = 10_000, num_test: int = 5_000, seed: int = 0, n_jobs: int = 2,
                 write: bool = True, on_phase: Callable[[str], None] | None = None) -> dict:
    """:func:`compute_all` for a trained ``shapes`` run (a :class:`vaekit.runs.run.Run`).

    Codes are the posterior means of ``run.model`` on images rendered from the whole factor
    grid. With ``write``, the result goes to ``disentanglement.json`` in the run directory
    (written atomically).

    Raises:
        VaekitError: the run was not trained on data with known factors.
    """
    import json

    from vaekit.runs.layout import write_json_atomic
    from vaekit.data.shapes import ShapesData
    from vaekit.evaluate.likelihood import posterior_mean_fn

    from vaekit.models import require

    require(run.model, "latent_vector", "vaekit disentanglement")
    if run.model.capabilities.conditional:
        raise VaekitError("disentanglement metrics score codes of images alone; a conditional model's code needs "
                          "its label too, so they are not defined for it")
    if run.config.data.source != "shapes":
        raise VaekitError(f"disentanglement metrics need a model trained on data with known factors "
                          f"(data.source=shapes); this run used '{run.config.data.source}'")
    result = compute_all(posterior_mean_fn(run.model), ShapesData(seed=run.config.data.seed),
                         num_train=num_train, num_test=num_test, seed=seed, n_jobs=n_jobs, on_phase=on_phase)
    result = json.loads(json.dumps(result, default=float))
    if write:
        write_json_atomic(run.path / "disentanglement.json", result)
    return result
