"""The seconds <-> snippets conversion (one convention, FORMATS.md §1.1)."""

import numpy as np
import pytest

from acl_dist.timegrid import STANDARD_GRID, SnippetGrid


def test_standard_grid_numbers():
    g = STANDARD_GRID
    assert g.seconds_per_snippet == pytest.approx(0.64)
    assert g.to_seconds(10) == pytest.approx(6.4)
    assert g.to_index(6.4) == pytest.approx(10.0)
    assert g.span_seconds(3, 5) == pytest.approx((1.92, 3.2))
    # 100 s at 25 fps = 2500 frames = 156 whole 16-frame snippets (156.25).
    assert g.num_snippets(100.0) == 156
    assert g.num_snippets(0.64 * 7) == 7  # exact multiple, no float loss
    assert g.coverage(156) == pytest.approx(99.84)
    np.testing.assert_allclose(g.to_seconds(np.array([0, 1, 2])), [0, 0.64, 1.28])


def test_segment_mask_uses_snippet_centres():
    g = SnippetGrid(25.0, 16)
    # centres at 0.32, 0.96, 1.60, 2.24, 2.88 s
    mask = g.segment_mask(np.array([[0.9, 1.7], [2.8, 10.0]]), 5)
    assert mask.tolist() == [False, True, True, False, True]
    assert not g.segment_mask(np.zeros((0, 2)), 3).any()


def test_other_grids_and_validation():
    g = SnippetGrid(30.0, 4)  # ActionFormer THUMOS: stride 4 at 30 fps
    assert g.seconds_per_snippet == pytest.approx(4 / 30)
    with pytest.raises(ValueError):
        SnippetGrid(0.0, 16)
    with pytest.raises(ValueError):
        SnippetGrid(25.0, 0)
