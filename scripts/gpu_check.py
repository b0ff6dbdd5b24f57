"""GPU check: acl-dist's GPU paths and their speed on one GPU, in one process.

For a single-GPU machine (H100/H200 class) whose Python has torch, scikit-learn and
(optionally) CuPy but neither Ray nor cuML: run from the repository root with
``scripts/gpu_check.sh`` (or ``PYTHONPATH=. python3 scripts/gpu_check.py``). Prints four
tables; ``--quick`` shrinks every size so the script itself can be tested on a CPU.

0. cuML: whether the installed cuML has the API acl-dist uses, and what ``auto`` picks.
1. Training step at THUMOS14 and ActivityNet shapes (default network, every loss term,
   fused Adam, a ragged batch): a plain MLP of equal matmul FLOPs, ACL's eager step and
   ACL's CUDA-graph step (:mod:`acl_dist.graphed_step`) side by side, with the graphed
   weights checked against the eager ones after 10 updates.
2. The per-worker training loop :func:`acl_dist.train.fit` (what Ray Train runs), eager and
   with CUDA graphs, against the graphed step alone on the same batches; then the
   several-worker graphed step (its all-gather and all-reduces captured inside the graph)
   in a one-rank NCCL group against the one-worker step.
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

from acl_dist.clustering import (backend_choice, cuml_status,  # noqa: E402
                                 gaussian_affinity, kmeans_torch, knn_affinity,
                                 run_clustering, spectral_clustering,
                                 spectral_embedding_sparse_torch)
from dataclasses import replace  # noqa: E402

from acl_dist.config import RunConfig  # noqa: E402
from acl_dist.graphed_step import FeatureBank, GraphedStep  # noqa: E402
from acl_dist.losses import total_loss  # noqa: E402
from acl_dist.model import StreamModels, pad_batch  # noqa: E402
from acl_dist.sampling import Batch  # noqa: E402
from bench.floors import PlainModel  # noqa: E402
from acl_dist.train import (VideoItem, batch_stream, batch_tensors, fit,  # noqa: E402
                            graph_batch)


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


def _videos(b: int, t_max: int, dim: int, classes: int, seed: int = 0) -> list[VideoItem]:
    """``b`` ragged videos (T from t_max/3 to t_max, the first t_max long), 2 streams."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(t_max // 3, t_max + 1, b)
    lengths[0] = t_max
    return [VideoItem(f"v{i}", {s: rng.standard_normal((int(t), dim)).astype(np.float32)
                                for s in ("rgb", "flow")}, [i % classes])
            for i, t in enumerate(lengths)]


def _one_batch(items: list[VideoItem], z: int, k: int) -> Batch:
    """All ``items`` as one batch: ``z`` groups of ``k`` consecutive rows."""
    return Batch(items=list(items), groups=[list(range(g * k, g * k + k)) for g in range(z)],
                 group_labels=[g for g in range(z)])


def _median_ms(fn, warm: int, reps: int) -> float:
    for _ in range(warm):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def train_step_table(device: torch.device, quick: bool) -> None:
    """Plain model of equal FLOPs vs ACL's eager step vs ACL's CUDA-graph step, side by
    side in this process, at THUMOS14 and ActivityNet shapes (default network), and the
    graphed step's weights against the eager step's after 10 updates."""
    shapes = [  # name, batch, max snippets, feature dim per stream, classes, Z, K
        ("THUMOS14", 32, 750, 1024, 20, 4, 2),
        ("ActivityNet", 64, 200, 1024, 200, 8, 2),
    ]
    if quick:
        shapes = [(n, 8, 24, 16, c, 2, 2) for n, _, _, _, c, _, _ in shapes]
    cfg = RunConfig()
    reps = 5 if quick else 30
    print("\n== training step: default network, all losses, fused Adam; ragged batch ==")
    print(f"{'shape':12s} {'B':>4s} {'T max':>6s} {'D':>5s} {'C':>4s} {'step':22s} "
          f"{'ms/step':>8s} {'x plain':>8s} {'peak GiB':>9s}")
    for name, b, t_max, dim, classes, z, k in shapes:
        items = _videos(b, t_max, dim, classes)
        batch = _one_batch(items, z, k)
        rows = {}
        torch.manual_seed(0)
        acl = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
        plain = PlainModel(acl, 2 * dim, cfg.model.base_dim, classes).to(device)
        popt = torch.optim.Adam(plain.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
        x, mask = pad_batch([np.concatenate([it.features["rgb"], it.features["flow"]], 1)
                             for it in items], device=device)
        y = torch.tensor([it.labels[0] for it in items], device=device)

        def plain_step() -> None:
            loss = torch.nn.functional.cross_entropy(plain(x), y)
            popt.zero_grad(set_to_none=True)
            loss.backward()
            popt.step()

        _reset_peak()
        rows["plain (equal FLOPs)"] = (_median_ms(plain_step, 3, reps), _peak_gib())
        for mode in ("eager", "graphed", "graphed+compiled"):
            torch.manual_seed(0)
            model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
            optim = torch.optim.Adam(model.parameters(), lr=1e-4,
                                     fused=device.type == "cuda" or None)
            rng = np.random.default_rng(0)
            if mode == "eager":
                def step() -> None:
                    t = batch_tensors(batch, classes, k, None, rng, device)
                    loss, _ = total_loss(model(t["inputs"], t["mask"]), t, cfg.loss)
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
            else:
                graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss,
                                      classes, k, z, capture=device.type == "cuda",
                                      compile=mode.endswith("compiled"))
                arrays = graph_batch(batch, classes, k, None, rng)
                t0 = time.perf_counter()
                graphed.step(*arrays)   # the first call compiles
                _sync()
                if mode.endswith("compiled"):
                    print(f"{'':12s} first compiled step (compiling): "
                          f"{time.perf_counter() - t0:.1f} s", flush=True)

                def step() -> None:
                    graphed.step(*arrays)
            _reset_peak()
            rows[f"ACL {mode}"] = (_median_ms(step, 3, reps), _peak_gib())
        base = rows["plain (equal FLOPs)"][0]
        for label, (ms, peak) in rows.items():
            print(f"{name:12s} {b:4d} {t_max:6d} {dim:5d} {classes:4d} {label:22s} "
                  f"{ms:8.2f} {ms / base:8.2f} {peak:9.2f}", flush=True)
        print(f"{'':12s} MACs/snippet: ACL {plain.acl_macs:,}, plain {plain.macs:,} "
              f"(hidden {plain.hidden})")
        graph_matches_eager(items, batch, classes, dim, z, k, device, cfg)


def graph_matches_eager(items, batch, classes, dim, z, k, device, cfg) -> None:
    """10 updates of the same batches (dropout off) without graphs, with graphs, and with
    graphs of the compiled step: the largest weight and loss differences to the first."""
    cfg = replace(cfg, model=replace(cfg.model, dropout=0.0))
    runs = {}
    cuda = device.type == "cuda"
    for label, capture, compiled in (("eager", False, False), ("graphed", cuda, False),
                                     ("graphed+compiled", cuda, cuda)):
        torch.manual_seed(0)
        model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
        optim = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda or None)
        graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, classes, k, z,
                              capture=capture, compile=compiled)
        rng = np.random.default_rng(0)
        losses = [float(graphed.step(*graph_batch(batch, classes, k, None, rng))["loss"])
                  for _ in range(10)]
        captured = sum(s.graph is not None for s in graphed.shapes.values())
        runs[label] = (losses, [p.detach().clone() for p in model.parameters()], captured)
    ref_losses, ref_weights, _ = runs["eager"]
    for label in ("graphed", "graphed+compiled"):
        losses, weights, captured = runs[label]
        dw = max(float((a - b).abs().max()) for a, b in zip(weights, ref_weights))
        dl = max(abs(a - b) for a, b in zip(losses, ref_losses))
        print(f"{'':12s} {label} vs eager after 10 updates: max |dw| {dw:.2e}, max |dloss| "
              f"{dl:.2e} (graphs captured: {captured})", flush=True)


def group_capture_check(device: torch.device, quick: bool) -> None:
    """The multi-worker graphed step's collectives captured inside its CUDA graph: a
    one-rank process group (NCCL on a GPU, gloo on a CPU), the step taking its
    several-worker path (the rows' pooled terms all-gathered, their gradient all-reduced,
    the gradients averaged) against the one-worker graphed step on the same batches:
    losses and weights after 10 updates, and how many shapes each captured. One GPU
    cannot hold two NCCL ranks; the N-worker arithmetic is tested on CPUs
    (tests/test_global_batch.py)."""
    import socket

    import torch.distributed as dist

    from acl_dist.collectives import WorkerGroup, _GatherRows

    class OneRankGroup(WorkerGroup):
        """Every exchange through the process group even at one rank (the N > 1 path)."""

        def gather_rows(self, rows):
            return _GatherRows.apply(rows)

        def average_gradients(self, grads):
            flat = torch._utils._flatten_dense_tensors(grads)
            dist.all_reduce(flat)
            for grad, mean in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
                grad.copy_(mean)

    cuda = device.type == "cuda"
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=0, world_size=1)
    try:
        b, t_max, dim, classes, z, k = (8, 64, 32, 4, 2, 2) if quick else (32, 750, 1024, 20, 4, 2)
        items = _videos(b, t_max, dim, classes, seed=3)
        batch = _one_batch(items, z, k)
        cfg = RunConfig()
        cfg = replace(cfg, model=replace(cfg.model, dropout=0.0))
        runs = {}
        for label, group in (("one worker", None), ("N-worker path", OneRankGroup())):
            torch.manual_seed(0)
            model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
            optim = torch.optim.Adam(model.parameters(), lr=1e-4, fused=cuda or None)
            graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, classes,
                                  k, z, capture=cuda, group=group)
            rng = np.random.default_rng(0)
            losses, times = [], []
            for _ in range(10):
                args = graph_batch(batch, classes, k, None, rng)
                extra = {} if group is None else {"gather_index": np.arange(b), "rows": b}
                _sync()
                t0 = time.perf_counter()
                losses.append(float(graphed.step(*args, **extra)["loss"]))
                _sync()
                times.append(time.perf_counter() - t0)
            captured = sum(s.graph is not None for s in graphed.shapes.values())
            runs[label] = (losses, [p.detach().clone() for p in model.parameters()], captured,
                           statistics.median(times[5:]) * 1e3)
        ref_losses, ref_weights, ref_captured, ref_ms = runs["one worker"]
        losses, weights, captured, ms = runs["N-worker path"]
        dw = max(float((a - c).abs().max()) for a, c in zip(weights, ref_weights))
        dl = max(abs(a - c) for a, c in zip(losses, ref_losses))
        print(f"\ncollectives in the graph (one-rank {'NCCL' if cuda else 'gloo'} group, "
              f"B={b}, T<={t_max}): max |dw| {dw:.2e}, max |dloss| {dl:.2e} after 10 updates; "
              f"graphs captured {captured} (one worker: {ref_captured}); step "
              f"{ms:.2f} ms vs {ref_ms:.2f} ms ({ms / ref_ms:.2f}x)", flush=True)
    finally:
        dist.destroy_process_group()


def fit_table(device: torch.device, quick: bool) -> None:
    """The per-worker loop acl_dist.train.fit (what Ray Train runs), eager and graphed,
    against the graphed step alone on the same batches: the loop's overhead."""
    n, dim, classes = (24, 16, 4) if quick else (512, 1024, 20)
    steps = 30 if quick else 400
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 30, n) if quick else rng.integers(50, 400, n)
    items = [VideoItem(f"v{i}", {s: rng.standard_normal((int(t), dim)).astype(np.float32)
                                 for s in ("rgb", "flow")}, [i % classes])
             for i, t in enumerate(lengths)]
    base = RunConfig()
    print("\n== acl_dist.train.fit (the Ray Train per-worker loop, without Ray) ==")
    print(f"{n} videos of 50-400 snippets, D={dim}x2, batch 32, whole videos")
    print(f"{'loop':28s} {'steps':>6s} {'ms/step':>8s} {'x graphed step':>15s} {'peak GiB':>9s}"
          "  (ms/step: median of the steady windows)")
    results = {}
    for label, graphs, compiled in (("fit, eager", False, False),
                                    ("fit, CUDA graphs", True, False),
                                    ("fit, CUDA graphs + compile", True, True)):
        cfg = replace(base, train=replace(base.train, steps=steps if graphs else steps // 4,
                                          batch_size=32, max_len=0, log_every=steps // 8,
                                          checkpoint_every=0, cuda_graphs=graphs,
                                          compile=compiled))
        _reset_peak()
        t0 = time.perf_counter()
        result = fit(items, cfg, classes, {"rgb": dim, "flow": dim}, device=device)
        secs = time.perf_counter() - t0
        # steady state: the windows after the first two (graph captures, warm-up, compiles)
        rates = [h["videos_per_s"] for h in result.history[2:]] \
            or [result.history[-1]["videos_per_s"]]
        results[label] = (cfg.train.steps, 32 / statistics.median(rates) * 1e3, _peak_gib(), secs)
    cfg = replace(base, train=replace(base.train, steps=steps, batch_size=32, max_len=0))
    torch.manual_seed(0)
    model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, classes,
                          cfg.train.videos_per_cluster, cfg.train.clusters_per_batch,
                          capture=device.type == "cuda")
    stream = batch_stream(items, cfg)
    rng = np.random.default_rng(0)
    arrays = [graph_batch(next(stream), classes, cfg.train.videos_per_cluster, None, rng)
              for _ in range(steps)]
    warm = steps // 4
    for a in arrays[:warm]:
        graphed.step(*a)
    _sync()
    t0 = time.perf_counter()
    for a in arrays[warm:]:
        graphed.step(*a)
    _sync()
    step_ms = (time.perf_counter() - t0) / (steps - warm) * 1e3
    print(f"{'graphed step alone':28s} {steps - warm:6d} {step_ms:8.2f} {1.0:15.2f} {'-':>9s}")
    for label, (n_steps, ms, peak, secs) in results.items():
        print(f"{label:28s} {n_steps:6d} {ms:8.2f} {ms / step_ms:15.2f} {peak:9.2f}  "
              f"(whole fit {secs:.1f} s)", flush=True)
    print(f"shapes captured: {sorted(k for k, s in graphed.shapes.items() if s.graph)}")


def profile_table(device: torch.device, quick: bool) -> None:
    """Where the THUMOS14-shape step's GPU time goes (the eager step under the profiler:
    the graph replays the same kernels), and the graphed step's host time per step."""
    from torch.profiler import ProfilerActivity, profile

    b, t_max, dim, classes, z, k = (8, 24, 16, 20, 2, 2) if quick else (32, 750, 1024, 20, 4, 2)
    cfg = RunConfig()
    items = _videos(b, t_max, dim, classes)
    batch = _one_batch(items, z, k)
    torch.manual_seed(0)
    model = StreamModels({"rgb": dim, "flow": dim}, classes, cfg.model).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, classes, k, z,
                          capture=False)
    arrays = graph_batch(batch, classes, k, None, np.random.default_rng(0))
    for _ in range(3):
        graphed.step(*arrays)
    _sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(5):
            graphed.step(*arrays)
        _sync()
    key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print("\n== profile: the step's kernels (eager, 5 steps, THUMOS14 shape) ==")
    print(prof.key_averages().table(sort_by=key, row_limit=18, max_name_column_width=48))
    graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, classes, k, z,
                          capture=device.type == "cuda")
    for _ in range(5):
        graphed.step(*arrays)
    _sync()
    t0 = time.perf_counter()
    for _ in range(50):
        graphed.step(*arrays)
    host = (time.perf_counter() - t0) / 50 * 1e3
    _sync()
    total = (time.perf_counter() - t0) / 50 * 1e3
    print(f"graphed step: host {host:.2f} ms/step issuing, {total:.2f} ms/step to finish")


def cuml_line() -> None:
    ok, why = cuml_status()
    print(f"\n== cuML ==\n{why}; cluster.backend=auto here: {backend_choice('auto')}")


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
    ap.add_argument("--only", choices=["train", "fit", "group", "cluster", "cuml", "profile"],
                    action="append", help="sections to run (profile: only when named)")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"device {name}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    if device.type != "cuda" and not args.quick:
        sys.exit("no GPU: run with --quick to exercise the script on a CPU")
    only = set(args.only or ["train", "fit", "group", "cluster", "cuml"])
    if "cuml" in only:
        cuml_line()
    if "train" in only:
        train_step_table(device, args.quick)
    if "fit" in only:
        fit_table(device, args.quick)
    if "group" in only:
        group_capture_check(device, args.quick)
    if "profile" in (args.only or []):
        profile_table(device, args.quick)
    if "cluster" in only:
        clustering_table(device, args.quick, args.skip_1m)


if __name__ == "__main__":
    main()
