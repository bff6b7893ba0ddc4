"""The conditional VAE end to end through the CLI and the Python API, and its bad inputs."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import vaekit
from conftest import shared_run
from vaekit.cli import main

SMALL = ["--set", "data.limit=600", "--set", "train.epochs=1", "--set", "model.hidden=[64]",
         "--set", "model.latent_dim=8", "--set", "train.eval_batch_size=2000", "--no-progress"]


@pytest.fixture(scope="module")
def cvae_run(tmp_path_factory):
    """A tiny mnist-cvae run, trained once per session for every worker (`conftest.shared_run`)."""
    def make(runs, name):
        assert main(["train", "--preset", "mnist-cvae", "--runs-dir", str(runs), "--name", name, *SMALL]) == 0

    return shared_run(tmp_path_factory, "cvae", make)


def test_cvae_run_records_kind_and_a_class_grid(cvae_run):
    info = json.loads((cvae_run / "run.json").read_text())
    assert info["model_kind"] == "cvae" and info["capabilities"]["conditional"]
    assert info["data_spec"]["num_classes"] == 10
    from PIL import Image

    assert Image.open(cvae_run / "samples.png").size[1] > Image.open(cvae_run / "samples.png").size[0] * 0.8  # 10 rows


def test_sample_by_label_and_class_grid(cvae_run, tmp_path):
    assert main(["sample", str(cvae_run), "--label", "7", "-n", "6", "--out", str(tmp_path / "s.npy")]) == 0
    assert np.load(tmp_path / "s.npy").shape == (6, 28, 28, 1)
    assert main(["sample", str(cvae_run), "--out", str(tmp_path / "grid.npy"), "--cols", "3"]) == 0
    assert np.load(tmp_path / "grid.npy").shape == (30, 28, 28, 1)  # 3 per class, 10 classes
    assert main(["sample", str(cvae_run), "--out", str(tmp_path / "grid.png")]) == 0


def test_interpolate_reconstruct_traverse_with_labels(cvae_run, tmp_path):
    for argv in (["interpolate", "--label", "3", "--pairs", "2"], ["interpolate", "--pairs", "3"],
                 ["reconstruct", "--label", "2", "-n", "8"], ["traverse", "--label", "1", "--dims", "3"]):
        out = tmp_path / f"{argv[0]}.png"
        assert main([argv[0], str(cvae_run), *argv[1:], "--out", str(out)]) == 0
        assert out.stat().st_size > 500


def test_evaluate_reports_the_conditional_nll(cvae_run, capsys):
    assert main(["evaluate", str(cvae_run), "--samples", "20", "--limit", "40", "--no-progress"]) == 0
    assert "-log p(x|y)" in capsys.readouterr().out
    result = json.loads((cvae_run / "evaluation.json").read_text())["test-k20-n40"]
    assert result["conditional"] and np.isfinite(result["nll"])


def test_python_api(cvae_run):
    run = vaekit.load_run(cvae_run)
    imgs = run.model.sample(16, rngs=nnx.Rngs(sample=0), y=jnp.full(16, 7))
    assert imgs.shape == (16, 28, 28, 1)
    test = run.data().test
    x, y = jnp.asarray(test["x"][:4]), jnp.asarray(test["y"][:4])
    assert run.model.encode(x, y).mean.shape == (4, 8)
    # The decoder uses the label: the same code under two labels gives two images.
    z = run.model.encode(x, y).mean
    assert float(jnp.max(jnp.abs(run.model.decode(z, y).mean() - run.model.decode(z, (y + 1) % 10).mean()))) > 1e-3


def _err(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err


def test_bad_labels_and_unlabelled_data(cvae_run, capsys, tmp_path):
    _err(capsys, ["sample", str(cvae_run), "--label", "10", "--out", str(tmp_path / "s.png")], "--label 10", "[0, 10)")
    _err(capsys, ["sample", str(cvae_run), "--label", "-1", "--out", str(tmp_path / "s.png")], "outside")
    np.savez(tmp_path / "nolabels.npz", x=np.random.default_rng(0).uniform(size=(300, 8, 8)).astype(np.float32))
    _err(capsys, ["train", "--set", "model.kind=cvae", "--set", f"data.path={tmp_path / 'nolabels.npz'}",
                  "--runs-dir", str(tmp_path), "--no-progress"], "needs labelled data")
    assert not any(tmp_path.glob("run*"))  # nothing written for a run that could not start
    _err(capsys, ["train", "--preset", "mnist-cvae", "--set", "model.condition=sideways"], "model.condition must be one of")
