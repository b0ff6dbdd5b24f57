"""The config system: presets, YAML, dotted overrides, validation, sizing to the store."""

from __future__ import annotations

import pytest
import yaml

from acl_dist.config import (RunConfig, from_dict, load_config, parse_override, preset_names,
                             to_dict, to_yaml)
from acl_dist.errors import ConfigError


def test_defaults_and_round_trip():
    cfg = RunConfig()
    assert cfg.loss.lambda_sep == 1.0 and cfg.loss.lambda_trip == 1.0  # both on by default
    assert cfg.train.videos_per_cluster == 2 and cfg.model.dilations == (1, 1)
    again = from_dict(RunConfig, yaml.safe_load(to_yaml(cfg)))
    assert again == cfg


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads(name):
    cfg = load_config(name)
    assert isinstance(cfg, RunConfig)
    assert from_dict(RunConfig, to_dict(cfg)) == cfg


def test_paper_preset_is_the_paper_schedule():
    cfg = load_config("paper")
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.lr) == (30005, 32, 1e-3)
    assert cfg.cluster.descriptor == "attention" and cfg.loss.cls_reduction == "sum"
    assert cfg.train.max_len == 0 and cfg.rounds == 4  # 0: whole videos
    assert cfg.model.fusion == "late" and cfg.model.global_context   # the paper's network
    assert cfg.model.dilations == (2, 3)
    assert cfg.model.base_kernel == 3 and cfg.model.local_kernel == 3
    assert cfg.train.sampling == "replacement"                       # the paper's sampler
    loc = cfg.localize                                               # and localisation
    assert (loc.frame_rate, loc.smoothing, loc.dilation_frames) == (True, "savgol", 20)
    assert not loc.keep_top_class and loc.max_per_video == 0
    assert loc.thresholds == tuple(round(0.1 * i, 1) for i in range(1, 11))
    assert (loc.class_threshold, loc.video_score) == (0.1, "added")      # the paper's gate
    assert loc.max_classes == 0 and cfg.cluster.graph == "dense"
    for preset in ("anet12", "anet13"):     # C = 100-200: each class passing is localised
        anet = load_config(preset).localize
        assert (anet.class_threshold, anet.video_score, anet.max_classes) == (0.1, "added", 0)
    default = load_config().model                                    # acl-dist's defaults
    assert default.fusion == "early" and (default.base_kernel, default.local_kernel) == (1, 1)
    ours = load_config()
    assert ours.train.sampling == "epoch" and not ours.localize.frame_rate
    assert ours.localize.keep_top_class and ours.localize.max_per_video == 200
    assert (ours.localize.class_threshold, ours.localize.video_score) == (0.001, "multiplied")


@pytest.mark.parametrize("key", ["base_kernel", "local_kernel"])
@pytest.mark.parametrize("kernel", ["0", "2"])
def test_an_even_or_empty_kernel_is_refused(key, kernel):
    with pytest.raises(ConfigError, match=f"model.{key}"):
        load_config(None, [f"model.{key}={kernel}"])


def test_layering_file_then_flags_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 7\ntrain:\n  lr: 0.01\n  steps: 5\n")
    cfg = load_config(str(path), ["train.lr=3e-4", "loss.lambda_trip=0", "localize.thresholds=[0.5]"],
                      rounds=2, mode="weak")
    assert cfg.rounds == 2 and cfg.mode == "weak"
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 5
    assert cfg.loss.lambda_trip == 0.0 and cfg.localize.thresholds == (0.5,)
    assert load_config(None, ["train.max_len=null"]).train.max_len is None


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "unknown config key 'train.lrr'"),
    ("bogus=1", "unknown config key 'bogus'"),
    ("train.steps=1.5", "train.steps: expected an integer"),
    ("train.steps=true", "train.steps: expected an integer"),
    ("mode=semi", "mode: 'semi' is not one of"),
    ("model.dilations=[1, 2, 3]", "model.dilations: expected 2 values"),
    ("train=3", "train: expected a mapping"),
    ("loss.neg_cap=abc", "loss.neg_cap: expected a number"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_parse_override_and_bad_files(tmp_path):
    assert parse_override("a.b.c=0.001") == {"a": {"b": {"c": 1e-3}}}
    assert load_config(None, ["train.lr=1e-3"]).train.lr == 1e-3  # YAML 1.1 reads a string
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.lr")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(str(bad))
    with pytest.raises(Exception, match="no such file"):
        load_config(str(tmp_path / "missing.yaml"))


def test_resolve_config_sizes_to_the_store(tiny_store):
    from acl_dist.plan import default_subsets, resolve_config
    from acl_dist.store import FeatureStore

    store = FeatureStore.open(tiny_store[0])
    assert default_subsets(store) == ("validation", "test")
    cfg = resolve_config(RunConfig(), store, cpus=2, gpus=0)
    assert cfg.num_classes == 4 and cfg.train_subset == "validation"
    assert cfg.train.workers == 1 and cfg.train.use_gpu is False
    assert cfg.train.steps >= 150 and 8 <= cfg.train.batch_size <= 32 and cfg.tiou == "thumos"
    assert cfg.train.max_len == 256  # CPU: crops; GPU: whole videos
    gpu = resolve_config(RunConfig(), store, cpus=64, gpus=8)
    # one worker per GPU, but at most batch // K = 8 // 2 (each worker samples a pair)
    assert gpu.train.workers == 4 and gpu.train.use_gpu is True and gpu.train.max_len == 0
    weak = resolve_config(RunConfig(mode="weak", rounds=5), store, cpus=2)
    assert weak.rounds == 1
    with pytest.raises(ConfigError, match="weak mode trains on the store's 4 classes"):
        resolve_config(RunConfig(mode="weak", num_classes=7), store, cpus=2)
    with pytest.raises(ConfigError, match="subset 'nope'"):
        resolve_config(RunConfig(train_subset="nope"), store, cpus=2)


def test_config_reference_is_generated_and_current():
    from pathlib import Path

    from acl_dist.configdoc import render

    text = render()
    assert "| `train.lr_decay` | `float` | `0.1` | after this fraction" in text
    assert "|  |" not in text  # every field documented
    doc = Path(__file__).resolve().parents[1] / "docs" / "config.md"
    assert doc.read_text() == text, "docs/config.md is stale: python -m acl_dist.configdoc"


def test_a_run_saved_before_video_score_keeps_the_papers_scoring(tmp_path):
    """A run directory written before ``localize.video_score`` existed holds its whole
    resolved config (gate 0.1) without the key: read back, it scores segments as it did
    (``added``), not with the later default; a saved key is read as saved."""
    from acl_dist.artifacts import RunDir

    saved = to_dict(load_config(None, ["localize.class_threshold=0.1"], mode="weak"))
    del saved["localize"]["video_score"], saved["localize"]["max_classes"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    cfg = RunDir(str(tmp_path)).read_config()
    assert (cfg.localize.class_threshold, cfg.localize.video_score) == (0.1, "added")
    assert cfg.localize.max_classes == 0
    saved["localize"]["video_score"] = "multiplied"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert RunDir(str(tmp_path)).read_config().localize.video_score == "multiplied"
