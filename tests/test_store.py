"""Feature store: schema, round trip on ragged videos, sharding, atomicity, errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from acl_dist.annotations import Segment
from acl_dist.errors import DataError, StoreError
from acl_dist.store import FeatureStore, StoreWriter, VideoRecord, feature_views


def make_records(n=7, dims=(6, 5), seed=0, subsets=("train", "test")):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        t = int(rng.integers(1, 40))
        out.append(VideoRecord(
            video_id=f"vid_{i:03d}", subset=subsets[i % len(subsets)], duration=t * 0.64 + 0.1,
            fps=25.0, snippet_frames=16, num_snippets=t, labels=["jump"] if i % 3 else [],
            segments=[Segment("jump", 0.5, 1.5), Segment("jump", 2.0, 2.5)] if i % 3 else [],
            features={"rgb": rng.standard_normal((t, dims[0])).astype(np.float32),
                      "flow": rng.standard_normal((t, dims[1])).astype(np.float32)}))
    return out


def write(path, records, dims=(6, 5), **kw):
    with StoreWriter(str(path), {"rgb": dims[0], "flow": dims[1]}, ["jump"], **kw) as w:
        for r in records:
            w.add(r)
    return FeatureStore.open(str(path))


@pytest.mark.parametrize("dtype,atol", [("float32", 0.0), ("float16", 2e-3)])
def test_round_trip_ragged(tmp_path, dtype, atol):
    records = make_records()
    store = write(tmp_path / "s", records, dtype=dtype)
    got = {r.video_id: r for r in store.iter_videos(batch_rows=3)}
    assert set(got) == {r.video_id for r in records}
    for r in records:
        g = got[r.video_id]
        assert g.features["rgb"].dtype == np.dtype(dtype)
        assert g.features["rgb"].shape == r.features["rgb"].shape
        assert g.features["flow"].shape == r.features["flow"].shape
        np.testing.assert_allclose(g.features["rgb"].astype(np.float32), r.features["rgb"],
                                   atol=atol * 4, rtol=atol)
        assert (g.subset, g.duration, g.num_snippets, g.labels, g.segments) == \
            (r.subset, r.duration, r.num_snippets, r.labels, r.segments)


def test_manifest_and_layout(tmp_path):
    records = make_records()
    store = write(tmp_path / "s", records, fps=25.0, snippet_frames=16)
    m = store.manifest
    assert m["format"] == "acl-dist-store" and m["format_version"] == 1
    assert m["streams"] == {"rgb": 6, "flow": 5} and m["dtype"] == "float16"
    assert m["classes"] == ["jump"] and (m["fps"], m["snippet_frames"]) == (25.0, 16)
    train = [r for r in records if r.subset == "train"]
    assert m["subsets"]["train"]["videos"] == len(train)
    assert m["subsets"]["train"]["snippets"] == sum(r.num_snippets for r in train)
    assert all(s["path"].startswith(f"shards/{s['subset']}/") for s in m["shards"])
    # Shards of a subset hold only that subset.
    for url in store.shard_urls("test"):
        assert set(pq.read_table(url, columns=["subset"])["subset"].to_pylist()) == {"test"}
    gt = json.loads((tmp_path / "s" / "gt.json").read_text())
    assert set(gt["database"]) == {r.video_id for r in records}
    assert gt["database"]["vid_001"]["annotations"][0] == {"label": "jump", "segment": [0.5, 1.5]}


def test_schema_types(tmp_path):
    store = write(tmp_path / "s", make_records(), dtype="float16")
    schema = pq.read_schema(store.shard_urls()[0])
    field = schema.field("rgb")
    assert str(field.type) == "large_binary"
    assert field.metadata[b"acl_dist.dim"] == b"6" and field.metadata[b"acl_dist.dtype"] == b"float16"
    assert schema.field("flow").metadata[b"acl_dist.dim"] == b"5"
    assert schema.field("num_snippets").type.bit_width == 32
    # A cell is exactly the row-major (T, D) little-endian array.
    row = pq.read_table(store.shard_urls()[0]).slice(0, 1).to_pylist()[0]
    arr = np.frombuffer(row["rgb"], dtype="<f2").reshape(row["num_snippets"], 6)
    first = next(store.iter_videos())
    np.testing.assert_array_equal(arr, first.features["rgb"])


def test_shard_rollover_and_subset_filter(tmp_path):
    records = make_records(n=30)
    store = write(tmp_path / "s", records, shard_mb=0.001)  # ~1 KB of features per shard
    assert len(store.manifest["shards"]) > 4
    assert sum(s["rows"] for s in store.manifest["shards"]) == 30
    test_ids = [r.video_id for r in store.iter_videos("test", streams=[])]
    assert test_ids == [r.video_id for r in records if r.subset == "test"]
    assert store.num_videos("test") == len(test_ids)
    with pytest.raises(StoreError, match="no subset 'val'"):
        list(store.iter_videos("val"))


def test_metadata_only_reads_no_features(tmp_path):
    store = write(tmp_path / "s", make_records())
    meta = store.metadata()
    assert all(m.features == {} for m in meta) and len(meta) == 7
    only_rgb = next(store.iter_videos(streams=["rgb"]))
    assert set(only_rgb.features) == {"rgb"}


def test_failure_inside_writer_leaves_nothing(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with StoreWriter(str(out), {"rgb": 6, "flow": 5}, ["jump"]) as w:
            for r in make_records():
                w.add(r)
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_add_checks(tmp_path):
    r = make_records(n=1)[0]
    with pytest.raises(DataError, match="vid_000: duplicate video id"):
        write(tmp_path / "a", [r, r])
    bad = VideoRecord(**{**r.__dict__, "features": {"rgb": r.features["rgb"][:, :3],
                                                    "flow": r.features["flow"]}})
    with pytest.raises(DataError, match=r"vid_000: rgb features have shape .* expected \(T, 6\)"):
        write(tmp_path / "b", [bad])
    bad = VideoRecord(**{**r.__dict__, "num_snippets": r.num_snippets + 1})
    with pytest.raises(DataError, match="vid_000: rgb has"):
        write(tmp_path / "c", [bad])
    bad = VideoRecord(**{**r.__dict__, "subset": "a/b"})
    with pytest.raises(DataError, match="subset name"):
        write(tmp_path / "d", [bad])
    with pytest.raises(StoreError, match="no videos"):
        write(tmp_path / "e", [])
    assert sorted(os.listdir(tmp_path)) == []


def test_existing_output_and_overwrite(tmp_path):
    write(tmp_path / "s", make_records(n=3))
    with pytest.raises(StoreError, match="already exists"):
        write(tmp_path / "s", make_records(n=2))
    store = write(tmp_path / "s", make_records(n=2), overwrite=True)
    assert store.num_videos() == 2
    assert sorted(os.listdir(tmp_path)) == ["s"]


def test_open_errors(tmp_path):
    with pytest.raises(StoreError, match="no feature store at"):
        FeatureStore.open(str(tmp_path / "missing"))
    (tmp_path / "half").mkdir()
    with pytest.raises(StoreError, match="no manifest.json: not a complete acl-dist store"):
        FeatureStore.open(str(tmp_path / "half"))
    store = write(tmp_path / "s", make_records(n=2))
    m = dict(store.manifest, format_version=99)
    (tmp_path / "s" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="format version 99"):
        FeatureStore.open(str(tmp_path / "s"))


def test_corrupt_shard_names_file(tmp_path):
    store = write(tmp_path / "s", make_records(n=3, subsets=("train",)))
    path = store.shard_urls()[0]
    with open(path, "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(StoreError, match="cannot read shard .*part-00000.parquet"):
        list(store.iter_videos())


def test_row_groups_cover_each_video_once_and_read_alone(tmp_path):
    """The attention pass's units (FeatureStore.row_groups): every video of the subsets in
    exactly one row group, each read on its own with the columns asked for, features equal
    to the store's; a truncated shard is refused naming it."""
    records = make_records(n=30)
    store = write(tmp_path / "s", records, shard_mb=0.001)
    units = store.row_groups("test")
    assert len(units) > 2 and sum(u["rows"] for u in units) == store.num_videos("test")
    seen = {}
    for u in units:
        table = FeatureStore.read_row_group(u["url"], u["row_group"], ["video_id", "rgb"])
        assert table.column_names == ["video_id", "rgb"] and table.num_rows == u["rows"]
        views = feature_views(table.column("rgb"), 6, store.dtype)
        for vid, rgb in zip(table.column("video_id").to_pylist(), views):
            assert vid not in seen
            seen[vid] = rgb.astype(np.float32)
    want = {r.video_id: r.features["rgb"] for r in records if r.subset == "test"}
    assert seen.keys() == want.keys()
    for vid, rgb in want.items():
        np.testing.assert_allclose(seen[vid], rgb, atol=2e-3)   # float16 store
    with open(units[0]["url"], "r+b") as fh:
        fh.truncate(100)
    with pytest.raises(StoreError, match="cannot read shard .*part-"):
        store.row_groups("test")
