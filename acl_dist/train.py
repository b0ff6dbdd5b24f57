"""Training of the co-attention network(s) (one round of localisation); the checkpoint
they are saved in. The networks are :class:`acl_dist.model.StreamModels`, the loss is
:func:`acl_dist.losses.total_loss`, inference is :mod:`acl_dist.infer`.

:func:`fit` is the per-worker loop. It is plain PyTorch: Ray Train calls it from
:func:`acl_dist.ray_train.train_loop_per_worker` with the worker's data shard, a DDP
wrapper and a reporting hook; tests and the GPU check call it directly. By default one
network takes the streams' concatenated features (``model.fusion=early``); under the paper's
``late`` fusion the RGB and flow networks are independent (trained "separately", METHOD.md
§10) and share the batch and one Adam (Adam's state is per parameter: two optimisers).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .config import RunConfig, to_dict
from .losses import total_loss
from .model import StreamModels, pad_batch
from .sampling import Batch, ClusterBatcher, batches_with_replacement, shuffled


@dataclass
class VideoItem:
    """A training video in worker memory: features per stream and label indices."""

    video_id: str
    features: dict[str, np.ndarray]
    labels: list[int]

    @property
    def num_snippets(self) -> int:
        return int(next(iter(self.features.values())).shape[0])


def crop_items(items: Sequence[VideoItem], max_len: int | None, rng: np.random.Generator
               ) -> dict[str, list[np.ndarray]]:
    """Per stream, each video's features, cropped to a random ``max_len`` window if longer
    (the same window in every stream)."""
    out: dict[str, list[np.ndarray]] = {s: [] for s in items[0].features}
    for item in items:
        t = item.num_snippets
        start = 0
        if max_len and t > max_len:
            start = int(rng.integers(0, t - max_len + 1))
        stop = start + min(t, max_len) if max_len else t
        for s, arr in item.features.items():
            out[s].append(arr[start:stop])
    return out


def batch_tensors(batch: Batch[VideoItem], num_classes: int, k: int, max_len: int | None,
                  rng: np.random.Generator, device: torch.device | str = "cpu"
                  ) -> dict[str, Any]:
    """Padded inputs, mask, multi-hot targets and the ``(Z, K)`` groups of one batch."""
    feats = crop_items(batch.items, max_len, rng)
    inputs, mask = {}, None
    for s, arrays in feats.items():
        inputs[s], mask = pad_batch(arrays, device=device)
    targets = torch.zeros(len(batch.items), num_classes)
    for i, item in enumerate(batch.items):
        targets[i, item.labels] = 1.0
    groups = torch.tensor(batch.padded_groups(k), dtype=torch.long).reshape(-1, k)
    group_class = torch.tensor(batch.group_labels, dtype=torch.long)
    return {"inputs": inputs, "mask": mask, "targets": targets.to(device),
            "groups": groups.to(device), "group_class": group_class.to(device)}


def terms_to_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Logged loss terms to floats with one device->host copy (each ``.item()`` would be a
    GPU sync; :func:`fit` converts only at logging steps)."""
    values = torch.stack([t.float() for t in terms.values()]).tolist()
    return dict(zip(terms, values))


def batch_stream(items: Sequence[VideoItem], cfg: RunConfig, rank: int, world_size: int
                 ) -> Iterable[Batch[VideoItem]]:
    """Endless batches of a worker's items: epoch after epoch, each video once per epoch;
    or, with ``train.sampling=replacement``, the paper's draws with replacement."""
    tc = cfg.train
    per_worker = max(1, math.ceil(tc.batch_size / world_size))
    z = max(1, round(tc.clusters_per_batch / world_size)) if tc.clusters_per_batch else 0
    if tc.sampling == "replacement":
        yield from batches_with_replacement(items, lambda it: it.labels, z,
                                            tc.videos_per_cluster, per_worker,
                                            seed=tc.seed * 1009 + rank)
        return
    batcher = ClusterBatcher(z, tc.videos_per_cluster, per_worker, seed=tc.seed * 1009 + rank)
    epoch = 0
    while True:
        yield from batcher.batches(shuffled(items, tc.seed * 1009 + rank, epoch),
                                   lambda it: it.labels, epoch)
        epoch += 1


@dataclass
class TrainResult:
    """What a round of training produced."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


def fit(items: Sequence[VideoItem], cfg: RunConfig, num_classes: int, in_dims: dict[str, int],
        *, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        report: Callable[[dict[str, float], int, dict[str, Any] | None], None] | None = None,
        start: dict[str, Any] | None = None) -> TrainResult:
    """Train the stream models for ``cfg.train.steps`` updates on this worker's ``items``.
    Long because: the training loop reads best whole (resume, seeding, DDP wrap, logging
    and checkpoint steps in one place, as nanoGPT's).

    Args:
        items: this worker's videos (a disjoint shard when ``world_size > 1``).
        num_classes: C. in_dims: stream -> feature dim.
        wrap: e.g. DDP (``ray.train.torch.prepare_model``); applied after moving to device.
        report: ``report(metrics, step, state)``, called at the same steps on every worker
            (Ray Train's report is a barrier): every ``log_every`` steps, every
            ``checkpoint_every`` steps and at the end. ``state`` (:func:`training_state`)
            is given at checkpoint steps and at the end, else None.
        start: a state from :func:`training_state` to resume from (model, optimiser, step).
    Returns:
        :class:`TrainResult` with the (unwrapped) model's state dict.
    """
    tc = cfg.train
    if not items:
        raise ValueError(f"worker {rank} received no training videos")
    torch.manual_seed(tc.seed)  # identical initial weights on every worker
    model = StreamModels(in_dims, num_classes, cfg.model).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    decay_step = max(1, int(tc.lr_decay_at * tc.steps))
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, [decay_step], gamma=tc.lr_decay)
    step = 0
    if start is not None:
        model.load_state_dict(start["model"])
        optim.load_state_dict(start["optimizer"])
        sched.load_state_dict(start["scheduler"])
        step = int(start["step"])
    core = model
    if wrap is not None:
        model = wrap(model)
    torch.manual_seed(tc.seed * 7919 + rank + step)  # dropout differs per worker
    rng = np.random.default_rng([tc.seed, rank, step])
    stream = iter(batch_stream(items, cfg, rank, world_size))
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    window_videos, window_start = 0, time.perf_counter()
    model.train()
    while step < tc.steps:
        batch = next(stream)
        t = batch_tensors(batch, num_classes, tc.videos_per_cluster, tc.max_len, rng, device)
        outputs = model(t["inputs"], t["mask"])
        loss, terms = total_loss(outputs, t, cfg.loss)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()
        sched.step()
        step += 1
        window_videos += len(batch.items)
        last = step == tc.steps
        due_ckpt = last or (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0)
        if step % tc.log_every == 0 or due_ckpt:
            now = time.perf_counter()
            terms = terms_to_floats(terms)
            terms.update(step=step, lr=optim.param_groups[0]["lr"],
                         videos_per_s=window_videos / max(now - window_start, 1e-9))
            window_videos, window_start = 0, now
            history.append(terms)
            if report is not None:
                report(terms, step,
                       training_state(core, optim, sched, step) if due_ckpt else None)
    return TrainResult({k: v.detach().cpu() for k, v in core.state_dict().items()}, history,
                       time.perf_counter() - started, step)


def training_state(model: nn.Module, optim: torch.optim.Optimizer, sched: Any, step: int
                   ) -> dict[str, Any]:
    return {"model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "step": step}


# --------------------------------------------------------------------------- checkpoints


def make_checkpoint(state_dict: dict[str, torch.Tensor], cfg: RunConfig, num_classes: int,
                    in_dims: dict[str, int], label_names: list[str], round_index: int,
                    history: list[dict[str, float]] | None = None) -> dict[str, Any]:
    """A self-describing checkpoint: weights plus every config needed to rebuild them."""
    return {"model": state_dict, "model_config": asdict(cfg.model), "run_config": to_dict(cfg),
            "num_classes": num_classes, "in_dims": dict(in_dims), "label_names": label_names,
            "round": round_index, "history": history or []}
