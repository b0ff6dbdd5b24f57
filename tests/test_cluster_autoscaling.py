"""A cold autoscaling GPU cluster on this machine, set up as docs/cluster.md tells a user:
Ray's ``fake_multinode`` provider with ``cluster.yaml``'s own node types (fake GPUs: plan
and scheduling only, no CUDA), the launcher config at ``~/ray_bootstrap_config.yaml`` as
``ray up`` leaves it on a head, and token authentication with Ray's default settings: a
token made by ``ray get-auth-token --generate`` in ``~/.ray/auth_token`` (no RAY_AUTH_MODE
or RAY_AUTH_TOKEN on the nodes: Ray turns authentication on because the file exists), the
client with ``RAY_AUTH_MODE=token``. ``HOME`` is a temporary directory throughout.

A job asks for its plan (``run --plan --json --wait``): it must plan GPU training from what
the cluster can hold, ask the autoscaler for it, see the nodes come up, and plan the same as
the pure sizing of the real ``cluster.yaml``; a second job on the now warm cluster plans the
same. The head is started as ``RAY_FAKE_CLUSTER=1 ray start --head --block
--autoscaling-config`` and stopped by its process group (``AutoscalingCluster.start/
shutdown`` run ``ray stop``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from ray_clusters import RAY, REPO, Cluster, cluster_env, free_port, stop_nodes

from acl_dist.config import load_config
from acl_dist.plan import describe_plan, resolve_config, run_plan
from acl_dist.resources import capacity_from, node_types_from_launcher
from acl_dist.store import FeatureStore

pytestmark = pytest.mark.ray

HEAD = "ray.head.default"   # the fake provider's name for the head's type


def fake_config(launcher: dict, gcs: str) -> dict:
    """``cluster.yaml`` with its cloud parts replaced by the fake provider: the same node
    types, resources and counts."""
    types = {}
    for name, spec in launcher["available_node_types"].items():
        head = name == launcher["head_node_type"]
        types[HEAD if head else name] = {
            "resources": spec["resources"], "node_config": {},
            "min_workers": 0, "max_workers": 0 if head else spec["max_workers"]}
    return {"cluster_name": "fake-acl", "max_workers": launcher["max_workers"],
            "provider": {"type": "fake_multinode", "use_node_id_as_ip": True,
                         "disable_node_updaters": True, "disable_launch_config_check": True,
                         "gcs_address": gcs},
            "available_node_types": types, "head_node_type": HEAD, "auth": {},
            "upscaling_speed": 1.0, "idle_timeout_minutes": 5, "docker": {},
            **{k: [] for k in ("initialization_commands", "setup_commands",
                               "head_setup_commands", "worker_setup_commands",
                               "head_start_ray_commands", "worker_start_ray_commands",
                               "cluster_synced_files", "rsync_exclude", "rsync_filter")},
            "file_mounts": {}, "file_mounts_sync_continuously": False}


@pytest.fixture(scope="module")
def autoscaling_cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    launcher = yaml.safe_load((REPO / "cluster.yaml").read_text())
    node_env = {k: v for k, v in cluster_env(RAY_FAKE_CLUSTER="1", HOME=str(home)).items()
                if not k.startswith("RAY_AUTH_")}          # Ray's defaults
    subprocess.run([RAY, "get-auth-token", "--generate"], env=node_env, check=True,
                   capture_output=True, timeout=60)
    assert (home / ".ray" / "auth_token").exists()
    client = dict(node_env, RAY_AUTH_MODE="token")        # what docs/cluster.md says
    c = Cluster(client, free_port(), free_port())
    (home / "ray_bootstrap_config.yaml").write_text(yaml.safe_dump(fake_config(launcher,
                                                                               c.gcs)))
    head_cpus = launcher["available_node_types"][launcher["head_node_type"]]["resources"]
    try:
        c.start_head(["--node-ip-address=127.0.0.1", f"--num-cpus={head_cpus['CPU']}",
                      "--object-store-memory=200000000", "--disable-usage-stats",
                      f"--autoscaling-config={home / 'ray_bootstrap_config.yaml'}"],
                     home / "head.log", env=node_env)
        yield c, launcher
    finally:
        stop_nodes(c.procs)


def job_logs(c: Cluster, args: list[str]) -> str:
    """The logs of a job of ``args`` that must succeed."""
    job = c.submit(*args)
    state = c.wait(job, timeout=300)
    logs = c.logs(job)
    assert state == "SUCCEEDED", logs
    return logs


def job_plan(c: Cluster, args: list[str]) -> tuple[dict, str]:
    logs = job_logs(c, args)
    lines = logs.splitlines()
    start, end = lines.index("{"), len(lines) - lines[::-1].index("}")
    return json.loads("\n".join(lines[start:end])), logs


def test_a_cold_gpu_cluster_plans_gpu_training_and_scales_up(autoscaling_cluster, tiny_store):
    c, launcher = autoscaling_cluster
    store, _ = tiny_store
    args = ["--store", store, "--out", "/nonexistent/never-written", "--mode",
            "unsupervised", "--num-classes", "4", "--config", "tiny"]
    # token authentication is on: a client without the token is refused
    other_home = dict(c.env, HOME=str(Path(store).parent))
    refused = c.cli("job", "list", "--address", c.dashboard, env=other_home, check=False)
    assert refused.returncode != 0 and "token" in (refused.stdout + refused.stderr).lower()
    assert c.nodes("gpu_worker") == 0                       # cold: the head alone
    cold, logs = job_plan(c, [*args, "--plan", "--json", "--wait"])
    # the plan: from what the cluster can hold, not from what was up
    assert cold["capacity"]["gpus"] == 0 and cold["capacity"]["max_gpus"] == 32
    assert cold["train"]["use_gpu"] and cold["train"]["workers"] == 4
    assert cold["config"]["train"]["use_gpu"] and cold["config"]["train"]["workers"] == 4
    assert cold["cluster"]["gpu"] and cold["attention"] == {"actors": 4, "gpu": True}
    # ... asked for, and brought up by the autoscaler (one 4-GPU gpu_worker)
    assert cold["request"] == [{"CPU": 1.0, "GPU": 1.0}] * 4
    assert cold["scaled_to"]["gpus"] >= 4
    assert c.wait_nodes("gpu_worker", 1) >= 1
    # the same plan as the pure sizing of the real cluster.yaml on a cold cluster
    cap = capacity_from({"CPU": 0.0}, node_types_from_launcher(launcher), on_cluster=True)
    expected = run_plan(resolve_config(load_config("tiny", mode="unsupervised",
                                                   num_classes=4),
                                       FeatureStore.open(store), cpus=cap.sizing_cpus(),
                                       gpus=cap.max_gpus), cap)
    for key in ("train", "cluster", "attention", "request", "config"):
        assert cold[key] == expected[key], key
    # a warm cluster (the node stays for the idle timeout): the same plan as text, nothing
    # asked for or waited on
    logs = job_logs(c, [*args, "--plan", "--wait"])
    start = logs.index("plan on ")
    warm = logs[start:].splitlines()[:4]
    print("\n".join(["cold:", *describe_plan(cold), "warm:", *warm]))   # for the record
    assert warm[0].startswith("plan on autoscaling cluster: 48 CPUs, 4 GPUs up, can hold "
                              "384 CPUs and 32 GPUs")
    assert warm[1:] == describe_plan(cold)[1:]
    assert "asked the autoscaler" not in logs
    assert not Path("/nonexistent/never-written").exists()
