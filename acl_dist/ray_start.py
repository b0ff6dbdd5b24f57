"""Ray start-up for every entry point: attach to a cluster or start a local instance,
quiet Ray Data's own output, and read the cluster's capacity."""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
import os
import socket
from typing import Any, Iterator

from . import resources
from .errors import CapacityError, ConfigError
from .progress import log


def init_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Attach to ``RAY_ADDRESS`` (a cluster, or ``ray job submit``), or start a local
    instance sized for this machine: at least 4 logical CPUs, so that Ray Data keeps CPUs
    beside the training workers on a 2-core machine, and torch's GPUs
    (:func:`local_capacity` is what it holds, for plans made before it starts)."""
    import ray

    if ray.is_initialized():  # e.g. inside a Tune trial: Ray Data's context is per process
        quiet_ray_data()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Workers' INFO chatter (every Train report, device moves) would bury the progress
    # lines; warnings and errors still reach the driver.
    kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": "WARNING",
                              "logging_config": ray.LoggingConfig(log_level="WARNING")}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        cpus = num_cpus or resources.local_instance_cpus()
        log(f"starting a local Ray instance ({cpus} logical CPUs)", quiet)
        # The dashboard serves the State API that Train V2's placement-group cleaner polls;
        # without it, it logs a warning every second (RAY_NOTES.md §3).
        dashboard = _dashboard_installed()
        port = _free_port() if dashboard else None
        with _environ(_local_instance_env(port)):   # inherited by the raylet and workers
            ray.init(address="local", num_cpus=cpus, num_gpus=local_gpus(),
                     include_dashboard=dashboard,
                     dashboard_host="127.0.0.1", dashboard_port=port,
                     object_store_memory=512 * 2**20,
                     runtime_env={"worker_process_setup_hook":
                                  "acl_dist.ray_start.worker_setup"}, **kwargs)
    quiet_ray_data()


def _local_instance_env(dashboard_port: int | None) -> dict[str, str]:
    """Variables for the processes of a local instance (the user's own settings win).

    * ``RAY_API_SERVER_ADDRESS``: Train V2's placement-group cleaner finds the State API
      by Ray's address discovery, which prefers ``/tmp/ray/ray_current_cluster``, the
      last ``ray start`` on the machine (another cluster, or a stale file of a stopped
      one). Its liveness query then timed out and every ``TorchTrainer.fit`` waited 12 s
      for the cleaner to stop: 22 s instead of 10 s for a trivial 2-worker fit here
      (``bench/train_start.py``).
    * ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``: the controller notices the workers' end at
      its next poll (2 s by default); 0.5 s saves about 1.5 s per round for a cheap poll.
    * ``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER``: off. Each ``fit`` starts a watcher actor
      (a Python process) polling for nodes being drained; one local machine is never
      drained, and a process start is ~1 s of a 2-core machine's CPU per round.
    """
    env = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}
    if dashboard_port is not None:
        env["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{dashboard_port}"
    return {k: v for k, v in env.items() if not os.environ.get(k)}


@contextlib.contextmanager
def _environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` set inside the block, restored after it."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def quiet_ray_data() -> None:
    """Ray Data settings of this process: our progress lines replace Ray Data's bars and
    its every-10-s status lines, which fill terminals and `ray job logs` alike; the V1
    Parquet reader (below)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Ray Data's V2 Parquet reader lists files in a 1-CPU task that places 32 footer-reader
    # actors (1 CPU each to schedule) and waits for them. With two Tune trials reading at
    # once beside their training workers, a 2 x 2-CPU cluster deadlocked there (read tasks
    # holding CPUs, footer readers unplaceable). The V1 reader reads footers in its tasks.
    ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    filter_own_errors()


def worker_setup() -> None:
    """Every worker process of a local instance (Ray's ``worker_process_setup_hook``):
    Ray Data's executors of the training reads and Ray Train's workers log a failed
    task's exception there, and their lines reach this terminal. Imports nothing: most
    workers never load Ray Data (0.6 s each)."""
    filter_own_errors()


def filter_own_errors() -> None:
    """The loggers through which Ray logs a failed task or training worker drop the
    records of acl-dist's own errors (:class:`_OwnErrorsRaised`); on the logger, so the
    filter holds whatever handlers Ray configures later."""
    for name in RAY_ERROR_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _OwnErrorsRaised) for f in logger.filters):
            logger.addFilter(_OwnErrorsRaised())


#: Ray's loggers that log a failed task's or training worker's exception with its
#: traceback before it is raised to the caller.
RAY_ERROR_LOGGERS = ("ray.data._internal.execution.streaming_executor_state",
                     "ray.data._internal.iterator.stream_split_iterator",
                     "ray.data.exceptions", "ray.train.v2._internal.util")


class _OwnErrorsRaised(logging.Filter):
    """Drops Ray's log records of an exception that is acl-dist's own (bad data, a
    damaged shard, a full disk: :class:`~acl_dist.errors.AclDistError` or OSError behind
    it): Ray Data logs a failed task's exception where it runs the dataset (the driver, a
    training worker, a split coordinator) and Ray Train logs a failed worker's, each with
    its tracebacks (a damaged training shard: 150 lines), before the exception reaches
    the caller, where the CLI prints it as one line. Any other exception (a bug, Ray's own
    failure) keeps its records. Ray logs them inside its ``except`` blocks, so the
    exception is ``sys.exc_info()`` when a record carries none."""

    def filter(self, record: logging.LogRecord) -> bool:
        import sys

        from .errors import AclDistError, find_cause

        exc = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return exc is None or find_cause(exc, (AclDistError, OSError)) is None


def _dashboard_installed() -> bool:
    """Whether ``ray[default]``'s dashboard can start (a minimal Ray, e.g. a stripped wheel
    on an offline GPU box, has no dashboard; asking for it there is an error)."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # another Ray layout: let Ray decide
        return True
    return get_dashboard_dependency_error() is None


def local_gpus() -> int:
    """GPUs a local instance gets: those torch can use here (``CUDA_VISIBLE_DEVICES``
    applies), so that a plan made before the instance starts and the instance agree."""
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:   # no torch or no CUDA driver: a CPU machine
        return 0


def local_capacity() -> resources.Capacity:
    """What the local instance :func:`init_ray` would start holds (this machine's CPUs, at
    least 4, and torch's GPUs), without starting it."""
    return resources.capacity_from({"CPU": float(resources.local_instance_cpus()),
                                    "GPU": float(local_gpus())}, [], on_cluster=False)


def planning_capacity(quiet: bool = False) -> resources.Capacity:
    """The capacity to plan a run or search by. Attached to a cluster (``RAY_ADDRESS``) or
    with Ray already up in this process: asked of Ray (:func:`cluster_capacity`). Else the
    local instance a run would start (:func:`local_capacity`), read from this machine
    without starting it: ``--plan`` runs nothing, and a plan it cannot place is refused
    before any Ray process exists."""
    import ray

    if resources.on_a_cluster() or ray.is_initialized():
        return cluster_capacity(quiet)
    return local_capacity()


def cluster_capacity(quiet: bool = False) -> resources.Capacity:
    """What the Ray cluster has up and what it can hold (its autoscaler's node types),
    starting a local instance when none is running."""
    import ray

    init_ray(quiet=quiet)
    types, caps = autoscaler_node_types()
    return resources.capacity_from(ray.cluster_resources(), types, resources.on_a_cluster(),
                                   caps)


#: A cluster-launcher YAML to read the autoscaler's node types from, when the cluster's
#: head has none at Ray's own place (``~/ray_bootstrap_config.yaml``, written by ``ray up``).
CLUSTER_CONFIG_ENV = "ACL_DIST_CLUSTER_CONFIG"


def autoscaler_node_types() -> tuple[list[resources.NodeType], dict[str, float]]:
    """The node types (and cluster-wide caps) of the cluster's autoscaler; ``[]`` without
    one. Looked up in order:

    1. the cluster config an autoscaler reported to the GCS (KubeRay; what Ray Train
       reads before placing its workers, through ``ray._private.state``: Ray 2.60 has no
       public reader). Ray's own monitor does not report it;
    2. on a cluster (``RAY_ADDRESS``), the launcher YAML named by ``ACL_DIST_CLUSTER_CONFIG``
       or ``~/ray_bootstrap_config.yaml``, the copy of ``cluster.yaml`` that ``ray up``
       leaves on the head, where job drivers run (Ray Tune checks the same file).
    """
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # another Ray layout, or a GCS without the key
        config = None
    if config is not None and config.node_group_configs:
        types = [resources.NodeType(g.name, float(g.resources.get("CPU", 0)),
                                    float(g.resources.get("GPU", 0)), int(g.max_count))
                 for g in config.node_group_configs]
        return types, {k: float(v) for k, v in config.max_resources.items()}
    if not resources.on_a_cluster():
        return [], {}
    path = os.environ.get(CLUSTER_CONFIG_ENV) or os.path.expanduser(
        "~/ray_bootstrap_config.yaml")
    if not os.path.exists(path):
        return [], {}
    import yaml

    try:
        with open(path) as fh:
            launcher = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: unreadable cluster config ({exc})") from None
    if not isinstance(launcher, dict) or not isinstance(
            launcher.get("available_node_types"), dict):
        raise ConfigError(f"{path}: not a Ray cluster config (no available_node_types)")
    return resources.node_types_from_launcher(launcher), {}


def ensure_capacity(bundles: list[dict[str, float]], timeout_s: float,
                    quiet: bool = False) -> bool:
    """Ask the autoscaler for ``bundles`` (``ray.autoscaler.sdk.request_resources``: it
    scales up now, not task by task) and wait until the cluster has their CPUs and GPUs up,
    with a progress line every 30 s. Raises :class:`CapacityError` after ``timeout_s``;
    a run never falls back to another device. Returns whether it asked (nothing is asked
    when the resources are up already)."""
    import time

    import ray
    from ray.autoscaler.sdk import request_resources

    need = {k: sum(b.get(k, 0.0) for b in bundles) for k in ("CPU", "GPU")}

    def missing(up: dict[str, float]) -> dict[str, float]:
        return {k: v - up.get(k, 0.0) for k, v in need.items() if up.get(k, 0.0) < v}
    up = ray.cluster_resources()
    if not missing(up):
        return False
    shapes = Counter(tuple(sorted(b.items())) for b in bundles)
    shape = ", ".join(f"{n} x {dict(b)}" for b, n in shapes.items())
    request_resources(bundles=bundles)
    log(f"asked the autoscaler for {shape}; waiting for it (up to {timeout_s:.0f} s)", quiet)
    start = last = time.monotonic()
    while short := missing(up):
        now = time.monotonic()
        status = ", ".join(f"{up.get(k, 0):g} of {v:g} {k}s up" for k, v in need.items()
                           if v)
        if now - start >= timeout_s:
            lacking = ", ".join(f"{v:g} {k}s" for k, v in short.items())
            raise CapacityError(f"the cluster did not bring up the plan's resources within "
                                f"{timeout_s:.0f} s ({status}; short of {lacking}): see "
                                "`ray status` and the autoscaler's log, or size the run to "
                                "what is up (train.workers, train.use_gpu)")
        if now - last >= 30:
            log(f"  waiting for the cluster: {status} "
                f"({timeout_s - (now - start):.0f} s left)", quiet)
            last = now
        time.sleep(1)
        up = ray.cluster_resources()
    log("  the cluster has scaled up: " + ", ".join(f"{up.get(k, 0):g} {k}s" for k in need),
        quiet)
    return True


@contextlib.contextmanager
def capacity_held(bundles: list[dict[str, float]], timeout_s: float,
                  quiet: bool = False) -> Iterator[None]:
    """:func:`ensure_capacity` for the block; the request, if one was made, is withdrawn
    after it (the autoscaler may then scale down). What runs, Tune searches and
    ``run --plan --wait`` hold their resources with."""
    asked = ensure_capacity(bundles, timeout_s, quiet)
    try:
        yield
    finally:
        if asked:
            release_capacity()


def release_capacity() -> None:
    """Withdraw this driver's standing request (the autoscaler may then scale down)."""
    from ray.autoscaler.sdk import request_resources

    request_resources(bundles=[])
