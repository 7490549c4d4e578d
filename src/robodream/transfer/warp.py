"""Forward depth warping: the geometric baseline (and the first stage) of view transfer.

:func:`forward_warp` splats every pixel of a source view with known z-depth into a target
camera: back-project through the source pixel's centre (as :func:`~robodream.envs.cameras.backproject`;
optionally through several sub-pixel centres),
transform to the target camera, project (:func:`~robodream.envs.cameras.project`) and write the
source colour into the target pixel that contains the projection (nearest pixel: pixel i covers
[i, i + 1)). Where several source pixels land in one target pixel the nearest to the target
camera wins (z-buffer). Target pixels nobody lands in are *holes*: left black, and reported.
Pixels whose depth is not finite or beyond ``max_depth`` (MuJoCo's far plane: the sky) are not
splatted. Cameras follow :mod:`robodream.envs.cameras` (OpenCV frame, metres).
"""

from __future__ import annotations

import numpy as np

from robodream.envs.cameras import project

#: Depth (metres) at which pixels that see nothing are splatted: far enough that a camera
#: translation of metres moves them by far less than a pixel.
INFINITY_M = 1e6


def forward_warp(image: np.ndarray, depth: np.ndarray, K_src: np.ndarray, T_src: np.ndarray,
                 K_dst: np.ndarray, T_dst: np.ndarray, size: tuple[int, int] | None = None,
                 max_depth: float = 50.0, supersample: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Splat a source view into a target camera (z-buffered, nearest pixel, holes left black).

    Args:
        image: (H, W, C) source pixels, any dtype (uint8 RGB usually).
        depth: (H, W) source camera-frame z in metres (``inf``/far plane where nothing is seen).
        K_src, T_src: source intrinsics (3, 3) and world-to-camera transform (4, 4).
        K_dst, T_dst: the same for the target camera.
        size: target (H', W'); default the source size.
        max_depth: source depths beyond this (metres) are the sky, splatted at infinity.
        supersample: each source pixel is splatted from ``supersample``^2 sub-pixel centres
            (same colour and depth), so a surface the target sees larger than the source does
            not crack into single-pixel holes; 1 = one splat per pixel centre.

    Returns:
        ``(warped (H', W', C) of image's dtype, zeros in holes; hole (H', W') bool, True where
        no source pixel landed; warped_depth (H', W') float32 target-camera z in metres, inf in
        holes and where the sky landed)``.

    Raises:
        ValueError: image and depth of different sizes.
    """
    H, W = depth.shape
    if image.shape[:2] != (H, W):
        raise ValueError(f"image {image.shape[:2]} and depth {depth.shape} differ in size")
    Ho, Wo = size if size is not None else (H, W)
    d = np.asarray(depth, np.float64)
    sky = ~(np.isfinite(d) & (d > 0) & (d < max_depth))  # (H, W)
    s = int(supersample)
    z_src = np.repeat(np.repeat(np.where(sky, INFINITY_M, d), s, 0), s, 1)  # (sH, sW)
    colours = np.repeat(np.repeat(image, s, 0), s, 1).reshape(H * W * s * s, *image.shape[2:])
    v, u = (np.mgrid[0:H * s, 0:W * s] + 0.5) / s  # sub-pixel centres, in source pixels
    p_cam = np.stack([(u - K_src[0, 2]) / K_src[0, 0] * z_src, (v - K_src[1, 2]) / K_src[1, 1] * z_src, z_src], -1)
    world = ((p_cam - T_src[:3, 3]) @ T_src[:3, :3]).reshape(-1, 3)  # (s^2 H W, 3) metres
    uv, z = project(world, K_dst, T_dst)  # (N, 2) pixels, (N,) metres
    u, v = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
    inside = (z > 1e-6) & (u >= 0) & (u < Wo) & (v >= 0) & (v < Ho)
    pix = (v * Wo + u)[inside]  # (M,) flat target pixel
    z, colours = z[inside], colours[inside]  # (M,), (M, C)
    order = np.lexsort((z, pix))  # by target pixel, then nearest first
    first = order[np.unique(pix[order], return_index=True)[1]]  # nearest source pixel of each target pixel
    warped = np.zeros((Ho * Wo, *image.shape[2:]), image.dtype)
    zbuf = np.full(Ho * Wo, np.inf, np.float32)
    warped[pix[first]] = colours[first]
    zbuf[pix[first]] = z[first]
    hole = np.isinf(zbuf)
    zbuf[zbuf >= max_depth] = np.inf  # the sky, at infinity again
    hole = hole.reshape(Ho, Wo)
    return warped.reshape(Ho, Wo, *image.shape[2:]), hole, zbuf.reshape(Ho, Wo)
