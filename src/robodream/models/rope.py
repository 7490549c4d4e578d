"""Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864) over 1 to 3 axes.

A head of size ``hd`` is split into per-axis sections (for video: time, height, width, as
in GigaWorld-0-Video, arXiv 2511.19861, Sec. 3.1, and Wan2.1). Each section rotates its
channel pairs ``(x[2i], x[2i+1])`` by ``pos_axis * theta ** (-2i / d_axis)``, so the dot
product of a rotated query and key depends only on their *difference* in position along
every axis. Positions are floats in grid units (frame index, token row, token column).
"""

from __future__ import annotations

import torch
import torch.nn as nn


def split_head_dim(head_dim: int, n_axes: int = 3) -> tuple[int, ...]:
    """Per-axis section sizes (each even) summing to ``head_dim``; earlier axes get the remainder.

    Raises:
        ValueError: ``head_dim`` cannot be split into ``n_axes`` even sections.
    """
    if head_dim % 2 or head_dim < 2 * n_axes:
        raise ValueError(f"head_dim {head_dim} cannot be split into {n_axes} even RoPE sections")
    pairs = head_dim // 2
    base, rem = divmod(pairs, n_axes)
    return tuple(2 * (base + (1 if i < rem else 0)) for i in range(n_axes))


class RotaryEmbedding(nn.Module):
    """RoPE over ``len(sections)`` axes; ``sections[i]`` channels of each head rotate with axis i.

    Args:
        head_dim: channels per attention head (even).
        sections: channels per axis (even, summing to ``head_dim``); default: an even 3-way split.
        theta: base period; small grids (a few frames, 4x8 tokens) use a small theta so that
            most frequencies vary across the grid.
    """

    def __init__(self, head_dim: int, sections: tuple[int, ...] | None = None, theta: float = 100.0) -> None:
        super().__init__()
        sections = tuple(sections) if sections is not None else split_head_dim(head_dim)
        if sum(sections) != head_dim or any(s % 2 for s in sections):
            raise ValueError(f"RoPE sections {sections} must be even and sum to head_dim {head_dim}")
        self.head_dim, self.sections = head_dim, sections
        inv = [theta ** (-torch.arange(0, s, 2, dtype=torch.float64) / s) for s in sections]
        # axis_of_pair[j] = which axis pair j rotates with; inv_freq[j] its frequency (rad / grid unit).
        self.register_buffer("inv_freq", torch.cat(inv).float(), persistent=False)
        self.register_buffer("axis_of_pair", torch.cat([torch.full((s // 2,), i) for i, s in enumerate(sections)]),
                             persistent=False)

    def angles(self, pos: torch.Tensor, axes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin of the rotation angles for positions ``pos`` (L, n_axes) -> (L, head_dim / 2) each.

        ``axes`` restricts the rotation to some axes (the others keep angle 0), e.g. ``(0,)``
        for a time-only rotation in cross-attention.
        """
        ang = pos.float()[:, self.axis_of_pair] * self.inv_freq  # (L, hd/2)
        if axes is not None:
            keep = torch.zeros(len(self.sections), dtype=torch.bool, device=pos.device)
            keep[list(axes)] = True
            ang = ang * keep[self.axis_of_pair]
        return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (..., L, hd) by angles with cos/sin (L, hd/2); same shape and dtype."""
    xf = x.float().unflatten(-1, (-1, 2))  # (..., L, hd/2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def grid_positions(grid: tuple[int, ...], device: torch.device | str = "cpu") -> torch.Tensor:
    """Integer coordinates of a row-major grid, e.g. (T, H, W) -> (T*H*W, 3) float."""
    axes = [torch.arange(n, device=device, dtype=torch.float32) for n in grid]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(grid))
