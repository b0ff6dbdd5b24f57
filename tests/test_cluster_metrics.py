"""Clustering metrics and cluster -> class mappings of ``acl_dist.evaluate``."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from store_helpers import relabelled

from acl_dist.errors import DataError
from acl_dist.evaluate import (
    Detection,
    cluster_class_mapping,
    cluster_name,
    clustering_scores,
    contingency,
    evaluate_detections,
    map_detections,
)


def expand(table: dict[int, dict[str, int]]) -> tuple[list[int], list[str]]:
    """Per-video (cluster, label) lists from a hand-written contingency table, interleaved
    so that the table's layout is not the file order."""
    pairs = [(k, c) for k, row in table.items() for c, n in row.items() for _ in range(n)]
    pairs = pairs[1::2] + pairs[::2]
    return [k for k, _ in pairs], [c for _, c in pairs]


# --------------------------------------------------------------------------- contingency


def test_contingency_and_purity_hand_example():
    clusters = [2, 0, 2, 5, 0, 2]
    labels = ["b", "a", "b", "a", "a", "c"]
    m, rows, cols = contingency(clusters, labels)
    # Rows: sorted cluster ids; columns: sorted class names.
    assert rows == [0, 2, 5] and cols == ["a", "b", "c"]
    assert m.tolist() == [[2, 0, 0],
                          [0, 2, 1],
                          [1, 0, 0]]
    s = clustering_scores(clusters, labels)
    # Purity: each cluster's largest class, summed: (2 + 2 + 1) / 6.
    assert s["purity"] == pytest.approx(5 / 6)
    assert (s["clusters"], s["classes"], s["videos"]) == (3, 3, 6)


def test_contingency_accepts_numpy_ids():
    m, rows, _ = contingency(np.array([3, 3, 1], dtype=np.int64), ["x", "y", "x"])
    assert rows == [1, 3] and all(type(r) is int for r in rows)
    assert m.tolist() == [[1, 0], [1, 1]]


def _nmi_ari_by_formula(clusters, labels) -> tuple[float, float]:
    """NMI (arithmetic normalisation) and ARI from the contingency table, by definition."""
    m, _, _ = contingency(clusters, labels)
    n = m.sum()
    p = m / n
    pk, pc = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float(np.sum(p[nz] * np.log(p[nz] / np.outer(pk, pc)[nz])))
    hk = -float(np.sum(pk * np.log(pk)))
    hc = -float(np.sum(pc * np.log(pc)))
    nmi = mi / ((hk + hc) / 2) if hk + hc > 0 else 1.0

    def pairs(x):
        return float(np.sum(x * (x - 1) / 2))

    index, a, b, total = pairs(m), pairs(m.sum(1)), pairs(m.sum(0)), n * (n - 1) / 2
    expected = a * b / total
    ari = (index - expected) / ((a + b) / 2 - expected)
    return nmi, ari


def test_nmi_ari_equal_scikit_learn_and_definition():
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(5, 60))
        clusters = rng.integers(0, 6, n).tolist()
        labels = [f"class{c}" for c in rng.integers(0, 4, n)]
        if len(set(clusters)) < 2 or len(set(labels)) < 2:
            continue
        s = clustering_scores(clusters, labels)
        assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, clusters), abs=1e-12)
        assert s["ari"] == pytest.approx(adjusted_rand_score(labels, clusters), abs=1e-12)
        nmi, ari = _nmi_ari_by_formula(clusters, labels)
        assert s["nmi"] == pytest.approx(nmi, abs=1e-9)
        assert s["ari"] == pytest.approx(ari, abs=1e-9)
        m, _, _ = contingency(clusters, labels)
        assert s["purity"] == pytest.approx(m.max(1).sum() / n)


def test_relabelled_perfect_clustering_scores_one():
    labels = ["x", "x", "y", "y", "y", "z"]
    clusters = [7, 7, 3, 3, 3, 11]
    s = clustering_scores(clusters, labels)
    assert s["nmi"] == pytest.approx(1.0)
    assert s["ari"] == pytest.approx(1.0)
    assert s["purity"] == pytest.approx(1.0)
    # A clustering independent of the classes (each cluster holds one a, one b, one c):
    # NMI 0, ARI below 0, purity (1 + 1) / 6 = 1/3.
    bad = clustering_scores([0, 1, 0, 1, 0, 1], ["a", "a", "b", "b", "c", "c"])
    assert bad["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert bad["ari"] < 0 and bad["purity"] == pytest.approx(1 / 3)


def test_clustering_scores_input_errors():
    with pytest.raises(DataError):
        clustering_scores([0, 1], ["a"])
    with pytest.raises(DataError):
        clustering_scores([], [])


# --------------------------------------------------------------------------- mappings


# Hungarian: 3 clusters, 2 classes.
#            a  b
# cluster 0  5  4
# cluster 1  4  0
# cluster 2  1  1
# Assignments of 2 clusters to {a, b}: 0->b + 1->a = 8 (best); 0->a + 2->b = 6;
# 0->a + 1->b = 5; 1->a + 2->b = 5; 0->b + 2->a = 5. The greedy choice 0->a (the largest
# cell) would reach only 6. Cluster 2 is left unmapped.
HUNGARIAN_TABLE = {0: {"a": 5, "b": 4}, 1: {"a": 4}, 2: {"a": 1, "b": 1}}


def test_hungarian_is_one_to_one_and_optimal():
    clusters, labels = expand(HUNGARIAN_TABLE)
    mapping = cluster_class_mapping(clusters, labels, "hungarian")
    assert mapping == {0: [("b", 1.0)], 1: [("a", 1.0)], 2: []}
    assigned = [c for v in mapping.values() for c, _ in v]
    assert len(assigned) == len(set(assigned)) == 2


def test_hungarian_with_fewer_clusters_than_classes_maps_every_cluster():
    # cluster 0: a 3, b 2; cluster 1: a 1, c 2 -> 0->a + 1->c = 5 (best); 0->b + 1->c = 4;
    # 0->b + 1->a = 3. Class b is left without a cluster.
    clusters, labels = expand({0: {"a": 3, "b": 2}, 1: {"a": 1, "c": 2}})
    assert cluster_class_mapping(clusters, labels) == {0: [("a", 1.0)], 1: [("c", 1.0)]}


# Majority / soft: rows are clusters, majority count in the first column listed.
#            a  b  c  d
# cluster 0  4  2  1  3    majority a; soft adds b (2 >= 4/2) and d (3 >= 2), not c (1 < 2)
# cluster 1  3  3  1  0    tie: a and b both 1.0; c (1 < 1.5) gets nothing
# cluster 2  3  2  1  0    majority a; soft adds b (2 >= 1.5), not c (1 < 1.5)
MAJORITY_TABLE = {0: {"a": 4, "b": 2, "c": 1, "d": 3},
                  1: {"a": 3, "b": 3, "c": 1},
                  2: {"a": 3, "b": 2, "c": 1}}


def test_majority_mapping_ties_get_weight_one():
    clusters, labels = expand(MAJORITY_TABLE)
    assert cluster_class_mapping(clusters, labels, "majority") == {
        0: [("a", 1.0)],
        1: [("a", 1.0), ("b", 1.0)],
        2: [("a", 1.0)],
    }


def test_soft_mapping_half_of_majority_gets_half_weight():
    clusters, labels = expand(MAJORITY_TABLE)
    assert cluster_class_mapping(clusters, labels, "soft") == {
        0: [("a", 1.0), ("b", 0.5), ("d", 0.5)],
        1: [("a", 1.0), ("b", 1.0)],
        2: [("a", 1.0), ("b", 0.5)],
    }


def test_unknown_mapping_mode_raises():
    with pytest.raises(DataError, match="label map"):
        cluster_class_mapping([0], ["a"], "greedy")


# --------------------------------------------------------------------------- map_detections


def test_map_detections_duplicates_per_class_and_drops_unmapped():
    assert cluster_name(7) == "cluster_07" and cluster_name(123) == "cluster_123"
    mapping = {0: [("a", 1.0), ("b", 0.5)], 1: [], 3: [("c", 1.0)]}
    dets = [Detection("v1", "cluster_00", 0.8, 1.0, 2.0),
            Detection("v1", "cluster_01", 0.9, 3.0, 4.0),   # mapped to nothing: dropped
            Detection("v2", "cluster_02", 0.7, 0.0, 1.0),   # not in the mapping: dropped
            Detection("v2", "cluster_03", 0.6, 5.0, 6.0)]
    out = map_detections(dets, mapping)
    assert out == [Detection("v1", "a", 0.8, 1.0, 2.0),
                   Detection("v1", "b", pytest.approx(0.4), 1.0, 2.0),
                   Detection("v2", "c", 0.6, 5.0, 6.0)]


def test_mapping_uses_only_the_labels_passed():
    # Training videos: cluster 0 is mostly class a, cluster 1 mostly b.
    train_clusters, train_labels = expand({0: {"a": 3, "b": 1}, 1: {"b": 2}})
    # Test videos disagree (cluster 0 is all b there) and use a cluster 2 unseen in training.
    test_clusters, test_labels = expand({0: {"b": 5}, 1: {"a": 1}, 2: {"a": 4}})
    for mode in ("hungarian", "majority", "soft"):
        mapping = cluster_class_mapping(train_clusters, train_labels, mode)
        assert set(mapping) == {0, 1}, mode
        assert mapping[0][0] == ("a", 1.0) and mapping[1][0] == ("b", 1.0), mode
        # what the test videos would say differs: adding them changes the mapping (the
        # pipeline never does: test_the_runs_mapping_reads_only_training_labels)
        assert mapping != cluster_class_mapping(train_clusters + test_clusters,
                                                train_labels + test_labels, mode)

    # End to end: test detections of cluster 0 become class a (the training mapping) even
    # though the test videos are class b; cluster 2 (no training video) is dropped.
    mapping = cluster_class_mapping(train_clusters, train_labels, "majority")
    dets = [Detection("t1", "cluster_00", 0.9, 0.0, 10.0),
            Detection("t2", "cluster_02", 0.8, 0.0, 10.0)]
    mapped = map_detections(dets, mapping)
    assert [(d.video, d.label) for d in mapped] == [("t1", "a")]
    gt = {"database": {"t1": {"subset": "test",
                              "annotations": [{"label": "b", "segment": [0, 10]}]}}}
    r = evaluate_detections(gt, mapped, subset="test", tiou_thresholds=[0.5],
                            unknown_labels="ignore")
    assert r.classes == ["b"] and r.map[0] == 0.0


def test_the_runs_mapping_reads_only_training_labels(tiny_store, tmp_path):
    """Through the pipeline's own path (the videos' roles from ``split_videos``, the
    mapping from ``RunResults``): relabelling every test video and every held-out
    validation video leaves the cluster -> class mapping unchanged; relabelling training
    videos changes it (so the check can fail)."""
    from acl_dist.artifacts import RunDir
    from acl_dist.config import load_config
    from acl_dist.plan import resolve_config, split_videos
    from acl_dist.results import RunResults
    from acl_dist.store import FeatureStore

    store = tiny_store[0]
    base = load_config("tiny", ["val_fraction=0.25"], mode="unsupervised", num_classes=4)

    def mappings(path: str) -> tuple[dict, set]:
        fs = FeatureStore.open(path)
        cfg = resolve_config(base, fs, cpus=2)
        split = split_videos(cfg, fs)
        run = RunDir(str(tmp_path / f"run-{len(list(tmp_path.iterdir()))}"))
        ids = [m.video_id for m in split.train]
        run.write_clusters(0, {"labels": {v: i % 4 for i, v in enumerate(sorted(ids))}})
        results = RunResults(run, cfg, path, split, [cluster_name(k) for k in range(4)])
        return {m: results.mapping(0, m) for m in ("hungarian", "majority", "soft")}, \
            split.val_ids

    want, held_out = mappings(store)
    assert held_out          # the validation split exists and is relabelled below
    other = relabelled(store, str(tmp_path / "other-test-labels"),
                        lambda rec: rec.subset == "test" or rec.video_id in held_out)
    got, held_again = mappings(other)
    assert held_again == held_out and got == want
    train_changed = relabelled(store, str(tmp_path / "other-train-labels"),
                                lambda rec: rec.subset != "test" and
                                rec.video_id not in held_out)
    assert mappings(train_changed)[0] != want


def test_soft_mapping_can_lower_map_relative_to_majority():
    """docs/method.md's example: soft copies a cluster's detections to a second class at
    half the score; where that class is absent the copy is a false positive that can rank
    above a true one (100.0 with majority, 75.0 with soft)."""
    train_clusters, train_labels = expand({0: {"a": 2, "b": 1}, 1: {"b": 2}})
    dets = [Detection("t1", "cluster_00", 0.9, 0.0, 10.0),
            Detection("t2", "cluster_01", 0.4, 0.0, 10.0)]
    gt = {"database": {"t1": {"subset": "test", "annotations": [{"label": "a",
                                                                 "segment": [0, 10]}]},
                       "t2": {"subset": "test", "annotations": [{"label": "b",
                                                                 "segment": [0, 10]}]}}}
    scores = {}
    for mode in ("majority", "soft"):
        mapped = map_detections(dets, cluster_class_mapping(train_clusters, train_labels,
                                                            mode))
        scores[mode] = evaluate_detections(gt, mapped, subset="test",
                                           tiou_thresholds=[0.5]).average
    assert scores == {"majority": pytest.approx(1.0), "soft": pytest.approx(0.75)}   # 100 %, 75 %
