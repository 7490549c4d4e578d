"""Shared transformer blocks: fused modulated norm, attention with a cached prefix."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from robodream.models.transformer import Attention, modulated_norm


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
