"""Issue 18 analysis: the reach expert's success under goal noise, hand- vs finger-centre-steered.

Usage: python benchmarks/scripts/reach_expert_margin.py TASK hand,tcp 0,0.01,0.02
(prints one line per cell: success over 40 episodes, seeds 10,000.., and the median final
finger-centre-to-goal distance).
"""

import sys  # noqa: I001  (robodream's env module sets MUJOCO_GL: it must load before metaworld)
import warnings

import numpy as np

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from metaworld.policies import ENV_POLICY_MAP

warnings.simplefilter("ignore")
task, steers, sigmas = sys.argv[1], sys.argv[2].split(","), [float(x) for x in sys.argv[3].split(",")]
env = MetaWorldEnv(EnvConfig(task=task, image_size=8, cameras=("corner",)))
expert = ENV_POLICY_MAP[task]()
for steer in steers:
    rng = np.random.default_rng(0)
    for sigma in sigmas:
        ok, final = 0, []
        for s in range(40):
            env.reset(10_000 + s)
            noise = rng.normal(0, sigma, 3)
            success = False
            for _ in range(200):
                raw = env._raw_obs.copy()
                if steer == "tcp":
                    raw[:3] = env._mw.tcp_center
                raw[-3:] += noise  # the goal the expert is told
                success |= env.step(np.asarray(expert.get_action(raw), np.float32)).success
            ok += success
            final.append(np.linalg.norm(env._mw.tcp_center - env._raw_obs[-3:]))
        print(task, steer, sigma, ok / 40, f"final tcp-goal cm {100 * np.median(final):.1f}", flush=True)
env.close()
