"""Anomaly scores and their metrics: AUROC/AUPRC against scikit-learn, targets, the complexity
term, class-marginal scoring of a conditional model, and `vaekit anomaly` end to end with its
bad-input errors (one line, exit 2, no output file)."""

import math

import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import average_precision_score, roc_auc_score

from conftest import synthetic_splits, tiny_config, trained_run_dir
from vaekit.cli import main as run_cli
from vaekit.errors import VaekitError
from vaekit.evaluate.anomaly import (JBIG_TEMPLATE, anomaly_scores, anomaly_targets, auroc_auprc, compressed_bits,
                                     context_bits, png_bits, write_scores)



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run_dir(tmp_path_factory)


# ---------------------------------------------------------------- metrics


def test_auroc_auprc_match_sklearn_on_a_known_answer():
    is_anomaly = np.array([0, 0, 1, 1])
    score = np.array([0.1, 0.4, 0.35, 0.8])  # sklearn's own example: AUROC 0.75
    m = auroc_auprc(score, is_anomaly)
    assert m["auroc"] == pytest.approx(0.75)
    assert m["auroc"] == pytest.approx(roc_auc_score(is_anomaly, score))
    assert m["auprc"] == pytest.approx(average_precision_score(is_anomaly, score))
    assert m["auprc"] == pytest.approx((1 / 1 + 2 / 3) / 2)  # precision at each anomaly's rank
    assert auroc_auprc(np.arange(6.0), np.array([0, 0, 0, 1, 1, 1]))["auroc"] == 1.0
    assert auroc_auprc(-np.arange(6.0), np.array([0, 0, 0, 1, 1, 1]))["auroc"] == 0.0
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=300), rng.integers(0, 2, 300)
    assert auroc_auprc(s, t)["auroc"] == pytest.approx(roc_auc_score(t, s))


def test_targets_and_their_errors():
    assert anomaly_targets([0, 1, 1, 0]).tolist() == [False, True, True, False]
    assert anomaly_targets([3, 1, 3, 7], normal_label=3).tolist() == [False, True, False, True]
    with pytest.raises(VaekitError, match="--normal-label"):
        anomaly_targets([0, 2, 5])
    with pytest.raises(VaekitError, match="does not occur"):
        anomaly_targets([0, 2, 5], normal_label=4)
    with pytest.raises(VaekitError, match="both normal and anomalous.*all 3 labels are normal"):
        auroc_auprc(np.zeros(3), anomaly_targets([0, 0, 0]))
    with pytest.raises(VaekitError, match="not finite"):
        auroc_auprc(np.array([0.0, np.nan]), np.array([0, 1]))


def test_png_bits_grow_with_complexity():
    flat = np.zeros((1, 28, 28, 1), np.float32)
    noise = np.random.default_rng(0).integers(0, 2, (1, 28, 28, 1)).astype(np.float32)
    bits = png_bits(np.concatenate([flat, noise]))
    assert bits[0] < bits[1] and bits[0] % 8 == 0


def _sequential_context_bits(image, template):
    """The adaptive context model coded pixel by pixel, as a coder would: an independent reference."""
    h, w = image.shape
    counts, bits = {}, 0.0
    for i in range(h):
        for j in range(w):
            ctx = tuple(image[i + di, j + dj] if 0 <= i + di < h and 0 <= j + dj < w else 0 for di, dj in template)
            n0, n1 = counts.get(ctx, (0, 0))
            b = int(image[i, j])
            bits -= math.log2(((n1 if b else n0) + 0.5) / (n0 + n1 + 1))
            counts[ctx] = (n0 + (b == 0), n1 + (b == 1))
    return bits


def test_context_bits_equal_sequential_coding_and_form_a_complete_code():
    rng = np.random.default_rng(0)
    images = (rng.random((5, 9, 7, 1)) < np.linspace(0.05, 0.6, 5)[:, None, None, None]).astype(np.float32)
    got = context_bits(images, chunk=2)  # chunks of 2: the chunking changes nothing
    want = [_sequential_context_bits(im[..., 0], JBIG_TEMPLATE) for im in images]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    # A probability distribution over images: over all 2^9 binary 3x3 images, sum 2^-L = 1 (Kraft, with equality).
    every = ((np.arange(512)[:, None] >> np.arange(9)) & 1).reshape(512, 3, 3)
    assert math.isclose(np.sum(2.0 ** -context_bits(every)), 1.0, rel_tol=1e-12)
    # n zeros in one context: the KT probability of a run, -log2 [G(n + 1/2) / (G(1/2) G(n + 1))]
    from scipy.special import gammaln

    n = 28 * 28
    assert math.isclose(context_bits(np.zeros((1, 28, 28)))[0],
                        -(gammaln(n + 0.5) - gammaln(0.5) - gammaln(n + 1)) / math.log(2), rel_tol=1e-12)
    # compressed_bits: the context model for binary images, PNG otherwise
    np.testing.assert_allclose(compressed_bits(images), got)
    grey = images * 0.5
    np.testing.assert_array_equal(compressed_bits(grey), png_bits(grey))
    with pytest.raises(VaekitError, match="binary images"):
        context_bits(grey)


def test_scores_of_a_conditional_model_without_labels_are_class_marginal():
    from scipy.special import logsumexp

    from vaekit.evaluate.likelihood import log_likelihood
    from vaekit.models import build_model

    cfg = tiny_config(model={"kind": "cvae"})
    splits = synthetic_splits(n=40)
    model = build_model(cfg, splits.spec, rngs=nnx.Rngs(0))
    model.eval()
    x = splits.test["x"][:6]
    scores = anomaly_scores(model, {"x": x}, samples=4, num_classes=2, batch_size=6)
    per_class = [log_likelihood(model, {"x": x, "y": np.full(6, c, np.int32)}, samples=4, batch_size=6)["log_px"]
                 for c in range(2)]
    np.testing.assert_allclose(scores["nll"], -(logsumexp(per_class, axis=0) - math.log(2)), rtol=1e-6)
    assert set(scores) == {"nll", "neg_elbo", "recon_error", "complexity"}


def test_write_scores_csv_and_npz(tmp_path):
    scores = {"nll": np.array([1.5, 2.25]), "recon_error": np.array([3.0, 4.0])}
    write_scores(tmp_path / "s.csv", scores, np.array([0, 1]), np.array([False, True]))
    assert (tmp_path / "s.csv").read_text().splitlines() == ["index,y,is_anomaly,nll,recon_error", "0,0,0,1.5,3",
                                                            "1,1,1,2.25,4"]
    write_scores(tmp_path / "s.npz", scores)
    with np.load(tmp_path / "s.npz") as f:
        assert sorted(f.files) == ["nll", "recon_error"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.csv", "s.npz"]


# ---------------------------------------------------------------- the command


def test_cli_anomaly_with_normal_label(run_dir, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    rc = run_cli(["anomaly", str(run_dir), "--split", "test", "--limit", "300", "--normal-label", "1",
                  "--samples", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "AUROC" in text and "nll" in text and "typicality" in text
    lines = out.read_text().splitlines()
    assert lines[0] == "index,y,is_anomaly,nll,neg_elbo,recon_error,complexity,typicality" and len(lines) == 301
    import json

    summary = next(iter(json.loads((run_dir / "anomaly.json").read_text()).values()))
    assert summary["examples"] == 300 and 0.0 <= summary["metrics"]["nll"]["auroc"] <= 1.0


def test_cli_anomaly_flags_in_an_npz(run_dir, tmp_path):
    from vaekit.data.mnist import load_mnist_raw

    raw = load_mnist_raw()
    x = np.concatenate([raw["test_x"][:40], np.full((10, 28, 28), 255, np.uint8)])  # white squares: anomalies
    y = np.concatenate([np.zeros(40, np.int64), np.ones(10, np.int64)])
    np.savez(tmp_path / "d.npz", x=x, y=y)
    out = tmp_path / "scores.npz"
    assert run_cli(["anomaly", str(run_dir), "--data", str(tmp_path / "d.npz"), "--samples", "2", "--out", str(out),
                    "--no-typicality", "--no-progress"]) == 0
    with np.load(out) as f:
        assert f["is_anomaly"].tolist() == y.tolist() and f["nll"].shape == (50,)
        assert roc_auc_score(y, f["nll"]) > 0.9  # all-white images are far from digits


@pytest.mark.parametrize("case", ["shape", "single_class", "missing_dir"])
def test_cli_anomaly_bad_input(run_dir, tmp_path, capsys, case):
    out = tmp_path / "scores.npz"
    data = tmp_path / "d.npz"
    if case == "shape":
        np.savez(data, x=np.zeros((5, 8, 8), np.uint8), y=np.array([0, 1, 0, 1, 0]))
        expect = "shape (8, 8, 1) but run"
    elif case == "single_class":
        np.savez(data, x=np.zeros((5, 28, 28), np.uint8), y=np.zeros(5, np.int64))
        expect = "both normal and anomalous"
    else:
        np.savez(data, x=np.zeros((5, 28, 28), np.uint8), y=np.array([0, 1, 0, 1, 0]))
        out = tmp_path / "missing" / "scores.npz"
        expect = "does not exist"
    rc = run_cli(["anomaly", str(run_dir), "--data", str(data), "--samples", "2", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and expect in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["d.npz"]
