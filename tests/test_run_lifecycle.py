"""A run's life from the user's side: the config it records, its name, Ctrl-C and the lock
against a second process, damaged checkpoints, divergence, and the status a failure leaves.

Interrupts and locks run real `vaekit train` processes and send them real signals.
"""

import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from vaekit import config as C
from vaekit.cli import main
from vaekit.errors import VaekitError
from vaekit.runs import layout
from vaekit.runs.run import Run
from vaekit.runs.train import train
from vaekit.training.loop import Trainer
from vaekit.training.step import TrainingDiverged

from conftest import default_sigint, replace, synthetic_splits, tiny_config

SMALL = ["--set", "data.limit=512", "--set", "model.hidden=[64]", "--set", "train.eval_batch_size=2000"]
TINY = ["model.hidden=[32]", "model.latent_dim=4", "train.epochs=1", "train.batch_size=20", "train.chunk_steps=5",
        "train.eval_batch_size=64"]


def _fake_data(monkeypatch, splits=None):
    splits = splits or synthetic_splits()
    monkeypatch.setattr("vaekit.data.load_data", lambda *a, **k: splits)
    return splits


def _err(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    for n in needles:
        assert n in err, err
    return err


def _vaekit(*args):
    # The child gets SIGINT at its default, as from a terminal (conftest.default_sigint). No
    # preexec_fn: forking a multithreaded JAX process to run Python in the child can deadlock.
    with default_sigint():
        return subprocess.Popen([sys.executable, "-m", "vaekit.cli", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def _wait_for(cond, proc, timeout=300):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.02)


def _running(run):
    try:
        return json.loads((run / "run.json").read_text()).get("status") == "running"
    except (OSError, json.JSONDecodeError):
        return False


# ------------------------------------------------------------------ the recorded config and the run's name


def test_config_file_starts_from_a_preset_and_every_layer_is_recorded(tmp_path, monkeypatch, capsys, caplog):
    """Item 1 (also 5, 16, 17: the run's name, whole output lines, a 'compiling' line)."""
    plain = tmp_path / "plain.yaml"
    plain.write_text("train:\n  learning_rate: 3.0e-3\n")
    cfg = C.resolve(None, str(plain))
    assert cfg.preset == "mnist-mlp" and cfg.data.binarize == "dynamic" and cfg.train.epochs == 30  # the default preset
    conv = tmp_path / "conv.yaml"
    conv.write_text("preset: mnist-conv\nmodel:\n  latent_dim: 7\n")
    cfg = C.resolve(None, str(conv), ["model.latent_dim=9"])
    assert cfg.model.net == "conv" and cfg.preset == "mnist-conv" and cfg.model.latent_dim == 9
    assert C.resolve("mnist-mlp", str(conv)).model.net == "mlp"  # the flag wins over the file's key

    _fake_data(monkeypatch)
    monkeypatch.setenv("COLUMNS", "30")  # a narrow non-terminal: lines must not be cut
    cfg, layers = C.resolve_layers(None, str(plain), TINY)
    caplog.set_level(logging.INFO, logger="vaekit")
    run = train(cfg, runs_dir=tmp_path / "runs", progress=True, layers=layers)
    info = json.loads((run / "run.json").read_text())
    assert info["config_layers"] == {"preset": "mnist-mlp", "preset_from": "default", "file": str(plain),
                                     "overrides": TINY}
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["learning_rate"] == 3e-3  # fully resolved
    assert run.name.startswith("mnist-mlp-")  # item 5: named from the preset
    out = capsys.readouterr().out
    assert "━" not in out  # item 16: no progress bar when stdout is not a terminal, and whole lines
    assert [line for line in out.splitlines() if line.startswith("epoch 1/1") and line.endswith("ex/s")], out
    assert "compiling the training step" in caplog.text  # item 17
    assert not (run / layout.LOCK_FILE).exists()  # item 7: the lock is released on exit


def test_explicit_epochs_win_over_a_presets_steps():
    cfg = C.resolve("shapes-beta", None, ["train.epochs=1"])
    assert cfg.train.steps is None and cfg.train.epochs == 1
    with pytest.raises(VaekitError, match="train.epochs and train.steps are both set"):
        C.resolve("shapes-beta", None, ["train.epochs=1", "train.steps=100"])
    assert C.resolve("shapes-beta", None, ["train.steps=none", "train.epochs=2"]).train.steps is None


def test_a_yaml_boolean_names_what_the_user_typed(tmp_path):
    with pytest.raises(VaekitError, match="got 'yes'"):
        C.resolve(None, None, ["data.binarize=yes"])
    f = tmp_path / "c.yaml"
    f.write_text("data:\n  binarize: no\n")
    with pytest.raises(VaekitError, match="read as the YAML boolean false; put the word in quotes"):
        C.resolve(None, str(f))


def test_default_run_name_follows_the_data_and_net():
    assert C.default_run_name(C.resolve("mnist-conv")) == "mnist-conv"
    assert C.default_run_name(C.resolve("mnist-mlp", None, ["model.net=conv", "data.path=/d/faces.npz"])) == "faces-conv"
    assert C.default_run_name(C.resolve(None, None, ["model.kind=cvae"])) == "mnist-mlp-cvae"
    assert C.default_run_name(C.resolve("shapes-beta", None, ["model.net=mlp"])) == "shapes-mlp"


def test_your_own_grey_images_under_a_binarizing_preset_are_announced(tmp_path, caplog):
    x = np.random.default_rng(0).random((60, 8, 8, 1)).astype(np.float32)  # grey levels
    with caplog.at_level("INFO", logger="vaekit"):
        train(tiny_config(train={"epochs": 1}), data={"x": x}, runs_dir=tmp_path, name="grey", progress=False)
    said = [r.getMessage() for r in caplog.records if "data.binarize=dynamic" in r.getMessage()]
    assert len(said) == 1 and "--set data.binarize=none keeps them grey" in said[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="vaekit"):
        train(tiny_config(train={"epochs": 1}, data={"binarize": "none"}), data={"x": x}, runs_dir=tmp_path,
              name="kept", progress=False)
    assert not [r for r in caplog.records if "data.binarize=" in r.getMessage()]


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from vaekit.runs import train as train_module

    splits = synthetic_splits(n=40)
    monkeypatch.setattr(train_module.distributed, "agreed_time", lambda: 1_700_000_000.0)  # one second for both
    cfg = tiny_config(train={"epochs": 1})
    first = train_module.train(cfg, data=splits, runs_dir=tmp_path, progress=False)
    second = train_module.train(cfg, data=splits, runs_dir=tmp_path, progress=False)
    assert second == first.with_name(first.name + "-2") and (second / "run.json").exists()
    # a default-named directory another process created after the check: the next free name, not an error
    taken = tmp_path / "stem"
    taken.mkdir()
    assert train_module._create(taken, False, rename=True) == tmp_path / "stem-2"
    with pytest.raises(VaekitError, match="already exists"):  # a name the user chose is never changed
        train_module._create(taken, False, rename=False)


# ------------------------------------------------------------------ interrupts and locks


@pytest.mark.slow  # a real process and a real SIGINT (tests/test_train.py stops a run in-process)
def test_ctrl_c_before_the_first_checkpoint_prints_the_path_and_resumes_from_scratch(tmp_path, capsys):
    runs = tmp_path / "runs"
    proc = _vaekit("train", "--runs-dir", str(runs), "--name", "x", *SMALL, "--set", "train.epochs=1",
                   "--set", "data.limit=5000", "--no-progress")
    run = runs / "x"
    _wait_for(lambda: _running(run), proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert f"vaekit train --resume {run}" in err.strip().splitlines()[-1]
    assert not (run / "checkpoints" / "latest").exists() or not any((run / "checkpoints" / "latest").iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "interrupted"
    assert not (run / layout.LOCK_FILE).exists()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # no checkpoint: trained from the start
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1]


@pytest.mark.slow
def test_a_second_process_is_refused_and_a_dead_owner_reads_interrupted(tmp_path, capsys):
    runs = tmp_path / "runs"
    proc = _vaekit("train", "--runs-dir", str(runs), "--name", "x", *SMALL, "--set", "train.epochs=200",
                   "--no-progress")
    run = runs / "x"
    try:
        _wait_for(lambda: _running(run), proc)
        owner = json.loads((run / layout.LOCK_FILE).read_text())
        assert owner["pid"] == proc.pid and owner["host"] == socket.gethostname()
        _err(capsys, ["train", "--resume", str(run), "--no-progress"], f"is in use by process {proc.pid}")
        _err(capsys, ["train", "--runs-dir", str(runs), "--name", "x", "--overwrite", *SMALL],
             f"is in use by process {proc.pid}")
        with pytest.raises(VaekitError, match="already exists"):  # two new runs racing: one line, not FileExistsError
            layout.create_run_dir(run, overwrite=False)
        assert main(["info", str(run)]) == 0
        assert f"running (process {proc.pid}" in capsys.readouterr().out
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((run / "run.json").read_text())["status"] == "running"  # nobody could update it
    assert main(["info", str(run)]) == 0
    assert f"interrupted (its process {proc.pid}" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--set", "train.epochs=1", "--no-progress"]) == 0
    assert "was interrupted" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["status"] == "complete"
    assert not (run / layout.LOCK_FILE).exists()


# ------------------------------------------------------------------ damaged checkpoints


def _damage(checkpoint_dir: Path):
    for f in checkpoint_dir.rglob("*"):
        if f.is_file() and "/d/" in str(f):
            f.write_bytes(f.read_bytes()[:20])


def test_corrupted_checkpoint_one_clean_line_and_resume_falls_back(tmp_path, caplog, splits):
    cfg = tiny_config(train={"epochs": 2})
    run = train(cfg, data=splits, runs_dir=tmp_path, name="r", progress=False)
    _damage(run / "checkpoints" / "best")
    out = subprocess.run([sys.executable, "-m", "vaekit.cli", "sample", str(run), "--out", str(tmp_path / "s.png")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr  # nothing after it at exit
    assert "pybind11" not in out.stderr and "TensorStore" not in out.stderr
    assert f"checkpoint {run / 'checkpoints' / 'best' / '2'} is corrupted" in out.stderr
    assert f"from {run / 'checkpoints' / 'best' / '2' / 'model'}" in out.stderr  # the file it could not read
    # --resume: the newest "latest" checkpoint is damaged, epoch 1's is intact: fall back and train on
    _damage(run / "checkpoints" / "latest" / "2")
    caplog.set_level(logging.INFO, logger="vaekit")
    train(replace(cfg, "train", epochs=3), data=splits, resume=run, progress=False)
    assert "resuming from the intact checkpoint of epoch 1 instead" in caplog.text
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((run / "run.json").read_text())["status"] == "complete"


# ------------------------------------------------------------------ divergence


def test_trainer_keeps_the_last_good_state_after_divergence(splits):
    for loop in ("scan", "steps"):
        tr = Trainer(tiny_config(train={"learning_rate": 1e30, "loop": loop}), splits)
        with pytest.raises(TrainingDiverged, match=r"at step (\d+)") as e:
            tr.fit_epoch()
        bad_step = int(e.value.args[0].split("at step ")[1].split()[0])
        assert int(tr.state.step) == bad_step  # the state before the first bad step
        for leaf in jax.tree.leaves(tr.state.params):
            assert np.all(np.isfinite(np.asarray(leaf)))
        assert "val/elbo" in tr.validate()  # usable from Python: no deleted (donated) buffers


def test_nonfinite_validation_stops_the_run_as_diverged(tmp_path, monkeypatch, splits):
    real = Trainer.validate
    monkeypatch.setattr(Trainer, "validate", lambda self, *a, **k: dict(real(self, *a, **k), **{"val/elbo": float("nan")}))
    with pytest.raises(TrainingDiverged, match="validation elbo is nan"):
        train(tiny_config(), data=splits, runs_dir=tmp_path, name="r", progress=False)
    assert json.loads((tmp_path / "r" / "run.json").read_text())["status"] == "diverged"


# ------------------------------------------------------------------ failures, objective options, evaluation, pictures


def test_a_failure_after_training_starts_marks_the_run_failed(tmp_path, monkeypatch, splits):

    def boom(*a, **k):
        raise RuntimeError("cannot draw this")

    monkeypatch.setattr("vaekit.plots.save_curves", boom)
    with pytest.raises(RuntimeError, match="cannot draw this"):
        train(tiny_config(train={"epochs": 1, "pictures": True}), data=splits, runs_dir=tmp_path, name="r",
              progress=False)
    info = json.loads((tmp_path / "r" / "run.json").read_text())
    assert info["status"] == "failed" and "cannot draw this" in info["error"]
    assert not (tmp_path / "r" / layout.LOCK_FILE).exists()


def test_iwae_rejects_kl_options():
    for option in ("objective.beta=2", "objective.free_bits=0.5", "objective.capacity_max=5"):
        with pytest.raises(VaekitError, match="objective.kind=iwae .* cannot apply"):
            C.resolve("mnist-iwae", None, [option])


def test_bits_per_dim_only_for_discrete_likelihoods(monkeypatch, splits):
    from vaekit.evaluate import evaluate
    from vaekit.models import build_model

    _fake_data(monkeypatch, splits)
    for likelihood, expected in (("gaussian", False), ("bernoulli", True)):
        cfg = tiny_config(model={"likelihood": likelihood})
        model = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))
        run = Run(Path("unused"), cfg, model, {"data_spec": splits.spec.to_dict()}, [], "best")
        s = evaluate(run, samples=3, limit=8, progress=False, write=False)
        assert ("bits_per_dim" in s) is expected, likelihood


def test_write_pictures_restores_the_models_mode(tmp_path, splits):
    from vaekit.models import build_model
    from vaekit.training.pictures import write_pictures

    cfg = tiny_config(model={"net": "conv", "conv_channels": (4, 8), "latent_dim": 3})
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(params=0))
    model.train()
    norms = [node for _, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)]
    assert norms and not any(n.use_running_average for n in norms)
    write_pictures(tmp_path, model, splits, seed=0)
    assert (tmp_path / "samples.png").exists()
    assert not any(n.use_running_average for n in norms)  # still in train mode
