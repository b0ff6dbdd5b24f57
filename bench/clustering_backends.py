"""Spectral clustering backends side by side on the same Gaussian affinity.

Planted clusters of descriptors shaped like ACL's (two L2-normalised streams) at several
sizes; each backend clusters the same affinity. Prints seconds, the time ratio to
scikit-learn, NMI against the planted labels and NMI between the backends. cuML is
included when it imports (GPU machines with the 'gpu' extra); torch uses a GPU when present.

    python bench/clustering_backends.py [--sizes 500,1000,2000] [--clusters 20]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import normalized_mutual_info_score as nmi

from acl_dist.clustering import cuml_available, gaussian_affinity, l2_normalize, spectral_clustering


def planted(n: int, k: int, dim: int = 256, noise: float = 1.2, seed: int = 0):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, k, n)
    halves = []
    for _ in range(2):  # two streams, each L2-normalised
        centres = rng.standard_normal((k, dim))
        halves.append(l2_normalize(centres[truth] + noise * rng.standard_normal((n, dim))))
    return np.concatenate(halves, 1), truth


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000")
    ap.add_argument("--clusters", type=int, default=20)
    args = ap.parse_args()
    backends = ["sklearn", "torch"] + (["cuml"] if cuml_available() else [])
    print(f"{'N':>6s} {'backend':8s} {'seconds':>8s} {'vs sklearn':>11s} {'NMI truth':>10s} "
          f"{'NMI vs sklearn':>15s}")
    for n in (int(x) for x in args.sizes.split(",")):
        x, truth = planted(n, args.clusters)
        w, _ = gaussian_affinity(x)
        labels, secs = {}, {}
        for b in backends:
            t0 = time.perf_counter()
            labels[b] = spectral_clustering(w, args.clusters, seed=0, backend=b)
            secs[b] = time.perf_counter() - t0
        for b in backends:
            print(f"{n:6d} {b:8s} {secs[b]:8.2f} {secs['sklearn'] / secs[b]:10.2f}x "
                  f"{nmi(truth, labels[b]):10.3f} {nmi(labels['sklearn'], labels[b]):15.3f}")


if __name__ == "__main__":
    main()
