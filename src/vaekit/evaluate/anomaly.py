"""Anomaly scores of a trained model, and how well they separate anomalies (AUROC, AUPRC).

Every score is per example and larger means "more anomalous":

    nll          -log p(x), importance-sampled with k draws (Burda et al. 2015; `likelihood.py`)
    neg_elbo     -ELBO: minus the mean log weight of the same k draws
    recon_error  squared error between x and its reconstruction (decoder mean at the posterior
                 mean), summed over the entries of one example
    complexity   the input-complexity-corrected likelihood of Serra et al. 2020 ("Input complexity
                 and out-of-distribution detection with likelihood-based generative models", ICLR
                 2020, eq. 2): S(x) = -log2 p(x) - L(x), with L(x) the length in bits of x
                 under a generic lossless image compressor (`compressed_bits`): for binary
                 greyscale images (binarized MNIST) the adaptive context model of the bi-level
                 image standard JBIG (`context_bits`), otherwise PNG (zlib level 9, `png_bits`).
                 It is a log-likelihood ratio against the compressor as a universal model:
                 simple images, which any model finds likely, no longer look normal only for
                 being simple. Serra et al. find that the better the compressor, the better the
                 score; on one-class MNIST the context model lifts the mean AUROC from 94.6
                 (1-bit PNG) to 98.7 (docs/using.md). Images only.
    typicality   |(-log p(x)) - mean(-log p) of normal reference data|: the one-example
                 typicality test of Nalisnick et al. 2019 ("Detecting out-of-distribution inputs
                 to deep generative models using typicality"); given only with reference data
                 (the CLI uses up to 1,000 examples of the run's validation split).

Only the model interface is used: `log_weights` (through `likelihood.log_likelihood`),
`reconstruct`, `capabilities`. A conditional model is scored as log p(x|y) with the labels the
data carries in "y"; without labels it is scored by its class-marginal
log p(x) = logsumexp_c log p(x|c) - log K (uniform classes; the ELBO likewise, the
reconstruction error as the smallest over classes), K times the work.

Targets: `y` marks anomalies with 1 and normal examples with 0, or, with `normal_label=c`, `y`
holds class labels and class c is normal, every other class anomalous.
"""

from __future__ import annotations

import io
import math
import time
from pathlib import Path

import numpy as np

from vaekit.errors import VaekitError
from vaekit.evaluate.likelihood import EVAL_SEED, log_likelihood

SCORES = ("nll", "neg_elbo", "recon_error", "complexity", "typicality")
LIKELIHOOD_SCORES = ("nll", "neg_elbo", "complexity", "typicality")
DEFAULT_SAMPLES = 100
REFERENCE_EXAMPLES = 1000  # validation examples the typicality score is centred on


# --------------------------------------------------------------------------- scores


# JBIG's three-line template (ITU-T T.82, section 6.7.2): the 10 pixels before (i, j) in raster
# order whose values form the context of pixel (i, j), as (row, column) offsets.
JBIG_TEMPLATE = ((-2, -1), (-2, 0), (-2, 1), (-1, -2), (-1, -1), (-1, 0), (-1, 1), (-1, 2), (0, -2), (0, -1))


def context_bits(x: np.ndarray, template=JBIG_TEMPLATE, chunk: int = 1000) -> np.ndarray:
    """L(x) for binary images (N, H, W, 1) or (N, H, W): the ideal code length in bits of each
    image under an adaptive context model, the modelling of JBIG (ITU-T T.82).

    Pixels are coded in raster order. The context of a pixel is the values of the `template`
    pixels before it (0 outside the image); within each context the probability of a 1 is
    adapted from the counts so far with the Krichevsky-Trofimov estimator, (n_1 + 1/2) / (n + 1).
    Nothing is learned from other images, so this is a universal model of bi-level images, and an
    arithmetic coder achieves the length within 2 bits. The product of the sequential
    probabilities of one context does not depend on the order of its pixels, so the length is
    sum over contexts of -log2 [G(n_0 + 1/2) G(n_1 + 1/2) / (G(1/2)^2 G(n_0 + n_1 + 1))] (G the
    gamma function), computed from the counts alone.
    """
    from scipy.special import gammaln

    x = np.asarray(x)
    x = x[..., 0] if x.ndim == 4 else x
    if x.ndim != 3 or not _binary(x):
        raise VaekitError(f"context_bits takes binary images (N, H, W[, 1]) of 0s and 1s; got shape {x.shape}")
    bits = x.astype(np.int64)
    n, h, w = bits.shape
    r = max(max(abs(di), abs(dj)) for di, dj in template)
    padded = np.zeros((n, h + r, w + 2 * r), np.int64)  # r rows above, r columns each side, all 0
    padded[:, r:, r : r + w] = bits
    ctx = np.zeros((n, h, w), np.int64)
    for k, (di, dj) in enumerate(template):
        ctx |= padded[:, r + di : r + di + h, r + dj : r + dj + w] << k
    contexts = 2 ** len(template)
    out = np.empty(n, np.float64)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        cell = (np.arange(m)[:, None, None] * contexts + ctx[start : start + m]) * 2 + bits[start : start + m]
        counts = np.bincount(cell.ravel(), minlength=m * contexts * 2).reshape(m, contexts, 2).astype(np.float64)
        log_p = (gammaln(counts[..., 0] + 0.5) + gammaln(counts[..., 1] + 0.5) - 2 * gammaln(0.5)
                 - gammaln(counts.sum(-1) + 1))  # (m, contexts); 0 for unused contexts
        out[start : start + m] = -log_p.sum(-1) / math.log(2)
    return out


def _binary(x: np.ndarray) -> bool:
    return bool(np.all((x == 0) | (x == 1)))


def _binary_grey(x: np.ndarray) -> bool:
    """Whether x is binary greyscale images (N, H, W, 1): every pixel 0 or 1."""
    return x.ndim == 4 and x.shape[-1] == 1 and _binary(x)


def compressed_bits(x: np.ndarray) -> np.ndarray:
    """L(x) of the complexity score: `context_bits` for binary greyscale images (N, H, W, 1),
    `png_bits` for any other images."""
    x = np.asarray(x)
    return context_bits(x) if _binary_grey(x) else png_bits(x)


def png_bits(x: np.ndarray) -> np.ndarray:
    """L(x) of Serra et al. 2020: bits of each image (N, H, W, C) in [0, 1] as a PNG, zlib level 9.

    Binary greyscale images (every pixel 0 or 1, one channel) are compressed as 1-bit PNGs, the
    compressor's natural format for them; anything else as 8-bit pixels. (On binarized MNIST the
    8-bit encoding of binary images over-weights L(x): one-class mean AUROC 91.1 against 94.6
    with 1-bit, docs/using.md; `compressed_bits` uses `context_bits` for binary images.)
    """
    from PIL import Image

    from vaekit.plots import to_uint8

    x = np.asarray(x)
    binary = _binary_grey(x)
    pixels = to_uint8(x)
    if binary:
        pixels = pixels[..., 0] > 0
    elif pixels.ndim == 4 and pixels.shape[-1] in (1, 3, 4):
        pixels = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    elif pixels.ndim == 4:  # other channel counts: channels side by side, one greyscale image
        pixels = np.concatenate(np.moveaxis(pixels, -1, 0), axis=-1)
    out = np.empty(len(pixels), np.float64)
    for i, p in enumerate(pixels):
        buf = io.BytesIO()
        (Image.fromarray(p).convert("1") if binary else Image.fromarray(p)).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell()
    return out


def reconstruction_errors(model, data: dict, batch_size: int = 500) -> np.ndarray:
    """Per-example sum of squared errors between x and model.reconstruct(x, y): (N,)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    graphdef, state = nnx.split(model)

    @jax.jit
    def err(st, xb, yb):
        x_hat = nnx.merge(graphdef, st).reconstruct(xb, yb)
        d = (x_hat.reshape(x_hat.shape[0], -1) - xb.reshape(xb.shape[0], -1).astype(x_hat.dtype)) ** 2
        return jnp.sum(d, axis=1)

    x, y = np.asarray(data["x"]), data.get("y")
    n, b = len(x), min(batch_size, len(x))
    out = []
    for start in range(0, n, b):
        idx = np.minimum(np.arange(start, start + b), n - 1)  # one compiled shape
        yb = None if y is None else jnp.asarray(np.asarray(y)[idx])
        out.append(np.asarray(err(state, jnp.asarray(x[idx]), yb))[: min(b, n - start)])
    return np.concatenate(out).astype(np.float64)


def _scores_given_condition(model, data, samples, batch_size, chunk, seed, likelihood, progress):
    out = {}
    if likelihood:
        est = log_likelihood(model, data, samples=samples, chunk=chunk, batch_size=batch_size, seed=seed,
                             progress=progress)
        out["log_px"], out["elbo"] = est["log_px"], est["elbo"]
    out["recon_error"] = reconstruction_errors(model, data)
    return out


def anomaly_scores(model, data: dict, *, samples: int = DEFAULT_SAMPLES, num_classes: int | None = None,
                   reference: dict | None = None, likelihood: bool | None = None, batch_size: int = 100,
                   chunk: int = 100, seed: int = EVAL_SEED, progress=None) -> dict[str, np.ndarray]:
    """Per-example anomaly scores (N,) of `data` ({"x": (N, ...), and any per-example arrays the
    model takes, "y" being a conditional model's labels}); larger is more anomalous.

    samples: importance samples k per example for `nll` and `neg_elbo`.
    num_classes: a conditional model's classes, needed to marginalize when `data` has no "y".
    reference: normal data {"x", ...} for the `typicality` score (None: no typicality).
    likelihood: compute the likelihood scores (default: when the model has a likelihood bound;
        True on a model without one is a one-line error).
    progress: an optional callable advanced with the number of examples scored.
    Returns {name: (N,) float64} for the names of SCORES that apply (complexity: images only).
    """
    from vaekit.models import require

    if samples < 1:
        raise VaekitError(f"--samples must be >= 1, got {samples}")
    if likelihood is None:
        likelihood = bool(model.capabilities.likelihood_bound)
    elif likelihood:
        require(model, "likelihood_bound", "likelihood anomaly scores")
    data = {k: np.asarray(v) for k, v in data.items()}
    conditional = model.capabilities.conditional
    if conditional and "y" not in data:
        if not num_classes:
            raise VaekitError("a conditional model without labels is scored over its classes: num_classes is needed")
        per_class = []
        for c in range(num_classes):
            labelled = dict(data, y=np.full(len(data["x"]), c, np.int32))
            per_class.append(_scores_given_condition(model, labelled, samples, batch_size, chunk, seed, likelihood,
                                                     progress))
        parts = {"recon_error": np.min([p["recon_error"] for p in per_class], axis=0)}
        if likelihood:
            from scipy.special import logsumexp

            for key in ("log_px", "elbo"):
                parts[key] = logsumexp([p[key] for p in per_class], axis=0) - math.log(num_classes)
    else:
        if not conditional:
            data.pop("y", None)  # an unconditional model takes no labels
        parts = _scores_given_condition(model, data, samples, batch_size, chunk, seed, likelihood, progress)

    scores = {}
    if likelihood:
        scores["nll"] = -parts["log_px"]
        scores["neg_elbo"] = -parts["elbo"]
    scores["recon_error"] = parts["recon_error"]
    x = data["x"]
    if likelihood and x.ndim == 4:
        scores["complexity"] = scores["nll"] / math.log(2) - compressed_bits(x)
    if likelihood and reference is not None:
        ref = anomaly_scores(model, reference, samples=samples, num_classes=num_classes, likelihood=True,
                             batch_size=batch_size, chunk=chunk, seed=seed + 1)
        scores["typicality"] = np.abs(scores["nll"] - float(np.mean(ref["nll"])))
    return scores


# --------------------------------------------------------------------------- targets and metrics


def anomaly_targets(y, normal_label: int | None = None) -> np.ndarray:
    """Boolean (N,) "is an anomaly" from labels: 1/0 flags, or class labels with `normal_label` normal."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise VaekitError(f"labels must have shape (N,), got {y.shape}")
    if normal_label is not None:
        if normal_label not in set(np.unique(y).tolist()):
            raise VaekitError(f"--normal-label {normal_label} does not occur in the labels "
                              f"(classes: {', '.join(map(str, np.unique(y)[:20]))})")
        return y != normal_label
    values = set(np.unique(y).tolist())
    if not values <= {0, 1}:
        raise VaekitError(f"y must mark anomalies with 1 and normal examples with 0 (found values "
                          f"{', '.join(map(str, sorted(values)[:10]))}); for class labels give --normal-label C")
    return y == 1


def auroc_auprc(score: np.ndarray, is_anomaly: np.ndarray) -> dict[str, float]:
    """AUROC and AUPRC (average precision, anomalies positive) of one score; one line when undefined."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    is_anomaly = np.asarray(is_anomaly, bool)
    if is_anomaly.all() or not is_anomaly.any():
        which = "anomalous (1)" if is_anomaly.all() else "normal (0)"
        raise VaekitError(f"AUROC needs both normal and anomalous examples; all {len(is_anomaly)} labels are {which}")
    score = np.asarray(score, np.float64)
    if not np.all(np.isfinite(score)):
        raise VaekitError(f"{int(np.sum(~np.isfinite(score)))} anomaly scores are not finite")
    return {"auroc": float(roc_auc_score(is_anomaly, score)),
            "auprc": float(average_precision_score(is_anomaly, score)),
            "anomaly_fraction": float(is_anomaly.mean())}


def score_metrics(scores: dict[str, np.ndarray], is_anomaly: np.ndarray) -> dict[str, dict[str, float]]:
    """{score name: {"auroc", "auprc", "anomaly_fraction"}} for every score."""
    return {name: auroc_auprc(s, is_anomaly) for name, s in scores.items()}


# --------------------------------------------------------------------------- a run


def score_run(run, *, data: str | Path | None = None, split: str | None = None, normal_label: int | None = None,
              samples: int = DEFAULT_SAMPLES, limit: int | None = None, typicality: bool = True,
              batch_size: int = 100, seed: int = EVAL_SEED, progress: bool = False, write: bool = True) -> dict:
    """Score an .npz file (`data`) or a split of the run's data and, with labels, measure the scores.

    The data is prepared as the run's evaluation data (`vaekit.evaluate.embed.examples`: shape checked
    against the run, binarized with the evaluation seed for a binarized model). A conditional
    model is scored under `normal_label` when given ("how well does x fit the normal class"),
    else by its class-marginal likelihood (the labels of anomaly data are flags, not classes).
    With `write`, the summary (metrics per score) is merged into the run's anomaly.json.

    Returns {"scores": {name: (N,)}, "y": labels or None, "is_anomaly": (N,) bool or None,
    "metrics": {name: {"auroc", "auprc", ...}} (empty without labels), "summary": dict}.
    """
    from vaekit.runs.layout import read_json, write_json_atomic
    from vaekit.evaluate.embed import examples
    from vaekit.progress import progress_bar

    arrays = examples(run, data=data, split=split, limit=limit)
    x, y = arrays["x"], arrays.get("y")
    if normal_label is not None and y is None:
        raise VaekitError("--normal-label needs labels 'y' in the data")
    is_anomaly = None if y is None else anomaly_targets(y, normal_label)
    if is_anomaly is not None and (is_anomaly.all() or not is_anomaly.any()):
        auroc_auprc(np.zeros(len(is_anomaly)), is_anomaly)  # the one-line error, before any scoring
    model = run.model
    batch = {"x": x}
    if model.capabilities.conditional and normal_label is not None:
        batch["y"] = np.full(len(x), normal_label, np.int32)
    reference = None
    if typicality and model.capabilities.likelihood_bound:
        ref = run.data().examples("val", REFERENCE_EXAMPLES)
        reference = {"x": ref["x"]}
        if "y" in batch:
            reference["y"] = np.full(len(ref["x"]), normal_label, np.int32)
    passes = (run.spec.num_classes or 1) if model.capabilities.conditional and "y" not in batch else 1
    t0 = time.perf_counter()
    bar = progress_bar(progress, "anomaly scores", "images")
    with bar:
        task = bar.add_task("score", total=len(x) * passes, status=f"k = {samples}")
        scores = anomaly_scores(model, batch, samples=samples, num_classes=run.spec.num_classes, reference=reference,
                                batch_size=batch_size, seed=seed, progress=lambda k: bar.update(task, advance=k))
    seconds = time.perf_counter() - t0
    metrics = score_metrics(scores, is_anomaly) if is_anomaly is not None else {}
    source = f"data {Path(data).name}" if data is not None else f"split {split}"
    summary = {"source": source, "examples": int(len(x)), "samples": samples, "normal_label": normal_label,
               "anomalies": None if is_anomaly is None else int(is_anomaly.sum()), "checkpoint": run.checkpoint,
               "seconds": seconds, "metrics": metrics,
               "conditional": "marginal over classes" if passes > 1 else bool(model.capabilities.conditional)}
    if write and metrics:
        path = Path(run.path) / "anomaly.json"
        results = read_json(path) if path.exists() else {}
        key = source + (f" normal {normal_label}" if normal_label is not None else "") + f" k{samples} n{len(x)}"
        results[key] = summary
        write_json_atomic(path, results)
    return {"scores": scores, "y": y, "is_anomaly": is_anomaly, "metrics": metrics, "summary": summary}


def write_scores(path: str | Path, scores: dict[str, np.ndarray], y=None, is_anomaly=None) -> Path:
    """Write per-example scores to .npz (one array per score, plus y and is_anomaly) or .csv (a
    header row, one row per example), atomically: nothing is left behind on an error."""
    from vaekit.runs.layout import atomic_write

    path = Path(path)
    cols = {"index": np.arange(len(next(iter(scores.values()))))}
    if y is not None:
        cols["y"] = np.asarray(y)
    if is_anomaly is not None:
        cols["is_anomaly"] = np.asarray(is_anomaly).astype(np.int8)
    cols |= scores

    def write(tmp):
        if path.suffix.lower() == ".npz":
            with open(tmp, "wb") as f:
                np.savez(f, **{k: v for k, v in cols.items() if k != "index"})
        else:
            with open(tmp, "w") as f:
                f.write(",".join(cols) + "\n")
                rows = zip(*[v.tolist() for v in cols.values()])
                f.writelines(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n"
                             for row in rows)

    atomic_write(path, write)
    return path


__all__ = ["JBIG_TEMPLATE", "SCORES", "anomaly_scores", "anomaly_targets", "auroc_auprc", "compressed_bits",
           "context_bits", "png_bits", "reconstruction_errors",
           "score_metrics", "score_run", "write_scores"]
