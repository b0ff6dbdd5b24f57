"""The ACL rounds on Ray: a 2-round unsupervised run with 2 Ray Train workers through the
CLI, and resume after an interrupted step. One Ray instance for the session."""

from __future__ import annotations

import json
import os

import pytest
import torch

from acl_dist import pipeline
from acl_dist.cli import main
from acl_dist.config import load_config
from acl_dist.evaluate import load_detections

pytestmark = pytest.mark.ray


def test_two_rounds_unsupervised_with_two_workers(ray_session, tiny_store, tmp_path, capsys):
    store, _ = tiny_store
    run = tmp_path / "run"
    code = main(["run", "--store", store, "--out", str(run), "--mode", "unsupervised",
                 "--num-classes", "4", "--config", "tiny", "--set", "train.workers=2",
                 "--set", "train.cpus_per_worker=0.5", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "test mAP (%)" in out and "NMI" in out
    metrics = json.loads((run / "metrics.json").read_text())
    # the metrics contract (DESIGN.md)
    for key in ("mode", "label_map", "tiou", "map", "average", "rounds"):
        assert key in metrics
    assert metrics["mode"] == "unsupervised" and metrics["label_map"] == "hungarian"
    assert metrics["tiou"] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert len(metrics["map"]) == 7 and 0.0 <= metrics["average"] <= 100.0
    rounds = metrics["rounds"]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["clustering_only"]
    for r in rounds:
        assert {"nmi", "ari", "purity", "seconds"} <= set(r)
    assert {"descriptors", "cluster", "train", "attention", "evaluate"} <= set(
        rounds[0]["seconds"])
    # detections: cluster names (no --label-map given), ActivityNet JSON, test videos only
    dets = load_detections(str(run / "detections.json"))
    assert dets and all(d.label.startswith("cluster_") for d in dets)
    mapped = load_detections(str(run / "detections_hungarian.json"))
    assert all(not d.label.startswith("cluster_") for d in mapped)
    # two workers: each trained on its own shard, and the shards cover the training set
    ckpt = torch.load(run / "round_1" / "model.pt", weights_only=False)
    assert ckpt["run_config"]["train"]["workers"] == 2 and ckpt["num_classes"] == 4
    assert ckpt["model_config"]["base_dim"] == 32  # the config travels with the weights
    assert all(h["worker_videos"] < 24 for h in ckpt["history"])
    clusters = json.loads((run / "round_1" / "clusters.json").read_text())
    assert len(clusters["labels"]) == 24 and "stability" in clusters
    state = json.loads((run / "state.json").read_text())["steps"]
    assert list(state)[-1] == "finish" and "round_1.train" in state


def test_resume_reruns_the_interrupted_step_only(ray_session, tiny_store, tmp_path,
                                                 monkeypatch):
    store, _ = tiny_store
    run = str(tmp_path / "run")
    cfg = load_config("tiny", mode="weak")
    original = pipeline.Run.step_attention

    def crash(self, r):
        raise RuntimeError("simulated crash during the attention pass")

    monkeypatch.setattr(pipeline.Run, "step_attention", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline.run_acl(store, run, cfg, quiet=True)
    state = json.loads(open(os.path.join(run, "state.json")).read())["steps"]
    assert "round_0.train" in state and "round_0.attention" not in state
    model_time = os.path.getmtime(os.path.join(run, "round_0", "model.pt"))
    # A new run into the same directory is refused; --resume continues it.
    with pytest.raises(Exception, match="already holds a run"):
        pipeline.run_acl(store, run, cfg, quiet=True)

    calls = []
    monkeypatch.setattr(pipeline.Run, "step_attention",
                        lambda self, r: calls.append(r) or original(self, r))
    monkeypatch.setattr(pipeline.Run, "step_train",
                        lambda self, r: pytest.fail("a finished step was recomputed"))
    metrics = pipeline.run_acl(store, run, None, resume=True, quiet=True)
    assert calls == [0]
    assert os.path.getmtime(os.path.join(run, "round_0", "model.pt")) == model_time
    assert metrics["mode"] == "weak" and metrics["label_map"] is None
    assert {d.label for d in load_detections(os.path.join(run, "detections.json"))} <= set(
        json.loads(open(os.path.join(store, "manifest.json")).read())["classes"])
