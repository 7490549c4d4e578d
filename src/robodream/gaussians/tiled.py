"""Tiled front-to-back compositing in pure PyTorch, with a hand-written backward.

The image is cut into 16x16-pixel tiles (3DGS, Kerbl et al. 2023, Sec. 6; gsplat). Every visible
Gaussian is binned into the tiles its truncation box touches (:func:`bin_tiles`), each
tile's list keeps the global front-to-back depth order, and the lists are padded into one
table ``(C * n_tiles, K)``. Compositing then walks the tables in chunks of ``chunk``
Gaussians; each chunk is a handful of batched tensor operations over
``(active tiles, 256 pixels, chunk)``. A tile leaves the active set as soon as all of its
pixels are saturated (transmittance would fall to <= 1e-4) or its list is exhausted, so
opaque scenes stop early and tiles with short lists cost nothing after their end.

Pixel formation is exactly that of :func:`robodream.gaussians.rasterizer.rasterize_dense`
(tests hold the two equal, values and gradients):

    alpha_i = min(0.99, o_i exp(-sigma_i))  if sigma_i <= 4.5 and o_i exp(-sigma_i) >= 1/255, else 0
    keep_i  = prod_{j <= i} (1 - alpha_j) > 1e-4     (stop before saturating, as 3DGS/gsplat)
    w_i     = keep_i alpha_i prod_{j < i} (1 - alpha_j)
    rgb     = sum_i w_i c_i + T bg,   depth_acc = sum_i w_i z_i,   alpha = 1 - T

Everything in the hot loop is arithmetic on float tensors laid out ``(tiles, pixels,
Gaussians)``: masks are 0/1 floats (``clamp(x * 1e30, 0, 1)`` is an exact step function),
truncation sends the exponent to -inf, and the cumulative products run along the last,
contiguous axis — on CPU, boolean masks and ``torch.where`` cost about ten arithmetic ops.

The backward pass (a ``torch.autograd.Function``) keeps each chunk's alphas and
transmittances while their total size is under ``cache_elems`` and recomputes the rest; it
walks the chunks back to front carrying the suffix sums
``S_i = sum_{j > i} (g . f_j) w_j + T (g_rgb . bg - g_alpha)`` of 3DGS's backward kernel, so
``dL/dalpha_i = T_i (g . f_i) - S_i / (1 - alpha_i)``. Gradients of the 2D means and conics
reduce over a tile's pixels through its separable structure (row sums and column sums).
The tile size (default 16) changes speed only, never the image.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from robodream.gaussians.projection import ALPHA_MAX, SIGMA_CUT, T_MIN, Projected, tile_ranges

#: Columns of the packed per-(camera, Gaussian) parameter rows; the last two are derived
#: (truncation level ``cut = min(4.5, ln(255 o))`` and ``ln(o) - cut``) and get no gradient.
_MX, _MY, _A, _B, _C, _O, _R, _G, _BL, _Z, _CUT, _LO = range(12)
N_PACKED = 10  # differentiable columns
_BIG = 1e30  # step(x) = clamp(x * 1e30, 0, 1) is exactly [x > 0] for float32/float64 differences of O(1) numbers


def bin_tiles(p: Projected, width: int, height: int, tile_size: int = 16) -> tuple[Tensor, Tensor]:
    """Assign visible Gaussians to the tiles their truncation boxes touch, in depth order.

    Returns:
        table: (C * n_tiles, K) int64 rows into the packed ``(C * N + 1)`` parameter array,
            front to back per tile, padded with ``C * N`` (a zero-opacity row).
        counts: (C * n_tiles,) number of real entries per row.
    Tiles are numbered row-major per camera: ``c * n_tiles + ty * tiles_x + tx``. Like
    gsplat's ``isect_tiles``: one (tile, Gaussian) pair per touched tile, generated in depth
    order and grouped by tile with a stable sort.
    """
    C, N = p.depths.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    dev = p.depths.device
    pad = C * N
    key = torch.where(p.visible, p.depths.detach(), torch.full_like(p.depths, float("inf")))
    order = torch.sort(key.flatten(), stable=True).indices  # (C*N,) front to back over all cameras
    order = order[p.visible.flatten()[order]]  # visible only, (Nv,) flat (camera, Gaussian) ids
    rng = tile_ranges(p.means2d.detach(), p.radii, tile_size, tiles_x, tiles_y).reshape(C * N, 4)[order]  # (Nv, 4)
    w = (rng[:, 1] - rng[:, 0] + 1).clamp_min(0)
    h = (rng[:, 3] - rng[:, 2] + 1).clamp_min(0)
    n_pairs = w * h  # tiles touched by each Gaussian
    gid = torch.repeat_interleave(torch.arange(order.numel(), device=dev), n_pairs)  # (M,) depth order
    j = torch.arange(gid.numel(), device=dev) - (torch.cumsum(n_pairs, 0) - n_pairs)[gid]  # index in its box
    tx = rng[gid, 0] + j % w[gid]
    ty = rng[gid, 2] + torch.div(j, w[gid], rounding_mode="floor")
    cam = torch.div(order[gid], N, rounding_mode="floor")
    tile = cam * n_tiles + ty * tiles_x + tx  # (M,)
    tile, perm = torch.sort(tile, stable=True)  # group by tile, depth order kept within a tile
    counts = torch.bincount(tile, minlength=C * n_tiles)  # (C*T,)
    K = int(counts.max()) if tile.numel() else 0
    pos = torch.arange(tile.numel(), device=dev) - (torch.cumsum(counts, 0) - counts)[tile]
    table = torch.full((C * n_tiles, K), pad, dtype=torch.long, device=dev)
    table[tile, pos] = order[gid[perm]]
    return table, counts


def pack_params(p: Projected) -> Tensor:
    """Packed rows ``(C * N + 1, 10)``: mean2d (2), conic (3), opacity, rgb (3), depth; last row = padding."""
    C, N = p.depths.shape
    packed = torch.cat([p.means2d, p.conics, p.opacities[..., None], p.colors, p.depths[..., None]], dim=-1)
    packed = packed.reshape(C * N, N_PACKED)
    return torch.cat([packed, packed.new_zeros(1, N_PACKED)], dim=0)


class _Geometry:
    """Tile-grid constants: pixel-centre offsets within a tile and the tiles' origins."""

    def __init__(self, C: int, width: int, height: int, tile_size: int, device, dtype) -> None:
        self.ts = tile_size
        self.tiles_x, self.tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
        self.n_tiles = self.tiles_x * self.tiles_y
        self.P = tile_size * tile_size
        self.off = torch.arange(tile_size, device=device, dtype=dtype) + 0.5  # (ts,)
        t = torch.arange(C * self.n_tiles, device=device) % self.n_tiles
        self.x0 = ((t % self.tiles_x) * tile_size).to(dtype)  # (C*T,) left pixel edge of each tile
        self.y0 = (torch.div(t, self.tiles_x, rounding_mode="floor") * tile_size).to(dtype)
        u = self.x0[:, None] + self.off[None, :]  # (C*T, ts) pixel indices + 0.5
        v = self.y0[:, None] + self.off[None, :]
        self.outside = ((v[:, :, None] > height) | (u[:, None, :] > width)).reshape(-1, self.P)  # (C*T, P)

    def to_image(self, x: Tensor, C: int, width: int, height: int) -> Tensor:
        """Per-tile pixel values (C*T, P, ...) -> image (C, H, W, ...)."""
        ts, rest = self.ts, x.shape[2:]
        img = x.reshape(C, self.tiles_y, self.tiles_x, ts, ts, *rest).transpose(2, 3)
        return img.reshape(C, self.tiles_y * ts, self.tiles_x * ts, *rest)[:, :height, :width]

    def to_tiles(self, img: Tensor, C: int, width: int, height: int) -> Tensor:
        """Image (C, H, W, ...) -> per-tile pixel values (C*T, P, ...) (zero outside the image)."""
        ts, rest = self.ts, img.shape[3:]
        full = img.new_zeros((C, self.tiles_y * ts, self.tiles_x * ts, *rest))
        full[:, :height, :width] = img
        x = full.reshape(C, self.tiles_y, ts, self.tiles_x, ts, *rest).transpose(2, 3)
        return x.reshape(C * self.n_tiles, self.P, *rest)


def _step(x: Tensor) -> Tensor:
    """``[x > 0]`` as 0./1. floats, in place (boolean masks are ~10x slower than arithmetic on CPU)."""
    return x.mul_(_BIG).clamp_(0.0, 1.0)


def _chunk_alpha(rows: Tensor, x0: Tensor, y0: Tensor, off: Tensor):
    """Alpha of every (pixel, Gaussian) pair of a chunk, Gaussians last.

    rows: (a, k, 12) gathered packed parameters; x0, y0: (a,) tile origins (pixels).
    Returns alpha (a, P, k) (0 where truncated), dx (a, ts, k), dy (a, ts, k) with
    dx = mean_u - pixel-centre u for the tile's columns and dy likewise for its rows.
    """
    a, k = rows.shape[:2]
    ts = off.shape[0]
    r = rows.transpose(1, 2)  # (a, 12, k)
    dx = (r[:, _MX] - x0[:, None])[:, None, :] - off[None, :, None]  # (a, ts, k)
    dy = (r[:, _MY] - y0[:, None])[:, None, :] - off[None, :, None]
    xpart = r[:, None, _CUT] - 0.5 * r[:, None, _A] * dx * dx  # (a, ts, k): cut - sigma_x
    ypart = -0.5 * r[:, None, _C] * dy * dy
    # e = cut - sigma, (a, ts_y, ts_x, k), sigma = .5 a dx^2 + .5 c dy^2 + b dx dy
    e = torch.addcmul(xpart[:, None] + ypart[:, :, None], (-r[:, None, _B] * dx)[:, None], dy[:, :, None])
    torch.threshold_(e, 0.0, float("-inf"))  # truncated pairs -> exp(-inf) = 0
    alpha = e.add_(r[:, None, None, _LO]).exp_().clamp_max_(ALPHA_MAX)  # o exp(-sigma), clamped
    return alpha.view(a, ts * ts, k), dx, dy


def _chunk_weights(alpha: Tensor, T0: Tensor, Tin: Tensor | None = None):
    """Front-to-back weights of a chunk given the transmittance T0 (a, P) in front of it.

    Returns w (a, P, k), keep (a, P, k) in {0, 1}, T_excl (a, P, k) (transmittance in front
    of each Gaussian) and Tin (transmittance behind each, unmasked; pass it to skip the cumprod).
    """
    if Tin is None:
        Tin = torch.cumprod(1.0 - alpha, dim=-1).mul_(T0[..., None])
    keep = _step(Tin - T_MIN)  # stop before the transmittance would reach 1e-4
    T_excl = torch.cat([T0[..., None], Tin[..., :-1]], dim=-1)
    w = alpha * T_excl
    w.mul_(keep)
    return w, keep, T_excl, Tin


class TiledComposite(torch.autograd.Function):
    """Differentiable tiled compositing; see the module docstring.

    forward(packed (C*N+1, 10), background (C, 3), table, counts, C, width, height, tile_size,
    chunk, cache_elems) -> rgb (C, H, W, 3), depth_acc (C, H, W) = sum_i w_i z_i, alpha (C, H, W).
    Chunks' alphas and transmittances are kept for the backward pass while their total size
    stays under ``cache_elems`` elements; later chunks are recomputed.
    """

    @staticmethod
    def forward(ctx, packed, background, table, counts, C, width, height, tile_size, chunk, cache_elems):
        dev, dt = packed.device, packed.dtype
        geo = _Geometry(C, width, height, tile_size, dev, dt)
        o = packed[:, _O]
        pos = o > 0
        cut = torch.where(pos, torch.clamp(torch.log((255.0 * o).clamp_min(1e-30)), max=SIGMA_CUT), -1.0)
        lo = torch.where(pos, torch.log(o.clamp_min(1e-30)) - cut, 0.0)
        rows_all = torch.cat([packed, cut[:, None], lo[:, None]], dim=1)  # (C*N+1, 12)
        TT, P = geo.x0.shape[0], geo.P
        T = torch.ones(TT, P, device=dev, dtype=dt)
        done = geo.outside.clone()
        acc = torch.zeros(TT, 4, P, device=dev, dtype=dt)  # rgb + depth, channels first
        steps = []  # (start, active tiles, T0, cached (alpha, Tin) or None)
        cached = 0
        K, s = table.shape[1], 0
        while s < K:
            act = ((counts > s) & ~done.all(1)).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            # Fewer live tiles -> longer chunks (x sqrt(all / live)), so the few tiles with long,
            # unsaturated lists take few steps without overshooting far past their saturation.
            e = min(K, s + max(chunk, int(chunk * math.sqrt(TT / act.numel()))))
            idx = table[act, s:e]  # (a, k)
            rows = rows_all[idx]  # (a, k, 12)
            T0 = T[act].masked_fill(done[act], 0.0)  # (a, P): saturated pixels take nothing more
            alpha, _, _ = _chunk_alpha(rows, geo.x0[act], geo.y0[act], geo.off)
            w, keep, _, Tin = _chunk_weights(alpha, T0)
            acc[act] += torch.bmm(rows[..., _R:_Z + 1].transpose(1, 2), w.transpose(1, 2))  # (a, 4, P)
            T[act] = T[act] - w.sum(-1)
            done[act] = done[act] | (keep[..., -1] == 0)
            keep_it = cached + alpha.numel() <= cache_elems
            cached += alpha.numel() if keep_it else 0
            steps.append((s, e, act, T0, (alpha, Tin) if keep_it else None))
            s = e
        rgb_t = acc[:, :3].transpose(1, 2) + T[..., None] * background.repeat_interleave(geo.n_tiles, 0)[:, None, :]
        rgb = geo.to_image(rgb_t, C, width, height)
        depth = geo.to_image(acc[:, 3], C, width, height)
        alpha_img = geo.to_image(1.0 - T, C, width, height)
        ctx.save_for_backward(rows_all, background, table, T)
        ctx.steps, ctx.geo, ctx.dims = steps, geo, (C, width, height)
        return rgb, depth, alpha_img

    @staticmethod
    @once_differentiable
    def backward(ctx, g_rgb, g_depth, g_alpha):
        rows_all, background, table, T = ctx.saved_tensors
        geo, (C, width, height) = ctx.geo, ctx.dims
        dev, dt = rows_all.device, rows_all.dtype
        ts = geo.ts
        zeros = lambda *s: torch.zeros(*s, device=dev, dtype=dt)  # noqa: E731
        g_rgb = g_rgb if g_rgb is not None else zeros(C, height, width, 3)
        g_depth = g_depth if g_depth is not None else zeros(C, height, width)
        g_alpha = g_alpha if g_alpha is not None else zeros(C, height, width)
        g4 = geo.to_tiles(torch.cat([g_rgb, g_depth[..., None]], -1), C, width, height)  # (C*T, P, 4)
        gA = geo.to_tiles(g_alpha, C, width, height)  # (C*T, P)
        bg_t = background.repeat_interleave(geo.n_tiles, 0)  # (C*T, 3)
        # The final transmittance T enters as rgb += T bg and alpha = 1 - T.
        S = T * ((g4[..., :3] * bg_t[:, None, :]).sum(-1) - gA)  # (C*T, P) suffix sums
        g_bg = (g4[..., :3] * T[..., None]).sum(1).reshape(C, geo.n_tiles, 3).sum(1)  # (C, 3)
        g_rows = torch.zeros(rows_all.shape[0], N_PACKED, device=dev, dtype=dt)
        for s, e, act, T0, cache in reversed(ctx.steps):
            idx = table[act, s:e]
            rows = rows_all[idx]  # (a, k, 12)
            a_, k_ = idx.shape
            x0, y0 = geo.x0[act], geo.y0[act]
            if cache is None:
                alpha, dx, dy = _chunk_alpha(rows, x0, y0, geo.off)
                w, keep, T_excl, _ = _chunk_weights(alpha, T0)
            else:
                alpha, Tin = cache
                r = rows.transpose(1, 2)
                dx = (r[:, _MX] - x0[:, None])[:, None, :] - geo.off[None, :, None]
                dy = (r[:, _MY] - y0[:, None])[:, None, :] - geo.off[None, :, None]
                w, keep, T_excl, _ = _chunk_weights(alpha, T0, Tin)
            g4a = g4[act]  # (a, P, 4)
            feats = rows[..., _R:_Z + 1]  # (a, k, 4)
            gf = torch.bmm(g4a, feats.transpose(1, 2))  # (a, P, k): g . f_i
            cs = torch.cumsum(gf * w, dim=-1)
            Sa = S[act]
            total = Sa + cs[..., -1]
            S[act] = total
            suffix = total[..., None] - cs  # sum over later Gaussians, this chunk and after
            d_alpha = T_excl.mul_(gf).sub_(suffix.div_(1.0 - alpha))  # dL/dalpha (a, P, k)
            live = _step(ALPHA_MAX - alpha).mul_(keep)  # alpha = o G unclamped, and composited
            t = d_alpha.mul_(alpha).mul_(live)  # dL/d(o G) * o G = -dL/dsigma
            g_feat = torch.bmm(g4a.transpose(1, 2), w).transpose(1, 2)  # (a, k, 4)
            o = rows[..., _O]
            g_o = t.sum(1) / torch.where(o > 0, o, 1.0)  # dL/do = sum dL/d(oG) G
            dsig = t.view(a_, ts, ts, k_)  # -dL/dsigma over (rows y, columns x)
            Sx = dsig.sum(1)  # (a, ts_x, k) column sums
            Sy = dsig.sum(2)  # (a, ts_y, k) row sums
            Q = (dsig * dx[:, None]).sum(2)  # (a, ts_y, k): sum_x dsig dx
            s_xx, s_x = (Sx * dx * dx).sum(1), (Sx * dx).sum(1)  # (a, k)
            s_yy, s_y = (Sy * dy * dy).sum(1), (Sy * dy).sum(1)
            s_xy = (Q * dy).sum(1)
            ca, cb, cc = rows[..., _A], rows[..., _B], rows[..., _C]
            # sigma = .5 a dx^2 + .5 c dy^2 + b dx dy; t carries the minus sign of dL/dsigma
            g = torch.stack([-(ca * s_x + cb * s_y), -(cc * s_y + cb * s_x),
                             -0.5 * s_xx, -s_xy, -0.5 * s_yy, g_o], dim=-1)  # (a, k, 6)
            g = torch.cat([g, g_feat], dim=-1)  # (a, k, 10)
            g_rows.index_add_(0, idx.reshape(-1), g.reshape(-1, N_PACKED))
        g_rows[-1] = 0.0
        return g_rows, g_bg, None, None, None, None, None, None, None, None


def composite_tiled(p: Projected, background: Tensor, width: int, height: int, tile_size: int = 16,
                    chunk: int = 32, cache_elems: int = 1 << 25) -> tuple[Tensor, Tensor, Tensor]:
    """Tiled compositing of projected Gaussians.

    Returns rgb (C, H, W, 3), depth_acc (C, H, W) = sum_i w_i z_i, alpha (C, H, W).
    ``cache_elems`` bounds the (pixel, Gaussian) pairs whose alphas are kept for backward
    (default 2^25, i.e. 256 MiB in float32 for alphas and transmittances); the rest are recomputed.
    """
    C = p.depths.shape[0]
    table, counts = bin_tiles(p, width, height, tile_size)
    packed = pack_params(p)
    return TiledComposite.apply(packed, background, table, counts, C, width, height, tile_size, chunk,
                                cache_elems)
