"""3D neighbourhood attention over a (T, H, W) token grid (Hassani et al., CVPR 2023; NATTEN).

GigaWorld-0-Video (arXiv 2511.19861, Sec. 3.1) replaces full self-attention by sparse 3D
neighbourhood attention: the query at grid cell ``(t, h, w)`` attends only to the keys in a
window of ``k_t x k_h x k_w`` cells around it. As in NATTEN, the window along an axis of
length ``n`` is centred on the query and *shifted* at the borders so it always holds ``k``
cells: it starts at ``clamp(i - k // 2, 0, n - k)``. A window of ``k >= n`` (or ``k = 0``)
covers the whole axis, so ``window >= grid`` is exactly full attention.

Three interchangeable paths, held equal by tests:

* ``"reference"`` — dense scaled-dot-product attention with the (L, L) neighbourhood mask
  (O(L^2); the definition).
* ``"blocked"`` — the CPU path, genuinely sparse: the query grid is cut into tiles; every
  tile gathers only the keys/values of the union of its queries' windows (a region of
  ``tile + k - 1`` cells per axis) and runs one batched attention over all tiles, with a
  small per-tile mask where a region is larger than a query's window. Cost is
  ``n_tiles * tile * region`` instead of ``L^2``; plain PyTorch ops, so autograd gives the
  backward pass.
* ``"flex"`` — PyTorch FlexAttention with a block-sparse mask, compiled on CUDA (the fast GPU
  path; in eager mode on CPU it is only a slow correctness reference).

Tokens are in row-major ``(t, h, w)`` order: ``index = (t * H + h) * W + w``.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings

import torch

from robodream.models.attention import scaled_dot_product_attention

Grid = tuple[int, int, int]

BACKENDS = ("auto", "blocked", "reference", "flex")


def normalize_window(grid: Grid, window: tuple[int, ...]) -> Grid:
    """Window per axis clipped to the grid: ``0`` or ``k >= n`` means the whole axis.

    Raises:
        ValueError: wrong number of axes, a negative size, or an even size smaller than its
            axis (an even window has no centre cell).
    """
    if len(window) != len(grid):
        raise ValueError(f"window {tuple(window)} must have one size per grid axis {tuple(grid)}")
    out = []
    for n, k in zip(grid, window):
        if k < 0:
            raise ValueError(f"window sizes must be >= 0, got {tuple(window)}")
        if k == 0 or k >= n:
            out.append(n)
        elif k % 2 == 0:
            raise ValueError(f"window size {k} must be odd (or cover its axis of {n} cells)")
        else:
            out.append(k)
    return tuple(out)  # type: ignore[return-value]


def window_starts(n: int, k: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """First cell of the window of every position along one axis: (n,) long, in [0, n - k]."""
    return (torch.arange(n, device=device) - k // 2).clamp(0, n - k)


def neighborhood_mask(grid: Grid, window: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """(L, L) bool, True where query i may attend key j (L = T * H * W)."""
    window = normalize_window(grid, window)
    allowed = None
    for axis, (n, k) in enumerate(zip(grid, window)):
        s = window_starts(n, k, device)
        pos = torch.arange(n, device=device)
        m = (pos[None, :] >= s[:, None]) & (pos[None, :] < s[:, None] + k)  # (n, n) query pos -> key pos
        shape = [1] * (2 * len(grid))  # (query axes..., key axes...)
        shape[axis], shape[len(grid) + axis] = n, n
        m = m.reshape(shape)
        allowed = m if allowed is None else allowed & m
    L = math.prod(grid)
    return allowed.reshape(L, L)


# ----------------------------------------------------------------------------- blocked (CPU)
def _axis_tiles(n: int, k: int, b: int) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Tiles of ``b`` queries along one axis: region starts (n/b,), region size R, in-window (n/b, b, R)."""
    s = window_starts(n, k)
    R = min(n, b + k - 1)
    first = s[::b]  # window start of each tile's first query
    rs = first.clamp(max=n - R)
    r = rs[:, None, None] + torch.arange(R)[None, None, :]  # (nT, 1, R) absolute key positions
    sq = s.view(-1, b, 1)  # (nT, b, 1)
    return rs, R, (r >= sq) & (r < sq + k)


@functools.lru_cache(maxsize=64)
def _tile_plan(grid: Grid, window: Grid, tile: Grid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Key-region indices (n_tiles, R) into the flat grid and the in-window mask (n_tiles, tile_q, R) or None."""
    T, H, W = grid
    (rs_t, Rt, m_t), (rs_h, Rh, m_h), (rs_w, Rw, m_w) = (_axis_tiles(n, k, b) for n, k, b in zip(grid, window, tile))
    ot, oh, ow = torch.arange(Rt), torch.arange(Rh), torch.arange(Rw)
    t = (rs_t[:, None] + ot)[:, None, None, :, None, None]  # (nt, 1, 1, Rt, 1, 1)
    h = (rs_h[:, None] + oh)[None, :, None, None, :, None]
    w = (rs_w[:, None] + ow)[None, None, :, None, None, :]
    idx = ((t * H + h) * W + w).reshape(-1, Rt * Rh * Rw)  # (n_tiles, R)
    bt, bh, bw = tile
    mask = (m_t[:, None, None, :, None, None, :, None, None]
            & m_h[None, :, None, None, :, None, None, :, None]
            & m_w[None, None, :, None, None, :, None, None, :])  # (nt, nh, nw, bt, bh, bw, Rt, Rh, Rw)
    mask = mask.reshape(idx.shape[0], bt * bh * bw, Rt * Rh * Rw)
    return idx, (None if bool(mask.all()) else mask)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@functools.lru_cache(maxsize=64)
def choose_tiles(grid: Grid, window: Grid, overhead: int = 64) -> Grid:
    """Query tile per axis minimising ``n_tiles * (tile_q + overhead) * region`` (pairs plus gather cost).

    ``overhead`` weighs a gathered key row against a query-key pair; 64 picked the fastest
    tiling of every grid timed on a CPU (bf16 forward + backward; the tilings and times are in
    benchmarks/RESULTS.md).
    """
    best, best_cost = grid, math.inf
    for tile in itertools.product(*(_divisors(n) for n in grid)):
        n_tiles = math.prod(n // b for n, b in zip(grid, tile))
        region = math.prod(min(n, b + k - 1) for n, k, b in zip(grid, window, tile))
        cost = n_tiles * (math.prod(tile) + overhead) * region
        if cost < best_cost:
            best, best_cost = tile, cost
    return best  # type: ignore[return-value]


def _blocked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Grid, window: Grid,
             tile: Grid | None) -> torch.Tensor:
    B, nh, L, hd = q.shape
    tile = tile or choose_tiles(grid, window)
    idx, mask = _tile_plan(grid, window, tuple(tile))
    idx = idx.to(q.device)
    n_tiles, R = idx.shape
    (T, H, W), (bt, bh, bw) = grid, tile
    # Queries (B, nh, L, hd) -> tiles (B * nh, n_tiles, tile_q, hd).
    qt = q.reshape(B * nh, T // bt, bt, H // bh, bh, W // bw, bw, hd).permute(0, 1, 3, 5, 2, 4, 6, 7)
    qt = qt.reshape(B * nh, n_tiles, bt * bh * bw, hd)
    # Keys/values of every tile's region (B * nh, n_tiles, R, hd): a gather, never an (L, L) matrix.
    flat = idx.reshape(-1)
    kt = k.reshape(B * nh, L, hd).index_select(1, flat).view(B * nh, n_tiles, R, hd)
    vt = v.reshape(B * nh, L, hd).index_select(1, flat).view(B * nh, n_tiles, R, hd)
    out = scaled_dot_product_attention(qt, kt, vt, attn_mask=None if mask is None else mask.to(q.device))
    out = out.view(B * nh, T // bt, H // bh, W // bw, bt, bh, bw, hd).permute(0, 1, 4, 2, 5, 3, 6, 7)
    return out.reshape(B, nh, L, hd)


# ----------------------------------------------------------------------------- flex (CUDA)
def flex_available() -> bool:
    """Whether PyTorch ships FlexAttention (torch >= 2.5)."""
    try:
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.lru_cache(maxsize=32)
def _flex_block_mask(grid: Grid, window: Grid, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    T, H, W = grid
    kt, kh, kw = window

    def inside(qi, ki, n, k):
        s = (qi - k // 2).clamp(0, n - k)
        return (ki >= s) & (ki < s + k)

    def mask_mod(b, h, q_idx, kv_idx):
        return (inside(q_idx // (H * W), kv_idx // (H * W), T, kt)
                & inside((q_idx // W) % H, (kv_idx // W) % H, H, kh)
                & inside(q_idx % W, kv_idx % W, W, kw))

    L = T * H * W
    return create_block_mask(mask_mod, None, None, L, L, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def _flex(q, k, v, grid: Grid, window: Grid) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    block_mask = _flex_block_mask(grid, window, str(q.device))
    if q.device.type == "cuda":
        return _compiled_flex()(q, k, v, block_mask=block_mask)
    with warnings.catch_warnings():  # eager CPU flex is a correctness reference only
        warnings.simplefilter("ignore")
        return flex_attention(q, k, v, block_mask=block_mask)


# ----------------------------------------------------------------------------- entry point
def neighborhood_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, grid: Grid, window: tuple[int, ...], *,
                           backend: str = "auto", tile: Grid | None = None) -> torch.Tensor:
    """3D neighbourhood attention (see the module docstring).

    Args:
        q, k, v: (B, n_heads, L, head_dim) with ``L = T * H * W`` tokens in row-major (t, h, w) order.
        grid: (T, H, W) token grid.
        window: (k_t, k_h, k_w) cells per axis; odd, or 0 / >= the axis for the whole axis.
        backend: ``"auto"`` (flex on CUDA, blocked elsewhere), ``"blocked"``, ``"reference"``
            or ``"flex"``.
        tile: query tile per axis of the blocked path (each must divide its axis); default
            :func:`choose_tiles`.

    Returns:
        (B, n_heads, L, head_dim).

    Raises:
        ValueError: a bad window, a grid that does not match ``L``, or an unknown backend.
    """
    grid = tuple(int(n) for n in grid)  # type: ignore[assignment]
    if len(grid) != 3 or math.prod(grid) != q.shape[-2] or k.shape[-2] != q.shape[-2]:
        raise ValueError(f"grid {grid} does not match {q.shape[-2]} queries / {k.shape[-2]} keys")
    win = normalize_window(grid, window)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if win == grid:  # the window covers everything: exactly full attention
        return scaled_dot_product_attention(q, k, v)
    if backend == "auto":
        backend = "flex" if q.device.type == "cuda" and flex_available() else "blocked"
    if backend == "reference":
        return scaled_dot_product_attention(q, k, v, attn_mask=neighborhood_mask(grid, win, q.device))
    if backend == "flex":
        return _flex(q, k, v, grid, win)
    if tile is not None and any(n % b for n, b in zip(grid, tile)):
        raise ValueError(f"tile {tuple(tile)} must divide the grid {grid} on every axis")
    return _blocked(q, k, v, grid, win, tuple(tile) if tile is not None else None)
