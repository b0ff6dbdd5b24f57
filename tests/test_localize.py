"""Attention/CAS -> segments on planted segments; OIC, NMS, class gate, seconds."""

from __future__ import annotations

import numpy as np
import pytest

from acl_dist.config import LocalizeConfig
from acl_dist.localize import localize_video, nms, outer_inner_contrast, runs, upsample
from acl_dist.timegrid import SnippetGrid

GRID = SnippetGrid(25.0, 16)  # 0.64 s per snippet


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
                          cfg=LocalizeConfig(upsample=8, thresholds=(0.5, 1.0, 2.0)))
    assert {s.label for s in segs} == {1}  # class 2: softmax 0.018 < 0.1; class 0 gated too
    best = sorted(segs, key=lambda s: -s.score)[:2]
    spans = sorted((round(s.start, 2), round(s.end, 2)) for s in best)
    assert spans[0] == pytest.approx((12.8, 19.2), abs=0.33)
    assert spans[1] == pytest.approx((38.4, 40.96), abs=0.33)
    assert all(0.0 <= s.start < s.end <= 64.0 for s in segs)
    # scores add gamma x the video-level class probability
    probs = np.exp(logits) / np.exp(logits).sum()
    no_gamma = localize_video(cas, att, logits, GRID, 64.0,
                              LocalizeConfig(gamma=0.0, thresholds=(0.5, 1.0, 2.0)))
    assert best[0].score - max(s.score for s in no_gamma) == pytest.approx(0.25 * probs[1])


def test_top_class_always_kept_and_clipping():
    cas, att, _ = planted_video()
    cas[40:50, 0] = 1.0
    flat = np.zeros(3)  # all classes at 1/3 > 0.1
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
