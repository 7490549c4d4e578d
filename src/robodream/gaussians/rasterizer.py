"""``rasterize``: differentiable 3D Gaussian splatting on any device.

One call, three paths that render the same image:

* ``"tiled"`` (default on CPU, and on CUDA without gsplat): pure PyTorch, 16x16 tiles,
  per-tile depth order, chunked compositing with early termination and a hand-written
  backward (:mod:`robodream.gaussians.tiled`).
* ``"gsplat"`` (default on CUDA when gsplat is installed): gsplat's CUDA kernels
  (:mod:`robodream.gaussians.gsplat_backend`); the inputs are sanitised the same way.
* ``"dense"``: the reference — every Gaussian against every pixel, plain autograd. Slow;
  for tests and the benchmark's baseline.

Model (3D Gaussian Splatting, Kerbl et al. 2023; EWA splatting, Zwicker et al. 2001;
gsplat's ``rasterization`` conventions): see :mod:`robodream.gaussians.projection` for the
projection and truncation, :mod:`robodream.gaussians.tiled` for the compositing rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from robodream.errors import ConfigError
from robodream.gaussians.projection import (
    ALPHA_MAX,
    ALPHA_MIN,
    SIGMA_CUT,
    T_MIN,
    Projected,
    check_inputs,
    project_gaussians,
)
from robodream.gaussians.tiled import composite_tiled

BACKENDS = ("auto", "tiled", "dense", "gsplat")


class RasterOutput(NamedTuple):
    """What :func:`rasterize` returns.

    rgb: (C, H, W, 3) composited colour plus ``(1 - alpha) * background``.
    depth: (C, H, W) expected depth ``sum_i w_i z_i / alpha`` (camera-frame z, metres;
        0 where nothing was drawn) — gsplat's ``"ED"`` mode.
    alpha: (C, H, W) accumulated opacity ``1 - T`` in [0, 1].
    info: ``means2d`` (C, N, 2) projected centres (pixels; call ``.retain_grad()`` on it
        before ``backward`` to get the view-space gradients that densification uses),
        ``radii`` (C, N, 2) truncation box half-widths (px, 0 = culled), ``visible`` (C, N),
        ``depths`` (C, N) camera-frame z (metres), ``backend`` (the path that ran).
    """

    rgb: Tensor
    depth: Tensor
    alpha: Tensor
    info: dict


def gsplat_available() -> bool:
    """True when gsplat can be imported (it is an optional extra: ``pip install robodream[gpu]``).

    Only a missing package means unavailable: a gsplat that is installed but broken (another
    CUDA, a failed build) raises its own error instead of silently falling back to the slow
    path. Every :class:`RasterOutput` says which path ran in ``info["backend"]``.
    """
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def rasterize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
              viewmats: Tensor, Ks: Tensor, width: int, height: int, *, background: Tensor | None = None,
              sh_degree: int | None = None, near_plane: float = 0.01, far_plane: float = 1e10,
              eps2d: float = 0.3, tile_size: int = 16, backend: str = "auto", chunk: int | None = None) -> RasterOutput:
    """Render N 3D Gaussians into C pinhole cameras, differentiably in all Gaussian parameters.

    Args:
        means: (N, 3) centres in the world frame, metres.
        quats: (N, 4) rotations as quaternions (w, x, y, z); normalised internally.
        scales: (N, 3) standard deviations along the Gaussian's axes, metres (activated,
            not log-scales).
        opacities: (N,) in [0, 1] (activated, not logits); clamped to [0, 1].
        colors: (N, 3) RGB in [0, 1] (used as is), or (N, K, 3) real SH coefficients with
            K = (d + 1)^2, d in 0..3, evaluated towards each camera and mapped to
            ``max(SH + 0.5, 0)`` (3DGS convention).
        viewmats: (C, 4, 4) world-to-camera transforms, OpenCV camera frame (x right,
            y down, z forward), metres — as :func:`robodream.envs.cameras.camera_matrices`.
        Ks: (C, 3, 3) pinhole intrinsics in pixels; pixel (u, v) has its centre at
            (u + 0.5, v + 0.5).
        width, height: image size in pixels.
        background: (3,) or (C, 3) colour behind the Gaussians (default black); differentiable.
        sh_degree: evaluate SH only up to this degree (default: all bands of ``colors``).
        near_plane, far_plane: Gaussians whose centre depth is outside this range (metres)
            are culled — points behind the camera included.
        eps2d: low-pass filter added to the 2D covariance, px^2 (3DGS: 0.3).
        tile_size: tile side in pixels (16).
        backend: ``"auto"`` (gsplat on CUDA when installed, else ``"tiled"``), ``"tiled"``,
            ``"dense"`` or ``"gsplat"``.
        chunk: Gaussians per tile composited per step by the tiled path (speed only;
            default ``2 * tile_size``, the fastest measured on CPU).

    Returns:
        :class:`RasterOutput` ``(rgb (C, H, W, 3), depth (C, H, W), alpha (C, H, W), info)``.

    Bad input: see :mod:`robodream.gaussians.projection` — NaN/inf Gaussians are dropped with
    zero gradient, zero scales and zero or unnormalised quaternions are valid, scales are
    clamped to 1e6 m, points behind the camera are culled, N = 0 renders the background.
    Never NaN outputs or gradients (the ``"gsplat"`` path inherits gsplat's own handling of
    extreme values beyond the same sanitising).

    Sources: 3D Gaussian Splatting (Kerbl et al., SIGGRAPH 2023), EWA splatting (Zwicker et
    al. 2001), gsplat's ``rasterization`` (Ye et al. 2024) for argument conventions.

    Raises:
        ConfigError: wrong shapes, Gaussian parameters of mixed dtype/device, non-finite
            cameras, a bad tile size, chunk, eps2d or depth range, unknown backend, or
            ``"gsplat"`` requested where it cannot run (not installed or tensors not on CUDA).
    """
    check_inputs(means, quats, scales, opacities, colors, viewmats, Ks, width, height)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown rasteriser backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if tile_size < 1 or (chunk is not None and chunk < 1) or not eps2d >= 0.0 or not 0.0 <= near_plane < far_plane:
        raise ConfigError(f"need tile_size >= 1, chunk >= 1, eps2d >= 0 and 0 <= near_plane < far_plane; got "
                          f"tile_size={tile_size}, chunk={chunk}, eps2d={eps2d}, near/far={near_plane}/{far_plane}")
    viewmats, Ks = viewmats.to(means), Ks.to(means)  # the Gaussians' dtype and device
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and gsplat_available() else "tiled"
    C = viewmats.shape[0]
    bg = _background(background, C, means)
    if backend == "gsplat":
        from robodream.gaussians.gsplat_backend import rasterize_gsplat

        return rasterize_gsplat(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                                background=bg, sh_degree=sh_degree, near_plane=near_plane,
                                far_plane=far_plane, eps2d=eps2d, tile_size=tile_size)
    p = project_gaussians(means, quats, scales, opacities, colors, viewmats, Ks, width, height,
                          near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, sh_degree=sh_degree)
    if backend == "dense":
        rgb, depth_acc, alpha = composite_dense(p, bg, width, height)
    else:
        rgb, depth_acc, alpha = composite_tiled(p, bg, width, height, tile_size=tile_size,
                                                chunk=chunk or 2 * tile_size)
    depth = depth_acc / alpha.clamp_min(1e-10)
    info = {"means2d": p.means2d, "radii": p.radii, "visible": p.visible, "depths": p.depths, "backend": backend}
    return RasterOutput(rgb, depth, alpha, info)


def rasterize_batched(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                      viewmats: Tensor, Ks: Tensor, width: int, height: int, *, background: Tensor | None = None,
                      near_plane: float = 0.01, far_plane: float = 1e10, eps2d: float = 0.3, tile_size: int = 16,
                      backend: str = "auto") -> RasterOutput:
    """Render B scenes of N Gaussians each into C cameras per scene, in one compositing pass.

    Each scene is projected into its own cameras and the B x C projections are composited
    together as B * C cameras (a camera only ever sees its own scene), so the cost is that
    of one :func:`rasterize` call over B * C cameras of N Gaussians — not B calls.

    Args:
        means (B, N, 3), quats (B, N, 4), scales (B, N, 3), opacities (B, N), colors (B, N, 3):
            as :func:`rasterize`, one set per scene (RGB colours only, no SH).
        viewmats: (C, 4, 4) shared by every scene, or (B, C, 4, 4) per scene.
        Ks: (C, 3, 3) or (B, C, 3, 3), pixels.
        background: (3,), or (B, C, 3) per scene and camera.
        Other keywords as :func:`rasterize` (``"gsplat"`` falls back to one call per scene).

    Returns:
        :class:`RasterOutput` with rgb (B, C, H, W, 3), depth (B, C, H, W), alpha (B, C, H, W);
        ``info`` holds ``backend``.

    Raises:
        ConfigError: shapes that do not match the above, or as :func:`rasterize`.
    """
    if means.dim() != 3 or means.shape[-1] != 3:
        raise ConfigError(f"means must be (B, N, 3), got {tuple(means.shape)}")
    B, N = means.shape[:2]
    if viewmats.dim() == 3:
        viewmats = viewmats[None].expand(B, *viewmats.shape)
    if Ks.dim() == 3:
        Ks = Ks[None].expand(B, *Ks.shape)
    if viewmats.dim() != 4 or viewmats.shape[0] != B or Ks.shape[:2] != viewmats.shape[:2]:
        raise ConfigError(f"viewmats must be (C, 4, 4) or (B, C, 4, 4) and Ks (C, 3, 3) or (B, C, 3, 3) with "
                          f"B = {B}; got {tuple(viewmats.shape)} and {tuple(Ks.shape)}")
    C = viewmats.shape[1]
    for b in range(B):
        check_inputs(means[b], quats[b], scales[b], opacities[b], colors[b], viewmats[b], Ks[b], width, height)
    if colors.dim() != 3:
        raise ConfigError(f"rasterize_batched takes RGB colours (B, N, 3), got {tuple(colors.shape)}")
    if backend not in BACKENDS:
        raise ConfigError(f"unknown rasteriser backend {backend!r}; choose from {', '.join(BACKENDS)}")
    viewmats, Ks = viewmats.to(means), Ks.to(means)
    bg = None if background is None else torch.as_tensor(background, dtype=means.dtype, device=means.device)
    if bg is not None and bg.dim() == 3:
        if bg.shape != (B, C, 3):
            raise ConfigError(f"background must be (3,) or (B, C, 3) = ({B}, {C}, 3), got {tuple(bg.shape)}")
        bg = bg.reshape(B * C, 3)
    if backend == "auto":
        backend = "gsplat" if means.is_cuda and gsplat_available() else "tiled"
    if backend == "gsplat":  # gsplat batches its own way; one call per scene keeps this path simple
        outs = [rasterize(means[b], quats[b], scales[b], opacities[b], colors[b], viewmats[b], Ks[b], width, height,
                          background=None if bg is None else (bg if bg.dim() == 1 else bg[b * C:(b + 1) * C]),
                          near_plane=near_plane, far_plane=far_plane, eps2d=eps2d, tile_size=tile_size,
                          backend="gsplat") for b in range(B)]
        return RasterOutput(torch.stack([o.rgb for o in outs]), torch.stack([o.depth for o in outs]),
                            torch.stack([o.alpha for o in outs]), {"backend": "gsplat"})
    ps = [project_gaussians(means[b], quats[b], scales[b], opacities[b], colors[b], viewmats[b], Ks[b], width,
                            height, near_plane=near_plane, far_plane=far_plane, eps2d=eps2d) for b in range(B)]
    p = Projected(**{f: torch.cat([getattr(q, f) for q in ps]) for f in Projected.__dataclass_fields__})
    bgt = _background(bg, B * C, means)
    if backend == "dense":
        rgb, depth_acc, alpha = composite_dense(p, bgt, width, height)
    else:
        rgb, depth_acc, alpha = composite_tiled(p, bgt, width, height, tile_size=tile_size, chunk=2 * tile_size)
    depth = depth_acc / alpha.clamp_min(1e-10)
    return RasterOutput(rgb.reshape(B, C, height, width, 3), depth.reshape(B, C, height, width),
                        alpha.reshape(B, C, height, width), {"backend": backend})


def rasterize_dense(*args, **kwargs) -> RasterOutput:
    """:func:`rasterize` with ``backend="dense"`` (the reference implementation)."""
    kwargs["backend"] = "dense"
    return rasterize(*args, **kwargs)


def _background(background: Tensor | None, C: int, like: Tensor) -> Tensor:
    if background is None:
        return like.new_zeros(C, 3)
    bg = torch.as_tensor(background, dtype=like.dtype, device=like.device)
    if bg.shape == (3,):
        return bg[None].expand(C, 3)
    if bg.shape != (C, 3):
        raise ConfigError(f"background must be (3,) or (C, 3) = ({C}, 3), got {tuple(bg.shape)}")
    return bg


def composite_dense(p: Projected, background: Tensor, width: int, height: int,
                    pixel_chunk: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Reference compositing: every visible Gaussian against every pixel, in global depth order.

    Same formation rule as the tiled path (module docstring of
    :mod:`robodream.gaussians.tiled`), written as plainly as possible with autograd.
    ``pixel_chunk`` bounds memory by rendering that many pixels at a time under
    activation checkpointing (used by the benchmark for large images).

    Returns rgb (C, H, W, 3), depth_acc (C, H, W) = sum_i w_i z_i, alpha (C, H, W).
    """
    C, N = p.depths.shape
    dev, dt = p.depths.device, p.means2d.dtype
    v, u = torch.meshgrid(torch.arange(height, device=dev, dtype=dt), torch.arange(width, device=dev, dtype=dt),
                          indexing="ij")
    pix = torch.stack([u, v], -1).reshape(-1, 2) + 0.5  # (P, 2) pixel centres
    outs = []
    for c in range(C):
        vis = p.visible[c].nonzero().squeeze(1)  # culled Gaussians take no part (zero gradient, never NaN)
        order = vis[torch.sort(p.depths[c, vis].detach(), stable=True).indices]  # (Nv,) front to back
        m2, con, op = p.means2d[c, order], p.conics[c, order], p.opacities[c, order]  # (N, 2), (N, 3), (N,)
        feat = torch.cat([p.colors[c, order], p.depths[c, order, None]], -1)  # (N, 4)
        fn = lambda px, m2=m2, con=con, op=op, feat=feat: _dense_pixels(px, m2, con, op, feat)  # noqa: E731
        if pixel_chunk is None or pixel_chunk >= pix.shape[0]:
            out = fn(pix)
        else:
            from torch.utils.checkpoint import checkpoint

            out = torch.cat([checkpoint(fn, pix[i:i + pixel_chunk], use_reentrant=False)
                             for i in range(0, pix.shape[0], pixel_chunk)])
        outs.append(out)  # (P, 5): rgb, depth_acc, T
    out = torch.stack(outs).reshape(C, height, width, 5)
    T = out[..., 4]
    rgb = out[..., :3] + T[..., None] * background[:, None, None, :]
    return rgb, out[..., 3], 1.0 - T


def _dense_pixels(pix: Tensor, m2: Tensor, con: Tensor, op: Tensor, feat: Tensor) -> Tensor:
    """Composite all (depth-sorted) Gaussians at pixel centres ``pix (P, 2)`` -> (P, 5)."""
    dx = m2[:, None, 0] - pix[None, :, 0]  # (N, P)
    dy = m2[:, None, 1] - pix[None, :, 1]
    sigma = 0.5 * (con[:, None, 0] * dx * dx + con[:, None, 2] * dy * dy) + con[:, None, 1] * dx * dy
    raw = op[:, None] * torch.exp(-sigma)
    alpha = torch.where((sigma <= SIGMA_CUT) & (raw >= ALPHA_MIN), raw.clamp_max(ALPHA_MAX), 0.0)
    keep = torch.cumprod(1.0 - alpha, dim=0) > T_MIN  # stop before saturating
    alpha = torch.where(keep, alpha, 0.0)
    T_incl = torch.cumprod(1.0 - alpha, dim=0)  # (N, P)
    T_excl = torch.cat([torch.ones_like(T_incl[:1]), T_incl[:-1]])
    w = alpha * T_excl  # (N, P)
    T_final = T_incl[-1] if T_incl.shape[0] else torch.ones_like(pix[:, 0])
    return torch.cat([w.T @ feat, T_final[:, None]], -1)
