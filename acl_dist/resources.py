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
from dataclasses import asdict, dataclass, field
from typing import Any


def machine_cores() -> int:
    return os.cpu_count() or 2


def local_instance_cpus() -> int:
    """Logical CPUs of the local Ray instance a run starts: the machine's cores, at least 4
    (so that Ray Data keeps CPUs beside the training workers on a 2-core machine). What
    planning without Ray assumes, and what :func:`acl_dist.ray_start.init_ray` starts."""
    return max(4, machine_cores())


#: Ray CPUs that Ray Data's read tasks need beside the training workers: workers holding
#: every CPU leave the reads none and the fit waits forever.
DATA_CPUS = 1.0


def sizing_cpus(cluster_cpus: float, on_cluster: bool) -> int:
    """CPUs to size a run by: a cluster's CPUs; locally the machine's cores (the local Ray
    instance reports inflated logical CPUs)."""
    return int(cluster_cpus) if on_cluster else machine_cores()


def on_a_cluster() -> bool:
    """Whether this process attaches to a Ray cluster (``RAY_ADDRESS``: a job, a client)."""
    return bool(os.environ.get("RAY_ADDRESS"))


#: How long a run on an autoscaling cluster waits for its plan's nodes (GPU instances
#: take minutes to boot and pull an image).
SCALE_TIMEOUT_S = 1200.0


def default_max_failures() -> int:
    """Ray Train worker failures tolerated per round: 3 on a cluster (spot and preempted
    nodes are the norm there; each restart resumes from the last checkpoint), 0 locally
    (a failure on one machine is a bug to see, not to retry)."""
    return 3 if on_a_cluster() else 0


def training_workers(cpus: int, gpus: float, use_gpu: bool, batch_size: int,
                     videos_per_cluster: int) -> int:
    """DDP workers: one per GPU, else one per 4 CPUs (at least one), and at most
    ``batch_size // videos_per_cluster``. Every step's batch is global (the same loss on
    any worker count: acl_dist.global_batch) and each worker computes the rows it holds,
    B / N on average; with fewer than K a step, workers often hold none of a step's
    videos and wait. An autoscaling cluster that can hold 32 GPUs thus gets 16 workers
    for the paper's batch of 32 with K = 2; raise ``train.batch_size`` to use more."""
    wanted = max(1, int(gpus)) if use_gpu else max(1, cpus // 4)
    return max(1, min(wanted, batch_size // max(1, videos_per_cluster)))


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


# --------------------------------------------------------------------------- capacity


@dataclass(frozen=True)
class NodeType:
    """One node type of an autoscaling cluster: its resources and how many may run
    (``max_count`` -1: unbounded)."""

    name: str
    cpus: float
    gpus: float
    max_count: int


@dataclass(frozen=True)
class Capacity:
    """What a run is sized by.

    ``cpus``/``gpus``: up now; ``max_cpus``/``max_gpus``: what the cluster can hold (its
    node types x their max counts, capped by the cluster's ``max_workers``), the same as
    up now without an autoscaler. ``on_cluster``: attached to a cluster (``RAY_ADDRESS``),
    as opposed to a local instance sized by this machine's cores.
    """

    cpus: float
    gpus: float
    max_cpus: float
    max_gpus: float
    on_cluster: bool
    node_types: tuple[NodeType, ...] = field(default=())

    def sizing_cpus(self) -> int:
        """CPUs to size a run by: what a cluster can hold; locally the machine's cores (the
        local instance reports inflated logical CPUs)."""
        return int(self.max_cpus) if self.on_cluster else machine_cores()

    @property
    def autoscaling(self) -> bool:
        return self.max_cpus > self.cpus or self.max_gpus > self.gpus

    def describe(self) -> str:
        up = f"{self.cpus:g} CPUs, {self.gpus:g} GPUs up"
        if not self.on_cluster:
            return f"local Ray instance on {machine_cores()} cores ({up})"
        if not self.autoscaling:
            return f"cluster: {up}"
        types = ", ".join(f"{t.name} x{t.max_count if t.max_count >= 0 else 'inf'} "
                          f"({t.cpus:g} CPU, {t.gpus:g} GPU)" for t in self.node_types
                          if t.max_count and (t.cpus or t.gpus))
        return (f"autoscaling cluster: {up}, can hold {self.max_cpus:g} CPUs and "
                f"{self.max_gpus:g} GPUs ({types})")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


UNBOUNDED = 10 ** 6   # what an unbounded node type counts for


def capacity_from(up: dict[str, float], node_types: list[NodeType], on_cluster: bool,
                  max_resources: dict[str, float] | None = None) -> Capacity:
    """A :class:`Capacity` from the resources up now and the autoscaler's node types (empty
    without an autoscaler). ``max_resources``: the cluster-wide caps, if any."""
    cpus, gpus = float(up.get("CPU", 0.0)), float(up.get("GPU", 0.0))

    def most(key: str, now: float) -> float:
        total = sum(getattr(t, key) * (t.max_count if t.max_count >= 0 else UNBOUNDED)
                    for t in node_types)
        cap = (max_resources or {}).get("CPU" if key == "cpus" else "GPU")
        return max(now, min(total, cap) if cap else total)
    return Capacity(cpus, gpus, most("cpus", cpus), most("gpus", gpus), on_cluster,
                    tuple(node_types))


def node_types_from_launcher(config: dict[str, Any]) -> list[NodeType]:
    """The worker node types of a Ray cluster-launcher config (``cluster.yaml``'s
    ``available_node_types``), each capped by the cluster's ``max_workers``; the head's
    own resources count once."""
    limit = int(config.get("max_workers", UNBOUNDED))
    head = config.get("head_node_type")
    out = []
    for name, spec in config.get("available_node_types", {}).items():
        res = spec.get("resources", {})
        count = 1 if name == head else min(int(spec.get("max_workers", limit)), limit)
        out.append(NodeType(name, float(res.get("CPU", 0)), float(res.get("GPU", 0)), count))
    return out
