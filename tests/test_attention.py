"""The attention entry point: same result as PyTorch's default dispatch in every precision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from robodream.models.attention import scaled_dot_product_attention


@pytest.mark.parametrize("masked", [False, True])
def test_matches_default_dispatch_fp32_bf16_and_autocast(masked):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 17, 12, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.ones(17, 17, dtype=torch.bool).tril() if masked else None
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(scaled_dot_product_attention(q, k, v, mask), ref)
    # bf16 inputs: the math backend computes the scores in float32, so it is as close to the
    # float32 result as the fused kernel is (both only see bf16-rounded inputs).
    qb, kb, vb = (t.detach().bfloat16().requires_grad_(True) for t in (q, k, v))
    out = scaled_dot_product_attention(qb, kb, vb, mask)
    fused = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).abs().max() <= (fused.float() - ref).abs().max() + 1e-2
    out.float().sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (qb, kb, vb))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # float32 inputs under autocast
        auto = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(auto.float(), ref, atol=3e-2, rtol=3e-2)
