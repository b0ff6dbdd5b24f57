"""The plan of a run, resolved before anything runs: which subsets train, test and
validate (:func:`default_subsets`, :func:`holdout_split`), and every ``None`` of the config
sized to the store and to the capacity it will run on (:func:`resolve_config`), and where
each step runs and what the run asks the cluster for (:func:`run_plan`, ``plan.json``).
Pure: no Ray, no I/O beyond the store's manifest and metadata; the capacity is passed in.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable

from . import resources
from .config import RunConfig, to_dict, with_updates
from .errors import ConfigError
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
    CPUs and uses whole videos on GPUs. GPU rounds of >= 30,000 steps compile the step.
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
    cpus = cpus or resources.machine_cores()
    use_gpu = tc.use_gpu if tc.use_gpu is not None else gpus > 0
    batch = tc.batch_size if tc.batch_size is not None else int(
        min(32, max(8, 2 ** round(math.log2(max(n_train, 1) / 12)))))
    workers = tc.workers if tc.workers is not None else resources.training_workers(
        cpus, gpus, use_gpu, batch, tc.videos_per_cluster)
    steps = tc.steps if tc.steps is not None else int(min(30005, max(150, 2 * n_train)))
    max_len = tc.max_len if tc.max_len is not None else (0 if use_gpu else 256)
    compiled = tc.compile if tc.compile is not None else bool(use_gpu and steps >= 30_000)
    cpw = tc.cpus_per_worker if tc.cpus_per_worker is not None else \
        resources.cpus_per_worker(cpus, workers, use_gpu)
    rounds = 1 if cfg.mode == "weak" else cfg.rounds
    tiou = cfg.tiou if cfg.tiou is not None else guess_tiou(store)
    return with_updates(cfg, num_classes=num_classes, train_subset=train, test_subset=test,
                        rounds=rounds, tiou=tiou,
                        train={"workers": workers, "use_gpu": use_gpu, "batch_size": batch,
                               "steps": steps, "cpus_per_worker": cpw, "max_len": max_len,
                               "compile": compiled})


def worker_resources(cfg: RunConfig) -> dict[str, float]:
    """The Ray resources of one training worker of a resolved config: its CPUs, and one GPU
    when it trains on GPUs (the bundle an autoscaler is asked for, per worker)."""
    tc = cfg.train
    return {"CPU": float(tc.cpus_per_worker), **({"GPU": 1.0} if tc.use_gpu else {})}


def run_plan(cfg: RunConfig, capacity: resources.Capacity,
             train_videos: int | None = None) -> dict[str, Any]:
    """Where each step of a resolved run runs, and what the run asks the cluster for
    (``plan.json``; ``acl-dist run --plan --json``). A GPU run puts every step on GPUs and a
    CPU run every step on CPUs: a run never changes device on its own.

    Keys: ``capacity`` (:class:`~acl_dist.resources.Capacity` and its summary), ``train``
    (workers, device, Ray resources per worker, placement), ``cluster`` and ``attention``
    (device; actors), ``request`` (the bundles the autoscaler is asked for before training:
    the training workers' resources, the most the run holds at once), ``warnings``
    (:func:`size_warnings`; ``train_videos``: the training videos, when known) and
    ``config`` (the resolved config). A plan the capacity can never place is refused
    (:func:`check_placement`).
    """
    tc = cfg.train
    gpu = bool(tc.use_gpu)
    worker = worker_resources(cfg)
    check_placement(cfg, capacity)
    if gpu:      # one actor per GPU the training held: those nodes are up
        actors = max(1, tc.workers)
    else:
        actors = resources.attention_actors(
            capacity.max_cpus if capacity.on_cluster else capacity.cpus, 0.0, False)
    # scikit-learn and the Nyström path (numpy) run on a CPU whatever the node
    cluster_gpu = gpu and cfg.cluster.backend != "sklearn" and cfg.cluster.graph != "nystrom"
    return {"capacity": {**capacity.to_dict(), "summary": capacity.describe()},
            "train": {"workers": tc.workers, "use_gpu": gpu, "resources_per_worker": worker,
                      "placement_strategy": tc.placement_strategy,
                      "early_start": early_start(cfg, capacity, actors, cluster_gpu)},
            "cluster": {"backend": cfg.cluster.backend, "gpu": cluster_gpu},
            "attention": {"actors": actors, "gpu": gpu},
            "request": [dict(worker) for _ in range(tc.workers)],
            "warnings": size_warnings(cfg, train_videos),
            "config": to_dict(cfg)}


#: The paper's updates a round (the most a run sizes by itself).
PAPER_STEPS = 30_005
#: One training worker's seconds per video of a step, measured: 54 ms a 16-video step on
#: one CPU worker (the default benchmark, crops of 256 snippets: bench/worker_invariance.py),
#: 3.0 ms a 32-video step on one H200 with CUDA graphs (docs/cluster.md). What the size
#: warnings estimate time by: an order of magnitude, not a forecast.
SECONDS_PER_VIDEO_STEP = {"CPU": 0.054 / 16, "GPU": 0.003 / 32}
#: A round's fixed cost besides its steps: starting Ray Train's worker group (~20 s here).
ROUND_START_S = 20.0


def size_warnings(cfg: RunConfig, train_videos: int | None = None) -> list[str]:
    """Lines warning of sizes far beyond what the method needs, each with an estimate of
    what it will take: ``train.steps`` over 10x the paper's 30,005 a round,
    ``train.batch_size`` over twice the ``train_videos`` (each update then draws every
    video several times), ``rounds`` over 20 (the paper runs 4-5). Such a run is legal,
    so it is warned of, not refused; the estimate (one worker's measured rate) tells a
    typo from an intent."""
    tc = cfg.train
    device = "GPU" if tc.use_gpu else "CPU"
    per_video = SECONDS_PER_VIDEO_STEP[device]
    per_step = per_video * tc.batch_size
    rate = (f"one {device} worker's measured ~{_duration(per_step)} a step of "
            f"{tc.batch_size} videos")
    round_s = tc.steps * per_step + ROUND_START_S
    out = []
    if tc.steps > 10 * PAPER_STEPS:
        epochs = (f", ~{tc.steps * tc.batch_size / train_videos:,.0f} passes over the "
                  f"{train_videos} training videos a round") if train_videos else ""
        out.append(f"train.steps={tc.steps} is {tc.steps / PAPER_STEPS:,.0f}x the paper's "
                   f"{PAPER_STEPS:,} updates a round{epochs}: ~{_duration(round_s)} a round, "
                   f"~{_duration(round_s * cfg.rounds)} for {cfg.rounds} round(s) at {rate}")
    if train_videos and tc.batch_size > 2 * train_videos:
        times = f"{tc.batch_size / train_videos:,.0f}"
        out.append(f"train.batch_size={tc.batch_size} is {times}x the {train_videos} "
                   f"training videos (each update draws every video ~{times} times): "
                   f"~{_duration(per_step)} a "
                   f"step, ~{_duration(round_s)} a round of {tc.steps} steps at one "
                   f"{device} worker's measured ~{_duration(per_video)} a video")
    if cfg.rounds > 20:
        out.append(f"rounds={cfg.rounds} is far beyond the paper's 4-5: each round "
                   f"clusters, trains {tc.steps} steps and runs an attention pass over "
                   f"every video, ~{_duration(round_s)} a round for the training alone, "
                   f"~{_duration(round_s * cfg.rounds)} in all at {rate}")
    return out


def _duration(seconds: float) -> str:
    """``seconds`` in the unit a person reads it in: ms, s, min, h, days or years."""
    for unit, size, upto in (("ms", 1e-3, 1.0), ("s", 1.0, 120.0), ("min", 60.0, 7200.0),
                             ("h", 3600.0, 172800.0), ("days", 86400.0, 2 * 31557600.0)):
        if seconds < upto:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds / 31557600.0:,.3g} years"


def check_placement(cfg: RunConfig, capacity: resources.Capacity, who: str = "") -> None:
    """Refuse (:class:`ConfigError`, one line naming the key and the capacity) a resolved
    config whose training workers the capacity can never place: Ray Train would wait for
    them forever, retrying its worker group's start. ``who``: what trains (a Tune trial).

    Counted against what the capacity can hold (a local instance: its CPUs and GPUs; an
    autoscaling cluster: what its node types can bring up): the workers' CPUs plus
    :data:`~acl_dist.resources.DATA_CPUS` for Ray Data's reads, their GPUs, one worker's
    bundle on one node, and the placement strategy's node count (``STRICT_SPREAD``: a node
    per worker; ``STRICT_PACK``: every worker on one node) where the nodes are known.

    Long because each of the five refusals is its own message, naming its key and what
    would fit; split, they would share every local."""
    tc = cfg.train
    n = tc.workers
    worker = worker_resources(cfg)
    cpu, gpu = worker["CPU"], worker.get("GPU", 0.0)
    where = capacity.describe()
    head = f"{who}: " if who else ""
    if gpu and capacity.max_gpus < gpu:
        raise ConfigError(f"{head}train.use_gpu=true needs a GPU for each training worker "
                          f"but none can be placed ({where}); set train.use_gpu=false")
    if cpu + resources.DATA_CPUS > capacity.max_cpus:
        raise ConfigError(f"{head}train.cpus_per_worker={cpu:g} does not fit: one training "
                          f"worker needs {cpu + resources.DATA_CPUS:g} CPUs ({cpu:g} + "
                          f"{resources.DATA_CPUS:g} for Ray Data's reads) but at most "
                          f"{capacity.max_cpus:g} can be placed ({where})")
    types = [t for t in capacity.node_types if t.max_count != 0 and (t.cpus or t.gpus)]
    if not capacity.on_cluster:   # a local instance is one node: the whole of it
        types = [resources.NodeType("local", capacity.cpus, capacity.gpus, 1)]
    holding = [t for t in types if t.cpus >= cpu and t.gpus >= gpu]
    largest = max(types, key=lambda t: (t.gpus, t.cpus) if gpu else (t.cpus, t.gpus),
                  default=None)
    bundle = f"{cpu:g} CPUs" + (f" and {gpu:g} GPU" if gpu else "")
    if largest is not None and not holding:
        raise ConfigError(f"{head}train.cpus_per_worker={cpu:g} does not fit: a training "
                          f"worker's {bundle} must be on one node, and the largest node "
                          f"has {largest.cpus:g} CPUs and {largest.gpus:g} GPUs ({where})")
    for key, each, most, spare in (("CPU", cpu, capacity.max_cpus, resources.DATA_CPUS),
                                   ("GPU", gpu, capacity.max_gpus, 0.0)):
        need = each * n + spare
        if each and need > most:
            fit = int((most - spare) // each)
            why = f"{n} workers x {each:g} {key}" + (
                f" + {spare:g} for Ray Data's reads" if spare else "")
            raise ConfigError(f"{head}train.workers={n} needs {need:g} {key}s ({why}) but at "
                              f"most {most:g} can be placed ({where}): lower it to {fit} "
                              "or fewer")
    if largest is None:           # a cluster's nodes up now are not known here
        return
    strategy = tc.placement_strategy
    if strategy == "STRICT_SPREAD":
        nodes = sum(t.max_count if t.max_count >= 0 else resources.UNBOUNDED
                    for t in holding)
        if n > nodes:
            raise ConfigError(f"{head}train.placement_strategy=STRICT_SPREAD puts each of "
                              f"the {n} training workers on a node of its own, but at most "
                              f"{nodes} node(s) can hold one ({where}); use PACK or SPREAD")
    if strategy == "STRICT_PACK" and not any(t.cpus >= cpu * n and t.gpus >= gpu * n
                                             for t in types):
        raise ConfigError(f"{head}train.placement_strategy=STRICT_PACK puts all {n} "
                          f"training workers ({cpu * n:g} CPUs"
                          + (f", {gpu * n:g} GPUs" if gpu else "") + ") on one node, but "
                          f"the largest node has {largest.cpus:g} CPUs and "
                          f"{largest.gpus:g} GPUs ({where}); use PACK or SPREAD")


def attention_pass_actors(plan: dict[str, Any], videos: int, actors: int | None = None
                          ) -> tuple[int, int]:
    """(actors, torch threads of each) of an attention pass over ``videos`` videos.

    Actors (unless given): the plan's; on a local CPU instance one per core once the pass
    has 1,000 videos per actor, enough to repay each actor's start (~2 s): an actor's
    per-video localisation is Python, one core however many threads its forward has
    (measured on 2 cores: an ActivityNet-sized share of 5.7k videos 15.2 s with one actor
    of 2 threads, 9.8 s with two of one; the demo's 410 videos a little slower with two);
    with a next round's training started early (``train.early_start``), no more than the
    Ray CPUs its workers and Ray Data leave. Threads: the machine's cores over the actors
    (the early workers only read their shards meanwhile, then wait)."""
    if actors is None:
        att, cap = plan["attention"], plan["capacity"]
        actors = att["actors"]
        if not (att["gpu"] or cap["on_cluster"]):
            room = resources.machine_cores()
            if plan["train"].get("early_start"):
                held = sum(b.get("CPU", 0.0) for b in plan["request"])
                room = min(room, int(cap["cpus"] - held - 1))
            actors = max(actors, min(room, videos // 1000))
    return actors, resources.torch_threads(resources.machine_cores(), actors)


def early_start(cfg: RunConfig, capacity: resources.Capacity, attention_actors: int,
                cluster_gpu: bool) -> bool:
    """Whether an unsupervised round's training may start while the steps before it run
    (the previous attention pass, the clustering: :class:`acl_dist.ray_train.EarlyTraining`):
    only when the resources up now hold the training workers beside the larger of those
    steps (the attention pass's actors or the clustering task: 1 CPU each, 1 GPU each on a
    GPU run) with a CPU to spare for Ray Data's reads. Otherwise the early workers would
    hold what the attention pass or the clustering waits for (a cold autoscaling cluster:
    no). A longer local pass takes more actors only within what is left
    (:func:`attention_pass_actors`)."""
    if cfg.mode != "unsupervised":
        return False
    worker = worker_resources(cfg)
    n = cfg.train.workers
    gpu = bool(cfg.train.use_gpu)
    cpus = worker["CPU"] * n + max(attention_actors, 1) + 1
    gpus = worker.get("GPU", 0.0) * n + max(attention_actors if gpu else 0,
                                            1 if cluster_gpu else 0)
    return cpus <= capacity.cpus and gpus <= capacity.gpus


def predict_plan(capacity: resources.Capacity, videos: int,
                 batch_videos: int = 128) -> dict[str, Any]:
    """Where ``acl-dist predict`` runs a trained model over ``videos`` videos: GPU actors
    when the cluster has GPUs up (one per GPU) or, on an autoscaling cluster, can bring one
    up (then one GPU is asked for: a prediction pass is no reason to scale a cluster out);
    else CPU actors, one per 4 CPUs. Never more actors than batches of ``batch_videos``.
    ``request``: the bundles the autoscaler is asked for (empty when what is up serves)."""
    gpu = capacity.gpus > 0 or (capacity.on_cluster and capacity.max_gpus > 0)
    if gpu:
        actors = max(1, int(capacity.gpus))
    else:
        actors = resources.attention_actors(capacity.cpus if capacity.on_cluster
                                            else resources.machine_cores(), 0.0, False)
    actors = max(1, min(actors, math.ceil(videos / batch_videos)))
    need_up = gpu and capacity.gpus < actors
    return {"capacity": {**capacity.to_dict(), "summary": capacity.describe()},
            "actors": actors, "gpu": gpu,
            "request": [{"GPU": 1.0}] * actors if need_up else []}


def describe_plan(plan: dict[str, Any]) -> list[str]:
    """The plan as the lines a run prints at its start."""
    t, c, a = plan["train"], plan["cluster"], plan["attention"]
    res = ", ".join(f"{k} {v:g}" for k, v in t["resources_per_worker"].items())
    device = "GPU" if t["use_gpu"] else "CPU"
    early = " (starts during the step before it)" if t.get("early_start") else ""
    return [f"plan on {plan['capacity']['summary']}:",
            f"  training: {t['workers']} Ray Train worker(s) on {device}s, {res} each "
            f"({t['placement_strategy']}){early}",
            f"  clustering: one task on a {'GPU' if c['gpu'] else 'CPU'} "
            f"(backend {c['backend']})",
            f"  attention pass: {a['actors']} actor(s) on {'GPU' if a['gpu'] else 'CPU'}s"
            ] + [f"warning: {w}" for w in plan.get("warnings", [])]


def guess_tiou(store: FeatureStore) -> str:
    """THUMOS-style stores (``video_test_*`` ids, or the THUMOS synthetic preset) are
    evaluated at 0.1:0.7, everything else at ActivityNet's 0.5:0.95."""
    src = store.manifest.get("source", {})
    if src.get("preset") == "thumos14":
        return "thumos"
    meta = next(store.iter_videos(streams=[], batch_rows=1), None)
    return "thumos" if meta is not None and meta.video_id.startswith("video_") else "anet"


def scored_test_videos(cfg: RunConfig, store: FeatureStore,
                       ids: Iterable[str]) -> tuple[set[str] | None, str]:
    """Which of the test subset's videos (``ids``) are scored, and the sentence that says
    so in ``eval.json``, ``metrics.json`` and the report: ``cfg.test_videos`` (``auto``: a
    real THUMOS14 store's test videos (ids ``video_test_*``, not the synthetic benchmark's
    copies of their timelines) are scored on the community's 210-video list; otherwise
    every video). None: every video."""
    ids = set(ids)
    choice = cfg.test_videos
    if choice == "auto":
        synthetic = store.manifest.get("source", {}).get("layout") == "synthetic"
        thumos = bool(ids) and all(v.startswith("video_test_") for v in ids)
        choice = "thumos210" if thumos and not synthetic else "all"
    if choice == "all":
        return None, f"all {len(ids)} videos of subset {cfg.test_subset!r}"
    from .evaluate import thumos_test_videos

    listed = thumos_test_videos(choice[len("thumos"):])
    kept = ids & listed
    return kept, (f"the THUMOS14 {choice[len('thumos'):]}-video test list (FORMATS.md "
                  f"§2.5): {len(kept)} of the {len(ids)} videos of subset "
                  f"{cfg.test_subset!r}")


# --------------------------------------------------------------------------- the videos' roles


@dataclass
class VideoSplit:
    """Which videos train, validate and how (from :func:`split_videos`).

    Attributes:
        train: training videos' metadata (clustered and trained on), validation ones removed.
        val: validation videos' metadata (localised and scored, never trained or clustered).
        val_ids: their ids.
        val_source: how the validation split was made (for metrics and the report), or None.
        truth: each training video's primary label, in ``train`` order (None when unknown);
            used only to score clusterings and map clusters to classes, never to train.
        weak_labels: weak mode: video -> class indices of the store's class list.
    """

    train: list
    val: list
    val_ids: set[str]
    val_source: str | None
    truth: list[str | None]
    weak_labels: dict[str, list[int]] = field(default_factory=dict)

    @property
    def has_truth(self) -> bool:
        return all(t is not None for t in self.truth)


def split_videos(cfg: RunConfig, store: FeatureStore) -> VideoSplit:
    """The training and validation videos of a resolved config (its store metadata only)."""
    subsets = [cfg.train_subset, cfg.test_subset] + ([cfg.val_subset] if cfg.val_subset
                                                     else [])
    meta = store.metadata(subsets)
    train_all = [m for m in meta if m.subset == cfg.train_subset]
    if cfg.val_subset:
        val = [m for m in meta if m.subset == cfg.val_subset]
        source = f"subset {cfg.val_subset!r} ({len(val)} videos)"
    else:
        held = holdout_split([m.video_id for m in train_all], cfg.val_fraction, cfg.seed)
        val = [m for m in train_all if m.video_id in held]
        source = (f"{len(held)} of the {len(train_all)} {cfg.train_subset!r} videos held out "
                  f"(crc32 rule, val_fraction {cfg.val_fraction:g}, seed {cfg.seed})"
                  ) if held else None
    if (cfg.val_subset or cfg.val_fraction) and not val:
        raise ConfigError(f"the validation split is empty (val_fraction "
                          f"{cfg.val_fraction:g} of {len(train_all)} videos); raise it")
    val_ids = {m.video_id for m in val}
    train = [m for m in train_all if m.video_id not in val_ids]
    if cfg.mode == "unsupervised" and len(train) < cfg.num_classes:
        raise ConfigError(f"{len(train)} training videos left after the validation split, "
                          f"fewer than {cfg.num_classes} clusters")
    split = VideoSplit(train, val, val_ids, source, [m.primary_label for m in train])
    if cfg.mode == "weak":
        index = {c: i for i, c in enumerate(store.classes)}
        names = (lambda m: m.labels) if cfg.weak_labels == "all" else \
            (lambda m: [m.primary_label])
        split.weak_labels = {m.video_id: [index[lb] for lb in names(m) if lb in index]
                             for m in train}
        if not any(split.weak_labels.values()):
            raise ConfigError(f"weak mode needs video labels; subset {cfg.train_subset!r} of "
                              "the store has none")
    return split


@dataclass(frozen=True)
class AttentionRoles:
    """What a round's attention pass does with which videos: ``detect`` subsets are
    localised, ``describe`` (the training subset of an unsupervised run) gets the next
    round's descriptors, ``held_out`` training videos (the validation split) are localised
    too; ``subsets`` is every subset the pass reads."""

    detect: list[str]
    describe: str | None
    held_out: list[str]
    subsets: list[str]


def attention_roles(cfg: RunConfig, split: VideoSplit, with_test: bool) -> AttentionRoles:
    """The attention pass's roles for ``cfg`` (``with_test``: False in Tune trials)."""
    describe = cfg.train_subset if cfg.mode == "unsupervised" else None
    detect = ([cfg.test_subset] if with_test else []) + \
        ([cfg.val_subset] if cfg.val_subset else [])
    held_out = sorted(split.val_ids) if not cfg.val_subset else []
    subsets = detect + ([cfg.train_subset] if describe or held_out else [])
    return AttentionRoles(detect, describe, held_out, subsets)
