"""Statistics for evaluation reports, and the image metrics (PSNR, SSIM) every system uses."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def wilson_interval(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (default 95%); (0, 1) for n = 0.

    Wilson, "Probable inference, the law of succession, and statistical inference", JASA 1927.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def percentile(values, q: float) -> float | None:
    """q-th percentile (0-100) of a sequence, or None when empty."""
    return float(np.percentile(np.asarray(values, dtype=np.float64), q)) if len(values) else None


def kendall_tau(pred, true) -> float | None:
    """Kendall's rank correlation (tau-b, ties accounted) of two equally long sequences, in [-1, 1].

    The value-quality metric of GigaBrain-0.5M* (RAMP, arXiv 2602.12099): predicted values vs
    Monte-Carlo returns. None where it is undefined (fewer than two pairs, or a constant input).
    """
    from scipy.stats import kendalltau

    x, y = np.asarray(pred, dtype=np.float64).reshape(-1), np.asarray(true, dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ValueError(f"kendall_tau needs sequences of equal length, got {len(x)} and {len(y)}")
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(kendalltau(x, y).statistic)


# ----------------------------------------------------------------------------- image metrics
# The one definition of PSNR and SSIM in robodream (tokenizer, world models, Gaussian
# splatting alike): images in [0, 1]; PSNR is computed per image and then averaged.

#: Mean squared errors are clamped here, so identical images score 100 dB, not infinity.
MIN_MSE = 1e-10


def psnr_per_image(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of images in [0, 1], per image: (B, ...) -> (B,).

    Any layout ((B, 3, H, W) or (B, H, W, 3)); computed in float32 without gradient (a metric,
    not a loss); the mean squared error is clamped at :data:`MIN_MSE` (identical images: 100 dB).
    """
    mse = (a.detach().float() - b.detach().float()).pow(2).flatten(1).mean(1).clamp_min(MIN_MSE)
    return 10.0 * torch.log10(1.0 / mse)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of :func:`psnr_per_image` (dB) of images (B, ...) in [0, 1]."""
    return float(psnr_per_image(a, b).mean())


def _gaussian_window(size: int, sigma: float, device, dtype) -> torch.Tensor:
    x = torch.arange(size, device=device, dtype=dtype) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM of image batches ``a``, ``b`` (B, H, W, 3) in [0, 1]; differentiable.

    Wang et al. 2004 as used by 3D Gaussian Splatting (``utils/loss_utils.py``): 11x11
    Gaussian window with sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding, mean over
    pixels, channels and the batch.
    """
    x, y = a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)  # (B, 3, H, W)
    ch = x.shape[1]
    g = _gaussian_window(window, sigma, x.device, x.dtype)
    gx = g.view(1, 1, 1, -1).repeat(5 * ch, 1, 1, 1)  # separable Gaussian filter, depthwise
    gy = g.view(1, 1, -1, 1).repeat(5 * ch, 1, 1, 1)
    pad = window // 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, gx, padding=(0, pad), groups=5 * ch)
        return F.conv2d(t, gy, padding=(pad, 0), groups=5 * ch)

    stats = blur(torch.cat([x, y, x * x, y * y, x * y], 1))  # (B, 5*3, H, W) in one pass
    mu_x, mu_y, xx, yy, xy = stats.split(ch, 1)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.mean()
