"""Disentanglement metrics on synthetic codes built straight from the shapes factors.

"Good" codes are the five standardized factor values plus a little noise, followed by
five pure-noise dimensions; "random" codes are noise only. The interventional scores
use a ground-truth source whose ``render`` returns factor values instead of images,
so nothing is rasterized except in the one end-to-end test.
"""

import json

import numpy as np
import pytest
from joblib import parallel_config
from sklearn.ensemble import GradientBoostingClassifier

from vaekit.data import shapes
from vaekit.errors import VaekitError
from vaekit.evaluate import disentanglement as dis

NUM_TRAIN, NUM_TEST = 3_000, 1_500
DCI_FAST = {"max_iter": 10, "n_jobs": 1}  # 10 boosting rounds (default 100), one factor at a time
PERM = np.array([7, 2, 9, 0, 4, 8, 1, 5, 3, 6])

_ALL_VALUES = shapes.classes_to_values(shapes.index_to_classes(np.arange(0, shapes.NUM_IMAGES, 7)))
MEAN, STD = _ALL_VALUES.mean(axis=0), _ALL_VALUES.std(axis=0)


class ValueSource:
    """The shapes factor grid, "rendered" as factor values (no images)."""

    factor_sizes = shapes.FACTOR_SIZES

    def sample_classes(self, n, rng):
        return shapes.sample_classes(n, rng)

    def render(self, classes):
        return shapes.classes_to_values(classes)


class Encoder:
    """Codes from factor values: kind "good" (factors + small noise, 5 noise dims) or "random"."""

    def __init__(self, kind="good", noise=0.05, perm=None, mix=False, seed=0):
        self.kind, self.noise, self.perm, self.mix = kind, noise, perm, mix
        self.rng = np.random.default_rng(seed)

    def __call__(self, values):
        n = len(values)
        if self.kind == "random":
            codes = self.rng.normal(size=(n, 10))
        else:
            z = (np.asarray(values) - MEAN) / STD
            if self.mix:  # pos_x and pos_y rotated into two mixed dimensions
                z = z.copy()
                z[:, 3], z[:, 4] = (z[:, 3] + z[:, 4]) / np.sqrt(2), (z[:, 3] - z[:, 4]) / np.sqrt(2)
            codes = np.concatenate([z + self.noise * self.rng.normal(size=z.shape), self.rng.normal(size=(n, 5))], axis=1)
        return codes if self.perm is None else codes[:, self.perm]


def make_codes(**kwargs):
    rng = np.random.default_rng(123)
    train_f, test_f = shapes.sample_classes(NUM_TRAIN, rng), shapes.sample_classes(NUM_TEST, rng)
    encode = Encoder(**kwargs)
    return encode(shapes.classes_to_values(train_f)), train_f, encode(shapes.classes_to_values(test_f)), test_f


@pytest.fixture(scope="module")
def good():
    return make_codes()


@pytest.fixture(scope="module")
def random_codes():
    return make_codes(kind="random")


@pytest.fixture(scope="module")
def good_permuted():
    return make_codes(perm=PERM)


@pytest.fixture(scope="module")
def dci_good(good):
    return dis.dci(*good, **DCI_FAST)


def test_mig(good, random_codes):
    result = dis.mig(good[0], good[1])
    assert result["mig"] > 0.6
    assert len(result["per_factor"]) == 5 and min(result["per_factor"]) > 0.3
    assert dis.mig(random_codes[0], random_codes[1])["mig"] < 0.1
    json.dumps(result)


def test_mixing_two_factors_lowers_mig(good):
    mixed = make_codes(mix=True)
    clean, entangled = dis.mig(good[0], good[1]), dis.mig(mixed[0], mixed[1])
    assert entangled["mig"] < clean["mig"] - 0.1
    for j in (3, 4):
        assert entangled["per_factor"][j] < clean["per_factor"][j] - 0.3


def test_sap(good, random_codes):
    result = dis.sap(*good)
    # Many-class factors are hard for a linear classifier on one latent, so SAP stays
    # well below 1 even for perfect codes; the 3-class shape factor is clear-cut.
    assert result["sap"] > 0.1 and result["per_factor"][0] > 0.5
    assert dis.sap(*random_codes)["sap"] < 0.05
    json.dumps(result)


def test_dci(dci_good, random_codes):
    assert dci_good["disentanglement"] > 0.7
    assert dci_good["completeness"] > 0.7
    assert dci_good["informativeness_train"] > 0.7 and dci_good["informativeness_test"] > 0.6
    assert dci_good["importance_method"] == "gain"
    importance = np.array(dci_good["importance"])
    assert importance.shape == (10, 5)
    np.testing.assert_allclose(importance.sum(axis=0), 1.0)
    # Each factor's own latent carries most of its importance.
    np.testing.assert_array_equal(importance.argmax(axis=0), np.arange(5))
    json.dumps(dci_good)
    rand = dis.dci(*random_codes, **DCI_FAST)
    assert rand["disentanglement"] < 0.1 and rand["completeness"] < 0.1


def test_dci_permutation_importance(good):
    train_codes, train_factors, test_codes, test_factors = good
    # Half the data: permutation importance re-scores the test split 5 times per latent.
    result = dis.dci(train_codes[:1500], train_factors[:1500], test_codes[:700], test_factors[:700],
                     importance="permutation", **DCI_FAST)
    assert result["importance_method"] == "permutation"
    assert result["disentanglement"] > 0.7
    np.testing.assert_array_equal(np.array(result["importance"]).argmax(axis=0), np.arange(5))


def graded_codes(n=500, seed=0):
    """Two factors, each read by three latents of rising noise, plus two noise latents."""
    rng = np.random.default_rng(seed)
    factors = np.stack([rng.integers(0, 3, n), rng.integers(0, 6, n)], axis=1)
    z = (factors - factors.mean(axis=0)) / factors.std(axis=0)
    columns = [z[:, j] + s * rng.normal(size=n) for j in range(2) for s in (0.3, 0.7, 1.5)]
    return np.stack(columns + [rng.normal(size=n), rng.normal(size=n)], axis=1), factors


@pytest.mark.parametrize("importance", ["gain", "permutation"])
def test_dci_importance_ranks_like_gradient_boosting(importance):
    codes, factors = graded_codes()
    ours, *_ = dis.dci_importance_matrix(codes, factors, codes, factors, importance=importance, max_iter=20, n_jobs=1)
    reference = np.stack(
        [GradientBoostingClassifier(n_estimators=20, random_state=0).fit(codes, factors[:, j]).feature_importances_ for j in range(2)],
        axis=1,
    )
    for j in range(2):
        # The two most important latents, in order, are those of GradientBoostingClassifier.
        np.testing.assert_array_equal(np.argsort(-ours[:, j])[:2], np.argsort(-reference[:, j])[:2])
        assert set(np.argsort(-reference[:, j])[:2]) <= {3 * j, 3 * j + 1}
    assert np.abs(ours - reference).max() < 0.1


def test_observational_scores_ignore_latent_order(good, good_permuted, dci_good):
    assert dis.mig(*good[:2]) == dis.mig(*good_permuted[:2])
    assert dis.sap(*good) == dis.sap(*good_permuted)
    permuted = dis.dci(*good_permuted, **DCI_FAST)
    for key in ("disentanglement", "completeness", "informativeness_train", "informativeness_test"):
        # Boosting may break a near-tie between splits differently: equal up to that.
        assert permuted[key] == pytest.approx(dci_good[key], abs=0.02)
    np.testing.assert_allclose(np.array(permuted["importance"]), np.array(dci_good["importance"])[PERM], atol=0.05)


def test_factorvae_score():
    source = ValueSource()
    result = dis.factorvae_score(Encoder(), source, num_train=300, num_test=200)
    assert result == {"train_accuracy": 1.0, "eval_accuracy": 1.0, "num_active_dims": 10}
    rand = dis.factorvae_score(Encoder("random"), source, num_train=300, num_test=200)
    assert rand["eval_accuracy"] < 0.35  # chance is 1/5
    permuted = dis.factorvae_score(Encoder(perm=PERM, noise=0.5), source, num_train=300, num_test=200)
    assert permuted == dis.factorvae_score(Encoder(noise=0.5), source, num_train=300, num_test=200)


def test_factorvae_prunes_collapsed_latents():
    source = ValueSource()

    def collapsed(values, encode=Encoder()):
        codes = encode(values)
        codes[:, 5:] *= 0.01  # the noise latents now have std 0.01 < 0.05
        return codes

    result = dis.factorvae_score(collapsed, source, num_train=100, num_test=50, num_variance_estimate=500)
    assert result["num_active_dims"] == 5 and result["eval_accuracy"] == 1.0
    dead = dis.factorvae_score(lambda v: np.zeros((len(v), 3)), source, num_train=10, num_test=10, num_variance_estimate=100)
    assert dead == {"train_accuracy": 0.0, "eval_accuracy": 0.0, "num_active_dims": 0}


def test_betavae_score():
    source = ValueSource()
    result = dis.betavae_score(Encoder(), source, num_train=300, num_test=200)
    assert result["train_accuracy"] > 0.9 and result["eval_accuracy"] > 0.9
    rand = dis.betavae_score(Encoder("random"), source, num_train=300, num_test=200)
    assert rand["eval_accuracy"] < 0.35
    permuted = dis.betavae_score(Encoder(perm=PERM, noise=0.5), source, num_train=300, num_test=200)
    plain = dis.betavae_score(Encoder(noise=0.5), source, num_train=300, num_test=200)
    assert permuted == pytest.approx(plain, abs=0.01)


def test_bad_inputs_are_user_errors(good):
    codes, factors = good[0], good[1]
    nan = codes.copy()
    nan[3, 2] = np.nan
    with pytest.raises(VaekitError, match="non-finite"):
        dis.mig(nan, factors)
    with pytest.raises(VaekitError):
        dis.mig(codes[:-1], factors)
    with pytest.raises(VaekitError, match="single value"):
        dis.mig(codes, np.zeros_like(factors))
    with pytest.raises(VaekitError):
        dis.sap(codes, factors, codes[:, :3], factors)
    with pytest.raises(VaekitError, match="importance"):
        dis.dci(*good, importance="shap")
    with pytest.raises(VaekitError, match="encode_fn returned"):
        dis.factorvae_score(lambda v: np.zeros(len(v)), ValueSource(), num_train=5, num_test=5)


def test_compute_all_on_factor_values():
    source = ValueSource()
    kwargs = {"num_train": 1_000, "num_test": 500, "factorvae_train": 100, "factorvae_test": 50,
              "betavae_train": 200, "betavae_test": 100, "dci_max_iter": 10}
    # DCI's factors in parallel (n_jobs=2) through joblib's thread backend: the same code path as the
    # default process pool, without starting processes in the suite.
    with parallel_config(backend="threading"):
        result = dis.compute_all(Encoder(), source, **kwargs)
    assert set(result) == {"mig", "sap", "dci", "factorvae", "betavae", "settings", "seconds"}
    assert result["mig"]["mig"] > 0.5 and result["factorvae"]["eval_accuracy"] == 1.0
    assert result["factorvae"] == dis.factorvae_score(Encoder(), source, num_train=100, num_test=50)
    json.dumps(result)


def test_compute_all_on_rendered_shapes():
    # End to end on real images: a hand-made "encoder" reading the centroid and area.
    def encode(images):
        mass = images[..., 0]
        area = mass.sum(axis=(1, 2))
        rows = (mass.sum(axis=2) * np.arange(64)).sum(axis=1) / area
        cols = (mass.sum(axis=1) * np.arange(64)).sum(axis=1) / area
        return np.stack([cols / 64, rows / 64, area / 400], axis=1)

    result = dis.compute_all(
        encode, shapes.ShapesData(limit=100), num_train=600, num_test=300, factorvae_train=60, factorvae_test=40,
        betavae_train=100, betavae_test=60, n_jobs=1, dci_max_iter=10,
    )
    assert result["settings"]["num_latents"] == 3 and result["settings"]["dci_max_iter"] == 10
    # pos_x is read by latent 0 alone, pos_y by latent 1: high MIG for them (20 bins
    # cannot resolve all 32 positions, so it stays below 1), low for orientation.
    per_factor = result["mig"]["per_factor"]
    assert per_factor[3] > 0.6 and per_factor[4] > 0.6 and per_factor[2] < 0.1
    json.dumps(result)
