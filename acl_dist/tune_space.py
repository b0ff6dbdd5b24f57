"""The search space of ``acl-dist tune``: its YAML form (``{dotted key: {kind: values}}``),
validation, the config a point of it gives, and its Tune form and searcher (Ray Tune is
imported only there)."""

from __future__ import annotations

import json
from importlib import resources as package_files
from typing import Any

import yaml

from .config import (RunConfig, TuneSettings, choices, from_dict, merge, parse_override,
                     read_yaml)
from .errors import ConfigError

SEARCHERS = tuple(choices(TuneSettings, "search"))
DIMENSION_KINDS = ("choice", "grid", "uniform", "loguniform", "randint")


def load_space(path: str | None = None, mode: str = "unsupervised"
               ) -> dict[str, dict[str, list]]:
    """The search space: ``{dotted key: {kind: values}}`` from a YAML file (local or
    ``s3://``), or the packaged default (Z, K, lambda_sep, lambda_trip); its values checked
    for trials of ``mode``."""
    if path is None:
        text = package_files.files("acl_dist").joinpath("configs", "search",
                                                     "default.yaml").read_text()
        space = yaml.safe_load(text)
    else:
        space = read_yaml(path)
    return validate_space(space, path or "the default search space", mode)


def validate_space(space: Any, source: str = "search space", mode: str = "unsupervised"
                   ) -> dict[str, dict[str, list]]:
    """Check every dimension: a known config key, one known kind, values that make a valid
    config of ``mode`` (``weak_labels`` is a weak-mode key, for one)."""
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
            config_with({key: value}, {"mode": mode})
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
    from ray import tune

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
