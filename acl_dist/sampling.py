"""Batches of Z clusters x K videos plus random fill (METHOD.md §6). Pure Python.

An epoch is a stream of videos; :class:`ClusterBatcher` holds at most ``buffer_size`` of
them and emits batches until the stream is used up, so **every video of the epoch appears
in exactly one batch** (no loss, no duplicates). The paper's sampler, which draws with
replacement, is :func:`batches_with_replacement` (``train.sampling=replacement``).
Each batch takes up to Z clusters that have at least two videos in the buffer and up to K
videos from each (clusters with fewer than K give what they have: the loss functions take
``-1``-padded groups), then fills up to the batch size with other buffered videos, which
only enter L_cls. Everything is a function of the seed and the epoch number.

Under Ray Train every worker runs the same batcher over the table of all the round's
videos, so the workers draw one global batch a step (acl_dist.global_batch) and each
computes the rows it holds; the shards they hold are disjoint and cover the dataset
(:func:`shard_indices` gives the same guarantee without Ray).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Generic, Iterable, Iterator, Sequence, TypeVar

T = TypeVar("T")


@dataclass
class Batch(Generic[T]):
    """One batch: ``items``; ``groups[z]`` lists positions in ``items`` of the videos drawn
    for cluster ``group_labels[z]``; the remaining positions are random fill."""

    items: list[T]
    groups: list[list[int]]
    group_labels: list[int]

    def padded_groups(self, k: int) -> list[list[int]]:
        """Groups padded with -1 to width ``k`` (for a ``(Z, K)`` tensor)."""
        return [g + [-1] * (k - len(g)) for g in self.groups]


class ClusterBatcher:
    """Cluster-structured batches from a stream of labelled videos with a bounded buffer.

    Args:
        clusters_per_batch: Z.
        videos_per_cluster: K (>= 2).
        batch_size: videos per batch (>= Z * K is sensible; smaller works).
        buffer_size: videos held before emitting; None = the whole epoch (global sampling).
        seed: base seed.
    """

    def __init__(self, clusters_per_batch: int, videos_per_cluster: int, batch_size: int,
                 buffer_size: int | None = None, seed: int = 0):
        if videos_per_cluster < 2:
            raise ValueError("videos_per_cluster (K) must be at least 2")
        if clusters_per_batch < 0 or batch_size < 1:
            raise ValueError("need clusters_per_batch >= 0 and batch_size >= 1")
        self.z, self.k, self.batch_size = clusters_per_batch, videos_per_cluster, batch_size
        self.buffer_size = buffer_size
        self.seed = seed

    def batches(self, stream: Iterable[T], labels_of: Callable[[T], Sequence[int]],
                epoch: int = 0) -> Iterator[Batch[T]]:
        """Yield the batches of one epoch over ``stream``.

        Args:
            stream: the epoch's videos (each used exactly once).
            labels_of: a video's cluster (unsupervised: one) or classes (weak: one or more);
                a video with several can be drawn for any of them.
            epoch: mixed into the seed.
        """
        rng = random.Random(f"{self.seed}/{epoch}")
        buffer: dict[int, T] = {}
        buckets: dict[int, dict[int, None]] = {}
        labels: dict[int, Sequence[int]] = {}
        counter = 0

        def emit() -> Batch[T]:
            taken: dict[int, None] = {}
            groups, group_labels = [], []
            eligible = sorted(c for c, ids in buckets.items() if len(ids) >= 2)
            for c in rng.sample(eligible, min(self.z, len(eligible))):
                avail = [i for i in buckets[c] if i not in taken]
                if len(avail) < 2:
                    continue
                room = self.batch_size - len(taken)
                pick = rng.sample(avail, min(self.k, len(avail), room))
                if len(pick) < 2:
                    break
                groups.append(list(range(len(taken), len(taken) + len(pick))))
                group_labels.append(c)
                taken.update(dict.fromkeys(pick))
            rest = [i for i in buffer if i not in taken]
            fill = rng.sample(rest, min(self.batch_size - len(taken), len(rest)))
            taken.update(dict.fromkeys(fill))
            items = [buffer.pop(i) for i in taken]
            for i in taken:
                for c in labels.pop(i):
                    bucket = buckets[c]
                    del bucket[i]
                    if not bucket:
                        del buckets[c]
            return Batch(items, groups, group_labels)

        for item in stream:
            buffer[counter] = item
            labels[counter] = list(dict.fromkeys(labels_of(item)))
            for c in labels[counter]:
                buckets.setdefault(c, {})[counter] = None
            counter += 1
            if self.buffer_size is not None and len(buffer) >= self.buffer_size:
                yield emit()
        while buffer:
            yield emit()


def batches_with_replacement(items: Sequence[T], labels_of: Callable[[T], Sequence[int]],
                             clusters_per_batch: int, videos_per_cluster: int,
                             batch_size: int, seed: int = 0) -> Iterator[Batch[T]]:
    """The paper's sampler (METHOD.md §6, §8.8): endless batches, each of Z clusters drawn
    uniformly *with replacement* from those with a video, K videos drawn with replacement
    from each (a pair may be one video twice, and two groups one cluster), and the rest of
    the batch filled with videos drawn uniformly with replacement (they enter L_cls only).
    A video with several labels belongs to each of their clusters."""
    if videos_per_cluster < 2:
        raise ValueError("videos_per_cluster (K) must be at least 2")
    if not items:
        raise ValueError("no videos to sample")
    rng = random.Random(f"replacement/{seed}")
    members: dict[int, list[int]] = {}
    for i, item in enumerate(items):
        for c in dict.fromkeys(labels_of(item)):
            members.setdefault(c, []).append(i)
    clusters = sorted(members)
    z = min(clusters_per_batch, max(0, batch_size // videos_per_cluster)) if clusters else 0
    while True:
        picked: list[int] = []
        groups, group_labels = [], []
        for c in rng.choices(clusters, k=z):
            groups.append(list(range(len(picked), len(picked) + videos_per_cluster)))
            group_labels.append(c)
            picked += rng.choices(members[c], k=videos_per_cluster)
        picked += rng.choices(range(len(items)), k=max(0, batch_size - len(picked)))
        yield Batch([items[i] for i in picked], groups, group_labels)


def shard_indices(n: int, rank: int, world_size: int, seed: int = 0, epoch: int = 0
                  ) -> list[int]:
    """Indices of worker ``rank``'s shard of ``n`` videos for ``epoch``: a seeded
    permutation split round-robin, so shards are disjoint and together cover all ``n``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    order = list(range(n))
    random.Random(f"shard/{seed}/{epoch}").shuffle(order)
    return order[rank::world_size]


def shuffled(items: Sequence[T], seed: int, epoch: int) -> list[T]:
    """A seeded shuffle of ``items`` for one epoch."""
    out = list(items)
    random.Random(f"epoch/{seed}/{epoch}").shuffle(out)
    return out
