"""ACL on the default synthetic THUMOS-like benchmark: weak vs unsupervised vs top-k MIL.

Runs, on one store and with the sizes `acl-dist run` picks for it (400 steps of 16 videos
per round on this 2-core machine):

1. weak ACL (video labels, one round) through the real pipeline on a local Ray instance;
2. unsupervised ACL (3 rounds) through the same pipeline; mAP with the cluster -> class
   mapping from training labels (hungarian, and the paper's majority / soft);
3. the plain top-k MIL localiser of bench/mil_baseline.py with the same steps and batch,
   with its conv's kernel 3 (the baseline) and 1 (each snippet alone, as ACL's defaults);
4. with --paper-descriptor, unsupervised ACL again with the paper's X^T S descriptor.

Every method runs with each of ``--seeds`` (the run seed: initialisation, batches, crops,
clustering; seed 0's runs under --out, seed s's under --out/seed<s>, one store). Prints
the table (mean +- sd over the seeds) and writes bench_results.json under --out. About 3
minutes a seed on 2 cores (4.5 with --paper-descriptor; 8 minutes for seeds 0-2, measured).

    python bench/acl_benchmark.py [--out bench_runs] [--seeds 0,1,2] [--paper-descriptor]
        [--weak-only]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from mil_baseline import train_and_evaluate  # noqa: E402
from weak_ablation import at, mean_sd  # noqa: E402

from acl_dist.artifacts import RunDir  # noqa: E402
from acl_dist.config import load_config  # noqa: E402
from acl_dist.evaluate import (evaluate_detections, load_ground_truth,  # noqa: E402
                               map_detections)
from acl_dist.pipeline import Run, RunOptions, run_acl  # noqa: E402
from acl_dist.synth import SynthConfig, synthesize  # noqa: E402
from acl_dist.tiou import parse_tiou  # noqa: E402


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


MILS = {"top-k MIL": 3, "top-k MIL (kernel 1)": 1}     # name -> kernel of its conv


def run_seed(store: str, out: str, seed: int, rounds: int, paper_descriptor: bool,
             weak_only: bool) -> dict:
    """Every method of the table with run seed ``seed`` (runs under ``out``): name ->
    metrics (unsupervised runs with ``by_mapping`` and their NMI per round)."""
    results: dict = {}
    runs = [("weak", "weak", [])]
    if not weak_only:
        runs.append(("unsupervised", "unsupervised", []))
    if paper_descriptor and not weak_only:
        runs.append(("unsupervised, paper descriptor", "unsupervised",
                     ["cluster.descriptor=attention"]))
    for name, mode, overrides in runs:
        run_dir = os.path.join(out, name.replace(", ", "_").replace(" ", "_"))
        shutil.rmtree(run_dir, ignore_errors=True)
        cfg = load_config(None, overrides + [f"seed={seed}"], mode=mode, rounds=rounds)
        t0 = time.perf_counter()
        metrics = run_acl(store, run_dir, cfg, quiet=True)
        metrics["wall_seconds"] = round(time.perf_counter() - t0, 1)
        if mode == "unsupervised":
            metrics["by_mapping"] = {m: remap(run_dir, store, m) for m in ("majority", "soft")}
        results[name] = metrics
        print(f"seed {seed} {name}: mAP@0.5 {at(metrics, 0.5):.2f} avg "
              f"{metrics['average']:.2f} ({metrics['wall_seconds']:.0f} s)", flush=True)
    weak_cfg = load_config(os.path.join(out, "weak", "config.yaml"))
    steps = weak_cfg.train
    for name, kernel in MILS.items():
        results[name] = train_and_evaluate(store, steps=steps.steps, batch=steps.batch_size,
                                           max_len=steps.max_len or 10**9, seed=seed,
                                           localize=weak_cfg.localize, kernel=kernel)
    return results


def rows_of(results: dict) -> list[tuple[str, dict]]:
    """(table row, metrics) of one seed's results, in the table's order."""
    rows = [("ACL weak", results["weak"])] + [(f"{n} (weak)", results[n]) for n in MILS]
    for name in results:
        if name.startswith("unsupervised"):
            rows.append((f"ACL {name} (hungarian)", results[name]))
            rows += [(f"ACL {name} ({m})", res) for m, res in results[name]["by_mapping"].items()]
    return rows


def print_table(per_seed: dict[int, dict]) -> None:
    """mAP@0.5, average and the ratio to weak at 0.5: mean +- sd over the seeds."""
    tables = [rows_of(res) for res in per_seed.values()]
    print(f"\n{'method (seeds ' + ','.join(map(str, per_seed)) + ')':44s} {'mAP@0.5':>14s} "
          f"{'avg 0.1:0.7':>14s} {'/ weak @0.5':>14s}")
    for i, (label, _) in enumerate(tables[0]):
        cells = [[at(t[i][1], 0.5) for t in tables], [t[i][1]["average"] for t in tables],
                 [at(t[i][1], 0.5) / max(at(t[0][1], 0.5), 1e-9) for t in tables]]
        print(f"{label:44s} {mean_sd(cells[0]):>14s} {mean_sd(cells[1]):>14s} "
              f"{float(np.mean(cells[2])):14.3f}")
    for seed, res in per_seed.items():
        for name in res:
            if name.startswith("unsupervised"):
                nmi = " -> ".join(f"{r['nmi']:.3f}" for r in res[name]["rounds"])
                print(f"NMI per round ({name}, seed {seed}): {nmi}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench_runs")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", default="0", help="comma list of run seeds (default 0)")
    ap.add_argument("--paper-descriptor", action="store_true")
    ap.add_argument("--weak-only", action="store_true",
                    help="only weak ACL and the top-k MIL baselines (about a minute a seed)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    store = os.path.join(args.out, "store")
    if not os.path.exists(os.path.join(store, "manifest.json")):
        synthesize(SynthConfig(), store, quiet=True)
    per_seed = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        out = args.out if seed == 0 else os.path.join(args.out, f"seed{seed}")
        per_seed[seed] = run_seed(store, out, seed, args.rounds, args.paper_descriptor,
                                  args.weak_only)
    print_table(per_seed)
    path = os.path.join(args.out, "bench_results.json")
    with open(path, "w") as fh:
        json.dump(per_seed if len(per_seed) > 1 else per_seed[0], fh, indent=1)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
