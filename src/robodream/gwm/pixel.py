"""Feed-forward, pixel-aligned Gaussians for every frame (GWM, arXiv 2508.17600, Sec. 3.1).

Per-scene optimisation (``robodream reconstruct``, minutes a scene) is far too slow to turn a
dataset into Gaussians. Like the Gaussians Splatt3R predicts, these are read directly off
RGB-D images: every pixel of every camera with a depth becomes a Gaussian —

- centre: the pixel back-projected through its depth (camera-frame z, metres);
- colour: the pixel's RGB;
- orientation: flat, facing its camera (the Gaussian's axes are the camera's axes);
- scale: in the image plane the sample spacing after subsampling (or the pixel footprint
  ``depth / focal``, whichever is larger), along the viewing ray ``flatness`` times that;
- opacity: ``opacity`` (high);

then farthest-point sampling (FPS) keeps ``n`` of them spread evenly in 3D (default 2048).
Optionally a few rasteriser steps refine them against the input views.

One Gaussian is 14 numbers, activated (not logits or log-scales)::

    [0:3] centre (m, world)  [3:7] quaternion (w, x, y, z), unit  [7:10] standard deviations (m)
    [10] opacity in [0, 1]   [11:14] RGB in [0, 1]

Everything is batched over frames B and cameras V and runs on any device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from robodream.errors import ConfigError

#: Numbers per Gaussian and their layout.
GAUSSIAN_DIM = 14
FIELDS = {"means": slice(0, 3), "quats": slice(3, 7), "scales": slice(7, 10), "opacities": slice(10, 11),
          "colors": slice(11, 14)}


def unpack(g: Tensor) -> dict[str, Tensor]:
    """Split (..., 14) Gaussians into means (..., 3), quats (..., 4), scales (..., 3), opacities (...,), colors (..., 3).

    Raises:
        ConfigError: the last dimension is not 14.
    """
    if g.shape[-1] != GAUSSIAN_DIM:
        raise ConfigError(f"Gaussians must have {GAUSSIAN_DIM} numbers each (centre 3, quaternion 4, scale 3, "
                          f"opacity 1, RGB 3), got {g.shape[-1]}")
    out = {k: g[..., s] for k, s in FIELDS.items()}
    out["opacities"] = out["opacities"][..., 0]
    return out


def pack(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor) -> Tensor:
    """Inverse of :func:`unpack`: (..., 14)."""
    return torch.cat([means, quats, scales, opacities[..., None], colors], -1)


def rotmat_to_quat(R: Tensor) -> Tensor:
    """Unit quaternions (..., 4) (w, x, y, z) of rotation matrices (..., 3, 3) (Shepperd's method)."""
    m = R
    t = m[..., 0, 0] + m[..., 1, 1] + m[..., 2, 2]
    cand = torch.stack([
        torch.stack([1 + t, m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
        torch.stack([m[..., 2, 1] - m[..., 1, 2], 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                     m[..., 0, 1] + m[..., 1, 0], m[..., 0, 2] + m[..., 2, 0]], -1),
        torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 0, 1] + m[..., 1, 0],
                     1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], m[..., 1, 2] + m[..., 2, 1]], -1),
        torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 1, 2] + m[..., 2, 1],
                     1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1),
    ], -2)  # (..., 4, 4): row k is 4 q_k q, best conditioned for the largest |q_k|
    diag = torch.stack([1 + t, 1 + m[..., 0, 0] - m[..., 1, 1] - m[..., 2, 2],
                        1 - m[..., 0, 0] + m[..., 1, 1] - m[..., 2, 2], 1 - m[..., 0, 0] - m[..., 1, 1] + m[..., 2, 2]], -1)
    k = diag.argmax(-1)
    q = torch.gather(cand, -2, k[..., None, None].expand(*k.shape, 1, 4))[..., 0, :]
    q = q / q.norm(dim=-1, keepdim=True)
    return torch.where(q[..., :1] < 0, -q, q)


def _fps_chunk(points: Tensor, valid: Tensor, start: Tensor, idx: Tensor, radius: Tensor) -> None:
    """FPS loop for one chunk of sets, written into ``idx`` / ``radius`` (coordinates as separate
    rows: three fused multiply-adds per step instead of a (B, P, 3) temporary, ~3x faster on CPU)."""
    B, P, _ = points.shape
    n = idx.shape[1]
    xyz = points.transpose(1, 2).contiguous()  # (B, 3, P)
    dist = torch.full((B, P), float("inf"), dtype=points.dtype, device=points.device).masked_fill(~valid, -1.0)
    tmp = torch.empty_like(dist)
    d = torch.empty_like(dist)
    ar = torch.arange(B, device=points.device)
    cur = start
    radius[:, 0] = float("inf")
    for i in range(n):
        idx[:, i] = cur
        if i == n - 1:
            break
        last = xyz[ar, :, cur]  # (B, 3)
        torch.sub(xyz[:, 0], last[:, 0:1], out=tmp)
        torch.mul(tmp, tmp, out=d)
        torch.sub(xyz[:, 1], last[:, 1:2], out=tmp)
        d.addcmul_(tmp, tmp)
        torch.sub(xyz[:, 2], last[:, 2:3], out=tmp)
        d.addcmul_(tmp, tmp)
        torch.minimum(dist, d, out=dist)  # invalid points stay at -1 and are never picked
        best, cur = dist.max(1)
        radius[:, i + 1] = best.clamp_min(0.0).sqrt()


def farthest_point_sample(points: Tensor, n: int, valid: Tensor | None = None, chunk: int = 4
                          ) -> tuple[Tensor, Tensor]:
    """Farthest-point sampling of ``n`` of P points, batched over B sets.

    Starts at the valid point nearest the valid points' centroid (deterministic), then adds
    the valid point farthest from those chosen, ``n - 1`` times.

    Args:
        points: (B, P, 3).
        n: samples per set, >= 1.
        valid: (B, P) bool, points that may be chosen (default: all). A set with fewer than
            ``n`` valid points repeats some (see ``radius``).
        chunk: sets processed together (speed only).

    Returns:
        idx (B, n) long indices into P, and radius (B, n): each pick's distance to the points
        chosen before it (metres; inf for the first, 0 for a repeat). ``radius[:, -1]`` is the
        coverage radius: every valid point lies within it of a sample.

    Raises:
        ConfigError: n < 1, or a set without any valid point.
    """
    if n < 1:
        raise ConfigError(f"need n >= 1 samples, got {n}")
    B, P, _ = points.shape
    valid = torch.ones(B, P, dtype=torch.bool, device=points.device) if valid is None else valid
    counts = valid.sum(1)
    if bool((counts == 0).any()):
        raise ConfigError(f"{int((counts == 0).sum())} of {B} point sets have no valid point")
    points = points.masked_fill(~valid[..., None], 0.0)  # invalid points may be inf/NaN (no depth)
    w = valid.to(points.dtype)[..., None]
    centroid = (points * w).sum(1, keepdim=True) / counts[:, None, None]
    d0 = ((points - centroid) ** 2).sum(-1).masked_fill(~valid, float("inf"))
    idx = torch.empty(B, n, dtype=torch.long, device=points.device)
    radius = torch.empty(B, n, dtype=points.dtype, device=points.device)
    for b0 in range(0, B, chunk):  # a few sets at a time: their distance rows stay in cache
        b1 = min(B, b0 + chunk)
        _fps_chunk(points[b0:b1], valid[b0:b1], d0[b0:b1].argmin(1), idx[b0:b1], radius[b0:b1])
    return idx, radius


@dataclass
class PixelGaussianConfig:
    """How frames become Gaussians (saved with every Gaussian dataset)."""

    n: int = 2048  # Gaussians per frame after farthest-point sampling
    max_depth: float = 5.0  # metres; farther pixels (nothing there: MuJoCo's far plane) are dropped
    spacing_scale: float = 0.6  # in-plane standard deviation = this x FPS coverage radius (>= pixel footprint)
    footprint_scale: float = 0.5  # ... and at least this x the pixel footprint (depth / focal length)
    flatness: float = 0.2  # standard deviation along the viewing ray, relative to the in-plane one
    opacity: float = 0.95
    refine_steps: int = 0  # Adam steps on the input views after the feed-forward guess (0 = none)
    refine_lr: float = 0.01

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_depth <= 0 or self.spacing_scale <= 0 or self.flatness <= 0:
            raise ConfigError(f"need n >= 1 and positive max_depth, spacing_scale and flatness; got {self}")
        if not 0.0 < self.opacity < 1.0:
            raise ConfigError(f"opacity must be in (0, 1), got {self.opacity}")
        if self.refine_steps < 0:
            raise ConfigError(f"refine_steps must be >= 0, got {self.refine_steps}")


def _broadcast_cams(m: Tensor, B: int, V: int, shape: tuple[int, int], name: str) -> Tensor:
    if m.dim() == 3:
        m = m[None].expand(B, *m.shape)
    if tuple(m.shape) != (B, V, *shape):
        raise ConfigError(f"{name} must be (V, {shape[0]}, {shape[1]}) or (B, V, {shape[0]}, {shape[1]}) with "
                          f"B, V = {B}, {V}; got {tuple(m.shape)}")
    return m


def pixel_gaussians(rgb: Tensor, depth: Tensor, Ks: Tensor, viewmats: Tensor,
                    cfg: PixelGaussianConfig | None = None) -> tuple[Tensor, Tensor]:
    """Pixel-aligned Gaussians of B frames seen by V RGB-D cameras.

    Args:
        rgb: (B, V, H, W, 3), uint8 or float in [0, 1].
        depth: (B, V, H, W) camera-frame z in metres (as ``collect --with-depth`` stores it);
            pixels at or beyond ``cfg.max_depth`` (or <= 0) see nothing and are dropped.
        Ks: (V, 3, 3) or (B, V, 3, 3) intrinsics, pixels (centres at +0.5).
        viewmats: (V, 4, 4) or (B, V, 4, 4) world-to-camera, OpenCV frame, metres.
        cfg: :class:`PixelGaussianConfig` (default settings when None).

    Returns:
        gaussians (B, n, 14) (module docstring for the layout) and background (B, 3): the mean
        colour of the dropped pixels (what lies beyond the scene; grey where none are dropped).

    Raises:
        ConfigError: shapes that do not agree, or a frame in which no pixel has a depth
            within ``max_depth`` (frames without depth cannot become Gaussians).
    """
    cfg = cfg or PixelGaussianConfig()
    if rgb.dim() != 5 or rgb.shape[-1] != 3:
        raise ConfigError(f"rgb must be (B, V, H, W, 3), got {tuple(rgb.shape)}")
    B, V, H, W, _ = rgb.shape
    if tuple(depth.shape) != (B, V, H, W):
        raise ConfigError(f"depth must be (B, V, H, W) = {(B, V, H, W)} like rgb, got {tuple(depth.shape)}")
    col = rgb.float() / 255.0 if rgb.dtype == torch.uint8 else rgb.float()
    dev = col.device
    depth = depth.to(dev, torch.float32)
    Ks = _broadcast_cams(torch.as_tensor(Ks, dtype=torch.float32, device=dev), B, V, (3, 3), "Ks")
    viewmats = _broadcast_cams(torch.as_tensor(viewmats, dtype=torch.float32, device=dev), B, V, (4, 4), "viewmats")
    valid = (depth > 0) & (depth < cfg.max_depth) & torch.isfinite(depth)  # (B, V, H, W)
    if not bool(valid.flatten(1).any(1).all()):
        raise ConfigError("a frame has no pixel with a depth within max_depth: frames without depth cannot "
                          "become Gaussians (collect with --with-depth)")
    v, u = torch.meshgrid(torch.arange(H, device=dev, dtype=torch.float32) + 0.5,
                          torch.arange(W, device=dev, dtype=torch.float32) + 0.5, indexing="ij")
    fx, fy = Ks[..., 0, 0, None, None], Ks[..., 1, 1, None, None]
    x = (u - Ks[..., 0, 2, None, None]) / fx * depth
    y = (v - Ks[..., 1, 2, None, None]) / fy * depth
    p_cam = torch.stack([x, y, depth], -1)  # (B, V, H, W, 3)
    R, t = viewmats[..., :3, :3], viewmats[..., :3, 3]
    world = torch.einsum("bvhwj,bvjk->bvhwk", p_cam - t[:, :, None, None], R)  # R^T (p - t)
    world = world.masked_fill(~valid[..., None], 0.0)  # no depth (inf): never chosen, kept finite
    footprint = (depth / fx).masked_fill(~valid, 0.0)  # (B, V, H, W) metres per pixel
    cam_q = rotmat_to_quat(R.transpose(-1, -2))  # (B, V, 4): Gaussian axes = camera axes in the world
    P = V * H * W
    flat_valid = valid.reshape(B, P)
    idx, radius = farthest_point_sample(world.reshape(B, P, 3), cfg.n, flat_valid)
    gather = lambda a: torch.gather(a.reshape(B, P, -1), 1, idx[..., None].expand(-1, -1, a.reshape(B, P, -1).shape[-1]))  # noqa: E731
    means = gather(world)
    colors = gather(col)
    fp = gather(footprint)[..., 0]
    cam_of = idx // (H * W)  # (B, n) source camera
    quats = torch.gather(cam_q, 1, cam_of[..., None].expand(-1, -1, 4))
    cover = radius[:, -1:].clamp_min(0.0)  # (B, 1) FPS coverage radius
    s_xy = torch.maximum(cfg.spacing_scale * cover.expand_as(fp), cfg.footprint_scale * fp)
    scales = torch.stack([s_xy, s_xy, cfg.flatness * s_xy], -1)
    repeat = radius == 0  # fewer valid pixels than n: the repeats draw nothing
    opac = torch.full_like(fp, cfg.opacity).masked_fill(repeat, 0.0)
    gaussians = pack(means, quats, scales, opac, colors)
    dropped = (~valid).reshape(B, P, 1).float()
    n_drop = dropped.sum(1)
    bg = torch.where(n_drop > 0, (col.reshape(B, P, 3) * dropped).sum(1) / n_drop.clamp_min(1.0),
                     torch.full((B, 3), 0.5, device=dev))
    if cfg.refine_steps:
        gaussians = refine(gaussians, col, Ks, viewmats, bg, cfg.refine_steps, cfg.refine_lr)
    return gaussians, bg


def render(gaussians: Tensor, viewmats: Tensor, Ks: Tensor, width: int, height: int,
           background: Tensor | None = None, **kw) -> Tensor:
    """Render B frames of Gaussians (B, n, 14) into C cameras each: RGB (B, C, H, W, 3) in [0, 1].

    ``viewmats`` (C, 4, 4) or (B, C, 4, 4), ``Ks`` (C, 3, 3) or (B, C, 3, 3), ``background``
    (B, 3) per frame (or (3,)); one batched rasteriser pass
    (:func:`robodream.gaussians.rasterizer.rasterize_batched`). A camera that sees none of the
    Gaussians (all behind it) renders the background, never NaN.
    """
    from robodream.gaussians.rasterizer import rasterize_batched

    g = unpack(gaussians)
    B = gaussians.shape[0]
    C = viewmats.shape[-3]
    bg = None
    if background is not None:
        background = torch.as_tensor(background, dtype=gaussians.dtype, device=gaussians.device)
        bg = background[:, None, :].expand(B, C, 3) if background.dim() == 2 else background
    out = rasterize_batched(g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], viewmats, Ks,
                            width, height, background=bg, **kw)
    return out.rgb.clamp(0.0, 1.0)


def refine(gaussians: Tensor, rgb: Tensor, Ks: Tensor, viewmats: Tensor, background: Tensor, steps: int,
           lr: float = 0.01) -> Tensor:
    """A few Adam steps of L1 between the Gaussians' renders and the input views (B, V, H, W, 3).

    Centres move within their scale, colours, log-scales and opacity logits are free;
    orientations stay. Returns refined (B, n, 14), detached.
    """
    g = unpack(gaussians.detach())
    H, W = rgb.shape[2:4]
    logit = torch.logit(g["opacities"].clamp(1e-4, 1 - 1e-4))
    params = {"means": g["means"].clone(), "log_scales": g["scales"].clamp_min(1e-8).log(), "logit": logit,
              "colors": g["colors"].clone()}
    for p in params.values():
        p.requires_grad_(True)
    scale0 = g["scales"][..., :1].mean().item()
    opt = torch.optim.Adam([{"params": [params["means"]], "lr": lr * scale0},
                            {"params": [params["log_scales"], params["logit"], params["colors"]], "lr": lr}])
    live = g["opacities"] > 0
    for _ in range(steps):
        cur = pack(params["means"], g["quats"], params["log_scales"].exp(),
                   torch.sigmoid(params["logit"]) * live, params["colors"].clamp(0, 1))
        loss = (render(cur, viewmats, Ks, W, H, background) - rgb).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return pack(params["means"], g["quats"], params["log_scales"].exp(), torch.sigmoid(params["logit"]) * live,
                    params["colors"].clamp(0, 1))
