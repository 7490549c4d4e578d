"""The RAMP / RECAP reward columns (robodream.rl.rewards), on hand-made episodes."""

from __future__ import annotations

import numpy as np
import pytest

from robodream.rl.rewards import REWARD_FEATURES, episode_reward_columns, sparse_rewards


def test_sparse_rewards_successful_episode():
    # solved after step 2 (0-based), held for two more steps
    r = sparse_rewards(np.array([False, False, True, False, True]), fail_penalty=500)
    np.testing.assert_array_equal(r, np.array([-1, -1, 0, 0, 0], np.float32))
    assert r.dtype == np.float32


def test_sparse_rewards_failed_episode_ends_with_the_penalty():
    r = sparse_rewards(np.zeros(5, bool), fail_penalty=7.5)
    np.testing.assert_array_equal(r, np.array([-1, -1, -1, -1, -7.5], np.float32))
    assert float(r.sum()) == -11.5  # the undiscounted return


def test_sparse_rewards_rejects_bad_input():
    with pytest.raises(ValueError, match="non-empty"):
        sparse_rewards(np.zeros(0, bool))
    with pytest.raises(ValueError, match="C_fail"):
        sparse_rewards(np.ones(3, bool), fail_penalty=-1)


def test_episode_reward_columns():
    cols = episode_reward_columns(np.array([False, True, True]), np.array([0.1, 9.0, 10.0]),
                                  intervention=np.array([False, True, False]))
    assert set(cols) == set(REWARD_FEATURES)
    np.testing.assert_array_equal(cols["next.reward"], [-1, 0, 0])
    np.testing.assert_array_equal(cols["next.done"], [False, False, True])
    np.testing.assert_array_equal(cols["complementary_info.is_intervention"], [False, True, False])
    np.testing.assert_allclose(cols["complementary_info.dense_reward"], [0.1, 9.0, 10.0])
    demo = episode_reward_columns(np.array([False, True]))
    assert not demo["complementary_info.is_intervention"].any()
    with pytest.raises(ValueError, match="shape"):
        episode_reward_columns(np.array([False, True]), np.zeros(3))
