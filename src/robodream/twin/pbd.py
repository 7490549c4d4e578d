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

Articulated bodies (a drawer on its slide, a door on its hinge: :class:`Joint`): after shape
matching, a jointed body's pose is projected onto its joint — a slide keeps the rest rotation
and the centre of mass on the line through its start along the axis; a hinge keeps only the
rotation's twist about the axis (swing-twist) and turns the centre of mass about the anchor —
with the joint coordinate clamped to its range, as a position-level joint constraint does, or,
at an end of a joint with a ``soft_limit`` (MuJoCo's limits are soft constraints: the
position-controlled robot pulls a Meta-World drawer 4 cm past the open end of its range), not
clamped but pushed back into its range by a one-sided spring-damper acceleration along the joint,
``-(k * violation + b * joint velocity)``, only while out of range and only towards it. The
joint's damping (MuJoCo's ``dof_damping``) slows the body's velocity; the table plane does not
act on them (their joint holds them, and the cabinet or frame they move in is not modelled).

Tensor conventions: P dynamic particles, K kinematic particles, B dynamic bodies; metres, seconds,
kilograms, newtons.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Joint kinds of :class:`Joint` (0: a free body).
FREE, SLIDE, HINGE = 0, 1, 2


def _overlaps(a: Tensor, b: Tensor, reach: float, allowed: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pairs of points of ``a`` (N, 3) and ``b`` (M, 3) closer than ``reach`` (where ``allowed``
    (N, M) is True): indices ``i``, ``j``, unit normals ``n`` (pairs, 3) from ``b[j]`` to ``a[i]``
    and penetrations ``reach - |a_i - b_j|`` (pairs,). ``torch.cdist`` (its matrix-product form,
    fast for many points) only proposes candidates within a 1 mm margin; distances and normals
    come from the exact differences: the product form loses precision in float32 (about 1e-7 of
    the squared coordinates), and a pair it put at distance 0 gave a "unit" normal of length
    |a_i - b_j| / 1e-9 (a correction of 2 km that flung a door open, door-open seed 4)."""
    d = torch.cdist(a, b)
    near = d < reach + 1e-3
    if allowed is not None:
        near &= allowed
    i, j = torch.nonzero(near, as_tuple=True)
    diff = a[i] - b[j]
    dist = diff.norm(dim=-1)
    keep = dist < reach
    i, j, diff, dist = i[keep], j[keep], diff[keep], dist[keep]
    return i, j, diff / dist.clamp_min(1e-9)[:, None], reach - dist


@dataclass
class Joint:
    """One body's joint (module docstring): ``kind`` SLIDE or HINGE, unit ``axis`` (3,) and
    ``anchor`` (3,) in world coordinates at the start, the range ``(lo, hi)`` of the joint
    coordinate relative to the start (metres or radians), ``damping`` N s/m or N m s/rad;
    ``soft_limit``: None, the range is a hard clamp, or ``(k, b)``, the range is a soft limit
    (module docstring) of stiffness ``k`` (1/s^2) and damping ``b`` (1/s) — accelerations per unit
    of violation and of joint velocity, as MuJoCo's ``solref`` gives them (:func:`soft_limit_from_solref`);
    ``soft_ends``: which ends ``(lo, hi)`` the soft limit applies to (the others are hard clamps)."""

    kind: int
    axis: tuple[float, float, float]
    anchor: tuple[float, float, float]
    range: tuple[float, float] = (-float("inf"), float("inf"))
    damping: float = 0.0
    soft_limit: tuple[float, float] | None = None
    soft_ends: tuple[bool, bool] = (True, True)


def soft_limit_from_solref(solref, dmax: float = 0.95) -> tuple[float, float]:
    """The stiffness ``k`` (1/s^2) and damping ``b`` (1/s) of a MuJoCo joint limit from its ``solref``
    (timeconst, dampratio) — or, both <= 0, (-stiffness, -damping) — and the impedance ``dmax``
    (``solimp[1]``) it reaches at depth: ``b = 2 / timeconst``, ``k = 1 / (dmax timeconst^2
    dampratio^2)``, MuJoCo's reference acceleration ``-b v - k r`` scaled by the impedance (MuJoCo
    documentation, "Solver parameters"; its default (0.02, 1) gives k = 2632, b = 100).

    Raises:
        ValueError: a timeconst <= 0 with a dampratio > 0.
    """
    a, b = float(solref[0]), float(solref[1])
    if a <= 0 and b <= 0:
        return -a * dmax, -b * dmax
    if a <= 0:
        raise ValueError(f"solref {tuple(solref)}: the time constant must be > 0 (or both numbers <= 0)")
    return 1.0 / (dmax * a * a * b * b), 2.0 / a


def rotation_about(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: rotations (B, 3, 3) by ``angle`` (B,) radians about unit ``axis`` (B, 3)."""
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(-1, 3, 3)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return torch.eye(3, dtype=axis.dtype, device=axis.device) + s * K + (1 - c) * (K @ K)


def perpendicular(v: Tensor, axis: Tensor) -> Tensor:
    """The part (..., 3) of vectors ``v`` (..., 3) perpendicular to unit ``axis`` (..., 3)."""
    return v - (v * axis).sum(-1, keepdim=True) * axis


def twist_angle(R: Tensor, axis: Tensor) -> Tensor:
    """The angle (B,) radians of the twist of rotations ``R`` (B, 3, 3) about unit ``axis`` (B, 3):
    the turn of a vector perpendicular to the axis, measured in the plane perpendicular to it."""
    e = torch.where((axis[:, :1].abs() < 0.9), torch.tensor([1.0, 0.0, 0.0], device=R.device),
                    torch.tensor([0.0, 1.0, 0.0], device=R.device))
    u = torch.nn.functional.normalize(torch.cross(axis, e, dim=-1), dim=-1)
    w = perpendicular(torch.einsum("bij,bj->bi", R, u), axis)
    return torch.atan2((axis * torch.cross(u, w, dim=-1)).sum(-1), (u * w).sum(-1))


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
        joints: per body a :class:`Joint` or None (free); None: every body free.
        substeps, iterations: see the module docstring. gravity: m/s^2 along z.

    Raises:
        ValueError: ``kinematic_friction`` or ``joints`` of the wrong length, or an unknown joint kind.
    """

    def __init__(self, x: Tensor, body: Tensor, mass: Tensor, friction: Tensor, kinematic: Tensor, *, radius: float,
                 table_z: float, substeps: int = 4, iterations: int = 4, gravity: float = -9.81,
                 kinematic_friction: Tensor | None = None, joints: list[Joint | None] | None = None) -> None:
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
        self._init_joints(joints)

    def _init_joints(self, joints: list[Joint | None] | None) -> None:
        joints = list(joints) if joints is not None else [None] * self.B
        if len(joints) != self.B:
            raise ValueError(f"joints needs one entry per body ({self.B}), got {len(joints)}")
        if any(j is not None and j.kind not in (SLIDE, HINGE) for j in joints):
            raise ValueError("a joint's kind must be SLIDE or HINGE")
        self.joint_kind = torch.tensor([FREE if j is None else j.kind for j in joints], dtype=torch.long)
        self.joint_axis = torch.nn.functional.normalize(
            torch.tensor([(0.0, 0.0, 1.0) if j is None else j.axis for j in joints], dtype=torch.float32).view(-1, 3), dim=-1)
        self.joint_anchor = torch.tensor([(0.0, 0.0, 0.0) if j is None else j.anchor for j in joints],
                                         dtype=torch.float32).view(-1, 3)
        self.joint_range = torch.tensor([(-float("inf"), float("inf")) if j is None else j.range for j in joints],
                                        dtype=torch.float32).view(-1, 2)
        self.soft_end = torch.tensor([(False, False) if j is None or j.soft_limit is None else j.soft_ends for j in joints],
                                     dtype=torch.bool).view(-1, 2)  # (B, 2): the (lo, hi) ends with a soft limit
        self.soft_limit = self.soft_end.any(-1)  # (B,)
        self.limit_kb = torch.tensor([(0.0, 0.0) if j is None or j.soft_limit is None else j.soft_limit for j in joints],
                                     dtype=torch.float32).view(-1, 2)  # (B, 2): stiffness 1/s^2, damping 1/s
        self.com0 = self.com.clone()  # the joints' zero
        self.jointed = self.joint_kind != FREE  # (B,)
        self.free_particle = ~self.jointed[self.body]  # (P,) particles the table plane acts on
        # joint damping as a velocity decay rate (1/s): slide c / m, hinge c / I about the axis
        # each particle from its hinge's anchor, perpendicular to the axis
        r = perpendicular(self.rest + (self.com0 - self.joint_anchor)[self.body], self.joint_axis[self.body])
        inertia = torch.zeros(self.B).index_add_(0, self.body, self.m * (r * r).sum(-1))
        self.hinge_inertia = inertia  # (B,) kg m^2 about each hinge's axis (0 or meaningless for other bodies)
        damping = torch.tensor([0.0 if j is None else j.damping for j in joints], dtype=torch.float32)
        self.joint_rate = torch.where(self.joint_kind == SLIDE, damping / self.mass,
                                      torch.where(self.joint_kind == HINGE, damping / inertia.clamp_min(1e-9),
                                                  torch.zeros_like(damping)))

    def joint_position(self) -> Tensor:
        """Each body's joint coordinate relative to the start (B,): metres along a slide, radians
        about a hinge, 0 for a free body."""
        slide = ((self.com - self.com0) * self.joint_axis).sum(-1)
        hinge = twist_angle(self.R, self.joint_axis)
        return torch.where(self.joint_kind == SLIDE, slide, torch.where(self.joint_kind == HINGE, hinge, 0.0))

    # ------------------------------------------------------------------ helpers
    def _com(self, p: Tensor) -> Tensor:
        return torch.zeros(self.B, 3).index_add_(0, self.body, p * self.m[:, None]) / self.mass[:, None]

    def _shape_match(self, p: Tensor) -> Tensor:
        c = self._com(p)
        d = p - c[self.body]
        A = torch.zeros(self.B, 3, 3).index_add_(0, self.body, self.m[:, None, None] * d[:, :, None] * self.rest[:, None, :])
        R = polar_rotation(A)
        if self.jointed.any():
            c, R = self._project_joints(c, R)
        self.com, self.R = c, R
        return c[self.body] + torch.einsum("pij,pj->pi", R[self.body], self.rest)

    def _joint_contact_response(self, p: Tensor, i: Tensor, c: Tensor) -> Tensor:
        """Robot contacts on jointed bodies: corrections ``c`` (N, 3) wanted at particles ``i`` (N,)
        become each body's least-squares step in its one joint coordinate — a slide: the mean of
        ``a . c``; a hinge: ``sum a . (r x c) / sum |r_perp|^2`` about the anchor (a contact near the
        axis, which no finite turn resolves, weighs little) — and move the whole body rigidly.
        Shape matching would spread a few particles' corrections over all of a drawer's thousands (a
        pusher sinking into it); an infinitely heavy robot must move it."""
        b = self.body[i]
        a = self.joint_axis[b]
        r = p[i] - self.joint_anchor[b]
        r_perp = perpendicular(r, a)
        slide = self.joint_kind[b] == SLIDE
        num = torch.where(slide, (a * c).sum(-1), (a * torch.cross(r, c, dim=-1)).sum(-1))
        den = torch.where(slide, torch.ones_like(num), (r_perp * r_perp).sum(-1))
        num_b = torch.zeros(self.B).index_add_(0, b, num)
        den_b = torch.zeros(self.B).index_add_(0, b, den)
        step = torch.where(den_b > 0, num_b / den_b.clamp_min(1e-12), 0.0)  # (B,) 0 for bodies without contacts
        return self._move_joints(p, step)

    def _move_joints(self, p: Tensor, step: Tensor) -> Tensor:
        """Particles ``p`` (P, 3) with each jointed body moved rigidly by ``step`` (B,) in its joint
        coordinate (metres along a slide, radians about a hinge); free bodies unchanged."""
        pb = self.body
        slide = (self.joint_kind[pb] == SLIDE)[:, None]
        moved_slide = p + step[pb, None] * self.joint_axis[pb]
        rot = rotation_about(self.joint_axis, step)[pb]  # (P, 3, 3)
        moved_hinge = self.joint_anchor[pb] + torch.einsum("pij,pj->pi", rot, p - self.joint_anchor[pb])
        hit = (self.jointed & (step != 0))[pb][:, None]
        return torch.where(hit, torch.where(slide, moved_slide, moved_hinge), p)

    def displace(self, offset: Tensor) -> None:
        """A wrong state estimate: every free body moved by ``offset`` (3,) metres; every jointed body
        moved by ``|offset|`` along its joint (a hinge: the turn that moves its particles that far,
        root mean square), towards the end of its range with more room (clamped to it)."""
        dist = float(offset.norm())
        free = (~self.jointed)[self.body][:, None]
        self.x = torch.where(free, self.x + offset, self.x)
        self.com = torch.where((~self.jointed)[:, None], self.com + offset, self.com)
        if self.jointed.any() and dist > 0:
            lever = (self.hinge_inertia / self.mass).sqrt().clamp_min(1e-6)  # (B,) the particles' rms distance from the axis
            size = torch.where(self.joint_kind == SLIDE, torch.full_like(lever, dist), dist / lever)
            q = self.joint_position()
            lo, hi = self.joint_range[:, 0] - q, self.joint_range[:, 1] - q  # room left each way
            step = torch.where(hi >= -lo, torch.minimum(size, hi), -torch.minimum(size, -lo))
            self.x = self._shape_match(self._move_joints(self.x, torch.where(self.jointed, step, 0.0)))

    def _project_joints(self, c: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
        """The jointed bodies' poses (centres (B, 3), rotations (B, 3, 3)) moved onto their joints
        (module docstring); free bodies unchanged."""
        a, lo, hi = self.joint_axis, self.joint_range[:, 0], self.joint_range[:, 1]
        lo, hi = torch.where(self.soft_end[:, 0], -float("inf"), lo), torch.where(self.soft_end[:, 1], float("inf"), hi)
        s = torch.clamp(((c - self.com0) * a).sum(-1), lo, hi)
        c_slide = self.com0 + s[:, None] * a
        theta = torch.clamp(twist_angle(R, a), lo, hi)
        R_hinge = rotation_about(a, theta)
        c_hinge = self.joint_anchor + torch.einsum("bij,bj->bi", R_hinge, self.com0 - self.joint_anchor)
        eye = torch.eye(3).expand_as(R)
        slide, hinge = (self.joint_kind == SLIDE), (self.joint_kind == HINGE)
        c = torch.where(slide[:, None], c_slide, torch.where(hinge[:, None], c_hinge, c))
        R = torch.where(slide[:, None, None], eye, torch.where(hinge[:, None, None], R_hinge, R))
        return c, R

    def _limit_acceleration(self) -> Tensor | None:
        """Per-particle accelerations (P, 3) of the soft joint limits (module docstring): for each body
        out of its range, ``-(k * violation + b * joint velocity)`` along its joint, kept only where it
        points back into the range (a limit pushes, it does not pull); 0 for every other particle.
        None when no body is past a soft end (the usual case: nothing to add)."""
        q = self.joint_position()
        viol = q - torch.clamp(q, self.joint_range[:, 0], self.joint_range[:, 1])
        soft = ((viol < 0) & self.soft_end[:, 0]) | ((viol > 0) & self.soft_end[:, 1])
        if not bool(soft.any()):
            return None
        r = self.x - self.joint_anchor[self.body]
        mv = self.m[:, None] * self.v
        slide_v = (torch.zeros(self.B, 3).index_add_(0, self.body, mv) / self.mass[:, None] * self.joint_axis).sum(-1)
        spin = (torch.zeros(self.B, 3).index_add_(0, self.body, torch.cross(r, mv, dim=-1)) * self.joint_axis).sum(-1)
        qdot = torch.where(self.joint_kind == SLIDE, slide_v, spin / self.hinge_inertia.clamp_min(1e-9))
        a = -(self.limit_kb[:, 0] * viol + self.limit_kb[:, 1] * qdot)
        a = torch.where(viol < 0, a.clamp_min(0.0), a.clamp_max(0.0))
        a = torch.where(soft, a, 0.0)[self.body]  # (P,)
        axis = self.joint_axis[self.body]
        slide = (self.joint_kind == SLIDE)[self.body][:, None]
        return a[:, None] * torch.where(slide, axis, torch.cross(axis, r, dim=-1))

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
        ``force`` / ``torque`` (B, 3): external force (N, at the centre of mass) and torque (N m,
        about the centre of mass) on each body, held over the step; a hinged body takes their moment
        about its hinge axis, ``a . ((c - anchor) x F + T)``, as an angular acceleration about the
        axis (the force alone moves a door: a uniform acceleration of its particles would be
        projected away with the hinge, which keeps only the rotation); ``damping`` (B,) 1/s: each
        body's velocity decays as ``dv/dt = -damping v`` (integrated implicitly: stable for any value)."""
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
        hinge = self.joint_kind == HINGE
        if (force is not None or torque is not None) and bool(hinge.any()):
            wrench = torch.zeros(self.B, 3) if torque is None else torque.float().clone()
            if force is not None:
                wrench = wrench + torch.cross(self.com - self.joint_anchor, force.float(), dim=-1)
            alpha = (self.joint_axis * wrench).sum(-1) / self.hinge_inertia.clamp_min(1e-9)  # (B,) rad/s^2
            b = self.body
            turn = alpha[b, None] * torch.cross(self.joint_axis[b], self.x - self.joint_anchor[b], dim=-1)
            acc = torch.where(hinge[b][:, None], self.g + turn, acc)
        for s in range(self.substeps):
            kp_prev = k0 + (k1 - k0) * (s / self.substeps)
            kp = k0 + (k1 - k0) * ((s + 1) / self.substeps)
            # pre-stabilisation (Macklin et al. 2014, Sec. 5): resolve the penetration left from earlier
            # substeps on the positions themselves, so it never turns into velocity (resting stacks stay put)
            self.x = self._shape_match(self._project(self.x, kp_prev, kp_prev, friction=False))
            self.v = self.v + h * acc
            limit = self._limit_acceleration() if bool(self.soft_limit.any()) else None
            if limit is not None:
                self.v = self.v + h * limit
            rate = self.joint_rate if damping is None else self.joint_rate + damping
            if bool((rate > 0).any()):
                self.v = self.v / (1.0 + h * rate[self.body, None])
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
        # table plane (free bodies: a jointed one hangs on its joint)
        depth = (self.table_z + r) - p[:, 2]
        on = (depth > 0) & self.free_particle
        if on.any():
            n = torch.tensor([0.0, 0.0, 1.0]).expand(int(on.sum()), 3)
            c = n * depth[on, None]
            if friction:
                c = c + self._friction((p - self.x)[on], n, depth[on], self.mu[on])
            corr[on] += c
            count[on] += 1
        # kinematic (robot) particles: infinite mass
        if len(kp):
            i, j, n, pen = _overlaps(p, kp, 2 * r)
            if len(i):
                rel = (p[i] - self.x[i]) - (kp[j] - kp_prev[j]) + n * pen[:, None]
                mu = torch.maximum(self.mu[i], self.k_mu[j])
                c = n * pen[:, None] + (self._friction(rel, n, pen, mu) if friction else 0.0)
                self.touching[self.body[i]] = True
                jnt = self.jointed[self.body[i]]
                if bool(jnt.any()):  # a jointed body answers in its joint coordinate, as a whole
                    p = self._joint_contact_response(p, i[jnt], c[jnt])
                    i, c = i[~jnt], c[~jnt]
                corr.index_add_(0, i, c)
                count.index_add_(0, i, torch.ones(len(i), 1))
        # particles of different dynamic bodies: mass-weighted
        if self.B > 1:
            i, j, n, pen = _overlaps(p, p, 2 * r, self.other_body)
            if len(i):
                wi, wj = 1.0 / self.m[i], 1.0 / self.m[j]
                share = (wi / (wi + wj))[:, None]
                rel = (p[i] - self.x[i]) - (p[j] - self.x[j])
                fr = self._friction(rel, n, pen, torch.minimum(self.mu[i], self.mu[j])) if friction else 0.0
                c = share * (n * pen[:, None] + fr)
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
