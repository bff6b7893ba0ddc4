"""XLA CPU settings vaekit applies before JAX starts its backends.

XLA's CPU backend in jaxlib 0.10 hands some fusions to the YNNPACK library
(`--xla_cpu_experimental_ynn_fusion_type`). For vaekit's workloads that is slower: a profile of
the `mnist-mlp` training step showed one YNNPACK reduce fusion (the Bernoulli log-likelihood
summed over a batch of 100 images, 78,400 values) taking 0.49 ms of a 3.4 ms step. With those
fusions off, XLA's own emitters run the step at 2.7 ms (30,000 -> 36,400 training examples/s)
and the importance-sampled NLL 1.3x faster on the project's 2-core CPU; the `shapes-beta` conv
step is the same within noise (docs/benchmarks.md).

`configure()` turns them off by adding `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS,
unless the user's XLA_FLAGS already set that flag, `VAEKIT_XLA_DEFAULTS=0` opts out, or the
installed jaxlib is outside the tested 0.10 series (an unknown flag would abort XLA). XLA reads
XLA_FLAGS when the first computation starts its backends, so this takes effect when vaekit is
imported before anything has run on JAX (the CLI always is); the flag concerns the CPU backend
only.

`configure_cache()` turns on JAX's persistent compilation cache in a user cache directory
($XDG_CACHE_HOME/vaekit/jax, else ~/.cache/vaekit/jax), so a second run of the same model skips
XLA compilation (most of a short run's fixed cost). It sets JAX's own environment variables
before JAX is imported, never over a user's JAX_COMPILATION_CACHE_DIR, and is off with
`VAEKIT_COMPILATION_CACHE=0` (or, for one run, `train.compilation_cache=false`).
"""

from __future__ import annotations

import os
from pathlib import Path

YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
TESTED_JAXLIB = "0.10."


def configure() -> bool:
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


def cache_dir() -> Path:
    """Where vaekit keeps JAX's compiled executables."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vaekit" / "jax"


def configure_cache() -> bool:
    """Point JAX's persistent compilation cache at `cache_dir()`. Returns whether it was set."""
    if os.environ.get("VAEKIT_COMPILATION_CACHE", "1") == "0" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return False
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(cache_dir())
    # Cache every compilation that takes a noticeable time (JAX's default is 1 s, which leaves out
    # the evaluation and validation functions a run compiles too).
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    return True
