"""Per-frame rewards of RAMP / RECAP and the LeRobot columns that carry them.

RAMP (GigaBrain-0.5M*) and RECAP (pi*0.6) learn a value from a sparse, task-agnostic reward:
-1 for every step spent before the task is solved, 0 once it is solved, and a large penalty
``-C_fail`` on the last step of an episode that never succeeds, so that a failed episode is
worth less than any successful one. With discount 1 the value of a frame is then minus the
number of steps left to success (or ``-(steps left) - C_fail`` on a failing trajectory).

Datasets carry these in LeRobot's column names: ``next.reward`` (float32), ``next.done`` (bool,
the episode's last frame), ``next.success`` (bool, the task reports success after this step)
and ``complementary_info.is_intervention`` (bool, the action came from a takeover source,
not the policy, during a policy rollout; False for every frame of an expert demonstration).
Meta-World's own shaped reward is kept beside them as ``complementary_info.dense_reward``.
"""

from __future__ import annotations

import numpy as np

#: C_fail: the penalty on the last step of a failed episode. Meta-World's episode limit (500
#: steps), so a failed episode (return <= -500) is below every successful one (> -500).
DEFAULT_FAIL_PENALTY = 500.0

#: The flag of a frame whose action came from a takeover source (a policy rollout's intervention).
INTERVENTION = "complementary_info.is_intervention"
#: ``source`` in the ``meta/robodream.json`` of a policy rollout (:mod:`robodream.rl.rollout`).
ROLLOUT_SOURCE = "policy-rollout"

#: The per-frame features of a dataset with rewards (LeRobot v3.0 ``info.json`` entries).
REWARD_FEATURES = {
    "next.reward": {"dtype": "float32", "shape": [1], "names": None},
    "next.done": {"dtype": "bool", "shape": [1], "names": None},
    "next.success": {"dtype": "bool", "shape": [1], "names": None},
    INTERVENTION: {"dtype": "bool", "shape": [1], "names": None},
    "complementary_info.dense_reward": {"dtype": "float32", "shape": [1], "names": None},
}


def sparse_rewards(success: np.ndarray, *, fail_penalty: float = DEFAULT_FAIL_PENALTY) -> np.ndarray:
    """The RAMP / RECAP reward of each step of one episode.

    ``r_t = 0`` from the first step after which the task reports success on (the expert's hold
    frames included); ``r_t = -1`` before it; in an episode that never succeeds the last step
    gets ``-fail_penalty`` instead of -1. GigaBrain-0.5M* (RAMP), Sec. 3; pi*0.6 (RECAP).

    Args:
        success: (T,) bool, ``next.success`` of each step.
        fail_penalty: C_fail >= 0.

    Returns:
        (T,) float32 rewards.

    Raises:
        ValueError: an empty episode, a non-1-D ``success`` or a negative ``fail_penalty``.
    """
    success = np.asarray(success, dtype=bool)
    if success.ndim != 1 or len(success) == 0:
        raise ValueError(f"success must be a non-empty (T,) array, got shape {success.shape}")
    if fail_penalty < 0:
        raise ValueError(f"fail_penalty (C_fail) must be >= 0, got {fail_penalty}")
    solved = np.maximum.accumulate(success)
    rewards = np.where(solved, 0.0, -1.0).astype(np.float32)
    if not solved[-1]:
        rewards[-1] = -float(fail_penalty)
    return rewards


def episode_reward_columns(success: np.ndarray, dense_reward: np.ndarray | None = None, *,
                           intervention: np.ndarray | None = None,
                           fail_penalty: float = DEFAULT_FAIL_PENALTY) -> dict[str, np.ndarray]:
    """The :data:`REWARD_FEATURES` columns of one episode, ready for ``LeRobotDatasetWriter.add_episode``.

    Args:
        success: (T,) bool, the task's success after each step.
        dense_reward: (T,) the simulator's shaped reward (zeros when None).
        intervention: (T,) bool, takeover steps (all False when None: a demonstration).
        fail_penalty: C_fail of :func:`sparse_rewards`.

    Returns:
        ``{name: (T,) array}`` for every feature of :data:`REWARD_FEATURES`.

    Raises:
        ValueError: arrays of different lengths, or what :func:`sparse_rewards` raises.
    """
    success = np.asarray(success, dtype=bool)
    t = len(success)
    dense = np.zeros(t, np.float32) if dense_reward is None else np.asarray(dense_reward, np.float32)
    takeover = np.zeros(t, bool) if intervention is None else np.asarray(intervention, bool)
    if dense.shape != (t,) or takeover.shape != (t,):
        raise ValueError(f"per-step arrays must all have shape ({t},): dense {dense.shape}, "
                         f"intervention {takeover.shape}")
    done = np.zeros(t, bool)
    done[-1] = True
    return {"next.reward": sparse_rewards(success, fail_penalty=fail_penalty), "next.done": done,
            "next.success": success, INTERVENTION: takeover,
            "complementary_info.dense_reward": dense}
