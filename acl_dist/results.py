"""A run's results from its artifacts: each round's detections scored on the test subset
and the validation split, what a round reports to Tune, the final detections and
``metrics.json`` (one aggregation, read back from the run directory). No Ray: the pipeline
calls it after the attention pass, and it can be rerun on a finished run.

Cluster -> class mappings use the training videos' labels only (``VideoSplit.truth``);
detections on validation videos are never mixed into test figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from .artifacts import RunDir
from .config import RunConfig
from .errors import ConfigError
from .evaluate import (MAPPING_MODES, Detection, cluster_class_mapping, cluster_name,
                       detections_to_json, evaluate_detections, load_ground_truth,
                       map_detections)
from .plan import VideoSplit, scored_test_videos
from .progress import log
from .store import FeatureStore
from .tiou import parse_tiou


@dataclass
class RunResults:
    """The scoring side of one run.

    Attributes:
        dir: the run directory. cfg: its resolved config. store_path: its store.
        split: the videos' roles. label_names: names of the model's C outputs.
        with_test: whether the test subset is localised (False in Tune trials).
        label_map_given: name ``detections.json``'s labels by the mapping (``--label-map``).
    """

    dir: RunDir
    cfg: RunConfig
    store_path: str
    split: VideoSplit
    label_names: list[str]
    with_test: bool = True
    label_map_given: bool = False
    quiet: bool = False

    def raw_detections(self, r: int, split: str = "test") -> list[Detection]:
        """Round ``r``'s detections on the ``test`` or the ``val`` videos (model labels)."""
        val_ids, test = self.split.val_ids, self.cfg.test_subset
        dets = []
        for vid, subset, raw in self.dir.read_raw_detections(r):
            wanted = vid in val_ids if split == "val" else (subset == test and
                                                            vid not in val_ids)
            if wanted:
                dets += [Detection(vid, self.label_names[int(label)], score, start, end)
                         for label, score, start, end in raw]
        return dets

    def mapping(self, r: int, mode: str) -> dict[int, list[tuple[str, float]]] | None:
        """Round ``r``'s cluster -> class mapping from the training labels (None in weak
        mode or without labels)."""
        if self.cfg.mode == "weak" or not self.split.has_truth:
            return None
        labels = self.dir.read_clusters(r)["labels"]
        return cluster_class_mapping([labels[m.video_id] for m in self.split.train],
                                     self.split.truth, mode)

    def evaluate_round(self, r: int, split: str = "test") -> dict[str, Any]:
        """Round ``r``'s mAP on the ``test`` subset or the ``val`` split."""
        dets = self.raw_detections(r, split)
        mapping = self.mapping(r, self.cfg.label_map)
        if mapping is not None:
            dets = map_detections(dets, mapping)
        out: dict[str, Any] = {"round": r, "detections": len(dets),
                               "label_map": self.cfg.label_map if mapping else None}
        if split == "val":
            out["validation"] = self.split.val_source
            gt = load_ground_truth(self.store_path, self.split.val[0].subset,
                                   videos=self.split.val_ids)
            if not gt.classes:
                raise ConfigError(f"the validation split ({self.split.val_source}) has no "
                                  "annotated actions to score")
            scored = None
        else:
            gt = load_ground_truth(self.store_path, self.cfg.test_subset)
            scored, out["videos"] = scored_test_videos(self.cfg, self.store, gt.videos)
        out["annotation"] = self.store.annotation_path
        if gt.classes:
            res = evaluate_detections(gt, dets, tiou_thresholds=parse_tiou(self.cfg.tiou),
                                      videos=scored, unknown_labels="ignore")
            out.update(res.as_dict())
        return out

    @cached_property
    def store(self) -> FeatureStore:
        """The run's store (its manifest, read once)."""
        return FeatureStore.open(self.store_path)

    def evaluate(self, r: int) -> None:
        """Score round ``r`` on the validation split and the test subset; write both."""
        splits = (["val"] if self.split.val_ids else []) + (["test"] if self.with_test else [])
        for split in splits:
            out = self.evaluate_round(r, split)
            self.dir.write_eval(r, split, out)
            if "average" in out:
                k = out["tiou"].index(0.5) if 0.5 in out["tiou"] else 0
                log(f"  round {r} {split} mAP@{out['tiou'][k]} {out['map'][k]:.2f}  "
                    f"avg {out['average']:.2f}", self.quiet)

    def board_points(self, step: str) -> None:
        """After a clustering or an evaluation step (run now or earlier): its numbers as
        one point per round in ``RUN/tensorboard/rounds/`` (:mod:`acl_dist.board`)."""
        from .board import round_scalars, write_points

        tag, _, kind = step.partition(".")
        if kind not in ("cluster", "evaluate"):
            return
        r = int(tag.split("_")[1])
        # the scores only: a clustering's labels are required by the steps that use them
        points = round_scalars(self.dir.read_clusters(r, ()), {}) if kind == "cluster" else \
            round_scalars(None, {s: self.dir.read_eval(r, s) for s in ("test", "val")})
        write_points(self.dir.tensorboard_dir("rounds"),
                     f"events.out.tfevents.{kind}_{r:03d}", points, r)

    def round_metrics(self, r: int) -> dict[str, Any]:
        """What a round reports to Tune: validation mAP of round ``r``'s models and the
        quality of the clustering their descriptors give (``round_{r+1}``'s clusters:
        NMI when labels are known, and the label-free silhouette and stability)."""
        out: dict[str, Any] = {"round": r + 1}
        val = self.dir.read_eval(r, "val")
        if val is not None and "average" in val:
            out["val_map"] = val["average"]
            if 0.5 in val["tiou"]:
                out["val_map50"] = val["map"][val["tiou"].index(0.5)]
        c = self.dir.read_clusters(r + 1, ()) if self.cfg.mode == "unsupervised" else None
        if c is not None:
            if "scores" in c:
                out["nmi"] = c["scores"]["nmi"]
            out.update({k: c[k] for k in ("silhouette", "stability") if k in c})
        out["seconds"] = round(sum(v["seconds"] for v in self.dir.state()["steps"].values()), 1)
        return out

    def finish(self, test_videos: list[str]) -> None:
        """The last round's detections (``detections.json``, named by the mapping when
        ``--label-map`` was given, and ``detections_<mapping>.json``) and the metrics."""
        if self.with_test:
            r = self.cfg.rounds - 1
            raw = self.raw_detections(r)
            mapping = self.mapping(r, self.cfg.label_map)
            named = raw if (mapping is None or not self.label_map_given) else \
                map_detections(raw, mapping)
            self.dir.write_detections(detections_to_json(
                named, {"used": False, "details": f"acl-dist {self.cfg.mode}, round {r}"},
                test_videos))
            if mapping is not None:
                self.dir.write_detections(detections_to_json(
                    map_detections(raw, mapping), {"used": False}, test_videos),
                    self.cfg.label_map)
        self.dir.write_metrics(self.metrics())

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: the documented metrics contract plus per-round details."""
        cfg = self.cfg
        state = self.dir.state()["steps"]
        final = self.dir.read_eval(cfg.rounds - 1, "test") or {}
        rounds = []
        for r in range(cfg.rounds + (1 if cfg.mode == "unsupervised" else 0)):
            entry: dict[str, Any] = {"round": r}
            c = self.dir.read_clusters(r, require=("labels", "backend", "sizes")) \
                if cfg.mode == "unsupervised" else None
            if c is not None:
                entry.update(c.get("scores", {}))
                entry["cluster_backend"] = c["backend"]
                entry.update({k: c[k] for k in ("stability", "silhouette") if k in c})
                entry["cluster_sizes"] = c["sizes"]
            if r < cfg.rounds:
                for split in ("test", "val"):
                    ev = self.dir.read_eval(r, split)
                    if ev is not None and "average" in ev:
                        entry[f"{split}_map"] = ev["map"]
                        entry[f"{split}_average"] = ev["average"]
            else:
                entry["clustering_only"] = True
            entry["seconds"] = {k.split(".", 1)[1]: v["seconds"] for k, v in state.items()
                                if k.startswith(f"round_{r}.")}
            rounds.append(entry)
        return {"mode": cfg.mode, "label_map": final.get("label_map"),
                "annotation": final.get("annotation"), "test_videos": final.get("videos"),
                "tiou": final.get("tiou", []), "map": final.get("map", []),
                "average": final.get("average"), "per_class": final.get("per_class", {}),
                "train_subset": cfg.train_subset, "test_subset": cfg.test_subset,
                "num_classes": cfg.num_classes, "rounds": rounds,
                "validation": self.split.val_source,
                "seconds_total": round(sum(v["seconds"] for v in state.values()), 1),
                "store": self.store_path}


def clusters_record(r: int, ids: list[str], res: dict[str, Any],
                    truth: list[str] | None) -> dict[str, Any]:
    """Round ``r``'s ``clusters.json`` from a clustering result (:func:`acl_dist.clustering.
    run_clustering` on the training videos ``ids``): each video's cluster, how it was made,
    and, with the videos' classes ``truth``, the scores and every cluster -> class mapping
    (training labels only)."""
    out = {"round": r, **{k: res[k] for k in ("backend", "backend_reason", "graph", "sigma",
                                               "seconds", "phases", "sizes")},
           "labels": {v: int(k) for v, k in zip(ids, res["labels"])}}
    if "scores" in res:
        out["scores"] = res["scores"]
        out["mapping"] = {mode: {cluster_name(k): v for k, v in cluster_class_mapping(
            res["labels"], truth, mode).items()} for mode in MAPPING_MODES}
    out.update({k: res[k] for k in ("stability", "silhouette") if res.get(k) is not None})
    return out


def clustering_line(r: int, res: dict[str, Any]) -> str:
    """The progress line of round ``r``'s clustering: backend and why, graph, seconds per
    phase, and the scores when the classes are known."""
    s = res.get("scores")
    took = f"{res['seconds']:.1f} s" + (": " + ", ".join(
        f"{k} {v:.1f} s" for k, v in res["phases"].items()) if res["seconds"] >= 1 else "")
    return (f"  round {r} clustering ({res['backend']}: {res['backend_reason']}; "
            f"{res['graph']} graph; {took})"
            + (f": NMI {s['nmi']:.3f} ARI {s['ari']:.3f} purity {s['purity']:.3f}" if s else ""))
