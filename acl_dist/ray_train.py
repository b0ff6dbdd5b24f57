"""One round's training on Ray Train: ``TorchTrainer`` with ``ScalingConfig(num_workers,
use_gpu)``, the training videos as a Ray Data dataset split across workers without drops
(``get_dataset_shard``), DDP through ``prepare_model``, checkpoints through
``ray.train.report``. The per-worker loop itself is :func:`acl_dist.train.fit` (plain
PyTorch); this module feeds it a shard and reports for it.

A round's fit can start before its pseudo-labels exist (:class:`EarlyTraining`): the
workers start, read and spill their shards while the driver runs the previous round's
attention pass and clustering, then wait for the labels in a :func:`label_inbox`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import tempfile
import threading
import warnings
from typing import Any, Mapping

import numpy as np

from . import fsutil
from .artifacts import (ArtifactError, RunDir, load_train_checkpoint, save_train_checkpoint,
                        verify_train_storage)
from .collectives import WorkerGroup
from .config import RunConfig, from_dict, to_dict, with_updates
from .errors import find_cause
from .ray_data import store_dataset
from .store import FeatureStore, feature_views
from .train import VideoItem, fit, make_checkpoint


def _no_drop_data_config():
    """Ray Train's default split may drop rows to equalise shards (``equal=True``); the
    global batches draw every video once per epoch, so split without dropping (a dropped
    video's features would be on no worker). Unequal shards are fine: each worker
    computes the rows of every step's global batch that it holds. One worker reads the dataset
    itself (``ds.iterator()``, as Ray's DataConfig does for a dataset it does not split):
    a split would start a coordinator actor, one more process per round."""
    from ray.train import DataConfig

    class NoDropDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                with warnings.catch_warnings():  # Ray's own default still sets a deprecated field
                    warnings.simplefilter("ignore")
                    ds.context.execution_options = DataConfig.default_ingest_options()
                splits = [ds.iterator()] if world_size == 1 else \
                    ds.streaming_split(world_size, equal=False)
                for i, split in enumerate(splits):
                    output[i][name] = split
            return output

    return NoDropDataConfig()


class _Board:
    """TensorBoard events of one round's training (losses per term and stream, lr,
    throughput) as ``round_<r>/<tag>`` (:class:`acl_dist.board.EventFile`)."""

    def __init__(self, target: str | None, round_index: int):
        from .board import EventFile

        self.events = EventFile(target) if target else None
        self.round = round_index

    def add(self, metrics: dict[str, float], step: int) -> None:
        if self.events is None:
            return
        for key, value in metrics.items():
            if key in ("step", "worker_videos"):
                continue
            tag = key if "/" in key else f"train/{key}"
            self.events.add(f"round_{self.round}/{tag}", value, step)

    def close(self) -> None:
        if self.events is not None:
            self.events.close()
            self.events = None


def _quiet_train_reports() -> None:
    """Drop Train V2's INFO line per report (the whole metrics dict): we print one progress
    line instead. Its logger is named after its file path, not ``ray.train``."""
    try:
        from ray.train.v2._internal.execution import context
    except ImportError:  # a Ray without Train V2's layout: nothing to quiet
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class ShardSpill:
    """A training worker's shard, streamed once from Ray Data into a local file and then
    memory-mapped: epochs read the features from the page cache, so a worker's own memory
    stays bounded by a batch whatever its shard size (an ActivityNet shard is gigabytes).

    The file is unlinked as soon as it is mapped (it lives while the mapping does), so a
    killed worker leaves nothing behind.
    """

    def __init__(self, directory: str | None = None):
        self._fh = tempfile.TemporaryFile(dir=directory, prefix="acl-shard-")
        # (video id, stream -> (byte offset, shape, dtype))
        self._entries: list[tuple[str, dict[str, tuple]]] = []
        self._offset = 0

    def add(self, video_id: str, features: dict[str, np.ndarray]) -> None:
        placed = {}
        for name, arr in features.items():
            arr = np.ascontiguousarray(arr)
            self._fh.write(arr.tobytes())
            placed[name] = (self._offset, arr.shape, arr.dtype.str)
            self._offset += arr.nbytes
        self._entries.append((video_id, placed))

    def items(self, labels: Mapping[str, list[int]]) -> list:
        """The shard as :class:`~acl_dist.train.VideoItem` s whose features are views into
        the mapped file, each with its video's ``labels`` (given now: an early-started
        round spills its shard before its labels exist)."""
        self._fh.flush()
        if self._offset == 0:
            return [VideoItem(v, {}, list(labels[v])) for v, _ in self._entries]
        # copy-on-write: writable views (torch.as_tensor warns on read-only arrays), the file
        # itself never changes
        mapped = np.memmap(self._fh, dtype=np.uint8, mode="c", shape=(self._offset,))
        out = []
        for vid, placed in self._entries:
            feats = {}
            for name, (offset, shape, dt) in placed.items():
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                feats[name] = mapped[offset:offset + n].view(dt).reshape(shape)
            out.append(VideoItem(vid, feats, list(labels[vid])))
        self._fh.close()   # the mapping keeps the (already unlinked) file alive
        return out


def _shard_items(config: dict[str, Any]) -> list[VideoItem] | None:
    """This worker's training videos with their labels, in id order: its Ray Data shard
    spilled (:class:`ShardSpill`), then the labels (from the config, or, for a round
    started early, from its inbox once the driver has clustered; None: the run stopped)."""
    import ray
    import ray.train

    streams, dtype = config["streams"], config["dtype"]
    videos = set(config["videos"])   # the training videos (held-out ones are not)
    spill = ShardSpill()
    for batch in ray.train.get_dataset_shard("train").iter_batches(batch_format="pyarrow",
                                                                   batch_size=64):
        # checked where the read task decoded them from the shard (naming it): not again
        feats = {s: feature_views(batch.column(s), d, dtype, check=False)
                 for s, d in streams.items()}
        for i, vid in enumerate(batch.column("video_id").to_pylist()):
            if vid in videos:
                spill.add(vid, {s: feats[s][i] for s in streams})
    labels = config["labels"]
    if labels is None:
        labels = ray.get(config["inbox"].get.remote(config["round"]))
        if labels is None:
            return None
    # Ray Data hands rows over in no fixed order: in id order, the feature bank of a GPU
    # worker is laid out alike in every run (the batches come from the id-sorted table of
    # every worker's videos, train.fit)
    return sorted(spill.items(labels), key=lambda item: item.video_id)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: spill this worker's shard to a mapped file, restore a checkpoint
    if Ray restarted it, then :func:`train.fit` with a report hook (TensorBoard,
    checkpoints) and rank 0's progress lines. Long because: the worker's whole life in the
    order it happens."""
    import ray.train
    import ray.train.torch
    import torch

    _quiet_train_reports()
    cfg = from_dict(RunConfig, config["run_config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    streams = config["streams"]
    items = _shard_items(config)
    if items is None:   # the run stopped before this round's labels existed
        return
    start = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        with resume.as_directory() as d:
            start = load_train_checkpoint(d)
        if rank == 0:
            sys.stdout.write(f"  round {config['round']}: training restarted, resuming from "
                             f"the checkpoint of step {start['step']}\n")
            sys.stdout.flush()
    device = ray.train.torch.get_device()
    steps = cfg.train.steps

    history: list[dict[str, float]] = []
    board = _Board(config.get("tensorboard_dir"), config["round"]) if rank == 0 else None

    def report(metrics: dict[str, float], step: int, state: dict | None) -> None:
        metrics = dict(metrics, worker_videos=len(items))
        history.append(metrics)
        if board is not None:
            board.add(metrics, step)
            if step == steps:
                board.close()
        if state is None or rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            final = make_checkpoint(state["model"], cfg, config["num_classes"], streams,
                                    config["label_names"], config["round"], history) \
                if step == steps else None
            save_train_checkpoint(d, state, final)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    def line(metrics: dict[str, float], step: int) -> None:
        # Written to the stream, not print(): Train V2 patches print into its logger and
        # would echo each line twice.
        sys.stdout.write(f"  round {config['round']} step {step}/{steps} "
                         f"loss {metrics['loss']:.3f} "
                         f"({metrics['videos_per_s']:.0f} videos/s)\n")
        sys.stdout.flush()

    try:
        # rank 0's progress lines: its first step, every log_every-th, one at least every
        # 10 s, and its last
        fit(items, cfg, config["num_classes"], streams, group=WorkerGroup(rank, world),
            device=device, wrap=ray.train.torch.prepare_model, report=report, start=start,
            progress=line if rank == 0 and not config.get("quiet") else None)
    except BaseException:
        # a round cut short keeps the events it wrote (and leaves no temp dir); an error
        # of the copy must not hide the one that stopped the round
        if board is not None:
            with contextlib.suppress(Exception):
                board.close()
        raise
    if board is not None:
        board.close()


def label_inbox():
    """A Ray actor (no CPU, on the driver's node) that holds each early-started round's
    pseudo-labels for its workers: ``put.remote(round, labels)`` from the driver,
    ``get.remote(round)`` from the workers (waits until put; None: the run stopped). Named
    by nothing and owned by the driver: it dies with it."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    node = ray.get_runtime_context().get_node_id()
    return ray.remote(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(
        node, soft=False))(LabelInbox).remote()


class LabelInbox:
    """The class of :func:`label_inbox`'s actor (async: a waiting ``get`` blocks no
    ``put``)."""

    def __init__(self) -> None:
        self._labels: dict[int, dict | None] = {}
        self._ready: dict[int, asyncio.Event] = {}

    def _event(self, key: int) -> asyncio.Event:
        return self._ready.setdefault(key, asyncio.Event())

    async def put(self, key: int, labels: dict[str, list[int]] | None) -> None:
        """The first value put for ``key`` stays (a cancel after the labels changes
        nothing: a restarted worker gets the same labels)."""
        if key not in self._labels:
            self._labels[key] = labels
        self._event(key).set()

    async def get(self, key: int) -> dict[str, list[int]] | None:
        await self._event(key).wait()
        return self._labels[key]


class EarlyTraining:
    """One round's Ray Train fit started before its pseudo-labels exist, in a daemon
    thread of the driver: the controller, the workers, their process group and their
    shards (read and spilled) come up while the driver clusters; the workers then wait in
    ``inbox`` for :meth:`result`'s labels. That start is ~8-10 s of each round on a
    2-core machine (bench/train_start.py), as long as a demo round's attention pass and
    clustering together. The fit itself is a round's usual one, on the same videos.

    ``trainer``: the round's (:func:`_trainer`, without labels, with ``inbox``);
    ``videos``: its training videos (the labels' keys, known before them)."""

    def __init__(self, trainer: Any, inbox: Any, round_index: int, videos: list[str]):
        self.round, self.videos, self._inbox = round_index, set(videos), inbox
        self._outcome: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._fit, args=(trainer,), daemon=True,
                                        name=f"acl-dist-train-round-{round_index}")
        self._thread.start()

    def _fit(self, trainer: Any) -> None:
        try:
            self._outcome["checkpoint"] = _fit(trainer, self.round)
        except BaseException as err:   # handed to the driver's thread by result()
            self._outcome["error"] = err

    def result(self, labels: dict[str, list[int]]) -> dict[str, Any]:
        """Give the workers ``labels`` (for exactly the videos given at the start), wait
        for the fit; the final checkpoint dict, or the fit's error."""
        if set(labels) != self.videos:
            raise ValueError(f"round {self.round}: labels for {len(labels)} videos, the "
                             f"training started on {len(self.videos)}")
        self._inbox.put.remote(self.round, labels)
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["checkpoint"]

    def cancel(self, timeout_s: float = 30.0) -> None:
        """The run stopped before this round's labels: its workers return untrained (no
        checkpoint, no error) and the fit ends; waits up to ``timeout_s`` for it. Labels
        already given stay given (a None after them changes nothing): a fit interrupted
        while training runs on until the driver exits (outside the main thread, Ray Train
        installs no Ctrl-C handler of its own)."""
        with contextlib.suppress(Exception):   # Ray itself may be going down
            self._inbox.put.remote(self.round, None)
        self._thread.join(timeout_s)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()


class RoundTrainings:
    """A run's trainings, one per round, each started at its step (:meth:`train`) or early
    (:meth:`start`, an :class:`EarlyTraining`; those share one :func:`label_inbox`).
    Round ``r`` trains with seed ``seed + train.seed + 1000 r``
    (the seeding rule: :class:`~acl_dist.config.TrainConfig`), checkpoints in the run's
    ``ray_train/round_<r>`` and its TensorBoard events in ``tensorboard/round_<r>``. Before
    a round's trainer starts, the checkpoints Ray Train may restore for it (an interrupted
    round resumes from its latest) are checked: a refused or corrupt file is one line
    naming it, not a worker traceback.

    ``**fit_options``: :func:`_trainer`'s ``torch_threads``, ``max_failures``,
    ``quiet``."""

    def __init__(self, store: FeatureStore, cfg: RunConfig, run_dir: RunDir,
                 label_names: list[str], **fit_options: Any):
        self.store, self.cfg, self.dir, self.label_names = store, cfg, run_dir, label_names
        self.storage = fsutil.absolute(run_dir.path("ray_train"))
        self.options = fit_options
        self._early: dict[int, EarlyTraining] = {}
        self._inbox: Any = None

    def _trainer(self, r: int, videos: list[str], labels: dict[str, list[int]] | None,
                 inbox: Any) -> Any:
        """Round ``r``'s ``TorchTrainer`` (its seed, storage checked, TensorBoard dir)."""
        cfg = with_updates(self.cfg, train={"seed": self.cfg.seed + self.cfg.train.seed
                                            + 1000 * r})
        verify_train_storage(self.storage, f"round_{r}")
        board = fsutil.absolute(self.dir.tensorboard_dir(f"round_{r}"))
        return _trainer(self.store, cfg.train_subset, cfg, sorted(videos), labels, inbox,
                        cfg.num_classes, self.label_names, r, self.storage, f"round_{r}",
                        tensorboard_dir=board, **self.options)

    def start(self, r: int, videos: list[str]) -> None:
        """Start round ``r``'s fit on ``videos`` now; its labels come at :meth:`train`."""
        if self._inbox is None:
            self._inbox = label_inbox()
        self._early[r] = EarlyTraining(self._trainer(r, videos, None, self._inbox),
                                       self._inbox, r, videos)

    def train(self, r: int, labels: dict[str, list[int]]) -> tuple[dict[str, Any], bool]:
        """Round ``r``'s training on ``labels`` to its end: (the final checkpoint dict,
        whether it had started early)."""
        early = self._early.get(r)
        if early is not None:
            ckpt = early.result(labels)   # raising, it stays here for close() to cancel
            del self._early[r]
            return ckpt, True
        return _fit(self._trainer(r, list(labels), labels, None), r), False

    def close(self) -> None:
        """Cancel the fits started early whose step never came or failed (the run
        stopped), then end the inbox once no fit can still ask it: a fit still reading its
        shard after :meth:`EarlyTraining.cancel`'s wait keeps it (it gets None, returns,
        and the actor dies with the driver)."""
        import ray

        for early in self._early.values():
            early.cancel()
        alive = any(early.running for early in self._early.values())
        self._early.clear()
        if self._inbox is not None and not alive:
            with contextlib.suppress(Exception):
                ray.kill(self._inbox)
        self._inbox = None


def _trainer(store: FeatureStore, subset: str, cfg: RunConfig, videos: list[str],
             labels: dict[str, list[int]] | None, inbox: Any, num_classes: int,
             label_names: list[str], round_index: int, storage_path: str, name: str,
             torch_threads: int | None = None, max_failures: int = 0, quiet: bool = False,
             tensorboard_dir: str | None = None) -> Any:
    """The round's ``TorchTrainer``: the store's ``subset`` as a Ray Data dataset split
    over the workers, which train on ``videos`` with ``labels`` (or, None, those the
    ``inbox`` gets for this round)."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    ds = store_dataset(store, [subset])
    if tc.workers > 1:
        # Small blocks (streaming repartition, no shuffle): the no-drop split hands whole
        # blocks to workers, so every worker must be able to get some. (One worker reads
        # the whole dataset: the repartition's tasks, 93 a demo round, would be waste.)
        rows = max(1, store.num_videos(subset) // (tc.workers * 8))
        ds = ds.repartition(target_num_rows_per_block=rows)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run_config": to_dict(cfg), "videos": videos, "labels": labels,
                           "inbox": inbox, "num_classes": num_classes,
                           "label_names": label_names,
                           "round": round_index, "streams": store.streams,
                           "dtype": store.dtype, "torch_threads": torch_threads,
                           "quiet": quiet, "tensorboard_dir": tensorboard_dir},
        scaling_config=ScalingConfig(num_workers=tc.workers, use_gpu=bool(tc.use_gpu),
                                     resources_per_worker={"CPU": tc.cpus_per_worker},
                                     placement_strategy=tc.placement_strategy),
        datasets={"train": ds},
        dataset_config=_no_drop_data_config(),
        run_config=TrainRunConfig(name=name, storage_path=storage_path,
                                  failure_config=FailureConfig(max_failures=max_failures),
                                  # our own progress line replaces Train's per-report INFO
                                  logging_config=LoggingConfig(log_level="WARNING")))


def _fit(trainer: Any, round_index: int) -> dict[str, Any]:
    """``trainer.fit()``; the final checkpoint dict (a refused or unreadable checkpoint
    file: the :class:`ArtifactError` naming it)."""
    try:
        result = trainer.fit()
    except Exception as err:  # Train V1 and V2 wrap worker errors differently
        artifact = _artifact_error(err)
        if artifact is not None:  # a refused or unreadable checkpoint: one line naming it
            raise artifact from None
        raise
    if result.checkpoint is None:
        raise RuntimeError(f"training of round {round_index} produced no checkpoint")
    with result.checkpoint.as_directory() as d:
        return load_train_checkpoint(d, final=True)


def _artifact_error(err: BaseException) -> ArtifactError | None:
    """The :class:`ArtifactError` behind a Ray Train failure (a worker's, possibly wrapped
    in a RayTaskError), if that is what failed."""
    found = find_cause(err, ArtifactError)
    return found if isinstance(found, ArtifactError) else None
