"""The `vaekit` command line end to end on a small MNIST subset, and its handling of bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import TRAINED_RUN_ARGS, trained_run_dir
from vaekit.cli import main

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """The session's tiny run, made by one real `vaekit train` process (conftest.trained_run_dir)."""
    return trained_run_dir(tmp_path_factory)


def test_train_writes_a_complete_run(run_dir):
    for name in ("config.yaml", "run.json", "metrics.jsonl", "samples.png", "reconstructions.png", "curves.png"):
        assert (run_dir / name).exists()
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "complete" and info["num_train"] == 512 and info["data_spec"]["shape"] == [28, 28, 1] and info["data_spec"]["kind"] == "images"


def test_sample_reconstruct_interpolate_info(run_dir, tmp_path, capsys):
    assert main(["sample", str(run_dir), "-n", "16", "--out", str(tmp_path / "s.png")]) == 0
    assert main(["sample", str(run_dir), "-n", "5", "--out", str(tmp_path / "s.npy")]) == 0
    s = np.load(tmp_path / "s.npy")
    assert s.shape == (5, 28, 28, 1) and s.min() >= 0 and s.max() <= 1
    assert main(["reconstruct", str(run_dir), "--split", "test", "--out", str(tmp_path / "r.png")]) == 0
    assert main(["interpolate", str(run_dir), "--out", str(tmp_path / "i.png"), "--pairs", "2"]) == 0
    for f in ("s.png", "r.png", "i.png"):
        assert (tmp_path / f).stat().st_size > 1000
    assert main(["info", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "train.epochs" in out and "val/elbo" in out and "complete" in out
    # 784-64-(2x8) encoder and 8-64-784 decoder, counted on the built model (the table may wrap the row)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["parameters"] == 784 * 64 + 64 + 64 * 16 + 16 + 8 * 64 + 64 + 64 * 784 + 784 == 102_816
    assert info["code_width"] == 8 and "102,816" in out
    assert main(["presets"]) == 0
    assert "mnist-mlp" in capsys.readouterr().out


def test_python_api_loads_the_run(run_dir):
    import jax.numpy as jnp
    from flax import nnx

    import vaekit

    run = vaekit.load_run(run_dir)
    x = jnp.asarray(run.data().test["x"][:4])
    assert run.model.encode(x).mean.shape == (4, 8)
    assert run.model.reconstruct(x).shape == (4, 28, 28, 1)
    assert run.model.sample(3, rngs=nnx.Rngs(sample=0)).shape == (3, 28, 28, 1)
    loss, metrics = run.model.loss({"x": x}, rngs=nnx.Rngs(sample=0), step=jnp.asarray(0))
    assert np.isfinite(float(loss)) and "elbo" in metrics


def _err(capsys, argv, *needles):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err  # a user's mistake
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_give_one_line_and_nonzero_exit(capsys, tmp_path, run_dir):
    _err(capsys, ["train", "--preset", "nope"], "unknown preset 'nope'")
    _err(capsys, ["train", "--set", "train.epoch=2"], "did you mean 'train.epochs'")
    _err(capsys, ["train", "--set", "model.latent_dim=0"], "model.latent_dim must be positive")
    _err(capsys, ["train", "--set", "train.learning_rate=-1"], "train.learning_rate must be positive")
    _err(capsys, ["train", "--set", "objective.beta=-0.5"], "objective.beta must be >= 0")
    _err(capsys, ["train", "--set", "data.limit=50", "--set", "train.batch_size=100", "--runs-dir",
                  str(tmp_path), "--name", "x"], "batch_size 100 is larger than the training set")
    assert not (tmp_path / "x").exists()  # nothing written for a rejected run
    _err(capsys, ["info", str(tmp_path)], "not a vaekit run directory")
    _err(capsys, ["sample", str(tmp_path / "missing")], "does not exist")
    _err(capsys, ["sample", str(run_dir), "--out", str(tmp_path / "s.jpg")], "--out must end in")


def test_bad_user_data(capsys, tmp_path):
    bad = tmp_path / "bad.npz"
    x = np.random.default_rng(0).uniform(size=(64, 8, 8)).astype(np.float32)
    x[3, 2, 2] = np.nan
    np.savez(bad, x=x)
    _err(capsys, ["train", "--set", f"data.path={bad}", "--runs-dir", str(tmp_path)], "NaN")
    np.savez(bad, x=np.zeros((64, 8), np.float32))
    _err(capsys, ["train", "--set", f"data.path={bad}", "--runs-dir", str(tmp_path)], "x")
    assert not any(p.is_dir() for p in tmp_path.iterdir())


def test_existing_run_is_not_overwritten(capsys, run_dir):
    before = (run_dir / "run.json").read_text()
    _err(capsys, ["train", "--runs-dir", str(run_dir.parent), "--name", run_dir.name, *TRAINED_RUN_ARGS], "already exists")
    assert (run_dir / "run.json").read_text() == before


def test_corrupted_checkpoint_through_cli(capsys, tmp_path, run_dir):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for f in (copy / "checkpoints").rglob("*"):
        if f.is_file() and "metadata" not in f.name:
            f.write_bytes(b"\0" * 7)
    _err(capsys, ["sample", str(copy), "--out", str(tmp_path / "s.png")], "corrupted or incomplete")


def test_user_npz_trains_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=(rng.uniform(size=(120, 8, 8)) * 255).astype(np.uint8), y=rng.integers(0, 3, 120))
    code = main(["train", "--set", f"data.path={data}", "--set", "train.epochs=1", "--set", "train.batch_size=20",
                 "--set", "model.hidden=[16]", "--set", "model.latent_dim=2", "--set", "data.binarize=none",
                 "--runs-dir", str(tmp_path), "--name", "npz", "--no-progress"])
    assert code == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(tmp_path / "npz")
    assert os.path.exists(tmp_path / "npz" / "samples.png")


def test_evaluate_command(run_dir, capsys):
    assert main(["evaluate", str(run_dir), "--samples", "50", "--limit", "30", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "NLL (nats)" in out and "IWAE bound k = 50" in out and "active units" in out
    assert (run_dir / "evaluation.json").exists()
    _err(capsys, ["evaluate", str(run_dir), "--samples", "0"], "--samples must be >= 1")
    _err(capsys, ["evaluate", str(run_dir), "--split", "dev"], "--split must be")
    _err(capsys, ["evaluate", str(run_dir), "--mc-error", "-1"], "--mc-error must be >= 0")
    assert main(["evaluate", str(run_dir), "--samples", "200", "--limit", "30", "--chunk", "20", "--mc-error", "1e6",
                 "--min-samples", "40", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "draws per example, mean / max" in out and "40 / 40" in out and "half the draws" in out
    assert "test-k200-n30-e1e+06" in json.loads((run_dir / "evaluation.json").read_text())
    assert main(["info", str(run_dir)]) == 0  # an adaptive result is labelled by its target, not as a k
    out = " ".join(capsys.readouterr().out.split())  # the table may wrap the label
    assert "--mc-error 1e+06" in out and "40 draws per" in out, out


def test_info_marks_an_evaluation_of_a_replaced_checkpoint_stale(run_dir, tmp_path, capsys):
    import shutil

    from vaekit.runs import layout

    copy = tmp_path / "scored"
    shutil.copytree(run_dir, copy)
    assert main(["evaluate", str(copy), "--samples", "10", "--limit", "5", "--no-progress"]) == 0
    best = layout.newest_checkpoint(copy, "best")
    assert json.loads((copy / "evaluation.json").read_text())["test-k10-n5"]["checkpoint_epoch"] == best
    capsys.readouterr()
    assert main(["info", str(copy)]) == 0
    assert "stale" not in capsys.readouterr().out
    best_dir = copy / layout.CHECKPOINT_DIR / "best"
    shutil.copytree(best_dir / str(best), best_dir / str(best + 3))  # a newer best, as further training saves
    assert main(["info", str(copy)]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # the table may wrap the label
    assert "stale: scored the best" in out
    shutil.rmtree(best_dir)  # no best checkpoint at all: the error says which one there is
    _err(capsys, ["evaluate", str(copy), "--samples", "2", "--limit", "2"],
         "has no 'best' checkpoint yet; --checkpoint latest loads its latest one")
    entry = json.loads((copy / "evaluation.json").read_text())["test-k10-n5"]
    assert layout.stale_result(copy, entry) is None  # nothing to compare with
    shutil.copytree(copy / layout.CHECKPOINT_DIR / "latest" / str(best), best_dir / str(best + 3))
    assert layout.stale_result(copy, entry) == f"stale: scored the best checkpoint of epoch {best}; the run's is now epoch {best + 3}"


def test_resume_through_cli(run_dir, tmp_path, capsys):
    import shutil

    copy = tmp_path / "resumable"
    shutil.copytree(run_dir, copy)
    assert main(["train", "--resume", str(copy), "--set", "train.epochs=2", "--no-progress"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(copy)
    assert json.loads((copy / "run.json").read_text())["epoch"] == 2
    _err(capsys, ["train", "--resume", str(copy), "--set", "model.latent_dim=3"], "only train.epochs and train.max_minutes may change")
    stamps = {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()}
    assert main(["train", "--resume", str(copy), "--set", "train.max_minutes=0", "--no-progress"]) == 0  # lifts a budget
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == str(copy)
    assert "is complete (epoch 2 of 2): nothing to train, nothing changed" in " ".join(captured.err.split())
    assert {p: p.stat().st_mtime_ns for p in copy.rglob("*") if p.is_file()} == stamps  # not a file touched


@pytest.mark.slow
def test_shapes_run_traverse_and_disentanglement(tmp_path, capsys):
    """A tiny conv VAE on the whole generated grid, counted in steps; its traversal and scores."""
    code = main(["train", "--preset", "shapes-beta", "--set", "data.val_size=64", "--set", "train.steps=6",
                 "--set", "train.eval_every=4", "--set", "train.chunk_steps=2", "--set", "train.batch_size=32",
                 "--set", "model.conv_channels=[4,4,8,8]", "--set", "model.conv_dense=16",
                 "--set", "model.latent_dim=3", "--runs-dir", str(tmp_path), "--name", "sh", "--no-progress"])
    assert code == 0
    run = tmp_path / "sh"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 6]  # a validation every 4 steps, and at the end
    info = json.loads((run / "run.json").read_text())
    assert info["num_train"] == 737_280 - 2 * 64 and info["status"] == "complete"
    capsys.readouterr()
    # Resuming counts on in steps.
    assert main(["train", "--resume", str(run), "--set", "train.steps=8", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["step"] == 8
    capsys.readouterr()
    _err(capsys, ["train", "--resume", str(run), "--set", "train.epochs=3"], "only train.steps and train.max_minutes may change")
    assert main(["evaluate", str(run), "--split", "train", "--limit", "4", "--samples", "10", "--no-progress"]) == 0
    capsys.readouterr()
    _err(capsys, ["evaluate", str(run), "--split", "train", "--samples", "10"], "ask for at most 200,000")
    assert main(["traverse", str(run), "--out", str(tmp_path / "t.png"), "--steps", "5"]) == 0
    assert main(["reconstruct", str(run), "--split", "train", "-n", "4", "--out", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "t.png").stat().st_size > 1000
    assert main(["disentanglement", str(run), "--num-train", "300", "--num-test", "100", "--n-jobs", "1"]) == 0
    captured = capsys.readouterr()
    out = captured.out
    assert "MIG" in out and "DCI disentanglement" in out
    # per-metric progress on stderr (a run of minutes is not silent)
    assert "[1/6] encoding 400 images" in captured.err and "[4/6] DCI" in captured.err and "[6/6] beta-VAE" in captured.err
    scores = json.loads((run / "disentanglement.json").read_text())
    assert 0.0 <= scores["mig"]["mig"] <= 1.0 and 0.0 <= scores["dci"]["disentanglement"] <= 1.0


def test_disentanglement_needs_factors(run_dir, capsys):
    _err(capsys, ["disentanglement", str(run_dir)], "need a model trained on data with known factors")


def test_conditional_options_on_an_unconditional_run(capsys, run_dir, tmp_path):
    _err(capsys, ["sample", str(run_dir), "--label", "3", "--out", str(tmp_path / "s.png")],
         "--label needs a conditional model", "'vae'")
    _err(capsys, ["interpolate", str(run_dir), "--label", "3", "--out", str(tmp_path / "i.png")],
         "--label needs a conditional model")
    _err(capsys, ["train", "--set", "model.condition=film"], "'model.condition' belongs to model.kind cvae",
         "valid keys for 'vae'")


def test_a_run_from_vaekit_0_1_fails_in_one_line(capsys, run_dir, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(run_dir, old)
    for item in (old / "checkpoints" / "best").glob("*/model"):  # 0.1 wrote one item, "default"
        item.rename(item.parent / "default")
    _err(capsys, ["sample", str(old), "--out", str(tmp_path / "s.png")], "written by vaekit 0.1", "retrain")


@pytest.mark.slow
def test_exit_now_skips_only_the_teardown(tmp_path):
    """The `vaekit` command ends with `exit_now` after `skip_teardown`: the status passes through,
    what a normal exit does first still happens (threads that are not daemons finish, an idle
    executor's worker is woken, atexit handlers registered later, as JAX's are, run, buffered output
    is flushed), and the interpreter's teardown does not (an object's finalizer that the teardown
    calls, as the same script without `skip_teardown` shows)."""
    import textwrap

    script = textwrap.dedent(f"""
        import atexit, concurrent.futures, sys, threading, time, pathlib
        from vaekit.cli.parser import exit_now, skip_teardown
        if sys.argv[1] == "fast":
            skip_teardown()
        out = pathlib.Path(sys.argv[2])
        atexit.register(lambda: (out / "atexit").write_text("ran"))
        threading.Thread(target=lambda: (time.sleep(0.3), (out / "thread").write_text("done"))).start()
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pool.submit(lambda: None).result()  # its worker now waits for work, as an unclosed pool's does

        class Teardown:
            def __del__(self, path=out / "teardown"):
                path.write_text("ran")

        kept = Teardown()  # a module global: only the teardown collects it
        print("buffered, no newline", end="")
        exit_now(3)
        (out / "after").write_text("never")
    """)
    for mode in ("fast", "full"):
        out = tmp_path / mode
        out.mkdir()
        done = subprocess.run([sys.executable, "-c", script, mode, str(out)], capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 3, done.stderr
        assert done.stdout == "buffered, no newline"
        assert (out / "atexit").read_text() == "ran" and (out / "thread").read_text() == "done"
        assert not (out / "after").exists()
        assert (out / "teardown").exists() == (mode == "full")


def test_every_command_has_a_handler_and_text_runs_are_dispatched_in_one_place():
    """Each command of the parser has a handler; the text handlers are one table keyed by command,
    and only the parser's dispatch asks whether a run is a text run (no command branches on it);
    one function loads runs."""
    import argparse
    from pathlib import Path

    import vaekit.cli
    from vaekit.cli import text
    from vaekit.cli.parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, sub in commands.items():
        assert callable(sub.get_default("func")), name
    for name in text.HANDLERS:
        assert "run" in {a.dest for a in commands[name]._actions}, name  # the dispatch reads the run's data kind
    sources = {p.name: p.read_text() for p in Path(vaekit.cli.__file__).parent.glob("*.py")}
    assert {name for name, src in sources.items() if "is_text_run(" in src} == {"parser.py", "text.py"}
    assert {name for name, src in sources.items() if "load_run" in src} == {"common.py"}


def test_broken_config_yaml_is_one_line(tmp_path, capsys):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("data:\n  source: mnist\ntrain: [unclosed\n  epochs: 3\n")
    (run / "run.json").write_text('{"status": "complete"}')
    _err(capsys, ["info", str(run)], "config.yaml is not valid YAML", "line")
    _err(capsys, ["train", "--resume", str(run)], "config.yaml is not valid YAML")


def test_every_option_has_help_with_its_default_once_and_version(capsys):
    import argparse

    from vaekit.cli.parser import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in [("vaekit", parser), *subparsers.choices.items()]:
        text = sub.format_help()
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert f"(default: {action.default})" in " ".join(text.split()), (name, action.dest)
                assert "(default" not in action.help, (name, action.dest)  # said once, by the formatter
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith("vaekit ")


def test_info_shows_status_and_results_first_config_last(tmp_path, capsys):
    from vaekit import config as C
    from vaekit.runs import layout

    run = tmp_path / "r"
    run.mkdir()
    cfg = C.resolve("shapes-beta", None, ["train.steps=8", "train.eval_every=4"])
    layout.write_config(run, cfg)
    layout.write_json_atomic(run / "run.json", {"status": "complete", "epoch": 2, "step": 8, "model_kind": "vae",
                                            "num_train": 1000, "best_metric": "val/elbo", "best": -101.83456789})
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 2, "step": 8, "val/elbo": -101.83456789,
                                                   "val/kl": 0.000123456, "train/examples_per_s": 21421.123}) + "\n")
    layout.write_json_atomic(run / "evaluation.json", {"test-k50-n30": {"split": "test", "examples": 30, "samples": 50,
                                                                    "nll": 99.87654321, "nll_stderr": 1.2345678,
                                                                    "elbo": -104.1234567, "active_units": 7}})
    layout.write_json_atomic(run / "disentanglement.json", {"mig": {"mig": 0.123456789}, "dci": {"disentanglement": 0.5}})
    layout.write_json_atomic(run / "quality.json", {"fid": 12.3456789})
    assert main(["info", str(run)]) == 0
    out = capsys.readouterr().out
    order = [out.index(s) for s in ("complete", "8 of 8", "-101.8", "99.88", "MIG", "0.1235", "fid", "train.steps")]
    assert order == sorted(order), out  # status, steps, metrics, evaluation, disentanglement, quality, config
    assert "-101.83456789" not in out and "1.235e-04" in out and "21,421.1" in out
