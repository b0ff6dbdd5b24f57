"""Store copies for tests: the same videos and features with other annotations."""

from __future__ import annotations

from typing import Callable


def relabelled(store: str, out: str, change: Callable[..., bool]) -> str:
    """A copy of ``store`` in which the videos with ``change(record)`` True get their labels
    (and segment labels) rotated to the next class of the store's list: the same features,
    ids, subsets and timelines, other annotations."""
    from acl_dist.annotations import Segment
    from acl_dist.store import FeatureStore, StoreWriter

    fs = FeatureStore.open(store)
    rotate = {c: fs.classes[(i + 1) % len(fs.classes)] for i, c in enumerate(fs.classes)}
    with StoreWriter(out, fs.streams, fs.classes, dtype=fs.dtype,
                     source=fs.manifest.get("source")) as w:
        for rec in fs.iter_videos():
            if change(rec):
                rec.labels = [rotate[c] for c in rec.labels]
                rec.segments = [Segment(rotate[g.label], g.start, g.end) for g in rec.segments]
            w.add(rec)
    return out
