"""One ACL round at ActivityNet-1.3 scale: peak memory per process and time per step.

Writes the synthetic benchmark on the real ActivityNet-1.3 timelines (9,641 training and
4,726 validation videos with annotations; reduced feature dim on a small machine), then
runs one unsupervised round (descriptors -> clustering -> training -> attention pass ->
evaluation -> final clustering) on a local Ray instance, sampling every process's memory
from /proc twice a second. Prints the store size, seconds per pipeline step, training
time per step, and the peak resident memory of each process role (the driver, Ray Train
workers, the attention actors, the clustering task, Ray Data's readers): no process may
come near the store's feature bytes.

    python bench/scale_round.py [--dim 64] [--steps 100] [--workers 2] [--videos N]
                                [--save FILE.json] [--against FILE.json]

``--save`` keeps the figures (seconds per step, NMI, mAP, peak memory, the machine) for a
later run's ``--against``, which prints both side by side with their ratios: how a change
is judged on the same store and seed. bench/results/ holds the saved runs.

After the run, in the same process (Ray idle), each step's floor where one is defined: the
same work on the run's own data without Ray. Descriptors: pyarrow reads + uniform pooling
(the actor's code called directly); clustering: ``cluster_with`` on the round's
descriptors (without the step's scores against the labels and the previous round: a little
optimistic); training: ``train.fit`` for the same steps on the same videos and labels
(features read into memory first, not timed); attention pass: pyarrow reads + the trained
model's forward in a plain batched loop (``infer.predict``, 128 videos a batch), issue
15's definition (localisation, descriptors and the outputs file are what the pass adds).
Evaluation and the finish step are plain Python over files: no floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pyarrow as pa


def _proc_memory() -> dict[int, tuple[str, int, int]]:
    """pid -> (title, RSS bytes, anonymous RSS bytes) for this user's processes."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:120]
            fields = {}
            for line in (entry / "status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "RssAnon"):
                    fields[key] = int(value.split()[0]) * 1024
        except (OSError, ValueError, IndexError):
            continue
        if "VmRSS" in fields:
            out[int(entry.name)] = (title, fields["VmRSS"], fields.get("RssAnon", 0))
    return out


def _role(title: str, pid: int) -> str | None:
    if pid == os.getpid():
        return "driver (acl-dist run)"
    for key, role in (("RayTrainWorker", "Ray Train worker"),
                      ("TrainController", "Ray Train controller"),
                      ("MapWorker", "Ray Data actor (attention / descriptors)"),
                      ("cluster_with", "clustering task"),
                      ("ReadFiles", "Ray Data read task"), ("ray::IDLE", "idle Ray worker"),
                      ("SplitCoordinator", "Ray Data split coordinator"),
                      ("raylet", "raylet"), ("gcs_server", "GCS"),
                      ("dashboard", "dashboard"), ("ray::", "other Ray worker")):
        if key in title:
            return role
    return None


class MemorySampler(threading.Thread):
    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.stop = every, threading.Event()
        self.peak: dict[str, tuple[int, int, int]] = {}   # role -> (rss, anon, pid)

    def run(self) -> None:
        while not self.stop.is_set():
            for pid, (title, rss, anon) in _proc_memory().items():
                role = _role(title, pid)
                if role and rss > self.peak.get(role, (0, 0, 0))[0]:
                    self.peak[role] = (rss, anon, pid)
            self.stop.wait(self.every)


def main() -> None:
    """Long because: the bench in the order it runs (store, run, tables, floors, saved
    figures), each table printed where its figures are."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=64, help="feature dim per stream (I3D: 1024)")
    ap.add_argument("--videos", type=int, help="training videos (default: all 9,641)")
    ap.add_argument("--steps", type=int, default=100, help="training steps of the round")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", help="working directory (default: a temporary one, removed)")
    ap.add_argument("--save", help="write this run's figures to this JSON file")
    ap.add_argument("--against", help="a --save file of an earlier run to compare with")
    args = ap.parse_args()

    from acl_dist.config import load_config, with_updates
    from acl_dist.pipeline import run_acl
    from acl_dist.store import FeatureStore
    from acl_dist.synth import SynthConfig, synthesize

    work = Path(args.out or tempfile.mkdtemp(prefix="acl-scale-"))
    store = str(work / "store")
    t0 = time.perf_counter()
    if not (work / "store" / "manifest.json").exists():
        # the v1 generator (one prototype per action, no receptive field): the store of the
        # saved results in bench/results/, so that a new run's times compare with theirs
        synthesize(SynthConfig(preset="anet13", dim=args.dim, videos=args.videos, phases=1,
                               receptive_field=1), store)
    synth_s = time.perf_counter() - t0
    fs = FeatureStore.open(store)
    store_bytes = sum(f.stat().st_size for f in (work / "store").rglob("*.parquet"))
    n_train = fs.num_videos("training")
    cfg = load_config(None, mode="unsupervised", num_classes=len(fs.classes))
    cfg = with_updates(cfg, rounds=1, train={"steps": args.steps, "workers": args.workers,
                                             "log_every": max(1, args.steps // 4)})
    run = work / "run"
    shutil.rmtree(run, ignore_errors=True)
    sampler = MemorySampler()
    sampler.start()
    t0 = time.perf_counter()
    metrics = run_acl(store, str(run), cfg)
    run_s = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()

    steps = json.loads((run / "state.json").read_text())["steps"]
    print(f"\nstore: {n_train} training + {fs.num_videos('validation')} validation videos, "
          f"2 x {args.dim}-d {fs.dtype}, {store_bytes / 2**20:.0f} MiB of Parquet "
          f"(synthesised in {synth_s:.0f} s)")
    import yaml

    batch = yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"]
    print(f"one round: {run_s:.0f} s in all; {args.workers} Ray Train workers, "
          f"{args.steps} steps of {batch} videos")
    print(f"\n{'step':28s} {'seconds':>8s}")
    for name, info in steps.items():
        print(f"{name:28s} {info['seconds']:8.1f}")
    train_s = steps["round_0.train"]["seconds"]
    print(f"\ntraining: {train_s / args.steps:.2f} s per step (Ray Train start included: "
          f"{train_s:.0f} s for {args.steps} steps)")
    print(f"\n{'process':42s} {'peak RSS MiB':>13s} {'anon MiB':>9s} {'/ store':>8s}")
    for role, (rss, anon, _) in sorted(sampler.peak.items(), key=lambda kv: -kv[1][0]):
        print(f"{role:42s} {rss / 2**20:13.0f} {anon / 2**20:9.0f} {rss / store_bytes:8.2f}")
    floors = measure_floors(fs, str(run), threads=os.cpu_count() or 2)
    print(f"\n{'step vs its floor (no Ray)':28s} {'seconds':>8s} {'floor':>8s} {'x floor':>8s}")
    for name, info in steps.items():
        floor = floors.get(name)
        print(f"{name:28s} {info['seconds']:8.1f} "
              + (f"{floor:8.1f} {info['seconds'] / floor:8.2f}" if floor else f"{'-':>8s}"))
    r0 = metrics["rounds"][0]
    print(f"\nNMI round 0 {r0.get('nmi', float('nan')):.3f}, after training "
          f"{metrics['rounds'][-1].get('nmi', float('nan')):.3f}; "
          f"mAP avg {metrics['average']:.2f}")
    figures = {"machine": f"{os.cpu_count()} cores", "dim": args.dim, "steps": args.steps,
               "workers": args.workers, "videos": n_train, "round_s": run_s,
               "step_s": {name: info["seconds"] for name, info in steps.items()},
               "nmi_round0": r0.get("nmi"), "nmi_after": metrics["rounds"][-1].get("nmi"),
               "map_avg": metrics["average"], "floor_s": floors,
               "peak_rss_mib": {role: rss / 2**20 for role, (rss, _, _) in sampler.peak.items()}}
    if args.save:
        Path(args.save).write_text(json.dumps(figures, indent=1))
    if args.against:
        compare(json.loads(Path(args.against).read_text()), figures)
    if not args.out:
        shutil.rmtree(work, ignore_errors=True)


def measure_floors(store, run: str, threads: int) -> dict[str, float]:
    """Seconds of each step's floor (module docstring) on the finished one-round ``run``."""
    import pyarrow.parquet as pq
    import torch

    from acl_dist.artifacts import RunDir, load_checkpoint
    from acl_dist.clustering import cluster_with
    from acl_dist.config import with_updates
    from acl_dist.infer import load_models, predict
    from acl_dist.ray_data import UniformDescriptors, batch_features
    from acl_dist.train import VideoItem, fit

    torch.set_num_threads(threads)
    rd = RunDir(run)
    cfg = rd.read_config()
    train, test = cfg.train_subset, cfg.test_subset

    def batches(subsets):
        for url in store.shard_urls(subsets):
            yield from pq.ParquetFile(url).iter_batches(batch_size=128)

    floors = {}
    t0 = time.perf_counter()
    pool = UniformDescriptors(store.streams, store.dtype)
    for batch in batches([train]):
        pool.process(pa.Table.from_batches([batch]))
    floors["round_0.descriptors"] = time.perf_counter() - t0

    cc = with_updates(cfg.cluster, seed=cfg.seed + cfg.cluster.seed)
    for r in (0, 1):
        ids, desc = rd.read_descriptors(r)
        t0 = time.perf_counter()
        cluster_with(desc, cfg.num_classes, cc)
        floors[f"round_{r}.cluster"] = time.perf_counter() - t0

    labels = rd.read_clusters(0)["labels"]
    items = []
    for batch in batches([train]):
        feats = batch_features(batch, store.streams, store.dtype, float32=False)
        items += [VideoItem(v, f, [labels[v]]) for v, f in
                  zip(batch.column("video_id").to_pylist(), feats) if v in labels]
    items.sort(key=lambda item: item.video_id)
    t0 = time.perf_counter()
    fit(items, cfg, cfg.num_classes, store.streams)
    floors["round_0.train"] = time.perf_counter() - t0

    model = load_models(load_checkpoint(rd.model_path(0)))
    t0 = time.perf_counter()
    for batch in batches([test, train]):
        ids = batch.column("video_id").to_pylist()
        predict(model, list(zip(ids, batch_features(batch, store.streams, store.dtype,
                                                     float32=False))))
    floors["round_0.attention"] = time.perf_counter() - t0
    return floors


def compare(before: dict, now: dict) -> None:
    """Two runs' figures side by side: seconds per step and in all (ratio now / before),
    NMI and mAP."""
    print(f"\n{'vs the saved run':28s} {'before':>8s} {'now':>8s} {'ratio':>7s}")
    rows = [(name, before["step_s"].get(name), now["step_s"][name]) for name in now["step_s"]]
    rows.append(("one round, s", before["round_s"], now["round_s"]))
    for name, b, n in rows:
        ratio = f"{n / b:7.2f}" if b else f"{'-':>7s}"
        print(f"{name:28s} {b if b is not None else float('nan'):8.1f} {n:8.1f} {ratio}")
    for key in ("nmi_round0", "nmi_after", "map_avg"):
        b, n = before.get(key), now.get(key)
        print(f"{key:28s} {b or float('nan'):8.3f} {n or float('nan'):8.3f}")


if __name__ == "__main__":
    main()
