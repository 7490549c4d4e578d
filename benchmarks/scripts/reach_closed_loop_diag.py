"""Issue 18 analysis: closed-loop reach rollouts of a policy run; per seed the closest
finger-centre-to-goal approach and the error vector there (cm).

Usage: python benchmarks/scripts/reach_closed_loop_diag.py RUN 1000003,1000017
"""

import sys

import numpy as np

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.policy.runner import PolicyRunner
from robodream.policy.train import load_policy

run, seeds = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
policy, tokenizer, _ = load_policy(run, device="cpu")
runner = PolicyRunner(policy, tokenizer, "reach", mode="action_only")
env = MetaWorldEnv(EnvConfig(task="reach-v3", cameras=policy.cfg.cameras, image_size=policy.cfg.image_size,
                             max_steps=150))
for s in seeds:
    runner.reset(s)
    obs = env.reset(s)
    goal = env.privileged_positions["goal"]
    best = (np.inf, None, 0)
    for t in range(150):
        obs = env.step(runner.act(obs.images, obs.state))
        err = np.asarray(env._mw.tcp_center) - goal
        if np.linalg.norm(err) < best[0]:
            best = (np.linalg.norm(err), err, t)
        if obs.success:
            break
    print(s, "goal", np.round(goal, 3), "success", obs.success, f"closest cm {100 * best[0]:.1f}",
          "error cm", np.round(100 * best[1], 1), "at step", best[2], flush=True)
env.close()
