"""The temporal co-attention network (METHOD.md §4-5) of one stream, or of the streams'
concatenated features (``model.fusion=early``, the default). No Ray, no DDP.

Works on padded batches of whole videos: ``x`` is ``(B, T, D)`` with a boolean ``mask``
``(B, T)`` marking real snippets. Every layer re-zeroes padded positions, so a padded
video's outputs at its real positions equal those of the video run alone (the convs'
zero padding sees the same zeros either way), the non-local block attends only to real
snippets, and the softmaxes over time and the pooling ignore padding.

Shapes: ``B`` videos, ``T`` snippets (the longest in the batch), ``D`` input feature dim,
``C`` classes (or clusters).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Softmax over ``dim`` restricted to ``mask``; rows with no valid entry give zeros."""
    filled = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(filled, dim=dim)
    return torch.nan_to_num(out, nan=0.0)


def temporal_convs(convs: list[nn.Conv1d], x: torch.Tensor) -> list[torch.Tensor]:
    """Temporal convs of one input in the ``(B, T, C)`` layout: ``(B, T, Cin)`` -> each
    ``(B, T, Cout_i)``.

    Why this layout: with the default kernels (1) every conv is a matmul of each snippet's
    features, and one ``F.linear`` over the convs' stacked weights runs it as one GEMM with
    no transposes. On 2 CPU cores the training step (16 videos x 256 snippets x 2048-d)
    spent 45% of its time in Conv1d (mkldnn) and transposing copies; see bench/train_step.py.
    Convs of a wider kernel run as ``Conv1d`` between two transposes.
    """
    ones = [c for c in convs if c.kernel_size[0] == 1]
    out: dict[int, torch.Tensor] = {}
    if ones:
        weight = torch.cat([c.weight[:, :, 0] for c in ones]) if len(ones) > 1 \
            else ones[0].weight[:, :, 0]
        bias = torch.cat([c.bias for c in ones]) if len(ones) > 1 else ones[0].bias
        stacked = F.linear(x, weight, bias)
        parts = stacked.split([c.out_channels for c in ones], dim=-1) if len(ones) > 1 \
            else (stacked,)
        out.update({id(c): y for c, y in zip(ones, parts)})
    for c in convs:
        if id(c) not in out:
            out[id(c)] = c(x.transpose(1, 2)).transpose(1, 2)
    return [out[id(c)] for c in convs]


def temporal_convs_cat(convs: list[nn.Conv1d], x: torch.Tensor) -> torch.Tensor:
    """:func:`temporal_convs` concatenated on the channel dim, ``(B, T, sum Cout_i)``;
    kernel-1 convs alone are one matmul whose output already is the concatenation."""
    if all(c.kernel_size[0] == 1 for c in convs):
        return F.linear(x, torch.cat([c.weight[:, :, 0] for c in convs]),
                        torch.cat([c.bias for c in convs]))
    return torch.cat(temporal_convs(convs, x), dim=-1)


class LocalBlock(nn.Module):
    """Four parallel temporal convs (k3 d1, the pyramid's k3 at ``dilations`` -- the paper's
    d2 and d3 -- and k1), each ReLU'd, concatenated: ``(B, T, Cin) -> (B, T, 4*w)``.
    ``kernel`` replaces the three k3s' kernel (1: every branch sees one snippet)."""

    def __init__(self, in_dim: int, branch_dim: int, dilations: tuple[int, int],
                 kernel: int = 3):
        super().__init__()
        self.branches = nn.ModuleList(
            [nn.Conv1d(in_dim, branch_dim, kernel, padding=kernel // 2)]
            + [nn.Conv1d(in_dim, branch_dim, kernel, padding=d * (kernel // 2), dilation=d)
               for d in dilations]
            + [nn.Conv1d(in_dim, branch_dim, 1)])

    def forward(self, x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, T, Cin)``, ``m`` ``(B, T, 1)`` float mask."""
        return F.relu(temporal_convs_cat(list(self.branches), x)) * m


class NonLocal(nn.Module):
    """Embedded-Gaussian non-local block over time, residual, zero-initialised output
    projection (starts as the identity); keys restricted to real snippets."""

    def __init__(self, dim: int, inner: int):
        super().__init__()
        self.theta = nn.Conv1d(dim, inner, 1)
        self.phi = nn.Conv1d(dim, inner, 1)
        self.g = nn.Conv1d(dim, inner, 1)
        self.out = nn.Conv1d(inner, dim, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """``z`` ``(B, T, dim)``, ``mask`` ``(B, T)`` bool -> ``(B, T, dim)``."""
        q, k, v = temporal_convs([self.theta, self.phi, self.g], z)   # (B, T, inner) each
        # softmax_keys(q k^T) v with padded keys masked; the embedded-Gaussian form has no
        # 1/sqrt(d) scaling. The fused kernel avoids materialising (B, T, T) where it can.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, :], scale=1.0)
        return (z + temporal_convs([self.out], y)[0]) * mask[..., None].to(z.dtype)


@dataclass
class ModelOutput:
    """Outputs of :class:`CoAttentionNet` (all padded positions are zero).

    Attributes:
        embedding: ``(B, T, base_dim)`` base embedding E (pooled by S for the triplet loss).
        fused: ``(B, T, global_dim + 4 * branch_dim)`` FAB output X_e (pooled by A for L_sep).
        cas: ``(B, T, C)`` snippet class logits O (the class activation sequence).
        attention_logits: ``(B, T)`` class-agnostic logits s.
        attention: ``(B, T)`` class-agnostic attention S = softmax over real snippets.
        video_logits: ``(B, C)`` p = sum_t S_t O_t.
    """

    embedding: torch.Tensor
    fused: torch.Tensor
    cas: torch.Tensor
    attention_logits: torch.Tensor
    attention: torch.Tensor
    video_logits: torch.Tensor


class CoAttentionNet(nn.Module):
    """Input dropout -> base conv -> FAB (local branches + global branch: k1 conv, then the
    non-local block when ``cfg.global_context``) -> class-specific head O; a second local
    block -> class-agnostic attention S; p = S^T O. With ``cfg.agnostic_attention`` off
    (an ablation) there is no second block and S is uniform over the real snippets.

    Args:
        in_dim: D, the feature dim of the stream.
        num_classes: C.
        cfg: widths and options (:class:`ModelConfig`).
    """

    def __init__(self, in_dim: int, num_classes: int, cfg: ModelConfig = ModelConfig()):
        super().__init__()
        self.in_dim, self.num_classes, self.cfg = in_dim, num_classes, cfg
        self.dropout = nn.Dropout1d(cfg.dropout)
        self.base = nn.Conv1d(in_dim, cfg.base_dim, cfg.base_kernel,
                              padding=cfg.base_kernel // 2)
        local_dim = 4 * cfg.branch_dim
        self.local = LocalBlock(cfg.base_dim, cfg.branch_dim, cfg.dilations, cfg.local_kernel)
        self.global_in = nn.Conv1d(cfg.base_dim, cfg.global_dim, 1)
        if cfg.global_context:  # no unused parameters without it (DDP would refuse them)
            self.nonlocal_block = NonLocal(cfg.global_dim, cfg.nonlocal_dim)
        self.fused_dim = cfg.global_dim + local_dim
        self.head = nn.Conv1d(self.fused_dim, num_classes, 1)
        if cfg.agnostic_attention:      # else the ablation: S uniform, no branch to train
            self.agnostic_local = LocalBlock(cfg.base_dim, cfg.branch_dim, cfg.dilations,
                                             cfg.local_kernel)
            agnostic_dim = local_dim
            if cfg.agnostic_global:
                self.agnostic_global_in = nn.Conv1d(cfg.base_dim, cfg.global_dim, 1)
                self.agnostic_nonlocal = NonLocal(cfg.global_dim, cfg.nonlocal_dim)
                agnostic_dim += cfg.global_dim
            self.agnostic_head = nn.Conv1d(agnostic_dim, 1, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor | None = None
                ) -> ModelOutput:
        """Args: ``x`` ``(B, T, D)`` (finite also where padded), ``mask`` ``(B, T)`` bool;
        ``keep``: ``(B, D)`` the input dropout's mask, drawn by the caller
        (:func:`channel_keep`: a batch split over workers drops what one worker would);
        None: this module's ``Dropout1d`` draws it (in training).
        Returns :class:`ModelOutput`.

        Runs in the ``(B, T, C)`` layout throughout (:func:`temporal_convs`); with kernel-1
        branches the convs reading ``E`` (global, the two local blocks') are one matmul."""
        if x.dim() != 3 or x.shape[-1] != self.in_dim:
            raise ValueError(f"expected (B, T, {self.in_dim}) features, got {tuple(x.shape)}")
        cfg = self.cfg
        m = mask[..., None].to(x.dtype)                                     # (B, T, 1)
        # channel dropout as Dropout1d draws it on (B, D, T): one mask per video and channel
        if keep is not None:
            h = (x.transpose(1, 2) * keep[..., None]).transpose(1, 2)       # (B, T, D)
        else:
            h = self.dropout(x.transpose(1, 2)).transpose(1, 2)
        if cfg.base_kernel > 1:   # zero padding for the wider conv; a kernel-1 base conv
            h = h * m             # maps each snippet alone and E is masked below
        e = F.relu(temporal_convs([self.base], h)[0]) * m                   # (B, T, base)
        branches = [self.global_in, *self.local.branches]
        if cfg.agnostic_attention:
            branches += self.agnostic_local.branches
        if cfg.agnostic_global:
            branches.append(self.agnostic_global_in)
        # every conv reading E at once, ReLU'd and masked; in this order [global | local |
        # agnostic local (| agnostic global)], so [global | local] is the FAB output X_e
        y = F.relu(temporal_convs_cat(branches, e)) * m
        g, w4 = cfg.global_dim, 4 * cfg.branch_dim
        if cfg.global_context:
            fused = torch.cat([self.nonlocal_block(y[..., :g], mask), y[..., g:g + w4]], -1)
        else:
            fused = y[..., :g + w4]                                        # (B, T, fused)
        cas = temporal_convs([self.head], fused)[0] * m                     # (B, T, C)
        if cfg.agnostic_attention:
            agnostic = y[..., g + w4:g + 2 * w4]
            if cfg.agnostic_global:
                agnostic = torch.cat([agnostic,
                                      self.agnostic_nonlocal(y[..., g + 2 * w4:], mask)], -1)
            s = temporal_convs([self.agnostic_head], agnostic)[0][..., 0] * m[..., 0]  # (B, T)
        else:                                   # S = 1/T over real snippets: p = mean of O
            s = torch.zeros_like(m[..., 0])
        attention = masked_softmax(s, mask)                                 # (B, T)
        video_logits = torch.einsum("bt,btc->bc", attention, cas)
        return ModelOutput(embedding=e, fused=fused, cas=cas, attention_logits=s,
                           attention=attention, video_logits=video_logits)


def pad_batch(arrays: list, max_len: int | None = None, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged ``(T_i, D)`` arrays into ``(B, T_max, D)`` zeros-padded plus a mask."""
    return pad_streams([arrays], max_len, dtype, device)


def pad_streams(streams: list[list], max_len: int | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Several streams' ragged ``(T_i, D_s)`` arrays (one list per stream, the same videos
    in the same order) into one ``(B, T_max, sum D_s)`` tensor, the streams side by side
    (early fusion's input), zero-padded, plus the ``(B, T_max)`` mask.

    One pass: each video's rows are converted and written once into their slice, and only
    the padding is zeroed (padding then concatenating the streams wrote every element three
    times). With a GPU ``device`` each video travels in its stored dtype (float16 stores:
    half the bytes) and is converted there, not on the host.
    """
    lengths = [int(a.shape[0]) for a in streams[0]]
    t_max = max(lengths) if max_len is None else max_len
    dims = [int(arrays[0].shape[1]) for arrays in streams]
    dev = torch.device(device) if device is not None else torch.device("cpu")
    out = torch.empty(len(lengths), t_max, sum(dims), dtype=dtype, device=dev)
    for i, t in enumerate(lengths):
        n = min(t, t_max)
        col = 0
        for arrays, d in zip(streams, dims):
            out[i, :n, col:col + d].copy_(torch.as_tensor(arrays[i][:n]).to(dev))
            col += d
        out[i, n:].zero_()
    mask = torch.arange(t_max)[None, :] < torch.tensor(lengths)[:, None]
    return out, mask.to(dev)


EARLY = "early"   # the one network's name under ``model.fusion=early``


def pad_inputs(per_stream: dict[str, list], early: list[str] | None = None,
               device: torch.device | str | None = None
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """A batch's model inputs from each stream's ragged ``(T_i, D_s)`` arrays: one padded
    tensor per stream, or with ``early`` (the early-fused network's stream order) one
    :data:`EARLY` tensor of the streams side by side (:func:`pad_streams`). Returns
    (inputs, ``(B, T)`` mask)."""
    if early:
        x, mask = pad_streams([per_stream[s] for s in early], device=device)
        return {EARLY: x}, mask
    inputs, mask = {}, None
    for s, arrays in per_stream.items():
        inputs[s], mask = pad_batch(arrays, device=device)
    return inputs, mask


class StreamModels(nn.Module):
    """The stream networks behind one module (one DDP wrapper): one :class:`CoAttentionNet`
    per stream (``fusion=late``, the paper), or one on the streams' features concatenated
    in ``in_dims`` order (``fusion=early``), named :data:`EARLY`."""

    def __init__(self, in_dims: dict[str, int], num_classes: int, cfg: ModelConfig):
        super().__init__()
        self.streams = list(in_dims)
        self.early = cfg.fusion == "early" and len(in_dims) > 1
        dims = {EARLY: sum(in_dims.values())} if self.early else in_dims
        self.nets = nn.ModuleDict({s: CoAttentionNet(d, num_classes, cfg)
                                   for s, d in dims.items()})

    def forward(self, inputs: dict[str, torch.Tensor], mask: torch.Tensor,
                keep: dict[str, torch.Tensor] | None = None) -> dict[str, ModelOutput]:
        """``inputs``: stream -> ``(B, T, D_s)``, or for early fusion :data:`EARLY` ->
        the streams' features side by side in ``self.streams`` order (:func:`pad_streams`).
        ``keep``: network name -> its input dropout's ``(B, D)`` mask (:func:`channel_keep`),
        or None (each network draws its own). Returns network name -> outputs."""
        keep = keep or {}
        if self.early:
            x = inputs[EARLY] if EARLY in inputs else \
                torch.cat([inputs[s] for s in self.streams], -1)
            return {EARLY: self.nets[EARLY](x, mask, keep.get(EARLY))}
        return {s: net(inputs[s], mask, keep.get(s)) for s, net in self.nets.items()}

    def per_stream(self, outputs: dict[str, ModelOutput]) -> dict[str, ModelOutput]:
        """Outputs by stream: the early-fused network's stand for every stream."""
        return {s: outputs[EARLY] for s in self.streams} if self.early else outputs


def channel_keep(model: StreamModels, batch: int, generator: torch.Generator | None = None
                 ) -> dict[str, torch.Tensor] | None:
    """The input dropout's masks of a ``batch``-video training batch, per network in
    forward order: ``(batch, D)`` of 0 and ``1 / (1 - p)``, drawn as ``Dropout1d`` draws
    them (the same values from the same generator state), or None when there is no
    dropout. Drawn for the whole global batch on every worker, each worker's rows then
    drop what one worker running the whole batch would."""
    p = float(model.nets[next(iter(model.nets))].cfg.dropout)
    if p <= 0.0:
        return None
    out = {}
    for name, net in model.nets.items():
        if p >= 1.0:
            out[name] = torch.zeros(batch, net.in_dim)
            continue
        noise = torch.empty(batch, net.in_dim, 1).bernoulli_(1 - p, generator=generator)
        out[name] = noise.div_(1 - p)[..., 0]
    return out
