"""Process-wide settings for speed on CPU: XLA flags, glibc malloc, JAX's compilation cache, log levels.

`import vaekit` applies none of them: a library changes nothing in the process that imports it.
The `vaekit` command applies them all first thing (`configure()`), before JAX is imported; a
notebook, script or service that wants the same speed calls `vaekit.runtime.configure()` before
its first JAX computation. Each setting is below, with the measurement that chose it.

XLA's CPU backend in jaxlib 0.10 hands some fusions to the YNNPACK library
(`--xla_cpu_experimental_ynn_fusion_type`). For vaekit's workloads that is slower: a profile of
the `mnist-mlp` training step showed one YNNPACK reduce fusion (the Bernoulli log-likelihood
summed over a batch of 100 images, 78,400 values) taking 0.49 ms of a 3.4 ms step. With those
fusions off, XLA's own emitters run the step at 2.7 ms (30,000 -> 36,400 training examples/s)
and the importance-sampled NLL 1.3x faster on the project's 2-core CPU; the `shapes-beta` conv
step is the same within noise (docs/results.md).

`configure_xla()` turns them off by adding `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS,
unless the user's XLA_FLAGS already set that flag, `VAEKIT_XLA_DEFAULTS=0` opts out, or the
installed jaxlib is outside the tested 0.10 series (an unknown flag would abort XLA). XLA reads
XLA_FLAGS when the first computation starts its backends, so this takes effect when vaekit is
configured before anything has run on JAX (the CLI always is); the flag concerns the CPU backend
only. The importance-sampled NLL feels it most: k = 5000 on 200 `mnist-mlp` test images took 18.7 s
without `configure()` and 4.8 s with it (17.0 s with everything but the XLA flag) on 2026-12-08, so
`log_likelihood` logs a warning once when it runs on CPU with the fusions on.

`configure_cache()` turns on JAX's persistent compilation cache in a user cache directory
($XDG_CACHE_HOME/vaekit/jax, else ~/.cache/vaekit/jax), so a second run of the same model skips
XLA compilation (most of a short run's fixed cost). It sets JAX's own environment variables
before JAX is imported, never over a user's JAX_COMPILATION_CACHE_DIR, and is off with
`VAEKIT_COMPILATION_CACHE=0` (or, for one run, `train.compilation_cache=false`).

`configure_malloc()` stops XLA CPU's per-execution page faults. XLA's CPU runtime allocates its
large temporaries for every execution; glibc serves them with fresh mmap'd (or per-thread-arena)
pages and hands them back on free, so each training step faulted its working set in again: a
profile of the `shapes-beta` conv step counted 19,000-25,000 minor page faults and 30-45 ms of
kernel time per step. With one arena, no mmap'd chunks and no trimming (what MALLOC_ARENA_MAX=1
MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647 would set, here through `mallopt`) the faults
drop to ~0, and the step from 80 to 60 ms (docs/results.md). The price: the process keeps its
peak heap until it exits. Linux/glibc only; off with `VAEKIT_MALLOC=0` or `VAEKIT_XLA_DEFAULTS=0`.
`configure()` applies it before JAX starts its threads when it runs before JAX's import.

`configure_logging()` lowers absl's log level to WARNING: Orbax logs every checkpoint save and
restore at INFO through absl.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
TESTED_JAXLIB = "0.10."


def configure() -> dict[str, bool]:
    """Apply every setting of this module (each one's own opt-out respected); {setting: applied}.

    Call it before the process's first JAX computation (before importing JAX is best): XLA reads
    XLA_FLAGS when its backends start, and malloc's settings apply to threads started after them.
    """
    return {"xla": configure_xla(), "malloc": configure_malloc(), "cache": configure_cache(),
            "logging": configure_logging()}


def configure_xla() -> bool:
    """Add vaekit's XLA CPU defaults to XLA_FLAGS. Returns whether XLA_FLAGS was changed."""
    if os.environ.get("VAEKIT_XLA_DEFAULTS", "1") == "0":
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if YNN_FLAG in flags:
        return False
    try:
        from jaxlib import version
    except ImportError:
        return False
    if not version.__version__.startswith(TESTED_JAXLIB):
        return False
    os.environ["XLA_FLAGS"] = f"{flags} {YNN_FLAG}=".strip()
    return True


def ynn_fusions_on() -> bool:
    """Whether this process's XLA runs the YNNPACK fusions that `configure_xla` turns off: the
    tested jaxlib series on CPU, without the flag in XLA_FLAGS (read when JAX's backends start)."""
    if YNN_FLAG in os.environ.get("XLA_FLAGS", ""):
        return False
    try:
        from jaxlib import version
    except ImportError:
        return False
    return version.__version__.startswith(TESTED_JAXLIB)


def configure_malloc() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the kernel. Returns whether it was set."""
    if os.environ.get("VAEKIT_MALLOC", "1") == "0" or os.environ.get("VAEKIT_XLA_DEFAULTS", "1") == "0":
        return False
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # glibc's <malloc.h> parameter numbers
    ok = mallopt(m_arena_max, 1) == 1
    ok &= mallopt(m_mmap_max, 0) == 1
    ok &= mallopt(m_trim_threshold, 2**31 - 1) == 1
    return bool(ok)


def cache_dir() -> Path:
    """Where vaekit keeps JAX's compiled executables."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaekit" / "jax"


def configure_cache() -> bool:
    """Point JAX's persistent compilation cache at `cache_dir()`. Returns whether it was set."""
    if os.environ.get("VAEKIT_COMPILATION_CACHE", "1") == "0" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return False
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir())
    if "jax" in sys.modules:  # imported already: it read its environment then, so tell its config too
        import jax

        jax.config.update("jax_compilation_cache_dir", str(cache_dir()))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # Cache every compilation (JAX's default caches those over 1 s only). The small ones add up: a
    # run compiles each primitive that builds the model and its optimizer state once, eagerly, and
    # a cache of them all took the warm `vaekit train --set train.epochs=1 --set data.limit=1000`
    # from 3.6-4.0 to 2.6-3.1 s (0.1 s threshold before; 752 against 476 KB of cache).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    return True


def configure_logging() -> bool:
    """absl (Orbax's logger) at WARNING: no INFO line per checkpoint save. Returns True."""
    import logging

    logging.getLogger("absl").setLevel(logging.WARNING)
    return True
