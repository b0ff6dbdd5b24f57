"""The Z x K cluster batcher: every video once per epoch, groups, determinism, shards."""

from __future__ import annotations

from collections import Counter

import pytest

from acl_dist.sampling import ClusterBatcher, shard_indices, shuffled

LABELS = {i: [i % 5] for i in range(53)}  # 5 clusters of 10-11 videos
LABELS.update({53: [7], 54: [8], 55: [8]})  # a singleton cluster and a cluster of 2


def epoch(batcher, items, epoch_index=0):
    return list(batcher.batches(items, lambda v: LABELS[v], epoch_index))


@pytest.mark.parametrize("buffer_size", [None, 12, 30])
def test_every_video_exactly_once(buffer_size):
    items = shuffled(list(LABELS), seed=1, epoch=0)
    batches = epoch(ClusterBatcher(3, 2, 8, buffer_size=buffer_size, seed=0), items)
    seen = Counter(v for b in batches for v in b.items)
    assert set(seen) == set(LABELS) and set(seen.values()) == {1}
    assert all(len(b.items) <= 8 for b in batches)


def test_groups_are_same_cluster_and_sized_z_by_k():
    batches = epoch(ClusterBatcher(3, 2, 8, seed=0), list(LABELS))
    full = 0
    for b in batches:
        assert len(b.groups) <= 3
        assert len(set(b.group_labels)) == len(b.group_labels)  # distinct clusters
        used = [i for g in b.groups for i in g]
        assert len(used) == len(set(used))
        for g, label in zip(b.groups, b.group_labels):
            assert 2 <= len(g) <= 2
            assert all(LABELS[b.items[i]][0] == label for i in g)
        full += len(b.groups) == 3
    assert full >= len(batches) // 2  # most batches get all Z clusters


def test_small_clusters_and_k_larger_than_cluster():
    batches = epoch(ClusterBatcher(2, 4, 10, seed=3), list(LABELS))
    sizes = Counter(len(g) for b in batches for g in b.groups)
    assert max(sizes) == 4 and min(sizes) >= 2
    # the singleton cluster (label 7) can never form a group, but its video is still used
    assert all(7 not in b.group_labels for b in batches)
    assert any(53 in b.items for b in batches)
    b = next(b for b in batches if b.groups)
    padded = b.padded_groups(4)
    assert all(len(g) == 4 for g in padded) and all(x == -1 for g in padded for x in g[len(g):])


def test_deterministic_for_a_seed_and_different_across_epochs():
    items = list(LABELS)
    a = epoch(ClusterBatcher(3, 2, 8, seed=5), items)
    b = epoch(ClusterBatcher(3, 2, 8, seed=5), items)
    c = epoch(ClusterBatcher(3, 2, 8, seed=5), items, epoch_index=1)
    assert [x.items for x in a] == [x.items for x in b]
    assert [x.items for x in a] != [x.items for x in c]


def test_multi_label_videos_join_either_class():
    labels = {0: [0, 1], 1: [0], 2: [1], 3: [1], 4: [0]}
    batches = list(ClusterBatcher(2, 2, 5, seed=0).batches(list(labels), lambda v: labels[v]))
    assert sorted(v for b in batches for v in b.items) == [0, 1, 2, 3, 4]
    for b in batches:
        for g, c in zip(b.groups, b.group_labels):
            assert all(c in labels[b.items[i]] for i in g)


def test_shards_are_disjoint_and_cover_everything():
    for world in (1, 2, 3):
        shards = [shard_indices(101, r, world, seed=2, epoch=4) for r in range(world)]
        flat = [i for s in shards for i in s]
        assert sorted(flat) == list(range(101))
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_indices(10, 0, 2, epoch=0) != shard_indices(10, 0, 2, epoch=1)
    with pytest.raises(ValueError):
        shard_indices(10, 2, 2)


def test_bad_arguments():
    with pytest.raises(ValueError, match="K"):
        ClusterBatcher(2, 1, 8)


def test_the_papers_sampler_draws_with_replacement():
    from acl_dist.sampling import batches_with_replacement

    labels = {f"v{i}": [i % 3] for i in range(7)} | {"w": [0, 2]}   # w in clusters 0 and 2
    items = list(labels)
    stream = batches_with_replacement(items, labels.get, clusters_per_batch=2,
                                      videos_per_cluster=2, batch_size=6, seed=5)
    batches = [next(stream) for _ in range(300)]
    for b in batches:
        assert len(b.items) == 6 and len(b.groups) == 2
        assert b.groups == [[0, 1], [2, 3]]                 # Z x K first, then 2 fill
        for g, c in zip(b.groups, b.group_labels):
            assert all(c in labels[b.items[i]] for i in g)
    # with replacement: a pair of one video twice, and one cluster drawn for both groups
    assert any(b.items[0] == b.items[1] for b in batches)
    assert any(b.group_labels[0] == b.group_labels[1] for b in batches)
    # every cluster and every video appears; the same seed gives the same stream
    assert {c for b in batches for c in b.group_labels} == {0, 1, 2}
    assert {v for b in batches for v in b.items} == set(items)
    again = batches_with_replacement(items, labels.get, 2, 2, 6, seed=5)
    assert [next(again).items for _ in range(5)] == [b.items for b in batches[:5]]
    with pytest.raises(ValueError, match="K"):
        next(batches_with_replacement(items, labels.get, 2, 1, 6))
