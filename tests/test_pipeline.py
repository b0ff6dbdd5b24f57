"""The ACL rounds: a 2-round unsupervised run with 2 Ray Train workers through the CLI (one
Ray instance for the session), and the step ledger's resume without Ray."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import torch

from acl_dist import pipeline
from acl_dist.cli import main
from acl_dist.config import load_config, with_updates
from acl_dist.evaluate import load_detections
from acl_dist.resources import capacity_from


@pytest.mark.ray
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
    # rank 0 logs the global batch's terms: L_trip is live with Z = 2 on two workers (each
    # worker's own batch held one cluster before batches were global, and L_trip was 0)
    assert all(h["early/trip"] > 0 and h["early/sep"] > 0 for h in ckpt["history"])
    clusters = json.loads((run / "round_1" / "clusters.json").read_text())
    assert len(clusters["labels"]) == 24 and "stability" in clusters
    state = json.loads((run / "state.json").read_text())["steps"]
    assert list(state)[-1] == "finish" and "round_1.train" in state


class FakeSteps:
    """Stand-ins for the Ray steps of :class:`pipeline.Run`: each records its call and
    writes its artifacts (small but readable) through the run's ``RunDir``, so the ledger
    and ``--resume``'s read-back see what a real step leaves."""

    def __init__(self, monkeypatch, crash_at: str | None = None):
        self.calls: list[str] = []
        self.crash_at = crash_at
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(run, name):
            self.calls.append(name)
            if name == self.crash_at:
                raise RuntimeError(f"simulated crash in {name}")
            val, test = bool(run.split.val_ids), run.opts.with_test
            for path in run.dir.step_artifacts(name, val, test):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if path.endswith(".pt"):
                    torch.save({"model": {}, "step": name}, path)
                elif path.endswith(".parquet"):
                    pq.write_table(pa.table({"video_id": ["v"]}), path)
                else:
                    with open(path, "w") as fh:
                        json.dump(stand_in(run, path, name), fh)
            return {}

        def stand_in(run, path: str, name: str) -> dict:
            """The smallest file its schema accepts with every key its readers require
            (a clustering labels the training videos), so --resume's read-back is real."""
            base = os.path.basename(path)
            if base == "clusters.json":
                return {"labels": {m.video_id: 0 for m in run.split.train}, "step": name}
            if base.startswith("detections"):
                return {"results": {}, "step": name}
            return {"rounds": [], "step": name}

        monkeypatch.setattr(pipeline.Run, "step_descriptors0",
                            lambda self: write(self, "round_0.descriptors"))
        for kind in ("cluster", "train", "attention"):
            monkeypatch.setattr(pipeline.Run, f"step_{kind}",
                                lambda self, r, kind=kind: write(self, f"round_{r}.{kind}"))
        monkeypatch.setattr(pipeline.RunResults, "evaluate",
                            lambda results, r: write(self.run, f"round_{r}.evaluate"))
        monkeypatch.setattr(pipeline.Run, "step_finish", lambda self: write(self, "finish"))
        # the rounds whose training would start early (during the steps before them)
        self.early: list[int] = []
        monkeypatch.setattr(pipeline.RoundTrainings, "start",
                            lambda trainings, r, videos: self.early.append(r))
        # the stand-ins' files hold no numbers to plot
        monkeypatch.setattr(pipeline.RunResults, "board_points", lambda self, step: None)
        original = pipeline.Run.execute

        def execute(run, resume=False):
            self.run = run
            return original(run, resume)
        monkeypatch.setattr(pipeline.Run, "execute", execute)
        monkeypatch.setattr(pipeline.ray_start, "init_ray", lambda **kw: None)
        # sized as on this 2-core machine whatever the host (early starts need room)
        monkeypatch.setattr(pipeline.resources, "machine_cores", lambda: 2)
        monkeypatch.setattr(pipeline.ray_start, "cluster_capacity",
                            lambda quiet=False: capacity_from({"CPU": 4.0}, [], False))


SCHEDULE = ["round_0.descriptors", "round_0.cluster",
            "round_0.train", "round_0.attention", "round_0.evaluate", "round_1.cluster",
            "round_1.train", "round_1.attention", "round_1.evaluate", "round_2.cluster",
            "finish"]


def test_resume_reruns_the_interrupted_step_only(tiny_store, tmp_path, monkeypatch):
    """The step ledger without Ray (the steps are stand-ins): an interrupted run keeps its
    finished steps, a new run into it is refused, ``--resume`` runs the interrupted step and
    what follows, in the schedule's order, and a finished step whose file is lost is rerun
    with every step after it."""
    store, _ = tiny_store
    run = str(tmp_path / "run")
    cfg = load_config("tiny", mode="unsupervised", num_classes=4)
    steps = FakeSteps(monkeypatch, crash_at="round_1.attention")
    with pytest.raises(RuntimeError, match="simulated crash in round_1.attention"):
        pipeline.run_acl(store, run, cfg, quiet=True)
    assert steps.calls == SCHEDULE[:SCHEDULE.index("round_1.attention") + 1]
    assert steps.early == [0, 1]       # before round 0's descriptors, after round 0's training
    state = json.loads(open(os.path.join(run, "state.json")).read())["steps"]
    assert list(state) == SCHEDULE[:SCHEDULE.index("round_1.attention")]
    model_time = os.path.getmtime(os.path.join(run, "round_0", "model.pt"))
    with pytest.raises(Exception, match="already holds a run"):
        pipeline.run_acl(store, run, cfg, quiet=True)
    assert json.loads(open(os.path.join(run, "state.json")).read())["steps"] == state

    steps.calls.clear()
    steps.early.clear()
    steps.crash_at = None
    pipeline.run_acl(store, run, None, resume=True, quiet=True)
    assert steps.calls == SCHEDULE[SCHEDULE.index("round_1.attention"):]
    assert steps.early == []           # both rounds were trained before the interrupt
    assert os.path.getmtime(os.path.join(run, "round_0", "model.pt")) == model_time
    done = json.loads(open(os.path.join(run, "state.json")).read())["steps"]
    assert list(done) == SCHEDULE
    assert {k: done[k] for k in state} == state            # finished records kept

    # a finished run resumed again: nothing to do
    steps.calls.clear()
    pipeline.run_acl(store, run, None, resume=True, quiet=True)
    assert steps.calls == []
    # round 0's model lost: its training and every step after it run again
    os.unlink(os.path.join(run, "round_0", "model.pt"))
    steps.early.clear()
    pipeline.run_acl(store, run, None, resume=True, quiet=True)
    assert steps.calls == SCHEDULE[SCHEDULE.index("round_0.train"):]
    assert steps.early == [0, 1]


@pytest.mark.ray
def test_no_label_reaches_an_unsupervised_run(ray_session, tiny_store, tmp_path):
    """A one-round unsupervised run (its clustering, training, attention pass and the next
    round's clustering) on the tiny store and on a copy that differs only in every video's
    labels (permuted to the next class): the same clusters, bitwise-equal checkpoints and
    the same descriptors and raw detections. Only what is scored with the labels (the
    cluster -> class mappings, mAP) may differ. One training worker: with two, Ray Data's
    split of the videos between the workers varies from run to run."""
    import io
    from contextlib import redirect_stdout

    import pyarrow.parquet as pq
    from store_helpers import relabelled

    stores = {"labels": tiny_store[0],
              "permuted": relabelled(tiny_store[0], str(tmp_path / "permuted"),
                                     lambda rec: True)}
    runs = {}
    for name, store in stores.items():
        runs[name] = tmp_path / f"run-{name}"
        with redirect_stdout(io.StringIO()):
            # two rounds on the labelled store: the early start of round 1 (during round
            # 0's attention pass) is compared below too
            rounds = "2" if name == "labels" else "1"
            assert main(["run", "--store", store, "--out", str(runs[name]), "--mode",
                         "unsupervised", "--num-classes", "4", "--config", "tiny",
                         "--rounds", rounds, "--set", "train.workers=1", "--quiet"]) == 0
    a, b = runs["labels"], runs["permuted"]

    def clusters(d, r):
        return json.loads((d / f"round_{r}" / "clusters.json").read_text())

    # the labels did reach what is scored with them: the mappings name other classes
    assert clusters(a, 0)["mapping"] != clusters(b, 0)["mapping"]
    for r in (0, 1):
        assert clusters(a, r)["labels"] == clusters(b, r)["labels"], r
    ca, cb = (torch.load(d / "round_0" / "model.pt", weights_only=True) for d in (a, b))
    assert ca["model"].keys() == cb["model"].keys()
    assert all(torch.equal(ca["model"][k], cb["model"][k]) for k in ca["model"])
    columns = ["video_id", "descriptor", "detections"]
    ta, tb = (pq.read_table(d / "round_0" / "outputs.parquet", columns=columns)
              .sort_by("video_id") for d in (a, b))
    assert ta.num_rows > 0 and ta.equals(tb)

    # the same run with each training started at its step, not during the steps before
    # it (:class:`acl_dist.ray_train.EarlyTraining`): the same models, bit for bit
    late = tmp_path / "run-late"
    cfg = load_config("tiny", ["train.workers=1"], mode="unsupervised", num_classes=4)
    pipeline.new_run(stores["labels"], str(late), with_updates(cfg, rounds=2),
                     pipeline.RunOptions(quiet=True, early_training=False)).execute()
    for r in (0, 1):
        trained = {d: json.loads((d / "state.json").read_text())["steps"][f"round_{r}.train"]
                   for d in (a, late)}
        assert trained[a]["started_early"] and not trained[late]["started_early"]
        ce, cl = (torch.load(d / f"round_{r}" / "model.pt", weights_only=True)
                  for d in (a, late))
        assert all(torch.equal(ce["model"][k], cl["model"][k]) for k in ce["model"]), r
        assert clusters(late, r + 1)["labels"] == clusters(a, r + 1)["labels"]


def test_an_early_training_that_fails_its_hand_over_is_cancelled_at_close(tmp_path):
    """Labels that do not match the videos an early fit started on (or an interrupt while
    handing them over) leave the fit in the run's trainings: closing them cancels it."""
    from acl_dist.artifacts import RunDir
    from acl_dist.ray_train import RoundTrainings

    class Early:
        running, cancelled = False, 0

        def result(self, labels):
            raise ValueError("round 0: labels for 1 videos, the training started on 2")

        def cancel(self):
            self.cancelled += 1

    trainings = RoundTrainings(None, load_config("tiny"), RunDir(str(tmp_path)), [])
    early = trainings._early[0] = Early()
    with pytest.raises(ValueError, match="labels for 1 videos"):
        trainings.train(0, {"v1": [0]})
    trainings.close()
    assert early.cancelled == 1 and trainings._early == {}


@pytest.mark.ray
def test_a_run_stopped_before_its_labels_leaves_no_training_behind(ray_session, tiny_store,
                                                                   tmp_path, monkeypatch):
    """Round 0's training starts with the descriptors; the clustering then fails. The
    error is the clustering's; the early fit is cancelled (its workers return untrained:
    no checkpoint), its thread ends and its labels' inbox actor is gone."""
    import threading

    from acl_dist.errors import StoreError

    def broken(self, r):
        time.sleep(2)   # the early fit is starting: its controller and workers come up
        raise StoreError("shard x.parquet: simulated unreadable row group")
    monkeypatch.setattr(pipeline.Run, "step_cluster", broken)
    cfg = load_config("tiny", ["train.workers=1"], mode="unsupervised", num_classes=4)
    run = pipeline.new_run(tiny_store[0], str(tmp_path / "run"), cfg,
                           pipeline.RunOptions(quiet=True))
    assert run.plan["train"]["early_start"]
    inboxes = []
    start = pipeline.RoundTrainings.start

    def spy(trainings, *a, **k):
        start(trainings, *a, **k)
        inboxes.append(trainings._inbox)
    monkeypatch.setattr(pipeline.RoundTrainings, "start", spy)
    t0 = time.perf_counter()
    with pytest.raises(StoreError, match="simulated unreadable"):
        run.execute()
    assert time.perf_counter() - t0 < 60
    assert len(inboxes) == 1
    assert not [t for t in threading.enumerate() if t.name.startswith("acl-dist-train")]
    assert not list((tmp_path / "run" / "ray_train").glob("round_0/checkpoint_*"))
    with pytest.raises(ray_session.exceptions.RayActorError):
        ray_session.get(inboxes[0].get.remote(0), timeout=30)


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


@pytest.mark.ray
def test_tensorboard_events_per_round(unsupervised_run):
    run, _, _ = unsupervised_run
    for r in (0, 1):
        scalars = read_scalars(run / "tensorboard" / f"round_{r}")
        # one early-fused network (model.fusion's default); late fusion logs rgb/ and flow/
        assert {f"round_{r}/early/cls", f"round_{r}/early/sep", f"round_{r}/early/trip",
                f"round_{r}/train/lr", f"round_{r}/train/videos_per_s"} <= set(scalars)
        assert [step for step, _ in scalars[f"round_{r}/train/loss"]] == [3, 6]
        assert all(v > 0 for _, v in scalars[f"round_{r}/train/loss"])
    # one point per round: clustering quality (rounds 0-2) and mAP (rounds 0-1), the
    # numbers of metrics.json
    points = read_scalars(run / "tensorboard" / "rounds")
    rounds = json.loads((run / "metrics.json").read_text())["rounds"]
    def steps_values(tag):
        return [s for s, _ in points[tag]], [v for _, v in points[tag]]

    steps, nmi = steps_values("clustering/nmi")
    assert steps == [0, 1, 2] and nmi == pytest.approx([r["nmi"] for r in rounds])
    assert steps_values("clustering/purity")[0] == [0, 1, 2]
    assert steps_values("clustering/stability")[0] == [1, 2]
    steps, average = steps_values("test/map_avg")
    assert steps == [0, 1] and average == pytest.approx([r["test_average"]
                                                         for r in rounds[:2]])
    assert steps_values("test/map50")[0] == [0, 1]


def test_an_event_file_leaves_no_temporary_directory(tmp_path):
    """Unnamed in a local run, events are written in place (a killed worker leaves its
    file in the run, nothing in /tmp); named (or on S3), written in a temporary directory, copied
    whole by close() and the directory removed, or removed with the object when a worker
    stops without close()."""
    import gc
    import tempfile

    from acl_dist.board import EventFile

    def temporaries():
        return set(Path(tempfile.gettempdir()).glob("acl-tb-*"))

    before = temporaries()
    direct = EventFile(str(tmp_path / "round_0"))
    direct.add("train/loss", 0.25, 3)
    assert temporaries() == before and len(list((tmp_path / "round_0").iterdir())) == 1
    direct.close()
    assert read_scalars(tmp_path / "round_0") == {"train/loss": [(3, 0.25)]}
    named = EventFile(str(tmp_path / "rounds"), "events.tfevents.a")
    named.add("test/map_avg", 0.5, 1)
    local = Path(named.local)
    assert local.exists() and not (tmp_path / "rounds").exists()
    named.close()
    assert not local.exists()
    assert read_scalars(tmp_path / "rounds") == {"test/map_avg": [(1, 0.5)]}
    dropped = EventFile(str(tmp_path / "other"), "events.tfevents.b")
    local = Path(dropped.local)
    del dropped
    gc.collect()
    assert not local.exists() and not (tmp_path / "other").exists()


def test_a_killed_writers_event_directory_is_reaped(tmp_path):
    """A temporary event directory whose process is gone (SIGKILL runs no cleanup) is
    removed by the next EventFile; a living process's, and other names, are kept."""
    import subprocess
    import sys

    from acl_dist.board import PREFIX, reap_abandoned

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    abandoned = tmp_path / f"{PREFIX}{dead}-x1"
    alive = tmp_path / f"{PREFIX}{os.getpid()}-x2"
    other = tmp_path / f"{PREFIX}notapid"
    for d in (abandoned, alive, other):
        d.mkdir()
        (d / "events.out.tfevents.1").write_bytes(b"")
    assert reap_abandoned(str(tmp_path)) == [str(abandoned)]
    assert not abandoned.exists() and alive.exists() and other.exists()


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


@pytest.mark.ray
def test_report_opens_in_a_browser_with_every_image(unsupervised_run, tmp_path, capsys):
    run, _, _ = unsupervised_run
    assert main(["report", str(run), "--videos", "3"]) == 0
    page = run / "report.html"
    assert capsys.readouterr().out.strip() == str(page)
    text = page.read_text()
    for heading in ("Detection mAP", "Rounds", "Plan", "Clusters of round 1", "Test videos"):
        assert heading in text
    assert "plan on local Ray instance" in text and "training: 2 Ray Train worker(s)" in text
    assert "Scored against <code>" in text and "gt.json</code> on all 23 videos of subset " \
        "&#x27;test&#x27;" in text                       # the synthetic store: every video
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
