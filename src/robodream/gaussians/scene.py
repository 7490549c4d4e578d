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
        """Number of Gaussians N."""
        return self.means.shape[0]

    @property
    def sh_degree(self) -> int:
        """SH degree d (0..3) of ``sh`` (K = (d + 1)^2)."""
        return sh_degree_from_bases(self.sh.shape[1])

    def tensors(self) -> dict[str, Tensor]:
        """The five fields by name (the tensors themselves, not copies)."""
        return {f: getattr(self, f) for f in self.FIELDS}

    def detach(self) -> GaussianParams:
        """A copy cut from the autograd graph."""
        return GaussianParams(**{k: v.detach().clone() for k, v in self.tensors().items()})

    def to(self, device) -> GaussianParams:
        """The same Gaussians on ``device``."""
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


def _voxel_ids(points: np.ndarray, voxel: np.ndarray) -> np.ndarray:
    """One integer per point that is equal exactly for points in the same voxel (same size too)."""
    idx = np.floor(points / voxel[:, None]).astype(np.int64)  # (N, 3)
    level = np.round(np.log2(voxel) * 8).astype(np.int64)
    cols = [idx[:, 0], idx[:, 1], idx[:, 2], level]
    cols = [c - c.min() for c in cols]
    spans = [int(c.max()) + 1 for c in cols]
    if np.prod([float(x) for x in spans]) < 2.0**62:  # exact mixed-radix packing into one int64
        out = np.zeros(points.shape[0], dtype=np.int64)
        for c, span in zip(cols, spans):
            out = out * span + c
        return out
    return np.unique(np.stack(cols, 1), axis=0, return_inverse=True)[1].reshape(-1)


def voxel_downsample(points: np.ndarray, colors: np.ndarray, voxel: float | np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One point per occupied voxel: mean position and colour, and the voxel size (metres).

    ``voxel`` is a side length, or one per point (N,) taking a few distinct values (a level
    of detail per point); points are only merged with points of the same voxel size.
    """
    v = np.broadcast_to(np.asarray(voxel, dtype=np.float64), points.shape[:1])
    _, inv, counts = np.unique(_voxel_ids(points, v), return_inverse=True, return_counts=True)
    data = np.concatenate([points, colors, v[:, None]], axis=1)  # (N, 7)
    out = np.stack([np.bincount(inv, weights=data[:, j], minlength=counts.shape[0]) for j in range(7)], 1)
    out /= counts[:, None]
    return out[:, :3], out[:, 3:6], out[:, 6]


def downsample_to(points: np.ndarray, colors: np.ndarray, target: int, footprint: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel-downsample to about ``target`` points, finer where pixels are finer.

    ``footprint`` (N,) is each point's pixel size in metres (depth / focal length in the view
    it came from); voxel sizes are ``base * 2^k`` with ``k = round(log2(footprint / min))``,
    so far surfaces (seen coarsely) get coarse voxels and near ones fine voxels; ``base`` is
    bisected to hit ``target``. Returns points, colours and each point's voxel size (metres),
    the typical spacing of its neighbours.
    """
    fp = np.ones(points.shape[0]) if footprint is None else np.asarray(footprint, dtype=np.float64)
    level = 2.0 ** np.round(np.log2(fp / fp.min()))  # (N,) relative voxel size, powers of two
    lo, hi = 1e-4 / level.max(), float(np.ptp(points, axis=0).max()) + 1e-3
    base = hi
    for _ in range(24):
        mid = np.sqrt(lo * hi)
        n = np.unique(_voxel_ids(points, mid * level)).shape[0]
        if n > target:
            lo = mid
        else:
            hi = base = mid
        if abs(n - target) < 0.03 * target:
            break
    return voxel_downsample(points, colors, base * level)
