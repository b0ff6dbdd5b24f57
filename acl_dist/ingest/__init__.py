"""``acl-dist ingest``: a source feature layout -> a feature store.

Streaming (one video's features in memory, plus one row group per subset in the writer),
atomic (the store appears only when every video was written), validated (each problem is
one message naming the video; ``skip_bad`` records skipped videos in the manifest instead of
stopping). Annotations are evaluation data: the store's ``gt.json`` keeps every segment of
a listed class as published; segments that do not fit their video are left out of the
training metadata only, and recorded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .. import fsutil
from ..errors import ConfigError, DataError
from ..progress import progress
from ..store import FeatureStore, StoreWriter, not_own_store
from ..timegrid import SnippetGrid
from .layouts import LAYOUTS, Layout
from .validate import Checks, RawVideo, build_record, check_video_id

__all__ = ["ingest", "IngestSummary", "LAYOUTS", "RawVideo"]


@dataclass
class IngestSummary:
    store: str
    videos: int
    subsets: dict[str, int]
    skipped_videos: list[tuple[str, str]] = field(default_factory=list)
    dropped_segments: list[tuple[str, str]] = field(default_factory=list)
    clipped_segments: int = 0
    feature_bytes: int = 0
    seconds: float = 0.0


def make_layout(layout: str, root: str, **kwargs: Any) -> Layout:
    if layout not in LAYOUTS:
        raise ConfigError(f"unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout](root, **kwargs)


def _record_left_out(writer: StoreWriter, skipped: list[tuple[str, str]],
                     dropped: list[tuple[str, str]], clipped: int) -> None:
    """The manifest's record of what the store's training metadata left out: skipped
    videos, segments that do not fit (gt.json keeps them as published), clipped ends."""
    for video, problem in skipped:
        writer.skip(video, problem, "video")
    for video, problem in dropped:
        writer.skip(video, problem, "segment")
    if clipped:
        writer.note(f"{clipped} segments ended less than one snippet after their video "
                    "and were clipped to its end in the training metadata; gt.json "
                    "keeps them as published")
    if dropped:
        writer.note(f"{len(dropped)} segments or labels do not fit their video or the "
                    "class list (listed under skipped): left out of the training "
                    "metadata; gt.json keeps every segment of a listed class as "
                    "published")


def _check_new_id(video_id: str, seen: set[str]) -> None:
    """Before anything of the video is read: an id that is a path would name a file
    outside --root (:func:`check_video_id`), and a repeated one would stand twice in the
    store. Adds it to ``seen``."""
    check_video_id(video_id)
    if video_id in seen:
        raise DataError(video_id, "duplicate video id")
    seen.add(video_id)


def ingest(layout: str, root: str, out: str, *, gt: str | None = None,
           gt_info: str | None = None, classes_file: str | None = None,
           allow_pickle: bool = False, skip_bad: bool = False, dtype: str = "float16",
           fps: float = 25.0, snippet_frames: int = 16, feature_stride: int | None = None,
           max_trim: int = 0, shard_mb: float = 128.0, overwrite: bool = False,
           quiet: bool = False) -> IngestSummary:
    """Convert one source layout into a feature store at ``out``. Long because: its Args
    document every option (the body is the read-validate-write loop).

    Args:
        layout: ``npy-split``, ``npy-concat``, ``wtalc`` or ``cmcs-npz`` (docs/real_data.md).
        root: the layout's root (local or ``s3://``).
        gt, gt_info, classes_file: annotation JSON, BSN CSV, class list (see the layouts).
        allow_pickle: allow numpy to unpickle (needed by ``wtalc``; never the default).
        skip_bad: skip bad videos and record them, instead of stopping (segment problems
            never stop an ingest: they are recorded, and gt.json keeps the segments).
        dtype: storage dtype, ``float16`` or ``float32``.
        fps, snippet_frames: the snippet grid of the features (25 fps, 16 frames standard).
        feature_stride: ``cmcs-npz`` only: frames between stored vectors (subsampled).
        max_trim: tolerate RGB/flow length differences up to this many snippets (trimmed).
        shard_mb: feature MB per Parquet shard.
    """
    import time

    started = time.perf_counter()
    # before reading any input: an existing output needs --overwrite, and is replaced
    # only when it is a store holding only what acl-dist wrote
    fsutil.check_output_dir(out, overwrite, not_own_store)
    grid = SnippetGrid(fps, snippet_frames)
    src = make_layout(layout, root, gt=gt, gt_info=gt_info, classes_file=classes_file,
                      allow_pickle=allow_pickle, grid=grid, feature_stride=feature_stride)
    classes = src.classes()
    checks = Checks(classes=set(classes), dtype=dtype, max_trim=max_trim, skip_bad=skip_bad)
    dropped: list[tuple[str, str]] = []
    skipped: list[tuple[str, str]] = []
    clipped = 0
    writer: StoreWriter | None = None
    source = {**src.describe(), "dtype": dtype, "skip_bad": skip_bad, "max_trim": max_trim}
    seen: set[str] = set()
    try:
        for raw in progress(src.videos(), desc=f"ingest {layout}", unit="video", quiet=quiet):
            try:
                _check_new_id(raw.video_id, seen)
                record, notes, n_clipped, evaluation = build_record(raw, checks, dropped)
            except DataError as err:
                if not skip_bad:
                    raise DataError(err.video, f"{err.problem} (--skip-bad skips such videos "
                                               "and records them in the manifest)") from None
                skipped.append((err.video or "?", err.problem))
                continue
            if writer is None:
                streams = {name: arr.shape[1] for name, arr in record.features.items()}
                writer = StoreWriter(out, streams=streams, classes=classes, dtype=dtype,
                                     fps=fps, snippet_frames=snippet_frames, source=source,
                                     shard_mb=shard_mb, overwrite=overwrite).__enter__()
            for note in notes:
                writer.note(note)
            clipped += n_clipped
            writer.add(record, evaluation)
        if writer is None:
            raise DataError(None, f"{root}: no usable videos found"
                            + (f" ({len(skipped)} skipped, first: {skipped[0][0]}: "
                               f"{skipped[0][1]})" if skipped else ""))
        _record_left_out(writer, skipped, dropped, clipped)
    except BaseException as exc:
        if writer is not None:
            writer.__exit__(type(exc), exc, exc.__traceback__)
        raise
    writer.__exit__(None, None, None)
    store = FeatureStore.open(out)
    stats = store.manifest["subsets"]
    return IngestSummary(
        store=out, videos=store.num_videos(),
        subsets={s: v["videos"] for s, v in stats.items()},
        skipped_videos=skipped, dropped_segments=dropped, clipped_segments=clipped,
        feature_bytes=sum(v["feature_bytes"] for v in stats.values()),
        seconds=time.perf_counter() - started)
