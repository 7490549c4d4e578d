"""Scaled-dot-product attention for the video world model's kernels, with the backend measured fastest.

On a CPU with bf16/fp16 inputs (training runs under bf16 autocast), PyTorch 2.13's fused
(flash) CPU kernel is slower forward+backward than its own math backend at the world model's
clip, at equal accuracy (the math backend computes the scores in float32), so the world
model's kernels use the math backend there. The policy's masked attention gained nothing
from it, so :class:`~robodream.models.transformer.Attention` keeps the default dispatch, as do
float32 CPU inference and CUDA. Measurements: benchmarks/RESULTS.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

_LOW_PRECISION = (torch.bfloat16, torch.float16)


def _runs_low_precision(q: torch.Tensor) -> bool:
    if q.dtype in _LOW_PRECISION:
        return True
    dev = q.device.type
    return torch.is_autocast_enabled(dev) and torch.get_autocast_dtype(dev) in _LOW_PRECISION


def scaled_dot_product_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` (q (..., Lq, hd), k/v (..., Lk, hd), boolean
    ``attn_mask`` broadcastable to (..., Lq, Lk), True = attend) -> (..., Lq, hd), using
    PyTorch's math backend for low-precision CPU inputs (see the module docstring)."""
    if q.device.type == "cpu" and _runs_low_precision(q):
        with sdpa_kernel(SDPBackend.MATH):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
