"""Readers of the field's on-disk feature layouts (docs/real_data.md), one class per layout.

Each layout yields :class:`RawVideo` items whose ``load()`` reads that video's streams only
when called, so ingest holds one video's features at a time (the W-TALC joint file is the
exception: it is one pickle that numpy can only load whole).
"""

from __future__ import annotations

import io
import posixpath
from typing import Any, Iterator

import numpy as np

from .. import fsutil
from ..annotations import (AnnotationSet, Segment, VideoAnnotation, load_annotations,
                           load_class_list, load_video_list, unique_in_order)
from ..errors import ConfigError, DataError
from ..timegrid import SnippetGrid
from .validate import RawVideo

PICKLE_HINT = ("holds pickled Python objects; numpy only unpickles with --allow-pickle "
               "(pass it only for files you trust)")


def _listdir(path: str) -> list[str]:
    """Names (not paths) of the entries of a local or remote directory."""
    fs, p = fsutil.get_fs(path)
    try:
        return sorted(posixpath.basename(e.rstrip("/")) for e in fs.ls(p, detail=False))
    except FileNotFoundError:
        return []


def _isdir(path: str) -> bool:
    fs, p = fsutil.get_fs(path)
    return fs.isdir(p)


def load_array(path: str, video: str | None, what: str, allow_pickle: bool = False) -> Any:
    """``np.load`` a ``.npy`` (or one key of a ``.npz``) with errors that name the video."""
    fs, p = fsutil.get_fs(path)
    try:
        with fs.open(p, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise DataError(video, f"missing {what} file {path}") from None
    except Exception as exc:
        raise DataError(video, f"cannot read {what} file {path}: {exc}") from exc
    try:
        return np.load(io.BytesIO(data), allow_pickle=allow_pickle)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise DataError(video, f"{what} file {path} {PICKLE_HINT}") from exc
        raise DataError(video, f"cannot parse {what} file {path}: {exc}") from exc
    except Exception as exc:
        raise DataError(video, f"cannot parse {what} file {path}: {exc}") from exc


class Layout:
    """Base of the layout readers.

    Args:
        root: the layout's root directory (local or ``s3://``).
        gt: annotation file (ActivityNet JSON / THUMOS gt.json / BSN JSON); some layouts
            look for ``ROOT/gt.json`` when it is not given.
        gt_info: BSN's ``video_info_new.csv`` (subset per video) for the BSN v1.3 form.
        classes_file: class list (one per line or BSN's ``action_name.csv``).
        allow_pickle: let numpy unpickle object arrays (W-TALC layout only).
        grid: snippet grid of the features.
    """

    name = ""
    default_gt: str | None = None

    def __init__(self, root: str, gt: str | None = None, gt_info: str | None = None,
                 classes_file: str | None = None, allow_pickle: bool = False,
                 grid: SnippetGrid = SnippetGrid(), feature_stride: int | None = None):
        self.root = root.rstrip("/")
        if not fsutil.exists(self.root):
            raise ConfigError(f"--root {root}: no such directory")
        self.gt_path = gt
        if gt is None and self.default_gt is not None:
            candidate = fsutil.join(self.root, self.default_gt)
            self.gt_path = candidate if fsutil.exists(candidate) else None
        self.gt_info = gt_info
        self.classes_file = classes_file
        self.allow_pickle = allow_pickle
        self.grid = grid
        self.feature_stride = feature_stride
        self.annotations: AnnotationSet | None = (
            load_annotations(self.gt_path, info_csv=gt_info, classes_file=classes_file)
            if self.gt_path else None)

    def classes(self) -> list[str]:
        if self.annotations is not None:
            return self.annotations.classes
        return load_class_list(self.classes_file) if self.classes_file else []

    def annotation(self, video: str, subset: str | None) -> VideoAnnotation | None:
        """The video's annotation; an annotated layout must annotate every video."""
        if self.annotations is None:
            return None
        ann = self.annotations.lookup(video)
        if ann is None:
            raise DataError(video, f"not in the annotation file {self.gt_path}")
        return ann

    def _raw(self, vid: str, subset: str, load) -> RawVideo:
        """A RawVideo with its annotation. A video missing from the annotation file fails
        when loaded, so ingest reports it (or with skip_bad skips it) like any bad video
        instead of the error escaping the iteration and stopping the whole ingest."""
        try:
            ann = self.annotation(vid, subset)
        except DataError as err:
            def fail(err: DataError = err) -> dict[str, np.ndarray]:
                raise err
            return RawVideo(vid, subset, fail, None, self.grid)
        return RawVideo(vid, subset, load, ann, self.grid)

    def describe(self) -> dict[str, Any]:
        return {"layout": self.name, "root": self.root, "gt": self.gt_path,
                "gt_info": self.gt_info, "classes_file": self.classes_file}

    def videos(self) -> Iterator[RawVideo]:
        raise NotImplementedError


def _split_list(root: str, subset: str) -> list[str] | None:
    path = fsutil.join(root, f"split_{subset}.txt")
    return load_video_list(path) if fsutil.exists(path) else None


class NpySplit(Layout):
    """BaSNet/UM/CoLA: ``ROOT/features/<subset>/{rgb,flow}/<video>.npy`` (each ``(T, D)``),
    ``ROOT/gt.json``, optional ``ROOT/split_<subset>.txt`` (the videos to take)."""

    name = "npy-split"
    default_gt = "gt.json"

    def videos(self) -> Iterator[RawVideo]:
        feat_root = fsutil.join(self.root, "features")
        subsets = [s for s in _listdir(feat_root) if _isdir(fsutil.join(feat_root, s))]
        if not subsets:
            raise ConfigError(f"{feat_root}: no <subset>/rgb, <subset>/flow folders found")
        for subset in subsets:
            sub = fsutil.join(feat_root, subset)
            ids = _split_list(self.root, subset)
            if ids is None:
                ids = unique_in_order(
                    n[:-4] for s in ("rgb", "flow") for n in _listdir(fsutil.join(sub, s))
                    if n.endswith(".npy"))
                ids.sort()
            for vid in ids:
                paths = {s: fsutil.join(sub, s, f"{vid}.npy") for s in ("rgb", "flow")}
                yield self._raw(vid, subset, lambda vid=vid, paths=paths: {
                    s: load_array(p, vid, f"{s}") for s, p in paths.items()})


class NpyConcat(Layout):
    """ACM-Net / ASM-Loc / ActionFormer: one ``(T, 2D)`` npy per video, RGB first.

    Either ``ROOT/<subset>/<video>.npy`` (subset = folder name, with optional
    ``ROOT/split_<subset>.txt``) or a flat ``ROOT/<video>.npy`` whose subsets come from the
    annotation file.
    """

    name = "npy-concat"
    default_gt = "gt.json"

    def _split(self, vid: str, path: str) -> dict[str, np.ndarray]:
        arr = load_array(path, vid, "feature")
        if arr.ndim != 2 or arr.shape[1] % 2:
            raise DataError(vid, f"concatenated features have shape {arr.shape}, expected "
                                 "(T, 2D) with RGB in the first D columns")
        half = arr.shape[1] // 2
        return {"rgb": arr[:, :half], "flow": arr[:, half:]}

    def videos(self) -> Iterator[RawVideo]:
        entries = _listdir(self.root)
        subsets = [e for e in entries if _isdir(fsutil.join(self.root, e))
                   and any(n.endswith(".npy") for n in _listdir(fsutil.join(self.root, e)))]
        if subsets:
            for subset in subsets:
                folder = fsutil.join(self.root, subset)
                ids = _split_list(self.root, subset) or sorted(
                    n[:-4] for n in _listdir(folder) if n.endswith(".npy"))
                for vid in ids:
                    path = fsutil.join(folder, f"{vid}.npy")
                    yield self._raw(vid, subset,
                                    lambda vid=vid, path=path: self._split(vid, path))
            return
        if self.annotations is None:
            raise ConfigError(f"{self.root}: flat npy-concat layout needs --gt for the subsets")
        on_disk = {n[:-4] for n in entries if n.endswith(".npy")}
        for vid, ann in self.annotations.videos.items():
            name = vid if vid in on_disk or ("v_" + vid) not in on_disk else "v_" + vid
            path = fsutil.join(self.root, f"{name}.npy")
            yield RawVideo(vid, ann.subset, lambda vid=vid, path=path: self._split(vid, path),
                           ann, self.grid)


class Wtalc(Layout):
    """W-TALC lineage: ``ROOT/<Name>-I3D-JOINTFeatures.npy`` (object array of ``(T, 2048)``)
    and ``ROOT/<Name>-Annotations/*.npy`` (videoname, subset, duration, labels, labels_all,
    segments, classlist). Row i of the features matches row i of every annotation array.
    """

    name = "wtalc"

    def __init__(self, root: str, **kwargs: Any):
        super().__init__(root, **kwargs)
        entries = _listdir(self.root)
        feats = [e for e in entries if e.endswith("-I3D-JOINTFeatures.npy")]
        anns = [e for e in entries if e.endswith("-Annotations")]
        if len(feats) != 1 or len(anns) != 1:
            raise ConfigError(f"{self.root}: expected one <Name>-I3D-JOINTFeatures.npy and one "
                              f"<Name>-Annotations folder, found {feats} and {anns}")
        if not self.allow_pickle:
            raise ConfigError(f"layout wtalc: {feats[0]} {PICKLE_HINT}")
        self.features_path = fsutil.join(self.root, feats[0])
        self.ann_dir = fsutil.join(self.root, anns[0])
        self._classes = [_text(c) for c in self._ann("classlist")]

    def _ann(self, name: str, required: bool = True) -> Any:
        path = fsutil.join(self.ann_dir, f"{name}.npy")
        if not required and not fsutil.exists(path):
            return None
        return load_array(path, None, f"annotation {name}.npy", allow_pickle=True)

    def classes(self) -> list[str]:
        return list(self._classes)

    def describe(self) -> dict[str, Any]:
        return {"layout": self.name, "root": self.root, "features": self.features_path}

    def videos(self) -> Iterator[RawVideo]:
        names = [_text(v) for v in self._ann("videoname")]
        subsets = [_text(v) for v in self._ann("subset")]
        durations = np.asarray(self._ann("duration"), dtype=np.float64).reshape(-1)
        seg_labels = self._ann("labels")
        segments = self._ann("segments")
        labels_all = self._ann("labels_all", required=False)
        n = len(names)
        for what, arr in (("subset", subsets), ("duration", durations),
                          ("labels", seg_labels), ("segments", segments)):
            if len(arr) != n:
                raise DataError(None, f"{self.ann_dir}: {what}.npy has {len(arr)} rows, "
                                      f"videoname.npy has {n}")
        feats = load_array(self.features_path, None, "joint features", allow_pickle=True)
        if len(feats) != n:
            raise DataError(None, f"{self.features_path} has {len(feats)} videos, the "
                                  f"annotations have {n}")
        for i, vid in enumerate(names):
            segs = [Segment(_text(lb), float(s[0]), float(s[1]))
                    for lb, s in zip(seg_labels[i], segments[i])]
            labels = unique_in_order(s.label for s in segs)
            if not labels and labels_all is not None:
                labels = [_text(x) for x in labels_all[i] if _text(x) in self._classes]
            ann = VideoAnnotation(vid, subsets[i], float(durations[i]), segs, labels)

            def load(i: int = i, vid: str = vid) -> dict[str, np.ndarray]:
                arr = np.asarray(feats[i])
                if arr.ndim != 2 or arr.shape[1] % 2:
                    raise DataError(vid, f"joint features have shape {arr.shape}, "
                                         "expected (T, 2D)")
                half = arr.shape[1] // 2
                return {"rgb": arr[:, :half], "flow": arr[:, half:]}

            yield RawVideo(vid, subsets[i], load, ann, self.grid)


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class CmcsNpz(Layout):
    """CMCS / ACL: ``ROOT/{rgb,flow}-<crop>-step<k>/<video>-{rgb,flow}.npz`` with keys
    ``feature`` ``(B, T, D)`` (B crops, averaged) and ``frame_cnt``. Videos come from the
    annotation file (``--gt``, required); file names may carry ActivityNet's ``v_`` prefix.
    ``feature_stride`` (frames between stored vectors, e.g. 4 for CMCS's THUMOS release) is
    subsampled to the grid's ``snippet_frames``.
    """

    name = "cmcs-npz"

    def __init__(self, root: str, **kwargs: Any):
        super().__init__(root, **kwargs)
        if self.annotations is None:
            raise ConfigError("layout cmcs-npz needs --gt (the videos and their subsets)")
        entries = _listdir(self.root)
        self.dirs = {}
        for stream in ("rgb", "flow"):
            found = sorted(e for e in entries if e.startswith(f"{stream}-") and "step" in e)
            if not found:
                raise ConfigError(f"{self.root}: no {stream}-<crop>-step<k> folder")
            preferred = [e for e in found if "resize" in e] or found
            self.dirs[stream] = fsutil.join(self.root, preferred[0])
        stride = self.feature_stride or self.grid.snippet_frames
        if self.grid.snippet_frames % stride:
            raise ConfigError(f"--snippet-frames {self.grid.snippet_frames} must be a multiple "
                              f"of --feature-stride {stride}")
        self.step = self.grid.snippet_frames // stride
        self.on_disk = {s: set(_listdir(d)) for s, d in self.dirs.items()}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "dirs": self.dirs, "subsample": self.step}

    def _file(self, stream: str, vid: str) -> str:
        for name in (vid, "v_" + vid, vid[2:] if vid.startswith("v_") else None):
            if name and f"{name}-{stream}.npz" in self.on_disk[stream]:
                return fsutil.join(self.dirs[stream], f"{name}-{stream}.npz")
        return fsutil.join(self.dirs[stream], f"{vid}-{stream}.npz")

    def _load(self, raw: RawVideo) -> dict[str, np.ndarray]:
        out = {}
        for stream in ("rgb", "flow"):
            path = self._file(stream, raw.video_id)
            npz = load_array(path, raw.video_id, stream)
            if "feature" not in npz.files:
                raise DataError(raw.video_id, f"{stream} file {path} has no key 'feature' "
                                              f"(keys: {npz.files})")
            feat = np.asarray(npz["feature"])
            if feat.ndim == 3:
                feat = feat.mean(axis=0)  # average the B crop views
            out[stream] = feat[:: self.step]
            if stream == "rgb" and "frame_cnt" in npz.files:
                raw.duration_hint = float(np.asarray(npz["frame_cnt"]).reshape(-1)[0]) / self.grid.fps
        return out

    def videos(self) -> Iterator[RawVideo]:
        for vid, ann in self.annotations.videos.items():
            raw = RawVideo(vid, ann.subset, lambda: {}, ann, self.grid)
            raw.load = lambda raw=raw: self._load(raw)
            yield raw


LAYOUTS: dict[str, type[Layout]] = {
    NpySplit.name: NpySplit,
    NpyConcat.name: NpyConcat,
    Wtalc.name: Wtalc,
    CmcsNpz.name: CmcsNpz,
}
