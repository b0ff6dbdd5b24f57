"""The clustering step as one Ray task (on a GPU when the run's plan says so)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from .clustering import cluster_with
from .progress import log


def run_clustering_task(descriptors: np.ndarray, n_clusters: int, cc: Any,
                        truth: list[str] | None, previous: np.ndarray | None,
                        use_gpu: bool, desc: str = "clustering", quiet: bool = False,
                        every_s: float = 10.0) -> dict:
    """Spectral clustering (:func:`acl_dist.clustering.run_clustering` with the round's
    :class:`~acl_dist.config.ClusterConfig` ``cc``) as one Ray task, on a GPU when
    ``use_gpu`` (the run's plan). While it runs, a line every ``every_s`` seconds says
    so (an ActivityNet-sized clustering takes minutes on CPUs); the result's ``phases``
    hold the seconds of its graph, eigensolver, k-means and scores."""
    import ray

    # "DEFAULT", not inherited: inside a Tune trial a task would otherwise be captured by
    # the trial's placement group (0.01 CPU) and could never be scheduled.
    task = ray.remote(num_cpus=1, num_gpus=1 if use_gpu else 0,
                      scheduling_strategy="DEFAULT")(cluster_with)
    ref = task.remote(descriptors, n_clusters, cc, truth, previous)
    started = time.perf_counter()
    while not ray.wait([ref], timeout=every_s)[0]:
        log(f"{desc}: {len(descriptors)} videos into {n_clusters} clusters on a "
            f"{'GPU' if use_gpu else 'CPU'}, {time.perf_counter() - started:.0f} s", quiet)
    return ray.get(ref)
