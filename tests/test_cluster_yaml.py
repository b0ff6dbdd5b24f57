"""cluster.yaml against the Ray cluster launcher's own schema, and against what the jobs ask
for (the launcher validates offline; the API is private, hence the pinned Ray)."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def load():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def test_schema_valid():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))  # raises on unknown keys or bad types


def test_no_secrets_and_private_dashboard():
    text = (ROOT / "cluster.yaml").read_text()
    assert "aws_access_key_id" not in text.lower() and "AWS_SECRET" not in text
    cfg = load()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for node in cfg["available_node_types"].values():
        assert "IamInstanceProfile" in node["node_config"]  # S3 through the instance role
    # token authentication: the token travels as a file mount, never in the YAML, and
    # every node starts with it required
    assert cfg["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN" not in text
    for cmd in (cfg["head_start_ray_commands"][-1], cfg["worker_start_ray_commands"][-1]):
        assert "export RAY_AUTH_MODE=token;" in cmd and "ray start" in cmd


def test_resources_fit_what_the_jobs_request():
    from acl_dist.config import RunConfig, load_config
    from acl_dist.plan import resolve_config

    cfg = load()
    nodes = cfg["available_node_types"]
    head = nodes[cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0
    gpu_types = [n for n in nodes.values() if n["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(n["max_workers"] <= cfg["max_workers"] for n in gpu_types)
    total_gpus = sum(n["resources"]["GPU"] * n["max_workers"] for n in gpu_types)
    total_cpus = sum(n["resources"]["CPU"] * n["max_workers"] for n in gpu_types)

    class FakeStore:  # what resolve_config reads of an ActivityNet-1.2-sized store
        subsets = ["training", "validation"]
        classes = [f"c{i}" for i in range(100)]
        manifest = {"source": {}, "shards": []}

        def num_videos(self, subset):
            return 4441

        def iter_videos(self, *a, **k):
            return iter([])

    run = resolve_config(load_config("anet12"), FakeStore(), cpus=total_cpus, gpus=total_gpus)
    tc = run.train
    # one worker per GPU the cluster can hold, at most batch // K (each samples a pair)
    assert tc.use_gpu and tc.workers == min(total_gpus, tc.batch_size // tc.videos_per_cluster)
    # every training worker fits on a GPU node: 1 GPU and its CPUs each
    per_node = gpu_types[0]["resources"]
    assert tc.cpus_per_worker * per_node["GPU"] <= per_node["CPU"]
    # the clustering task and attention actors ask for one GPU each: a GPU node has one
    assert all(n["resources"]["GPU"] >= 1 for n in gpu_types)
    assert isinstance(run, RunConfig)
