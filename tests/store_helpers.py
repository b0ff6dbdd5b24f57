"""Stores for tests: a small store with its npy-split layout, and copies of a store with
other annotations."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from acl_dist.synth import SynthConfig, synthesize

#: The bad-input and integrity cases' store: 3 classes, 6 training videos, 8-d features.
SMALL = SynthConfig(classes=3, videos=6, dim=8, seed=1)


def small_store(root: Path) -> tuple[str, Path]:
    """:data:`SMALL` written under ``root`` as a store and as the same videos in the
    npy-split layout (for ingest): (store path, layout folder)."""
    store, layout = str(root / "store"), root / "layout"
    synthesize(SMALL, store, npy_layout=str(layout), quiet=True, report=False)
    return store, layout


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
