"""Adaptive density control of 3D Gaussian Splatting (Kerbl et al. 2023, Sec. 5.2).

Follows gsplat's ``DefaultStrategy``: every ``every`` steps between ``start`` and ``stop``,
Gaussians whose average view-space positional gradient exceeds ``grad_threshold`` grow —
small ones (max scale <= ``scale_threshold`` x scene scale) are cloned, large ones split
into two samples of themselves with scales / 1.6 — and Gaussians with opacity below
``prune_opacity`` (or, after the first opacity reset, larger than ``prune_scale`` x scene
scale) are removed. The view-space gradient is that of the projected means in pixels,
scaled to normalised device units (x W/2, x H/2, x cameras per step) as gsplat does, so the
3DGS threshold 0.0002 carries over. Adam's moments follow their Gaussians (zeros for new ones).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from robodream.gaussians.projection import quat_to_rotmat


@dataclass
class DensifyConfig:
    """Schedule and thresholds of adaptive density control (steps count optimiser steps)."""

    start: int = 300  # first step that grows or prunes
    stop_fraction: float = 0.6  # no growth after this fraction of the steps
    every: int = 100  # steps between refinements
    grad_threshold: float = 0.0002  # mean view-space gradient (NDC units) that makes a Gaussian grow
    scale_threshold: float = 0.01  # x scene scale: clone at or below, split above
    prune_opacity: float = 0.005  # remove Gaussians less opaque than this
    prune_scale: float = 0.1  # x scene scale: remove larger Gaussians (after an opacity reset)
    reset_opacity_every: int = 0  # clamp opacities to 0.01 every this many steps (0 = never)
    max_gaussians: int = 60_000  # growth stops at this count (bounds the cost of a step)


class DensityControl:
    """Accumulates view-space gradients and grows/prunes Gaussians held in an Adam optimiser.

    ``params`` maps the names of :class:`robodream.gaussians.scene.GaussianParams` fields to
    leaf tensors, each alone in its own optimiser param group.
    """

    def __init__(self, cfg: DensifyConfig, scene_scale: float, total_steps: int, generator: torch.Generator):
        self.cfg = cfg
        self.scene_scale = scene_scale
        self.stop = int(cfg.stop_fraction * total_steps)
        self.gen = generator
        self.grad2d: Tensor | None = None
        self.count: Tensor | None = None
        self.did_reset = False

    def accumulate(self, means2d: Tensor, radii: Tensor, width: int, height: int) -> None:
        """Add one step's view-space gradients; ``means2d`` (C, N, 2) with ``.grad``, ``radii`` (C, N, 2)."""
        if means2d.grad is None:
            return
        C, N = means2d.shape[:2]
        if self.grad2d is None or self.grad2d.shape[0] != N:
            self.grad2d = torch.zeros(N)
            self.count = torch.zeros(N)
        g = means2d.grad.detach() * torch.tensor([width / 2.0 * C, height / 2.0 * C])
        vis = (radii > 0).all(-1)  # (C, N)
        norms = torch.where(vis, g.norm(dim=-1), 0.0)
        self.grad2d += norms.sum(0)
        self.count += vis.sum(0)

    def step(self, step: int, params: dict[str, Tensor], opt: torch.optim.Optimizer) -> dict[str, int]:
        """Refine at scheduled steps; returns counts of cloned, split and pruned Gaussians."""
        c = self.cfg
        out = {"cloned": 0, "split": 0, "pruned": 0}
        if step < c.start or step % c.every != 0:
            return out
        if step <= self.stop and self.grad2d is not None:
            avg = self.grad2d / self.count.clamp_min(1)
            high = avg > c.grad_threshold
            room = c.max_gaussians - params["means"].shape[0]
            if int(high.sum()) > max(room, 0):  # keep the strongest within the budget
                keep = torch.zeros_like(high)
                if room > 0:
                    keep[torch.topk(torch.where(high, avg, -1.0), room).indices] = True
                high = keep
            small = torch.exp(params["log_scales"].detach()).max(-1).values <= c.scale_threshold * self.scene_scale
            clone, split = high & small, high & ~small
            out["cloned"], out["split"] = int(clone.sum()), int(split.sum())
            if out["cloned"]:
                _append(params, opt, {k: v.detach()[clone] for k, v in params.items()})
                split = torch.cat([split, torch.zeros(out["cloned"], dtype=torch.bool)])
            if out["split"]:
                self._split(params, opt, split)
        opac = torch.sigmoid(params["opacity_logits"].detach())
        prune = opac < c.prune_opacity
        if self.did_reset:
            prune |= torch.exp(params["log_scales"].detach()).max(-1).values > c.prune_scale * self.scene_scale
        if bool(prune.any()) and int((~prune).sum()) > 0:
            _select(params, opt, ~prune)
            out["pruned"] = int(prune.sum())
        if c.reset_opacity_every and step % c.reset_opacity_every == 0 and step <= self.stop:
            logit = math.log(0.01 / 0.99)
            with torch.no_grad():
                params["opacity_logits"].clamp_(max=logit)
            _reset_state(opt, params["opacity_logits"])
            self.did_reset = True
        self.grad2d = self.count = None
        return out

    def _split(self, params: dict[str, Tensor], opt: torch.optim.Optimizer, mask: Tensor) -> None:
        src = {k: v.detach()[mask] for k, v in params.items()}
        scales = torch.exp(src["log_scales"])  # (M, 3)
        R = quat_to_rotmat(src["quats"])  # (M, 3, 3)
        new = []
        for _ in range(2):  # two samples of the parent Gaussian, 1.6x smaller
            eps = torch.randn(scales.shape, generator=self.gen)
            g = dict(src)
            g["means"] = src["means"] + torch.einsum("mij,mj->mi", R, eps * scales)
            g["log_scales"] = src["log_scales"] - math.log(1.6)
            new.append(g)
        _select(params, opt, ~mask)
        _append(params, opt, {k: torch.cat([new[0][k], new[1][k]]) for k in src})


def _groups(opt: torch.optim.Optimizer, t: Tensor):
    for group in opt.param_groups:
        if group["params"][0] is t:
            return group
    raise KeyError("tensor not in optimiser")


def _replace(params, opt, name: str, new: Tensor, state_fn) -> None:
    old = params[name]
    group = _groups(opt, old)
    new = new.detach().clone().requires_grad_(True)
    state = opt.state.pop(old, None)
    group["params"][0] = new
    if state is not None:
        state = {k: (state_fn(v) if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in state.items()}
        opt.state[new] = state
    params[name] = new


def _select(params: dict[str, Tensor], opt: torch.optim.Optimizer, keep: Tensor) -> None:
    """Keep only the Gaussians in ``keep`` (N,) bool; their Adam moments come along."""
    for name in list(params):
        _replace(params, opt, name, params[name].detach()[keep], lambda v: v[keep])


def _append(params: dict[str, Tensor], opt: torch.optim.Optimizer, extra: dict[str, Tensor]) -> None:
    """Append Gaussians (same field names); their Adam moments start at zero."""
    for name in list(params):
        add = extra[name]
        _replace(params, opt, name, torch.cat([params[name].detach(), add]),
                 lambda v, add=add: torch.cat([v, torch.zeros_like(add)]))


def _reset_state(opt: torch.optim.Optimizer, t: Tensor) -> None:
    state = opt.state.get(t)
    if state:
        for k in ("exp_avg", "exp_avg_sq"):
            if k in state:
                state[k].zero_()
