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


def test_returns_and_n_step_advantages_on_a_five_step_episode():
    from robodream.rl.advantages import discounted_returns, n_step_advantages

    r = sparse_rewards(np.array([False, False, False, True, True]))  # -1 -1 -1 0 0
    np.testing.assert_allclose(discounted_returns(r, 1.0), [-3, -2, -1, 0, 0])
    np.testing.assert_allclose(discounted_returns(r, 0.5), [-1.75, -1.5, -1, 0, 0])
    v = np.array([-2.0, -2.0, -1.0, -0.5, 0.0])
    # n = 2, gamma = 0.5: A_t = r_t + 0.5 r_{t+1} + 0.25 V_{t+2} - V_t, V = 0 past the end
    want = [-1 - 0.5 + 0.25 * -1.0 + 2.0,   # 0.25
            -1 - 0.5 + 0.25 * -0.5 + 2.0,   # 0.375
            -1 + 0.0 + 0.25 * 0.0 + 1.0,    # 0
            0 + 0 + 0 + 0.5,                # 0.5 (V_5 = 0)
            0 + 0 + 0 - 0.0]                # 0
    np.testing.assert_allclose(n_step_advantages(r, v, n=2, gamma=0.5), want)
    # n = 1 is the one-step TD error; a perfect value gives zero advantage with gamma = 1
    np.testing.assert_allclose(n_step_advantages(r, discounted_returns(r), n=1), np.zeros(5))
    np.testing.assert_allclose(n_step_advantages(r, discounted_returns(r), n=10), np.zeros(5))
    with pytest.raises(ValueError, match="n must"):
        n_step_advantages(r, v, n=0)
    with pytest.raises(ValueError, match="both be"):
        n_step_advantages(r, v[:4], n=1)


def test_indicator_threshold_gives_the_stated_positive_fraction():
    from robodream.rl.advantages import advantage_indicator, indicator_threshold

    a = np.random.default_rng(0).normal(size=10_000)
    eps = indicator_threshold(a, 0.3)
    assert abs(advantage_indicator(a, eps).mean() - 0.3) < 0.002
    np.testing.assert_array_equal(advantage_indicator(np.array([0.1, 0.5, 0.9]), 0.5), [False, False, True])
    with pytest.raises(ValueError, match="positive_fraction"):
        indicator_threshold(a, 1.0)
