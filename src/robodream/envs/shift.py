"""Shift in the environment: seeded changes of appearance and of the static cameras.

A shift changes the pixels and never the physics: it writes only rendering fields of the
MuJoCo model (``geom_rgba``, ``tex_data``, ``light_*``, ``vis.headlight``, ``cam_pos``,
``cam_quat``, ``cam_fovy``), never sizes, masses, friction or body positions, so the same
actions from the same seed give the same states with and without a shift.

Two serialisable dataclasses describe one draw: :class:`Appearance` (colour multipliers of
the scene's parts, texture contrast and noise, lights) and :class:`CameraShift` (a pose
offset and a field-of-view change of every *static* camera; cameras mounted on the robot,
``behindGripper`` and ``gripperPOV``, keep their mount). :class:`ShiftConfig` names them: a
preset (:data:`APPEARANCES`, :data:`CAMERA_SHIFTS`) or ``"random"``, a fresh draw per episode
seed (so evaluation seeds mean unseen appearances), widened by a scale.

Scene parts (:func:`geom_parts`), found from body membership, since Meta-World's geoms are
mostly unnamed: every body hangs under a *root* body (a child of the world). Geoms of the
world body itself are the ``floor``; the root that holds the end-effector body ``hand`` (the
Sawyer's ``base``) and the ``mocap`` root are the ``robot``; a root whose name contains
"table" is the ``table``; one named "RetainingWall" is the ``wall`` around it; every other
root is a task ``object`` (puck, drawer, button box, the obstacle wall of reach-wall). Sites
named ``goal*`` are the ``goal`` (segmentation only); other sites take their body's part.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from robodream.errors import ConfigError

#: Parts of the scene that an appearance recolours and segmentation labels (see module doc).
PARTS = ("floor", "wall", "table", "robot", "object")
#: Segmentation classes, value = position: 0 background (nothing rendered: the sky), then the
#: parts, then the goal marker.
SEG_CLASSES = ("background", *PARTS, "goal")
_WHITE = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Appearance:
    """What the scene looks like. The defaults change nothing."""

    floor_rgb: tuple[float, float, float] = _WHITE  # colour multipliers of the floor's geoms (1 = unchanged)
    wall_rgb: tuple[float, float, float] = _WHITE  # ... of the wall around the table
    table_rgb: tuple[float, float, float] = _WHITE  # ... of the table
    robot_rgb: tuple[float, float, float] = _WHITE  # ... of the robot
    object_rgb: tuple[float, float, float] = _WHITE  # ... of the task's objects
    texture_contrast: float = 1.0  # texel deviations from each texture's mean colour scaled by this
    texture_noise: float = 0.0  # std of per-texel noise added to every texture, fraction of full scale
    texture_seed: int = 0  # seeds the texture noise
    light_intensity: float = 1.0  # diffuse and specular light (all lights and the headlight) scaled by this
    light_rgb: tuple[float, float, float] = _WHITE  # colour multipliers of the lights
    light_ambient: float = 0.0  # ambient light added to every light, in [0, 1]
    light_azimuth: float = 0.0  # degrees, directional lights turned about the vertical
    light_elevation: float = 0.0  # degrees added to the lights' elevation (they keep pointing down)


@dataclass(frozen=True)
class CameraShift:
    """A change of every static camera. Directions are those of the camera's view, whatever its
    roll: right = horizontal and perpendicular to the viewing direction, up perpendicular to both."""

    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)  # metres: right, up, backwards
    yaw: float = 0.0  # degrees, turned about the world vertical (positive: to the left)
    pitch: float = 0.0  # degrees, tilted about the camera's right axis (positive: up)
    fovy: float = 0.0  # degrees added to the vertical field of view (clipped to [10, 120])


#: Named appearances.
APPEARANCES = {
    "default": Appearance(),
    "dark-wood": Appearance(table_rgb=(0.45, 0.3, 0.2), floor_rgb=(0.5, 0.45, 0.4), texture_contrast=1.4),
    "bright": Appearance(light_intensity=1.8, light_ambient=0.25, table_rgb=(1.3, 1.3, 1.3)),
    "night": Appearance(light_intensity=0.35, light_rgb=(0.7, 0.8, 1.0), light_elevation=-25.0),
    "recoloured": Appearance(robot_rgb=(0.4, 3.0, 6.0), object_rgb=(0.4, 1.0, 0.5), wall_rgb=(1.0, 0.8, 0.5)),
}
#: Named static-camera shifts.
CAMERA_SHIFTS = {
    "none": CameraShift(),
    "left": CameraShift(translation=(-0.1, 0.0, 0.0), yaw=-6.0),
    "right": CameraShift(translation=(0.1, 0.0, 0.0), yaw=6.0),
    "high": CameraShift(translation=(0.0, 0.1, 0.0), pitch=-6.0),
    "wide": CameraShift(fovy=12.0),
    # closer and narrower: the workspace fills more of a small image (the digital twin's cameras)
    "close": CameraShift(translation=(0.0, -0.05, -0.7), pitch=-3.0, fovy=-12.0),
}


@dataclass
class ShiftConfig:
    """Which appearance and camera shift an environment renders with."""

    appearance: str = "default"  # default, dark-wood, bright, night, recoloured or random (a new draw per episode)
    camera_shift: str = "none"  # static cameras: none, left, right, high, wide or random (a new draw per episode)
    appearance_scale: float = 1.0  # width of the random appearance draws (0: none, 2: twice the default ranges)
    camera_shift_scale: float = 1.0  # width of the random camera draws (1: +-5 cm, +-5 deg, +-5 deg of field of view)
    seed: int = 0  # mixed with the episode seed in the random draws (another seed: other draws)

    def __post_init__(self) -> None:
        for what, name, names in (("appearance", self.appearance, APPEARANCES),
                                  ("camera shift", self.camera_shift, CAMERA_SHIFTS)):
            if name != "random" and name not in names:
                raise ConfigError(f"unknown {what} {name!r}; valid: {', '.join(names)}, random")
        if not (self.appearance_scale >= 0 and self.camera_shift_scale >= 0) or self.seed < 0:
            raise ConfigError(f"shift scales and seed must be >= 0, got {self.appearance_scale}, "
                              f"{self.camera_shift_scale}, {self.seed}")

    def draw(self, episode_seed: int) -> tuple[Appearance, CameraShift]:
        """The appearance and camera shift of the episode with env seed ``episode_seed`` (>= 0):
        the presets, or draws from ``(seed, episode_seed)``, independent of the env's own RNG."""
        app, cam = APPEARANCES.get(self.appearance), CAMERA_SHIFTS.get(self.camera_shift)
        if app is None:
            app = random_appearance(np.random.default_rng([0xA99, self.seed, episode_seed]), self.appearance_scale)
        if cam is None:
            cam = random_camera_shift(np.random.default_rng([0xCA3, self.seed, episode_seed]), self.camera_shift_scale)
        return app, cam


def random_appearance(rng: np.random.Generator, scale: float = 1.0) -> Appearance:
    """A random appearance; at ``scale`` 1: colour multipliers in [0.5, 1.5] per channel, texture
    contrast in [0.6, 1.4] and noise up to 0.1, light intensity in [0.5, 1.5], light colour in
    [0.8, 1.2], ambient up to 0.2, light directions turned by up to 45 deg and tilted by up to 15."""
    def u(half_width: float, size=None):
        return rng.uniform(-half_width * scale, half_width * scale, size)

    def rgb():
        return tuple(float(x) for x in np.maximum(1.0 + u(0.5, 3), 0.0))

    return Appearance(
        floor_rgb=rgb(), wall_rgb=rgb(), table_rgb=rgb(), robot_rgb=rgb(), object_rgb=rgb(),
        texture_contrast=float(max(1.0 + u(0.4), 0.0)), texture_noise=float(abs(u(0.1))),
        texture_seed=int(rng.integers(2**31)), light_intensity=float(max(1.0 + u(0.5), 0.0)),
        light_rgb=tuple(float(x) for x in np.maximum(1.0 + u(0.2, 3), 0.0)),
        light_ambient=float(min(abs(u(0.2)), 1.0)), light_azimuth=float(u(45.0)), light_elevation=float(u(15.0)))


def random_camera_shift(rng: np.random.Generator, scale: float = 1.0) -> CameraShift:
    """A random static-camera shift; at ``scale`` 1: up to 5 cm along each axis, yaw and pitch up
    to 5 degrees, field of view changed by up to 5 degrees."""
    u = lambda half_width, size=None: rng.uniform(-half_width * scale, half_width * scale, size)  # noqa: E731
    return CameraShift(translation=tuple(float(x) for x in u(0.05, 3)), yaw=float(u(5.0)), pitch=float(u(5.0)),
                       fovy=float(u(5.0)))


# ----------------------------------------------------------------------------- scene parts
def body_parts(model) -> np.ndarray:
    """Part of every body, (nbody,) int64 index into :data:`PARTS` (heuristic: see module doc)."""
    import mujoco

    hand = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, "hand")
    robot_root = model.body_rootid[hand] if hand >= 0 else -1
    out = np.empty(model.nbody, np.int64)
    for b in range(model.nbody):
        root = model.body_rootid[b]
        name = model.body(root).name.lower()
        part = ("floor" if b == 0 else "robot" if root == robot_root or name.startswith("mocap")
                else "table" if "table" in name else "wall" if name == "retainingwall" else "object")
        out[b] = PARTS.index(part)
    return out


def geom_parts(model) -> np.ndarray:
    """Part of every geom, (ngeom,) int64 index into :data:`PARTS`."""
    return body_parts(model)[model.geom_bodyid]


def segmentation_lut(model) -> tuple[np.ndarray, np.ndarray]:
    """Lookup tables from MuJoCo's segmentation ids to :data:`SEG_CLASSES` values:
    ``(geom (ngeom,) uint8, site (nsite,) uint8)``; geoms by part, sites named ``goal*`` the goal."""
    geom = (geom_parts(model) + 1).astype(np.uint8)
    site = (body_parts(model)[model.site_bodyid] + 1).astype(np.uint8)
    for s in range(model.nsite):
        if model.site(s).name.lower().startswith("goal"):
            site[s] = SEG_CLASSES.index("goal")
    return geom, site


# ----------------------------------------------------------------------------- applying
class SceneShifter:
    """Applies shifts to one MuJoCo model, always starting from the values it had when built.

    :meth:`apply` restores every field a shift may write, then writes the new shift. Call
    ``mujoco.mj_camlight`` (or any forward pass) afterwards so that the cameras' and lights'
    world poses follow, and upload the textures to the renderer's GL context again when it
    says they changed (see :meth:`MetaWorldEnv.reset`).
    """

    _FIELDS = ("geom_rgba", "light_dir", "light_diffuse", "light_specular", "light_ambient", "cam_pos", "cam_quat",
               "cam_fovy")

    def __init__(self, model) -> None:
        self.model = m = model
        self._orig = {k: getattr(m, k).copy() for k in self._FIELDS}
        self._orig["tex_data"] = m.tex_data.copy()
        hl = m.vis.headlight
        self._orig["headlight"] = (hl.diffuse.copy(), hl.specular.copy(), hl.ambient.copy())
        self._parts = geom_parts(m)
        self._static_cams = np.nonzero(m.cam_bodyid == 0)[0]  # mounted on the world body
        self._textures_dirty = False

    def apply(self, appearance: Appearance, camera: CameraShift) -> bool:
        """Restore the original rendering fields, then apply ``appearance`` and ``camera``.
        Returns whether ``tex_data`` changed (now or in the previous call)."""
        m, o = self.model, self._orig
        for k in self._FIELDS:
            getattr(m, k)[:] = o[k]
        hl = m.vis.headlight
        hl.diffuse[:], hl.specular[:], hl.ambient[:] = o["headlight"]
        self._colours(appearance)
        self._lights(appearance)
        self._cameras(camera)
        changed = self._textures(appearance) or self._textures_dirty
        self._textures_dirty = appearance.texture_contrast != 1.0 or appearance.texture_noise != 0.0
        return changed

    def _colours(self, a: Appearance) -> None:
        m = self.model
        default = np.array([0.5, 0.5, 0.5, 1.0], np.float32)
        for p, part in enumerate(PARTS):
            tint = np.asarray(getattr(a, f"{part}_rgb"), np.float32)
            if np.all(tint == 1.0):
                continue
            for g in np.nonzero(self._parts == p)[0]:
                rgba = m.geom_rgba[g]
                mat = m.geom_matid[g]
                # MuJoCo draws a geom of default rgba with its material's rgba; its texture either way
                base = m.mat_rgba[mat] if mat >= 0 and np.array_equal(rgba, default) else rgba.copy()
                rgba[:3] = np.clip(base[:3] * tint, 0.0, 1.0)
                rgba[3] = base[3]

    def _lights(self, a: Appearance) -> None:
        m, hl = self.model, self.model.vis.headlight
        gain = a.light_intensity * np.asarray(a.light_rgb, np.float32)
        m.light_diffuse[:] *= gain
        m.light_specular[:] *= gain
        m.light_ambient[:] = np.clip(m.light_ambient + a.light_ambient, 0.0, 1.0)
        hl.diffuse[:] *= gain
        hl.specular[:] *= gain
        if a.light_azimuth or a.light_elevation:
            d = m.light_dir.astype(np.float64)  # (nlight, 3) unit vectors, pointing where the light shines
            az = np.arctan2(d[:, 1], d[:, 0]) + math.radians(a.light_azimuth)
            el = np.clip(np.arcsin(np.clip(d[:, 2], -1, 1)) + math.radians(a.light_elevation),
                         -math.radians(89), -math.radians(5))
            m.light_dir[:] = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], 1)

    def _cameras(self, c: CameraShift) -> None:
        import mujoco

        if c == CameraShift():
            return
        m = self.model
        for cam in self._static_cams:
            R = np.empty(9)
            mujoco.mju_quat2Mat(R, m.cam_quat[cam])
            fwd = -R.reshape(3, 3)[:, 2]  # MuJoCo cameras look along their -z
            right = np.cross(fwd, [0.0, 0.0, 1.0])
            right = right / max(np.linalg.norm(right), 1e-9)
            up = np.cross(right, fwd)
            m.cam_pos[cam] += np.stack([right, up, -fwd], 1) @ np.asarray(c.translation)
            q_yaw, q_pitch, q = np.empty(4), np.empty(4), np.empty(4)
            mujoco.mju_axisAngle2Quat(q_yaw, np.array([0.0, 0.0, 1.0]), math.radians(c.yaw))
            mujoco.mju_axisAngle2Quat(q_pitch, right, math.radians(c.pitch))
            mujoco.mju_mulQuat(q, q_pitch, m.cam_quat[cam].astype(np.float64))
            mujoco.mju_mulQuat(q, q_yaw, q.copy())
            m.cam_quat[cam] = q
            m.cam_fovy[cam] = float(np.clip(m.cam_fovy[cam] + c.fovy, 10.0, 120.0))

    def _textures(self, a: Appearance) -> bool:
        m, orig = self.model, self._orig["tex_data"]
        m.tex_data[:] = orig
        if a.texture_contrast == 1.0 and a.texture_noise == 0.0:
            return False
        rng = np.random.default_rng(a.texture_seed)
        for t in range(m.ntex):
            n, start = int(m.tex_nchannel[t]), int(m.tex_adr[t])
            size = int(m.tex_width[t] * m.tex_height[t] * n)
            texels = orig[start:start + size].reshape(-1, n).astype(np.float32)  # (texels, channels) in 0..255
            rgb = texels[:, :3]
            rgb = rgb.mean(0) + a.texture_contrast * (rgb - rgb.mean(0))
            if a.texture_noise:
                rgb = rgb + rng.normal(0.0, 255.0 * a.texture_noise, rgb.shape).astype(np.float32)
            texels[:, :3] = rgb
            m.tex_data[start:start + size] = np.clip(np.rint(texels), 0, 255).astype(np.uint8).reshape(-1)
        return True

