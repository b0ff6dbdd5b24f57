"""What a run's numbers are scored against: the store's annotation and, on a real THUMOS14
store, the community's 210-video test list; the run's own scoring path
(``RunResults.evaluate_round``) against the official protocol on the published file."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acl_dist import fsutil
from acl_dist.artifacts import RunDir, outputs_schema
from acl_dist.config import load_config, with_updates
from acl_dist.evaluate import (_data_file, evaluate_detections, load_ground_truth,
                               thumos_test_videos)
from acl_dist.plan import resolve_config, scored_test_videos, split_videos
from acl_dist.results import RunResults
from acl_dist.ingest import ingest
from acl_dist.store import FeatureStore
from acl_dist.tiou import parse_tiou

PUBLISHED = _data_file("thumos14", "gt_acmnet.json.gz")


@pytest.fixture(scope="module")
def thumos_store(tmp_path_factory) -> str:
    """THUMOS14 ingested as a user would: the ACM-Net annotation file as published next to
    one ``<video>.npy`` per video (the flat npy-concat layout; 2 + 2-d features, as many
    snippets as the duration covers, so the features end before some annotations do)."""
    gt = fsutil.read_json(PUBLISHED)
    root = tmp_path_factory.mktemp("thumos-layout")
    (root / "gt.json").write_text(json.dumps(gt))
    rng = np.random.default_rng(0)
    for vid, e in gt["database"].items():
        t = max(1, int(float(e["duration"]) * 25 / 16) - 1)
        np.save(root / f"{vid}.npy", rng.standard_normal((t, 4)).astype(np.float32))
    out = str(tmp_path_factory.mktemp("thumos") / "store")
    summary = ingest("npy-concat", str(root), out, quiet=True)
    assert summary.videos == len(gt["database"])
    return out


def test_which_test_videos_are_scored(thumos_store, tiny_store):
    store = FeatureStore.open(thumos_store)
    ids = {m.video_id for m in store.metadata("test")}
    cfg = load_config(None, ["test_subset=test"])
    kept, said = scored_test_videos(cfg, store, ids)       # auto, a real THUMOS store
    assert kept == ids & thumos_test_videos("210") and len(kept) == 210 < len(ids)
    assert said.startswith("the THUMOS14 210-video test list") and f"of the {len(ids)}" in said
    kept, _ = scored_test_videos(with_updates(cfg, test_videos="thumos212"), store, ids)
    assert kept == ids & thumos_test_videos("212") and len(kept) == 212
    assert scored_test_videos(with_updates(cfg, test_videos="all"), store, ids) == (
        None, f"all {len(ids)} videos of subset 'test'")
    # the synthetic benchmark copies THUMOS timelines and ids: every video of it is scored
    synth = FeatureStore.open(tiny_store[0])
    synth_ids = {m.video_id for m in synth.metadata("test")}
    assert all(v.startswith("video_test_") for v in synth_ids)
    assert scored_test_videos(cfg, synth, synth_ids)[0] is None


def test_a_runs_score_is_the_official_protocol_on_the_published_file(thumos_store, tmp_path):
    """A weak run's round outputs holding known detections (every published test segment,
    half of them shifted to tIoU 0.55, the 213th video's too): the run's scoring path
    gives what eval_detection.py's protocol gives on the published annotation with the
    210-video list, and says so."""
    store = FeatureStore.open(thumos_store)
    cfg = resolve_config(load_config(None, ["tiou=thumos"], mode="weak"), store, cpus=2)
    assert (cfg.train_subset, cfg.test_subset) == ("validation", "test")
    gt = fsutil.read_json(PUBLISHED)
    index = {c: i for i, c in enumerate(store.classes)}
    rows, official = [], []
    f = 0.45 / 1.55                                     # a shift of f L: tIoU 0.55
    for vid, e in sorted(gt["database"].items()):
        if e["subset"] != "test":
            continue
        dets = []
        for k, a in enumerate(e["annotations"]):
            s, t = (float(x) for x in a["segment"])
            d = f * (t - s) if k % 2 else 0.0
            dets.append([index[a["label"]], 1.0 - 0.001 * k, s + d, t + d])
        rows.append((vid, "test", json.dumps(dets)))
        official += [(vid, store.classes[c], score, s, t) for c, score, s, t in dets]
    run = RunDir(str(tmp_path / "run"))
    schema = outputs_schema(store.streams)
    table = pa.table({"video_id": [r[0] for r in rows], "subset": [r[1] for r in rows],
                      "descriptor": [b""] * len(rows), "cas": [b""] * len(rows),
                      "video_logits": [b""] * len(rows), "detections": [r[2] for r in rows],
                      **{f"attention_{st}": [b""] * len(rows) for st in store.streams}},
                     schema=schema)
    fsutil.get_fs(run.outputs_path(0))[0].makedirs(str(tmp_path / "run" / "round_0"),
                                                   exist_ok=True)
    pq.write_table(table, run.outputs_path(0))
    results = RunResults(run, cfg, thumos_store, split_videos(cfg, store), store.classes)
    got = results.evaluate_round(0, "test")
    from acl_dist.evaluate import Detection

    want = evaluate_detections(PUBLISHED, [Detection(*d) for d in official], subset="test",
                               tiou_thresholds=parse_tiou("thumos"),
                               videos=thumos_test_videos("210"))
    assert got["map"] == pytest.approx(list(want.as_dict()["map"]))
    assert 0 < got["average"] < 100                      # the shifted half misses at 0.6+
    assert got["annotation"] == store.annotation_path
    assert got["videos"].startswith("the THUMOS14 210-video test list")
    # the store's annotation is the published one, segment for segment, also where a
    # segment ends past the video's features (the training metadata clips or drops those)
    ends = {m.video_id: m.num_snippets * m.grid.seconds_per_snippet
            for m in store.metadata("test")}
    past = [(v, a) for v, e in gt["database"].items() if e["subset"] == "test"
            for a in e["annotations"] if float(a["segment"][1]) > ends[v]]
    assert len(past) >= 20
    published = load_ground_truth(PUBLISHED, "test")
    ours = load_ground_truth(thumos_store, "test")
    assert ours.videos == published.videos and set(ours.classes) == set(published.classes)
    for c in published.classes:
        assert ours.segments[c].keys() == published.segments[c].keys()
        for v, segs in published.segments[c].items():
            np.testing.assert_array_equal(ours.segments[c][v], segs)


def test_evaluate_on_a_store_scores_what_a_run_scores(thumos_store, tmp_path, capsys):
    """``acl-dist evaluate --gt STORE`` on a real THUMOS14 store scores the 210-video list
    by default, as a run does (and says so); ``--videos all`` scores every test video."""
    from acl_dist.cli import main
    from acl_dist.evaluate import Detection, detections_to_json

    gt = fsutil.read_json(PUBLISHED)
    dets = [Detection(v, a["label"], 1.0, float(a["segment"][0]), float(a["segment"][1]))
            for v, e in gt["database"].items() if e["subset"] == "test"
            for a in e["annotations"]][::2]                     # every other instance
    path = tmp_path / "dets.json"
    path.write_text(json.dumps(detections_to_json(dets)))
    tiou = parse_tiou("thumos")

    def cli(*extra):
        assert main(["evaluate", "--detections", str(path), "--gt", thumos_store,
                     "--subset", "test", "--tiou", "thumos", *extra]) == 0
        return capsys.readouterr().out

    want = evaluate_detections(PUBLISHED, dets, subset="test", tiou_thresholds=tiou,
                               videos=thumos_test_videos("210"))
    assert json.loads(cli("--json"))["map"] == pytest.approx(list(want.as_dict()["map"]))
    assert "(the THUMOS14 210-video test list" in cli()
    every = evaluate_detections(PUBLISHED, dets, subset="test", tiou_thresholds=tiou)
    assert json.loads(cli("--json", "--videos", "all"))["map"] == pytest.approx(
        list(every.as_dict()["map"]))
    assert every.average != want.average
