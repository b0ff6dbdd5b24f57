"""Training of the co-attention network(s) (one round of localisation); the checkpoint
they are saved in. The networks are :class:`acl_dist.model.StreamModels`, the loss is
:func:`acl_dist.losses.video_terms` then :func:`acl_dist.losses.batch_loss` (each video's
pooled terms, then the batch's), inference is :mod:`acl_dist.infer`.

:func:`fit` is the per-worker loop. It is plain PyTorch: Ray Train calls it from
:func:`acl_dist.ray_train.train_loop_per_worker` with the worker's data shard, its
:class:`~acl_dist.collectives.WorkerGroup`, a DDP wrapper and a reporting hook; tests and
the GPU check call it directly. On N workers every step is one global batch
(:mod:`acl_dist.global_batch`): the loss and gradient of one worker on that batch. By
default one network takes the streams' concatenated features (``model.fusion=early``);
under the paper's ``late`` fusion the RGB and flow networks are independent (trained
"separately", METHOD.md §10) and share the batch and one Adam (Adam's state is per parameter: two optimisers).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from .collectives import WorkerGroup
from .config import RunConfig, to_dict
from .global_batch import Split, VideoRef, bucket_rows, split_batch, video_table
from .graphed_step import FeatureBank, GraphedStep
from .losses import batch_loss, gather_terms, video_terms
from .model import StreamModels, channel_keep, pad_inputs
from .progress import StepLines
from .sampling import Batch, ClusterBatcher, T, batches_with_replacement, shuffled


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


def row_classes(batch: Batch) -> np.ndarray:
    """``(B,)`` int64: each row's group's cluster, 0 for the fill (what
    :func:`acl_dist.losses.group_classes` computes on the device)."""
    out = np.zeros(len(batch.items), np.int64)
    for rows, c in zip(batch.groups, batch.group_labels):
        out[rows] = c
    return out


def graph_batch(batch: Batch[VideoItem], num_classes: int, k: int, max_len: int | None,
                rng: np.random.Generator) -> tuple:
    """A one-worker batch as :meth:`acl_dist.graphed_step.GraphedStep.step` takes it (host
    arrays; the same crops, drawn from ``rng`` the same way, as :func:`batch_tensors`)."""
    starts, lengths = crop_windows(batch.items, max_len, rng)
    return ([item.video_id for item in batch.items], starts, lengths, row_classes(batch),
            multi_hot(batch.items, num_classes), group_rows(batch, k),
            np.array(batch.group_labels, np.int64))


def batch_stream(refs: Sequence[T], cfg: RunConfig) -> Iterable[Batch[T]]:
    """Endless global batches of the round's videos (every worker draws the same):
    epoch after epoch, each video once per epoch; or, with ``train.sampling=replacement``,
    the paper's draws with replacement. ``refs`` in a fixed order (by id)."""
    tc = cfg.train
    seed = tc.seed * 1009
    if tc.sampling == "replacement":
        yield from batches_with_replacement(refs, lambda it: it.labels,
                                            tc.clusters_per_batch, tc.videos_per_cluster,
                                            tc.batch_size, seed=seed)
        return
    batcher = ClusterBatcher(tc.clusters_per_batch, tc.videos_per_cluster, tc.batch_size,
                             seed=seed)
    epoch = 0
    while True:
        yield from batcher.batches(shuffled(refs, seed, epoch), lambda it: it.labels, epoch)
        epoch += 1


@dataclass
class TrainResult:
    """What a round of training produced."""

    state_dict: dict[str, torch.Tensor]
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0


class GlobalBatchStep:
    """One worker's updates on the global batches: the rows it holds forward, every row's
    :class:`~acl_dist.losses.VideoTerms` gathered, the global batch's loss (the same
    value on every worker), backward, the update. Why the gradient comes out as one
    worker's: every worker's loss is the global one, the gather's backward sums the
    workers' gradients of each row (N times the global loss's), and DDP divides by N.

    Args:
        model: the (DDP-wrapped) models; core: the same unwrapped.
        local: the videos this worker holds, by id.
        graphed: a :class:`~acl_dist.graphed_step.GraphedStep` to take the steps instead
            (on every worker or none).
    """

    def __init__(self, model: nn.Module, core: StreamModels, optim: torch.optim.Optimizer,
                 local: dict[str, VideoItem], group: WorkerGroup, cfg: RunConfig,
                 num_classes: int, in_dims: dict[str, int], device: torch.device,
                 graphed: GraphedStep | None = None):
        self.model, self.core, self.optim, self.local = model, core, optim, local
        self.group, self.cfg, self.num_classes, self.device = group, cfg, num_classes, device
        self.in_dims, self.graphed = in_dims, graphed

    def step(self, batch: Batch[VideoRef], starts: np.ndarray, lengths: np.ndarray
             ) -> dict[str, torch.Tensor]:
        """One update on ``batch`` cropped to ``starts``/``lengths`` (global rows);
        the global batch's loss terms (detached)."""
        if self.graphed is not None:
            return self._graphed(batch, starts, lengths)
        loss, logged = self.loss(batch, starts, lengths)
        self.optim.zero_grad(set_to_none=True)
        loss.backward()
        self.optim.step()
        return logged

    def loss(self, batch: Batch[VideoRef], starts: np.ndarray, lengths: np.ndarray
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The global batch's loss through this worker's rows (differentiable), and its
        terms (detached). Draws the batch's dropout masks from torch's default generator
        (every worker alike)."""
        tc, group, dev = self.cfg.train, self.group, self.device
        split = split_batch([ref.owner for ref in batch.items], group.world_size)
        mine = split.rows[group.rank]
        row_class = row_classes(batch)
        keep = channel_keep(self.core, len(batch.items))   # the global batch's dropout
        if len(mine):
            per_stream = {s: [self.local[batch.items[p].video_id].features[s]
                              [starts[p]:starts[p] + lengths[p]] for p in mine]
                          for s in self.in_dims}
            keep = {n: m[mine] for n, m in keep.items()} if keep else None
        else:   # none of the step's videos is here: one blank row keeps this worker in the
            # step's collectives (its terms are gathered into no row of the batch)
            mine = np.zeros(1, np.int64)
            per_stream = {s: [np.zeros((1, d), np.float32)] for s, d in self.in_dims.items()}
            keep = {n: torch.ones(1, m.shape[1]) for n, m in keep.items()} if keep else None
        inputs, mask = pad_inputs(per_stream, self.core.streams if self.core.early else None,
                                  dev)
        outputs = self.model(inputs, mask,
                             {n: m.to(dev) for n, m in keep.items()} if keep else None)
        terms = video_terms(outputs, mask, torch.from_numpy(row_class[mine]).to(dev),
                            self.cfg.loss)
        if group.world_size > 1:
            terms = gather_terms(terms, torch.from_numpy(split.gather_index()).to(dev), group,
                                 rows=split.cap)
        targets = torch.from_numpy(multi_hot(batch.items, self.num_classes)).to(dev)
        return batch_loss(terms, targets,
                          torch.from_numpy(group_rows(batch, tc.videos_per_cluster)).to(dev),
                          torch.tensor(batch.group_labels, dtype=torch.long).to(dev),
                          self.cfg.loss)

    def _graphed(self, batch: Batch[VideoRef], starts: np.ndarray, lengths: np.ndarray
                 ) -> dict[str, torch.Tensor]:
        group, many = self.group, self.group.world_size > 1
        split = split_batch([ref.owner for ref in batch.items], group.world_size)
        if many:   # every worker's rows padded to one of few sizes: few graph shapes
            split = Split(split.rows, bucket_rows(split.cap, len(batch.items)))
        mine = split.rows[group.rank]
        return self.graphed.step(
            [batch.items[p].video_id for p in mine], starts[mine], lengths[mine],
            row_classes(batch)[mine], multi_hot(batch.items, self.num_classes),
            group_rows(batch, self.cfg.train.videos_per_cluster),
            np.array(batch.group_labels, np.int64),
            gather_index=split.gather_index() if many else None,
            rows=split.cap if many else None, longest=int(lengths.max()))


def fit(items: Sequence[VideoItem], cfg: RunConfig, num_classes: int, in_dims: dict[str, int],
        *, group: WorkerGroup | None = None, device: str | torch.device = "cpu",
        wrap: Callable[[nn.Module], nn.Module] | None = None,
        report: Callable[[dict[str, float], int, dict[str, Any] | None], None] | None = None,
        start: dict[str, Any] | None = None,
        progress: Callable[[dict[str, float], int], None] | None = None) -> TrainResult:
    """Train the stream models for ``cfg.train.steps`` updates; on several workers, this
    worker's part of every global batch. Long because: the training loop reads best whole
    (resume, seeding, DDP wrap, logging and checkpoint steps in one place, as nanoGPT's).

    The batches, crops and dropout masks are drawn for the global batch from seeds every
    worker shares, over the round's videos sorted by id: N workers train on the batches
    one worker trains on, whichever shard each worker got.

    Args:
        items: this worker's videos (with several workers its disjoint shard; may be empty).
        num_classes: C. in_dims: stream -> feature dim.
        group: the workers (:class:`~acl_dist.collectives.WorkerGroup`); None: one.
        wrap: e.g. DDP (``ray.train.torch.prepare_model``); applied after moving to device.
        report: ``report(metrics, step, state)``, called at the same steps on every worker
            (Ray Train's report is a barrier): every ``log_every`` steps, every
            ``checkpoint_every`` steps and at the end. ``state`` (:func:`training_state`)
            is given at checkpoint steps and at the end, else None. The loss terms are the
            global batch's, the same on every worker.
        start: a state from :func:`training_state` to resume from (model, optimiser, step).
        progress: ``progress(metrics, step)`` (the loss terms, ``videos_per_s``) for a
            progress line, at the steps :class:`~acl_dist.progress.StepLines` picks: the
            first, every ``train.log_every``-th, the last, and one at least every 10 s,
            whatever ``train.steps`` is. Given to one worker only (its steps depend on the
            clock; it runs no collective).
    Returns:
        :class:`TrainResult` with the (unwrapped) model's state dict.
    """
    tc = cfg.train
    group = group or WorkerGroup()
    device = torch.device(device)
    held = group.exchange(([(it.video_id, it.num_snippets, list(it.labels)) for it in items],
                           can_graph(items, cfg, device)))
    refs = video_table([h[0] for h in held])
    if not refs:
        raise ValueError("no training videos reached the workers")
    model, optim, sched, step = training_setup(cfg, num_classes, in_dims, device, start)
    core = model
    graphed = None
    if all(h[1] for h in held):   # every worker or none: their collectives must match
        graphed = GraphedStep(model, optim, FeatureBank(items, device), cfg.loss, num_classes,
                              tc.videos_per_cluster, tc.clusters_per_batch, max_len=tc.max_len,
                              compile=bool(tc.compile),
                              group=group if group.world_size > 1 else None)
    if wrap is not None and graphed is None:
        model = wrap(model)
    # The same draws on every worker: the global batch's dropout masks. (The graphed step
    # drops inside its graph, each worker for its own rows: independent per rank.)
    torch.manual_seed(tc.seed * 7919 + step + (group.rank if graphed is not None else 0))
    rng = np.random.default_rng([tc.seed, 0, step])   # crops (0: as one worker drew them)
    stream = iter(batch_stream(refs, cfg))
    steps = GlobalBatchStep(model, core, optim, {it.video_id: it for it in items}, group,
                            cfg, num_classes, in_dims, device, graphed)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    window_videos, window_start = 0, time.perf_counter()
    lines = StepLines(tc.steps, tc.log_every) if progress is not None else None
    model.train()
    while step < tc.steps:
        batch = next(stream)
        starts, lengths = crop_windows(batch.items, tc.max_len, rng)
        terms = steps.step(batch, starts, lengths)
        sched.step()
        step += 1
        window_videos += len(batch.items)
        last = step == tc.steps
        due_ckpt = last or (tc.checkpoint_every > 0 and step % tc.checkpoint_every == 0)
        rate = lines.step(step, len(batch.items)) if lines is not None else None
        if rate is not None:
            progress({**terms_to_floats(terms), "videos_per_s": rate}, step)
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


def can_graph(items: Sequence[VideoItem], cfg: RunConfig, device: torch.device) -> bool:
    """Whether this worker can take the CUDA-graph step: a CUDA device,
    ``train.cuda_graphs``, and its videos within a third of the device's free memory."""
    if device.type != "cuda" or not cfg.train.cuda_graphs or not items:
        return False
    return FeatureBank.nbytes(items) <= torch.cuda.mem_get_info(device)[0] // 3


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
