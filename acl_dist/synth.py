"""The embedded synthetic benchmark: two-stream snippet features on *real* timelines.

Every video keeps its real duration, segments and labels (THUMOS14 from ACM-Net's
``gt.json``, 200 validation + the 210 test videos of the BaSNet/UM/CoLA list; ActivityNet-1.2
from the ACL/CMCS JSON, training + validation). Only the features are synthetic, built so
that the problem is honest rather than easy:

* **background dominates** the timelines (real action coverage: ~30 % on THUMOS) and each
  video's background is one of a few **scenes shared across classes**. A class prefers a
  "home" scene (several classes share one), but a video takes a random scene with
  probability ``1 - home_prob``. Mean-pooled video features therefore cluster largely by
  scene, not by action: ACL round 0 starts from an imperfect clustering.
* **actions differ per class in both streams**: a class prototype per stream (related
  classes share a component), a component common to all actions (what class-agnostic
  attention can find), per-instance variation; flow carries less scene and more action.
* **nuisance per video** (a style offset and a gain), **temporal correlation** (AR(1) noise
  along time), soft action boundaries (snippets partially covered by a segment are mixed).

Two harder generator families, both **on by default** since the benchmark's second version (the first default,
"v1", was solved: NMI 0.97, weak mAP 85; ``phases=1, receptive_field=1`` make it again, bit
for bit):

* **actions in phases** (``phases`` >= 2): each action unfolds in consecutive phases (its
  first and last third, say a run-up and a landing, around its own middle); the first and
  last phases mix in (``phase_share``) one of a small pool of prototypes shared between
  classes, so a clip's edges look like other classes' edges.
* **an I3D-like temporal receptive field** (``receptive_field`` > 1 snippets): every
  snippet's features mix its neighbours' (a triangular kernel that wide), as I3D's 16-frame
  snippets see ~64 frames: boundaries blur and short actions leak into the background.

``difficulty`` scales scene, nuisance and noise against the action signal. The summary
(``synth_report.json`` in the store) gives the NMI of ACL's round-0 clustering (uniform
pooling) against clustering the same descriptors pooled over ground-truth action snippets:
the gap co-attention has to close.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any, Iterator

import numpy as np
from scipy.signal import lfilter

from . import fsutil
from .annotations import Segment, VideoAnnotation, load_video_list, primary_label, \
    to_activitynet_json
from .clustering import cluster_descriptors, video_descriptor
from .config import SYNTH_PRESETS
from .errors import ConfigError
from .evaluate import clustering_scores
from .progress import log, progress
from .store import StoreWriter, VideoRecord
from .timegrid import SnippetGrid

PRESETS = SYNTH_PRESETS
STREAMS = ("rgb", "flow")


@dataclass(frozen=True)
class StreamStyle:
    """Strengths of one stream's components (multiplied by difficulty where noted)."""

    scene: float        # scene prototype scale (x difficulty)
    nuisance: float     # per-video style offset scale (x difficulty)
    noise: float        # AR(1) snippet noise scale (x difficulty)
    action: float       # class prototype + common action component scale
    keep_scene: float   # fraction of the background kept under an action


# Calibrated so that on the default THUMOS-like set (seed 0) round-0 NMI is ~0.45 and
# action-pooled NMI ~0.9: a large gap, but action pooling is not trivially perfect.
RGB_STYLE = StreamStyle(scene=1.5, nuisance=0.675, noise=0.825, action=0.85, keep_scene=0.7)
FLOW_STYLE = StreamStyle(scene=0.825, nuisance=0.9, noise=0.975, action=1.0, keep_scene=0.45)


@dataclass(frozen=True)
class SynthConfig:
    """Options of ``acl-dist synth``.

    Attributes:
        preset: ``thumos14``, ``anet12`` or ``anet13`` timelines.
        classes: keep the N classes with the most training videos (default: all).
        videos: at most this many training videos (test videos scaled alike).
        dim: feature dim per stream (real I3D: 1024).
        difficulty: scales scene, nuisance and noise (1.0 = default benchmark).
        scene_scale: scales the shared scenes alone, on top of ``difficulty`` (1.0 =
            default): stronger scenes shared across classes, the setting in which docs/method.md "Where unsupervised loses to weak"
            found unsupervised localisation far below weak at near-perfect clustering.
        scenes: number of shared background scenes (default: classes // 5, at least 2).
        home_prob: probability that a video shows its class's home scene.
        temporal_rho: AR(1) coefficient of the snippet noise.
        phases: phases each action unfolds in (default 3; 1 = one prototype per class, v1);
            with >= 2 the first and last mix the class's prototype with one of
            ``max(2, classes // 5)`` phase prototypes shared between classes.
        phase_share: the shared prototype's share of the first and last phases' variance
            (1: those phases tell no class from another).
        receptive_field: snippets each snippet's features see, odd: centred on it (default
            5, I3D's at 16-frame snippets; 1 = only itself, v1).
        seed: random seed; the benchmark is a pure function of the config.
        dtype: storage dtype.
    """

    preset: str = "thumos14"
    classes: int | None = None
    videos: int | None = None
    dim: int = 128
    difficulty: float = 1.0
    scene_scale: float = 1.0
    scenes: int | None = None
    home_prob: float = 0.5
    temporal_rho: float = 0.9
    phases: int = 3
    phase_share: float = 0.5
    receptive_field: int = 5
    seed: int = 0
    dtype: str = "float16"

    def __post_init__(self) -> None:
        from .config import check_ranges

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {PRESETS}")
        check_ranges("", self, {"classes": (2,), "videos": (1,), "dim": (1,),
                                "difficulty": (0, None, True), "scene_scale": (0,),
                                "scenes": (1,),
                                "home_prob": (0, 1), "temporal_rho": (0, 1, False, True),
                                "phases": (1,), "phase_share": (0, 1),
                                "receptive_field": (1,), "seed": (0,)})
        if self.receptive_field % 2 == 0:
            raise ConfigError(f"receptive_field: must be odd (a window centred on its "
                              f"snippet), got {self.receptive_field}")


@dataclass
class Timeline:
    """Real annotations selected for the benchmark."""

    videos: list[VideoAnnotation]
    classes: list[str]
    train_subset: str
    test_subset: str
    source: str
    notes: list[str] = field(default_factory=list)


def _data(*parts: str) -> str:
    return str(resources.files("acl_dist").joinpath("data", *parts))


def load_timeline(cfg: SynthConfig) -> Timeline:
    """Select videos and classes of the preset according to ``cfg``. Long because: one
    branch per preset's annotation files, then the class and video selection."""
    if cfg.preset == "thumos14":
        path = _data("thumos14", "gt_acmnet.json.gz")
        gt = fsutil.read_json(path)["database"]
        test_ids = set(load_video_list(_data("thumos14", "split_test.txt")))
        train_subset, test_subset = "validation", "test"
        wanted = {vid for vid, e in gt.items()
                  if e["subset"] == train_subset or (e["subset"] == test_subset and vid in test_ids)}
    elif cfg.preset == "anet12":
        path = _data("activitynet12", "activity_net.v1-2.min-missing-removed.json.gz")
        gt = fsutil.read_json(path)["database"]
        train_subset, test_subset = "training", "validation"
        wanted = {vid for vid, e in gt.items() if e["subset"] in (train_subset, test_subset)}
    elif cfg.preset == "anet13":
        # BSN's form of v1.3 (10,024 training / 4,926 validation videos): ActivityNet-1.3
        # scale for the cluster benchmarks
        from .annotations import load_annotations

        path = _data("activitynet13", "anet_anno_action.json.gz")
        parsed = load_annotations(path, info_csv=_data("activitynet13", "video_info_new.csv.gz"))
        train_subset, test_subset = "training", "validation"
        gt = {v.video_id: {"subset": v.subset, "duration": v.duration,
                           "annotations": [{"label": s.label, "segment": [s.start, s.end]}
                                           for s in v.segments]}
              for v in parsed.videos.values() if v.duration is not None}
        wanted = {vid for vid, e in gt.items() if e["subset"] in (train_subset, test_subset)}
    else:
        raise ConfigError(f"unknown preset {cfg.preset!r}; choose one of {PRESETS}")
    notes = []
    videos: list[VideoAnnotation] = []
    for vid, e in gt.items():
        if vid not in wanted:
            continue
        segs = [Segment(a["label"], float(a["segment"][0]), float(a["segment"][1]))
                for a in e["annotations"]]
        segs = [s for s in segs if s.end > s.start]  # ActivityNet has a few zero-length ones
        if not segs:
            continue
        duration = max(float(e["duration"]), max(s.end for s in segs))
        videos.append(VideoAnnotation(vid, e["subset"], duration, segs))
    # Class selection: the classes with most training videos (by primary label).
    counts: dict[str, int] = {}
    for v in videos:
        if v.subset == train_subset:
            lab = primary_label(v.segments, v.labels)
            counts[lab] = counts.get(lab, 0) + 1
    ranked = sorted(counts, key=lambda c: (-counts[c], c))
    if cfg.classes is not None:
        if not 2 <= cfg.classes <= len(ranked):
            raise ConfigError(f"--classes must be in [2, {len(ranked)}] for {cfg.preset}")
        ranked = ranked[: cfg.classes]
    keep = set(ranked)
    selected = []
    for v in videos:
        if primary_label(v.segments, v.labels) not in keep:
            continue
        segs = [s for s in v.segments if s.label in keep]
        selected.append(VideoAnnotation(v.video_id, v.subset, v.duration, segs))
    if cfg.videos is not None:
        rng = np.random.default_rng(cfg.seed + 7)
        train = [v for v in selected if v.subset == train_subset]
        test = [v for v in selected if v.subset == test_subset]
        n_train = min(cfg.videos, len(train))
        n_test = min(len(test), max(1, round(cfg.videos * len(test) / max(1, len(train)))))
        pick_train = set(rng.choice(len(train), n_train, replace=False).tolist())
        pick_test = set(rng.choice(len(test), n_test, replace=False).tolist())
        selected = ([v for i, v in enumerate(train) if i in pick_train]
                    + [v for i, v in enumerate(test) if i in pick_test])
        notes.append(f"subsampled to {n_train} {train_subset} and {n_test} {test_subset} videos")
    return Timeline(selected, sorted(keep), train_subset, test_subset, path, notes)


class FeatureModel:
    """Random prototypes of the benchmark (classes, scenes, common action, styles)."""

    def __init__(self, classes: list[str], cfg: SynthConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.classes = classes
        n_cls, d = len(classes), cfg.dim
        self.n_scenes = cfg.scenes or max(2, n_cls // 5)
        self.home = {c: i % self.n_scenes for i, c in enumerate(rng.permutation(classes))}
        self.styles = {"rgb": RGB_STYLE, "flow": FLOW_STYLE}
        self.proto: dict[str, dict[str, np.ndarray]] = {}
        self.scene: dict[str, np.ndarray] = {}
        self.common: dict[str, np.ndarray] = {}
        groups = rng.integers(0, max(1, n_cls // 3), size=n_cls)  # related classes
        for s in STREAMS:
            unit = lambda *shape: rng.standard_normal(shape) / np.sqrt(d)  # noqa: E731
            group_vec = unit(max(1, n_cls // 3), d)
            own = unit(n_cls, d)
            self.proto[s] = {c: np.sqrt(0.75) * own[i] + np.sqrt(0.25) * group_vec[groups[i]]
                             for i, c in enumerate(classes)}
            self.scene[s] = unit(self.n_scenes, d)
            self.common[s] = unit(d)
        # Phases draw from their own generator: the default benchmark's draws stay as they
        # were. phase_proto[s][c] is (phases, d): shared edges, the class's own middle.
        self.phase_proto: dict[str, dict[str, np.ndarray]] = {}
        if cfg.phases > 1:
            prng = np.random.default_rng([cfg.seed, 1])
            n_shared = max(2, n_cls // 5)
            edges = {c: prng.integers(0, n_shared, size=2) for c in classes}
            w = cfg.phase_share
            for s in STREAMS:
                pool = prng.standard_normal((n_shared, d)) / np.sqrt(d)
                self.phase_proto[s] = {}
                for c in classes:
                    own = self.proto[s][c]
                    first, last = (np.sqrt(1 - w) * own + np.sqrt(w) * pool[e]
                                   for e in edges[c])
                    self.phase_proto[s][c] = np.stack([first] + [own] * (cfg.phases - 2)
                                                      + [last])

    def video(self, ann: VideoAnnotation, grid: SnippetGrid, rng: np.random.Generator
              ) -> dict[str, np.ndarray]:
        """``{"rgb": (T, D), "flow": (T, D)}`` float32 features of one annotated video."""
        cfg, d = self.cfg, self.cfg.dim
        t_len = grid.num_snippets(ann.duration)
        main = primary_label(ann.segments, ann.labels)
        scene = (self.home[main] if rng.random() < cfg.home_prob
                 else int(rng.integers(self.n_scenes)))
        # Coverage of each snippet by each segment (soft boundaries), and per-snippet mix of
        # the classes present (CliffDiving is always also annotated Diving in THUMOS).
        starts = np.arange(t_len) * grid.seconds_per_snippet
        ends = starts + grid.seconds_per_snippet
        weight = np.zeros(t_len)
        action = {s: np.zeros((t_len, d)) for s in STREAMS}
        for seg in ann.segments:
            cover = np.clip(np.minimum(ends, seg.end) - np.maximum(starts, seg.start), 0, None)
            cover /= grid.seconds_per_snippet
            if not cover.any():
                continue
            weight += cover
            phase = self._phase_of_snippets(seg, starts, ends) if self.phase_proto else None
            for s in STREAMS:
                inst = rng.standard_normal(d) * (0.35 / np.sqrt(d))
                if phase is None:
                    vec = (self.proto[s][seg.label] + 0.6 * self.common[s] + inst)[None, :]
                else:   # (T, d): each snippet its phase's prototype
                    vec = self.phase_proto[s][seg.label][phase] + 0.6 * self.common[s] + inst
                action[s] += cover[:, None] * vec
        mix = np.clip(weight, 0.0, 1.0)
        norm = np.maximum(weight, 1.0)[:, None]
        gain = float(np.exp(rng.normal(0.0, 0.1)))
        out = {}
        for s in STREAMS:
            st = self.styles[s]
            k = cfg.difficulty
            background = k * st.scene * cfg.scene_scale * self.scene[s][scene] + \
                k * st.nuisance * rng.standard_normal(d) / np.sqrt(d)
            white = rng.standard_normal((t_len, d)) / np.sqrt(d)
            noise = lfilter([np.sqrt(1 - cfg.temporal_rho ** 2)], [1.0, -cfg.temporal_rho],
                            white, axis=0)
            x = (background[None, :] * (1.0 - (1.0 - st.keep_scene) * mix[:, None])
                 + st.action * action[s] / norm + k * st.noise * noise)
            if cfg.receptive_field > 1:
                x = receptive_field(x, cfg.receptive_field)
            # Vectors above have norm ~1; scale so each dim has std ~1 whatever the dim
            # (the order of I3D's per-dim spread), which also keeps float16 exact enough.
            out[s] = (gain * 0.5 * np.sqrt(d) * x).astype(np.float32)
        return out

    def _phase_of_snippets(self, seg: Segment, starts: np.ndarray, ends: np.ndarray
                           ) -> np.ndarray:
        """``(T,)`` phase index of each snippet in ``seg``: where its centre falls in the
        segment, in ``phases`` equal parts (snippets outside get the nearest phase; their
        coverage is zero anyway)."""
        where = ((starts + ends) / 2 - seg.start) / max(seg.end - seg.start, 1e-9)
        return np.clip((where * self.cfg.phases).astype(int), 0, self.cfg.phases - 1)


def receptive_field(x: np.ndarray, width: int) -> np.ndarray:
    """``(T, D)`` features each mixed with their neighbours by a triangular kernel
    ``width`` snippets wide (weights sum to 1; the video's ends repeat its edge snippets)."""
    from scipy.ndimage import convolve1d

    half = (width + 1) / 2
    kernel = half - np.abs(np.arange(width) - (width - 1) / 2)
    return convolve1d(x, kernel / kernel.sum(), axis=0, mode="nearest")


def iter_benchmark(cfg: SynthConfig, timeline: Timeline | None = None
                   ) -> Iterator[VideoRecord]:
    """Yield the benchmark's videos (deterministic for ``cfg``)."""
    timeline = timeline or load_timeline(cfg)
    model = FeatureModel(timeline.classes, cfg)
    grid = SnippetGrid(25.0, 16)
    for i, ann in enumerate(timeline.videos):
        rng = np.random.default_rng([cfg.seed, i])
        feats = model.video(ann, grid, rng)
        t_len = feats["rgb"].shape[0]
        yield VideoRecord(ann.video_id, ann.subset, ann.duration, grid.fps, grid.snippet_frames,
                          t_len, list(ann.labels), list(ann.segments), feats)


def round0_gap(records: list[tuple[str, np.ndarray, np.ndarray]], n_clusters: int,
               seed: int = 0) -> dict[str, Any]:
    """NMI of clustering uniform-pooled vs action-pooled descriptors.

    Args:
        records: (primary label, uniform descriptor, action descriptor) per training video.
    """
    labels = [r[0] for r in records]
    uniform = np.stack([r[1] for r in records])
    action = np.stack([r[2] for r in records])
    mean_pool = clustering_scores(cluster_descriptors(uniform, n_clusters, seed), labels)
    gt_pool = clustering_scores(cluster_descriptors(action, n_clusters, seed), labels)
    return {"clusters": n_clusters, "videos": len(records),
            "mean_pool": mean_pool, "action_pool": gt_pool,
            "nmi_gap": gt_pool["nmi"] - mean_pool["nmi"]}


def synthesize(cfg: SynthConfig, out: str, npy_layout: str | None = None,
               overwrite: bool = False, quiet: bool = False, report: bool = True
               ) -> dict[str, Any]:
    """Write the benchmark as a feature store at ``out`` (and optionally the npy-split layout).

    Returns:
        the summary written to ``out/synth_report.json``.
    """
    started = time.perf_counter()
    timeline = load_timeline(cfg)
    source = {"layout": "synthetic", "preset": cfg.preset, "timeline": timeline.source,
              "config": asdict(cfg), "train_subset": timeline.train_subset,
              "test_subset": timeline.test_subset}
    descriptors = []
    grid = SnippetGrid(25.0, 16)
    npy_writer = _NpyLayoutWriter(npy_layout, overwrite) if npy_layout else None
    try:
        with StoreWriter(out, streams={s: cfg.dim for s in STREAMS}, classes=timeline.classes,
                         dtype=cfg.dtype, source=source, overwrite=overwrite) as writer:
            for note in timeline.notes:
                writer.note(note)
            for rec in progress(iter_benchmark(cfg, timeline), desc=f"synth {cfg.preset}",
                                total=len(timeline.videos), unit="video", quiet=quiet):
                writer.add(rec)
                if npy_writer:
                    npy_writer.add(rec)
                if report and rec.subset == timeline.train_subset:
                    mask = grid.segment_mask(np.array([[s.start, s.end] for s in rec.segments]),
                                             rec.num_snippets)
                    descriptors.append((rec.primary_label, video_descriptor(rec.features),
                                        video_descriptor(rec.features, mask.astype(float))))
            summary: dict[str, Any] = {"config": asdict(cfg), "classes": len(timeline.classes),
                                       "subsets": writer.stats}
            if report:
                log("synth: clustering round-0 (mean-pooled) and action-pooled descriptors",
                    quiet)
                summary["round0"] = round0_gap(descriptors, len(timeline.classes), cfg.seed)
            coverage = _coverage(timeline, grid)
            summary["action_coverage"] = coverage
            summary["seconds"] = round(time.perf_counter() - started, 2)
            writer.add_file("synth_report.json", (json.dumps(summary, indent=1) + "\n").encode())
        if npy_writer:
            npy_writer.finish(timeline)
    except BaseException:
        if npy_writer:
            npy_writer.abort()
        raise
    return summary


def _coverage(timeline: Timeline, grid: SnippetGrid) -> float:
    covered = total = 0
    for v in timeline.videos:
        t_len = grid.num_snippets(v.duration)
        covered += grid.segment_mask(np.array([[s.start, s.end] for s in v.segments]),
                                     t_len).sum()
        total += t_len
    return float(covered / max(total, 1))


def _not_npy_layout(path: str) -> str | None:
    """None when ``path`` looks like an npy-split layout this command wrote (``features/``,
    ``gt.json``, ``split_*.txt`` only), else what it is (``--overwrite`` refuses it)."""
    import os

    names = set(os.listdir(path)) if os.path.isdir(path) else {"?"}
    extra = {n for n in names if n not in ("features", "gt.json")
             and not (n.startswith("split_") and n.endswith(".txt"))}
    return "not an npy-split layout written by acl-dist" if extra else None


class _NpyLayoutWriter:
    """Writes the BaSNet/UM/CoLA ``npy-split`` layout (float32), atomically (local only)."""

    def __init__(self, root: str, overwrite: bool):
        if fsutil.is_remote(root):
            raise ConfigError("--npy-layout must be a local directory")
        self._ctx = fsutil.atomic_output_dir(root, overwrite=overwrite,
                                             replaceable=_not_npy_layout)
        self.dir = self._ctx.__enter__().workdir
        self.anns: list[VideoAnnotation] = []

    def add(self, rec: VideoRecord) -> None:
        import os

        for s, arr in rec.features.items():
            folder = os.path.join(self.dir, "features", rec.subset, s)
            os.makedirs(folder, exist_ok=True)
            np.save(os.path.join(folder, f"{rec.video_id}.npy"), arr.astype(np.float32))
        self.anns.append(rec.annotation())

    def finish(self, timeline: Timeline) -> None:
        import os

        fsutil.write_json_atomic(os.path.join(self.dir, "gt.json"),
                                 to_activitynet_json(self.anns))
        for subset in {a.subset for a in self.anns}:
            with open(os.path.join(self.dir, f"split_{subset}.txt"), "w") as fh:
                fh.write("".join(f"{a.video_id}\n" for a in self.anns if a.subset == subset))
        self._ctx.__exit__(None, None, None)

    def abort(self) -> None:
        import sys

        self._ctx.__exit__(*sys.exc_info())
