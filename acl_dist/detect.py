"""A finished run's final model applied to any store's videos (``acl-dist predict``): the
ActionFormer/OpenTAD "test on new data with a saved model" step, for videos that arrive
after training.

The run is read through :class:`~acl_dist.artifacts.RunDir`: its resolved config (the
localisation settings are the run's), the last round's checkpoint (``weights_only``), and
that round's cluster -> class mappings. The store is checked against the run before Ray
starts: its feature streams and dims must be the model's, and when it names classes they
must be the run's (a model cannot detect a class it was never trained on, and the
official evaluator refuses labels without ground truth). The pass itself is the run's
attention pass (:func:`acl_dist.ray_data.map_attention`) over the chosen subsets, on GPU
actors when the cluster has (or can bring up) GPUs; the detections are written as one
ActivityNet result JSON, atomically.

Labels: a weak run's detections are named by its classes. An unsupervised run's are named
by its clusters (``cluster_07``) or, when the run's training videos had labels, by classes
through the run's mapping (``--label-map``; default the run's own). Which one a file holds
is said in its ``external_data.details``.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from . import fsutil, resources
from .artifacts import RUN_INFO, RunDir
from .config import RunConfig
from .errors import ArtifactError, ConfigError, StoreError
from .evaluate import MAPPING_MODES, Detection, detections_to_json, map_detections
from .progress import log
from .store import FeatureStore

#: ``--label-map`` value that keeps an unsupervised run's cluster names
CLUSTERS = "clusters"


@dataclass
class TrainedRun:
    """What prediction needs of a finished run.

    Attributes:
        path: the run directory. cfg: its resolved config. round: the last round.
        checkpoint: that round's checkpoint path. in_dims: stream -> feature dim of the
        model. label_names: names of the model's C outputs (classes or cluster names).
        classes: the classes of the store the run was trained on.
        mappings: mode -> cluster id -> [(class, weight)] (unsupervised runs whose
        training videos had labels; empty otherwise).
    """

    path: str
    cfg: RunConfig
    round: int
    checkpoint: str
    in_dims: dict[str, int]
    label_names: list[str]
    classes: list[str]
    mappings: dict[str, dict[int, list[tuple[str, float]]]] = field(default_factory=dict)


def open_trained_run(run: str) -> TrainedRun:
    """The finished run in ``run``; :class:`ConfigError` when it is not one."""
    rundir = RunDir(run)
    if not rundir.is_run():
        raise ConfigError(f"{run}: not an acl-dist run directory")
    rundir.read_metrics()      # a run in progress has no final model: one line naming it
    cfg = rundir.read_config()
    r = cfg.rounds - 1
    ckpt = rundir.load_model(r)
    names, in_dims = model_outputs(rundir.model_path(r), ckpt, cfg.num_classes)
    mappings: dict[str, dict[int, list[tuple[str, float]]]] = {}
    clusters = rundir.read_clusters(r) if cfg.mode == "unsupervised" else None
    for mode, by_name in ((clusters or {}).get("mapping") or {}).items():
        mappings[mode] = {int(k.rsplit("_", 1)[1]): [(c, float(w)) for c, w in v]
                          for k, v in by_name.items()}
    info = rundir.read_info()
    # runs from before run.json listed the classes: a weak model's outputs are its classes;
    # an unsupervised run knows those its mapping reaches
    reached = sorted({c for m in mappings.values() for v in m.values() for c, _ in v})
    classes = info.get("classes") or (names if cfg.mode == "weak" else reached)
    # the classes a new store is checked against are the model's: run.json's must agree
    # with the checkpoint's outputs (weak) and hold every class the mappings name
    wrong = (cfg.mode == "weak" and list(classes) != names) or bool(set(reached) -
                                                                    set(classes))
    if wrong:
        raise ArtifactError(rundir.path(RUN_INFO), f"classes: {len(classes)} classes that "
                            f"are not the run's (round {r}'s "
                            + ("model outputs other classes)" if cfg.mode == "weak" else
                               "mapping names classes not among them)"))
    return TrainedRun(run, cfg, r, rundir.model_path(r), in_dims, names, list(classes),
                      mappings)


def model_outputs(path: str, ckpt: dict[str, Any], num_classes: int
                  ) -> tuple[list[str], dict[str, int]]:
    """(names of the C outputs, stream -> feature dim) of a run's checkpoint (``path``),
    checked: C names (the run's ``num_classes``) and positive dims, or one
    :class:`ArtifactError` naming the checkpoint and the entry."""
    names, dims = ckpt.get("label_names"), ckpt.get("in_dims")
    if not (isinstance(names, list) and len(names) == num_classes and
            all(isinstance(n, str) for n in names)):
        raise ArtifactError(path, f"label_names: expected the names of its {num_classes} "
                                  "outputs (strings)")
    if not (isinstance(dims, dict) and dims and all(
            isinstance(s, str) and type(d) is int and d > 0 for s, d in dims.items())):
        raise ArtifactError(path, "in_dims: expected stream -> feature dim (positive "
                                  "integers)")
    return list(names), dict(dims)


def resolve_labels(trained: TrainedRun, label_map: str | None) -> str | None:
    """The mapping mode detections are named by (None: the model's own names). Default: a
    weak run's classes; an unsupervised run's mapping (its ``label_map``) when it has one,
    else its clusters."""
    if trained.cfg.mode == "weak":
        if label_map is not None:
            raise ConfigError(f"--label-map: {trained.path} is a weak run; its detections "
                              "are named by its classes")
        return None
    if label_map == CLUSTERS:
        return None
    if label_map is None:
        return trained.cfg.label_map if trained.mappings else None
    if label_map not in MAPPING_MODES:
        raise ConfigError(f"--label-map must be one of {[*MAPPING_MODES, CLUSTERS]}, not "
                          f"{label_map!r}")
    if label_map not in trained.mappings:
        raise ConfigError(f"--label-map {label_map}: {trained.path} has no cluster -> class "
                          "mapping (its training videos had no labels); use --label-map "
                          f"{CLUSTERS}")
    return label_map


def check_store(trained: TrainedRun, store: FeatureStore, by_class: bool) -> None:
    """The store fits the run's model: the same streams and dims, and (when detections are
    named by classes and the store names classes) the same classes. Raises
    :class:`StoreError` naming the store and the difference."""
    if store.streams != trained.in_dims:
        def dims(d: dict[str, int]) -> str:
            return ", ".join(f"{s} {n}-d" for s, n in d.items())
        raise StoreError(f"{store.path}: its features ({dims(store.streams)}) do not fit the "
                         f"model of {trained.path} ({dims(trained.in_dims)})")
    if by_class and store.classes and set(store.classes) != set(trained.classes):
        missing = sorted(set(trained.classes) - set(store.classes))
        extra = sorted(set(store.classes) - set(trained.classes))

        def few(names: list[str]) -> str:
            return ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5
                                           else "")
        parts = ([f"not in the store: {few(missing)}"] if missing else []) + \
            ([f"not in the run: {few(extra)}"] if extra else [])
        raise StoreError(f"{store.path}: its classes are not those {trained.path} was "
                         f"trained on ({'; '.join(parts)})")


def name_detections(trained: TrainedRun, raw: list[tuple[str, list]],
                    mapping: str | None) -> list[Detection]:
    """Detections of ``raw`` ((video, [(output index, score, start s, end s)])) named by
    the model's outputs, then by ``mapping``'s classes when given."""
    dets = [Detection(vid, trained.label_names[int(label)], score, start, end)
            for vid, segs in raw for label, score, start, end in segs]
    return map_detections(dets, trained.mappings[mapping]) if mapping else dets


def predict(run: str, store: str, out: str, subsets: list[str] | None = None,
            label_map: str | None = None, overwrite: bool = False,
            quiet: bool = False) -> dict[str, Any]:
    """Detections of ``run``'s final model on the videos of ``store`` (``subsets``; default
    all), written to ``out`` as ActivityNet result JSON; runs on the Ray cluster this
    process attaches to (``RAY_ADDRESS``) or a local instance.

    Args:
        label_map: how an unsupervised run's detections are named: ``hungarian``,
            ``majority``, ``soft`` (the run's cluster -> class mapping) or ``clusters``
            (default: the run's ``label_map`` when it has a mapping, else clusters).
        overwrite: replace an existing ``out`` (otherwise refused).

    Returns a summary: videos, detections, labels (``classes (<mapping>)`` or
    ``clusters``), the plan and seconds.

    Example::

        >>> s = acl_dist.predict("run", "new_store", "new_dets.json")
        >>> s["videos"], s["labels"]
        (36, 'classes (hungarian)')
    """
    from . import locks

    started = time.perf_counter()
    store, out = fsutil.absolute(store), fsutil.absolute(out)
    with locks.exclusive(out, "predict", quiet):
        check_detections_out(out, overwrite)   # under the lock: as it is until the write
        return _predict(run, store, out, subsets, label_map, quiet, started)


def check_detections_out(out: str, overwrite: bool) -> None:
    """``predict --out`` names a file: an existing directory is refused, and an existing
    file is replaced only with ``overwrite`` and only when acl-dist wrote it (its
    ``external_data.details`` says so), never a file of anything else."""
    if not fsutil.exists(out):
        return
    if not fsutil.is_remote(out) and os.path.isdir(out):
        raise ConfigError(f"--out {out} is a directory; predict writes one JSON file")
    if not overwrite:
        raise ConfigError(f"{out} exists; choose another --out or pass --overwrite")
    try:
        data = fsutil.read_json(out)
    except StoreError:
        data = None
    details = data.get("external_data", {}) if isinstance(data, dict) else None
    if not (isinstance(details, dict) and str(details.get("details", "")).startswith(
            "acl-dist predict:")):
        raise ConfigError(f"--overwrite refused: {out} is not a detections file acl-dist "
                          "wrote; acl-dist only replaces what it wrote (remove it yourself "
                          "or choose another --out)")


def _predict(run: str, store: str, out: str, subsets: list[str] | None,
             label_map: str | None, quiet: bool, started: float) -> dict[str, Any]:
    trained = open_trained_run(run)
    mapping = resolve_labels(trained, label_map)
    fs = FeatureStore.open(store)
    check_store(trained, fs, by_class=trained.cfg.mode == "weak" or mapping is not None)
    subsets = list(dict.fromkeys(subsets or fs.subsets))
    total = fs.num_videos(subsets)          # an unknown subset: one line naming it
    raw, plan = _detect(trained, fs, subsets, total, quiet)
    dets = name_detections(trained, raw, mapping)
    labels = f"classes ({mapping})" if mapping else (
        "classes" if trained.cfg.mode == "weak" else CLUSTERS)
    details = (f"acl-dist predict: round {trained.round} of {trained.path} "
               f"({trained.cfg.mode}), labels: {labels}")
    fsutil.sweep_temporaries(out)
    fsutil.write_json_atomic(out, detections_to_json(
        dets, {"used": False, "details": details}, [v for v, _ in raw]), indent=None)
    summary = {"videos": len(raw), "detections": len(dets), "labels": labels,
               "subsets": subsets, "out": out, "plan": plan,
               "seconds": round(time.perf_counter() - started, 1)}
    log(f"predict: {len(dets)} detections of {len(raw)} videos ({labels}) -> {out} "
        f"in {summary['seconds']:.1f} s", quiet)
    return summary


def _detect(trained: TrainedRun, store: FeatureStore, subsets: list[str], total: int,
            quiet: bool) -> tuple[list[tuple[str, list]], dict[str, Any]]:
    """The run's attention pass over ``subsets`` of ``store`` on the plan's actors (GPUs
    asked of an autoscaler and waited for, as a run does): raw detections sorted by video,
    and the plan."""
    from . import ray_start
    from .plan import predict_plan
    from .ray_data import collect_detections, map_attention

    plan = predict_plan(ray_start.cluster_capacity(quiet), total)
    log(f"predict: {total} videos of {store.path} ({', '.join(subsets)}) with round "
        f"{trained.round} of {trained.path}; {plan['actors']} actor(s) on "
        f"{'GPU' if plan['gpu'] else 'CPU'}s ({plan['capacity']['summary']})", quiet)
    checkpoint = fsutil.absolute(trained.checkpoint)  # the actors' cwd differs
    with ray_start.capacity_held(plan["request"], resources.SCALE_TIMEOUT_S, quiet):
        ds = map_attention(store, subsets, checkpoint, detect_subsets=subsets,
                           localize=trained.cfg.localize, describe_subset=None,
                           concurrency=plan["actors"], use_gpu=plan["gpu"],
                           torch_threads=resources.torch_threads(resources.machine_cores(),
                                                                 plan["actors"]))
        raw = collect_detections(ds, "  predict", total, quiet)
    return sorted(raw), plan                     # sorted: a stable file
