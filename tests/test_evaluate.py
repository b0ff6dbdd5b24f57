"""Detection mAP (ActivityNet protocol), THUMOS helpers and result I/O of ``acl_dist.evaluate``.

Hand-worked cases give the expected AP with the arithmetic in a comment; a hypothesis
property compares the evaluator with an independent brute-force formulation written here;
the real THUMOS14 ground truth checks the evaluator end to end.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from acl_dist import fsutil
from acl_dist.errors import DataError
from acl_dist.evaluate import (
    Detection,
    DetectionResult,
    _data_file,
    detections_to_json,
    evaluate_detections,
    interpolated_ap,
    load_detections,
    load_ground_truth,
    segment_iou,
    thumos_ambiguous,
    thumos_test_videos,
)
from acl_dist.tiou import ANET_TIOU, THUMOS_TIOU, parse_tiou

# --------------------------------------------------------------------------- helpers


def gt_json(annotations: dict[str, list[tuple[str, float, float]]],
            subsets: dict[str, str] | None = None) -> dict:
    """ActivityNet GT dict: video -> [(label, start, end)]; subset 'test' unless given."""
    subsets = subsets or {}
    return {"database": {
        v: {"subset": subsets.get(v, "test"),
            "annotations": [{"label": lab, "segment": [s, e]} for lab, s, e in anns]}
        for v, anns in annotations.items()}}


def D(video: str, label: str, score: float, start: float, end: float) -> Detection:
    return Detection(video, label, score, start, end)


def evaluate(gt: dict, dets, thr=(0.5,), **kw):
    return evaluate_detections(gt, dets, subset="test", tiou_thresholds=np.asarray(thr), **kw)


def ap_of(result: DetectionResult, label: str) -> np.ndarray:
    return result.ap[:, result.classes.index(label)]


# --------------------------------------------------------------------------- segment_iou / AP


def test_segment_iou_hand_cases():
    cands = np.array([[0, 10], [5, 15], [20, 30], [2, 4], [10, 20], [-5, 25]], dtype=float)
    # [0,10] vs: itself 10/10; [5,15] 5/15; disjoint 0; inside 2/10; touching 0/20;
    # containing 10/30.
    got = segment_iou(np.array([0.0, 10.0]), cands)
    assert got == pytest.approx([1.0, 1 / 3, 0.0, 0.2, 0.0, 1 / 3])


def test_interpolated_ap_hand_cases():
    # TP, FP, TP with 2 GT: precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    # Envelope at the recall steps: 1 at 1/2, 2/3 at 1 -> 0.5*1 + 0.5*2/3 = 5/6.
    assert interpolated_ap(np.array([1, 0.5, 2 / 3]), np.array([0.5, 0.5, 1])) == \
        pytest.approx(5 / 6)
    # FP then TP, 1 GT: precision [0, 1/2], recall [0, 1] -> 1 * 1/2.
    assert interpolated_ap(np.array([0.0, 0.5]), np.array([0.0, 1.0])) == pytest.approx(0.5)
    # The envelope lifts an early low precision: FP, TP, TP with 2 GT: precision
    # [0, 1/2, 2/3], recall [0, 1/2, 1] -> envelope 2/3 at both steps -> 2/3.
    assert interpolated_ap(np.array([0, 0.5, 2 / 3]), np.array([0, 0.5, 1])) == \
        pytest.approx(2 / 3)
    # Recall never reaches 1: one TP of 2 GT -> 0.5 * 1.
    assert interpolated_ap(np.array([1.0]), np.array([0.5])) == pytest.approx(0.5)


# --------------------------------------------------------------------------- hand-worked mAP


def test_single_perfect_true_positive():
    r = evaluate(gt_json({"v1": [("A", 0, 10)]}), [D("v1", "A", 0.9, 0, 10)], thr=ANET_TIOU)
    assert r.classes == ["A"]
    assert r.map == pytest.approx(np.ones(10))
    assert r.average == pytest.approx(1.0)


def test_tp_then_fp_versus_fp_then_tp():
    gt = gt_json({"v1": [("A", 0, 10)]})
    tp, fp = (0, 10), (20, 30)
    # TP (0.9) then FP (0.8): precision [1, 1/2], recall [1, 1]; the only recall step
    # (0 -> 1) is at rank 1 with envelope 1 -> AP 1.
    r1 = evaluate(gt, [D("v1", "A", 0.9, *tp), D("v1", "A", 0.8, *fp)])
    # FP (0.9) then TP (0.8): precision [0, 1/2], recall [0, 1]; the recall step is at
    # rank 2 with precision 1/2 -> AP 1/2.
    r2 = evaluate(gt, [D("v1", "A", 0.9, *fp), D("v1", "A", 0.8, *tp)])
    assert r1.map[0] == pytest.approx(1.0)
    assert r2.map[0] == pytest.approx(0.5)


def test_sorting_is_by_score_not_file_order():
    gt = gt_json({"v1": [("A", 0, 10)]})
    # File order: TP with the lower score first; after sorting the FP (0.9) ranks first
    # -> as FP-then-TP: AP 1/2.
    r = evaluate(gt, [D("v1", "A", 0.1, 0, 10), D("v1", "A", 0.9, 20, 30)])
    assert r.map[0] == pytest.approx(0.5)


def test_duplicate_detection_of_one_gt_is_false_positive():
    gt = gt_json({"v1": [("A", 0, 10), ("A", 20, 30)]})
    dets = [D("v1", "A", 0.9, 0, 10), D("v1", "A", 0.8, 0, 10), D("v1", "A", 0.7, 20, 30)]
    # Ranks: TP (locks [0,10]), FP (its only overlapping GT is locked), TP.
    # precision [1, 1/2, 2/3], recall [1/2, 1/2, 1] -> 1/2*1 + 1/2*2/3 = 5/6.
    assert evaluate(gt, dets).map[0] == pytest.approx(5 / 6)
    # Only the duplicate pair: TP, FP; recall stays 1/2 -> 1/2.
    assert evaluate(gt, dets[:2]).map[0] == pytest.approx(0.5)


def test_score_ties_follow_argsort_reversed():
    """Official rule: ``scores.argsort()[::-1]``. numpy's default sort is stable on such
    small arrays, so reversing puts tied predictions in *reverse file order*: the later one in
    the file ranks first."""
    assert list(np.array([0.5, 0.5]).argsort()[::-1]) == [1, 0]  # the documented order
    gt = gt_json({"v1": [("A", 0, 10)]})
    tp, fp = D("v1", "A", 0.5, 0, 10), D("v1", "A", 0.5, 20, 30)
    # File order FP, TP -> ranked TP, FP: precision [1, 1/2], recall [1, 1] -> AP 1.
    assert evaluate(gt, [fp, tp]).map[0] == pytest.approx(1.0)
    # File order TP, FP -> ranked FP, TP: precision [0, 1/2], recall [0, 1] -> AP 1/2.
    assert evaluate(gt, [tp, fp]).map[0] == pytest.approx(0.5)
    # The file order is across videos too (detections of class A from v2 then v1).
    gt2 = gt_json({"v1": [("A", 0, 10)], "v2": [("B", 0, 10)]})
    r = evaluate(gt2, [tp, D("v2", "A", 0.5, 0, 10)])  # v2 has no A: FP, ranked first
    assert ap_of(r, "A")[0] == pytest.approx(0.5)


def test_tiou_ties_between_ground_truths_go_to_the_later_listed():
    """Official rule: a prediction visits its video's ground truth in ``tiou_arr.argsort()
    [::-1]`` order (ActivityNet's ``compute_average_precision_detection``), so when two
    ground-truth segments tie in tIoU, the one listed *later* is locked first.

    GT A = [0, 4], B = [6, 10]. Prediction p1 = [2, 8] (score 0.9) has tIoU 2/8 = 0.25 with
    both; p2 = [5.5, 10] (0.8) has tIoU 4/4.5 with B, 0 with A. At threshold 0.2:
    listed A, B: p1 takes B, p2 finds B locked -> TP, FP -> AP = 1/2 * 1 = 0.5;
    listed B, A (the control): p1 takes A, p2 takes B -> TP, TP -> AP = 1.
    """
    assert list(segment_iou(np.array([2.0, 8.0]), np.array([[0.0, 4.0], [6.0, 10.0]]))) == \
        [0.25, 0.25]
    assert list(np.array([0.25, 0.25]).argsort()[::-1]) == [1, 0]
    dets = [D("v1", "A", 0.9, 2, 8), D("v1", "A", 0.8, 5.5, 10)]
    a_then_b = gt_json({"v1": [("A", 0, 4), ("A", 6, 10)]})
    b_then_a = gt_json({"v1": [("A", 6, 10), ("A", 0, 4)]})
    assert evaluate(a_then_b, dets, thr=(0.2,)).map[0] == pytest.approx(0.5)
    assert evaluate(b_then_a, dets, thr=(0.2,)).map[0] == pytest.approx(1.0)


def test_class_without_predictions_scores_zero_and_counts():
    gt = gt_json({"v1": [("B", 0, 10), ("A", 20, 30)], "v2": [("C", 5, 6)]})
    r = evaluate(gt, [D("v1", "A", 0.9, 20, 30)])
    # Classes in order of first appearance in the subset's GT.
    assert r.classes == ["B", "A", "C"]
    assert r.ap[0] == pytest.approx([0.0, 1.0, 0.0])
    # mAP = (0 + 1 + 0) / 3.
    assert r.map[0] == pytest.approx(1 / 3)


def test_class_of_other_subset_is_not_evaluated():
    gt = gt_json({"v1": [("A", 0, 10)], "w1": [("Z", 0, 10)]}, subsets={"w1": "validation"})
    r = evaluate(gt, [D("v1", "A", 0.9, 0, 10)])
    assert r.classes == ["A"] and r.map[0] == pytest.approx(1.0)


def test_multi_threshold_locking_is_per_threshold_and_takes_highest_tiou():
    # GT A = [0,10], GT B = [0,7.5] (same video, same class).
    # P1 = [0,6] (0.9): tIoU(A) = 6/10 = 0.6, tIoU(B) = 6/7.5 = 0.8.
    # P2 = [4,10] (0.8): tIoU(A) = 6/10 = 0.6, tIoU(B) = 3.5/10 = 0.35.
    gt = gt_json({"v1": [("X", 0, 10), ("X", 0, 7.5)]})
    assert segment_iou(np.array([0.0, 6.0]), np.array([[0, 10], [0, 7.5]])) == \
        pytest.approx([0.6, 0.8])
    assert segment_iou(np.array([4.0, 10.0]), np.array([[0, 10], [0, 7.5]])) == \
        pytest.approx([0.6, 0.35])
    dets = [D("v1", "X", 0.9, 0, 6), D("v1", "X", 0.8, 4, 10)]
    r = evaluate(gt, dets, thr=(0.5, 0.7, 0.85))
    # thr 0.5: P1 locks B (highest tIoU, although A also passes), P2 then gets A:
    #          TP, TP -> AP 1. (Had P1 locked A, P2 would be a FP: AP 1/2.)
    # thr 0.7: P1 locks B (0.8); P2's A is 0.6 < 0.7 -> FP: precision [1, 1/2],
    #          recall [1/2, 1/2] -> AP 1/2.
    # thr 0.85: both FP -> AP 0.
    assert r.map == pytest.approx([1.0, 0.5, 0.0])


def test_tiou_equal_to_threshold_matches():
    # [0,5] vs GT [0,10]: tIoU 5/10 = 0.5 exactly (exact in binary); the official test is
    # ``tIoU < thr`` -> FP, so tIoU == thr is a match: TP at 0.5, FP at 0.5 + 1e-9.
    gt = gt_json({"v1": [("A", 0, 10)]})
    r = evaluate(gt, [D("v1", "A", 0.9, 0, 5)], thr=(0.25, 0.5, 0.5 + 1e-9))
    assert r.map == pytest.approx([1.0, 1.0, 0.0])


def test_prediction_in_video_outside_subset_or_without_class_gt_is_fp():
    gt = gt_json({"v1": [("A", 0, 10)], "v2": [("B", 0, 10)], "w": [("A", 0, 10)]},
                 subsets={"w": "validation"})
    for other in ("w", "v2", "not_in_database"):
        # FP (0.9, right segment but wrong video) then TP (0.8): AP 1/2.
        dets = [D(other, "A", 0.9, 0, 10), D("v1", "A", 0.8, 0, 10)]
        assert ap_of(evaluate(gt, dets), "A")[0] == pytest.approx(0.5), other


def test_unknown_label_raises_or_is_ignored():
    gt = gt_json({"v1": [("A", 0, 10)]})
    dets = [D("v9", "Nope", 0.99, 0, 10), D("v1", "A", 0.5, 0, 10)]
    with pytest.raises(DataError) as err:
        evaluate(gt, dets)
    assert err.value.video == "v9" and "Nope" in str(err.value)
    r = evaluate(gt, dets, unknown_labels="ignore")
    # The unknown-label detection is dropped (not a FP of A): AP 1.
    assert r.classes == ["A"] and r.map[0] == pytest.approx(1.0)


def test_videos_restriction_drops_gt_and_predictions_of_other_videos():
    gt = gt_json({"v1": [("A", 0, 10)], "v2": [("A", 0, 10), ("B", 0, 10)]})
    dets = [D("v2", "A", 0.9, 50, 60), D("v1", "A", 0.8, 0, 10)]
    # Unrestricted: A has 2 GT; FP then TP -> precision 1/2 at recall 1/2 -> 1/4; B 0.
    full = evaluate(gt, dets)
    assert full.classes == ["A", "B"]
    assert full.ap[0] == pytest.approx([0.25, 0.0])
    # v1 only: v2's GT (incl. all of class B) and v2's FP are gone -> A: 1 GT, one TP.
    only = evaluate(gt, dets, videos=["v1"])
    assert only.classes == ["A"] and only.map[0] == pytest.approx(1.0)
    # Same with a GroundTruth loaded beforehand (the CLI's path) ...
    loaded = load_ground_truth(gt, "test", videos=["v1"])
    assert loaded.videos == {"v1"} and loaded.count("A") == 1
    assert evaluate_detections(loaded, dets, tiou_thresholds=[0.5],
                               videos=["v1"]).map[0] == pytest.approx(1.0)
    # ... and with an unrestricted GroundTruth plus videos=: the restriction must still
    # apply to the ground truth, not only to the predictions.
    whole = load_ground_truth(gt, "test")
    r = evaluate_detections(whole, dets, tiou_thresholds=[0.5], videos=["v1"])
    assert r.classes == ["A"] and r.map[0] == pytest.approx(1.0)


def test_videos_restriction_to_no_subset_video_raises():
    gt = gt_json({"v1": [("A", 0, 10)]})
    with pytest.raises(DataError):
        evaluate(gt, [], videos=["elsewhere"])
    with pytest.raises(DataError):
        evaluate_detections(load_ground_truth(gt, "test"), [], videos=["elsewhere"])


def test_ambiguous_filter_removes_overlapping_predictions_only():
    gt = gt_json({"v1": [("A", 0, 10), ("A", 60, 70)]})
    amb = {"v1": [(25.0, 28.0), (65.0, 66.0)], "v2": [(0.0, 100.0)]}
    dets = [D("v1", "A", 0.9, 20, 30),   # overlaps (25, 28): removed
            D("v1", "A", 0.85, 40, 50),  # no overlap: kept, FP
            D("v1", "A", 0.8, 0, 10),    # TP; v2's Ambiguous span does not apply here
            D("v1", "A", 0.75, 28, 35)]  # touches (25, 28) at one point: kept, FP
    # Without filtering: FP, FP, TP, FP; 2 GT -> recall step 1/2 at precision 1/3 -> 1/6.
    assert evaluate(gt, dets).map[0] == pytest.approx(1 / 6)
    # With it: FP, TP, FP; GT [60,70] overlaps an Ambiguous span but stays (npos = 2)
    # -> recall step 1/2 at precision 1/2 -> 1/4 (1/2 if that GT had been removed).
    assert evaluate(gt, dets, ambiguous=amb).map[0] == pytest.approx(0.25)


# --------------------------------------------------------------------------- results, I/O


def test_detection_result_as_dict_is_percent():
    r = DetectionResult(np.array([0.5, 0.75]), ["A", "B"], np.array([[1.0, 0.5], [0.25, 0.0]]))
    d = r.as_dict()
    assert d["tiou"] == [0.5, 0.75]
    # mAP: (1 + 0.5)/2 = 75 %, (0.25 + 0)/2 = 12.5 %; average (75 + 12.5)/2 = 43.75 %.
    assert d["map"] == pytest.approx([75.0, 12.5])
    assert d["average"] == pytest.approx(43.75)
    assert d["per_class"] == {"A": pytest.approx([100.0, 25.0]), "B": pytest.approx([50.0, 0.0])}
    assert "43.75" in r.table() and "(2 classes)" in r.table()


def test_load_detections_round_trip_keeps_file_order():
    dets = [D("v2", "A", 0.3, 1.0, 2.0), D("v1", "B", 0.9, 3.0, 4.5), D("v2", "B", 0.1, 0, 1)]
    back = load_detections(detections_to_json(dets))
    # Grouped per video (JSON layout), file order kept within a video.
    assert back == [dets[0], dets[2], dets[1]]
    js = detections_to_json([], videos=["v7"])
    assert js["results"] == {"v7": []} and load_detections(js) == []


@pytest.mark.parametrize("item, what", [
    ({"label": "A", "segment": [0, 1]}, "score"),
    ({"score": 0.5, "segment": [0, 1]}, "label"),
    ({"label": "A", "score": 0.5}, "segment"),
    ({"label": "A", "score": 0.5, "segment": [0, 1, 2]}, "segment"),
    ({"label": "A", "score": "high", "segment": [0, 1]}, "score"),
    ({"label": "A", "score": float("nan"), "segment": [0, 1]}, "non-finite"),
    ({"label": "A", "score": 0.5, "segment": [0, float("inf")]}, "non-finite"),
])
def test_load_detections_errors_name_the_video(item, what):
    data = {"results": {"video_ok": [{"label": "A", "score": 1.0, "segment": [0, 1]}],
                        "video_bad_7": [item]}}
    with pytest.raises(DataError) as err:
        load_detections(data)
    assert err.value.video == "video_bad_7"
    assert str(err.value).startswith("video_bad_7: ") and what in str(err.value)


def test_load_detections_nan_from_json_file(tmp_path):
    p = tmp_path / "res.json"
    p.write_text('{"results": {"vid_x": [{"label": "A", "score": NaN, "segment": [0, 1]}]}}')
    with pytest.raises(DataError, match="^vid_x: "):
        load_detections(str(p))
    with pytest.raises(DataError, match="results"):
        load_detections({"database": {}})


def test_evaluate_needs_subset_for_raw_ground_truth():
    with pytest.raises(DataError, match="subset"):
        evaluate_detections(gt_json({"v1": [("A", 0, 1)]}), [])
    with pytest.raises(DataError, match="subsets present"):
        evaluate_detections(gt_json({"v1": [("A", 0, 1)]}), [], subset="training")


# --------------------------------------------------------------------------- parse_tiou


def test_parse_tiou_presets():
    assert np.array_equal(parse_tiou("thumos"), [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    assert np.array_equal(parse_tiou("anet"), np.linspace(0.5, 0.95, 10))
    assert np.array_equal(parse_tiou(" ActivityNet "), np.linspace(0.5, 0.95, 10))
    assert np.array_equal(parse_tiou(None), np.linspace(0.5, 0.95, 10))
    assert np.array_equal(THUMOS_TIOU, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])


@pytest.mark.parametrize("spec, expected", [
    ("0.1:0.5:0.1", [0.1, 0.2, 0.3, 0.4, 0.5]),   # exact decimals, endpoint included
    ("0.5:0.95:0.05", list(np.round(np.linspace(0.5, 0.95, 10), 10))),
    ("0.3:0.3:0.1", [0.3]),
    ("0.5", [0.5]),
    ("0.3,0.5,0.7", [0.3, 0.5, 0.7]),
    (" 0.3, 0.5 ,", [0.3, 0.5]),
    ("1", [1.0]),
])
def test_parse_tiou_lists_and_ranges(spec, expected):
    assert np.array_equal(parse_tiou(spec), expected)


@pytest.mark.parametrize("spec", ["", "  ", "foo", "0", "1.5", "-0.1", "0.3,x", "nan",
                                  "0.1:0.5", "0.1:0.5:0.1:0.2", "0.1:0.5:0", "0.1:0.5:-0.1",
                                  "0.5:0.1:0.1", "0:0.5:0.1", "0.5:1.2:0.1", "0.1:inf:0.1"])
def test_parse_tiou_bad_specs_raise(spec):
    with pytest.raises(DataError, match="bad --tiou"):
        parse_tiou(spec)


# --------------------------------------------------------------------------- THUMOS sets


def test_thumos_test_video_sets():
    t210, t212 = thumos_test_videos("210"), thumos_test_videos("212")
    assert len(t210) == 210 and len(t212) == 212
    assert t210 < t212
    assert t212 - t210 == {"video_test_0000270", "video_test_0001496"}
    assert "video_test_0001292" not in t212
    assert all(v.startswith("video_test_") for v in t212)
    with pytest.raises(DataError):
        thumos_test_videos("213")


def test_thumos_ambiguous_segments():
    raw = fsutil.read_text(_data_file("thumos14", "Ambiguous_test.txt"))
    assert "video_test_0000278  0.0 1.4" in raw  # the file separates with two spaces
    amb = thumos_ambiguous()
    assert len(amb) == 37
    assert sum(len(v) for v in amb.values()) == 99
    assert amb["video_test_0000278"][:2] == [(0.0, 1.4), (95.7, 97.2)]
    assert all(a < b for spans in amb.values() for a, b in spans)
    # All in the 212-video test set except video_test_0001292, which both THUMOS test-set
    # conventions leave out.
    assert set(amb) - thumos_test_videos("212") == {"video_test_0001292"}


# --------------------------------------------------------------------------- real THUMOS GT


@pytest.fixture(scope="module")
def thumos_gt():
    return fsutil.read_json(_data_file("thumos14", "gt_acmnet.json.gz"))


def _gt_detections(gt: dict, shift_fraction: float = 0.0) -> list[Detection]:
    out = []
    for vid, entry in gt["database"].items():
        if entry["subset"] != "test":
            continue
        for ann in entry["annotations"]:
            s, e = (float(x) for x in ann["segment"])
            d = shift_fraction * (e - s)
            out.append(Detection(vid, ann["label"], 1.0, s + d, e + d))
    return out


def test_real_thumos_gt_as_detections_scores_100(thumos_gt):
    dets = _gt_detections(thumos_gt)
    assert len(dets) > 3000
    r = evaluate_detections(thumos_gt, dets, subset="test", tiou_thresholds=THUMOS_TIOU)
    assert len(r.classes) == 20
    assert r.as_dict()["map"] == pytest.approx([100.0] * 7)
    # Dropping every other detection of each class loses recall -> below 100.
    half = evaluate_detections(thumos_gt, dets[::2], subset="test", tiou_thresholds=THUMOS_TIOU)
    assert np.all(half.map < 0.75)


@pytest.mark.parametrize("sign", [1, -1])
def test_real_thumos_gt_shifted_to_known_tiou(thumos_gt, sign):
    # Shift each segment by f*L: intersection (1-f)L, union (1+f)L -> tIoU = (1-f)/(1+f).
    # f = 0.45/1.55 gives tIoU 0.55 (clear of the thresholds 0.5 and 0.6); f = 1/3 would
    # give exactly 0.5, a float-equality edge, hence not used.
    f = 0.45 / 1.55
    assert (1 - f) / (1 + f) == pytest.approx(0.55)
    dets = _gt_detections(thumos_gt, sign * f)
    orig = _gt_detections(thumos_gt)
    ious = [segment_iou(np.array([a.start, a.end]), np.array([[b.start, b.end]]))[0]
            for a, b in zip(orig, dets)]
    assert np.allclose(ious, 0.55, atol=1e-9)
    r = evaluate_detections(thumos_gt, dets, subset="test", tiou_thresholds=THUMOS_TIOU)
    # Thresholds 0.1 .. 0.5: every detection matches its own GT -> 100; 0.6, 0.7: none -> 0.
    assert r.as_dict()["map"] == pytest.approx([100.0] * 5 + [0.0] * 2)


def test_real_thumos_210_restriction(thumos_gt):
    dets = _gt_detections(thumos_gt)
    t210 = thumos_test_videos("210")
    r = evaluate_detections(thumos_gt, dets, subset="test", tiou_thresholds=THUMOS_TIOU,
                            videos=t210)
    assert r.map == pytest.approx(np.ones(7))
    # Only detections of the 210 videos, but GT of all 212: the GT of videos 270 and 1496
    # are misses -> below 100.
    dets210 = [d for d in dets if d.video in t210]
    assert len(dets210) < len(dets)
    r212 = evaluate_detections(thumos_gt, dets210, subset="test", tiou_thresholds=THUMOS_TIOU)
    assert np.all(r212.map < 1.0)


# --------------------------------------------------------------------------- property test


def _iou(a: tuple[float, float], b: tuple[float, float]) -> float:
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def brute_force_map(gt_segments: dict[str, dict[str, list[tuple[float, float]]]],
                    dets: list[Detection], thresholds) -> dict[str, list[float]]:
    """Independent formulation: per class and threshold, predictions in
    ``argsort()[::-1]`` score order each take the unlocked same-video GT of maximum tIoU
    among those with tIoU >= thr; AP = sum over TP ranks of (1/npos) * (max precision at this
    or any later rank)."""
    out = {}
    for label, by_video in gt_segments.items():
        npos = sum(len(s) for s in by_video.values())
        preds = [d for d in dets if d.label == label]
        order = np.asarray([d.score for d in preds], float).argsort()[::-1]
        aps = []
        for thr in thresholds:
            locked: set[tuple[str, int]] = set()
            hits = []
            for p in order:
                d = preds[p]
                best = None
                for j, g in enumerate(by_video.get(d.video, [])):
                    iou = _iou((d.start, d.end), g)
                    if (d.video, j) in locked or iou < thr:
                        continue
                    if best is None or iou > best[0]:
                        best = (iou, j)
                if best is not None:
                    locked.add((d.video, best[1]))
                hits.append(best is not None)
            precision = [sum(hits[:i + 1]) / (i + 1) for i in range(len(hits))]
            ap = sum(max(precision[i:]) / npos for i, hit in enumerate(hits) if hit)
            aps.append(ap)
        out[label] = aps
    return out


@st.composite
def detection_problems(draw):
    """Random GT (several videos / classes; some videos without GT, one video in another
    subset) and predictions, with continuous endpoints from a drawn seed so that tIoU ties
    between distinct GT have probability ~0. Scores come from a small set (ties happen)
    or are continuous."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n_classes = draw(st.integers(1, 4))
    n_videos = draw(st.integers(1, 5))
    classes = [f"c{i}" for i in range(n_classes)]
    videos = [f"v{i}" for i in range(n_videos)]
    annotations: dict[str, list[tuple[str, float, float]]] = {v: [] for v in videos}
    for v in videos:
        for _ in range(draw(st.integers(0, 4))):
            s = float(rng.uniform(0, 60))
            annotations[v].append((draw(st.sampled_from(classes)), s, s + float(rng.uniform(0.5, 20))))
    # Every class gets at least one GT segment (classes come from the GT).
    for c in classes:
        if not any(lab == c for anns in annotations.values() for lab, _, _ in anns):
            s = float(rng.uniform(0, 60))
            annotations[draw(st.sampled_from(videos))].append((c, s, s + float(rng.uniform(0.5, 20))))
    annotations["other"] = [(classes[0], 0.0, 10.0)]  # validation video: not evaluated
    flat = [(v, lab, s, e) for v, anns in annotations.items() if v != "other"
            for lab, s, e in anns]
    tie_scores = draw(st.booleans())
    dets = []
    for _ in range(draw(st.integers(0, 25))):
        score = (float(draw(st.sampled_from([0.2, 0.5, 0.9]))) if tie_scores
                 else float(rng.uniform(0, 1)))
        kind = draw(st.sampled_from(["near", "near", "random", "foreign"]))
        if kind == "near":  # a jittered GT segment: label usually right, sometimes not
            v, lab, s, e = flat[draw(st.integers(0, len(flat) - 1))]
            if draw(st.integers(0, 4)) == 0:
                lab = draw(st.sampled_from(classes))
            length = e - s
            s2 = s + float(rng.normal(0, 0.3)) * length
            e2 = max(s2 + 0.1, e + float(rng.normal(0, 0.3)) * length)
            dets.append(Detection(v, lab, score, s2, e2))
        else:
            v = draw(st.sampled_from(videos + ["other", "nowhere"])) if kind == "foreign" \
                else draw(st.sampled_from(videos))
            s = float(rng.uniform(0, 70))
            dets.append(Detection(v, draw(st.sampled_from(classes)), score, s,
                                  s + float(rng.uniform(0.1, 20))))
    return annotations, dets


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(detection_problems(), st.sampled_from(["thumos", "anet", "0.05:0.95:0.15"]))
def test_map_matches_brute_force(problem, tiou_spec):
    annotations, dets = problem
    thresholds = parse_tiou(tiou_spec)
    gt = gt_json(annotations, subsets={"other": "validation"})
    result = evaluate_detections(gt, dets, subset="test", tiou_thresholds=thresholds)

    gt_segments: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for v, anns in annotations.items():
        if v == "other":
            continue
        for lab, s, e in anns:
            gt_segments.setdefault(lab, {}).setdefault(v, []).append((s, e))
    expected = brute_force_map(gt_segments, dets, thresholds)

    assert sorted(result.classes) == sorted(expected)
    for i, label in enumerate(result.classes):
        assert np.allclose(result.ap[:, i], expected[label], rtol=0, atol=1e-9), label
    expected_map = np.mean([expected[c] for c in result.classes], axis=0)
    assert np.allclose(result.map, expected_map, rtol=0, atol=1e-9)
    assert math.isclose(result.average, float(np.mean(expected_map)), abs_tol=1e-9)


def test_malformed_published_segments_are_misses_without_warnings(recwarn):
    """The store keeps published segments as they are (reversed, zero-length, past the
    video): each stays in the ground truth and, matching nothing, counts as a miss."""
    gt = {"database": {"v": {"subset": "test", "annotations": [
        {"label": "a", "segment": [5, 3]}, {"label": "a", "segment": [4, 4]},
        {"label": "a", "segment": [0, 2]}]}}}
    r = evaluate_detections(gt, [Detection("v", "a", 0.9, 0, 2), Detection("v", "a", 0.8, 3, 5)],
                            subset="test", tiou_thresholds=[0.5])
    assert r.average == pytest.approx(1 / 3)          # one of three found, at precision 1
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
