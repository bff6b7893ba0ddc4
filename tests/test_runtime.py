"""vaekit.runtime: the CLI's process settings, each applied once, never over a user's own, and in effect."""

import platform
import sys

import jax
import jax.numpy as jnp
import pytest

from vaekit import runtime


@pytest.fixture
def env(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    monkeypatch.delenv("VAEKIT_XLA_DEFAULTS", raising=False)
    return monkeypatch


def test_configure_adds_the_flag_once(env):
    env.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    assert runtime.configure_xla()
    import os

    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {runtime.YNN_FLAG}="
    assert not runtime.configure_xla()  # already there: unchanged


def test_configure_respects_the_user(env):
    import os

    env.setenv("XLA_FLAGS", f"{runtime.YNN_FLAG}=dot")
    assert not runtime.configure_xla() and os.environ["XLA_FLAGS"] == f"{runtime.YNN_FLAG}=dot"
    env.delenv("XLA_FLAGS")
    env.setenv("VAEKIT_XLA_DEFAULTS", "0")
    assert not runtime.configure_xla() and "XLA_FLAGS" not in os.environ


def test_the_likelihood_warns_once_when_the_fusions_are_on(monkeypatch, caplog):
    import numpy as np
    from flax import nnx

    from vaekit.data.spec import DataSpec
    from vaekit.evaluate import likelihood
    from vaekit.models import build_model

    from conftest import tiny_config

    assert not runtime.ynn_fusions_on()  # the suite runs configured, as the CLI does
    monkeypatch.setattr(likelihood, "_warned_unconfigured", False)
    model = build_model(tiny_config(), DataSpec("images", (8, 8, 1)), rngs=nnx.Rngs(params=0))
    x = {"x": np.zeros((3, 8, 8, 1), np.float32)}
    with caplog.at_level("WARNING", logger="vaekit"):
        likelihood.log_likelihood(model, x, samples=2)
        assert not [r for r in caplog.records if "YNNPACK" in r.getMessage()]
        monkeypatch.setattr(runtime, "ynn_fusions_on", lambda: True)  # as in a process that never configured
        likelihood.log_likelihood(model, x, samples=2)
        likelihood.log_likelihood(model, x, samples=2)
    assert len([r for r in caplog.records if "YNNPACK" in r.getMessage()]) == 1


def test_the_fusions_are_on_without_the_flag(env):
    from jaxlib import version

    assert runtime.ynn_fusions_on() == version.__version__.startswith(runtime.TESTED_JAXLIB)
    env.setenv("XLA_FLAGS", f"{runtime.YNN_FLAG}=")
    assert not runtime.ynn_fusions_on()


def test_configure_leaves_untested_jaxlib_alone(env):
    import os

    from jaxlib import version

    env.setattr(version, "__version__", "9.0.0")
    assert not runtime.configure_xla() and "XLA_FLAGS" not in os.environ


def test_no_ynnpack_fusions_in_compiled_code():
    """`runtime.configure()` (conftest applies it, as the CLI does) turned the YNNPACK fusions off for this process."""
    if jax.default_backend() != "cpu" or not __import__("jaxlib").version.__version__.startswith(runtime.TESTED_JAXLIB):
        pytest.skip("the flag concerns XLA's CPU backend in the tested jaxlib series")
    x = jnp.ones((100, 28, 28, 1))
    text = jax.jit(lambda v: jnp.sum(jax.nn.log_sigmoid(v) * 2.0) + (v.reshape(100, -1) @ jnp.ones((784, 8))).sum()).lower(x).compile().as_text()
    assert "__ynn_fusion" not in text


def test_compilation_cache_goes_to_the_user_cache_unless_set_or_off(monkeypatch, tmp_path):
    import os

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("VAEKIT_COMPILATION_CACHE", raising=False)
    assert runtime.configure_cache() and os.environ["JAX_COMPILATION_CACHE_DIR"] == str(tmp_path / "vaekit" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", "/mine")
    assert not runtime.configure_cache() and os.environ["JAX_COMPILATION_CACHE_DIR"] == "/mine"
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setenv("VAEKIT_COMPILATION_CACHE", "0")
    assert not runtime.configure_cache() and "JAX_COMPILATION_CACHE_DIR" not in os.environ


@pytest.mark.slow
def test_a_run_fills_the_compilation_cache(tmp_path):
    """A real `vaekit train` process writes compiled executables to the user cache directory."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "VAEKIT_"))}
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    out = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--runs-dir", str(tmp_path / "runs"),
                          "--set", "data.limit=300", "--set", "train.epochs=1", "--set", "model.hidden=[16]",
                          "--no-progress"], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "cache" / "vaekit" / "jax").iterdir())) > 0


def test_import_vaekit_and_the_cli_leave_jax_unimported():
    """`import vaekit` and the CLI module import no JAX, Flax, Optax, Orbax, plotting or TensorBoard."""
    import subprocess
    import sys

    code = ("import sys, vaekit, vaekit.cli\n"
            "heavy = [m for m in ('jax', 'flax', 'optax', 'orbax', 'matplotlib', 'tensorboardX') if m in sys.modules]\n"
            "print(heavy)\n"
            "import vaekit.runs.train\n"  # the module named train leaves the package's train() function in place
            "print(callable(vaekit.train) and vaekit.train.__module__ == 'vaekit.runs.train', vaekit.Trainer.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True Trainer"]


def test_unknown_package_attribute_is_an_attribute_error():
    import vaekit

    with pytest.raises(AttributeError, match="no_such_thing"):
        vaekit.no_such_thing  # noqa: B018


def test_configure_malloc_on_linux_and_its_opt_outs(monkeypatch):
    import sys

    monkeypatch.delenv("VAEKIT_MALLOC", raising=False)
    monkeypatch.delenv("VAEKIT_XLA_DEFAULTS", raising=False)
    if sys.platform.startswith("linux") and __import__("platform").libc_ver()[0] == "glibc":
        assert runtime.configure_malloc()
    monkeypatch.setenv("VAEKIT_MALLOC", "0")
    assert not runtime.configure_malloc()
    monkeypatch.setenv("VAEKIT_MALLOC", "1")
    monkeypatch.setenv("VAEKIT_XLA_DEFAULTS", "0")
    assert not runtime.configure_malloc()



_SNAPSHOT = r'''
import ctypes, ctypes.util, json, logging, os, sys

def mmapped_regions(size=64 << 20):
    """glibc serves a large malloc with mmap unless mallopt(M_MMAP_MAX, 0) was called."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    class Info(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                   "fsmblks", "uordblks", "fordblks", "keepcost")]
    libc.mallinfo2.restype = Info
    libc.malloc.restype = ctypes.c_void_p
    held = libc.mallinfo2().hblks
    p = libc.malloc(size)
    n = libc.mallinfo2().hblks - held  # 1: this block is mmap'd
    libc.free(ctypes.c_void_p(p))
    return n

import platform
import sys

import jax
def snapshot():
    levels = {n: logging.getLogger(n).level for n in ("", "absl", "jax", "orbax", "vaekit")}
    return {"env": dict(os.environ), "levels": levels, "jax": {k: repr(v) for k, v in jax.config.values.items()},
            "mmapped": mmapped_regions()}
before = snapshot()
import vaekit, vaekit.cli, vaekit.runs.checkpoint, vaekit.runs.train, vaekit.models, vaekit.evaluate, vaekit.plots
vaekit.load_run, vaekit.train, vaekit.resolve
after = snapshot()
print(json.dumps({k: [x for x in before[k] if before[k][x] != after[k].get(x)] + [x for x in after[k] if x not in before[k]]
                  if isinstance(before[k], dict) else [before[k], after[k]] for k in before}))
'''


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc's mallinfo2")
def test_import_vaekit_changes_nothing_in_the_process():
    """Importing vaekit and every module it has leaves os.environ, logging levels, jax.config and
    malloc's settings (a 64 MB malloc is still mmap'd) as they were."""
    import json
    import os
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "VAEKIT_", "XLA_", "MALLOC_"))}
    out = subprocess.run([sys.executable, "-c", _SNAPSHOT], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    changed = json.loads(out.stdout.strip().splitlines()[-1])
    assert changed["env"] == [] and changed["levels"] == [] and changed["jax"] == []
    assert changed["mmapped"] == [1, 1]


def test_configure_applies_every_setting(monkeypatch, tmp_path):
    """The CLI's `configure()`: XLA flag, malloc, the cache directory (also into an imported JAX's
    config) and absl's level."""
    import logging

    for name in ("XLA_FLAGS", "VAEKIT_XLA_DEFAULTS", "VAEKIT_MALLOC", "VAEKIT_COMPILATION_CACHE",
                 "JAX_COMPILATION_CACHE_DIR", "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    previous = jax.config.values["jax_compilation_cache_dir"], logging.getLogger("absl").level
    try:
        applied = runtime.configure()
        assert applied["cache"] and applied["logging"]
        assert jax.config.values["jax_compilation_cache_dir"] == str(tmp_path / "vaekit" / "jax")
        assert logging.getLogger("absl").level == logging.WARNING
    finally:
        jax.config.update("jax_compilation_cache_dir", previous[0])
        logging.getLogger("absl").setLevel(previous[1])
