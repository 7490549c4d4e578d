"""Photometric losses and image metrics for Gaussian splatting (3DGS: L1 + D-SSIM).

SSIM follows Wang et al. 2004 as used by 3DGS (``utils/loss_utils.py``): 11x11 Gaussian
window with sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding, mean over pixels and channels.
Images are (B, H, W, 3) in [0, 1] (the rasteriser's layout).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def _window(size: int, sigma: float, device, dtype) -> Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: Tensor, b: Tensor, window: int = 11, sigma: float = 1.5) -> Tensor:
    """Mean SSIM of image batches ``a``, ``b`` (B, H, W, 3) in [0, 1]; differentiable."""
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)  # (B, 3, H, W)
    ch = x.shape[1]
    g = _window(window, sigma, x.device, x.dtype)
    gx = g.view(1, 1, 1, -1).repeat(5 * ch, 1, 1, 1)  # separable Gaussian filter, depthwise
    gy = g.view(1, 1, -1, 1).repeat(5 * ch, 1, 1, 1)
    pad = window // 2

    def blur(t: Tensor) -> Tensor:
        t = F.conv2d(t, gx, padding=(0, pad), groups=5 * ch)
        return F.conv2d(t, gy, padding=(pad, 0), groups=5 * ch)

    stats = blur(torch.cat([x, y, x * x, y * y, x * y], 1))  # (B, 5*3, H, W) in one pass
    mu_x, mu_y, xx, yy, xy = stats.split(ch, 1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()


def photometric_loss(render: Tensor, target: Tensor, ssim_lambda: float = 0.2) -> Tensor:
    """3DGS training loss ``(1 - lambda) L1 + lambda (1 - SSIM)`` on (B, H, W, 3) images."""
    l1 = (render - target).abs().mean()
    return (1.0 - ssim_lambda) * l1 + ssim_lambda * (1.0 - ssim(render, target))


def psnr(a: Tensor, b: Tensor) -> float:
    """PSNR in dB of images in [0, 1] (any shape); inf for identical images."""
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else -10.0 * math.log10(mse)
