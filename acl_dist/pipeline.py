"""The ACL rounds on Ray, with a run directory that makes them resumable.

Round r (unsupervised): descriptors (r = 0: uniform pooling of the store; r > 0: the
previous round's attention pass) -> clustering task -> pseudo-labels -> Ray Train ->
attention pass over every video (next descriptors; test CAS, attention, detections) ->
evaluation of this round's detections. Weak mode: one round, the store's video labels, no
clustering. After the last round the final detections and ``metrics.json`` are written.

Run directory (local or ``s3://``)::

    RUN/config.yaml          the resolved config (also inside every checkpoint)
    RUN/state.json           finished steps with their seconds; written after each step
    RUN/round_<r>/descriptors.parquet   (r = 0, unsupervised) uniform descriptors
    RUN/round_<r>/clusters.json         pseudo-labels, clustering stats, class mapping
    RUN/round_<r>/model.pt              the round's network(s) (one, or one per stream)
    RUN/round_<r>/outputs.parquet       attention pass: descriptors, test CAS/attention/dets
    RUN/round_<r>/eval.json             this round's test mAP (diagnostic, never selection)
    RUN/round_<r>/val.json              this round's validation mAP (what Tune selects on)
    RUN/ray_train/                      Ray Train's storage (checkpoints, per-step results)
    RUN/tensorboard/round_<r>/          TensorBoard events: loss terms per stream, lr, videos/s
    RUN/detections.json, RUN/metrics.json

With a validation split (``val_subset``, or ``val_fraction`` of the training videos held
out by :func:`holdout_split`), its videos are never clustered or trained on; the attention
pass localises them beside the test videos and ``val.json`` scores them each round.

Every artifact is written whole (temporary file + rename, or one PUT on S3) before its step
is marked done, so ``--resume`` reruns exactly the first unfinished step and what follows.
"""

from __future__ import annotations

import json
import math
import os
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np

from . import fsutil
from .artifacts import (CONFIG, RUN_INFO, ArtifactError, RunDir, check_artifact,
                        label_names, load_checkpoint, save_checkpoint, verify_train_storage)
from .config import RunConfig, load_config, to_dict, to_yaml, with_updates
from .errors import ConfigError
from .evaluate import (Detection, cluster_class_mapping, cluster_name, detections_to_json,
                       evaluate_detections, load_ground_truth, map_detections, parse_tiou)
from .progress import log
from .store import FeatureStore


# --------------------------------------------------------------------------- validation split


def holdout_split(video_ids: Iterable[str], fraction: float, seed: int = 0) -> set[str]:
    """The videos held out as a validation split: those whose ``crc32("<seed>:<id>")``
    falls in the lowest ``fraction`` of the 32-bit range. A seeded hash of the id, not a
    shuffle, so the split is the same on every machine, for every store layout and order,
    and a video's side never changes when others are added."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction must be in [0, 1), got {fraction}")
    cut = int(fraction * 2**32)
    return {v for v in video_ids if zlib.crc32(f"{seed}:{v}".encode()) < cut}


# --------------------------------------------------------------------------- config sizing


def default_subsets(store: FeatureStore) -> tuple[str, str]:
    """(train, test) subsets of a store: THUMOS ``validation``/``test``, ActivityNet
    ``training``/``validation``, BaSNet ``train``/``test``; synthetic stores say theirs."""
    src = store.manifest.get("source", {})
    if "train_subset" in src and "test_subset" in src:
        return src["train_subset"], src["test_subset"]
    names = set(store.subsets)
    for train, test in (("training", "validation"), ("train", "test"), ("validation", "test"),
                        ("train", "val"), ("training", "testing")):
        if train in names and test in names:
            return train, test
    raise ConfigError(f"cannot tell training and test subsets apart in {sorted(names)}; "
                      "pass --train-subset and --test-subset")


def resolve_config(cfg: RunConfig, store: FeatureStore, cpus: int | None = None,
                   gpus: float = 0.0) -> RunConfig:
    """Fill every ``None`` of ``cfg`` from the store and the machine.

    Steps = 2 x the training videos (at least 150, at most the paper's 30,005): a
    THUMOS-sized store (200 videos) gets 400 updates of 16 videos per round, ~10 minutes for
    3 rounds on 2 CPU cores; the batch grows with the store up to the paper's 32. Workers =
    GPUs when there are GPUs, else 1 worker per 4 CPUs (on a 2-core machine one worker with
    both cores beats two DDP workers: RAY_NOTES.md §3). Training crops to 256 snippets on
    CPUs and uses whole videos on GPUs.
    """
    train, test = default_subsets(store)
    train = cfg.train_subset or train
    test = cfg.test_subset or test
    for name in (train, test) + ((cfg.val_subset,) if cfg.val_subset else ()):
        if name not in store.subsets:
            raise ConfigError(f"subset {name!r} not in the store (has {store.subsets})")
    if cfg.val_subset in (train, test):
        raise ConfigError(f"val_subset {cfg.val_subset!r} is the {'training' if cfg.val_subset == train else 'test'} "
                          "subset; validate on a third subset or use val_fraction")
    if cfg.val_subset and cfg.val_fraction:
        raise ConfigError("set val_subset or val_fraction, not both")
    n_train = store.num_videos(train)
    # None means "size it"; 0 and negatives never get here (RunConfig refuses them)
    num_classes = cfg.num_classes if cfg.num_classes is not None else len(store.classes)
    if cfg.mode == "weak" and num_classes != len(store.classes):
        raise ConfigError(f"weak mode trains on the store's {len(store.classes)} classes; "
                          f"--num-classes {num_classes} does not match")
    if cfg.mode == "unsupervised" and not 2 <= num_classes <= n_train:
        raise ConfigError(f"--num-classes must be in [2, {n_train}] for {n_train} videos")
    tc = cfg.train
    cpus = cpus or os.cpu_count() or 2
    use_gpu = tc.use_gpu if tc.use_gpu is not None else gpus > 0
    workers = tc.workers if tc.workers is not None else (
        max(1, int(gpus)) if use_gpu else max(1, cpus // 4))
    batch = tc.batch_size if tc.batch_size is not None else int(
        min(32, max(8, 2 ** round(math.log2(max(n_train, 1) / 12)))))
    steps = tc.steps if tc.steps is not None else int(min(30005, max(150, 2 * n_train)))
    max_len = tc.max_len if tc.max_len is not None else (0 if use_gpu else 256)
    cpw = tc.cpus_per_worker if tc.cpus_per_worker is not None else (
        1.0 if use_gpu else max(0.5, min(1.0, (cpus - 1) / workers)))
    rounds = 1 if cfg.mode == "weak" else cfg.rounds
    tiou = cfg.tiou if cfg.tiou is not None else _guess_tiou(store)
    return with_updates(cfg, num_classes=num_classes, train_subset=train, test_subset=test,
                        rounds=rounds, tiou=tiou,
                        train={"workers": workers, "use_gpu": use_gpu, "batch_size": batch,
                               "steps": steps, "cpus_per_worker": cpw, "max_len": max_len})


def _guess_tiou(store: FeatureStore) -> str:
    """THUMOS-style stores (``video_test_*`` ids, or the THUMOS synthetic preset) are
    evaluated at 0.1:0.7, everything else at ActivityNet's 0.5:0.95."""
    src = store.manifest.get("source", {})
    if src.get("preset") == "thumos14":
        return "thumos"
    meta = next(store.iter_videos(streams=[], batch_rows=1), None)
    return "thumos" if meta is not None and meta.video_id.startswith("video_") else "anet"


# --------------------------------------------------------------------------- the rounds


class Run:
    """Executes (or resumes) one ACL run. See the module doc for the steps."""

    def __init__(self, store_path: str, out: str, cfg: RunConfig, quiet: bool = False,
                 label_map_given: bool = False, max_failures: int = 0,
                 with_test: bool = True, torch_threads: int | None = None,
                 attention_actors: int | None = None,
                 on_round: Callable[[int, dict[str, Any]], None] | None = None):
        """Args:
            with_test: localise and score the test subset (False in Tune trials, which
                must never see it).
            torch_threads: intra-op threads of each training worker and attention actor
                (default: the machine's cores over the workers).
            attention_actors: actors of the attention pass (default: one per GPU of the
                cluster, or per 4 CPUs); a Tune trial gets its own share.
            on_round: called after each round as ``on_round(r, round_metrics)`` with the
                round's validation mAP and label-free scores (what Tune reports).
        """
        self.store = FeatureStore.open(store_path)
        self.store_path = store_path
        self.dir = RunDir(out)
        self.cfg = cfg
        self.quiet = quiet
        self.label_map_given = label_map_given
        self.max_failures = max_failures
        self.with_test = with_test
        self.threads = torch_threads
        self.attention_actors = attention_actors
        self.on_round = on_round
        subsets = [cfg.train_subset, cfg.test_subset] + ([cfg.val_subset] if cfg.val_subset
                                                         else [])
        meta = self.store.metadata(subsets)
        train_all = [m for m in meta if m.subset == cfg.train_subset]
        if cfg.val_subset:
            self.val_meta = [m for m in meta if m.subset == cfg.val_subset]
            self.val_source = f"subset {cfg.val_subset!r} ({len(self.val_meta)} videos)"
        else:
            held = holdout_split([m.video_id for m in train_all], cfg.val_fraction, cfg.seed)
            self.val_meta = [m for m in train_all if m.video_id in held]
            self.val_source = (f"{len(held)} of the {len(train_all)} {cfg.train_subset!r} "
                               f"videos held out (crc32 rule, val_fraction "
                               f"{cfg.val_fraction:g}, seed {cfg.seed})") if held else None
        if (cfg.val_subset or cfg.val_fraction) and not self.val_meta:
            raise ConfigError(f"the validation split is empty (val_fraction "
                              f"{cfg.val_fraction:g} of {len(train_all)} videos); raise it")
        self.val_ids = {m.video_id for m in self.val_meta}
        self.train_meta = [m for m in train_all if m.video_id not in self.val_ids]
        if cfg.mode == "unsupervised" and len(self.train_meta) < cfg.num_classes:
            raise ConfigError(f"{len(self.train_meta)} training videos left after the "
                              f"validation split, fewer than {cfg.num_classes} clusters")
        self.truth = [m.primary_label for m in self.train_meta]
        self.has_truth = all(t is not None for t in self.truth)
        if cfg.mode == "weak":
            index = {c: i for i, c in enumerate(self.store.classes)}
            self.weak_labels = {m.video_id: [index[lb] for lb in m.labels if lb in index]
                                for m in self.train_meta}
            if not any(self.weak_labels.values()):
                raise ConfigError(f"weak mode needs video labels; subset {cfg.train_subset!r} "
                                  "of the store has none")
        self.label_names = label_names(cfg.mode, cfg.num_classes, self.store.classes)
        self.timings: dict[str, float] = {}

    # -- helpers --------------------------------------------------------------

    def _step(self, name: str, fn, *args, **kwargs) -> Any:
        """Run a step unless it is done; record its seconds."""
        if self.dir.done(name):
            log(f"[{name}] done earlier, skipped", self.quiet)
            return None
        log(f"[{name}] ...", self.quiet)
        started = time.perf_counter()
        info = fn(*args, **kwargs) or {}
        seconds = time.perf_counter() - started
        self.dir.mark(name, seconds, **info)
        log(f"[{name}] {seconds:.1f} s", self.quiet)
        return info

    @staticmethod
    def _absolute(path: str) -> str:
        """Paths handed to Ray workers must not depend on their working directory."""
        return path if fsutil.is_remote(path) else os.path.abspath(path)

    def _torch_threads(self) -> int:
        return self.threads or max(1, (os.cpu_count() or 2) // max(1, self.cfg.train.workers))

    # -- steps ----------------------------------------------------------------

    def step_descriptors0(self) -> dict:
        from .distributed import map_descriptors, write_dataset

        ds = map_descriptors(self.store, self.cfg.train_subset)
        rows = write_dataset(ds, self.dir.round(0, "descriptors.parquet"))
        return {"videos": rows}

    def _descriptors(self, r: int) -> tuple[list[str], np.ndarray]:
        from .distributed import read_descriptors

        path = self.dir.round(0, "descriptors.parquet") if r == 0 else \
            self.dir.round(r - 1, "outputs.parquet")
        ids, desc = read_descriptors(path)
        order = {v: i for i, v in enumerate(ids)}
        missing = [m.video_id for m in self.train_meta if m.video_id not in order]
        if missing:
            raise RuntimeError(f"descriptors of round {r} miss {len(missing)} training videos "
                               f"(e.g. {missing[0]})")
        return [m.video_id for m in self.train_meta], desc[[order[m.video_id]
                                                            for m in self.train_meta]]

    def step_cluster(self, r: int) -> dict:
        from .distributed import run_clustering_task

        ids, desc = self._descriptors(r)
        previous = None
        if r > 0:
            prev = fsutil.read_json(self.dir.round(r - 1, "clusters.json"))
            previous = np.array([prev["labels"][v] for v in ids])
        cc = self.cfg.cluster
        res = run_clustering_task(desc, self.cfg.num_classes, cc,
                                  self.truth if self.has_truth else None, previous)
        labels = res["labels"]
        out = {"round": r, "backend": res["backend"], "graph": res["graph"],
               "sigma": res["sigma"],
               "seconds": res["seconds"], "sizes": res["sizes"],
               "labels": {v: int(k) for v, k in zip(ids, labels)}}
        if "scores" in res:
            out["scores"] = res["scores"]
            out["mapping"] = {mode: {cluster_name(k): v for k, v in cluster_class_mapping(
                labels, self.truth, mode).items()} for mode in ("hungarian", "majority", "soft")}
        for key in ("stability", "silhouette"):
            if res.get(key) is not None:
                out[key] = res[key]
        fsutil.write_json_atomic(self.dir.round(r, "clusters.json"), out)
        if "scores" in res:
            s = res["scores"]
            log(f"  round {r} clustering ({res['backend']}, {res['graph']} graph): "
                f"NMI {s['nmi']:.3f} "
                f"ARI {s['ari']:.3f} purity {s['purity']:.3f}", self.quiet)
        return {"backend": res["backend"]}

    def _labels(self, r: int) -> dict[str, list[int]]:
        if self.cfg.mode == "weak":
            return self.weak_labels
        clusters = fsutil.read_json(self.dir.round(r, "clusters.json"))["labels"]
        return {v: [k] for v, k in clusters.items()}

    def step_train(self, r: int) -> dict:
        from .distributed import run_training

        cfg = with_updates(self.cfg, train={"seed": self.cfg.train.seed + 1000 * r})
        storage = self._absolute(self.dir.path("ray_train"))
        # an interrupted round restarts from its latest Ray Train checkpoint: check them
        # here, so a refused or corrupt file is one line naming it, not a worker traceback
        verify_train_storage(storage, f"round_{r}")
        ckpt = run_training(self.store, self.cfg.train_subset, cfg, self._labels(r),
                            self.cfg.num_classes, self.label_names, r, storage,
                            f"round_{r}", torch_threads=self._torch_threads(),
                            max_failures=self.max_failures, quiet=self.quiet,
                            tensorboard_dir=self._absolute(self.dir.path("tensorboard",
                                                                         f"round_{r}")))
        save_checkpoint(self.dir.round(r, "model.pt"), ckpt)
        last = ckpt["history"][-1] if ckpt.get("history") else {}
        return {"steps": self.cfg.train.steps, "final_loss": last.get("loss")}

    def step_attention(self, r: int) -> dict:
        from .distributed import map_attention, write_dataset

        cfg = self.cfg
        describe = cfg.train_subset if cfg.mode == "unsupervised" else None
        detect = ([cfg.test_subset] if self.with_test else []) + \
            ([cfg.val_subset] if cfg.val_subset else [])
        held_out = sorted(self.val_ids) if not cfg.val_subset else []
        subsets = detect + ([cfg.train_subset] if describe or held_out else [])
        load_checkpoint(self.dir.round(r, "model.pt"))  # refused/unreadable: one line, here
        ds = map_attention(self.store, subsets, self.dir.round(r, "model.pt"),
                           detect, cfg.localize, describe, detect_ids=held_out,
                           descriptor=self.cfg.cluster.descriptor,
                           concurrency=self.attention_actors,
                           use_gpu=bool(self.cfg.train.use_gpu),
                           torch_threads=self._torch_threads())
        rows = write_dataset(ds, self.dir.round(r, "outputs.parquet"))
        return {"videos": rows}

    def _raw_detections(self, r: int, split: str = "test") -> list[Detection]:
        """Round ``r``'s detections on the ``test`` or the ``val`` videos."""
        import pyarrow.parquet as pq

        with fsutil.open_read(self.dir.round(r, "outputs.parquet")) as fh:
            table = pq.read_table(fh, columns=["video_id", "subset", "detections"])
        dets = []
        for vid, subset, blob in zip(*(table.column(c).to_pylist()
                                       for c in ("video_id", "subset", "detections"))):
            wanted = vid in self.val_ids if split == "val" else (
                subset == self.cfg.test_subset and vid not in self.val_ids)
            if not wanted:
                continue
            for label, score, start, end in json.loads(blob):
                dets.append(Detection(vid, self.label_names[int(label)], score, start, end))
        return dets

    def _mapping(self, r: int, mode: str) -> dict[int, list[tuple[str, float]]] | None:
        if self.cfg.mode == "weak" or not self.has_truth:
            return None
        clusters = fsutil.read_json(self.dir.round(r, "clusters.json"))
        ids = [m.video_id for m in self.train_meta]
        return cluster_class_mapping([clusters["labels"][v] for v in ids], self.truth, mode)

    def evaluate_round(self, r: int, split: str = "test") -> dict:
        """Round ``r``'s mAP on the ``test`` subset or the ``val`` split (clusters mapped
        to classes from the training videos' labels only)."""
        dets = self._raw_detections(r, split)
        mapping = self._mapping(r, self.cfg.label_map)
        if mapping is not None:
            dets = map_detections(dets, mapping)
        out: dict[str, Any] = {"round": r, "detections": len(dets),
                               "label_map": self.cfg.label_map if mapping else None}
        if split == "val":
            out["validation"] = self.val_source
            gt = load_ground_truth(self.store_path, self.val_meta[0].subset,
                                   videos=self.val_ids)
            if not gt.classes:
                raise ConfigError(f"the validation split ({self.val_source}) has no "
                                  "annotated actions to score")
        else:
            gt = load_ground_truth(self.store_path, self.cfg.test_subset)
        if gt.classes:
            res = evaluate_detections(gt, dets, tiou_thresholds=parse_tiou(self.cfg.tiou),
                                      unknown_labels="ignore")
            out.update(res.as_dict())
        return out

    def step_evaluate(self, r: int) -> dict:
        splits = (["val"] if self.val_ids else []) + (["test"] if self.with_test else [])
        for split in splits:
            out = self.evaluate_round(r, split)
            name = "val.json" if split == "val" else "eval.json"
            fsutil.write_json_atomic(self.dir.round(r, name), out)
            if "average" in out:
                k = out["tiou"].index(0.5) if 0.5 in out["tiou"] else 0
                log(f"  round {r} {split} mAP@{out['tiou'][k]} {out['map'][k]:.2f}  "
                    f"avg {out['average']:.2f}", self.quiet)
        return {}

    def round_metrics(self, r: int) -> dict[str, Any]:
        """What a round reports to Tune: validation mAP of round ``r``'s models and the
        quality of the clustering their descriptors give (``round_{r+1}``'s clusters:
        NMI when labels are known, and the label-free silhouette and stability)."""
        out: dict[str, Any] = {"round": r + 1}
        if fsutil.exists(self.dir.round(r, "val.json")):
            val = fsutil.read_json(self.dir.round(r, "val.json"))
            if "average" in val:
                out["val_map"] = val["average"]
                if 0.5 in val["tiou"]:
                    out["val_map50"] = val["map"][val["tiou"].index(0.5)]
        path = self.dir.round(r + 1, "clusters.json")
        if self.cfg.mode == "unsupervised" and fsutil.exists(path):
            c = fsutil.read_json(path)
            if "scores" in c:
                out["nmi"] = c["scores"]["nmi"]
            for key in ("silhouette", "stability"):
                if key in c:
                    out[key] = c[key]
        state = self.dir.state()["steps"]
        out["seconds"] = round(sum(v["seconds"] for v in state.values()), 1)
        return out

    def step_finish(self) -> dict:
        r = self.cfg.rounds - 1
        if not self.with_test:
            fsutil.write_json_atomic(self.dir.path("metrics.json"), self.metrics())
            return {}
        raw = self._raw_detections(r)
        videos = [m.video_id for m in self.store.metadata(self.cfg.test_subset)]
        mapping = self._mapping(r, self.cfg.label_map)
        named = raw if (mapping is None or not self.label_map_given) else \
            map_detections(raw, mapping)
        fsutil.write_json_atomic(self.dir.path("detections.json"), detections_to_json(
            named, {"used": False, "details": f"acl-dist {self.cfg.mode}, round {r}"}, videos))
        if mapping is not None:
            fsutil.write_json_atomic(
                self.dir.path(f"detections_{self.cfg.label_map}.json"),
                detections_to_json(map_detections(raw, mapping), {"used": False}, videos))
        fsutil.write_json_atomic(self.dir.path("metrics.json"), self.metrics())
        return {}

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: the DESIGN.md contract plus per-round details."""
        state = self.dir.state()["steps"]
        last_eval = self.dir.round(self.cfg.rounds - 1, "eval.json")
        final = fsutil.read_json(last_eval) if fsutil.exists(last_eval) else {}
        rounds = []
        last = self.cfg.rounds + (1 if self.cfg.mode == "unsupervised" else 0)
        for r in range(last):
            entry: dict[str, Any] = {"round": r}
            if self.cfg.mode == "unsupervised" and fsutil.exists(
                    self.dir.round(r, "clusters.json")):
                c = fsutil.read_json(self.dir.round(r, "clusters.json"))
                entry.update(c.get("scores", {}))
                entry["cluster_backend"] = c["backend"]
                for key in ("stability", "silhouette"):
                    if key in c:
                        entry[key] = c[key]
                entry["cluster_sizes"] = c["sizes"]
            if r < self.cfg.rounds:
                for split, name in (("test", "eval.json"), ("val", "val.json")):
                    if not fsutil.exists(self.dir.round(r, name)):
                        continue
                    ev = fsutil.read_json(self.dir.round(r, name))
                    if "average" in ev:
                        entry[f"{split}_map"] = ev["map"]
                        entry[f"{split}_average"] = ev["average"]
            else:
                entry["clustering_only"] = True
            entry["seconds"] = {k.split(".", 1)[1]: v["seconds"] for k, v in state.items()
                                if k.startswith(f"round_{r}.")}
            rounds.append(entry)
        out = {"mode": self.cfg.mode, "label_map": final.get("label_map"),
               "tiou": final.get("tiou", []), "map": final.get("map", []),
               "average": final.get("average"), "per_class": final.get("per_class", {}),
               "train_subset": self.cfg.train_subset, "test_subset": self.cfg.test_subset,
               "num_classes": self.cfg.num_classes, "rounds": rounds,
               "validation": self.val_source,
               "seconds_total": round(sum(v["seconds"] for v in state.values()), 1),
               "store": self.store_path}
        return out

    # -- resume -----------------------------------------------------------------

    def step_names(self) -> list[str]:
        """Every step of the run, in order (the ledger's keys)."""
        names = ["round_0.descriptors", "round_0.cluster"] if self.cfg.mode == "unsupervised" \
            else []
        for r in range(self.cfg.rounds):
            names += [f"round_{r}.train", f"round_{r}.attention", f"round_{r}.evaluate"]
            if self.cfg.mode == "unsupervised":
                names.append(f"round_{r + 1}.cluster")
        return names + ["finish"]

    def artifacts_of(self, step: str) -> list[str]:
        """The files a finished ``step`` wrote (what a later step or the report reads)."""
        if step == "finish":
            return [self.dir.path("metrics.json")] + (
                [self.dir.path("detections.json")] if self.with_test else [])
        tag, kind = step.split(".")
        r = int(tag.split("_")[1])
        if kind == "evaluate":
            return ([self.dir.round(r, "val.json")] if self.val_ids else []) + \
                ([self.dir.round(r, "eval.json")] if self.with_test else [])
        return [self.dir.round(r, {"descriptors": "descriptors.parquet",
                                   "cluster": "clusters.json", "train": "model.pt",
                                   "attention": "outputs.parquet"}[kind])]

    def verify_finished_steps(self) -> None:
        """Before trusting the ledger: read back each finished step's artifacts. The first
        step whose artifact is missing or unreadable is rerun, with every finished step after
        it (they were computed from it); a refused file (pickled objects) stops the run."""
        done = self.dir.state()["steps"]
        names = self.step_names()
        for i, name in enumerate(names):
            if name not in done:
                continue
            for path in self.artifacts_of(name):
                try:
                    check_artifact(path)
                except ArtifactError as err:
                    if err.refused:
                        raise
                    rerun = [n for n in names[i:] if n in done]
                    log(f"--resume: {err}; rerunning {name}"
                        + (f" and the {len(rerun) - 1} finished step(s) after it"
                           if len(rerun) > 1 else ""), self.quiet)
                    self.dir.forget(rerun)
                    return

    # -- the schedule -------------------------------------------------------------

    def execute(self, resume: bool = False) -> dict[str, Any]:
        from .distributed import init_ray

        if resume:
            self.verify_finished_steps()
        init_ray(quiet=self.quiet)
        unsup = self.cfg.mode == "unsupervised"
        if unsup:
            self._step("round_0.descriptors", self.step_descriptors0)
            self._step("round_0.cluster", self.step_cluster, 0)
        for r in range(self.cfg.rounds):
            tag = f"round_{r}"
            self._step(f"{tag}.train", self.step_train, r)
            self._step(f"{tag}.attention", self.step_attention, r)
            self._step(f"{tag}.evaluate", self.step_evaluate, r)
            if unsup:
                # the next round's clustering (after the last round: where a next round
                # would start, and the label-free scores of the last models)
                self._step(f"round_{r + 1}.cluster", self.step_cluster, r + 1)
            if self.on_round is not None:
                self.on_round(r, self.round_metrics(r))
        self._step("finish", self.step_finish)
        return fsutil.read_json(self.dir.path("metrics.json"))


def load_run_config(out: str, store: str | None = None) -> tuple[str, RunConfig, dict]:
    """(store, config, ``run.json``) of the run in ``out``, for ``--resume``; ``store``,
    when given, must be the one the run was started on."""
    info_path, cfg_path = fsutil.join(out, RUN_INFO), fsutil.join(out, CONFIG)
    if not (fsutil.exists(info_path) and fsutil.exists(cfg_path)):
        raise ConfigError(f"--resume: {out} is not a run directory (no {RUN_INFO} and "
                          f"{CONFIG})")
    saved = fsutil.read_json(info_path)
    if not isinstance(saved, dict) or not isinstance(saved.get("store"), str):
        raise ConfigError(f"--resume: {info_path} does not name the run's store")
    if store is not None and saved["store"] != store:
        raise ConfigError(f"--resume: {out} was run on {saved['store']}, not {store}")
    return saved["store"], load_config(cfg_path), saved


def new_run(store: str, out: str, cfg: RunConfig, **run_kwargs: Any) -> Run:
    """Resolve a new run's config against the store and the cluster, check it (by building
    the :class:`Run`), and only then save it into ``out``: a run refused here leaves no
    ``config.yaml`` behind to block the corrected rerun. A directory whose run never
    finished a step is started afresh."""
    rundir = RunDir(out)
    if rundir.is_run():
        if rundir.has_finished_steps():
            raise ConfigError(f"{out} already holds a run; use --resume to continue it or "
                              "choose another --out")
        log(f"{out} holds a run that finished no step: starting it afresh",
            run_kwargs.get("quiet", False))
    fs = FeatureStore.open(store)
    # Every check that needs no cluster (subsets, C against the videos, the validation
    # split, the store's metadata) runs before Ray starts: the plan is checked on this
    # machine's sizing first, then sized to the cluster. Only the training sizes (workers,
    # GPUs, crop, CPUs per worker) can differ, and Run derives nothing from them.
    run = Run(store, out, resolve_config(cfg, fs, cpus=os.cpu_count() or 2, gpus=0.0),
              **run_kwargs)
    from .distributed import cluster_capacity

    cpus, gpus = cluster_capacity(quiet=run_kwargs.get("quiet", False))
    run.cfg = cfg = resolve_config(cfg, fs, cpus=cpus, gpus=gpus)
    fsutil.write_bytes_atomic(fsutil.join(out, CONFIG), to_yaml(cfg).encode())
    fsutil.write_json_atomic(fsutil.join(out, RUN_INFO), {
        "store": store, "config": to_dict(cfg),
        "label_map_given": bool(run_kwargs.get("label_map_given"))})
    return run


def run_acl(store: str | None, out: str, cfg: RunConfig | None, resume: bool = False,
            quiet: bool = False, label_map_given: bool = False,
            max_failures: int = 0) -> dict[str, Any]:
    """Run (or resume) ACL on ``store`` into ``out``; returns ``metrics.json``'s content.
    With ``resume`` the saved config is used (``cfg`` must be None) and ``store`` may be
    None (the run's own)."""
    kwargs = {"quiet": quiet, "label_map_given": label_map_given, "max_failures": max_failures}
    if resume:
        if cfg is not None:
            raise ConfigError("--resume continues a run with its saved config; it takes no "
                              "new config")
        store, saved, info = load_run_config(out, store)
        # detections.json is named as the run was started (--label-map or not)
        kwargs["label_map_given"] = bool(info.get("label_map_given", label_map_given))
        return Run(store, out, saved, **kwargs).execute(resume=True)
    if store is None or cfg is None:
        raise ConfigError("a new run needs a store and a config")
    return new_run(store, out, cfg, **kwargs).execute()
