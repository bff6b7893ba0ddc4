"""Sample-quality metrics (FID, precision/recall, label accuracy), the shipped feature net and
`vaekit quality`."""

import json

import numpy as np
import pytest
import scipy.linalg

from vaekit.errors import VaekitError
from vaekit.evaluate import features, quality


def _random_spd(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # Commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2 in closed form.
    a, b = rng.uniform(0.2, 3, d), rng.uniform(0.2, 3, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert quality.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    # General covariances against scipy's sqrtm of the product.
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
    ref = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(s1 @ s2)))
    assert quality.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-8)
    assert quality.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and real.
    f = rng.standard_normal((5, 20))
    assert np.isfinite(quality.fid(f, f + 1.0)) and quality.fid(f, f + 1.0) == pytest.approx(20.0, rel=1e-6)


def test_fid_of_samples_converges_to_the_gaussians_distance():
    rng = np.random.default_rng(1)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    s1, s2 = np.diag([1.0, 2.0, 0.5, 1.0]), np.diag([1.0, 1.0, 1.0, 3.0])
    x = rng.multivariate_normal(mu1, s1, 100_000)
    y = rng.multivariate_normal(mu2, s2, 100_000)
    m1, c1, m2, c2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    direct = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2) - 2 * np.real(np.trace(scipy.linalg.sqrtm(c1 @ c2)))
    assert quality.fid(x, y) == pytest.approx(direct, rel=1e-9)
    # the plug-in estimate is biased up by O(d / n) and has a standard error of about 0.01 here
    assert quality.fid(x, y) == pytest.approx(quality.frechet_distance(mu1, s1, mu2, s2), abs=0.05)


def test_precision_recall_on_toy_clouds():
    rng = np.random.default_rng(2)
    real = rng.standard_normal((1000, 2))
    # Same distribution: both near 1.
    p, r = quality.precision_recall(real, rng.standard_normal((1000, 2)))
    assert p > 0.95 and r > 0.95
    # Fakes far away: nothing is inside a real ball and no real point inside a fake ball.
    p, r = quality.precision_recall(real, rng.standard_normal((1000, 2)) + 50.0)
    assert p == 0.0 and r == 0.0
    # Mode collapse: every fake near the origin -> precision about 1 (the dense centre is covered by
    # real balls), recall small (only the real points inside the tiny fake balls around the origin).
    p, r = quality.precision_recall(real, 0.01 * rng.standard_normal((1000, 2)))
    assert p > 0.95 and r < 0.05
    # Half the fakes far off: precision about 1/2, recall unaffected.
    fake = np.concatenate([rng.standard_normal((500, 2)), rng.standard_normal((500, 2)) + 50.0])
    p, r = quality.precision_recall(real, fake)
    assert p == pytest.approx(0.5, abs=0.03) and r > 0.85


def test_precision_recall_exact_on_a_line():
    # Real points 0, 1, ..., 9 on a line: k = 3 radius is 3 for the ends... and 2 inside; fakes at
    # known places give an exact count.
    real = np.arange(10.0)[:, None]
    radii = quality.kth_neighbour_radii(real, k=3)
    assert list(np.sqrt(radii)) == [3, 2, 2, 2, 2, 2, 2, 2, 2, 3]
    fake = np.array([[-3.0], [-3.5], [12.0], [12.5], [4.5]])
    assert quality.coverage(fake, real, radii) == pytest.approx(3 / 5)


def test_shipped_feature_net_checksum_and_accuracy():
    from importlib import resources

    from vaekit.data import load_data

    filename, digest = features.SHIPPED["mnist"]
    meta = json.loads((resources.files("vaekit") / "nets" / filename.replace(".npz", ".json")).read_text())
    assert meta["sha256"] == digest
    net = features.load_shipped("mnist")
    test = load_data("mnist").test
    acc = features.accuracy(net, test["x"][:2000], [test["y"][:2000]])[0]
    assert acc > 0.985, acc


def test_user_feature_net_roundtrip_and_bad_files(tmp_path):
    from flax import nnx

    net = features.FeatureNet((12, 12, 2), channels=(4,), features=6, heads=(3, 5), kernel=3, rngs=nnx.Rngs(0))
    path = tmp_path / "mine.npz"
    features.save(path, net)
    back = features.load(path)
    x = np.random.default_rng(0).random((4, 12, 12, 2)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(back.features(x)), np.asarray(net.features(x)), rtol=1e-6)
    assert [o.shape for o in back.logits(x)] == [(4, 3), (4, 5)]
    # Damaged: the digest no longer matches.
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(VaekitError, match="does not match the SHA-256"):
        features.load(path)
    # Wrong shapes: a dense layer that does not fit the conv stack.
    arrays = features.to_arrays(net)
    arrays["dense/kernel"] = np.zeros((7, 6), np.float32)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(VaekitError, match="dense/kernel has shape"):
        features.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "nothing.npz", a=np.zeros(3))
    with pytest.raises(VaekitError, match="no 'input_shape'"):
        features.load(tmp_path / "nothing.npz")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from conftest import trained_run_dir

    return trained_run_dir(tmp_path_factory)


def test_quality_cli_writes_json_and_prints_a_table(run_dir, capsys):
    from vaekit.cli import main

    rc = main(["quality", str(run_dir), "--samples", "400", "--reference", "400"])
    out = capsys.readouterr().out
    assert rc == 0 and "FID" in out and "recall" in out and "400 vs 400 test images" in out  # said once, not "400 vs test (400 images)"
    doc = json.loads((run_dir / "quality.json").read_text())
    assert doc["samples"] == 400 and doc["reference"] == "400 test images" and doc["fid"] > 0 and 0 <= doc["precision"] <= 1 and 0 <= doc["recall"] <= 1
    assert doc["feature_net"].startswith("vaekit mnist")


def test_quality_needs_a_feature_net(run_dir, tmp_path, capsys, monkeypatch):
    from vaekit.cli import main

    monkeypatch.setattr(features, "shipped_for", lambda source, shape: None)
    assert main(["quality", str(run_dir), "--samples", "100", "--reference", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ships no feature net" in err[0] and "--features" in err[0]
    from flax import nnx

    features.save(tmp_path / "small.npz", features.FeatureNet((12, 12, 1), channels=(4,), features=6,
                                                               rngs=nnx.Rngs(0)))
    assert main(["quality", str(run_dir), "--samples", "100", "--reference", "100", "--features", str(tmp_path / "small.npz")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes (12, 12, 1) images; the run's are (28, 28, 1)" in err[0]


def test_conditional_samples_are_balanced_and_scored_per_label():
    from flax import nnx

    from conftest import synthetic_splits, tiny_config
    from vaekit.models import build_model

    splits = synthetic_splits(n=8, shape=(28, 28, 1))
    model = build_model(tiny_config(model={"kind": "cvae"}), splits.spec, rngs=nnx.Rngs(0))
    model.eval()
    images, labels = quality.draw_samples(model, 7, num_classes=2, batch_size=4)
    assert images.shape == (7, 28, 28, 1) and list(labels) == [0, 1, 0, 1, 0, 1, 0]
    # the decoder is conditioned: the two labels' samples differ
    assert not np.allclose(images[0], images[1])
    net = features.load_shipped("mnist")
    pred = np.asarray(np.argmax(net.logits(images)[0], -1))
    # quality's label accuracy applies the head to the features it already has: the same predictions
    assert quality.head_accuracy(net, quality.featurize(net, images), labels) == pytest.approx(np.mean(pred == labels))


def test_shipped_shapes_net_checksum_and_factor_accuracy():
    from vaekit.data.shapes import FACTOR_SIZES, index_to_classes, render, split_indices

    net = features.load_shipped("shapes")
    assert net.input_shape == (64, 64, 1) and [h.out_features for h in net.heads] == list(FACTOR_SIZES)
    _, _, test = split_indices(limit=1, seed=0)  # the held-out test images (never in the net's training set)
    classes = index_to_classes(test[:300])
    acc = features.accuracy(net, render(classes), [classes[:, j] for j in range(5)])
    chance = [1 / s for s in FACTOR_SIZES]
    assert acc[0] > 0.88 and acc[1] > 0.9 and acc[3] > 0.92 and acc[4] > 0.92, acc  # shape, scale, positions
    assert acc[2] > 4 * chance[2], acc  # orientation: symmetric shapes make it ambiguous
    assert features.shipped_for("shapes", (64, 64, 1)) == "shapes" and features.shipped_for("shapes", (32, 32, 1)) is None
