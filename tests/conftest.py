"""Shared fixtures: tiny configs and data so that every test runs in seconds on 2 CPU cores."""

import contextlib
import dataclasses
import os
import signal
from pathlib import Path

from vaekit import runtime

# The suite's programs are tiny, so XLA's compile time is most of its time: without LLVM's
# optimizations they compile in about 0.6x the time (tests/test_train.py and test_flows.py on 2
# cores, cold: 225 s at XLA's default level 3, 160 s at level 1, 126 s at level 0), and with XLA's
# classic CPU emitters instead of its MLIR fusion emitters in about 0.45x again (the hvae
# conformance and conv-net tests: 25 s -> 11 s of compilation); both compute the same values up to
# float rounding. The few tests that run a program long (e.g. 20,000 ancestral
# draws) keep their sizes small enough for unoptimized code. Subprocesses (the CLI tests) inherit
# them; a user's own setting of either is kept.
SUITE_XLA_FLAGS = {"xla_backend_optimization_level": "0", "xla_cpu_use_fusion_emitters": "false"}
for flag, value in SUITE_XLA_FLAGS.items():
    if flag not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --{flag}={value}".strip()
runtime.configure()  # the CLI's CPU settings for the whole suite, before JAX is imported (as `vaekit` does)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vaekit import config as config_lib  # noqa: E402
from vaekit.data import DataSpec, Splits  # noqa: E402


def tiny_config(**sections) -> config_lib.Config:
    """A small MLP VAE config; `sections` maps section -> dict of overrides."""
    cfg = config_lib.resolve("mnist-mlp", None, [])
    small = {
        "model": {"hidden": (32,), "latent_dim": 4},
        # 200 synthetic examples: 10 steps an epoch, two chunks of 5 (one compilation of the chunk;
        # a shorter tail chunk would be a second one, tests/test_train.py runs one on purpose).
        # No pictures (about a second a run, mostly matplotlib's curves): tests of pictures ask for them.
        "train": {"epochs": 2, "batch_size": 20, "chunk_steps": 5, "eval_batch_size": 64, "pictures": False},
    }
    for sec, vals in sections.items():
        small.setdefault(sec, {}).update(vals)
    cfg = config_lib.merge(cfg, small)
    config_lib.validate(cfg)
    return cfg


@contextlib.contextmanager
def default_sigint():
    """Python's own SIGINT handler, as in a terminal, for the block; the previous one after it.

    A test run started in the background inherits SIGINT ignored: train() rightly leaves such a
    handler alone, and a child process inherits the ignore through exec (a handler is reset to the
    default by exec instead)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def synthetic_splits(n=200, shape=(8, 8, 1), seed=0, binarize="none") -> Splits:
    """Images with structure (two blob templates + noise) so that a VAE can learn something."""
    rng = np.random.default_rng(seed)
    h, w, c = shape
    yy, xx = np.mgrid[0:h, 0:w]
    templates = np.stack([np.exp(-((yy - h / 3) ** 2 + (xx - w / 3) ** 2) / 4.0),
                          np.exp(-((yy - 2 * h / 3) ** 2 + (xx - 2 * w / 3) ** 2) / 4.0)])

    def make(m):
        lab = rng.integers(0, 2, m)
        x = np.clip(templates[lab][..., None] * rng.uniform(0.7, 1.0, (m, 1, 1, 1)), 0, 1)
        x = np.repeat(x, c, axis=-1).astype(np.float32)
        return {"x": x, "y": lab.astype(np.int32)}

    return Splits(train=make(n), val=make(n // 4), test=make(n // 4), spec=DataSpec("images", shape, 2),
                  binarize=binarize)


def synthetic_token_splits(n=200, seq_len=8, vocab_size=12, seed=0) -> Splits:
    """Token sentences in the text layout (words, <eos>=3, <pad>=0; ids 4.. are words) of two kinds:
    ascending or descending runs of words, of random lengths, so that a text model can learn something."""
    rng = np.random.default_rng(seed)

    def make(m):
        x = np.zeros((m, seq_len), np.int32)
        length = rng.integers(2, seq_len + 1, m)  # words + <eos>
        for i, n_tok in enumerate(length):
            start = rng.integers(4, vocab_size)
            step = 1 if i % 2 else -1
            words = 4 + (start - 4 + step * np.arange(n_tok - 1)) % (vocab_size - 4)
            x[i, : n_tok - 1], x[i, n_tok - 1] = words, 3
        return {"x": x}

    return Splits(train=make(n), val=make(n // 4), test=make(n // 4),
                  spec=DataSpec("tokens", (seq_len,), None, vocab_size), binarize="none")


def step_loss(tr, idx):
    """params -> the model's loss (its first return: an array, or a dict per group) on the batch
    of examples `idx` that `Trainer.train_step` builds at the trainer's current step, with the
    same keys and the training graph (`tr.graphdef`)."""
    import jax

    from vaekit.training.state import merge_model
    from vaekit.training.rngs import step_rngs

    data_key, model_key = jax.random.split(jax.random.fold_in(tr.state.key, tr.state.step))
    batch = tr.gather(tr.train_data, idx, data_key)

    def loss(params: dict):
        model = merge_model(tr.graphdef, params, tr.state.rest, copy=True)
        return model.loss(batch, rngs=step_rngs(model_key), step=tr.state.step)[0]

    return loss


def group_step_check(tr, batch_size: int, lrs: dict) -> dict:
    """Check that one `Trainer` step moves each parameter group by one Adam step on the gradient of
    that group's own loss alone (Adam's first step is -lr * g / (|g| + eps)), and return
    {(loss group, parameter group): that gradient} for every pair, cross terms included, so a
    test can show that a cross term exists which the step had to ignore."""
    import jax
    import jax.numpy as jnp

    params = tr.state.params
    before = jax.tree.map(np.asarray, params)
    idx = jnp.arange(batch_size)
    loss = step_loss(tr, idx)

    @jax.jit  # every pair's gradient in one program
    def all_grads(params):
        return {(g, h): jax.grad(lambda p, g=g, h=h: loss(dict(params, **{h: p}))[g])(params[h])
                for g in params for h in params}

    grads = all_grads(params)
    new, _ = jax.jit(tr.train_step)(tr.state, tr.train_data, idx)
    for g, lr in lrs.items():
        expected = jax.tree.map(lambda p, d: p - lr * np.asarray(d) / (np.abs(np.asarray(d)) + 1e-8), before[g],
                                grads[g, g])
        for got, want in zip(jax.tree.leaves(new.params[g]), jax.tree.leaves(expected)):
            np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    return grads


def write_npz(tmp_path, name="data.npz", **arrays):
    """Save arrays as an .npz in tmp_path and return its path as a string."""
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def random_images(n=50, shape=(6, 5), seed=0):
    """Uniform float32 pixels in [0, 1), (n, *shape)."""
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def shared_run(tmp_path_factory, name: str, make) -> Path:
    """A run made once per test session for every pytest-xdist worker, and this worker's own copy
    of it (tests write evaluation, quality and report files into a run). The first worker to take
    the lock calls `make(runs_dir, name)`, which leaves a complete run at runs_dir / name; the
    others wait for it and copy it."""
    import fcntl
    import shutil

    own = tmp_path_factory.getbasetemp() / "shared-run-copies" / name
    if _complete(own):
        return own
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's basetemp is a folder of the session's
        base = base.parent
    runs = base / "shared-runs"
    runs.mkdir(parents=True, exist_ok=True)
    with open(runs / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(runs / name):
            make(runs, name)
            assert _complete(runs / name), f"{name}: make() left no complete run"
        shutil.copytree(runs / name, own)
    return own


def _complete(run_dir: Path) -> bool:
    from vaekit.runs import layout

    info = run_dir / layout.RUN_FILE
    return info.exists() and layout.read_json(info).get("status") == "complete"


def trained_run_dir(tmp_path_factory):
    """A tiny trained MNIST run (512 examples, 1 epoch, 8 latents) made by a real `vaekit train`
    process (the console script), once per test session (`shared_run`)."""
    import subprocess
    import sys

    def make(runs, name):
        out = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--runs-dir", str(runs), "--name", name,
                              *TRAINED_RUN_ARGS], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip().splitlines()[-1] == str(runs / name)  # the run directory is the last line

    return shared_run(tmp_path_factory, "r", make)


#: `trained_run_dir`'s options after `vaekit train --runs-dir DIR --name r`.
TRAINED_RUN_ARGS = ["--set", "data.limit=512", "--set", "train.epochs=1", "--set", "model.hidden=[64]",
                    "--set", "model.latent_dim=8", "--set", "train.eval_batch_size=2000", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def _compiled_programs_per_module():
    """Drop JAX's compiled programs after each test module. They are kept for the life of the
    process otherwise: several thousand in a suite (every shape of every eager operation too),
    which grew each of the two workers to 4.5-5 GB; with this the largest is about 1.9 GB, and
    a later module that needs a program again finds it in the on-disk compilation cache."""
    yield
    import gc

    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture
def tiny_cfg():
    return tiny_config()


@pytest.fixture
def splits():
    return synthetic_splits()


def replace(cfg, section, **kw):
    return dataclasses.replace(cfg, **{section: dataclasses.replace(getattr(cfg, section), **kw)})
