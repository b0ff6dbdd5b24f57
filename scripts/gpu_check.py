"""GPU check: acl-dist's GPU paths and their speed on one GPU, in one process.

For a single-GPU machine (H100/H200 class) whose Python has torch, scikit-learn and
(optionally) CuPy but neither Ray nor cuML: run from the repository root with
``scripts/gpu_check.sh`` (or ``PYTHONPATH=. python3 scripts/gpu_check.py``). Prints three
tables; ``--quick`` shrinks every size so the script itself can be tested on a CPU.

1. Training step of the real model (two CoAttentionNet streams, every loss term, Adam) at
   THUMOS14 and ActivityNet shapes, fp32 and bf16 autocast, on ragged padded batches.
2. The per-worker training loop :func:`acl_dist.train.fit` (what Ray Train runs) for a few
   steps on the GPU: the real path from ``VideoItem`` to updated weights.
3. Spectral clustering: dense Gaussian affinity at N = 5k and 10k (torch on the GPU, and
   scikit-learn on the CPU at 5k for the ratio), the kNN-sparse path at the same sizes
   (NMI against dense), and kNN-sparse at N = 100k and 1M. Peak GPU memory per row shows
   that the sparse path never builds an (N, N) matrix (1M x 1M float32 would be 4 TB).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acl_dist.clustering import (gaussian_affinity, kmeans_torch, knn_affinity,  # noqa: E402
                              run_clustering, spectral_clustering,
                              spectral_embedding_sparse_torch)
from dataclasses import replace  # noqa: E402

from acl_dist.config import RunConfig, TrainConfig  # noqa: E402
from acl_dist.losses import total_loss  # noqa: E402
from acl_dist.model import StreamModels  # noqa: E402
from acl_dist.train import VideoItem, fit  # noqa: E402


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _nmi(a, b) -> float:
    from sklearn.metrics import normalized_mutual_info_score

    return float(normalized_mutual_info_score(np.asarray(a), np.asarray(b)))


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2 ** 30 if torch.cuda.is_available() else 0.0


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --------------------------------------------------------------------------- training step


def train_step_table(device: torch.device, quick: bool) -> None:
    shapes = [  # name, batch, max snippets, feature dim per stream, classes, Z, K
        ("THUMOS14", 32, 750, 1024, 20, 4, 4),
        ("ActivityNet", 64, 200, 1024, 200, 8, 4),
    ]
    if quick:
        shapes = [(n, 4, 24, 16, c, 2, 2) for n, _, _, _, c, _, _ in shapes]
    cfg = RunConfig()
    print("\n== training step: 2 streams, all losses, Adam ==")
    print(f"{'shape':12s} {'B':>4s} {'T max':>6s} {'D':>5s} {'C':>4s} {'dtype':6s} "
          f"{'ms/step':>8s} {'videos/s':>9s} {'peak GiB':>9s}")
    for name, b, t_max, dim, classes, z, k in shapes:
        gen = torch.Generator().manual_seed(0)
        lengths = torch.randint(t_max // 3, t_max + 1, (b,), generator=gen)
        lengths[0] = t_max
        mask = (torch.arange(t_max)[None, :] < lengths[:, None]).to(device)
        inputs = {s: (torch.randn(b, t_max, dim, generator=gen) * mask.cpu()[..., None]
                      ).to(device) for s in ("rgb", "flow")}
        targets = torch.zeros(b, classes, device=device)
        targets[torch.arange(b), torch.randint(0, classes, (b,), generator=gen)] = 1.0
        groups = torch.arange(z * k, device=device).reshape(z, k)
        group_class = torch.arange(z, device=device)
        for row in range(z * k):
            targets[row].zero_()
            targets[row, row // k] = 1.0
        for dtype_name in ("fp32", "bf16"):
            torch.manual_seed(0)
            model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
            optim = torch.optim.Adam(model.parameters(), lr=1e-4)

            def step() -> None:
                with torch.autocast(device.type, dtype=torch.bfloat16,
                                    enabled=dtype_name == "bf16"):
                    out = model(inputs, mask)
                    loss, _ = total_loss(out, {"mask": mask, "targets": targets, "groups": groups,
                                               "group_class": group_class}, cfg.loss)
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()

            _reset_peak()
            for _ in range(3):
                step()
            _sync()
            times = []
            for _ in range(5 if quick else 20):
                t0 = time.perf_counter()
                step()
                _sync()
                times.append(time.perf_counter() - t0)
            ms = statistics.median(times) * 1e3
            print(f"{name:12s} {b:4d} {t_max:6d} {dim:5d} {classes:4d} {dtype_name:6s} "
                  f"{ms:8.2f} {b / ms * 1e3:9.0f} {_peak_gib():9.2f}", flush=True)


def fit_table(device: torch.device, quick: bool) -> None:
    rng = np.random.default_rng(0)
    n, dim, classes, steps = (24, 16, 4, 4) if quick else (512, 1024, 20, 60)
    items = []
    for i in range(n):
        t = int(rng.integers(50, 400)) if not quick else int(rng.integers(5, 30))
        items.append(VideoItem(f"v{i}", {s: rng.standard_normal((t, dim)).astype(np.float32)
                                         for s in ("rgb", "flow")}, [i % classes]))
    cfg = RunConfig()
    cfg = replace(cfg, train=replace(cfg.train, steps=steps, batch_size=32, max_len=0,
                                     log_every=10 ** 9, checkpoint_every=0))
    assert isinstance(cfg.train, TrainConfig)
    _reset_peak()
    t0 = time.perf_counter()
    result = fit(items, cfg, classes, {"rgb": dim, "flow": dim}, device=device)
    _sync()
    secs = time.perf_counter() - t0
    print("\n== acl_dist.train.fit (the Ray Train per-worker loop, without Ray) ==")
    print(f"{n} videos, D={dim}, batch 32, whole videos, {steps} steps: {secs:.2f} s "
          f"({secs / steps * 1e3:.1f} ms/step incl. batching on the CPU), "
          f"final loss {result.history[-1]['loss'] if result.history else float('nan'):.3f}, "
          f"peak {_peak_gib():.2f} GiB")


# --------------------------------------------------------------------------- clustering


def planted(n: int, clusters: int, dim: int, noise: float, device: torch.device, seed: int = 0):
    """Descriptors shaped like ACL's (two L2-normalised halves) around planted centres."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    truth = torch.randint(0, clusters, (n,), generator=gen)
    halves = []
    for _ in range(2):
        centres = torch.randn(clusters, dim // 2, generator=gen).to(device)
        x = centres[truth.to(device)]
        x += noise * torch.randn(x.shape, device=device, generator=None)
        halves.append(torch.nn.functional.normalize(x, dim=1))
    return torch.cat(halves, 1), truth.numpy()


def clustering_table(device: torch.device, quick: bool, skip_1m: bool) -> None:
    torch.manual_seed(0)
    dense_sizes = (300, 600) if quick else (5000, 10000)
    sparse_sizes = (2000,) if quick else ((100_000,) if skip_1m else (100_000, 1_000_000))
    clusters = 10 if quick else 200
    print(f"\n== spectral clustering, C = {clusters} ==")
    print(f"{'N':>8s} {'dim':>4s} {'graph':6s} {'backend':8s} {'device':6s} {'seconds':>8s} "
          f"{'NMI truth':>9s} {'NMI vs dense':>12s} {'peak GiB':>9s}  phases")
    for n in dense_sizes:
        dim = 256
        x, truth = planted(n, clusters, dim, 2.0, device)
        xs = x.double().cpu().numpy()
        _reset_peak()
        t0 = time.perf_counter()
        # the product's path: run_clustering builds the affinity on the GPU when there is one
        dense = run_clustering(xs, clusters, backend="torch", graph="dense")["labels"]
        _sync()
        secs = time.perf_counter() - t0
        print(f"{n:8d} {dim:4d} {'dense':6s} {'torch':8s} {device.type:6s} {secs:8.2f} "
              f"{_nmi(truth, dense):9.3f} {1.0:12.3f} {_peak_gib():9.2f}", flush=True)
        if n == dense_sizes[0]:
            t0 = time.perf_counter()
            w = gaussian_affinity(xs)[0]
            sk = spectral_clustering(w, clusters, seed=0, backend="sklearn")
            secs_sk = time.perf_counter() - t0
            print(f"{n:8d} {dim:4d} {'dense':6s} {'sklearn':8s} {'cpu':6s} {secs_sk:8.2f} "
                  f"{_nmi(truth, sk):9.3f} {_nmi(dense, sk):12.3f} {'-':>9s}  "
                  f"({os.cpu_count()} cores; torch/GPU is {secs_sk / secs:.1f}x faster)",
                  flush=True)
            del w
        sparse_row(x, truth, clusters, device, dense)
    for n in sparse_sizes:
        dim = 256
        x, truth = planted(n, clusters, dim, 2.0, device)
        sparse_row(x, truth, clusters, device, None)
        del x


def sparse_row(x: torch.Tensor, truth: np.ndarray, clusters: int, device: torch.device,
               dense: np.ndarray | None, n_neighbors: int = 100) -> None:
    n, dim = x.shape
    _reset_peak()
    t0 = time.perf_counter()
    w, _ = knn_affinity(x, n_neighbors, device=str(device))
    _sync()
    t1 = time.perf_counter()
    emb = spectral_embedding_sparse_torch(w, clusters, seed=0)
    _sync()
    t2 = time.perf_counter()
    del w
    labels = kmeans_torch(emb.float(), clusters, seed=0, n_init=10).cpu().numpy()
    _sync()
    t3 = time.perf_counter()
    vs_dense = f"{_nmi(dense, labels):12.3f}" if dense is not None else f"{'-':>12s}"
    print(f"{n:8d} {dim:4d} {'knn':6s} {'torch':8s} {device.type:6s} {t3 - t0:8.2f} "
          f"{_nmi(truth, labels):9.3f} {vs_dense} {_peak_gib():9.2f}  "
          f"kNN {t1 - t0:.1f} s, LOBPCG {t2 - t1:.1f} s, k-means {t3 - t2:.1f} s "
          f"(k={n_neighbors})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (runs on a CPU)")
    ap.add_argument("--skip-1m", action="store_true", help="stop the sparse rows at 100k")
    ap.add_argument("--only", choices=["train", "fit", "cluster"], action="append")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    if device.type != "cuda" and not args.quick:
        sys.exit("no GPU: run with --quick to exercise the script on a CPU")
    only = set(args.only or ["train", "fit", "cluster"])
    if "train" in only:
        train_step_table(device, args.quick)
    if "fit" in only:
        fit_table(device, args.quick)
    if "cluster" in only:
        clustering_table(device, args.quick, args.skip_1m)


if __name__ == "__main__":
    main()
