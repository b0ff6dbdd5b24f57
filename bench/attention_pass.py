"""The attention pass against its floor, on an ActivityNet-1.3-like store, in one process.

Three ways over the same videos (every training video described, every validation video
localised, as a round of an unsupervised run does):

* ``floor`` -- read every video's features from the store's Parquet shards with pyarrow
  and run the model's forward over them in a plain batched loop (``acl_dist.infer.predict``
  in batches of 128), no Ray: the physical floor of this step.
* ``actor work, no Ray`` -- :meth:`acl_dist.ray_data.AttentionPass.process` called on the
  same pyarrow batches: the floor plus what the pass must add (localisation, descriptors,
  serialising CAS and attention), still without Ray.
* ``Ray Data pass`` -- what a run does: ``map_attention`` on the local Ray instance with the
  plan's actor count, streamed into ``outputs.parquet`` by ``write_dataset``.

    python bench/attention_pass.py [--dim 1024] [--videos 3000] [--actors N] [--out DIR]

Target: Ray Data pass / floor <= 2. The model is the default network with the
weights of its initialisation (the pass's cost does not depend on what it learned, apart
from how many segments localisation finds).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dim", type=int, default=1024, help="feature dim per stream (I3D: 1024)")
    ap.add_argument("--videos", type=int, default=3000, help="training videos of the store")
    ap.add_argument("--actors", type=int, help="attention actors (default: the plan's)")
    ap.add_argument("--out", help="working directory (default: a temporary one, removed)")
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from acl_dist.artifacts import load_checkpoint, save_checkpoint
    from acl_dist.config import load_config, to_dict
    from acl_dist.infer import load_models, predict
    from acl_dist.model import StreamModels
    from acl_dist.ray_data import AttentionPass, batch_features, map_attention, write_dataset
    from acl_dist.ray_start import init_ray
    from acl_dist.store import FeatureStore
    from acl_dist.synth import SynthConfig, synthesize
    from acl_dist.train import make_checkpoint

    work = Path(args.out or tempfile.mkdtemp(prefix="acl-attention-"))
    store_dir = work / "store"
    if not (store_dir / "manifest.json").exists():
        # the v1 generator (one prototype per action, no receptive field): the store of the
        # figures docs/cluster.md quotes, so that a new run's times compare with theirs
        synthesize(SynthConfig(preset="anet13", dim=args.dim, videos=args.videos, phases=1,
                               receptive_field=1), str(store_dir))
    store = FeatureStore.open(str(store_dir))
    cfg = load_config(None, mode="unsupervised", num_classes=len(store.classes))
    torch.manual_seed(0)
    model = StreamModels(store.streams, len(store.classes), cfg.model)
    ckpt = str(work / "model.pt")
    save_checkpoint(ckpt, make_checkpoint(model.state_dict(), cfg, len(store.classes),
                                          store.streams, list(store.classes), 0))
    subsets = ["validation", "training"]
    total = store.num_videos(subsets)
    snippets = sum(m.num_snippets for m in store.metadata(subsets))
    print(f"store: {total} videos ({snippets:,} snippets), 2 x {args.dim}-d {store.dtype}, "
          f"{sum(f.stat().st_size for f in store_dir.rglob('*.parquet')) / 2**20:.0f} MiB; "
          f"{os.cpu_count()} cores, torch {torch.__version__}")

    def batches():
        for url in store.shard_urls(subsets):
            yield from pq.ParquetFile(url).iter_batches(batch_size=128)

    rows = {}
    loaded = load_models(load_checkpoint(ckpt))
    t0 = time.perf_counter()
    for batch in batches():
        ids = batch.column("video_id").to_pylist()
        predict(loaded, list(zip(ids, batch_features(batch, store.streams, store.dtype,
                                                      float32=False))))
    rows["floor: read + forward"] = time.perf_counter() - t0

    actor = AttentionPass(ckpt, store.streams, store.dtype, ["validation"], to_dict(cfg.localize),
                          "training", descriptor=cfg.cluster.descriptor)
    t0 = time.perf_counter()
    for batch in batches():
        actor.process(pa.Table.from_batches([batch]))
    rows["actor work, no Ray"] = time.perf_counter() - t0

    init_ray(quiet=True)
    import ray

    from acl_dist.resources import attention_actors
    actors = args.actors or attention_actors(ray.cluster_resources().get("CPU", 1), 0, False)
    t0 = time.perf_counter()
    ds = map_attention(store, subsets, ckpt, ["validation"], cfg.localize, "training",
                       descriptor=cfg.cluster.descriptor, concurrency=actors)
    written = write_dataset(ds, str(work / "outputs.parquet"), "  attention pass", total)
    rows[f"Ray Data pass ({actors} actor{'s' * (actors > 1)})"] = time.perf_counter() - t0
    assert written == total, (written, total)

    floor = rows["floor: read + forward"]
    print(f"\n{'attention pass':32s} {'seconds':>8s} {'videos/s':>9s} {'x floor':>8s}")
    for name, secs in rows.items():
        print(f"{name:32s} {secs:8.1f} {total / secs:9.0f} {secs / floor:8.2f}")
    if not args.out:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
