"""Trace a drawer's slide in the twin against MuJoCo's, step by step (issue 17 diagnostic).

    python benchmarks/scripts/twin_slide_trace.py SEED [--no-forces] ['{"mass_scale": 3}']

First prints how far MuJoCo's own drawer goes past each end of its range under a steady force
along the joint (2 s of ``qfrc_applied``: how soft each end is), then replays one drawer-open-v3
expert episode and prints every 5th control step: MuJoCo's joint coordinate and the drawer's world
y against the twin's, their distance (mm) and the visual force along the slide (N); then the
mean distance. The JSON overrides fields of ``TwinConfig`` (default: the bench's settings, right
physics).
"""

import dataclasses
import json
import sys

import mujoco
import numpy as np

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.twin.track import TrackConfig, body_pose, start_twin, twin_env_config
from robodream.twin.twin import TwinConfig

args = [a for a in sys.argv[1:] if not a.startswith("--")]
seed = int(args[0])
overrides = {"forces": "--no-forces" not in sys.argv, **(json.loads(args[1]) if len(args) > 1 else {})}
cfg = TrackConfig(task="drawer-open-v3", seed=seed, twin=dataclasses.replace(TwinConfig(), **overrides))

probe = MetaWorldEnv(EnvConfig(task="drawer-open-v3", cameras=("corner",), image_size=16))
try:
    probe.reset(seed)
    m = probe.mujoco_model
    j = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, "goal_slidey")
    print(f"MuJoCo's slide: range {m.jnt_range[j].tolist()} m, solref {m.jnt_solref[j].tolist()}")
    for f in (100.0, 1000.0, -100.0, -1000.0):
        probe.reset(seed)
        d = probe.mujoco_data
        for _ in range(800):
            d.qfrc_applied[m.jnt_dofadr[j]] = f
            mujoco.mj_step(m, d)
        print(f"  {f:+7.0f} N for 2 s: q = {float(d.qpos[m.jnt_qposadr[j]]):+.4f} m")
finally:
    probe.close()

env = MetaWorldEnv(twin_env_config(cfg))
try:
    obs, twin, kin_ids, dyn_ids, _ = start_twin(env, cfg, seed)
    model, data = env.mujoco_model, env.mujoco_data
    qadr = model.jnt_qposadr[model.body_jntadr[dyn_ids[0]]]
    print(f"twin joint: range {twin.physics.joint_range[0].tolist()}, soft ends {twin.physics.soft_end[0].tolist()}")
    errors = []
    for t in range(cfg.max_steps):
        obs = env.step(env.expert_action())
        twin.step([body_pose(data, b) for b in kin_ids], obs.images)
        (p_twin, _), (p_true, _) = twin.body_poses()[0], body_pose(data, dyn_ids[0])
        errors.append(1000 * float(np.linalg.norm(p_twin - p_true)))
        if t % 5 == 0:
            f_axis = float((twin.force[0] * twin.physics.joint_axis[0]).sum())
            print(f"{t:3d} q {float(data.qpos[qadr]):+.4f} true y {p_true[1]:.4f} twin y {p_twin[1]:.4f} "
                  f"error {errors[-1]:6.1f} mm force along the slide {f_axis:+7.1f} N success {obs.success}")
        if obs.success and t > 130:
            break
    print(f"mean position error {np.mean(errors):.2f} mm over {len(errors)} steps")
finally:
    env.close()
