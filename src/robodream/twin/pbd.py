"""Position-based dynamics of rigid bodies made of particles (Müller et al., "Position Based Dynamics",
2007; rigid shape matching, Müller et al. 2005; contacts and friction as in Macklin et al., "Unified
Particle Physics for Real-Time Applications", SIGGRAPH 2014) — the digital twin's physics.

Written in PyTorch rather than NVIDIA Warp: the twin has a few hundred particles, which batched
tensor operations handle in well under a millisecond per substep on a CPU; the same code runs on
CUDA with the rest of robodream (the rasteriser, the optimiser of the visual forces) without a
second kernel language or its compile step.

Per substep of length ``h``: velocities take gravity and the external (visual) forces; predicted
positions ``p = x + h v``; then ``iterations`` rounds of (1) the table plane, (2) contacts with the
kinematic (robot) particles and between particles of different dynamic bodies, each with
position-level Coulomb friction (static below ``mu * depth``, else kinetic), corrections averaged
per particle (Jacobi), and (3) rigid shape matching per body (the best rotation of the rest shape
onto the current particles, from the SVD of their covariance, replaces every particle's position,
so bodies stay exactly rigid); finally ``v = (p - x) / h``, ``x = p``.

Kinematic particles are moved along a straight line from their previous to their new positions
over the substeps; they have infinite mass (the robot is position-controlled).

Tensor conventions: P dynamic particles, K kinematic particles, B dynamic bodies; metres, seconds,
kilograms, newtons.
"""

from __future__ import annotations

import torch
from torch import Tensor


def polar_rotation(A: Tensor) -> Tensor:
    """The rotation (B, 3, 3) of the polar decomposition of (B, 3, 3) matrices (a reflection is
    flipped to the nearest rotation). A non-finite matrix gives NaN (the divergence check sees it)."""
    finite = torch.isfinite(A).all(-1).all(-1)  # (B,)
    eye = torch.eye(3, dtype=A.dtype, device=A.device)
    U, _, Vh = torch.linalg.svd(torch.where(finite[:, None, None], A, eye))
    d = torch.sign(torch.linalg.det(U @ Vh))
    D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), torch.where(d == 0, 1.0, d)], -1))
    return torch.where(finite[:, None, None], U @ D @ Vh, torch.full_like(A, float("nan")))


class ParticleWorld:
    """Dynamic rigid bodies of particles, kinematic particles and a table plane (module docstring).

    Args:
        x: (P, 3) dynamic particles' world positions at rest; body: (P,) long, each one's body.
        mass: (B,) body masses (kg); friction: (B,) sliding friction coefficients (table and robot contacts).
        kinematic: (K, 3) kinematic particles' positions.
        radius: particle radius (m); table_z: the table plane's height (m).
        kinematic_friction: (K,) their friction coefficients; a robot contact takes the larger of
            the two particles' (MuJoCo's rule; None: the dynamic particle's alone).
        substeps, iterations: see the module docstring. gravity: m/s^2 along z.
    """

    def __init__(self, x: Tensor, body: Tensor, mass: Tensor, friction: Tensor, kinematic: Tensor, *, radius: float,
                 table_z: float, substeps: int = 4, iterations: int = 4, gravity: float = -9.81,
                 kinematic_friction: Tensor | None = None) -> None:
        self.x = x.clone().float()
        self.v = torch.zeros_like(self.x)
        self.body = body.long()
        self.B = int(mass.numel())
        counts = torch.bincount(self.body, minlength=self.B).float()
        self.mass = mass.float()
        self.m = (self.mass / counts)[self.body]  # (P,) particle masses
        self.mu = friction.float()[self.body]  # (P,)
        self.k = kinematic.clone().float()
        self.radius, self.table_z = float(radius), float(table_z)
        self.k_mu = torch.zeros(len(self.k)) if kinematic_friction is None else kinematic_friction.float()
        if self.k_mu.shape != (len(self.k),):
            raise ValueError(f"kinematic_friction needs shape ({len(self.k)},), got {tuple(self.k_mu.shape)}")
        self.substeps, self.iterations = int(substeps), int(iterations)
        self.g = torch.tensor([0.0, 0.0, gravity])
        com = self._com(self.x)
        self.rest = self.x - com[self.body]  # (P, 3) rest offsets from the body's centre of mass
        self.R = torch.eye(3).repeat(self.B, 1, 1)  # rotation from rest
        self.com = com
        self.other_body = self.body[:, None] != self.body[None, :]  # (P, P) pairs that can touch
        self.touching = torch.zeros(self.B, dtype=torch.bool)  # bodies the robot touched during the last step

    # ------------------------------------------------------------------ helpers
    def _com(self, p: Tensor) -> Tensor:
        return torch.zeros(self.B, 3).index_add_(0, self.body, p * self.m[:, None]) / self.mass[:, None]

    def _shape_match(self, p: Tensor) -> Tensor:
        c = self._com(p)
        d = p - c[self.body]
        A = torch.zeros(self.B, 3, 3).index_add_(0, self.body, self.m[:, None, None] * d[:, :, None] * self.rest[:, None, :])
        R = polar_rotation(A)
        self.com, self.R = c, R
        return c[self.body] + torch.einsum("pij,pj->pi", R[self.body], self.rest)

    @staticmethod
    def _friction(dx: Tensor, n: Tensor, depth: Tensor, mu: Tensor) -> Tensor:
        """Position-level Coulomb friction: the correction (N, 3) cancelling the tangential part of the
        relative displacement ``dx`` (N, 3) up to ``mu * depth``."""
        t = dx - (dx * n).sum(-1, keepdim=True) * n
        tl = t.norm(dim=-1, keepdim=True)
        scale = torch.where(tl <= mu[:, None] * depth[:, None], torch.ones_like(tl),
                            mu[:, None] * depth[:, None] / tl.clamp_min(1e-12))
        return -t * scale

    # ------------------------------------------------------------------ step
    def step(self, dt: float, kinematic: Tensor, force: Tensor | None = None, torque: Tensor | None = None,
             damping: Tensor | None = None) -> None:
        """Advance by ``dt`` seconds while the kinematic particles move to ``kinematic`` (K, 3);
        ``force`` / ``torque`` (B, 3): external force (N) and torque (N m, about the centre of mass)
        on each body, held over the step; ``damping`` (B,) 1/s: each body's velocity decays as
        ``dv/dt = -damping v`` (integrated implicitly: stable for any value)."""
        h = dt / self.substeps
        k0, k1 = self.k, kinematic.float()
        self.touching = torch.zeros(self.B, dtype=torch.bool)
        acc = self.g.expand_as(self.x).clone()
        if force is not None:
            acc = acc + (force / self.mass[:, None])[self.body]
        if torque is not None:
            r = self.x - self.com[self.body]
            inertia = torch.zeros(self.B, 3, 3).index_add_(
                0, self.body, self.m[:, None, None] * ((r * r).sum(-1)[:, None, None] * torch.eye(3) - r[:, :, None] * r[:, None, :]))
            alpha = torch.linalg.solve(inertia + 1e-9 * torch.eye(3), torque)  # (B, 3) angular acceleration
            acc = acc + torch.cross(alpha[self.body], r, dim=-1)
        for s in range(self.substeps):
            kp_prev = k0 + (k1 - k0) * (s / self.substeps)
            kp = k0 + (k1 - k0) * ((s + 1) / self.substeps)
            # pre-stabilisation (Macklin et al. 2014, Sec. 5): resolve the penetration left from earlier
            # substeps on the positions themselves, so it never turns into velocity (resting stacks stay put)
            self.x = self._shape_match(self._project(self.x, kp_prev, kp_prev, friction=False))
            self.v = self.v + h * acc
            if damping is not None:
                self.v = self.v / (1.0 + h * damping[self.body, None])
            p = self.x + h * self.v
            for _ in range(self.iterations):
                p = self._project(p, kp, kp_prev)
                p = self._shape_match(p)
            self.v = (p - self.x) / h
            self.x = p
        self.k = k1

    def _project(self, p: Tensor, kp: Tensor, kp_prev: Tensor, friction: bool = True) -> Tensor:
        """One Jacobi round of the table, robot and body-body contacts (with friction unless ``friction`` is False)."""
        r = self.radius
        corr = torch.zeros_like(p)
        count = torch.zeros(len(p), 1)
        # table plane
        depth = (self.table_z + r) - p[:, 2]
        on = depth > 0
        if on.any():
            n = torch.tensor([0.0, 0.0, 1.0]).expand(int(on.sum()), 3)
            c = n * depth[on, None]
            if friction:
                c = c + self._friction((p - self.x)[on], n, depth[on], self.mu[on])
            corr[on] += c
            count[on] += 1
        # kinematic (robot) particles: infinite mass
        if len(kp):
            d = torch.cdist(p, kp)  # (P, K)
            pen = 2 * r - d
            i, j = torch.nonzero(pen > 0, as_tuple=True)
            if len(i):
                n = (p[i] - kp[j]) / d[i, j, None].clamp_min(1e-9)
                rel = (p[i] - self.x[i]) - (kp[j] - kp_prev[j]) + n * pen[i, j, None]
                mu = torch.maximum(self.mu[i], self.k_mu[j])
                c = n * pen[i, j, None] + (self._friction(rel, n, pen[i, j], mu) if friction else 0.0)
                corr.index_add_(0, i, c)
                self.touching[self.body[i]] = True
                count.index_add_(0, i, torch.ones(len(i), 1))
        # particles of different dynamic bodies: mass-weighted
        if self.B > 1:
            d = torch.cdist(p, p)
            pen = torch.where(self.other_body, 2 * r - d, torch.zeros_like(d))
            i, j = torch.nonzero(pen > 0, as_tuple=True)
            if len(i):
                wi, wj = 1.0 / self.m[i], 1.0 / self.m[j]
                n = (p[i] - p[j]) / d[i, j, None].clamp_min(1e-9)
                share = (wi / (wi + wj))[:, None]
                rel = (p[i] - self.x[i]) - (p[j] - self.x[j])
                fr = self._friction(rel, n, pen[i, j], torch.minimum(self.mu[i], self.mu[j])) if friction else 0.0
                c = share * (n * pen[i, j, None] + fr)
                corr.index_add_(0, i, c)
                count.index_add_(0, i, torch.ones(len(i), 1))
        return p + corr / count.clamp_min(1.0)

    # ------------------------------------------------------------------ state
    def poses(self) -> tuple[Tensor, Tensor]:
        """Centres of mass (B, 3) and rotations from rest (B, 3, 3)."""
        return self.com, self.R

    def diverged(self, start_com: Tensor, max_distance: float = 1.0, max_speed: float = 20.0) -> bool:
        """NaN, a body more than ``max_distance`` m from ``start_com`` (B, 3), or a particle faster than ``max_speed`` m/s."""
        return bool(~torch.isfinite(self.x).all() or (self.com - start_com).norm(dim=-1).max() > max_distance
                    or self.v.norm(dim=-1).max() > max_speed)
