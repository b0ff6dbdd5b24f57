"""ACL on the default synthetic THUMOS-like benchmark: weak vs unsupervised vs top-k MIL.

Runs, on one store and with the sizes `acl-dist run` picks for it (400 steps of 16 videos
per round on this 2-core machine):

1. weak ACL (video labels, one round) through the real pipeline on a local Ray instance;
2. unsupervised ACL (3 rounds) through the same pipeline; mAP with the cluster -> class
   mapping from training labels (hungarian, and the paper's majority / soft);
3. the plain top-k MIL localiser of bench/mil_baseline.py with the same steps and batch,
   with its conv's kernel 3 (the baseline) and 1 (each snippet alone, as ACL's defaults);
4. with --paper-descriptor, unsupervised ACL again with the paper's X^T S descriptor.

Prints a table and writes bench_results.json under --out. About 8 minutes on 2 cores (15 with
--paper-descriptor).

    python bench/acl_benchmark.py [--out bench_runs] [--paper-descriptor] [--weak-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mil_baseline import train_and_evaluate  # noqa: E402

from acl_dist.artifacts import RunDir  # noqa: E402
from acl_dist.config import load_config  # noqa: E402
from acl_dist.evaluate import (evaluate_detections, load_ground_truth,  # noqa: E402
                               map_detections, parse_tiou)
from acl_dist.pipeline import Run, RunOptions, run_acl  # noqa: E402
from acl_dist.synth import SynthConfig, synthesize  # noqa: E402


def at(metrics: dict, tiou: float) -> float:
    return metrics["map"][metrics["tiou"].index(tiou)]


def remap(run_dir: str, store: str, mode: str) -> dict:
    """Final-round detections under another cluster -> class mapping."""
    cfg = RunDir(run_dir).read_config()
    run = Run(store, run_dir, cfg, RunOptions(quiet=True))
    r = cfg.rounds - 1
    raw = run.results.raw_detections(r)
    mapping = run.results.mapping(r, mode)
    gt = load_ground_truth(store, cfg.test_subset)
    res = evaluate_detections(gt, map_detections(raw, mapping),
                              tiou_thresholds=parse_tiou(cfg.tiou), unknown_labels="ignore")
    return res.as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--paper-descriptor", action="store_true")
    ap.add_argument("--weak-only", action="store_true",
                    help="only weak ACL and the top-k MIL baseline (about 5 minutes)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    store = os.path.join(args.out, "store")
    if not os.path.exists(os.path.join(store, "manifest.json")):
        synthesize(SynthConfig(), store, quiet=True)
    results: dict = {}
    runs = [("weak", "weak", [])]
    if not args.weak_only:
        runs.append(("unsupervised", "unsupervised", []))
    if args.paper_descriptor and not args.weak_only:
        runs.append(("unsupervised, paper descriptor", "unsupervised",
                     ["cluster.descriptor=attention"]))
    for name, mode, overrides in runs:
        run_dir = os.path.join(args.out, name.replace(", ", "_").replace(" ", "_"))
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(None, overrides, mode=mode, rounds=args.rounds)
        t0 = time.perf_counter()
        metrics = run_acl(store, run_dir, cfg, quiet=True)
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if mode == "unsupervised":
            metrics["by_mapping"] = {m: remap(run_dir, store, m) for m in ("majority", "soft")}
        results[name] = metrics
        print(f"{name}: mAP@0.5 {at(metrics, 0.5):.2f} avg {metrics['average']:.2f} "
              f"({metrics['wall_seconds']:.0f} s)", flush=True)
    weak_cfg = load_config(os.path.join(args.out, "weak", "config.yaml"))
    steps = weak_cfg.train
    mils = {"top-k MIL": 3, "top-k MIL (kernel 1)": 1}     # name -> kernel of its conv
    for name, kernel in mils.items():
        results[name] = train_and_evaluate(store, steps=steps.steps, batch=steps.batch_size,
                                           max_len=steps.max_len or 10**9,
                                           localize=weak_cfg.localize, kernel=kernel)

    weak = results["weak"]
    print(f"\n{'method':38s} {'mAP@0.5':>8s} {'avg 0.1:0.7':>12s} {'/ weak @0.5':>12s}")
    rows = [("ACL weak", weak)] + [(f"{name} (weak)", results[name]) for name in mils]
    for name in results:
        if name.startswith("unsupervised"):
            rows.append((f"ACL {name} (hungarian)", results[name]))
            for m, res in results[name]["by_mapping"].items():
                rows.append((f"ACL {name} ({m})", res))
    for label, m in rows:
        print(f"{label:38s} {at(m, 0.5):8.2f} {m['average']:12.2f} "
              f"{at(m, 0.5) / max(at(weak, 0.5), 1e-9):12.3f}")
    for name in results:
        if name.startswith("unsupervised"):
            nmi = " -> ".join(f"{r['nmi']:.3f}" for r in results[name]["rounds"])
            print(f"NMI per round ({name}): {nmi}")
    with open(os.path.join(args.out, "bench_results.json"), "w") as fh:
        json.dump(results, fh, indent=1)
    print(f"\nresults: {os.path.join(args.out, 'bench_results.json')}")


if __name__ == "__main__":
    main()
