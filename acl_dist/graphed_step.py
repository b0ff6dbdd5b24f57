"""The training step on a GPU as CUDA graphs: the worker's videos held on the device, each
batch gathered there, forward + every loss + backward replayed as one graph per batch shape,
optionally ``torch.compile``d first.

Why: the default network is small (0.63 M multiply-adds per snippet), so an eager step is
launch-bound: some 300 kernels, each a Python dispatch. On an H200 at THUMOS14 shape (32
videos, T <= 750, 2 x 1024-d; ``scripts/gpu_check.sh``, side by side in one process): a
plain MLP of equal matmul FLOPs 1.9 ms per step, ACL eager 45 ms, graphed 3.6 ms (1.9x the
plain one: the elementwise passes over (B, T, D) tensors), graphed + compiled 2.7 ms
(1.4x). The losses were written sync-free (masks, not boolean indexing) for this. What
stays eager per step: the batch's index tensors copied in (pinned, asynchronous), the fused
Adam update, the learning-rate schedule, and, with several workers, one coalesced
all-reduce of the gradients (DDP's hooks cannot sit inside a captured graph). With several
workers each computes its rows of the global batch and the rows' pooled terms are
gathered inside the step (:func:`acl_dist.losses.gather_terms`; captured with it, as NCCL
collectives can be), so the terms that compare videos see the whole batch.

Shapes are made few: ``T`` is padded up to a bucket (:func:`bucket_length`, steps of
sqrt(2)) of the global batch's longest crop, ``Z`` to the configured clusters per batch,
and with several workers each one's rows to a bucket of the largest share
(:func:`acl_dist.global_batch.bucket_rows`), so that every worker runs (and captures) the
same shape at the same step; padded snippets are masked, padded groups are -1 rows and
padded rows enter no loss, which change nothing (tested against the unpadded batch). A
shape is
run eagerly twice (the warm-up CUDA graphs need, on a side stream), captured the third
time and replayed from then on; at most ``max_graphs`` shapes are captured, the rest stay
eager. ``capture=False`` runs the same static-buffer step without graphs (any device):
how the tests check this module on a CPU.

Pure core: torch only, no Ray; the workers' exchanges come through the
:class:`~acl_dist.collectives.WorkerGroup` it is given (no torch.distributed import).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

from .config import LossConfig
from .losses import batch_loss, gather_terms, video_terms

if TYPE_CHECKING:
    from .collectives import WorkerGroup


def bucket_length(longest: int, max_len: int | None = None, smallest: int = 64) -> int:
    """The padded ``T`` for a batch whose longest (cropped) video has ``longest`` snippets:
    the next of 64, 96, 128, 192, 256, 384, ... (steps of about sqrt(2), multiples of 32),
    never past ``max_len`` when crops are capped there."""
    if max_len and longest >= max_len:
        return max_len
    t = smallest
    while t < longest:
        t = t * 3 // 2 if (t & (t - 1)) == 0 else t * 4 // 3   # 64 -> 96 -> 128 -> 192 ...
    t = int(math.ceil(t / 32) * 32)
    return min(t, max_len) if max_len else t


class FeatureBank:
    """A worker's training videos, each stream's features concatenated on ``device``.

    ``features[s]`` is ``(N_snippets, D_s)`` in the stored dtype (float16 stores stay half
    the bytes; the graph converts gathered rows to float32). ``row[video_id]`` is a video's
    first row, ``lengths[video_id]`` its snippets.
    """

    def __init__(self, items: Sequence, device: torch.device | str):
        lengths = [int(it.num_snippets) for it in items]
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        self.row = {it.video_id: int(o) for it, o in zip(items, offsets)}
        self.total = int(sum(lengths))
        self.features: dict[str, torch.Tensor] = {}
        for s, first in items[0].features.items():
            bank = torch.empty(self.total, first.shape[1], dtype=torch.from_numpy(first[:0]).dtype,
                               device=device)
            for it, o, n in zip(items, offsets, lengths):   # per video: no host-side copy of all
                bank[o:o + n].copy_(torch.from_numpy(np.ascontiguousarray(it.features[s])))
            self.features[s] = bank

    @staticmethod
    def nbytes(items: Sequence) -> int:
        """Bytes the bank of ``items`` would take on the device."""
        return int(sum(a.nbytes for it in items for a in it.features.values()))


@dataclass
class _Shape:
    """Static device buffers of one batch shape (``R`` rows this worker computes, ``B``
    videos in the global batch, ``T`` snippets, ``Z`` groups) and, once captured, its graph
    and the gradient buffers the graph writes."""

    meta: torch.Tensor              # (3R [+ B] + Z*K + Z,) int64: see GraphedStep._unpack
    targets: torch.Tensor           # (B, C) float32 multi-hot
    seen: int = 0
    graph: torch.cuda.CUDAGraph | None = None
    grads: list[torch.Tensor] = field(default_factory=list)
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


class GraphedStep:
    """Training steps of ``model`` on batches of the videos in ``bank``.

    Args:
        model: the stream models (already on the bank's device, unwrapped).
        optim: their optimiser (fused Adam on a GPU: one kernel per update).
        bank: the videos' features (:class:`FeatureBank`).
        loss_cfg, num_classes, k: the loss settings, C, and K (videos per cluster group).
        z: groups per batch the ``(Z, K)`` tensor is padded to.
        capture: capture CUDA graphs (a CUDA device); False runs the same step eagerly.
        group: the workers (:class:`acl_dist.collectives.WorkerGroup`) when there are
            several: each computes its rows of the global batch, the rows' pooled terms
            are gathered inside the step (captured with it: NCCL collectives can be), and
            the gradients averaged after it. None: one worker, the batch is its own.
    """

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer, bank: FeatureBank,
                 loss_cfg: LossConfig, num_classes: int, k: int, z: int, *,
                 capture: bool = True, compile: bool = False, max_len: int | None = None,
                 max_graphs: int = 6, group: "WorkerGroup | None" = None):
        self.model, self.optim, self.bank, self.loss_cfg = model, optim, bank, loss_cfg
        self.num_classes, self.k, self.z, self.max_len = num_classes, k, z, max_len
        self.capture, self.max_graphs, self.group = capture, max_graphs, group
        self.device = next(iter(bank.features.values())).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shapes: dict[tuple[int, int, int, int], _Shape] = {}
        self.cuda = self.device.type == "cuda"
        # torch.compile fuses the elementwise chains (gather, masks, ReLUs, the losses)
        # into few kernels. It compiles in the first warm-up; a second shape recompiles
        # once with symbolic sizes (dynamo's automatic dynamic shapes), which then serves
        # every later shape: each is still captured as its own graph
        self.loss_terms = torch.compile(self._loss_terms) if compile else self._loss_terms
        self.side = torch.cuda.Stream(self.device) if self.cuda else None

    # ----------------------------------------------------------------- host side

    def step(self, video_ids: Sequence[str], starts: np.ndarray, lengths: np.ndarray,
             row_class: np.ndarray, targets: np.ndarray, groups: np.ndarray,
             group_class: np.ndarray, *, gather_index: np.ndarray | None = None,
             rows: int | None = None, longest: int | None = None
             ) -> dict[str, torch.Tensor]:
        """One update; returns the loss terms (device tensors, detached).

        Args:
            video_ids: the ``R`` videos of the bank this worker computes (one worker: the
                batch). starts, lengths: ``(R,)`` each one's crop (first snippet,
                snippets). row_class: ``(R,)`` each one's group's cluster (0: fill).
            targets: ``(B, C)`` multi-hot of the global batch. groups: ``(Z', K)`` its
                rows per cluster group, -1 padded (``Z' <= z``). group_class: ``(Z',)``.
            gather_index: with several workers, ``(B,)`` each global row's place among the
                workers' gathered rows (:meth:`acl_dist.global_batch.Split.gather_index`).
            rows: with several workers, the rows every worker computes this step (``>=
                R``, the same on all; the extra ones are padding).
            longest: the global batch's longest crop (``T``'s bucket: the same on all
                workers); default this worker's.
        """
        b = targets.shape[0]
        r = rows if rows is not None else len(video_ids)
        z = max(self.z, len(groups))
        top = longest if longest is not None else int(lengths.max()) if len(lengths) else 1
        t = bucket_length(top, self.max_len)
        key = (r, b, t, z)
        shape = self._shape(key)
        pad = r - len(video_ids)   # padding rows: one snippet of the bank, in no loss
        first = np.concatenate([np.fromiter((self.bank.row[v] for v in video_ids), np.int64,
                                            len(video_ids)) + starts, np.zeros(pad, np.int64)])
        length = np.concatenate([lengths.astype(np.int64), np.ones(pad, np.int64)])
        classes_of_rows = np.concatenate([row_class.astype(np.int64), np.zeros(pad, np.int64)])
        padded = np.full((z, self.k), -1, np.int64)
        padded[:len(groups)] = groups
        classes = np.zeros(z, np.int64)
        classes[:len(group_class)] = group_class
        index = [] if self.group is None else [np.asarray(gather_index, np.int64)]
        meta = np.concatenate([first, length, classes_of_rows, *index, padded.ravel(), classes])
        self._copy_in(shape.meta, torch.from_numpy(meta))
        self._copy_in(shape.targets, torch.from_numpy(targets.astype(np.float32)))
        shape.seen += 1
        if shape.graph is None and self.capture and shape.seen == 3 \
                and sum(s.graph is not None for s in self.shapes.values()) < self.max_graphs:
            self._capture(shape, key)
        if shape.graph is not None:
            shape.graph.replay()
            for p, g in zip(self.params, shape.grads):
                p.grad = g
            terms = shape.terms
        else:
            terms = self._eager(shape, key, warm_up=self.capture and shape.seen < 3)
        if self.group is not None:
            self.group.average_gradients([p.grad for p in self.params])
        self.optim.step()
        if shape.graph is None:
            self.optim.zero_grad(set_to_none=True)
        return terms

    def _shape(self, key: tuple[int, int, int, int]) -> _Shape:
        if key not in self.shapes:
            r, b, _, z = key
            size = 3 * r + (b if self.group is not None else 0) + z * self.k + z
            self.shapes[key] = _Shape(
                meta=torch.zeros(size, dtype=torch.long, device=self.device),
                targets=torch.zeros(b, self.num_classes, device=self.device))
        return self.shapes[key]

    def _copy_in(self, static: torch.Tensor, host: torch.Tensor) -> None:
        """Host -> static device buffer. Pinned and asynchronous on a GPU (the copy is
        stream-ordered after the previous replay that reads the buffer); the pinned source
        is a fresh tensor each step, kept alive by the caching host allocator until the copy
        has run."""
        if self.cuda:
            host = host.pin_memory()
        static.copy_(host, non_blocking=self.cuda)

    # ----------------------------------------------------------------- device side

    def _loss_terms(self, meta: torch.Tensor, targets: torch.Tensor, r: int, b: int, t: int,
                    z: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gather the rows from the bank, forward, each row's pooled terms (gathered from
        every worker when there are several), the batch's loss. ``meta`` as :meth:`step`
        packs it: first snippets, lengths, row classes (``R`` each), [the gather index
        (``B``),] groups (``Z x K``), group classes (``Z``)."""
        first, lengths, row_class = meta[:r], meta[r:2 * r], meta[2 * r:3 * r]
        at = 3 * r
        if self.group is not None:
            index, at = meta[at:at + b], at + b
        groups = meta[at:at + z * self.k].view(z, self.k)
        group_class = meta[at + z * self.k:]
        steps = torch.arange(t, device=meta.device)
        mask = steps[None, :] < lengths[:, None]                              # (R, T)
        rows = (first[:, None] + steps[None, :]).clamp(max=self.bank.total - 1)
        inputs = {s: feats[rows].float() * mask[..., None]                   # (R, T, D_s)
                  for s, feats in self.bank.features.items()}
        terms = video_terms(self.model(inputs, mask), mask, row_class, self.loss_cfg)
        if self.group is not None:
            terms = gather_terms(terms, index, self.group)
        return batch_loss(terms, targets, groups, group_class, self.loss_cfg)

    def _forward_backward(self, shape: _Shape, key: tuple[int, int, int, int]
                          ) -> dict[str, torch.Tensor]:
        """Loss and backward: the captured body."""
        loss, terms = self.loss_terms(shape.meta, shape.targets, *key)
        loss.backward()
        return terms

    def _eager(self, shape: _Shape, key: tuple[int, int, int, int], warm_up: bool
               ) -> dict[str, torch.Tensor]:
        self.optim.zero_grad(set_to_none=True)
        if not warm_up:
            return self._forward_backward(shape, key)
        # CUDA graphs' rule: warm-up iterations on a side stream before capture
        self.side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self.side):
            terms = self._forward_backward(shape, key)
        torch.cuda.current_stream(self.device).wait_stream(self.side)
        return terms

    def _capture(self, shape: _Shape, key: tuple[int, int, int, int]) -> None:
        # gradients None: backward inside the capture allocates them from the graph's
        # pool, so every replay rewrites the same buffers (no accumulation)
        self.optim.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            shape.terms = self._forward_backward(shape, key)
        shape.grads = [p.grad for p in self.params]
        shape.graph = graph

