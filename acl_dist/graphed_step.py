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
all-reduce of the gradients (``reduce_grads``; DDP's hooks cannot sit inside a captured
graph).

Shapes are made few: ``T`` is padded up to a bucket (:func:`bucket_length`, steps of
sqrt(2)), ``Z`` to the configured clusters per batch; padded snippets are masked, padded
groups are -1 rows, which change no loss (tested against the unpadded batch). A shape is
run eagerly twice (the warm-up CUDA graphs need, on a side stream), captured the third
time and replayed from then on; at most ``max_graphs`` shapes are captured, the rest stay
eager. ``capture=False`` runs the same static-buffer step without graphs (any device):
how the tests check this module on a CPU.

Pure core: torch only, no Ray, no torch.distributed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from .config import LossConfig
from .losses import total_loss


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
    """Static device buffers of one batch shape (``B`` videos, ``T`` snippets, ``Z`` groups)
    and, once captured, its graph and the gradient buffers the graph writes."""

    meta: torch.Tensor              # (2B + Z*K + Z,) int64: first rows, lengths, groups, classes
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
        reduce_grads: called with the gradients after backward, before the update (the
            all-reduce of several workers); None for one worker.
    """

    def __init__(self, model: nn.Module, optim: torch.optim.Optimizer, bank: FeatureBank,
                 loss_cfg: LossConfig, num_classes: int, k: int, z: int, *,
                 capture: bool = True, compile: bool = False, max_len: int | None = None,
                 max_graphs: int = 6,
                 reduce_grads: Callable[[list[torch.Tensor]], None] | None = None):
        self.model, self.optim, self.bank, self.loss_cfg = model, optim, bank, loss_cfg
        self.num_classes, self.k, self.z, self.max_len = num_classes, k, z, max_len
        self.capture, self.max_graphs, self.reduce_grads = capture, max_graphs, reduce_grads
        self.device = next(iter(bank.features.values())).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.shapes: dict[tuple[int, int, int], _Shape] = {}
        self.cuda = self.device.type == "cuda"
        # torch.compile fuses the elementwise chains (gather, masks, ReLUs, the losses)
        # into few kernels. It compiles in the first warm-up; a second shape recompiles
        # once with symbolic sizes (dynamo's automatic dynamic shapes), which then serves
        # every later shape: each is still captured as its own graph
        self.loss_terms = torch.compile(self._loss_terms) if compile else self._loss_terms
        self.side = torch.cuda.Stream(self.device) if self.cuda else None

    # ----------------------------------------------------------------- host side

    def step(self, video_ids: Sequence[str], starts: np.ndarray, lengths: np.ndarray,
             targets: np.ndarray, groups: np.ndarray, group_class: np.ndarray
             ) -> dict[str, torch.Tensor]:
        """One update on a batch; returns the loss terms (device tensors, detached).

        Args:
            video_ids: ``B`` videos of the bank. starts, lengths: ``(B,)`` each video's
                crop (first snippet, snippets). targets: ``(B, C)`` multi-hot.
            groups: ``(Z', K)`` batch rows per cluster group, -1 padded (``Z' <= z``).
            group_class: ``(Z',)``.
        """
        b = len(video_ids)
        z = max(self.z, len(groups))
        t = bucket_length(int(lengths.max()), self.max_len)
        shape = self._shape((b, t, z))
        first = np.fromiter((self.bank.row[v] for v in video_ids), np.int64, b) + starts
        padded = np.full((z, self.k), -1, np.int64)
        padded[:len(groups)] = groups
        classes = np.zeros(z, np.int64)
        classes[:len(group_class)] = group_class
        meta = np.concatenate([first, lengths.astype(np.int64), padded.ravel(), classes])
        self._copy_in(shape.meta, torch.from_numpy(meta))
        self._copy_in(shape.targets, torch.from_numpy(targets.astype(np.float32)))
        shape.seen += 1
        if shape.graph is None and self.capture and shape.seen == 3 \
                and sum(s.graph is not None for s in self.shapes.values()) < self.max_graphs:
            self._capture(shape, (b, t, z))
        if shape.graph is not None:
            shape.graph.replay()
            for p, g in zip(self.params, shape.grads):
                p.grad = g
            terms = shape.terms
        else:
            terms = self._eager(shape, (b, t, z), warm_up=self.capture and shape.seen < 3)
        if self.reduce_grads is not None:
            self.reduce_grads([p.grad for p in self.params])
        self.optim.step()
        if shape.graph is None:
            self.optim.zero_grad(set_to_none=True)
        return terms

    def _shape(self, key: tuple[int, int, int]) -> _Shape:
        if key not in self.shapes:
            b, _, z = key
            self.shapes[key] = _Shape(
                meta=torch.zeros(2 * b + z * self.k + z, dtype=torch.long, device=self.device),
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

    def _loss_terms(self, meta: torch.Tensor, targets: torch.Tensor, b: int, t: int, z: int
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Gather the batch from the bank, forward, loss (``meta`` as :meth:`step` packs it)."""
        first, lengths = meta[:b], meta[b:2 * b]
        groups = meta[2 * b:2 * b + z * self.k].view(z, self.k)
        group_class = meta[2 * b + z * self.k:]
        steps = torch.arange(t, device=meta.device)
        mask = steps[None, :] < lengths[:, None]                              # (B, T)
        rows = (first[:, None] + steps[None, :]).clamp(max=self.bank.total - 1)
        inputs = {s: feats[rows].float() * mask[..., None]                   # (B, T, D_s)
                  for s, feats in self.bank.features.items()}
        outputs = self.model(inputs, mask)
        return total_loss(outputs, {"mask": mask, "targets": targets, "groups": groups,
                                    "group_class": group_class}, self.loss_cfg)

    def _forward_backward(self, shape: _Shape, key: tuple[int, int, int]
                          ) -> dict[str, torch.Tensor]:
        """Loss and backward: the captured body."""
        loss, terms = self.loss_terms(shape.meta, shape.targets, *key)
        loss.backward()
        return terms

    def _eager(self, shape: _Shape, key: tuple[int, int, int], warm_up: bool
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

    def _capture(self, shape: _Shape, key: tuple[int, int, int]) -> None:
        # gradients None: backward inside the capture allocates them from the graph's
        # pool, so every replay rewrites the same buffers (no accumulation)
        self.optim.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            shape.terms = self._forward_backward(shape, key)
        shape.grads = [p.grad for p in self.params]
        shape.graph = graph

