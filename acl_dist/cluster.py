"""Clustering step of ACL (METHOD.md §3): video descriptors, Gaussian affinity, spectral
clustering into C clusters. No Ray: the pipeline runs :func:`run_clustering` as one Ray
task between rounds.

Backends, behind :func:`spectral_clustering`:

* ``sklearn``: scikit-learn's ``SpectralClustering`` on the precomputed affinity (CPU; the
  authors' choice).
* ``torch``: the same algorithm in PyTorch (dense eigendecomposition of the normalised
  affinity, the diffusion-map scaling and sign convention of scikit-learn, k-means++ with
  restarts), on a GPU when there is one; it also runs on the CPU.
* ``cuml``: RAPIDS cuML's ``SpectralClustering(affinity="precomputed")``, used when cuML
  imports (GPU clusters installed with the ``gpu`` extra).

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


def contrast_descriptor(features: Mapping[str, np.ndarray],
                        attention: Mapping[str, np.ndarray]) -> np.ndarray:
    """Action-minus-background descriptor (an acl-dist variant; the paper pools with S).

    Per stream: ``f_a - f_b`` with ``f_a = X^T S`` and ``f_b = X^T (1 - S) / (T - 1)``,
    L2-normalised, streams concatenated. Whatever the video shows everywhere (its scene,
    its style) cancels, so even an attention that only leans towards the actions yields an
    action descriptor; the paper's ``X^T S`` keeps the scene and needs a sharp S.

    Args:
        features: stream -> ``(T, D_s)``. attention: stream -> ``(T,)`` summing to 1.
    """
    parts = []
    for name, x in features.items():
        s = np.asarray(attention[name], dtype=np.float64).reshape(-1)
        t = x.shape[0]
        x64 = np.asarray(x, dtype=np.float64)
        action = s @ x64 / max(s.sum(), 1e-12)
        background = ((1.0 - s) / max(t - 1, 1)) @ x64
        parts.append(l2_normalize(action - background))
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


BACKENDS = ("auto", "sklearn", "torch", "cuml")


def cuml_available() -> bool:
    try:
        import cuml  # noqa: F401
    except Exception:
        return False
    return True


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cuml`` if cuML imports and a GPU is there, else ``torch`` on a GPU,
    else ``sklearn``. Other names are returned as they are (after checking them)."""
    if backend not in BACKENDS:
        raise ValueError(f"clustering backend must be one of {BACKENDS}, not {backend!r}")
    if backend != "auto":
        return backend
    if gpu_available():
        return "cuml" if cuml_available() else "torch"
    return "sklearn"


def spectral_clustering(affinity: np.ndarray, n_clusters: int, seed: int = 0,
                        backend: str = "sklearn", n_init: int = 10,
                        device: str | None = None) -> np.ndarray:
    """Spectral clustering of a precomputed ``(N, N)`` affinity into ``n_clusters``.

    Returns:
        ``(N,)`` int cluster ids in ``[0, n_clusters)``.
    """
    n = affinity.shape[0]
    if n_clusters < 1 or n_clusters > n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} videos")
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    backend = resolve_backend(backend)
    if backend == "sklearn":
        from sklearn.cluster import SpectralClustering

        model = SpectralClustering(n_clusters=n_clusters, affinity="precomputed",
                                   random_state=seed, assign_labels="kmeans", n_init=n_init)
        return model.fit_predict(affinity).astype(np.int64)
    if backend == "torch":
        return spectral_clustering_torch(affinity, n_clusters, seed, n_init, device)
    from cuml.cluster import SpectralClustering as CuSpectral

    model = CuSpectral(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                       n_init=n_init)
    labels = model.fit_predict(affinity.astype(np.float32))
    return np.asarray(labels.get() if hasattr(labels, "get") else labels, dtype=np.int64)


def spectral_embedding_torch(affinity, n_components: int):
    """scikit-learn's spectral embedding (normalised Laplacian, diffusion-map scaling,
    deterministic signs) in PyTorch: ``(N, N)`` tensor -> ``(N, n_components)``."""
    import torch

    # Like scipy's csgraph.laplacian (used by scikit-learn): self-affinities are ignored.
    w = affinity - torch.diag(torch.diagonal(affinity))
    degree = w.sum(dim=1)
    dinv = degree.clamp(min=1e-12).rsqrt()
    normalised = dinv[:, None] * w * dinv[None, :]       # I - L_sym
    _, vecs = torch.linalg.eigh(normalised)               # ascending eigenvalues
    vecs = vecs[:, -n_components:].flip(1)                # the largest first
    emb = vecs * dinv[:, None]
    # sign convention: the entry of largest magnitude of each vector is positive
    idx = emb.abs().argmax(dim=0)
    signs = torch.sign(emb[idx, torch.arange(emb.shape[1], device=emb.device)])
    return emb * torch.where(signs == 0, torch.ones_like(signs), signs)[None, :]


def kmeans_torch(x, n_clusters: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
                 tol: float = 1e-6):
    """k-means++ initialisation and Lloyd iterations, best of ``n_init`` by inertia.

    Args: x ``(N, F)`` tensor. Returns ``(N,)`` long labels on x's device.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = x.shape[0]
    best_labels, best_inertia = None, float("inf")
    x_sq = (x * x).sum(dim=1)
    for _ in range(n_init):
        centres = x[torch.randint(n, (1,), generator=gen).item()][None, :]
        d2 = ((x - centres[0]) ** 2).sum(dim=1)
        for _ in range(1, n_clusters):
            probs = (d2 / d2.sum().clamp(min=1e-30)).cpu().double()
            if not torch.isfinite(probs).all() or probs.sum() <= 0:
                probs = torch.full((n,), 1.0 / n, dtype=torch.float64)
            pick = torch.multinomial(probs, 1, generator=gen).item()
            centres = torch.cat([centres, x[pick][None, :]])
            d2 = torch.minimum(d2, ((x - x[pick]) ** 2).sum(dim=1))
        prev = None
        for _ in range(max_iter):
            dist = x_sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(dim=1)[None, :]
            labels = dist.argmin(dim=1)
            counts = torch.bincount(labels, minlength=n_clusters).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            empty = counts == 0
            new = torch.where(empty[:, None], centres, sums / counts.clamp(min=1)[:, None])
            shift = ((new - centres) ** 2).sum().item()
            centres = new
            if prev is not None and torch.equal(prev, labels) or shift < tol:
                break
            prev = labels
        dist = x_sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(dim=1)[None, :]
        labels = dist.argmin(dim=1)
        inertia = dist.gather(1, labels[:, None]).sum().item()
        if inertia < best_inertia:
            best_inertia, best_labels = inertia, labels
    return best_labels


def spectral_clustering_torch(affinity: np.ndarray, n_clusters: int, seed: int = 0,
                              n_init: int = 10, device: str | None = None) -> np.ndarray:
    """The ``torch`` backend: dense spectral clustering on ``device`` (default: GPU if any).

    Float64 on the CPU (exact agreement with scikit-learn's embedding), float32 on a GPU.
    """
    import torch

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    w = torch.as_tensor(np.asarray(affinity), dtype=dtype, device=dev)
    emb = spectral_embedding_torch(w, n_clusters)
    return kmeans_torch(emb, n_clusters, seed, n_init).cpu().numpy().astype(np.int64)


def cluster_descriptors(descriptors: np.ndarray, n_clusters: int, seed: int = 0,
                        backend: str = "sklearn", n_init: int = 10,
                        sigma: float | None = None) -> np.ndarray:
    """Gaussian affinity + spectral clustering of ``(N, F)`` descriptors."""
    affinity, _ = gaussian_affinity(descriptors, sigma)
    return spectral_clustering(affinity, n_clusters, seed=seed, backend=backend, n_init=n_init)


def run_clustering(descriptors: np.ndarray, n_clusters: int, backend: str = "auto",
                   seed: int = 0, n_init: int = 10, sigma: float | None = None,
                   truth: list[str] | None = None, previous: np.ndarray | None = None
                   ) -> dict:
    """One clustering step with its quality statistics (what the Ray task returns).

    Args:
        descriptors: ``(N, F)`` training-video descriptors.
        truth: the videos' class labels, when known (for NMI/ARI/purity; never used to
            cluster).
        previous: the previous round's cluster ids (for the label-free stability score).
    Returns:
        ``{"labels", "backend", "sigma", "seconds", "sizes", "scores"?, "stability"?}``.
    """
    import time

    from .evaluate import clustering_scores

    started = time.perf_counter()
    used = resolve_backend(backend)
    affinity, sig = gaussian_affinity(descriptors, sigma)
    labels = spectral_clustering(affinity, n_clusters, seed=seed, backend=used, n_init=n_init)
    out = {"labels": labels, "backend": used, "sigma": sig,
           "seconds": time.perf_counter() - started,
           "sizes": np.bincount(labels, minlength=n_clusters).tolist()}
    if truth is not None:
        out["scores"] = clustering_scores(labels, truth)
    if previous is not None:
        from sklearn.metrics import normalized_mutual_info_score

        out["stability"] = float(normalized_mutual_info_score(previous, labels))
    return out
