"""gsplat's CUDA kernels behind :func:`robodream.gaussians.rasterizer.rasterize`.

gsplat (nerfstudio-project/gsplat, pinned to 1.5.3 by the ``gpu`` extra) has no CPU
rasteriser; on CUDA it is the fastest path. This module maps robodream's call onto
``gsplat.rasterization`` (``render_mode="RGB+ED"``, ``packed=False``, ``rasterize_mode=
"classic"``) after the same input sanitising as the PyTorch paths (non-finite Gaussians
dropped with zero gradient, zero quaternions -> identity, scales clamped to 1e6 m,
opacities clamped to [0, 1]).

Known, small differences from the PyTorch paths: gsplat bounds each Gaussian by an
opacity-aware box of up to 3.33 sigma and composites it over every pixel of the tiles that
box touches, while robodream truncates at the 3-sigma ellipse per pixel; pixels near a
Gaussian's 3-sigma boundary can differ by up to ``opacity * exp(-4.5)`` (about 0.011) of
that Gaussian's colour. ``tests/test_gaussians_gpu.py`` holds the two close on a GPU.

Untested in CI (no GPU there); import-guarded so CPU installs never need gsplat.
"""

from __future__ import annotations

import torch
from torch import Tensor

from robodream.errors import ConfigError
from robodream.gaussians.projection import MAX_SCALE, sanitize
from robodream.gaussians.sh import sh_degree_from_bases


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     viewmats: Tensor, Ks: Tensor, width: int, height: int, *, background: Tensor,
                     sh_degree: int | None, near_plane: float, far_plane: float, eps2d: float, tile_size: int):
    """Same contract as :func:`robodream.gaussians.rasterizer.rasterize` (``background`` is (C, 3)).

    Raises:
        ConfigError: gsplat is not installed or the tensors are not on a CUDA device.
    """
    from robodream.gaussians.rasterizer import RasterOutput

    if not means.is_cuda:
        raise ConfigError("the gsplat backend needs CUDA tensors; use backend='tiled' on CPU")
    try:
        from gsplat import rasterization
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"the gsplat backend needs gsplat (pip install 'robodream[gpu]'): {e}") from e
    C = viewmats.shape[0]
    means, quats, scales, opacities, colors, finite = sanitize(means, quats, scales, opacities, colors)
    ident = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=quats.dtype, device=quats.device)
    quats = torch.where(quats.norm(dim=-1, keepdim=True) > 1e-12, quats, ident)
    scales = scales.clamp(-MAX_SCALE, MAX_SCALE)
    # Culled Gaussians get zero opacity; gsplat then skips them (opacity < 1/255).
    opacities = torch.where(finite, opacities.clamp(0.0, 1.0), torch.zeros_like(opacities))
    if means.shape[0] == 0:
        rgb = background[:, None, None, :].expand(C, height, width, 3)
        zeros = means.new_zeros(C, height, width)
        empty = means.new_zeros(C, 0)
        return RasterOutput(rgb, zeros, zeros, {"means2d": means.new_zeros(C, 0, 2), "radii": empty[..., None],
                                                "visible": empty.bool(), "depths": empty, "backend": "gsplat"})
    if colors.dim() == 3:
        sh_degree = sh_degree_from_bases(colors.shape[1]) if sh_degree is None else sh_degree
    else:
        sh_degree = None
    render, alphas, meta = rasterization(
        means, quats, scales, opacities, colors, viewmats.to(means.dtype), Ks.to(means.dtype), width, height,
        near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree, packed=False,
        tile_size=tile_size, backgrounds=background, render_mode="RGB+ED", rasterize_mode="classic")
    radii = meta["radii"]
    if radii.dim() == 2:  # gsplat < 1.5 returns one radius per Gaussian
        radii = torch.stack([radii, radii], -1)
    radii = radii.to(means.dtype)
    info = {"means2d": meta["means2d"], "radii": radii, "visible": (radii > 0).all(-1),
            "depths": meta["depths"], "backend": "gsplat"}
    return RasterOutput(render[..., :3], render[..., 3], alphas[..., 0], info)


def rasterize_gsplat_direct(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                            sh_degree=None):
    """gsplat's own ``rasterization`` with no robodream wrapping (benchmark baseline)."""
    from gsplat import rasterization

    return rasterization(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                         sh_degree=sh_degree, packed=False, render_mode="RGB+ED")
