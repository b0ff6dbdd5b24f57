"""The Ray layer: Ray Data passes over the store, the Ray Train training step, and the
clustering task. The pure cores (model, losses, sampling, cluster, localize, evaluate)
know nothing of Ray; this module wires them to it.

* :func:`descriptor_dataset`, :func:`attention_dataset`: Ray Data ``map_batches`` over the
  store's Parquet shards (round-0 uniform descriptors; the trained models over every video:
  next round's descriptors, and CAS / attention / detections of test videos). Results are
  streamed into one Parquet file per step with :func:`write_dataset`, row group by row
  group, so no process holds all of them.
* :func:`run_training`: ``TorchTrainer`` with ``ScalingConfig(num_workers, use_gpu)``, the
  training videos as a Ray Data dataset split across workers (``get_dataset_shard``), DDP
  through ``prepare_model``, checkpoints through ``ray.train.report``.
* :func:`run_clustering_task`: spectral clustering as one Ray task, on a GPU when the
  cluster has one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import warnings
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fsutil
from .cluster import contrast_descriptor, run_clustering, video_descriptor
from .config import LocalizeConfig, RunConfig, from_dict, to_dict
from .artifacts import ArtifactError, load_checkpoint
from .errors import find_cause
from .progress import log
from .store import FeatureStore, feature_views
from .timegrid import SnippetGrid

# --------------------------------------------------------------------------- Ray start


def init_ray(num_cpus: int | None = None, quiet: bool = False) -> None:
    """Attach to ``RAY_ADDRESS`` (a cluster, or ``ray job submit``), or start a local
    instance sized for this machine: at least 4 logical CPUs, so that Ray Data keeps CPUs
    beside the training workers on a 2-core machine (RAY_NOTES.md §4)."""
    import ray

    if ray.is_initialized():  # e.g. inside a Tune trial: Ray Data's context is per process
        quiet_ray_data()
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
    # Workers' INFO chatter (every Train report, device moves) would bury the progress
    # lines; warnings and errors still reach the driver.
    kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": "WARNING",
                              "logging_config": ray.LoggingConfig(log_level="WARNING")}
    if os.environ.get("RAY_ADDRESS"):
        ray.init(address=os.environ["RAY_ADDRESS"], **kwargs)
    else:
        cpus = num_cpus or max(4, os.cpu_count() or 2)
        log(f"starting a local Ray instance ({cpus} logical CPUs)", quiet)
        # The dashboard (127.0.0.1:8265) serves the State API that Train V2's placement-group
        # cleaner polls; without it, it logs a warning every second (RAY_NOTES.md §3).
        ray.init(address="local", num_cpus=cpus, include_dashboard=_dashboard_installed(),
                 dashboard_host="127.0.0.1", object_store_memory=512 * 2**20, **kwargs)
    quiet_ray_data()


def quiet_ray_data() -> None:
    """Ray Data settings of this process: our progress lines replace Ray Data's bars and
    its every-10-s status lines, which fill terminals and `ray job logs` alike; the V1
    Parquet reader (below)."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    # Ray Data's V2 Parquet reader lists files in a 1-CPU task that places 32 footer-reader
    # actors (1 CPU each to schedule) and waits for them. With two Tune trials reading at
    # once beside their training workers, a 2 x 2-CPU cluster deadlocked there (read tasks
    # holding CPUs, footer readers unplaceable). The V1 reader reads footers in its tasks.
    ctx.use_datasource_v2 = False
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def _dashboard_installed() -> bool:
    """Whether ``ray[default]``'s dashboard can start (a minimal Ray, e.g. a stripped wheel
    on an offline GPU box, has no dashboard; asking for it there is an error)."""
    try:
        from ray._private.utils import get_dashboard_dependency_error
    except ImportError:  # another Ray layout: let Ray decide
        return True
    return get_dashboard_dependency_error() is None


def cluster_capacity(quiet: bool = False) -> tuple[int, float]:
    """(CPUs to size a run by, GPUs) of the Ray cluster, starting a local instance when
    none is running. On a cluster its CPUs; locally the machine's cores (the local instance
    reports inflated logical CPUs, see :func:`init_ray`)."""
    import ray

    init_ray(quiet=quiet)
    cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 2))
    physical = cpus if os.environ.get("RAY_ADDRESS") else (os.cpu_count() or 2)
    return physical, cluster_gpus()


def cluster_gpus() -> float:
    import ray

    return float(ray.cluster_resources().get("GPU", 0.0))


# --------------------------------------------------------------------------- Ray Data


def store_dataset(store: FeatureStore, subsets: Iterable[str], streams: bool = True):
    """The store's rows of ``subsets`` as a Ray Dataset (features optional)."""
    import ray

    columns = ["video_id", "subset", "duration", "fps", "snippet_frames", "num_snippets"]
    if streams:
        columns += list(store.streams)
    urls = store.shard_urls(list(subsets))
    return ray.data.read_parquet(urls).select_columns(columns)


def batch_features(batch: pa.Table, streams: dict[str, int], dtype: str
                   ) -> list[dict[str, np.ndarray]]:
    """Per row, stream -> ``(T, D)`` float32 array, from a pyarrow batch of the store."""
    views = {s: feature_views(batch.column(s), d, dtype) for s, d in streams.items()}
    return [{s: views[s][i].astype(np.float32) for s in streams} for i in range(batch.num_rows)]


def _f32_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


class UniformDescriptors:
    """Round-0 descriptors (uniform 1/T pooling) of a batch of store rows."""

    def __init__(self, streams: dict[str, int], dtype: str):
        self.streams, self.dtype = streams, dtype

    def __call__(self, batch: pa.Table) -> pa.Table:
        feats = batch_features(batch, self.streams, self.dtype)
        return pa.table({"video_id": batch.column("video_id"),
                         "descriptor": [_f32_bytes(video_descriptor(f)) for f in feats]})


class AttentionPass:
    """The trained stream models over whole videos (a Ray Data actor).

    Each row is either *described* (a training video of an unsupervised run: its
    ``descriptor``, the next round's clustering input, each stream pooled by its own model's
    class-agnostic attention, ``contrast`` or the paper's ``attention`` form, see
    :class:`acl_dist.config.ClusterConfig`) or *detected* (a test or validation video: the
    fused ``cas`` ``(T, C)``, per-stream ``attention_<stream>`` ``(T,)``, fused
    ``video_logits`` ``(C,)`` as raw float16/float32 bytes, and ``detections`` as JSON).
    Rows that are neither (training videos of a weak run) are dropped before the forward.
    """

    def __init__(self, checkpoint_path: str, streams: dict[str, int], dtype: str,
                 detect_subsets: list[str], localize: dict[str, Any],
                 describe_subset: str | None, detect_ids: list[str] = (),
                 descriptor: str = "contrast", torch_threads: int | None = None):
        import torch

        from .train import load_models

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_models(load_checkpoint(checkpoint_path), self.device)
        self.streams, self.dtype = streams, dtype
        self.detect_subsets = set(detect_subsets)
        self.detect_ids = set(detect_ids)
        self.describe_subset = describe_subset
        self.localize = from_dict(LocalizeConfig, localize)
        self.describe = contrast_descriptor if descriptor == "contrast" else video_descriptor

    def __call__(self, batch: pa.Table) -> pa.Table:
        from .localize import localize_video
        from .train import predict

        ids = batch.column("video_id").to_pylist()
        subsets = batch.column("subset").to_pylist()
        detect = [s in self.detect_subsets or v in self.detect_ids for v, s in zip(ids, subsets)]
        keep = [i for i in range(len(ids))
                if detect[i] or subsets[i] == self.describe_subset]
        out: dict[str, list] = {k: [] for k in (
            "video_id", "subset", "descriptor", "cas", "video_logits", "detections",
            *[f"attention_{s}" for s in self.streams])}
        if not keep:
            return pa.table(out, schema=self._schema())
        batch = batch.take(keep)
        ids, subsets, detect = [ids[i] for i in keep], [subsets[i] for i in keep], \
            [detect[i] for i in keep]
        feats = batch_features(batch, self.streams, self.dtype)
        preds = predict(self.model, list(zip(ids, feats)), self.device)
        for i, p in enumerate(preds):
            out["video_id"].append(ids[i])
            out["subset"].append(subsets[i])
            out["descriptor"].append(b"" if detect[i] else
                                     _f32_bytes(self.describe(feats[i], p.attention)))
            if detect[i]:
                cas, att, logits = p.fused(self.localize.rgb_weight)
                grid = SnippetGrid(batch.column("fps")[i].as_py(),
                                   batch.column("snippet_frames")[i].as_py())
                segs = localize_video(cas, att, logits, grid,
                                      batch.column("duration")[i].as_py(), self.localize)
                out["cas"].append(np.ascontiguousarray(cas, dtype=np.float16).tobytes())
                out["video_logits"].append(_f32_bytes(logits))
                out["detections"].append(json.dumps([list(s) for s in segs]))
                for s in self.streams:
                    out[f"attention_{s}"].append(
                        np.ascontiguousarray(p.attention[s], dtype=np.float16).tobytes())
            else:
                out["cas"].append(b"")
                out["video_logits"].append(b"")
                out["detections"].append("[]")
                for s in self.streams:
                    out[f"attention_{s}"].append(b"")
        return pa.table(out, schema=self._schema())

    def _schema(self) -> pa.Schema:
        return pa.schema([("video_id", pa.string()), ("subset", pa.string()),
                          ("descriptor", pa.binary()), ("cas", pa.binary()),
                          ("video_logits", pa.binary()), ("detections", pa.string()),
                          *[(f"attention_{s}", pa.binary()) for s in self.streams]])


def map_descriptors(store: FeatureStore, subset: str, concurrency: int = 1):
    ds = store_dataset(store, [subset])
    from ray.data import ActorPoolStrategy

    return ds.map_batches(UniformDescriptors, batch_format="pyarrow", batch_size=128,
                          fn_constructor_kwargs={"streams": store.streams,
                                                 "dtype": store.dtype},
                          compute=ActorPoolStrategy(size=concurrency), num_cpus=1)


def map_attention(store: FeatureStore, subsets: list[str], checkpoint_path: str,
                  detect_subsets: list[str], localize: LocalizeConfig,
                  describe_subset: str | None, detect_ids: list[str] = (),
                  descriptor: str = "contrast", concurrency: int | None = None,
                  use_gpu: bool = False, torch_threads: int | None = None):
    """The trained models over the videos of ``subsets``: an actor pool of
    :class:`AttentionPass`, one actor per GPU (or per 4 CPUs without GPUs) by default.
    Videos of ``detect_subsets`` and ``detect_ids`` are localised; those of
    ``describe_subset`` (other than ``detect_ids``) get the next round's descriptor."""
    import ray
    from ray.data import ActorPoolStrategy

    if concurrency is None:
        concurrency = (max(1, int(cluster_gpus())) if use_gpu
                       else max(1, int(ray.cluster_resources().get("CPU", 1)) // 4))
    # a GPU actor asks for the GPU alone (Ray Data warns when a map asks for both)
    resources = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    ds = store_dataset(store, subsets)
    return ds.map_batches(
        AttentionPass, batch_format="pyarrow", batch_size=128,  # predict() sorts by length inside
        compute=ActorPoolStrategy(size=concurrency), **resources,
        fn_constructor_kwargs={"checkpoint_path": checkpoint_path, "streams": store.streams,
                               "dtype": store.dtype, "detect_subsets": list(detect_subsets),
                               "localize": to_dict(localize),
                               "describe_subset": describe_subset,
                               "detect_ids": list(detect_ids),
                               "descriptor": descriptor, "torch_threads": torch_threads})


def write_dataset(ds, path: str) -> int:
    """Stream a dataset's batches into one Parquet file, atomically; returns rows written."""
    rows = 0
    if fsutil.is_remote(path):
        tmp_ctx = None
        target = path
    else:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp_ctx = tempfile.NamedTemporaryFile(dir=os.path.dirname(os.path.abspath(path)),
                                              prefix=".tmp-", suffix=".parquet", delete=False)
        tmp_ctx.close()
        target = tmp_ctx.name
    fs, p = fsutil.get_fs(target)
    writer = None
    try:
        with fs.open(p, "wb") as fh:
            for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
                table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
                if writer is None:
                    writer = pq.ParquetWriter(fh, table.schema, compression="none")
                writer.write_table(table)
                rows += table.num_rows
            if writer is None:
                raise RuntimeError(f"no rows to write to {path}")
            writer.close()
        if tmp_ctx is not None:
            os.replace(target, path)
    except BaseException:
        if tmp_ctx is not None and os.path.exists(target):
            os.remove(target)
        elif tmp_ctx is None:
            fsutil.remove_tree(path)
        raise
    return rows


def read_descriptors(path: str) -> tuple[list[str], np.ndarray]:
    """(video ids, ``(N, F)`` descriptors) of the non-test rows of a step's output file."""
    with fsutil.open_read(path) as fh:
        table = pq.read_table(fh, columns=["video_id", "descriptor"])
    ids, rows = [], []
    for vid, blob in zip(table.column("video_id").to_pylist(),
                         table.column("descriptor").to_pylist()):
        if blob:
            ids.append(vid)
            rows.append(np.frombuffer(blob, dtype=np.float32))
    return ids, np.stack(rows) if rows else np.zeros((0, 0), np.float32)


# --------------------------------------------------------------------------- clustering task


def run_clustering_task(descriptors: np.ndarray, n_clusters: int, cc: Any,
                        truth: list[str] | None, previous: np.ndarray | None) -> dict:
    """Spectral clustering (:func:`acl_dist.cluster.run_clustering` with the round's
    :class:`~acl_dist.config.ClusterConfig` ``cc``) as one Ray task; asks for a GPU when the
    cluster has one and the backend can use it."""
    import ray

    wants_gpu = cc.backend in ("auto", "torch", "cuml") and cluster_gpus() > 0
    # "DEFAULT", not inherited: inside a Tune trial a task would otherwise be captured by
    # the trial's placement group (0.01 CPU) and could never be scheduled.
    task = ray.remote(num_cpus=1, num_gpus=1 if wants_gpu else 0,
                      scheduling_strategy="DEFAULT")(run_clustering)
    return ray.get(task.remote(descriptors, n_clusters, cc.backend, cc.seed, cc.n_init,
                               cc.sigma, truth, previous, cc.graph, cc.n_neighbors,
                               cc.dense_max_videos))


# --------------------------------------------------------------------------- training


def _no_drop_data_config():
    """Ray Train's default split may drop rows to equalise shards (``equal=True``); the
    ACL sampler promises every video once per epoch, so split without dropping. Training is
    step-based, so unequal shards cannot desynchronise DDP."""
    from ray.train import DataConfig

    class NoDropDataConfig(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            output = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                with warnings.catch_warnings():  # Ray's own default still sets a deprecated field
                    warnings.simplefilter("ignore")
                    ds.context.execution_options = DataConfig.default_ingest_options()
                for i, split in enumerate(ds.streaming_split(world_size, equal=False)):
                    output[i][name] = split
            return output

    return NoDropDataConfig()


class _Board:
    """TensorBoard event files of one round (losses per term and stream, lr, throughput).

    Written locally by rank 0 and copied into the run directory at the end of the round
    (the run directory may be on S3, where an event file cannot be appended to)."""

    def __init__(self, target: str | None, round_index: int):
        self.target = target
        self.writer = None
        if target:
            from tensorboardX import SummaryWriter

            self.local = tempfile.mkdtemp(prefix="acl-tb-")
            self.writer = SummaryWriter(self.local)
            self.round = round_index

    def add(self, metrics: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for key, value in metrics.items():
            if key in ("step", "worker_videos"):
                continue
            tag = key if "/" in key else f"train/{key}"
            self.writer.add_scalar(f"round_{self.round}/{tag}", value, step)

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.close()
        for name in os.listdir(self.local):
            with open(os.path.join(self.local, name), "rb") as fh:
                fsutil.write_bytes_atomic(fsutil.join(self.target, name), fh.read())
        shutil.rmtree(self.local, ignore_errors=True)
        self.writer = None


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
        # (video id, stream -> (byte offset, shape, dtype), labels)
        self._entries: list[tuple[str, dict[str, tuple], list[int]]] = []
        self._offset = 0

    def add(self, video_id: str, features: dict[str, np.ndarray], labels: list[int]) -> None:
        placed = {}
        for name, arr in features.items():
            arr = np.ascontiguousarray(arr)
            self._fh.write(arr.tobytes())
            placed[name] = (self._offset, arr.shape, arr.dtype.str)
            self._offset += arr.nbytes
        self._entries.append((video_id, placed, labels))

    def items(self) -> list:
        """The shard as :class:`~acl_dist.train.VideoItem` s whose features are views into
        the mapped file."""
        from .train import VideoItem

        self._fh.flush()
        if self._offset == 0:
            return [VideoItem(v, {}, lab) for v, _, lab in self._entries]
        # copy-on-write: writable views (torch.as_tensor warns on read-only arrays), the file
        # itself never changes
        mapped = np.memmap(self._fh, dtype=np.uint8, mode="c", shape=(self._offset,))
        out = []
        for vid, placed, labels in self._entries:
            feats = {}
            for name, (offset, shape, dt) in placed.items():
                n = int(np.prod(shape)) * np.dtype(dt).itemsize
                feats[name] = mapped[offset:offset + n].view(dt).reshape(shape)
            out.append(VideoItem(vid, feats, labels))
        self._fh.close()   # the mapping keeps the (already unlinked) file alive
        return out


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: read this worker's shard into memory, then :func:`train.fit`."""
    import ray.train
    import ray.train.torch
    import torch

    from .train import fit, make_checkpoint

    _quiet_train_reports()
    cfg = from_dict(RunConfig, config["run_config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config.get("torch_threads"):
        torch.set_num_threads(int(config["torch_threads"]))
    streams, dtype, labels = config["streams"], config["dtype"], config["labels"]
    shard = ray.train.get_dataset_shard("train")
    spill = ShardSpill()
    for batch in shard.iter_batches(batch_format="pyarrow", batch_size=64):
        feats = {s: feature_views(batch.column(s), d, dtype) for s, d in streams.items()}
        for i, vid in enumerate(batch.column("video_id").to_pylist()):
            if vid in labels:  # the keys are the training videos (held-out ones are not)
                spill.add(vid, {s: feats[s][i] for s in streams}, list(labels[vid]))
    items = spill.items()
    start = None
    resume = ray.train.get_checkpoint()
    if resume is not None:
        from .artifacts import load_train_state

        with resume.as_directory() as d:
            start = load_train_state(os.path.join(d, "train_state.pt"))
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
        if rank == 0 and not config.get("quiet"):
            # Written to the stream, not print(): Train V2 patches print into its logger
            # and would echo each line twice.
            sys.stdout.write(f"  round {config['round']} step {step}/{steps} "
                             f"loss {metrics['loss']:.3f} "
                             f"({metrics['videos_per_s']:.0f} videos/s)\n")
            sys.stdout.flush()
        if state is None or rank != 0:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(state, os.path.join(d, "train_state.pt"))
            if step == steps:
                torch.save(make_checkpoint(state["model"], cfg, config["num_classes"],
                                           streams, config["label_names"], config["round"],
                                           history),
                           os.path.join(d, "model.pt"))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    fit(items, cfg, config["num_classes"], streams, rank=rank, world_size=world, device=device,
        wrap=ray.train.torch.prepare_model, report=report, start=start)


def run_training(store: FeatureStore, subset: str, cfg: RunConfig, labels: dict[str, list[int]],
                 num_classes: int, label_names: list[str], round_index: int,
                 storage_path: str, name: str, torch_threads: int | None = None,
                 max_failures: int = 0, quiet: bool = False,
                 tensorboard_dir: str | None = None) -> dict[str, Any]:
    """One round's training on Ray Train; returns the final checkpoint dict."""
    from ray.train import FailureConfig, LoggingConfig, RunConfig as TrainRunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    # Small blocks (streaming repartition, no shuffle): the no-drop split hands whole
    # blocks to workers, so every worker must be able to get some.
    rows = max(1, store.num_videos(subset) // (max(1, tc.workers) * 8))
    ds = store_dataset(store, [subset]).repartition(target_num_rows_per_block=rows)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"run_config": to_dict(cfg), "labels": labels,
                           "num_classes": num_classes, "label_names": label_names,
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
        return load_checkpoint(os.path.join(d, "model.pt"))


def _artifact_error(err: BaseException) -> ArtifactError | None:
    """The :class:`ArtifactError` behind a Ray Train failure (a worker's, possibly wrapped
    in a RayTaskError), if that is what failed."""
    found = find_cause(err, ArtifactError)
    return found if isinstance(found, ArtifactError) else None
