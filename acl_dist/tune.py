"""``acl-dist tune``: a Ray Tune search over Z, K, the loss weights (and any config key).

Each trial is one multi-round ACL run (:class:`acl_dist.pipeline.Run`) in its own run
directory. The Tune function drives the rounds; every round builds its own TorchTrainer
inside the trial (under Train V2 ``Tuner(trainer)`` fails; a Tune function that builds
trainers is the supported pattern, RAY_NOTES.md §5) and reports once per round, so ASHA can
stop a trial between rounds. Trials never see the test subset: they localise and score a
validation split (the store's ``val_subset``, or training videos held out by a seeded hash,
see :func:`acl_dist.plan.holdout_split`), which is also never trained or clustered on.

Objectives (recorded in the results):

* ``val_map``: mAP averaged over the tIoU thresholds on the validation split (clusters mapped
  to classes from the training videos' labels, as in every unsupervised report);
* ``silhouette``: label-free, the silhouette of the clustering that the round's attention
  descriptors give (the next round's clusters);
* ``stability``: label-free, NMI between the round's pseudo-labels and that next clustering.

Resources: Tune sees only each trial's driver (no CPU); the trial's Ray Train workers,
clustering task and attention actor are invisible to it (ray-project/ray#54305). So the
number of concurrent trials is bounded here from the cluster: each trial needs its workers'
CPUs (and GPUs) plus one CPU for Ray Data and the clustering task.

Experiment directory (local or ``s3://``)::

    EXP/tune.json        settings, search space, base config, resources (what --resume reads)
    EXP/tune/            Tune's experiment state (``Tuner.restore``)
    EXP/runs/<trial>/    each trial's run directory (resumable like any run)
    EXP/trials.csv       one row per trial: config, rounds, objective, val mAP, NMI, time
    EXP/summary.json     best trial, the table, rank correlations of the label-free scores
    EXP/best_config.yaml        the best configuration, for ``acl-dist run --config EXP/best_config.yaml``
    EXP/report.html      the table and label-free score vs validation mAP plots
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from typing import Any

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler

from . import fsutil, resources
from .config import RunConfig, TuneSettings, to_dict
from .errors import ConfigError
from .progress import log
from .tune_results import OBJECTIVES, REPORTED, saved_status, summarize, write_results
from .tune_space import config_with, make_searcher, tune_param_space


def concurrent_trials(cfg: RunConfig, cluster_cpus: float, cluster_gpus: float,
                      wanted: int | None = None) -> tuple[int, str]:
    """How many trials fit at once (:func:`acl_dist.resources.concurrent_trials`), and why;
    never more than ``wanted``."""
    tc = cfg.train
    bound, why = resources.concurrent_trials(tc.workers, tc.cpus_per_worker, bool(tc.use_gpu),
                                             cluster_cpus, cluster_gpus)
    if wanted is not None and wanted > bound:
        log(f"--max-concurrent {wanted} would oversubscribe the cluster; using {bound} ({why})")
    return (min(wanted, bound) if wanted else bound), why


# --------------------------------------------------------------------------- one trial


def _trial_dirname(trial) -> str:  # module level: Tune pickles it with the experiment
    return trial.trial_id


def tune_trial(config: dict[str, Any], *, store: str, root: str, base: dict[str, Any],
               objective: str, torch_threads: int, attention_actors: int,
               max_failures: int = 0) -> None:
    """One trial (runs in a Tune actor): the ACL rounds with ``config``'s dotted keys over
    ``base`` (a resolved config dict), reporting each round. A restored trial resumes its
    run directory and reports only rounds not reported before."""
    from .artifacts import RunDir
    from .pipeline import Run, RunOptions

    cfg = config_with(config, base)
    trial_id = tune.get_context().get_trial_id()
    out = fsutil.join(root, "runs", trial_id)
    reported = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "round.json")) as fh:
                reported = json.load(fh)["round"]
    rundir = RunDir(out)
    if not rundir.has_config():
        rundir.write_config(cfg, {"store": store, "trial": trial_id})

    history: list[list[float]] = []   # [round, objective] of every round so far

    def on_round(r: int, metrics: dict[str, Any]) -> None:
        if metrics.get(objective) is not None:
            history.append([metrics["round"], metrics[objective]])
        if metrics["round"] <= reported:
            return
        if objective not in metrics:
            raise RuntimeError(f"trial {trial_id}: round {r} reported no {objective!r} "
                               f"(got {sorted(metrics)})")
        report = {k: v for k, v in metrics.items() if v is not None}
        report["objective"] = metrics[objective]
        # what ResumableASHA replays when the search is resumed
        report["objective_history"] = json.dumps(history)
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "round.json"), "w") as fh:
                json.dump({"round": metrics["round"]}, fh)
            tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))

    # resume=True: a restored trial checks its finished steps' files before trusting them
    # (a fresh trial has none)
    opts = RunOptions(quiet=True, with_test=False, torch_threads=torch_threads,
                      attention_actors=attention_actors, on_round=on_round,
                      max_failures=max_failures, early_training=False)
    Run(store, out, cfg, opts).execute(resume=True)


# --------------------------------------------------------------------------- the search


class ResumableASHA(AsyncHyperBandScheduler):
    """ASHA whose rung records survive ``Tuner.restore``.

    Tune restores a search's trials but builds its scheduler afresh from the pickled
    original, so after ``--resume`` ASHA's rungs would start empty: results reported before
    the interrupt would set no cutoff and a poor trial reporting first after it would go
    on (seen: an interrupted 3-trial search stopped nothing once resumed). Every round
    report carries the trial's ``objective_history`` (a JSON list of ``[round, objective]``);
    when the restored controller re-adds a trial, its past rounds are replayed into its
    bracket in order, as if they had just been reported.
    """

    def on_trial_add(self, tune_controller, trial) -> None:
        super().on_trial_add(tune_controller, trial)
        past = json.loads((trial.last_result or {}).get("objective_history") or "[]")
        bracket = self._trial_info[trial.trial_id]
        for round_index, value in past:
            bracket.on_result(trial, round_index, self._metric_op * value)


class Progress(tune.Callback):
    """One line per round report and per finished trial (Tune's own tables are off)."""

    def __init__(self, objective: str, rounds: int, quiet: bool):
        self.objective, self.rounds, self.quiet = objective, rounds, quiet
        self.last: dict[str, int] = {}

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.last[trial.trial_id] = int(result.get("round", 0))
        extra = "  ".join(f"{k} {result[k]:.3f}" for k in REPORTED
                          if k in result and k != self.objective)
        log(f"  trial {trial.trial_id} round {result.get('round')}: "
            f"{self.objective} {result['objective']:.3f}  {extra}  "
            f"({result.get('seconds', 0):.0f} s)", self.quiet)

    def on_trial_complete(self, iteration, trials, trial, **info):
        done = self.last.get(trial.trial_id, 0)
        planned = trial.config.get("rounds", self.rounds)  # rounds may be searched
        how = "finished" if done >= planned else f"stopped by ASHA after round {done}"
        left = sum(t.status in ("PENDING", "RUNNING") for t in trials) - 1
        log(f"  trial {trial.trial_id} {how} ({max(0, left)} pending or running)", self.quiet)

    def on_trial_error(self, iteration, trials, trial, **info):
        log(f"  trial {trial.trial_id} FAILED: see {trial.local_path}", self.quiet)


def _trainable(meta: dict[str, Any]):
    fn = tune.with_parameters(tune_trial, store=meta["store"], root=meta["root"],
                              base=meta["base"], objective=meta["settings"]["objective"],
                              torch_threads=meta["torch_threads"],
                              attention_actors=meta["attention_actors"],
                              max_failures=meta.get("max_failures", 0))
    # The trial's driver holds no CPU: its trainers, tasks and actors ask for their own,
    # outside the trial's placement group. Not even 0.01 CPU: on a 2-CPU node that leaves
    # 0.99 beside a 1-CPU Ray Data actor, too little for the 1-CPU read task the actor
    # waits for (a deadlock seen on a 2 x 2-CPU cluster). Tune refuses an empty bundle,
    # so it asks for 1 MiB of memory instead.
    return tune.with_resources(fn, {"cpu": 0, "memory": 2**20})


def run_tune(store: str, out: str, base: RunConfig | None, space: dict[str, dict] | None,
             settings: TuneSettings | None, resume: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a search into ``out``; returns ``summary.json``'s content. One
    search at a time writes ``out`` (:mod:`acl_dist.locks`)."""
    from . import locks

    with locks.exclusive(fsutil.absolute(out), "tune --resume" if resume else "tune", quiet):
        return _start_tune(store, out, base, space, settings, resume, quiet)


def _start_tune(store: str, out: str, base: RunConfig | None, space: dict[str, dict] | None,
                settings: TuneSettings | None, resume: bool, quiet: bool) -> dict[str, Any]:
    from .ray_start import init_ray

    planned = None
    if not resume:
        # planned before Ray starts (the plan needs no instance): a search one of whose
        # trials cannot be placed is refused with nothing started
        assert base is not None and settings is not None and space is not None
        planned = _plan_new_search(fsutil.absolute(store), fsutil.absolute(out), base, space,
                                   settings, quiet)
    init_ray(quiet=quiet)
    # Tune warns (three lines) whenever two experiment snapshots fall within 5 s, i.e.
    # after nearly every round report of short trials; a search saves its state after
    # each report on purpose (--resume). Its own switch, unless the user set it.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune's default reporter prints an experiment banner and a TensorBoard hint into
    # Ray's temp dir even at verbose=0; the legacy one at verbose=0 prints nothing (our
    # Progress callback reports the trials)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Absolute paths, and a driver cwd that nothing replaces: in a job the cwd is the
    # runtime env's working_dir, which a runtime-env agent sharing the node's disk may
    # re-extract (seen with two Ray nodes on one machine); Tune's listing of an s3://
    # experiment (os.path.relpath) then fails on the vanished cwd.
    out, store = fsutil.absolute(out), fsutil.absolute(store or None)
    try:
        previous: str | None = os.getcwd()
    except FileNotFoundError:  # already replaced under us (see above)
        previous = None
    os.chdir(tempfile.gettempdir())
    try:
        return _run_tune(store, out, planned, settings, quiet)
    finally:
        try:
            if previous is not None:
                os.chdir(previous)
        except OSError:  # it vanished (see above)
            pass


def plan_tune(store: str, out: str, base: RunConfig, space: dict[str, dict],
              settings: TuneSettings, quiet: bool = False) -> dict[str, Any]:
    """A new search's plan (``acl-dist tune --plan``), as it would be saved in
    ``EXP/tune.json``, with ``label_use``: the base config resolved against the store and
    the cluster, trials at a time and why, what the autoscaler would be asked for. Starts
    no trial, no local Ray instance (:func:`acl_dist.ray_start.planning_capacity`) and
    writes nothing."""
    from .tune_results import label_use

    # the warnings are among the printed lines (describe_tune_plan)
    meta = _plan_new_search(fsutil.absolute(store), fsutil.absolute(out), base, space,
                            settings, quiet, warn=False)
    return {**meta, "label_use": label_use(base.mode, settings.objective)}


def _plan_new_search(store: str, out: str, base: RunConfig, space: dict[str, dict],
                     settings: TuneSettings, quiet: bool, warn: bool = True
                     ) -> dict[str, Any]:
    """:func:`_plan_search` for a new search into ``out``, which must hold none."""
    if fsutil.exists(fsutil.join(out, "tune.json")):
        raise ConfigError(f"{out} already holds a search; use --resume or another --out")
    return _plan_search(store, out, base, space, settings, quiet, warn)


def describe_tune_plan(meta: dict[str, Any]) -> list[str]:
    """The lines ``acl-dist tune --plan`` prints."""
    s, b = meta["settings"], meta["base"]
    t = b["train"]
    return [f"search plan on {meta['capacity']}:",
            f"  {s['num_samples']} trial(s) by {s['search']} over {', '.join(meta['space'])};"
            f" {meta['concurrent']} at a time ({meta['resources']})",
            f"  each trial: {b['mode']} ACL, up to {meta['max_rounds']} round(s) (ASHA, grace "
            f"{s['grace_period']}, reduction {s['reduction_factor']}), {t['workers']} Ray "
            f"Train worker(s) on {'GPU' if t['use_gpu'] else 'CPU'}s, {t['steps']} steps of "
            f"{t['batch_size']} videos per round",
            f"  objective {s['objective']}; validation: {meta['validation']}",
            f"  on a cluster: {len(meta['request'])} bundle(s) asked of the autoscaler "
            f"first; trial failures retried: {meta['max_failures']}",
            f"  {meta['label_use']}"] + [f"warning: {w}" for w in meta.get("warnings", [])]


def _plan_search(store: str, out: str, base: RunConfig, space: dict[str, dict],
                 settings: TuneSettings, quiet: bool, warn: bool = True) -> dict[str, Any]:
    """A new search's plan (``EXP/tune.json``): the validation split, the base config
    resolved against the store and the cluster, trials at a time and their threads.

    A search one of whose trials (the base config, or any searched value over it) cannot
    be placed on the capacity is refused (:func:`acl_dist.plan.check_placement`): its
    trials would wait forever. Trials that fit one at a time are only run fewer at once.
    Sizes far beyond the method's get ``warnings`` (logged with ``warn``).

    Long because the plan is one record built in steps that each read the last (split,
    resolved config, placement of every searched value, trials at a time, warnings)."""
    from .plan import check_placement, resolve_config, size_warnings, worker_resources
    from .ray_start import planning_capacity
    from .store import FeatureStore

    if settings.objective not in OBJECTIVES:
        raise ConfigError(f"objective {settings.objective!r}: one of {OBJECTIVES}")
    if base.mode == "weak" and settings.objective != "val_map":
        raise ConfigError("weak mode has no clustering: tune it with --objective val_map")
    fs = FeatureStore.open(store)
    user_config = to_dict(base)   # what best_config.yaml builds on (no held-out split)
    note = None
    if not base.val_subset and not base.val_fraction:
        base = config_with({"val_fraction": settings.val_fraction}, to_dict(base))
        note = (f"the store has no validation subset: {settings.val_fraction:.0%} of the "
                f"training videos are held out by a seeded hash of their ids (crc32 of "
                f"'seed:video_id') and never trained or clustered on")
        log(note, quiet)
    # sized to what the cluster can hold (an autoscaling cluster's node types), as a run
    capacity = planning_capacity(quiet)
    cpus = capacity.max_cpus if capacity.on_cluster else capacity.cpus
    physical = capacity.sizing_cpus()
    resolved = resolve_config(base, fs, cpus=physical, gpus=capacity.max_gpus)
    # a trial trains on the training subset less its held-out share (about: a seeded hash)
    videos = max(1, int(fs.num_videos(resolved.train_subset) * (1 - resolved.val_fraction)))
    check_placement(resolved, capacity, "each trial")
    warnings = size_warnings(resolved, videos)
    for key, dim in space.items():  # every searched value must resolve and fit too
        for value in next(iter(dim.values())):
            trial = config_with({key: value}, to_dict(resolved))
            check_placement(trial, capacity, f"a trial with {key}={value}")
            warnings += [w for w in size_warnings(trial, videos) if w not in warnings]
    if warn:
        for line in warnings:
            log(f"warning: {line}", quiet)
    concurrent, why = concurrent_trials(resolved, cpus, capacity.max_gpus,
                                        settings.max_concurrent)
    rounds_dim = space.get("rounds")
    tc = resolved.train
    worker = worker_resources(resolved)
    return {"store": store, "root": out, "settings": asdict(settings), "space": space,
            "user_config": user_config, "base": to_dict(resolved),
            "capacity": capacity.describe(),
            # what the autoscaler is asked for before the trials start: every concurrent
            # trial's workers and its CPU for Ray Data and clustering
            "request": [dict(worker) for _ in range(concurrent * tc.workers)]
            + [{"CPU": 1.0} for _ in range(concurrent)],
            "max_failures": resources.default_max_failures(),
            "concurrent": concurrent, "resources": why,
            "max_rounds": max(next(iter(rounds_dim.values()))) if rounds_dim
            else resolved.rounds,
            "torch_threads": resources.torch_threads(physical, concurrent * tc.workers),
            # a trial's attention pass: one actor per GPU it trains on, else one
            "attention_actors": max(1, tc.workers) if tc.use_gpu else 1,
            "validation": note or "the run config's validation split",
            "warnings": warnings,
            "started": time.strftime("%Y-%m-%d %H:%M:%S")}


def _new_tuner(meta: dict[str, Any], settings: TuneSettings, quiet: bool):
    """The Tuner of a new search planned by :func:`_plan_search`."""
    concurrent, max_rounds = meta["concurrent"], meta["max_rounds"]
    log(f"searching {', '.join(meta['space'])} by {settings.search}: {settings.num_samples} "
        f"trial(s), {concurrent} at a time ({meta['resources']}); objective "
        f"{settings.objective}, ASHA over {max_rounds} rounds (grace {settings.grace_period})",
        quiet)
    sched = ResumableASHA(time_attr="round", max_t=max_rounds,
                          grace_period=settings.grace_period,
                          reduction_factor=settings.reduction_factor)
    return tune.Tuner(
        _trainable(meta),
        param_space=tune_param_space(meta["space"], settings.search),
        tune_config=tune.TuneConfig(
            metric="objective", mode="max", num_samples=settings.num_samples,
            # random/grid: the variant generator carries the limit (make_searcher)
            max_concurrent_trials=None if settings.search in ("random", "grid")
            else concurrent, scheduler=sched,
            search_alg=make_searcher(settings, concurrent),
            trial_dirname_creator=_trial_dirname),
        run_config=tune.RunConfig(
            name="tune", storage_path=meta["root"], verbose=0,
            # a trial whose node was preempted restarts from its last round report
            failure_config=tune.FailureConfig(max_failures=meta.get("max_failures", 0)),
            callbacks=[Progress(settings.objective, meta["base"]["rounds"], quiet)],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))


def _fit_scaled(tuner, meta: dict[str, Any], quiet: bool):
    """``tuner.fit()``; on a cluster, after asking the autoscaler for the concurrent
    trials' resources and waiting for them (the request is withdrawn at the end)."""
    from . import ray_start

    if not (resources.on_a_cluster() and meta.get("request")):
        return tuner.fit()
    with ray_start.capacity_held(meta["request"], resources.SCALE_TIMEOUT_S, quiet):
        return tuner.fit()


def _run_tune(store: str, out: str, planned: dict[str, Any] | None,
              settings: TuneSettings | None, quiet: bool) -> dict[str, Any]:
    """A new search of plan ``planned`` (:func:`_plan_new_search`), or with None the
    search saved in ``out`` resumed."""
    meta_path = fsutil.join(out, "tune.json")
    exp_path = fsutil.join(out, "tune")
    if planned is None:
        if not fsutil.exists(meta_path):
            raise ConfigError(f"--resume: {out} holds no search (no tune.json)")
        meta = fsutil.read_json(meta_path)
        if store and store != meta["store"]:
            raise ConfigError(f"--resume: {out} searched {meta['store']}, not {store}")
        log(f"resuming the search in {out}", quiet)
        tuner = tune.Tuner.restore(exp_path, trainable=_trainable(meta),
                                   resume_unfinished=True, resume_errored=True)
    else:
        assert settings is not None
        meta = planned
        fsutil.write_json_atomic(meta_path, meta)
        tuner = _new_tuner(meta, settings, quiet)
    started = time.perf_counter()
    results = _fit_scaled(tuner, meta, quiet)
    log(f"search finished in {time.perf_counter() - started:.0f} s", quiet)
    summary = summarize(results, meta, saved_status(exp_path))
    summary["interrupted"] = bool(summary["unfinished"] or summary["not_started"])
    write_results(out, summary, meta)
    if summary["interrupted"]:
        log(f"search interrupted: {len(summary['unfinished'])} trial(s) unfinished, "
            f"{summary['not_started']} not started; continue it with: "
            f"acl-dist tune --resume {out}", quiet)
    return summary
