"""Latent tools: lerp/slerp endpoints and norms, attribute vectors against numpy, PCA, the latent map,
and `vaekit arithmetic` / `vaekit latent-map` through the CLI."""

import numpy as np
import pytest
from flax import nnx

from conftest import synthetic_splits, tiny_config, trained_run_dir
from vaekit.cli import main as run_cli
from vaekit.errors import VaekitError
from vaekit.evaluate.latent import attribute_vector, interpolate, latent_map, lerp, pca_2d, slerp


def test_slerp_endpoints_and_norms():
    rng = np.random.default_rng(0)
    z0, z1 = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
    path = slerp(z0, z1, 11)
    assert path.shape == (5, 11, 16)
    np.testing.assert_array_equal(path[:, 0], z0)
    np.testing.assert_array_equal(path[:, -1], z1)
    # equal norms: every point stays on the sphere; lerp's midpoint falls inside it
    u1 = z1 / np.linalg.norm(z1, axis=-1, keepdims=True) * np.linalg.norm(z0, axis=-1, keepdims=True)
    norms = np.linalg.norm(slerp(z0, u1, 11), axis=-1)
    np.testing.assert_allclose(norms, np.linalg.norm(z0, axis=-1)[:, None].repeat(11, 1), rtol=1e-10)
    assert np.all(np.linalg.norm(lerp(z0, u1, 11)[:, 5], axis=-1) < np.linalg.norm(z0, axis=-1))
    # orthogonal unit vectors: the midpoint is at 45 degrees, (e0 + e1) / sqrt(2)
    e = np.eye(3)
    np.testing.assert_allclose(slerp(e[0], e[1], 3)[1], (e[0] + e[1]) / np.sqrt(2), atol=1e-12)
    # parallel (or zero) vectors: the straight line
    np.testing.assert_allclose(slerp(e[0], 2 * e[0], 3)[1], 1.5 * e[0])
    np.testing.assert_allclose(slerp(np.zeros(3), e[1], 3)[1], 0.5 * e[1])
    np.testing.assert_allclose(lerp(e[0], e[1], 3)[1], [0.5, 0.5, 0.0])
    with pytest.raises(VaekitError, match="--method"):
        interpolate(e[0], e[1], 3, "cubic")


def test_attribute_vector_is_the_mean_difference():
    rng = np.random.default_rng(1)
    z, y = rng.normal(size=(200, 6)), rng.integers(0, 4, 200)
    v = attribute_vector(z, y, 2)
    np.testing.assert_allclose(v, z[y == 2].mean(axis=0) - z.mean(axis=0), rtol=1e-12)
    with pytest.raises(VaekitError, match="no example has label 9"):
        attribute_vector(z, y, 9)
    with pytest.raises(VaekitError, match="every example"):
        attribute_vector(z, np.zeros(200), 0)


def test_pca_2d_matches_sklearn():
    from sklearn.decomposition import PCA

    z = np.random.default_rng(2).normal(size=(100, 5)) * np.array([5.0, 3.0, 1.0, 0.5, 0.1])
    proj, ratio = pca_2d(z)
    ref = PCA(2).fit(z)
    np.testing.assert_allclose(np.abs(proj), np.abs(ref.transform(z)), atol=1e-8)
    np.testing.assert_allclose(ratio, ref.explained_variance_ratio_, rtol=1e-8)


def test_latent_map_of_a_2d_model():
    from vaekit.models import build_model

    model = build_model(tiny_config(model={"latent_dim": 2}), synthetic_splits().spec, rngs=nnx.Rngs(0))
    images, values = latent_map(model, n=5)
    assert images.shape == (25, 8, 8, 1) and values.shape == (5,)
    np.testing.assert_allclose(values, -values[::-1], atol=1e-12)  # symmetric quantiles


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return trained_run_dir(tmp_path_factory)


def test_cli_arithmetic_and_latent_map(run_dir, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "edit.png"
    assert run_cli(["arithmetic", str(run_dir), "--attribute", "1", "-n", "3", "--out", str(out)]) == 0
    assert Image.open(out).size[0] > 6 * 28
    assert run_cli(["latent-map", str(run_dir), "--out", str(tmp_path / "map.png")]) == 2
    assert "model.latent_dim=2" in capsys.readouterr().err
    assert run_cli(["arithmetic", str(run_dir), "--attribute", "11", "--out", str(tmp_path / "e2.png")]) == 2
    assert "no example has label 11" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edit.png"]
