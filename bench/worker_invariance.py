"""Worker-count invariance: ACL on the default synthetic benchmark with 1, 2 and 4 Ray Train
workers, weak and unsupervised (3 rounds), over run seeds.

Every run goes through the real pipeline (``run_acl``, one local Ray instance of 4 logical
CPUs) with the sizes ``acl-dist run`` picks for the store (400 steps of 16 videos a
round), ``train.workers=N`` and, for N > 1, ``train.cpus_per_worker=0.5`` (4 workers on
2 cores). Prints, per mode and worker count, mean +- sd over the seeds of the final NMI
(unsupervised) and the test average mAP (tIoU 0.1:0.7, hungarian mapping); the per-step
time of training (rank 0's throughput windows after the first) as a ratio to one worker's;
and rank 0's logged loss terms per step (the global batch's: the same on every worker).
Then, in N local gloo processes without Ray, the time of the gather that lets the terms
comparing videos see the whole batch, beside the whole step it is part of.

    python bench/worker_invariance.py [--out bench_runs/workers] [--seeds 0,1,2]
        [--workers 1,2,4] [--modes weak,unsupervised] [--save FILE.json [--append]]
        [--no-gather] [--table FILE.json]

About 30 minutes for the defaults on 2 cores. The saved results docs/cluster.md quotes:
bench/results/worker_invariance_2026-12-08.json (the defaults, then ``--modes
unsupervised --seeds 3,4 --no-gather --append``) and
worker_invariance_rounding_control_2026-12-08.json (``--modes unsupervised --workers 1
--no-gather`` under ``ATEN_CPU_CAPABILITY=avx2``: one worker, only float rounding
changed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from weak_ablation import mean_sd  # noqa: E402

from acl_dist.config import load_config  # noqa: E402
from acl_dist.pipeline import run_acl  # noqa: E402
from acl_dist.synth import SynthConfig, synthesize  # noqa: E402


def histories(run_dir: str, rounds: int) -> list[list[dict]]:
    """Rank 0's logged training history of each trained round (its final checkpoint)."""
    import torch

    out = []
    for r in range(rounds):
        path = os.path.join(run_dir, f"round_{r}", "model.pt")
        if os.path.exists(path):
            out.append(torch.load(path, weights_only=True)["history"])
    return out


def step_ms(history: list[dict], batch: int) -> float:
    """Median training step time (ms) over the throughput windows after the first."""
    rates = [h["videos_per_s"] for h in history[1:]] or [history[-1]["videos_per_s"]]
    return batch / statistics.median(rates) * 1e3


def one_run(store: str, out: str, mode: str, workers: int, seed: int) -> dict:
    run_dir = os.path.join(out, f"{mode}_w{workers}_s{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    sets = [f"seed={seed}", f"train.workers={workers}"]
    if workers > 1:
        sets.append("train.cpus_per_worker=0.5")
    cfg = load_config(None, sets, mode=mode, rounds=3 if mode == "unsupervised" else 1)
    t0 = time.perf_counter()
    metrics = run_acl(store, run_dir, cfg, quiet=True)
    wall = time.perf_counter() - t0
    trained = histories(run_dir, cfg.rounds)
    batch = load_config(os.path.join(run_dir, "config.yaml")).train.batch_size
    terms = [{k: round(v, 5) for k, v in h.items() if "/" in k or k in ("loss", "step")}
             for hist in trained for h in hist]
    res = {"mode": mode, "workers": workers, "seed": seed, "average": metrics["average"],
           "map": metrics["map"], "nmi": [r.get("nmi") for r in metrics["rounds"]],
           "step_ms": [round(step_ms(h, batch), 2) for h in trained],
           "rank0_terms": terms, "wall_seconds": round(wall, 1)}
    nmi = res["nmi"][-1]
    print(f"{mode:12s} workers {workers} seed {seed}: avg mAP {res['average']:.2f}"
          + (f" NMI {nmi:.3f}" if nmi is not None else "")
          + f" step {statistics.mean(res['step_ms']):.1f} ms ({wall:.0f} s)", flush=True)
    return res


def print_tables(runs: list[dict]) -> None:
    modes = sorted({r["mode"] for r in runs}, reverse=True)
    counts = sorted({r["workers"] for r in runs})
    seeds = sorted({r["seed"] for r in runs})
    print(f"\nworker-count invariance (default benchmark, run seeds {seeds}; mean +- sd)")
    print(f"{'mode':12s} {'workers':>7s} {'avg mAP':>14s} {'final NMI':>16s} "
          f"{'step ms':>14s} {'/ 1 worker':>10s} {'L_trip > 0':>10s} {'first loss':>10s}")
    for mode in modes:
        base = None
        for n in counts:
            sel = [r for r in runs if r["mode"] == mode and r["workers"] == n]
            if not sel:
                continue
            ms = [statistics.mean(r["step_ms"]) for r in sel]
            base = base if base is not None else statistics.mean(ms)
            nmis = [r["nmi"][-1] for r in sel if r["nmi"][-1] is not None]
            trips = [v for r in sel for t in r["rank0_terms"] for k, v in t.items()
                     if k.endswith("/trip")]
            live = f"{sum(v > 0 for v in trips)}/{len(trips)}"
            first = statistics.mean(r["rank0_terms"][0]["loss"] for r in sel)
            nmi = mean_sd(nmis) if nmis else "-"
            print(f"{mode:12s} {n:7d} {mean_sd([r['average'] for r in sel]):>14s} "
                  f"{nmi:>16s} {mean_sd(ms):>14s} {statistics.mean(ms) / base:10.2f} "
                  f"{live:>10s} {first:10.5f}")
    print("(L_trip > 0: rank 0's logged steps where it is, over the seeds; the exceptions are "
          "an epoch's last, partial batch, which may hold one cluster. First loss: rank 0's "
          "at step 25 of round 0, mean over the seeds.)")


# ------------------------------------------------------------------ the gather's cost


def _gather_worker(rank: int, world: int, port: int, steps: int, queue) -> None:
    import torch
    import torch.distributed as dist

    from acl_dist.collectives import WorkerGroup
    from acl_dist.config import load_config as load
    from acl_dist.global_batch import video_table
    from acl_dist.model import StreamModels
    from acl_dist.train import GlobalBatchStep, VideoItem, batch_stream, crop_windows

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    torch.set_num_threads(max(1, 2 // world))
    group = WorkerGroup.current()
    cfg = load(None, ["train.batch_size=16", "train.max_len=256"])
    rng = np.random.default_rng(0)
    dims = {"rgb": 1024, "flow": 1024}    # I3D's two streams
    items = [VideoItem(f"v{i:03d}", {s: rng.standard_normal((150 + i % 200, d))
                                     .astype(np.float32) for s, d in dims.items()}, [i % 20])
             for i in range(200)]
    mine = items[rank::world]
    torch.manual_seed(0)
    core = StreamModels(dims, 20, cfg.model)
    model = torch.nn.parallel.DistributedDataParallel(core) if world > 1 else core
    optim = torch.optim.Adam(core.parameters(), lr=1e-4)
    refs = video_table(group.exchange([(it.video_id, it.num_snippets, it.labels)
                                       for it in mine]))
    step = GlobalBatchStep(model, core, optim, {it.video_id: it for it in mine}, group, cfg,
                           20, dims, torch.device("cpu"))
    stream = iter(batch_stream(refs, cfg))
    width = 0
    gather_s, step_s = [], []
    original = group.gather_rows

    def timed(rows):
        nonlocal width
        width = rows.shape[1]
        t0 = time.perf_counter()
        out = original(rows)
        gather_s.append(time.perf_counter() - t0)
        return out

    group.gather_rows = timed
    for i in range(steps):
        batch = next(stream)
        t0 = time.perf_counter()
        step.step(batch, *crop_windows(batch.items, cfg.train.max_len, rng))
        step_s.append(time.perf_counter() - t0)
    # the gather's backward (an all-reduce of the gathered rows' gradient), timed alone
    grad = torch.randn(world * 16, max(width, 1))
    back = []
    for _ in range(steps):
        t0 = time.perf_counter()
        dist.all_reduce(grad)
        back.append(time.perf_counter() - t0)
    if rank == 0:
        queue.put({"workers": world, "width": width,
                   "gather_forward_ms": 1e3 * statistics.median(gather_s[2:]) if gather_s
                   else 0.0, "gather_backward_ms": 1e3 * statistics.median(back[2:])
                   if world > 1 else 0.0, "step_ms": 1e3 * statistics.median(step_s[2:])})
    dist.destroy_process_group()


def gather_cost(counts: list[int], steps: int = 20) -> list[dict]:
    import torch.multiprocessing as mp

    out = []
    ctx = mp.get_context("spawn")
    for n in counts:
        queue = ctx.Queue()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        mp.spawn(_gather_worker, args=(n, port, steps, queue), nprocs=n)
        out.append(queue.get())
    print_gather(out)
    return out


def print_gather(out: list[dict]) -> None:
    print("\nthe gather (gloo, 2-core CPU, 16-video global batches of I3D-sized "
          "2 x 1024-d features, T <= 256; fwd includes the wait for the slowest worker)")
    print(f"{'workers':>7s} {'width':>6s} {'gather fwd ms':>14s} {'gather bwd ms':>14s} "
          f"{'step ms':>9s} {'gather share':>12s}")
    for r in out:
        share = (r["gather_forward_ms"] + r["gather_backward_ms"]) / r["step_ms"]
        print(f"{r['workers']:7d} {r['width']:6d} {r['gather_forward_ms']:14.2f} "
              f"{r['gather_backward_ms']:14.2f} {r['step_ms']:9.1f} {share:12.3f}")


# ------------------------------------------ one round's weights: workers vs rounding


def _drift_worker(rank: int, world: int, port: int, store: str, steps: int, out: str) -> None:
    import torch
    import torch.distributed as dist

    from acl_dist.collectives import WorkerGroup
    from acl_dist.plan import resolve_config
    from acl_dist.store import FeatureStore
    from acl_dist.train import VideoItem, fit

    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                world_size=world)
    torch.set_num_threads(int(os.environ.get("DRIFT_THREADS", max(1, 2 // world))))
    fs = FeatureStore.open(store)
    cfg = resolve_config(load_config(None, [f"train.steps={steps}"], mode="weak"), fs)
    index = {c: i for i, c in enumerate(fs.classes)}
    items = [VideoItem(r.video_id, {s: f.astype(np.float32) for s, f in r.features.items()},
                       sorted({index[c] for c in r.labels}))
             for r in fs.iter_videos(cfg.train_subset)]
    order = np.random.default_rng(world).permutation(len(items))   # an arbitrary split
    shard = [items[i] for i in order[rank::world]]
    wrap = torch.nn.parallel.DistributedDataParallel if world > 1 else None
    result = fit(shard, cfg, len(fs.classes), fs.streams, group=WorkerGroup.current(),
                 wrap=wrap)
    if rank == 0:
        torch.save({"weights": result.state_dict, "history": result.history}, out)
    if world > 1:
        dist.destroy_process_group()


def weight_drift(store: str, out: str, counts: list[int], steps: int = 400) -> list[dict]:
    """One weak round's training (the store's training videos and labels, the sizes `run`
    picks) on N gloo workers without Ray, and on one worker with one thread instead of two,
    with ATen's vector kernels at AVX2 (``ATEN_CPU_CAPABILITY=avx2``) and with MKL's code
    path at AVX2 (``MKL_CBWR=AVX2``): float rounding alone, as another CPU would change it.
    Each one's final weights' distance to one worker's, relative to their norm."""
    import torch
    import torch.multiprocessing as mp

    runs = [(f"{n} worker(s)", n, {}) for n in counts]
    runs += [("1 worker, 1 torch thread (not 2)", 1, {"DRIFT_THREADS": "1"}),
             ("1 worker, ATEN_CPU_CAPABILITY=avx2", 1, {"ATEN_CPU_CAPABILITY": "avx2"}),
             ("1 worker, MKL_CBWR=AVX2", 1, {"MKL_CBWR": "AVX2"})]
    saved = {}
    for label, n, env in runs:
        path = os.path.join(out, f"drift_{len(saved)}.pt")
        before = dict(os.environ)
        os.environ.update(env)   # the spawned processes start with it
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_drift_worker, args=(n, port, store, steps, path), nprocs=n)
        finally:
            os.environ.clear()
            os.environ.update(before)
        saved[label] = torch.load(path, weights_only=True)
    ref = saved[runs[0][0]]["weights"]
    norm = float(torch.cat([v.flatten() for v in ref.values()]).norm())
    rows = []
    for label, _, _ in runs:
        got = saved[label]
        diff = float(torch.cat([(got["weights"][k] - v).flatten() for k, v in ref.items()])
                     .norm())
        hist = got["history"]
        rows.append({"run": label, "relative_weight_distance": diff / norm,
                     "first_loss": hist[0]["loss"], "last_loss": hist[-1]["loss"]})
    print_drift(rows, steps)
    return rows


def print_drift(rows: list[dict], steps: int = 400) -> None:
    print(f"\none weak round's training ({steps} steps), final weights against one worker's")
    print(f"{'run':38s} {'|w - w1| / |w1|':>16s} {'loss @25':>10s} {'last loss':>10s}")
    for r in rows:
        print(f"{r['run']:38s} {r['relative_weight_distance']:16.2e} {r['first_loss']:10.5f} "
              f"{r['last_loss']:10.5f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_runs/workers")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--modes", default="weak,unsupervised")
    ap.add_argument("--save", default=None, help="also write the results to this JSON file")
    ap.add_argument("--skip-runs", action="store_true", help="only the gather's cost")
    ap.add_argument("--no-gather", action="store_true", help="only the runs")
    ap.add_argument("--drift", action="store_true",
                    help="also one weak round's final weights on N gloo workers and under "
                         "another float rounding, against one worker's")
    ap.add_argument("--append", action="store_true",
                    help="add the runs to those already saved in --save's file")
    ap.add_argument("--table", metavar="FILE.json",
                    help="print the tables of saved results and stop")
    args = ap.parse_args()
    if args.table:
        with open(args.table) as fh:
            saved = json.load(fh)
        print_tables(saved["runs"])
        if saved.get("gather"):
            print_gather(saved["gather"])
        if saved.get("drift"):
            print_drift(saved["drift"])
        return
    os.makedirs(args.out, exist_ok=True)
    counts = [int(w) for w in args.workers.split(",")]
    runs: list[dict] = []
    if not args.skip_runs:
        store = os.path.join(args.out, "store")
        if not os.path.exists(os.path.join(store, "manifest.json")):
            synthesize(SynthConfig(), store, quiet=True)
        for seed in [int(s) for s in args.seeds.split(",")]:
            for mode in args.modes.split(","):
                for n in counts:
                    runs.append(one_run(store, args.out, mode, n, seed))
        print_tables(runs)
    gathers = [] if args.no_gather else gather_cost(counts)
    drift = []
    if args.drift:
        store = os.path.join(args.out, "store")
        if not os.path.exists(os.path.join(store, "manifest.json")):
            synthesize(SynthConfig(), store, quiet=True)
        drift = weight_drift(store, args.out, counts)
    env = {k: v for k, v in os.environ.items()
           if k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "OMP_NUM_THREADS")}
    result = {"runs": runs, "gather": gathers, "drift": drift, "env": env,
              "machine": f"{os.cpu_count()} cores", "date": time.strftime("%Y-%m-%d")}
    path = args.save or os.path.join(args.out, "worker_invariance.json")
    if args.append and os.path.exists(path):   # more seeds or modes for a saved table
        with open(path) as fh:
            saved = json.load(fh)
        result = dict(saved, runs=saved["runs"] + runs,
                      gather=gathers or saved.get("gather", []),
                      drift=drift or saved.get("drift", []))
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
