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
from .graphed_step import FeatureBank, GraphedStep
from .losses import total_loss
from .model import StreamModels, pad_inputs
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


def crop_windows(items: Sequence[VideoItem], max_len: int | None, rng: np.random.Generator
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Each video's training window: ``(B,)`` first snippets and ``(B,)`` lengths, a random
    ``max_len`` window of a longer video (one draw per such video, in batch order)."""
    starts = np.zeros(len(items), np.int64)
    lengths = np.zeros(len(items), np.int64)
    for i, item in enumerate(items):
        t = item.num_snippets
        if max_len and t > max_len:
            starts[i] = int(rng.integers(0, t - max_len + 1))
        lengths[i] = min(t, max_len) if max_len else t
    return starts, lengths


def crop_items(items: Sequence[VideoItem], max_len: int | None, rng: np.random.Generator
               ) -> dict[str, list[np.ndarray]]:
    """Per stream, each video's features, cropped to a random ``max_len`` window if longer
    (the same window in every stream)."""
    starts, lengths = crop_windows(items, max_len, rng)
    return {s: [item.features[s][a:a + n] for item, a, n in zip(items, starts, lengths)]
            for s in items[0].features}


def batch_tensors(batch: Batch[VideoItem], num_classes: int, k: int, max_len: int | None,
                  rng: np.random.Generator, device: torch.device | str = "cpu",
                  early: Sequence[str] | None = None) -> dict[str, Any]:
    """Padded inputs, mask, multi-hot targets and the ``(Z, K)`` groups of one batch.
    With ``early`` (the early-fused network's stream order) the inputs are one
    :data:`~acl_dist.model.EARLY` tensor of the streams side by side, built in one pass."""
    inputs, mask = pad_inputs(crop_items(batch.items, max_len, rng),
                              list(early) if early else None, device)
    return {"inputs": inputs, "mask": mask,
            "targets": torch.from_numpy(multi_hot(batch.items, num_classes)).to(device),
            "groups": torch.from_numpy(group_rows(batch, k)).to(device),
            "group_class": torch.tensor(batch.group_labels, dtype=torch.long).to(device)}


def multi_hot(items: Sequence[VideoItem], num_classes: int) -> np.ndarray:
    """``(B, C)`` float32 multi-hot targets of the videos' labels."""
    targets = np.zeros((len(items), num_classes), np.float32)
    for i, item in enumerate(items):
        targets[i, item.labels] = 1.0
    return targets


def group_rows(batch: Batch[VideoItem], k: int) -> np.ndarray:
    """``(Z, K)`` int64 batch rows of each drawn cluster's videos, -1 padded."""
    return np.array(batch.padded_groups(k), np.int64).reshape(-1, k)


def terms_to_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Logged loss terms to floats with one device->host copy (each ``.item()`` would be a
    GPU sync; :func:`fit` converts only at logging steps)."""
    values = torch.stack([t.float() for t in terms.values()]).tolist()
    return dict(zip(terms, values))


def groups_per_worker(cfg: RunConfig, world_size: int) -> int:
    """Z of one worker's batches: the run's clusters per batch shared among the workers."""
    z = cfg.train.clusters_per_batch
    return max(1, round(z / world_size)) if z else 0


def graph_batch(batch: Batch[VideoItem], num_classes: int, k: int, max_len: int | None,
                rng: np.random.Generator) -> tuple:
    """A batch as :meth:`acl_dist.graphed_step.GraphedStep.step` takes it (host arrays;
    the same crops, drawn from ``rng`` the same way, as :func:`batch_tensors`)."""
    starts, lengths = crop_windows(batch.items, max_len, rng)
    return ([item.video_id for item in batch.items], starts, lengths,
            multi_hot(batch.items, num_classes), group_rows(batch, k),
            np.array(batch.group_labels, np.int64))


def graphed_step(items: Sequence[VideoItem], model: nn.Module, optim: torch.optim.Optimizer,
                 cfg: RunConfig, num_classes: int, world_size: int, device: torch.device,
                 reduce_grads: Callable[[list[torch.Tensor]], None] | None
                 ) -> GraphedStep | None:
    """The CUDA-graph step where it applies: a CUDA device, ``train.cuda_graphs``, the
    worker's videos within a third of the device's free memory, and with several workers
    a ``reduce_grads`` (else DDP's eager path)."""
    if device.type != "cuda" or not cfg.train.cuda_graphs:
        return None
    if world_size > 1 and reduce_grads is None:
        return None
    if FeatureBank.nbytes(items) > torch.cuda.mem_get_info(device)[0] // 3:
        return None
    tc = cfg.train
    return GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, num_classes,
                       tc.videos_per_cluster, groups_per_worker(cfg, world_size),
                       max_len=tc.max_len, compile=bool(tc.compile),
                       reduce_grads=reduce_grads if world_size > 1 else None)


def batch_stream(items: Sequence[VideoItem], cfg: RunConfig, rank: int, world_size: int
                 ) -> Iterable[Batch[VideoItem]]:
    """Endless batches of a worker's items: epoch after epoch, each video once per epoch;
    or, with ``train.sampling=replacement``, the paper's draws with replacement."""
    tc = cfg.train
    per_worker = max(1, math.ceil(tc.batch_size / world_size))
    z = groups_per_worker(cfg, world_size)
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
        start: dict[str, Any] | None = None,
        reduce_grads: Callable[[list[torch.Tensor]], None] | None = None) -> TrainResult:
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
        reduce_grads: averages the gradients over the workers in place (an all-reduce);
            with it, several GPU workers take the CUDA-graph step (:func:`graphed_step`)
            instead of ``wrap``'s DDP.
    Returns:
        :class:`TrainResult` with the (unwrapped) model's state dict.
    """
    tc = cfg.train
    if not items:
        raise ValueError(f"worker {rank} received no training videos")
    device = torch.device(device)
    model, optim, sched, step = training_setup(cfg, num_classes, in_dims, device, start)
    core = model
    graphed = graphed_step(items, model, optim, cfg, num_classes, world_size, device,
                           reduce_grads)
    if wrap is not None and graphed is None:
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
        if graphed is not None:
            terms = graphed.step(*graph_batch(batch, num_classes, tc.videos_per_cluster,
                                              tc.max_len, rng))
        else:
            t = batch_tensors(batch, num_classes, tc.videos_per_cluster, tc.max_len, rng,
                              device, core.streams if core.early else None)
            loss, terms = total_loss(model(t["inputs"], t["mask"]), t, cfg.loss)
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


def training_setup(cfg: RunConfig, num_classes: int, in_dims: dict[str, int],
                   device: torch.device, start: dict[str, Any] | None = None
                   ) -> tuple[StreamModels, torch.optim.Optimizer, Any, int]:
    """The models on ``device`` (seeded alike on every worker), Adam (fused on a GPU: one
    kernel per update), the step decay, and the step to start from (``start``'s, when
    resuming from a :func:`training_state`)."""
    tc = cfg.train
    torch.manual_seed(tc.seed)  # identical initial weights on every worker
    model = StreamModels(in_dims, num_classes, cfg.model).to(device)
    optim = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay,
                             fused=device.type == "cuda" or None)
    decay_step = max(1, int(tc.lr_decay_at * tc.steps))
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, [decay_step], gamma=tc.lr_decay)
    if start is None:
        return model, optim, sched, 0
    model.load_state_dict(start["model"])
    optim.load_state_dict(start["optimizer"])
    sched.load_state_dict(start["scheduler"])
    return model, optim, sched, int(start["step"])


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
