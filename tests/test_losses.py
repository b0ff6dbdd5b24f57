"""Each loss term on values worked out by hand, on masks, and on gradients."""

from __future__ import annotations

import math

import pytest
import torch

from acl_dist.losses import (action_background_features, class_attention,
                             classification_loss, cosine_distance, group_classes,
                             separation_loss, triplet_loss)

R2 = 1 / math.sqrt(2)


def test_classification_loss_by_hand():
    # softmax([0, ln 3]) = [1/4, 3/4]
    logits = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)], [5.0, 1.0]])
    targets = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]])  # last row: no label
    per_video = [-math.log(0.75), -(0.5 * math.log(0.25) + 0.5 * math.log(0.75))]
    assert classification_loss(logits, targets, "mean").item() == pytest.approx(
        sum(per_video) / 2)
    assert classification_loss(logits, targets, "sum").item() == pytest.approx(sum(per_video))
    # A video with m labels = m single-label copies of weight 1/m (METHOD.md §5).
    copies = torch.tensor([[0.0, math.log(3)], [0.0, math.log(3)]])
    ce = torch.nn.functional.cross_entropy(copies, torch.tensor([0, 1]), reduction="none")
    assert classification_loss(logits[1:2], targets[1:2], "sum").item() == pytest.approx(
        0.5 * ce.sum().item())


def test_classification_gradient_is_softmax_minus_target():
    logits = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    classification_loss(logits, torch.tensor([[0.0, 1.0]])).backward()
    torch.testing.assert_close(logits.grad, torch.tensor([[0.25, -0.25]]))


def two_video_batch():
    """Video m: X = [[1,0],[0,1]]; video n: X = [[1,1],[0,1]]; attention on snippet 0.
    m: x_a = (1,0), x_b = (0,1), d(a_m,b_m) = 1.
    n: x_a = (1,1), x_b = (0,1), d(a_n,b_n) = 1 - 1/sqrt2.  d(a_m,a_n) = 1 - 1/sqrt2."""
    feats = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, 1.0]]])
    attention = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    return feats, attention, mask


def test_action_background_features_by_hand():
    feats, attention, mask = two_video_batch()
    a, b = action_background_features(feats, attention, mask)
    torch.testing.assert_close(a, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    torch.testing.assert_close(b, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    # background weights (1 - a) / (T - 1) count real snippets only
    padded = torch.cat([feats, torch.full((2, 1, 2), 9.0)], dim=1)
    pmask = torch.tensor([[True, True, False], [True, True, False]])
    _, b2 = action_background_features(padded, torch.cat([attention, torch.zeros(2, 1)], 1),
                                       pmask)
    torch.testing.assert_close(b2, b)


def test_separation_loss_by_hand():
    feats, attention, mask = two_video_batch()
    d_mn = 1 - R2
    expected = (d_mn - 0.001) + 0.5 * max(0.0, d_mn - 1.0 + 0.5) + 0.5 * max(0.0, 0.5)
    groups = torch.tensor([[0, 1]])
    got = separation_loss(feats, attention, mask, groups, tau1=0.001, tau2=0.5)
    assert got.item() == pytest.approx(expected, abs=1e-6)
    # A group with a single video (or a -1 padded slot) has no pair: no loss.
    assert separation_loss(feats, attention, mask, torch.tensor([[0, -1]])).item() == 0.0
    # General K: mean over the K(K-1)/2 pairs, then over groups.
    feats3 = torch.cat([feats, feats[:1]])
    att3 = torch.cat([attention, attention[:1]])
    mask3 = torch.ones(3, 2, dtype=torch.bool)
    l_mn = expected
    l_mm = 0.0  # m and its copy: d = 0; both hinges 0 - 1 + 0.5 < 0
    l_nm = expected  # (n, m') equals (m, n)
    got3 = separation_loss(feats3, att3, mask3, torch.tensor([[0, 1, 2]]))
    assert got3.item() == pytest.approx((l_mn + l_mm + l_nm) / 3, abs=1e-6)


def test_class_attention_picks_the_group_class_column():
    cas = torch.tensor([[[0.0, 5.0], [0.0, -5.0]], [[3.0, 0.0], [0.0, 0.0]]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    groups, group_class = torch.tensor([[0, 1]]), torch.tensor([1])
    classes = group_classes(groups, group_class, 2)
    assert classes.tolist() == [1, 1]
    a = class_attention(cas, mask, classes)
    torch.testing.assert_close(a[0], torch.softmax(torch.tensor([5.0, -5.0]), 0))
    torch.testing.assert_close(a[1], torch.tensor([0.5, 0.5]))


def triplet_batch():
    h = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [0.6, 0.8]])
    return h, torch.tensor([[0, 1], [2, 3]]), torch.tensor([0, 1])


def test_triplet_loss_by_hand():
    h, groups, cls = triplet_batch()
    # a: pos d=0.2, neg min(d(a,c)=1, d(a,d)=0.4)=0.4 -> 0.3; b: 0.2, min(0.4, 0.04) -> 0.66
    # c: 0.2, min(1, 0.4) -> 0.3;  d: 0.2, min(0.4, 0.04) -> 0.66
    assert triplet_loss(h, groups, cls, margin=0.5).item() == pytest.approx(0.48, abs=1e-6)
    assert triplet_loss(h, groups, cls, margin=0.5, reduction="sum").item() == pytest.approx(
        1.92, abs=1e-5)
    # the authors' search starts at distance 1: a cap lowers far negatives
    capped = triplet_loss(h, groups, cls, margin=0.5, neg_cap=0.3).item()
    # a: 0.2-0.3+0.5=0.4; b: 0.66; c: 0.4; d: 0.66
    assert capped == pytest.approx((0.4 + 0.66 + 0.4 + 0.66) / 4, abs=1e-6)
    # groups of the same class are not negatives of each other
    assert triplet_loss(h, groups, torch.tensor([0, 0])).item() == 0.0
    # ungrouped rows (random fill) are neither anchors nor negatives
    h5 = torch.cat([h, torch.tensor([[1.0, 0.01]])])
    assert triplet_loss(h5, groups, cls).item() == pytest.approx(0.48, abs=1e-6)


def test_cosine_distance():
    assert cosine_distance(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])).item() == \
        pytest.approx(1.0)
    assert cosine_distance(torch.tensor([1.0, 1.0]), torch.tensor([2.0, 2.0])).item() == \
        pytest.approx(0.0, abs=1e-7)


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    feats = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    logits = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 0, 0, 0]],
                        dtype=torch.bool)
    groups = torch.tensor([[0, 1], [2, 3]])

    def sep(f, lg):
        from acl_dist.model import masked_softmax
        return separation_loss(f, masked_softmax(lg, mask), mask, groups, 0.001, 0.9)

    assert torch.autograd.gradcheck(sep, (feats, logits))
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x: triplet_loss(x, groups, torch.tensor([0, 1]), margin=1.5, neg_cap=None), (h,))
    p = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: classification_loss(x, t), (p,))
    # gradient flows from L_sep into the attention and from L_trip into H
    s = sep(feats, logits)
    s.backward()
    assert logits.grad.abs().sum() > 0 and feats.grad.abs().sum() > 0
