"""ACL's losses as small pure functions of tensors and masks (METHOD.md §5, §7, §8).

Batch structure: ``groups`` is a ``(Z, K)`` long tensor of batch row indices, one row per
cluster drawn for the batch, ``-1`` where a cluster had fewer than K videos; ``group_class``
``(Z,)`` is each group's cluster (or class) index. A video belongs to at most one group;
the batch's random-fill videos belong to none and only enter L_cls.

Two stages: :func:`video_terms` pools what each video contributes (:class:`VideoTerms`),
:func:`batch_loss` reduces them over the batch. Between them several workers gather their
videos' terms (:func:`gather_terms`), so every reduction is over the global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from .config import LossConfig
from .model import ModelOutput, masked_softmax


def cosine_distance(u: torch.Tensor, w: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``1 - cos(u, w)`` along the last dim."""
    return 1.0 - F.cosine_similarity(u, w, dim=-1, eps=eps)


def classification_loss(video_logits: torch.Tensor, targets: torch.Tensor,
                        reduction: str = "mean") -> torch.Tensor:
    """L_cls: cross-entropy of softmax(p) against the video's labels.

    A video with m labels counts as m single-label copies of weight 1/m (the authors'
    ``get_single_label_dict``), which is cross-entropy against the normalised multi-hot.

    Args:
        video_logits: ``(B, C)`` p.
        targets: ``(B, C)`` multi-hot (or one-hot pseudo-labels); rows with no label are
            ignored.
        reduction: ``mean`` over labelled videos, or ``sum`` (the authors' code).
    """
    counts = targets.sum(dim=1)
    labelled = counts > 0
    weights = targets / counts.clamp(min=1)[:, None]
    per_video = -(weights * F.log_softmax(video_logits, dim=1)).sum(dim=1)
    total = torch.where(labelled, per_video, 0.0).sum()   # a mask, not indexing: no sync
    return total if reduction == "sum" else total / labelled.sum().clamp(min=1)


def topk_pooled(cas: torch.Tensor, mask: torch.Tensor, divisor: int = 8) -> torch.Tensor:
    """Top-k mean of each class's CAS over real snippets, k = max(1, T // divisor).

    Args: cas ``(B, T, C)``; mask ``(B, T)``. Returns ``(B, C)`` video logits.
    """
    lengths = mask.sum(dim=1)
    k = (lengths // divisor).clamp(min=1)
    ranked = cas.masked_fill(~mask[:, :, None], float("-inf")).sort(dim=1, descending=True)[0]
    take = torch.arange(cas.shape[1], device=cas.device)[None, :, None] < k[:, None, None]
    return ranked.masked_fill(~take, 0.0).sum(dim=1) / k[:, None].to(cas.dtype)


def _members(groups: torch.Tensor, group_class: torch.Tensor, batch: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per batch row: its group index (or -1) and its group's class (or 0)."""
    valid = groups >= 0
    group_index = torch.arange(groups.shape[0], device=groups.device)[:, None].expand_as(groups)
    # padding (-1) scatters into an extra slot that is dropped: no boolean indexing, no sync
    slots = torch.where(valid, groups, batch).reshape(-1)
    group_of = torch.full((batch + 1,), -1, dtype=torch.long, device=groups.device)
    group_of = group_of.scatter(0, slots, torch.where(valid, group_index, -1).reshape(-1))
    group_of = group_of[:batch]
    if group_class.numel() == 0:
        return group_of, torch.zeros_like(group_of)
    cls = torch.where(group_of >= 0, group_class[group_of.clamp(min=0)], 0)
    return group_of, cls


def action_background_features(features: torch.Tensor, attention: torch.Tensor,
                               mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Action and background features of each video under a temporal attention.

    ``x_a = X^T a`` and ``x_b = X^T (1 - a) / max(T - 1, 1)`` over real snippets.

    Args:
        features: ``(B, T, F)``. attention: ``(B, T)``, sums to 1 over real snippets.
        mask: ``(B, T)``.
    Returns:
        ``(B, F)`` action features, ``(B, F)`` background features.
    """
    action = torch.einsum("bt,btf->bf", attention, features)
    lengths = mask.sum(dim=1).to(features.dtype)
    back_w = (1.0 - attention) * mask.to(features.dtype) / (lengths - 1).clamp(min=1)[:, None]
    background = torch.einsum("bt,btf->bf", back_w, features)
    return action, background


def class_attention(cas: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor
                    ) -> torch.Tensor:
    """A[:, c_b] for each video b: softmax over real snippets of its class's CAS column.

    Args: cas ``(B, T, C)``; mask ``(B, T)``; classes ``(B,)``. Returns ``(B, T)``.
    """
    logits = cas.gather(2, classes[:, None, None].expand(-1, cas.shape[1], 1))[..., 0]
    return masked_softmax(logits, mask)


def separation_loss(features: torch.Tensor, attention: torch.Tensor, mask: torch.Tensor,
                    groups: torch.Tensor, tau1: float = 0.001, tau2: float = 0.5
                    ) -> torch.Tensor:
    """L_sep, the action-background separation loss (METHOD.md §7).

    For each pair (m, n) of videos in a cluster group, with d the cosine distance and
    a / b the attended / background features (:func:`action_background_features`),
    ``l_mn = [d(a_m,a_n) - tau1]_+ + 1/2 [d(a_m,a_n) - d(a_m,b_m) + tau2]_+
    + 1/2 [d(a_m,a_n) - d(a_n,b_n) + tau2]_+``; averaged over the pairs of a group
    (K(K-1)/2 of them; the paper's K = 2 has one), then over groups with >= 2 videos.

    Args:
        features: ``(B, T, F)`` (the paper: the FAB output X_e).
        attention: ``(B, T)`` per video (the paper: A for the video's cluster,
            :func:`class_attention`).
        groups: ``(Z, K)`` batch rows per cluster group, -1 padded.
    Returns a scalar (0 when no group has a pair).
    """
    action, background = action_background_features(features, attention, mask)
    return separation_from_pooled(action, background, groups, tau1, tau2)


def separation_from_pooled(action: torch.Tensor, background: torch.Tensor,
                           groups: torch.Tensor, tau1: float = 0.001, tau2: float = 0.5
                           ) -> torch.Tensor:
    """:func:`separation_loss` from each video's ``(B, F)`` action and background features
    (the batch-level half: what a worker computes after gathering them)."""
    own = cosine_distance(action, background)                            # (B,)
    k = groups.shape[1]
    if k < 2:
        return action.new_zeros(())
    # every (m, n) pair of every group at once: no Python loop, no host sync
    i, j = torch.triu_indices(k, k, offset=1, device=action.device)
    a, b = groups[:, i], groups[:, j]                                    # (Z, P)
    valid = (a >= 0) & (b >= 0)
    a, b = a.clamp(min=0), b.clamp(min=0)
    d_ab = cosine_distance(action[a], action[b])                         # (Z, P)
    pair = (F.relu(d_ab - tau1) + 0.5 * F.relu(d_ab - own[a] + tau2)
            + 0.5 * F.relu(d_ab - own[b] + tau2))
    pairs_per_group = valid.sum(dim=1)
    group_mean = (pair * valid).sum(dim=1) / pairs_per_group.clamp(min=1)
    has_pair = pairs_per_group > 0
    return (group_mean * has_pair).sum() / has_pair.sum().clamp(min=1)


def group_classes(groups: torch.Tensor, group_class: torch.Tensor, batch: int) -> torch.Tensor:
    """``(B,)`` the class of each video's group (0 for ungrouped videos)."""
    return _members(groups, group_class, batch)[1]


def attention_pooled(embedding: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """H = E^T S: ``(B, T, F)``, ``(B, T)`` -> ``(B, F)`` (padding has S = 0)."""
    return torch.einsum("bt,btf->bf", attention, embedding)


def triplet_loss(pooled: torch.Tensor, groups: torch.Tensor, group_class: torch.Tensor,
                 margin: float = 0.5, neg_cap: float | None = 1.0,
                 reduction: str = "mean") -> torch.Tensor:
    """L_trip, the cluster-based triplet loss with hardest positive and negative (§8).

    Anchors are the grouped videos. For anchor a: positive = the farthest video of its own
    group; negative = the closest grouped video of a different class, its distance capped
    at ``neg_cap`` (the authors' search starts at 1); loss ``[d_p - d_n + margin]_+``.
    Anchors without a positive or a negative are skipped.

    Args:
        pooled: ``(B, F)`` H. groups: ``(Z, K)``. group_class: ``(Z,)``.
        reduction: ``mean`` over anchors or ``sum`` (the authors' code).
    """
    group_of, cls = _members(groups, group_class, pooled.shape[0])
    grouped = group_of >= 0                                               # (B,)
    h = F.normalize(pooled, dim=1, eps=1e-8)
    dist = 1.0 - h @ h.T                                                  # (B, B)
    pair_ok = grouped[:, None] & grouped[None, :]
    eye = torch.eye(pooled.shape[0], dtype=torch.bool, device=pooled.device)
    pos_mask = pair_ok & (group_of[:, None] == group_of[None, :]) & ~eye
    neg_mask = pair_ok & (cls[:, None] != cls[None, :])
    # anchors with both a positive and a negative; masks instead of indexing (no host sync)
    has = pos_mask.any(1) & neg_mask.any(1)
    d_pos = dist.masked_fill(~pos_mask, float("-inf")).max(dim=1).values
    d_neg = dist.masked_fill(~neg_mask, float("inf")).min(dim=1).values
    if neg_cap is not None:
        d_neg = d_neg.clamp(max=neg_cap)
    per_anchor = torch.where(has, F.relu(d_pos - d_neg + margin), 0.0)
    total = per_anchor.sum()
    return total if reduction == "sum" else total / has.sum().clamp(min=1)


@dataclass
class VideoTerms:
    """What the batch-level loss terms need of each video of one network's ``(B, T)``
    batch, pooled over time: everything after this is a function of the batch's videos
    as a set (who is grouped with whom), nothing of their snippets. Several workers
    compute these for their own videos and gather them (a few hundred floats a video),
    so the terms that compare videos see the whole global batch.

    Invariant: every tensor has the batch's ``B`` rows in the same order.

    Attributes:
        logits: ``(B, C)`` video logits p (L_cls).
        topk: ``(B, C)`` top-k pooled CAS (L_topk), or None when ``lambda_topk`` is 0.
        separation: per separation attention (``loss.sep_attention``: class, agnostic, in
            that order) the ``(B, F)`` action and background features (L_sep).
        pooled: ``(B, E)`` H = E^T S (L_trip).
    """

    logits: torch.Tensor
    topk: torch.Tensor | None
    separation: list[tuple[torch.Tensor, torch.Tensor]]
    pooled: torch.Tensor

    def parts(self) -> list[torch.Tensor]:
        """The tensors in a fixed order (:meth:`flat`'s columns)."""
        out = [self.logits] + ([self.topk] if self.topk is not None else [])
        for action, background in self.separation:
            out += [action, background]
        return out + [self.pooled]

    def flat(self) -> torch.Tensor:
        """``(B, W)``: :meth:`parts` side by side (one tensor to gather)."""
        return torch.cat(self.parts(), dim=1)

    def widths(self) -> list[int]:
        return [int(t.shape[1]) for t in self.parts()]

    def like(self, flat: torch.Tensor) -> "VideoTerms":
        """The :class:`VideoTerms` laid out as this one whose rows are ``flat``'s
        (:meth:`flat` of another batch: e.g. the gathered global batch)."""
        cols = list(flat.split(self.widths(), dim=1))
        logits = cols.pop(0)
        topk = cols.pop(0) if self.topk is not None else None
        separation = [(cols[2 * i], cols[2 * i + 1]) for i in range(len(self.separation))]
        return VideoTerms(logits, topk, separation, cols[-1])


def gather_terms(terms: Mapping[str, VideoTerms], index: torch.Tensor, group: Any,
                 rows: int | None = None) -> dict[str, VideoTerms]:
    """The global batch's :class:`VideoTerms` from every worker's rows, in global order,
    gradients kept: each worker's rows side by side for every network, padded with zero
    rows to ``rows`` (the same count on every worker; default: as they are), gathered once
    (``group``: an :class:`acl_dist.collectives.WorkerGroup`), then ``index`` ``(B,)``
    (each global row's place among the gathered rows) picks the batch's rows."""
    nets = list(terms)
    flat = torch.cat([terms[n].flat() for n in nets], dim=1)
    if rows is not None and flat.shape[0] < rows:
        flat = torch.cat([flat, flat.new_zeros(rows - flat.shape[0], flat.shape[1])])
    rows = group.gather_rows(flat)[index]
    parts = rows.split([sum(terms[n].widths()) for n in nets], dim=1)
    return {n: terms[n].like(p) for n, p in zip(nets, parts)}


def video_terms(outputs: Mapping[str, ModelOutput], mask: torch.Tensor,
                row_class: torch.Tensor, lc: LossConfig) -> dict[str, VideoTerms]:
    """Per network, its :class:`VideoTerms` of a batch.

    Args:
        outputs: network name -> :class:`~acl_dist.model.ModelOutput` of a ``(B, T)`` batch.
        mask: ``(B, T)``.
        row_class: ``(B,)`` each video's group's cluster (0 for videos in no group: their
            separation features enter no pair), as :func:`group_classes` gives it.
        lc: which terms are on.
    """
    out: dict[str, VideoTerms] = {}
    for s, o in outputs.items():
        separation = []
        if lc.sep_attention in ("class", "both"):
            separation.append(action_background_features(
                o.fused, class_attention(o.cas, mask, row_class), mask))
        if lc.sep_attention in ("agnostic", "both"):
            separation.append(action_background_features(o.fused, o.attention, mask))
        out[s] = VideoTerms(o.video_logits, topk_pooled(o.cas, mask) if lc.lambda_topk else None,
                            separation, attention_pooled(o.embedding, o.attention))
    return out


def batch_loss(terms: Mapping[str, VideoTerms], targets: torch.Tensor, groups: torch.Tensor,
               group_class: torch.Tensor, lc: LossConfig
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L = sum over the networks of L_cls + lambda_sep L_sep + lambda_trip L_trip
    (+ lambda_topk L_topk) from each video's :class:`VideoTerms`, and each term per
    network (detached, for logging). Every reduction is over the batch given: with the
    global batch's videos, the global batch's loss, whichever worker computed each video.

    Args:
        terms: network name -> the batch's :class:`VideoTerms`.
        targets: ``(B, C)`` multi-hot. groups: ``(Z, K)`` row indices of each drawn
            cluster's videos (-1 padded). group_class: ``(Z,)`` the clusters' ids.
    """
    total = torch.zeros((), device=targets.device)
    logged: dict[str, torch.Tensor] = {}
    for s, vt in terms.items():
        l_cls = classification_loss(vt.logits, targets, lc.cls_reduction)
        l_sep = total.new_zeros(())
        for action, background in vt.separation:
            l_sep = l_sep + separation_from_pooled(action, background, groups, lc.tau1,
                                                   lc.tau2)
        l_trip = triplet_loss(vt.pooled, groups, group_class, lc.margin, lc.neg_cap,
                              lc.trip_reduction)
        total = total + l_cls + lc.lambda_sep * l_sep + lc.lambda_trip * l_trip
        if vt.topk is not None:
            l_topk = classification_loss(vt.topk, targets, lc.cls_reduction)
            total = total + lc.lambda_topk * l_topk
            logged[f"{s}/topk"] = l_topk
        logged.update({f"{s}/cls": l_cls, f"{s}/sep": l_sep, f"{s}/trip": l_trip})
    logged["loss"] = total
    return total, {name: t.detach() for name, t in logged.items()}


def total_loss(outputs: Mapping[str, ModelOutput], batch: Mapping[str, torch.Tensor],
               lc: LossConfig) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """L of one batch on one process: :func:`video_terms` then :func:`batch_loss`.

    Args:
        outputs: network name -> :class:`~acl_dist.model.ModelOutput` of a ``(B, T)`` batch.
        batch: ``mask`` ``(B, T)`` bool, ``targets`` ``(B, C)`` multi-hot, ``groups``
            ``(Z, K)`` row indices of each drawn cluster's videos (-1 padded),
            ``group_class`` ``(Z,)`` the clusters' ids (what
            :func:`acl_dist.train.batch_tensors` builds).
        lc: the loss weights and margins.
    Returns:
        (total, {"<net>/cls", "<net>/sep", "<net>/trip"[, "<net>/topk"], "loss"}).
    """
    mask, groups, group_class = batch["mask"], batch["groups"], batch["group_class"]
    rows = group_classes(groups, group_class, mask.shape[0])
    return batch_loss(video_terms(outputs, mask, rows, lc), batch["targets"], groups,
                      group_class, lc)
