"""A trained checkpoint over whole videos: rebuild the stream models from a checkpoint
dict (:func:`load_models`) and run them over videos in padded, length-sorted batches
(:func:`predict`). Plain PyTorch: the attention pass's Ray Data actor, the benches and the
GPU check call it alike."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .config import ModelConfig, from_dict
from .localize import fuse
from .model import StreamModels, pad_inputs


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
        inputs, mask = pad_inputs({s: [videos[j][1][s] for j in chunk] for s in streams},
                                  model.streams if model.early else None, device)
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
