"""The per-worker training loop and inference without Ray: late and early stream fusion,
checkpoint round trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acl_dist.config import load_config
from acl_dist.infer import load_models, predict
from acl_dist.model import EARLY, StreamModels
from acl_dist.train import VideoItem, fit, make_checkpoint

DIMS = {"rgb": 5, "flow": 3}


def _cfg(fusion: str):
    return load_config("tiny", [f"model.fusion={fusion}", "train.steps=4", "train.batch_size=4",
                                "train.max_len=0", "train.clusters_per_batch=2"])


def _items(n: int = 8, classes: int = 2) -> list[VideoItem]:
    rng = np.random.default_rng(0)
    return [VideoItem(f"v{i}", {s: rng.standard_normal((6 + i, d)).astype(np.float32)
                                for s, d in DIMS.items()}, [i % classes]) for i in range(n)]


def test_early_fusion_is_one_network_on_the_concatenated_streams():
    cfg = _cfg("early").model
    torch.manual_seed(0)
    model = StreamModels(DIMS, 2, cfg).eval()
    assert list(model.nets) == [EARLY] and model.nets[EARLY].in_dim == 8
    rgb, flow = torch.randn(2, 7, 5), torch.randn(2, 7, 3)
    mask = torch.ones(2, 7, dtype=torch.bool)
    out = model({"flow": flow, "rgb": rgb}, mask)            # input order does not matter
    alone = model.nets[EARLY](torch.cat([rgb, flow], -1), mask)
    torch.testing.assert_close(out[EARLY].cas, alone.cas)
    per = model.per_stream(out)
    assert set(per) == {"rgb", "flow"} and per["rgb"] is per["flow"] is out[EARLY]
    late = StreamModels(DIMS, 2, _cfg("late").model)
    assert list(late.nets) == ["rgb", "flow"] and late.per_stream({"x": 1}) == {"x": 1}


@pytest.mark.parametrize("fusion", ["late", "early"])
def test_fit_predict_and_checkpoint_round_trip(fusion):
    cfg = _cfg(fusion)
    items = _items()
    result = fit(items, cfg, 2, DIMS)
    assert result.steps == 4 and np.isfinite(result.history[-1]["loss"])
    names = ["rgb", "flow"] if fusion == "late" else [EARLY]
    assert {k.split("/")[0] for k in result.history[-1] if "/" in k} == set(names)
    ckpt = make_checkpoint(result.state_dict, cfg, 2, DIMS, ["a", "b"], 0)
    model = load_models(ckpt)
    videos = [(it.video_id, it.features) for it in items[:3]]
    preds = predict(model, videos)
    for (vid, feats), p in zip(videos, preds):
        t = feats["rgb"].shape[0]
        assert p.video_id == vid and set(p.cas) == {"rgb", "flow"}
        assert p.cas["rgb"].shape == (t, 2) and p.attention["flow"].shape == (t,)
        cas, att, logits = p.fused(2 / 3)
        if fusion == "early":   # every stream shows the one network: fusion changes nothing
            np.testing.assert_array_equal(p.attention["rgb"], p.attention["flow"])
            np.testing.assert_allclose(cas, p.cas["rgb"], rtol=1e-6, atol=1e-6)
        else:
            np.testing.assert_allclose(cas, 2 / 3 * p.cas["rgb"] + 1 / 3 * p.cas["flow"],
                                       rtol=1e-6, atol=1e-6)
        assert att.sum() == pytest.approx(1.0, abs=1e-5)


def test_a_checkpoint_from_before_the_fusion_option_loads_as_the_papers_network():
    cfg = load_config("tiny", ["model.fusion=late", "model.global_context=true",
                               "model.base_kernel=3", "model.local_kernel=3", "train.steps=2",
                               "train.batch_size=4", "train.max_len=0"])
    result = fit(_items(4), cfg, 2, DIMS)
    ckpt = make_checkpoint(result.state_dict, cfg, 2, DIMS, ["a", "b"], 0)
    for key in ("fusion", "global_context", "base_kernel", "local_kernel"):   # as written before
        del ckpt["model_config"][key]
    model = load_models(ckpt)
    assert list(model.nets) == ["rgb", "flow"] and hasattr(model.nets["rgb"], "nonlocal_block")
    assert model.nets["rgb"].base.kernel_size == (3,)
    assert model.nets["rgb"].local.branches[0].kernel_size == (3,)


def test_training_learns_the_labels_and_a_shuffled_control_does_not(tmp_path):
    """Weak-mode training on a small synthetic store (4 classes, 24 training videos): the
    loss falls and the model names the held-out test videos' classes; the same training on
    labels shuffled across the videos learns nothing that carries to the test videos."""
    from acl_dist.store import FeatureStore
    from acl_dist.synth import SynthConfig, synthesize

    synthesize(SynthConfig(classes=4, videos=24, dim=16, seed=3, difficulty=0.5),
               str(tmp_path / "store"), quiet=True)
    fs = FeatureStore.open(str(tmp_path / "store"))
    index = {c: i for i, c in enumerate(fs.classes)}

    def items(subset):
        return [VideoItem(r.video_id, {s: f.astype(np.float32) for s, f in r.features.items()},
                          [index[r.primary_label]]) for r in fs.iter_videos(subset)]
    train, test = items("validation"), items("test")
    cfg = load_config("tiny", ["train.steps=200", "train.batch_size=8", "train.max_len=256",
                               "train.lr=3e-3", "train.lr_decay_at=1.0", "train.log_every=40",
                               "train.clusters_per_batch=4", "train.videos_per_cluster=2"],
                      mode="weak")

    def test_accuracy(training):
        result = fit(training, cfg, 4, fs.streams)
        model = load_models(make_checkpoint(result.state_dict, cfg, 4, fs.streams,
                                            fs.classes, 0))
        preds = predict(model, [(it.video_id, it.features) for it in test])
        hits = [p.fused(0.5)[2].argmax() == it.labels[0] for p, it in zip(preds, test)]
        return float(np.mean(hits)), [h["early/cls"] for h in result.history]

    accuracy, cls_loss = test_accuracy(train)
    assert cls_loss[-1] < 0.5 * cls_loss[0] and accuracy >= 0.8, (accuracy, cls_loss)
    perm = np.random.default_rng(0).permutation(len(train))
    shuffled = [VideoItem(it.video_id, it.features, train[j].labels)
                for it, j in zip(train, perm)]
    control, _ = test_accuracy(shuffled)
    assert control <= 0.5 and accuracy - control >= 0.4, (accuracy, control)   # chance 0.25


def test_the_papers_sampling_trains():
    cfg = load_config("tiny", ["train.steps=4", "train.batch_size=4", "train.max_len=0",
                               "train.clusters_per_batch=2", "train.sampling=replacement"])
    result = fit(_items(), cfg, 2, DIMS)
    assert result.steps == 4 and np.isfinite(result.history[-1]["loss"])
    epoch = fit(_items(), load_config("tiny", ["train.steps=4", "train.batch_size=4",
                                               "train.max_len=0",
                                               "train.clusters_per_batch=2"]), 2, DIMS)
    assert result.history[-1]["loss"] != epoch.history[-1]["loss"]   # other batches
