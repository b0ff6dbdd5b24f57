"""Tests of ``acl_dist.ingest``: every source layout round-trips into a feature store, and
every validation problem is one clear error naming the video, with no store left behind.

Fixtures are tiny real-format copies of the field's layouts (FORMATS.md §1), built in
``tmp_path`` by the ``write_*`` helpers below.
"""

from __future__ import annotations

import csv
import json
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from acl_dist import cli
from acl_dist.errors import ConfigError, DataError, StoreError
from acl_dist.ingest import ingest
from acl_dist.ingest.layouts import load_array
from acl_dist.store import FeatureStore

SNIPPET_S = 16 / 25.0  # 0.64 s: the standard grid
DIM = 6


# --------------------------------------------------------------------------- fixtures


@dataclass
class Vid:
    """One source video: its streams, subset, segments (label, start, end) and duration."""

    id: str
    subset: str
    rgb: np.ndarray
    flow: np.ndarray
    segments: list[tuple[str, float, float]] = field(default_factory=list)
    duration: float | None = None

    @property
    def T(self) -> int:
        return self.rgb.shape[0]


def feats(name: str, T: int, dim: int = DIM) -> np.ndarray:
    """Deterministic float32 (T, dim) features, different for every ``name``."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    return (rng.standard_normal((T, dim)) * 3).astype(np.float32)


def vid(name: str, subset: str, T: int, segments=(), dim: int = DIM,
        duration: float | None = None) -> Vid:
    return Vid(name, subset, feats(name + "/rgb", T, dim), feats(name + "/flow", T, dim),
               list(segments), duration)


def thumos_videos() -> list[Vid]:
    """Five THUMOS-like videos in two subsets (train 3, test 2), T 5..12."""
    return [
        vid("video_validation_0000051", "train", 10,
            [("BaseballPitch", 0.5, 2.25), ("BaseballPitch", 3.0, 4.5)]),
        vid("video_validation_0000052", "train", 8,
            [("CliffDiving", 1.0, 3.0), ("BaseballPitch", 3.5, 4.0)]),
        vid("video_validation_0000053", "train", 12, [("HighJump", 0.0, 7.0)]),
        vid("video_test_0000004", "test", 6, [("CliffDiving", 0.64, 1.92)]),
        vid("video_test_0000006", "test", 5, []),
    ]


def write_json(path: Path, obj) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def basnet_gt(videos: list[Vid]) -> dict:
    """BaSNet/UM/CoLA ``gt.json``: segments as strings, no duration."""
    return {"database": {
        v.id: {"subset": v.subset,
               "annotations": [{"label": lb, "segment": [str(s), str(e)]}
                               for lb, s, e in v.segments]}
        for v in videos}}


def anet_gt(videos: list[Vid], version: str = "1.3", key=lambda v: v.id, **extra) -> dict:
    """ActivityNet v1.2/v1.3-style JSON (float segments, ``duration``)."""
    return {"version": version, "taxonomy": [], **extra, "database": {
        key(v): {"subset": v.subset, "duration": v.duration, "url": "",
                 "annotations": [{"label": lb, "segment": [s, e]} for lb, s, e in v.segments]}
        for v in videos}}


def write_npy_split(root: Path, videos: list[Vid], gt: bool = True,
                    splits: dict[str, list[str]] | None = None,
                    skip: set[tuple[str, str]] = frozenset()) -> Path:
    """``ROOT/features/<subset>/{rgb,flow}/<video>.npy`` + BaSNet ``ROOT/gt.json``.

    ``skip``: (video, stream) pairs whose file is not written.
    """
    for v in videos:
        for stream in ("rgb", "flow"):
            if (v.id, stream) in skip:
                continue
            d = root / "features" / v.subset / stream
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"{v.id}.npy", getattr(v, stream))
    if gt:
        unique = list({v.id: v for v in videos}.values())
        write_json(root / "gt.json", basnet_gt(unique))
    for subset, ids in (splits or {}).items():
        (root / f"split_{subset}.txt").write_text("\n".join(ids) + "\n")
    return root


def write_npy_concat_folders(root: Path, videos: list[Vid]) -> Path:
    """ACM-Net: ``ROOT/<subset>/<video>.npy`` (T, 2D), RGB first; ``ROOT/gt.json`` with
    float segments and ``duration``/``frames``."""
    for v in videos:
        (root / v.subset).mkdir(parents=True, exist_ok=True)
        np.save(root / v.subset / f"{v.id}.npy", np.concatenate([v.rgb, v.flow], axis=1))
    db = {v.id: {"subset": v.subset, "duration": v.duration,
                 "frames": int(round((v.duration or 0) * 25)),
                 "annotations": [{"label": lb, "segment": [s, e]} for lb, s, e in v.segments]}
          for v in videos}
    write_json(root / "gt.json", {"database": db})
    return root


def write_npy_concat_flat(root: Path, videos: list[Vid], name=lambda v: v.id) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for v in videos:
        np.save(root / f"{name(v)}.npy", np.concatenate([v.rgb, v.flow], axis=1))
    return root


def obj_array(items: list) -> np.ndarray:
    """1-D object array (what W-TALC pickles), whatever the items' shapes."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = item
    return out


def write_wtalc(root: Path, videos: list[Vid], classes: list[str],
                labels_all: list[list[str]] | None = None) -> Path:
    """``ROOT/Thumos14reduced-I3D-JOINTFeatures.npy`` + ``ROOT/Thumos14reduced-Annotations/``."""
    ann = root / "Thumos14reduced-Annotations"
    ann.mkdir(parents=True)
    joint = obj_array([np.concatenate([v.rgb, v.flow], axis=1) for v in videos])
    np.save(root / "Thumos14reduced-I3D-JOINTFeatures.npy", joint, allow_pickle=True)
    np.save(ann / "videoname.npy", np.array([v.id.encode() for v in videos]))
    np.save(ann / "subset.npy", np.array([v.subset.encode() for v in videos]))
    np.save(ann / "duration.npy", np.array([[v.duration] for v in videos], dtype=np.float64))
    np.save(ann / "labels.npy", obj_array([[lb for lb, _, _ in v.segments] for v in videos]),
            allow_pickle=True)
    np.save(ann / "segments.npy", obj_array([[[s, e] for _, s, e in v.segments]
                                             for v in videos]), allow_pickle=True)
    if labels_all is None:
        labels_all = [sorted({lb for lb, _, _ in v.segments}) for v in videos]
    np.save(ann / "labels_all.npy", obj_array(labels_all), allow_pickle=True)
    np.save(ann / "classlist.npy", np.array([c.encode() for c in classes]))
    return root


def write_cmcs(root: Path, entries: list[tuple[str, np.ndarray, np.ndarray, int]],
               folder: str = "resize-step16") -> Path:
    """``ROOT/{rgb,flow}-<folder>/<file>-{rgb,flow}.npz`` with ``feature`` (B, T, D) and
    ``frame_cnt``. ``entries``: (file name stem, rgb (B,T,D), flow (B,T,D), frame count)."""
    for stream in ("rgb", "flow"):
        (root / f"{stream}-{folder}").mkdir(parents=True, exist_ok=True)
    for stem, rgb, flow, frames in entries:
        for stream, arr in (("rgb", rgb), ("flow", flow)):
            np.savez(root / f"{stream}-{folder}" / f"{stem}-{stream}.npz", feature=arr,
                     frame_cnt=np.array(frames))
    return root


def crops(name: str, B: int, T: int, dim: int = DIM) -> np.ndarray:
    return np.stack([feats(f"{name}/crop{b}", T, dim) for b in range(B)])


# --------------------------------------------------------------------------- checks


def read_store(out) -> tuple[FeatureStore, dict]:
    store = FeatureStore.open(str(out))
    return store, {r.video_id: r for r in store.iter_videos()}


def assert_video(rec, v: Vid, dtype: str = "float16", duration: float | None = None,
                 subset: str | None = None) -> None:
    """The stored record equals the source video (features after the dtype cast)."""
    cast = np.float16 if dtype == "float16" else np.float32
    assert rec.subset == (subset or v.subset)
    assert rec.num_snippets == v.T
    for stream in ("rgb", "flow"):
        got = rec.features[stream]
        assert got.dtype == cast
        np.testing.assert_array_equal(got, getattr(v, stream).astype(cast))
    assert [tuple(s) for s in rec.segments] == [(lb, float(s), float(e))
                                                for lb, s, e in v.segments]
    want_labels = list(dict.fromkeys(lb for lb, _, _ in v.segments))
    assert rec.labels == want_labels
    if duration is None:
        duration = max(v.T * SNIPPET_S, v.duration or 0.0)
    assert rec.duration == pytest.approx(duration)


def assert_no_output(out: Path) -> None:
    """Nothing at ``out``, and no hidden temporary siblings left in its parent."""
    assert not out.exists()
    if out.parent.exists():
        assert sorted(p.name for p in out.parent.iterdir()) == []


@pytest.fixture
def out(tmp_path) -> Path:
    """Store destination in its own (not yet existing) parent, so leftovers are visible."""
    return tmp_path / "stores" / "store"


# --------------------------------------------------------------------------- npy-split


def test_npy_split_round_trip(tmp_path, out):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    summary = ingest("npy-split", str(root), str(out), quiet=True)

    assert summary.videos == 5
    assert summary.subsets == {"test": 2, "train": 3}
    assert summary.skipped_videos == [] and summary.dropped_segments == []
    assert summary.feature_bytes == sum(v.T for v in videos) * DIM * 2 * 2
    store, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos)
    for v in videos:
        assert_video(recs[v.id], v)
    m = store.manifest
    assert m["streams"] == {"rgb": DIM, "flow": DIM}
    assert m["dtype"] == "float16"
    assert m["classes"] == ["BaseballPitch", "CliffDiving", "HighJump"]
    assert m["subsets"]["train"]["segments"] == 5 and m["subsets"]["test"]["segments"] == 1
    assert m["source"]["layout"] == "npy-split"
    assert m["skipped"] == []
    # the store's own gt.json is ActivityNet JSON with float segments
    gt = store.ground_truth()["database"]
    assert gt["video_validation_0000051"]["annotations"][0] == {
        "label": "BaseballPitch", "segment": [0.5, 2.25]}
    assert gt["video_test_0000006"] == {"subset": "test", "annotations": [],
                                        "duration": pytest.approx(5 * SNIPPET_S)}
    assert sorted(store.subsets) == ["test", "train"]
    assert [r.video_id for r in store.iter_videos("test")] == ["video_test_0000004",
                                                               "video_test_0000006"]


def test_npy_split_float32_is_exact(tmp_path, out):
    videos = thumos_videos()
    # values float16 would round: float32 must keep them bit for bit
    videos[0].rgb[0, 0] = np.float32(1.0001)
    root = write_npy_split(tmp_path / "basnet", videos)
    ingest("npy-split", str(root), str(out), dtype="float32", quiet=True)
    store, recs = read_store(out)
    assert store.dtype == "float32"
    for v in videos:
        assert_video(recs[v.id], v, dtype="float32")
    assert recs[videos[0].id].features["rgb"][0, 0] == np.float32(1.0001)


def test_npy_split_list_limits_videos(tmp_path, out):
    videos = thumos_videos()
    keep = ["video_validation_0000053", "video_validation_0000051"]
    root = write_npy_split(tmp_path / "basnet", videos, splits={"train": keep})
    summary = ingest("npy-split", str(root), str(out), quiet=True)
    assert summary.subsets == {"train": 2, "test": 2}  # no split_test.txt: all test videos
    _, recs = read_store(out)
    assert sorted(recs) == sorted(keep + ["video_test_0000004", "video_test_0000006"])
    assert "video_validation_0000052" not in recs
    by_id = {v.id: v for v in videos}
    for vid_id in recs:
        assert_video(recs[vid_id], by_id[vid_id])


def test_npy_split_small_shards_round_trip(tmp_path, out):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    ingest("npy-split", str(root), str(out), shard_mb=1e-5, quiet=True)
    store, recs = read_store(out)
    assert len(store.manifest["shards"]) == 5  # one shard per video at this size
    for v in videos:
        assert_video(recs[v.id], v)


# --------------------------------------------------------------------------- npy-concat


def test_npy_concat_acmnet_folders(tmp_path, out):
    videos = [
        vid("video_validation_0000051", "validation", 10, [("BaseballPitch", 0.5, 2.0)],
            duration=8.0),            # stated duration longer than the features: kept
        vid("video_validation_0000052", "validation", 9, [("CliffDiving", 1.0, 3.0)],
            duration=4.0),            # shorter than the features (5.76 s): features win
        vid("video_test_0000004", "test", 7, [("BaseballPitch", 0.0, 1.5),
                                              ("CliffDiving", 2.0, 4.0)], duration=4.5),
    ]
    root = write_npy_concat_folders(tmp_path / "acmnet", videos)
    summary = ingest("npy-concat", str(root), str(out), quiet=True)
    assert summary.subsets == {"test": 1, "validation": 2}
    store, recs = read_store(out)
    assert store.streams == {"rgb": DIM, "flow": DIM}
    for v in videos:
        assert_video(recs[v.id], v)
    assert recs["video_validation_0000051"].duration == 8.0
    assert recs["video_validation_0000052"].duration == pytest.approx(9 * SNIPPET_S)


def test_npy_concat_flat_actionformer(tmp_path, out):
    videos = [
        vid("video_validation_0000051", "Validation", 10, [("BaseballPitch", 0.5, 2.0)],
            duration=6.5),
        vid("video_validation_0000052", "Validation", 8, [("HighJump", 1.0, 3.0)],
            duration=5.2),
        vid("video_test_0000004", "Test", 6, [("HighJump", 0.5, 2.5)], duration=3.9),
    ]
    root = write_npy_concat_flat(tmp_path / "i3d_features", videos)
    np.save(root / "video_test_9999999.npy", feats("unannotated", 4, 2 * DIM))  # ignored
    gt = anet_gt(videos, version="Thumos14-30fps")
    for entry in gt["database"].values():
        entry["fps"] = 30.0
        for a in entry["annotations"]:
            a["segment(frames)"] = [a["segment"][0] * 30, a["segment"][1] * 30]
            a["label_id"] = 0
    gt_path = write_json(tmp_path / "annotations" / "thumos14.json", gt)

    summary = ingest("npy-concat", str(root), str(out), gt=str(gt_path), quiet=True)
    assert summary.subsets == {"Validation": 2, "Test": 1}
    _, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos)
    for v in videos:
        assert_video(recs[v.id], v)


def test_npy_concat_flat_v_prefixed_files(tmp_path, out):
    """ActivityNet features named ``v_<id>.npy`` while the GT keys are ``<id>``."""
    videos = [vid("-0RD6Tq5UB0", "training", 8, [("Drinking coffee", 0.5, 4.0)], duration=5.0),
              vid("0bosp4-pyTM", "validation", 6, [("Knitting", 1.0, 3.5)], duration=3.8)]
    root = write_npy_concat_flat(tmp_path / "anet", videos, name=lambda v: "v_" + v.id)
    gt_path = write_json(tmp_path / "anet_1.3.json", anet_gt(videos))
    ingest("npy-concat", str(root), str(out), gt=str(gt_path), quiet=True)
    _, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos)
    for v in videos:
        assert_video(recs[v.id], v)


def test_npy_concat_flat_without_gt_is_config_error(tmp_path, out):
    root = write_npy_concat_flat(tmp_path / "flat", thumos_videos()[:2])
    with pytest.raises(ConfigError, match="--gt"):
        ingest("npy-concat", str(root), str(out), quiet=True)
    assert_no_output(out)


def test_npy_concat_odd_width_names_video(tmp_path, out):
    videos = thumos_videos()[:3]
    for v in videos:
        v.subset = "validation"
        v.duration = 10.0
    root = write_npy_concat_folders(tmp_path / "acmnet", videos)
    np.save(root / "validation" / f"{videos[1].id}.npy", feats("odd", 8, 2 * DIM + 1))
    with pytest.raises(DataError, match=r"\(T, 2D\)") as err:
        ingest("npy-concat", str(root), str(out), quiet=True)
    assert err.value.video == videos[1].id
    assert_no_output(out)


# --------------------------------------------------------------------------- wtalc


WTALC_CLASSES = ["BaseballPitch", "CliffDiving", "HighJump", "PoleVault"]


def wtalc_videos() -> list[Vid]:
    return [
        vid("video_validation_0000051", "validation", 10,
            [("BaseballPitch", 0.4, 2.2), ("BaseballPitch", 3.1, 4.9)], duration=6.6),
        vid("video_validation_0000052", "validation", 7,
            [("CliffDiving", 1.0, 2.0), ("HighJump", 2.5, 4.0)], duration=4.4),
        vid("video_test_0000004", "test", 9, [("PoleVault", 0.2, 5.0)], duration=5.5),
        vid("video_test_0000006", "test", 5, [], duration=3.0),
    ]


def test_wtalc_needs_allow_pickle(tmp_path, out):
    root = write_wtalc(tmp_path / "wtalc", wtalc_videos(), WTALC_CLASSES)
    with pytest.raises(ConfigError, match="--allow-pickle"):
        ingest("wtalc", str(root), str(out), quiet=True)
    assert_no_output(out)


def test_wtalc_round_trip(tmp_path, out):
    videos = wtalc_videos()
    # the last video has no segments: its labels come from labels_all (unknowns dropped)
    labels_all = [["BaseballPitch"], ["CliffDiving", "HighJump"], ["PoleVault"],
                  ["HighJump", "NotAClass"]]
    root = write_wtalc(tmp_path / "wtalc", videos, WTALC_CLASSES, labels_all=labels_all)
    summary = ingest("wtalc", str(root), str(out), allow_pickle=True, quiet=True)
    assert summary.subsets == {"validation": 2, "test": 2}
    store, recs = read_store(out)
    assert store.classes == WTALC_CLASSES  # the classlist.npy order, not sorted labels
    assert store.streams == {"rgb": DIM, "flow": DIM}
    for v in videos[:3]:
        assert_video(recs[v.id], v)
    last = recs["video_test_0000006"]
    assert last.segments == [] and last.labels == ["HighJump"]
    assert last.duration == pytest.approx(3.2)  # 5 snippets cover 3.2 s > stated 3.0
    np.testing.assert_array_equal(last.features["flow"], videos[3].flow.astype(np.float16))


def test_wtalc_row_count_mismatch(tmp_path, out):
    root = write_wtalc(tmp_path / "wtalc", wtalc_videos(), WTALC_CLASSES)
    ann = root / "Thumos14reduced-Annotations"
    np.save(ann / "subset.npy", np.array([b"validation"] * 3))
    with pytest.raises(DataError, match="subset.npy has 3 rows"):
        ingest("wtalc", str(root), str(out), allow_pickle=True, quiet=True)
    assert_no_output(out)


def test_load_array_pickle_hint(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, obj_array([np.zeros((2, 3)), np.zeros((4, 3))]), allow_pickle=True)
    with pytest.raises(DataError, match="--allow-pickle") as err:
        load_array(str(path), "vidX", "features")
    assert err.value.video == "vidX"
    assert len(load_array(str(path), "vidX", "features", allow_pickle=True)) == 2


# --------------------------------------------------------------------------- cmcs-npz


@pytest.mark.parametrize("B", [1, 10])
def test_cmcs_thumos_crops_averaged(tmp_path, out, B):
    specs = [("video_validation_0000051", "validation", 9, [("BaseballPitch", 0.5, 3.0)]),
             ("video_validation_0000052", "validation", 6, [("HighJump", 1.0, 2.0)]),
             ("video_test_0000004", "test", 7, [("BaseballPitch", 0.0, 4.0)])]
    entries, videos = [], []
    for name, subset, T, segs in specs:
        rgb, flow = crops(name + "/rgb", B, T), crops(name + "/flow", B, T)
        frames = T * 16 + 5
        entries.append((name, rgb, flow, frames))
        videos.append(Vid(name, subset, rgb.mean(axis=0), flow.mean(axis=0), segs,
                          duration=round(frames / 25.0, 2) - 0.1))
    root = write_cmcs(tmp_path / "cmcs", entries)
    # a decoy crop folder: the resize folder is preferred over it
    write_cmcs(root, [(n, r * 0 + 99, f * 0 + 99, c) for n, r, f, c in entries],
               folder="oversample-step16")
    gt_path = write_json(tmp_path / "thumos.json", anet_gt(videos, version="THUMOS14"))

    summary = ingest("cmcs-npz", str(root), str(out), gt=str(gt_path), quiet=True)
    assert summary.subsets == {"validation": 2, "test": 1}
    _, recs = read_store(out)
    for v, (_, _, _, frames) in zip(videos, entries):
        # duration: frame_cnt / fps beats both the (shorter) GT duration and the coverage
        assert_video(recs[v.id], v, duration=frames / 25.0)
    if B == 10:
        first = recs[videos[0].id].features["rgb"]
        assert not np.array_equal(first, entries[0][1][0].astype(np.float16))


def test_cmcs_activitynet_v_prefix(tmp_path, out):
    ids = [("sJFgo9H6zNo", "training", 8, [("Long jump", 0.5, 3.0)], 9.7),
           ("-0RD6Tq5UB0", "training", 5, [("Drinking coffee", 0.0, 2.5)], 2.9),
           ("0bosp4-pyTM", "validation", 6, [("Long jump", 1.0, 3.5)], 4.1)]
    entries, videos = [], []
    for vid_id, subset, T, segs, dur in ids:
        rgb, flow = crops(vid_id + "/rgb", 1, T), crops(vid_id + "/flow", 1, T)
        entries.append(("v_" + vid_id, rgb, flow, T * 16))
        videos.append(Vid(vid_id, subset, rgb[0], flow[0], segs, duration=dur))
    root = write_cmcs(tmp_path / "cmcs-anet", entries)
    gt_path = write_json(tmp_path / "activity_net.v1-3.min.json",
                         anet_gt(videos, version="VERSION 1.3"))

    ingest("cmcs-npz", str(root), str(out), gt=str(gt_path), quiet=True)
    store, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos)  # GT keys, not file names
    assert store.classes == ["Drinking coffee", "Long jump"]
    for v in videos:
        assert_video(recs[v.id], v)
    assert recs["sJFgo9H6zNo"].duration == 9.7


def test_cmcs_feature_stride_subsamples(tmp_path, out):
    T_raw = [12, 10, 16]  # vectors every 4 frames -> every 4th one is a 16-frame snippet
    entries, videos = [], []
    for i, T in enumerate(T_raw):
        name = f"video_validation_00000{60 + i}"
        rgb, flow = crops(name + "/rgb", 1, T), crops(name + "/flow", 1, T)
        entries.append((name, rgb, flow, T * 4))
        videos.append(Vid(name, "validation", rgb[0, ::4], flow[0, ::4],
                          [("HighJump", 0.0, 1.0)], duration=1.0))
    root = write_cmcs(tmp_path / "cmcs", entries, folder="resize-step4")
    gt_path = write_json(tmp_path / "gt.json", anet_gt(videos))
    ingest("cmcs-npz", str(root), str(out), gt=str(gt_path), feature_stride=4,
           snippet_frames=16, quiet=True)
    _, recs = read_store(out)
    assert [recs[v.id].num_snippets for v in videos] == [3, 3, 4]
    for v in videos:
        assert_video(recs[v.id], v)


def test_cmcs_stride_must_divide_snippet(tmp_path, out):
    name = "video_validation_0000051"
    root = write_cmcs(tmp_path / "cmcs", [(name, crops("a", 1, 4), crops("b", 1, 4), 64)])
    gt_path = write_json(tmp_path / "gt.json", anet_gt(
        [vid(name, "validation", 4, duration=2.0)]))
    with pytest.raises(ConfigError, match="multiple of --feature-stride 5"):
        ingest("cmcs-npz", str(root), str(out), gt=str(gt_path), feature_stride=5,
               quiet=True)
    assert_no_output(out)


# --------------------------------------------------------------------------- BSN form


BSN_VIDEOS = [("v_sJFgo9H6zNo", "training", 8, [("Long jump", 0.5, 3.0)], 5.4),
              ("v_-0RD6Tq5UB0", "training", 5, [("Drinking coffee", 0.0, 2.5)], 3.1),
              ("v_0bosp4-pyTM", "validation", 6, [("Long jump", 1.0, 3.5)], 3.9)]


def write_bsn(tmp_path: Path) -> tuple[Path, Path, list[Vid]]:
    """BSN ``anet_anno_action.json`` (keyed ``v_<id>``, ``duration_second``, no subset) and
    ``video_info_new.csv``."""
    videos = [vid(i, s, T, segs, duration=d) for i, s, T, segs, d in BSN_VIDEOS]
    gt = {v.id: {"duration_second": v.duration, "duration_frame": int(v.duration * 30),
                 "feature_frame": int(v.duration * 30) // 16 * 16,
                 "annotations": [{"label": lb, "segment": [s, e]} for lb, s, e in v.segments]}
          for v in videos}
    gt_path = write_json(tmp_path / "bsn" / "anet_anno_action.json", gt)
    info = tmp_path / "bsn" / "video_info_new.csv"
    with open(info, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video", "numFrame", "seconds", "fps", "rfps", "subset", "featureFrame"])
        for v in videos:
            n = int(v.duration * 30)
            w.writerow([v.id, n, v.duration, 30.0, 30, v.subset, n // 16 * 16])
    return gt_path, info, videos


def test_bsn_gt_with_video_info_csv(tmp_path, out):
    gt_path, info, videos = write_bsn(tmp_path)
    # CMCS files without the v_ prefix, while the BSN keys have it
    entries = [(v.id[2:], v.rgb[None], v.flow[None], v.T * 16) for v in videos]
    root = write_cmcs(tmp_path / "cmcs", entries)
    classes = tmp_path / "bsn" / "action_name.csv"
    classes.write_text("action\nLong jump\nDrinking coffee\nKnitting\n")

    summary = ingest("cmcs-npz", str(root), str(out), gt=str(gt_path), gt_info=str(info),
                     classes_file=str(classes), quiet=True)
    assert summary.subsets == {"training": 2, "validation": 1}
    store, recs = read_store(out)
    assert store.classes == ["Long jump", "Drinking coffee", "Knitting"]
    assert sorted(recs) == sorted(v.id for v in videos)
    for v in videos:
        assert_video(recs[v.id], v)


def test_bsn_gt_flat_npy_concat(tmp_path, out):
    gt_path, info, videos = write_bsn(tmp_path)
    root = write_npy_concat_flat(tmp_path / "feats", videos)
    ingest("npy-concat", str(root), str(out), gt=str(gt_path), gt_info=str(info), quiet=True)
    _, recs = read_store(out)
    for v in videos:
        assert_video(recs[v.id], v)


def test_bsn_gt_without_csv_is_clear_error(tmp_path, out):
    gt_path, _, videos = write_bsn(tmp_path)
    root = write_npy_concat_flat(tmp_path / "feats", videos)
    with pytest.raises(DataError, match="video_info_new.csv") as err:
        ingest("npy-concat", str(root), str(out), gt=str(gt_path), quiet=True)
    assert err.value.video == videos[0].id
    assert_no_output(out)


# --------------------------------------------------------------------------- validation


def bad_case(name: str, videos: list[Vid]) -> tuple[str, dict]:
    """Break ``videos`` (THUMOS set) as named; returns (bad video id, npy-split kwargs)."""
    v = videos[2]  # a later video: the writer has already started
    kw: dict = {}
    if name == "missing stream":
        kw["skip"] = {(v.id, "flow")}
    elif name == "T mismatch":
        v.flow = v.flow[:-1]
    elif name == "wrong dim":
        v.rgb = feats("wide", v.T, DIM + 2)
    elif name == "NaN":
        v.rgb[3, 1] = np.nan
    elif name == "Inf":
        v.flow[5, 0] = -np.inf
    elif name == "empty":
        v.rgb, v.flow = v.rgb[:0], v.flow[:0]
    elif name == "float16 overflow":
        v.flow[2, 2] = 70000.0
    else:
        raise AssertionError(name)
    return v.id, kw


VIDEO_PROBLEMS = {
    "missing stream": r"missing flow file .*video_validation_0000053\.npy",
    "T mismatch": r"T mismatch between streams: rgb has 12 snippets but flow has 11",
    "wrong dim": r"rgb features have dim 8, expected 6",
    "NaN": r"rgb features contain 1 NaN/Inf values \(first at snippet 3\)",
    "Inf": r"flow features contain 1 NaN/Inf values \(first at snippet 5\)",
    "empty": r"empty video",
    "float16 overflow": r"beyond float16's range; ingest with --dtype float32",
}


@pytest.mark.parametrize("problem", sorted(VIDEO_PROBLEMS))
def test_bad_video_is_one_error_and_no_store(tmp_path, out, problem):
    videos = thumos_videos()
    bad_id, kw = bad_case(problem, videos)
    root = write_npy_split(tmp_path / "basnet", videos, **kw)
    with pytest.raises(DataError, match=VIDEO_PROBLEMS[problem]) as err:
        ingest("npy-split", str(root), str(out), quiet=True)
    assert err.value.video == bad_id
    assert str(err.value).startswith(f"{bad_id}: ")
    assert "--skip-bad" in str(err.value)
    assert_no_output(out)


@pytest.mark.parametrize("problem", sorted(VIDEO_PROBLEMS))
def test_bad_video_skipped_with_skip_bad(tmp_path, out, problem):
    videos = thumos_videos()
    bad_id, kw = bad_case(problem, videos)
    root = write_npy_split(tmp_path / "basnet", videos, **kw)
    summary = ingest("npy-split", str(root), str(out), skip_bad=True, quiet=True)
    assert [v for v, _ in summary.skipped_videos] == [bad_id]
    store, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos if v.id != bad_id)
    for v in videos:
        if v.id != bad_id:
            assert_video(recs[v.id], v)
    (skipped,) = store.manifest["skipped"]
    assert skipped["video"] == bad_id and skipped["dropped"] == "video"
    assert re.search(VIDEO_PROBLEMS[problem], skipped["problem"])
    assert store.manifest["subsets"]["train"]["videos"] == 2
    assert store.manifest["source"]["skip_bad"] is True


def test_max_trim_trims_instead(tmp_path, out):
    videos = thumos_videos()
    long_flow = videos[1].flow
    videos[1].flow = long_flow[:-1]  # rgb 8, flow 7
    root = write_npy_split(tmp_path / "basnet", videos)
    ingest("npy-split", str(root), str(out), max_trim=1, quiet=True)
    store, recs = read_store(out)
    rec = recs[videos[1].id]
    assert rec.num_snippets == 7
    np.testing.assert_array_equal(rec.features["rgb"], videos[1].rgb[:7].astype(np.float16))
    np.testing.assert_array_equal(rec.features["flow"], videos[1].flow.astype(np.float16))
    assert any(videos[1].id in n and "trimmed streams to 7" in n
               for n in store.manifest["notes"])
    # a difference of 2 is still too much for max_trim=1
    videos[1].flow = long_flow[:-2]
    root2 = write_npy_split(tmp_path / "basnet2", videos)
    with pytest.raises(DataError, match="--max-trim 2") as err:
        ingest("npy-split", str(root2), str(tmp_path / "stores2" / "s"), max_trim=1,
               quiet=True)
    assert err.value.video == videos[1].id


def test_float16_overflow_ok_as_float32(tmp_path, out):
    videos = thumos_videos()
    videos[2].flow[2, 2] = 70000.0
    root = write_npy_split(tmp_path / "basnet", videos)
    ingest("npy-split", str(root), str(out), dtype="float32", quiet=True)
    _, recs = read_store(out)
    assert recs[videos[2].id].features["flow"][2, 2] == 70000.0
    for v in videos:
        assert_video(recs[v.id], v, dtype="float32")


SEGMENT_PROBLEMS = {
    # (label, start, end) replacing the 2nd segment of video_validation_0000051 (T=10: 6.4 s)
    "outside": (("BaseballPitch", 3.0, 7.2), r"segment \[3.0, 7.2\] \(BaseballPitch\) lies "
                                              r"outside the video \[0, 6.40\] s"),
    "starts after end": (("BaseballPitch", 6.5, 6.9), r"lies outside the video"),
    "negative start": (("BaseballPitch", -1.0, 2.0), r"lies outside the video"),
    "reversed": (("BaseballPitch", 4.5, 3.0), r"reversed segment \[4.5, 3.0\]"),
    "zero-length": (("BaseballPitch", 3.0, 3.0), r"zero-length segment \[3.0, 3.0\]"),
    "unknown label": (("Skateboarding", 3.0, 4.5), r"label 'Skateboarding' is not in the "
                                                   r"class list"),
}


def write_segment_case(tmp_path: Path, problem: str) -> tuple[Path, Path, list[Vid]]:
    videos = thumos_videos()
    bad_seg, _ = SEGMENT_PROBLEMS[problem]
    videos[0].segments[1] = bad_seg
    root = write_npy_split(tmp_path / "basnet", videos)
    classes = tmp_path / "classes.txt"
    classes.write_text("BaseballPitch\nCliffDiving\nHighJump\nPoleVault\n")
    return root, classes, videos


@pytest.mark.parametrize("skip_bad", [False, True])
@pytest.mark.parametrize("problem", sorted(SEGMENT_PROBLEMS))
def test_a_bad_segment_is_recorded_and_kept_as_published_for_evaluation(tmp_path, out,
                                                                        problem, skip_bad):
    """A segment that does not fit its video (or is malformed) is evaluation data: the
    store's gt.json keeps it as published (the official protocol counts it), the training
    metadata leaves it out, and the manifest records it with the problem, with or without
    --skip-bad. A segment of a class missing from the class list stops the ingest, unless
    --skip-bad leaves it out of both (it belongs to no class of the store), recorded."""
    root, classes, videos = write_segment_case(tmp_path, problem)
    if problem == "unknown label" and not skip_bad:
        # a class list missing an annotated class is a mistake: one error, no store
        with pytest.raises(DataError, match=SEGMENT_PROBLEMS[problem][1]) as err:
            ingest("npy-split", str(root), str(out), classes_file=str(classes), quiet=True)
        assert str(err.value).startswith("video_validation_0000051: ")
        assert_no_output(out)
        return
    summary = ingest("npy-split", str(root), str(out), classes_file=str(classes),
                     skip_bad=skip_bad, quiet=True)
    assert summary.skipped_videos == []
    assert [v for v, _ in summary.dropped_segments] == ["video_validation_0000051"]
    store, recs = read_store(out)
    assert store.classes == ["BaseballPitch", "CliffDiving", "HighJump", "PoleVault"]
    first = videos[0]
    bad = first.segments[1]
    first.segments = first.segments[:1]  # the training metadata: the good segment only
    for v in videos:
        assert_video(recs[v.id], v)
    (entry,) = store.manifest["skipped"]
    assert entry["video"] == first.id and entry["dropped"] == "segment"
    assert re.search(SEGMENT_PROBLEMS[problem][1], entry["problem"])
    assert store.manifest["subsets"]["train"]["segments"] == 4
    assert any("gt.json keeps every segment" in n for n in store.manifest["notes"])
    published = [(a["label"], *a["segment"])
                 for a in store.ground_truth()["database"][first.id]["annotations"]]
    kept = [tuple(first.segments[0])] + ([] if problem == "unknown label" else [bad])
    assert [(lb, pytest.approx(a), pytest.approx(b)) for lb, a, b in kept] == published


def test_segment_just_past_coverage_is_clipped(tmp_path, out):
    videos = thumos_videos()
    # T=10 covers 6.4 s; 6.9 is less than one snippet (0.64 s) past the end
    videos[0].segments[1] = ("BaseballPitch", 5.0, 6.9)
    root = write_npy_split(tmp_path / "basnet", videos)
    summary = ingest("npy-split", str(root), str(out), quiet=True)
    assert summary.clipped_segments == 1
    store, recs = read_store(out)
    segs = recs[videos[0].id].segments
    assert tuple(segs[1]) == ("BaseballPitch", 5.0, pytest.approx(6.4))
    assert recs[videos[0].id].duration == pytest.approx(6.4)
    assert any("1 segments ended less than one snippet" in n for n in store.manifest["notes"])
    # evaluation data as published: gt.json keeps the segment's end at 6.9 s
    (_, second) = store.ground_truth()["database"][videos[0].id]["annotations"]
    assert second["segment"] == [5.0, pytest.approx(6.9)]
    assert store.manifest["skipped"] == []


def test_duplicate_video_id(tmp_path, out):
    videos = thumos_videos()
    dup = vid("video_validation_0000052", "test", 4, [])  # same id in another subset
    root = write_npy_split(tmp_path / "basnet", videos + [dup])
    with pytest.raises(DataError, match="duplicate video id") as err:
        ingest("npy-split", str(root), str(out), quiet=True)
    assert err.value.video == "video_validation_0000052"
    assert_no_output(out)

    summary = ingest("npy-split", str(root), str(out), skip_bad=True, quiet=True)
    assert summary.skipped_videos == [("video_validation_0000052", "duplicate video id")]
    store, recs = read_store(out)
    # the first occurrence ('test' is listed first on disk) is kept
    assert recs["video_validation_0000052"].subset == "test"
    assert recs["video_validation_0000052"].num_snippets == 4
    assert store.num_videos() == 5


def test_video_missing_from_gt(tmp_path, out):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    extra = vid("video_test_0000270", "test", 4, [])  # features but no annotation
    write_npy_split(root, [extra], gt=False)
    with pytest.raises(DataError, match="not in the annotation file") as err:
        ingest("npy-split", str(root), str(out), quiet=True)
    assert err.value.video == "video_test_0000270"
    assert "--skip-bad" in str(err.value)
    assert_no_output(out)

    summary = ingest("npy-split", str(root), str(out), skip_bad=True, quiet=True)
    assert [v for v, _ in summary.skipped_videos] == ["video_test_0000270"]
    store, recs = read_store(out)
    assert sorted(recs) == sorted(v.id for v in videos)
    assert store.manifest["skipped"][0]["dropped"] == "video"


def test_npy_concat_video_missing_from_gt_skipped(tmp_path, out):
    videos = [vid("video_validation_0000051", "validation", 6, [("HighJump", 0.5, 2.0)],
                  duration=4.0),
              vid("video_validation_0000052", "validation", 5, [("HighJump", 1.0, 2.0)],
                  duration=3.2)]
    root = write_npy_concat_folders(tmp_path / "acmnet", videos)
    np.save(root / "validation" / "video_validation_0000050.npy", feats("x", 4, 2 * DIM))
    with pytest.raises(DataError, match="not in the annotation file") as err:
        ingest("npy-concat", str(root), str(out), quiet=True)
    assert err.value.video == "video_validation_0000050"
    assert_no_output(out)
    summary = ingest("npy-concat", str(root), str(out), skip_bad=True, quiet=True)
    assert [v for v, _ in summary.skipped_videos] == ["video_validation_0000050"]
    _, recs = read_store(out)
    for v in videos:
        assert_video(recs[v.id], v)


def test_all_videos_bad_leaves_no_store(tmp_path, out):
    videos = thumos_videos()[:3]
    for v in videos:
        v.rgb[0, 0] = np.nan
    root = write_npy_split(tmp_path / "basnet", videos)
    with pytest.raises(DataError, match=r"no usable videos found \(3 skipped, first: "
                                        r"video_validation_0000051"):
        ingest("npy-split", str(root), str(out), skip_bad=True, quiet=True)
    assert_no_output(out)


def test_existing_output_needs_overwrite(tmp_path, out):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("old")
    with pytest.raises(StoreError, match="already exists.*--overwrite"):
        ingest("npy-split", str(root), str(out), quiet=True)
    assert (out / "keep.txt").read_text() == "old"

    # --overwrite replaces only a store: a directory of anything else is refused, kept
    with pytest.raises(StoreError, match="--overwrite refused.*not an acl-dist store.*keep.txt"):
        ingest("npy-split", str(root), str(out), overwrite=True, quiet=True)
    assert (out / "keep.txt").read_text() == "old"

    (out / "keep.txt").unlink()
    ingest("npy-split", str(root), str(out), quiet=True)   # an empty directory is free
    ingest("npy-split", str(root), str(out), overwrite=True, quiet=True)  # a store: replaced
    _, recs = read_store(out)
    assert len(recs) == 5
    assert sorted(p.name for p in out.parent.iterdir()) == ["store"]  # no .old / .tmp left


class Interrupt:
    """``np.load`` that raises KeyboardInterrupt on its ``n``-th call, noting the hidden
    temporary siblings of ``out`` at that moment (to prove a partial store existed)."""

    def __init__(self, n: int, out: Path):
        self.n, self.out, self.calls, self.tmp_seen = n, out, 0, []
        self.real = np.load

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            if self.out.parent.exists():
                self.tmp_seen = [p.name for p in self.out.parent.iterdir()
                                 if p.name.startswith(".")]
            raise KeyboardInterrupt
        return self.real(*args, **kwargs)


def test_interrupted_ingest_leaves_no_store(tmp_path, out, monkeypatch):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    fake = Interrupt(7, out)  # 2 loads per video: the 4th video's RGB
    monkeypatch.setattr(np, "load", fake)
    with pytest.raises(KeyboardInterrupt):
        ingest("npy-split", str(root), str(out), quiet=True)
    # while it wrote: its temporary store and its lock; afterwards neither
    assert sorted(n.split("-")[0] for n in fake.tmp_seen) == [".store.acl", ".store.tmp"]
    assert_no_output(out)
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(".store")]


def test_interrupted_overwrite_keeps_old_store(tmp_path, out, monkeypatch):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    ingest("npy-split", str(root), str(out), quiet=True)
    before = (out / "manifest.json").read_text()
    fake = Interrupt(5, out)
    monkeypatch.setattr(np, "load", fake)
    with pytest.raises(KeyboardInterrupt):
        ingest("npy-split", str(root), str(out), overwrite=True, quiet=True)
    monkeypatch.undo()
    assert fake.tmp_seen
    assert (out / "manifest.json").read_text() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["store"]
    _, recs = read_store(out)
    assert len(recs) == 5


def test_unknown_layout_and_missing_root(tmp_path, out):
    with pytest.raises(ConfigError, match="unknown layout 'npy'"):
        ingest("npy", str(tmp_path), str(out), quiet=True)
    with pytest.raises(ConfigError, match="no such directory"):
        ingest("npy-split", str(tmp_path / "nope"), str(out), quiet=True)
    assert_no_output(out)


# --------------------------------------------------------------------------- CLI


def test_cli_ingest(tmp_path, out, capsys):
    videos = thumos_videos()
    root = write_npy_split(tmp_path / "basnet", videos)
    rc = cli.main(["ingest", "--layout", "npy-split", "--root", str(root), "--out", str(out),
                   "--quiet"])
    captured = capsys.readouterr()
    assert rc == 0
    assert f"wrote {out}: 5 videos" in captured.out
    _, recs = read_store(out)
    for v in videos:
        assert_video(recs[v.id], v)

    bad_id, kw = bad_case("NaN", videos)
    bad_root = write_npy_split(tmp_path / "bad", videos, **kw)
    bad_out = tmp_path / "stores2" / "store"
    rc = cli.main(["ingest", "--layout", "npy-split", "--root", str(bad_root),
                   "--out", str(bad_out), "--quiet"])
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.startswith(f"acl-dist ingest: error: {bad_id}: rgb features contain")
    assert "Traceback" not in captured.err
    assert_no_output(bad_out)
