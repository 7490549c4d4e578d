"""Trace a door's hinge angle in the twin against MuJoCo's, step by step (issue 17 diagnostic).

    python benchmarks/scripts/twin_hinge_trace.py SEED ['{"mass_scale": 3, "friction_scale": 0.3}']

Prints every 5th control step of one door-open-v3 expert episode: MuJoCo's and the twin's hinge
angle (degrees from the start), the visual force's moment about the hinge (N m), whether the
robot touched the twin's door in the last step, and the largest body force; then the mean
absolute angle error. The JSON overrides fields of ``TwinConfig`` (default: the bench's wrong
physics, mass x3 and friction x0.3).
"""

import json
import sys

import numpy as np
import torch

from robodream.envs.meta_world import MetaWorldEnv
from robodream.twin.track import TrackConfig, body_pose, start_twin, twin_env_config
from robodream.twin.twin import TwinConfig

seed = int(sys.argv[1])
overrides = {"mass_scale": 3.0, "friction_scale": 0.3, **(json.loads(sys.argv[2]) if len(sys.argv) > 2 else {})}
cfg = TrackConfig(task="door-open-v3", seed=seed, twin=TwinConfig(**overrides))
env = MetaWorldEnv(twin_env_config(cfg))
try:
    obs, twin, kin_ids, dyn_ids, _ = start_twin(env, cfg, seed)
    model, data = env.mujoco_model, env.mujoco_data
    qadr = model.jnt_qposadr[model.body_jntadr[dyn_ids[0]]]
    q0, ph = float(data.qpos[qadr]), twin.physics
    print(f"door mass {float(ph.mass[0]):.2f} kg, inertia about the hinge {float(ph.hinge_inertia[0]):.3f} kg m^2")
    errors = []
    for t in range(cfg.max_steps):
        obs = env.step(env.expert_action())
        info = twin.step([body_pose(data, b) for b in kin_ids], obs.images)
        true, est = np.degrees(float(data.qpos[qadr]) - q0), np.degrees(float(ph.joint_position()[0]))
        errors.append(abs(true - est))
        force = twin.force[0].float() if getattr(twin, "force", None) is not None else torch.zeros(3)
        moment = float((ph.joint_axis[0] * torch.cross(ph.com[0] - ph.joint_anchor[0], force, dim=-1)).sum())
        if t % 5 == 0:
            print(f"{t:3d} true {true:7.2f} twin {est:7.2f} moment {moment:7.2f} N m "
                  f"touched {bool(ph.touching[0])!s:5} |F| {info['force_n']:.1f} N")
        if obs.success and t > 100:
            break
    print(f"mean |angle error| {np.mean(errors):.2f} degrees over {len(errors)} steps")
finally:
    env.close()
