"""acl-dist: unsupervised temporal action localisation (ACL, CVPR 2020) on Ray.

The public Python API (docs/api.md runs every step of it)::

    import acl_dist

    acl_dist.synthesize(acl_dist.SynthConfig(classes=4, videos=24, dim=16), "store")
    # or: acl_dist.ingest_features("npy-split", "features/", "store", gt="gt.json")
    store = acl_dist.FeatureStore.open("store")
    cfg = acl_dist.load_config("tiny", mode="weak")       # a preset, a YAML file, overrides
    plan = acl_dist.plan_run("store", cfg)                # workers, GPUs, where steps run
    metrics = acl_dist.run("store", "run", cfg)           # the rounds on Ray (resumable)
    acl_dist.predict("run", "new_store", "new_dets.json") # the final model on new videos
    result = acl_dist.evaluate_detections("store/gt.json", "run/detections.json",
                                          subset="test", tiou_thresholds=[0.5])
    page = acl_dist.build_report("run")                   # report.html
    summary = acl_dist.run_tune("store", "exp", cfg, acl_dist.load_space(),
                                acl_dist.TuneSettings(num_samples=4))

Names resolve on first use, so ``import acl_dist`` stays light (no Ray, no torch); they are
verbs distinct from the submodules (``acl_dist.plan`` is the planning module). Pure
cores (``timegrid``, ``store``, ``annotations``, ``ingest``, ``synth``, ``clustering``,
``evaluate``, ``plan``, ``resources``, ``artifacts``) import neither Ray nor
torch.distributed; the Ray layer (``ray_*``, ``pipeline``, ``tune``) sits on top of them.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

#: public name -> (module, attribute)
_API = {
    "FeatureStore": ("acl_dist.store", "FeatureStore"),
    "ingest_features": ("acl_dist.ingest", "ingest"),
    "synthesize": ("acl_dist.synth", "synthesize"),
    "SynthConfig": ("acl_dist.synth", "SynthConfig"),
    "RunConfig": ("acl_dist.config", "RunConfig"),
    "TuneSettings": ("acl_dist.config", "TuneSettings"),
    "load_config": ("acl_dist.config", "load_config"),
    "plan_run": ("acl_dist.api", "plan_run"),
    "run": ("acl_dist.pipeline", "run_acl"),
    "predict": ("acl_dist.detect", "predict"),
    "evaluate_detections": ("acl_dist.evaluate", "evaluate_detections"),
    "load_detections": ("acl_dist.evaluate", "load_detections"),
    "build_report": ("acl_dist.report", "build_report"),
    "run_tune": ("acl_dist.tune", "run_tune"),
    "load_space": ("acl_dist.tune_space", "load_space"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'acl_dist' has no attribute {name!r}")
    module, attr = _API[name]
    value = getattr(import_module(module), attr)
    globals()[name] = value      # resolved once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
