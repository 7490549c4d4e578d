"""Photometric loss of Gaussian splatting (3DGS: L1 + D-SSIM); SSIM is :func:`robodream.eval.metrics.ssim`.

Images are (B, H, W, 3) in [0, 1] (the rasteriser's layout).
"""

from __future__ import annotations

from torch import Tensor

from robodream.eval.metrics import ssim


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float = 0.2) -> Tensor:
    """3DGS training loss ``(1 - lambda) L1 + lambda (1 - SSIM)`` on (B, H, W, 3) images."""
    l1 = (render - target).abs().mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(render, target))
