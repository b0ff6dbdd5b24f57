"""Where the unsupervised points go (docs/method.md "Where unsupervised loses to weak"), part 1: the ceiling that one pseudo-label
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
clusters. With ``--run NAME=RUN[,RUN...] ...`` (finished runs, e.g. on the demo's store;
several runs of a name: seeds) it also prints their per-class AP side by side with the
ceiling of the runs' own store, the classes that share videos with another class marked,
and each group's mean +- standard deviation over seeds: where a run's points actually go.

    python bench/unsup_gap.py [--preset thumos14] [--classes 20 10] \
        [--run weak=W0,W1,W2 main=M0,M1,M2 unsup=U0,U1,U2]

The ablation of docs/method.md sets three runs of one store side by side: weak mode
(every label), weak mode on one label per video (``--set weak_labels=main``: what one
pseudo-label costs with the classes known) and unsupervised (what clusters cost on top).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from acl_dist.annotations import primary_label, to_activitynet_json  # noqa: E402
from acl_dist.evaluate import Detection, evaluate_detections  # noqa: E402
from acl_dist.synth import SynthConfig, load_timeline  # noqa: E402
from acl_dist.tiou import parse_tiou  # noqa: E402


def ceiling_of(videos: list, gt, subset: str | None = None) -> dict:
    """The test ground truth scored as detections, with own labels and with each video's
    main class. ``videos``: annotated test videos (``video_id``, ``segments``, ``labels``);
    ``gt``: their ground truth (a :class:`GroundTruth`, or ActivityNet JSON and ``subset``).
    Returns both mAPs (average over tIoU 0.1:0.7, %) and per-class AP under main class."""
    tiou = parse_tiou("0.1:0.7:0.1")
    own, main = [], []
    for v in videos:
        top = primary_label(v.segments, v.labels)
        spans = sorted({(s.start, s.end) for s in v.segments})
        # distinct scores in file order: ties would let the evaluator's sort decide
        own += [Detection(v.video_id, s.label, 1.0 - 1e-6 * i, s.start, s.end)
                for i, s in enumerate(v.segments)]
        main += [Detection(v.video_id, top, 1.0 - 1e-6 * i, a, b)
                 for i, (a, b) in enumerate(spans)]
    res_own = evaluate_detections(gt, own, subset=subset, tiou_thresholds=tiou)
    res_main = evaluate_detections(gt, main, subset=subset, tiou_thresholds=tiou)
    return {"videos": len(videos), "multi": sum(len(set(v.labels)) > 1 for v in videos),
            "own": res_own.average * 100, "main": res_main.average * 100,
            "per_class": dict(zip(res_main.classes, res_main.ap.mean(axis=0) * 100))}


def ceiling(preset: str, classes: int | None) -> dict:
    """:func:`ceiling_of` the test videos of the preset's timelines (``classes`` largest)."""
    timeline = load_timeline(SynthConfig(preset=preset, classes=classes))
    test = [v for v in timeline.videos if v.subset == timeline.test_subset]
    out = ceiling_of(test, to_activitynet_json(test), timeline.test_subset)
    return dict(out, classes=len(timeline.classes))


@functools.lru_cache(maxsize=None)
def store_test(store: str, subset: str) -> tuple[list, Any, set[str], dict[str, float]]:
    """A store's test videos (metadata), ground truth, the classes that share a test video
    with another class, and its per-class one-label ceiling (:func:`ceiling_of`): read and
    scored once per store, however many runs were made on it."""
    from acl_dist.evaluate import load_ground_truth
    from acl_dist.store import FeatureStore

    test = FeatureStore.open(store).metadata(subset)
    gt = load_ground_truth(store, subset)
    shared = {c for m in test if len(set(m.labels)) > 1 for c in m.labels}
    return test, gt, shared, ceiling_of(test, gt)["per_class"]


def run_per_class(run: str) -> tuple[dict[str, float], tuple[str, str], str]:
    """Per-class AP (average over tIoU 0.1:0.7) of a finished run's mapped detections on its
    test subset, its (store, test subset) and the mapping scored."""
    from acl_dist.artifacts import RunDir
    from acl_dist.evaluate import load_detections

    rundir = RunDir(run)
    cfg, info = rundir.read_config(), rundir.read_info()
    mapping = rundir.read_metrics().get("label_map") or "hungarian"
    name = "detections.json" if cfg.mode == "weak" else f"detections_{mapping}.json"
    dets = load_detections(rundir.path(name))
    _, gt, _, _ = store_test(info["store"], cfg.test_subset)
    res = evaluate_detections(gt, dets, tiou_thresholds=parse_tiou("0.1:0.7:0.1"),
                              unknown_labels="ignore")
    return (dict(zip(res.classes, res.ap.mean(axis=0) * 100)),
            (info["store"], cfg.test_subset), "labels" if cfg.mode == "weak" else mapping)


def group_per_class(spec: str) -> tuple[str, list[dict[str, float]], set[str],
                                        dict[str, float]]:
    """``NAME=RUN[,RUN...]`` (seeds of one setting; a bare ``RUN`` is named by its folder)
    -> (name and mapping, per-class AP of each run, classes sharing a test video with
    another, per-class ceiling of the first run's store)."""
    name, sep, dirs = spec.partition("=")
    if not sep or os.sep in name:          # a bare path (it may hold "=" further on)
        name, dirs = "", spec
    runs = [run_per_class(d) for d in dirs.split(",")]
    name = name or os.path.basename(os.path.normpath(dirs.split(",")[0]))
    shared = set().union(*(store_test(*r[1])[2] for r in runs))
    return f"{name} ({runs[0][2]})", [r[0] for r in runs], shared, store_test(*runs[0][1])[3]


def mean_sd(values: list[float]) -> str:
    """``mean +-sd`` (sample standard deviation over the runs; blank for one run)."""
    if not values:
        return "-"
    return f"{np.mean(values):5.1f}" + (f" +-{np.std(values, ddof=1):4.1f}"
                                        if len(values) > 1 else "       ")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="thumos14")
    ap.add_argument("--classes", type=int, nargs="+", default=[20, 10])
    ap.add_argument("--run", nargs="+", metavar="NAME=RUN[,RUN...]",
                    help="finished runs on a store of these timelines, side by side (the "
                    "first one's class order); several runs of one name (seeds): mean, and "
                    "+- the standard deviation over them")
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
    if not args.run:
        return
    groups = [group_per_class(spec) for spec in args.run]
    classes = sorted(groups[0][1][0])
    ceil = groups[0][3]
    shared = set().union(*(g[2] for g in groups))
    print("\nper-class AP (average over tIoU 0.1:0.7; mean over each setting's runs; weak "
          "runs scored with their labels, unsupervised ones with their mapping), * = shares "
          "test videos with another class; ceiling: the first run's store, main class; " +
          ", ".join(f"{name}: {len(aps)} run(s)" for name, aps, _, _ in groups))
    width = max(14, *(len(g[0]) for g in groups))
    print(f"\n{'class':26} " + " ".join(f"{name:>{width}}" for name, _, _, _ in groups)
          + f" {'ceiling':>8}")
    first = {c: np.mean([ap.get(c, 0.0) for ap in groups[0][1]]) for c in classes}
    for c in sorted(classes, key=first.get):
        print(f"{c + (' *' if c in shared else ''):26} "
              + " ".join(f"{np.mean([ap.get(c, 0.0) for ap in aps]):{width}.1f}"
                         for _, aps, _, _ in groups) + f" {ceil.get(c, 0.0):8.1f}")
    for label, group in (("classes marked *", shared & set(classes)),
                         ("the other classes", set(classes) - shared),
                         ("all (the runs' mAP)", set(classes))):
        if not group:
            continue
        print(f"{'mean: ' + label:26} " + " ".join(
            f"{mean_sd([np.mean([ap.get(c, 0.0) for c in group]) for ap in aps]):>{width}}"
            for _, aps, _, _ in groups)
            + f" {np.mean([ceil.get(c, 0.0) for c in group]):8.1f}   ({len(group)} classes)")

if __name__ == "__main__":
    main()
