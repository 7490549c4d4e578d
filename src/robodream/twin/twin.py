"""The digital twin: particles for physics, Gaussians for appearance, visual forces between them
(Physically Embodied Gaussian Splatting, Abou-Chakra et al., CoRL 2024, Sec. 3-4).

Every control step (:meth:`DigitalTwin.step`):

1. **Predict**: the physics (:class:`~robodream.twin.pbd.ParticleWorld`) advances with the robot's
   new link poses (kinematic particles) and last step's visual forces.
2. **Correct**: the Gaussians are placed on their bodies' predicted poses and rendered from every
   observed camera over the static background (:func:`robodream.gaussians.rasterize`, the cameras
   batched in one call); ``visual_steps`` Adam steps on the photometric L1 error against the
   observed frames move the dynamic bodies' Gaussian centres by ``delta_mu``.
3. **Visual force**: ``F_i = opacity_i * kp * delta_mu_i`` per Gaussian, summed per body into a
   force and a torque about its centre of mass, applied during the next physics step. The
   Gaussians then return to their bodies (they only ever measure the disagreement).

The robot's Gaussians are posed from its links and never optimised; they occlude the objects as
the real robot does.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from robodream.twin.pbd import ParticleWorld
from robodream.twin.scene import TwinConfig, TwinScene


def _t(a, dev) -> Tensor:
    return torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)


def _cat(parts: list[np.ndarray], k: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, k), np.float32)


class DigitalTwin:
    """The twin of a :class:`TwinScene` (module docstring).

    Args:
        scene: bodies, cameras and background (:func:`~robodream.twin.scene.build_scene`).
        cfg: :class:`TwinConfig`.
        dynamic_poses: initial world pose of each dynamic body, ``[(pos (3,), rot (3, 3))]``
            (the twin starts where the scene is; a perception system's initial estimate).
        kinematic_poses: the robot links' poses, likewise.
    """

    def __init__(self, scene: TwinScene, cfg: TwinConfig, dynamic_poses: list, kinematic_poses: list) -> None:
        self.scene, self.cfg = scene, cfg
        dev = self.dev = torch.device(cfg.device)
        self.dt = scene.control_dt
        # body-frame -> world at start
        self.body_rest = [(_t(p, dev), _t(R, dev)) for p, R in dynamic_poses]
        x = torch.cat([_t(b.particles, dev) @ R.T + p for b, (p, R) in zip(scene.dynamic, self.body_rest)])
        body = torch.cat([torch.full((len(b.particles),), i) for i, b in enumerate(scene.dynamic)])
        self.k_local = [_t(b.particles, dev) for b in scene.kinematic]
        self.physics = ParticleWorld(x, body, _t([b.mass for b in scene.dynamic], dev),
                                     _t([b.friction for b in scene.dynamic], dev), self._kinematic(kinematic_poses),
                                     radius=cfg.particle_radius, table_z=scene.table_z, substeps=cfg.substeps,
                                     iterations=cfg.iterations, kinematic_friction=self._kinematic_friction(),
                                     joints=[b.joint for b in scene.dynamic])
        self.start_com = self.physics.com.clone()
        # the body frame's origin relative to the particles' centre of mass, at rest
        self.origin_offset = [p - self.physics.com[i] for i, (p, _) in enumerate(self.body_rest)]
        # Gaussians: dynamic bodies' first (optimised), then the robot's (posed)
        self.g_local_dyn = [_t(b.gaussians, dev) for b in scene.dynamic]
        self.g_body_dyn = torch.cat([torch.full((len(b.gaussians),), i) for i, b in enumerate(scene.dynamic)]).long()
        self.g_local_kin = [_t(b.gaussians, dev) for b in scene.kinematic]
        colors = _cat([b.colors for b in scene.dynamic] + [b.colors for b in scene.kinematic], 3)
        self.color_logits = torch.logit(_t(colors, dev).clamp(0.02, 0.98))
        n_dyn, n_all = len(self.g_body_dyn), len(colors)
        spacing = torch.cat([torch.full((n_dyn,), cfg.gaussian_spacing), torch.full((n_all - n_dyn,), cfg.robot_gaussian_spacing)])
        self.scales = (0.6 * spacing)[:, None].expand(-1, 3).to(dev).contiguous()
        self.quats = torch.tensor([1.0, 0, 0, 0], device=dev).expand(n_all, 4).contiguous()
        self.opacities = torch.full((n_all,), 0.9, device=dev)
        self.Ks, self.viewmats = _t(scene.Ks, dev), _t(scene.viewmats, dev)
        self.background = _t(scene.background, dev)
        self.kin_poses = kinematic_poses
        self.force = torch.zeros(len(scene.dynamic), 3, device=dev)
        self.torque = torch.zeros(len(scene.dynamic), 3, device=dev)
        self.last_loss: float | None = None

    # ------------------------------------------------------------------ poses
    def _kinematic_friction(self) -> Tensor | None:
        """The kinematic particles' friction coefficients (K,), None when a body lacks them."""
        parts = [b.frictions for b in self.scene.kinematic]
        if any(a is None for a in parts):
            return None
        return _t(np.concatenate(parts), self.dev) if parts else torch.zeros(0, device=self.dev)

    def _kinematic(self, poses: list) -> Tensor:
        """World positions of the kinematic particles (K, 3) for link poses ``[(pos, rot)]``."""
        parts = [loc @ _t(R, self.dev).T + _t(p, self.dev) for loc, (p, R) in zip(self.k_local, poses)]
        return torch.cat(parts) if parts else torch.zeros(0, 3, device=self.dev)

    def body_poses(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """Each dynamic body's estimated world pose (position (3,) of its MuJoCo body frame, rotation (3, 3))."""
        com, R = self.physics.poses()
        out = []
        for i, (_, R0) in enumerate(self.body_rest):
            out.append(((com[i] + R[i] @ self.origin_offset[i]).cpu().numpy().astype(np.float64),
                        (R[i] @ R0).cpu().numpy().astype(np.float64)))
        return out

    def _gaussian_means(self) -> tuple[Tensor, Tensor]:
        """World centres of the dynamic bodies' Gaussians (Nd, 3) and the robot's (Nk, 3)."""
        poses = self.body_poses()
        dyn = [loc @ _t(R, self.dev).T + _t(p, self.dev) for loc, (p, R) in zip(self.g_local_dyn, poses)]
        kin = [loc @ _t(R, self.dev).T + _t(p, self.dev) for loc, (p, R) in zip(self.g_local_kin, self.kin_poses)]
        return _cat_t(dyn, self.dev), _cat_t(kin, self.dev)

    # ------------------------------------------------------------------ rendering
    def render(self, means: Tensor | None = None, colors: Tensor | None = None) -> Tensor:
        """The twin seen by every camera over the background: (C, H, W, 3) float in [0, 1]."""
        from robodream.gaussians import rasterize

        if means is None:
            means = torch.cat(self._gaussian_means())
        S = self.cfg.image_size
        out = rasterize(means, self.quats, self.scales, self.opacities,
                        torch.sigmoid(self.color_logits) if colors is None else colors, self.viewmats, self.Ks, S, S)
        return out.rgb + (1.0 - out.alpha[..., None]) * self.background

    def render_particles(self) -> Tensor:
        """The particles as small Gaussians (dynamic bodies orange, robot grey) over the background."""
        from robodream.gaussians import rasterize

        x, k = self.physics.x, self.physics.k
        pts = torch.cat([x, k])
        col = torch.cat([torch.tensor([1.0, 0.55, 0.1]).expand(len(x), 3), torch.tensor([0.6, 0.6, 0.6]).expand(len(k), 3)])
        s = torch.full((len(pts), 3), 0.6 * self.cfg.particle_radius)
        q = torch.tensor([1.0, 0, 0, 0]).expand(len(pts), 4)
        S = self.cfg.image_size
        out = rasterize(pts, q, s, torch.full((len(pts),), 0.95), col, self.viewmats, self.Ks, S, S)
        return out.rgb + (1.0 - out.alpha[..., None]) * self.background

    @staticmethod
    def _frames(observed: np.ndarray, dev) -> Tensor:
        return torch.as_tensor(observed, device=dev).float() / 255.0

    def fit_colors(self, observed: np.ndarray) -> float:
        """Fit every Gaussian's colour to the first observed frames (C, H, W, 3) uint8 at the current
        poses (``color_fit_steps`` Adam steps on the L1 error); returns the final error."""
        target = self._frames(observed, self.dev)
        logits = self.color_logits.clone().requires_grad_(True)
        opt = torch.optim.Adam([logits], lr=0.1)
        means = torch.cat(self._gaussian_means()).detach()
        loss = None
        for _ in range(self.cfg.color_fit_steps):
            loss = (self.render(means, torch.sigmoid(logits)) - target).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.color_logits = logits.detach()
        return float(loss.detach()) if loss is not None else float("nan")

    # ------------------------------------------------------------------ step
    def visual_forces(self, observed: np.ndarray) -> tuple[Tensor, Tensor, float]:
        """Forces (B, 3) and torques (B, 3) that pull each dynamic body towards what the cameras see,
        and the photometric error before the correction (module docstring, steps 2-3)."""
        target = self._frames(observed, self.dev)
        dyn, kin = self._gaussian_means()
        dyn, kin = dyn.detach(), kin.detach()
        delta = torch.zeros_like(dyn, requires_grad=True)
        opt = torch.optim.Adam([delta], lr=self.cfg.visual_lr)
        colors = torch.sigmoid(self.color_logits)
        first = None
        for _ in range(self.cfg.visual_steps):
            loss = photometric_error(self.render(torch.cat([dyn + delta, kin]), colors), target, self.cfg.pyramid)
            first = float(loss.detach()) if first is None else first
            opt.zero_grad()
            loss.backward()
            opt.step()
        B = len(self.scene.dynamic)
        f = (self.opacities[:len(dyn), None] * self.cfg.kp * delta.detach())  # (Nd, 3)
        force = torch.zeros(B, 3, device=self.dev).index_add_(0, self.g_body_dyn, f)
        torque = torch.zeros(B, 3, device=self.dev)
        if self.cfg.visual_torque:  # with the force at the centre of mass: each Gaussian's force's moment
            arm = dyn - self.physics.com[self.g_body_dyn]
            torque.index_add_(0, self.g_body_dyn, torch.cross(arm, f, dim=-1))
        return force, torque, first if first is not None else float("nan")

    def step(self, kinematic_poses: list, observed: np.ndarray | None) -> dict:
        """One control step (module docstring): the robot links' new poses ``[(pos, rot)]`` and the
        observed frames (C, H, W, 3) uint8 (None: physics only). Returns ``{"photometric_l1",
        "force_n"}`` (the error before correction, the largest body force)."""
        self.kin_poses = kinematic_poses
        on = self.cfg.forces
        # damping of the visually driven motion. A free body the robot holds or pushes moves as the robot makes it
        # (damping a carried puck dragged it); a jointed one is damped even then: the robot can only push it along
        # its joint, and undamped it coasts on past the robot when its mass is wrong (door-open seed 4, RESULTS.md)
        damped = ~self.physics.touching | self.physics.jointed
        damping = (self.cfg.kd / self.physics.mass) * damped if on and self.cfg.kd else None  # (B,) 1/s
        self.physics.step(self.dt, self._kinematic(kinematic_poses), self.force if on else None,
                          self.torque if on else None, damping)
        info = {"photometric_l1": None, "force_n": 0.0}
        if self.cfg.forces and observed is not None and self.cfg.visual_steps:
            self.force, self.torque, info["photometric_l1"] = self.visual_forces(observed)
            info["force_n"] = float(self.force.norm(dim=-1).max())
        return info

    def displace(self, offset) -> None:
        """A wrong state estimate for the cameras to correct: every free body moved by ``offset`` (3,)
        metres, every jointed one as far along its joint (:meth:`ParticleWorld.displace`)."""
        self.physics.displace(_t(offset, self.dev))

    def diverged(self) -> bool:
        """NaN, or a body flown more than 1 m from its start or faster than 20 m/s."""
        return self.physics.diverged(self.start_com)


def photometric_error(render: Tensor, target: Tensor, levels: int = 0) -> Tensor:
    """Mean L1 between images (C, H, W, 3), plus the same at ``levels`` coarser scales (2x2 average
    pooling each): the coarse terms still see an object a few pixels off, where the fine one has no
    gradient left."""
    loss = (render - target).abs().mean()
    a, b = render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    for _ in range(levels):
        if min(a.shape[-2:]) < 4:
            break
        a, b = torch.nn.functional.avg_pool2d(a, 2), torch.nn.functional.avg_pool2d(b, 2)
        loss = loss + (a - b).abs().mean()
    return loss


def _cat_t(parts: list[Tensor], dev) -> Tensor:
    return torch.cat(parts) if parts else torch.zeros(0, 3, device=dev)
