"""``robodream bench cameras``: which Meta-World cameras show the task objects and the goal?

For every task, the scripted expert runs a few episodes; every few steps each camera renders
a segmentation image at the policy's resolution, and we count the pixels of the task's
objects (bodies that are neither world, table, robot nor mocap) and of its goal marker
(site ``goal``, when the task has one). Per camera we report mean pixel counts and the
fraction of frames in which each is visible; per camera *pair* the fraction of frames in
which the object and the goal are each visible in *both* cameras (what locating them in 3D
from two views needs), ties broken by their pixel counts. The
best pair (averaged over tasks) is the recommended default.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from robodream.envs.meta_world import CAMERAS, EnvConfig, MetaWorldEnv
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now

_NON_OBJECT_ROOTS = ("world", "tablelink", "RetainingWall", "base", "mocap")


def _object_geoms(model) -> np.ndarray:
    import mujoco

    roots = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_BODY, n) for n in _NON_OBJECT_ROOTS} - {-1}
    bodies = [b for b in range(model.nbody) if model.body_rootid[b] not in roots and b not in roots]
    return np.array([g for g in range(model.ngeom) if model.geom_bodyid[g] in bodies], dtype=np.int64)


def camera_visibility(task: str, episodes: int = 3, every: int = 4, image_size: int = 64,
                      seed: int = 0) -> dict[str, Any]:
    """Per-frame object/goal pixel counts for every camera: {cam: (n_frames, 2) array [object, goal]}."""
    import mujoco

    counts: dict[str, list[tuple[int, int]]] = {c: [] for c in CAMERAS}
    with MetaWorldEnv(EnvConfig(task=task, image_size=image_size, cameras=("corner",))) as env:
        model, data = env.mujoco_model, env.mujoco_data
        obj_geoms = _object_geoms(model)
        goal = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, "goal")
        seg = mujoco.Renderer(model, image_size, image_size)
        seg.enable_segmentation_rendering()
        try:
            for ep in range(episodes):
                env.reset(seed + ep)
                for t in range(env.cfg.max_steps):
                    if t % every == 0:
                        for cam in CAMERAS:
                            seg.update_scene(data, camera=cam)
                            s = seg.render()
                            ids, types = s[..., 0], s[..., 1]
                            n_obj = int(np.isin(ids[types == mujoco.mjtObj.mjOBJ_GEOM], obj_geoms).sum())
                            n_goal = int(((types == mujoco.mjtObj.mjOBJ_SITE) & (ids == goal)).sum()) if goal >= 0 else -1
                            counts[cam].append((n_obj, n_goal))
                    obs = env.step(env.expert_action())
                    if obs.success or obs.truncated:
                        break
        finally:
            seg.close()
    return {"has_goal_marker": goal >= 0, "counts": {c: np.array(v) for c, v in counts.items()}}


def bench_cameras(tasks: tuple[str, ...], episodes: int = 3, image_size: int = 64) -> dict[str, Any]:
    """Run :func:`camera_visibility` on ``tasks``; per-camera rows, per-pair scores, the best pair."""
    rows, per_task = [], {}
    with progress_bar() as progress:
        bar = progress.add_task("camera visibility", total=len(tasks))
        for task in tasks:
            per_task[task] = camera_visibility(task, episodes=episodes, image_size=image_size)
            progress.update(bar, advance=1)
    for task, res in per_task.items():
        for cam, c in res["counts"].items():
            rows.append({"task": task, "camera": cam, "object_px": float(c[:, 0].mean()),
                         "object_visible": float((c[:, 0] > 0).mean()),
                         "goal_px": float(c[:, 1].mean()) if res["has_goal_marker"] else None,
                         "goal_visible": float((c[:, 1] > 0).mean()) if res["has_goal_marker"] else None})
    pairs = []
    for a, b in itertools.combinations(CAMERAS, 2):
        scores, px = [], []
        for res in per_task.values():
            ca, cb = res["counts"][a], res["counts"][b]
            # Seen by both cameras: what locating a point in 3D from two views needs.
            obj = ((ca[:, 0] > 0) & (cb[:, 0] > 0)).mean()
            goal = ((ca[:, 1] > 0) & (cb[:, 1] > 0)).mean() if res["has_goal_marker"] else 1.0
            scores.append(obj * goal)
            px.append(sum(c[:, k].clip(min=0).mean() for c in (ca, cb) for k in (0, 1)))
        pairs.append({"cameras": [a, b], "both_visible": float(np.mean(scores)), "pixels": float(np.mean(px))})
    pairs.sort(key=lambda p: (round(p["both_visible"], 2), p["pixels"]), reverse=True)
    return {"benchmark": "cameras", "created": now(), "code": code_version(), "environment": environment_info(),
            "tasks": list(tasks), "episodes_per_task": episodes, "image_size": image_size,
            "rows": rows, "pairs": pairs, "best_pair": pairs[0]["cameras"]}
