"""``robodream track``: the digital twin follows expert episodes that MuJoCo plays as the real world.

MuJoCo renders the observed frames of the twin's cameras and knows the true object poses; the
twin sees only those frames and the robot's link poses (its proprioception through forward
kinematics), starting from the true initial object pose (a perception system's initial
estimate). Per step it records the object position error (mm) and orientation error (degrees)
of every dynamic body, and the twin's own compute time (physics + visual forces, not MuJoCo's
stepping or rendering). ``results.json`` holds the per-episode timelines and their summary;
``rollouts/seed*.mp4`` shows observed | twin rendered | particles from the first camera;
``errors.png`` the position error over time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodream.config import to_dict
from robodream.errors import ConfigError
from robodream.twin.scene import TwinConfig, body_pose, build_scene, subtree
from robodream.twin.twin import DigitalTwin


@dataclass
class TrackConfig:
    """One tracking run (``robodream track``)."""

    task: str = "push-v3"
    episodes: int = 1
    seed: int = 0  # episode seeds seed, seed + 1, ...
    max_steps: int = 150  # control steps per episode at most
    post_success_steps: int = 20  # steps kept after the expert's first success
    videos: int = 1  # episodes written as MP4
    # The twin's initial estimate of the objects' positions is off by this much (metres, world x, y, z):
    # a wrong state that only the cameras can correct (0: it starts at the true pose).
    init_offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    twin: TwinConfig = field(default_factory=TwinConfig)

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.max_steps < 1 or self.videos < 0 or self.post_success_steps < 0:
            raise ConfigError("episodes and max_steps must be >= 1, videos and post_success_steps >= 0")
        self.init_offset = tuple(float(v) for v in self.init_offset)
        if len(self.init_offset) != 3:
            raise ConfigError(f"init_offset needs 3 numbers (x, y, z metres), got {list(self.init_offset)}")


def rotation_error_deg(Ra: np.ndarray, Rb: np.ndarray) -> float:
    """Angle (degrees) of the rotation between two rotation matrices (3, 3)."""
    c = (np.trace(Ra @ Rb.T) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def _touching(model, data, dynamic_ids: set[int], robot_ids: set[int]) -> bool:
    for i in range(data.ncon):
        b1, b2 = model.geom_bodyid[data.contact[i].geom1], model.geom_bodyid[data.contact[i].geom2]
        if (b1 in dynamic_ids and b2 in robot_ids) or (b2 in dynamic_ids and b1 in robot_ids):
            return True
    return False


def start_twin(env, cfg: TrackConfig, seed: int) -> tuple[Any, DigitalTwin, list[int], list[int], float]:
    """Reset ``env`` (a :class:`~robodream.envs.meta_world.MetaWorldEnv` rendering the twin's cameras,
    :func:`twin_env_config`) to ``seed`` and build the twin on it at the true initial poses, its
    colours fitted to the first frames. Returns the first observation, the twin, the MuJoCo body ids
    of its kinematic and dynamic bodies (in the twin's order) and the colour fit's L1 error.

    Raises:
        ConfigError: as :func:`~robodream.twin.scene.build_scene`.
    """
    obs = env.reset(seed)
    data = env.mujoco_data
    scene = build_scene(env, cfg.twin)
    kin_ids = [b.body_id for b in scene.kinematic]
    dyn_ids = [b.body_id for b in scene.dynamic]
    twin = DigitalTwin(scene, cfg.twin, [body_pose(data, b) for b in dyn_ids], [body_pose(data, b) for b in kin_ids])
    fit_error = twin.fit_colors(obs.images)  # the appearance, captured at the true initial pose
    return obs, twin, kin_ids, dyn_ids, fit_error


def track_episode(env, cfg: TrackConfig, seed: int, record: bool = False) -> dict[str, Any]:
    """Track one expert episode from ``env.reset(seed)`` (module docstring). Returns the per-step
    ``pos_error_mm`` / ``rot_error_deg`` (mean over dynamic bodies), ``contact`` flags, the summary
    numbers, ``diverged`` (the step it was detected, or None) and, when ``record``, ``frames``
    (T, H, 3 W, 3) uint8."""
    import mujoco
    import torch

    obs, twin, kin_ids, dyn_ids, fit_error = start_twin(env, cfg, seed)
    model, data = env.mujoco_model, env.mujoco_data
    robot_bodies = set(subtree(model, mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, cfg.twin.robot_root)))
    twin.displace(cfg.init_offset)  # then the state estimate is (optionally) wrong
    pos_err, rot_err, contact, l1, frames = [], [], [], [], []
    twin_s, diverged, first_success = 0.0, None, None
    for t in range(cfg.max_steps):
        obs = env.step(env.expert_action())
        t0 = time.perf_counter()
        info = twin.step([body_pose(data, b) for b in kin_ids], obs.images)
        twin_s += time.perf_counter() - t0
        if twin.diverged():
            diverged = t
            break
        est = twin.body_poses()
        truth = [body_pose(data, b) for b in dyn_ids]
        pos_err.append(float(np.mean([1000 * np.linalg.norm(e[0] - g[0]) for e, g in zip(est, truth)])))
        rot_err.append(float(np.mean([rotation_error_deg(e[1], g[1]) for e, g in zip(est, truth)])))
        contact.append(_touching(model, data, set(dyn_ids), robot_bodies))
        l1.append(info["photometric_l1"])
        if record:
            with torch.no_grad():
                view = [obs.images[0], (twin.render()[0].clamp(0, 1) * 255).byte().cpu().numpy(),
                        (twin.render_particles()[0].clamp(0, 1) * 255).byte().cpu().numpy()]
            frames.append(np.concatenate(view, axis=1))
        if obs.success and first_success is None:
            first_success = t
        if first_success is not None and t - first_success >= cfg.post_success_steps:
            break
    steps = len(pos_err)
    first_contact = next((t for t, c in enumerate(contact) if c), None)
    ep: dict[str, Any] = {
        "seed": seed, "steps": steps, "success": first_success is not None, "diverged": diverged,
        "pos_error_mm": pos_err, "rot_error_deg": rot_err, "contact": contact, "photometric_l1": l1,
        "pos_error_mm_mean": float(np.mean(pos_err)) if pos_err else None,
        "pos_error_mm_p90": float(np.percentile(pos_err, 90)) if pos_err else None,
        "rot_error_deg_mean": float(np.mean(rot_err)) if rot_err else None,
        "first_contact_step": first_contact,
        "pos_error_mm_10_steps_after_contact": (pos_err[first_contact + 10] if first_contact is not None
                                                and first_contact + 10 < steps else None),
        "twin_s": twin_s, "steps_per_s": (steps + (diverged is not None)) / twin_s if twin_s else None,
        "color_fit_l1": fit_error,
    }
    if record:
        ep["frames"] = np.stack(frames) if frames else np.zeros((0, 3, 3, 3), np.uint8)
    return ep


def summarize(cfg: TrackConfig, episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """The run's summary: errors over every tracked step of every episode, the rate over all twin steps."""
    pos = [e for ep in episodes for e in ep["pos_error_mm"]]
    rot = [e for ep in episodes for e in ep["rot_error_deg"]]
    twin_s = sum(ep["twin_s"] for ep in episodes)
    n = sum(ep["steps"] + (ep["diverged"] is not None) for ep in episodes)
    return {
        "pos_error_mm_mean": float(np.mean(pos)) if pos else None,
        "pos_error_mm_p90": float(np.percentile(pos, 90)) if pos else None,
        "rot_error_deg_mean": float(np.mean(rot)) if rot else None,
        "steps_per_s": n / twin_s if twin_s else None,
        "diverged_episodes": [ep["seed"] for ep in episodes if ep["diverged"] is not None],
        "cameras": list(cfg.twin.cameras), "image_size": cfg.twin.image_size, "device": cfg.twin.device,
    }


def plot_errors(episodes: list[dict[str, Any]], path: Path) -> None:
    """Position error (mm) against step, one line per episode, contact steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for ep in episodes:
        line, = ax.plot(ep["pos_error_mm"], lw=1, label=f"seed {ep['seed']}")
        if ep["first_contact_step"] is not None:
            ax.axvline(ep["first_contact_step"], color=line.get_color(), lw=0.5, ls=":")
    ax.set(xlabel="control step", ylabel="object position error (mm)", title="twin vs MuJoCo (dotted: first contact)")
    if len(episodes) <= 10:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def twin_env_config(cfg: TrackConfig):
    """The env the twin observes: its cameras, image size and camera placement."""
    from robodream.envs.meta_world import EnvConfig
    from robodream.envs.shift import ShiftConfig

    return EnvConfig(task=cfg.task, cameras=cfg.twin.cameras, image_size=cfg.twin.image_size,
                     max_steps=cfg.max_steps + 1, shift=ShiftConfig(camera_shift=cfg.twin.camera_shift))


def run_track(cfg: TrackConfig, out: str | Path, *, overwrite: bool = False, log=None) -> dict[str, Any]:
    """Track ``cfg.episodes`` expert episodes and write ``out`` atomically (module docstring).

    Raises:
        UnknownTaskError: not a Meta-World task. ConfigError: a task without a dynamic object, bad
        settings, ``out`` not empty without ``overwrite``.
    """
    import torch

    from robodream.envs.meta_world import MetaWorldEnv, check_task
    from robodream.eval.policy_eval import check_eval_dir
    from robodream.eval.video import write_mp4
    from robodream.utils.io import atomic_directory, atomic_write_json
    from robodream.utils.run import code_version, cpu_model, now

    check_task(cfg.task)
    out = Path(out)
    outputs = {"results.json", "errors.png", "rollouts"}
    check_eval_dir(out, overwrite, outputs, "a tracking run")
    torch.manual_seed(cfg.seed)
    env = MetaWorldEnv(twin_env_config(cfg))
    episodes = []
    try:
        with atomic_directory(out, overwrite=out.exists()) as tmp:
            for i in range(cfg.episodes):
                ep = track_episode(env, cfg, cfg.seed + i, record=i < cfg.videos)
                if "frames" in ep:
                    frames = ep.pop("frames")
                    if len(frames):
                        write_mp4(tmp / "rollouts" / f"seed{ep['seed']}.mp4", frames, fps=20)
                episodes.append(ep)
                if log:
                    log(f"{cfg.task} seed {ep['seed']}: {ep['steps']} steps, position error mean "
                        f"{ep['pos_error_mm_mean']:.1f} mm, {ep['steps_per_s']:.1f} twin steps/s"
                        + (f", diverged at step {ep['diverged']}" if ep["diverged"] is not None else ""))
            results = {"task": cfg.task, **summarize(cfg, episodes), "episodes": episodes, "config": to_dict(cfg),
                       "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "created": now(),
                       "code": code_version()}
            atomic_write_json(tmp / "results.json", results)
            plot_errors(episodes, tmp / "errors.png")
    finally:
        env.close()
    return results
