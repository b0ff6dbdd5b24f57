"""The synthetic benchmark: real timelines, determinism, honest difficulty, npy export."""

from __future__ import annotations

import numpy as np
import pytest

from acl_dist import fsutil
from acl_dist.errors import ConfigError
from acl_dist.evaluate import thumos_test_videos
from acl_dist.ingest import ingest
from acl_dist.store import FeatureStore
from acl_dist.synth import SynthConfig, iter_benchmark, load_timeline, synthesize
from acl_dist.timegrid import STANDARD_GRID


def test_thumos_timeline_is_the_real_one():
    tl = load_timeline(SynthConfig())
    assert (tl.train_subset, tl.test_subset) == ("validation", "test")
    assert len(tl.classes) == 20 and tl.classes[0] == "BaseballPitch"
    by_subset = {s: [v for v in tl.videos if v.subset == s] for s in ("validation", "test")}
    assert len(by_subset["validation"]) == 200
    assert {v.video_id for v in by_subset["test"]} == thumos_test_videos("210")
    source = fsutil.read_json(tl.source)["database"]
    for v in tl.videos:
        src = source[v.video_id]
        assert [(s.label, s.start, s.end) for s in v.segments] == \
            [(a["label"], a["segment"][0], a["segment"][1]) for a in src["annotations"]]
        assert v.duration >= src["duration"] - 1e-9
        assert v.duration >= max(s.end for s in v.segments)
    assert sum(len(v.segments) for v in by_subset["test"]) == 3311  # FORMATS.md §2.5


def test_anet12_timeline_and_class_selection():
    tl = load_timeline(SynthConfig(preset="anet12"))
    assert len(tl.classes) == 100
    assert {v.subset for v in tl.videos} == {"training", "validation"}
    assert all(s.end > s.start for v in tl.videos for s in v.segments)
    small = load_timeline(SynthConfig(preset="anet12", classes=5, videos=30, seed=1))
    assert len(small.classes) == 5
    assert sum(v.subset == "training" for v in small.videos) == 30
    assert all(s.label in small.classes for v in small.videos for s in v.segments)


def test_anet13_timeline_is_activitynet_13_sized():
    tl = load_timeline(SynthConfig(preset="anet13"))
    subsets = [v.subset for v in tl.videos]
    # BSN's v1.3 annotations: videos with at least one non-empty segment and a duration
    assert subsets.count("training") == 9641 and subsets.count("validation") == 4726
    assert len(tl.classes) == 200 and (tl.train_subset, tl.test_subset) == ("training",
                                                                            "validation")
    small = load_timeline(SynthConfig(preset="anet13", classes=5, videos=30, seed=1))
    assert len(small.classes) == 5
    assert sum(v.subset == "training" for v in small.videos) == 30


def test_features_are_deterministic_and_shaped():
    cfg = SynthConfig(classes=3, videos=6, dim=12, seed=11)
    a, b = list(iter_benchmark(cfg)), list(iter_benchmark(cfg))
    c = list(iter_benchmark(SynthConfig(classes=3, videos=6, dim=12, seed=12)))
    for ra, rb in zip(a, b):
        np.testing.assert_array_equal(ra.features["rgb"], rb.features["rgb"])
        assert ra.num_snippets == STANDARD_GRID.num_snippets(ra.duration)
        assert ra.features["rgb"].shape == ra.features["flow"].shape == (ra.num_snippets, 12)
    assert not np.array_equal(a[0].features["rgb"], c[0].features["rgb"])


def test_actions_differ_per_class_and_background_dominates():
    cfg = SynthConfig(classes=4, videos=24, dim=32, seed=2)
    act = {}
    bg_frac = []
    for rec in iter_benchmark(cfg):
        mask = STANDARD_GRID.segment_mask(
            np.array([[s.start, s.end] for s in rec.segments]), rec.num_snippets)
        bg_frac.append(1 - mask.mean())
        if mask.any() and rec.subset == "validation":
            act.setdefault(rec.primary_label, []).append(rec.features["flow"][mask].mean(0))
    assert np.mean(bg_frac) > 0.55  # background dominates the real timelines
    centroids = {c: np.mean(v, axis=0) for c, v in act.items()}
    # Nearest-centroid on action-pooled flow recovers the class for most videos.
    correct = total = 0
    for c, vecs in act.items():
        for v in vecs:
            pred = min(centroids, key=lambda k: np.linalg.norm(centroids[k] - v))
            correct += pred == c
            total += 1
    assert correct / total > 0.8


def test_round0_gap_is_large_on_the_default_benchmark(tmp_path):
    """The default benchmark has headroom. Its round-0 clustering (uniform
    pooling of the 200 training videos) is far below clustering the same features pooled
    over the ground-truth action snippets; the v1 generator (one prototype per action,
    each snippet seeing only itself) starts higher at round 0 (0.505 against 0.443). The
    benchmark as the demo makes it, ~6 s each."""
    summary = synthesize(SynthConfig(), str(tmp_path / "v2"), quiet=True)
    r0 = summary["round0"]
    assert r0["clusters"] == 20 and r0["videos"] == 200
    assert r0["mean_pool"]["nmi"] < 0.5 and r0["action_pool"]["nmi"] > 0.9
    assert r0["nmi_gap"] > 0.45
    v1 = synthesize(SynthConfig(phases=1, receptive_field=1), str(tmp_path / "v1"),
                    quiet=True)["round0"]
    assert v1["mean_pool"]["nmi"] > r0["mean_pool"]["nmi"] + 0.04


def test_v1_benchmark_is_reproduced_bit_for_bit():
    """docs/method.md keeps v1's figures as the record of how the defaults were chosen:
    ``phases=1, receptive_field=1`` must keep making v1's features. The hash was computed
    with the code before v2 became the default (commit 4f7868a, its defaults)."""
    import hashlib

    def digest(cfg: SynthConfig) -> str:
        h = hashlib.sha256()
        for r in iter_benchmark(cfg):
            h.update(r.video_id.encode())
            for s in ("rgb", "flow"):
                h.update(np.ascontiguousarray(r.features[s]).tobytes())
        return h.hexdigest()[:16]

    small = dict(classes=4, videos=12, dim=8, seed=1)
    assert digest(SynthConfig(**small, phases=1, receptive_field=1)) == "faa51e64b6af7c44"
    assert digest(SynthConfig(**small)) != "faa51e64b6af7c44"      # v2 is another benchmark


def test_npy_layout_round_trips_through_ingest(tmp_path):
    cfg = SynthConfig(classes=3, videos=8, dim=8, seed=4, dtype="float32")
    synthesize(cfg, str(tmp_path / "a"), npy_layout=str(tmp_path / "npy"), quiet=True,
               report=False)
    assert (tmp_path / "npy" / "split_validation.txt").read_text().count("\n") == 8
    ingest("npy-split", str(tmp_path / "npy"), str(tmp_path / "b"), dtype="float32", quiet=True)
    a = {r.video_id: r for r in FeatureStore.open(str(tmp_path / "a")).iter_videos()}
    b = {r.video_id: r for r in FeatureStore.open(str(tmp_path / "b")).iter_videos()}
    assert a.keys() == b.keys()
    for vid, ra in a.items():
        np.testing.assert_array_equal(ra.features["rgb"], b[vid].features["rgb"])
        assert (ra.segments, ra.duration, ra.subset) == (b[vid].segments, b[vid].duration,
                                                          b[vid].subset)


def test_bad_options():
    from acl_dist.errors import ConfigError

    with pytest.raises(ConfigError, match="unknown preset"):
        load_timeline(SynthConfig(preset="kinetics"))
    with pytest.raises(ConfigError, match="--classes must be in"):
        load_timeline(SynthConfig(classes=50))


def test_scene_scale_strengthens_the_shared_scene_alone():
    """scene_scale changes nothing but the scene term: the same random draws, so the
    features of a video under scale 2 minus those under scale 1 are one vector (its scene
    prototype, times each snippet's background share) on every snippet: rank 1, and
    zero change at scale 1."""
    base = SynthConfig(classes=3, videos=6, dim=12, seed=5, dtype="float32")
    one = list(iter_benchmark(base))
    same = list(iter_benchmark(SynthConfig(**{**base.__dict__, "scene_scale": 1.0})))
    two = list(iter_benchmark(SynthConfig(**{**base.__dict__, "scene_scale": 2.0})))
    for a, b, c in zip(one, same, two):
        np.testing.assert_array_equal(a.features["rgb"], b.features["rgb"])
        for s in ("rgb", "flow"):
            diff = c.features[s].astype(np.float64) - a.features[s]
            sv = np.linalg.svd(diff, compute_uv=False)
            assert sv[0] > 1.0 and sv[1] < 1e-4 * sv[0], (a.video_id, s, sv[:2])
    with pytest.raises(ConfigError, match="scene_scale: must be >= 0"):
        SynthConfig(scene_scale=-1.0)


def test_receptive_field_mixes_neighbours_by_a_triangle():
    """Hand-worked: width 3 is the kernel [1, 2, 1] / 4, the ends repeat the edge snippet;
    width 1 leaves the features as they are."""
    from acl_dist.synth import receptive_field

    x = np.array([[0.0], [0.0], [4.0], [0.0], [0.0]])
    np.testing.assert_allclose(receptive_field(x, 3)[:, 0], [0, 1, 2, 1, 0])
    np.testing.assert_allclose(receptive_field(np.array([[4.0], [0.0], [0.0]]), 3)[:, 0],
                               [3, 1, 0])                    # (4 + 2 x 4 + 0) / 4 at the edge
    # width 5: [1, 2, 3, 2, 1] / 9
    np.testing.assert_allclose(receptive_field(x, 5)[:, 0], np.array([4, 8, 12, 8, 4]) / 9)
    np.testing.assert_array_equal(receptive_field(x, 1), x)
    # in the benchmark it is the last thing done: the same draws, each video smoothed
    base = SynthConfig(classes=3, videos=4, dim=8, seed=2, dtype="float32", receptive_field=1)
    plain = list(iter_benchmark(base))
    wide = list(iter_benchmark(SynthConfig(**{**base.__dict__, "receptive_field": 5})))
    for a, b in zip(plain, wide):
        np.testing.assert_allclose(b.features["flow"], receptive_field(a.features["flow"], 5),
                                   rtol=1e-5, atol=1e-5)


def test_phases_share_their_edges_between_classes_and_keep_the_middle_own():
    """With 3 phases a class's action is (edge, its own prototype, edge) along the
    segment's thirds, each edge sqrt(1 - share) x its prototype + sqrt(share) x one of
    max(2, classes // 5) shared prototypes (share 1: the edge is the shared one exactly,
    so with 10 classes several classes have the same edge). Phases draw from their own
    generator: the class prototypes and the default features are those of 1 phase."""
    from acl_dist.synth import FeatureModel
    from acl_dist.annotations import Segment

    classes = [f"c{i}" for i in range(10)]
    one = FeatureModel(classes, SynthConfig(dim=16, seed=4, phases=1))
    three = FeatureModel(classes, SynthConfig(dim=16, seed=4, phases=3))
    shared = FeatureModel(classes, SynthConfig(dim=16, seed=4, phases=3, phase_share=1.0))
    assert one.phase_proto == {}
    for s in ("rgb", "flow"):
        assert all(np.array_equal(one.proto[s][c], three.proto[s][c]) for c in classes)
        protos = three.phase_proto[s]
        assert all(p.shape == (3, 16) for p in protos.values())
        assert all(np.array_equal(protos[c][1], three.proto[s][c]) for c in classes)
        for edge in (0, 2):
            mixed_in = {tuple(np.round((protos[c][edge] - np.sqrt(0.5) * one.proto[s][c])
                                       / np.sqrt(0.5), 12)) for c in classes}
            exact = {tuple(shared.phase_proto[s][c][edge]) for c in classes}
            assert len(mixed_in) <= 2 and mixed_in == {tuple(np.round(e, 12)) for e in exact}
    # a 3-second segment on 1-second snippets: thirds are one snippet each; the snippets
    # before and after it take the nearest phase (they are not covered)
    seg = Segment("c0", 1.0, 4.0)
    starts = np.arange(6, dtype=float)
    assert three._phase_of_snippets(seg, starts, starts + 1).tolist() == [0, 0, 1, 2, 2, 2]
    two = FeatureModel(classes, SynthConfig(dim=16, seed=4, phases=2))
    assert all(np.array_equal(two.phase_proto[s][c], protos[[0, 2]])
               for c, protos in three.phase_proto[s].items())   # both halves are edges
    with pytest.raises(ConfigError, match="phases: must be >= 1"):
        SynthConfig(phases=0)
    with pytest.raises(ConfigError, match="receptive_field: must be odd"):
        SynthConfig(receptive_field=4)
