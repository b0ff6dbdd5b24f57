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
    with pytest.raises(ConfigError, match=r"the plan needs 40 GPUs \(40 training workers x 1\) "
                                          r"but the cluster can hold 32"):
        run_plan(cfg, cap)


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
