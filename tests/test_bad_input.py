"""Bad input and faults, as a user meets them: one line naming the file, video or key, the
CLI's exit code (2: a bad option, 1: a bad input or fault, 130: interrupted), no
traceback, nothing half-written accepted afterwards, existing data never lost, and nothing
unpickled from a run directory or checkpoint.

Most cases run the CLI in this process without Ray. The run-directory cases share the
session's finished unsupervised run (``conftest.unsupervised_run``), copied per case; only
the resume-after-a-lost-model case trains again.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from acl_dist import fsutil
from acl_dist.cli import main
from acl_dist.errors import ArtifactError
from acl_dist.resources import capacity_from
from acl_dist.store import FeatureStore
from acl_dist.synth import SynthConfig, synthesize
from store_helpers import SMALL, small_store



# --------------------------------------------------------------------------- helpers


class Payload:
    """A pickle that creates ``marker`` when unpickled unsafely (what an attacker plants)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def plant(path: Path, marker: Path) -> None:
    """Replace a checkpoint with one whose unpickling would run code."""
    torch.save({"model": Payload(marker), "step": 1, "history": []}, path)


def cli(capsys, argv: list[str]) -> tuple[int, str, str]:
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:   # argparse's exit on a bad option, as the shell sees it
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str, pattern: str) -> str:
    """The stderr of a failed command: exactly one line, matching ``pattern``. Lines the
    CLI's output filter drops (:func:`acl_dist.console.is_noise`) do not count: in this
    process the driver's Ray logging reaches pytest's capture, not the filtered fds."""
    from acl_dist.console import is_noise

    lines = [ln for ln in err.strip().splitlines()
             if ln.strip() and not is_noise(ln.encode())]
    assert "Traceback" not in err, err
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    import re

    assert re.search(pattern, lines[0]), f"{pattern!r} not in {lines[0]!r}"
    return lines[0]


@dataclass
class World:
    """Paths the cases work on; ``run`` is a fresh copy of the session's finished run."""

    tmp: Path
    store: str
    layout: Path
    make_run: Callable[[], Path]
    start_ray: Callable[[], None] = lambda: None

    def copy_layout(self) -> Path:
        dst = self.tmp / f"layout-{len(list(self.tmp.iterdir()))}"
        shutil.copytree(self.layout, dst)
        return dst


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small store and the same videos in the npy-split layout (no Ray)."""
    return small_store(tmp_path_factory.mktemp("bad-input"))


@pytest.fixture
def world(small, tmp_path, request):
    store, layout = small

    def make_run() -> Path:
        run, code, out = request.getfixturevalue("unsupervised_run")
        assert code == 0, out
        dst = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
        shutil.copytree(run, dst)
        return dst

    return World(tmp_path, store, layout, make_run,
                 lambda: request.getfixturevalue("ray_session"))


def first_video(layout: Path, subset: str = "train") -> Path:
    folder = layout / "features"
    sub = sorted(p.name for p in folder.iterdir())[0] if subset == "train" else subset
    return sorted((folder / sub / "rgb").iterdir())[0]


def store_manifest(path: str) -> dict:
    return json.loads(Path(path, "manifest.json").read_text())


def forget_from(run: Path, step: str) -> None:
    """Mark ``step`` and every step after it unfinished (as an interrupted run leaves it)."""
    state = json.loads((run / "state.json").read_text())
    names = list(state["steps"])
    state["steps"] = {k: v for k, v in state["steps"].items()
                      if names.index(k) < names.index(step)}
    (run / "state.json").write_text(json.dumps(state))


def no_detections_file(run: Path) -> None:
    (run / "detections.json").unlink(missing_ok=True)


# --------------------------------------------------------------------------- the table
# Each case: (id, setup(world) -> (argv, check_after)), exit code, regex of the one line.
# ``check_after(world)`` asserts what must hold afterwards (nothing half-written, old data
# intact, no payload run). Cases that need the session's Ray run are marked ``ray``.


def _ingest(w: World, layout: Path, out: Path | str, *extra) -> list:
    return ["ingest", "--layout", "npy-split", "--root", layout, "--out", out, "--quiet", *extra]


def _no_store(out: Path) -> Callable[[World], None]:
    def check(w: World) -> None:
        assert not out.exists() or not (out / "manifest.json").exists()
        assert not list(out.parent.glob(f".{out.name}.tmp-*"))   # no temporary left
    return check


def case_ingest_missing_root(w):
    out = w.tmp / "s"
    return _ingest(w, w.tmp / "nowhere", out), _no_store(out)


def case_ingest_nan_feature(w):
    layout = w.copy_layout()
    f = first_video(layout)
    arr = np.load(f)
    arr[3, 2] = np.nan
    np.save(f, arr)
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_truncated_npy(w):
    layout = w.copy_layout()
    f = first_video(layout)
    f.write_bytes(f.read_bytes()[:100])
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_missing_flow(w):
    layout = w.copy_layout()
    f = first_video(layout)
    (f.parent.parent / "flow" / f.name).unlink()
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_gt_not_json(w):
    layout = w.copy_layout()
    (layout / "gt.json").write_text("{not json")
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_segment_not_numbers(w):
    # a reversed or out-of-video segment is evaluation data, kept and recorded
    # (test_ingest.py); a segment that is not two numbers cannot be read at all
    layout = w.copy_layout()
    gt = json.loads((layout / "gt.json").read_text())
    vid, entry = next((v, e) for v, e in gt["database"].items() if e["annotations"])
    entry["annotations"][0]["segment"] = ["start", 3.0]
    (layout / "gt.json").write_text(json.dumps(gt))
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_wrong_dim(w):
    layout = w.copy_layout()
    f = first_video(layout)
    np.save(f, np.zeros((np.load(f).shape[0], 3), np.float32))
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_overwrite_refuses_other_directory(w):
    out = w.tmp / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")

    def check(w):
        assert (out / "thesis.tex").read_text() == "years of work"
    return _ingest(w, w.layout, out, "--overwrite"), check


def case_ingest_existing_without_overwrite(w):
    out = w.tmp / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep")

    def check(w):
        assert (out / "notes.txt").read_text() == "keep"
    return _ingest(w, w.layout, out), check


def case_ingest_failed_overwrite_keeps_old_store(w):
    out = w.tmp / "store"
    shutil.copytree(w.store, out)
    before = store_manifest(str(out))
    layout = w.copy_layout()
    f = first_video(layout)
    arr = np.load(f)
    arr[0, 0] = np.inf
    np.save(f, arr)

    def check(w):
        assert store_manifest(str(out)) == before
        assert FeatureStore.open(str(out)).num_videos() == sum(
            s["videos"] for s in before["subsets"].values())
        assert not list(w.tmp.glob(".store.tmp-*"))
    return _ingest(w, layout, out, "--overwrite"), check


def case_ingest_out_under_a_file(w):
    (w.tmp / "afile").write_text("x")
    return _ingest(w, w.layout, w.tmp / "afile" / "store"), lambda w: None


def case_ingest_disk_full(w, monkeypatch):
    out = w.tmp / "s"

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(fsutil, "write_bytes_atomic", full)
    return _ingest(w, w.layout, out), _no_store(out)


def case_ingest_wtalc_needs_allow_pickle(w):
    root = w.tmp / "wtalc"
    root.mkdir()
    np.save(root / "Thumos14reduced-I3D-JOINTFeatures.npy",
            np.array([np.zeros((3, 4)), np.zeros((2, 4))], dtype=object), allow_pickle=True)
    (root / "Thumos14reduced-Annotations").mkdir()
    out = w.tmp / "s"
    return ["ingest", "--layout", "wtalc", "--root", root, "--out", out, "--quiet"], \
        _no_store(out)


def case_ingest_unknown_class(w):
    layout = w.copy_layout()
    classes = w.tmp / "classes.txt"
    gt = json.loads((layout / "gt.json").read_text())
    labels = sorted({a["label"] for e in gt["database"].values() for a in e["annotations"]})
    classes.write_text("\n".join(labels[1:]) + "\n")   # one class missing from the list
    out = w.tmp / "s"
    return _ingest(w, layout, out, "--classes", classes), _no_store(out)


def _synth(out, *extra) -> list:
    return ["synth", "--out", out, "--classes", "3", "--videos", "6", "--dim", "8",
            "--no-report", "--quiet", *extra]


def case_synth_overwrite_refuses_other_directory(w):
    out = w.tmp / "data"
    out.mkdir()
    (out / "results.csv").write_text("1,2,3")

    def check(w):
        assert (out / "results.csv").read_text() == "1,2,3"
    return _synth(out, "--overwrite"), check


def case_synth_npy_layout_refuses_other_directory(w):
    layout = w.tmp / "mine"
    layout.mkdir()
    (layout / "paper.pdf").write_text("pdf")
    out = w.tmp / "s"

    def check(w):
        assert (layout / "paper.pdf").exists()
        _no_store(out)(w)
    return _synth(out, "--npy-layout", layout, "--overwrite"), check


def case_synth_disk_full(w, monkeypatch):
    out = w.tmp / "s"

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(fsutil, "write_bytes_atomic", full)
    return _synth(out), _no_store(out)


def _run(w: World, out, *extra) -> list:
    return ["run", "--store", w.store, "--out", out, "--mode", "unsupervised",
            "--num-classes", "3", "--config", "tiny", "--quiet", *extra]


def _no_run(out: Path) -> Callable[[World], None]:
    def check(w: World) -> None:
        assert not (out / "config.yaml").exists() and not (out / "run.json").exists()
    return check


def case_run_missing_config_file(w):
    out = w.tmp / "r"
    return _run(w, out, "--config", w.tmp / "nope.yaml"), _no_run(out)


def case_run_config_not_a_mapping(w):
    out = w.tmp / "r"
    (w.tmp / "list.yaml").write_text("- 1\n- 2\n")
    return _run(w, out, "--config", w.tmp / "list.yaml"), _no_run(out)


def case_run_missing_store(w):
    out = w.tmp / "r"
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(w.tmp / "no-store")
    return argv, _no_run(out)


def case_run_store_without_manifest(w):
    out = w.tmp / "r"
    half = w.tmp / "half"
    shutil.copytree(w.store, half)
    (half / "manifest.json").unlink()   # an interrupted write
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(half)
    return argv, _no_run(out)


def case_run_store_manifest_corrupt(w):
    out = w.tmp / "r"
    bad = w.tmp / "bad"
    shutil.copytree(w.store, bad)
    (bad / "manifest.json").write_text('{"format": "acl-dist-st')
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(bad)
    return argv, _no_run(out)


def case_run_store_truncated_shard(w):
    out = w.tmp / "r"
    bad = w.tmp / "bad"
    shutil.copytree(w.store, bad)
    shard = sorted(bad.glob("shards/*/part-*.parquet"))[0]
    shard.write_bytes(shard.read_bytes()[:1000])
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(bad)
    return argv, _no_run(out)


def case_run_store_of_other_format(w):
    out = w.tmp / "r"
    other = w.tmp / "other"
    other.mkdir()
    (other / "manifest.json").write_text('{"format": "something-else"}')
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(other)
    return argv, _no_run(out)


def case_run_empty_validation_split_leaves_no_config(w, monkeypatch):
    # a run refused while its plan is checked writes nothing: the corrected rerun is free
    out = w.tmp / "r"
    _local_capacity(monkeypatch)
    return _run(w, out, "--set", "val_fraction=0.001"), _no_run(out)


def case_run_no_mode(w):
    out = w.tmp / "r"
    argv = _run(w, out)
    i = argv.index("--mode")
    del argv[i:i + 2]
    return argv, _no_run(out)


def case_run_out_under_a_file(w, monkeypatch):
    (w.tmp / "afile").write_text("x")
    _local_capacity(monkeypatch)
    return _run(w, w.tmp / "afile" / "run"), lambda w: None


def case_run_disk_full(w, monkeypatch):
    out = w.tmp / "r"
    _local_capacity(monkeypatch)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    monkeypatch.setattr(fsutil, "write_bytes_atomic", full)
    return _run(w, out), _no_run(out)


def case_run_existing_run_needs_resume(w):
    run = w.make_run()
    state = (run / "state.json").read_text()

    def check(w):
        assert (run / "state.json").read_text() == state
    return _run(w, run), check


LOCAL_2_CORES = capacity_from({"CPU": 4.0}, [], on_cluster=False)


def _local_capacity(monkeypatch):
    """Size runs for this machine without starting Ray (the cases stop before training)."""
    from acl_dist import ray_start

    monkeypatch.setattr(ray_start, "cluster_capacity", lambda quiet=False: LOCAL_2_CORES)


def case_run_started_but_no_step_finished_is_rerun(w, monkeypatch):
    # config.yaml + run.json of an attempt that never finished a step must not block a
    # rerun: it gets as far as running the steps (stopped here by a stand-in)
    from acl_dist import pipeline
    from acl_dist.errors import AclDistError

    out = w.tmp / "r"
    out.mkdir()
    (out / "config.yaml").write_text("mode: unsupervised\n")
    (out / "run.json").write_text('{"store": "elsewhere"}')
    _local_capacity(monkeypatch)

    def reached(self, resume=False):
        raise AclDistError("reached the steps")
    monkeypatch.setattr(pipeline.Run, "execute", reached)

    def check(w):
        assert json.loads((out / "run.json").read_text())["store"] == w.store
    return _run(w, out), check


def case_run_interrupted_says_how_to_resume(w, monkeypatch):
    from acl_dist import pipeline

    out = w.tmp / "r"
    _local_capacity(monkeypatch)

    def interrupt(self, resume=False):
        raise KeyboardInterrupt
    monkeypatch.setattr(pipeline.Run, "execute", interrupt)
    return _run(w, out), lambda w: None


def _failing_steps(w: World, monkeypatch, error: BaseException) -> list:
    """A run whose steps fail with ``error`` (what Ray hands the driver)."""
    from acl_dist import pipeline

    _local_capacity(monkeypatch)

    def fail(self, resume=False):
        raise error
    monkeypatch.setattr(pipeline.Run, "execute", fail)
    return _run(w, w.tmp / "r")


def case_run_training_worker_disk_full(w, monkeypatch):
    from ray.train.v2.api.exceptions import WorkerGroupError

    err = WorkerGroupError("rank 0: Traceback (most recent call last): ...", {
        0: OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/data/run/ray_train/round_0")})
    return _failing_steps(w, monkeypatch, err), lambda w: None


def case_run_ray_task_read_only_disk(w, monkeypatch):
    from ray.exceptions import RayTaskError

    err = RayTaskError("write_dataset", "Traceback (most recent call last):\n  ...",
                       OSError(errno.EROFS, os.strerror(errno.EROFS), "/ro/run/round_0"))
    return _failing_steps(w, monkeypatch, err), lambda w: None


def case_ingest_interrupted(w, monkeypatch):
    out = w.tmp / "s"
    real = np.load
    calls = []

    def interrupt(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(np, "load", interrupt)
    return _ingest(w, w.layout, out), _no_store(out)


def _resume(run: Path, *extra) -> list:
    return ["run", "--resume", run, "--quiet", *extra]


def case_resume_with_set(w):
    run = w.make_run()
    return _resume(run, "--set", "train.lr=0.1"), lambda w: None


def case_resume_with_rounds(w):
    run = w.make_run()
    return _resume(run, "--rounds", "5"), lambda w: None


def case_resume_with_config(w):
    run = w.make_run()
    return _resume(run, "--config", "paper"), lambda w: None


def case_resume_not_a_run(w):
    (w.tmp / "empty").mkdir()
    return _resume(w.tmp / "empty"), lambda w: None


def case_resume_other_store(w):
    run = w.make_run()
    return _resume(run, "--store", w.store), lambda w: None


def case_resume_state_corrupt(w):
    run = w.make_run()
    (run / "state.json").write_text('{"steps": {"round_0.train"')
    return _resume(run), lambda w: None


def _payload_check(marker: Path) -> Callable[[World], None]:
    def check(w: World) -> None:
        assert not marker.exists(), "the planted pickle ran"
    return check


def case_resume_planted_model(w):
    run = w.make_run()
    marker = w.tmp / "PWNED"
    plant(run / "round_0" / "model.pt", marker)
    forget_from(run, "round_1.train")
    return _resume(run), _payload_check(marker)


def case_resume_planted_ray_train_checkpoint(w):
    run = w.make_run()
    marker = w.tmp / "PWNED"
    states = sorted((run / "ray_train" / "round_1").glob("checkpoint_*/train_state.pt"))
    assert states, "the session run kept no Ray Train checkpoint"
    for path in states:
        plant(path, marker)
    forget_from(run, "round_1.train")
    return _resume(run), _payload_check(marker)


def case_report_not_a_run(w):
    (w.tmp / "empty").mkdir()
    return ["report", w.tmp / "empty"], lambda w: None


def case_report_truncated_outputs(w):
    run = w.make_run()
    path = run / "round_1" / "outputs.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    page = run / "report.html"
    before = page.read_bytes() if page.exists() else None

    def check(w):  # no report written (or rewritten) from a truncated file
        assert (page.read_bytes() if page.exists() else None) == before
    return ["report", run], check


def case_report_metrics_corrupt(w):
    run = w.make_run()
    (run / "metrics.json").write_text('{"mode": "unsup')
    return ["report", run], lambda w: None


def case_report_negative_videos(w):
    return ["report", w.tmp, "--videos", "-1"], lambda w: None


def _dets(w: World, results) -> Path:
    path = w.tmp / "dets.json"
    path.write_text(json.dumps({"version": "x", "results": results}))
    return path


def _eval(w: World, dets, *extra) -> list:
    return ["evaluate", "--detections", dets, "--gt", w.store, "--subset", "test", *extra]


def case_evaluate_start_after_end(w):
    return _eval(w, _dets(w, {"v1": [{"label": "a", "score": 1, "segment": [5.0, 2.0]}]})), \
        lambda w: None


def case_evaluate_results_a_list(w):
    return _eval(w, _dets(w, [{"label": "a"}])), lambda w: None


def case_evaluate_results_entry_not_a_list(w):
    return _eval(w, _dets(w, {"v1": {"label": "a"}})), lambda w: None


def case_evaluate_not_json(w):
    path = w.tmp / "dets.json"
    path.write_text("results: [")
    return _eval(w, path), lambda w: None


def case_evaluate_missing_score(w):
    return _eval(w, _dets(w, {"v1": [{"label": "a", "segment": [1, 2]}]})), lambda w: None


def case_evaluate_nan_score(w):
    return _eval(w, _dets(w, {"v1": [{"label": "a", "score": float("nan"),
                                      "segment": [1, 2]}]})), lambda w: None


def case_evaluate_bad_tiou(w):
    return _eval(w, _dets(w, {}), "--tiou", "0.5:0.1"), lambda w: None


def case_evaluate_unknown_subset(w):
    argv = _eval(w, _dets(w, {}))
    argv[argv.index("--subset") + 1] = "nosuch"
    return argv, lambda w: None


def case_evaluate_missing_gt(w):
    argv = _eval(w, _dets(w, {}))
    argv[argv.index("--gt") + 1] = str(w.tmp / "gt-missing.json")
    return argv, lambda w: None


def _tune(w: World, out, *extra) -> list:
    return ["tune", "--store", w.store, "--out", out, "--num-classes", "3", "--config",
            "tiny", "--quiet", *extra]


def _no_search(out: Path) -> Callable[[World], None]:
    def check(w: World) -> None:
        assert not out.exists()
    return check


def option_case(name: str, command: str, *options: str) -> Callable:
    """A case that is a valid command line plus ``options`` (a bad number, a bad key): it
    must be refused before anything is written."""
    def case(w: World):
        out = w.tmp / "out"
        argv = {"ingest": lambda: _ingest(w, w.layout, out, *options),
                "synth": lambda: _synth(out, *options),
                "run": lambda: _run(w, out, *options),
                "tune": lambda: _tune(w, out, *options)}[command]()
        check = {"ingest": _no_store, "synth": _no_store, "run": _no_run,
                 "tune": _no_search}[command](out)
        return argv, check
    case.__name__ = f"case_{name}"
    return case

# ------------------------------------------------------- one writer, one owner, bounded reads


class Holder:
    """Another process holding the lock of ``target`` (what a second terminal is)."""

    def __init__(self, target: Path, command: str):
        import subprocess
        import sys

        code = ("import sys; from acl_dist.locks import exclusive\n"
                f"with exclusive({str(target)!r}, {command!r}):\n"
                "    print('held', flush=True); sys.stdin.read()\n")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout.readline().strip() == "held"

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0


def _held(target: Path, command: str, check: Callable[[World], None] | None = None):
    holder = Holder(target, command)

    def after(w: World) -> None:
        holder.release()
        if check:
            check(w)
    return after


def case_run_second_writer_refused(w):
    out = w.tmp / "r"
    return _run(w, out), _held(out, "run", _no_run(out))


def case_resume_while_running_refused(w):
    out = w.tmp / "r"
    out.mkdir()
    (out / "state.json").write_text('{"steps": {}}')
    return _resume(out), _held(out, "run")


def case_ingest_second_writer_refused(w):
    out = w.tmp / "s"
    return _ingest(w, w.layout, out), _held(out, "ingest", _no_store(out))


def case_synth_second_writer_refused(w):
    out = w.tmp / "s"
    return _synth(out), _held(out, "synth", _no_store(out))


def case_tune_second_writer_refused(w):
    out = w.tmp / "t"
    return _tune(w, out), _held(out, "tune", _no_search(out))


def case_predict_second_writer_refused(w):
    out = w.tmp / "dets.json"
    return ["predict", "--run", w.tmp / "run", "--store", w.store, "--out", out, "--quiet"], \
        _held(out, "predict", lambda w: not out.exists())


def _demo_dir(w: World, *files: str) -> Path:
    """OUT/run with the markers of a run (and ``files`` of the user's) in it."""
    run = w.tmp / "demo" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("mode: unsupervised\n")
    for name in files:
        (run / name).write_text("the user's")
    return run


def _kept(run: Path, *files: str) -> Callable[[World], None]:
    def check(w: World) -> None:
        assert (run / "config.yaml").read_text() == "mode: unsupervised\n"
        for name in files:
            assert (run / name).read_text() == "the user's"
        assert not (run.parent / "store").exists()    # refused before the synth step
    return check


def case_demo_existing_run_needs_overwrite(w):
    run = _demo_dir(w, "notes.txt")
    return ["demo", "--out", run.parent, "--quiet"], _kept(run, "notes.txt")


def case_demo_overwrite_refuses_a_run_with_user_files(w):
    run = _demo_dir(w, "thesis.tex")
    return ["demo", "--out", run.parent, "--quiet", "--overwrite"], _kept(run, "thesis.tex")


def case_run_out_is_the_store(w):
    before = sorted(p.name for p in Path(w.store).iterdir())
    argv = _run(w, w.store)

    def check(w):
        assert sorted(p.name for p in Path(w.store).iterdir()) == before
    return argv, check


def case_run_out_inside_the_store(w):
    out = Path(w.store) / "myrun"
    return _run(w, out), lambda w: not out.exists()


def case_predict_out_is_a_directory(w):
    out = w.tmp / "outdir"
    out.mkdir()
    return ["predict", "--run", w.tmp / "run", "--store", w.store, "--out", out, "--quiet"], \
        lambda w: out.is_dir() and not list(out.iterdir())


def case_predict_overwrite_refuses_other_file(w):
    out = w.tmp / "table.json"
    out.write_text('{"mine": true}')

    def check(w):
        assert out.read_text() == '{"mine": true}'
    return ["predict", "--run", w.tmp / "run", "--store", w.store, "--out", out, "--quiet",
            "--overwrite"], check


def case_resume_rounds_zero_is_a_change(w):
    return _resume(w.tmp / "r", "--rounds", "0"), lambda w: None


def case_resume_num_classes_zero_is_a_change(w):
    return _resume(w.tmp / "r", "--num-classes", "0"), lambda w: None


def _raw_dets(w: World, data: bytes) -> Path:
    path = w.tmp / "dets.json"
    path.write_bytes(data)
    return path


def case_evaluate_detections_not_utf8(w):
    return _eval(w, _raw_dets(w, b'{"results": {"v\xff": []}}')), lambda w: None


def case_evaluate_detections_nested_deeply(w):
    return _eval(w, _raw_dets(w, b"[" * 100_000)), lambda w: None


def case_evaluate_detections_dev_zero(w):
    return _eval(w, "/dev/zero"), lambda w: None


def case_evaluate_detections_a_directory(w):
    return _eval(w, w.tmp), lambda w: None


def case_evaluate_duplicate_video_keys(w):
    det = '{"label": "a", "score": 1, "segment": [1, 2]}'
    return _eval(w, _raw_dets(w, ('{"results": {"v1": [%s], "v1": []}}' % det).encode())), \
        lambda w: None


def case_evaluate_gt_database_a_list(w):
    gt = w.tmp / "gt.json"
    gt.write_text('{"database": []}')
    argv = _eval(w, _dets(w, {}))
    argv[argv.index("--gt") + 1] = str(gt)
    return argv, lambda w: None


def case_evaluate_gt_annotation_without_label(w):
    gt = w.tmp / "gt.json"
    gt.write_text('{"database": {"v1": {"subset": "test", "annotations": [{"segment": [1, 2]}]}}}')
    argv = _eval(w, _dets(w, {}))
    argv[argv.index("--gt") + 1] = str(gt)
    return argv, lambda w: None


def _run_with_config(w: World, data: bytes):
    """A run whose --config file ``c.yaml`` holds ``data``: refused, nothing written."""
    out = w.tmp / "r"
    (w.tmp / "c.yaml").write_bytes(data)
    return _run(w, out, "--config", w.tmp / "c.yaml"), _no_run(out)


def case_run_config_not_utf8(w):
    return _run_with_config(w, b"train:\n  lr: 0.1 \xe9\n")


def case_run_config_yaml_alias(w):
    return _run_with_config(w, b"a: &x [*x]\n")


def case_run_config_nested_deeply(w):
    return _run_with_config(w, b"[" * 5000)


def case_run_set_nested_deeply(w):
    out = w.tmp / "r"
    return _run(w, out, "--set", "train.lr=" + "[" * 5000), _no_run(out)


def case_ingest_gt_not_utf8(w):
    layout = w.copy_layout()
    (layout / "gt.json").write_bytes(b'{"database": {"\xc3\x28": {}}}')
    out = w.tmp / "s"
    return _ingest(w, layout, out), _no_store(out)


def case_ingest_classes_not_utf8(w):
    classes = w.tmp / "classes.txt"
    classes.write_bytes(b"a\n\xffb\n")
    out = w.tmp / "s"
    return _ingest(w, w.layout, out, "--classes", classes), _no_store(out)


def case_run_store_random_bytes_in_a_shard(w):
    """4 KB of random bytes in the middle of a shard, size unchanged: the training read
    stops with the shard's name, before any NaN reaches the model."""
    w.start_ray()       # the session's instance: its start notices are not this case's
    out = w.tmp / "r"
    bad = w.tmp / "bad"
    shutil.copytree(w.store, bad)
    shard = max(bad.glob("shards/*/part-*.parquet"), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as fh:
        fh.seek(shard.stat().st_size // 3)
        fh.write(np.random.default_rng(0).bytes(4096))
    argv = _run(w, out)
    argv[argv.index("--store") + 1] = str(bad)
    return argv, lambda w: None


# (case, exit code, regex of the one line, needs the session's Ray run)
CASES = [
    (case_ingest_missing_root, 1, r"nowhere", False),
    (case_ingest_nan_feature, 1, r"video_\S+: .*(NaN|non-finite)", False),
    (case_ingest_truncated_npy, 1, r"video_\S+", False),
    (case_ingest_missing_flow, 1, r"video_\S+: .*flow", False),
    (case_ingest_gt_not_json, 1, r"gt\.json: not valid JSON", False),
    (case_ingest_segment_not_numbers, 1, r"video_\S+: .*segment", False),
    (case_ingest_wrong_dim, 1, r"video_\S+: .*(dim|shape)", False),
    (option_case("ingest_fps_zero", "ingest", "--fps", "0"),
     2, r"argument --fps: must be > 0, got 0", False),
    (option_case("ingest_snippet_frames_zero", "ingest", "--snippet-frames", "0"),
     2, r"argument --snippet-frames: must be >= 1", False),
    (option_case("ingest_shard_mb_negative", "ingest", "--shard-mb", "-1"),
     2, r"argument --shard-mb: must be > 0", False),
    (option_case("ingest_max_trim_negative", "ingest", "--max-trim", "-1"),
     2, r"argument --max-trim: must be >= 0", False),
    (option_case("ingest_fps_not_a_number", "ingest", "--fps", "fast"),
     2, r"argument --fps: expected a number, got 'fast'", False),
    (case_ingest_overwrite_refuses_other_directory, 1,
     r"--overwrite refused: .*mine is not an acl-dist store .*thesis\.tex", False),
    (case_ingest_existing_without_overwrite, 1, r"mine already exists \(pass --overwrite", False),
    (case_ingest_failed_overwrite_keeps_old_store, 1, r"video_\S+: .*(Inf|non-finite)", False),
    (case_ingest_out_under_a_file, 1, r"afile", False),
    (case_ingest_disk_full, 1, r"No space left on device", False),
    (case_ingest_wtalc_needs_allow_pickle, 1, r"--allow-pickle", False),
    (case_ingest_unknown_class, 1, r"video_\S+: .*(class|label)", False),
    (case_ingest_interrupted, 130, r"interrupted; nothing was written", False),
    (option_case("synth_classes_zero", "synth", "--classes", "0"),
     2, r"argument --classes: must be >= 2, got 0", False),
    (option_case("synth_videos_zero", "synth", "--videos", "0"),
     2, r"argument --videos: must be >= 1, got 0", False),
    (option_case("synth_dim_negative", "synth", "--dim", "-3"),
     2, r"argument --dim: must be >= 1, got -3", False),
    (option_case("synth_difficulty_zero", "synth", "--difficulty", "0"),
     2, r"argument --difficulty: must be > 0", False),
    (option_case("synth_too_many_classes", "synth", "--classes", "500"),
     1, r"--classes must be in", False),
    (case_synth_overwrite_refuses_other_directory, 1,
     r"--overwrite refused: .*data is not an acl-dist store .*results\.csv", False),
    (case_synth_npy_layout_refuses_other_directory, 1,
     r"--overwrite refused: .*mine is not an npy-split layout", False),
    (case_synth_disk_full, 1, r"No space left on device", False),
    (option_case("run_rounds_zero", "run", "--rounds", "0"),
     1, r"rounds: must be >= 1, got 0", False),
    (option_case("run_rounds_negative", "run", "--rounds", "-2"),
     1, r"rounds: must be >= 1, got -2", False),
    (option_case("run_steps_negative", "run", "--set", "train.steps=-5"),
     1, r"train\.steps: must be >= 1, got -5", False),
    (option_case("run_num_classes_zero", "run", "--num-classes", "0"),
     1, r"num_classes: must be >= 2, got 0", False),
    (option_case("run_batch_size_zero", "run", "--set", "train.batch_size=0"),
     1, r"train\.batch_size: must be >= 1, got 0", False),
    (option_case("run_lr_zero", "run", "--set", "train.lr=0"),
     1, r"train\.lr: must be > 0", False),
    (option_case("run_workers_zero", "run", "--set", "train.workers=0"),
     1, r"train\.workers: must be >= 1, got 0", False),
    (option_case("run_nms_iou_above_one", "run", "--set", "localize.nms_iou=1.5"),
     1, r"localize\.nms_iou: must be > 0 and <= 1, got 1\.5", False),
    (option_case("run_negative_loss_weight", "run", "--set", "loss.lambda_trip=-1"),
     1, r"loss\.lambda_trip: must be >= 0", False),
    (option_case("run_bad_tiou", "run", "--set", "tiou=0.9:0.1"),
     1, r"tiou: bad --tiou '0\.9:0\.1'", False),
    (option_case("run_unknown_key", "run", "--set", "train.stepz=5"),
     1, r"unknown config key 'train\.stepz'", False),
    (option_case("run_wrong_type", "run", "--set", "train.steps=many"),
     1, r"train\.steps: expected an integer, got 'many'", False),
    (case_run_missing_config_file, 1, r"nope\.yaml: no such file", False),
    (case_run_config_not_a_mapping, 1, r"list\.yaml: a config file must be a mapping", False),
    (option_case("run_max_failures_below_minus_one", "run", "--max-failures", "-2"),
     2, r"argument --max-failures: must be >= -1", False),
    (option_case("run_more_clusters_than_videos", "run", "--num-classes", "500"),
     1, r"num-classes must be in \[2, \d+\]", False),
    (option_case("run_unknown_subset", "run", "--test-subset", "holdout"),
     1, r"subset 'holdout' not in the store", False),
    (case_run_missing_store, 1, r"no feature store at .*no-store", False),
    (case_run_store_without_manifest, 1, r"half has no manifest\.json", False),
    (case_run_store_manifest_corrupt, 1, r"manifest\.json: not valid JSON", False),
    (case_run_store_of_other_format, 1, r"not an acl-dist store", False),
    (case_run_store_truncated_shard, 1, r"cannot read shard .*part-\d+\.parquet", False),
    (case_run_store_random_bytes_in_a_shard, 1,
     r"cannot read shard .*part-\d+\.parquet: damaged: ", True),
    (case_run_empty_validation_split_leaves_no_config, 1, r"validation split is empty", False),
    (case_run_no_mode, 1, r"--store and --mode are required", False),
    (case_run_out_under_a_file, 1, r"afile/run.*Not a directory", False),
    (case_run_disk_full, 1, r"r/config\.yaml: No space left on device$", False),
    (case_run_existing_run_needs_resume, 1, r"already holds a run; use --resume", True),
    (case_run_started_but_no_step_finished_is_rerun, 1, r"reached the steps", False),
    (case_run_training_worker_disk_full, 1,
     r"error: /data/run/ray_train/round_0: No space left on device$", False),
    (case_run_ray_task_read_only_disk, 1, r"error: /ro/run/round_0: Read-only file system$",
     False),
    (case_run_interrupted_says_how_to_resume, 130,
     r"interrupted; continue it with: acl-dist run --resume .*/r$", False),
    (case_resume_with_set, 1, r"--resume continues the run .*--set would change it", True),
    (case_resume_with_rounds, 1, r"--rounds would change it", True),
    (case_resume_with_config, 1, r"--config would change it", True),
    (case_resume_not_a_run, 1, r"empty is not a run directory", False),
    (case_resume_other_store, 1, r"was run on .*, not ", True),
    (case_resume_state_corrupt, 1, r"state\.json: not valid JSON", True),
    (case_resume_planted_model, 1,
     r"round_0/model\.pt: refused: it holds pickled Python objects", True),
    (case_resume_planted_ray_train_checkpoint, 1,
     r"ray_train/round_1/checkpoint_\S+/train_state\.pt: refused", True),
    (case_report_not_a_run, 1, r"metrics\.json: missing: not a finished run", False),
    (case_report_truncated_outputs, 1, r"round_1/outputs\.parquet: unreadable Parquet", True),
    (case_report_metrics_corrupt, 1, r"metrics\.json: not valid JSON", True),
    (case_report_negative_videos, 2, r"argument --videos: must be >= 0", False),
    (case_evaluate_start_after_end, 1, r"v1: detection with start > end", False),
    (case_evaluate_results_a_list, 1, r"'results' must be an object", False),
    (case_evaluate_results_entry_not_a_list, 1, r"v1: .*expected a list of detections", False),
    (case_evaluate_not_json, 1, r"dets\.json: not valid JSON", False),
    (case_evaluate_missing_score, 1, r"v1: bad detection", False),
    (case_evaluate_nan_score, 1, r"v1: detection with a non-finite value", False),
    (case_evaluate_bad_tiou, 1, r"bad --tiou '0\.5:0\.1'", False),
    (case_evaluate_unknown_subset, 1, r"no ground-truth videos in subset 'nosuch'", False),
    (case_evaluate_missing_gt, 1, r"gt-missing\.json: no such file", False),
    (option_case("tune_num_samples_zero", "tune", "--num-samples", "0"),
     1, r"num_samples: must be >= 1, got 0", False),
    (option_case("tune_max_concurrent_zero", "tune", "--max-concurrent", "0"),
     1, r"max_concurrent: must be >= 1, got 0", False),
    (option_case("tune_val_fraction_too_large", "tune", "--val-fraction", "0.9"),
     1, r"val_fraction: must be > 0 and <= 0\.5", False),
    (option_case("tune_reduction_factor_one", "tune", "--reduction-factor", "1"),
     1, r"reduction_factor: must be >= 2, got 1", False),
    (option_case("tune_rounds_zero", "tune", "--rounds", "0"),
     1, r"rounds: must be >= 1, got 0", False),
    (case_run_second_writer_refused, 1,
     r"/r is being written by acl-dist run \(pid \d+ on .*since .*\); wait for it", False),
    (case_resume_while_running_refused, 1, r"/r is being written by acl-dist run", False),
    (case_ingest_second_writer_refused, 1, r"/s is being written by acl-dist ingest", False),
    (case_synth_second_writer_refused, 1, r"/s is being written by acl-dist synth", False),
    (case_tune_second_writer_refused, 1, r"/t is being written by acl-dist tune", False),
    (case_predict_second_writer_refused, 1, r"dets\.json is being written by acl-dist "
                                            r"predict", False),
    (case_demo_existing_run_needs_overwrite, 1,
     r"demo/run already exists \(pass --overwrite", False),
    (case_demo_overwrite_refuses_a_run_with_user_files, 1,
     r"--overwrite refused: .*demo/run is an acl-dist run holding files it did not write "
     r"\(thesis\.tex\)", False),
    (case_run_out_is_the_store, 1, r"--out .* is the store itself", False),
    (case_run_out_inside_the_store, 1, r"--out .*myrun is inside the store", False),
    (case_predict_out_is_a_directory, 1, r"--out .*outdir is a directory", False),
    (case_predict_overwrite_refuses_other_file, 1,
     r"--overwrite refused: .*table\.json is not a detections file acl-dist wrote", False),
    (case_resume_rounds_zero_is_a_change, 1, r"--rounds would change it", False),
    (case_resume_num_classes_zero_is_a_change, 1, r"--num-classes would change it", False),
    (case_evaluate_detections_not_utf8, 1,
     r"dets\.json: not UTF-8 text \(byte 0xff at offset 15\)$", False),
    (case_evaluate_detections_nested_deeply, 1, r"dets\.json: not valid JSON \(nested too "
                                                r"deeply\)$", False),
    (case_evaluate_detections_dev_zero, 1, r"/dev/zero: not a regular file$", False),
    (case_evaluate_detections_a_directory, 1, r": a directory$", False),
    (case_evaluate_duplicate_video_keys, 1, r"dets\.json: not valid JSON \(duplicate key "
                                            r"'v1'\)$", False),
    (case_evaluate_gt_database_a_list, 1, r"gt\.json: no 'database' object", False),
    (case_evaluate_gt_annotation_without_label, 1,
     r"v1: .*gt\.json: bad annotation .*needs label", False),
    (case_run_config_not_utf8, 1, r"c\.yaml: not UTF-8 text \(byte 0xe9 at offset 17\)$",
     False),
    (case_run_config_yaml_alias, 1, r"c\.yaml: not valid YAML \(an alias \(\*name\) at line 1",
     False),
    (case_run_config_nested_deeply, 1, r"c\.yaml: not valid YAML \(nested deeper than 32",
     False),
    (case_run_set_nested_deeply, 1, r"--set train\.lr: not valid YAML \(nested deeper", False),
    (case_ingest_gt_not_utf8, 1, r"gt\.json: not UTF-8 text \(byte 0xc3 at offset 15\)$",
     False),
    (case_ingest_classes_not_utf8, 1, r"classes\.txt: not UTF-8 text \(byte 0xff at offset 2\)$",
     False),
]


@pytest.mark.parametrize("case,code,pattern,needs_run",
                         [pytest.param(*c, id=c[0].__name__[5:],
                                       marks=[pytest.mark.ray] if c[3] else [])
                          for c in CASES])
def test_bad_input(case, code, pattern, needs_run, world, capsys, monkeypatch):
    import inspect

    kwargs = {"monkeypatch": monkeypatch} if "monkeypatch" in inspect.signature(
        case).parameters else {}
    argv, check_after = case(world, **kwargs)
    capsys.readouterr()
    got, _out, err = cli(capsys, argv)
    monkeypatch.undo()
    assert got == code, err
    one_line(err, pattern)
    check_after(world)


def test_the_table_has_at_least_fifty_cases():
    assert len(CASES) >= 50 and len({c[0] for c in CASES}) == len(CASES)


# --------------------------------------------------------------------------- beyond the CLI


def test_every_checkpoint_loader_refuses_a_planted_pickle(tmp_path):
    """The attention pass's actor, the Ray Train worker's restore and the run's final
    checkpoint all load through the weights-only loaders: a payload never runs."""
    from acl_dist.artifacts import load_checkpoint, load_train_state
    from acl_dist.ray_data import AttentionPass

    marker = tmp_path / "PWNED"
    path = tmp_path / "model.pt"
    plant(path, marker)
    for load in (load_checkpoint, load_train_state,
                 lambda p: AttentionPass(p, {"rgb": 8, "flow": 8}, "float16", ["test"], {},
                                         None)):
        with pytest.raises(ArtifactError, match="refused") as err:
            load(str(path))
        assert err.value.refused and str(path) in str(err.value)
    assert not marker.exists()
    path.write_bytes(b"")
    with pytest.raises(ArtifactError, match="empty file"):
        load_checkpoint(str(path))


def test_checkpoints_written_by_training_load_weights_only(tmp_path):
    """What the project writes (a model checkpoint, a Ray Train state with Adam and the
    MultiStepLR scheduler) loads with weights_only=True: nothing needs a pickle."""
    from acl_dist.artifacts import load_checkpoint, load_train_state, save_checkpoint
    from acl_dist.config import load_config
    from acl_dist.infer import load_models
    from acl_dist.model import StreamModels
    from acl_dist.train import make_checkpoint, training_state

    cfg = load_config("tiny")
    model = StreamModels({"rgb": 8, "flow": 8}, 3, cfg.model)
    optim = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, [5])
    sum(p.sum() for p in model.parameters()).backward()
    optim.step()
    sched.step()
    state = training_state(model, optim, sched, 1)
    save_checkpoint(str(tmp_path / "train_state.pt"), state)
    assert load_train_state(str(tmp_path / "train_state.pt"))["step"] == 1
    ckpt = make_checkpoint(state["model"], cfg, 3, {"rgb": 8, "flow": 8}, ["a", "b", "c"], 0)
    save_checkpoint(str(tmp_path / "model.pt"), ckpt)
    rebuilt = load_models(load_checkpoint(str(tmp_path / "model.pt")))
    for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.ray
def test_resume_finds_lost_and_truncated_artifacts(world):
    """``--resume`` reads back every finished step's artifact: the first one missing or
    truncated is rerun with every finished step after it; the ledger says which."""
    from acl_dist.artifacts import RunDir
    from acl_dist.pipeline import Run, RunOptions, load_run_config

    run = world.make_run()
    store, cfg, _ = load_run_config(str(run))
    before = set(RunDir(str(run)).state()["steps"])
    truncated = run / "round_1" / "clusters.json"
    truncated.write_text(truncated.read_text()[:40])
    (run / "round_1" / "model.pt").unlink()
    Run(store, str(run), cfg, RunOptions(quiet=True)).verify_finished_steps()
    after = set(RunDir(str(run)).state()["steps"])
    assert after == {"round_0.descriptors", "round_0.cluster", "round_0.train",
                     "round_0.attention", "round_0.evaluate"}
    assert before - after == {"round_1.cluster", "round_1.train", "round_1.attention",
                              "round_1.evaluate", "round_2.cluster", "finish"}


@pytest.mark.ray
def test_resume_reruns_a_step_whose_model_was_deleted(world, capsys):
    """The end-to-end form: round 1's model.pt deleted after the run finished; --resume
    retrains round 1 (from its Ray Train checkpoint) and every step after it, and the run
    is whole again."""
    run = world.make_run()
    (run / "round_1" / "model.pt").unlink()
    old_outputs = (run / "round_1" / "outputs.parquet").stat().st_mtime
    code, out, err = cli(capsys, ["run", "--resume", run, "--quiet"])
    assert code == 0, err
    assert (run / "round_1" / "model.pt").exists()
    assert (run / "round_1" / "outputs.parquet").stat().st_mtime > old_outputs
    assert json.loads((run / "metrics.json").read_text())["average"] is not None
    code, _out, err = cli(capsys, ["report", run])
    assert code == 0, err


@pytest.mark.ray
def test_report_never_opens_a_checkpoint(world, capsys):
    """The report reads results, not weights: a planted model.pt cannot run through it, and
    a truncated one does not stop it."""
    run = world.make_run()
    marker = world.tmp / "PWNED"
    plant(run / "round_1" / "model.pt", marker)
    truncated = run / "round_0" / "model.pt"
    truncated.write_bytes(truncated.read_bytes()[:500])
    code, out, err = cli(capsys, ["report", run])
    assert code == 0, err
    assert not marker.exists() and (run / "report.html").exists()


def test_evaluate_counts_detections_outside_the_ground_truth(small, tmp_path, capsys):
    """As the official code: detections on videos that are not in the subset's ground truth
    are false positives (lower precision), and the CLI says how many there were."""
    store, _ = small
    gt = json.loads(Path(store, "gt.json").read_text())["database"]
    results = {v: [{"label": a["label"], "score": 0.5, "segment": a["segment"]}
                   for a in e["annotations"]] for v, e in gt.items() if e["subset"] == "test"}
    clean = tmp_path / "clean.json"
    clean.write_text(json.dumps({"results": results}))
    label = next(d["label"] for ds in results.values() for d in ds)
    noisy = dict(results, not_a_video=[{"label": label, "score": 0.9, "segment": [0, 5]}] * 3)
    dirty = tmp_path / "dirty.json"
    dirty.write_text(json.dumps({"results": noisy}))
    code, out, err = cli(capsys, ["evaluate", "--detections", clean, "--gt", store, "--subset",
                                  "test", "--json"])
    assert code == 0 and not err
    base = json.loads(out)
    code, out, err = cli(capsys, ["evaluate", "--detections", dirty, "--gt", store, "--subset",
                                  "test", "--json"])
    assert code == 0
    one_line(err, r"note: 3 detection\(s\) on videos not in subset 'test' were counted as "
                  r"false positives")
    res = json.loads(out)
    assert res["outside_videos"] == 3
    assert res["average"] < base["average"] == pytest.approx(100.0)


@pytest.mark.s3
def test_s3_overwrite_keeps_the_old_store_until_the_new_one_is_whole(s3_endpoint, small):
    """On S3 (no rename) a replacing write goes under a fresh prefix: a failure leaves the
    old store whole and readable; a success switches by the manifest and then removes the
    old generation; a prefix of anything else is refused."""
    import s3fs

    from acl_dist.errors import StoreError
    from acl_dist.store import StoreWriter
    from acl_dist.synth import iter_benchmark

    _, layout = small
    out = "s3://acl-test/overwrite"
    synthesize(SMALL, out, quiet=True, report=False)
    before = FeatureStore.open(out)
    n = before.num_videos()
    with pytest.raises(RuntimeError, match="interrupted"):
        with StoreWriter(out, {"rgb": 8, "flow": 8}, ["a"], overwrite=True,
                         shard_mb=0.0001) as w:
            for i, rec in enumerate(iter_benchmark(SynthConfig(classes=2, videos=4, dim=8))):
                w.add(rec)
                if i == 3:
                    raise RuntimeError("interrupted")
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    again = FeatureStore.open(out)
    assert again.manifest == before.manifest
    assert sum(1 for _ in again.iter_videos()) == n
    assert not [p for p in fs.find("acl-test/overwrite") if "/v-" in p]  # attempt removed

    summary = synthesize(SynthConfig(classes=2, videos=4, dim=8, seed=2), out, overwrite=True,
                         quiet=True, report=False)
    fs.invalidate_cache()
    new = FeatureStore.open(out)
    assert new.num_videos() == sum(s["videos"] for s in summary["subsets"].values()) != n
    assert len(list(new.iter_videos())) == new.num_videos()
    assert new.ground_truth()["database"].keys() == {r.video_id for r in new.iter_videos()}
    # the old generation is gone: every object is the manifest or the new generation's
    prefix = new.manifest["gt"].split("/")[0] + "/"
    assert prefix.startswith("v-")
    assert all(p.endswith("/manifest.json") or f"/{prefix}" in p
               for p in fs.find("acl-test/overwrite"))

    fs.pipe("acl-test/notastore/data.csv", b"1,2")
    with pytest.raises(StoreError, match="--overwrite refused: .*not an acl-dist store"):
        synthesize(SMALL, "s3://acl-test/notastore", overwrite=True, quiet=True, report=False)
    fs.invalidate_cache()
    assert fs.cat("acl-test/notastore/data.csv") == b"1,2"


# --------------------------------------------------------------------------- locks, signals


def test_a_lock_left_by_a_killed_process_is_taken_over(small, tmp_path, capsys):
    """The kernel drops a dead holder's flock: the next writer proceeds, says whose lock
    it took over, and leaves no lock file behind; a live holder (the control) refuses."""
    import subprocess
    import sys

    from acl_dist.locks import lock_path

    out = tmp_path / "s"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import os; from acl_dist.locks import exclusive\n"
        f"with exclusive({str(out)!r}, 'ingest'):\n"
        "    print('held', flush=True); os._exit(9)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.wait(timeout=30)
    assert Path(lock_path(str(out))).exists()      # killed: its file stays
    code, _out, err = cli(capsys, _synth(out))
    assert code == 0, err
    line = one_line(err, r"note: .*/s: taking over the lock left by acl-dist ingest "
                         r"\(pid \d+ on .*\), whose process is gone$")
    assert f"pid {holder.pid} " in line
    assert not Path(lock_path(str(out))).exists()
    assert FeatureStore.open(str(out)).num_videos() > 0


def test_locks_are_reentrant_in_one_process_and_removed_after(tmp_path):
    from acl_dist.locks import exclusive, lock_path

    target = tmp_path / "run"
    with exclusive(str(target), "demo"):
        with exclusive(str(target), "run"):       # demo's run step inside demo
            assert json.loads(Path(lock_path(str(target))).read_text())["command"] == "demo"
        assert Path(lock_path(str(target))).exists()
    assert not Path(lock_path(str(target))).exists()
    assert not target.exists()                      # the lock creates nothing in it


def _signal_during(argv: list, tmp: Path, marker_glob: str) -> tuple[int, str]:
    """Run the CLI in a subprocess and SIGTERM it once ``marker_glob`` (its temporary
    output) appears under ``tmp``: (exit code, stderr)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "acl_dist", *map(str, argv)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not list(tmp.glob(marker_glob)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be signalled"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.parametrize("command", ["synth", "ingest"])
def test_sigterm_is_handled_like_ctrl_c(command, small, tmp_path):
    """SIGTERM (a scheduler's cancel) mid-write: exit 143, one line, the temporary store
    removed, nothing at --out, no lock left."""
    from acl_dist.locks import lock_path

    _, layout = small
    out = tmp_path / "s"
    argv = (["synth", "--out", out, "--classes", "5", "--videos", "400", "--dim", "64",
             "--no-report", "--quiet"] if command == "synth" else
            ["ingest", "--layout", "npy-split", "--root", layout, "--out", out, "--quiet",
             "--shard-mb", "0.001"])
    code, err = _signal_during(argv, tmp_path, ".s.tmp-*")
    assert code == 143, err
    one_line(err, rf"acl-dist {command}: terminated; nothing was written to .*/s$")
    assert not out.exists() and not list(tmp_path.glob(".s.tmp-*"))
    assert not Path(lock_path(str(out))).exists()


def test_leftovers_of_a_killed_writer_are_swept_by_the_next(small, tmp_path, capsys):
    """SIGKILL leaves a hidden temporary store (and a temporary file): the next writer of
    the same output removes them, and nothing of anyone else's."""
    out = tmp_path / "s"
    left = tmp_path / ".s.tmp-deadbeef"
    (left / "shards").mkdir(parents=True)
    (left / "shards" / "part-0.parquet").write_bytes(b"x" * 1000)
    (tmp_path / ".s.tmp-0a1b2c3d.old").mkdir()
    other = tmp_path / ".t.tmp-cafe"          # another output's: not ours to sweep
    other.mkdir()
    code, _out, err = cli(capsys, _synth(out))
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.tmp-cafe", "s"]


def test_sweep_of_a_run_directory_removes_only_temporaries(tmp_path):
    from acl_dist.pipeline import sweep_run_temporaries

    run = tmp_path / "run"
    (run / "round_0").mkdir(parents=True)
    for name in (".state.json.tmp-1a2b3c4d", "round_0/.clusters.json.tmp-99aa88bb",
                 "state.json", "round_0/clusters.json", ".hidden-notes"):
        (run / name).write_text("x")
    sweep_run_temporaries(str(run))
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()) == [
        ".hidden-notes", "round_0/clusters.json", "state.json"]


def test_not_a_run_is_none_only_for_what_acl_dist_wrote(tmp_path):
    """The --overwrite rule for runs: a run directory of acl-dist's own entries may be
    replaced (the control); one more file of the user's, or no run marker, may not."""
    from acl_dist.artifacts import RunDir

    run = tmp_path / "run"
    for name in ("config.yaml", "run.json", "state.json", "plan.json", "metrics.json",
                 "detections.json", "detections_hungarian.json", "report.html",
                 ".metrics.json.tmp-1a2b3c4d"):
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text("{}")
    for name in ("round_0", "round_12", "ray_train", "tensorboard", "report_files"):
        (run / name).mkdir()
    assert RunDir.not_a_run(str(run)) is None
    (run / "my_notes.md").write_text("mine")
    assert RunDir.not_a_run(str(run)) == (
        "an acl-dist run holding files it did not write (my_notes.md)")
    assert RunDir.not_a_run(str(tmp_path)) == (
        "not an acl-dist run (none of run.json, config.yaml, state.json)")


def test_ray_logs_of_our_own_errors_are_dropped_and_others_kept():
    """Ray Data and Ray Train log a failed task's exception with its tracebacks before it
    reaches the CLI, which prints acl-dist's own errors as one line: those records are
    dropped, a bug's are kept (the control), also when logged inside ``except`` without
    exc_info; a Ray task error posing as our error class gives its cause's message."""
    import logging
    import sys

    from acl_dist.errors import StoreError, find_cause
    from acl_dist.ray_start import _OwnErrorsRaised

    keep = _OwnErrorsRaised().filter

    def record(exc_info=None) -> logging.LogRecord:
        return logging.LogRecord("ray.data", logging.ERROR, __file__, 1, "failed", (),
                                 exc_info)

    ours = StoreError("cannot read shard s: damaged: crc")
    bug = ValueError("a bug")
    assert not keep(record((StoreError, ours, None)))
    assert keep(record((ValueError, bug, None)))
    wrapped = RuntimeError("SystemException")
    wrapped.__cause__ = ours
    assert not keep(record((RuntimeError, wrapped, None)))
    try:
        raise OSError(28, "No space left on device")
    except OSError:
        assert sys.exc_info()[1] is not None and not keep(record())
    try:
        raise bug
    except ValueError:
        assert keep(record())
    assert keep(record())

    class Posing(StoreError):          # what ray's as_instanceof_cause builds
        def __init__(self, cause):
            super().__init__("\x1b[36mray::ReadStore()\x1b[39m\n  File ...")
            self.cause = cause
    assert str(find_cause(Posing(ours), StoreError)) == "cannot read shard s: damaged: crc"
