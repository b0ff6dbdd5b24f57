"""Store integrity and confinement: a damaged shard is one line naming it on every read
path (never NaN or garbage reaching a model), stores of the previous version still read,
paths a manifest names and video ids stay inside their roots, and ``--overwrite`` never
deletes a file of the user's kept in a store.

Damage is what a probe does to a shard: 4 KB of random bytes written over it in place
(same size), at offsets taken from the shard's own Parquet metadata. Each case has its
control: the same read of the undamaged copy succeeds with the same features.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from acl_dist.cli import main
from acl_dist.errors import DataError, StoreError
from acl_dist.ingest.validate import check_video_id
from acl_dist.ray_data import ROW_COLUMNS, UniformDescriptors, read_unit
from acl_dist.store import (FeatureStore, StoreWriter, feature_views, foreign_files,
                            not_own_store)
from acl_dist.synth import synthesize
from store_helpers import SMALL, small_store

DAMAGE = 4096


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small store and the same videos in the npy-split layout."""
    return small_store(tmp_path_factory.mktemp("integrity"))


def copy_store(small, tmp_path) -> tuple[str, Path]:
    dst = tmp_path / "store"
    shutil.copytree(small[0], dst)
    return str(dst), dst


def features(store: FeatureStore) -> dict[str, dict[str, np.ndarray]]:
    return {r.video_id: {s: np.array(a) for s, a in r.features.items()}
            for r in store.iter_videos()}


def damage(path: str, offset: int, n: int = DAMAGE, seed: int = 0) -> None:
    """Overwrite ``n`` bytes at ``offset`` with random bytes; the size stays."""
    size = Path(path).stat().st_size
    assert 0 <= offset and offset + n <= size
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(np.random.default_rng(seed).bytes(n))
    assert Path(path).stat().st_size == size


def offsets(url: str) -> dict[str, int]:
    """Where to damage a shard, from its own metadata: inside the rgb and flow data pages,
    over the first page header of rgb, the file's start, its footer."""
    md = pq.ParquetFile(url).metadata
    rg = md.row_group(0)
    chunk = {rg.column(i).path_in_schema: rg.column(i) for i in range(rg.num_columns)}
    size = Path(url).stat().st_size
    rgb, flow = chunk["rgb"], chunk["flow"]
    assert rgb.total_compressed_size > 2 * DAMAGE and flow.total_compressed_size > 2 * DAMAGE
    return {
        "rgb data page": rgb.data_page_offset + rgb.total_compressed_size // 2 - DAMAGE // 2,
        "flow data page": flow.data_page_offset + DAMAGE,
        "rgb page header": rgb.data_page_offset - 16,
        "file start": 0,
        "footer": size - DAMAGE,
        "last page and footer": size - md.serialized_size - 8 - DAMAGE // 2,
    }


# --------------------------------------------------------------------------- manifest


def test_manifest_records_size_and_checksums_of_every_shard(small):
    store = FeatureStore.open(small[0])
    assert store.manifest["format_version"] == 1
    for shard, url in zip(store.manifest["shards"], store.shard_urls()):
        data = Path(url).read_bytes()
        footer_len = int.from_bytes(data[-8:-4], "little")
        assert footer_len == pq.ParquetFile(url).metadata.serialized_size
        assert shard["bytes"] == len(data)
        assert shard["sha256"] == hashlib.sha256(data).hexdigest()
        assert shard["footer_sha256"] == hashlib.sha256(data[-footer_len - 8:]).hexdigest()
        assert shard["page_checksums"] is True
    assert store.check(deep=True) == len(store.manifest["shards"]) == 2


# --------------------------------------------------------------------------- damaged shards


#: What catches each damage: the page CRCs, Arrow's decoding of a page header, the tail
#: check, the footer hash.
CASES = {
    "rgb data page": "could not verify page integrity, CRC checksum verification failed",
    "flow data page": "could not verify page integrity, CRC checksum verification failed",
    "rgb page header": "(CRC checksum verification failed|Couldn't deserialize thrift)",
    "file start": r"Couldn't deserialize thrift: don't know what type: \\x[0-9a-f]{2} "
                  "Deserializing page header failed",
    "footer": "no Parquet footer at its end",
    "last page and footer": "its footer does not match the manifest's footer_sha256",
}


@pytest.mark.parametrize("where", CASES)
def test_random_bytes_in_a_shard_are_one_line_naming_it_on_every_read_path(small, tmp_path,
                                                                          where):
    path, _ = copy_store(small, tmp_path)
    store = FeatureStore.open(path)
    control = features(store)
    url = store.shard_urls("validation")[0]
    unit = store.row_groups("validation")[0]
    damage(url, offsets(url)[where])
    line = rf"^cannot read shard {re.escape(url)}: damaged: [ -~]+$"   # one printable line

    with pytest.raises(StoreError, match=line) as err:   # FeatureStore reader
        list(store.iter_videos())
    assert re.search(CASES[where], str(err.value)), str(err.value)
    with pytest.raises(StoreError, match=line):          # a Ray Data read task
        read_unit(unit, ROW_COLUMNS + ["rgb", "flow"], store.streams, store.dtype)
    with pytest.raises(StoreError, match=line):          # a row-group actor
        list(UniformDescriptors(store.streams, store.dtype)(pa.Table.from_pylist([unit])))
    with pytest.raises(StoreError, match=line):          # store.check reads every byte
        store.check(deep=True)
    if where == "flow data page":
        # what the checks stop: Arrow alone reads the damaged cells as features
        plain = pq.read_table(url, columns=["video_id", "flow"])
        views = feature_views(plain.column("flow"), 8, store.dtype, check=False)
        assert not all(np.array_equal(v, control[i]["flow"], equal_nan=True) for i, v in
                       zip(plain.column("video_id").to_pylist(), views))
    # the other shard is whole: it reads, with the features it had
    got = {r.video_id: r.features for r in store.iter_videos("test")}
    assert got and all(np.array_equal(got[v]["rgb"], control[v]["rgb"]) for v in got)


def test_damage_outside_the_read_columns_changes_nothing_read(small, tmp_path):
    """A pass that does not read the damaged column gets the same features (Arrow checks
    the pages it decodes); the reader of whole rows and the deep check see the damage."""
    path, _ = copy_store(small, tmp_path)
    store = FeatureStore.open(path)
    control = features(store)
    url = store.shard_urls("validation")[0]
    rg = pq.ParquetFile(url).metadata.row_group(0)
    seg = next(rg.column(i) for i in range(rg.num_columns)
               if rg.column(i).path_in_schema == "segments.list.element.label")
    damage(url, seg.data_page_offset + 8, n=min(DAMAGE, seg.total_compressed_size - 16))
    unit = store.row_groups("validation")[0]
    table = read_unit(unit, ROW_COLUMNS + ["rgb"], store.streams, store.dtype)
    views = feature_views(table.column("rgb"), 8, store.dtype)
    for vid, rgb in zip(table.column("video_id").to_pylist(), views):
        assert np.array_equal(rgb, control[vid]["rgb"])
    with pytest.raises(StoreError, match=rf"cannot read shard {re.escape(url)}: damaged: "):
        list(store.iter_videos())
    with pytest.raises(StoreError, match="its bytes do not match the manifest's sha256"):
        store.check(deep=True)


def test_the_undamaged_copy_reads_the_same_on_every_path(small, tmp_path):
    """The control of the damage cases: same paths, whole shards, equal features."""
    store = FeatureStore.open(small[0])
    control = features(store)
    assert len(control) == 12
    seen = {}
    for unit in store.row_groups():
        table = read_unit(unit, ROW_COLUMNS + ["rgb", "flow"], store.streams, store.dtype)
        for s in ("rgb", "flow"):
            for vid, a in zip(table.column("video_id").to_pylist(),
                              feature_views(table.column(s), 8, store.dtype)):
                seen.setdefault(vid, {})[s] = a
    assert seen.keys() == control.keys()
    for vid, f in control.items():
        assert np.array_equal(seen[vid]["rgb"], f["rgb"])
        assert np.array_equal(seen[vid]["flow"], f["flow"])
    out = UniformDescriptors(store.streams, store.dtype)(
        pa.Table.from_pylist(store.row_groups("test")))
    assert sum(t.num_rows for t in out) == store.num_videos("test")


def test_a_shard_of_another_size_is_refused_before_it_is_read(small, tmp_path):
    path, _ = copy_store(small, tmp_path)
    store = FeatureStore.open(path)
    url = store.shard_urls("test")[0]
    size = Path(url).stat().st_size
    with open(url, "ab") as fh:
        fh.write(b"\0" * 10)
    want = (f"cannot read shard {url}: damaged: it has {size + 10} bytes, the manifest says "
            f"{size}")
    with pytest.raises(StoreError) as err:
        list(store.iter_videos("test"))
    assert str(err.value) == want
    with pytest.raises(StoreError) as err:
        store.row_groups("test")
    assert str(err.value) == want


def _rewrite(url: str, table: pa.Table, **kw) -> None:
    pq.write_table(table, url, compression="none", use_dictionary=["subset"], **kw)


def _as_previous_version(path: str) -> None:
    """What the previous acl-dist wrote: no integrity fields, no page checksums."""
    mpath = Path(path, "manifest.json")
    manifest = json.loads(mpath.read_text())
    for shard in manifest["shards"]:
        url = str(Path(path, shard["path"]))
        _rewrite(url, pq.read_table(url))
        for key in ("bytes", "sha256", "footer_sha256", "page_checksums"):
            del shard[key]
    mpath.write_text(json.dumps(manifest))


def test_a_store_of_the_previous_version_opens_and_reads_the_same(small, tmp_path):
    path, _ = copy_store(small, tmp_path)
    _as_previous_version(path)
    store = FeatureStore.open(path)
    control = features(FeatureStore.open(small[0]))
    got = features(store)
    assert got.keys() == control.keys()
    assert all(np.array_equal(got[v]["flow"], control[v]["flow"]) for v in got)
    assert store.check(deep=True) == 2
    units = store.row_groups()
    assert {u["bytes"] for u in units} == {None}
    assert sum(read_unit(u, ROW_COLUMNS + ["rgb"], store.streams, store.dtype).num_rows
               for u in units) == 12


def _poison(url: str, video: str, stream: str, cells: list[tuple[int, int]]) -> None:
    """Rewrite a shard with NaN/Inf at (snippet, dim) ``cells`` of one video's stream."""
    table = pq.read_table(url)
    ids = table.column("video_id").to_pylist()
    col = table.column(stream).to_pylist()
    i = ids.index(video)
    arr = np.frombuffer(col[i], dtype="<f2").reshape(-1, 8).copy()
    for k, (t, d) in enumerate(cells):
        arr[t, d] = np.nan if k % 2 == 0 else np.inf
    col[i] = arr.tobytes()
    table = table.set_column(table.schema.get_field_index(stream), table.schema.field(stream),
                             pa.array(col, pa.large_binary()))
    _rewrite(url, table)


def test_non_finite_features_are_one_line_naming_shard_and_video(small, tmp_path):
    """A shard holding NaN/Inf (written by the previous version, which checked nothing at
    read): the features are checked where they are decoded."""
    path, _ = copy_store(small, tmp_path)
    _as_previous_version(path)
    store = FeatureStore.open(path)
    url = store.shard_urls("test")[0]
    video = pq.read_table(url, columns=["video_id"]).column(0).to_pylist()[2]
    _poison(url, video, "flow", [(5, 1), (3, 2), (9, 0)])
    want = (f"cannot read shard {url}: damaged: video {video}: flow features hold 3 NaN/Inf "
            "values (first at snippet 3); acl-dist never writes them")
    with pytest.raises(StoreError) as err:
        list(store.iter_videos("test"))
    assert str(err.value) == want
    unit = store.row_groups("test")[0]
    with pytest.raises(StoreError) as err:
        read_unit(unit, ROW_COLUMNS + ["rgb", "flow"], store.streams, store.dtype)
    assert str(err.value) == want
    with pytest.raises(StoreError) as err:
        list(UniformDescriptors(store.streams, store.dtype)(pa.Table.from_pylist([unit])))
    assert str(err.value) == want
    # control: metadata and the other stream read
    assert len(store.metadata("test")) == 6
    assert len(list(store.iter_videos("test", streams=["rgb"]))) == 6


def test_feature_views_checks_whole_rows_and_finiteness():
    good = np.arange(12, dtype="<f2").reshape(3, 4)
    col = pa.array([good.tobytes(), good[:1].tobytes()], pa.large_binary())
    views = feature_views(col, 4, "float16", stream="rgb", ids=["a", "b"], source="s.parquet")
    assert [v.shape for v in views] == [(3, 4), (1, 4)]
    ragged = pa.array([good.tobytes(), good.tobytes()[:6]], pa.large_binary())
    with pytest.raises(StoreError) as err:
        feature_views(ragged, 4, "float16", stream="rgb", ids=["a", "b"], source="s.parquet")
    assert str(err.value) == ("cannot read shard s.parquet: damaged: video b: its rgb cell "
                              "holds 6 bytes, not whole rows of 4 float16 values")
    bad = good.astype("<f4")
    bad[2, 3] = -np.inf
    col = pa.array([bad.tobytes()], pa.large_binary())
    with pytest.raises(StoreError, match=r"video a: rgb features hold 1 NaN/Inf values "
                                         r"\(first at snippet 2\)"):
        feature_views(col, 4, "float32", stream="rgb", ids=["a"], source="s.parquet")
    assert feature_views(col, 4, "float32", check=False)[0][2, 3] == -np.inf


def test_the_writer_refuses_what_readers_refuse(tmp_path):
    from acl_dist.store import VideoRecord

    big = np.ones((4, 8), np.float32)
    big[1, 3] = 1e6      # beyond float16
    rec = VideoRecord("v1", "train", 3.0, 25.0, 16, 4, features={"rgb": big})
    with pytest.raises(DataError) as err:
        with StoreWriter(str(tmp_path / "s"), {"rgb": 8}, ["a"]) as w:
            w.add(rec)
    assert str(err.value) == "v1: rgb features hold 1 NaN/Inf values in float16 (first at snippet 1)"
    assert not (tmp_path / "s").exists()
    with StoreWriter(str(tmp_path / "s"), {"rgb": 8}, ["a"], dtype="float32") as w:
        w.add(rec)      # control: float32 holds it
    assert FeatureStore.open(str(tmp_path / "s")).check(deep=True) == 1


# --------------------------------------------------------------------------- confinement


@pytest.mark.parametrize("key,value,problem", [
    ("shards[0].path", "../outside.parquet", "a '..' component"),
    ("shards[0].path", "shards/../../outside.parquet", "a '..' component"),
    ("shards[1].path", "/etc/passwd", "an absolute path"),
    ("shards[0].path", "s3://other-bucket/part-00000.parquet", "a URL"),
    ("shards[0].path", "file:///etc/passwd", "a URL"),
    ("shards[0].path", "C:/Windows/x.parquet", "an absolute path"),
    ("shards[0].path", "shards\\..\\x.parquet", "a backslash in it"),
    ("gt", "../../gt.json", "a '..' component"),
    ("files['synth_report.json']", "/tmp/report.json", "an absolute path"),
])
def test_manifest_paths_must_lie_inside_the_store(small, tmp_path, key, value, problem):
    path, dst = copy_store(small, tmp_path)
    mpath = dst / "manifest.json"
    manifest = json.loads(mpath.read_text())
    FeatureStore.open(path)                  # control: the store as written opens
    if key.startswith("shards["):
        manifest["shards"][int(key[7])]["path"] = value
    elif key == "gt":
        manifest["gt"] = value
    else:
        manifest["files"] = {"synth_report.json": value}
    mpath.write_text(json.dumps(manifest))
    with pytest.raises(StoreError) as err:
        FeatureStore.open(path)
    assert str(err.value) == (f"{mpath}: key {key} is {value!r}, not a path inside the store "
                              f"({problem})")


@pytest.mark.parametrize("vid,problem", [
    ("../../../../outside/evil", "contains a path separator ('/' or '\\'): video ids are "
                                 "names, not paths"),
    ("/etc/evil", "contains a path separator ('/' or '\\'): video ids are names, not paths"),
    ("..\\evil", "contains a path separator ('/' or '\\'): video ids are names, not paths"),
    ("..", "is '..', a path component: video ids are names, not paths"),
    ("C:evil", "starts with a drive letter: video ids are names, not paths"),
    ("evil\x00x", "contains the control character '\\x00'"),
    ("evil\nx", "contains the control character '\\n'"),
    ("", "is empty"),
])
def test_video_ids_are_names(vid, problem):
    with pytest.raises(DataError) as err:
        check_video_id(vid)
    shown = vid if vid and "\x00" not in vid and "\n" not in vid else repr(vid)
    assert str(err.value) == f"{shown}: video id {problem}"
    assert "\n" not in str(err.value)
    for ok in ("video_test_0000004", "v_-0CZ0Ud1VCc", "a..b", "clip 1.mp4"):
        check_video_id(ok)    # control: names, also with dots and spaces


def cli(capsys, argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def _evil_layout(small, tmp_path) -> tuple[Path, Path, str]:
    """The probe's layout: a split list and gt.json naming a video by a path that leads
    out of --root, to features planted there."""
    layout = tmp_path / "deep" / "a" / "b" / "layout"
    shutil.copytree(small[1], layout)
    evil = "../../../../outside/evil"
    subset = "validation"
    for s in ("rgb", "flow"):     # where npy-split would look for the video's features
        target = Path(f"{layout}/features/{subset}/{s}/{evil}.npy")
        target.parent.mkdir(parents=True, exist_ok=True)
        np.save(target, np.ones((20, 8), np.float32))
    outside = Path(f"{layout}/features/{subset}/rgb/{evil}.npy")
    names = sorted(p.stem for p in (layout / "features" / subset / "rgb").glob("*.npy"))
    (layout / f"split_{subset}.txt").write_text("\n".join(names + [evil]) + "\n")
    gt = json.loads((layout / "gt.json").read_text())
    gt["database"][evil] = {"subset": subset, "duration": 12.8, "annotations": []}
    (layout / "gt.json").write_text(json.dumps(gt))
    assert outside.exists() and not outside.resolve().is_relative_to(layout.resolve())
    return layout, outside, evil


def test_ingest_refuses_a_video_id_that_leads_out_of_root(small, tmp_path, capsys):
    layout, _, evil = _evil_layout(small, tmp_path)
    out = tmp_path / "s"
    code, _, err = cli(capsys, ["ingest", "--layout", "npy-split", "--root", layout,
                                "--out", out, "--quiet"])
    assert code == 1
    assert one_line(err).startswith(
        f"acl-dist ingest: error: {evil}: video id contains a path separator ('/' or '\\'): "
        "video ids are names, not paths (--skip-bad skips such videos")
    assert not out.exists()

    code, _, err = cli(capsys, ["ingest", "--layout", "npy-split", "--root", layout,
                                "--out", out, "--skip-bad", "--quiet"])
    assert code == 0, err
    store = FeatureStore.open(str(out))
    skipped = [s for s in store.manifest["skipped"] if s["video"] == evil]
    assert skipped == [{"video": evil, "dropped": "video", "problem":
                        "video id contains a path separator ('/' or '\\'): video ids are "
                        "names, not paths"}]
    # control: every other video of the layout is in the store
    assert store.num_videos() == FeatureStore.open(small[0]).num_videos()
    assert evil not in {r.video_id for r in store.metadata()}


# --------------------------------------------------------------------------- --overwrite


def test_overwrite_refuses_a_store_holding_a_users_files(small, tmp_path, capsys):
    path, dst = copy_store(small, tmp_path)
    assert not_own_store(path) is None                      # control: all acl-dist's
    (dst / "notes.txt").write_text("mine")
    (dst / "shards" / "test" / "by-hand.csv").write_text("1,2")
    (dst / "plots").mkdir()
    assert foreign_files(path, FeatureStore.open(path).manifest) == [
        "notes.txt", "plots/", "shards/test/by-hand.csv"]
    before = sorted(p.relative_to(dst) for p in dst.rglob("*"))

    code, _, err = cli(capsys, ["ingest", "--layout", "npy-split", "--root", small[1],
                                "--out", path, "--overwrite", "--quiet"])
    assert code == 1
    assert one_line(err).startswith(
        f"acl-dist ingest: error: --overwrite refused: {path} is an acl-dist store holding "
        "files it did not write (notes.txt, plots/, shards/test/by-hand.csv) and holds ")
    code, _, err = cli(capsys, ["synth", "--out", path, "--classes", "3", "--videos", "6",
                                "--dim", "8", "--no-report", "--quiet", "--overwrite"])
    assert code == 1
    assert re.search(r"--overwrite refused: .* is an acl-dist store holding files it did "
                     r"not write \(notes\.txt, plots/, shards/test/by-hand\.csv\)",
                     one_line(err))
    assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == before
    assert (dst / "notes.txt").read_text() == "mine"

    # control: without them, --overwrite replaces the store
    (dst / "notes.txt").unlink()
    (dst / "shards" / "test" / "by-hand.csv").unlink()
    (dst / "plots").rmdir()
    code, _, err = cli(capsys, ["ingest", "--layout", "npy-split", "--root", small[1],
                                "--out", path, "--overwrite", "--quiet"])
    assert code == 0, err
    assert FeatureStore.open(path).check(deep=True) == 2


def test_a_store_of_the_previous_version_may_be_replaced(small, tmp_path):
    """Its side file sat at the root, unlisted (the manifest had no ``files``)."""
    path, dst = copy_store(small, tmp_path)
    manifest = json.loads((dst / "manifest.json").read_text())
    del manifest["files"], manifest["gt"]
    (dst / "manifest.json").write_text(json.dumps(manifest))
    (dst / "synth_report.json").write_text("{}")
    assert not_own_store(path) is None
    (dst / "report.html").write_text("<html>")
    assert not_own_store(path) == (
        "an acl-dist store holding files it did not write (report.html)")


# --------------------------------------------------------------------------- Ray Data


@pytest.mark.ray
def test_ray_data_read_of_a_damaged_shard_fails_naming_it(ray_session, small, tmp_path):
    """Training's read (:func:`acl_dist.ray_data.store_dataset`): the whole store reads
    with the features of the control; a data page overwritten by random bytes fails the
    read with one line naming the shard, as the CLI prints it."""
    from acl_dist.cli import _error_line
    from acl_dist.ray_data import store_dataset

    path, _ = copy_store(small, tmp_path)
    store = FeatureStore.open(path)
    control = features(store)
    got = {}
    for batch in store_dataset(store, store.subsets).iter_batches(batch_format="pyarrow",
                                                                  batch_size=None):
        for vid, a in zip(batch.column("video_id").to_pylist(),
                          feature_views(batch.column("flow"), 8, store.dtype)):
            got[vid] = a
    assert got.keys() == control.keys()
    assert all(np.array_equal(got[v], control[v]["flow"]) for v in got)

    url = store.shard_urls("validation")[0]
    damage(url, offsets(url)["flow data page"])
    with pytest.raises(Exception) as err:
        store_dataset(store, ["validation"]).take_all()
    # Ray Data appends its retry advice on lines of their own to a task's error; the
    # error's own line is the first
    assert _error_line(err.value).split("\n")[0] == (
        f"cannot read shard {url}: damaged: could not verify page integrity, CRC checksum "
        "verification failed for page_ordinal 0")
    damage(url, offsets(url)["footer"])       # refused on the driver, before any task
    with pytest.raises(StoreError, match=rf"cannot read shard {re.escape(url)}: damaged: "
                                         "no Parquet footer at its end"):
        store_dataset(store, ["validation"])


# --------------------------------------------------------------------------- S3


@pytest.mark.s3
def test_s3_store_checks_and_overwrite_rule(s3_endpoint):
    """On S3: a shard of another size is refused naming it (the read's handle is s3fs's);
    a user's object in the store stops --overwrite; the objects of a writer killed while
    replacing the store (an unlisted ``v-<id>/``) are acl-dist's and do not."""
    import s3fs

    out = "s3://acl-test/integrity"
    synthesize(SMALL, out, quiet=True, report=False)
    fs = s3fs.S3FileSystem()
    store = FeatureStore.open(out)
    assert store.check(deep=True) == 2 and len(list(store.iter_videos())) == 12   # control
    assert not_own_store(out) is None
    fs.pipe("acl-test/integrity/v-0123456789ab/shards/test/part-00000.parquet", b"partial")
    fs.invalidate_cache()
    assert not_own_store(out) is None
    fs.pipe("acl-test/integrity/notes.txt", b"mine")
    assert not_own_store(out) == (
        "an acl-dist store holding files it did not write (notes.txt)")
    with pytest.raises(StoreError, match=r"--overwrite refused: .* holding files it did not "
                                         r"write \(notes\.txt\)"):
        synthesize(SMALL, out, overwrite=True, quiet=True, report=False)
    assert fs.cat("acl-test/integrity/notes.txt") == b"mine"

    url = store.shard_urls("test")[0]
    data = fs.cat(url)
    fs.pipe(url, data + b"\0")
    fs.invalidate_cache()
    with pytest.raises(StoreError) as err:
        list(store.iter_videos("test"))
    assert str(err.value) == (f"cannot read shard {url}: damaged: it has {len(data) + 1} "
                              f"bytes, the manifest says {len(data)}")
