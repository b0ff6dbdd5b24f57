"""Reference models for the benches' floors: what a step of the same size costs without
ACL's structure (used by bench/train_step.py on CPUs and scripts/gpu_check.py on a GPU)."""

from __future__ import annotations

import torch


class PlainModel(torch.nn.Module):
    """A plain per-snippet MLP (Linear D->base->h->C, mean over time, cross-entropy) whose
    matmul FLOPs equal the ACL network's (``h`` solved for): the floor a launch-free step
    of that size could reach."""

    def __init__(self, acl: torch.nn.Module, dim: int, base: int, classes: int):
        super().__init__()
        macs = sum(m.in_channels * m.out_channels * m.kernel_size[0]
                   for m in acl.modules() if isinstance(m, torch.nn.Conv1d))
        self.hidden = max(1, round((macs - dim * base) / (base + classes)))
        self.macs = dim * base + self.hidden * (base + classes)
        self.acl_macs = macs
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, base), torch.nn.ReLU(),
                                       torch.nn.Linear(base, self.hidden), torch.nn.ReLU(),
                                       torch.nn.Linear(self.hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).mean(dim=1)
