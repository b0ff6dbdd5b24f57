"""Clustering step of ACL (METHOD.md §3): video descriptors, Gaussian affinity, spectral
clustering into C clusters. Pure numpy / scikit-learn; no Ray.

Descriptor of video v at round i: per stream, the attention-weighted mean of its snippet
features ``f = X^T S`` (S uniform 1/T at round 0), L2-normalised per stream, streams
concatenated (so ``||f|| = sqrt(#streams)``). Affinity ``w_jk = exp(-||f_j - f_k||^2 /
(2 sigma^2))`` with sigma the mean pairwise distance over pairs ``j <= k`` (the authors'
code includes the zero diagonal in that mean).
"""

from __future__ import annotations

from typing import Mapping

import numpy as np


def pool_features(features: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Attention pooling of one stream.

    Args:
        features: ``(T, D)`` snippet features.
        weights: ``(T,)`` non-negative weights (normalised here); None = uniform 1/T.
    Returns:
        ``(D,)`` float64.
    """
    x = np.asarray(features, dtype=np.float64)
    if weights is None:
        return x.mean(axis=0)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != x.shape[0]:
        raise ValueError(f"weights have {w.shape[0]} entries for {x.shape[0]} snippets")
    total = w.sum()
    if not total > 0:
        return x.mean(axis=0)
    return (w / total) @ x


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise (or whole-vector) L2 normalisation."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, eps)


def video_descriptor(features: Mapping[str, np.ndarray],
                     weights: Mapping[str, np.ndarray | None] | np.ndarray | None = None
                     ) -> np.ndarray:
    """ACL video descriptor: pooled, per-stream L2-normalised, concatenated.

    Args:
        features: stream -> ``(T, D_s)``.
        weights: stream -> ``(T,)`` attention (each stream pooled by its own model's S), one
            ``(T,)`` array for all streams, or None (uniform: round 0).
    Returns:
        ``(sum_s D_s,)``.
    """
    parts = []
    for name, x in features.items():
        w = weights.get(name) if isinstance(weights, Mapping) else weights
        parts.append(l2_normalize(pool_features(x, w)))
    return np.concatenate(parts)


def pairwise_distances(x: np.ndarray) -> np.ndarray:
    """``(N, N)`` Euclidean distances of the rows of ``x`` (float64, exact zero diagonal)."""
    x = np.asarray(x, dtype=np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    d2 = sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)
    np.maximum(d2, 0.0, out=d2)
    np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def gaussian_affinity(descriptors: np.ndarray, sigma: float | None = None
                      ) -> tuple[np.ndarray, float]:
    """Dense Gaussian affinity and the bandwidth used.

    Args:
        descriptors: ``(N, F)``.
        sigma: bandwidth; default the mean distance over pairs ``j <= k`` (diagonal included).
    Returns:
        (``(N, N)`` affinity with unit diagonal, sigma)
    """
    dist = pairwise_distances(descriptors)
    n = dist.shape[0]
    if sigma is None:
        iu = np.triu_indices(n)
        sigma = float(dist[iu].mean()) if n > 1 else 1.0
    sigma = max(float(sigma), 1e-12)
    return np.exp(-(dist ** 2) / (2.0 * sigma ** 2)), sigma


def spectral_clustering(affinity: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of a precomputed affinity into ``n_clusters`` (scikit-learn).

    Returns:
        ``(N,)`` int cluster ids in ``[0, n_clusters)``.
    """
    from sklearn.cluster import SpectralClustering

    n = affinity.shape[0]
    if n_clusters < 1 or n_clusters > n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} videos")
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                               assign_labels="kmeans", n_init=10)
    return model.fit_predict(affinity).astype(np.int64)


def cluster_descriptors(descriptors: np.ndarray, n_clusters: int, seed: int = 0) -> np.ndarray:
    """Gaussian affinity + spectral clustering of ``(N, F)`` descriptors."""
    affinity, _ = gaussian_affinity(descriptors)
    return spectral_clustering(affinity, n_clusters, seed=seed)
