"""Batched, padded training step vs a one-video-at-a-time loop of the same model.

The authors' code fed 32 videos one at a time and accumulated gradients; acl-dist pads a
batch of whole (or cropped) videos and runs one masked forward. Both sides here run the
same two stream models with L_cls on the same videos, alternating, in one process.

    python bench/train_step.py [--dim 1024] [--batch 16] [--max-len 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from acl_dist.config import ModelConfig
from acl_dist.losses import classification_loss
from acl_dist.model import pad_batch
from acl_dist.model import StreamModels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024, help="feature dim per stream")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    dims = {"rgb": args.dim, "flow": args.dim}
    model = StreamModels(dims, args.classes, ModelConfig())
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    lengths = rng.integers(args.max_len // 3, args.max_len + 1, size=args.batch)
    videos = [{s: rng.standard_normal((t, args.dim)).astype(np.float32) for s in dims}
              for t in lengths]
    targets = torch.zeros(args.batch, args.classes)
    targets[torch.arange(args.batch), torch.from_numpy(rng.integers(0, args.classes, args.batch))] = 1

    def batched() -> None:
        inputs, mask = {}, None
        for s in dims:
            inputs[s], mask = pad_batch([v[s] for v in videos])
        out = model(inputs, mask)
        loss = sum(classification_loss(o.video_logits, targets) for o in out.values())
        optim.zero_grad()
        loss.backward()
        optim.step()

    def one_at_a_time() -> None:
        optim.zero_grad()
        for i, v in enumerate(videos):
            inputs = {s: torch.from_numpy(v[s])[None] for s in dims}
            mask = torch.ones(1, len(v["rgb"]), dtype=torch.bool)
            out = model(inputs, mask)
            loss = sum(classification_loss(o.video_logits, targets[i:i + 1]) for o in out.values())
            (loss / args.batch).backward()
        optim.step()

    times: dict[str, list[float]] = {"batched": [], "one at a time": []}
    batched(), one_at_a_time()  # warm-up
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("one at a time", one_at_a_time)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["one at a time"])
    print(f"model: 2 streams x D={args.dim}, batch {args.batch} videos of "
          f"{lengths.min()}-{lengths.max()} snippets, torch threads {torch.get_num_threads()}")
    print(f"\n{'training step':18s} {'s/step':>8s} {'videos/s':>9s} {'speed-up':>9s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:18s} {med:8.3f} {args.batch / med:9.1f} {base / med:8.2f}x")


if __name__ == "__main__":
    main()
