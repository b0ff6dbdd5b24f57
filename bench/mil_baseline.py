"""A plain top-k MIL localiser: the baseline ACL's weak mode must beat.

One network on the concatenated RGB+flow features: 1-D conv (k 3) -> ReLU -> dropout ->
1-D conv (k 1) to the class activation sequence; the video score of each class is the mean
of its top-k snippets (k = T // 8); cross-entropy against the video labels (normalised
multi-hot, as ACL's L_cls). Same crops, batch size, steps and optimiser as ACL, and the
same post-processing (acl_dist.localize with the CAS, uniform attention and the top-k
scores), so the difference measures ACL's co-attention machinery. ``--fusion late`` trains
one such network per stream and averages their outputs as ACL's ``model.fusion=late`` does
(on the default benchmark that alone costs the baseline ~3 points: see docs/method.md).
``--kernel 1`` gives the first conv kernel 1 (each snippet scored alone, the reach of ACL's
default network): a stronger baseline on the default benchmark.

    python bench/mil_baseline.py --store STORE [--steps 400] [--batch 16] [--fusion late]
        [--kernel 1]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from acl_dist.config import LocalizeConfig
from acl_dist.evaluate import Detection, evaluate_detections, load_ground_truth
from acl_dist.localize import fuse, localize_video
from acl_dist.losses import topk_pooled
from acl_dist.model import pad_batch
from acl_dist.plan import default_subsets
from acl_dist.store import FeatureStore
from acl_dist.tiou import parse_tiou


class TopKMIL(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, hidden: int = 256, dropout: float = 0.5,
                 kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(in_dim, hidden, kernel, padding=kernel // 2)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Conv1d(hidden, num_classes, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, D), mask (B, T) -> CAS (B, T, C), video logits (B, C)."""
        m = mask[:, None, :].to(x.dtype)
        h = self.drop(torch.relu(self.conv(x.transpose(1, 2)) * m))
        cas = (self.head(h) * m).transpose(1, 2)
        return cas, topk_pooled(cas, mask)      # the same pooling as ACL's top-k L_cls


def train_and_evaluate(store_path: str, steps: int = 400, batch: int = 16, max_len: int = 256,
                       lr: float = 1e-3, seed: int = 0, tiou: str | None = None,
                       localize: LocalizeConfig = LocalizeConfig(),
                       exclude: set[str] = frozenset(), eval_subset: str | None = None,
                       eval_videos: set[str] | None = None, fusion: str = "early",
                       kernel: int = 3, hidden: int = 256, dropout: float = 0.5) -> dict:
    """Train on the training subset less ``exclude``; score on ``eval_videos`` of
    ``eval_subset`` (default: the whole test subset). Long because the baseline is meant
    to be read in one place: data, model, the training loop and the localisation.

    ``fusion``: ``early`` (the baseline: one network on the concatenated streams) or
    ``late`` (one network per stream, outputs averaged with ``localize.rgb_weight``, as
    ACL's ``model.fusion=late``). ``kernel``: temporal kernel of the first conv (3: the
    baseline; 1 scores each snippet alone, as ACL's ``model.base_kernel=1``). ``hidden``:
    the conv's width; ``dropout``: on its output (the knobs ACL's defaults were
    cross-validated over, so that the baseline can get the same budget).
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    store = FeatureStore.open(store_path)
    train_subset, test_subset = default_subsets(store)
    classes = store.classes
    index = {c: i for i, c in enumerate(classes)}
    streams = list(store.streams)
    late = fusion == "late" and len(streams) > 1

    def inputs(features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if late:
            return {s: features[s] for s in streams}
        return {"early": np.concatenate([features[s] for s in streams], 1)}

    train = [(inputs(r.features), [index[lb] for lb in r.labels])
             for r in store.iter_videos(train_subset, dtype=np.float32)
             if r.labels and r.video_id not in exclude]
    dims = {s: store.streams[s] for s in streams} if late else {
        "early": sum(store.streams.values())}
    models = nn.ModuleDict({name: TopKMIL(d, len(classes), hidden, dropout, kernel)
                            for name, d in dims.items()})
    optim = torch.optim.Adam(models.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(optim, [steps // 2], 0.1)
    started = time.perf_counter()
    models.train()
    for _ in range(steps):
        pick = rng.choice(len(train), size=min(batch, len(train)), replace=False)
        arrays: dict[str, list] = {name: [] for name in dims}
        targets = torch.zeros(len(pick), len(classes))
        for row, i in enumerate(pick):
            x, labels = train[i]
            t = len(next(iter(x.values())))
            start = int(rng.integers(0, max(1, t - max_len + 1))) if t > max_len else 0
            for name in dims:          # the same window in every stream
                arrays[name].append(x[name][start:start + max_len])
            targets[row, labels] = 1.0
        weights = targets / targets.sum(1, keepdim=True)
        loss = torch.zeros(())
        for name, model in models.items():
            xb, mask = pad_batch(arrays[name])
            _, video = model(xb, mask)
            loss = loss - (weights * torch.log_softmax(video, 1)).sum(1).mean()
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
    train_seconds = time.perf_counter() - started
    models.eval()
    outputs = []
    with torch.no_grad():
        for r in store.iter_videos(eval_subset or test_subset, dtype=np.float32):
            if eval_videos is not None and r.video_id not in eval_videos:
                continue
            outs = {}
            for name, x in inputs(r.features).items():
                xb = torch.from_numpy(x)[None]
                cas, video = models[name](xb, torch.ones(1, xb.shape[1], dtype=torch.bool))
                outs[name] = (cas[0].numpy(), video[0].numpy())
            if late:
                w = localize.rgb_weight
                cas = fuse(outs["rgb"][0], outs["flow"][0], w)
                video = fuse(outs["rgb"][1], outs["flow"][1], w)
            else:
                cas, video = outs["early"]
            outputs.append((r, cas, np.full(len(cas), 1.0 / len(cas)), video))
    from acl_dist.plan import guess_tiou

    res = localise_and_score(store_path, eval_subset or test_subset, eval_videos, outputs,
                             classes, localize, parse_tiou(tiou or guess_tiou(store)))
    res["train_seconds"] = round(train_seconds, 1)
    return res


def localise_and_score(store_path: str, subset: str, videos: set[str] | None,
                       outputs: list[tuple], classes: list[str], localize: LocalizeConfig,
                       tiou: list[float]) -> dict:
    """mAP dict of per-video ``(record, cas (T, C), attention (T,), video logits (C,))``
    localised with ``localize`` and scored on ``videos`` of ``subset`` (all when None)."""
    dets = [Detection(r.video_id, classes[seg.label], seg.score, seg.start, seg.end)
            for r, cas, att, video in outputs
            for seg in localize_video(cas, att, video, r.grid, r.duration, localize)]
    gt = load_ground_truth(store_path, subset, videos=videos)
    # a held-out fold may lack a class: its detections then have no ground truth to match
    return evaluate_detections(gt, dets, tiou_thresholds=tiou,
                               unknown_labels="error" if videos is None else "ignore").as_dict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", required=True)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--fusion", choices=["early", "late"], default="early")
    ap.add_argument("--kernel", type=int, default=3, help="temporal kernel of the first conv")
    args = ap.parse_args()
    out = train_and_evaluate(args.store, args.steps, args.batch, args.max_len,
                             fusion=args.fusion, kernel=args.kernel)
    k = out["tiou"].index(0.5)
    print(f"top-k MIL: mAP@0.5 {out['map'][k]:.2f}  avg {out['average']:.2f}  "
          f"(trained {out['train_seconds']} s)")


if __name__ == "__main__":
    main()
