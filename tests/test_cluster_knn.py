"""The kNN-sparse and Nyström clustering paths: the graph equals brute force, no (N, N)
matrix is built above the threshold, the Nyström embedding is the dense one when every
video is a landmark, and neither loses NMI against the dense path on planted clusters."""

import numpy as np
import pytest
import torch
from sklearn.metrics import normalized_mutual_info_score as nmi

from acl_dist import clustering as cluster
from acl_dist.clustering import (choose_graph, gaussian_affinity, knn_affinity, run_clustering,
                              spectral_embedding_sparse_torch, spectral_embedding_torch)


def planted(n: int, k: int, dim: int = 64, noise: float = 1.0, seed: int = 0):
    """Two L2-normalised halves around planted centres (ACL-shaped descriptors)."""
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    halves = []
    for _ in range(2):
        centres = rng.standard_normal((k, dim // 2))
        x = centres[truth] + noise * rng.standard_normal((n, dim // 2))
        halves.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return np.concatenate(halves, 1), truth


def test_knn_graph_equals_brute_force_across_chunks():
    x, _ = planted(97, 5, dim=8, seed=3)
    k = 6
    # ~10 rows per block: the chunked top-k and the chunked sigma sum must agree with a
    # single dense computation
    w, sigma = knn_affinity(x, k, device="cpu", chunk_bytes=97 * 4 * 10)
    dense, dense_sigma = gaussian_affinity(x)
    # the blocks' distances are float32 (the graph's cost is their matmul): sigma, a mean
    # of 97^2 of them, agrees to float32 precision, the chosen neighbours exactly
    assert sigma == pytest.approx(dense_sigma, rel=1e-6)
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    np.fill_diagonal(d, np.inf)
    keep = np.zeros_like(dense, dtype=bool)
    nearest = np.argsort(d, axis=1)[:, :k]
    keep[np.repeat(np.arange(97), k), nearest.ravel()] = True
    directed = np.where(keep, dense, 0.0)
    expected = 0.5 * (directed + directed.T)
    np.testing.assert_allclose(w.to_dense().numpy(), expected, atol=1e-6)
    assert np.array_equal(w.to_dense().numpy() > 0, expected > 0)
    assert w.layout == torch.sparse_coo and w._nnz() <= 2 * 97 * k
    # explicit sigma is used as given
    assert knn_affinity(x, k, sigma=0.5, device="cpu")[1] == 0.5


def test_sparse_embedding_spans_the_dense_one():
    """LOBPCG on the sparse normalised adjacency finds the same top eigenspace as the dense
    eigendecomposition when the kNN graph is the complete graph."""
    x, _ = planted(120, 4, dim=16, noise=0.8, seed=1)
    w_sparse, _ = knn_affinity(x, 119, device="cpu")
    w_dense = torch.as_tensor(gaussian_affinity(x)[0])
    sparse = spectral_embedding_sparse_torch(w_sparse, 4).numpy()
    dense = spectral_embedding_torch(w_dense, 4).numpy()

    def projector(e):
        q, _ = np.linalg.qr(e)
        return q @ q.T

    np.testing.assert_allclose(projector(sparse), projector(dense), atol=1e-5)


def test_choose_graph():
    assert choose_graph(100) == "dense"
    assert choose_graph(100, dense_max=50) == "knn"
    assert choose_graph(100, "knn") == "knn" and choose_graph(10 ** 7, "dense") == "dense"
    assert choose_graph(100, dense_max=50, above="nystrom") == "nystrom"
    assert choose_graph(100, "nystrom") == "nystrom"
    with pytest.raises(ValueError, match="graph"):
        choose_graph(10, "sparse")


@pytest.mark.parametrize("backend", ["torch", "sklearn"])
def test_knn_path_above_threshold_builds_no_dense_matrix_and_keeps_nmi(backend, monkeypatch):
    # a hard set: the dense path's NMI is well below 1
    x, truth = planted(1500, 30, dim=64, noise=1.6, seed=2)
    names = [str(t) for t in truth]
    dense = run_clustering(x, 30, backend=backend, truth=names, graph="dense")
    assert dense["graph"] == "dense" and dense["scores"]["nmi"] < 0.99

    def no_dense(*args, **kwargs):
        raise AssertionError("the kNN path built a dense N x N matrix")

    monkeypatch.setattr(cluster, "gaussian_affinity", no_dense)
    monkeypatch.setattr(cluster, "pairwise_distances", no_dense)
    # blocks of ~64 rows at most: nothing of N x N size is allocated
    real_knn = cluster.knn_affinity
    monkeypatch.setattr(cluster, "knn_affinity", lambda *a, **k: real_knn(
        *a, **{**k, "chunk_bytes": 64 * 1500 * 8}))
    sparse = run_clustering(x, 30, backend=backend, truth=names, graph="knn")
    assert sparse["graph"] == "knn" and sparse["n_neighbors"] == 100
    assert sparse["sigma"] == pytest.approx(dense["sigma"], rel=1e-6)   # float32 blocks
    assert sparse["scores"]["nmi"] >= dense["scores"]["nmi"] - 0.01, (sparse, dense)
    assert sum(sparse["sizes"]) == 1500


def test_nystrom_path_builds_no_dense_matrix_and_keeps_nmi(monkeypatch):
    """On the hard set (dense NMI 0.95) 300 landmarks of 1,500 videos keep the dense
    path's NMI, with no N x N array (the dense helpers refuse) and sigma estimated on the
    landmarks within 2 % of the dense one."""
    x, truth = planted(1500, 30, dim=64, noise=1.6, seed=2)
    names = [str(t) for t in truth]
    dense = run_clustering(x, 30, truth=names, graph="dense")

    def no_dense(*args, **kwargs):
        raise AssertionError("the Nyström path built a dense N x N matrix")

    monkeypatch.setattr(cluster, "gaussian_affinity", no_dense)
    monkeypatch.setattr(cluster, "pairwise_distances", no_dense)
    out = run_clustering(x, 30, truth=names, graph="nystrom", n_landmarks=300)
    assert out["graph"] == "nystrom" and out["n_landmarks"] == 300
    assert out["sigma"] == pytest.approx(dense["sigma"], rel=0.02)
    assert out["scores"]["nmi"] >= dense["scores"]["nmi"] - 0.01, (out, dense)


def test_knn_path_is_deterministic_and_rejects_bad_sizes():
    x, _ = planted(200, 5, seed=4)
    a = run_clustering(x, 5, backend="torch", graph="knn", n_neighbors=20)["labels"]
    b = run_clustering(x, 5, backend="torch", graph="knn", n_neighbors=20)["labels"]
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="clusters"):
        cluster.spectral_clustering_knn(x[:3], 5)


def test_cuml_backend_receives_the_sparse_affinity(fake_cuml):
    calls = fake_cuml
    x, _ = planted(50, 3, seed=5)
    out = run_clustering(x, 3, backend="cuml", graph="knn", n_neighbors=7)
    import scipy.sparse as sp

    matrix = calls["affinity"]
    assert calls["init"]["affinity"] == "precomputed"
    assert (sp.issparse(matrix) or type(matrix).__module__.startswith("cupyx"))
    assert matrix.shape == (50, 50) and matrix.dtype == np.float32
    assert matrix.nnz <= 2 * 50 * 7
    assert out["graph"] == "knn" and out["labels"].dtype == np.int64


def test_torch_dense_affinity_equals_numpy():
    from acl_dist.clustering import gaussian_affinity_torch

    x, _ = planted(60, 3, dim=8, seed=6)
    w, sigma = gaussian_affinity_torch(x, device="cpu")
    expected, expected_sigma = gaussian_affinity(x)
    assert sigma == pytest.approx(expected_sigma, rel=1e-12)
    np.testing.assert_allclose(w.numpy(), expected, atol=1e-12)


def test_auto_on_cpus_takes_the_nystrom_path_above_the_cpu_threshold():
    """``cluster.dense_max_videos_cpu``: on CPUs ``auto`` leaves the dense graph sooner
    than on a GPU, for the Nyström embedding, said in the reason; an explicit kNN graph
    takes torch's LOBPCG under an ``auto`` backend."""
    from acl_dist.clustering import gpu_available

    assert not gpu_available()     # the CPU rule is what this machine (and CI) runs
    x, truth = planted(600, 6, dim=16, seed=2)
    big = run_clustering(x, 6, backend="auto", dense_max_cpu=500, n_landmarks=200)
    assert big["graph"] == "nystrom" and big["backend"] == "sklearn"
    assert "Nyström" in big["backend_reason"] and big["n_landmarks"] == 200
    small = run_clustering(x[:400], 6, backend="auto", dense_max_cpu=500)
    assert small["graph"] == "dense" and small["backend"] == "sklearn"
    # the same clusters either way on planted descriptors
    dense = run_clustering(x, 6, graph="dense")
    assert nmi(dense["labels"], big["labels"]) == pytest.approx(1.0)
    # the GPU limit does not apply on CPUs; an explicit backend is kept
    assert run_clustering(x, 6, backend="auto", dense_max=100)["graph"] == "dense"
    knn = run_clustering(x, 6, backend="auto", graph="knn")
    assert knn["backend"] == "torch" and "LOBPCG" in knn["backend_reason"]
    assert run_clustering(x, 6, backend="sklearn", graph="knn")["backend"] == "sklearn"


def test_nystrom_with_every_video_a_landmark_is_the_dense_embedding():
    """With m = N the Nyström factorisation is K itself: the same sigma as the dense path
    and the same top eigenspace (up to the self-affinities, which the dense matrix drops
    and the factorisation keeps: a 1/degree shift); with about half the videos as
    landmarks the dense path's clusters."""
    x, truth = planted(150, 5, dim=16, noise=0.9, seed=4)
    emb, sigma = cluster.nystrom_embedding(x, 5, n_landmarks=150)
    w, dense_sigma = gaussian_affinity(x)
    assert sigma == pytest.approx(dense_sigma, rel=1e-12)
    dense = spectral_embedding_torch(torch.as_tensor(w), 5).numpy()

    def projector(e):
        q, _ = np.linalg.qr(e)
        return q @ q.T

    np.testing.assert_allclose(projector(emb), projector(dense), atol=2e-2)
    labels, _ = cluster.spectral_clustering_nystrom(x, 5, n_landmarks=80)
    reference = run_clustering(x, 5, graph="dense")["labels"]
    assert nmi(reference, labels) == pytest.approx(1.0)
    assert cluster.nystrom_embedding(x, 5, n_landmarks=40, sigma=0.7)[1] == 0.7
    with pytest.raises(ValueError, match="cannot make 200 clusters"):
        cluster.spectral_clustering_nystrom(x, 200)
