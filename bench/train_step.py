"""The CPU training step: acl-dist's against its floor and the authors' one-at-a-time loop.

Three steps on the same videos, alternating, in one process (ratios, not absolute times, on
a shared machine):

* ``plain MLP, equal FLOPs`` -- the floor: a per-snippet MLP whose matmul FLOPs equal the
  ACL network's (bench/floors.py), cross-entropy, Adam, on the already padded batch.
* ``acl-dist step`` -- what :func:`acl_dist.train.fit` runs per step: crop and pad the
  batch (float16 store arrays), forward, every loss term, backward, Adam.
* ``one at a time`` -- the authors' loop: each video alone, gradients accumulated (L_cls
  only: pairs need the batch), then one update.

    python bench/train_step.py [--dim 1024] [--batch 32] [--max-len 256] [--repeats 5]

Target: the acl-dist step <= 0.3 s at 32 videos x 256 snippets x 2 x 1024-d on
2 cores.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from acl_dist.config import RunConfig  # noqa: E402
from acl_dist.losses import classification_loss, total_loss  # noqa: E402
from acl_dist.model import StreamModels  # noqa: E402
from acl_dist.sampling import Batch  # noqa: E402
from acl_dist.train import VideoItem, batch_tensors  # noqa: E402
from bench.floors import PlainModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024, help="feature dim per stream")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    cfg = RunConfig()
    dims = {"rgb": args.dim, "flow": args.dim}
    b, classes = args.batch, args.classes
    lengths = rng.integers(args.max_len, 3 * args.max_len, size=b)   # all cropped to max_len
    items = []
    for i, t in enumerate(lengths):
        items.append(VideoItem(f"v{i}", {s: rng.standard_normal((int(t), d)).astype(np.float16)
                                         for s, d in dims.items()}, [i % classes]))
    z = min(4, b // 2)
    batch = Batch(items=items, groups=[[2 * g, 2 * g + 1] for g in range(z)],
                  group_labels=list(range(z)))
    model = StreamModels(dims, classes, cfg.model).train()
    optim = torch.optim.Adam(model.parameters(), lr=1e-4)
    early = model.streams if model.early else None
    plain = PlainModel(model, sum(dims.values()), cfg.model.base_dim, classes)
    popt = torch.optim.Adam(plain.parameters(), lr=1e-4)
    fixed = batch_tensors(batch, classes, 2, args.max_len, rng, early=model.streams)
    x_plain = fixed["inputs"]["early"]
    y_plain = torch.tensor([it.labels[0] for it in items])

    def floor() -> None:
        loss = torch.nn.functional.cross_entropy(plain(x_plain), y_plain)
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()

    def acl_step() -> None:
        t = batch_tensors(batch, classes, 2, args.max_len, rng, early=early)
        loss, _ = total_loss(model(t["inputs"], t["mask"]), t, cfg.loss)
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    def one_at_a_time() -> None:
        optim.zero_grad(set_to_none=True)
        for i, item in enumerate(items):
            start = int(rng.integers(0, item.num_snippets - args.max_len + 1))
            x = torch.cat([torch.from_numpy(item.features[s][start:start + args.max_len]).float()
                           for s in dims], -1)[None]
            mask = torch.ones(1, x.shape[1], dtype=torch.bool)
            out = model({"early": x}, mask) if model.early else None
            loss = sum(classification_loss(o.video_logits, fixed["targets"][i:i + 1])
                       for o in out.values())
            (loss / b).backward()
        optim.step()

    steps = {"plain MLP, equal FLOPs": floor, "acl-dist step": acl_step,
             "one at a time": one_at_a_time}
    times: dict[str, list[float]] = {name: [] for name in steps}
    for fn in steps.values():   # warm-up
        fn()
    for _ in range(args.repeats):
        for name, fn in steps.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain MLP, equal FLOPs"])
    print(f"{b} videos x {args.max_len} snippets x 2 x {args.dim}-d (float16 store arrays), "
          f"default network ({plain.acl_macs:,} MACs/snippet; plain MLP {plain.macs:,}), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} cores")
    print(f"\n{'training step':24s} {'s/step':>8s} {'videos/s':>9s} {'x floor':>8s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:24s} {med:8.3f} {b / med:9.1f} {med / base:8.2f}")


if __name__ == "__main__":
    main()
