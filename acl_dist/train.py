"""Training and inference of the co-attention network(s) (one round of localisation).

:func:`fit` is the per-worker loop. It is plain PyTorch: Ray Train calls it from
:func:`acl_dist.distributed.train_loop_per_worker` with the worker's data shard, a DDP
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

from .config import ModelConfig, RunConfig, from_dict, to_dict
from .localize import fuse
from .losses import (attention_pooled, class_attention, classification_loss, group_classes,
                     separation_loss, topk_pooled, triplet_loss)
from .model import CoAttentionNet, ModelOutput, pad_batch
from .sampling import Batch, ClusterBatcher, shuffled

STREAMS = ("rgb", "flow")


@dataclass
class VideoItem:
    """A training video in worker memory: features per stream and label indices."""

    video_id: str
    features: dict[str, np.ndarray]
    labels: list[int]

    @property
    def num_snippets(self) -> int:
        return int(next(iter(self.features.values())).shape[0])


EARLY = "early"   # the one network's name under ``model.fusion=early``


class StreamModels(nn.Module):
    """The stream networks behind one module (one DDP wrapper): one :class:`CoAttentionNet`
    per stream (``fusion=late``, the paper), or one on the streams' features concatenated
    in ``in_dims`` order (``fusion=early``), named :data:`EARLY`."""

    def __init__(self, in_dims: dict[str, int], num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.streams = list(in_dims)
        self.early = cfg.fusion == "early" and len(in_dims) > 1
        dims = {EARLY: sum(in_dims.values())} if self.early else in_dims
        self.nets = nn.ModuleDict({s: CoAttentionNet(d, num_classes, cfg)
                                   for s, d in dims.items()})

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor
                ) -> dict[str, ModelOutput]:
        """``inputs``: stream -> ``(B, T, D_s)``. Returns network name -> outputs."""
        if self.early:
            return {EARLY: self.nets[EARLY](torch.cat([inputs[s] for s in self.streams], -1),
                                            mask)}
        return {s: net(inputs[s], mask) for s, net in self.nets.items()}

    def per_stream(self, outputs: dict[str, ModelOutput]) -> dict[str, ModelOutput]:
        """Outputs by stream: the early-fused network's stand for every stream."""
        return {s: outputs[EARLY] for s in self.streams} if self.early else outputs


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


def compute_losses(outputs: dict[str, ModelOutput], mask: torch.Tensor, targets: torch.Tensor,
                   groups: torch.Tensor, group_class: torch.Tensor, cfg: RunConfig
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss over the streams and each term (detached tensors, for logging: see
    :func:`terms_to_floats`)."""
    lc = cfg.loss
    total = torch.zeros((), device=mask.device)
    terms: dict[str, torch.Tensor] = {}
    for s, out in outputs.items():
        l_cls = classification_loss(out.video_logits, targets, lc.cls_reduction)
        l_sep = total.new_zeros(())
        if lc.sep_attention in ("class", "both"):
            a = class_attention(out.cas, mask, group_classes(groups, group_class, mask.shape[0]))
            l_sep = l_sep + separation_loss(out.fused, a, mask, groups, lc.tau1, lc.tau2)
        if lc.sep_attention in ("agnostic", "both"):
            l_sep = l_sep + separation_loss(out.fused, out.attention, mask, groups, lc.tau1,
                                            lc.tau2)
        l_trip = triplet_loss(attention_pooled(out.embedding, out.attention), groups,
                              group_class, lc.margin, lc.neg_cap, lc.trip_reduction)
        total = total + l_cls + lc.lambda_sep * l_sep + lc.lambda_trip * l_trip
        if lc.lambda_topk:
            l_topk = classification_loss(topk_pooled(out.cas, mask), targets, lc.cls_reduction)
            total = total + lc.lambda_topk * l_topk
            terms[f"{s}/topk"] = l_topk
        terms.update({f"{s}/cls": l_cls, f"{s}/sep": l_sep, f"{s}/trip": l_trip})
    terms["loss"] = total
    return total, {name: t.detach() for name, t in terms.items()}


def terms_to_floats(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Logged loss terms to floats with one device->host copy (each ``.item()`` would be a
    GPU sync; :func:`fit` converts only at logging steps)."""
    values = torch.stack([t.float() for t in terms.values()]).tolist()
    return dict(zip(terms, values))


def batch_stream(items: Sequence[VideoItem], cfg: RunConfig, rank: int, world_size: int
                 ) -> Iterable[Batch[VideoItem]]:
    """Endless batches of a worker's items: epoch after epoch, each video once per epoch."""
    tc = cfg.train
    per_worker = max(1, math.ceil(tc.batch_size / world_size))
    z = max(1, round(tc.clusters_per_batch / world_size)) if tc.clusters_per_batch else 0
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
        loss, terms = compute_losses(outputs, t["mask"], t["targets"], t["groups"],
                                     t["group_class"], cfg)
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


def load_models(ckpt: dict[str, Any], device: str | torch.device = "cpu") -> StreamModels:
    """Rebuild :class:`StreamModels` from :func:`make_checkpoint` output (eval mode)."""
    # checkpoints written before ``fusion``, ``global_context`` and the kernels existed
    # hold the paper's network (two stream networks, non-local block, k3 convs); their
    # dilations are stored
    stored = {"fusion": "late", "global_context": True, "base_kernel": 3, "local_kernel": 3,
              **ckpt["model_config"]}
    model = StreamModels(ckpt["in_dims"], ckpt["num_classes"], from_dict(ModelConfig, stored))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval()


# --------------------------------------------------------------------------- inference


@dataclass
class VideoPrediction:
    """Per-stream model outputs of one whole video (numpy, float32).

    ``cas[s]`` ``(T, C)``, ``attention[s]`` ``(T,)``, ``video_logits[s]`` ``(C,)``.
    """

    video_id: str
    cas: dict[str, np.ndarray]
    attention: dict[str, np.ndarray]
    video_logits: dict[str, np.ndarray]

    def fused(self, rgb_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Late-fused (cas, attention, video_logits) with RGB weight ``rgb_weight``."""
        if set(self.cas) == {"rgb", "flow"}:
            return (fuse(self.cas["rgb"], self.cas["flow"], rgb_weight),
                    fuse(self.attention["rgb"], self.attention["flow"], rgb_weight),
                    fuse(self.video_logits["rgb"], self.video_logits["flow"], rgb_weight))
        s = next(iter(self.cas))
        return self.cas[s], self.attention[s], self.video_logits[s]


@torch.no_grad()
def predict(model: StreamModels, videos: Sequence[tuple[str, dict[str, np.ndarray]]],
            device: str | torch.device = "cpu", max_batch_snippets: int = 65536,
            max_batch_pairs: int = 2**24) -> list[VideoPrediction]:
    """Run the models over whole videos in padded batches, sorted by length so batches have
    little padding. A forward holds at most ``max_batch_snippets`` padded snippets and
    ``max_batch_pairs`` snippet pairs (the non-local block is quadratic in T)."""
    model.eval()
    order = sorted(range(len(videos)), key=lambda i: -next(iter(videos[i][1].values())).shape[0])
    results: list[VideoPrediction | None] = [None] * len(videos)
    i = 0
    while i < len(order):
        longest = max(1, next(iter(videos[order[i]][1].values())).shape[0])
        size = max(1, min(max_batch_snippets // longest, max_batch_pairs // longest ** 2))
        chunk = order[i: i + size]
        i += size
        streams = list(videos[chunk[0]][1])
        inputs, mask = {}, None
        for s in streams:
            inputs[s], mask = pad_batch([videos[j][1][s] for j in chunk], device=device)
        outs = model.per_stream(model(inputs, mask))
        lengths = mask.sum(1).cpu().numpy()
        for row, j in enumerate(chunk):
            t = int(lengths[row])
            results[j] = VideoPrediction(
                videos[j][0],
                {s: outs[s].cas[row, :t].float().cpu().numpy() for s in streams},
                {s: outs[s].attention[row, :t].float().cpu().numpy() for s in streams},
                {s: outs[s].video_logits[row].float().cpu().numpy() for s in streams})
    return results  # type: ignore[return-value]
