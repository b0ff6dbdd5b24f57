"""What the training workers say to each other, in one place: the table of who holds which
video (exchanged once, when a round's training starts), the pooled features of each
step's videos (gathered, gradients kept), and the gradients' mean (for the CUDA-graph
step, where DDP's hooks cannot sit). torch.distributed only; Ray Train sets up the
process group (gloo on CPUs, NCCL on GPUs), tests start gloo groups of their own.

:class:`WorkerGroup` is what :func:`acl_dist.train.fit` is given; ``WorkerGroup()`` is one
worker alone, whose every exchange is the identity.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist


# torch 2.13 renamed all_gather_into_tensor (which now warns deprecated on every call)
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 that keeps gradients: forward, every worker's ``(b, W)`` rows
    stacked in rank order; backward, the gradient of the gathered rows summed over the
    workers (each computes a loss from them), then this worker's own ``b`` rows.

    Why ours: ``torch.distributed.nn.functional.all_gather`` does the same but warns
    deprecated on every call under torch 2.13, and its successor lives in the private
    ``torch.distributed._functional_collectives``. An all-reduce of the whole gradient
    instead of a reduce-scatter moves world-size times the bytes, a few kilobytes a
    step, and every backend (gloo included) has it."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        world, rank = dist.get_world_size(), dist.get_rank()
        ctx.rank, ctx.rows = rank, rows.shape[0]
        out = rows.new_empty((world * rows.shape[0], *rows.shape[1:]))
        _all_gather_single(out, rows.contiguous())
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class WorkerGroup:
    """The training workers of one round, as one worker sees them.

    ``WorkerGroup()`` is a single worker (no process group needed); :meth:`current` is
    the initialised ``torch.distributed`` group's view (Ray Train's workers).
    """

    def __init__(self, rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.rank, self.world_size = rank, world_size

    @classmethod
    def current(cls) -> "WorkerGroup":
        """The initialised process group's rank and size (one worker when none is)."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    def exchange(self, obj: Any) -> list[Any]:
        """Every worker's ``obj`` (picklable, small), in rank order."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def gather_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """``(world_size * b, W)``: every worker's ``(b, W)`` rows in rank order (``b``
        equal on all workers), differentiable: the gradient reaching this worker's rows
        is the sum over the workers of each one's loss's gradient of them."""
        if self.world_size == 1:
            return rows
        return _GatherRows.apply(rows)

    def average_gradients(self, grads: list[torch.Tensor]) -> None:
        """The gradients' mean over the workers, in place: one all-reduce of the gradients
        flattened into one buffer (what DDP's buckets do)."""
        if self.world_size == 1:
            return
        flat = torch._utils._flatten_dense_tensors(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        for grad, mean in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
            grad.copy_(mean)
