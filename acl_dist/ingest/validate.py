"""Checks that turn one raw video into a store row, or a clear error naming the video."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..annotations import Segment, VideoAnnotation
from ..errors import DataError
from ..store import VideoRecord, shown_id, video_id_problem
from ..timegrid import SnippetGrid

FLOAT16_MAX = 65504.0


@dataclass
class RawVideo:
    """A video as a layout finds it, before its features are read.

    Attributes:
        video_id: id used in the store and in detections (the annotation file's key).
        subset: subset name as the source has it.
        load: reads the streams; returns ``{"rgb": (T, D), "flow": (T, D)}``; raises DataError.
        annotation: the video's annotation, or None for unannotated videos.
        grid: the snippet grid of this video's features.
        duration_hint: seconds from the feature files (e.g. CMCS ``frame_cnt / fps``).
    """

    video_id: str
    subset: str
    load: Callable[[], dict[str, np.ndarray]]
    annotation: VideoAnnotation | None
    grid: SnippetGrid
    duration_hint: float | None = None


@dataclass
class Checks:
    """Validation settings and what validation learned so far (expected dims)."""

    classes: set[str]
    dtype: str = "float16"
    max_trim: int = 0
    skip_bad: bool = False
    dims: dict[str, int] | None = None


def check_video_id(video_id: str) -> None:
    """A DataError naming the id (quoted when it holds a control character) when it is not
    a name: ids are used in file names, and one holding ``/``, ``\\``, ``..`` or an absolute
    path would make a layout read features from outside its root."""
    problem = video_id_problem(video_id)
    if problem is not None:
        raise DataError(shown_id(video_id), f"video id {problem}")


def check_features(video: str, arrays: dict[str, np.ndarray], checks: Checks
                   ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Validate streams of one video; returns (arrays trimmed to a common T, notes)."""
    notes: list[str] = []
    for name, arr in arrays.items():
        if arr.ndim != 2:
            raise DataError(video, f"{name} features have shape {arr.shape}, expected (T, D)")
        if arr.shape[0] == 0:
            raise DataError(video, f"empty video: {name} has 0 snippets")
        if not np.issubdtype(arr.dtype, np.floating):
            raise DataError(video, f"{name} features have dtype {arr.dtype}, expected floats")
    if checks.dims is None:
        checks.dims = {name: arr.shape[1] for name, arr in arrays.items()}
    for name, arr in arrays.items():
        want = checks.dims[name]
        if arr.shape[1] != want:
            raise DataError(video, f"{name} features have dim {arr.shape[1]}, expected {want} "
                                   "(the dim of the first video)")
    lengths = {name: arr.shape[0] for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        diff = max(lengths.values()) - min(lengths.values())
        described = " but ".join(f"{n} has {t} snippets" for n, t in lengths.items())
        if diff > checks.max_trim:
            raise DataError(video, f"T mismatch between streams: {described} "
                                   f"(--max-trim {diff} would cut the longer one)")
        t_min = min(lengths.values())
        arrays = {n: a[:t_min] for n, a in arrays.items()}
        notes.append(f"{video}: trimmed streams to {t_min} snippets ({described})")
    for name, arr in arrays.items():
        finite = np.isfinite(arr)
        if not finite.all():
            bad = np.argwhere(~finite)
            raise DataError(video, f"{name} features contain {len(bad)} NaN/Inf values "
                                   f"(first at snippet {bad[0][0]})")
        if checks.dtype == "float16":
            peak = float(np.abs(arr).max())
            if peak > FLOAT16_MAX:
                raise DataError(video, f"{name} values reach {peak:.3g}, beyond float16's range; "
                                       "ingest with --dtype float32")
    return arrays, notes


def check_segments(video: str, segments: list[Segment], video_end: float,
                   grid: SnippetGrid, checks: Checks, dropped: list[tuple[str, str]]
                   ) -> tuple[list[Segment], int]:
    """The segments of the store's *training metadata* (each video's main class, the
    report's strips): those that fit the class list and the video's extent.

    A segment ending less than one snippet after the video's end is clipped to it (feature
    extractors drop the last partial snippet, and ActivityNet's own annotations overshoot
    by up to 0.35 s); any other wrong segment is left out and recorded in ``dropped``. None
    of this edits the evaluation annotation (the store's ``gt.json`` keeps every segment
    as published: :func:`evaluation_annotation`). Only a segment of a class missing from the
    class list stops the ingest (the list is wrong, or ``skip_bad`` says to leave it out).

    Returns:
        (kept segments, number clipped)
    """
    tolerance = grid.seconds_per_snippet
    kept, clipped = [], 0
    for seg in segments:
        problem = None
        if seg.label not in checks.classes:
            problem = f"label {seg.label!r} is not in the class list"
        elif not seg.end > seg.start:
            problem = (f"{'zero-length' if seg.end == seg.start else 'reversed'} segment "
                       f"[{seg.start}, {seg.end}] ({seg.label})")
        elif seg.start < -1e-6 or seg.start >= video_end or seg.end > video_end + tolerance:
            problem = (f"segment [{seg.start}, {seg.end}] ({seg.label}) lies outside the video "
                       f"[0, {video_end:.2f}] s")
        if problem is not None:
            if seg.label not in checks.classes and not checks.skip_bad:
                # a class list that misses an annotated class is a mistake in the inputs
                # (it would take the class out of the evaluation): stop, unless told
                raise DataError(video, problem)
            dropped.append((video, problem))
            continue
        if seg.end > video_end or seg.start < 0:
            seg = Segment(seg.label, max(0.0, seg.start), min(seg.end, video_end))
            clipped += 1
        kept.append(seg)
    return kept, clipped


def evaluation_annotation(raw: RawVideo, classes: set[str], duration: float
                          ) -> VideoAnnotation | None:
    """The video's annotation as published, for the store's ``gt.json`` (what every run,
    ``evaluate`` and the report score against): every segment of a class of the store's
    class list exactly as the source has it, also one that runs past the features or is
    malformed (the official protocol counts it; a segment of a class outside the list
    belongs to no class of this store's task). The duration is the source's when it has
    one."""
    ann = raw.annotation
    if ann is None:
        return None
    return VideoAnnotation(raw.video_id, raw.subset,
                           ann.duration if ann.duration is not None else duration,
                           [g for g in ann.segments if g.label in classes],
                           [lb for lb in ann.labels if lb in classes])


def build_record(raw: RawVideo, checks: Checks, dropped: list[tuple[str, str]]
                 ) -> tuple[VideoRecord, list[str], int, VideoAnnotation | None]:
    """Load and validate one video.

    Returns:
        (record, notes, number of clipped segments, the evaluation annotation)
    Raises:
        DataError naming the video, for a problem that loses the whole video.
    """
    arrays, notes = check_features(raw.video_id, raw.load(), checks)
    num_snippets = next(iter(arrays.values())).shape[0]
    ann = raw.annotation
    coverage = raw.grid.coverage(num_snippets)
    # Features are the ground truth of how long the video is; a stated duration shorter
    # than the features (seen in ACM-Net's THUMOS gt.json) is not trusted over them.
    known = [d for d in (ann.duration if ann else None, raw.duration_hint) if d is not None]
    duration = max([coverage] + known)
    segments, clipped = [], 0
    labels: list[str] = []
    if ann is not None:
        segments, clipped = check_segments(raw.video_id, ann.segments, duration, raw.grid,
                                           checks, dropped)
        labels = [lb for lb in ann.labels if lb in checks.classes]
        # Unknown segment labels were reported above; report only video-level extras here.
        segment_labels = {s.label for s in ann.segments}
        unknown = [lb for lb in ann.labels
                   if lb not in checks.classes and lb not in segment_labels]
        if unknown and not checks.skip_bad:
            raise DataError(raw.video_id, f"label {unknown[0]!r} is not in the class list")
        for lb in unknown:
            dropped.append((raw.video_id, f"video label {lb!r} is not in the class list"))
    record = VideoRecord(raw.video_id, raw.subset, float(duration), raw.grid.fps,
                         raw.grid.snippet_frames, num_snippets, labels, segments, arrays)
    return record, notes, clipped, evaluation_annotation(raw, checks.classes, float(duration))
