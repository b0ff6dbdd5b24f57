"""``acl-dist predict``: a finished run's final model on videos it never saw, and the
stores and runs it refuses (one line each, before Ray starts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acl_dist.cli import main
from acl_dist.detect import name_detections, open_trained_run
from acl_dist.store import FeatureStore, StoreWriter
from acl_dist.synth import SynthConfig, synthesize


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def new_videos(tiny_store, tmp_path_factory) -> str:
    """A store of videos the tiny run never saw: the same synthetic feature model (seed 3,
    4 classes, 16-d) drawn for more timelines, keeping only the videos whose ids are not in
    the run's store."""
    tmp = tmp_path_factory.mktemp("new")
    synthesize(SynthConfig(classes=4, videos=48, dim=16, seed=3), str(tmp / "more"),
               quiet=True)
    seen = {m.video_id for m in FeatureStore.open(tiny_store[0]).metadata()}
    more = FeatureStore.open(str(tmp / "more"))
    out = str(tmp / "store")
    with StoreWriter(out, more.streams, more.classes, dtype=more.dtype,
                     source={"what": "videos the tiny run never saw"}) as w:
        for rec in more.iter_videos():
            if rec.video_id not in seen:
                w.add(rec)
    new = FeatureStore.open(out)
    assert new.num_videos("test") >= 10 and not seen & {m.video_id for m in new.metadata()}
    return out


@pytest.mark.ray
def test_predict_reproduces_the_runs_own_test_detections(unsupervised_run, tiny_store,
                                                         tmp_path, capsys):
    """On the run's own test videos, predict gives the run's final detections (same model,
    localisation settings and mapping) and so, scored, the run's own mAP."""
    run, code, _ = unsupervised_run
    assert code == 0
    dets = tmp_path / "own.json"
    code, out, err = cli(capsys, "predict", "--run", str(run), "--store", tiny_store[0],
                         "--subset", "test", "--out", str(dets), "--quiet")
    assert code == 0, err
    got = json.loads(dets.read_text())["results"]
    want = json.loads((run / "detections_hungarian.json").read_text())["results"]
    assert set(got) == set(want)
    for vid in want:   # thread counts differ (run: 2 workers, here 1 actor): float noise
        assert [d["label"] for d in got[vid]] == [d["label"] for d in want[vid]], vid
        assert [x for d in got[vid] for x in (d["score"], *d["segment"])] == pytest.approx(
            [x for d in want[vid] for x in (d["score"], *d["segment"])], rel=1e-4, abs=1e-5)
    code, out, _ = cli(capsys, "evaluate", "--detections", str(dets), "--gt", tiny_store[0],
                       "--subset", "test", "--tiou", "thumos", "--json")
    metrics = json.loads((run / "metrics.json").read_text())
    assert json.loads(out)["map"] == pytest.approx(metrics["map"], abs=1e-3)


@pytest.mark.ray
def test_predict_on_a_store_the_run_never_saw(unsupervised_run, new_videos, tmp_path, capsys):
    run, code, _ = unsupervised_run
    assert code == 0
    dets = tmp_path / "dets.json"
    code, out, err = cli(capsys, "predict", "--run", str(run), "--store", new_videos,
                         "--subset", "test", "--out", str(dets), "--quiet")
    assert code == 0, err
    n_test = FeatureStore.open(new_videos).num_videos("test")
    assert f"of {n_test} videos (classes (hungarian))" in out
    assert f"acl-dist evaluate --detections {dets} --gt {new_videos}" in out
    result = json.loads(dets.read_text())
    assert sorted(result["results"]) == sorted(m.video_id for m in FeatureStore.open(
        new_videos).metadata("test"))
    assert "round 1 of" in result["external_data"]["details"]
    labels = {d["label"] for v in result["results"].values() for d in v}
    assert labels and labels <= set(FeatureStore.open(new_videos).classes)
    code, out, _ = cli(capsys, "evaluate", "--detections", str(dets), "--gt", new_videos,
                       "--subset", "test", "--tiou", "thumos", "--json")
    assert code == 0 and json.loads(out)["average"] > 0
    # the same file again is refused; --overwrite replaces it
    code, _, err = cli(capsys, "predict", "--run", str(run), "--store", new_videos,
                       "--out", str(dets), "--quiet")
    assert code == 1 and f"{dets} exists" in err and "--overwrite" in err
    assert json.loads(dets.read_text()) == result


@pytest.mark.ray
def test_detections_are_named_by_clusters_or_by_the_runs_mapping(unsupervised_run):
    trained = open_trained_run(str(unsupervised_run[0]))
    assert trained.label_names[0] == "cluster_00" and set(trained.mappings) == {
        "hungarian", "majority", "soft"}
    raw = [("v1", [[0, 0.9, 1.0, 2.0], [1, 0.5, 3.0, 4.0]])]
    plain = name_detections(trained, raw, None)
    assert [(d.label, d.score) for d in plain] == [("cluster_00", 0.9), ("cluster_01", 0.5)]
    mapped = name_detections(trained, raw, "hungarian")
    assert [d.label for d in mapped] == [trained.mappings["hungarian"][k][0][0]
                                         for k in (0, 1) if trained.mappings["hungarian"][k]]
    # the run's classes, as run.json recorded them from its store
    assert trained.classes == json.loads((Path(unsupervised_run[0]) / "run.json").read_text()
                                         )["classes"]


@pytest.mark.ray
def test_stores_and_runs_that_do_not_fit_are_refused_in_one_line(unsupervised_run,
                                                                 tmp_path, capsys):
    run = str(unsupervised_run[0])
    out = str(tmp_path / "dets.json")
    other_dim = str(tmp_path / "dim8")
    synthesize(SynthConfig(classes=4, videos=8, dim=8, seed=3), other_dim, quiet=True)
    code, _, err = cli(capsys, "predict", "--run", run, "--store", other_dim, "--out", out)
    assert code == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert f"{other_dim}: its features (rgb 8-d, flow 8-d) do not fit the model of {run} " \
           "(rgb 16-d, flow 16-d)" in err
    other_classes = str(tmp_path / "three")
    synthesize(SynthConfig(classes=3, videos=8, dim=16, seed=3), other_classes, quiet=True)
    code, _, err = cli(capsys, "predict", "--run", run, "--store", other_classes, "--out", out)
    assert code == 1 and f"{other_classes}: its classes are not those {run} was trained on " \
                         "(not in the store: Billiards)" in err
    code, _, err = cli(capsys, "predict", "--run", run, "--store", other_classes,
                       "--subset", "nope", "--out", out, "--label-map", "clusters")
    assert code == 1 and "no subset 'nope'" in err     # clusters: the classes do not matter
    code, _, err = cli(capsys, "predict", "--run", str(tmp_path), "--store", other_dim,
                       "--out", out)
    assert code == 1 and "not an acl-dist run directory" in err
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "run.json"):
        (unfinished / name).write_bytes((Path(run) / name).read_bytes())
    code, _, err = cli(capsys, "predict", "--run", str(unfinished), "--store", other_dim,
                       "--out", out)
    assert code == 1 and "not a finished run" in err
    assert not Path(out).exists()
