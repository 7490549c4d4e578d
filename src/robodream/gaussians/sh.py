"""Real spherical harmonics (degrees 0 to 3) for view-dependent Gaussian colour.

Follows the convention of 3D Gaussian Splatting (Kerbl et al. 2023, ``utils/sh_utils.py``
of the reference code) and gsplat's ``spherical_harmonics``: coefficients are stored per
colour channel as ``sh (N, K, 3)`` with ``K = (degree + 1) ** 2`` in the order
``l = 0; l = 1 (m = -1, 0, 1); l = 2; l = 3``; a colour is ``max(SH(dir) + 0.5, 0)`` where
``dir`` is the unit vector from the camera centre to the Gaussian centre (world frame).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from robodream.errors import ConfigError

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)
MAX_SH_DEGREE = 3


def num_sh_bases(degree: int) -> int:
    """Number of coefficients K per channel for an SH degree (1, 4, 9, 16 for degrees 0..3)."""
    return (degree + 1) ** 2


def sh_degree_from_bases(k: int) -> int:
    """Inverse of :func:`num_sh_bases`.

    Raises:
        ConfigError: ``k`` is not 1, 4, 9 or 16.
    """
    d = math.isqrt(k) - 1
    if k < 1 or (d + 1) ** 2 != k or d > MAX_SH_DEGREE:
        raise ConfigError(f"SH coefficients must have K in (1, 4, 9, 16) bases per channel, got K={k}")
    return d


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis values for unit directions ``dirs (..., 3)`` -> ``(..., (degree + 1) ** 2)``."""
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ConfigError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, SH_C0)]
    if degree >= 1:
        out += [-SH_C1 * y, SH_C1 * z, -SH_C1 * x]
    if degree >= 2:
        xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
        out += [SH_C2[0] * xy, SH_C2[1] * yz, SH_C2[2] * (2 * zz - xx - yy), SH_C2[3] * xz, SH_C2[4] * (xx - yy)]
    if degree >= 3:
        out += [
            SH_C3[0] * y * (3 * xx - yy),
            SH_C3[1] * xy * z,
            SH_C3[2] * y * (4 * zz - xx - yy),
            SH_C3[3] * z * (2 * zz - 3 * xx - 3 * yy),
            SH_C3[4] * x * (4 * zz - xx - yy),
            SH_C3[5] * z * (xx - yy),
            SH_C3[6] * x * (xx - 3 * yy),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(sh: Tensor, dirs: Tensor, degree: int | None = None) -> Tensor:
    """RGB colour of SH coefficients seen along directions.

    Args:
        sh: (N, K, 3) coefficients, K = (d + 1) ** 2 for some d in 0..3.
        dirs: (C, N, 3) viewing directions (camera centre -> Gaussian centre, world frame);
            normalised here (a zero vector gives the l = 0 term only).
        degree: evaluate only bands up to this degree (<= d); default d. Used for the
            progressive SH schedule of 3DGS training.

    Returns:
        (C, N, 3) colours ``max(SH + 0.5, 0)`` (gsplat / 3DGS convention).

    Raises:
        ConfigError: bad K or degree.
    """
    d_max = sh_degree_from_bases(sh.shape[-2])
    degree = d_max if degree is None else degree
    if degree > d_max:
        raise ConfigError(f"SH degree {degree} requested but coefficients only go to degree {d_max}")
    unit = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    basis = sh_basis(unit, degree)  # (C, N, Kd)
    rgb = (basis[..., None] * sh[None, :, : basis.shape[-1]]).sum(-2)  # (C, N, 3); elementwise beats N tiny GEMMs
    return (rgb + 0.5).clamp_min(0.0)


def rgb_to_sh(rgb: Tensor) -> Tensor:
    """DC coefficient (..., 3) whose colour (degree 0) is ``rgb``."""
    return (rgb - 0.5) / SH_C0


def sh_to_rgb(dc: Tensor) -> Tensor:
    """Colour (..., 3) of a DC coefficient (degree 0)."""
    return dc * SH_C0 + 0.5
