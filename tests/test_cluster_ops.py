"""Cluster operation on one machine: a Ray head and a second Ray node started as separate
processes on 127.0.0.1 with token authentication, jobs sent with ``ray job submit``.

* a client without the token is refused;
* a run whose store, run directory and Ray Train storage are on S3 (moto), with one Ray
  Train worker per node (STRICT_SPREAD): the second node is killed whole mid-round and a
  replacement joins (Ray Train restarts the group from the last checkpoint, as after a
  spot preemption), the driver is killed between rounds, and
  ``--resume`` finishes from the bucket without recomputing a finished step; its round 0
  (clustering of mean-pooled features, before any training) equals the session's
  single-node run of the same store and seed;
* a Ray Tune search as a job (``jobs/tune_acl.py``): 3 trials, 2 at a time on the
  cluster's 4 CPUs, ASHA stopping trials between rounds, interrupted (SIGINT, as Ctrl-C)
  and resumed from S3 (``Tuner.restore``), its best config read back from the bucket.

The cluster is stopped by signalling its ``ray start --block`` processes (never
``ray stop``, which would also stop the test session's own local Ray instance).
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from acl_dist.console import is_noise
from ray_clusters import Cluster, cluster_env, free_port, stop_nodes

pytestmark = pytest.mark.ray

# a tiny run, sized for 2 CPUs: 2 rounds, 2 workers at half a CPU each
TINY = ["--mode", "unsupervised", "--num-classes", "4", "--config", "tiny",
        "--set", "train.workers=2", "--set", "train.cpus_per_worker=0.5"]


@pytest.fixture(scope="module")
def cluster(s3_endpoint, tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster")
    # a 0.5 s Ray Train health-check poll (as init_ray gives a local instance): each fit's
    # end is seen 1.5 s sooner than with Ray's 2 s. The GCS checks each node every 0.5 s
    # (Ray's default: 3 s, a node declared dead after 5 failed checks): the killed node is
    # found dead in ~3 s, not ~15-27 s; what is tested is the recovery, not Ray's latency
    c = Cluster(cluster_env(RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.5",
                            RAY_health_check_period_ms="500"), free_port(), free_port())
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=2", "--object-store-memory=300000000",
              "--disable-usage-stats"]
    try:
        c.start_head(common, logs / "head.log")
        # Both nodes share this machine's /tmp/ray session dir, so the second node's
        # runtime-env agent re-extracts each job's working_dir over the one the driver runs
        # in (the driver's cwd vanishes; acl-dist tune copes, see run_tune). A separate
        # --temp-dir for the node left the head's job agent unavailable for minutes.
        c.add_node(common, logs / "node.log")
        deadline = time.time() + 90
        while c.nodes() < 2:
            if time.time() > deadline or c.procs[1].poll() is not None:
                raise AssertionError("the second node did not join:\n" +
                                     (logs / "node.log").read_text())
            time.sleep(1)
        yield c
    finally:
        stop_nodes(c.procs)


def _metrics(path: Path) -> dict:
    return json.loads((path / "metrics.json").read_text())


def test_token_auth_refuses_a_client_without_the_token(cluster):
    wrong = dict(cluster.env, RAY_AUTH_TOKEN="0" * 32)
    proc = cluster.cli("job", "list", "--address", cluster.dashboard, env=wrong, check=False)
    assert proc.returncode != 0
    assert "Invalid authentication token" in proc.stdout + proc.stderr
    assert cluster.cli("job", "list", "--address", cluster.dashboard).returncode == 0


def _train_workers(cluster) -> list[tuple[int, str]]:
    """(pid, node id) of each live Ray Train worker of the cluster."""
    out = cluster.cli("list", "actors", "--address", cluster.dashboard, "--filter",
                      "state=ALIVE", "--detail", "--format", "json", "--limit", "1000").stdout
    return [(a["pid"], a["node_id"]) for a in json.loads(out)
            if "TrainWorker" in a.get("class_name", "")]


def _driver_pid(run_dir: str, script: str = "jobs/run_acl.py") -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if script.encode() in cmd and run_dir.encode() in cmd:
            return int(entry.name)
    raise AssertionError(f"no driver process runs {run_dir}")


def test_s3_two_node_run_survives_a_node_kill_and_resumes_after_a_driver_kill(
        cluster, s3_endpoint, unsupervised_run):
    import s3fs

    from acl_dist.synth import SynthConfig, synthesize

    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    store = "s3://acl-test/ops/store"
    synthesize(SynthConfig(classes=4, videos=24, dim=16, seed=3), store, quiet=True)
    run = "s3://acl-test/ops/run"
    job = cluster.submit("--store", store, "--out", run, *TINY, "--max-failures", "1",
                         "--set", "train.placement_strategy=STRICT_SPREAD",
                         "--set", "train.steps=80", "--set", "train.checkpoint_every=10",
                         "--set", "train.log_every=10")
    # 1. kill a training worker once round 0 has a checkpoint: one that Ray Train's
    # controller has registered (its snapshot in the bucket lists it), not merely logged;
    # killing between a report and its registration restarted the round from scratch
    cluster.wait_for_log(job, r"round 0 step [1-4]0/80")
    snapshot = f"{run}/ray_train/round_0/checkpoint_manager_snapshot.json"
    deadline = time.time() + 120
    while True:
        fs.invalidate_cache()
        if fs.exists(snapshot) and json.loads(fs.cat(snapshot)).get("checkpoint_results"):
            break
        assert time.time() < deadline, "Ray Train registered no checkpoint of round 0"
        time.sleep(0.2)
    deadline = time.time() + 30           # the State API lists actors with a short lag
    while len(workers := _train_workers(cluster)) < 2 and time.time() < deadline:
        time.sleep(0.5)
    assert len(workers) == 2 and workers[0][1] != workers[1][1], workers  # one per node
    # the second node dies whole (as a preempted spot instance: raylet, object store, its
    # training worker and whatever Ray Data ran there); a replacement joins, as the
    # autoscaler would start one, and the group restarts across both nodes
    os.killpg(cluster.procs[1].pid, signal.SIGKILL)
    cluster.add_node(cluster.node_args, cluster.node_log.with_name("replacement.log"))
    cluster.wait_for_log(job, r"round 0: training restarted, resuming from the checkpoint "
                              r"of step \d+0\b", timeout=240)
    assert len(_train_workers(cluster)) == 2
    # 2. kill the driver between rounds (after round 0's last step is recorded)
    deadline = time.time() + 400
    while True:
        fs.invalidate_cache()
        if fs.exists(f"{run}/state.json"):
            steps = json.loads(fs.cat(f"{run}/state.json"))["steps"]
            if "round_0.evaluate" in steps:
                break
        assert time.time() < deadline and cluster.status(job) == "RUNNING", cluster.logs(job)
        time.sleep(0.5)
    os.kill(_driver_pid(run), signal.SIGKILL)
    assert cluster.wait(job) in ("FAILED", "STOPPED")
    fs.invalidate_cache()
    finished = json.loads(fs.cat(f"{run}/state.json"))["steps"]
    assert "finish" not in finished
    model_etag = fs.info(f"{run}/round_0/model.pt")["ETag"]
    # 3. resume from the bucket
    resumed = cluster.submit("--resume", run)
    state = cluster.wait(resumed)
    logs = cluster.logs(resumed)
    assert state == "SUCCEEDED", logs
    assert "round 0 step" not in logs            # round 0's training was not redone
    # progress reaches `ray job logs`; Ray Data's own bars do not
    assert "test mAP (%)" in logs and "round 1 step 80/80" in logs
    assert "ReadFilesParquet" not in logs
    assert not [line for line in logs.splitlines() if is_noise(line.encode())]
    fs.invalidate_cache()
    assert fs.info(f"{run}/round_0/model.pt")["ETag"] == model_etag
    after = json.loads(fs.cat(f"{run}/state.json"))["steps"]
    for step in finished:                          # finished steps kept their records
        assert after[step] == finished[step]
    assert "finish" in after
    # every artifact is in the bucket: results, rounds, Ray Train checkpoints, TensorBoard
    names = {p[len(run.removeprefix("s3://")) + 1:] for p in fs.find(run)}
    for name in ("metrics.json", "detections.json", "state.json", "round_0/model.pt",
                 "round_0/clusters.json", "round_0/outputs.parquet", "round_1/model.pt"):
        assert name in names, sorted(names)
    assert any(n.startswith("ray_train/round_0/checkpoint_") for n in names)
    assert any(n.startswith("tensorboard/round_0/") for n in names)
    assert not any(".tmp" in n or n.endswith(".partial") for n in names)
    two = json.loads(fs.cat(f"{run}/metrics.json"))
    assert [r["round"] for r in two["rounds"]] == [0, 1, 2]
    # against the session's single-node run of the same store (same synth seed), config
    # and seed: round 0 clusters mean-pooled features, before any training: identical.
    # Later rounds depend on the workers' shards and steps, so they are compared in
    # structure, not in value.
    single_dir, code, _ = unsupervised_run
    assert code == 0
    single = _metrics(single_dir)
    assert two["rounds"][0]["nmi"] == single["rounds"][0]["nmi"]
    assert two["rounds"][0]["cluster_sizes"] == single["rounds"][0]["cluster_sizes"]
    assert [sorted(r) for r in two["rounds"]] == [sorted(r) for r in single["rounds"]]
    assert all(0.0 <= r["nmi"] <= 1.0 for r in two["rounds"])
    assert two["tiou"] == single["tiou"] and two["average"] is not None
    import torch

    with fs.open(f"{run}/round_1/model.pt") as fh:
        ckpt = torch.load(fh, weights_only=True)
    assert ckpt["run_config"]["train"]["placement_strategy"] == "STRICT_SPREAD"
    assert ckpt["run_config"]["train"]["workers"] == 2


def test_tune_job_asha_interrupt_resume_on_s3_and_best_config(cluster, s3_endpoint, tmp_path):
    import s3fs

    from acl_dist.config import load_config
    from acl_dist.synth import SynthConfig, synthesize

    fs = s3fs.S3FileSystem()
    # an easy store (the v1 generator, weaker noise): trained and untrained models differ
    # by more than a trial's seed noise, so ASHA's cutoff stops the untrained trial
    store = str(tmp_path / "store")
    synthesize(SynthConfig(classes=3, videos=24, dim=16, seed=3, difficulty=0.4, phases=1,
                           receptive_field=1), store, quiet=True)
    space = tmp_path / "space.yaml"
    # trial 0 trains, 1-2 barely move (lr ~ 0): with 2 at a time, trial 2 reaches round 1
    # after 0 and 1 have set ASHA's cutoff (their median), and stops there
    space.write_text("train.lr: {grid: [3.0e-3, 1.0e-9, 1.0e-10]}\n")
    exp = "s3://acl-test/ops/tune"
    args = ["--store", store, "--out", exp, "--num-classes", "3", "--rounds", "2",
            "--set", "train.steps=20", "--space", str(space), "--num-samples", "1"]
    job = cluster.submit(*args, script="jobs/tune_acl.py")
    # 1. interrupt the search (Ctrl-C) once a trial has reported its first round
    logs = cluster.wait_for_log(job, r"trial \w+ round 1: val_map", timeout=400)
    assert "2 at a time" in logs and "20% of the training videos are held out" in logs
    os.kill(_driver_pid(exp, "jobs/tune_acl.py"), signal.SIGINT)
    assert cluster.wait(job, timeout=180) == "FAILED"          # exit status 130
    assert "search interrupted" in cluster.logs(job)
    partial = json.loads(fs.cat(f"{exp}/summary.json"))
    assert partial["interrupted"] and partial["unfinished"]
    # 2. resume it from the bucket
    resumed = cluster.submit("--resume", exp, script="jobs/tune_acl.py")
    state = cluster.wait(resumed, timeout=900)
    logs = cluster.logs(resumed)
    assert state == "SUCCEEDED", logs
    assert "resuming the search" in logs
    # the job log holds our lines and real problems, not Ray's chatter (acl_dist.console)
    assert not [line for line in logs.splitlines() if is_noise(line.encode())]
    assert "Configuration for experiment" not in logs and "View detailed" not in logs
    assert "repeated" not in logs and "trials are ranked by validation mAP" in logs
    fs.invalidate_cache()
    meta = json.loads(fs.cat(f"{exp}/tune.json"))
    assert meta["concurrent"] == 2                   # 4 CPUs / (1 worker x 1 CPU + 1)
    summary = json.loads(fs.cat(f"{exp}/summary.json"))
    rows = summary["trials"]
    assert len(rows) == 3 and not summary["unfinished"] and summary["errors"] == 0, rows
    assert all(r["history"][0]["round"] == 1 for r in rows)   # no round reported twice
    assert all([h["round"] for h in r["history"]] == list(range(1, r["rounds"] + 1))
               for r in rows)
    stopped = [r for r in rows if r["stopped_early"]]
    assert stopped and all(r["rounds"] == 1 for r in stopped)
    import pyarrow.parquet as pq

    from acl_dist.plan import holdout_split, resolve_config
    from acl_dist.store import FeatureStore

    train_ids = {m.video_id for m in FeatureStore.open(store).metadata("validation")}
    held = holdout_split(train_ids, 0.2, seed=0)
    for row in rows:  # a stopped trial trained no further round; the others did both
        trial = f"{exp}/runs/{row['trial']}"
        steps = json.loads(fs.cat(f"{trial}/state.json"))["steps"]
        assert ("round_1.train" in steps) == (not row["stopped_early"]), (row, steps)
        # the held-out videos were neither clustered nor trained on, but localised and
        # scored; the test subset was never touched
        clusters = json.loads(fs.cat(f"{trial}/round_0/clusters.json"))["labels"]
        assert set(clusters) == train_ids - held
        with fs.open(f"{trial}/round_0/outputs.parquet") as fh:
            out = pq.read_table(fh, columns=["video_id", "subset", "descriptor",
                                             "detections"]).to_pylist()
        assert {r["subset"] for r in out} == {"validation"}
        assert {r["video_id"] for r in out if r["descriptor"]} == train_ids - held
        assert {r["video_id"] for r in out if r["detections"] != "[]"} <= held
        val = json.loads(fs.cat(f"{trial}/round_0/val.json"))
        assert val["detections"] > 0 and "held out" in val["validation"]
        assert not fs.exists(f"{trial}/round_0/eval.json")
    best = summary["best"]
    assert best["train.lr"] == 3e-3 and not best["stopped_early"]
    assert best["objective"] == max(r["objective"] for r in rows if not r["stopped_early"])
    csv_rows = fs.cat(f"{exp}/trials.csv").decode().splitlines()
    assert csv_rows[0].startswith("trial,train.lr,rounds,stopped_early,objective,val_map")
    assert len(csv_rows) == 4
    assert "spearman" in fs.cat(f"{exp}/report.html").decode().lower()
    # 3. the best config, read from the bucket, is a valid `acl-dist run --config` for the
    # store (a run of it is the same code path as any --config run: tested elsewhere)
    # the chosen config says that it was selected with labels (val_map)
    assert summary["label_use"].startswith("labels used for selection")
    assert "# labels used for selection: trials are ranked by validation mAP" in \
        fs.cat(f"{exp}/best_config.yaml").decode()
    cfg = load_config(f"{exp}/best_config.yaml")
    assert cfg.train.lr == best["train.lr"] and cfg.train.steps == 20 and cfg.rounds == 2
    assert cfg.val_fraction == 0.0   # the rerun trains on every training video
    resolved = resolve_config(load_config(f"{exp}/best_config.yaml", mode="unsupervised"),
                              FeatureStore.open(store), cpus=2)
    assert resolved.num_classes == 3 and resolved.train.lr == 3e-3
