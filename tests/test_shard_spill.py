"""A training worker's shard spilled to a local file and memory-mapped (no Ray needed)."""

import gc
import os

import numpy as np

from acl_dist.ray_train import ShardSpill
from acl_dist.model import pad_batch


def test_spilled_items_equal_the_input_and_leave_no_file(tmp_path):
    rng = np.random.default_rng(0)
    videos = []
    for i, t in enumerate([5, 1, 17]):
        videos.append((f"v{i}", {"rgb": rng.standard_normal((t, 3)).astype(np.float16),
                                 "flow": rng.standard_normal((t, 4)).astype(np.float32)},
                       [i % 2]))
    spill = ShardSpill(str(tmp_path))
    for vid, feats, labels in videos:
        spill.add(vid, feats)
    items = spill.items({vid: labels for vid, _, labels in videos})
    assert os.listdir(tmp_path) == []          # unlinked: a killed worker leaves nothing
    assert [it.video_id for it in items] == ["v0", "v1", "v2"]
    for item, (vid, feats, labels) in zip(items, videos):
        assert item.labels == labels and item.num_snippets == feats["rgb"].shape[0]
        for name, arr in feats.items():
            assert isinstance(item.features[name], np.memmap)
            np.testing.assert_array_equal(item.features[name], arr)
            assert item.features[name].dtype == arr.dtype
    # the views feed the model's padding like in-memory arrays (and are writable copies
    # on write: the spilled data stays intact)
    x, mask = pad_batch([it.features["flow"] for it in items])
    assert x.shape == (3, 17, 4) and mask.sum().item() == 23
    items[0].features["flow"][0, 0] = 123.0
    assert videos[0][1]["flow"][0, 0] != 123.0
    del items
    gc.collect()


def test_empty_shard():
    spill = ShardSpill()
    assert spill.items({}) == []
