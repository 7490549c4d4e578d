"""A Meta-World scene as the digital twin sees it (Physically Embodied Gaussian Splatting, Abou-Chakra
et al., CoRL 2024, Sec. 3): bodies made of particles (physics) with Gaussians bound to them (appearance).

- **Dynamic bodies**: every body with a free joint (Meta-World's objects), and every articulated
  body outside the robot — one slide or hinge joint to a static parent: a drawer, a door, a
  window — whose pose the physics keeps on that joint (:class:`~robodream.twin.pbd.Joint`: axis,
  anchor, range, damping and the range's softness from MuJoCo). Particles of radius
  ``particle_radius`` fill its collision geoms on a grid (:func:`~robodream.twin.geometry.volume_points`);
  its mass is MuJoCo's times ``mass_scale`` and its friction MuJoCo's sliding coefficient times
  ``friction_scale`` (the robot's geoms' too: a contact takes the larger coefficient of its two
  sides, as MuJoCo does) — the twin's physics may be told wrong values on purpose.
- **Kinematic bodies**: the robot's wrist, hand and fingers (the subtree of ``robot_root``),
  particles filling their collision geoms the same way, posed every step from the observed joint
  state (the bodies' poses by forward kinematics, here read from MuJoCo's ``xpos``/``xmat``, as a
  real robot reports them).
- **Gaussians**: a one-cell shell of points on each body's visible geoms, isotropic, coloured by
  the geom's material (then fitted to the first observed frames, :meth:`DigitalTwin.fit_colors`),
  stored in the body frame so they ride on the body's pose.
- **Background**: everything static (table, walls, floor) rendered once per camera by MuJoCo with
  the robot and the dynamic bodies hidden: the twin's renders composite over it. The arm above the
  wrist is in neither (it is not modelled); the photometric error there moves no Gaussian.
- **Table**: the top of the table's collision box, a plane the particles rest on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from robodream.errors import ConfigError
from robodream.twin.geometry import MESH, SUPPORTED, surface_points, volume_points
from robodream.twin.pbd import HINGE, SLIDE, Joint, soft_limit_from_solref


@dataclass
class TwinConfig:
    """Settings of the digital twin (saved in ``track``'s results)."""

    cameras: tuple[str, ...] = ("corner", "corner2", "corner3")  # observed static cameras
    # Where they stand: a static-camera preset of robodream.envs.shift ("close": 0.7 m nearer and 12 degrees
    # narrower, so a 4 cm object covers tens of pixels of a 64x64 image instead of 1-5; "none": Meta-World's)
    camera_shift: str = "close"
    image_size: int = 64
    particle_radius: float = 0.005  # metres; dynamic bodies are filled on a grid of twice this
    gaussian_spacing: float = 0.006  # metres between a dynamic body's surface Gaussians
    robot_gaussian_spacing: float = 0.012  # ... and the robot's
    robot_root: str = "right_l6"  # the kinematic subtree: wrist, hand, fingers
    substeps: int = 4  # PBD substeps per control step
    iterations: int = 4  # constraint iterations per substep
    mass_scale: float = 1.0  # the twin's masses: MuJoCo's times this (wrong physics: 3)
    friction_scale: float = 1.0  # the twin's friction: MuJoCo's times this (wrong physics: 0.3)
    forces: bool = True  # visual forces on (the paper) or off (physics alone)
    # Visual-force gain, N per metre of Gaussian displacement: F = opacity * kp * delta_mu. The paper's kp = 4 moves
    # nothing here: the forces stay below static friction (mu m g = 7.4 N for push's 0.75 kg puck); 40 with
    # kd = 20 is what corrected a 2 cm error on push-v3 without oscillating (benchmarks/RESULTS.md)
    kp: float = 40.0
    # damping of a body's velocity while visual forces act, N s/m (0: none, as the paper); not of a free body the robot
    # touches (it moves as the robot makes it), always of a jointed one
    kd: float = 20.0
    # also turn bodies by the visual forces' torque about their centre of mass. Off: on door-open (5 episodes) it
    # fixed one lost door under wrong physics (13.2 -> 2.6 degrees) but made right physics 11.4 degrees instead of
    # 0.87 (benchmarks/RESULTS.md); measured before 05c566d, while the force itself could not turn a door, not since
    visual_torque: bool = False
    visual_steps: int = 3  # Adam steps on the photometric error per control step
    visual_lr: float = 0.002  # their learning rate, metres
    # coarser scales added to the photometric error (2x2 pooling each; 0: the image alone). 2: push seed 0 tracked at
    # 3.1 mm instead of 4.0, a 3 cm wrong start at 6.0 instead of 7.4 (one episode each; RESULTS.md)
    pyramid: int = 2
    color_fit_steps: int = 40  # Adam steps fitting the Gaussians' colours to the first frames
    device: str = "cpu"

    def __post_init__(self) -> None:
        from robodream.envs.shift import CAMERA_SHIFTS

        self.cameras = tuple(self.cameras)
        if self.camera_shift not in CAMERA_SHIFTS:
            raise ConfigError(f"unknown camera_shift {self.camera_shift!r}; presets: {', '.join(CAMERA_SHIFTS)}")
        if not self.cameras:
            raise ConfigError("the twin needs at least one camera (--cameras)")
        if self.kp <= 0 or self.kd < 0:
            raise ConfigError(f"kp must be > 0 and kd >= 0, got kp={self.kp}, kd={self.kd}")
        if min(self.particle_radius, self.gaussian_spacing, self.robot_gaussian_spacing, self.mass_scale,
               self.visual_lr) <= 0 or self.friction_scale < 0:
            raise ConfigError("radius, spacings, mass_scale and visual_lr must be > 0 and friction_scale >= 0")
        if min(self.substeps, self.iterations, self.image_size) < 1 or min(self.visual_steps, self.color_fit_steps) < 0:
            raise ConfigError("substeps, iterations and image_size must be >= 1, visual and colour steps >= 0")


@dataclass
class TwinBody:
    """One body: particles and Gaussians in its frame (metres), and its physical parameters.

    particles (P, 3); gaussians (G, 3); colors (G, 3) in [0, 1]; mass kg (dynamic bodies);
    friction (sliding coefficient, the largest of its geoms'); kinematic: posed from the robot's
    state, not simulated. ``frictions`` (P,): each particle's geom's coefficient (a robot contact
    takes the larger of its two sides', MuJoCo's rule; None: the body's ``friction`` everywhere).
    ``joint``: an articulated body's slide or hinge (None: a free body or the robot's).
    """

    name: str
    body_id: int
    kinematic: bool
    particles: np.ndarray
    gaussians: np.ndarray
    colors: np.ndarray
    mass: float
    friction: float
    frictions: np.ndarray | None = None
    joint: Joint | None = None  # an articulated body's joint (world axis and anchor at the start); None: free


@dataclass
class TwinScene:
    """What the twin is built from (module docstring).

    Ks (C, 3, 3), viewmats (C, 4, 4) of the observed cameras; background (C, H, W, 3) float32 in [0, 1].
    """

    dynamic: list[TwinBody]
    kinematic: list[TwinBody]
    table_z: float
    Ks: np.ndarray
    viewmats: np.ndarray
    background: np.ndarray
    control_dt: float


def _geom_points(model, g: int, fn, spacing: float, **kw) -> np.ndarray:
    """Points of geom ``g`` (in its body's frame) from ``fn`` (volume_points / surface_points)."""
    import mujoco

    gtype = int(model.geom_type[g])
    if gtype not in SUPPORTED:
        return np.zeros((0, 3))
    verts = None
    if gtype == MESH:
        m = int(model.geom_dataid[g])
        va, vn = model.mesh_vertadr[m], model.mesh_vertnum[m]
        verts = np.asarray(model.mesh_vert[va:va + vn], dtype=np.float64)
    local = fn(gtype, np.asarray(model.geom_size[g], dtype=np.float64), spacing, verts, **kw)
    R = np.zeros(9)
    mujoco.mju_quat2Mat(R, model.geom_quat[g])
    return local @ R.reshape(3, 3).T + model.geom_pos[g]


def subtree(model, root: int) -> list[int]:
    """Body ``root`` and all its descendants (body ids)."""
    out = [root]
    for b in range(model.nbody):
        if b != root and model.body_parentid[b] in out:
            out.append(b)
    return out


def _geom_color(model, g: int) -> np.ndarray:
    """MuJoCo's rule: a geom's own rgba wins over its material's unless it is the default grey."""
    mat, rgba = int(model.geom_matid[g]), np.asarray(model.geom_rgba[g])
    own = mat < 0 or not np.allclose(rgba, [0.5, 0.5, 0.5, 1.0])
    return np.asarray(rgba[:3] if own else model.mat_rgba[mat][:3], dtype=np.float32)


def _collides(model, g: int) -> bool:
    return bool(model.geom_contype[g] or model.geom_conaffinity[g])


def _visible(model, g: int) -> bool:
    return model.geom_group[g] <= 2 and model.geom_rgba[g][3] > 0


def _body(model, b: int, cfg: TwinConfig, kinematic: bool) -> TwinBody:
    import mujoco

    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] == b]
    r = cfg.particle_radius
    parts, frics, gauss, cols = [], [], [], []
    for g in geoms:
        if _collides(model, g):  # particles reach the surface from inside (thin geoms: their mid-plane)
            parts.append(_geom_points(model, g, volume_points, 2 * r, inset=r))
            frics.append(np.full(len(parts[-1]), float(model.geom_friction[g][0]) * cfg.friction_scale))
        if _visible(model, g):
            pts = _geom_points(model, g, surface_points, cfg.robot_gaussian_spacing if kinematic else cfg.gaussian_spacing)
            gauss.append(pts)
            cols.append(np.repeat(_geom_color(model, g)[None], len(pts), 0))
    name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, b) or f"body{b}"
    friction = max((float(model.geom_friction[g][0]) for g in geoms if _collides(model, g)), default=1.0)
    cat = lambda xs, k: np.concatenate(xs) if xs else np.zeros((0, k))  # noqa: E731
    flat = lambda xs: np.concatenate(xs).astype(np.float32) if xs else np.zeros(0, np.float32)  # noqa: E731
    return TwinBody(name, b, kinematic, cat(parts, 3), cat(gauss, 3), cat(cols, 3).astype(np.float32),
                    float(model.body_mass[b]) * (1.0 if kinematic else cfg.mass_scale), friction * cfg.friction_scale,
                    flat(frics))


def dynamic_body_ids(model, robot: set[int] = frozenset()) -> list[int]:
    """Bodies with a free joint (Meta-World's movable objects) and, outside ``robot`` (body ids),
    articulated bodies: exactly one slide or hinge joint, and no joint between their parent and
    the world (a drawer in a fixed cabinet; a chain of joints is not modelled)."""
    import mujoco

    J = mujoco.mjtJoint
    free = {int(model.jnt_bodyid[j]) for j in range(model.njnt) if model.jnt_type[j] == J.mjJNT_FREE}

    def has_joint_above(b: int) -> bool:
        b = int(model.body_parentid[b])
        while b > 0:
            if model.body_jntnum[b]:
                return True
            b = int(model.body_parentid[b])
        return False

    articulated = {b for b in range(1, model.nbody)
                   if b not in robot and model.body_jntnum[b] == 1
                   and model.jnt_type[model.body_jntadr[b]] in (J.mjJNT_SLIDE, J.mjJNT_HINGE) and not has_joint_above(b)}
    return sorted(free | articulated)


def body_joint(model, data, b: int) -> Joint | None:
    """The :class:`~robodream.twin.pbd.Joint` of articulated body ``b`` at its current state
    (world axis and anchor; range relative to the current joint position), None for a free body.

    The range's ends are soft as MuJoCo's limits are (its ``solref`` and ``solimp``), except the end
    the body starts at, a hard stop: a Meta-World fixture starts closed against its frame, which the
    twin does not model (drawer-open's drawer against the static RetainingWall: MuJoCo lets a 1000 N
    push close it 2.6 mm past that end, and the same pull open it 52 mm past the other), and no
    task's force pushes it further closed; a soft start end let the visual forces' bias at rest (tens
    of newtons) push the twin's door into its frame and spring it open (door-open seed 4, RESULTS.md)."""
    import mujoco

    if model.body_jntnum[b] != 1:
        return None
    j = int(model.body_jntadr[b])
    kind = {int(mujoco.mjtJoint.mjJNT_SLIDE): SLIDE, int(mujoco.mjtJoint.mjJNT_HINGE): HINGE}.get(int(model.jnt_type[j]))
    if kind is None:
        return None
    q = float(data.qpos[model.jnt_qposadr[j]])
    lo, hi = (float(model.jnt_range[j][0]) - q, float(model.jnt_range[j][1]) - q) if model.jnt_limited[j] else \
        (-float("inf"), float("inf"))
    soft = soft_limit_from_solref(model.jnt_solref[j], float(model.jnt_solimp[j][1])) if model.jnt_limited[j] else None
    return Joint(kind, tuple(float(v) for v in data.xaxis[j]), tuple(float(v) for v in data.xanchor[j]), (lo, hi),
                 float(model.dof_damping[model.jnt_dofadr[j]]), soft, (abs(lo) > 1e-6, abs(hi) > 1e-6))


def table_height(model, data) -> float:
    """The top (world z, metres) of the table's collision geoms (those of body ``tablelink``).

    Raises:
        ConfigError: the model has no table body.
    """
    import mujoco

    b = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "tablelink")
    if b < 0:
        raise ConfigError("the scene has no table body (tablelink) for the twin's ground plane")
    tops = [float(data.geom_xpos[g][2] + model.geom_size[g][2]) for g in range(model.ngeom)
            if model.geom_bodyid[g] == b and _collides(model, g) and model.geom_type[g] == 6]
    if not tops:
        raise ConfigError("the table has no collision box")
    return max(tops)


def body_pose(data, body_id: int) -> tuple[np.ndarray, np.ndarray]:
    """World position (3,) and rotation (3, 3) of a MuJoCo body."""
    return np.array(data.xpos[body_id], dtype=np.float64), np.array(data.xmat[body_id], dtype=np.float64).reshape(3, 3)


def build_scene(env, cfg: TwinConfig) -> TwinScene:
    """The twin's scene of ``env`` (a :class:`~robodream.envs.meta_world.MetaWorldEnv` just reset,
    rendering ``cfg.cameras`` at ``cfg.image_size``).

    Raises:
        ConfigError: a task without a dynamic object, no kinematic root ``robot_root``, a camera the
            env does not render, or another image size.
    """
    import mujoco

    model, data = env.mujoco_model, env.mujoco_data
    if tuple(env.cfg.cameras) != cfg.cameras or env.cfg.image_size != cfg.image_size:
        raise ConfigError(f"the env renders {env.cfg.cameras} at {env.cfg.image_size}, the twin observes "
                          f"{cfg.cameras} at {cfg.image_size}")
    root = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, cfg.robot_root)
    if root < 0:
        raise ConfigError(f"the scene has no body {cfg.robot_root!r} (robot_root)")
    top = root  # the robot: everything under the robot root's top ancestor
    while model.body_parentid[top] != 0:
        top = int(model.body_parentid[top])
    robot = set(subtree(model, top))
    dyn_ids = dynamic_body_ids(model, robot)
    if not dyn_ids:
        raise ConfigError(f"task {env.task} has no dynamic object (no body with a free joint, or one slide or hinge "
                          "joint) for the twin to track")
    dynamic = [_body(model, b, cfg, kinematic=False) for b in dyn_ids]
    for body in dynamic:
        body.joint = body_joint(model, data, body.body_id)
    for body in dynamic:
        if not len(body.particles):
            raise ConfigError(f"dynamic body {body.name} has no collision geom to fill with particles")
    kinematic = [k for k in (_body(model, b, cfg, kinematic=True) for b in subtree(model, root))
                 if len(k.particles) or len(k.gaussians)]
    mats = [env.camera_matrices(c) for c in cfg.cameras]
    # the background: robot and dynamic bodies hidden
    hide = robot | {b for d in dyn_ids for b in subtree(model, d)}
    geoms = [g for g in range(model.ngeom) if model.geom_bodyid[g] in hide]
    saved_rgba, saved_mat = model.geom_rgba[geoms].copy(), model.geom_matid[geoms].copy()
    try:
        model.geom_rgba[geoms, 3] = 0.0
        model.geom_matid[geoms] = -1
        background = env.render_views(depth=False, segmentation=False)[0]
    finally:
        model.geom_rgba[geoms] = saved_rgba
        model.geom_matid[geoms] = saved_mat
    return TwinScene(dynamic, kinematic, table_height(model, data), np.stack([m[0] for m in mats]),
                     np.stack([m[1] for m in mats]), background.astype(np.float32) / 255.0, env.control_dt)
