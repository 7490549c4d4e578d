"""Diagnostic only (issue 18): the reach policy with the goal position in its state.

The goal (x, y, z, metres) is privileged information, never part of robodream's proprioception;
this script adds it as a proprioceptive part "goal" in-process (monkeypatched, workers = 1) to
separate "the policy does not locate the goal in the images" from "the policy cannot drive to a
located goal". Everything else is the recipe of RESULTS.md's Change 3 (rS): reach-only, 50
TCP-steered demos, the demo's 300-step tokenizer, policy 2000 steps at batch 32, 50 evaluation
episodes from seed 1,000,000, max 500 steps.

Usage: MUJOCO_GL=egl python benchmarks/scripts/reach_privileged_goal.py WORK
"""

import sys
from dataclasses import replace

import numpy as np

import robodream.envs.meta_world as mw
from robodream.pipeline import DEMO, run_recipe

mw.PROPRIO_PARTS["goal"] = ("goal_x", "goal_y", "goal_z")
_state = mw.MetaWorldEnv.state


def state_with_goal(self) -> np.ndarray:
    """The unpatched state of the other parts, then the goal xyz (metres) when "goal" is asked for."""
    if "goal" not in self.cfg.proprio:
        return _state(self)
    cfg = self.cfg
    self.cfg = replace(cfg, proprio=tuple(p for p in cfg.proprio if p != "goal"))
    try:
        base = _state(self)
    finally:
        self.cfg = cfg
    return np.concatenate([base, np.asarray(self._mw._target_pos, np.float32)])


mw.MetaWorldEnv.state = state_with_goal
recipe = replace(DEMO, name="privileged-goal", tasks=("reach-v3",), demos_per_task=50, eval_episodes=50,
                 eval_max_steps=500, workers=1, proprio=("hand", "gripper", "goal"),
                 policy_train=replace(DEMO.policy_train, steps=2000, batch_size=32))
print(run_recipe(recipe, sys.argv[1])["per_task"])
