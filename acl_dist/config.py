"""Run configuration: frozen dataclasses, YAML files and dotted overrides.

A config is built in three layers: the dataclass defaults, then a YAML file (a preset name
such as ``thumos14`` from ``acl_dist/configs/`` or a path), then ``--set key=value``
overrides with dotted keys (``train.lr=3e-4``, ``loss.lambda_trip=0``). Unknown keys and
values of the wrong type are errors that name the key. The resolved config is saved in
every run directory and in every checkpoint, so a result always says how it was made.

Values left ``None`` (``train.steps``, ``train.batch_size``, ``train.workers``, ...) are
sized to the store by :func:`acl_dist.plan.resolve_config` before a run starts.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field, fields, is_dataclass, replace
from importlib import resources
from typing import Any, Literal

import yaml

from .errors import ConfigError

#: Storage dtypes of a feature store's streams (acl_dist.store maps them to numpy).
FEATURE_DTYPES = ("float16", "float32")
#: Annotation timelines of the synthetic benchmark (acl_dist.synth).
SYNTH_PRESETS = ("thumos14", "anet12", "anet13")


# --------------------------------------------------------------------------- range checks
# Zero is never "unset" (None is): a count of 0 or a negative weight is refused when the
# config is built, naming the key, before any work starts.


def _check_range(section: str, obj: Any, key: str, low: float | None = None,
                 high: float | None = None, low_open: bool = False,
                 high_open: bool = False) -> None:
    """Raise :class:`ConfigError` naming ``section.key`` unless ``low <= value <= high``
    (``<``/``>`` for open bounds); None passes (it means "sized" or "off")."""
    value = getattr(obj, key)
    if value is None:
        return
    ok = (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = "" if low is None else f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f"{'<' if high_open else '<='} {high:g}"
        want = " and ".join(x for x in (lo, hi) if x)
        raise ConfigError(f"{section}{key}: must be {want}, got {value!r}")


def check_ranges(section: str, obj: Any, rules: dict[str, tuple]) -> None:
    for key, rule in rules.items():
        _check_range(section, obj, key, *rule)


@dataclass(frozen=True)
class ModelConfig:
    """The co-attention network (METHOD.md §4). Widths follow the authors' code; five
    defaults differ from the paper (``base_kernel``, ``local_kernel``, ``global_context``,
    ``fusion``, ``dilations``; ``--config paper`` restores them): see docs/method.md for the
    measurements behind them.

    Attributes:
        base_dim: width of the base temporal conv after input dropout.
        base_kernel: temporal kernel of the base conv (the authors' code: 3; default 1,
            see ``local_kernel``).
        branch_dim: width of each of the four local branches (k3 d1, the two pyramid k3s, k1).
        local_kernel: kernel of the local block's three k3 branches (the paper: 3). The
            default 1 makes every branch see one snippet: with ``base_kernel=1`` each
            snippet's class logits and attention are its own (reach 0), which won 5-fold
            cross-validation on the training videos (avg mAP 85.2, vs 82.1 at reach 1 and
            73.3 with both kernels 3); short actions' boundaries blurred at every wider reach.
        dilations: the dilated pyramid's two rates (the paper: 2 and 3); they act only with
            ``local_kernel > 1``. (1, 1) makes the pyramid two more plain convs: with
            kernels 3, a shorter reach localised better (+2.4 avg mAP in weak mode over
            three validation splits).
        global_dim: width of the global (non-local) branch after its kernel-1 conv.
        nonlocal_dim: inner width of the embedded-Gaussian non-local block.
        dropout: channel-wise input dropout (the same channels at every time step).
        agnostic_global: give the class-agnostic branch a non-local branch too (the
            authors' code has none there; METHOD.md §16 leaves the paper's form open).
        agnostic_attention: the class-agnostic branch and its attention S (the paper's).
            False is an ablation: no such branch, S uniform over the video's snippets, so
            p is the mean of O and L_trip pools E uniformly; L_sep must use the class
            attention (``loss.sep_attention=class``) and localisation the CAS alone
            (``localize.signal=cas``). Weak mode only: an unsupervised round's descriptors
            pool with S.
        global_context: the class branch's global branch runs the non-local block (the
            paper: True). False (default) keeps only its kernel-1 conv, so each snippet's
            class logits see a local window: whole-video context let background snippets
            borrow the action's evidence (-3 to -5 avg mAP on a validation split).
        fusion: ``late`` (the paper): one network per stream, trained side by side, their
            outputs averaged with ``localize.rgb_weight``. ``early`` (default): one network
            on the streams' concatenated features (as W-TALC, BaS-Net and the top-k MIL
            baseline), whose outputs stand for every stream (descriptors pool each stream
            with its attention); late fusion cost the MIL baseline ~5 points too.
    """

    base_dim: int = 256
    branch_dim: int = 32
    dilations: tuple[int, int] = (1, 1)
    global_dim: int = 128
    nonlocal_dim: int = 64
    dropout: float = 0.5
    base_kernel: int = 1
    local_kernel: int = 1
    agnostic_global: bool = False
    agnostic_attention: bool = True
    global_context: bool = False
    fusion: Literal["late", "early"] = "early"

    def __post_init__(self) -> None:
        check_ranges("model.", self, {"base_dim": (1,), "branch_dim": (1,), "global_dim": (1,),
                                    "nonlocal_dim": (1,), "dropout": (0, 1, False, True)})
        if any(d < 1 for d in self.dilations):
            raise ConfigError(f"model.dilations: must be >= 1, got {list(self.dilations)}")
        if self.agnostic_global and not self.agnostic_attention:
            raise ConfigError("model.agnostic_global: needs the class-agnostic branch "
                              "(model.agnostic_attention=true)")
        for key in ("base_kernel", "local_kernel"):
            kernel = getattr(self, key)
            if kernel < 1 or kernel % 2 == 0:
                # an even kernel would shift the outputs half a snippet off the grid
                raise ConfigError(f"model.{key}: expected an odd kernel >= 1, got {kernel}")


@dataclass(frozen=True)
class LossConfig:
    """L = L_cls + lambda_sep L_sep + lambda_trip L_trip (METHOD.md §5, §7, §8, §9).

    Attributes:
        lambda_sep, lambda_trip: loss weights (the authors' release had lambda_trip = 0).
        tau1: cosine-distance bound pulling same-cluster actions together (code: 0.001).
        tau2: action-vs-own-background margin (code: 0.5).
        margin: triplet margin alpha (code: 0.5).
        neg_cap: cap on the hardest negative's distance (the code's search starts at 1);
            None for no cap.
        cls_reduction: ``mean`` over videos, or ``sum`` as in the authors' code (which makes
            L_sep ~32x weaker relative to L_cls).
        trip_reduction: ``mean`` over anchors, or ``sum`` as in the authors' code.
        sep_attention: which attention pools the action feature in L_sep: ``class`` (the
            paper: the class-specific A of the group's cluster, on X_e), ``agnostic`` (the
            class-agnostic S, on X_e), or ``both`` (the sum of the two terms).
        lambda_topk: weight of an extra L_cls on the top-k (T/8) mean of the CAS (an
            acl-dist variant; 0 = the paper). L_cls through p = S^T O trains O only where S
            looks; this term trains the CAS on every instance (+2 mAP avg on a validation
            split of the THUMOS-like training videos).
    """

    lambda_sep: float = 1.0
    lambda_trip: float = 1.0
    tau1: float = 0.001
    tau2: float = 0.5
    margin: float = 0.5
    neg_cap: float | None = 1.0
    cls_reduction: Literal["mean", "sum"] = "mean"
    trip_reduction: Literal["mean", "sum"] = "mean"
    sep_attention: Literal["class", "agnostic", "both"] = "class"
    lambda_topk: float = 1.0

    def __post_init__(self) -> None:
        check_ranges("loss.", self, {"lambda_sep": (0,), "lambda_trip": (0,), "lambda_topk": (0,),
                                   "tau1": (0,), "tau2": (0,), "margin": (0,),
                                   "neg_cap": (0, None, True)})


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and batches. ``None`` values are sized to the store.

    Attributes:
        steps: optimiser updates per round (paper: 30,005).
        batch_size: videos per update, over all workers (paper: 32): every worker draws
            the same global batch and computes the videos of it that it holds.
        clusters_per_batch: Z, clusters drawn per batch (unknown in the paper; W-TALC: 3);
            at least 2 while ``loss.lambda_trip`` > 0 (L_trip's negatives come from
            another cluster of the batch).
        videos_per_cluster: K videos from each drawn cluster (paper: 2); at least 2 while
            L_sep or L_trip is on.
        lr, weight_decay: Adam (paper: 1e-3, 1e-4).
        lr_decay_at, lr_decay: after this fraction of the steps lr is multiplied by
            ``lr_decay`` (paper: x0.1 after 15,002 of 30,005).
        max_len: training crops videos longer than this many snippets to a random window;
            0 = whole videos (the paper); None = sized (whole videos on GPUs, 256 on CPUs).
            Test time always uses whole videos.
        workers: Ray Train workers (DDP). Not a hyperparameter: on any count a step's
            loss and gradient are those of the global batch as one worker computes them.
        use_gpu: train on GPUs (None: when the cluster has them).
        cuda_graphs: on a GPU, hold the worker's videos on the device and replay each batch
            shape's forward, losses and backward as one CUDA graph (the default network's
            eager step is launch-bound; see acl_dist/graphed_step.py). False: eager steps.
            An H200 measured 3.6 ms per THUMOS14-sized step against 45 ms eager.
        compile: on a GPU, also ``torch.compile`` the graphed step (fuses its elementwise
            chains). On an H200: 2.7 ms per THUMOS14-sized step (a plain MLP of equal
            FLOPs: 1.9, graphed alone 3.6); the fit loop 1.4 ms/step against 3.0 (measured
            before the matmul layout), after a one-off 35-66 s of compiling (two compiles:
            the second, with symbolic lengths, serves every later shape). None: on for GPU
            rounds of >= 30,000 steps (the paper's 30,005), where ~1-1.6 ms saved per step
            (30-48 s a round) about repays it; later rounds on the same node can reuse
            inductor's on-disk cache (not measured here).
        cpus_per_worker: Ray CPUs per worker (fractional is fine; leave room for Ray Data).
        placement_strategy: how the workers' bundles are placed: ``PACK`` (few nodes, the
            default), ``SPREAD``, ``STRICT_PACK`` (one node) or ``STRICT_SPREAD`` (one worker
            per node).
        sampling: ``epoch``: every video once per epoch (acl-dist's); ``replacement``:
            clusters, pair members and fill drawn with replacement (the paper's).
        log_every: steps between metric reports.
        checkpoint_every: steps between mid-round checkpoints (0: only the final one).
        seed: offset of this part's seed: training of round r is seeded with
            ``seed (run) + train.seed + 1000 r`` (initialisation, sampling, cropping).
    """

    steps: int | None = None
    batch_size: int | None = None
    clusters_per_batch: int = 4
    videos_per_cluster: int = 2
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_decay_at: float = 0.5
    lr_decay: float = 0.1
    max_len: int | None = None
    workers: int | None = None
    use_gpu: bool | None = None
    cuda_graphs: bool = True
    compile: bool | None = None
    cpus_per_worker: float | None = None
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    sampling: Literal["epoch", "replacement"] = "epoch"
    log_every: int = 25
    checkpoint_every: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        check_ranges("train.", self, {
            "steps": (1,), "batch_size": (1,), "clusters_per_batch": (0,),
            "videos_per_cluster": (1,), "lr": (0, None, True), "weight_decay": (0,),
            "lr_decay_at": (0, 1), "lr_decay": (0, None, True), "max_len": (0,),
            "workers": (1,), "cpus_per_worker": (0, None, True), "log_every": (1,),
            "checkpoint_every": (0,), "seed": (0,)})


@dataclass(frozen=True)
class ClusterConfig:
    """Clustering step (METHOD.md §3).

    Attributes:
        backend: ``auto`` (cuML if it imports and a GPU is there, torch on a GPU, else
            scikit-learn), ``sklearn``, ``torch`` or ``cuml``.
        descriptor: rounds > 0 pool each stream with its model's class-agnostic attention
            S: ``attention`` is the paper's ``X^T S``; ``contrast`` (default, an acl-dist
            variant) is ``X^T S - X^T (1 - S) / (T - 1)``, which cancels what a video shows
            throughout (its scene). Round 0 is uniform pooling either way.
        sigma: Gaussian bandwidth; None = mean pairwise distance (the authors' code).
        n_init: k-means restarts.
        seed: offset of this part's seed: the eigensolver and k-means get
            ``seed (run) + cluster.seed``.
        graph: affinity graph: ``dense`` (the full N x N Gaussian affinity, the authors'),
            ``knn`` (each video's ``n_neighbors`` nearest, sparse: no N x N matrix),
            ``nystrom`` (the dense graph's spectral embedding from ``n_landmarks`` videos'
            columns: an N x m block), or ``auto`` (dense up to ``dense_max_videos`` on a
            GPU, kNN above; dense up to ``dense_max_videos_cpu`` on CPUs, Nyström above).
        n_neighbors: neighbours per video of the kNN graph (100 matched or beat the dense
            graph's NMI on planted clusters from 3k to 20k videos).
        n_landmarks: landmark videos of the Nyström path (at least 2 x C are used). 2,000
            matched the dense graph's NMI on an ActivityNet-sized store (1,000: -0.006).
        dense_max_videos: the ``auto`` threshold when clustering runs on a GPU (20k videos
            = 3.2 GB of float64 affinity).
        dense_max_videos_cpu: the ``auto`` threshold on CPUs, Nyström above. On 2 cores an
            ActivityNet-sized store's 9,641 videos (200 clusters) took 56-61 s on the dense
            graph and 9-10 s by Nyström at the same NMI (0.707 vs 0.708 on round 0's
            mean-pooled descriptors, 0.573 vs 0.574 on a round's), where the kNN graph
            (12-22 s) lost NMI on noisy descriptors (0.610 vs 0.708; 0.888 vs 0.865 on
            trained ones); the kNN graph's eigenvectors come from torch's LOBPCG under
            ``backend=auto`` on CPUs (scikit-learn's ARPACK ran past 2 minutes at 10k).
    """

    backend: Literal["auto", "sklearn", "torch", "cuml"] = "auto"
    descriptor: Literal["contrast", "attention"] = "contrast"
    sigma: float | None = None
    n_init: int = 10
    seed: int = 0
    graph: Literal["auto", "dense", "knn", "nystrom"] = "auto"
    n_neighbors: int = 100
    n_landmarks: int = 2_000
    dense_max_videos: int = 20_000
    dense_max_videos_cpu: int = 5_000

    def __post_init__(self) -> None:
        check_ranges("cluster.", self, {"sigma": (0, None, True), "n_init": (1,), "seed": (0,),
                                      "n_neighbors": (1,), "n_landmarks": (2,),
                                      "dense_max_videos": (1,), "dense_max_videos_cpu": (1,)})


@dataclass(frozen=True)
class LocalizeConfig:
    """Attention/CAS -> segments (METHOD.md §10, FORMATS.md §4).

    Attributes:
        rgb_weight: late-fusion weight of the RGB model (paper: RGB:flow = 2:1).
        class_threshold: keep classes whose softmax video score exceeds this (the paper:
            0.1; the top class is always kept). acl-dist's 0.001 with ``multiplied`` video
            scores lets a class a video barely shows add its segments at the bottom of the
            ranking: an unsupervised model gives a CliffDiving video's Diving cluster a video
            score of ~0.001-0.1, and the 0.1 gate dropped every Diving segment there
            (docs/method.md). Each kept class is localised, so the cost grows with
            the classes that pass: the ActivityNet presets keep the paper's gate.
        signal: ``cas`` (min-max normalised class logits, the paper's ``score``) or
            ``cas_attention`` (that times the min-max normalised class-agnostic attention).
        thresholds: relative thresholds; a snippet is inside when signal > t * mean(signal).
            The paper's 0.1..1.0 (tuned for ActivityNet's long actions) merges THUMOS's short
            ones; 0.5..2.5 won on a validation split of the THUMOS-like training videos
            (+12 mAP avg) and serves long actions through the lower thresholds.
        upsample: linear upsampling factor of the signal before thresholding.
        frame_rate: upsample to the video's frame rate instead (``snippet_frames`` points
            per snippet: the paper's form; ``upsample`` is then unused).
        smoothing: ``savgol``: the paper's Savitzky-Golay filter on the upsampled signal
            (order 1, window max(min(255, len // 16), 3), odd); ``none``: acl-dist's.
        dilation_frames: binary dilation of each thresholded mask by this many frames
            (paper: 20, 1.25 snippets; 0: none, acl-dist's).
        keep_top_class: always keep the top class even below ``class_threshold``
            (acl-dist's: every video gets detections; the paper keeps none then).
        max_classes: localise at most this many classes per video, those of the highest
            video scores (0: every class that passes the gate, the paper's). The 0.001 gate
            passes a median of 2 classes of 10-20 (90th percentile 4-7; 5 changed no mAP by
            more than 0.1), but every one of 200 for a barely trained model, which made an
            ActivityNet-sized attention pass 7x slower: the cap bounds the cost.
        outer_ratio: outer-inner contrast context, as a fraction of the segment length.
        gamma: weight of the video-level class score added to each segment's score.
        video_score: how a class's softmax video score p_c enters its segments' scores:
            ``added`` (the paper's: outer-inner contrast + gamma * p_c) or ``multiplied``
            (max(contrast + gamma * p_c, 0) * p_c, acl-dist's): a class a video barely
            shows then ranks its segments there below those of the videos that show it
            clearly, so the low ``class_threshold`` adds recall without pushing false
            positives up the ranking (added, the 0.001 gate cost weak mode 1.8-2.2 points).
        nms_iou: class-wise NMS threshold (seconds, no "+1").
        max_per_video: keep at most this many detections per video (after NMS; 0: all,
            the paper's).
    """

    rgb_weight: float = 2 / 3
    class_threshold: float = 0.001
    signal: Literal["cas", "cas_attention"] = "cas"
    thresholds: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5)
    upsample: int = 8
    frame_rate: bool = False
    smoothing: Literal["none", "savgol"] = "none"
    dilation_frames: int = 0
    keep_top_class: bool = True
    max_classes: int = 5
    outer_ratio: float = 0.25
    gamma: float = 0.25
    video_score: Literal["added", "multiplied"] = "multiplied"
    nms_iou: float = 0.65
    max_per_video: int = 200

    def __post_init__(self) -> None:
        check_ranges("localize.", self, {
            "rgb_weight": (0, 1), "class_threshold": (0, 1), "upsample": (1,),
            "max_classes": (0,),
            "dilation_frames": (0,), "outer_ratio": (0,), "gamma": (0,),
            "nms_iou": (0, 1, True), "max_per_video": (0,)})
        if not self.thresholds or any(t <= 0 for t in self.thresholds):
            raise ConfigError(f"localize.thresholds: need at least one threshold, each > 0, "
                              f"got {list(self.thresholds)}")


def check_batch_terms(cfg: "RunConfig") -> None:
    """Refuse a batch shape that zeroes a weighted loss term at every step, naming the
    key: L_sep needs a group of K >= 2 videos of one cluster, L_trip two such groups (its
    negatives are grouped videos of another cluster). A batch is global (all workers
    together), so the worker count never changes this."""
    tc, lc = cfg.train, cfg.loss
    z, k = tc.clusters_per_batch, tc.videos_per_cluster
    if (lc.lambda_sep > 0 or lc.lambda_trip > 0) and k < 2:
        raise ConfigError(f"train.videos_per_cluster={k}: L_sep and L_trip compare videos of "
                          "one cluster and would be 0 at every step; set it to at least 2 (or "
                          "loss.lambda_sep=0 and loss.lambda_trip=0)")
    if lc.lambda_sep > 0 and z < 1:
        raise ConfigError("train.clusters_per_batch=0: L_sep would be 0 at every step; set it "
                          "to at least 1 (or loss.lambda_sep=0)")
    if lc.lambda_trip > 0 and z < 2:
        raise ConfigError(f"train.clusters_per_batch={z}: L_trip takes its negatives from "
                          "another cluster of the batch and would be 0 at every step; set it "
                          "to at least 2 (or loss.lambda_trip=0)")
    if lc.lambda_trip > 0 and tc.batch_size is not None and tc.batch_size < 2 * k:
        raise ConfigError(f"train.batch_size={tc.batch_size} holds fewer than two clusters of "
                          f"train.videos_per_cluster={k}: L_trip would be 0 at every step; set "
                          f"train.batch_size to at least {2 * k} (or loss.lambda_trip=0)")


@dataclass(frozen=True)
class RunConfig:
    """One ACL run: mode, rounds and every step's settings.

    Attributes:
        mode: ``unsupervised`` (clusters as pseudo-labels) or ``weak`` (video labels, no
            clustering, one round).
        weak_labels: weak mode's training labels: ``all`` of a video's labels (multi-hot),
            or only its ``main`` class (the label with the longest annotated time): one
            label per video, as an unsupervised round's cluster gives it; the ablation of
            docs/method.md (where unsupervised loses to weak).
        num_classes: C, the number of clusters (unsupervised) or classes (weak).
        rounds: clustering + localisation rounds (paper: 4 on ActivityNet-1.2).
        train_subset, test_subset: store subsets; None = picked from the store.
        label_map: cluster -> class mapping for reporting unsupervised detections
            (``hungarian``, ``majority``, ``soft``); from training labels only.
        tiou: evaluation thresholds (``thumos``, ``anet`` or a list); None = by dataset.
        test_videos: which test videos are scored: ``auto`` (a real THUMOS14 store's test
            subset: the community's 210-video list; otherwise every video of the subset),
            ``all``, ``thumos210`` (BaSNet/UM/CoLA) or ``thumos212`` (W-TALC/ACM-Net);
            FORMATS.md §2.5. Detections are written for every test video either way.
        val_subset: a labelled store subset to validate on each round (never the test
            subset); its videos are localised and scored, never trained or clustered on.
        val_fraction: without ``val_subset``, hold out this fraction of the training videos
            as the validation split, by a seeded hash of each video id (``crc32("seed:id")``,
            stable across machines and store layouts); 0 = no validation split.
        seed: the run's base seed: every random choice derives from it (the held-out split
            directly; training and clustering add their own ``seed`` offsets).
    """

    mode: Literal["unsupervised", "weak"] = "unsupervised"
    weak_labels: Literal["all", "main"] = "all"
    num_classes: int | None = None
    rounds: int = 3
    train_subset: str | None = None
    test_subset: str | None = None
    label_map: Literal["hungarian", "majority", "soft"] = "hungarian"
    tiou: str | None = None
    test_videos: Literal["auto", "all", "thumos210", "thumos212"] = "auto"
    val_subset: str | None = None
    val_fraction: float = 0.0
    seed: int = 0
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    localize: LocalizeConfig = field(default_factory=LocalizeConfig)

    def __post_init__(self) -> None:
        check_ranges("", self, {"num_classes": (2 if self.mode == "unsupervised" else 1,),
                              "rounds": (1,), "val_fraction": (0, 0.5), "seed": (0,)})
        if not self.model.agnostic_attention:
            if self.mode != "weak":
                raise ConfigError("model.agnostic_attention=false: weak mode only (an "
                                  "unsupervised round pools its clustering descriptors with "
                                  "the class-agnostic attention)")
            # a uniform S would pool action and background alike (L_sep), and min-max
            # normalised it is all zeros: cas_attention would give no detection at all
            if self.loss.sep_attention != "class":
                raise ConfigError(f"model.agnostic_attention=false: loss.sep_attention="
                                  f"{self.loss.sep_attention} needs the class-agnostic "
                                  "attention; use class")
            if self.localize.signal == "cas_attention":
                raise ConfigError("model.agnostic_attention=false: localize.signal="
                                  "cas_attention needs the class-agnostic attention; use cas")
        check_batch_terms(self)
        if self.weak_labels != "all" and self.mode != "weak":
            raise ConfigError("weak_labels: applies to weak mode only (an unsupervised run "
                              "reads no labels)")
        if self.tiou is not None:
            from .errors import DataError
            from .tiou import parse_tiou

            try:
                parse_tiou(self.tiou)
            except DataError as err:
                raise ConfigError(f"tiou: {err}") from None


@dataclass(frozen=True)
class TuneSettings:
    """How the search runs (stored in ``EXP/tune.json``).

    Attributes:
        search: ``random`` (Tune's variant generator), ``grid`` (every combination),
            ``optuna`` (TPE) or ``hyperopt`` (TPE; needs ``pip install hyperopt``).
        num_samples: trials to draw (grid: repeats of the full grid).
        objective: what trials are ranked and stopped by (module doc); higher is better.
        max_concurrent: trials at a time; None = as many as the cluster holds (never more).
        grace_period: rounds every trial runs before ASHA may stop it.
        reduction_factor: ASHA keeps the top 1/reduction_factor at each rung.
        val_fraction: training videos held out for validation when the store has no
            ``val_subset`` and the config sets no ``val_fraction``.
        seed: seed of the searcher (trials share the run config's seed, so they differ
            only by the searched keys).
    """

    search: Literal["random", "grid", "optuna", "hyperopt"] = "random"
    num_samples: int = 8
    objective: Literal["val_map", "silhouette", "stability"] = "val_map"
    max_concurrent: int | None = None
    grace_period: int = 1
    reduction_factor: int = 2
    val_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        # the same rule as the run config: 0 is a value, not "unset"; refused up front
        check_ranges("", self, {"num_samples": (1,), "max_concurrent": (1,), "grace_period": (1,),
                              "reduction_factor": (2,), "val_fraction": (0, 0.5, True),
                              "seed": (0,)})


# --------------------------------------------------------------------------- conversion


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) of a config dataclass."""
    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def to_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Check/convert one value against a field's type annotation."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported field type {annotation!r}")


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build config ``cls`` from a (partial) nested dict; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {prefix + unknown[0]!r}; valid keys under "
                          f"{prefix.rstrip('.') or 'the top level'}: {sorted(known)}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


#: Deepest nesting a config file may have: configs are two levels deep (``train.lr``); the
#: bound turns a hostile file into one line before PyYAML's recursion overflows.
YAML_DEPTH = 32


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader without aliases and with bounded depth: an alias is how a
    small file becomes a self-referential or exponentially large value (``&a [*a]``, the
    "billion laughs"), and configs have no use for one."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.YAMLError(f"an alias (*name) at line {mark.line + 1}: acl-dist reads "
                                 "no YAML aliases")
        self._depth += 1
        try:
            if self._depth > YAML_DEPTH:
                raise yaml.YAMLError(f"nested deeper than {YAML_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, source: str) -> Any:
    """``text`` as YAML (safe: plain data only, no aliases, bounded depth), or one
    :class:`ConfigError` naming ``source``."""
    try:
        return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})".replace("\n", " ")) from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML (nested too deeply)") from None


def parse_override(text: str) -> dict[str, Any]:
    """``a.b.c=value`` -> ``{"a": {"b": {"c": value}}}`` (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got {text!r}")
    key, raw = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set: empty key in {text!r}")
    value = load_yaml(raw, f"--set {key}") if raw.strip() else None
    out: dict[str, Any] = {parts[-1]: value}
    for p in reversed(parts[:-1]):
        out = {p: out}
    return out


def preset_names() -> list[str]:
    folder = resources.files("acl_dist").joinpath("configs")
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def read_yaml(name_or_path: str) -> dict[str, Any]:
    """A preset by name (``thumos14``) or a YAML file (local or ``s3://``)."""
    from . import fsutil

    if name_or_path in preset_names():
        text = resources.files("acl_dist").joinpath("configs", f"{name_or_path}.yaml").read_text()
        source = f"preset {name_or_path}"
    else:
        text = fsutil.read_text(name_or_path)
        source = name_or_path
    data = load_yaml(text, source) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a config file must be a mapping")
    return data


def load_config(config: str | None = None, overrides: list[str] | tuple[str, ...] = (),
                **top_level: Any) -> RunConfig:
    """Defaults <- YAML (preset or file) <- ``top_level`` (CLI flags) <- dotted overrides."""
    data: dict[str, Any] = {}
    if config:
        data = read_yaml(config)
    data = merge(data, {k: v for k, v in top_level.items() if v is not None})
    for text in overrides:
        data = merge(data, parse_override(text))
    return from_dict(RunConfig, data)


def choices(cls: type, name: str) -> list[str]:
    """The allowed values of a ``Literal`` field of config dataclass ``cls``: the one source
    of every choice set (the CLI's ``choices=``, module constants)."""
    hint = typing.get_type_hints(cls)[name]
    values = typing.get_args(hint) if typing.get_origin(hint) is Literal else ()
    if not values:
        raise TypeError(f"{cls.__name__}.{name} is not a Literal field")
    return list(values)


def with_updates(cfg: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` that also accepts nested dicts for sub-configs."""
    resolved = {}
    for key, value in changes.items():
        current = getattr(cfg, key)
        resolved[key] = replace(current, **value) if is_dataclass(current) and isinstance(
            value, dict) else value
    return replace(cfg, **resolved)


__all__ = ["ModelConfig", "LossConfig", "TrainConfig", "ClusterConfig", "LocalizeConfig",
           "RunConfig", "load_config", "from_dict", "to_dict", "to_yaml", "parse_override",
           "preset_names", "with_updates", "choices", "check_ranges", "TuneSettings"]
