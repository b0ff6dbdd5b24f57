"""Every sizing rule in one place: CPUs to size by, training workers and their CPUs,
attention actors, torch threads and concurrent Tune trials. Pure functions of the
capacity they are given (the Ray layer reads the cluster; nothing here imports Ray).

Rules measured on this project's 2-core machine (RAY_NOTES.md §3, §4): one DDP worker per
4 CPUs (two workers on 2 cores lost to one), a worker on a GPU per GPU; a local Ray instance
advertises at least 4 logical CPUs so Ray Data keeps CPUs beside the workers, so locally
the machine's cores, not Ray's count, size threads and workers.
"""

from __future__ import annotations

import os


def machine_cores() -> int:
    return os.cpu_count() or 2


def sizing_cpus(cluster_cpus: float, on_cluster: bool) -> int:
    """CPUs to size a run by: a cluster's CPUs; locally the machine's cores (the local Ray
    instance reports inflated logical CPUs)."""
    return int(cluster_cpus) if on_cluster else machine_cores()


def on_a_cluster() -> bool:
    """Whether this process attaches to a Ray cluster (``RAY_ADDRESS``: a job, a client)."""
    return bool(os.environ.get("RAY_ADDRESS"))


def training_workers(cpus: int, gpus: float, use_gpu: bool) -> int:
    """DDP workers: one per GPU, else one per 4 CPUs (at least one)."""
    return max(1, int(gpus)) if use_gpu else max(1, cpus // 4)


def cpus_per_worker(cpus: int, workers: int, use_gpu: bool) -> float:
    """Ray CPUs per training worker: 1 beside a GPU; else the CPUs left after one for Ray
    Data, shared by the workers, between 0.5 and 1 (fractional CPUs on small machines)."""
    return 1.0 if use_gpu else max(0.5, min(1.0, (cpus - 1) / workers))


def attention_actors(cluster_cpus: float, gpus: float, use_gpu: bool) -> int:
    """Actors of the attention pass: one per GPU, else one per 4 of the cluster's CPUs."""
    return max(1, int(gpus)) if use_gpu else max(1, int(cluster_cpus) // 4)


def torch_threads(cores: int, parallel: int) -> int:
    """Intra-op threads of each of ``parallel`` processes sharing ``cores``."""
    return max(1, cores // max(1, parallel))


def concurrent_trials(workers: int, cpus_each: float, use_gpu: bool, cluster_cpus: float,
                      cluster_gpus: float) -> tuple[int, str]:
    """How many Tune trials fit at once, and why: each holds ``workers x cpus_each`` CPUs
    (and ``workers`` GPUs) for training plus one CPU for Ray Data and the clustering task.
    Tune cannot see these (it reserves no CPU for a trial), so this bound is what keeps
    trials x workers within the cluster."""
    per_trial = workers * cpus_each + 1.0
    bound = max(1, int(cluster_cpus // per_trial))
    why = (f"each trial: {workers} worker(s) x {cpus_each:g} CPU + 1 CPU for Ray Data and "
           f"clustering = {per_trial:g} of {cluster_cpus:g} CPUs")
    if use_gpu:
        by_gpu = max(1, int(cluster_gpus // max(1, workers)))
        if by_gpu < bound:
            bound, why = by_gpu, f"each trial: {workers} GPU(s) of {cluster_gpus:g}"
    return bound, why
