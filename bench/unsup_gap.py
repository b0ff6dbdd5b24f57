"""Where the unsupervised points go (issue 19), part 1: the ceiling that one pseudo-label
per video puts on unsupervised mAP, from the annotation alone (no features, no training).

An unsupervised round gives every training video one cluster, and a run's detections in a
video carry the classes its cluster maps to. Weak mode trains on every label of a video
(THUMOS14's CliffDiving videos are all also annotated Diving, at the same times). So even
with perfect clusters and perfect localisation, a one-to-one mapped unsupervised run can
only find a video's segments of its main class. This bench scores the test ground truth
itself as detections, with the official evaluator:

* ``own labels``: each segment with its own label (what weak mode can reach: 100);
* ``main class``: each segment relabelled with its video's main class (the label with the
  longest annotated time: what one pseudo-label per video can reach, mapped one-to-one),
  one detection per distinct time span.

It prints per setting the average mAP over tIoU 0.1:0.7 and the classes that lose most.
The ceiling binds a run only loosely: the class gate may give a video detections of several
clusters. With ``--run RUN [RUN ...]`` (finished runs on a store of the preset's timelines, e.g. the
demo's) it also prints their per-class AP side by side with the ceiling's, the classes that
share videos with another class marked: where a run's points actually go.

    python bench/unsup_gap.py [--preset thumos14] [--classes 20 10] [--run WEAK UNSUP]

The ablation of docs/method.md sets three runs of one store side by side: weak mode
(every label), weak mode on one label per video (``--set weak_labels=main``: what one
pseudo-label costs with the classes known) and unsupervised (what clusters cost on top).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from acl_dist.annotations import primary_label, to_activitynet_json  # noqa: E402
from acl_dist.evaluate import Detection, evaluate_detections, parse_tiou  # noqa: E402
from acl_dist.synth import SynthConfig, load_timeline  # noqa: E402


def ceiling(preset: str, classes: int | None) -> dict:
    """mAP of the test ground truth as detections, with own labels and with the main class;
    per-class AP of the latter."""
    timeline = load_timeline(SynthConfig(preset=preset, classes=classes))
    test = [v for v in timeline.videos if v.subset == timeline.test_subset]
    gt = to_activitynet_json(test)
    tiou = parse_tiou("0.1:0.7:0.1")
    own, main = [], []
    for v in test:
        top = primary_label(v.segments, v.labels)
        spans = sorted({(s.start, s.end) for s in v.segments})
        # distinct scores in file order: ties would let the evaluator's sort decide
        own += [Detection(v.video_id, s.label, 1.0 - 1e-6 * i, s.start, s.end)
                for i, s in enumerate(v.segments)]
        main += [Detection(v.video_id, top, 1.0 - 1e-6 * i, a, b)
                 for i, (a, b) in enumerate(spans)]
    res_own = evaluate_detections(gt, own, subset=timeline.test_subset, tiou_thresholds=tiou)
    res_main = evaluate_detections(gt, main, subset=timeline.test_subset, tiou_thresholds=tiou)
    per_class = dict(zip(res_main.classes, res_main.ap.mean(axis=0) * 100))
    multi = sum(len(set(v.labels)) > 1 for v in test)
    return {"videos": len(test), "multi": multi, "classes": len(timeline.classes),
            "own": res_own.average * 100, "main": res_main.average * 100,
            "per_class": per_class}


def run_per_class(run: str) -> tuple[dict[str, float], set[str], float]:
    """Per-class AP (average over tIoU 0.1:0.7) of a finished run's mapped detections on its
    test subset, the classes that share a test video with another class, and the mAP."""
    from acl_dist.artifacts import RunDir
    from acl_dist.evaluate import load_detections, load_ground_truth
    from acl_dist.store import FeatureStore

    rundir = RunDir(run)
    cfg, info = rundir.read_config(), rundir.read_info()
    mapping = rundir.read_metrics().get("label_map") or "hungarian"
    name = "detections.json" if cfg.mode == "weak" else f"detections_{mapping}.json"
    dets = load_detections(rundir.path(name))
    gt = load_ground_truth(info["store"], cfg.test_subset)
    res = evaluate_detections(gt, dets, tiou_thresholds=parse_tiou("0.1:0.7:0.1"),
                              unknown_labels="ignore")
    shared = {c for m in FeatureStore.open(info["store"]).metadata(cfg.test_subset)
              if len(set(m.labels)) > 1 for c in m.labels}
    return dict(zip(res.classes, res.ap.mean(axis=0) * 100)), shared, res.average * 100


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="thumos14")
    ap.add_argument("--classes", type=int, nargs="+", default=[20, 10])
    ap.add_argument("--run", nargs="+", help="finished runs on a store of these timelines "
                    "(side by side, the first one's order)")
    args = ap.parse_args()
    print(f"{args.preset} test videos; average mAP over tIoU 0.1:0.7 of the ground truth "
          "itself as detections\n")
    print(f"{'classes':>7} {'videos':>6} {'multi-class':>11} {'own labels':>10} "
          f"{'main class':>10}  classes losing most (AP under main class)")
    for c in args.classes:
        r = ceiling(args.preset, c)
        worst = sorted(r["per_class"].items(), key=lambda kv: kv[1])[:3]
        print(f"{r['classes']:7d} {r['videos']:6d} {r['multi']:11d} {r['own']:10.2f} "
              f"{r['main']:10.2f}  " + ", ".join(f"{k} {v:.1f}" for k, v in worst))
    if args.run:
        runs = {run: run_per_class(run) for run in args.run}
        classes = sorted(next(iter(runs.values()))[0])
        ceil = ceiling(args.preset, len(classes))["per_class"]
        shared = set().union(*(sh for _, sh, _ in runs.values()))
        names = [os.path.basename(os.path.normpath(r)) for r in runs]
        print("\nper-class AP (average over tIoU 0.1:0.7), * = shares test videos with "
              "another class; runs: " + ", ".join(f"{n} = {r}" for n, r in zip(names, runs)))
        print(f"\n{'class':18} " + " ".join(f"{n[:9]:>9}" for n in names) + f" {'ceiling':>8}")
        first = next(iter(runs.values()))[0]
        for c in sorted(classes, key=lambda c: first.get(c, 0.0)):
            print(f"{c + (' *' if c in shared else ''):18} "
                  + " ".join(f"{ap.get(c, 0.0):9.1f}" for ap, _, _ in runs.values())
                  + f" {ceil.get(c, 100.0):8.1f}")
        for label, group in (("classes marked *", shared),
                             ("the other classes", set(classes) - shared),
                             ("all (the run's mAP)", set(classes))):
            print(f"{'mean: ' + label:32} " + " ".join(
                f"{sum(ap.get(c, 0.0) for c in group) / max(1, len(group)):9.1f}"
                for ap, _, _ in runs.values()) + f"   ({len(group)} classes)")

if __name__ == "__main__":
    main()
