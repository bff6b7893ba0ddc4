"""Helpers shared by vaekit's benchmark scripts (run them in the main venv, ``.venv``).

* :func:`matmul_flops_per_s` -- the machine's float32 matmul rate with JAX on CPU, a
  yardstick to express a training throughput as a fraction of what the CPU can do;
* :func:`mlp_vae_flops_per_example` -- forward+backward FLOPs of one training example
  of the MLP VAE (``mnist-mlp``: 784-200-200-50);
* :func:`seconds_per_step` -- a vaekit `Trainer`'s time per optimizer step, after compilation;
* :func:`trainer_step_timer` -- the same, as a callable that times one more chunk per call, so
  that several variants (and a peer) can be timed in alternation;
* :func:`run_peer` -- runs a PyTorch peer in its own venv ``.venv-bench`` as a subprocess and
  returns its JSON, so a vaekit benchmark can measure both in the same run: Pythae
  (``benchmarks/peers/pythae_mnist.py``, the default) or the plain PyTorch loop
  (``script=TORCH_PEER``, ``benchmarks/peers/torch_plain.py``);
* :func:`cpu_info` -- the CPU model, its flags and the usable cores (from ``/proc/cpuinfo``), to
  record with every result; :func:`cpu_busy` / :func:`wait_for_idle` -- how busy the CPU is with
  other processes (a shared 2-core machine makes torch's threads several times slower when
  anything else runs).

Import from a script in ``benchmarks/`` with::

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import matmul_flops_per_s, mlp_vae_flops_per_example, run_peer

This module imports JAX only inside :func:`matmul_flops_per_s` and :func:`seconds_per_step`,
so the other helpers work in any Python.
"""

from __future__ import annotations

import json
import os
import platform
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
#: The plain PyTorch loop (MLP and conv), also run in ``.venv-bench``.
TORCH_PEER = BENCH_DIR / "peers" / "torch_plain.py"


def trainer_step_timer(cfg, steps: int):
    """A vaekit `Trainer` for `cfg`, compiled; returns ``timer()`` -> seconds per step of one more chunk.

    The first chunk of `steps` steps compiles (and warms up) here, with whatever code the model
    traces to now (benchmarks that patch layers keep the patch in place for this call only). Each
    ``timer()`` runs the next `steps` steps, timed up to the host reading their metrics, as
    `Trainer.fit_epoch` does.
    """
    import vaekit  # noqa: F401  (first: its XLA CPU settings must be in place before JAX starts)
    import jax
    from vaekit.data import load_configured
    from vaekit.training.loop import Trainer

    tr = Trainer(cfg, load_configured(cfg.data))
    idx = tr.epoch_indices(0, steps)
    box = {"state": tr.state}

    def run_chunk():
        box["state"], metrics = tr.run_chunk(box["state"], tr.train_data, idx)
        jax.device_get(metrics)

    run_chunk()

    def timer() -> float:
        t0 = time.perf_counter()
        run_chunk()
        return (time.perf_counter() - t0) / steps

    return timer


def seconds_per_step(cfg, steps: int) -> float:
    """Wall seconds per optimizer step of a vaekit `Trainer` for `cfg`, after compilation.

    One chunk of `steps` steps compiles (and warms up), the next chunk of `steps` is timed up to
    the host reading its metrics, as `Trainer.fit_epoch` does.
    """
    return trainer_step_timer(cfg, steps)()


def cpu_info() -> dict:
    """{"model", "flags", "cores"}: the first processor's model name and flags in /proc/cpuinfo, usable cores."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.processor() or platform.machine()):
                model = value.strip()
            elif key == "flags" and not flags:
                flags = value.split()
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"model": model, "flags": flags, "cores": cores}


def cpu_flags_summary(flags: Sequence[str]) -> str:
    """The SIMD flags that matter for these kernels, e.g. "avx2 fma avx512f avx512_bf16"."""
    keep = ("avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return " ".join(f for f in keep if f in flags) or "(no AVX2)"


def _cpu_times() -> tuple[int, int]:
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in parts]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values), idle


def cpu_busy(interval: float = 1.0) -> float:
    """Fraction of all cores busy during `interval` seconds (this process sleeping): others' load."""
    try:
        t0, i0 = _cpu_times()
        time.sleep(interval)
        t1, i1 = _cpu_times()
    except OSError:
        return float("nan")
    return 1.0 - (i1 - i0) / max(t1 - t0, 1)


def wait_for_idle(max_busy: float = 0.15, timeout: float = 120.0, interval: float = 1.0) -> float:
    """Wait (up to `timeout` s) until other processes use at most `max_busy` of the CPU; return the last reading."""
    deadline = time.monotonic() + timeout
    busy = cpu_busy(interval)
    while busy > max_busy and time.monotonic() < deadline:
        busy = cpu_busy(interval)
    return busy


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


def timed_command(cmd: Sequence[str], env: Mapping[str, str] | None = None) -> float:
    """Run a command from the repository root and return its wall time in seconds.

    Raises:
        RuntimeError: it exited non-zero; the message holds the end of its stderr.
    """
    t0 = time.perf_counter()
    out = subprocess.run(list(cmd), capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {out.returncode}: {out.stderr[-2000:]}")
    return seconds


def peer_command(script: str | os.PathLike, argv: Sequence[str], python: str | os.PathLike | None = None
                 ) -> tuple[list[str], dict[str, str]]:
    """(command, environment) that run a peer script in the bench venv: ``python`` or
    ``$VAEKIT_BENCH_PYTHON`` or ``.venv-bench/bin/python``, without this venv's PYTHONPATH,
    PYTHONHOME or VIRTUAL_ENV.

    Raises:
        FileNotFoundError: the bench venv is missing (see ``benchmarks/README.md``).
    """
    interpreter = Path(python or os.environ.get("VAEKIT_BENCH_PYTHON") or BENCH_PYTHON)
    if not interpreter.exists():
        raise FileNotFoundError(
            f"{interpreter} not found: create the benchmark venv first (see {BENCH_DIR / 'README.md'})"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return [str(interpreter), str(script), *argv], env


def run_peer(args: Sequence[str] | Mapping[str, object] | None = None, *, python: str | os.PathLike | None = None,
             timeout: float | None = None, echo: bool = False, script: str | os.PathLike = PEER_SCRIPT) -> dict:
    """Run a peer benchmark (default: Pythae) in ``.venv-bench`` and return its JSON as a dict.

    Args:
        args: the peer's CLI options, as a list (``["--epochs", "2"]``) or a mapping
            (``{"epochs": 2, "nll_samples": 1000, "nll_limit": 1000}``). Do not pass
            ``--json``: this function adds it.
        python: the interpreter to use; default ``.venv-bench/bin/python`` (override
            with the ``VAEKIT_BENCH_PYTHON`` environment variable or this argument).
        timeout: seconds before the subprocess is killed (``None``: no limit).
        echo: stream the peer's stdout/stderr (its table, Pythae's log and progress
            bars) to this process's stderr instead of capturing them.
        script: the peer script: ``PEER_SCRIPT`` (Pythae) or ``TORCH_PEER`` (the plain loop).

    Returns:
        The peer's result (see ``benchmarks/peers/pythae_mnist.py``): ``examples_per_s``,
        ``epochs``, ``train_seconds``, ``nll``, ``nll_seconds``, ``nll_k``, ``nll_n``,
        ``torch``, ``pythae`` and more.

    Raises:
        FileNotFoundError: the bench venv is missing (see ``benchmarks/README.md``).
        RuntimeError: the peer exited non-zero; the message holds its last output.
    """
    argv = _peer_argv(args)
    if "--json" in argv:
        raise ValueError("run_peer adds --json itself")
    with tempfile.TemporaryDirectory(prefix="vaekit-peer-") as tmp:
        out = Path(tmp) / "peer.json"
        cmd, env = peer_command(script, [*argv, "--json", str(out)], python)
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
    info = cpu_info()
    print(f"CPU: {info['model']}, {info['cores']} cores, {cpu_flags_summary(info['flags'])}")
