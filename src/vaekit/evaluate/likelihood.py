"""Importance-sampled log-likelihood and IWAE bounds, for any model with `log_weights`.

For each example x and k draws z_i ~ q(z|x), with log weights log w_i = log p(x, z_i) - log q(z_i|x):

    log p(x) ~= log (1/k) sum_i w_i        (Burda et al. 2015; a lower bound in expectation,
                                             converging to log p(x) as k grows)
    ELBO     ~= (1/k) sum_i log w_i        (unbiased; the k = 1 bound averaged over all draws)
    IWAE_m   ~= mean over groups of m draws of log (1/m) sum w   (the m-sample bound)

The draws are taken in chunks (`chunk` at a time, a `lax.scan` inside one jitted call per batch
of examples) and reduced with a streaming logsumexp, so memory is bounded whatever k is. The
estimator calls only the model interface (`log_weights`, `encode`), so every model is scored by
the same code; every per-example array of the data (labels, masks) is passed to the model, so a
conditional model is scored as log p(x|y).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vaekit.errors import VaekitError
from vaekit.core.metrics import ACTIVE_UNIT_VARIANCE, active_unit_count, active_units_per_layer
from vaekit.progress import progress_bar

IWAE_BOUNDS = (1, 5, 50)
EVAL_SEED = 20151102  # seed of the posterior draws of every evaluation (results are reproducible)


def _batch_fn(graphdef, k: int, chunk: int, bounds: tuple[int, ...]):
    """Jitted (state, batch, key) -> per-example (log-mean-exp of k weights, mean log w, IWAE bounds)."""
    n_chunks = k // chunk

    @jax.jit
    def run(state, batch, key):
        model = nnx.merge(graphdef, state)

        def body(carry, i):
            m, s, total = carry  # running max, sum of exp(lw - m), sum of lw; each (B,)
            lw = model.log_weights(batch, chunk, rngs=nnx.Rngs(sample=jax.random.fold_in(key, i)))  # (B, chunk)
            m_new = jnp.maximum(m, jnp.max(lw, axis=1))
            s = s * jnp.exp(m - m_new) + jnp.sum(jnp.exp(lw - m_new[:, None]), axis=1)
            return (m_new, s, total + jnp.sum(lw, axis=1)), lw[:, : max(bounds)]

        b = batch["x"].shape[0]
        init = (jnp.full((b,), -jnp.inf), jnp.zeros((b,)), jnp.zeros((b,)))
        (m, s, total), first = jax.lax.scan(body, init, jnp.arange(n_chunks))
        log_px = m + jnp.log(s) - math.log(k)
        lw0 = first[0]  # (B, max(bounds)): the first chunk's draws, grouped m at a time per bound
        iwae = {
            m_: jnp.mean(jax.nn.logsumexp(lw0[:, : (lw0.shape[1] // m_) * m_].reshape(b, -1, m_), axis=-1), axis=1)
            - math.log(m_)
            for m_ in bounds
        }
        return log_px, total / k, iwae

    return run


def log_likelihood(
    model: nnx.Module,
    data: dict,
    *,
    samples: int = 5000,
    chunk: int = 100,
    batch_size: int = 50,
    seed: int = EVAL_SEED,
    progress=None,
) -> dict[str, np.ndarray]:
    """Per-example estimates over `data` ({"x": (N, ...), and any other per-example arrays such as
    "y"}): arrays of shape (N,).

    Returns {"log_px": importance-sampled log p(x) with `samples` draws, "elbo": mean log weight,
    "iwae_<m>": the m-sample bound for m in (1, 5, 50) that fit in one chunk}. `progress` is an
    optional callable advanced with the number of examples done.
    """
    if samples < 1:
        raise VaekitError(f"--samples must be >= 1, got {samples}")
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be >= 1, got {batch_size}")
    chunk = min(chunk, samples)
    if samples % chunk:
        chunk = math.gcd(samples, chunk)  # chunks must tile k exactly
    bounds = tuple(b for b in IWAE_BOUNDS if b <= chunk)
    graphdef, state = nnx.split(model)
    fn = _batch_fn(graphdef, samples, chunk, bounds)
    arrays = {k: np.asarray(v) for k, v in data.items()}
    n = len(arrays["x"])
    key = jax.random.PRNGKey(seed)
    out = {"log_px": [], "elbo": [], **{f"iwae_{b}": [] for b in bounds}}
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        # pad the last batch to the compiled shape (padding rows are dropped below)
        idx = np.minimum(np.arange(start, start + batch_size), n - 1)
        batch = {k: jnp.asarray(v[idx]) for k, v in arrays.items()}
        log_px, elbo, iwae = jax.device_get(fn(state, batch, jax.random.fold_in(key, start)))
        keep = stop - start
        out["log_px"].append(log_px[:keep])
        out["elbo"].append(elbo[:keep])
        for b in bounds:
            out[f"iwae_{b}"].append(iwae[b][:keep])
        if progress is not None:
            progress(keep)
    return {k: np.concatenate(v).astype(np.float64) for k, v in out.items()}


def _rows(a: np.ndarray | None, start: int, size: int):
    """Rows start..start+size of a host array as a device array (None stays None: no labels)."""
    return None if a is None else jnp.asarray(a[start : start + size])


def posterior_mean_fn(model: nnx.Module, batch_size: int = 512) -> Callable[..., np.ndarray]:
    """A function (x (N, ...)[, y (N,)]) -> E_q[z|x[, y]] (N, D) on the host, compiled once per batch shape.

    Build it once and call it many times (the disentanglement metrics encode hundreds of small
    batches); each call of :func:`posterior_means` compiles afresh.
    """
    graphdef, state = nnx.split(model)
    mean = jax.jit(lambda st, xb, yb: nnx.merge(graphdef, st).encode(xb, yb).mean)

    def encode(x: np.ndarray, y: np.ndarray | None = None) -> np.ndarray:
        return np.concatenate([np.asarray(mean(state, _rows(x, i, batch_size), _rows(y, i, batch_size)))
                               for i in range(0, len(x), batch_size)])

    return encode


def posterior_means(model: nnx.Module, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 512) -> np.ndarray:
    """E_q[z|x[, y]] for data (N, ...), jitted, in batches: (N, D) on the host."""
    return posterior_mean_fn(model, batch_size)(x, y)


def active_units(model: nnx.Module, x: np.ndarray, y: np.ndarray | None = None,
                 threshold: float = ACTIVE_UNIT_VARIANCE) -> tuple[int, np.ndarray]:
    """Burda et al. 2015: unit u is active when Var_x(E_q[u|x]) > threshold. Returns (count, variances)."""
    var = posterior_means(model, x, y).var(axis=0)
    return int(np.sum(var > threshold)), var


def reconstruction_error(model: nnx.Module, x: np.ndarray, y: np.ndarray | None = None, batch_size: int = 1000) -> float:
    """Mean squared error per data entry between data and its reconstructions (posterior mean)."""
    graphdef, state = nnx.split(model)
    rec = jax.jit(lambda st, xb, yb: jnp.sum((nnx.merge(graphdef, st).reconstruct(xb, yb) - xb) ** 2))
    total = sum(float(rec(state, _rows(x, i, batch_size), _rows(y, i, batch_size))) for i in range(0, len(x), batch_size))
    return total / (len(x) * math.prod(x.shape[1:]))


def token_summary(model: nnx.Module, data: dict, nll: np.ndarray, batch_size: int = 500) -> dict:
    """Per-word figures of token data from per-sentence NLLs (N,): {"tokens", "nll_per_token",
    "perplexity"} and, for a model with a latent vector, the mean "kl" of its loss metrics.

    The token count: every word and the <eos> of every sentence, never padding;
    perplexity = exp(total NLL / tokens), the convention of Bowman et al. 2016."""
    from vaekit.core import metrics as metrics_lib
    from vaekit.data.text import sentence_lengths
    from vaekit.training.rngs import step_rngs

    count = float(sentence_lengths(data["x"]).sum())
    out = {"tokens": int(count), "nll_per_token": float(nll.sum() / count),
           "perplexity": float(math.exp(nll.sum() / count))}
    if model.capabilities.latent_vector:
        graphdef, state = nnx.split(model)
        step = jax.jit(lambda st, b, key: nnx.merge(graphdef, st).loss(b, rngs=step_rngs(key), step=jnp.asarray(0))[1])
        acc = metrics_lib.Accumulator()
        n = len(data["x"])
        for i, start in enumerate(range(0, n, batch_size)):
            batch = {k: jnp.asarray(np.asarray(v)[start : start + batch_size]) for k, v in data.items()}
            acc.add(jax.device_get(step(state, batch, jax.random.PRNGKey(EVAL_SEED + i))))
        result = acc.result()
        if "kl" in result:
            out["kl"] = float(result["kl"])
    return out


def evaluate(
    run,
    *,
    split: str = "test",
    samples: int = 5000,
    limit: int | None = None,
    batch_size: int = 50,
    chunk: int = 100,
    seed: int = EVAL_SEED,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """Score a run (a `Run` or a run directory) on a split; write/merge runs/<name>/evaluation.json.

    Returns a summary dict: NLL (nats) with its standard error, ELBO, IWAE bounds, bits per
    dimension, active units, reconstruction error, examples and draws, wall time.
    """
    from vaekit.runs.run import Run, load_run
    from vaekit.runs.layout import read_json, write_json_atomic

    if not isinstance(run, Run):
        run = load_run(run)
    if split not in ("train", "val", "test"):
        raise VaekitError(f"--split must be train, val or test, got '{split}'")
    if limit is not None and limit <= 0:
        raise VaekitError(f"--limit must be positive, got {limit}")
    from vaekit.core.distributions import DISCRETE_LIKELIHOODS
    from vaekit.models import require

    require(run.model, "likelihood_bound", "vaekit evaluate")
    kind = run.model.capabilities.log_weights  # "bound"/"exact": no posterior draws, every draw is the same
    if kind != "sampled" and samples > 1:
        logging.getLogger("vaekit").info("model.kind %s gives an %s log-likelihood (no posterior draws): scoring it "
                                         "once per example instead of --samples %d", run.model.kind,
                                         "exact" if kind == "exact" else "exact bound on the", samples)
        samples = 1
    data = run.data().examples(split, limit)
    n = len(data["x"])
    model = run.model
    conditional = model.capabilities.conditional
    model.eval()
    t0 = time.perf_counter()
    bar = progress_bar(progress, "NLL", "images")
    with bar:
        task = bar.add_task("nll", total=n, status="")
        est = log_likelihood(model, data, samples=samples, chunk=chunk, batch_size=batch_size, seed=seed,
                             progress=lambda k: bar.update(task, advance=k))
    seconds = time.perf_counter() - t0
    x, y = np.asarray(data["x"]), data.get("y")
    y = None if y is None or not conditional else np.asarray(y)
    dims = math.prod(x.shape[1:])
    nll = -est["log_px"]
    summary = {
        "split": split,
        "checkpoint": run.checkpoint,
        "examples": n,
        "samples": samples,
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        "elbo": float(est["elbo"].mean()),
        **{f"iwae_k{b}": float(est[f"iwae_{b}"].mean()) for b in IWAE_BOUNDS if f"iwae_{b}" in est},
        "conditional": conditional,  # the NLL is -log p(x|y) for a conditional model
        "nll_is_bound": kind == "bound",  # "nll" is the deterministic bound's value, not an estimate
        "latent_dim": int(model.latent_dim),  # the code's size
        "seconds": seconds,
        "binarize": run.config.data.binarize,
        "seed": seed,
    }
    tokens = run.spec.kind == "tokens"
    if tokens:  # sentences: per word, counting <eos> (a sentence of L words has L + 1 predicted tokens)
        summary |= token_summary(model, data, nll, batch_size=max(batch_size, 100))
    else:
        summary["reconstruction_mse"] = reconstruction_error(model, x, y)
    if run.config.model.likelihood in DISCRETE_LIKELIHOODS and not tokens:  # a density of continuous data has no bits/dim
        summary["bits_per_dim"] = float(nll.mean() / (dims * math.log(2)))
    if model.capabilities.latent_vector:
        codes = posterior_means(model, x, y)
        summary["active_units"] = active_unit_count(codes)
        layers = active_units_per_layer(codes, model.latent_layers)  # per stochastic layer
        summary |= {f"active_units_{layer}": count for layer, count in layers.items()}
    if write:
        path = Path(run.path) / "evaluation.json"
        results = read_json(path) if path.exists() else {}
        results[f"{split}-k{samples}-n{n}"] = summary
        write_json_atomic(path, results)
    return summary
