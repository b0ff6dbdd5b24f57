"""The feature store: Parquet shards of whole videos plus a ``manifest.json``.

Layout of a store at ``STORE`` (a local directory or an ``s3://`` prefix)::

    STORE/manifest.json                 # written last: its presence marks a complete store
    STORE/gt.json                       # every video's annotation, ActivityNet JSON
    STORE/shards/<subset>/part-00000.parquet ...

(An S3 store replaced by ``--overwrite`` keeps its files under ``STORE/v-<id>/``: the
manifest lists every file's path, ``gt`` and ``files`` included, relative to ``STORE``.)

One Parquet row per video (see :data:`ROW_FIELDS`). Each feature stream is one
``large_binary`` cell per video holding the row-major ``(T, D)`` array in the store's dtype
(little-endian); D and the dtype are in the manifest and in the field's Parquet metadata,
T in ``num_snippets``. Why raw bytes rather than ``list<fixed_size_list<float, D>>``:
Parquet encodes nested lists with repetition/definition levels per *value*, which decoded
at 54-87 MB/s here against 2.6 GB/s for an uncompressed binary column (bench/
store_throughput.py); I3D features barely compress, so shards are uncompressed by default.
Shards are split per subset so a reader of one subset opens only its files, and roll over
at ``shard_mb`` of feature bytes. The writer holds at most one row group per open subset in
memory; the reader yields rows batch by batch, and arrays are views of the read buffers.
"""

from __future__ import annotations

import datetime as _dt
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, fsutil
from .annotations import Segment, VideoAnnotation, primary_label, to_activitynet_json
from .config import FEATURE_DTYPES
from .errors import DataError, StoreError
from .timegrid import SnippetGrid

FORMAT_NAME = "acl-dist-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GT_FILE = "gt.json"
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in FEATURE_DTYPES}
DEFAULT_STREAMS = ("rgb", "flow")
_SUBSET_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

SEGMENT_TYPE = pa.struct([("label", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
ROW_FIELDS = [
    pa.field("video_id", pa.string(), nullable=False),
    pa.field("subset", pa.string(), nullable=False),
    pa.field("duration", pa.float64(), nullable=False),      # seconds
    pa.field("fps", pa.float64(), nullable=False),           # frames/s of the feature grid
    pa.field("snippet_frames", pa.int32(), nullable=False),  # frames per snippet (= stride)
    pa.field("num_snippets", pa.int32(), nullable=False),    # T
    pa.field("labels", pa.list_(pa.string()), nullable=False),
    pa.field("segments", pa.list_(SEGMENT_TYPE), nullable=False),
]


META_COLUMNS = [f.name for f in ROW_FIELDS]


def feature_field(name: str, dim: int, dtype: str) -> pa.Field:
    """A stream column: raw ``(T, dim)`` bytes per video, described in the field metadata."""
    return pa.field(name, pa.large_binary(), nullable=False,
                    metadata={"acl_dist.dim": str(dim), "acl_dist.dtype": dtype,
                              "acl_dist.layout": "row-major (T, dim), little-endian"})


def store_schema(streams: dict[str, int], dtype: str) -> pa.Schema:
    return pa.schema(ROW_FIELDS + [feature_field(n, d, dtype) for n, d in streams.items()])


@dataclass
class VideoRecord:
    """One video as stored: metadata, annotation and per-stream ``(T, D)`` features.

    ``features`` is empty when only metadata was read.
    """

    video_id: str
    subset: str
    duration: float
    fps: float
    snippet_frames: int
    num_snippets: int
    labels: list[str] = field(default_factory=list)
    segments: list[Segment] = field(default_factory=list)
    features: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def grid(self) -> SnippetGrid:
        return SnippetGrid(self.fps, self.snippet_frames)

    @property
    def primary_label(self) -> str | None:
        return primary_label(self.segments, self.labels)

    def annotation(self) -> VideoAnnotation:
        return VideoAnnotation(self.video_id, self.subset, self.duration, list(self.segments),
                               list(self.labels))


def _feature_array(arrays: Sequence[np.ndarray], dtype: str) -> pa.Array:
    np_dtype = DTYPES[dtype]
    return pa.array([np.ascontiguousarray(a, dtype=np_dtype).tobytes() for a in arrays],
                    type=pa.large_binary())


def records_to_table(records: Sequence[VideoRecord], streams: dict[str, int], dtype: str) -> pa.Table:
    """Arrow table of ``records`` in the store schema."""
    cols: dict[str, Any] = {
        "video_id": [r.video_id for r in records],
        "subset": [r.subset for r in records],
        "duration": [float(r.duration) for r in records],
        "fps": [float(r.fps) for r in records],
        "snippet_frames": [int(r.snippet_frames) for r in records],
        "num_snippets": [int(r.num_snippets) for r in records],
        "labels": [list(r.labels) for r in records],
        "segments": [[{"label": s.label, "start": s.start, "end": s.end} for s in r.segments]
                     for r in records],
    }
    schema = store_schema(streams, dtype)
    arrays = [pa.array(cols[f.name], type=f.type) for f in ROW_FIELDS]
    arrays += [_feature_array([r.features[name] for r in records], dtype)
               for name in streams]
    return pa.Table.from_arrays(arrays, schema=schema)


def feature_views(column: pa.Array, dim: int, dtype: str) -> list[np.ndarray]:
    """Zero-copy ``(T_i, dim)`` views of each row of a stream column chunk."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[column.offset: column.offset + len(column) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    np_dtype = DTYPES[dtype]
    return [data[offsets[i]:offsets[i + 1]].view(np_dtype).reshape(-1, dim)
            for i in range(len(column))]


def table_to_records(table: pa.Table | pa.RecordBatch, streams: dict[str, int],
                     stored_dtype: str, dtype: np.dtype | None = None) -> list[VideoRecord]:
    """Inverse of :func:`records_to_table` for the columns present (features optional)."""
    if isinstance(table, pa.Table):
        table = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if table is None:
            return []
    names = table.schema.names
    meta = {name: table.column(name).to_pylist() for name in
            ("video_id", "subset", "duration", "fps", "snippet_frames", "num_snippets", "labels",
             "segments") if name in names}
    feats = {}
    for name, dim in streams.items():
        if name in names:
            feats[name] = feature_views(table.column(name), dim, stored_dtype)
    out = []
    for i, vid in enumerate(meta["video_id"]):
        features = {}
        for name, views in feats.items():
            features[name] = views[i] if dtype is None else views[i].astype(dtype, copy=False)
        out.append(VideoRecord(
            video_id=vid,
            subset=meta["subset"][i] if "subset" in meta else "",
            duration=meta["duration"][i] if "duration" in meta else float("nan"),
            fps=meta["fps"][i] if "fps" in meta else float("nan"),
            snippet_frames=meta["snippet_frames"][i] if "snippet_frames" in meta else 0,
            num_snippets=meta["num_snippets"][i] if "num_snippets" in meta else 0,
            labels=list(meta["labels"][i]) if "labels" in meta else [],
            segments=[Segment(s["label"], s["start"], s["end"]) for s in meta["segments"][i]]
            if "segments" in meta else [],
            features=features))
    return out


class _SubsetShards:
    """Open shard file and row-group buffer of one subset."""

    def __init__(self, writer: "StoreWriter", subset: str):
        self.writer = writer
        self.subset = subset
        self.index = 0
        self.buffer: list[VideoRecord] = []
        self.buffer_bytes = 0
        self.file = None
        self.pq_writer: pq.ParquetWriter | None = None
        self.current: dict[str, Any] | None = None

    def add(self, rec: VideoRecord, nbytes: int) -> None:
        self.buffer.append(rec)
        self.buffer_bytes += nbytes
        if self.buffer_bytes >= self.writer.row_group_bytes:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        w = self.writer
        if self.pq_writer is None:
            rel = f"{w.output.data_prefix}shards/{self.subset}/part-{self.index:05d}.parquet"
            path = fsutil.join(w.workdir, rel)
            fs, p = fsutil.get_fs(path)
            fs.makedirs(p.rsplit("/", 1)[0], exist_ok=True)
            self.file = fs.open(p, "wb")
            self.pq_writer = pq.ParquetWriter(
                self.file, w.schema, compression=w.compression,
                # Dictionaries and min/max statistics only where they help: never on the
                # multi-MB feature cells.
                use_dictionary=["subset"], write_statistics=META_COLUMNS)
            self.current = {"path": rel, "subset": self.subset, "rows": 0, "feature_bytes": 0}
        table = records_to_table(self.buffer, w.streams, w.dtype)
        self.pq_writer.write_table(table, row_group_size=len(self.buffer))
        self.current["rows"] += len(self.buffer)
        self.current["feature_bytes"] += self.buffer_bytes
        self.buffer, self.buffer_bytes = [], 0
        if self.current["feature_bytes"] >= w.shard_bytes:
            self.close_file()

    def close_file(self) -> None:
        if self.pq_writer is not None:
            self.pq_writer.close()
            self.file.close()
            self.writer.shards.append(self.current)
            self.pq_writer, self.file, self.current = None, None, None
            self.index += 1

    def close(self) -> None:
        self.flush()
        self.close_file()


class StoreWriter:
    """Streaming, atomic writer of a feature store.

    Use as a context manager; rows are added with :meth:`add` and the store appears at
    ``out`` only when the block exits without an exception::

        with StoreWriter(out, streams={"rgb": 1024, "flow": 1024}, classes=classes) as w:
            for rec in records:
                w.add(rec)

    Args:
        out: destination directory or ``s3://`` prefix; must not exist unless ``overwrite``.
        streams: ordered mapping stream name -> feature dim.
        dtype: ``float16`` or ``float32`` storage type of the features.
        classes: class list of the dataset.
        fps, snippet_frames: the store-wide snippet grid (rows carry their own too).
        source: free-form description of where the data came from (layout, paths, options).
        shard_mb: roll over to a new shard file after this many MB of feature bytes.
        compression: Parquet codec (default none: features barely compress).
    """

    def __init__(self, out: str, streams: dict[str, int], classes: Sequence[str],
                 dtype: str = "float16", fps: float = 25.0, snippet_frames: int = 16,
                 source: dict[str, Any] | None = None, shard_mb: float = 128.0,
                 compression: str = "none", overwrite: bool = False):
        if dtype not in DTYPES:
            raise StoreError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
        if not streams:
            raise StoreError("a store needs at least one feature stream")
        self.out = out
        self.streams = {str(k): int(v) for k, v in streams.items()}
        self.classes = list(classes)
        self.dtype = dtype
        self.grid = SnippetGrid(float(fps), int(snippet_frames))
        self.source = dict(source or {})
        self.shard_bytes = int(shard_mb * 2**20)
        self.row_group_bytes = max(1, min(self.shard_bytes, 32 * 2**20))
        self.compression = compression
        self.overwrite = overwrite
        self.schema = store_schema(self.streams, dtype)
        self.shards: list[dict[str, Any]] = []
        self.skipped: list[dict[str, str]] = []
        self.notes: list[str] = []
        self._subsets: dict[str, _SubsetShards] = {}
        self._annotations: list[VideoAnnotation] = []
        self._seen: set[str] = set()
        self._stats: dict[str, dict[str, int]] = {}
        self.files: dict[str, str] = {}
        self._ctx = None
        self.output: fsutil.OutputDir | None = None
        self.workdir = ""

    def __enter__(self) -> "StoreWriter":
        self._ctx = fsutil.atomic_output_dir(self.out, overwrite=self.overwrite,
                                             replaceable=not_a_store, marker=MANIFEST)
        self.output = self._ctx.__enter__()
        self.workdir = self.output.workdir
        return self

    def add_file(self, name: str, data: bytes) -> None:
        """Write a side file (e.g. ``synth_report.json``) into the store; it is listed in
        the manifest under ``files`` (its place depends on the store's generation)."""
        rel = self.output.data_prefix + name
        fsutil.write_bytes_atomic(fsutil.join(self.workdir, rel), data)
        self.files[name] = rel

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._close_files_quietly()
                self._ctx.__exit__(type(err), err, err.__traceback__)  # removes the partial output
                raise
            self._ctx.__exit__(None, None, None)  # commits (rename into place)
            return False
        self._close_files_quietly()
        self._ctx.__exit__(exc_type, exc, tb)
        return False

    def add(self, rec: VideoRecord, evaluation: VideoAnnotation | None = None) -> None:
        """Append one video. Checks id uniqueness, subset name, streams, dims and T.
        ``evaluation``: its annotation for ``gt.json`` when it differs from the record's
        (ingest keeps the published segments there; default: the record's)."""
        if self._ctx is None:
            raise StoreError("StoreWriter.add outside its 'with' block")
        if rec.video_id in self._seen:
            raise DataError(rec.video_id, "duplicate video id")
        if not _SUBSET_RE.match(rec.subset or ""):
            raise DataError(rec.video_id, f"subset name {rec.subset!r} must match [A-Za-z0-9_.-]+")
        nbytes = 0
        for name, dim in self.streams.items():
            arr = rec.features.get(name)
            if arr is None:
                raise DataError(rec.video_id, f"missing stream {name!r}")
            if arr.ndim != 2 or arr.shape[1] != dim:
                raise DataError(rec.video_id, f"{name} features have shape {arr.shape}, "
                                              f"expected (T, {dim})")
            if arr.shape[0] != rec.num_snippets:
                raise DataError(rec.video_id, f"{name} has {arr.shape[0]} snippets, "
                                              f"record says {rec.num_snippets}")
            nbytes += arr.shape[0] * dim * (2 if self.dtype == "float16" else 4)
        self._seen.add(rec.video_id)
        shards = self._subsets.get(rec.subset)
        if shards is None:
            shards = self._subsets[rec.subset] = _SubsetShards(self, rec.subset)
        shards.add(rec, nbytes)
        stats = self._stats.setdefault(rec.subset, {"videos": 0, "snippets": 0, "segments": 0,
                                                    "feature_bytes": 0})
        stats["videos"] += 1
        stats["snippets"] += rec.num_snippets
        stats["segments"] += len(rec.segments)
        stats["feature_bytes"] += nbytes
        self._annotations.append(evaluation if evaluation is not None else rec.annotation())

    @property
    def stats(self) -> dict[str, dict[str, int]]:
        """Per subset: videos, snippets, segments and feature bytes written so far."""
        return {k: dict(v) for k, v in self._stats.items()}

    def skip(self, video: str, problem: str, dropped: str = "video") -> None:
        """Record a video (or one of its segments) left out, with the reason."""
        self.skipped.append({"video": video, "problem": problem, "dropped": dropped})

    def note(self, text: str) -> None:
        self.notes.append(text)

    def _close_files_quietly(self) -> None:
        for shards in self._subsets.values():
            try:
                if shards.pq_writer is not None:
                    shards.pq_writer.close()
                    shards.file.close()
            except Exception:
                pass

    def _finish(self) -> None:
        if not self._seen:
            raise StoreError("no videos to write (all skipped or none found)")
        for shards in self._subsets.values():
            shards.close()
        gt_rel = self.output.data_prefix + GT_FILE
        fsutil.write_json_atomic(fsutil.join(self.workdir, gt_rel),
                                 to_activitynet_json(self._annotations))
        manifest = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "acl_dist_version": __version__,
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "streams": self.streams,
            "dtype": self.dtype,
            "fps": self.grid.fps,
            "snippet_frames": self.grid.snippet_frames,
            "classes": self.classes,
            "subsets": self._stats,
            "shards": self.shards,
            "gt": gt_rel,
            "files": self.files,
            "source": self.source,
            "skipped": self.skipped,
            "notes": self.notes,
        }
        # The manifest is the commit marker: written last.
        fsutil.write_json_atomic(fsutil.join(self.workdir, MANIFEST), manifest)


def not_a_store(path: str) -> str | None:
    """None when ``path`` holds an acl-dist store (so ``--overwrite`` may replace it);
    otherwise what it is, for the refusal message."""
    mpath = fsutil.join(path, MANIFEST)
    if not fsutil.exists(mpath):
        return f"not an acl-dist store (no {MANIFEST})"
    try:
        manifest = fsutil.read_json(mpath)
    except StoreError:
        return f"not an acl-dist store (unreadable {MANIFEST})"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        return f"not an acl-dist store ({MANIFEST} of another format)"
    return None


def _open_shard(url: str):
    """Local shards through pyarrow's native reader (memory-mapped); remote ones through
    fsspec (s3fs), which honours the standard AWS environment."""
    if not fsutil.is_remote(url):
        return pa.memory_map(url.removeprefix("file://"), "r")
    fs, p = fsutil.get_fs(url)
    return fs.open(p, "rb")


class FeatureStore:
    """Read access to a store written by :class:`StoreWriter`; nothing is loaded up front."""

    def __init__(self, path: str, manifest: dict[str, Any]):
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str) -> "FeatureStore":
        mpath = fsutil.join(path, MANIFEST)
        if not fsutil.exists(mpath):
            if fsutil.exists(path):
                raise StoreError(f"{path} has no {MANIFEST}: not a complete acl-dist store "
                                 "(an interrupted write, or not a store)")
            raise StoreError(f"no feature store at {path}")
        manifest = fsutil.read_json(mpath)
        if manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"{path}: not an acl-dist store (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format version {manifest.get('format_version')} is "
                             f"not supported by this acl-dist (reads version {FORMAT_VERSION})")
        return cls(path, manifest)

    @property
    def streams(self) -> dict[str, int]:
        return dict(self.manifest["streams"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def subsets(self) -> list[str]:
        return list(self.manifest["subsets"])

    @property
    def dtype(self) -> str:
        return self.manifest["dtype"]

    @property
    def grid(self) -> SnippetGrid:
        return SnippetGrid(self.manifest["fps"], self.manifest["snippet_frames"])

    def num_videos(self, subsets: str | Iterable[str] | None = None) -> int:
        return sum(self.manifest["subsets"][s]["videos"] for s in self._subsets(subsets))

    def _subsets(self, subsets: str | Iterable[str] | None) -> list[str]:
        if subsets is None:
            return self.subsets
        names = [subsets] if isinstance(subsets, str) else list(subsets)
        unknown = [s for s in names if s not in self.manifest["subsets"]]
        if unknown:
            raise StoreError(f"{self.path}: no subset {unknown[0]!r} (has {self.subsets})")
        return names

    def shard_urls(self, subsets: str | Iterable[str] | None = None) -> list[str]:
        wanted = set(self._subsets(subsets))
        return [fsutil.join(self.path, s["path"]) for s in self.manifest["shards"]
                if s["subset"] in wanted]

    def iter_videos(self, subsets: str | Iterable[str] | None = None,
                    streams: Sequence[str] | None = None, batch_rows: int = 8,
                    dtype: np.dtype | None = None) -> Iterator[VideoRecord]:
        """Yield videos shard by shard, ``batch_rows`` rows in memory at a time.

        Args:
            subsets: one subset name, several, or None for all.
            streams: feature streams to read (None: all; ``[]``: metadata only).
            dtype: cast features to this numpy dtype (default: as stored).
        """
        streams = self.streams if streams is None else {s: self.streams[s] for s in streams}
        columns = [f.name for f in ROW_FIELDS] + list(streams)
        for url in self.shard_urls(subsets):
            try:
                with _open_shard(url) as fh:
                    pf = pq.ParquetFile(fh)
                    for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                        yield from table_to_records(batch, streams, self.dtype, dtype)
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"cannot read shard {url}: {exc}") from exc

    def row_groups(self, subsets: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The Parquet row groups of ``subsets`` (``url``, ``row_group``, ``rows``): units of
        work a process can read on its own (:meth:`read_row_group`); only the shards'
        footers are read."""
        units = []
        for url in self.shard_urls(subsets):
            try:
                with _open_shard(url) as fh:
                    meta = pq.ParquetFile(fh).metadata
            except (OSError, pa.ArrowException) as exc:
                raise StoreError(f"cannot read shard {url}: {exc}") from exc
            units += [{"url": url, "row_group": i, "rows": meta.row_group(i).num_rows}
                      for i in range(meta.num_row_groups)]
        return units

    @staticmethod
    def read_row_group(url: str, index: int, columns: Sequence[str]) -> pa.Table:
        """One row group of a shard (``columns`` of it), as :meth:`row_groups` names it."""
        try:
            with _open_shard(url) as fh:
                return pq.ParquetFile(fh).read_row_group(index, columns=list(columns))
        except (OSError, pa.ArrowException) as exc:
            raise StoreError(f"cannot read shard {url}: {exc}") from exc

    def metadata(self, subsets: str | Iterable[str] | None = None) -> list[VideoRecord]:
        """All videos' metadata and annotations, without features."""
        return list(self.iter_videos(subsets, streams=[], batch_rows=4096))

    @property
    def annotation_path(self) -> str:
        """Where the store's ActivityNet-format annotation JSON lies (``STORE/gt.json``)."""
        return fsutil.join(self.path, self.manifest.get("gt", GT_FILE))

    def ground_truth(self) -> dict:
        """The store's ActivityNet-format annotation JSON (``STORE/gt.json``)."""
        return fsutil.read_json(self.annotation_path)
