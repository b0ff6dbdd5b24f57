"""The co-attention network on padded, masked, ragged batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from acl_dist.config import ModelConfig
from acl_dist.model import CoAttentionNet, masked_softmax, pad_batch

CFG = ModelConfig(base_dim=16, branch_dim=4, global_dim=8, nonlocal_dim=4, dropout=0.5)


def make_net(agnostic_global=False, seed=0, global_context=True):
    """The paper's network (non-local global branch) unless ``global_context=False``."""
    torch.manual_seed(seed)
    net = CoAttentionNet(6, 3, ModelConfig(**{**CFG.__dict__, "agnostic_global": agnostic_global,
                                              "global_context": global_context}))
    # Non-zero output projection so the non-local block actually mixes time steps.
    blocks = ([net.nonlocal_block] if global_context else []) + (
        [net.agnostic_nonlocal] if agnostic_global else [])
    for nl in blocks:
        torch.nn.init.normal_(nl.out.weight, std=0.3)
    return net.eval()


@pytest.mark.parametrize("agnostic_global,global_context",
                         [(False, True), (True, True), (False, False)])
def test_padded_batch_equals_videos_alone(agnostic_global, global_context):
    net = make_net(agnostic_global, global_context=global_context)
    rng = np.random.default_rng(0)
    videos = [rng.standard_normal((t, 6)).astype(np.float32) for t in (7, 1, 12, 3)]
    x, mask = pad_batch(videos)
    assert x.shape == (4, 12, 6) and mask.sum(1).tolist() == [7, 1, 12, 3]
    out = net(x, mask)
    assert out.cas.shape == (4, 12, 3) and out.attention.shape == (4, 12)
    assert out.fused.shape == (4, 12, net.fused_dim) and out.video_logits.shape == (4, 3)
    assert out.embedding.shape == (4, 12, 16)
    for i, v in enumerate(videos):
        alone = net(torch.from_numpy(v)[None], torch.ones(1, len(v), dtype=torch.bool))
        t = len(v)
        torch.testing.assert_close(out.cas[i, :t], alone.cas[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(out.attention[i, :t], alone.attention[0], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.video_logits[i], alone.video_logits[0], atol=1e-5,
                                   rtol=1e-5)
        torch.testing.assert_close(out.fused[i, :t], alone.fused[0], atol=1e-5, rtol=1e-5)
        # padding is zero everywhere and carries no attention
        assert out.attention[i, t:].abs().sum() == 0 and out.cas[i, t:].abs().sum() == 0
    torch.testing.assert_close(out.attention.sum(1), torch.ones(4))


@pytest.mark.parametrize("base_kernel,local_kernel,reach", [(1, 3, 1), (3, 3, 2), (1, 1, 0)])
def test_without_global_context_class_logits_see_only_a_local_window(base_kernel, local_kernel,
                                                                     reach):
    """Snippet 0's class logits depend on snippets 0..reach: base conv (k1 or k3) plus the
    FAB's branches (k3 or k1) at dilations (1, 1)."""
    rng = np.random.default_rng(2)
    x = torch.from_numpy(rng.standard_normal((1, 12, 6)).astype(np.float32))
    mask = torch.ones(1, 12, dtype=torch.bool)
    torch.manual_seed(0)
    local = CoAttentionNet(6, 3, ModelConfig(**{**CFG.__dict__, "global_context": False,
                                                "base_kernel": base_kernel,
                                                "local_kernel": local_kernel,
                                                "dilations": (1, 1)})).eval()
    assert not hasattr(local, "nonlocal_block")   # no parameter DDP would find unused

    def cas0_after_changing(t: int) -> torch.Tensor:
        moved = x.clone()
        moved[0, t] += 5.0
        return local(moved, mask).cas[0, 0]

    torch.testing.assert_close(local(x, mask).cas[0, 0], cas0_after_changing(reach + 1))
    assert not torch.allclose(local(x, mask).cas[0, 0], cas0_after_changing(reach))
    net = make_net()               # the paper's: the non-local block mixes the whole video
    far = x.clone()
    far[0, 10] += 5.0
    assert not torch.allclose(net(x, mask).cas[0, 0], net(far, mask).cas[0, 0])


def test_padding_values_do_not_leak():
    net = make_net()
    x, mask = pad_batch([np.ones((5, 6), np.float32), np.ones((2, 6), np.float32)])
    noisy = x.clone()
    noisy[1, 2:] = 1e3  # garbage in the padded part
    a, b = net(x, mask), net(noisy, mask)
    torch.testing.assert_close(a.video_logits, b.video_logits)
    torch.testing.assert_close(a.cas[1, :2], b.cas[1, :2])


def test_video_logits_are_attention_pooled_cas():
    net = make_net()
    x, mask = pad_batch([np.random.default_rng(1).standard_normal((9, 6)).astype(np.float32)])
    out = net(x, mask)
    expected = (out.attention[0, :, None] * out.cas[0]).sum(0)
    torch.testing.assert_close(out.video_logits[0], expected)


def test_without_agnostic_attention_p_is_the_mean_of_the_cas_on_a_ragged_batch():
    """model.agnostic_attention=false (the ablation): no class-agnostic branch, S = 1/T over
    each video's real snippets, p = the masked mean of O; every parameter gets a gradient
    (DDP refuses unused ones) and the class branch is the same network as with S."""
    from acl_dist.config import RunConfig
    from acl_dist.errors import ConfigError

    cfg = ModelConfig(**{**CFG.__dict__, "global_context": False, "agnostic_attention": False})
    torch.manual_seed(0)
    net = CoAttentionNet(6, 3, cfg)
    assert not any(n.startswith("agnostic") for n, _ in net.named_parameters())
    torch.manual_seed(0)
    with_s = CoAttentionNet(6, 3, ModelConfig(**{**cfg.__dict__, "agnostic_attention": True}))
    shared = {n for n, _ in net.named_parameters()}
    assert shared < {n for n, _ in with_s.named_parameters()}
    full = with_s.state_dict()      # created first, so the same seed gives the same weights
    assert all(torch.equal(v, full[k]) for k, v in net.state_dict().items())
    rng = np.random.default_rng(3)
    x, mask = pad_batch([rng.standard_normal((t, 6)).astype(np.float32) for t in (5, 2, 8)])
    out = net.eval()(x, mask)
    lengths = mask.sum(1, keepdim=True).float()
    torch.testing.assert_close(out.attention, mask.float() / lengths)
    torch.testing.assert_close(out.video_logits, out.cas.sum(1) / lengths)
    net.train()(x, mask).video_logits.sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    with pytest.raises(ConfigError, match="weak mode only"):
        RunConfig(mode="unsupervised", model=cfg)
    from acl_dist.config import LocalizeConfig, LossConfig
    with pytest.raises(ConfigError, match="sep_attention=agnostic"):
        RunConfig(mode="weak", model=cfg, loss=LossConfig(sep_attention="agnostic"))
    with pytest.raises(ConfigError, match="cas_attention"):
        RunConfig(mode="weak", model=cfg, localize=LocalizeConfig(signal="cas_attention"))
    RunConfig(mode="weak", model=cfg)
    with pytest.raises(ConfigError, match="agnostic_global"):
        ModelConfig(agnostic_global=True, agnostic_attention=False)


def test_masked_softmax_and_shape_errors():
    logits = torch.tensor([[1.0, 2.0, 50.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [False, False, False]])
    p = masked_softmax(logits, mask)
    torch.testing.assert_close(p[0], torch.tensor([1 / (1 + np.e), np.e / (1 + np.e), 0.0]))
    assert p[1].abs().sum() == 0  # no valid entry -> zeros, not NaN
    with pytest.raises(ValueError, match=r"expected \(B, T, 6\)"):
        make_net()(torch.zeros(1, 4, 5), torch.ones(1, 4, dtype=torch.bool))


def test_channel_dropout_in_training_only():
    net = make_net()
    x, mask = pad_batch([np.ones((6, 6), np.float32)])
    net.train()
    torch.manual_seed(0)
    h = net.dropout(x.transpose(1, 2))
    # whole channels are zeroed at every time step (the same channels)
    zeroed = (h[0] == 0).all(dim=1)
    assert zeroed.any() and ((h[0] == 0).any(dim=1) == zeroed).all()
    net.eval()
    torch.testing.assert_close(net.dropout(x.transpose(1, 2)), x.transpose(1, 2))


def test_pad_batch_keeps_the_stored_dtype_until_the_device_and_crops():
    import numpy as np

    from acl_dist.model import pad_batch

    a = np.arange(6, dtype=np.float16).reshape(3, 2)
    b = np.ones((1, 2), dtype=np.float16)
    x, mask = pad_batch([a, b], device="cpu")
    assert x.dtype == torch.float32 and x.shape == (2, 3, 2)
    torch.testing.assert_close(x[0], torch.tensor(a, dtype=torch.float32))
    assert x[1, 1:].abs().sum() == 0 and mask.tolist() == [[True] * 3, [True, False, False]]
    # a fixed length crops longer videos (and the mask says how much is real)
    x, mask = pad_batch([a, b], max_len=2)
    assert x.shape == (2, 2, 2) and mask.tolist() == [[True, True], [True, False]]
