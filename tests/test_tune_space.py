"""The search space, the resource bound, the validation split and the results of a search:
the pure parts of ``acl-dist tune`` (the search itself is in test_tune.py)."""

from __future__ import annotations

import numpy as np
import pytest

from acl_dist.clustering import silhouette
from acl_dist.config import RunConfig, to_dict, with_updates
from acl_dist.errors import ConfigError
from acl_dist.plan import holdout_split
from acl_dist.config import TuneSettings
from acl_dist.tune import ResumableASHA, concurrent_trials
from acl_dist.tune_results import best_config, best_row, expected_trials, rank_correlations, \
    trials_table
from acl_dist.tune_space import (config_with, load_space, make_searcher, tune_param_space,
                                 validate_space)


def test_default_space_searches_z_k_and_the_loss_weights():
    space = load_space()
    assert set(space) == {"train.clusters_per_batch", "train.videos_per_cluster",
                          "loss.lambda_sep", "loss.lambda_trip"}


@pytest.mark.parametrize("space, message", [
    ({"train.clusters": {"choice": [2]}}, "unknown config key 'train.clusters'"),
    ({"train.clusters_per_batch": {"choice": ["x"]}}, "expected an integer"),
    ({"loss.lambda_sep": {"gaussian": [0, 1]}}, "unknown kind 'gaussian'"),
    ({"loss.lambda_sep": {"uniform": [1.0, 0.5]}}, "low < high"),
    ({"loss.lambda_sep": {"loguniform": [0.0, 1.0]}}, "low > 0"),
    ({"loss.lambda_sep": {"choice": []}}, "needs a list"),
    ({"loss.lambda_sep": 0.5}, "expected one of"),
    ({}, "non-empty mapping"),
])
def test_bad_spaces_are_refused_naming_the_key(space, message):
    with pytest.raises(ConfigError, match=message):
        validate_space(space, "space.yaml")


def test_space_from_a_file(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("train.lr: {loguniform: [1.0e-4, 1.0e-2]}\nrounds: {grid: [2, 3]}\n")
    space = load_space(str(path))
    assert space == {"train.lr": {"loguniform": [1e-4, 1e-2]}, "rounds": {"grid": [2, 3]}}


def test_param_space_per_searcher():
    from ray.tune.search.sample import Categorical, Float

    space = {"train.clusters_per_batch": {"choice": [2, 4]},
             "loss.lambda_sep": {"loguniform": [0.1, 3.0]}, "rounds": {"grid": [2, 3]}}
    ps = tune_param_space(space, "random")
    assert isinstance(ps["train.clusters_per_batch"], Categorical)
    assert isinstance(ps["loss.lambda_sep"], Float)
    assert ps["rounds"] == {"grid_search": [2, 3]}
    with pytest.raises(ConfigError, match="--search grid: loss.lambda_sep is loguniform"):
        tune_param_space(space, "grid")
    grid = tune_param_space({"train.clusters_per_batch": {"choice": [2, 4]}}, "grid")
    assert grid == {"train.clusters_per_batch": {"grid_search": [2, 4]}}
    with pytest.raises(ConfigError, match="--search optuna: rounds is a grid"):
        tune_param_space(space, "optuna")


def test_expected_trials_count_grids():
    space = {"rounds": {"grid": [2, 3]}, "train.clusters_per_batch": {"choice": [2, 4, 8]},
             "loss.lambda_sep": {"uniform": [0.1, 1.0]}}
    assert expected_trials({"search": "random", "num_samples": 4}, space) == 8
    grid = {k: v for k, v in space.items() if k != "loss.lambda_sep"}
    assert expected_trials({"search": "grid", "num_samples": 2}, grid) == 12
    assert expected_trials({"search": "optuna", "num_samples": 5}, space) == 5


def test_searchers_limit_concurrency():
    from ray.tune.search import BasicVariantGenerator
    from ray.tune.search.optuna import OptunaSearch

    # Tune ignores max_concurrent_trials for an explicit variant generator: it must carry it
    random = make_searcher(TuneSettings(search="random"), max_concurrent=2)
    assert isinstance(random, BasicVariantGenerator) and random.max_concurrent == 2
    # the model-based searcher installs (test extra) and is wrapped by Tune's limiter
    assert isinstance(make_searcher(TuneSettings(search="optuna", seed=3), 2), OptunaSearch)


def test_overrides_apply_to_a_base_config():
    base = to_dict(with_updates(RunConfig(), train={"steps": 50}))
    cfg = config_with({"train.clusters_per_batch": 8, "loss.lambda_trip": 0.25}, base)
    assert cfg.train.clusters_per_batch == 8 and cfg.loss.lambda_trip == 0.25
    assert cfg.train.steps == 50


def _resolved(workers: int, cpw: float, use_gpu: bool = False) -> RunConfig:
    return with_updates(RunConfig(), train={"workers": workers, "cpus_per_worker": cpw,
                                            "use_gpu": use_gpu})


@pytest.mark.parametrize("workers, cpw, cpus, gpus, use_gpu, wanted, expect", [
    (1, 1.0, 4, 0, False, None, 2),    # this machine's local Ray: 2 trials of 1 + 1 CPUs
    (1, 1.0, 4, 0, False, 8, 2),       # asking for more never oversubscribes
    (1, 1.0, 4, 0, False, 1, 1),
    (2, 0.5, 2, 0, False, None, 1),    # 2 real CPUs: one trial of 2 x 0.5 + 1
    (16, 1.0, 64, 0, False, None, 3),  # a 64-CPU cluster with 16-worker trials
    (1, 1.0, 64, 4, True, None, 4),    # 4 GPUs, one GPU per trial
    (2, 1.0, 64, 4, True, None, 2),
    (8, 1.0, 4, 0, False, None, 1),    # never below one
])
def test_concurrent_trials_fit_the_cluster(workers, cpw, cpus, gpus, use_gpu, wanted, expect):
    n, why = concurrent_trials(_resolved(workers, cpw, use_gpu), cpus, gpus, wanted)
    assert n == expect and why
    if not use_gpu and n > 1:  # trials x (workers x cpw + 1) within the cluster's CPUs
        assert n * (workers * cpw + 1) <= cpus


def test_holdout_split_is_seeded_stable_and_sized():
    ids = [f"video_validation_{i:07d}" for i in range(2000)]
    held = holdout_split(ids, 0.2, seed=0)
    assert 0.17 < len(held) / len(ids) < 0.23
    assert holdout_split(list(reversed(ids)), 0.2, seed=0) == held  # order-free
    assert holdout_split(ids[:500], 0.2, seed=0) == held & set(ids[:500])  # per-id rule
    assert holdout_split(ids, 0.2, seed=1) != held
    assert holdout_split(ids, 0.0) == set()
    with pytest.raises(ConfigError):
        holdout_split(ids, 1.0)


def test_silhouette_separates_planted_clusters_from_a_random_labelling():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 4
    labels = np.repeat(np.arange(3), 30)
    x = centres[labels] + rng.normal(size=(90, 8))
    good = silhouette(x, labels)
    shuffled = silhouette(x, rng.permutation(labels))
    assert good > 0.5 and abs(shuffled) < 0.1
    assert silhouette(x, np.zeros(90, int)) is None
    # the sampled form agrees with the exact one on large inputs
    assert abs(silhouette(x, labels, max_videos=60) - good) < 0.1


def _row(trial, objective, rounds, val, sil, stab, stopped=False, error=None, z=4):
    hist = [{"round": r + 1, "objective": objective, "val_map": val + r, "silhouette": sil,
             "stability": stab} for r in range(rounds)]
    return {"trial": trial, "train.clusters_per_batch": z, "rounds": rounds,
            "stopped_early": stopped, "unfinished": False, "error": error, "objective": objective,
            "val_map": val + rounds - 1, "val_map50": None, "nmi": None, "silhouette": sil,
            "stability": stab, "seconds": 10.0, "history": hist}


def test_best_trial_ran_every_round_and_correlations_rank_across_trials():
    rows = [_row("a", 5.0, 2, 5.0, 0.1, 0.5, z=2), _row("b", 9.0, 1, 9.0, 0.3, 0.6, True),
            _row("c", 7.0, 2, 7.0, 0.2, 0.7, z=8), _row("d", None, 0, 0, 0, 0, error="boom")]
    best = best_row(rows)
    assert best["trial"] == "c"  # b scored higher but was stopped after round 1
    rc = rank_correlations(rows)
    # silhouette orders a < c < b exactly as val_map does at round 1
    assert rc["silhouette_round1"]["spearman"] == pytest.approx(1.0)
    assert rc["silhouette_round1"]["reports"] == 3
    assert "silhouette_round2" not in rc           # only 2 trials reached round 2
    # every report, as (silhouette, val_map): a (0.1, 5) (0.1, 6), c (0.2, 7) (0.2, 8),
    # b (0.3, 9): ranks x = 1.5 1.5 3.5 3.5 5 (ties share), y = 1 2 3 4 5; centred,
    # sum dx*dy = 9, sum dx^2 = 9, sum dy^2 = 10: rho = 9 / sqrt(90)
    assert rc["stability_all"]["reports"] == 5
    assert rc["silhouette_all"]["spearman"] == pytest.approx(9 / 90 ** 0.5)
    summary = {"space": {"train.clusters_per_batch": {"choice": [2, 4, 8]}}, "trials": rows,
               "best": best, "objective": "val_map", "rank_correlation": rc}
    table = trials_table(summary)
    assert "1 (stopped)" in table and "(error)" in table and "best: c" in table
    meta = {"space": summary["space"], "user_config": to_dict(RunConfig()),
            "base": to_dict(with_updates(RunConfig(rounds=2), train={"steps": 40,
                                                                     "batch_size": 8}))}
    cfg = best_config(meta, best)
    assert cfg.train.clusters_per_batch == 8 and cfg.train.steps == 40 and cfg.rounds == 2
    assert cfg.train.workers is None  # resources are sized anew by the rerun


def _asha(cls):
    sched = cls(time_attr="round", max_t=2, grace_period=1, reduction_factor=2)
    assert sched.set_search_properties("objective", "max", config={})
    return sched


def _trial(trial_id: str, last_result: dict | None = None):
    from types import SimpleNamespace

    return SimpleNamespace(trial_id=trial_id, last_result=last_result or {})


def test_resumed_asha_keeps_the_cutoffs_of_rounds_reported_before_the_interrupt():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    # before the interrupt: "good" reported 30 at round 1 and 50 at round 2 (finished),
    # "poor" was running and had reported nothing
    good = {"round": 2, "objective": 50.0, "objective_history": "[[1, 30.0], [2, 50.0]]"}
    late = {"round": 1, "objective": 10.0}
    restored = _asha(ResumableASHA)
    restored.on_trial_add(None, _trial("good", good))
    restored.on_trial_add(None, _trial("poor"))
    # round 1 of "poor" is below the rung's cutoff (its only record: 30): stopped
    assert restored.on_trial_result(None, _trial("poor"), late) == TrialScheduler.STOP
    # Tune's own ASHA, rebuilt empty on restore, would have let it go on
    plain = _asha(ASHAScheduler)
    plain.on_trial_add(None, _trial("good", good))
    plain.on_trial_add(None, _trial("poor"))
    assert plain.on_trial_result(None, _trial("poor"), late) == TrialScheduler.CONTINUE
    # replayed rounds are recorded once, at their own rung, with their own values
    assert restored._brackets[0]._rungs[-1] == (1, {"good": 30.0, "poor": 10.0})


def test_validation_split_of_a_run(tiny_store, tmp_path):
    """Held-out videos leave the training set (and its labels); the test subset stays."""
    from acl_dist.pipeline import Run, RunOptions
    from acl_dist.plan import resolve_config
    from acl_dist.store import FeatureStore

    store, _ = tiny_store
    fs = FeatureStore.open(store)
    cfg = resolve_config(RunConfig(num_classes=4, val_fraction=0.25), fs, cpus=2)
    run = Run(store, str(tmp_path / "run"), cfg, RunOptions(quiet=True))
    train_ids = {m.video_id for m in run.split.train}
    assert run.split.val_ids and not run.split.val_ids & train_ids
    assert len(run.split.val_ids) + len(train_ids) == fs.num_videos(cfg.train_subset)
    assert run.split.val_ids == holdout_split(train_ids | run.split.val_ids, 0.25, cfg.seed)
    assert "held out (crc32 rule, val_fraction 0.25, seed 0)" in run.split.val_source
    weak = Run(store, str(tmp_path / "weak"), resolve_config(
        RunConfig(mode="weak", val_fraction=0.25), fs, cpus=2), RunOptions(quiet=True))
    assert set(weak.split.weak_labels) == train_ids   # the training workers' videos

    with pytest.raises(ConfigError, match="is the test subset"):
        resolve_config(RunConfig(num_classes=4, val_subset="test"), fs, cpus=2)
    with pytest.raises(ConfigError, match="not in the store"):
        resolve_config(RunConfig(num_classes=4, val_subset="holdout"), fs, cpus=2)
    with pytest.raises(ConfigError, match=r"val_fraction: must be >= 0 and <= 0.5"):
        RunConfig(num_classes=4, val_fraction=0.9)
    tiny = resolve_config(RunConfig(num_classes=4, val_fraction=0.001), fs, cpus=2)
    with pytest.raises(ConfigError, match="validation split is empty"):
        Run(store, str(tmp_path / "empty"), tiny, RunOptions(quiet=True))


@pytest.mark.ray
def test_optuna_search_samples_valid_configs_from_the_space(ray_session, tmp_path):
    """The model-based searcher end to end in Tune (a stand-in trial that only builds the
    config and reports): our space converts for Optuna, Tune wraps it in its concurrency
    limiter, and every sample is a valid run config inside the space."""
    from ray import tune

    space = load_space()
    settings = TuneSettings(search="optuna", num_samples=3, seed=0)

    def trial(config):
        cfg = config_with(config)
        tune.report({"objective": cfg.loss.lambda_sep + cfg.train.videos_per_cluster})

    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": 0, "memory": 2**20}),
        param_space=tune_param_space(space, "optuna"),
        tune_config=tune.TuneConfig(metric="objective", mode="max", num_samples=3,
                                    max_concurrent_trials=1,
                                    search_alg=make_searcher(settings, 1)),
        run_config=tune.RunConfig(name="optuna", storage_path=str(tmp_path), verbose=0))
    results = tuner.fit()
    assert len(results) == 3 and not results.errors
    for res in results:
        c = res.config
        assert c["train.clusters_per_batch"] in (2, 4, 8)
        assert c["train.videos_per_cluster"] in (2, 3, 4)
        assert 0.1 <= c["loss.lambda_sep"] <= 3.0 and 0.1 <= c["loss.lambda_trip"] <= 3.0
    assert len({res.config["loss.lambda_sep"] for res in results}) == 3


def test_trial_rows_of_an_interrupted_search_with_a_trial_never_started():
    """Ctrl-C can leave a trial that never ran: Tune gives it no config and no metrics.
    It is a row (unfinished, no values), not a crash of the summary."""
    import pandas as pd
    from types import SimpleNamespace

    from acl_dist.tune_results import trial_rows

    meta = {"base": {"rounds": 2}, "space": {"train.lr": {"grid": [1e-3, 1e-9]}}}
    ran = SimpleNamespace(path="exp/tune/t_00000", config={"train.lr": 1e-3}, error=None,
                          metrics_dataframe=pd.DataFrame([{"round": 1, "objective": 0.5}]))
    never = SimpleNamespace(path="exp/tune/t_00001", config=None, error=None,
                            metrics_dataframe=None)
    rows = trial_rows([ran, never], meta, {"t_00000": "TERMINATED", "t_00001": "PENDING"})
    assert [r["trial"] for r in rows] == ["t_00000", "t_00001"]
    assert rows[0]["train.lr"] == 1e-3 and rows[0]["rounds"] == 1 and not rows[0]["unfinished"]
    assert rows[1]["train.lr"] is None and rows[1]["rounds"] == 0 and rows[1]["unfinished"]
    assert rows[0]["stopped_early"]   # finished, error-free, fewer rounds than planned


def test_outputs_say_which_labels_a_search_used():
    from acl_dist.tune_results import label_use

    assert label_use("unsupervised", "val_map").startswith(
        "labels used for selection: trials are ranked by validation mAP")
    assert "no label reached training or clustering" in label_use("unsupervised", "val_map")
    for objective in ("silhouette", "stability"):
        assert label_use("unsupervised", objective).startswith(
            "label-free: no label reached training, clustering or selection")
    assert label_use("weak", "val_map").startswith("labels used: weak mode trains")


def test_space_values_are_checked_for_the_searchs_mode():
    """weak_labels is a weak-mode key: a weak search may tune it, an unsupervised one is
    told which key is wrong."""
    space = {"weak_labels": {"choice": ["all", "main"]}}
    assert validate_space(space, mode="weak") == space
    with pytest.raises(ConfigError, match="weak_labels: applies to weak mode only"):
        validate_space(space)
