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

Three affinity graphs, chosen by :func:`choose_graph`:

* ``dense`` (up to ``DENSE_MAX_VIDEOS`` on a GPU, ``DENSE_MAX_VIDEOS_CPU`` on CPUs): the
  full ``(N, N)`` Gaussian affinity, the authors' form. 20k videos cost 3.2 GB in float64;
  ActivityNet-1.3 has 10k training videos.
* ``knn`` (above it on a GPU): each video keeps its ``n_neighbors`` nearest descriptors, found by a
  chunked similarity top-k (GPU when present) that never holds more than a
  ``(chunk, N)`` block; the same Gaussian weights and the same sigma (the exact mean
  pairwise distance, accumulated over the blocks); symmetrised ``(W + W^T) / 2``. The
  ``torch`` backend then takes the top eigenvectors of the sparse normalised adjacency
  with LOBPCG and runs k-means on the GPU; ``sklearn`` and ``cuml`` receive the sparse
  matrix as their precomputed affinity.
* ``nystrom`` (``auto``'s choice on CPUs above ``cluster.dense_max_videos_cpu``): the dense
  graph's spectral embedding approximated from ``n_landmarks`` videos' columns of it
  (Nyström, as Fowlkes et al., PAMI 2004), then scikit-learn's k-means: an ``(N, m)``
  block, never ``(N, N)``. On an ActivityNet-1.3-sized store's descriptors (9,641 videos,
  200 clusters, 2 cores) it matched the dense graph's NMI (0.707 vs 0.708 on round-0
  descriptors, 0.573 vs 0.574 on a round's) in 9-10 s against 56-61 s; the kNN graph lost
  NMI on noisy descriptors (0.610 vs 0.708).

Descriptor of video v at round i: per stream, the attention-weighted mean of its snippet
features ``f = X^T S`` (S uniform 1/T at round 0), L2-normalised per stream, streams
concatenated (so ``||f|| = sqrt(#streams)``). Affinity ``w_jk = exp(-||f_j - f_k||^2 /
(2 sigma^2))`` with sigma the mean pairwise distance over pairs ``j <= k`` (the authors'
code includes the zero diagonal in that mean).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import time
import warnings
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np

if TYPE_CHECKING:
    from .config import ClusterConfig


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


#: The keyword arguments acl-dist passes to ``cuml.cluster.SpectralClustering`` (the
#: estimator appeared in cuML 25.10; the ``gpu`` extra pins ``cuml-cu12>=25.10``).
CUML_ARGUMENTS = ("n_clusters", "affinity", "random_state", "n_init")


def cuml_status() -> tuple[bool, str]:
    """Whether the installed cuML has the API acl-dist uses, and why (for the log): a
    ``cuml.cluster.SpectralClustering`` taking :data:`CUML_ARGUMENTS`. Older cuML releases
    import fine but have no such estimator, so importing ``cuml`` proves nothing."""
    try:
        import cuml
    except Exception as exc:
        return False, f"cuML not importable ({type(exc).__name__})"
    version = getattr(cuml, "__version__", "?")
    try:
        from cuml.cluster import SpectralClustering
    except Exception:
        return False, f"cuML {version} has no cuml.cluster.SpectralClustering (>= 25.10 has)"
    try:
        params = inspect.signature(SpectralClustering).parameters
    except (TypeError, ValueError):   # a compiled class without a signature: trust it
        return True, f"cuML {version}"
    missing = [a for a in CUML_ARGUMENTS if a not in params]
    if missing:
        return False, f"cuML {version}'s SpectralClustering takes no {', '.join(missing)}"
    return True, f"cuML {version}"


def cuml_available() -> bool:
    return cuml_status()[0]


def gpu_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def resolve_backend(backend: str) -> str:
    """``auto`` -> ``cuml`` if cuML has the API used (:func:`cuml_status`) and a GPU is
    there, else ``torch`` on a GPU, else ``sklearn``. Other names are returned as they are
    (after checking them; ``cuml`` without its API is an error naming what is missing)."""
    return backend_choice(backend)[0]


def backend_choice(backend: str) -> tuple[str, str]:
    """(the backend that runs, why): what the clustering step logs."""
    if backend not in BACKENDS:
        raise ValueError(f"clustering backend must be one of {BACKENDS}, not {backend!r}")
    if backend == "cuml":
        ok, why = cuml_status()
        if not ok:
            raise ValueError(f"cluster.backend=cuml: {why}")
        return "cuml", f"asked for; {why}"
    if backend != "auto":
        return backend, "asked for"
    if not gpu_available():
        return "sklearn", "auto: no GPU"
    ok, why = cuml_status()
    return ("cuml", f"auto: GPU and {why}") if ok else ("torch", f"auto: GPU, {why}")


class Phases(dict):
    """Seconds per phase of a clustering (``graph``, ``embedding`` (the eigensolver),
    ``kmeans``, ``scores``; ``spectral`` when one library call does both), filled by
    ``with phases("name"): ...``; what the run's clustering line reports."""

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self[name] = self.get(name, 0.0) + time.perf_counter() - started


def spectral_clustering(affinity: np.ndarray, n_clusters: int, seed: int = 0,
                        backend: str = "sklearn", n_init: int = 10,
                        device: str | None = None,
                        phases: Phases | None = None) -> np.ndarray:
    """Spectral clustering of a precomputed ``(N, N)`` affinity into ``n_clusters``.

    ``affinity`` may be a scipy sparse matrix for the ``sklearn`` and ``cuml`` backends (the
    kNN graph; cuML gets it on the device when CuPy is there). ``phases`` receives the
    seconds of the embedding and of k-means.

    Returns:
        ``(N,)`` int cluster ids in ``[0, n_clusters)``.
    """
    phases = Phases() if phases is None else phases
    n = affinity.shape[0]
    if n_clusters < 1 or n_clusters > n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} videos")
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64)
    backend = resolve_backend(backend)
    if backend == "sklearn":
        # SpectralClustering(affinity="precomputed", assign_labels="kmeans").fit's two
        # steps, with its one RandomState shared by both (identical labels), timed apart
        from sklearn.cluster import k_means
        from sklearn.manifold import spectral_embedding
        from sklearn.utils import check_array, check_random_state

        matrix = check_array(affinity, accept_sparse=["csr", "csc", "coo"],
                             dtype=np.float64, ensure_min_samples=2)
        state = check_random_state(seed)
        with phases("embedding"):
            maps = spectral_embedding(matrix, n_components=n_clusters, random_state=state,
                                      eigen_tol="auto", drop_first=False)
        with phases("kmeans"):
            _, labels, _ = k_means(maps, n_clusters, random_state=state, n_init=n_init)
        return labels.astype(np.int64)
    if backend == "torch":
        return spectral_clustering_torch(affinity, n_clusters, seed, n_init, device, phases)
    from cuml.cluster import SpectralClustering as CuSpectral

    matrix = affinity.astype(np.float32)
    if not isinstance(matrix, np.ndarray):   # scipy sparse
        try:
            import cupyx.scipy.sparse as cusp

            matrix = cusp.csr_matrix(matrix)
        except ImportError:
            pass
    model = CuSpectral(n_clusters=n_clusters, affinity="precomputed", random_state=seed,
                       n_init=n_init)
    with phases("spectral"):      # cuML's one call: eigensolver and k-means
        labels = model.fit_predict(matrix)
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
    return _diffusion_embedding(vecs[:, -n_components:].flip(1), dinv)   # the largest first


def _diffusion_embedding(vecs, dinv):
    """scikit-learn's scaling of the eigenvectors (``D^-1/2 v``) and its sign convention
    (each vector's entry of largest magnitude positive)."""
    import torch

    emb = vecs * dinv[:, None]
    idx = emb.abs().argmax(dim=0)
    signs = torch.sign(emb[idx, torch.arange(emb.shape[1], device=emb.device)])
    return emb * torch.where(signs == 0, torch.ones_like(signs), signs)[None, :]


def kmeans_plusplus_torch(x, n_clusters: int, generator, x_sq=None):
    """Greedy k-means++ seeding (scikit-learn's: ``2 + ln k`` candidates per centre, the one
    that lowers the potential most), sampled on x's device without host syncs.

    Args: x ``(N, F)``; generator: a CPU ``torch.Generator``. Returns ``(k, F)`` centres.
    """
    import torch

    n = x.shape[0]
    x_sq = (x * x).sum(dim=1) if x_sq is None else x_sq
    trials = 2 + int(math.log(n_clusters))

    def sq_dist(rows):                                     # (r,) -> (r, N)
        return (x_sq[rows][:, None] + x_sq[None, :] - 2.0 * x[rows] @ x.T).clamp_(min=0)

    first = torch.randint(n, (1,), generator=generator).to(x.device)
    chosen = [first[0]]
    closest = sq_dist(first)[0]
    potential = closest.sum()
    for _ in range(1, n_clusters):
        u = torch.rand(trials, generator=generator, dtype=torch.float64).to(x.device)
        cumulative = torch.cumsum(closest.double(), 0)
        candidates = torch.searchsorted(cumulative, u * potential.double()).clamp_(max=n - 1)
        new_closest = torch.minimum(closest[None, :], sq_dist(candidates))
        potentials = new_closest.sum(dim=1)
        best = potentials.argmin()
        chosen.append(candidates[best])
        closest, potential = new_closest[best], potentials[best]
    return x[torch.stack(chosen)]


def kmeans_torch(x, n_clusters: int, seed: int = 0, n_init: int = 10, max_iter: int = 300,
                 tol: float = 1e-4):
    """k-means (greedy k-means++ seeding, Lloyd iterations), best of ``n_init`` by inertia.

    Converges like scikit-learn's: labels unchanged, or a centre shift below ``tol`` times
    the mean per-feature variance. One host sync per iteration.

    Args: x ``(N, F)`` tensor. Returns ``(N,)`` long labels on x's device.
    """
    import torch

    gen = torch.Generator(device="cpu").manual_seed(seed)
    x_sq = (x * x).sum(dim=1)
    tol_abs = float(tol * x.var(dim=0).mean())
    best_labels, best_inertia = None, float("inf")

    def assign(centres):
        dist = x_sq[:, None] - 2 * x @ centres.T + (centres * centres).sum(dim=1)[None, :]
        labels = dist.argmin(dim=1)
        return labels, dist.gather(1, labels[:, None]).sum()

    for _ in range(n_init):
        centres = kmeans_plusplus_torch(x, n_clusters, gen, x_sq)
        prev = None
        for _ in range(max_iter):
            labels, _ = assign(centres)
            counts = torch.bincount(labels, minlength=n_clusters).to(x.dtype)
            sums = torch.zeros_like(centres).index_add_(0, labels, x)
            new = torch.where((counts == 0)[:, None], centres,
                              sums / counts.clamp(min=1)[:, None])
            shift = ((new - centres) ** 2).sum()
            centres = new
            done = shift <= tol_abs
            if prev is not None:
                done = done | torch.equal(prev, labels)
            if bool(done):
                break
            prev = labels
        labels, inertia = assign(centres)
        inertia = float(inertia)
        if inertia < best_inertia:
            best_inertia, best_labels = inertia, labels
    return best_labels


def _torch_device(device: str | None):
    import torch

    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def _descriptor_tensor(descriptors, dev, dtype=None):
    """``(N, F)`` descriptors on ``dev`` (default float64 on a CPU, for agreement with the
    numpy path; float32 on a GPU) and their squared norms. Always a copy: the input may be
    a read-only Arrow buffer."""
    import torch

    if dtype is None:
        dtype = torch.float32 if dev.type == "cuda" else torch.float64
    x = (descriptors.to(device=dev, dtype=dtype) if torch.is_tensor(descriptors)
         else torch.tensor(np.asarray(descriptors), device=dev, dtype=dtype))
    return x, (x * x).sum(dim=1)


def _mean_distance(total: float, n: int) -> float:
    """sigma of :func:`gaussian_affinity` from the sum of distances over all ordered pairs
    (= 2 x the sum over j < k; pairs j <= k number N(N+1)/2)."""
    return total / (n * (n + 1)) if n > 1 else 1.0


def gaussian_affinity_torch(descriptors, sigma: float | None = None,
                            device: str | None = None):
    """:func:`gaussian_affinity` computed on a torch device (float32 on a GPU): the dense
    ``torch`` path on a GPU never builds the N x N matrix in host memory.

    Returns: (``(N, N)`` tensor, sigma)
    """
    import torch

    x, sq = _descriptor_tensor(descriptors, _torch_device(device))
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.T)).clamp_(min=0.0)
    d2.fill_diagonal_(0.0)
    if sigma is None:
        sigma = _mean_distance(float(d2.sqrt().sum(dtype=torch.float64)), x.shape[0])
    sigma = max(float(sigma), 1e-12)
    return torch.exp_(d2.div_(-2.0 * sigma ** 2)), sigma


def spectral_clustering_torch(affinity, n_clusters: int, seed: int = 0,
                              n_init: int = 10, device: str | None = None,
                              phases: Phases | None = None) -> np.ndarray:
    """The ``torch`` backend: dense spectral clustering on ``device`` (default: GPU if any).

    Float64 on the CPU (exact agreement with scikit-learn's embedding), float32 on a GPU.
    """
    import torch

    dev = _torch_device(device)
    dtype = torch.float64 if dev.type == "cpu" else torch.float32
    if torch.is_tensor(affinity):
        w = affinity.to(device=dev, dtype=dtype)
    else:
        w = torch.as_tensor(np.asarray(affinity), dtype=dtype, device=dev)
    phases = Phases() if phases is None else phases
    with phases("embedding"):
        emb = spectral_embedding_torch(w, n_clusters)
    with phases("kmeans"):
        return kmeans_torch(emb, n_clusters, seed, n_init).cpu().numpy().astype(np.int64)


# --------------------------------------------------------------------------- kNN-sparse path

DENSE_MAX_VIDEOS = 20_000
DENSE_MAX_VIDEOS_CPU = 5_000
N_LANDMARKS = 2_000
GRAPHS = ("auto", "dense", "knn", "nystrom")


def choose_graph(n_videos: int, graph: str = "auto", dense_max: int = DENSE_MAX_VIDEOS,
                 above: str = "knn") -> str:
    """``auto`` -> ``dense`` up to ``dense_max`` videos, ``above`` (``knn`` on a GPU,
    ``nystrom`` on CPUs) beyond."""
    if graph not in GRAPHS:
        raise ValueError(f"clustering graph must be one of {GRAPHS}, not {graph!r}")
    if graph != "auto":
        return graph
    return "dense" if n_videos <= dense_max else above


def knn_affinity(descriptors, n_neighbors: int, sigma: float | None = None,
                 device: str | None = None, chunk_bytes: int | None = None):
    """Sparse Gaussian kNN affinity without an ``(N, N)`` matrix.

    Distances are computed a block of rows at a time (``(chunk, N)``, at most
    ``chunk_bytes``); each block contributes its row-wise top-k and its share of the exact
    mean pairwise distance (sigma over pairs ``j <= k``, diagonal included, as in
    :func:`gaussian_affinity`). Weights ``exp(-d^2 / (2 sigma^2))``, self-loops excluded,
    symmetrised ``(W + W^T) / 2``.

    Args:
        descriptors: ``(N, F)`` array or tensor.
        n_neighbors: neighbours kept per video (clipped to ``N - 1``).
        sigma: bandwidth; None = the mean pairwise distance.
        device: torch device; default the GPU when there is one.
        chunk_bytes: memory of one distance block; default 1 GiB on a GPU, 256 MiB on a CPU.
    Returns:
        (coalesced sparse COO ``(N, N)`` float tensor on ``device``, sigma)
    """
    import torch

    dev = _torch_device(device)
    # float32 distances on a CPU too: the blocks' matmul is the graph's cost (10k x 2048-d
    # descriptors on 2 cores: 7.3 s in float64); weights and sigma stay float64
    x, sq = _descriptor_tensor(descriptors, dev, torch.float32)
    n = x.shape[0]
    k = int(min(max(n_neighbors, 1), n - 1))
    if k < 1:
        raise ValueError("a kNN affinity needs at least 2 videos")
    if chunk_bytes is None:
        chunk_bytes = (1 << 30) if dev.type == "cuda" else (1 << 28)
    chunk = max(1, min(n, chunk_bytes // (n * x.element_size())))
    nbr_idx = torch.empty((n, k), dtype=torch.int64, device=dev)
    nbr_d2 = torch.empty((n, k), dtype=torch.float64 if dev.type == "cpu" else x.dtype,
                         device=dev)
    dist_sum = torch.zeros((), dtype=torch.float64, device=dev)
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        rows = torch.arange(start, stop, device=dev)
        d2 = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        d2.clamp_(min=0.0)
        d2[rows - start, rows] = 0.0
        if sigma is None:
            dist_sum += d2.sqrt().sum(dtype=torch.float64)
        d2[rows - start, rows] = float("inf")          # a video is not its own neighbour
        vals, idx = torch.topk(d2, k, dim=1, largest=False)
        nbr_idx[start:stop], nbr_d2[start:stop] = idx, vals
        del d2
    if sigma is None:
        sigma = _mean_distance(float(dist_sum), n)
    sigma = max(float(sigma), 1e-12)
    weights = torch.exp(-nbr_d2 / (2.0 * sigma ** 2)).reshape(-1)
    rows = torch.arange(n, device=dev).repeat_interleave(k)
    cols = nbr_idx.reshape(-1)
    index = torch.stack([torch.cat([rows, cols]), torch.cat([cols, rows])])
    w = torch.sparse_coo_tensor(index, torch.cat([weights, weights]) * 0.5, (n, n),
                                check_invariants=False)   # built from valid indices
    return w.coalesce(), sigma


def spectral_embedding_sparse_torch(affinity, n_components: int, seed: int = 0,
                                    max_iter: int = 300, tol: float | None = None):
    """The spectral embedding of a sparse affinity: top eigenvectors of ``D^-1/2 W D^-1/2``
    by LOBPCG (on ``I + D^-1/2 W D^-1/2``, positive semi-definite, same eigenvectors), then
    the diffusion-map scaling and sign convention of :func:`spectral_embedding_torch`.

    Args: affinity: coalesced sparse COO ``(N, N)`` without self-loops.
    Returns: ``(N, n_components)`` dense tensor on the affinity's device.
    """
    import torch

    w = affinity.coalesce()
    n = w.shape[0]
    idx, vals = w.indices(), w.values()
    degree = torch.zeros(n, dtype=vals.dtype, device=vals.device).index_add_(0, idx[0], vals)
    dinv = degree.clamp(min=1e-12).rsqrt()
    norm_vals = dinv[idx[0]] * vals * dinv[idx[1]]
    eye = torch.arange(n, device=vals.device)
    shifted = torch.sparse_coo_tensor(torch.cat([idx, torch.stack([eye, eye])], 1),
                                      torch.cat([norm_vals, torch.ones_like(dinv)]),
                                      (n, n), check_invariants=False).coalesce()
    with warnings.catch_warnings():   # "sparse CSR support is in beta": it is what LOBPCG uses
        warnings.simplefilter("ignore", UserWarning)
        shifted = shifted.to_sparse_csr()
    gen = torch.Generator(device="cpu").manual_seed(seed)
    # start from D^1/2 1 (the known top eigenvector) plus random directions
    start = torch.randn((n, n_components), generator=gen, dtype=vals.dtype).to(vals.device)
    start[:, 0] = degree.sqrt()
    if 3 * n_components > n:   # LOBPCG needs N >= 3k: small graphs go dense
        vecs = torch.linalg.eigh(shifted.to_dense())[1][:, -n_components:]
    else:
        _, vecs = torch.lobpcg(shifted, k=n_components, X=start, niter=max_iter, tol=tol,
                               largest=True)
    return _diffusion_embedding(vecs[:, :n_components], dinv)


def _to_scipy(affinity):
    import scipy.sparse as sp

    w = affinity.coalesce()
    idx = w.indices().cpu().numpy()
    return sp.csr_matrix((w.values().cpu().numpy(), (idx[0], idx[1])), shape=tuple(w.shape))


def spectral_clustering_knn(descriptors, n_clusters: int, seed: int = 0,
                            backend: str = "torch", n_init: int = 10,
                            n_neighbors: int = 100, sigma: float | None = None,
                            device: str | None = None, phases: Phases | None = None
                            ) -> tuple[np.ndarray, float]:
    """Spectral clustering on the kNN-sparse Gaussian affinity (no ``(N, N)`` matrix).

    Returns: (``(N,)`` int64 cluster ids, sigma)
    """
    phases = Phases() if phases is None else phases
    n = len(descriptors)
    if n_clusters < 1 or n_clusters > n:
        raise ValueError(f"cannot make {n_clusters} clusters of {n} videos")
    backend = resolve_backend(backend)
    if backend == "sklearn" and device is None:
        device = "cpu"
    with phases("graph"):
        w, sig = knn_affinity(descriptors, n_neighbors, sigma, device)
    if n_clusters == 1:
        return np.zeros(n, dtype=np.int64), sig
    if backend == "torch":
        with phases("embedding"):
            emb = spectral_embedding_sparse_torch(w, n_clusters, seed)
        with phases("kmeans"):
            labels = kmeans_torch(emb, n_clusters, seed, n_init)
        return labels.cpu().numpy().astype(np.int64), sig
    return spectral_clustering(_to_scipy(w), n_clusters, seed=seed, backend=backend,
                               n_init=n_init, phases=phases), sig


# --------------------------------------------------------------------------- Nyström path

def landmarks_used(n_videos: int, n_landmarks: int, n_components: int) -> int:
    """The Nyström path's landmark count: ``n_landmarks``, at least 2 x the components,
    at most every video."""
    return min(n_videos, max(n_landmarks, 2 * n_components))


def nystrom_embedding(descriptors: np.ndarray, n_components: int,
                      n_landmarks: int = N_LANDMARKS, seed: int = 0,
                      sigma: float | None = None) -> tuple[np.ndarray, float]:
    """The spectral embedding of the dense Gaussian affinity K, from ``m`` landmark
    videos' columns of it (drawn with ``seed``; ``m = min(N, max(n_landmarks, 2 x
    n_components))``): K ~ C W^-1 C^T with C = K[:, landmarks] ``(N, m)`` and W its
    landmark rows, so D^-1/2 K D^-1/2 ~ Psi Psi^T and its top eigenvectors come from the
    ``(r, r)`` matrix Psi^T Psi (r <= m). Degrees leave out the self-affinity as the dense
    path does; the diffusion-map scaling and sign convention are scikit-learn's.

    Args:
        descriptors: ``(N, F)``.
        sigma: bandwidth; None = the mean pairwise distance over the landmarks (the dense
            path's rule, on the sample; all landmarks: exactly the dense sigma).
    Returns:
        (``(N, n_components)`` float64 embedding, sigma). Memory: three ``(N, m)`` float64
        arrays (10k videos, 2,000 landmarks: 0.5 GB).
    """
    x = np.asarray(descriptors, dtype=np.float64)
    n = len(x)
    m = landmarks_used(n, n_landmarks, n_components)
    landmarks = np.sort(np.random.default_rng(seed).choice(n, size=m, replace=False))
    sq = (x * x).sum(1)
    d2 = np.clip(sq[:, None] + sq[landmarks][None, :] - 2.0 * (x @ x[landmarks].T), 0.0, None)
    d2[landmarks, np.arange(m)] = 0.0
    if sigma is None:
        sigma = _mean_distance(float(np.sqrt(d2[landmarks]).sum()), m)
    sigma = max(float(sigma), 1e-12)
    c = np.exp(d2 / (-2.0 * sigma ** 2))                         # (N, m)
    del d2
    evals, evecs = np.linalg.eigh(c[landmarks])                   # W, (m, m)
    keep = evals > 1e-10 * evals[-1]
    phi = c @ (evecs[:, keep] / np.sqrt(evals[keep]))             # K ~ phi phi^T, (N, r)
    del c
    degree = phi @ phi.sum(axis=0) - 1.0                          # without K_ii = 1
    dinv = 1.0 / np.sqrt(np.clip(degree, 1e-12, None))
    psi = phi * dinv[:, None]
    values, vectors = np.linalg.eigh(psi.T @ psi)                 # ascending
    top = np.argsort(-values)[:n_components]
    vecs = (psi @ vectors[:, top]) / np.sqrt(np.clip(values[top], 1e-12, None))
    import torch

    return _diffusion_embedding(torch.from_numpy(vecs), torch.from_numpy(dinv)).numpy(), sigma


def spectral_clustering_nystrom(descriptors: np.ndarray, n_clusters: int, seed: int = 0,
                                n_init: int = 10, n_landmarks: int = N_LANDMARKS,
                                sigma: float | None = None, phases: Phases | None = None
                                ) -> tuple[np.ndarray, float]:
    """:func:`nystrom_embedding` then scikit-learn's k-means (``n_init`` restarts, seeded).

    Returns: (``(N,)`` int64 cluster ids, sigma)
    """
    from sklearn.cluster import k_means

    phases = Phases() if phases is None else phases
    if n_clusters < 1 or n_clusters > len(descriptors):
        raise ValueError(f"cannot make {n_clusters} clusters of {len(descriptors)} videos")
    if n_clusters == 1:
        return np.zeros(len(descriptors), dtype=np.int64), 1.0 if sigma is None else sigma
    with phases("embedding"):
        emb, sig = nystrom_embedding(descriptors, n_clusters, n_landmarks, seed, sigma)
    with phases("kmeans"):
        _, labels, _ = k_means(emb, n_clusters, random_state=seed, n_init=n_init)
    return labels.astype(np.int64), sig


def cluster_descriptors(descriptors: np.ndarray, n_clusters: int, seed: int = 0,
                        backend: str = "sklearn", n_init: int = 10,
                        sigma: float | None = None) -> np.ndarray:
    """Gaussian affinity + spectral clustering of ``(N, F)`` descriptors."""
    affinity, _ = gaussian_affinity(descriptors, sigma)
    return spectral_clustering(affinity, n_clusters, seed=seed, backend=backend, n_init=n_init)


def graph_and_backend(n_videos: int, backend: str, graph: str, dense_max: int,
                      dense_max_cpu: int, n_landmarks: int = N_LANDMARKS
                      ) -> tuple[str, str, str]:
    """(graph, backend, why) of a clustering of ``n_videos``: ``auto``'s graph is dense up
    to ``dense_max`` videos on a GPU (kNN above) and up to ``dense_max_cpu`` on CPUs
    (Nyström above: the dense graph's NMI at a sixth of its time, measured). An ``auto``
    backend with an explicit kNN graph on CPUs takes torch's LOBPCG; the Nyström path is
    numpy and scikit-learn's k-means whatever the backend."""
    used, why = backend_choice(backend)
    on_gpu = used in ("torch", "cuml") and gpu_available()
    kind = choose_graph(n_videos, graph, dense_max if on_gpu else dense_max_cpu,
                        above="knn" if on_gpu else "nystrom")
    if kind == "knn" and backend == "auto" and used == "sklearn":
        used, why = "torch", f"{why}; kNN graph on CPUs: torch's LOBPCG"
    if kind == "nystrom":
        used, why = "sklearn", (f"{why}; Nyström embedding of the dense graph from "
                                "landmark videos (numpy), scikit-learn's k-means")
    return kind, used, why


def cluster_with(descriptors: np.ndarray, n_clusters: int, cc: ClusterConfig,
                 truth: list[str] | None = None, previous: np.ndarray | None = None) -> dict:
    """:func:`run_clustering` with a :class:`~acl_dist.config.ClusterConfig`'s settings
    (``cc``; its ``seed`` as given: a run adds its own seed first)."""
    return run_clustering(descriptors, n_clusters, cc.backend, cc.seed, cc.n_init, cc.sigma,
                          truth, previous, cc.graph, cc.n_neighbors, cc.dense_max_videos,
                          cc.dense_max_videos_cpu, cc.n_landmarks)


def run_clustering(descriptors: np.ndarray, n_clusters: int, backend: str = "auto",
                   seed: int = 0, n_init: int = 10, sigma: float | None = None,
                   truth: list[str] | None = None, previous: np.ndarray | None = None,
                   graph: str = "auto", n_neighbors: int = 100,
                   dense_max: int = DENSE_MAX_VIDEOS,
                   dense_max_cpu: int = DENSE_MAX_VIDEOS_CPU,
                   n_landmarks: int = N_LANDMARKS) -> dict:
    """One clustering step with its quality statistics (what the Ray task returns).
    Long because it is the step's whole record: the graph chosen, the clustering on it,
    and every statistic the run logs and Tune reads.

    Args:
        descriptors: ``(N, F)`` training-video descriptors.
        truth: the videos' class labels, when known (for NMI/ARI/purity; never used to
            cluster).
        previous: the previous round's cluster ids (for the label-free stability score).
        graph: ``auto`` | ``dense`` | ``knn`` | ``nystrom`` (see :func:`graph_and_backend`).
        n_neighbors: neighbours per video of the ``knn`` graph.
        n_landmarks: landmark videos of the ``nystrom`` path.
        dense_max, dense_max_cpu: ``auto``'s dense limit on a GPU and on CPUs.
    Returns:
        ``{"labels", "backend", "graph", "sigma", "seconds", "phases", "sizes",
        "silhouette", "scores"?, "stability"?}`` (``phases``: seconds of the graph, the
        eigensolver (``embedding``), ``kmeans`` (or cuML's one ``spectral`` call) and the
        ``scores``; ``stability``: NMI between ``previous`` and the new labels;
        ``silhouette`` and ``stability`` are the label-free scores Tune can use).
    """
    from .evaluate import clustering_scores

    started = time.perf_counter()
    phases = Phases()
    kind, used, why = graph_and_backend(len(descriptors), backend, graph, dense_max,
                                        dense_max_cpu, n_landmarks)
    if kind == "dense":
        # the torch backend on a GPU builds the affinity there, not in host memory
        build = (gaussian_affinity_torch if used == "torch" and gpu_available()
                 else gaussian_affinity)
        with phases("graph"):
            affinity, sig = build(descriptors, sigma)
        labels = spectral_clustering(affinity, n_clusters, seed=seed, backend=used,
                                     n_init=n_init, phases=phases)
    elif kind == "nystrom":
        labels, sig = spectral_clustering_nystrom(descriptors, n_clusters, seed=seed,
                                                  n_init=n_init, n_landmarks=n_landmarks,
                                                  sigma=sigma, phases=phases)
    else:
        labels, sig = spectral_clustering_knn(descriptors, n_clusters, seed=seed,
                                              backend=used, n_init=n_init,
                                              n_neighbors=n_neighbors, sigma=sigma,
                                              phases=phases)
    out = {"labels": labels, "backend": used, "backend_reason": why, "graph": kind,
           "sigma": sig, "sizes": np.bincount(labels, minlength=n_clusters).tolist()}
    if kind == "knn":
        out["n_neighbors"] = int(min(n_neighbors, len(descriptors) - 1))
    if kind == "nystrom":
        out["n_landmarks"] = landmarks_used(len(descriptors), n_landmarks, n_clusters)
    with phases("scores"):
        if truth is not None:
            out["scores"] = clustering_scores(labels, truth)
        out["silhouette"] = silhouette(descriptors, labels, seed=seed)
        if previous is not None:
            from sklearn.metrics import normalized_mutual_info_score

            out["stability"] = float(normalized_mutual_info_score(previous, labels))
    out["seconds"] = time.perf_counter() - started
    out["phases"] = {k: round(v, 3) for k, v in phases.items()}
    return out


def silhouette(descriptors: np.ndarray, labels: np.ndarray, seed: int = 0,
               max_videos: int = 4000) -> float | None:
    """Mean silhouette of a clustering of ``(N, F)`` descriptors (Euclidean), a label-free
    quality score in [-1, 1]; on at most ``max_videos`` videos sampled with ``seed``
    (its cost is quadratic). None when it is undefined (one cluster, or one per video)."""
    from sklearn.metrics import silhouette_score

    n_labels = len(np.unique(labels))
    if not 2 <= n_labels <= len(labels) - 1:
        return None
    sample = max_videos if len(labels) > max_videos else None
    return float(silhouette_score(np.asarray(descriptors, dtype=np.float32), labels,
                                  sample_size=sample, random_state=seed))
