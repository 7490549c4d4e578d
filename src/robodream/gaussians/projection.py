"""EWA projection of 3D Gaussians into pixel space (shared by every rasteriser path).

Follows 3D Gaussian Splatting (Kerbl et al. 2023, Sec. 4 and the reference CUDA code) and
EWA splatting (Zwicker et al. 2001): a Gaussian with mean ``mu`` and covariance
``Sigma = R S S^T R^T`` is moved to the camera frame (``W Sigma W^T``) and projected with
the Jacobian of the perspective map at its mean, ``Sigma_2d = J W Sigma W^T J^T``, plus a
0.3 px^2 low-pass (``eps2d``). The Jacobian uses the mean clamped to 1.3x the field of
view, as gsplat's ``persp_proj`` does, so that Gaussians far outside the image do not
explode.

Conventions (see :mod:`robodream.envs.cameras`): world-to-camera ``viewmats (C, 4, 4)``
in the OpenCV frame (x right, y down, z forward), metres; pinhole ``Ks (C, 3, 3)`` in
pixels; pixel ``(u, v)`` covers ``[u, u + 1) x [v, v + 1)`` so its centre is
``(u + 0.5, v + 0.5)``. Quaternions are ``(w, x, y, z)`` and need not be unit length.

Each projected Gaussian is truncated where it is invisible anyway: it contributes to a
pixel only if the pixel centre lies inside its 3-sigma ellipse (``sigma <= 4.5`` with
``sigma = 0.5 d^T Sigma_2d^-1 d``) and its alpha ``opacity * exp(-sigma)`` is at least
1/255. The axis-aligned box of that region, :attr:`Projected.radii`, is what tiles cull by.

Degenerate input has defined behaviour, never an exception or a NaN gradient:
non-finite parameters (NaN or inf in any of a Gaussian's mean, quaternion, scale, opacity
or colour) make that Gaussian invisible with zero gradients; a zero quaternion is the
identity rotation; zero scales give a 0.3 px^2 splat; the sign of a scale is ignored and
its magnitude clamped to :data:`MAX_SCALE` (1e6 m; no gradient beyond); opacities are clamped
to [0, 1]; Gaussians whose depth is outside ``(near_plane, far_plane)`` (behind the camera
included) or whose projection is not finite (centres ~1e38 px off-image) are culled.
Culled Gaussians take no part in compositing, so their gradients are exactly zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robodream.errors import ConfigError
from robodream.gaussians.sh import eval_sh

#: Smallest alpha that counts (3DGS, gsplat): 1/255.
ALPHA_MIN = 1.0 / 255.0
#: Largest alpha of one Gaussian at one pixel (3DGS, gsplat).
ALPHA_MAX = 0.99
#: Compositing stops before transmittance would fall to or below this (3DGS, gsplat).
T_MIN = 1e-4
#: Truncation in sigma units: 0.5 * 3^2 (the 3-sigma ellipse).
SIGMA_CUT = 4.5
#: Standard deviations are clamped to this many metres (keeps float32 covariances finite).
MAX_SCALE = 1e6


@dataclass
class Projected:
    """Gaussians projected into C cameras (all tensors indexed ``[camera, gaussian]``).

    means2d: (C, N, 2) pixel coordinates (u, v) of the projected centres.
    conics: (C, N, 3) inverse 2D covariance ``(a, b, c)``; ``sigma = 0.5 (a dx^2 + c dy^2) + b dx dy``.
    depths: (C, N) camera-frame z of the centres, metres.
    opacities: (C, N) in [0, 1]; 0 for culled Gaussians.
    colors: (C, N, 3) RGB after SH evaluation.
    radii: (C, N, 2) half-widths (px) of the box that holds the visible ellipse; 0 when culled. No gradient.
    visible: (C, N) bool, the Gaussian touches at least one pixel centre's box of the image.
    """

    means2d: Tensor
    conics: Tensor
    depths: Tensor
    opacities: Tensor
    colors: Tensor
    radii: Tensor
    visible: Tensor


def quat_to_rotmat(quats: Tensor) -> Tensor:
    """Rotation matrices (N, 3, 3) of quaternions (N, 4) ``(w, x, y, z)``; normalised here, 0 -> identity."""
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return R.reshape(quats.shape[:-1] + (3, 3))


def check_inputs(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                 viewmats: Tensor, Ks: Tensor, width: int, height: int) -> None:
    """Validate shapes, dtypes and image size of a rasteriser call.

    Raises:
        ConfigError: with a one-line description of the first problem found.
    """
    N = means.shape[0] if means.dim() == 2 else -1
    if means.dim() != 2 or means.shape[1] != 3:
        raise ConfigError(f"means must be (N, 3), got {tuple(means.shape)}")
    if quats.shape != (N, 4):
        raise ConfigError(f"quats must be (N, 4) = ({N}, 4), got {tuple(quats.shape)}")
    if scales.shape != (N, 3):
        raise ConfigError(f"scales must be (N, 3) = ({N}, 3), got {tuple(scales.shape)}")
    if opacities.shape != (N,):
        raise ConfigError(f"opacities must be (N,) = ({N},), got {tuple(opacities.shape)}")
    if not (colors.shape == (N, 3) or (colors.dim() == 3 and colors.shape[0] == N and colors.shape[2] == 3)):
        raise ConfigError(f"colors must be (N, 3) RGB or (N, K, 3) SH coefficients, got {tuple(colors.shape)}")
    if viewmats.dim() != 3 or viewmats.shape[1:] != (4, 4):
        raise ConfigError(f"viewmats must be (C, 4, 4), got {tuple(viewmats.shape)}")
    if Ks.shape != (viewmats.shape[0], 3, 3):
        raise ConfigError(f"Ks must be (C, 3, 3) with C = {viewmats.shape[0]}, got {tuple(Ks.shape)}")
    if int(width) < 1 or int(height) < 1:
        raise ConfigError(f"image size must be positive, got {width}x{height}")
    if not means.is_floating_point():
        raise ConfigError(f"Gaussian parameters must be floating point, got {means.dtype}")
    for name, t in (("quats", quats), ("scales", scales), ("opacities", opacities), ("colors", colors)):
        if t.dtype != means.dtype or t.device != means.device:
            raise ConfigError(f"{name} is {t.dtype} on {t.device} but means is {means.dtype} on {means.device}; "
                              "all Gaussian parameters must share dtype and device")
    if not (bool(torch.isfinite(viewmats).all()) and bool(torch.isfinite(Ks).all())):
        raise ConfigError("viewmats and Ks must be finite")


def sanitize(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor):
    """Replace the parameters of non-finite Gaussians with harmless finite values.

    Returns ``(means, quats, scales, opacities, colors, finite)`` where ``finite (N,)`` marks
    Gaussians whose parameters were all finite. ``torch.where`` passes exactly zero
    gradient to the replaced entries, so NaNs never reach a gradient.
    """
    # A row sum is non-finite iff some entry is (or the finite entries overflow: ~1e38, degenerate anyway).
    total = means.sum(-1) + quats.sum(-1) + scales.sum(-1) + opacities + colors.flatten(1).sum(-1)
    finite = torch.isfinite(total.detach())
    if bool(finite.all()):
        return means, quats, scales, opacities, colors, finite
    f1 = finite[:, None]
    means = torch.where(f1, means, torch.zeros_like(means))
    quats = torch.where(f1, quats, torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=quats.dtype, device=quats.device))
    scales = torch.where(f1, scales, torch.zeros_like(scales))
    opacities = torch.where(finite, opacities, torch.zeros_like(opacities))
    colors = torch.where(finite.reshape((-1,) + (1,) * (colors.dim() - 1)), colors, torch.zeros_like(colors))
    return means, quats, scales, opacities, colors, finite


def project_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                      viewmats: Tensor, Ks: Tensor, width: int, height: int, *, near_plane: float = 0.01,
                      far_plane: float = 1e10, eps2d: float = 0.3, sh_degree: int | None = None) -> Projected:
    """Project N Gaussians into C pinhole cameras (EWA, Zwicker et al. 2001; 3DGS Eq. 5).

    Args:
        means: (N, 3) world positions, metres.
        quats: (N, 4) rotations (w, x, y, z), any length.
        scales: (N, 3) standard deviations along the rotated axes, metres (not log-scales).
        opacities: (N,) in [0, 1] (not logits).
        colors: (N, 3) RGB, or (N, K, 3) SH coefficients (K in 1, 4, 9, 16).
        viewmats: (C, 4, 4) world-to-camera, OpenCV frame.
        Ks: (C, 3, 3) pinhole intrinsics, pixels.
        width, height: image size in pixels.
        near_plane, far_plane: depth range (metres) outside which Gaussians are culled.
        eps2d: low-pass added to the 2D covariance diagonal, px^2 (3DGS: 0.3).
        sh_degree: use SH bands up to this degree (default: all that ``colors`` has).

    Returns:
        :class:`Projected`, differentiable in all Gaussian parameters.
    """
    means, quats, scales, opacities, colors, finite = sanitize(means, quats, scales, opacities, colors)
    C = viewmats.shape[0]
    dtype = means.dtype
    viewmats, Ks = viewmats.to(dtype), Ks.to(dtype)
    Rc, tc = viewmats[:, :3, :3], viewmats[:, :3, 3]  # (C, 3, 3), (C, 3)
    mean_c = torch.einsum("cij,nj->cni", Rc, means) + tc[:, None, :]  # (C, N, 3)
    x, y, z = mean_c.unbind(-1)  # (C, N) each
    in_range = (z > near_plane) & (z < far_plane)
    z_safe = torch.where(in_range, z, torch.ones_like(z))  # keeps 1/z finite for culled Gaussians

    fx, fy = Ks[:, 0, 0, None], Ks[:, 1, 1, None]  # (C, 1)
    cx, cy = Ks[:, 0, 2, None], Ks[:, 1, 2, None]
    # Jacobian at the mean clamped to 1.3x the field of view (gsplat persp_proj).
    lim_xp = (width - cx) / fx + 0.3 * (0.5 * width / fx)
    lim_xn = cx / fx + 0.3 * (0.5 * width / fx)
    lim_yp = (height - cy) / fy + 0.3 * (0.5 * height / fy)
    lim_yn = cy / fy + 0.3 * (0.5 * height / fy)
    tx = z_safe * torch.maximum(torch.minimum(x / z_safe, lim_xp), -lim_xn)
    ty = z_safe * torch.maximum(torch.minimum(y / z_safe, lim_yp), -lim_yn)
    # EWA: Sigma_2d = J W (R S)(R S)^T W^T J^T with J = [[fx/z, 0, -fx tx/z^2], [0, fy/z, -fy ty/z^2]].
    scales = scales.clamp(-MAX_SCALE, MAX_SCALE)  # the sign of a scale does not matter (S S^T)
    A = torch.einsum("cik,nkj->cnij", Rc, quat_to_rotmat(quats) * scales[:, None, :])  # (C, N, 3, 3) = W R S
    j00, j02 = fx / z_safe, -fx * tx / z_safe**2  # (C, N)
    j11, j12 = fy / z_safe, -fy * ty / z_safe**2
    v0 = j00[..., None] * A[..., 0, :] + j02[..., None] * A[..., 2, :]  # (C, N, 3) first row of J W R S
    v1 = j11[..., None] * A[..., 1, :] + j12[..., None] * A[..., 2, :]
    # Sigma_2d = V V^T + eps2d I with V = [v0; v1] (px). Computed on V / k (k >= 1, the largest
    # entry of V) so that huge Gaussians do not overflow, and with det(V V^T) = |v0 x v1|^2
    # (Lagrange's identity), a sum of non-negative terms: no cancellation for thin splats.
    k = v0.detach().abs().amax(-1).maximum(v1.detach().abs().amax(-1)).clamp_min(1.0)  # (C, N)
    u0, u1, e = v0 / k[..., None], v1 / k[..., None], eps2d / (k * k)
    a_n, b_n, c_n = (u0 * u0).sum(-1), (u0 * u1).sum(-1), (u1 * u1).sum(-1)  # (C, N), Sigma_2d / k^2 - e I
    det_n = (torch.linalg.cross(u0, u1) ** 2).sum(-1) + e * (a_n + c_n + e)  # det(Sigma_2d) / k^4
    det_n = det_n.clamp_min(torch.finfo(dtype).tiny)  # only binds for a rank-1 V with k > ~1e9 px (float32)
    a, c = (a_n + e) * k * k, (c_n + e) * k * k  # diagonal of Sigma_2d, px^2
    kk = det_n * k * k  # det(Sigma_2d) / k^2
    conics = torch.stack([(c_n + e) / kk, -b_n / kk, (a_n + e) / kk], dim=-1)  # (C, N, 3) = Sigma_2d^-1
    means2d = torch.stack([fx * x / z_safe + cx, fy * y / z_safe + cy], dim=-1)  # (C, N, 2)

    op = opacities.clamp(0.0, 1.0)
    if colors.dim() == 3:
        campos = -torch.einsum("cji,cj->ci", Rc, tc)  # (C, 3) camera centres in world
        rgb = eval_sh(colors, means[None] - campos[:, None], sh_degree)  # (C, N, 3)
    else:
        rgb = colors[None].expand(C, -1, -1)

    with torch.no_grad():
        # Region where the Gaussian can contribute: sigma <= min(4.5, ln(255 * opacity)).
        cut = torch.minimum(torch.full_like(op, SIGMA_CUT), torch.log((op * 255.0).clamp_min(1e-30)))  # (N,)
        ext = torch.sqrt(2.0 * cut.clamp_min(0.0))[None]  # (1, N) box half-width in std units
        radii = torch.stack([ext * a.sqrt(), ext * c.sqrt()], dim=-1)  # (C, N, 2) exact ellipse box
        radii = radii * (1 + 1e-5) + 1e-3  # conservative against rounding
        m2 = means2d.detach()
        visible = (in_range & finite[None] & (op[None] >= ALPHA_MIN) & torch.isfinite(m2).all(-1)
                   & torch.isfinite(radii).all(-1)
                   & (m2[..., 0] + radii[..., 0] > 0.5) & (m2[..., 0] - radii[..., 0] < width - 0.5)
                   & (m2[..., 1] + radii[..., 1] > 0.5) & (m2[..., 1] - radii[..., 1] < height - 0.5))
        radii = torch.where(visible[..., None], radii, torch.zeros_like(radii))
    opacity_cn = torch.where(visible, op[None].expand(C, -1), torch.zeros_like(z))  # (C, N)
    return Projected(means2d=means2d, conics=conics, depths=z, opacities=opacity_cn, colors=rgb,
                     radii=radii, visible=visible)


def tile_ranges(means2d: Tensor, radii: Tensor, tile_size: int, tiles_x: int, tiles_y: int) -> Tensor:
    """Inclusive tile index ranges ``(C, N, 4) = (x0, x1, y0, y1)`` touched by each Gaussian's box.

    A pixel (u, v) is inside the box when its centre (u + 0.5, v + 0.5) is; ranges are
    clamped to the tile grid, and empty (x1 < x0) for culled Gaussians (radius 0).
    """
    lo = torch.ceil(means2d - radii - 0.5)  # first pixel index inside, (C, N, 2)
    hi = torch.floor(means2d + radii - 0.5)  # last pixel index inside
    lo = torch.div(lo.clamp_min(0), tile_size, rounding_mode="floor").long()
    hi_t = torch.div(hi, tile_size, rounding_mode="floor")
    hi_t = torch.minimum(hi_t, torch.tensor([tiles_x - 1, tiles_y - 1], dtype=hi_t.dtype, device=hi_t.device))
    hi_t = hi_t.long()
    empty = (radii <= 0).any(-1, keepdim=True)
    hi_t = torch.where(empty, torch.full_like(hi_t, -1), hi_t)
    return torch.stack([lo[..., 0], hi_t[..., 0], lo[..., 1], hi_t[..., 1]], dim=-1)

