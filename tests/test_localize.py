"""Attention/CAS -> segments on planted segments; OIC, NMS, class gate, seconds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acl_dist.config import LocalizeConfig
from acl_dist.localize import (localize_video, nms, outer_inner_contrast, runs,
                               segment_scores, upsample)
from acl_dist.timegrid import SnippetGrid

GRID = SnippetGrid(25.0, 16)  # 0.64 s per snippet
PAPER_GATE = {"class_threshold": 0.1, "video_score": "added"}


def test_runs_and_upsample():
    assert runs(np.array([0, 1, 1, 0, 1], bool)).tolist() == [[1, 3], [4, 5]]
    assert runs(np.zeros(3, bool)).shape == (0, 2)
    up = upsample(np.array([0.0, 1.0]), 4)
    assert len(up) == 8 and up[0] == 0.0 and up[-1] == 1.0 and np.all(np.diff(up) >= 0)


def test_outer_inner_contrast_by_hand():
    signal = np.array([0.0, 0.0, 1.0, 1.0, 0.2, 0.0, 0.0, 0.0])
    # span [2, 4): inner mean 1; outer = round(0.25*2)=0 -> at least 1 each side: [1] and [4]
    # -> mean(0, 0.2) = 0.1; OIC = 0.9
    assert outer_inner_contrast(signal, np.array([[2, 4]]), 0.25)[0] == pytest.approx(0.9)
    # whole signal: no outside -> outer mean 0
    assert outer_inner_contrast(signal, np.array([[0, 8]]), 0.25)[0] == pytest.approx(
        signal.mean())


def test_nms_suppresses_overlaps_in_seconds():
    segs = np.array([[0.0, 10.0], [1.0, 10.0], [20.0, 25.0], [0.5, 9.0]])
    keep = nms(segs, np.array([0.9, 0.8, 0.7, 0.95]), iou=0.65)
    assert keep.tolist() == [3, 2]


def test_nms_ties_keep_the_first_and_empty_segments_overlap_nothing():
    segs = np.array([[0.0, 10.0], [0.0, 10.0], [5.0, 5.0], [9.0, 20.0], [0.0, 4.0]])
    scores = np.array([0.5, 0.5, 0.9, 0.4, 0.3])
    # [5, 5] has no length: tIoU 0 with everything, kept first; the tie keeps index 0;
    # [9, 20] overlaps [0, 10] by 1 / 20; [0, 4] lies inside [0, 10]: tIoU 0.4
    assert nms(segs, scores, iou=0.65).tolist() == [2, 0, 3, 4]
    assert nms(segs, scores, iou=0.4).tolist() == [2, 0, 3]
    assert nms(np.zeros((0, 2)), np.zeros(0), 0.5).tolist() == []


def reference_nms(segments, scores, iou):
    """The textbook greedy loop (acl-dist's NMS before it computed the tIoU matrix)."""
    keep, suppressed = [], np.zeros(len(scores), dtype=bool)
    starts, ends = segments[:, 0], segments[:, 1]
    for i in np.argsort(-scores, kind="stable"):
        if suppressed[i]:
            continue
        keep.append(i)
        inter = np.clip(np.minimum(ends[i], ends) - np.maximum(starts[i], starts), 0, None)
        union = (ends - starts) + (ends[i] - starts[i]) - inter
        suppressed |= np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0) >= iou
    return keep


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from([0, 1, 2, 5, 20]),
                          st.sampled_from([0.1, 0.5, 0.9])), max_size=30),
       st.sampled_from([0.3, 0.65, 1.0]))
def test_nms_equals_the_greedy_loop_by_matrix_and_by_rows(proposals, iou):
    """Ties, empty segments and both paths (the (N, N) matrix, and rows as needed above
    ``matrix_max``) keep exactly the textbook loop's proposals, in its order."""
    segs = np.array([[s / 4, (s + n) / 4] for s, n, _ in proposals], float).reshape(-1, 2)
    scores = np.array([p for _, _, p in proposals], float)
    expected = reference_nms(segs, scores, iou)
    assert nms(segs, scores, iou).tolist() == expected
    assert nms(segs, scores, iou, matrix_max=2).tolist() == expected


def planted_video(t=100, classes=3):
    cas = np.full((t, classes), -2.0)
    cas[20:30, 1] = 3.0   # snippets 20..29 -> 12.8 s .. 19.2 s
    cas[60:64, 1] = 3.0   # 38.4 s .. 40.96 s
    cas[70:80, 2] = 0.5   # a weak class, gated out by the video score
    logits = np.array([-3.0, 4.0, 0.0])
    return cas, np.full(t, 1.0 / t), logits


def test_planted_segments_are_recovered():
    cas, att, logits = planted_video()
    segs = localize_video(cas, att, logits, GRID, duration=64.0,
                          cfg=LocalizeConfig(upsample=8, thresholds=(0.5, 1.0, 2.0),
                                             **PAPER_GATE))
    assert {s.label for s in segs} == {1}  # class 2: softmax 0.018 < 0.1; class 0 gated too
    best = sorted(segs, key=lambda s: -s.score)[:2]
    spans = sorted((round(s.start, 2), round(s.end, 2)) for s in best)
    assert spans[0] == pytest.approx((12.8, 19.2), abs=0.33)
    assert spans[1] == pytest.approx((38.4, 40.96), abs=0.33)
    assert all(0.0 <= s.start < s.end <= 64.0 for s in segs)
    # scores add gamma x the video-level class probability
    probs = np.exp(logits) / np.exp(logits).sum()
    no_gamma = localize_video(cas, att, logits, GRID, 64.0,
                              LocalizeConfig(gamma=0.0, thresholds=(0.5, 1.0, 2.0),
                                             **PAPER_GATE))
    assert best[0].score - max(s.score for s in no_gamma) == pytest.approx(0.25 * probs[1])


def test_multiplied_video_score_ranks_a_barely_shown_class_last():
    """video_score=multiplied: each segment's score is (OIC + gamma p_c) x p_c. The weak
    class 2 (p = 0.018) passes a 0.001 gate; its segment, as sharp as class 1's, scores
    within gamma (p_1 - p_2) of class 1's best when added, and ranks below every class-1
    segment when multiplied."""
    cas, att, logits = planted_video()
    cas[70:80, 2] = 3.0     # as sharp a run as class 1's: the same OIC
    probs = np.exp(logits) / np.exp(logits).sum()
    kw = dict(upsample=8, thresholds=(0.5, 1.0, 2.0), class_threshold=0.001)
    added = localize_video(cas, att, logits, GRID, 64.0,
                           LocalizeConfig(video_score="added", **kw))
    multiplied = localize_video(cas, att, logits, GRID, 64.0,
                                LocalizeConfig(video_score="multiplied", **kw))
    assert {s.label for s in added} == {s.label for s in multiplied} == {1, 2}
    for a, m in zip(sorted(added, key=lambda s: (s.label, s.start, s.end)),
                    sorted(multiplied, key=lambda s: (s.label, s.start, s.end))):
        assert (a.label, a.start, a.end) == (m.label, m.start, m.end)
        assert m.score == pytest.approx(a.score * probs[a.label])
    best = {c: max(s.score for s in added if s.label == c) for c in (1, 2)}
    # added: the same contrast, the scores apart by gamma (p_1 - p_2) alone
    assert best[1] - best[2] == pytest.approx(0.25 * (probs[1] - probs[2]))
    ranked = [s.label for s in multiplied]
    assert ranked == sorted(ranked)     # every class-1 segment before class 2's


def test_segment_scores_by_hand_and_a_lower_video_score_never_ranks_higher():
    contrast = np.array([-0.2, 0.0, 0.5])
    added, multiplied = LocalizeConfig(video_score="added"), LocalizeConfig()
    np.testing.assert_allclose(segment_scores(contrast, 0.9, added), [0.025, 0.225, 0.725])
    np.testing.assert_allclose(segment_scores(contrast, 0.9, multiplied),
                               [0.0225, 0.2025, 0.6525])
    # -0.2 + 0.25 x 0.01 < 0: floored, not raised towards 0 by the small video score
    np.testing.assert_allclose(segment_scores(contrast, 0.01, multiplied),
                               [0.0, 0.000025, 0.005025])
    grid = np.linspace(-1.0, 1.0, 41)
    for low, high in [(0.001, 0.01), (0.01, 0.5), (0.3, 1.0)]:
        assert np.all(segment_scores(grid, low, multiplied)
                      <= segment_scores(grid, high, multiplied))


def test_at_most_max_classes_of_the_highest_video_scores():
    cas, att, _ = planted_video(classes=6)
    for c in range(6):
        cas[10 * c: 10 * c + 5, c] = 3.0
    logits = np.log(np.array([0.30, 0.05, 0.25, 0.02, 0.20, 0.18]))  # every one > 0.001
    labels = {c: {s.label for s in localize_video(cas, att, logits, GRID, 64.0,
                                                  LocalizeConfig(max_classes=c))}
              for c in (0, 1, 3, 5)}
    assert labels[0] == set(range(6)) and labels[5] == {0, 1, 2, 4, 5}
    assert labels[3] == {0, 2, 4} and labels[1] == {0}
    assert LocalizeConfig().max_classes == 5


def test_top_class_always_kept_and_clipping():
    cas, att, _ = planted_video()
    cas[40:50, 0] = 1.0
    flat = np.zeros(3)  # all classes at 1/3, under the 0.9 gate
    segs = localize_video(cas, att, flat, GRID, duration=50.0, cfg=LocalizeConfig(
        class_threshold=0.9))
    assert {s.label for s in segs} == {0}  # argmax of equal scores
    segs = localize_video(cas, att, np.array([0.0, 9.0, 0.0]), GRID, duration=15.0)
    assert max(s.end for s in segs) <= 15.0


def test_cas_attention_signal_uses_the_attention():
    cas, _, logits = planted_video()
    att = np.zeros(100)
    att[60:64] = 0.25  # attention only on the second instance
    segs = localize_video(cas, att, logits, GRID, 64.0, LocalizeConfig(signal="cas_attention"))
    top = max(segs, key=lambda s: s.score)
    assert top.start == pytest.approx(38.4, abs=0.33)


# --------------------------------------------------------------------------- the paper's forms


def test_savgol_window_and_smoothing_by_hand():
    from acl_dist.localize import savgol_window, smooth

    # max(min(255, len // 16), 3), made odd
    assert [savgol_window(n) for n in (10, 48, 64, 100, 160, 5000)] == [3, 3, 5, 7, 11, 255]
    # order 1 on a window of 3: inside, the mean of the 3 points (a straight-line fit's
    # centre value); at the edges, the line fitted to the first / last 3 points
    x = np.array([0.0, 0.0, 3.0, 0.0, 0.0, 6.0, 0.0, 0.0])
    y = smooth(x)
    np.testing.assert_allclose(y[1:-1], [1.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    # the lines fitted to (0, 0, 3) and (6, 0, 0), at the first and last points
    np.testing.assert_allclose(y[[0, -1]], [-0.5, -1.0])
    assert smooth(np.array([1.0, 2.0])).tolist() == [1.0, 2.0]      # shorter than a window


def test_dilation_by_hand():
    from acl_dist.localize import dilate

    mask = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0], bool)
    # a centred element of 3 points widens each run by one point on each side
    assert dilate(mask, 3).astype(int).tolist() == [0, 1, 1, 1, 0, 1, 1, 1, 0]
    # of 5 points: by two, and the gap of three between the runs closes
    assert runs(dilate(mask, 5)).tolist() == [[0, 9]]
    assert (dilate(mask, 1) == mask).all() and (dilate(mask, 0) == mask).all()


def test_paper_localisation_frame_rate_dilation_and_gate():
    """The paper's form on the planted video: frame-rate points (16 per snippet), a
    20-frame dilation that joins runs 10 frames apart, no detection for a video whose every
    class is gated out, and no cap on detections."""
    paper = LocalizeConfig(frame_rate=True, smoothing="savgol", dilation_frames=20,
                           keep_top_class=False, max_per_video=0, **PAPER_GATE,
                           thresholds=tuple(round(0.1 * i, 1) for i in range(1, 11)))
    cas, att, logits = planted_video()
    segs = localize_video(cas, att, logits, GRID, 64.0, paper)
    assert segs and {s.label for s in segs} == {1}
    step = GRID.seconds_per_snippet / 16                   # one frame: 0.04 s
    for s in segs:                                          # boundaries on the frame grid
        assert s.start / step == pytest.approx(round(s.start / step), abs=1e-6)
    # two planted runs of one class 10 frames apart: apart without dilation, one with it
    cas2 = np.full((40, 2), -2.0)
    cas2[10:20, 0] = cas2[20:30, 0] = 3.0
    cas2[20, 0] = -2.0                                      # a one-snippet (16-frame) dip
    two = LocalizeConfig(frame_rate=True, thresholds=(1.0,), keep_top_class=True)
    logits2 = np.array([5.0, -5.0])
    apart = localize_video(cas2, att[:40], logits2, GRID, 40 * 0.64, two)
    joined = localize_video(cas2, att[:40], logits2, GRID, 40 * 0.64,
                            LocalizeConfig(frame_rate=True, thresholds=(1.0,),
                                           dilation_frames=20))
    assert len(apart) == 2 and len(joined) == 1
    assert joined[0].start < 10 * 0.64 and joined[0].end > 29 * 0.64
    # the gate: every class at 1/3 under a 0.5 threshold -> the paper keeps none, acl-dist
    # the top one (class 0 of equal scores, given a planted run)
    flat = np.zeros(3)
    cas[40:50, 0] = 1.0
    assert localize_video(cas, att, flat, GRID, 64.0,
                          LocalizeConfig(class_threshold=0.5, keep_top_class=False)) == []
    assert localize_video(cas, att, flat, GRID, 64.0, LocalizeConfig(class_threshold=0.5))
    # the cap: 0 keeps every detection, 1 keeps the best
    many = localize_video(cas, att, logits, GRID, 64.0, LocalizeConfig(max_per_video=0))
    assert len(many) > 1 and localize_video(cas, att, logits, GRID, 64.0,
                                            LocalizeConfig(max_per_video=1)) == many[:1]
