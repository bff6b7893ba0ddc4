"""Importance-sampled log-likelihood and IWAE bounds, for any model with `log_weights`.

For each example x and k draws z_i ~ q(z|x), with log weights log w_i = log p(x, z_i) - log q(z_i|x):

    log p(x) ~= log (1/k) sum_i w_i        (Burda et al. 2015; a lower bound in expectation,
                                             converging to log p(x) as k grows)
    ELBO     ~= (1/k) sum_i log w_i        (unbiased; the k = 1 bound averaged over all draws)
    IWAE_m   ~= mean over groups of m draws of log (1/m) sum w   (the m-sample bound, averaged over
                                             every disjoint group of m draws within each chunk)

The draws come in chunks (`chunk` per example per compiled call, `batch_size` examples per call)
and are merged into per-example running sums in float64, so memory is bounded whatever k is. The
draws of example i in chunk r are keyed by (seed, i, r) alone: the result does not depend on the
batch size or on the order the chunks were computed in.

With a fixed k (the papers' protocol) every example gets k draws. With `mc_error` E > 0 each
example first takes a pilot of `min_samples` draws of its own, whose spread sizes the estimate:
n = (relative variance of w) / E^2 draws, clipped to [min_samples, k], so that the Monte Carlo
standard error of log p-hat, sd(w) / (sqrt(n) mean(w)) by the delta method, is about E. The
estimate then uses n fresh draws and never the pilot's. Stopping an example as soon as its own
draws look precise would bias it: with heavy-tailed weights, draws that have not yet met the rare
large weights both look precise and are too low (on a trained `mnist-mlp` that rule gave an NLL
0.7 nats above the fixed-k one); a number of draws fixed before they are taken keeps the estimate
an ordinary importance-sampled one. The pilot's own spread understates a heavy tail too, so the
achieved error (reported per example) can exceed E.

The estimator calls only the model interface (`log_weights`), so every model is scored by the
same code; every per-example array of the data (labels, masks) is passed to the model, so a
conditional model is scored as log p(x|y).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
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
MIN_SAMPLES = 100  # --mc-error: the pilot's draws, and the fewest an estimate uses


def _chunk_fn(graphdef, chunk: int, bounds: tuple[int, ...]):
    """Jitted (state, examples, index (S,), round (S,), key) -> per slot the chunk's weight sums.

    Slot j scores example `index[j]` with `chunk` draws keyed by (key, index[j], round[j]) alone, so
    an example's draws do not depend on the batch size or on which slot computed them. Returns
    (max log w, sum exp(log w - max), sum exp(2 (log w - max)), sum log w, and for each m in
    `bounds` the sum over the chunk's disjoint groups of m draws of log (1/m) sum w).
    """

    @jax.jit
    def run(state, batch, index, round_, key):
        model = nnx.merge(graphdef, state)

        def one(example, i, r):
            rngs = nnx.Rngs(sample=jax.random.fold_in(jax.random.fold_in(key, i), r))
            lw = model.log_weights(jax.tree.map(lambda v: v[None], example), chunk, rngs=rngs)[0]  # (chunk,)
            m = jnp.max(lw)
            e = jnp.exp(lw - m)
            groups = jnp.stack([jnp.sum(jax.nn.logsumexp(lw[: (chunk // b) * b].reshape(-1, b), axis=1) - math.log(b))
                                for b in bounds])
            return m, jnp.sum(e), jnp.sum(e * e), jnp.sum(lw), groups

        return jax.vmap(one)(batch, index, round_)

    return run


class _Weights:
    """Per-example running sums of the importance weights in float64, merged a chunk at a time.

    For n draws with log weights l_i and m = max l_i: s = sum exp(l_i - m), s2 = sum exp(2 (l_i - m)),
    so that log p-hat = m + log(s / n), and the delta-method Monte Carlo error of log p-hat is
    sd(w) / (sqrt(n) mean(w)) = sqrt((n s2 / s^2 - 1) / (n - 1)).
    """

    def __init__(self, n: int):
        self.m = np.full(n, -np.inf)
        self.s, self.s2, self.total = np.zeros(n), np.zeros(n), np.zeros(n)
        self.draws = np.zeros(n, np.int64)

    def add(self, index: np.ndarray, m, s, s2, total, draws: int) -> None:
        """Merge chunks (one per entry of `index`; an example may appear more than once)."""
        m, s, s2 = (np.asarray(a, np.float64) for a in (m, s, s2))
        new = self.m.copy()
        np.maximum.at(new, index, m)
        with np.errstate(invalid="ignore"):  # -inf - -inf: an example with no finite weight yet
            old = np.where(np.isfinite(new), np.exp(self.m - new), 0.0)
            scale = np.where(np.isfinite(new[index]), np.exp(m - new[index]), 0.0)
        self.s *= old
        self.s2 *= old * old
        np.add.at(self.s, index, s * scale)
        np.add.at(self.s2, index, s2 * scale * scale)
        np.add.at(self.total, index, np.asarray(total, np.float64))
        np.add.at(self.draws, index, draws)
        self.m = new

    def log_mean(self) -> np.ndarray:
        """log of the mean weight per example (nan where no draws were merged)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.draws > 0, self.m + np.log(self.s) - np.log(np.maximum(self.draws, 1)), np.nan)

    def mc_error(self) -> np.ndarray:
        """The Monte Carlo standard error of log p-hat per example (inf before two draws)."""
        n = self.draws.astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = np.maximum(n * self.s2 / self.s**2 - 1.0, 0.0) / (n - 1.0)
            return np.where(n > 1, np.sqrt(rel), np.inf)


class _Schedule:
    """Which (example, chunk round) each slot of the next call computes.

    Each started example holds the round ids it still needs. Every example with rounds left gets
    its next one; free slots start new examples in order; slots still free (the tail of the data)
    take further rounds of started examples, so no slot computes padding while work remains. With a
    fixed k this is the batches of the data in order, k / chunk calls each. An example whose rounds
    are not decided yet (its pilot is still being computed) gets none until they are `add`ed.
    """

    def __init__(self, n: int, slots: int, first_rounds: list[int]):
        self.n, self.slots, self.first = n, slots, first_rounds
        self.next_example = 0
        self.pending: dict[int, deque] = {}  # started, unfinished examples (oldest first) -> round ids to hand out

    def add(self, example: int, rounds) -> None:
        self.pending[example].extend(rounds)

    def finish(self, examples) -> None:
        for e in examples:
            del self.pending[int(e)]

    def next(self) -> tuple[np.ndarray, np.ndarray] | None:
        ready = [e for e, left in self.pending.items() if left]
        work = ready[: self.slots]
        while len(work) < self.slots and self.next_example < self.n:
            e = self.next_example
            self.pending[e] = deque(self.first)
            ready.append(e)
            work.append(e)
            self.next_example += 1
        ids = [self.pending[e].popleft() for e in work]
        more = True
        while len(work) < self.slots and more:  # the tail: further rounds of the ready examples
            more = False
            for e in ready:
                if len(work) < self.slots and self.pending[e]:
                    work.append(e)
                    ids.append(self.pending[e].popleft())
                    more = True
        return (np.asarray(work, np.int64), np.asarray(ids, np.int64)) if work else None


def log_likelihood(
    model: nnx.Module,
    data: dict,
    *,
    samples: int = 5000,
    chunk: int = 100,
    batch_size: int = 50,
    seed: int = EVAL_SEED,
    mc_error: float = 0.0,
    min_samples: int = MIN_SAMPLES,
    progress=None,
) -> dict[str, np.ndarray]:
    """Per-example estimates over `data` ({"x": (N, ...), and any other per-example arrays such as
    "y"}): arrays of shape (N,).

    Returns {"log_px": importance-sampled log p(x), "elbo": mean log weight, "iwae_<m>": the
    m-sample bound for m in (1, 5, 50) that fit in one chunk (over all disjoint groups), "draws":
    the draws each estimate used, "mc_error": the Monte Carlo standard error of each log_px,
    "pilot_draws": the draws that sized it, "log_px_half": the estimate from the first half of its
    chunks (nan for a single chunk)}. With `mc_error` E > 0 each example's draws are sized for that
    error by a pilot of `min_samples` other draws (module docstring), at least `min_samples` and at
    most `samples`;
    with E = 0 every example gets `samples`, the fixed k of the papers' protocol. Draws come `chunk`
    at a time for `batch_size` examples per compiled call. `progress` is an optional callable
    advanced with the number of examples finished.
    """
    if samples < 1:
        raise VaekitError(f"--samples must be >= 1, got {samples}")
    _warn_if_unconfigured()
    if batch_size < 1:
        raise VaekitError(f"--batch-size must be >= 1, got {batch_size}")
    if chunk < 1:
        raise VaekitError(f"--chunk must be >= 1, got {chunk}")
    if not mc_error >= 0:
        raise VaekitError(f"--mc-error must be >= 0 nats, got {mc_error}")
    if min_samples < 1:
        raise VaekitError(f"--min-samples must be >= 1, got {min_samples}")
    chunk = min(chunk, samples)
    if samples % chunk:
        chunk = math.gcd(samples, chunk)  # chunks must tile k exactly
    rounds = samples // chunk
    min_rounds = min(rounds, -(-min_samples // chunk))
    adaptive = mc_error > 0
    bounds = tuple(b for b in IWAE_BOUNDS if b <= chunk)
    arrays = {k: np.asarray(v) for k, v in data.items()}
    n = len(arrays["x"])
    slots = max(1, min(batch_size, n))
    graphdef, state = nnx.split(model)
    key = jax.random.PRNGKey(seed)
    # the estimate's rounds are 0, 1, ...; a pilot's are -1, -2, ... (other draws, used only to size the estimate)
    schedule = _Schedule(n, slots, [-1 - r for r in range(min_rounds)] if adaptive else list(range(rounds)))
    weights, pilot, half = _Weights(n), _Weights(n), _Weights(n)  # half: the first half of each estimate's rounds
    needed = np.full(n, -1 if adaptive else rounds)  # the estimate's rounds per example (-1: its pilot decides)
    iwae = np.zeros((n, len(bounds)))  # sums over every disjoint group of m draws of the estimate

    def merge(index, ids, out) -> None:
        m, s, s2, total, groups = (a[: len(index)] for a in jax.device_get(out))  # drop the padding slots
        main = ids >= 0
        weights.add(index[main], m[main], s[main], s2[main], total[main], chunk)
        early = main & (ids < needed[index] // 2)
        half.add(index[early], m[early], s[early], s2[early], total[early], chunk)
        np.add.at(iwae, index[main], groups[main].astype(np.float64))
        if not main.all():
            pilot.add(index[~main], m[~main], s[~main], s2[~main], total[~main], chunk)
            sized = np.unique(index[~main])
            sized = sized[pilot.draws[sized] == min_rounds * chunk]
            # draws for a Monte Carlo error of mc_error: the pilot's relative variance of w over mc_error^2
            variance = np.nan_to_num(pilot.mc_error()[sized] ** 2 * pilot.draws[sized], nan=np.inf)
            draws = np.clip(np.ceil(variance / mc_error**2), min_samples, samples)
            needed[sized] = np.minimum(-(-draws // chunk), rounds).astype(np.int64)
            for e in sized:
                schedule.add(int(e), range(needed[e]))
        touched = np.unique(index)
        done = touched[weights.draws[touched] == needed[touched] * chunk]  # its last round merged: only now
        schedule.finish(done)
        if progress is not None and len(done):
            progress(len(done))

    most_calls = -(-n * (rounds + (min_rounds if adaptive else 0)) // slots)
    fn = _chunk_fn(graphdef, chunk, bounds)
    calls, batch, batch_index, pending = 0, None, None, None
    while True:
        # Call i + 1 is scheduled and dispatched before call i's results are merged, so the device does
        # not wait for the host.
        launched = None
        if (work := schedule.next()) is not None:
            index, round_ = work
            padded = np.resize(index, slots), np.resize(round_, slots)  # fewer items than slots: pad
            if batch_index is None or not np.array_equal(padded[0], batch_index):  # fixed k: once per k / chunk calls
                batch, batch_index = {k: jnp.asarray(v[padded[0]]) for k, v in arrays.items()}, padded[0]
            args = (state, batch, jnp.asarray(padded[0], jnp.int32), jnp.asarray(padded[1], jnp.int32), key)
            if calls < 2:  # the second call's time prices the whole job (the first compiles and warms up)
                started = time.perf_counter()
                out = jax.block_until_ready(fn(*args))
                if calls == 1:
                    _say_cost(time.perf_counter() - started, most_calls, n, samples, slots, chunk, mc_error)
            else:
                out = fn(*args)
            calls += 1
            launched = index, round_, out
        if pending is not None:
            merge(*pending)
        elif launched is None:
            break  # nothing in flight and nothing to hand out: every example has finished
        pending = launched
    counts = (weights.draws // chunk)[:, None] * np.asarray([chunk // b for b in bounds])  # groups of m per chunk
    out = {"log_px": weights.log_mean(), "elbo": weights.total / weights.draws,
           **{f"iwae_{b}": iwae[:, j] / counts[:, j] for j, b in enumerate(bounds)},
           "draws": weights.draws.copy(), "mc_error": weights.mc_error(), "pilot_draws": pilot.draws.copy(),
           "log_px_half": half.log_mean()}
    return out


_warned_unconfigured = False


def _warn_if_unconfigured() -> None:
    """Once per process: say that XLA's YNNPACK fusions make this estimate ~3.5x slower on CPU."""
    global _warned_unconfigured
    from vaekit import runtime

    if not _warned_unconfigured and jax.default_backend() == "cpu" and runtime.ynn_fusions_on():
        _warned_unconfigured = True
        logging.getLogger("vaekit").warning(
            "XLA's YNNPACK fusions are on in this process: the NLL estimate runs about 3.5x slower on CPU. "
            "Call vaekit.runtime.configure() before JAX starts (the vaekit command does).")


def _say_cost(seconds: float, calls: int, n: int, samples: int, slots: int, chunk: int, mc_error: float) -> None:
    """Log the whole estimate's time from one call's: the cost up front, before a long wait."""
    total = seconds * calls
    bound = "at most " if mc_error > 0 else ""
    hint = " (--mc-error E sizes each example's draws for a Monte Carlo error of E nats; --limit N scores fewer)" \
        if total > 600 and not mc_error else ""
    logging.getLogger("vaekit").info("NLL: about %s%s for %s examples x %s draws (%.3f s per call of %d x %d draws)%s",
                                     bound, _duration(total), f"{n:,}", f"{samples:,}", seconds, slots, chunk, hint,
                                     extra={"seconds_per_call": seconds})


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


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
    mc_error: float = 0.0,
    min_samples: int | None = None,
    progress: bool = True,
    write: bool = True,
) -> dict:
    """Score a run (a `Run` or a run directory) on a split; write/merge runs/<name>/evaluation.json.

    Returns a summary dict: NLL (nats) with its standard error over examples and its Monte Carlo
    error, ELBO, IWAE bounds, bits per dimension, active units, reconstruction error, examples and
    draws, wall time. `samples` is k (fixed), or the cap of the draws per example when `mc_error`
    > 0 sizes each example's draws for that Monte Carlo error (see `log_likelihood`).
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
    min_samples = MIN_SAMPLES if min_samples is None else min_samples
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
                             mc_error=mc_error, min_samples=min_samples, progress=lambda k: bar.update(task, advance=k))
    seconds = time.perf_counter() - t0
    x, y = np.asarray(data["x"]), data.get("y")
    y = None if y is None or not conditional else np.asarray(y)
    dims = math.prod(x.shape[1:])
    nll = -est["log_px"]
    summary = {
        "split": split,
        "checkpoint": run.checkpoint,
        "checkpoint_epoch": run.checkpoint_epoch,  # `vaekit info` marks the result stale once a newer one replaces it
        "examples": n,
        "samples": samples,
        "nll": float(nll.mean()),
        "nll_stderr": float(nll.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan"),
        # the Monte Carlo sd of the mean NLL (examples' draws independent) and per example (none from one draw)
        **({"nll_mc_error": float(np.sqrt(np.sum(est["mc_error"] ** 2)) / n), "mc_error_mean": float(est["mc_error"].mean()),
            "mc_error_max": float(est["mc_error"].max())}
           if samples > 1 else {"nll_mc_error": None, "mc_error_mean": None, "mc_error_max": None}),
        # the NLL from the first half of every example's draws: how much the last doubling of k moved it
        # (the estimate is biased high, by less each doubling; this is what the bias shrank by)
        **({"nll_half_draws": float(-np.mean(est["log_px_half"])),
            "nll_last_doubling": float(-np.mean(est["log_px_half"]) - nll.mean())}
           if np.all(np.isfinite(est["log_px_half"])) else {"nll_half_draws": None, "nll_last_doubling": None}),
        "mc_error_target": mc_error,  # 0: a fixed k for every example
        "min_samples": min_samples,
        "draws_mean": float(est["draws"].mean()),
        "draws_max": int(est["draws"].max()),
        "pilot_draws_mean": float(est["pilot_draws"].mean()),  # draws that sized the estimate (--mc-error)
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
        results[f"{split}-k{samples}-n{n}" + (f"-e{mc_error:g}" if mc_error else "")] = summary
        write_json_atomic(path, results)
    return summary
