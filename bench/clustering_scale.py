"""CPU clustering at ActivityNet scale: the dense graph against the Nyström embedding and
the kNN-sparse graph with each eigensolver, on the same descriptors, in one process.

Descriptors shaped like ACL's (two L2-normalised 1024-d streams) around ``C`` planted
centres. Rows (``--rows graph:backend,...``): the dense Gaussian affinity with
scikit-learn (ARPACK: the CPU default up to ``cluster.dense_max_videos_cpu``), the
Nyström embedding from 2,000 landmarks (the CPU default above it), and the kNN-sparse
affinity (100 neighbours) with torch's LOBPCG + k-means (``knn:torch``) or scikit-learn's
ARPACK (``knn:sklearn``). Prints seconds (graph / eigensolver / k-means), NMI against the
planted labels and NMI against the dense path.

    python bench/clustering_scale.py [--videos 10000] [--clusters 200] [--dim 1024]
        [--run RUN --round R] [--rows dense:sklearn,nystrom:sklearn,knn:torch]

``--run`` clusters a finished run's round-``R`` descriptors (the videos it clustered: its
training videos less its validation split, their main class as the truth; e.g.
bench/scale_round.py's ActivityNet-1.3-sized run) instead of planted ones: real descriptors
are noisier than planted clusters, which is where the kNN graph lost NMI.

Target: 10k videos <= 10 s on 2 cores at no NMI loss against the dense path.
On the ActivityNet-1.3-sized run's round-0 descriptors (9,641 videos, 200 clusters):
dense 44.5 s at NMI 0.708, Nyström 8.3 s at 0.707, kNN + LOBPCG 16.0 s at 0.610.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sklearn.metrics import normalized_mutual_info_score as nmi  # noqa: E402

from acl_dist.clustering import run_clustering  # noqa: E402


def planted(n: int, k: int, dim: int, noise: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    halves = []
    for _ in range(2):
        x = rng.standard_normal((k, dim))[truth] + noise * rng.standard_normal((n, dim))
        halves.append(x / np.linalg.norm(x, axis=1, keepdims=True))
    return np.concatenate(halves, 1).astype(np.float32), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=10000)
    ap.add_argument("--clusters", type=int, default=200)
    ap.add_argument("--dim", type=int, default=1024, help="per stream")
    ap.add_argument("--noise", type=float, default=2.0)
    ap.add_argument("--run", default=None, help="a finished run's descriptors instead")
    ap.add_argument("--round", type=int, default=0, help="with --run: the round's")
    ap.add_argument("--rows", default="dense:sklearn,nystrom:sklearn,knn:torch",
                    help="graph:backend pairs, in order (the first dense row is the reference)")
    args = ap.parse_args()
    if args.run:
        from acl_dist.artifacts import RunDir
        from acl_dist.plan import split_videos
        from acl_dist.store import FeatureStore

        rundir = RunDir(args.run)
        cfg = rundir.read_config()
        # the videos the run clustered: its training subset less its validation split
        split = split_videos(cfg, FeatureStore.open(rundir.read_info()["store"]))
        ids, x = rundir.read_descriptors(args.round, [m.video_id for m in split.train])
        truth = np.array(split.truth)
        args.clusters = cfg.num_classes
        what = f"{len(ids)} videos of {args.run} round {args.round}, {args.clusters} clusters"
    else:
        x, truth = planted(args.videos, args.clusters, args.dim, args.noise)
        what = f"{args.videos} videos, {args.clusters} planted clusters, 2 x {args.dim}-d"
    rows = [tuple(r.split(":")) for r in args.rows.split(",")]
    print(f"{what}, {os.cpu_count()} cores")
    print(f"\n{'graph':7s} {'backend':8s} {'seconds':>8s} {'NMI truth':>10s} {'NMI vs dense':>13s}"
          "  phases (s)")
    dense = None
    for graph, backend in rows:
        t0 = time.perf_counter()
        out = run_clustering(x.astype(np.float64), args.clusters, backend=backend, graph=graph)
        secs = time.perf_counter() - t0
        labels = out["labels"]
        if graph == "dense":
            dense = labels
        vs = f"{nmi(dense, labels):13.3f}" if dense is not None else f"{'-':>13s}"
        phases = ", ".join(f"{k} {v:.1f}" for k, v in out["phases"].items())
        print(f"{graph:7s} {backend:8s} {secs:8.1f} {nmi(truth, labels):10.3f} {vs}  {phases}",
              flush=True)


if __name__ == "__main__":
    main()
