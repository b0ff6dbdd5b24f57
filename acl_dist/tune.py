"""``acl-dist tune``: a Ray Tune search over Z, K, the loss weights (and any config key).

Each trial is one multi-round ACL run (:class:`acl_dist.pipeline.Run`) in its own run
directory. The Tune function drives the rounds; every round builds its own TorchTrainer
inside the trial (under Train V2 ``Tuner(trainer)`` fails; a Tune function that builds
trainers is the supported pattern, RAY_NOTES.md §5) and reports once per round, so ASHA can
stop a trial between rounds. Trials never see the test subset: they localise and score a
validation split (the store's ``val_subset``, or training videos held out by a seeded hash,
see :func:`acl_dist.pipeline.holdout_split`), which is also never trained or clustered on.

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
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

import yaml
from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler

from . import fsutil
from .config import (
    check_ranges,
    RunConfig,
    from_dict,
    merge,
    parse_override,
    read_yaml,
    to_dict,
    to_yaml,
)
from .errors import ConfigError
from .progress import log

OBJECTIVES = ("val_map", "silhouette", "stability")
SEARCHERS = ("random", "grid", "optuna", "hyperopt")
DIMENSION_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")
# metrics of a round report, in table order
REPORTED = ("val_map", "val_map50", "nmi", "silhouette", "stability")


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


# --------------------------------------------------------------------------- search space


def load_space(path: str | None = None) -> dict[str, dict[str, list]]:
    """The search space: ``{dotted key: {kind: values}}`` from a YAML file (local or
    ``s3://``), or the packaged default (Z, K, lambda_sep, lambda_trip)."""
    if path is None:
        text = resources.files("acl_dist").joinpath("configs", "search",
                                                     "default.yaml").read_text()
        space = yaml.safe_load(text)
    else:
        space = read_yaml(path)
    return validate_space(space, path or "the default search space")


def validate_space(space: Any, source: str = "search space") -> dict[str, dict[str, list]]:
    """Check every dimension: a known config key, one known kind, values of the key's type."""
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: expected a non-empty mapping of config keys")
    out = {}
    for key, dim in space.items():
        if not isinstance(dim, dict) or len(dim) != 1:
            raise ConfigError(f"{source}: {key}: expected one of {{{', '.join(DIMENSION_KINDS)}"
                              f"}}: [...], got {dim!r}")
        (kind, values), = dim.items()
        if kind not in DIMENSION_KINDS:
            raise ConfigError(f"{source}: {key}: unknown kind {kind!r} "
                              f"(one of {', '.join(DIMENSION_KINDS)})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: {key}: {kind} needs a list of values")
        if kind in ("uniform", "loguniform", "randint"):
            if len(values) != 2 or not values[0] < values[1]:
                raise ConfigError(f"{source}: {key}: {kind} needs [low, high] with low < high")
            if kind == "loguniform" and values[0] <= 0:
                raise ConfigError(f"{source}: {key}: loguniform needs low > 0")
        for value in values:  # every value must make a valid config
            config_with({key: value})
        out[str(key)] = {kind: list(values)}
    return out


def config_with(overrides: dict[str, Any], base: dict[str, Any] | None = None) -> RunConfig:
    """``base`` (a config dict) with dotted-key ``overrides``; errors name the key."""
    data = dict(base or {})
    for key, value in overrides.items():
        data = merge(data, parse_override(f"{key}={json.dumps(value)}"))
    return from_dict(RunConfig, data)


def tune_param_space(space: dict[str, dict[str, list]], search: str) -> dict[str, Any]:
    """Tune's ``param_space`` (flat, dotted keys) for ``search``."""
    out = {}
    for key, dim in space.items():
        (kind, values), = dim.items()
        if search == "grid":
            if kind not in ("choice", "grid"):
                raise ConfigError(f"--search grid: {key} is {kind}; give it a choice or grid")
            out[key] = tune.grid_search(values)
        elif kind == "grid":
            if search in ("optuna", "hyperopt"):
                raise ConfigError(f"--search {search}: {key} is a grid; use choice")
            out[key] = tune.grid_search(values)
        elif kind == "choice":
            out[key] = tune.choice(values)
        elif kind == "uniform":
            out[key] = tune.uniform(*values)
        elif kind == "loguniform":
            out[key] = tune.loguniform(*values)
        else:
            out[key] = tune.randint(*values)
    return out


def make_searcher(settings: TuneSettings, max_concurrent: int):
    """The search algorithm for ``settings.search``, running at most ``max_concurrent``
    trials at a time. Tune applies ``TuneConfig.max_concurrent_trials`` to a ``Searcher``
    but silently ignores it for an explicit ``BasicVariantGenerator`` (random and grid),
    which must get ``max_concurrent`` itself: without it all trials start at once and, on a
    small cluster, their Ray Data actors take every CPU and deadlock."""
    from ray.tune.search import BasicVariantGenerator

    if settings.search in ("random", "grid"):
        return BasicVariantGenerator(random_state=settings.seed, max_concurrent=max_concurrent)
    if settings.search == "optuna":
        try:
            import optuna
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ConfigError("--search optuna needs Optuna: pip install "
                              "'acl-dist[tune]'") from None
        return OptunaSearch(sampler=optuna.samplers.TPESampler(seed=settings.seed))
    try:
        from ray.tune.search.hyperopt import HyperOptSearch
    except ImportError:
        raise ConfigError("--search hyperopt needs HyperOpt: pip install hyperopt") from None
    return HyperOptSearch(random_state_seed=settings.seed)


def concurrent_trials(cfg: RunConfig, cluster_cpus: float, cluster_gpus: float,
                      wanted: int | None = None) -> tuple[int, str]:
    """How many trials fit at once, and why: each holds ``workers x cpus_per_worker`` CPUs
    (and ``workers`` GPUs) for training plus one CPU for Ray Data and the clustering task.
    Tune cannot see these (it reserves no CPU for a trial), so this bound is what keeps
    trials x workers within the cluster."""
    tc = cfg.train
    per_trial = tc.workers * tc.cpus_per_worker + 1.0
    bound = max(1, int(cluster_cpus // per_trial))
    why = (f"each trial: {tc.workers} worker(s) x {tc.cpus_per_worker:g} CPU + 1 CPU for "
           f"Ray Data and clustering = {per_trial:g} of {cluster_cpus:g} CPUs")
    if tc.use_gpu:
        by_gpu = max(1, int(cluster_gpus // max(1, tc.workers)))
        if by_gpu < bound:
            bound = by_gpu
            why = f"each trial: {tc.workers} GPU(s) of {cluster_gpus:g}"
    if wanted is not None and wanted > bound:
        log(f"--max-concurrent {wanted} would oversubscribe the cluster; using {bound} ({why})")
    return (min(wanted, bound) if wanted else bound), why


# --------------------------------------------------------------------------- one trial


def _trial_dirname(trial) -> str:  # module level: Tune pickles it with the experiment
    return trial.trial_id


def tune_trial(config: dict[str, Any], *, store: str, root: str, base: dict[str, Any],
               objective: str, torch_threads: int, attention_actors: int) -> None:
    """One trial (runs in a Tune actor): the ACL rounds with ``config``'s dotted keys over
    ``base`` (a resolved config dict), reporting each round. A restored trial resumes its
    run directory and reports only rounds not reported before."""
    from .pipeline import Run

    cfg = config_with(config, base)
    trial_id = tune.get_context().get_trial_id()
    out = fsutil.join(root, "runs", trial_id)
    reported = 0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            with open(os.path.join(d, "round.json")) as fh:
                reported = json.load(fh)["round"]
    if not fsutil.exists(fsutil.join(out, "config.yaml")):
        fsutil.write_bytes_atomic(fsutil.join(out, "config.yaml"), to_yaml(cfg).encode())
        fsutil.write_json_atomic(fsutil.join(out, "run.json"),
                                 {"store": store, "config": to_dict(cfg), "trial": trial_id})

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
    Run(store, out, cfg, quiet=True, with_test=False, torch_threads=torch_threads,
        attention_actors=attention_actors, on_round=on_round).execute(resume=True)


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
                              attention_actors=meta["attention_actors"])
    # The trial's driver holds no CPU: its trainers, tasks and actors ask for their own,
    # outside the trial's placement group. Not even 0.01 CPU: on a 2-CPU node that leaves
    # 0.99 beside a 1-CPU Ray Data actor, too little for the 1-CPU read task the actor
    # waits for (a deadlock seen on a 2 x 2-CPU cluster). Tune refuses an empty bundle,
    # so it asks for 1 MiB of memory instead.
    return tune.with_resources(fn, {"cpu": 0, "memory": 2**20})


def run_tune(store: str, out: str, base: RunConfig | None, space: dict[str, dict] | None,
             settings: TuneSettings | None, resume: bool = False,
             quiet: bool = False) -> dict[str, Any]:
    """Run (or resume) a search into ``out``; returns ``summary.json``'s content."""
    from .distributed import init_ray

    init_ray(quiet=quiet)
    # Absolute paths, and a driver cwd that nothing replaces: in a job the cwd is the
    # runtime env's working_dir, which a runtime-env agent sharing the node's disk may
    # re-extract (seen with two Ray nodes on one machine); Tune's listing of an s3://
    # experiment (os.path.relpath) then fails on the vanished cwd.
    out = out if fsutil.is_remote(out) else os.path.abspath(out)
    if store and not fsutil.is_remote(store):
        store = os.path.abspath(store)
    try:
        previous: str | None = os.getcwd()
    except FileNotFoundError:  # already replaced under us (see above)
        previous = None
    os.chdir(tempfile.gettempdir())
    try:
        return _run_tune(store, out, base, space, settings, resume, quiet)
    finally:
        try:
            if previous is not None:
                os.chdir(previous)
        except OSError:  # it vanished (see above)
            pass


def _run_tune(store: str, out: str, base: RunConfig | None, space: dict[str, dict] | None,
              settings: TuneSettings | None, resume: bool, quiet: bool) -> dict[str, Any]:
    import ray

    from .distributed import cluster_gpus
    from .pipeline import resolve_config
    from .store import FeatureStore

    meta_path = fsutil.join(out, "tune.json")
    exp_path = fsutil.join(out, "tune")
    if resume:
        if not fsutil.exists(meta_path):
            raise ConfigError(f"--resume: {out} holds no search (no tune.json)")
        meta = fsutil.read_json(meta_path)
        if store and store != meta["store"]:
            raise ConfigError(f"--resume: {out} searched {meta['store']}, not {store}")
        log(f"resuming the search in {out}", quiet)
        tuner = tune.Tuner.restore(exp_path, trainable=_trainable(meta),
                                   resume_unfinished=True, resume_errored=True)
    else:
        if fsutil.exists(meta_path):
            raise ConfigError(f"{out} already holds a search; use --resume or another --out")
        assert base is not None and settings is not None and space is not None
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
        cpus = float(ray.cluster_resources().get("CPU", 1))
        physical = cpus if os.environ.get("RAY_ADDRESS") else float(os.cpu_count() or 2)
        resolved = resolve_config(base, fs, cpus=int(physical), gpus=cluster_gpus())
        for key, dim in space.items():  # every searched value must resolve too
            for value in next(iter(dim.values())):
                config_with({key: value}, to_dict(resolved))
        concurrent, why = concurrent_trials(resolved, cpus, cluster_gpus(),
                                            settings.max_concurrent)
        rounds_dim = space.get("rounds")
        max_rounds = max(next(iter(rounds_dim.values()))) if rounds_dim else resolved.rounds
        threads = max(1, int(physical) // max(1, concurrent * resolved.train.workers))
        meta = {"store": store, "root": out, "settings": asdict(settings), "space": space,
                "user_config": user_config, "base": to_dict(resolved),
                "concurrent": concurrent, "resources": why, "max_rounds": max_rounds,
                "torch_threads": threads,
                "attention_actors": max(1, resolved.train.workers) if resolved.train.use_gpu
                else 1, "validation": note or "the run config's validation split",
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        fsutil.write_json_atomic(meta_path, meta)
        log(f"searching {', '.join(space)} by {settings.search}: {settings.num_samples} "
            f"trial(s), {concurrent} at a time ({why}); objective {settings.objective}, "
            f"ASHA over {max_rounds} rounds (grace {settings.grace_period})", quiet)
        sched = ResumableASHA(time_attr="round", max_t=max_rounds,
                              grace_period=settings.grace_period,
                              reduction_factor=settings.reduction_factor)
        tuner = tune.Tuner(
            _trainable(meta),
            param_space=tune_param_space(space, settings.search),
            tune_config=tune.TuneConfig(
                metric="objective", mode="max", num_samples=settings.num_samples,
                # random/grid: the variant generator carries the limit (make_searcher)
                max_concurrent_trials=None if settings.search in ("random", "grid")
                else concurrent, scheduler=sched,
                search_alg=make_searcher(settings, concurrent), trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name="tune", storage_path=out, verbose=0,
                callbacks=[Progress(settings.objective, resolved.rounds, quiet)],
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1)))
    started = time.perf_counter()
    results = tuner.fit()
    log(f"search finished in {time.perf_counter() - started:.0f} s", quiet)
    summary = summarize(results, meta, saved_status(exp_path))
    summary["interrupted"] = bool(summary["unfinished"] or summary["not_started"])
    write_results(out, summary, meta)
    if summary["interrupted"]:
        log(f"search interrupted: {len(summary['unfinished'])} trial(s) unfinished, "
            f"{summary['not_started']} not started; continue it with: "
            f"acl-dist tune --resume {out}", quiet)
    return summary


# --------------------------------------------------------------------------- results


def saved_status(exp_path: str) -> dict[str, str]:
    """Trial id -> status in the experiment's saved state (``TERMINATED``, ``ERROR``, or
    ``PENDING`` for a trial an interrupted search left to ``--resume``). Read back from
    storage: after Ctrl-C the in-memory trials all read ``TERMINATED``."""
    return {t.trial_id: t.status for t in tune.ExperimentAnalysis(exp_path).trials}


def expected_trials(settings: dict[str, Any], space: dict[str, dict]) -> int:
    """Trials a search makes: ``num_samples``, times every grid's size for the variant
    generator (random/grid)."""
    n = settings["num_samples"]
    if settings["search"] in ("random", "grid"):
        for dim in space.values():
            (kind, values), = dim.items()
            if kind == "grid" or settings["search"] == "grid":
                n *= len(values)
    return n


def trial_rows(results, meta: dict[str, Any], status: dict[str, str]) -> list[dict[str, Any]]:
    """One row per trial: searched values, rounds run, whether ASHA stopped it, whether it
    is unfinished (an interrupted search), last round's metrics and every round's
    (``history``). ``status``: :func:`saved_status`."""
    rows = []
    for res in results:
        df = res.metrics_dataframe
        history = [] if df is None or df.empty else [
            {k: _num(rec.get(k)) for k in ("round", "objective", *REPORTED, "seconds")}
            for rec in df.to_dict("records")]
        last = history[-1] if history else {}
        trial_id = os.path.basename(res.path.rstrip("/"))
        done = status.get(trial_id) in ("TERMINATED", "ERROR")
        planned = res.config.get("rounds", meta["base"]["rounds"])  # rounds may be searched
        row = {"trial": trial_id,
               **{k: res.config.get(k) for k in meta["space"]},
               "rounds": int(last.get("round") or 0),
               "stopped_early": done and res.error is None
               and (last.get("round") or 0) < planned,
               "unfinished": not done,
               "error": str(res.error).splitlines()[0] if res.error else None,
               **{k: last.get(k) for k in ("objective", *REPORTED, "seconds")},
               "history": history}
        rows.append(row)
    return sorted(rows, key=lambda r: r["trial"])


def _num(value: Any) -> Any:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return value
    return None if math.isnan(f) else f


def rank_correlations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Spearman correlation of each label-free score with validation mAP across trials:
    per round (``silhouette_round2``: the trials that reached round 2, compared at round 2;
    the comparison that matters when the label-free score replaces validation mAP) and
    over every report of every trial (``silhouette_all``: also rewards tracking progress
    across rounds). Only where at least 3 reports pair up."""
    from scipy.stats import spearmanr

    out: dict[str, Any] = {}
    rounds = sorted({int(rec["round"]) for row in rows for rec in row["history"]
                     if rec.get("round") is not None})
    for score in ("silhouette", "stability"):
        groups = {f"{score}_round{r}": [rec for row in rows for rec in row["history"]
                                        if rec.get("round") == r] for r in rounds}
        groups[f"{score}_all"] = [rec for row in rows for rec in row["history"]]
        for name, recs in groups.items():
            pairs = [(rec[score], rec["val_map"]) for rec in recs
                     if rec.get(score) is not None and rec.get("val_map") is not None]
            if len(pairs) >= 3:
                rho, p = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
                out[name] = {"spearman": _num(rho), "p": _num(p), "reports": len(pairs)}
    return out


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best trial by its last objective, among trials that ran every round (ASHA's
    survivors); trials stopped early only when none did."""
    ok = [r for r in rows if r["objective"] is not None and r["error"] is None
          and not r.get("unfinished")]
    full = [r for r in ok if not r["stopped_early"]]
    pool = full or ok
    return max(pool, key=lambda r: r["objective"]) if pool else None


def best_config(meta: dict[str, Any], row: dict[str, Any]) -> RunConfig:
    """The user's config with the best trial's values, and the trial's schedule (steps and
    batch) pinned so the rerun trains as the trial did; resources are sized anew."""
    values = {k: row[k] for k in meta["space"]}
    base = meta["base"]
    values["train.steps"] = base["train"]["steps"]
    values["train.batch_size"] = base["train"]["batch_size"]
    if "rounds" not in values:
        values["rounds"] = base["rounds"]
    return config_with(values, meta["user_config"])


def summarize(results, meta: dict[str, Any], status: dict[str, str]) -> dict[str, Any]:
    rows = trial_rows(results, meta, status)
    best = best_row(rows)
    return {"objective": meta["settings"]["objective"], "search": meta["settings"]["search"],
            "space": meta["space"], "validation": meta["validation"],
            "concurrent": meta["concurrent"], "resources": meta["resources"],
            "max_rounds": meta["max_rounds"], "trials": rows,
            "best": best and {k: v for k, v in best.items() if k != "history"},
            "stopped_early": sum(r["stopped_early"] for r in rows),
            "unfinished": [r["trial"] for r in rows if r["unfinished"]],
            "not_started": max(0, expected_trials(meta["settings"], meta["space"]) - len(rows)),
            "errors": sum(r["error"] is not None for r in rows),
            "rank_correlation": rank_correlations(rows)}


def trials_table(summary: dict[str, Any]) -> str:
    """The trials as a text table (also the CLI's output)."""
    keys = list(summary["space"])
    short = {k: k.split(".")[-1] for k in keys}
    cols = ["trial", *keys, "rounds", "objective", "val_map", "val_map50", "nmi",
            "silhouette", "stability", "seconds"]
    head = [short.get(c, c) for c in cols]
    lines = []
    for row in summary["trials"]:
        cells = []
        for c in cols:
            v = row.get(c)
            if c == "rounds":
                v = f"{v}{' (stopped)' if row['stopped_early'] else ''}" + \
                    (" (error)" if row["error"] else "") + \
                    (" (unfinished)" if row.get("unfinished") else "")
            cells.append("-" if v is None else (f"{v:.3g}" if isinstance(v, float) else str(v)))
        lines.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in lines)) if lines else len(h)
              for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    out = [fmt.format(*head)] + [fmt.format(*r) for r in lines]
    if summary.get("interrupted"):
        out.append(f"interrupted: {len(summary['unfinished'])} trial(s) unfinished, "
                   f"{summary['not_started']} not started; continue with "
                   "acl-dist tune --resume DIR")
    best = summary["best"]
    if best:
        out.append(f"best: {best['trial']} ({summary['objective']} {best['objective']:.3f})")
    for name, rc in summary["rank_correlation"].items():
        score, where = name.split("_", 1)
        where = "every report" if where == "all" else where.replace("round", "round ")
        rho = "undefined" if rc["spearman"] is None else f"{rc['spearman']:+.2f}"
        out.append(f"spearman({score}, val_map) at {where}: {rho} over {rc['reports']} "
                   "reports")
    return "\n".join(out)


def write_results(out: str, summary: dict[str, Any], meta: dict[str, Any]) -> None:
    """``trials.csv``, ``summary.json``, ``best_config.yaml`` and ``report.html`` in ``out``."""
    import csv
    import io

    keys = list(meta["space"])
    buf = io.StringIO()
    writer = csv.writer(buf)
    cols = ["trial", *keys, "rounds", "stopped_early", "objective", *REPORTED, "seconds",
            "error"]
    writer.writerow(cols)
    for row in summary["trials"]:
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    fsutil.write_bytes_atomic(fsutil.join(out, "trials.csv"), buf.getvalue().encode())
    fsutil.write_json_atomic(fsutil.join(out, "summary.json"), summary)
    best = summary["best"]
    if best is not None:
        cfg = best_config(meta, best)
        header = (f"# acl-dist tune: best of {len(summary['trials'])} trials by "
                  f"{summary['objective']} = {best['objective']:.4f} (trial {best['trial']}, "
                  f"{best['rounds']} rounds)\n# searched: "
                  + ", ".join(f"{k}={best[k]}" for k in keys)
                  + "\n# run it: acl-dist run --store STORE --mode "
                  f"{cfg.mode} --out RUN --config best_config.yaml\n")
        fsutil.write_bytes_atomic(fsutil.join(out, "best_config.yaml"),
                                  (header + to_yaml(cfg)).encode())
    fsutil.write_bytes_atomic(fsutil.join(out, "report.html"),
                              tune_report_html(summary).encode())


def tune_report_html(summary: dict[str, Any]) -> str:
    """A self-contained page: the trials table, and each label-free score against
    validation mAP per trial (how well the label-free objective tracks the labelled one)."""
    import base64
    import html

    from .report import _figure_png, _plt

    parts = ["<!doctype html><meta charset='utf-8'><title>acl-dist tune</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;"
             "text-align:right}table{border-collapse:collapse}tr:nth-child(even){background:"
             "#f3f3f3}</style>",
             f"<h1>acl-dist tune: {len(summary['trials'])} trials</h1>",
             f"<p>objective <b>{html.escape(summary['objective'])}</b> (higher is better), "
             f"search {html.escape(summary['search'])}, {summary['concurrent']} trial(s) at a "
             f"time ({html.escape(summary['resources'])}); validation: "
             f"{html.escape(str(summary['validation']))}. The test subset was never used.</p>",
             "<pre>" + html.escape(trials_table(summary)) + "</pre>"]
    try:
        plt = _plt()
    except ImportError:  # a minimal Ray image without matplotlib: the table alone
        return "\n".join(parts + ["<p>(plots need matplotlib)</p>"])
    for score in ("silhouette", "stability"):
        pts = [(rec[score], rec["val_map"], int(rec["round"])) for row in summary["trials"]
               for rec in row["history"]
               if rec.get(score) is not None and rec.get("val_map") is not None]
        if len(pts) < 2:
            continue
        fig, ax = plt.subplots(figsize=(4.8, 3.4))
        for r in sorted({p[2] for p in pts}):
            sel = [(a, b) for a, b, q in pts if q == r]
            ax.scatter(*zip(*sel), label=f"round {r}")
        ax.set_xlabel(f"{score} (label-free)")
        ax.set_ylabel("validation mAP (avg over tIoU)")
        rc = summary["rank_correlation"].get(f"{score}_all")
        if rc and rc["spearman"] is not None:
            ax.set_title(f"Spearman {rc['spearman']:+.2f} over {rc['reports']} reports",
                         fontsize=9)
        ax.legend(fontsize=8)
        png = base64.b64encode(_figure_png(fig)).decode()
        parts.append(f"<h2>{score} vs validation mAP, every trial and round</h2>"
                     f"<img src='data:image/png;base64,{png}'>")
    return "\n".join(parts)
