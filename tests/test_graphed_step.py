"""The CUDA-graph training step's host and device logic, run without graphs on the CPU
(``capture=False``): the batch gathered from the feature bank, ``T`` padded to a bucket and
``Z`` to the configured groups give the same losses, gradients and updates as the eager
path on the unpadded batch. The capture itself needs a GPU: ``scripts/gpu_check.sh``
compares graphed and eager weights there."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from acl_dist.config import load_config
from acl_dist.graphed_step import FeatureBank, GraphedStep, bucket_length
from acl_dist.losses import total_loss
from acl_dist.model import StreamModels
from acl_dist.sampling import Batch
from acl_dist.train import VideoItem, batch_tensors, graph_batch

DIMS = {"rgb": 6, "flow": 4}
CLASSES = 3


def _items(dtype=np.float32) -> list[VideoItem]:
    rng = np.random.default_rng(1)
    lengths = [5, 17, 40, 9, 23, 31, 12, 2]
    return [VideoItem(f"v{i}", {s: rng.standard_normal((t, d)).astype(dtype)
                                for s, d in DIMS.items()}, [i % CLASSES])
            for i, t in enumerate(lengths)]


def test_buckets_are_few_and_never_pass_the_crop():
    assert [bucket_length(t) for t in (1, 64, 65, 96, 97, 129, 193, 257, 385, 700)] == \
        [64, 64, 96, 96, 128, 192, 256, 384, 512, 768]
    assert bucket_length(300, 256) == 256 and bucket_length(256, 256) == 256
    assert bucket_length(100, 256) == 128 and bucket_length(200, 224) == 224


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_the_bank_gathers_what_padding_the_crops_gives(dtype):
    items = _items(dtype)
    bank = FeatureBank(items, "cpu")
    assert bank.total == sum(it.num_snippets for it in items)
    assert FeatureBank.nbytes(items) == sum(b.numel() * b.element_size()
                                            for b in bank.features.values())
    pick = [items[2], items[0], items[5]]
    starts, lengths = np.array([3, 0, 10]), np.array([20, 5, 21])
    rows = np.array([bank.row[it.video_id] for it in pick]) + starts
    steps = np.arange(32)
    mask = steps[None] < lengths[:, None]
    for s, feats in bank.features.items():
        got = feats[torch.from_numpy(np.minimum(rows[:, None] + steps, bank.total - 1))].float()
        got = got * torch.from_numpy(mask)[..., None]
        for b, it in enumerate(pick):
            want = torch.from_numpy(it.features[s][starts[b]:starts[b] + lengths[b]]).float()
            torch.testing.assert_close(got[b, :lengths[b]], want, rtol=0, atol=0)
            assert not got[b, lengths[b]:].any()


def _batch(items) -> Batch:
    # a ragged batch: two groups of 2 and one of 1 (padded with -1), two fill videos
    return Batch(items=[items[i] for i in (1, 4, 2, 5, 3, 0, 7)],
                 groups=[[0, 1], [2, 3], [4]], group_labels=[1, 2, 0])


@pytest.mark.parametrize("config", ["tiny", "paper"])
@pytest.mark.parametrize("max_len", [0, 16])
def test_padded_static_step_equals_the_eager_step(config, max_len):
    """Same losses and updates over three steps (plain SGD: an update is the gradient; Adam
    would blow float noise in a near-zero gradient up to a full step); T padded to its
    bucket (64: above the longest video) and Z from 3 to 5 groups."""
    cfg = load_config(config, ["model.dropout=0", f"train.max_len={max_len}"])
    items = _items()
    models, optims = [], []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(StreamModels(DIMS, CLASSES, cfg.model))
        optims.append(torch.optim.SGD(models[-1].parameters(), lr=0.1))
    step = GraphedStep(models[1], optims[1], FeatureBank(items, "cpu"), cfg.loss, CLASSES,
                       k=2, z=5, capture=False, max_len=max_len or None)
    for i in range(3):
        batch = _batch(items)
        eager = batch_tensors(batch, CLASSES, 2, max_len or None, np.random.default_rng(i))
        loss, want = total_loss(models[0](eager["inputs"], eager["mask"]), eager, cfg.loss)
        optims[0].zero_grad()
        loss.backward()
        moved = [p.detach().clone() for p in models[0].parameters()]
        optims[0].step()
        got = step.step(*graph_batch(batch, CLASSES, 2, max_len or None,
                                     np.random.default_rng(i)))
        assert list(step.shapes) == [(7, 7, 64 if not max_len else 16, 5)]
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)
        assert all(p.grad is None for p in models[1].parameters())  # zeroed after the update
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        assert any(not torch.equal(p, m) for p, m in zip(models[0].parameters(), moved))


def test_the_gpu_checks_several_worker_step_runs_on_a_cpu():
    """scripts/gpu_check.py's check of the several-worker graphed step (its collectives
    captured in the graph on a GPU) runs as a GPU session will run it, and on a CPU (gloo,
    no capture) gives the one-worker step's weights exactly."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"
    out = subprocess.run([sys.executable, str(script), "--quick", "--only", "group"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    found = re.search(r"max \|dw\| (\S+), max \|dloss\| (\S+)", out.stdout)
    assert found and float(found[1]) == 0.0 and float(found[2]) == 0.0, out.stdout
