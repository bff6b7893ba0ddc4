"""The trainer: learning happens, resume is exact, NaN/Inf stops cleanly, checkpoints are checked."""

import json

import jax
import numpy as np
import pytest

from vaekit.errors import VaekitError
from vaekit.runs import checkpoint, layout
from vaekit.runs.run import load_run
from vaekit.runs.train import RunInterrupted, train
from vaekit.training.loop import Trainer
from vaekit.training.optim import learning_rate_schedule
from vaekit.training.sinks import collapse_warning
from vaekit.training.step import TrainingDiverged

from conftest import default_sigint, replace, synthetic_splits, tiny_config


def test_validation_elbo_improves(splits):
    cfg = tiny_config(train={"epochs": 4, "learning_rate": 3e-3})
    tr = Trainer(cfg, splits)
    first = tr.validate()["val/elbo"]
    for _ in range(4):
        m = tr.fit_epoch()
    last = tr.validate()
    assert last["val/elbo"] > first + 5.0
    assert np.isfinite(m["train/loss"]) and m["train/examples_per_s"] > 0
    assert last["val/kl_per_dim"].shape == (4,) and 0 <= last["val/active_units"] <= 4


def test_dynamic_binarization_draws_fresh_batches(splits):
    cfg = tiny_config(data={"binarize": "dynamic"})
    tr = Trainer(cfg, splits)
    m = tr.fit_epoch()
    assert np.isfinite(m["train/loss"])


def test_conv_model_with_batchnorm_trains(splits):
    cfg = tiny_config(model={"net": "conv", "conv_channels": (4, 8), "latent_dim": 3})
    tr = Trainer(cfg, splits)
    before = jax.tree.leaves(tr.state.rest)[0].copy()
    tr.fit_epoch()
    assert not np.allclose(jax.tree.leaves(tr.state.rest)[0], before)  # running stats updated
    assert np.isfinite(tr.validate()["val/elbo"])


def test_batch_larger_than_dataset_is_rejected(splits):
    with pytest.raises(VaekitError, match="larger than the training set"):
        Trainer(tiny_config(train={"batch_size": 1000}), splits)


def test_resume_reproduces_uninterrupted_run(tmp_path, splits):
    cfg = tiny_config(train={"epochs": 3})
    full = train(cfg, data=splits, runs_dir=tmp_path, name="full", progress=False)
    part = train(replace(cfg, "train", epochs=1), data=splits, runs_dir=tmp_path, name="part", progress=False)
    resumed = train(cfg, data=splits, resume=part, progress=False)
    a = load_run(full, checkpoint="latest").model
    b = load_run(resumed, checkpoint="latest").model
    from flax import nnx

    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    hist = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in hist] == [1, 2, 3]
    assert not list(full.glob("*.png"))  # train.pictures=false: none drawn
    assert json.loads((resumed / "run.json").read_text())["status"] == "complete"


def test_nan_guard_names_step_and_keeps_last_good_checkpoint(tmp_path, splits):
    cfg = tiny_config(train={"epochs": 1})
    run = train(cfg, data=splits, runs_dir=tmp_path, name="r", progress=False)
    saved = (run / "checkpoints" / "latest").iterdir()
    saved = sorted(p.name for p in saved)
    # a learning rate so large that the parameters overflow within a few steps
    bad = replace(cfg, "train", epochs=3, learning_rate=1e30)
    with pytest.raises(TrainingDiverged, match=r"became (nan|inf|-inf) at step \d+"):
        train(bad, data=splits, resume=run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints" / "latest").iterdir()) == saved
    assert json.loads((run / "run.json").read_text())["status"] == "diverged"
    assert load_run(run, checkpoint="latest").model is not None  # the good checkpoint still loads


def test_run_directory_contents_and_no_overwrite(tmp_path, splits):
    run = train(tiny_config(train={"pictures": True}), data=splits, runs_dir=tmp_path, name="r", progress=False)
    for name in ("config.yaml", "run.json", "metrics.jsonl", "samples.png", "reconstructions.png",
                 "curves.png", "kl_per_dim.png", "tensorboard", "checkpoints/best", "checkpoints/latest"):
        assert (run / name).exists(), name
    assert any((run / "tensorboard").iterdir())
    # latest holds what resuming needs; best only the model that load_run restores
    latest, best = (sorted((run / "checkpoints" / w).iterdir())[-1] for w in ("latest", "best"))
    assert (latest / "model").is_dir() and (latest / "train").is_dir()
    assert (best / "model").is_dir() and not (best / "train").exists()
    loaded = load_run(run)
    assert loaded.checkpoint == "best" and loaded.model is not None
    with pytest.raises(VaekitError, match="already exists"):
        train(tiny_config(), data=splits, runs_dir=tmp_path, name="r", progress=False)


def test_corrupted_checkpoint_gives_clear_error(tmp_path, splits):
    run = train(tiny_config(train={"epochs": 1}), data=splits, runs_dir=tmp_path, name="r", progress=False)
    for f in (run / "checkpoints" / "best").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(VaekitError, match="corrupted or incomplete"):
        load_run(run)


def test_iwae_learning_rate_schedule_stages():
    cfg = tiny_config(train={"lr_schedule": "iwae", "learning_rate": 1e-3})
    sched = learning_rate_schedule(cfg.train, data_pass_steps=10)
    # stage i starts at epoch sum_{j<i} 3^j = 0, 1, 4, 13, ... and runs at 1e-3 * 10^(-i/7)
    for epoch, stage in [(0, 0), (1, 1), (3, 1), (4, 2), (12, 2), (13, 3), (40, 4), (1093, 7)]:
        assert float(sched(epoch * 10)) == pytest.approx(1e-3 * 10 ** (-stage / 7), rel=1e-5)


def test_global_norm_and_its_clip_equal_numpy_and_optax():
    import jax.numpy as jnp
    import optax

    from vaekit.training.optim import clip_by_global_norm, global_norm

    rng = np.random.default_rng(0)
    tree = {"w": rng.normal(size=(784, 200)), "b": rng.normal(size=200), "v": [rng.normal(size=(3, 4, 5))]}
    exact = np.sqrt(sum(np.sum(np.square(x)) for x in jax.tree.leaves(tree)))  # float64
    tree32 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), tree)
    assert float(global_norm(tree32)) == pytest.approx(exact, rel=1e-6)
    assert float(global_norm(tree32)) == pytest.approx(float(optax.tree.norm(tree32)), rel=1e-6)
    for max_norm in (exact / 3, exact * 3):  # clipped, and left alone
        ours, _ = clip_by_global_norm(max_norm).update(tree32, optax.EmptyState())
        ref, _ = optax.clip_by_global_norm(max_norm).update(tree32, optax.EmptyState())
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
        assert float(global_norm(ours)) == pytest.approx(min(max_norm, exact), rel=1e-5)


def test_collapse_warning_fires_only_when_collapsed():
    assert collapse_warning(np.full(8, 1e-3), 0, 8) is not None
    assert "free bits" in collapse_warning(np.full(8, 1e-3), 0, 8)
    assert collapse_warning(np.array([2.0] + [1e-3] * 7), 1, 8) is None


def test_collapse_is_detected_on_a_model_forced_to_collapse():
    splits = synthetic_splits()
    tr = Trainer(tiny_config(objective={"beta": 200.0}, train={"learning_rate": 1e-2, "epochs": 4}), splits)
    for _ in range(4):
        tr.fit_epoch()
    v = tr.validate()
    assert collapse_warning(v["val/kl_per_dim"], v["val/active_units"], 4) is not None
    healthy = Trainer(tiny_config(train={"learning_rate": 3e-3, "epochs": 4}), splits)
    for _ in range(4):
        healthy.fit_epoch()
    h = healthy.validate()
    assert collapse_warning(h["val/kl_per_dim"], h["val/active_units"], 4) is None


def test_steps_mode_counts_steps_validates_every_n_and_resumes_exactly(tmp_path, splits):
    # One step a chunk: epochs of 3, 2 and 1 steps are all chunks of 1, one compilation shared
    # through the compilation cache by the three runs (the loop's chunking is tested apart).
    cfg = tiny_config(train={"steps": 10, "eval_every": 3, "chunk_steps": 1})
    full = train(cfg, data=splits, runs_dir=tmp_path, name="full", progress=False)
    hist = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in hist] == [3, 6, 9, 10] and [r["epoch"] for r in hist] == [1, 2, 3, 4]
    # A shorter run ends off the eval_every grid (step 7); resumed with more steps, it gets back
    # on the grid and trains on the very batches of the uninterrupted run (keyed by the step).
    part = train(replace(cfg, "train", steps=7), data=splits, runs_dir=tmp_path, name="part", progress=False)
    resumed = train(cfg, data=splits, resume=part, progress=False)
    hist = [json.loads(line) for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in hist] == [3, 6, 7, 9, 10]
    a = load_run(full, checkpoint="latest").model
    b = load_run(resumed, checkpoint="latest").model
    from flax import nnx

    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    info = json.loads((resumed / "run.json").read_text())
    assert info["step"] == 10 and info["status"] == "complete"


def test_steps_mode_draws_batches_with_replacement(splits):
    tr = Trainer(tiny_config(train={"steps": 50, "eval_every": 40}), splits)
    idx = np.asarray(tr.epoch_indices(0))
    assert idx.shape == (40, 20) and idx.min() >= 0 and idx.max() < splits.num_train
    assert np.unique(idx).size < idx.size  # with replacement: 800 draws from 200 examples repeat
    later = np.asarray(tr.epoch_indices(1, 10, first_step=40))
    assert not np.array_equal(idx[:10], later)
    # A step's batch depends on its global step only, not on where its epoch starts.
    np.testing.assert_array_equal(np.asarray(tr.epoch_indices(5, 15, first_step=30))[10:], later[:5])
    assert tr.num_epochs == 2 and tr.fit_epoch()["train/examples_per_s"] > 0
    assert tr.fit_epoch() and int(tr.state.step) == 50  # the last epoch is cut short at train.steps


def test_epoch_indices_are_the_seeds_permutation_and_per_step_draws(splits):
    """The batches, written out op by op from the seed: a pass over the data takes the epoch's
    permutation, a step-counted run each step's own draws (a run saved by an earlier vaekit resumes
    onto the same batches)."""
    from vaekit.training.state import SHUFFLE

    shuffle = jax.random.fold_in(jax.random.PRNGKey(3), SHUFFLE)
    tr = Trainer(tiny_config(train={"seed": 3}), splits)
    expected = jax.random.permutation(jax.random.fold_in(shuffle, 4), 200)[:200].reshape(10, 20)
    np.testing.assert_array_equal(np.asarray(tr.epoch_indices(4)), np.asarray(expected))
    tr = Trainer(tiny_config(train={"seed": 3, "steps": 50, "eval_every": 40}), splits)
    draws = [jax.random.randint(jax.random.fold_in(shuffle, i), (20,), 0, 200) for i in range(37, 44)]
    np.testing.assert_array_equal(np.asarray(tr.epoch_indices(0, 7, first_step=37)), np.stack(draws))


def test_scan_and_step_loops_train_the_same_model(splits):
    """train.loop only changes how a chunk is dispatched, not what it computes, also for an epoch
    whose last chunk is shorter (the MLP: 10 steps in chunks of 4, 4 and 2).

    Conv nets too: their conv biases in front of a BatchNorm, which has zero true gradient, get
    exactly 0 (`nets.conv._conv_norm`), so the parameters agree as well as the losses.
    """
    conv = {"net": "conv", "conv_channels": (4, 8), "latent_dim": 3}
    for model, chunk_steps in ((conv, 5), ({}, 4)):
        runs = []
        for loop in ("scan", "steps"):
            losses = []
            tr = Trainer(tiny_config(model=model, train={"loop": loop, "chunk_steps": chunk_steps}), splits,
                         chunk_callback=lambda first, m: losses.extend(np.asarray(m["loss"]).tolist()))
            assert tr.loop == loop
            tr.fit_epoch()
            runs.append((tr.state, losses))
        (a, la), (b, lb) = runs
        assert len(la) == len(lb) == 10 and int(a.step) == int(b.step) == 10
        np.testing.assert_allclose(la, lb, rtol=1e-4)
        for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loop", ["scan", "steps"])
def test_chunks_run_unguarded_and_rerun_guarded_only_when_a_step_diverges(splits, loop):
    """A chunk runs without the per-step NaN guard, from a copy of its state; it computes what the
    guarded chunk computes, and a chunk with a non-finite step runs again guarded from that copy,
    so the trainer ends on the same last good state as a guarded chunk from the same start."""
    cfg = tiny_config(train={"loop": loop})
    fast, guarded = Trainer(cfg, splits), Trainer(cfg, splits)
    idx = fast.epoch_indices(0, 4)
    s_fast, m_fast = fast.run_chunk(fast.state, fast.train_data, idx)
    s_guard, m_guard = guarded.run_guarded_chunk(guarded.state, guarded.train_data, idx)
    from vaekit.core import metrics as metrics_lib

    loss = lambda m: np.asarray(metrics_lib.values(m)["loss"])  # noqa: E731
    np.testing.assert_allclose(loss(m_fast), loss(m_guard), rtol=1e-5)
    for x, y in zip(jax.tree.leaves(s_fast), jax.tree.leaves(s_guard)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-7)

    bad = tiny_config(train={"loop": loop, "learning_rate": 1e30})
    a, b = Trainer(bad, splits), Trainer(bad, splits)
    reruns, rerun = [], a.run_guarded_chunk
    a.run_guarded_chunk = lambda *args: reruns.append(1) or rerun(*args)
    with pytest.raises(TrainingDiverged):
        a.fit_epoch()
    assert reruns == [1]
    first = b.epoch_indices(0)[: bad.train.chunk_steps]
    expected, _ = b.run_guarded_chunk(b.state, b.train_data, first)
    for x, y in zip(jax.tree.leaves(a.state), jax.tree.leaves(expected)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_resume_refuses_data_of_another_size(tmp_path, splits):
    cfg = tiny_config(train={"epochs": 2})
    part = train(replace(cfg, "train", epochs=1), data=splits, runs_dir=tmp_path, name="part", progress=False)
    with pytest.raises(VaekitError, match="cannot be resumed"):
        train(cfg, data=synthetic_splits(n=120), resume=part, progress=False)
    assert json.loads((part / "run.json").read_text())["status"] == "complete"  # untouched


def test_a_ctrl_c_python_swallowed_still_stops_the_run(tmp_path, monkeypatch, splits):
    """A KeyboardInterrupt raised inside a gc callback is printed and ignored by Python; the SIGINT
    handler's flag makes the trainer stop after the chunk anyway, and the run is marked interrupted."""
    import signal

    from vaekit.training import loop

    guard = loop.guard_finite

    def swallowed_ctrl_c(*args):
        guard(*args)
        try:
            signal.getsignal(signal.SIGINT)(signal.SIGINT, None)  # the handler train() installed
        except KeyboardInterrupt:
            pass  # what a gc callback does with it

    monkeypatch.setattr(loop, "guard_finite", swallowed_ctrl_c)
    with default_sigint():  # Python's own handler, as in a terminal
        with pytest.raises(RunInterrupted):
            train(tiny_config(train={"epochs": 2}), data=splits, runs_dir=tmp_path, name="x", progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored
    assert json.loads((tmp_path / "x" / "run.json").read_text())["status"] == "interrupted"


def test_max_minutes_stops_after_an_epoch_and_resume_finishes(tmp_path, splits):
    """A time budget stops the run at an epoch boundary, checkpointed and marked; --resume completes it."""
    cfg = tiny_config(train={"epochs": 3, "max_minutes": 1e-6, "checkpoint_every": 5})
    run = train(cfg, data=splits, runs_dir=tmp_path, name="budget", progress=False)
    info = json.loads((run / layout.RUN_FILE).read_text())
    assert info["status"] == "stopped" and info["stopped_by"] == "train.max_minutes=1e-06"
    assert info["epoch"] == 1 and len(layout.read_metrics(run)) == 1
    assert checkpoint.Checkpointer(run).latest_epoch() == 1  # saved although checkpoint_every would not have
    # Resuming with the budget lifted trains the remaining epochs to the same model as one run.
    resumed = train(replace(cfg, "train", max_minutes=0.0), data=splits, resume=run, progress=False)
    info = json.loads((resumed / layout.RUN_FILE).read_text())
    assert info["status"] == "complete" and "stopped_by" not in info and info["epoch"] == 3
    full = train(replace(cfg, "train", max_minutes=0.0), data=splits, runs_dir=tmp_path, name="full", progress=False)
    a = load_run(full, checkpoint="latest").model
    b = load_run(resumed, checkpoint="latest").model
    from flax import nnx

    for x, y in zip(jax.tree.leaves(nnx.state(a)), jax.tree.leaves(nnx.state(b))):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_max_minutes_must_not_be_negative():
    from vaekit.config import validate

    with pytest.raises(VaekitError, match="train.max_minutes"):
        validate(tiny_config(train={"max_minutes": -1.0}))


def test_asynchronous_save_writes_the_state_as_it_was_when_saved(tmp_path):
    """The trainer donates its state's buffers to the next step while Orbax still writes: the
    checkpoint must hold the values at save time, bit for bit, in both modes."""
    import jax.numpy as jnp

    step = jax.jit(lambda s: jax.tree.map(lambda v: v * 3.0 + 1.0, s), donate_argnums=0)
    for asynchronous in (True, False):
        ckpt = checkpoint.Checkpointer(tmp_path / str(asynchronous), asynchronous=asynchronous)
        assert ckpt.asynchronous is asynchronous
        state = {"w": jnp.arange(200_000, dtype=jnp.float32) / 7.0, "n": jnp.asarray(3, jnp.int32) * 0}
        saved = jax.tree.map(np.array, state)
        ckpt.save("latest", 1, {"model": state})
        for _ in range(5):  # overwrite the donated buffers while the write may be in flight
            state = step(state)
        ckpt.save("latest", 2, {"model": state})
        ckpt.wait()
        back = ckpt.restore("latest", {"model": saved}, epoch=1)["model"]
        later = ckpt.restore("latest", {"model": saved}, epoch=2)["model"]
        ckpt.close()
        for k in saved:
            np.testing.assert_array_equal(np.asarray(back[k]), saved[k])
            np.testing.assert_array_equal(np.asarray(later[k]), np.asarray(state[k]))


def _tensorboard_scalars(run_dir, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one scalar tag, read from the run's event files (TFRecord framing)."""
    import struct

    from tensorboardX.proto import event_pb2

    points = []
    for path in sorted((run_dir / "tensorboard").iterdir()):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            points += [(event.step, v.simple_value) for v in event.summary.value if v.tag == tag]
    return points


def test_step_curves_are_means_of_log_every_steps(tmp_path, splits):
    # 10 steps an epoch in chunks of 4, 4, 2: groups of 3 within each chunk end at steps 3, 4, 7, 8, 10
    run = train(tiny_config(train={"log_every": 3, "chunk_steps": 4}), data=splits, runs_dir=tmp_path, name="r", progress=False)
    points = _tensorboard_scalars(run, "step/loss")
    assert [s for s, _ in points] == [3, 4, 7, 8, 10, 13, 14, 17, 18, 20]
    sizes = np.array([3, 1, 3, 1, 2])
    epoch1 = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    np.testing.assert_allclose(np.sum(sizes * [v for _, v in points[:5]]) / 10, epoch1["train/loss"], rtol=1e-5)


@pytest.mark.parametrize("model", [{}, {"net": "conv", "conv_channels": (4, 8), "latent_dim": 3},
                                   {"kind": "hvae"}])
def test_init_state_in_one_jit_equals_the_eager_build(model, splits):
    """The model and optimizer state are built inside one nnx.jit (a fixed cost of every run): the
    same bits as building them op by op."""
    from flax import nnx

    from vaekit.training.state import build_state, init_state

    cfg = tiny_config(model=model)
    jm, jitted = init_state(cfg, splits.spec, 10)
    em, eager = build_state(cfg, splits.spec, 10)
    assert type(jm) is type(em)
    paths = jax.tree_util.tree_flatten_with_path(eager)[0]
    assert len(paths) == len(jax.tree.leaves(jitted)) > 8
    for (path, a), b in zip(paths, jax.tree.leaves(jitted)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(path))
    for a, b in zip(jax.tree.leaves(nnx.state(em)), jax.tree.leaves(nnx.state(jm))):  # the returned models too
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))


def test_train_from_python_arrays_saves_loads_and_resumes_with_them(tmp_path, splits):
    """train(cfg, data={...}, out=...): the arrays are read as an .npz file's; run.json says where
    the data came from, so neither Run.data() nor a resume without the data loads cfg.data instead."""
    arrays = {"x": (splits.train["x"][..., 0] * 255).astype(np.uint8), "x_val": splits.val["x"]}
    cfg = tiny_config(train={"epochs": 1}, data={"binarize": "static"})
    run = train(cfg, data=arrays, out=tmp_path / "mine", progress=False)
    assert run == tmp_path / "mine"
    info = json.loads((run / layout.RUN_FILE).read_text())
    # 200 examples in x: the test split is carved off its end (a tenth), validation is x_val
    assert info["status"] == "complete" and info["data_origin"] == "python" and info["num_train"] == 180
    loaded = load_run(run)
    assert loaded.model is not None and loaded.spec.shape == (8, 8, 1)
    with pytest.raises(VaekitError, match="arrays given in Python") as e:
        loaded.data()
    assert "\n" not in str(e.value)
    with pytest.raises(VaekitError, match="resume it from Python"):
        train(replace(cfg, "train", epochs=2), resume=run, progress=False)
    resumed = train(replace(cfg, "train", epochs=2), data=arrays, resume=run, progress=False)
    assert [r["epoch"] for r in layout.read_metrics(resumed)] == [1, 2]


@pytest.mark.parametrize("data, message", [
    ({"x_val": np.zeros((5, 4), np.float32)}, "has no array 'x'"),
    ({"x": np.zeros((50,), np.float32)}, r"array 'x' has shape \(50,\) \(ndim 1\)"),
    ({"x": np.zeros((50, 8, 8), np.float32), "x_val": np.zeros((5, 4, 4), np.float32)}, "'x_val' images have shape"),
    ({"x": np.zeros((50, 4), np.float32), "y": np.zeros(7, np.int32)}, r"array 'y' has shape \(7,\)"),
    ({"x": np.zeros((50, 4), np.float32), "xval": np.zeros((5, 4), np.float32)}, "unknown keys 'xval'"),
    ([np.zeros((50, 4))], "data must be a vaekit.data.Splits or a dict of arrays"),
])
def test_bad_data_is_one_line_before_any_directory_is_made(tmp_path, data, message):
    with pytest.raises(VaekitError, match=message) as e:
        train(tiny_config(), data=data, out=tmp_path / "r", progress=False)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "r").exists()


def test_the_compilation_cache_setting_is_the_runs_and_the_callers_after(tmp_path, splits):
    """train.compilation_cache holds while the trainer compiles and runs; JAX's setting is the
    caller's again afterwards (a library does not change the process)."""
    flag = "jax_enable_compilation_cache"
    before = jax.config.jax_enable_compilation_cache
    try:
        jax.config.update(flag, True)
        seen = []
        tr = Trainer(tiny_config(train={"compilation_cache": False}), splits,
                     chunk_callback=lambda *_: seen.append(jax.config.jax_enable_compilation_cache))
        assert jax.config.jax_enable_compilation_cache is True
        tr.fit_epoch()
        assert seen and not any(seen) and jax.config.jax_enable_compilation_cache is True
        train(tiny_config(train={"compilation_cache": False, "epochs": 1}), data=splits, out=tmp_path / "r",
              progress=False)
        assert jax.config.jax_enable_compilation_cache is True
    finally:
        jax.config.update(flag, before)


def test_train_with_your_own_nets_and_arrays_as_the_readme_does(tmp_path, splits):
    """vaekit.train(cfg, data={...}, encoder=..., decoder=..., out=...): the modules train inside
    the model as given (their own initial weights), config.yaml names their classes, and the run
    loads back with them."""
    import vaekit
    from flax import nnx
    from test_user_nets import MyDecoder, MyEncoder

    encoder, decoder = MyEncoder([8, 8, 1], 16, 4, rngs=nnx.Rngs(5)), MyDecoder(4, 16, [8, 8, 1], rngs=nnx.Rngs(6))
    first = np.asarray(encoder.body.kernel[...]).copy()
    cfg = tiny_config(train={"epochs": 1})
    run = vaekit.train(cfg, data={"x": splits.train["x"], "x_val": splits.val["x"]}, encoder=encoder,
                       decoder=decoder, out=tmp_path / "mine", progress=False)
    loaded = load_run(run, checkpoint="latest")
    assert loaded.config.model.encoder == "test_user_nets:MyEncoder" and isinstance(loaded.model.encoder.net, MyEncoder)
    kernel = np.asarray(loaded.model.encoder.net.body.kernel[...])
    assert kernel.shape == first.shape and not np.array_equal(kernel, first)  # trained from the given weights
    assert np.abs(kernel - first).max() < 0.1  # a few Adam steps away from them, not from a fresh draw
