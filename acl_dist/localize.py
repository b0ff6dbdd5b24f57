"""From class activation sequences and attention to scored segments (METHOD.md §10,
FORMATS.md §4). Pure numpy.

Per video, on the fused outputs (the early-fused network's, or the stream networks'
averaged with ``rgb_weight`` under ``model.fusion=late``):

1. class gate: keep classes whose softmax video score exceeds ``class_threshold`` (the top
   class always, unless ``keep_top_class`` is off as in the paper), at most
   ``max_classes`` of them (the highest scores);
2. signal per kept class: the min-max normalised CAS column (the paper's ``score`` metric),
   optionally times the min-max normalised class-agnostic attention;
3. linear upsampling by ``upsample`` (sub-snippet boundaries), or to the frame rate with
   the paper's Savitzky-Golay smoothing (``frame_rate``, ``smoothing``), then for each
   relative threshold t: runs where signal > t * mean(signal), each mask dilated by
   ``dilation_frames`` first when set (the paper: 20 frames);
4. each run scored by outer-inner contrast (mean inside minus mean over ``outer_ratio`` of
   its length on each side; 0 when there is no outside) plus ``gamma`` * video score, that
   sum (floored at 0) times the video score under ``video_score=multiplied``
   (:func:`segment_scores`);
5. proposals of all thresholds pooled per class, class-wise NMS (tIoU in seconds, no "+1").

Times are seconds on the store's snippet grid (:class:`acl_dist.timegrid.SnippetGrid`),
clipped to the video's duration.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from .config import LocalizeConfig
from .timegrid import SnippetGrid


class ScoredSegment(NamedTuple):
    """A scored detection of class index ``label``; seconds."""

    label: int
    score: float
    start: float
    end: float


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    z = x - x.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    if hi - lo < 1e-12:
        return np.zeros_like(x, dtype=np.float64)
    return (x - lo) / (hi - lo)


def upsample(signal: np.ndarray, factor: int) -> np.ndarray:
    """Linear upsampling of a per-snippet signal to ``factor`` points per snippet, sampled at
    the sub-step centres (snippet values sit at snippet centres; edges held)."""
    t = len(signal)
    if factor <= 1:
        return signal.astype(np.float64)
    centres = (np.arange(t * factor) + 0.5) / factor - 0.5
    return np.interp(centres, np.arange(t), signal.astype(np.float64))


def savgol_window(length: int) -> int:
    """The paper's Savitzky-Golay window for a signal of ``length`` points:
    max(min(255, length // 16), 3), made odd (METHOD.md §10)."""
    window = max(min(255, length // 16), 3)
    return window if window % 2 else window + 1


def smooth(signal: np.ndarray) -> np.ndarray:
    """The paper's smoothing: a first-order Savitzky-Golay filter (scipy's, edges by
    polynomial fit) with :func:`savgol_window`; signals shorter than the window (or than 3
    points) are returned as they are."""
    from scipy.signal import savgol_filter

    window = savgol_window(len(signal))
    if len(signal) < window:
        return signal
    return savgol_filter(signal, window, 1)


def dilate(mask: np.ndarray, width: int) -> np.ndarray:
    """Binary dilation of a 1-D mask by a centred structuring element of ``width`` points
    (scipy.ndimage's; width <= 1 changes nothing)."""
    if width <= 1:
        return mask
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones(width, dtype=bool))


def runs(binary: np.ndarray) -> np.ndarray:
    """``(R, 2)`` [start, end) index pairs of the True runs of a 1-D boolean array."""
    padded = np.concatenate([[False], binary, [False]])
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    return edges.reshape(-1, 2)


def outer_inner_contrast(signal: np.ndarray, spans: np.ndarray, ratio: float) -> np.ndarray:
    """OIC score of each [start, end) span: mean inside minus mean of the context of
    ``ratio`` x length on both sides (clipped to the signal); outside mean 0 if empty."""
    if len(spans) == 0:
        return np.zeros(0)
    csum = np.concatenate([[0.0], np.cumsum(signal)])
    n = len(signal)
    a, b = spans[:, 0], spans[:, 1]
    length = b - a
    inner = (csum[b] - csum[a]) / np.maximum(length, 1)
    pad = np.maximum(np.round(ratio * length).astype(int), 1)
    lo, hi = np.maximum(a - pad, 0), np.minimum(b + pad, n)
    outer_sum = (csum[a] - csum[lo]) + (csum[hi] - csum[b])
    outer_len = (a - lo) + (hi - b)
    outer = np.where(outer_len > 0, outer_sum / np.maximum(outer_len, 1), 0.0)
    return inner - outer


def nms(segments: np.ndarray, scores: np.ndarray, iou: float,
        matrix_max: int = 2048) -> np.ndarray:
    """Greedy 1-D NMS; returns kept indices in descending score order.

    Up to ``matrix_max`` proposals the pairwise tIoU is one (N, N) array and the greedy
    pass only ORs its rows: computed per kept proposal, the tIoU made NMS 64 % of the time
    localising the demo's 210 test videos took under the 0.001 gate (0.59 s -> 0.35 s for
    all of it, the same detections). Above it (a long video's many proposals: N^2 float64
    arrays grow by 8 x N^2 bytes each) the rows are computed as the pass needs them."""
    order = np.argsort(-scores, kind="stable")
    starts, ends = segments[order, 0], segments[order, 1]
    lengths = ends - starts

    def overlapping(i, others) -> np.ndarray:
        inter = np.clip(np.minimum(ends[i], ends[others]) - np.maximum(starts[i], starts[others]),
                        0, None)
        union = lengths[i] + lengths[others] - inter
        return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0) >= iou

    n = len(order)
    if n <= matrix_max:
        every = np.arange(n)
        row = overlapping(every[:, None], every[None, :]).__getitem__
    else:
        def row(i: int) -> np.ndarray:
            return overlapping(i, slice(None))
    keep = []
    suppressed = np.zeros(n, dtype=bool)
    for i in range(n):
        if not suppressed[i]:
            keep.append(i)
            suppressed |= row(i)
    return order[np.asarray(keep, dtype=int)]


def segment_scores(contrast: np.ndarray, prob: float, cfg: LocalizeConfig) -> np.ndarray:
    """Segments' scores from their outer-inner contrast ``(N,)`` and their class's softmax
    video score ``prob``: ``contrast + gamma * prob`` (``video_score=added``, the paper's),
    or that, floored at 0, times ``prob`` (``multiplied``). The floor: a segment no higher
    than its surroundings (0.4 % of the demo's) would otherwise rise towards 0 as ``prob``
    falls, above the same segment in a video that shows the class clearly."""
    scores = contrast + cfg.gamma * prob
    if cfg.video_score == "multiplied":
        scores = np.maximum(scores, 0.0) * prob
    return scores


def localize_video(cas: np.ndarray, attention: np.ndarray, video_logits: np.ndarray,
                   grid: SnippetGrid, duration: float,
                   cfg: LocalizeConfig = LocalizeConfig()) -> list[ScoredSegment]:
    """Detections of one video.

    Args:
        cas: ``(T, C)`` fused class logits O.
        attention: ``(T,)`` fused class-agnostic attention S.
        video_logits: ``(C,)`` fused video logits p.
        grid: the video's snippet grid. duration: seconds (detections are clipped to it).
    Returns:
        Segments sorted by score, at most ``cfg.max_per_video`` (all when 0).
    """
    t_len, n_cls = cas.shape
    probs = softmax(video_logits.astype(np.float64))
    classes = set(np.flatnonzero(probs > cfg.class_threshold).tolist())
    if cfg.keep_top_class:
        classes.add(int(np.argmax(probs)))
    if cfg.max_classes and len(classes) > cfg.max_classes:     # the highest video scores
        classes = set(sorted(classes, key=lambda c: (-probs[c], c))[:cfg.max_classes])
    factor = grid.snippet_frames if cfg.frame_rate else max(cfg.upsample, 1)
    step = grid.seconds_per_snippet / factor
    # the dilation in frames, as points of the upsampled signal
    widen = round(cfg.dilation_frames * factor / grid.snippet_frames) \
        if cfg.dilation_frames else 0
    att = minmax(attention) if cfg.signal == "cas_attention" else None
    out: list[ScoredSegment] = []
    for c in sorted(classes):
        signal = minmax(cas[:, c])
        if att is not None:
            signal = signal * att
        up = upsample(signal, factor)
        if cfg.smoothing == "savgol":
            up = smooth(up)
        mean = up.mean()
        if not mean > 0:
            continue
        spans = np.concatenate([runs(dilate(up > th * mean, widen)) for th in cfg.thresholds],
                               axis=0) if cfg.thresholds else np.zeros((0, 2), int)
        if len(spans) == 0:
            continue
        spans = np.unique(spans, axis=0)
        scores = segment_scores(outer_inner_contrast(up, spans, cfg.outer_ratio), probs[c],
                                cfg)
        seconds = np.clip(spans * step, 0.0, duration)
        valid = seconds[:, 1] > seconds[:, 0]
        seconds, scores = seconds[valid], scores[valid]
        for i in nms(seconds, scores, cfg.nms_iou):
            out.append(ScoredSegment(c, float(scores[i]), float(seconds[i, 0]),
                                     float(seconds[i, 1])))
    out.sort(key=lambda s: -s.score)
    return out[: cfg.max_per_video] if cfg.max_per_video else out


def fuse(rgb: np.ndarray, flow: np.ndarray, rgb_weight: float) -> np.ndarray:
    """Late fusion: ``w * rgb + (1 - w) * flow`` (paper: w = 2/3)."""
    return rgb_weight * rgb + (1.0 - rgb_weight) * flow
