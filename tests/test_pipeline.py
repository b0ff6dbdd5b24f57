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


def test_two_rounds_unsupervised_with_two_workers(unsupervised_run):
    run, code, out = unsupervised_run
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
    ckpt = torch.load(run / "round_1" / "model.pt", weights_only=True)
    assert ckpt["run_config"]["train"]["workers"] == 2 and ckpt["num_classes"] == 4
    assert ckpt["model_config"]["base_dim"] == 32  # the config travels with the weights
    assert len(ckpt["history"]) == 2  # steps 3 and 6 of the tiny preset
    assert all(0 < h["worker_videos"] < 24 for h in ckpt["history"])  # rank 0's shard
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


def read_scalars(folder):
    """tag -> [(step, value)] from TensorBoard event files (TFRecord framing: length,
    length CRC, an Event protobuf, its CRC), read with tensorboardX's own protobufs."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    out = {}
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_events_per_round(unsupervised_run):
    run, _, _ = unsupervised_run
    for r in (0, 1):
        scalars = read_scalars(run / "tensorboard" / f"round_{r}")
        # one early-fused network (model.fusion's default); late fusion logs rgb/ and flow/
        assert {f"round_{r}/early/cls", f"round_{r}/early/sep", f"round_{r}/early/trip",
                f"round_{r}/train/lr", f"round_{r}/train/videos_per_s"} <= set(scalars)
        assert [step for step, _ in scalars[f"round_{r}/train/loss"]] == [3, 6]
        assert all(v > 0 for _, v in scalars[f"round_{r}/train/loss"])


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--enable-logging=stderr",
                  "--v=0", "--virtual-time-budget=10000"]


def render(path, tmp_path):
    """Load a page in headless Chromium: (DOM after load, console lines)."""
    import shutil
    import subprocess

    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("Debian's chromium is needed for the report test (.ci/run installs it)")
    proc = subprocess.run([exe, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                           "--dump-dom", f"file://{path}"], capture_output=True, text=True,
                          timeout=120)
    console = [ln for ln in proc.stderr.splitlines() if ":CONSOLE" in ln]  # INFO:CONSOLE:1] "..."
    return proc.stdout, console


def test_report_opens_in_a_browser_with_every_image(unsupervised_run, tmp_path, capsys):
    run, _, _ = unsupervised_run
    assert main(["report", str(run), "--videos", "3"]) == 0
    page = run / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    for heading in ("Detection mAP", "Rounds", "Clusters of round 1", "Test videos"):
        assert heading in text
    assert "src='data:image/png;base64," in text and "http" not in text.split("<body>")[1]
    pngs = sorted(p.name for p in (run / "report_files").iterdir())
    assert {"rounds.png", "confusion.png", "clusters.png"} <= set(pngs)
    dom, console = render(page, tmp_path)
    expected = 3 + sum(name.startswith("video_") for name in pngs)
    assert f'data-images="ok:{expected}"' in dom
    assert console == []
    # the check itself can fail: a broken image and a script error are caught
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace("data:image/png;base64,", "data:image/png;base64,AAAA", 1)
                      .replace("</body>", "<script>noSuchFunction()</script></body>"))
    dom, console = render(broken, tmp_path)
    assert 'data-images="broken"' in dom and any("noSuchFunction" in c for c in console)
