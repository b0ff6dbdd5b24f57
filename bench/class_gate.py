"""The class gate, measured on finished runs without training again.

A run's attention pass saves every localised video's fused CAS, attention and video logits
(``round_<r>/outputs.parquet``, the raw-prediction cache). This bench re-localises a run's
final round from that cache under several localisation settings and scores each with the
run's own scoring path (its split, its cluster -> class mapping, the official evaluator),
so settings are compared on the same models, side by side:

* ``class_threshold``: the softmax video score a class needs for its segments to be
  kept (the paper's 0.1; the top class is always kept);
* ``video_score``: how that score enters a segment's score, ``added`` (the paper's: outer-
  inner contrast + gamma * p_c) or ``multiplied`` (that times p_c).

Why it matters for unsupervised runs: a video holds one pseudo-label, so a model trained on
clusters gives a CliffDiving video's Diving cluster a small video score; under the 0.1 gate
those Diving segments are never output, and Diving's AP stops at the share of its segments
in Diving-only videos.

    python bench/class_gate.py --split val \\
        --run weak=W0,W1,W2 unsupervised=U0,U1,U2 [--run ...]

Groups named ``weak`` and ``unsupervised`` (same store) also get the ratio of their means;
``--classes`` adds rows of per-class AP. The cache holds the CAS in float16, so a fresh run
with a setting can differ from its row here in the second decimal (the demo: 81.41 / 80.87
fresh, 81.41 / 80.85 from the cache).
``--split val`` scores the runs' held-out validation videos (runs made with
``--set val_fraction=0.2``: the setting is chosen there), ``test`` the test subset.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from acl_dist.artifacts import RunDir, decode_localised_row, label_names  # noqa: E402
from acl_dist.evaluate import Detection  # noqa: E402
from acl_dist.localize import fuse, localize_video  # noqa: E402
from acl_dist.plan import split_videos  # noqa: E402
from acl_dist.results import RunResults  # noqa: E402
from acl_dist.store import FeatureStore  # noqa: E402

def setting(gate: float, video_score: str, max_classes: int = 0) -> tuple[str, dict]:
    """(row name, overrides of the run's own localisation config); 0 classes: no cap."""
    name = (f"gate {gate:g}" if gate else "no gate") + f", {video_score}" + (
        f", <= {max_classes} classes" if max_classes else "") + (
        " (the paper's)" if (gate, video_score, max_classes) == (0.1, "added", 0) else "")
    return name, {"class_threshold": gate, "video_score": video_score,
                  "max_classes": max_classes}


SETTINGS: list[tuple[str, dict[str, Any]]] = [
    setting(0.1, "added"), setting(0.1, "multiplied"), setting(0.001, "added"),
    setting(0.001, "multiplied"), setting(0.001, "multiplied", 5),
    setting(0.001, "multiplied", 3), setting(0.0, "added"), setting(0.0, "multiplied")]


class CachedRun(RunResults):
    """A finished run's scoring, with its final round's detections made again from the
    saved outputs under another :class:`LocalizeConfig`."""

    def __init__(self, run: str):
        rundir = RunDir(run)
        cfg, store = rundir.read_config(), rundir.read_info()["store"]
        fs = FeatureStore.open(store)
        super().__init__(rundir, cfg, store, split_videos(cfg, fs),
                         label_names(cfg.mode, cfg.num_classes, fs.classes), quiet=True)
        self.final = cfg.rounds - 1
        self.meta = {m.video_id: m for m in fs.metadata()}
        self.rows = {v: row for v, row in rundir.read_output_rows(
            self.final, set(self.meta)).items() if row["cas"]}
        self.localize = cfg.localize

    def raw_detections(self, r: int, split: str = "test") -> list[Detection]:
        val_ids, test = self.split.val_ids, self.cfg.test_subset
        dets = []
        for vid, row in self.rows.items():
            meta = self.meta[vid]
            if not (vid in val_ids if split == "val" else
                    meta.subset == test and vid not in val_ids):
                continue
            cas, att, logits = decode_localised_row(row)
            attention = fuse(att["rgb"], att["flow"], self.localize.rgb_weight) \
                if len(att) == 2 else next(iter(att.values()))
            dets += [Detection(vid, self.label_names[s.label], s.score, s.start, s.end)
                     for s in localize_video(cas, attention, logits, meta.grid,
                                             meta.duration, self.localize)]
        return dets

    def score(self, split: str, **overrides: Any) -> tuple[float, float, dict[str, float]]:
        """(average mAP, mAP@0.5, class -> AP averaged over the tIoUs) of the final round
        under the overrides."""
        self.localize = dataclasses.replace(self.cfg.localize, **overrides)
        out = self.evaluate_round(self.final, split)
        per_class = {c: float(np.mean(ap)) for c, ap in out["per_class"].items()}
        return out["average"], out["map"][out["tiou"].index(0.5)], per_class


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} +- {sd:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", nargs="+", required=True, metavar="NAME=RUN[,RUN...]",
                    action="extend")
    ap.add_argument("--split", choices=["val", "test"], default="test")
    ap.add_argument("--classes", nargs="*", default=[],
                    help="also print these classes' AP (average over tIoU) per group")
    args = ap.parse_args()
    groups: dict[str, list[CachedRun]] = {}
    for spec in args.run:
        name, _, runs = spec.partition("=")
        if not runs:
            ap.error(f"--run {spec}: expected NAME=RUN[,RUN...]")
        groups[name] = [CachedRun(r) for r in runs.split(",") if r]
    if args.split == "val" and any(not r.split.val_ids for g in groups.values() for r in g):
        ap.error("--split val needs runs made with a validation split (val_fraction)")
    names = list(groups)
    ratio = "weak" in groups and "unsupervised" in groups
    print(f"{args.split} videos, final round; average mAP 0.1:0.7 / mAP@0.5, mean +- sd over "
          "each group's runs")
    print("| setting | " + " | ".join(names) + (" | unsupervised / weak |" if ratio else " |"))
    print("|---" * (len(names) + 1 + ratio) + "|")
    for label, overrides in SETTINGS:
        scores = {n: [r.score(args.split, **overrides) for r in g] for n, g in groups.items()}
        cells = [f"{mean_sd([a for a, _, _ in s])} / {mean_sd([m for _, m, _ in s])}"
                 for s in scores.values()]
        if ratio:
            mean = {n: (statistics.mean(a for a, _, _ in s), statistics.mean(m for _, m, _ in s))
                    for n, s in scores.items()}
            cells.append(f"{mean['unsupervised'][0] / mean['weak'][0]:.3f} / "
                         f"{mean['unsupervised'][1] / mean['weak'][1]:.3f}")
        print(f"| {label} | " + " | ".join(cells) + " |")
        for c in args.classes:
            print(f"|   {c} | " + " | ".join(
                mean_sd([per.get(c, 0.0) for _, _, per in s]) for s in scores.values())
                  + (" | |" if ratio else " |"))
        sys.stdout.flush()


if __name__ == "__main__":
    main()
