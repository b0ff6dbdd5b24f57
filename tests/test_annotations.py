"""Annotation parsers on the real packaged files and on small hand-made ones."""

from importlib import resources

import pytest

from acl_dist.annotations import (Segment, VideoAnnotation, load_ambiguous, load_annotations,
                                  load_class_list, parse_activitynet, primary_label)
from acl_dist.errors import DataError, StoreError


def data(*parts):
    return str(resources.files("acl_dist").joinpath("data", *parts))


def test_real_activitynet12_json():
    a = load_annotations(data("activitynet12", "activity_net.v1-2.min-missing-removed.json.gz"))
    assert len(a.classes) == 100
    counts = {s: len(a.subset_ids(s)) for s in a.subsets()}
    assert counts == {"training": 4441, "validation": 2198, "testing": 2268}  # FORMATS.md §2.1
    assert a.lookup("v_5wOmHw6Boj8") is a.videos["5wOmHw6Boj8"]


def test_real_bsn_v13_with_csv():
    a = load_annotations(data("activitynet13", "anet_anno_action.json.gz"),
                         info_csv=data("activitynet13", "video_info_new.csv.gz"),
                         classes_file=data("activitynet13", "action_name.csv"))
    counts = {s: len(a.subset_ids(s)) for s in a.subsets()}
    assert counts == {"training": 9649, "validation": 4728, "testing": 4851}
    assert len(a.classes) == 200 and a.classes[0] == "Applying sunscreen"
    v = a.videos["v_QOlSCBRmfWY"]
    assert v.duration == pytest.approx(82.73) and v.segments[0].label == "Ballet"
    with pytest.raises(DataError, match="no subset: the BSN form needs"):
        load_annotations(data("activitynet13", "anet_anno_action.json.gz"))


def test_thumos_string_segments_and_ambiguous():
    a = load_annotations(data("thumos14", "gt_basnet_um_cola.json.gz"))
    assert {s: len(a.subset_ids(s)) for s in a.subsets()} == {"test": 210, "train": 200}
    first = a.videos["video_test_0000896"].segments[0]
    assert first == Segment("HighJump", 18.6, 24.8) and isinstance(first.start, float)
    amb = load_ambiguous(data("thumos14", "Ambiguous_test.txt"))
    assert len(amb) == 37 and sum(map(len, amb.values())) == 99
    assert amb["video_test_0000278"][0] == (0.0, 1.4)


def test_small_forms_and_errors(tmp_path):
    a = parse_activitynet({"database": {"v1": {"subset": "train", "annotations": [
        {"label": "b", "segment": [0, 1]}, {"label": "a", "segment": ["2", "5"]}]}}})
    assert a.classes == ["a", "b"] and a.videos["v1"].labels == ["b", "a"]
    assert a.videos["v1"].duration is None
    with pytest.raises(DataError, match="v1: segment start is not a number"):
        parse_activitynet({"database": {"v1": {"subset": "t", "annotations": [
            {"label": "a", "segment": ["x", 1]}]}}})
    with pytest.raises(StoreError, match="no 'database' key"):
        parse_activitynet({"foo": 1})
    p = tmp_path / "classes.txt"
    p.write_text("a\n\nb\n")
    assert load_class_list(str(p)) == ["a", "b"]
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StoreError, match="not valid JSON"):
        load_annotations(str(tmp_path / "bad.json"))


def test_primary_label_is_longest_total():
    segs = [Segment("a", 0, 1), Segment("b", 1, 3), Segment("a", 5, 5.5)]
    assert primary_label(segs, []) == "b"
    assert primary_label([Segment("a", 0, 1), Segment("b", 2, 3)], []) == "a"  # tie: first
    assert primary_label([], ["x"]) == "x"
    assert VideoAnnotation("v", "s", None, segs).labels == ["a", "b"]
