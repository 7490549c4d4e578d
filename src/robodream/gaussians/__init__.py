"""3D Gaussian splatting: a differentiable rasteriser for any device, scene reconstruction, PLY I/O.

Public API::

    rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, ...)
        -> RasterOutput(rgb (C, H, W, 3), depth (C, H, W), alpha (C, H, W), info)
    rasterize_batched(means (B, N, 3), ...)  B scenes in one pass -> rgb (B, C, H, W, 3)
    GaussianParams                      raw (optimisable) parameters; .render(viewmats, Ks, W, H)
    save_ply(path, g) / load_ply(path)  standard 3DGS .ply files
    robodream.gaussians.reconstruct     ReconstructConfig, reconstruct(cfg, out), load_scene(run)
    robodream.gaussians.bench           bench_rasterizer(...)

Conventions: OpenCV camera frame (x right, y down, z forward), metres, pixel centres at
+0.5, quaternions (w, x, y, z) — see :mod:`robodream.gaussians.rasterizer`.

The names above are imported on first use, so that ``robodream``'s command line (which
registers :mod:`robodream.gaussians.cli`) starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_LAZY = {
    "GaussianParams": "robodream.gaussians.scene",
    "PlyFormatError": "robodream.gaussians.ply",
    "load_ply": "robodream.gaussians.ply",
    "save_ply": "robodream.gaussians.ply",
    "RasterOutput": "robodream.gaussians.rasterizer",
    "gsplat_available": "robodream.gaussians.rasterizer",
    "rasterize": "robodream.gaussians.rasterizer",
    "rasterize_batched": "robodream.gaussians.rasterizer",
    "rasterize_dense": "robodream.gaussians.rasterizer",
}

__all__ = ["GaussianParams", "PlyFormatError", "RasterOutput", "gsplat_available", "load_ply", "rasterize",
           "rasterize_batched", "rasterize_dense", "save_ply"]

if TYPE_CHECKING:
    from robodream.gaussians.ply import PlyFormatError, load_ply, save_ply
    from robodream.gaussians.rasterizer import (
        RasterOutput,
        gsplat_available,
        rasterize,
        rasterize_batched,
        rasterize_dense,
    )
    from robodream.gaussians.scene import GaussianParams


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
