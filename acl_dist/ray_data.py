"""Ray Data passes over the store: round-0 uniform descriptors and the attention pass (the
trained models over every video: the next round's descriptors, and CAS / attention /
detections of test and validation videos). Results stream into one Parquet file per step
with :func:`write_dataset`, row group by row group, so no process holds all of them.
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import fsutil
from .artifacts import load_checkpoint, outputs_schema
from .clustering import contrast_descriptor, video_descriptor
from .config import LocalizeConfig, from_dict, to_dict
from .infer import load_models, predict
from .localize import localize_video
from .progress import Meter
from .store import FeatureStore, check_features, feature_views
from .timegrid import SnippetGrid


ROW_COLUMNS = ["video_id", "subset", "duration", "fps", "snippet_frames", "num_snippets"]


def read_unit(unit: dict[str, Any], columns: list[str], streams: dict[str, int],
              dtype: str) -> pa.Table:
    """One row group (a unit of :meth:`FeatureStore.row_groups`) read and checked: the
    shard's size and footer against the manifest, each page's CRC, and the features
    (:func:`acl_dist.store.check_features`); a damaged shard is one StoreError naming it
    and the video."""
    expect = {k: unit.get(k) for k in ("bytes", "footer_sha256")}
    table = FeatureStore.read_row_group(unit["url"], unit["row_group"], columns, expect)
    check_features(table, streams, dtype, source=unit["url"])
    return table


def _store_datasource(store: FeatureStore, subsets: list[str], columns: list[str]):
    """A Ray Data datasource of the store's row groups of ``subsets``, each read by
    :func:`read_unit`. Why not ``ray.data.read_parquet``: it verifies page CRCs when asked
    (``fragment_scan_options``), but its read tasks fail with Arrow's bare error, which
    names no shard, and it checks neither the manifest's sizes and footer hashes nor the
    features it decodes."""
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    units = store.row_groups(subsets)    # every shard's size and footer checked here
    streams = {s: d for s, d in store.streams.items() if s in columns}
    dtype = store.dtype
    rows_of = {}
    for shard in store.manifest["shards"]:
        rows_of[fsutil.join(store.path, shard["path"])] = (shard["rows"], shard["feature_bytes"])

    def size(unit: dict[str, Any]) -> int:
        rows, feature_bytes = rows_of[unit["url"]]
        features = feature_bytes * unit["rows"] // max(rows, 1) if streams else 0
        return int(features + 256 * unit["rows"])

    class StoreDatasource(Datasource):
        def estimate_inmemory_data_size(self) -> int:
            return sum(size(u) for u in units)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            tasks = []
            for group in np.array_split(np.arange(len(units)),
                                        max(1, min(parallelism, len(units)))):
                mine = [units[i] for i in group]
                if not mine:
                    continue
                meta = BlockMetadata(num_rows=sum(u["rows"] for u in mine),
                                     size_bytes=sum(size(u) for u in mine), exec_stats=None,
                                     input_files=list(dict.fromkeys(u["url"] for u in mine)))
                tasks.append(ReadTask(
                    lambda mine=mine: (read_unit(u, columns, streams, dtype) for u in mine),
                    meta, per_task_row_limit=per_task_row_limit))
            return tasks

    return StoreDatasource()


def store_dataset(store: FeatureStore, subsets: Iterable[str], streams: bool = True):
    """The store's rows of ``subsets`` as a Ray Dataset (features optional), one block per
    row group, every shard checked as it is read (:func:`read_unit`), so a damaged one
    fails the read naming it instead of reaching training."""
    import ray

    columns = ROW_COLUMNS + (list(store.streams) if streams else [])
    source = _store_datasource(store, list(dict.fromkeys(subsets)), columns)
    return ray.data.read_datasource(source)


def row_group_dataset(store: FeatureStore, subsets: Iterable[str]):
    """A Ray Dataset of the store's row groups of ``subsets`` (:meth:`FeatureStore.row_groups`),
    one block each, for a :class:`RowGroupMap` to read itself."""
    import ray

    units = store.row_groups(list(dict.fromkeys(subsets)))
    return ray.data.from_items(units, override_num_blocks=max(1, len(units)))


class RowGroupMap:
    """A Ray Data actor that reads the store rows it works on: each input row names a row
    group (:func:`row_group_dataset`); :meth:`process` gets it in slices of
    ``rows_per_call`` rows and its outputs are yielded one by one.

    Why not ``read_parquet`` tasks feeding the actors: on 2 cores the features' trip
    through read tasks and the object store cost more than the model's forward (an
    ActivityNet-like pass of 2,980 videos: 2.5x its floor; read here: see
    bench/attention_pass.py). Only the outputs travel through Ray.
    """

    rows_per_call = 128
    streams: dict[str, int]
    dtype: str

    def __call__(self, units: pa.Table):
        for unit in units.to_pylist():
            # checked (shard, pages, features) before any of it reaches a model
            table = read_unit(unit, ROW_COLUMNS + list(self.streams), self.streams,
                              self.dtype)
            for start in range(0, table.num_rows, self.rows_per_call):
                yield self.process(table.slice(start, self.rows_per_call))

    def process(self, batch: pa.Table) -> pa.Table:
        raise NotImplementedError


def batch_features(batch: pa.Table, streams: dict[str, int], dtype: str,
                   float32: bool = True) -> list[dict[str, np.ndarray]]:
    """Per row, stream -> ``(T, D)`` float32 array, from a pyarrow batch of the store; with
    ``float32=False`` zero-copy views in the store's dtype (the forward's padding converts
    them in its one pass). The batch's features were checked when its row group was read
    (:meth:`RowGroupMap.__call__`), so they are not checked again here."""
    views = {s: feature_views(batch.column(s), d, dtype, check=False)
             for s, d in streams.items()}
    if not float32:
        return [{s: views[s][i] for s in streams} for i in range(batch.num_rows)]
    return [{s: views[s][i].astype(np.float32) for s in streams} for i in range(batch.num_rows)]


def _f32_bytes(x: np.ndarray) -> bytes:
    return np.ascontiguousarray(x, dtype=np.float32).tobytes()


class UniformDescriptors(RowGroupMap):
    """Round-0 descriptors (uniform 1/T pooling) of a batch of store rows."""

    def __init__(self, streams: dict[str, int], dtype: str):
        self.streams, self.dtype = streams, dtype

    def process(self, batch: pa.Table) -> pa.Table:
        feats = batch_features(batch, self.streams, self.dtype)
        return pa.table({"video_id": batch.column("video_id"),
                         "descriptor": [_f32_bytes(video_descriptor(f)) for f in feats]})


class AttentionPass(RowGroupMap):
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

    def process(self, batch: pa.Table) -> pa.Table:
        ids = batch.column("video_id").to_pylist()
        subsets = batch.column("subset").to_pylist()
        detect = [s in self.detect_subsets or v in self.detect_ids for v, s in zip(ids, subsets)]
        keep = [i for i in range(len(ids))
                if detect[i] or subsets[i] == self.describe_subset]
        out: dict[str, list] = {k: [] for k in (
            "video_id", "subset", "descriptor", "cas", "video_logits", "detections",
            *[f"attention_{s}" for s in self.streams])}
        if not keep:
            return pa.table(out, schema=outputs_schema(self.streams))
        batch = batch.take(keep)
        ids, subsets, detect = [ids[i] for i in keep], [subsets[i] for i in keep], \
            [detect[i] for i in keep]
        feats = batch_features(batch, self.streams, self.dtype, float32=False)
        preds = predict(self.model, list(zip(ids, feats)), self.device)
        for i, p in enumerate(preds):
            out["video_id"].append(ids[i])
            out["subset"].append(subsets[i])
            out["descriptor"].append(b"" if detect[i] else _f32_bytes(self.describe(
                {s: f.astype(np.float32) for s, f in feats[i].items()}, p.attention)))
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
        return pa.table(out, schema=outputs_schema(self.streams))



def map_descriptors(store: FeatureStore, subset: str, concurrency: int = 1):
    ds = row_group_dataset(store, [subset])
    from ray.data import ActorPoolStrategy

    return ds.map_batches(UniformDescriptors, batch_format="pyarrow", batch_size=1,
                          fn_constructor_kwargs={"streams": store.streams,
                                                 "dtype": store.dtype},
                          compute=ActorPoolStrategy(size=concurrency), num_cpus=1)


def map_attention(store: FeatureStore, subsets: list[str], checkpoint_path: str,
                  detect_subsets: list[str], localize: LocalizeConfig,
                  describe_subset: str | None, detect_ids: list[str] = (),
                  descriptor: str = "contrast", concurrency: int = 1,
                  use_gpu: bool = False, torch_threads: int | None = None):
    """The trained models over the videos of ``subsets``: a pool of ``concurrency``
    :class:`AttentionPass` actors (the run's plan: one per GPU it trains on, or per 4 CPUs).
    Videos of ``detect_subsets`` and ``detect_ids`` are localised; those of
    ``describe_subset`` (other than ``detect_ids``) get the next round's descriptor."""
    from ray.data import ActorPoolStrategy

    # a GPU actor asks for the GPU alone (Ray Data warns when a map asks for both)
    ask = {"num_gpus": 1} if use_gpu else {"num_cpus": 1}
    ds = row_group_dataset(store, subsets)
    return ds.map_batches(
        AttentionPass, batch_format="pyarrow", batch_size=1,  # a row group per call
        compute=ActorPoolStrategy(size=concurrency), **ask,
        fn_constructor_kwargs={"checkpoint_path": checkpoint_path, "streams": store.streams,
                               "dtype": store.dtype, "detect_subsets": list(detect_subsets),
                               "localize": to_dict(localize),
                               "describe_subset": describe_subset,
                               "detect_ids": list(detect_ids),
                               "descriptor": descriptor, "torch_threads": torch_threads})


def collect_detections(ds, desc: str, total: int, quiet: bool | None = None
                       ) -> list[tuple[str, list]]:
    """(video, [(output index, score, start s, end s), ...]) of every row of an attention
    pass's dataset, in arrival order; only these two columns reach the driver (not the
    CAS), with a progress line every 10 s."""
    meter = Meter(desc, total, "video", quiet)
    out = []
    for batch in ds.select_columns(["video_id", "detections"]).iter_batches(
            batch_format="pyarrow", batch_size=None):
        ids = batch.column("video_id").to_pylist()
        out += [(v, json.loads(d)) for v, d in zip(ids, batch.column("detections").to_pylist())]
        meter.add(len(ids))
    meter.close()
    return out


def write_dataset(ds, path: str, desc: str | None = None, total: int | None = None,
                  quiet: bool | None = None) -> int:
    """Stream a dataset's batches into one Parquet file, atomically; returns rows written.
    With ``desc``, a progress line every 10 s (videos written of ``total``, rate)."""
    rows = 0
    meter = Meter(desc, total, "video", quiet) if desc else None
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
                if meter is not None:
                    meter.add(table.num_rows)
            if writer is None:
                raise RuntimeError(f"no rows to write to {path}")
            writer.close()
            if meter is not None:
                meter.close()
        if tmp_ctx is not None:
            os.replace(target, path)
    except BaseException:
        if tmp_ctx is not None and os.path.exists(target):
            os.remove(target)
        elif tmp_ctx is None:
            fsutil.remove_tree(path)
        raise
    return rows
