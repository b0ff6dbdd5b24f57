"""One batch for all the workers: every worker draws the same global batch each step (Z
clusters x K videos + fill, ``train.batch_size`` videos in all) from the same table of
the round's videos, and computes the rows whose features it holds. The terms that
compare videos then see every row through :meth:`acl_dist.collectives.WorkerGroup.gather_rows`,
so a step on N workers computes the loss of the global batch as one worker would.

Why the rows go to their owners instead of an even share to each: a worker holds only
its Ray Data shard's features (an ActivityNet shard is gigabytes; no worker may hold them
all), so the batch a step draws decides who computes what. The shares vary from step to
step (32 videos over 4 workers: 8 on average, the largest share ~12), and the step waits
for the largest (bench/worker_invariance.py measures the step time per worker count).

Pure: numpy only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class VideoRef:
    """A training video as every worker knows it: its id, its snippets, its label indices
    and the rank of the worker holding its features."""

    video_id: str
    num_snippets: int
    labels: tuple[int, ...]
    owner: int


def video_table(held: Sequence[Sequence[tuple[str, int, Sequence[int]]]]) -> list[VideoRef]:
    """The round's videos from each worker's ``(video id, snippets, labels)`` (rank
    order), sorted by id: the same list on every worker, whichever shard each got.

    Raises ValueError naming a video two workers hold (a split that duplicated a row)."""
    refs: dict[str, VideoRef] = {}
    for rank, videos in enumerate(held):
        for video_id, snippets, labels in videos:
            if video_id in refs:
                raise ValueError(f"video {video_id!r} reached workers {refs[video_id].owner} "
                                 f"and {rank}: the training shards overlap")
            refs[video_id] = VideoRef(video_id, int(snippets), tuple(int(c) for c in labels),
                                      rank)
    return [refs[v] for v in sorted(refs)]


def bucket_rows(n: int, most: int) -> int:
    """A worker's rows padded up to one of few sizes (1, 2, 3, 4, 6, 8, 12, 16, 24, ...,
    never past ``most``), so a CUDA-graph step sees few shapes."""
    size = 1
    while size < n:   # 1 -> 2 -> 3 -> 4 -> 6 -> 8 -> 12 -> 16: powers of 2 and 1.5 x them
        size = size + 1 if size < 3 else (size * 3 // 2 if size & (size - 1) == 0
                                          else size * 4 // 3)
    return max(1, min(size, most))


@dataclass(frozen=True)
class Split:
    """Who computes which rows of one global batch.

    Invariant: ``rows[r]`` are the ascending global positions worker ``r`` computes;
    together they are ``0 .. B-1``, each once. The workers' computed rows, each padded to
    ``cap`` and gathered in rank order, put global row ``p`` at ``gather_index[p]``.
    """

    rows: tuple[np.ndarray, ...]
    cap: int

    @property
    def size(self) -> int:
        return int(sum(len(r) for r in self.rows))

    def gather_index(self) -> np.ndarray:
        """``(B,)`` each global row's position in the ``(world * cap)`` gathered rows."""
        out = np.empty(self.size, np.int64)
        for rank, rows in enumerate(self.rows):
            out[rows] = rank * self.cap + np.arange(len(rows))
        return out


def split_batch(owners: Sequence[int], world_size: int, cap: int | None = None) -> Split:
    """The :class:`Split` of a batch whose row ``p`` is held by worker ``owners[p]``;
    ``cap``: the padded rows per worker (at least the largest share; default that)."""
    owners = np.asarray(owners, np.int64)
    if owners.size and not 0 <= owners.min() <= owners.max() < world_size:
        raise ValueError(f"a row's owner is outside world size {world_size}")
    rows = tuple(np.flatnonzero(owners == r) for r in range(world_size))
    largest = max(len(r) for r in rows)
    if cap is None:
        cap = largest
    if cap < largest:
        raise ValueError(f"cap {cap} below the largest share {largest}")
    return Split(rows, max(cap, 1))
