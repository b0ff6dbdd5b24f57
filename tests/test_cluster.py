"""Clustering core: descriptors, Gaussian affinity (sigma rule), spectral clustering."""

import numpy as np
import pytest

from acl_dist.clustering import (cluster_descriptors, gaussian_affinity, pairwise_distances,
                              pool_features, video_descriptor)
from acl_dist.evaluate import clustering_scores


def test_pooling_and_descriptor():
    x = np.array([[1.0, 0.0], [3.0, 4.0]])
    np.testing.assert_allclose(pool_features(x), [2.0, 2.0])
    np.testing.assert_allclose(pool_features(x, np.array([0.0, 2.0])), [3.0, 4.0])
    d = video_descriptor({"rgb": x, "flow": np.array([[0.0, 2.0], [0.0, 2.0]])},
                         {"rgb": np.array([0.0, 1.0]), "flow": None})
    # rgb pooled by its own attention -> (3, 4) / 5; flow uniform -> (0, 2) / 2
    np.testing.assert_allclose(d, [0.6, 0.8, 0.0, 1.0])
    with pytest.raises(ValueError):
        pool_features(x, np.ones(3))


def test_gaussian_affinity_sigma_is_mean_distance_including_diagonal():
    f = np.array([[0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    # pairs j <= k: (0,0)=0 (1,1)=0 (2,2)=0 (0,1)=5 (1,2)=5 (0,2)=10 -> mean 20/6
    w, sigma = gaussian_affinity(f)
    assert sigma == pytest.approx(20 / 6)
    assert w[0, 1] == pytest.approx(np.exp(-25 / (2 * sigma ** 2)))
    assert w[0, 2] == pytest.approx(np.exp(-100 / (2 * sigma ** 2)))
    np.testing.assert_allclose(np.diag(w), 1.0)
    np.testing.assert_allclose(pairwise_distances(f), pairwise_distances(f).T)


def test_spectral_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((5, 16)) * 3
    truth = np.repeat(np.arange(5), 30)
    x = centres[truth] + rng.standard_normal((150, 16))
    labels = cluster_descriptors(x, 5, seed=0)
    assert clustering_scores(labels, [str(t) for t in truth])["nmi"] > 0.95
    assert set(labels.tolist()) == set(range(5))
    with pytest.raises(ValueError):
        cluster_descriptors(x[:3], 5)


def planted(n_per=25, k=4, dim=12, seed=1):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)) * 2
    truth = np.repeat(np.arange(k), n_per)
    return centres[truth] + rng.standard_normal((len(truth), dim)) * 0.7, truth


@pytest.mark.parametrize("backend", ["sklearn", "torch"])
def test_backends_recover_planted_clusters(backend):
    from acl_dist.clustering import run_clustering

    x, truth = planted()
    out = run_clustering(x, 4, backend=backend, truth=[str(t) for t in truth])
    assert out["backend"] == backend
    assert out["scores"]["nmi"] > 0.95 and sorted(out["sizes"]) == [25, 25, 25, 25]
    again = run_clustering(x, 4, backend=backend)
    assert (again["labels"] == out["labels"]).all()  # deterministic for a seed


def test_torch_embedding_equals_scikit_learn():
    import torch
    from sklearn.manifold import spectral_embedding

    from acl_dist.clustering import gaussian_affinity, spectral_embedding_torch

    x, _ = planted(n_per=15, k=3)
    w, _ = gaussian_affinity(x)
    ours = spectral_embedding_torch(torch.from_numpy(w), 3).numpy()
    ref = spectral_embedding(w, n_components=3, drop_first=False, random_state=0,
                             eigen_solver="arpack")
    # same subspace and scaling: compare column by column up to sign
    for j in range(3):
        a, b = ours[:, j], ref[:, j]
        assert min(np.abs(a - b).max(), np.abs(a + b).max()) < 1e-6


def test_cuml_backend_passes_the_precomputed_affinity(fake_cuml, monkeypatch):
    """cuML cannot be installed without a GPU: check the wiring with a stand-in module."""
    from acl_dist import clustering as cluster

    calls = fake_cuml
    w = np.eye(5) + 0.1
    labels = cluster.spectral_clustering(w, 2, seed=3, backend="cuml")
    assert calls["init"]["affinity"] == "precomputed" and calls["init"]["n_clusters"] == 2
    assert calls["init"]["random_state"] == 3
    assert calls["affinity"].dtype == np.float32 and labels.dtype == np.int64
    assert cluster.cuml_available()
    # 'auto' picks cuML only with a GPU; this machine has none
    monkeypatch.setattr(cluster, "gpu_available", lambda: True)
    assert cluster.resolve_backend("auto") == "cuml"
    monkeypatch.setattr(cluster, "gpu_available", lambda: False)
    assert cluster.resolve_backend("auto") == "sklearn"


def test_cuml_is_used_only_with_the_api_acl_dist_calls(fake_cuml, monkeypatch):
    """An older cuML imports but has no SpectralClustering, or one without 'affinity':
    'auto' then runs torch on the GPU and says why; an explicit 'cuml' is an error."""
    import sys
    import types

    from acl_dist import clustering as cluster

    monkeypatch.setattr(cluster, "gpu_available", lambda: True)
    assert cluster.backend_choice("auto") == ("cuml", "auto: GPU and cuML 25.10.00")
    old = types.ModuleType("cuml")
    old.__version__ = "24.12.00"
    old.cluster = types.SimpleNamespace()          # no SpectralClustering
    monkeypatch.setitem(sys.modules, "cuml", old)
    monkeypatch.setitem(sys.modules, "cuml.cluster", old.cluster)
    used, why = cluster.backend_choice("auto")
    assert used == "torch" and "cuML 24.12.00 has no cuml.cluster.SpectralClustering" in why
    with pytest.raises(ValueError, match="cluster.backend=cuml: cuML 24.12.00 has no"):
        cluster.backend_choice("cuml")

    class NoAffinity:
        def __init__(self, n_clusters=8, random_state=None, n_init=10):
            pass
    old.cluster = types.SimpleNamespace(SpectralClustering=NoAffinity)
    monkeypatch.setitem(sys.modules, "cuml.cluster", old.cluster)
    used, why = cluster.backend_choice("auto")
    assert used == "torch" and why.endswith("SpectralClustering takes no affinity")
    monkeypatch.setitem(sys.modules, "cuml", None)    # not installed
    assert cluster.backend_choice("auto") == ("torch", "auto: GPU, cuML not importable "
                                                       "(ModuleNotFoundError)")
    monkeypatch.setattr(cluster, "gpu_available", lambda: False)
    assert cluster.backend_choice("auto") == ("sklearn", "auto: no GPU")


def test_contrast_descriptor_cancels_what_is_everywhere():
    from acl_dist.clustering import contrast_descriptor

    scene = np.array([5.0, 5.0, 0.0])
    action = np.array([0.0, 0.0, 1.0])
    x = np.tile(scene, (10, 1))
    x[3:5] += action
    s = np.full(10, 0.05)
    s[3:5] = 0.3  # attention only leaning to the action
    d = contrast_descriptor({"rgb": x}, {"rgb": s})
    np.testing.assert_allclose(d, [0.0, 0.0, 1.0], atol=1e-9)
    # the paper's X^T S is dominated by the scene
    paper = video_descriptor({"rgb": x}, {"rgb": s})
    assert paper[2] < 0.2


def test_run_clustering_stability():
    from acl_dist.clustering import run_clustering

    x, truth = planted()
    out = run_clustering(x, 4, backend="sklearn", previous=truth)
    assert out["stability"] > 0.95


@pytest.mark.parametrize("n,k,seed", [(200, 20, 0), (120, 7, 3)])
def test_sklearn_path_is_spectral_clusterings_two_steps_timed_apart(n, k, seed):
    """The sklearn backend runs SpectralClustering(affinity="precomputed").fit's embedding
    and k-means itself (to report each phase's seconds): the labels are identical."""
    from sklearn.cluster import SpectralClustering

    from acl_dist.clustering import Phases, run_clustering, spectral_clustering

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, 16)) * 2
    x = (centres[np.arange(n) % k] + rng.standard_normal((n, 16))).astype(np.float32)
    affinity, _ = gaussian_affinity(x)
    want = SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                              assign_labels="kmeans", n_init=10).fit_predict(affinity)
    phases = Phases()
    got = spectral_clustering(affinity, k, seed=seed, backend="sklearn", phases=phases)
    assert (got == want).all() and set(phases) == {"embedding", "kmeans"}
    out = run_clustering(x, k, backend="sklearn", seed=seed, graph="dense")
    assert (out["labels"] == want).all()
    assert set(out["phases"]) == {"graph", "embedding", "kmeans", "scores"}
    assert sum(out["phases"].values()) <= out["seconds"] + 1e-3
