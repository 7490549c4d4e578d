"""Rectified flow (flow matching on straight paths) shared by every generative model here.

Convention (GigaWorld-Policy, arXiv 2603.17240, Sec. 3.2; GigaWorld-0, arXiv 2511.19861):
``x_t = (1 - t) * x0 + t * eps`` with ``t`` in [0, 1], ``t = 0`` the data and ``t = 1`` pure
Gaussian noise; the network predicts the velocity ``v = eps - x0`` (so ``dx/dt = v``) and
sampling integrates from ``t = 1`` down to ``t = 0``. One noise level is drawn per sample
and passed through the time shift ``t' = s t / (1 + (s - 1) t)`` (s = 5 in the paper), which
moves training mass toward high noise.
"""

from __future__ import annotations

import torch


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Time shift ``t' = s t / (1 + (s - 1) t)``; identity for ``shift == 1``. Any shape."""
    if shift == 1.0:
        return t
    return shift * t / (1.0 + (shift - 1.0) * t)


def sample_time(batch: int, shift: float, *, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> torch.Tensor:
    """One flow time per sample: uniform in [0, 1], then shifted. Returns (batch,) float32."""
    t = torch.rand(batch, generator=generator, device="cpu").to(device)
    return shift_time(t, shift)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Noisy sample ``x_t = (1 - t) x0 + t eps``; ``t`` (B,) broadcasts over x0's trailing dims."""
    t = t.view(-1, *([1] * (x0.dim() - 1)))
    return (1.0 - t) * x0 + t * eps


def velocity_target(x0: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Regression target of the network: ``v = eps - x0``."""
    return eps - x0


def euler_timesteps(n_steps: int, shift: float) -> torch.Tensor:
    """The ``n_steps + 1`` times of an Euler sampler from 1 to 0, shifted like training. (n+1,)"""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    return shift_time(torch.linspace(1.0, 0.0, n_steps + 1), shift)


def euler_step(x: torch.Tensor, v: torch.Tensor, t: float, t_next: float) -> torch.Tensor:
    """One Euler step ``x_{t_next} = x_t + (t_next - t) v``."""
    return x + (t_next - t) * v
