"""What the store's integrity checks cost a read, in one process.

Writes a float16 store of N I3D-sized videos (two 1024-d streams, THUMOS-like lengths),
then reads all its features ``--repeats`` times on each read path, alternating the
unchecked read (the reader as it was: no page CRCs, no manifest checks, no finiteness
check) with the checked one, so both see the same page cache and machine load:

- ``iter_videos``: :meth:`FeatureStore.iter_videos` (whole rows, 16 per batch);
- ``row group``: :func:`acl_dist.ray_data.read_unit`, what a Ray Data read task and a
  row-group actor do per row group (read, then the feature views a model gets);

each as the zero-copy views alone (which touch no feature byte of a memory-mapped shard:
the checks are all the work) and with the float32 copy a model's input is made of.

Then the parts of the check on the row-group path alone (page CRCs; finiteness; the
manifest's size and footer hash), the deep check (every byte against the manifest's
sha256), and the writer's side (page CRCs and the streaming sha256 while writing).
Reported: the min and median seconds of each and the ratio checked / unchecked. Reads
are warm (page cache): the ratios are the CPU cost; a cold or remote read dilutes them.

    python bench/store_verify.py [--videos 200] [--dim 1024] [--repeats 5] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from acl_dist.ray_data import ROW_COLUMNS, read_unit
from acl_dist.store import (FeatureStore, StoreWriter, VideoRecord, _HashingFile,
                            check_features, feature_views, records_to_table, store_schema)


def write_store(out: str, videos: int, dim: int, seed: int = 0) -> FeatureStore:
    rng = np.random.default_rng(seed)
    with StoreWriter(out, {"rgb": dim, "flow": dim}, ["a"], dtype="float16") as w:
        for i in range(videos):
            t = int(rng.integers(100, 600))  # THUMOS videos: ~330 snippets on average
            feats = {s: np.abs(rng.standard_normal((t, dim), dtype=np.float32))
                     for s in ("rgb", "flow")}
            w.add(VideoRecord(f"video_{i:05d}", "train", t * 0.64, 25.0, 16, t,
                              features=feats))
    return FeatureStore.open(out)


#: Whether a read ends in float32 copies of the features (what a model gets) or in the
#: zero-copy views alone (which touch no feature byte of a memory-mapped shard).
CONSUME = {"on": False}


def _views(table: pa.Table, store: FeatureStore, check: bool) -> int:
    total = 0
    for s, d in store.streams.items():
        for v in feature_views(table.column(s), d, store.dtype, check=check):
            total += v.astype(np.float32).nbytes // 2 if CONSUME["on"] else v.nbytes
    return total


def plain_iter(store: FeatureStore) -> int:
    """The reader before the checks: no CRCs, no manifest checks, no finiteness check."""
    total = 0
    columns = [f.name for f in pq.ParquetFile(store.shard_urls()[0]).schema_arrow]
    for url in store.shard_urls():
        with pa.memory_map(url, "r") as fh:
            for batch in pq.ParquetFile(fh).iter_batches(batch_size=16, columns=columns):
                total += _views(pa.Table.from_batches([batch]), store, check=False)
    return total


def checked_iter(store: FeatureStore) -> int:
    return sum(sum(a.astype(np.float32).nbytes // 2 if CONSUME["on"] else a.nbytes
                   for a in r.features.values())
               for r in store.iter_videos(batch_rows=16))


def _row_groups(store: FeatureStore, crc: bool, finite: bool) -> int:
    total = 0
    columns = ROW_COLUMNS + list(store.streams)
    for unit in store.row_groups():
        with pa.memory_map(unit["url"], "r") as fh:
            table = pq.ParquetFile(fh, page_checksum_verification=crc).read_row_group(
                unit["row_group"], columns=columns)
        if finite:
            check_features(table, store.streams, store.dtype, source=unit["url"])
        total += _views(table, store, check=False)
    return total


def plain_row_groups(store: FeatureStore) -> int:
    return _row_groups(store, crc=False, finite=False)


def checked_row_groups(store: FeatureStore) -> int:
    columns = ROW_COLUMNS + list(store.streams)
    return sum(_views(read_unit(u, columns, store.streams, store.dtype), store, check=False)
               for u in store.row_groups())


def crc_only(store: FeatureStore) -> int:
    return _row_groups(store, crc=True, finite=False)


def finite_only(store: FeatureStore) -> int:
    return _row_groups(store, crc=False, finite=True)


def manifest_checks(store: FeatureStore) -> int:
    return store.check()


def deep_check(store: FeatureStore) -> int:
    return store.check(deep=True)


def _write(store: FeatureStore, out: str, checked: bool) -> int:
    """Rewrite the store's shards as the writer does, with or without its checks."""
    schema = store_schema(store.streams, store.dtype)
    for i, url in enumerate(store.shard_urls()):
        table = pq.read_table(url).cast(schema)
        path = os.path.join(out, f"part-{i}.parquet")
        raw = open(path, "wb")
        fh = _HashingFile(raw) if checked else raw
        w = pq.ParquetWriter(fh, schema, compression="none", use_dictionary=["subset"],
                             write_statistics=["video_id"], write_page_checksum=checked)
        w.write_table(table, row_group_size=table.num_rows)
        w.close()
        fh.close()
        if checked:
            fh.integrity(path)
    return 0


def timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(dir=args.dir, prefix="acl-bench-verify-")
    try:
        store = write_store(os.path.join(tmp, "store"), args.videos, args.dim)
        size = sum(s["bytes"] for s in store.manifest["shards"])
        feature_mb = sum(s["feature_bytes"] for s in store.manifest["shards"]) / 2**20
        print(f"{args.videos} videos, 2 x {args.dim}-d float16 streams, {feature_mb:.0f} MB of "
              f"features in {len(store.manifest['shards'])} shards", file=sys.stderr)
        assert checked_iter(store) == plain_iter(store)           # same bytes both ways
        assert checked_row_groups(store) == plain_row_groups(store)
        out = os.path.join(tmp, "rewrite")
        os.makedirs(out)
        pairs = [
            ("iter_videos: all checks", plain_iter, checked_iter),
            ("row group: all checks", plain_row_groups, checked_row_groups),
            ("iter_videos + float32 copy: all checks", plain_iter, checked_iter, True),
            ("row group + float32 copy: all checks", plain_row_groups, checked_row_groups,
             True),
            ("row group: page CRCs only", plain_row_groups, crc_only),
            ("row group: finiteness only", plain_row_groups, finite_only),
            ("row group: + manifest size/footer (store.check)", plain_row_groups,
             manifest_checks),
            ("row group: + deep sha256 (store.check(deep=True))", plain_row_groups,
             deep_check),
            ("write shards: CRCs + sha256", lambda s: _write(s, out, False),
             lambda s: _write(s, out, True)),
        ]
        rows = []
        for name, plain, checked, *consume in pairs:
            CONSUME["on"] = bool(consume)
            a, b = [], []
            for _ in range(args.repeats):
                a.append(timed(plain, store))
                b.append(timed(checked, store))
            extra = name.startswith("row group: +")
            row = {"path": name}
            for stat, f in (("min", min), ("median", statistics.median)):
                pa_s, ch_s = f(a), f(b)
                row[f"unchecked_s_{stat}"] = round(pa_s, 4)
                row[f"checked_s_{stat}"] = round(ch_s, 4)
                # the manifest checks run beside a read, not instead of one
                row[f"ratio_{stat}"] = round((pa_s + ch_s) / pa_s if extra else ch_s / pa_s, 3)
            row["checked_MB_s_min"] = round(size / 2**20 / min(b), 1)
            rows.append(row)
        print(f"{'path':50s} {'unchecked s':>11s} {'checked s':>10s} {'ratio':>6s} "
              f"{'ratio':>6s} {'MB/s':>6s}")
        print(f"{'':50s} {'(min)':>11s} {'(min)':>10s} {'(min)':>6s} {'(med)':>6s} "
              f"{'(min)':>6s}")
        for r in rows:
            print(f"{r['path']:50s} {r['unchecked_s_min']:11.3f} {r['checked_s_min']:10.3f} "
                  f"{r['ratio_min']:6.2f} {r['ratio_median']:6.2f} "
                  f"{r['checked_MB_s_min']:6.0f}")
        result = {"bench": "store_verify", "videos": args.videos, "dim": args.dim,
                  "dtype": "float16", "repeats": args.repeats, "store_bytes": size,
                  "feature_MB": round(feature_mb, 1),
                  "shards": len(store.manifest["shards"]),
                  "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                              "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                              "python": platform.python_version(),
                              "pyarrow": pa.__version__, "numpy": np.__version__},
                  "notes": "warm page cache; min and median of the repeats (the machine "
                           "is shared: the min is the CPU cost); ratio = checked / "
                           "unchecked (for '+' rows: (read + check) / read); MB/s: shard "
                           "bytes per second of the checked variant",
                  "rows": rows}
        if args.json:
            os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump(result, fh, indent=1)
                fh.write("\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
