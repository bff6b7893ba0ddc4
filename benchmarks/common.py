"""Helpers shared by vaekit's benchmark scripts (run them in the main venv, ``.venv``).

* :func:`matmul_flops_per_s` -- the machine's float32 matmul rate with JAX on CPU, a
  yardstick to express a training throughput as a fraction of what the CPU can do;
* :func:`mlp_vae_flops_per_example` -- forward+backward FLOPs of one training example
  of the MLP VAE (``mnist-mlp``: 784-200-200-50);
* :func:`seconds_per_step` -- a vaekit `Trainer`'s time per optimizer step, after compilation;
* :func:`run_peer` -- runs the Pythae (PyTorch) peer, ``benchmarks/peers/pythae_mnist.py``,
  in its own venv ``.venv-bench`` as a subprocess and returns its JSON, so a vaekit
  benchmark can measure both libraries in the same run.

Import from a script in ``benchmarks/`` with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import matmul_flops_per_s, mlp_vae_flops_per_example, run_peer

This module imports JAX only inside :func:`matmul_flops_per_s` and :func:`seconds_per_step`,
so the other helpers work in any Python.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
#: The peer's interpreter: the separate venv that holds torch and pythae.
BENCH_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
PEER_SCRIPT = BENCH_DIR / "peers" / "pythae_mnist.py"


def seconds_per_step(cfg, steps: int) -> float:
    """Wall seconds per optimizer step of a vaekit `Trainer` for `cfg`, after compilation.

    One chunk of `steps` steps compiles (and warms up), the next chunk of `steps` is timed up to
    the host reading its metrics, as `Trainer.fit_epoch` does.
    """
    import vaekit  # noqa: F401  (first: its XLA CPU settings must be in place before JAX starts)
    import jax
    from vaekit.data import load_configured
    from vaekit.train import Trainer

    tr = Trainer(cfg, load_configured(cfg.data))
    idx = tr.epoch_indices(0, 2 * steps)
    state, metrics = tr._chunk(tr.state, tr.train_data, idx[:steps])
    jax.device_get(metrics)
    t0 = time.perf_counter()
    state, metrics = tr._chunk(state, tr.train_data, idx[steps:])
    jax.device_get(metrics)
    return (time.perf_counter() - t0) / steps


def matmul_flops_per_s(n: int = 2048, repeats: int = 10, dtype: str = "float32") -> float:
    """Best-of-``repeats`` FLOP/s of an ``n x n`` by ``n x n`` matmul with JAX on CPU.

    The product is jitted, compiled and run once as warm-up; each timed call ends with
    ``block_until_ready``. FLOPs of one product: ``2 * n**3`` (a multiply and an add per
    term). The best time is used (the least disturbed by other processes); JAX uses
    every core it sees, so on this machine the number is for both cores.
    """
    import vaekit  # noqa: F401  (first: its XLA CPU settings must be in place before JAX starts)
    import jax
    import jax.numpy as jnp

    cpu = jax.devices("cpu")[0]
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.device_put(jax.random.normal(key_a, (n, n), dtype=dtype), cpu)
    b = jax.device_put(jax.random.normal(key_b, (n, n), dtype=dtype), cpu)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()  # compile + warm-up
    matmul(a, b).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        matmul(a, b).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / best


def mlp_vae_flops_per_example(sizes: Sequence[int] = (784, 200, 200, 50)) -> int:
    """Matmul FLOPs of one training example (forward + backward) of an MLP VAE.

    ``sizes = (input, *hidden, latent)``. The encoder is ``input -> hidden... -> 2*latent``
    (posterior mean and log-variance/scale from one last layer, as vaekit builds it; two
    heads of ``latent`` outputs each cost the same), the decoder ``latent -> reversed
    hidden... -> input`` (one output per pixel: Bernoulli logits).

    Convention: a dense layer ``in -> out`` costs ``2 * in * out`` FLOPs forward (a
    multiply and an add per weight); the backward pass costs twice the forward (the
    gradient with respect to the inputs and with respect to the weights, each a matmul
    the size of the forward one), so a training example costs ``3 x`` the forward.
    Biases, activations, the reparameterisation, the loss and the optimizer update are
    elementwise, O(units) rather than O(weights), and are not counted. (The backward of
    the first encoder layer does not need the input gradient; it is counted anyway, as
    is usual.) For ``(784, 200, 200, 50)``: forward 847,200, training 2,541,600 FLOPs.
    """
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) < 2:
        raise ValueError("sizes needs at least (input, latent)")
    inp, *hidden, latent = sizes
    enc = (inp, *hidden, 2 * latent)
    dec = (latent, *reversed(hidden), inp)
    forward = sum(2 * a * b for net in (enc, dec) for a, b in zip(net[:-1], net[1:]))
    return 3 * forward


def _peer_argv(args: Sequence[str] | Mapping[str, object] | None) -> list[str]:
    """CLI arguments for the peer from a list of strings or a {option: value} mapping.

    Mapping keys are option names without dashes, underscores allowed
    (``{"epochs": 2, "nll_samples": 1000, "quiet": True}``); ``True`` gives a bare flag,
    ``False``/``None`` omits the option.
    """
    if args is None:
        return []
    if isinstance(args, Mapping):
        argv: list[str] = []
        for key, value in args.items():
            opt = "--" + str(key).replace("_", "-")
            if value is None or value is False:
                continue
            if value is True:
                argv.append(opt)
            else:
                argv += [opt, str(value)]
        return argv
    return [str(a) for a in args]


def run_peer(args: Sequence[str] | Mapping[str, object] | None = None, *, python: str | os.PathLike | None = None,
             timeout: float | None = None, echo: bool = False) -> dict:
    """Run the Pythae peer benchmark in ``.venv-bench`` and return its JSON as a dict.

    Args:
        args: the peer's CLI options, as a list (``["--epochs", "2"]``) or a mapping
            (``{"epochs": 2, "nll_samples": 1000, "nll_limit": 1000}``). Do not pass
            ``--json``: this function adds it.
        python: the interpreter to use; default ``.venv-bench/bin/python`` (override
            with the ``VAEKIT_BENCH_PYTHON`` environment variable or this argument).
        timeout: seconds before the subprocess is killed (``None``: no limit).
        echo: stream the peer's stdout/stderr (its table, Pythae's log and progress
            bars) to this process's stderr instead of capturing them.

    Returns:
        The peer's result (see ``benchmarks/peers/pythae_mnist.py``): ``examples_per_s``,
        ``epochs``, ``train_seconds``, ``nll``, ``nll_seconds``, ``nll_k``, ``nll_n``,
        ``torch``, ``pythae`` and more.

    Raises:
        FileNotFoundError: the bench venv is missing (see ``benchmarks/README.md``).
        RuntimeError: the peer exited non-zero; the message holds its last output.
    """
    interpreter = Path(python or os.environ.get("VAEKIT_BENCH_PYTHON") or BENCH_PYTHON)
    if not interpreter.exists():
        raise FileNotFoundError(
            f"{interpreter} not found: create the benchmark venv first (see {BENCH_DIR / 'README.md'})"
        )
    argv = _peer_argv(args)
    if "--json" in argv:
        raise ValueError("run_peer adds --json itself")
    with tempfile.TemporaryDirectory(prefix="vaekit-peer-") as tmp:
        out = Path(tmp) / "peer.json"
        cmd = [str(interpreter), str(PEER_SCRIPT), *argv, "--json", str(out)]
        # The peer must not see this venv's site-packages or a PYTHONPATH meant for it.
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            timeout=timeout,
            stdout=sys.stderr if echo else subprocess.PIPE,
            stderr=sys.stderr if echo else subprocess.STDOUT,
            text=True,
        )
        if proc.returncode != 0:
            tail = "" if echo else (proc.stdout or "")[-4000:]
            raise RuntimeError(f"peer benchmark failed (exit {proc.returncode}): {' '.join(cmd)}\n{tail}")
        return json.loads(out.read_text())


if __name__ == "__main__":  # quick look: python benchmarks/common.py
    f = matmul_flops_per_s()
    per_ex = mlp_vae_flops_per_example()
    print(f"float32 matmul 2048^3: {f / 1e9:.1f} GFLOP/s")
    print(f"mnist-mlp training FLOPs/example: {per_ex:,} -> ceiling {f / per_ex:,.0f} examples/s at matmul speed")
