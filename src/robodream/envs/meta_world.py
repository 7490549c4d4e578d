"""Meta-World v3 tasks with headless RGB rendering and the tasks' scripted experts.

The environment is built through gymnasium (``Meta-World/MT1``), rendered off-screen with
MuJoCo (``MUJOCO_GL=egl`` by default, Mesa on a CPU) from several cameras at once, and
observed the way a real robot would be: camera images plus proprioception (hand position
in metres, gripper opening in [0, 1]); the privileged object and goal positions are kept
only for the scripted expert.

Object/goal variations: Meta-World's MT1 draws its 50 preset variations once from a
benchmark seed. We instead draw a fresh variation per episode from the episode seed
(``reset(seed=s)``), from the same uniform distribution over the task's reset space, so
that evaluation seeds disjoint from the collection seeds also mean unseen object and goal
positions.

Environment shift (:mod:`robodream.envs.shift`): ``EnvConfig.shift`` names an appearance and a
static-camera shift, a preset or a fresh random draw per episode seed; they change pixels,
never physics. ``EnvConfig.depth`` / ``segmentation`` also render, per camera, the depth
(metres) and the semantic class (:data:`~robodream.envs.shift.SEG_CLASSES`) of every pixel.
"""

from __future__ import annotations

import gc
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from robodream.envs.shift import SceneShifter, ShiftConfig, segmentation_lut  # noqa: E402
from robodream.errors import ConfigError, RobodreamError, UnknownTaskError  # noqa: E402

#: The cameras Meta-World's Sawyer scene defines.
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
#: Default cameras, chosen by ``robodream bench cameras`` (see benchmarks/RESULTS.md): a static
#: view that keeps object and goal in frame throughout the expert episodes, plus the
#: hand-following view that sees them largest.
DEFAULT_CAMERAS = ("corner", "behindGripper")
#: Parts of the proprioceptive state, each a kinematic function of the robot's own joints:
#: "hand", the end-effector position the scripted expert steers (metres, world frame);
#: "gripper", the opening (finger distance / 0.1 m, clipped to [0, 1]); "tcp", the finger
#: centre (midpoint of the finger pads, metres), the point Meta-World's success tests measure
#: (about 4.5 cm below the hand). Object and goal positions are never part of it.
PROPRIO_PARTS = {"hand": ("hand_x", "hand_y", "hand_z"), "gripper": ("gripper_opening",),
                 "tcp": ("tcp_x", "tcp_y", "tcp_z")}
#: The default proprioception (4 numbers).
DEFAULT_PROPRIO = ("hand", "gripper")
#: Tasks whose scripted expert steers the hand to the goal while the success test measures the
#: finger centre (TCP, 4.5 cm below the hand) against a 5-cm ball: the expert as written ends
#: with the fingers 4.5 cm from the goal, 0.5 cm inside the ball, so any imitation error of
#: half a centimetre fails. ``expert_target="tcp"`` steers the finger centre there instead.
TCP_STEERED_TASKS = ("reach-v3", "reach-wall-v3")
#: Points an expert may steer to the goal (see :data:`TCP_STEERED_TASKS`).
EXPERT_TARGETS = ("tcp", "hand")


def state_names(proprio: tuple[str, ...] = DEFAULT_PROPRIO) -> tuple[str, ...]:
    """Names of the state's numbers for the parts ``proprio``, in order, e.g. hand_x .. gripper_opening."""
    return tuple(n for part in proprio for n in PROPRIO_PARTS[part])


#: Names of the default proprioceptive state's numbers.
STATE_NAMES = state_names(DEFAULT_PROPRIO)
#: Names of ``observation.environment_state`` (:meth:`MetaWorldEnv.environment_state`): the
#: object part of Meta-World's observation (two objects' positions in metres and orientations as
#: quaternions w, x, y, z; zeros where a task has one object) and the goal position (metres).
#: Privileged: a training target (``PolicyConfig.aux_state_weight``), never a policy input.
ENV_STATE_NAMES = tuple(f"obj{k}_{c}" for k in (0, 1) for c in ("x", "y", "z", "qw", "qx", "qy", "qz")) + (
    "goal_x", "goal_y", "goal_z")
#: Meta-World action: end-effector displacement command in [-1, 1] (x 1 cm per step after
#: the env's action scale) and gripper effort in [-1, 1] (positive closes).
ACTION_NAMES = ("delta_x", "delta_y", "delta_z", "gripper")
#: Control frequency: 5 physics steps of 2.5 ms per env step.
FPS = 80


def task_names() -> list[str]:
    """All 50 Meta-World v3 task names, e.g. ``"reach-v3"``."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS.keys())


def check_task(task: str) -> str:
    """Return ``task`` if Meta-World knows it.

    Raises:
        UnknownTaskError: with the list of valid names.
    """
    names = task_names()
    if task not in names:
        raise UnknownTaskError(f"unknown Meta-World task {task!r}; valid tasks: {', '.join(names)}")
    return task


def task_instruction(task: str) -> str:
    """A plain-language instruction for a task name, e.g. ``"button press topdown"``."""
    return task.removesuffix("-v3").replace("-", " ")


@dataclass
class EnvConfig:
    """Configuration of a rendered Meta-World environment."""

    task: str = "reach-v3"
    cameras: tuple[str, ...] = DEFAULT_CAMERAS  # camera names, rendered in this order
    image_size: int = 64  # square images, pixels
    max_steps: int = 500  # episode length limit (Meta-World's own limit is 500)
    fast_render: bool = True  # no shadows, reflections or multisampling (faster on CPU)
    proprio: tuple[str, ...] = DEFAULT_PROPRIO  # parts of the state: hand, gripper, tcp (PROPRIO_PARTS)
    shift: ShiftConfig = field(default_factory=ShiftConfig)  # appearance and static-camera shift (envs/shift.py)
    depth: bool = False  # also render each camera's depth (metres)
    segmentation: bool = False  # also render each camera's semantic segmentation (SEG_CLASSES ids)

    def __post_init__(self) -> None:
        self.cameras, self.proprio = tuple(self.cameras), tuple(self.proprio)
        unknown = [p for p in self.proprio if p not in PROPRIO_PARTS]
        if unknown or not self.proprio or len(set(self.proprio)) != len(self.proprio):
            raise ConfigError(f"proprio must list distinct parts of {', '.join(PROPRIO_PARTS)}, got {self.proprio}")
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad:
            raise ConfigError(f"unknown camera(s) {bad}; valid cameras: {', '.join(CAMERAS)}")
        if not self.cameras:
            raise ConfigError("at least one camera is required")
        if self.image_size < 8:
            raise ConfigError(f"image_size must be >= 8, got {self.image_size}")


@dataclass
class StepResult:
    """What one ``reset``/``step`` returns.

    images: (n_cameras, H, W, 3) uint8, RGB, upright.
    state: (Ds,) float32, see :data:`PROPRIO_PARTS` (default (4,): :data:`STATE_NAMES`).
    depth: (n_cameras, H, W) float32 metres (camera-frame z; the far plane where nothing is
        seen), with ``EnvConfig.depth``; else None.
    segmentation: (n_cameras, H, W) uint8 :data:`~robodream.envs.shift.SEG_CLASSES` ids, with
        ``EnvConfig.segmentation``; else None.
    """

    images: np.ndarray
    state: np.ndarray
    depth: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    reward: float = 0.0
    success: bool = False
    truncated: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class MetaWorldEnv:
    """A Meta-World v3 task with multi-camera headless rendering.

    Keep one instance per process at a time: MuJoCo's EGL renderers of a garbage-collected
    env can break the renderer of the next one, so :meth:`close` releases everything and
    rendering guards against all-black frames.

    Example::

        env = MetaWorldEnv(EnvConfig(task="push-v3"))
        obs = env.reset(seed=0)
        obs = env.step(env.expert_action())
        env.close()

    Raises:
        UnknownTaskError: unknown task name.
        ConfigError: unknown camera, image too small, unknown appearance or camera shift.
    """

    def __init__(self, cfg: EnvConfig) -> None:
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/* environments)
        import mujoco

        check_task(cfg.task)
        self.cfg = cfg
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._gym = gym.make("Meta-World/MT1", env_name=cfg.task, seed=0, disable_env_checker=True)
        self._mw = self._gym.unwrapped
        # Take variation sampling into our own hands: a fresh variation per episode seed.
        task_wrapper = self._gym
        while not hasattr(task_wrapper, "toggle_sample_tasks_on_reset"):
            task_wrapper = task_wrapper.env
        task_wrapper.toggle_sample_tasks_on_reset(False)
        self._mw.set_task(task_wrapper.tasks[0])  # sets task-specific fields once
        self._mw._freeze_rand_vec = False
        self._mw.seeded_rand_vec = True
        self._mw.max_path_length = cfg.max_steps

        model = self._mw.model
        if cfg.fast_render:
            model.vis.quality.shadowsize = 0
            model.vis.quality.offsamples = 0
        size = cfg.image_size
        model.vis.global_.offwidth = max(model.vis.global_.offwidth, size)
        model.vis.global_.offheight = max(model.vis.global_.offheight, size)
        self._renderer = mujoco.Renderer(model, size, size)
        if cfg.fast_render:
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        self._cam_ids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, c) for c in cfg.cameras]
        self._shifter = SceneShifter(model)  # keeps the model's original rendering fields
        self._seg_geom, self._seg_site = segmentation_lut(model)
        self.appearance, self.camera_shift = cfg.shift.draw(0)  # this episode's draw (set by reset)
        self._applied = None
        self._expert = None
        self._raw_obs: np.ndarray | None = None
        self._steps = 0
        self._closed = False

    # ----------------------------------------------------------------------------- API
    @property
    def task(self) -> str:
        return self.cfg.task

    def reset(self, seed: int) -> StepResult:
        """Start an episode whose object/goal variation (and random shift) is drawn from ``seed`` (>= 0)."""
        self.appearance, self.camera_shift = self.cfg.shift.draw(int(seed))
        if self._applied != (self.appearance, self.camera_shift):  # before the reset's forward pass
            if self._shifter.apply(self.appearance, self.camera_shift):
                self._upload_textures()
            self._applied = (self.appearance, self.camera_shift)
        import mujoco

        self._mw.seed(int(seed))
        raw, _ = self._gym.reset(seed=int(seed))
        # 11 of the 50 tasks (drawers, windows, assembly, peg-insert-side, ...) place their fixture by
        # writing model.body_pos at reset, which reaches the bodies' world poses only at the next
        # forward pass: without this one the first frame showed the fixture where it stood before
        # (up to 20 cm off). It computes poses only; the state and the dynamics are unchanged.
        mujoco.mj_forward(self.mujoco_model, self.mujoco_data)
        # Meta-World moves goal sites in model.site_pos at reset but refreshes their world
        # positions only in step(); without this the first frame shows last episode's goal.
        for site in self._mw._target_site_config:
            self._mw._set_pos_site(*site)
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._steps = 0
        images, depth, segmentation = self.render_views()
        return StepResult(images=images, state=self.state(), depth=depth, segmentation=segmentation)

    def step(self, action: np.ndarray) -> StepResult:
        """Apply one action (4,) in [-1, 1]; values outside are clipped."""
        if self._raw_obs is None:
            raise RobodreamError("call reset() before step()")
        a = np.clip(np.asarray(action, dtype=np.float32).reshape(4), -1.0, 1.0)
        raw, reward, _terminated, truncated, info = self._gym.step(a)
        self._raw_obs = np.asarray(raw, dtype=np.float64)
        self._steps += 1
        truncated = bool(truncated) or self._steps >= self.cfg.max_steps
        images, depth, segmentation = self.render_views()
        return StepResult(
            images=images,
            depth=depth,
            segmentation=segmentation,
            state=self.state(),
            reward=float(reward),
            success=bool(info.get("success", False)),
            truncated=truncated,
            info=info,
        )

    def state(self) -> np.ndarray:
        """Proprioceptive state (Ds,) float32, the parts ``cfg.proprio`` in order (default: hand
        xyz in metres and the gripper opening in [0, 1]; see :data:`PROPRIO_PARTS`)."""
        assert self._raw_obs is not None
        parts = {"hand": self._raw_obs[:3], "gripper": self._raw_obs[3:4], "tcp": np.asarray(self._mw.tcp_center)}
        return np.concatenate([parts[p] for p in self.cfg.proprio]).astype(np.float32)

    def environment_state(self) -> np.ndarray:
        """Privileged object and goal state (17,) float32, :data:`ENV_STATE_NAMES`: objects from
        Meta-World's observation (entries 4-17), the goal from the task's target position (the
        observation hides it in partially observable mode). For training targets and analysis only."""
        assert self._raw_obs is not None
        return np.concatenate([self._raw_obs[4:18], np.asarray(self._mw._target_pos, dtype=np.float64)]).astype(np.float32)

    def expert_action(self, target: str = "tcp") -> np.ndarray:
        """The task's scripted expert action (4,) float32 for the current (privileged) state.

        ``target``: for the tasks in :data:`TCP_STEERED_TASKS`, "tcp" steers the finger centre
        to the goal (the expert sees the TCP where its observation has the hand), "hand" is
        Meta-World's scripted policy as written; every other task's expert is unchanged.

        Raises:
            ConfigError: ``target`` not in :data:`EXPERT_TARGETS`.
        """
        if target not in EXPERT_TARGETS:
            raise ConfigError(f"expert target must be one of {', '.join(EXPERT_TARGETS)}, got {target!r}")
        if self._expert is None:
            from metaworld.policies import ENV_POLICY_MAP

            self._expert = ENV_POLICY_MAP[self.cfg.task]()
        assert self._raw_obs is not None
        obs = self._raw_obs
        if target == "tcp" and self.cfg.task in TCP_STEERED_TASKS:
            obs = obs.copy()
            obs[:3] = self._mw.tcp_center
        with warnings.catch_warnings():  # the experts warn when their P-gain saturates; the env clips
            warnings.simplefilter("ignore")
            return np.asarray(self._expert.get_action(obs), dtype=np.float32)

    def render(self) -> np.ndarray:
        """Render all cameras: (n_cameras, H, W, 3) uint8, RGB, upright.

        Raises:
            RobodreamError: if the renderer returns an all-black frame (a broken GL context).
        """
        return self.render_views(depth=False, segmentation=False)[0]

    def render_views(self, depth: bool | None = None, segmentation: bool | None = None):
        """Render all cameras, upright: RGB (n_cameras, H, W, 3) uint8, and, when asked (default:
        ``cfg.depth`` / ``cfg.segmentation``; else None), depth (n_cameras, H, W) float32 metres
        and segmentation (n_cameras, H, W) uint8 :data:`~robodream.envs.shift.SEG_CLASSES` ids.

        Raises:
            RobodreamError: if the renderer returns an all-black frame (a broken GL context).
        """
        depth = self.cfg.depth if depth is None else depth
        segmentation = self.cfg.segmentation if segmentation is None else segmentation
        r = self._renderer
        rgb, dep, seg = [], [], []
        for cam_id in self._cam_ids:
            r.update_scene(self._mw.data, camera=cam_id)
            views = [r.render()]
            if depth:
                r.enable_depth_rendering()
                views.append(r.render())
                r.disable_depth_rendering()
            if segmentation:
                r.enable_segmentation_rendering()
                ids = r.render()  # (H, W, 2): object id, object type; (-1, -1) where nothing is drawn
                r.disable_segmentation_rendering()
                views.append(self._seg_classes(ids))
            if self._upside_down(cam_id):
                views = [v[::-1, ::-1] for v in views]
            rgb.append(views.pop(0))
            if depth:
                dep.append(views.pop(0))
            if segmentation:
                seg.append(views.pop(0))
        out = np.ascontiguousarray(np.stack(rgb))
        if not out.any():
            raise RobodreamError(
                "MuJoCo renderer returned an all-black frame (broken GL context); "
                "close each env before creating the next one"
            )
        return (out, np.ascontiguousarray(np.stack(dep)) if depth else None,
                np.ascontiguousarray(np.stack(seg)) if segmentation else None)

    def _seg_classes(self, ids: np.ndarray) -> np.ndarray:
        """MuJoCo's (H, W, 2) (object id, object type) -> (H, W) uint8 SEG_CLASSES ids."""
        import mujoco

        obj, kind = ids[..., 0], ids[..., 1]
        out = np.zeros(obj.shape, np.uint8)
        for t, lut in ((mujoco.mjtObj.mjOBJ_GEOM, self._seg_geom), (mujoco.mjtObj.mjOBJ_SITE, self._seg_site)):
            hit = kind == int(t)
            out[hit] = lut[obj[hit]]
        return out

    def _upload_textures(self) -> None:
        """Send the model's (changed) textures to the renderer's GL context."""
        import mujoco

        r = self._renderer
        if r._gl_context is not None:  # mujoco.Renderer keeps its contexts private; no public upload
            r._gl_context.make_current()
        for t in range(self._mw.model.ntex):
            mujoco.mjr_uploadTexture(self._mw.model, r._mjr_context, t)

    def camera_matrices(self, cam: str, *, width: int | None = None, height: int | None = None):
        """Intrinsics and extrinsics of a camera as rendered by :meth:`render` (upright).

        Returns ``(K (3, 3), world_to_cam (4, 4))`` in the OpenCV convention (x right,
        y down, z forward; metres).
        """
        from robodream.envs.cameras import camera_matrices

        w = width or self.cfg.image_size
        h = height or self.cfg.image_size
        return camera_matrices(self._mw.model, self._mw.data, cam, w, h)

    def _upside_down(self, cam_id: int) -> bool:
        # A camera whose image "up" axis points downwards in the world renders upside down
        # (Meta-World's corner cameras); rotating the image 180 degrees makes it upright.
        up = self._mw.data.cam_xmat[cam_id].reshape(3, 3)[:, 1]
        return bool(up[2] < -1e-6)

    @property
    def privileged_positions(self) -> dict[str, np.ndarray]:
        """Object and goal positions (metres) — for analysis only, never a policy input."""
        mw = self._mw
        return {"object": np.asarray(mw._get_pos_objects()[:3]), "goal": np.asarray(mw._target_pos)}

    @property
    def control_dt(self) -> float:
        """Seconds of simulated time per :meth:`step` (MuJoCo's timestep times Meta-World's frame skip)."""
        return float(self._mw.model.opt.timestep * self._mw.frame_skip)

    @property
    def mujoco_model(self):
        return self._mw.model

    @property
    def mujoco_data(self):
        return self._mw.data

    def close(self) -> None:
        """Release the renderer and the simulator (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._renderer.close()
        finally:
            self._gym.close()
            del self._renderer, self._gym, self._mw
            gc.collect()

    def __enter__(self) -> MetaWorldEnv:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
