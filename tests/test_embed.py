"""Embeddings: streamed .npz/.parquet output equal to encoding everything at once, .npz input read in
blocks (binarized like the run's evaluation data), the linear probe, and bad input."""

import numpy as np
import pytest

from conftest import trained_run_dir
from vaekit.cli import main as run_cli
from vaekit.evaluate.embed import NpzReader, encode_all, examples, linear_probe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from vaekit.runs.run import load_run

    return load_run(trained_run_dir(tmp_path_factory))


def test_embed_split_to_npz_and_parquet(run, tmp_path):
    assert run_cli(["embed", str(run.path), "--split", "test", "--limit", "300", "--batch-size", "128",
                    "--out", str(tmp_path / "codes.npz")]) == 0
    data = examples(run, split="test", limit=300)
    mean, scale = encode_all(run, data["x"])
    with np.load(tmp_path / "codes.npz") as f:
        np.testing.assert_allclose(f["mean"], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f["scale"], scale, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(f["y"], data["y"])
    pq = pytest.importorskip("pyarrow.parquet")
    assert run_cli(["embed", str(run.path), "--split", "test", "--limit", "300", "--batch-size", "128",
                    "--out", str(tmp_path / "codes.parquet")]) == 0
    table = pq.read_table(tmp_path / "codes.parquet")
    np.testing.assert_allclose(np.asarray(table["mean"].to_pylist()), mean, rtol=1e-5, atol=1e-6)
    assert table["y"].to_pylist() == data["y"].tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["codes.npz", "codes.parquet"]


def test_npz_input_is_read_in_blocks_and_binarized_like_test_data(run, tmp_path):
    from vaekit.data import EVAL_BINARIZATION_SEED, binarize_fixed

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (130, 28, 28), dtype=np.uint8)
    np.savez_compressed(tmp_path / "in.npz", x=x, y=np.arange(130) % 3)
    reader = NpzReader(tmp_path / "in.npz")
    assert len(reader) == 130 and reader.example_shape == (28, 28, 1)
    blocks = list(reader.blocks(50))
    assert [len(b["x"]) for b in blocks] == [50, 50, 30]
    got = examples(run, data=tmp_path / "in.npz")["x"]  # mnist-mlp binarizes: with the evaluation seed
    np.testing.assert_array_equal(got, binarize_fixed(x[..., None] / np.float32(255), EVAL_BINARIZATION_SEED))
    out = tmp_path / "codes.npz"
    assert run_cli(["embed", str(run.path), "--data", str(tmp_path / "in.npz"), "--batch-size", "64",
                    "--out", str(out)]) == 0
    with np.load(out) as f:
        np.testing.assert_allclose(f["mean"], encode_all(run, got)[0], rtol=1e-5, atol=1e-6)
        assert f["y"].tolist() == (np.arange(130) % 3).tolist()


@pytest.mark.parametrize("case", ["nan_in_a_late_block", "shape", "missing_dir", "suffix"])
def test_embed_bad_input_leaves_no_file(run, tmp_path, capsys, case):
    x = np.zeros((200, 28, 28), np.float32)
    out = tmp_path / "codes.npz"
    expect = {"nan_in_a_late_block": "non-finite", "shape": "shape (8, 8, 1) but run", "missing_dir": "does not exist",
              "suffix": "must end in .npz or .parquet"}[case]
    if case == "nan_in_a_late_block":
        x[150, 3, 3] = np.nan  # found only after the first blocks were written
    if case == "shape":
        x = np.zeros((4, 8, 8), np.float32)
    if case == "missing_dir":
        out = tmp_path / "nowhere" / "codes.npz"
    if case == "suffix":
        out = tmp_path / "codes.txt"
    np.savez(tmp_path / "in.npz", x=x)
    rc = run_cli(["embed", str(run.path), "--data", str(tmp_path / "in.npz"), "--batch-size", "64", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz"]


def test_linear_probe_separates_separable_codes():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    z = rng.normal(size=(300, 4)) * 0.1 + np.eye(4)[y] * 3
    r = linear_probe(z[:200], y[:200], z[200:], y[200:])
    assert r["accuracy"] == 1.0 and r["classes"] == 3 and r["test_examples"] == 100
    assert r["chance"] == pytest.approx(np.bincount(y[200:]).max() / 100)
