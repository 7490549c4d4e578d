"""Shared transformer blocks: fused modulated norm, attention with a cached prefix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robodream.models.transformer import AdaLNBlock, Attention, modulated_norm, multi_stream_block


def test_modulated_norm_fast_path_equals_reference():
    x = torch.randn(1, 7, 16)
    shift, scale = torch.randn(1, 1, 16), torch.randn(1, 1, 16)
    ref = F.layer_norm(x, (16,), eps=1e-6) * scale + shift
    torch.testing.assert_close(modulated_norm(x, shift, scale), ref)  # fused single-sample path
    xb = torch.randn(3, 7, 16)
    sb, cb = torch.randn(3, 7, 16), torch.randn(3, 7, 16)
    torch.testing.assert_close(modulated_norm(xb, sb, cb), F.layer_norm(xb, (16,), eps=1e-6) * cb + sb)


def test_attention_with_cached_prefix_equals_full_sequence():
    torch.manual_seed(0)
    attn = Attention(32, 4)
    x = torch.randn(2, 10, 32)
    full, _ = attn(x)
    _, kv = attn(x[:, :6])
    # the last 4 queries see all 10 keys either way
    tail, _ = attn(x[:, 6:], kv_prefix=kv)
    torch.testing.assert_close(tail, full[:, 6:], rtol=1e-5, atol=1e-5)


def test_multi_stream_block_with_copied_weights_equals_one_block():
    """The Mixture-of-Transformers path (separate weights per segment, shared attention) equals
    one block on the concatenated sequence when the segments' weights are copies."""
    torch.manual_seed(0)
    a, b = AdaLNBlock(24, 2), AdaLNBlock(24, 2)
    with torch.no_grad():
        for p in a.parameters():
            p.normal_(0, 0.3)
    b.load_state_dict(a.state_dict())
    xs = [torch.randn(2, n, 24) for n in (3, 4, 5)]
    cond = torch.randn(2, 1, 24)
    mask = torch.rand(12, 7 + 12) > 0.3
    mask[:, 0] = True  # every query attends at least one key
    prefix = (torch.randn(2, 2, 7, 12), torch.randn(2, 2, 7, 12))
    one, kv1 = multi_stream_block([a, a, a], xs, [a.modulate(cond)] * 3, mask=mask, kv_prefix=prefix)
    two, kv2 = multi_stream_block([a, b, a], xs, [a.modulate(cond)] * 3, mask=mask, kv_prefix=prefix)
    for u, v in zip(one + list(kv1), two + list(kv2)):
        torch.testing.assert_close(u, v, rtol=1e-5, atol=1e-5)
