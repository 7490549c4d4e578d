"""3D Gaussian splatting: a differentiable rasteriser for any device, scene reconstruction, PLY I/O.

Public API::

    rasterize(means, quats, scales, opacities, colors, viewmats, Ks, width, height, ...)
        -> RasterOutput(rgb (C, H, W, 3), depth (C, H, W), alpha (C, H, W), info)
    GaussianParams                      raw (optimisable) parameters; .render(viewmats, Ks, W, H)
    save_ply(path, g) / load_ply(path)  standard 3DGS .ply files
    robodream.gaussians.reconstruct     ReconstructConfig, reconstruct(cfg, out), load_scene(run)
    robodream.gaussians.bench           bench_rasterizer(...)

Conventions: OpenCV camera frame (x right, y down, z forward), metres, pixel centres at
+0.5, quaternions (w, x, y, z) — see :mod:`robodream.gaussians.rasterizer`.
"""

from robodream.gaussians.ply import PlyFormatError, load_ply, save_ply
from robodream.gaussians.rasterizer import RasterOutput, gsplat_available, rasterize, rasterize_dense
from robodream.gaussians.scene import GaussianParams

__all__ = ["GaussianParams", "PlyFormatError", "RasterOutput", "gsplat_available", "load_ply", "rasterize",
           "rasterize_dense", "save_ply"]
