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


def test_image_is_built_from_the_dockerfile_on_the_pinned_ray():
    """Checked statically (this machine has a Docker client but no daemon, and no registry
    to pull Ray's image from): the Dockerfile starts from the Ray release CI tests
    (constraints.txt), installs the torch release CI tests and the package with its GPU extra at build time, and cluster.yaml runs that
    image with nothing left to install at boot."""
    import re

    docker = (ROOT / "docker" / "Dockerfile").read_text()
    tested = (ROOT / "constraints.txt").read_text()
    pin = re.search(r"^ray==([\d.]+)$", tested, re.MULTILINE)[1]
    torch = re.search(r"^torch==([\d.]+)$", tested, re.MULTILINE)[1]
    base = re.search(r"^FROM (\S+)$", docker, re.MULTILINE)[1]
    assert base == f"rayproject/ray:{pin}-py311-gpu"
    assert f"pip install --no-cache-dir -e '.[gpu]' torch=={torch}" in docker
    for path in re.findall(r"^COPY \S+ (.+) \./", docker, re.MULTILINE):
        for name in path.split():
            assert (ROOT / name).exists(), name        # what the image copies exists
    cfg = load()
    assert cfg["docker"]["image"].endswith("/acl-dist:0.1.0")
    assert not any("pip install" in c for c in cfg["setup_commands"])
    assert cfg["file_mounts"]["/home/ray/acl-dist"] == "."


def test_two_iam_roles_head_launches_workers_read_and_write_s3():
    import json

    head = json.loads((ROOT / "docs" / "iam" / "head-policy.json").read_text())
    worker = json.loads((ROOT / "docs" / "iam" / "worker-policy.json").read_text())

    def actions(policy):
        return {a for st in policy["Statement"] for a in
                ([st["Action"]] if isinstance(st["Action"], str) else st["Action"])}
    assert {"ec2:RunInstances", "ec2:TerminateInstances", "ec2:CreateTags",
            "ec2:DescribeInstances", "iam:PassRole"} <= actions(head)
    passrole = [st for st in head["Statement"] if st["Action"] == "iam:PassRole"]
    assert passrole and all(st["Resource"].endswith(":role/acl-dist-worker") for st in passrole)
    assert actions(worker) == {"s3:ListBucket", "s3:GetObject", "s3:PutObject",
                               "s3:DeleteObject"}
    assert {a for a in actions(head) if a.startswith("s3:")} == actions(worker)
    nodes = load()["available_node_types"]
    profiles = {n: t["node_config"]["IamInstanceProfile"]["Name"] for n, t in nodes.items()}
    assert profiles == {"head": "acl-dist-head", "gpu_worker": "acl-dist-worker"}
