"""The store on a real S3 endpoint (moto server on 127.0.0.1), through s3fs/pyarrow."""

from __future__ import annotations

import numpy as np
import pytest
import s3fs

from acl_dist.errors import StoreError
from acl_dist.evaluate import Detection, evaluate_detections, load_ground_truth
from acl_dist.ingest import ingest
from acl_dist.store import FeatureStore, StoreWriter
from acl_dist.synth import SynthConfig, synthesize

pytestmark = pytest.mark.s3

CFG = SynthConfig(classes=3, videos=9, dim=8, seed=5)


def _videos(store):
    return {r.video_id: r for r in store.iter_videos()}


def test_synth_store_on_s3_equals_local(s3_endpoint, tmp_path):
    local = str(tmp_path / "local")
    synthesize(CFG, local, quiet=True, report=False)
    synthesize(CFG, "s3://acl-test/synth", quiet=True, report=False)
    a, b = _videos(FeatureStore.open(local)), _videos(FeatureStore.open("s3://acl-test/synth"))
    assert a.keys() == b.keys() and len(a) > 9
    for vid in a:
        np.testing.assert_array_equal(a[vid].features["flow"], b[vid].features["flow"])
        assert a[vid].segments == b[vid].segments
    fs = s3fs.S3FileSystem()
    names = {p.rsplit("/", 1)[-1] for p in fs.ls("acl-test/synth")}
    assert {"manifest.json", "gt.json", "shards"} <= names


def test_ingest_local_layout_to_s3_and_evaluate(s3_endpoint, tmp_path):
    layout = str(tmp_path / "npy")
    synthesize(CFG, str(tmp_path / "st"), npy_layout=layout, quiet=True, report=False)
    summary = ingest("npy-split", layout, "s3://acl-test/ingested", quiet=True)
    store = FeatureStore.open("s3://acl-test/ingested")
    assert store.num_videos() == summary.videos
    gt = load_ground_truth("s3://acl-test/ingested", "test")
    dets = [Detection(v, label, 1.0, s, e) for label, per_video in gt.segments.items()
            for v, segs in per_video.items() for s, e in segs]
    assert evaluate_detections(gt, dets).average == pytest.approx(1.0)
    assert evaluate_detections(gt, dets[::2]).average < 1.0


def test_unreadable_s3_paths_give_clear_errors(s3_endpoint):
    with pytest.raises(StoreError, match="no feature store at s3://acl-test/nothing-here"):
        FeatureStore.open("s3://acl-test/nothing-here")
    with pytest.raises(StoreError, match="s3://no-such-bucket-x/store"):
        FeatureStore.open("s3://no-such-bucket-x/store")


def test_failed_s3_write_leaves_no_store(s3_endpoint):
    out = "s3://acl-test/broken"
    with pytest.raises(RuntimeError):
        with StoreWriter(out, {"rgb": 8, "flow": 8}, ["a"], shard_mb=0.0001) as w:
            from acl_dist.synth import iter_benchmark

            for i, rec in enumerate(iter_benchmark(CFG)):
                w.add(rec)
                if i == 5:
                    raise RuntimeError("interrupted")
    fs = s3fs.S3FileSystem()
    fs.invalidate_cache()
    assert not fs.exists("acl-test/broken/manifest.json")
    assert not fs.exists("acl-test/broken")
