"""Feature-store throughput beside plain per-video ``np.load``, in one process.

Writes N videos of I3D-sized features (two 1024-d float32 streams, THUMOS-like lengths) in
the npy-split layout, ingests them (float16 and float32 stores), then reads everything back
``--repeats`` times, alternating store and npy reads so both see the same page cache and
machine load. Prints MB/s of feature bytes as seen by the consumer (float32 npy bytes) and
the ratio store / npy. Absolute numbers depend on the machine; compare the ratios.

    python bench/store_throughput.py [--videos 120] [--dim 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import numpy as np

from acl_dist.ingest import ingest
from acl_dist.store import FeatureStore


def write_layout(root: str, videos: int, dim: int, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    total = 0
    for s in ("rgb", "flow"):
        os.makedirs(os.path.join(root, "features", "train", s), exist_ok=True)
    for i in range(videos):
        t = int(rng.integers(100, 600))  # THUMOS videos: ~330 snippets on average
        for s in ("rgb", "flow"):
            arr = np.abs(rng.standard_normal((t, dim), dtype=np.float32))
            np.save(os.path.join(root, "features", "train", s, f"video_{i:05d}.npy"), arr)
            total += arr.nbytes
    return total


def read_npy(root: str) -> int:
    total = 0
    folder = os.path.join(root, "features", "train")
    for name in sorted(os.listdir(os.path.join(folder, "rgb"))):
        for s in ("rgb", "flow"):
            total += np.load(os.path.join(folder, s, name)).nbytes
    return total


def read_store(path: str) -> int:
    total = 0
    for rec in FeatureStore.open(path).iter_videos(batch_rows=16, dtype=np.float32):
        total += sum(a.nbytes for a in rec.features.values())
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=120)
    ap.add_argument("--dim", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="scratch directory (default: a temp dir)")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(dir=args.dir, prefix="acl-bench-")
    layout = os.path.join(tmp, "npy")
    nbytes = write_layout(layout, args.videos, args.dim)
    mb = nbytes / 2**20
    print(f"{args.videos} videos, 2 x {args.dim}-d float32 streams, {mb:.0f} MB of features",
          file=sys.stderr)
    rows = []
    stores = {}
    for dtype in ("float16", "float32"):
        out = os.path.join(tmp, f"store_{dtype}")
        t0 = time.perf_counter()
        ingest("npy-split", layout, out, dtype=dtype, quiet=True)
        dt = time.perf_counter() - t0
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        rows.append((f"ingest npy -> store ({dtype})", mb / dt, f"store {size / 2**20:.0f} MB"))
        stores[dtype] = out
    read_npy(layout)  # warm the page cache for everyone
    times: dict[str, list[float]] = {"npy": [], "float16": [], "float32": []}
    for _ in range(args.repeats):
        for key in ("npy", "float16", "float32"):
            t0 = time.perf_counter()
            got = read_npy(layout) if key == "npy" else read_store(stores[key])
            times[key].append(time.perf_counter() - t0)
            assert got == nbytes, (key, got, nbytes)
    npy_rate = mb / statistics.median(times["npy"])
    rows.append(("read per-video np.load (rgb+flow)", npy_rate, "baseline"))
    for dtype in ("float16", "float32"):
        rate = mb / statistics.median(times[dtype])
        rows.append((f"read store ({dtype} -> float32 arrays)", rate,
                     f"{rate / npy_rate:.2f}x np.load"))
    print(f"\n{'step':42s} {'MB/s':>8s}  note")
    for name, rate, note in rows:
        print(f"{name:42s} {rate:8.0f}  {note}")
    print(f"\n(median of {args.repeats} warm-cache reads; MB = float32 feature bytes delivered)")


if __name__ == "__main__":
    main()
