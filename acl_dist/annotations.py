"""Annotation files of the field, read into one form.

Supported (FORMATS.md §2): the ActivityNet JSON (v1.2 and v1.3; ``database`` -> ``{subset,
duration, annotations}``), the THUMOS14 ``gt.json`` variants (BaSNet/UM/CoLA with string
segments and no duration; ACM-Net with ``duration``/``frames``; ActionFormer with ``fps``),
BSN's ActivityNet-1.3 form (top level keyed ``v_<id>`` with ``duration_second`` and the
subset in ``video_info_new.csv``), split lists, class lists and THUMOS ``Ambiguous_test.txt``.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any, Iterable, NamedTuple

from . import fsutil
from .errors import DataError, StoreError


class Segment(NamedTuple):
    """One annotated action instance; times in seconds."""

    label: str
    start: float
    end: float


@dataclass
class VideoAnnotation:
    """Annotation of one video.

    Attributes:
        video_id: the key used by the annotation file (and by detections / evaluation).
        subset: subset name exactly as the source has it (``training``, ``validation``, ...).
        duration: seconds, or None when the source has none.
        segments: action instances (may be empty: test videos, background videos).
        labels: video-level labels; defaults to the segment labels in order of appearance.
    """

    video_id: str
    subset: str | None
    duration: float | None
    segments: list[Segment] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labels:
            self.labels = unique_in_order(s.label for s in self.segments)


def unique_in_order(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(item, None)
    return list(seen)


def primary_label(segments: Iterable[Segment], labels: list[str]) -> str | None:
    """The video's main class: the label with the largest total annotated duration.

    Ties go to the label that appears first. Falls back to the first video-level label for
    videos without segments. Used as the class of a video for clustering metrics.
    """
    total: dict[str, float] = {}
    for seg in segments:
        total[seg.label] = total.get(seg.label, 0.0) + max(0.0, seg.end - seg.start)
    if total:
        return max(total, key=lambda k: (total[k], -list(total).index(k)))
    return labels[0] if labels else None


@dataclass
class AnnotationSet:
    """All videos of an annotation file, in file order, and the class list."""

    videos: dict[str, VideoAnnotation]
    classes: list[str]
    source: str = ""

    def subset_ids(self, subset: str) -> list[str]:
        return [v.video_id for v in self.videos.values() if v.subset == subset]

    def subsets(self) -> list[str]:
        return unique_in_order(v.subset for v in self.videos.values() if v.subset is not None)

    def lookup(self, video_id: str) -> VideoAnnotation | None:
        """Find a video by id, tolerating ActivityNet's optional ``v_`` prefix."""
        if video_id in self.videos:
            return self.videos[video_id]
        alt = video_id[2:] if video_id.startswith("v_") else "v_" + video_id
        return self.videos.get(alt)


def _float(value: Any, video: str, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError) as exc:
        raise DataError(video, f"{what} is not a number: {value!r}") from exc


def _parse_segments(video: str, anns: Any) -> list[Segment]:
    if not isinstance(anns, list):
        raise DataError(video, f"'annotations' must be a list, got {type(anns).__name__}")
    segs = []
    for ann in anns:
        if not isinstance(ann, dict) or "segment" not in ann or "label" not in ann:
            raise DataError(video, f"annotation without 'segment' or 'label': {ann!r}"[:200])
        seg = ann["segment"]
        if not isinstance(seg, (list, tuple)) or len(seg) != 2:
            raise DataError(video, f"segment must be [start, end], got {seg!r}"[:200])
        if not isinstance(ann["label"], (str, int)):
            raise DataError(video, f"label must be a string, got {ann['label']!r}"[:200])
        segs.append(Segment(str(ann["label"]), _float(seg[0], video, "segment start"),
                            _float(seg[1], video, "segment end")))
    return segs


def parse_activitynet(data: dict, source: str = "", info_csv: str | None = None,
                      classes: list[str] | None = None) -> AnnotationSet:
    """Parse an ActivityNet-style annotation dict (any of the forms in the module doc).

    Args:
        data: the loaded JSON.
        info_csv: BSN's ``video_info_new.csv`` (subset and duration per video), required for
            the BSN form, which has no subset field.
        classes: the class list; default: every label in the file, sorted.
    """
    name = source or "annotations"
    if isinstance(data, dict) and "database" in data:
        database = data["database"]
        if not isinstance(database, dict):
            raise StoreError(f"{name}: 'database' must be an object mapping video ids to "
                             f"entries, got {type(database).__name__}")
    elif isinstance(data, dict) and data and all(
            isinstance(v, dict) and "annotations" in v for v in data.values()):
        database = data  # BSN form: top level keyed by video
    else:
        raise StoreError(f"{name}: no 'database' key and not the BSN form "
                         "(a dict of videos with 'annotations')")
    info: dict[str, dict[str, str]] = {}
    if info_csv is not None:
        with fsutil.open_read(info_csv, "r") as fh:
            reader = csv.DictReader(fh)
            if "video" not in (reader.fieldnames or []):
                raise StoreError(f"{info_csv}: no 'video' column (BSN's video_info_new.csv "
                                 "has video, numFrame, seconds, fps, rfps, subset, ...)")
            for row in reader:
                info[row["video"]] = row
    videos: dict[str, VideoAnnotation] = {}
    for vid, entry in database.items():
        if not isinstance(entry, dict):
            raise DataError(vid, f"{name}: expected an object, got {type(entry).__name__}")
        subset = entry.get("subset")
        duration = entry.get("duration", entry.get("duration_second"))
        if vid in info:
            subset = subset or info[vid].get("subset")
            if duration is None and info[vid].get("seconds"):
                duration = info[vid]["seconds"]
        if subset is None:
            raise DataError(vid, "no subset: the BSN form needs its video_info_new.csv (--gt-info)")
        videos[vid] = VideoAnnotation(
            video_id=vid, subset=str(subset),
            duration=None if duration is None else _float(duration, vid, "duration"),
            segments=_parse_segments(vid, entry.get("annotations", [])))
    if classes is None:
        classes = sorted({s.label for v in videos.values() for s in v.segments})
    return AnnotationSet(videos=videos, classes=list(classes), source=source)


def load_annotations(path: str, info_csv: str | None = None,
                     classes_file: str | None = None) -> AnnotationSet:
    """Load any supported annotation JSON (``.json`` or ``.json.gz``, local or ``s3://``)."""
    classes = load_class_list(classes_file) if classes_file else None
    return parse_activitynet(fsutil.read_json(path), source=path, info_csv=info_csv,
                             classes=classes)


def load_class_list(path: str) -> list[str]:
    """One class per line; a CSV with a header row (BSN's ``action_name.csv``) also works."""
    lines = [ln.strip() for ln in fsutil.read_text(path).splitlines() if ln.strip()]
    if path.endswith(".csv") and lines:
        lines = [row[0] for row in csv.reader(io.StringIO("\n".join(lines[1:])))]
    return lines


def load_video_list(path: str) -> list[str]:
    """A split list: one video name per line (blank lines ignored)."""
    return [ln.strip() for ln in fsutil.read_text(path).splitlines() if ln.strip()]


def load_ambiguous(path: str) -> dict[str, list[tuple[float, float]]]:
    """THUMOS ``Ambiguous_test.txt``: ``<video>  <start> <end>`` per line, any whitespace."""
    out: dict[str, list[tuple[float, float]]] = {}
    for ln in fsutil.read_text(path).splitlines():
        parts = ln.split()
        if not parts:
            continue
        if len(parts) != 3:
            raise DataError(None, f"{path}: bad Ambiguous line {ln!r}")
        out.setdefault(parts[0], []).append((float(parts[1]), float(parts[2])))
    return out


def to_activitynet_json(videos: Iterable[VideoAnnotation], version: str = "acl-dist") -> dict:
    """ActivityNet ground-truth JSON (accepted by the official evaluator)."""
    database = {}
    for v in videos:
        entry: dict[str, Any] = {"subset": v.subset,
                                 "annotations": [{"label": s.label, "segment": [s.start, s.end]}
                                                 for s in v.segments]}
        if v.duration is not None:
            entry["duration"] = v.duration
        database[v.video_id] = entry
    return {"version": version, "taxonomy": [], "database": database}
