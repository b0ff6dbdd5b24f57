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

Integrity. Each ``manifest["shards"]`` entry is ``{"path", "subset", "rows",
"feature_bytes"}`` plus, from this version on, ``"bytes"`` (the file's size),
``"sha256"`` (of the whole file), ``"footer_sha256"`` (of its last ``footer length + 8``
bytes: the Parquet footer, its length and the closing ``PAR1``) and ``"page_checksums":
true`` (every page carries Parquet's CRC-32 of its bytes). Every read of a shard (the
reader here, the row-group actors and the Ray Data reads of :mod:`acl_dist.ray_data`)
checks the size and the footer hash against the manifest and has Arrow verify each page's
CRC as it decodes it, and every decoded feature cell is checked to be whole ``(T, D)``
rows of finite values: a damaged shard is one :class:`StoreError`, ``"cannot read shard
<url>: damaged: ..."``, never NaN or garbage reaching a model. The whole-file ``sha256``
is checked only by :meth:`FeatureStore.check` with ``deep=True``, which reads every byte.
Stores written before these fields existed (same ``format_version``) open and read as
before: a field the manifest lacks is not checked, pages without a CRC are not verified,
and the finiteness check applies to them too.

Confinement. Every path the manifest names (shard ``path``, ``gt``, ``files``) is relative
to the store and stays inside it: :meth:`FeatureStore.open` refuses an absolute path, a
``..`` component or a URL, naming the manifest and the key. Video ids are names (no path
separators, no ``..``, no control characters: :func:`video_id_problem`).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import posixpath
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__, fsutil
from .annotations import Segment, VideoAnnotation, primary_label, to_activitynet_json
from .config import FEATURE_DTYPES
from .errors import DataError, StoreError, printable
from .timegrid import SnippetGrid

FORMAT_NAME = "acl-dist-store"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
GT_FILE = "gt.json"
DTYPES = {name: np.dtype(name).newbyteorder("<") for name in FEATURE_DTYPES}
DEFAULT_STREAMS = ("rgb", "flow")
_SUBSET_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_DRIVE_RE = re.compile(r"^[A-Za-z]:")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
#: Where an S3 store replaced by ``--overwrite`` keeps its files (fsutil._atomic_remote).
_GENERATION_RE = re.compile(r"^v-[0-9a-f]{12}/")


def _control_char(text: str) -> str | None:
    return next((c for c in text if unicodedata.category(c) == "Cc"), None)


def video_id_problem(video_id: Any) -> str | None:
    """Why ``video_id`` cannot be a video id, or None. Ids are names: layouts build file
    names from them (``<id>.npy``), so a separator, a ``..`` or an absolute path in one
    would read (or name) a file outside the source; a control character would break the
    one-line messages and files that name videos."""
    if not isinstance(video_id, str) or not video_id:
        return "is empty"
    bad = _control_char(video_id)
    if bad is not None:
        return f"contains the control character {bad!r}"
    if "/" in video_id or "\\" in video_id:
        return "contains a path separator ('/' or '\\'): video ids are names, not paths"
    if video_id in (".", ".."):
        return f"is {video_id!r}, a path component: video ids are names, not paths"
    if _DRIVE_RE.match(video_id):
        return "starts with a drive letter: video ids are names, not paths"
    return None


def shown_id(video_id: Any) -> str:
    """``video_id`` as a one-line message shows it: quoted when it holds a control
    character or is empty."""
    if isinstance(video_id, str) and video_id and _control_char(video_id) is None:
        return video_id
    return repr(video_id)

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


#: Exponent bits of IEEE floats: all set means Inf or NaN.
_EXPONENT = {2: (np.dtype("<u2"), 0x7C00), 4: (np.dtype("<u4"), 0x7F800000)}
#: Elements tested per step of :func:`_all_finite` (bounds its temporary to 8 MB).
_FINITE_STEP = 1 << 21


def _all_finite(data: np.ndarray, itemsize: int) -> bool:
    """Whether the little-endian floats in the bytes ``data`` are all finite: a value is
    Inf or NaN exactly when its exponent bits are all set, and one masked max over the
    raw bits tests that without converting float16 (what ``np.isfinite`` does)."""
    bits_dtype, mask = _EXPONENT[itemsize]
    bits = data.view(bits_dtype)
    for start in range(0, len(bits), _FINITE_STEP):
        if int(np.bitwise_and(bits[start:start + _FINITE_STEP], mask).max()) == mask:
            return False
    return True


def _name_at(ids: Any, i: int) -> str:
    if ids is None:
        return f"row {i} of the batch"
    vid = ids[i]
    vid = vid.as_py() if hasattr(vid, "as_py") else vid
    return f"video {vid}"


def _where(source: str | None) -> str:
    return f"cannot read shard {source}: " if source else "store features: "


def feature_views(column: pa.Array, dim: int, dtype: str, *, stream: str = "features",
                  ids: Sequence[str] | pa.Array | None = None, source: str | None = None,
                  check: bool = True) -> list[np.ndarray]:
    """Zero-copy ``(T_i, dim)`` views of each row of a stream column chunk.

    With ``check`` (the default) every cell must be whole ``(T, dim)`` rows of finite
    values: acl-dist never writes anything else, so a cell that is not is damage, and is
    one :class:`StoreError` naming ``source`` (the shard) and the video (``ids[i]``), not
    NaN reaching a model. The check is one pass over the column's bytes.
    """
    if isinstance(column, pa.ChunkedArray):
        # one chunk (a row group, a batch) as it is: combine_chunks copies even that
        column = column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int64)[column.offset: column.offset + len(column) + 1]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    np_dtype = DTYPES[dtype]
    if check and len(column):
        row_bytes = dim * np_dtype.itemsize
        ragged = np.flatnonzero(np.diff(offsets) % row_bytes)
        if len(ragged):
            i = int(ragged[0])
            raise StoreError(f"{_where(source)}damaged: {_name_at(ids, i)}: its {stream} cell "
                             f"holds {int(offsets[i + 1] - offsets[i])} bytes, not whole rows "
                             f"of {dim} {dtype} values")
        if not _all_finite(data[offsets[0]:offsets[-1]], np_dtype.itemsize):
            for i in range(len(column)):
                cell = data[offsets[i]:offsets[i + 1]].view(np_dtype).reshape(-1, dim)
                bad = ~np.isfinite(cell)
                if bad.any():
                    raise StoreError(
                        f"{_where(source)}damaged: {_name_at(ids, i)}: {stream} features hold "
                        f"{int(bad.sum())} NaN/Inf values (first at snippet "
                        f"{int(np.argwhere(bad)[0][0])}); acl-dist never writes them")
    return [data[offsets[i]:offsets[i + 1]].view(np_dtype).reshape(-1, dim)
            for i in range(len(column))]


def check_features(table: pa.Table | pa.RecordBatch, streams: dict[str, int], dtype: str,
                   source: str | None = None) -> None:
    """:func:`feature_views`' check of every stream column of ``table`` present: whole
    ``(T, D)`` cells of finite values, each ``num_snippets`` long when that column is
    there; one :class:`StoreError` naming ``source`` and the video otherwise."""
    names = table.schema.names
    ids = table.column("video_id") if "video_id" in names else None
    snippets = (np.asarray(table.column("num_snippets").to_numpy(zero_copy_only=False))
                if "num_snippets" in names else None)
    for name, dim in streams.items():
        if name not in names:
            continue
        views = feature_views(table.column(name), dim, dtype, stream=name, ids=ids,
                              source=source)
        if snippets is not None:
            _check_lengths(views, snippets, name, ids, source)


def _check_lengths(views: Sequence[np.ndarray], snippets: Sequence[int], stream: str,
                   ids: Any, source: str | None) -> None:
    for i, view in enumerate(views):
        if view.shape[0] != snippets[i]:
            raise StoreError(f"{_where(source)}damaged: {_name_at(ids, i)}: {stream} features "
                             f"have {view.shape[0]} snippets, its num_snippets says "
                             f"{snippets[i]}")


def table_to_records(table: pa.Table | pa.RecordBatch, streams: dict[str, int],
                     stored_dtype: str, dtype: np.dtype | None = None,
                     source: str | None = None) -> list[VideoRecord]:
    """Inverse of :func:`records_to_table` for the columns present (features optional).
    Features are checked as :func:`check_features` says (``source``: the shard, for the
    message)."""
    if isinstance(table, pa.Table):
        table = table.combine_chunks().to_batches()[0] if table.num_rows else None
        if table is None:
            return []
    names = table.schema.names
    meta = {name: table.column(name).to_pylist() for name in
            ("video_id", "subset", "duration", "fps", "snippet_frames", "num_snippets", "labels",
             "segments") if name in names}
    ids = meta.get("video_id")
    feats = {}
    for name, dim in streams.items():
        if name in names:
            feats[name] = feature_views(table.column(name), dim, stored_dtype, stream=name,
                                        ids=ids, source=source)
            if "num_snippets" in meta:
                _check_lengths(feats[name], meta["num_snippets"], name, ids, source)
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


#: The most trailing bytes :class:`_HashingFile` keeps to find the footer in.
_TAIL_KEEP = 4 * 2**20


class _HashingFile:
    """A write-only file that hashes what passes through it and keeps its last bytes, so
    the writer learns a shard's size, sha256 and footer without reading it back (a
    download on S3)."""

    def __init__(self, fh):
        self.fh = fh
        self.size = 0
        self.sha256 = hashlib.sha256()
        self._tail = bytearray()

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        self.sha256.update(data)
        self.size += len(data)
        self._tail += data[-_TAIL_KEEP:]
        if len(self._tail) > 2 * _TAIL_KEEP:
            del self._tail[:-_TAIL_KEEP]
        self.fh.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.fh.flush()

    def close(self) -> None:
        self.fh.close()

    @property
    def closed(self) -> bool:
        return self.fh.closed

    def integrity(self, url: str) -> dict[str, Any]:
        """The manifest's integrity fields of the finished file."""
        footer = bytes(self._tail)
        length = _footer_length(footer[-8:], len(footer)) if len(footer) >= 8 else None
        if length is None:   # a footer larger than the kept tail: read it back
            with _open_shard(url) as fh:
                footer = _read_footer(fh, self.size, url)
        else:
            footer = footer[-(length + 8):]
        return {"bytes": self.size, "sha256": self.sha256.hexdigest(),
                "footer_sha256": hashlib.sha256(footer).hexdigest(), "page_checksums": True}


def _footer_length(last8: bytes, available: int) -> int | None:
    """The footer length from a Parquet file's last 8 bytes, when the footer and those 8
    bytes fit in ``available`` bytes and the file ends in ``PAR1``."""
    if last8[4:] != b"PAR1":
        return None
    length = int.from_bytes(last8[:4], "little")
    return length if length + 8 <= available else None


def _read_footer(fh, size: int, url: str) -> bytes:
    """A shard's last ``footer length + 8`` bytes, or a StoreError saying it has none."""
    if size < 12:
        raise StoreError(f"cannot read shard {url}: damaged: {size} bytes, too short for a "
                         "Parquet file")
    fh.seek(size - 8)
    length = _footer_length(fh.read(8), size - 4)
    if length is None:
        raise StoreError(f"cannot read shard {url}: damaged: no Parquet footer at its end")
    fh.seek(size - 8 - length)
    return fh.read(length + 8)


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
            self.file = _HashingFile(fs.open(p, "wb"))
            self.pq_writer = pq.ParquetWriter(
                self.file, w.schema, compression=w.compression,
                # Dictionaries and min/max statistics only where they help: never on the
                # multi-MB feature cells.
                use_dictionary=["subset"], write_statistics=META_COLUMNS,
                # a CRC per page: readers verify each page as they decode it
                write_page_checksum=True)
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
            self.current.update(self.file.integrity(fsutil.join(self.writer.workdir,
                                                                self.current["path"])))
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
                                             replaceable=not_own_store, marker=MANIFEST)
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
        problem = video_id_problem(rec.video_id)
        if problem is not None:
            raise DataError(shown_id(rec.video_id), f"video id {problem}")
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
            # what readers refuse is never written: NaN/Inf, or values the storage dtype
            # turns into Inf
            with np.errstate(over="ignore", invalid="ignore"):
                bad = ~np.isfinite(np.asarray(arr, dtype=DTYPES[self.dtype]))
            if bad.any():
                raise DataError(rec.video_id, f"{name} features hold {int(bad.sum())} NaN/Inf "
                                              f"values in {self.dtype} (first at snippet "
                                              f"{int(np.argwhere(bad)[0][0])})")
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


def _own_files(manifest: dict[str, Any]) -> set[str]:
    """The store-relative paths of the files acl-dist wrote into a store: the manifest,
    the annotation, the shards and the side files it lists (``synth_report.json`` in stores
    written before the manifest listed side files)."""
    own = {MANIFEST, str(manifest.get("gt", GT_FILE))}
    own |= {str(s.get("path")) for s in manifest.get("shards") or [] if isinstance(s, dict)}
    files = manifest.get("files")
    own |= set(map(str, files.values())) if isinstance(files, dict) else {"synth_report.json"}
    return {posixpath.normpath(p) for p in own}


def foreign_files(path: str, manifest: dict[str, Any]) -> list[str]:
    """Files and folders under the store ``path`` that acl-dist did not write (neither
    listed by its manifest nor a folder of a listed file), store-relative and sorted. On
    S3 the objects of a writer killed while replacing the store (under an unlisted
    ``v-<id>/``) are acl-dist's too."""
    own = _own_files(manifest)
    folders = set()
    for p in own:
        while (p := posixpath.dirname(p)) and p not in folders:
            folders.add(p)
    fs, root = fsutil.get_fs(path)
    if fsutil.is_remote(path):
        fs.invalidate_cache(root)
    root = root.rstrip("/")
    found = []
    for entry, info in fs.find(root, withdirs=True, detail=True).items():
        rel = entry[len(root):].lstrip("/")
        is_dir = info.get("type") == "directory"
        if not rel or rel in (folders if is_dir else own):
            continue
        if fsutil.is_remote(path) and _GENERATION_RE.match(rel + "/" if is_dir else rel):
            continue
        found.append(rel + "/" if is_dir else rel)
    return sorted(found)


def not_own_store(path: str) -> str | None:
    """The ``--overwrite`` rule for stores (``ingest``, ``synth``): None when ``path`` is an
    acl-dist store holding only what acl-dist wrote, so it may be replaced; otherwise what
    it is, for the refusal message. A file of the user's kept in a store is not ours to
    delete."""
    why = not_a_store(path)
    if why is not None:
        return why
    manifest = fsutil.read_json(fsutil.join(path, MANIFEST))
    foreign = foreign_files(path, manifest)
    if foreign:
        more = f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        return (f"an acl-dist store holding files it did not write ({', '.join(foreign[:3])}"
                f"{more})")
    return None


def _path_problem(rel: Any) -> str | None:
    """Why ``rel`` is not a path inside a store, or None."""
    if not isinstance(rel, str) or not rel:
        return "not a file name"
    if _control_char(rel) is not None:
        return "a control character in it"
    if rel.startswith(("/", "\\")) or _DRIVE_RE.match(rel):
        return "an absolute path"
    if "://" in rel or _SCHEME_RE.match(rel):
        return "a URL"
    if "\\" in rel:
        return "a backslash in it"
    if ".." in rel.split("/"):
        return "a '..' component"
    return None


def _check_manifest(mpath: str, manifest: dict[str, Any]) -> None:
    """The keys every reader uses have their writer's shape (one line naming the manifest
    and the key otherwise): a damaged or hand-edited manifest must not surface as a
    traceback deep in a read."""
    def bad(key: str, what: str) -> StoreError:
        return StoreError(f"{mpath}: key {key} is {str(manifest.get(key))[:60]!r}, not {what}")

    streams = manifest.get("streams")
    if not isinstance(streams, dict) or not streams or not all(
            isinstance(k, str) and type(v) is int and v > 0 for k, v in streams.items()):
        raise bad("streams", "a mapping of stream names to feature dims")
    if not isinstance(manifest.get("dtype"), str) or manifest["dtype"] not in FEATURE_DTYPES:
        raise bad("dtype", f"one of {', '.join(FEATURE_DTYPES)}")
    fps, frames = manifest.get("fps"), manifest.get("snippet_frames")
    if not isinstance(fps, (int, float)) or isinstance(fps, bool) or not fps > 0 or \
            fps == float("inf"):
        raise bad("fps", "a positive number")
    if type(frames) is not int or frames < 1:
        raise bad("snippet_frames", "a positive integer")
    classes = manifest.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a list of class names")
    subsets = manifest.get("subsets")
    if not isinstance(subsets, dict) or not all(
            isinstance(v, dict) and type(v.get("videos")) is int and v["videos"] >= 0
            for v in subsets.values()):
        raise bad("subsets", "a mapping of subset names to their counts")
    shards = manifest.get("shards")
    if isinstance(shards, list):
        for i, shard in enumerate(shards):
            if isinstance(shard, dict) and not (isinstance(shard.get("subset"), str)
                                                and shard["subset"] in subsets):
                raise StoreError(f"{mpath}: key shards[{i}].subset is "
                                 f"{str(shard.get('subset'))[:60]!r}, not a subset of the "
                                 "store")
            for count in ("rows", "feature_bytes", "bytes"):
                value = shard.get(count, 0) if isinstance(shard, dict) else 0
                if type(value) is not int or value < 0:
                    raise StoreError(f"{mpath}: key shards[{i}].{count} is "
                                     f"{str(value)[:60]!r}, not a count")
    _check_paths(mpath, manifest)


def _check_paths(mpath: str, manifest: dict[str, Any]) -> None:
    """Every path the manifest names lies inside the store: one line naming the manifest
    and the key otherwise (a manifest is data: it must not make a reader open files
    elsewhere)."""
    named: list[tuple[str, Any]] = []
    if "gt" in manifest:
        named.append(("gt", manifest["gt"]))
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise StoreError(f"{mpath}: key shards is not a list of shards")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("subset"), str):
            raise StoreError(f"{mpath}: key shards[{i}] is not a shard (path, subset, rows)")
        named.append((f"shards[{i}].path", shard.get("path")))
    files = manifest.get("files", {})
    if not isinstance(files, dict):
        raise StoreError(f"{mpath}: key files is not a mapping of names to paths")
    named += [(f"files[{k!r}]", v) for k, v in files.items()]
    for key, rel in named:
        problem = _path_problem(rel)
        if problem is not None:
            raise StoreError(f"{mpath}: key {key} is {rel!r}, not a path inside the store "
                             f"({problem})")


def _read_error(url: str, exc: BaseException) -> str:
    # one line of printable text: Arrow's messages span lines, and a Thrift error quotes
    # the damaged byte as it is
    text = printable(" ".join(str(exc).split())) or type(exc).__name__
    damaged = "damaged: " if any(w in text.lower() for w in (
        "checksum", "crc", "thrift", "deserializ", "corrupt", "magic")) else ""
    return f"cannot read shard {url}: {damaged}{text}"


def _handle_size(fh) -> int:
    size = fh.size
    return int(size() if callable(size) else size)


@contextlib.contextmanager
def _verified_shard(url: str, expect: dict[str, Any] | None = None, deep: bool = False
                    ) -> Iterator[pq.ParquetFile]:
    """A shard opened for reading, checked against what the manifest says of it
    (``expect``: its ``bytes`` and ``footer_sha256``; ``deep``: its whole-file ``sha256``
    too), with Arrow verifying each page's CRC as it decodes it. Any failure, also one
    while the caller reads, is one StoreError naming the shard."""
    expect = expect or {}
    try:
        with _open_shard(url) as fh:
            size = _handle_size(fh)
            want = expect.get("bytes")
            if want is not None and size != want:
                raise StoreError(f"cannot read shard {url}: damaged: it has {size} bytes, the "
                                 f"manifest says {want}")
            if expect.get("footer_sha256"):
                footer = _read_footer(fh, size, url)
                if hashlib.sha256(footer).hexdigest() != expect["footer_sha256"]:
                    raise StoreError(f"cannot read shard {url}: damaged: its footer does not "
                                     "match the manifest's footer_sha256")
            if deep and expect.get("sha256"):
                fh.seek(0)
                digest = hashlib.sha256()
                while chunk := fh.read(8 * 2**20):
                    digest.update(chunk)
                if digest.hexdigest() != expect["sha256"]:
                    raise StoreError(f"cannot read shard {url}: damaged: its bytes do not match "
                                     "the manifest's sha256")
            fh.seek(0)
            yield pq.ParquetFile(fh, page_checksum_verification=True)
    except (OSError, pa.ArrowException) as exc:
        raise StoreError(_read_error(url, exc)) from exc


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
        if not isinstance(manifest, dict):
            raise StoreError(f"{mpath}: not an acl-dist manifest (a JSON "
                             f"{type(manifest).__name__}, not an object)")
        if manifest.get("format") != FORMAT_NAME:
            raise StoreError(f"{path}: not an acl-dist store (format {manifest.get('format')!r})")
        if manifest.get("format_version") != FORMAT_VERSION:
            raise StoreError(f"{path}: store format version {manifest.get('format_version')} is "
                             f"not supported by this acl-dist (reads version {FORMAT_VERSION})")
        _check_manifest(mpath, manifest)
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
        return [url for url, _ in self._shards(subsets)]

    def _shards(self, subsets: str | Iterable[str] | None) -> list[tuple[str, dict[str, Any]]]:
        """(url, manifest entry) of the shards of ``subsets``."""
        wanted = set(self._subsets(subsets))
        return [(fsutil.join(self.path, s["path"]), s) for s in self.manifest["shards"]
                if s["subset"] in wanted]

    def check(self, subsets: str | Iterable[str] | None = None, deep: bool = False) -> int:
        """Check the shards of ``subsets`` against the manifest: each one's size and footer
        hash, which a read checks too (cheap: the footers only), or with ``deep`` every
        byte against its ``sha256``. Returns the number of shards checked; a damaged one is
        one StoreError naming it."""
        shards = self._shards(subsets)
        for url, shard in shards:
            expect = {k: shard.get(k) for k in ("bytes", "footer_sha256", "sha256")}
            with _verified_shard(url, expect, deep=deep):
                pass
        return len(shards)

    def iter_videos(self, subsets: str | Iterable[str] | None = None,
                    streams: Sequence[str] | None = None, batch_rows: int = 8,
                    dtype: np.dtype | None = None) -> Iterator[VideoRecord]:
        """Yield videos shard by shard, ``batch_rows`` rows in memory at a time; each shard
        checked as :func:`_verified_shard` says, each feature cell as
        :func:`feature_views` says.

        Args:
            subsets: one subset name, several, or None for all.
            streams: feature streams to read (None: all; ``[]``: metadata only).
            dtype: cast features to this numpy dtype (default: as stored).
        """
        streams = self.streams if streams is None else {s: self.streams[s] for s in streams}
        columns = [f.name for f in ROW_FIELDS] + list(streams)
        for url, shard in self._shards(subsets):
            with _verified_shard(url, shard) as pf:
                for batch in pf.iter_batches(batch_size=batch_rows, columns=columns):
                    yield from table_to_records(batch, streams, self.dtype, dtype, source=url)

    def row_groups(self, subsets: str | Iterable[str] | None = None) -> list[dict[str, Any]]:
        """The Parquet row groups of ``subsets`` (``url``, ``row_group``, ``rows``, and what
        the manifest says of the shard: ``bytes``, ``footer_sha256``): units of work a
        process can read on its own (:meth:`read_row_group`); only the shards' footers are
        read (and checked)."""
        units = []
        for url, shard in self._shards(subsets):
            with _verified_shard(url, shard) as pf:
                meta = pf.metadata
            units += [{"url": url, "row_group": i, "rows": meta.row_group(i).num_rows,
                       "bytes": shard.get("bytes"), "footer_sha256": shard.get("footer_sha256")}
                      for i in range(meta.num_row_groups)]
        return units

    @staticmethod
    def read_row_group(url: str, index: int, columns: Sequence[str],
                       expect: dict[str, Any] | None = None) -> pa.Table:
        """One row group of a shard (``columns`` of it), as :meth:`row_groups` names it;
        ``expect``: the unit's ``bytes`` and ``footer_sha256`` to check the shard against
        (pages are CRC-checked always). Features are not decoded here: their reader checks
        them (:func:`check_features`)."""
        with _verified_shard(url, expect) as pf:
            return pf.read_row_group(index, columns=list(columns))

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
