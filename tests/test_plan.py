"""The run plan without Ray: capacity from an autoscaler's node types (``cluster.yaml``),
sizing from what a cluster can hold, where each step runs and what is asked for."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from acl_dist.config import RunConfig, load_config, with_updates
from acl_dist.errors import ConfigError
from acl_dist.plan import attention_pass_actors, describe_plan, resolve_config, run_plan
from acl_dist.resources import (Capacity, NodeType, capacity_from, machine_cores,
                                node_types_from_launcher, training_workers)
from acl_dist.store import FeatureStore

CLUSTER_YAML = Path(__file__).resolve().parents[1] / "cluster.yaml"


def cold_cluster_yaml() -> Capacity:
    """The project's cluster.yaml as a job sees it right after ``ray up``: the head only."""
    launcher = yaml.safe_load(CLUSTER_YAML.read_text())
    return capacity_from({"CPU": 0.0}, node_types_from_launcher(launcher), on_cluster=True)


def test_cluster_yaml_capacity_counts_what_it_can_hold():
    cap = cold_cluster_yaml()
    # head (CPU 0) once + 8 x g5.12xlarge (48 CPUs, 4 GPUs)
    assert (cap.cpus, cap.gpus) == (0.0, 0.0)
    assert (cap.max_cpus, cap.max_gpus) == (384.0, 32.0)
    assert cap.autoscaling and cap.sizing_cpus() == 384
    assert "can hold 384 CPUs and 32 GPUs (gpu_worker x8 (48 CPU, 4 GPU))" in cap.describe()
    # the cluster-wide max_workers caps each type; caps reported by an autoscaler too
    two = node_types_from_launcher({"max_workers": 2, "head_node_type": "h",
                                    "available_node_types": {
                                        "h": {"resources": {"CPU": 4}},
                                        "g": {"resources": {"GPU": 8}, "max_workers": 10}}})
    assert two == [NodeType("h", 4.0, 0.0, 1), NodeType("g", 0.0, 8.0, 2)]
    assert capacity_from({"CPU": 4.0}, two, True, {"GPU": 8.0}).max_gpus == 8.0
    # no autoscaler: what is up is all there is
    warm = capacity_from({"CPU": 8.0, "GPU": 2.0}, [], True)
    assert (warm.max_cpus, warm.max_gpus, warm.autoscaling) == (8.0, 2.0, False)


def test_a_cold_gpu_cluster_plans_gpu_training(tiny_store):
    store, _ = tiny_store
    fs = FeatureStore.open(store)
    cap = cold_cluster_yaml()
    cfg = resolve_config(load_config("tiny", mode="unsupervised", num_classes=4), fs,
                         cpus=cap.sizing_cpus(), gpus=cap.max_gpus)
    tc = cfg.train
    # 24 videos: batch 8; K = 2 videos per cluster -> at most 4 workers with a pair each
    assert tc.use_gpu and tc.batch_size == 8 and tc.workers == 4
    plan = run_plan(cfg, cap)
    assert plan["train"] == {"workers": 4, "use_gpu": True,
                             "resources_per_worker": {"CPU": 1.0, "GPU": 1.0},
                             "placement_strategy": "PACK", "early_start": False}
    assert plan["cluster"]["gpu"] and plan["attention"] == {"actors": 4, "gpu": True}
    assert plan["request"] == [{"CPU": 1.0, "GPU": 1.0}] * 4
    # the Nyström path is numpy: its task takes no GPU on the same cluster
    nystrom = with_updates(cfg, cluster={"graph": "nystrom"})
    assert not run_plan(nystrom, cap)["cluster"]["gpu"]
    assert plan["config"]["train"]["workers"] == 4 and plan["config"]["train"]["use_gpu"]
    assert plan["capacity"]["max_gpus"] == 32.0
    assert not tc.compile   # a short GPU round: compiling (~66 s) would not pay
    paper_length = resolve_config(load_config("tiny", ["train.steps=30005"], mode="unsupervised",
                                              num_classes=4), fs, cpus=cap.sizing_cpus(),
                                  gpus=cap.max_gpus)
    assert paper_length.train.compile
    lines = describe_plan(plan)
    assert lines[0].startswith("plan on autoscaling cluster: 0 CPUs, 0 GPUs up")
    assert "training: 4 Ray Train worker(s) on GPUs, CPU 1, GPU 1 each (PACK)" in lines[1]


def test_explicit_settings_win_and_a_cpu_plan_stays_on_cpus(tiny_store):
    store, _ = tiny_store
    fs = FeatureStore.open(store)
    cap = cold_cluster_yaml()
    cfg = resolve_config(load_config("tiny", ["train.use_gpu=false", "train.workers=3"],
                                     mode="unsupervised", num_classes=4),
                         fs, cpus=cap.sizing_cpus(), gpus=cap.max_gpus)
    plan = run_plan(cfg, cap)
    assert plan["train"]["workers"] == 3 and not plan["train"]["use_gpu"]
    assert not resolve_config(load_config("tiny", ["train.use_gpu=false", "train.steps=30005"]),
                              fs, cpus=2, gpus=0.0).train.compile    # never on CPUs by size
    assert resolve_config(load_config("tiny", ["train.compile=true"]), fs, cpus=2,
                          gpus=0.0).train.compile                    # said is said
    assert not plan["cluster"]["gpu"] and not plan["attention"]["gpu"]
    assert all("GPU" not in b for b in plan["request"])
    # a local instance: sized by this machine's cores, attention actors by Ray's CPUs
    local = capacity_from({"CPU": 4.0}, [], on_cluster=False)
    cfg = resolve_config(RunConfig(num_classes=4), fs, cpus=local.sizing_cpus(), gpus=0.0)
    plan = run_plan(cfg, local)
    assert local.sizing_cpus() == machine_cores()
    assert plan["train"]["workers"] == max(1, machine_cores() // 4)
    assert plan["attention"] == {"actors": 1, "gpu": False}
    assert describe_plan(plan)[0].startswith("plan on local Ray instance")


def test_early_training_only_where_the_capacity_holds_it_beside_the_steps_before(tiny_store):
    """A round's training starts during the previous steps only when the resources up now
    hold its workers beside the attention pass's actors (or the clustering task) and a CPU
    for Ray Data: a local 2-core instance yes; weak mode (nothing before it) no; a cold
    cluster no; GPU workers beside GPU attention actors only when the GPUs hold both."""
    fs = FeatureStore.open(tiny_store[0])

    def plan(cap, *sets, mode="unsupervised"):
        cfg = resolve_config(load_config("tiny", list(sets), mode=mode, num_classes=4), fs,
                             cpus=cap.sizing_cpus(), gpus=cap.gpus)
        return run_plan(cfg, cap)

    local = capacity_from({"CPU": 4.0}, [], on_cluster=False)
    assert plan(local, "train.workers=1")["train"]["early_start"]        # 1 + 1 + 1 <= 4
    assert "(starts during the step before it)" in describe_plan(
        plan(local, "train.workers=1"))[1]
    assert not plan(local, "train.workers=3", "train.cpus_per_worker=1")["train"]["early_start"]
    assert not plan(local, mode="weak")["train"]["early_start"]
    assert not plan(cold_cluster_yaml(), "train.use_gpu=false")["train"]["early_start"]
    gpus4 = capacity_from({"CPU": 48.0, "GPU": 4.0}, [], on_cluster=True)
    assert not plan(gpus4, "train.workers=4")["train"]["early_start"]   # 4 + 4 GPUs > 4
    gpus8 = capacity_from({"CPU": 48.0, "GPU": 8.0}, [], on_cluster=True)
    assert plan(gpus8, "train.workers=4")["train"]["early_start"]


def test_a_long_local_attention_pass_takes_an_actor_per_core(tiny_store, monkeypatch):
    """On a local CPU instance the pass gets one actor per core once it has 1,000 videos
    per actor; a short pass, a cluster and a GPU run keep the plan's actors."""
    from acl_dist import plan as plan_module

    monkeypatch.setattr(plan_module.resources, "machine_cores", lambda: 2)
    fs = FeatureStore.open(tiny_store[0])
    cfg = resolve_config(load_config("tiny", mode="unsupervised", num_classes=4), fs, cpus=2)
    local = run_plan(cfg, capacity_from({"CPU": 4.0}, [], on_cluster=False))
    assert local["attention"]["actors"] == 1
    assert [attention_pass_actors(local, n) for n in (410, 1999, 2000, 14367)] == \
        [(1, 2), (1, 2), (2, 1), (2, 1)]     # and the cores over the actors: threads each
    cluster = run_plan(cfg, capacity_from({"CPU": 8.0}, [], on_cluster=True))
    assert attention_pass_actors(cluster, 14367)[0] == cluster["attention"]["actors"] == 2
    # beside a next round's early-started workers, only what they and Ray Data leave: 8
    # Ray CPUs - 2 workers x 2 CPUs - 1 = 3 actors of 8 // 3 threads
    monkeypatch.setattr(plan_module.resources, "machine_cores", lambda: 8)
    cfg8 = resolve_config(load_config("tiny", ["train.workers=2", "train.cpus_per_worker=2"],
                                      mode="unsupervised", num_classes=4), fs, cpus=8)
    wide = run_plan(cfg8, capacity_from({"CPU": 8.0}, [], on_cluster=False))
    assert wide["train"]["early_start"] and attention_pass_actors(wide, 14367) == (3, 2)
    assert attention_pass_actors(wide, 14367, actors=4) == (4, 2)       # given: kept
    gpu_cfg = resolve_config(load_config("tiny", mode="unsupervised", num_classes=4), fs,
                             cpus=2, gpus=1.0)
    gpu = run_plan(gpu_cfg, capacity_from({"CPU": 4.0, "GPU": 1.0}, [], on_cluster=False))
    assert attention_pass_actors(gpu, 14367)[0] == 1


@pytest.mark.parametrize("cpus,gpus,use_gpu,batch,k,expected", [
    (2, 0, False, 16, 2, 1),      # 2 cores: one worker
    (16, 0, False, 16, 2, 4),     # one per 4 CPUs
    (0, 32, True, 32, 2, 16),     # 32 GPUs, batch 32, pairs: 16 workers
    (0, 4, True, 32, 2, 4),       # one per GPU
    (0, 8, True, 8, 4, 2),        # K = 4: two workers of 4 videos each
])
def test_training_workers(cpus, gpus, use_gpu, batch, k, expected):
    assert training_workers(cpus, gpus, use_gpu, batch, k) == expected


def test_a_plan_the_cluster_can_never_hold_is_refused(tiny_store):
    store, _ = tiny_store
    cap = cold_cluster_yaml()
    cfg = resolve_config(load_config("tiny", ["train.workers=40"], mode="unsupervised",
                                     num_classes=4), FeatureStore.open(store),
                         cpus=cap.sizing_cpus(), gpus=cap.max_gpus)
    with pytest.raises(ConfigError) as err:
        run_plan(cfg, cap)
    # 8 x g5.12xlarge: 8 x 4 GPUs
    assert str(err.value) == (
        "train.workers=40 needs 40 GPUs (40 workers x 1 GPU) but at most 32 can be placed "
        "(autoscaling cluster: 0 CPUs, 0 GPUs up, can hold 384 CPUs and 32 GPUs (gpu_worker x8 "
        "(48 CPU, 4 GPU))): lower it to 32 or fewer")
    assert run_plan(with_updates(cfg, train={"workers": 32}), cap)["train"]["workers"] == 32


def test_waiting_for_capacity_times_out_with_one_line(monkeypatch):
    """A cluster that never brings up the GPUs asked for: the run stops after the timeout
    with a line saying what was missing, and never falls back to CPUs."""
    import ray
    import ray.autoscaler.sdk as sdk

    from acl_dist import ray_start
    from acl_dist.errors import CapacityError

    asked = []
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 4.0})
    monkeypatch.setattr(sdk, "request_resources", lambda bundles=None, **kw: asked.append(bundles))
    with pytest.raises(CapacityError, match=r"within 0 s \(4 of 2 CPUs up, 0 of 2 GPUs up; "
                                             r"short of 2 GPUs\)"):
        ray_start.ensure_capacity([{"CPU": 1.0, "GPU": 1.0}] * 2, timeout_s=0.0, quiet=True)
    assert asked == [[{"CPU": 1.0, "GPU": 1.0}] * 2]
    # what is up already: nothing asked, nothing waited for
    asked.clear()
    ray_start.ensure_capacity([{"CPU": 1.0}] * 2, timeout_s=0.0, quiet=True)
    assert asked == []


@pytest.mark.ray
def test_run_and_tune_plans_print_and_write_nothing(ray_session, tiny_store, tmp_path,
                                                    capsys):
    """``run --plan --json`` and ``tune --plan --json`` on the local instance: the resolved
    config and where each step runs, without training, starting a trial or writing."""
    import json

    from acl_dist.cli import main

    store, _ = tiny_store
    out = tmp_path / "never"
    args = ["--store", store, "--out", str(out), "--num-classes", "4", "--config", "tiny"]
    assert main(["run", *args, "--mode", "unsupervised", "--plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["config"]["num_classes"] == 4 and plan["config"]["train"]["steps"] > 0
    assert plan["train"]["workers"] == plan["config"]["train"]["workers"] >= 1
    assert not plan["train"]["use_gpu"] and plan["attention"] == {"actors": 1, "gpu": False}
    assert plan["capacity"]["summary"].startswith("local Ray instance on")
    assert main(["run", *args, "--mode", "unsupervised", "--plan"]) == 0
    assert capsys.readouterr().out.splitlines() == describe_plan(plan)
    assert main(["tune", *args, "--num-samples", "3", "--plan", "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["settings"]["num_samples"] == 3 and meta["concurrent"] >= 1
    assert meta["base"]["num_classes"] == 4 and meta["base"]["val_fraction"] == 0.2
    assert "label" in meta["label_use"] and set(meta["space"]) >= {"train.clusters_per_batch"}
    assert main(["tune", *args, "--plan"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("search plan on local Ray instance") and "8 trial(s)" in text
    assert not out.exists()


def test_predict_runs_on_gpus_when_the_cluster_has_or_can_start_them():
    from acl_dist.plan import predict_plan

    cold = predict_plan(cold_cluster_yaml(), videos=5000)        # cluster.yaml, head only
    assert (cold["gpu"], cold["actors"], cold["request"]) == (True, 1, [{"GPU": 1.0}])
    warm = capacity_from({"CPU": 96.0, "GPU": 8.0}, [], on_cluster=True)
    assert predict_plan(warm, videos=5000)["actors"] == 8            # one per GPU up
    assert predict_plan(warm, videos=200)["actors"] == 2             # no more than batches
    assert predict_plan(warm, videos=5000)["request"] == []
    cpus = capacity_from({"CPU": 32.0}, [], on_cluster=True)
    plan = predict_plan(cpus, videos=5000)
    assert (plan["gpu"], plan["actors"], plan["request"]) == (False, 8, [])
    local = predict_plan(capacity_from({"CPU": 4.0}, [], on_cluster=False), videos=100)
    assert (local["gpu"], local["actors"]) == (False, 1)


def test_weak_labels_main_trains_on_one_label_per_video():
    """weak_labels=main (docs/method.md's ablation): each training video keeps only its main
    class, as an unsupervised round's cluster gives one; ``all`` keeps every label. An
    unsupervised config refuses the key (it reads no labels)."""
    from types import SimpleNamespace

    from acl_dist.plan import split_videos

    def video(vid, subset, labels, main):
        return SimpleNamespace(video_id=vid, subset=subset, labels=labels, primary_label=main)

    class Store:
        classes = ["CliffDiving", "Diving", "Golf"]

        def metadata(self, subsets):
            return [video("a", "val", ["CliffDiving", "Diving"], "CliffDiving"),
                    video("b", "val", ["Diving"], "Diving"),
                    video("c", "val", ["Golf", "Diving"], "Golf"),
                    video("t", "test", ["Golf"], "Golf")]

    def labels(which):
        cfg = RunConfig(mode="weak", weak_labels=which, num_classes=3, train_subset="val",
                        test_subset="test")
        return split_videos(cfg, Store()).weak_labels

    assert labels("all") == {"a": [0, 1], "b": [1], "c": [2, 1]}
    assert labels("main") == {"a": [0], "b": [1], "c": [2]}
    with pytest.raises(ConfigError, match="weak_labels: applies to weak mode only"):
        RunConfig(mode="unsupervised", weak_labels="main")


# --------------------------------------------------------------------------- placement


LOCAL_4 = "local Ray instance on 2 cores (4 CPUs, 0 GPUs up)"


def _local_plan(fs, *sets, cap=None):
    """A tiny unsupervised config sized and planned for a 2-core machine's local instance
    (4 logical CPUs, no GPU)."""
    cap = cap or capacity_from({"CPU": 4.0}, [], on_cluster=False)
    cfg = resolve_config(load_config("tiny", list(sets), mode="unsupervised", num_classes=4),
                         fs, cpus=2, gpus=cap.max_gpus)
    return run_plan(cfg, cap)


def test_a_plan_the_local_instance_cannot_place_is_refused(tiny_store, monkeypatch):
    """Workers x their CPUs + 1 CPU for Ray Data's reads against the local instance's 4
    CPUs (2 cores): 6 workers of 0.5 CPU fit (3 + 1 = 4), 7 do not (3.5 + 1); one line
    names the key, what it needs and the capacity. A worker larger than the instance, a
    GPU where there is none and a node per worker on one node are refused too."""
    monkeypatch.setattr("acl_dist.resources.machine_cores", lambda: 2)
    fs = FeatureStore.open(tiny_store[0])
    assert _local_plan(fs, "train.workers=6")["train"]["resources_per_worker"] == {"CPU": 0.5}

    def refusal(*sets):
        with pytest.raises(ConfigError) as err:
            _local_plan(fs, *sets)
        return str(err.value)

    assert refusal("train.workers=1000") == (
        "train.workers=1000 needs 501 CPUs (1000 workers x 0.5 CPU + 1 for Ray Data's reads) "
        f"but at most 4 can be placed ({LOCAL_4}): lower it to 6 or fewer")
    assert refusal("train.workers=7").startswith("train.workers=7 needs 4.5 CPUs")
    assert refusal("train.cpus_per_worker=3.5") == (
        "train.cpus_per_worker=3.5 does not fit: one training worker needs 4.5 CPUs (3.5 + 1 "
        f"for Ray Data's reads) but at most 4 can be placed ({LOCAL_4})")
    assert _local_plan(fs, "train.cpus_per_worker=3")["train"]["workers"] == 1   # 3 + 1 fit
    assert refusal("train.use_gpu=true") == (
        "train.use_gpu=true needs a GPU for each training worker but none can be placed "
        f"({LOCAL_4}); set train.use_gpu=false")
    assert refusal("train.workers=2", "train.placement_strategy=STRICT_SPREAD") == (
        "train.placement_strategy=STRICT_SPREAD puts each of the 2 training workers on a node "
        f"of its own, but at most 1 node(s) can hold one ({LOCAL_4}); use PACK or SPREAD")
    for ok in (("train.workers=1", "train.placement_strategy=STRICT_SPREAD"),
               ("train.workers=2", "train.placement_strategy=STRICT_PACK")):
        assert _local_plan(fs, *ok)["train"]["placement_strategy"] == ok[1].split("=")[1]
    # a local GPU: one worker per GPU placed, two refused
    gpu = capacity_from({"CPU": 4.0, "GPU": 1.0}, [], on_cluster=False)
    assert _local_plan(fs, "train.use_gpu=true", cap=gpu)["train"]["workers"] == 1
    with pytest.raises(ConfigError, match=r"^train.workers=2 needs 2 GPUs \(2 workers x 1 GPU\)"
                                          r" but at most 1 can be placed .*lower it to 1 or"):
        _local_plan(fs, "train.use_gpu=true", "train.workers=2", cap=gpu)


def test_a_worker_or_strategy_no_node_type_can_hold_is_refused(tiny_store):
    """On an autoscaling cluster a worker's bundle must fit one of its node types
    (cluster.yaml: 48 CPUs and 4 GPUs a node), STRICT_PACK all workers on one node,
    STRICT_SPREAD one node per worker (at most 8 GPU nodes)."""
    fs = FeatureStore.open(tiny_store[0])
    cap = cold_cluster_yaml()

    def plan(*sets):
        cfg = resolve_config(load_config("tiny", ["train.batch_size=32", *sets],
                                         mode="unsupervised", num_classes=4),
                             fs, cpus=cap.sizing_cpus(), gpus=cap.max_gpus)
        return run_plan(cfg, cap)

    with pytest.raises(ConfigError, match=r"^train.cpus_per_worker=64 does not fit: a training "
                                          r"worker's 64 CPUs and 1 GPU must be on one node, and "
                                          r"the largest node has 48 CPUs and 4 GPUs"):
        plan("train.cpus_per_worker=64")
    assert plan("train.cpus_per_worker=47", "train.workers=8")["train"]["workers"] == 8
    with pytest.raises(ConfigError, match=r"^train.placement_strategy=STRICT_PACK puts all 5 "
                                          r"training workers \(5 CPUs, 5 GPUs\) on one node"):
        plan("train.workers=5", "train.placement_strategy=STRICT_PACK")
    assert plan("train.workers=4", "train.placement_strategy=STRICT_PACK")["train"]["workers"] == 4
    with pytest.raises(ConfigError, match=r"STRICT_SPREAD puts each of the 9 training workers "
                                          r"on a node of its own, but at most 8 node\(s\)"):
        plan("train.workers=9", "train.placement_strategy=STRICT_SPREAD")
    spread = plan("train.workers=8", "train.placement_strategy=STRICT_SPREAD")
    assert spread["train"]["workers"] == 8
    # CPU workers on the same cluster: 383 CPUs of workers + 1 for Ray Data
    assert plan("train.use_gpu=false", "train.workers=383", "train.cpus_per_worker=1")
    with pytest.raises(ConfigError, match=r"^train.workers=384 needs 385 CPUs .* at most 384 "
                                          r"can be placed .*lower it to 383 or fewer$"):
        plan("train.use_gpu=false", "train.workers=384", "train.cpus_per_worker=1")


# --------------------------------------------------------------------------- --plan without Ray


@pytest.fixture
def no_ray_start(monkeypatch):
    """No Ray in this process and none to start: ``ray.init`` fails the test if called;
    this machine has 6 cores and no GPU. Returns the calls ``ray.init`` got."""
    import ray
    import torch

    from acl_dist import ray_start

    calls = []

    def init(*args, **kwargs):
        calls.append(kwargs)
        raise AssertionError("ray.init called: --plan must not start Ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray_start, "cluster_capacity", lambda quiet=False: pytest.fail(
        "cluster_capacity asked: it starts a local instance"))
    monkeypatch.setattr("os.cpu_count", lambda: 6)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    return calls


def test_run_plan_starts_no_ray_and_plans_the_instance_a_run_would_start(
        tiny_store, tmp_path, capsys, monkeypatch, no_ray_start):
    """``run --plan`` locally: the plan of the instance ``init_ray`` would start (6 cores:
    6 logical CPUs; 2 cores: the 4 it never goes below), read from the machine, no Ray
    started, nothing written; a plan it cannot place is one line, exit 1, before Ray."""
    import importlib.util
    import json

    import ray

    from acl_dist import ray_start
    from acl_dist.cli import main

    store, _ = tiny_store
    out = tmp_path / "never"
    args = ["run", "--store", store, "--out", str(out), "--mode", "unsupervised",
            "--num-classes", "4", "--config", "tiny", "--plan"]
    assert main([*args, "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cap = plan["capacity"]
    assert (cap["cpus"], cap["gpus"], cap["on_cluster"]) == (6.0, 0.0, False)
    assert cap["summary"] == "local Ray instance on 6 cores (6 CPUs, 0 GPUs up)"
    # 6 cores: one worker (one per 4 CPUs) of min(1, (6 - 1) / 1) CPU
    assert plan["train"]["workers"] == 1 and plan["train"]["resources_per_worker"] == {"CPU": 1.0}
    assert no_ray_start == [] and not out.exists()
    # what the real start asks ray.init for is what was planned (a fresh copy of the
    # module: the suite's guard replaces this one's init_ray)
    spec = importlib.util.spec_from_file_location("acl_dist._ray_start_copy",
                                                  ray_start.__file__)
    fresh = importlib.util.module_from_spec(spec)
    fresh.__package__ = "acl_dist"
    spec.loader.exec_module(fresh)
    monkeypatch.setattr(fresh, "quiet_ray_data", lambda: None)
    monkeypatch.setattr(fresh, "_dashboard_installed", lambda: False)
    with pytest.raises(AssertionError, match="ray.init called"):
        fresh.init_ray(quiet=True)
    assert (no_ray_start[0]["num_cpus"], no_ray_start[0]["num_gpus"]) == (6, 0)
    no_ray_start.clear()
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert main([*args, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["capacity"]["cpus"] == 4.0
    # refused: 1000 x 0.5 CPU on the 4 CPUs, before any Ray process exists
    assert main([*args, "--set", "train.workers=1000"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["acl-dist run: error: train.workers=1000 needs 501 CPUs (1000 workers x 0.5 "
                   "CPU + 1 for Ray Data's reads) but at most 4 can be placed (local Ray "
                   "instance on 2 cores (4 CPUs, 0 GPUs up)): lower it to 6 or fewer"]
    assert no_ray_start == [] and not out.exists()
    # a real run is refused the same way, before Ray starts and before writing anything
    assert main(args[:-1] + ["--set", "train.workers=1000"]) == 1
    assert "train.workers=1000 needs 501 CPUs" in capsys.readouterr().err
    assert no_ray_start == [] and not out.exists()
    assert not ray.is_initialized()


def test_tune_plan_starts_no_ray_and_refuses_a_trial_it_cannot_place(
        tiny_store, tmp_path, capsys, no_ray_start):
    import json

    from acl_dist.cli import main

    store, _ = tiny_store
    args = ["tune", "--store", store, "--out", str(tmp_path / "never"), "--num-classes", "4",
            "--config", "tiny", "--plan"]
    assert main([*args, "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["capacity"] == "local Ray instance on 6 cores (6 CPUs, 0 GPUs up)"
    assert meta["warnings"] == [] and no_ray_start == []
    assert main([*args, "--set", "train.workers=1000"]) == 1
    # sized for 6 cores: 0.5 CPU a worker (at least half a CPU); (6 - 1) / 0.5 = 10 fit
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "acl-dist tune: error: each trial: train.workers=1000 needs 501 CPUs (1000 workers x "
        "0.5 CPU + 1 for Ray Data's reads) but at most 6 can be placed (local Ray instance on "
        "6 cores (6 CPUs, 0 GPUs up)): lower it to 10 or fewer")
    # trials that fit one at a time (5 x 1 CPU + 1 of 6) run one at a time, not refused
    assert main([*args, "--set", "train.workers=5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["concurrent"] == 1
    assert no_ray_start == [] and not (tmp_path / "never").exists()
    # a real search is refused the same way, before Ray starts and before writing anything
    assert main([*args[:-1], "--set", "train.workers=1000", "--quiet"]) == 1
    assert "each trial: train.workers=1000 needs 501 CPUs" in capsys.readouterr().err
    assert no_ray_start == [] and not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- size warnings


def test_absurd_sizes_are_warned_of_with_an_estimate_not_refused(tiny_store):
    """Hand-worked: the tiny config trains 8-video batches on one CPU worker; at the
    measured 54 ms a 16-video step that is 27 ms a step."""
    from acl_dist.plan import _duration, size_warnings

    fs = FeatureStore.open(tiny_store[0])

    def warnings(*sets, videos=24):
        cfg = resolve_config(load_config("tiny", list(sets), mode="unsupervised",
                                         num_classes=4), fs, cpus=2, gpus=0.0)
        return size_warnings(cfg, videos)

    assert warnings() == [] and warnings("train.steps=300050", "train.batch_size=48",
                                         "rounds=20") == []       # the edges: no warning
    steps, = warnings("train.steps=1000000000")
    # 1e9 x 0.027 s + 20 s = 2.7e7 s = 313 days a round; 2 rounds (tiny) = 625 days
    assert steps == ("train.steps=1000000000 is 33,328x the paper's 30,005 updates a round, "
                     "~333,333,333 passes over the 24 training videos a round: ~313 days a "
                     "round, ~625 days for 2 round(s) at one CPU worker's measured ~27 ms a "
                     "step of 8 videos")
    batch, = warnings("train.batch_size=100000")
    # 1e5 x 3.375 ms = 337.5 s a step; the tiny config's 6 steps + 20 s = 34.1 min
    assert batch == ("train.batch_size=100000 is 4,167x the 24 training videos (each update "
                     "draws every video ~4,167 times): ~5.62 min a step, ~34.1 min a round of "
                     "6 steps at one CPU worker's measured ~3.38 ms a video")
    assert warnings("train.batch_size=49")[0].startswith("train.batch_size=49 is 2x")
    rounds, = warnings("rounds=1000000")
    assert rounds.startswith("rounds=1000000 is far beyond the paper's 4-5: each round clusters, "
                             "trains 6 steps") and "~233 days in all" in rounds
    assert [_duration(s) for s in (0.027, 90, 3600, 86400, 5 * 31557600)] == \
        ["27 ms", "90 s", "60 min", "24 h", "5 years"]
    # the plan carries them and prints them as its last lines
    plan = run_plan(resolve_config(load_config("tiny", ["rounds=1000000"], mode="unsupervised",
                                               num_classes=4), fs, cpus=2),
                    capacity_from({"CPU": 4.0}, [], on_cluster=False), train_videos=24)
    assert plan["warnings"] == [rounds] and describe_plan(plan)[-1] == f"warning: {rounds}"


# --------------------------------------------------------------------------- progress lines


def test_training_prints_a_first_line_early_then_one_every_10_s():
    """Which steps get a progress line: the first and the last whatever the step count,
    between them one per 10 s of the clock (a fake one here), not one per ``log_every``."""
    from acl_dist.progress import StepLines

    now = [0.0]
    lines = StepLines(1, clock=lambda: now[0])
    now[0] = 2.0
    assert lines.step(1, 8) == 4.0                     # steps=1: its only step, 8 videos / 2 s
    ms = [0]
    lines = StepLines(10**6, clock=lambda: ms[0] / 1000)
    got = []
    for step in range(1, 25_001):
        ms[0] += 1                                      # 1 ms a step
        if lines.step(step, 16) is not None:
            got.append(step)
    # the first step, then every 10,000 steps of 1 ms (10 s)
    assert got == [1, 10_001, 20_001]
    end = StepLines(5, clock=lambda: 0.0)
    assert [s for s in range(1, 6) if end.step(s, 1) is not None] == [1, 5]
    # log_every's steps get theirs too (what a watcher of the log waits for), within 10 s
    kept = StepLines(80, log_every=10, clock=lambda: 0.0)
    assert [s for s in range(1, 81) if kept.step(s, 1) is not None] == \
        [1, 10, 20, 30, 40, 50, 60, 70, 80]


def test_fit_calls_progress_at_the_first_and_last_step():
    import numpy as np

    from acl_dist.train import VideoItem, fit

    rng = np.random.default_rng(0)
    items = [VideoItem(f"v{i}", {"rgb": rng.standard_normal((6 + i, 5)).astype(np.float32)},
                       [i % 2]) for i in range(8)]
    for steps, expected in ((1, [1]), (3, [1, 3])):
        cfg = load_config("tiny", [f"train.steps={steps}", "train.batch_size=4",
                                   "train.max_len=0", "train.clusters_per_batch=2",
                                   "train.log_every=1000"])
        seen = []
        fit(items, cfg, 2, {"rgb": 5}, progress=lambda m, step: seen.append((step, m)))
        assert [s for s, _ in seen] == expected
        assert all(np.isfinite(m["loss"]) and m["videos_per_s"] > 0 for _, m in seen)
