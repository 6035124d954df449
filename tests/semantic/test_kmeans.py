"""k-means for semantic tokens: scikit-learn's ids exactly, fit quality, files, pooling.

``kmeans_sklearn.npz`` (from ``tools/make_semantic_fixtures.py``) holds a scikit-learn KMeans's
``cluster_centers_``, 1000 new float32 points (many near a boundary) and ``predict``'s ids, so this
runs without scikit-learn; ``kmeans_sklearn.joblib`` is that estimator as audiolm-pytorch loads it.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from soundstorm_jax.semantic.kmeans import KMeansCodebook, fit_kmeans, load_kmeans, mean_pool, nearest_center

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


@pytest.fixture(scope="module")
def sklearn_fixture():
    with np.load(FIXTURES / "kmeans_sklearn.npz") as data:
        return {k: data[k] for k in data.files}


def test_ids_reproduce_sklearn_predict_exactly(sklearn_fixture):
    codebook = KMeansCodebook(sklearn_fixture["centers"])
    ids = np.asarray(codebook.assign(sklearn_fixture["features"]))
    assert ids.dtype == np.int32 and ids.shape == (1000,)
    np.testing.assert_array_equal(ids, sklearn_fixture["ids"])
    assert len(np.unique(ids)) == codebook.num_clusters == 16
    # Batched features '(b n d)' give the same ids frame by frame.
    batched = np.asarray(codebook.assign(sklearn_fixture["features"].reshape(10, 100, 24)))
    np.testing.assert_array_equal(batched.reshape(-1), sklearn_fixture["ids"])
    # Nearest in the plain L2 sense, as audiolm-pytorch's torch.cdist(...).argmin.
    x, c = sklearn_fixture["features"].astype(np.float64), sklearn_fixture["centers"].astype(np.float64)
    exact = np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), axis=-1)
    assert (exact == ids).mean() > 0.999


def test_sklearn_joblib_file(sklearn_fixture, tmp_path):
    path = FIXTURES / "kmeans_sklearn.joblib"
    if importlib.util.find_spec("joblib") is None or importlib.util.find_spec("sklearn") is None:
        with pytest.raises(ImportError, match=r"needs joblib and scikit-learn .*np\.save\('centers\.npy'"):
            load_kmeans(path)
        pytest.skip("loading the joblib file itself needs joblib and scikit-learn")
    codebook = load_kmeans(path)
    np.testing.assert_array_equal(codebook.centers, sklearn_fixture["centers"])
    np.testing.assert_array_equal(np.asarray(codebook.assign(sklearn_fixture["features"])), sklearn_fixture["ids"])


def test_save_and_load(sklearn_fixture, tmp_path):
    codebook = KMeansCodebook(sklearn_fixture["centers"])
    codebook.save(tmp_path / "km.npz")
    np.save(tmp_path / "centers.npy", sklearn_fixture["centers"])
    for path in (tmp_path / "km.npz", tmp_path / "centers.npy"):
        np.testing.assert_array_equal(load_kmeans(path).centers, codebook.centers)
    np.savez(tmp_path / "other.npz", means=sklearn_fixture["centers"])
    with pytest.raises(ValueError, match=r"has no 'centers' array \(it holds \['means'\]\)"):
        load_kmeans(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_kmeans(tmp_path / "missing.joblib")
    with pytest.raises(ValueError, match=r"features must have 24 channels .*got shape \(3, 25\)"):
        codebook.assign(np.zeros((3, 25), np.float32))
    with pytest.raises(ValueError, match="centers must have shape"):
        KMeansCodebook(np.zeros(4, np.float32))


def blobs(seed: int, clusters: int = 8, dim: int = 16, n: int = 4000):
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 4, (clusters, dim))
    labels = rng.integers(0, clusters, n)
    return (means[labels] + rng.normal(0, 0.5, (n, dim))).astype(np.float32), means, labels


@pytest.mark.parametrize("as_iterator", [False, True])
def test_fit_recovers_well_separated_clusters(as_iterator):
    x, means, labels = blobs(0)
    data = (x[i:i + 700] for i in range(0, len(x), 700)) if as_iterator else x
    codebook = fit_kmeans(data, 8, batch_size=512, num_epochs=3, init_size=1024, seed=1)
    assert codebook.centers.shape == (8, 16)
    # Every true mean has its own centre nearby, and the clustering is the true one up to relabelling.
    dist = np.sqrt(((means[:, None] - codebook.centers[None]) ** 2).sum(-1))
    match = dist.argmin(axis=1)
    assert len(set(match.tolist())) == 8 and dist.min(axis=1).max() < 0.25, dist.min(axis=1)
    ids = np.asarray(codebook.assign(x))
    np.testing.assert_array_equal(ids, match[labels])
    true_inertia = KMeansCodebook(means).inertia(x)
    assert codebook.inertia(x) <= 1.01 * true_inertia, (codebook.inertia(x), true_inertia)


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 2, 2), (4, 1, 2)])
def test_a_fit_over_a_device_mesh_equals_the_one_device_fit(shape):
    """The rows of each batch split over the mesh's data axes, the sums reduced across devices: the same fit."""
    from soundstorm_jax.training.sharding import make_mesh
    mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape)))
    x, means, labels = blobs(2)
    alone = fit_kmeans(x, 8, batch_size=512, num_epochs=2, init_size=1024, seed=3)
    sharded = fit_kmeans(x, 8, batch_size=512, num_epochs=2, init_size=1024, seed=3, mesh=mesh)
    np.testing.assert_allclose(sharded.centers, alone.centers, rtol=1e-5, atol=1e-5)  # float sums in another order
    np.testing.assert_array_equal(np.asarray(sharded.assign(x)), np.asarray(alone.assign(x)))
    with pytest.raises(ValueError, match="batch_size=500 must divide by the 8 ways"):
        fit_kmeans(x, 8, batch_size=500, mesh=make_mesh({"data": 8, "fsdp": 1, "tensor": 1}))


def test_fit_refuses_bad_data():
    with pytest.raises(ValueError, match="fewer than num_clusters=8"):
        fit_kmeans(np.zeros((5, 3), np.float32), 8)
    with pytest.raises(ValueError, match="NaN or Inf"):
        fit_kmeans(np.full((50, 3), np.nan, np.float32), 4)
    with pytest.raises(ValueError, match="num_clusters must be a positive int"):
        fit_kmeans(np.zeros((50, 3), np.float32), 0)


def test_mean_pool_halves_the_rate_over_valid_frames():
    x = jnp.arange(2 * 5 * 2, dtype=jnp.float32).reshape(2, 5, 2)
    mask = jnp.array([[True] * 5, [True, True, True, False, False]])
    pooled, pooled_mask = mean_pool(x, mask, 2)
    assert pooled.shape == (2, 3, 2)
    np.testing.assert_array_equal(np.asarray(pooled_mask), [[True, True, True], [True, True, False]])
    np.testing.assert_allclose(np.asarray(pooled[0]), [[1, 2], [5, 6], [8, 9]])  # the last frame alone
    np.testing.assert_allclose(np.asarray(pooled[1, :2]), [[11, 12], [14, 15]])  # frame 3 is padding
    ids = nearest_center(pooled, jnp.asarray([[0.0, 0.0], [100.0, 100.0]]))
    assert ids.shape == (2, 3) and ids.dtype == jnp.int32
