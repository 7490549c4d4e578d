"""A set of 3D Gaussians as optimised (raw parameters) and as rendered (activated).

Parameterisation of 3D Gaussian Splatting (Kerbl et al. 2023; gsplat's simple trainer):
positions in metres, quaternions (w, x, y, z) left unnormalised, log standard deviations,
opacity logits, and real SH coefficients per colour channel. :meth:`GaussianParams.render`
activates them (``exp``, ``sigmoid``) and calls :func:`robodream.gaussians.rasterizer.rasterize`.
This is also exactly what a standard 3DGS ``.ply`` file stores (:mod:`robodream.gaussians.ply`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from robodream.errors import ConfigError
from robodream.gaussians.rasterizer import RasterOutput, rasterize
from robodream.gaussians.sh import num_sh_bases, rgb_to_sh, sh_degree_from_bases


@dataclass
class GaussianParams:
    """Raw parameters of N Gaussians.

    means: (N, 3) world positions, metres.
    quats: (N, 4) rotations (w, x, y, z), any length.
    log_scales: (N, 3) log standard deviations (metres).
    opacity_logits: (N,) logit of the opacity.
    sh: (N, K, 3) SH coefficients, K = (d + 1)^2; ``sh[:, 0]`` is the DC term (colour = 0.28209 dc + 0.5).
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh: Tensor

    FIELDS = ("means", "quats", "log_scales", "opacity_logits", "sh")

    def __post_init__(self) -> None:
        n = self.means.shape[0]
        shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,)}
        for name, shape in shapes.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ConfigError(f"GaussianParams.{name} must be {shape}, got {tuple(getattr(self, name).shape)}")
        if self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ConfigError(f"GaussianParams.sh must be (N, K, 3), got {tuple(self.sh.shape)}")
        sh_degree_from_bases(self.sh.shape[1])

    @property
    def n(self) -> int:
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        return sh_degree_from_bases(self.sh.shape[1])

    def tensors(self) -> dict[str, Tensor]:
        return {f: getattr(self, f) for f in self.FIELDS}

    def detach(self) -> GaussianParams:
        return GaussianParams(**{k: v.detach().clone() for k, v in self.tensors().items()})

    def to(self, device) -> GaussianParams:
        return GaussianParams(**{k: v.to(device) for k, v in self.tensors().items()})

    def render(self, viewmats: Tensor, Ks: Tensor, width: int, height: int, **kw) -> RasterOutput:
        """Rasterise (see :func:`robodream.gaussians.rasterizer.rasterize` for the keywords)."""
        return rasterize(self.means, self.quats, torch.exp(self.log_scales), torch.sigmoid(self.opacity_logits),
                         self.sh, viewmats, Ks, width, height, **kw)


def from_points(points: np.ndarray | Tensor, colors: np.ndarray | Tensor, scale: float | np.ndarray | Tensor,
                *, sh_degree: int = 0, opacity: float = 0.1) -> GaussianParams:
    """Isotropic Gaussians on points (N, 3) with RGB colours (N, 3) in [0, 1] (3DGS initialisation).

    ``scale`` (metres, scalar or (N,)) is the standard deviation; higher SH bands start at 0.
    """
    pts = torch.as_tensor(np.asarray(points), dtype=torch.float32)
    col = torch.as_tensor(np.asarray(colors), dtype=torch.float32).clamp(0.0, 1.0)
    n = pts.shape[0]
    s = torch.as_tensor(np.asarray(scale), dtype=torch.float32).expand(n) if np.ndim(scale) else torch.full((n,), float(scale))
    sh = torch.zeros(n, num_sh_bases(sh_degree), 3)
    sh[:, 0] = rgb_to_sh(col)
    quats = torch.zeros(n, 4)
    quats[:, 0] = 1.0
    logit = float(np.log(opacity / (1.0 - opacity)))
    return GaussianParams(means=pts.clone(), quats=quats, log_scales=torch.log(s.clamp_min(1e-6))[:, None].repeat(1, 3),
                          opacity_logits=torch.full((n,), logit), sh=sh)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """One point per occupied voxel of side ``voxel`` (metres): mean position and colour."""
    keys = np.floor(points / voxel).astype(np.int64)
    _, inv, counts = np.unique(keys, axis=0, return_inverse=True, return_counts=True)
    inv = inv.reshape(-1)
    pts = np.zeros((counts.shape[0], 3))
    col = np.zeros((counts.shape[0], 3))
    np.add.at(pts, inv, points)
    np.add.at(col, inv, colors)
    return pts / counts[:, None], col / counts[:, None]


def downsample_to(points: np.ndarray, colors: np.ndarray, target: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Voxel-downsample to about ``target`` points (bisection on the voxel size, metres).

    Returns points, colours and the voxel size, which is also the typical spacing of the result.
    """
    if points.shape[0] <= target:
        return points, colors, 1e-3
    lo, hi = 1e-4, float(np.ptp(points, axis=0).max()) + 1e-3
    best = None
    for _ in range(18):
        mid = np.sqrt(lo * hi)
        n = np.unique(np.floor(points / mid).astype(np.int64), axis=0).shape[0]
        if n > target:
            lo = mid
        else:
            hi, best = mid, mid
        if abs(n - target) < 0.05 * target:
            break
    voxel = best if best is not None else hi
    p, c = voxel_downsample(points, colors, voxel)
    return p, c, voxel
