"""The ACL rounds on Ray, with a run directory that makes them resumable.

Round r (unsupervised): descriptors (r = 0: uniform pooling of the store; r > 0: the
previous round's attention pass) -> clustering task -> pseudo-labels -> Ray Train ->
attention pass over every video (next descriptors; test CAS, attention, detections) ->
evaluation of this round's detections. Weak mode: one round, the store's video labels, no
clustering. After the last round the final detections and ``metrics.json`` are written.

The run directory's files are read and written only through
:class:`acl_dist.artifacts.RunDir` (its module doc lists them); ``RUN/ray_train/`` is Ray
Train's storage and ``RUN/tensorboard/`` the TensorBoard events (:mod:`acl_dist.board`:
per round's training, and one point per round of clustering quality and mAP).

With a validation split (``val_subset``, or ``val_fraction`` of the training videos held
out by :func:`holdout_split`), its videos are never clustered or trained on; the attention
pass localises them beside the test videos and ``val.json`` scores them each round.

Every artifact is written whole (temporary file + rename, or one PUT on S3) before its step
is marked done, so ``--resume`` reruns exactly the first unfinished step and what follows.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Callable

import numpy as np

from . import fsutil, locks, ray_start, resources
from .artifacts import CONFIG, RUN_INFO, RunDir, label_names
from .config import RunConfig, with_updates
from .errors import ArtifactError, ConfigError
from .plan import (VideoSplit, attention_pass_actors, attention_roles, describe_plan,
                   resolve_config, run_plan, split_videos)
from .progress import log
from .ray_clustering import run_clustering_task
from .ray_data import map_attention, map_descriptors, write_dataset
from .ray_train import RoundTrainings
from .results import RunResults, clusters_record, clustering_line
from .store import FeatureStore


# --------------------------------------------------------------------------- the rounds


@dataclass(frozen=True)
class RunOptions:
    """How a run executes, beside what it computes (its :class:`RunConfig`): none of these
    changes a result, so they are not saved with the run.

    Attributes:
        quiet: no progress lines.
        label_map_given: ``--label-map`` was given (names ``detections.json``).
        max_failures: Ray Train worker failures tolerated per round.
        with_test: localise and score the test subset (False in Tune trials, which must
            never see it).
        torch_threads: intra-op threads of each training worker and attention actor
            (None: the machine's cores over the training workers, and over the attention
            actors for those).
        attention_actors: actors of the attention pass (None: the plan's, one per GPU of
            the cluster or per 4 CPUs); a Tune trial gets its own share.
        on_round: called after each round as ``on_round(r, round_metrics)`` with the
            round's validation mAP and label-free scores (what Tune reports).
        scale_timeout_s: on a cluster, ask the autoscaler for the plan's resources and wait
            up to this long for them before the first training (None: use what is up, as a
            Tune trial does: its driver asked for them).
        early_training: start each unsupervised round's training while the step before it
            runs, when the plan says the capacity holds both (``plan.json``'s
            ``train.early_start``); False in Tune trials, which share the cluster.
    """
    quiet: bool = False
    label_map_given: bool = False
    max_failures: int = 0
    with_test: bool = True
    torch_threads: int | None = None
    attention_actors: int | None = None
    on_round: Callable[[int, dict[str, Any]], None] | None = None
    scale_timeout_s: float | None = None
    early_training: bool = True


class Run:
    """Executes (or resumes) one ACL run: the rounds as a schedule of steps, each skipped
    when the ledger says it is done. Planning is :mod:`acl_dist.plan`, scoring
    :mod:`acl_dist.results`, files :class:`acl_dist.artifacts.RunDir`."""

    def __init__(self, store_path: str, out: str, cfg: RunConfig,
                 opts: RunOptions = RunOptions(), split: VideoSplit | None = None,
                 plan: dict[str, Any] | None = None):
        """``split``: the videos' roles when already made for ``cfg`` (else read here);
        ``plan``: :func:`acl_dist.plan.run_plan` of ``cfg`` (else made when the run starts,
        on the cluster it runs on)."""
        self.store, self.store_path = FeatureStore.open(store_path), store_path
        self.dir, self.cfg, self.opts, self.quiet = RunDir(out), cfg, opts, opts.quiet
        self.plan = plan
        self.threads = opts.torch_threads or resources.torch_threads(
            resources.machine_cores(), cfg.train.workers)
        self.split = split or split_videos(cfg, self.store)
        self.label_names = label_names(cfg.mode, cfg.num_classes, self.store.classes)
        self.results = RunResults(self.dir, cfg, store_path, self.split, self.label_names,
                                  opts.with_test, opts.label_map_given, opts.quiet)
        self.trainings = RoundTrainings(self.store, cfg, self.dir, self.label_names,
                                        torch_threads=self.threads,
                                        max_failures=opts.max_failures, quiet=opts.quiet)

    # -- steps ----------------------------------------------------------------

    def step_descriptors0(self) -> dict:
        ds = map_descriptors(self.store, self.cfg.train_subset)
        return {"videos": write_dataset(ds, self.dir.descriptors_path(),
                                        "  round 0 descriptors",
                                        self.store.num_videos(self.cfg.train_subset),
                                        self.quiet)}

    def step_cluster(self, r: int) -> dict:
        """Cluster the training videos' round-``r`` descriptors (one Ray task)."""
        ids, desc = self.dir.read_descriptors(r, [m.video_id for m in self.split.train])
        previous = None
        if r > 0:
            prev = self.dir.read_clusters(r - 1)["labels"]
            previous = np.array([prev[v] for v in ids])
        truth = self.split.truth if self.split.has_truth else None
        cc = with_updates(self.cfg.cluster, seed=self.cfg.seed + self.cfg.cluster.seed)
        res = run_clustering_task(desc, self.cfg.num_classes, cc,
                                  truth, previous, use_gpu=self.plan["cluster"]["gpu"],
                                  desc=f"  round {r} clustering", quiet=self.quiet)
        log(clustering_line(r, res), self.quiet)
        self.dir.write_clusters(r, clusters_record(r, ids, res, truth))
        return {"backend": res["backend"]}

    def step_train(self, r: int) -> dict:
        labels = self.split.weak_labels if self.cfg.mode == "weak" else \
            {v: [k] for v, k in self.dir.read_clusters(r)["labels"].items()}
        ckpt, early = self.trainings.train(r, labels)
        self.dir.save_model(r, ckpt)
        last = ckpt["history"][-1] if ckpt.get("history") else {}
        return {"steps": self.cfg.train.steps, "final_loss": last.get("loss"),
                "started_early": early}

    def start_training_early(self, r: int) -> None:
        """Round ``r``'s training started now, before its clustering
        (:class:`~acl_dist.ray_train.EarlyTraining`), when the plan allows it
        (``train.early_start``) and the round is not trained yet."""
        if self.opts.early_training and self.plan["train"].get("early_start") \
                and not self.dir.done(f"round_{r}.train"):
            self.trainings.start(r, [m.video_id for m in self.split.train])

    def step_attention(self, r: int) -> dict:
        cfg = self.cfg
        roles = attention_roles(cfg, self.split, self.opts.with_test)
        self.dir.load_model(r)  # refused or unreadable: one line naming it, here
        total = sum(self.store.num_videos(s) for s in dict.fromkeys(roles.subsets))
        actors, threads = attention_pass_actors(self.plan, total, self.opts.attention_actors)
        threads = self.opts.torch_threads or threads
        ds = map_attention(self.store, roles.subsets, self.dir.model_path(r), roles.detect,
                           cfg.localize, roles.describe, detect_ids=roles.held_out,
                           descriptor=cfg.cluster.descriptor, concurrency=actors,
                           use_gpu=self.plan["attention"]["gpu"],
                           torch_threads=threads)
        return {"videos": write_dataset(ds, self.dir.outputs_path(r),
                                        f"  round {r} attention pass", total, self.quiet)}

    def step_finish(self) -> dict:
        videos = [m.video_id for m in self.store.metadata(self.cfg.test_subset)] \
            if self.opts.with_test else []
        self.results.finish(videos)
        return {}

    # -- the schedule -------------------------------------------------------------

    def schedule(self) -> list[tuple[str, Callable[[], Any]]]:
        """Every step in order as (ledger name, action); ``""`` names what is not a step
        (it runs on resumed rounds too): the per-round report to ``on_round`` and an
        unsupervised round's early training start (round 0's during the descriptors and
        clustering, the next round's during this round's attention pass)."""
        unsup = self.cfg.mode == "unsupervised"
        steps = [("", partial(self.start_training_early, 0)),
                 ("round_0.descriptors", self.step_descriptors0),
                 ("round_0.cluster", partial(self.step_cluster, 0))] if unsup else []
        for r in range(self.cfg.rounds):
            steps.append((f"round_{r}.train", partial(self.step_train, r)))
            if unsup and r + 1 < self.cfg.rounds:
                steps.append(("", partial(self.start_training_early, r + 1)))
            steps += [(f"round_{r}.attention", partial(self.step_attention, r)),
                      (f"round_{r}.evaluate", partial(self.results.evaluate, r))]
            if unsup:
                # the next round's clustering (after the last: the last models' scores)
                steps.append((f"round_{r + 1}.cluster", partial(self.step_cluster, r + 1)))
            if self.opts.on_round is not None:
                steps.append(("", lambda r=r: self.opts.on_round(
                    r, self.results.round_metrics(r))))
        return steps + [("finish", self.step_finish)]

    def verify_finished_steps(self) -> list[str]:
        """Check the run against its store and read back every finished step's files
        before trusting the ledger; the steps to rerun (see :func:`check_resumable`)."""
        return check_resumable(self)

    def execute(self, resume: bool = False) -> dict[str, Any]:
        """Run every step not done yet; with ``resume`` first check the finished steps'
        files. Prints the plan first; on a cluster scales it up (:meth:`_scale_up`).
        Returns ``metrics.json``'s content."""
        if resume:
            self.verify_finished_steps()
        ray_start.init_ray(quiet=self.quiet)
        if self.plan is None:       # a resumed run: planned anew on the cluster it runs on
            self.plan = run_plan(self.cfg, ray_start.cluster_capacity(self.quiet))
            self.dir.write_plan(self.plan)
        for line in describe_plan(self.plan):
            log(line, self.quiet)
        # closed: a stopped run leaves no training waiting for labels
        with self._scale_up(), contextlib.closing(self.trainings):
            self._run_steps()
        return self.dir.read_metrics()

    def _scale_up(self) -> contextlib.AbstractContextManager:
        """On a cluster, before the first training still to run: the plan's resources,
        asked of the autoscaler and waited for, held while the steps run."""
        done = self.dir.state()["steps"]
        pending = any(n not in done for n, _ in self.schedule() if n.endswith(".train"))
        timeout = self.opts.scale_timeout_s
        if timeout is None or not pending or not resources.on_a_cluster():
            return contextlib.nullcontext()
        return ray_start.capacity_held(self.plan["request"], timeout, self.quiet)

    def _run_steps(self) -> None:
        for name, action in self.schedule():
            if not name:
                action()
                continue
            if self.dir.done(name):
                log(f"[{name}] done earlier, skipped", self.quiet)
            else:
                log(f"[{name}] ...", self.quiet)
                started = time.perf_counter()
                info = action() or {}
                seconds = time.perf_counter() - started
                self.dir.mark(name, seconds, **info)
                log(f"[{name}] {seconds:.1f} s", self.quiet)
            self.results.board_points(name)


def load_run_config(out: str, store: str | None = None) -> tuple[str, RunConfig, dict]:
    """(store, config, ``run.json``) of the run in ``out``, for ``--resume``; ``store``,
    when given, must be the one the run was started on."""
    rundir = RunDir(out)
    if not (fsutil.exists(rundir.path(RUN_INFO)) and rundir.has_config()):
        raise ConfigError(f"--resume: {out} is not a run directory (no {RUN_INFO} and "
                          f"{CONFIG})")
    saved = rundir.read_info()      # its schema: one line naming run.json and the key
    if store is not None and saved["store"] != store:
        raise ConfigError(f"--resume: {out} was run on {saved['store']}, not {store}")
    return saved["store"], rundir.read_config(), saved


def check_resumable(run: Run) -> list[str]:
    """What a resumed run checks before Ray starts, before any step reruns and before a
    file of it is rewritten: its ledger's schema (:meth:`RunDir.state`), that the store it
    opened is the one it was made on (:func:`check_run_store`), then every finished step's
    files read back (:meth:`RunDir.verify_steps`: one of the wrong shape refused, a lost or
    truncated one rerun with the steps after it). Returns the steps to rerun."""
    names = [n for n, _ in run.schedule() if n]
    check_run_store(run, run.dir.state()["steps"])
    return run.dir.verify_steps(names, bool(run.split.val_ids), run.opts.with_test,
                                run.quiet)


def check_run_store(run: Run, done: dict[str, Any]) -> None:
    """The store ``run`` opened (``run.json``'s) is the one its finished steps were
    computed from: the classes ``run.json`` saved, the features the last trained model
    was trained on, and (unsupervised) the training videos every finished clustering
    labelled, with clusters below C. Otherwise one :class:`ArtifactError` naming
    ``run.json`` (or the clustering whose labels are out of range), before Ray starts;
    a run file that is missing or truncated is left to :meth:`RunDir.verify_steps`."""
    rundir, cfg, path = run.dir, run.cfg, run.store_path
    rundir.check_store_classes(path, run.store.classes,
                               rundir.read_info() if rundir.has_info() else {})

    def refuse(problem: str) -> None:
        raise ArtifactError(rundir.path(RUN_INFO), f"store: {path} is not the store this "
                                                   f"run was made on: {problem}")

    def readable(read: Callable[[], Any]) -> Any:
        try:
            return read()
        except ArtifactError as err:
            if err.refused:
                raise
            return None                  # lost or truncated: that step reruns

    trained = [r for r in range(cfg.rounds) if f"round_{r}.train" in done]
    ckpt = readable(partial(rundir.load_model, trained[-1])) if trained else None
    dims = (ckpt or {}).get("in_dims")
    if isinstance(dims, dict) and dict(dims) != run.store.streams:
        refuse(f"its features {run.store.streams} are not those round_{trained[-1]}'s "
               f"model was trained on {dict(dims)}")
    if cfg.mode != "unsupervised":
        return
    train = {m.video_id for m in run.split.train}
    for r in [r for r in range(cfg.rounds + 1) if f"round_{r}.cluster" in done]:
        labels = (readable(partial(rundir.read_clusters, r, ())) or {}).get("labels")
        if labels is None:
            continue
        unknown, unlabelled = sorted(set(labels) - train), sorted(train - set(labels))
        if unknown or unlabelled:
            refuse(f"round {r}'s clustering labels {len(labels)} videos, {len(unknown)} "
                   f"of them not among its {len(train)} training videos"
                   + (f" (e.g. {unknown[0]!r})" if unknown else
                      f", and misses {len(unlabelled)} (e.g. {unlabelled[0]!r})"))
        high = next(((v, k) for v, k in labels.items() if k >= cfg.num_classes), None)
        if high is not None:
            raise ArtifactError(rundir.clusters_path(r), f"labels: video {high[0]!r} is in "
                                f"cluster {high[1]}, not below num_classes {cfg.num_classes}")


def plan_new_run(store: str, cfg: RunConfig, quiet: bool = False
                 ) -> tuple[RunConfig, VideoSplit, dict[str, Any]]:
    """A new run's resolved config, videos' roles and plan (:func:`acl_dist.plan.run_plan`)
    on the cluster it will run on; writes nothing and starts no Ray instance
    (``acl-dist run --plan``).

    Every check that needs no cluster (subsets, C against the videos, the validation split,
    the store's metadata) runs first, on this machine's sizing; then the config is sized to
    what the cluster can hold (only the training sizes can differ), and a plan that cannot
    be placed there is refused. Locally that capacity is the instance the run would start
    (:func:`acl_dist.ray_start.planning_capacity`), so nothing of Ray starts before the
    refusal."""
    fs = FeatureStore.open(store)
    split = split_videos(resolve_config(cfg, fs, cpus=resources.machine_cores(), gpus=0.0),
                         fs)
    capacity = ray_start.planning_capacity(quiet=quiet)
    cfg = resolve_config(cfg, fs, cpus=capacity.sizing_cpus(), gpus=capacity.max_gpus)
    return cfg, split, run_plan(cfg, capacity, train_videos=len(split.train))


def new_run(store: str, out: str, cfg: RunConfig, opts: RunOptions = RunOptions()) -> Run:
    """Resolve a new run's config and plan against the store and the cluster, check it (by
    building the :class:`Run`), and only then save it into ``out``: a run refused here
    leaves no ``config.yaml`` behind to block the corrected rerun. A directory whose run
    never finished a step is started afresh."""
    rundir = RunDir(out)
    if rundir.is_run():
        if rundir.has_finished_steps():
            raise ConfigError(f"{out} already holds a run; use --resume to continue it or "
                              "choose another --out")
        log(f"{out} holds a run that finished no step: starting it afresh", opts.quiet)
    cfg, split, plan = plan_new_run(store, cfg, opts.quiet)
    run = Run(store, out, cfg, opts, split=split, plan=plan)  # split is sizing-free
    # the store's classes: what `acl-dist predict` checks a new store against
    rundir.write_config(cfg, {"store": store, "classes": run.store.classes,
                              "label_map_given": opts.label_map_given})
    rundir.write_plan(plan)
    return run


def run_acl(store: str | None, out: str, cfg: RunConfig | None, resume: bool = False,
            quiet: bool = False, label_map_given: bool = False,
            max_failures: int | None = None,
            scale_timeout_s: float | None = None) -> dict[str, Any]:
    """Run (or resume) ACL on ``store`` into ``out``; returns ``metrics.json``'s content.
    With ``resume`` the saved config is used (``cfg`` must be None) and ``store`` may be
    None (the run's own). ``max_failures``: Ray Train worker failures tolerated per round
    (default :func:`acl_dist.resources.default_max_failures`). ``scale_timeout_s``: how
    long a run on an autoscaling cluster waits for its plan's resources (default
    :data:`acl_dist.resources.SCALE_TIMEOUT_S`)."""
    # local paths made absolute: Ray's workers run elsewhere than this process's cwd, and
    # run.json names the store for --resume from any directory
    store, out = fsutil.absolute(store), fsutil.absolute(out)
    if not resume:
        check_apart(store, out)
    with locks.exclusive(out, "run --resume" if resume else "run", quiet):
        sweep_run_temporaries(out)
        return _run_acl(store, out, cfg, resume, quiet, label_map_given, max_failures,
                        scale_timeout_s)


def check_apart(store: str | None, out: str) -> None:
    """A run directory and its store are separate trees: a run written into its store
    (or a store inside a run) would mix run files with the store's, and ``--overwrite`` of
    either would take the other with it."""
    if store is None or fsutil.is_remote(store) != fsutil.is_remote(out):
        return
    a, b = store.rstrip("/") + "/", out.rstrip("/") + "/"
    if not fsutil.is_remote(out):
        a, b = os.path.realpath(store) + os.sep, os.path.realpath(out) + os.sep
    if a == b:
        raise ConfigError(f"--out {out} is the store itself; a run needs its own directory")
    if b.startswith(a):
        raise ConfigError(f"--out {out} is inside the store {store}; a run needs its own "
                          "directory outside it")
    if a.startswith(b):
        raise ConfigError(f"the store {store} is inside --out {out}; a run needs its own "
                          "directory apart from the store")


def sweep_run_temporaries(out: str) -> None:
    """Remove the half-written files (``.NAME.tmp-*``) a killed process left in a run
    directory; called with the run's lock held, when no writer of it is running."""
    if fsutil.is_remote(out) or not os.path.isdir(out):
        return
    for parent, _dirs, files in os.walk(out):
        for name in files:
            if name.startswith(".") and ".tmp-" in name:
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(parent, name))


def _run_acl(store: str | None, out: str, cfg: RunConfig | None, resume: bool, quiet: bool,
             label_map_given: bool, max_failures: int | None,
             scale_timeout_s: float | None) -> dict[str, Any]:
    opts = RunOptions(quiet=quiet, label_map_given=label_map_given,
                      max_failures=resources.default_max_failures() if max_failures is None
                      else max_failures,
                      scale_timeout_s=resources.SCALE_TIMEOUT_S if scale_timeout_s is None
                      else scale_timeout_s)
    if resume:
        if cfg is not None:
            raise ConfigError("--resume continues a run with its saved config; it takes no "
                              "new config")
        store, saved, info = load_run_config(out, store)
        # detections.json is named as the run was started (--label-map or not)
        opts = replace(opts, label_map_given=bool(info.get("label_map_given",
                                                           label_map_given)))
        return Run(store, out, saved, opts).execute(resume=True)
    if store is None or cfg is None:
        raise ConfigError("a new run needs a store and a config")
    return new_run(store, out, cfg, opts).execute()
