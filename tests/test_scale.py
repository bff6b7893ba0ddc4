"""Data parallel over devices and processes: the same global batch and seed give the same run.

JAX fixes its device count when it starts, so each case runs in a fresh subprocess: 4 CPU host
devices (XLA_FLAGS=--xla_force_host_platform_device_count=4), or 2 processes joined through
jax.distributed on 127.0.0.1. Every subprocess is bounded in time.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN_ARGS = ["--no-progress", "--set", "train.loggers=[]", "--set", "train.steps=20", "--set", "train.eval_every=20",
              "--set", "model.hidden=[32]", "--set", "model.latent_dim=4", "--set", "train.batch_size=40",
              "--set", "train.chunk_steps=10"]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAEKIT_", "XLA_FLAGS", "SLURM_", "OMPI_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(ROOT / "src"), env.get("PYTHONPATH", "")])
    env["VAEKIT_COMPILATION_CACHE"] = "0"
    env.update(extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


FOUR_DEVICES = textwrap.dedent("""
    import json, os, sys
    import jax, numpy as np
    from conftest import synthetic_splits, tiny_config
    from vaekit.cli import main
    from vaekit.errors import VaekitError
    from vaekit.training.loop import Trainer

    assert jax.device_count() == 4
    out = {}
    for devices in ("1", "4"):
        cfg = tiny_config(train={"devices": devices, "steps": 20, "eval_every": 20, "batch_size": 40,
                                 "chunk_steps": 20, "eval_batch_size": 50}, data={"binarize": "dynamic"})
        tr = Trainer(cfg, synthetic_splits(n=200))
        m = tr.fit_epoch()
        out[devices] = {"loss": float(m["train/loss"]), "val": float(tr.validate()["val/elbo"]),
                        "params": [np.asarray(x).ravel().tolist() for x in jax.tree.leaves(tr.state.params)],
                        "sharding": str(jax.tree.leaves(tr.state.params)[0].sharding)}
    try:
        Trainer(tiny_config(train={"devices": "4", "batch_size": 30}), synthetic_splits(n=200))
    except VaekitError as e:
        out["indivisible"] = str(e)
    try:
        Trainer(tiny_config(train={"devices": "8"}), synthetic_splits(n=200))
    except VaekitError as e:
        out["too_many"] = str(e)
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_run(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FOUR_DEVICES], capture_output=True, text=True,
                          timeout=240, env=_env(XLA_FLAGS="--xla_force_host_platform_device_count=4"))
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    assert line, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = json.loads(line[0][len("RESULT "):])
    one, four = out["1"], out["4"]
    assert "SingleDevice" in one["sharding"] and "'data': 4" in four["sharding"]
    np.testing.assert_allclose(four["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(four["val"], one["val"], rtol=1e-5)
    for a, b in zip(one["params"], four["params"]):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
    moved = max(np.max(np.abs(np.asarray(a))) for a in one["params"])
    assert moved > 0.01  # the parameters trained (a run that did nothing would match trivially)
    assert "train.batch_size 30 is not divisible by the 4 devices" in out["indivisible"]
    assert out["too_many"] == "train.devices=8 but this machine has 4 cpu devices"


def test_bad_device_settings_are_one_line_and_write_nothing(tmp_path, capsys):
    from vaekit.cli import main

    runs = tmp_path / "runs"
    assert main(["train", "--runs-dir", str(runs), "--set", "train.devices=2", "--set", "data.limit=100"]) == 2
    assert main(["train", "--runs-dir", str(runs), "--set", "train.devices=two"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vaekit: error: train.devices=2 but this machine has 1 cpu device",
                   "vaekit: error: train.devices must be 'all' or a positive integer, got 'two'"]
    assert not runs.exists()


def _launch(args, port, n=2, timeout=25):
    env = dict(VAEKIT_COORDINATOR=f"127.0.0.1:{port}", VAEKIT_NUM_PROCESSES=str(n),
               VAEKIT_DISTRIBUTED_TIMEOUT=str(timeout))
    procs = [subprocess.Popen([sys.executable, "-m", "vaekit.cli", *args], env=_env(**env, VAEKIT_PROCESS_ID=str(i)),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(n)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=180))
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    return [p.returncode for p in procs], outs


@pytest.mark.slow
def test_two_processes_equal_one_process_and_resume(tmp_path):
    from flax import nnx
    import jax

    from vaekit.cli import main
    from vaekit.runs import layout
    from vaekit.runs.run import load_run

    runs = str(tmp_path / "runs")
    rng = np.random.default_rng(0)
    x = (rng.random((300, 8, 8)) < np.linspace(0.1, 0.9, 64).reshape(8, 8)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x)
    data = ["--set", f"data.path={tmp_path / 'd.npz'}", "--set", "data.val_size=20"]
    codes, outs = _launch(["train", "--runs-dir", runs, "--name", "two", *TRAIN_ARGS, *data], _free_port())
    assert codes == [0, 0], "\n".join(o[1][-2000:] for o in outs)
    assert "step 20" in outs[0][0] and "step 20" not in outs[1][0]  # process 0 alone prints the epoch lines
    assert main(["train", "--runs-dir", runs, "--name", "one", *TRAIN_ARGS, *data]) == 0
    two, one = load_run(Path(runs) / "two", checkpoint="latest"), load_run(Path(runs) / "one", checkpoint="latest")
    for a, b in zip(jax.tree.leaves(nnx.state(one.model)), jax.tree.leaves(nnx.state(two.model))):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-5)
    assert len(layout.read_metrics(Path(runs) / "two")) == 1  # one writer: no record twice
    np.testing.assert_allclose(layout.read_metrics(Path(runs) / "two")[0]["val/elbo"],
                               layout.read_metrics(Path(runs) / "one")[0]["val/elbo"], rtol=1e-5)
    # Resume with both processes (Orbax restores the replicated state on each).
    codes, outs = _launch(["train", "--resume", str(Path(runs) / "two"), "--set", "train.steps=30", "--no-progress"],
                          _free_port())
    assert codes == [0, 0], "\n".join(o[1][-2000:] for o in outs)
    records = layout.read_metrics(Path(runs) / "two")
    assert [r["step"] for r in records] == [20, 30]
    assert json.loads((Path(runs) / "two" / "run.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_unreachable_coordinator_is_one_line_after_the_timeout(tmp_path):
    env = _env(VAEKIT_COORDINATOR=f"127.0.0.1:{_free_port()}", VAEKIT_NUM_PROCESSES="2", VAEKIT_PROCESS_ID="1",
               VAEKIT_DISTRIBUTED_TIMEOUT="2")
    proc = subprocess.run([sys.executable, "-m", "vaekit.cli", "train", "--runs-dir", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the coordinator" in lines[0] and "after 2 s" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("env,message", [
    ({"VAEKIT_COORDINATOR": "127.0.0.1:1234"}, "VAEKIT_NUM_PROCESSES, VAEKIT_PROCESS_ID not set"),
    ({"VAEKIT_COORDINATOR": "nohost", "VAEKIT_NUM_PROCESSES": "2", "VAEKIT_PROCESS_ID": "0"}, "must be host:port"),
    ({"VAEKIT_COORDINATOR": "h:1", "VAEKIT_NUM_PROCESSES": "2", "VAEKIT_PROCESS_ID": "2"}, "must be in [0,"),
])
def test_bad_distributed_settings(monkeypatch, env, message):
    from vaekit import distributed
    from vaekit.errors import VaekitError

    for k in ("VAEKIT_COORDINATOR", "VAEKIT_NUM_PROCESSES", "VAEKIT_PROCESS_ID"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(VaekitError, match=message.replace("[", r"\[")):
        distributed.initialize()
