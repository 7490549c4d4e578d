"""Policy rollouts with takeover (robodream.rl.takeover, robodream.rl.rollout, ``robodream rollout``):
the HG-DAgger trigger on scripted sequences, the keyboard mapping, intervention flags written and
read back, training on demos + rollouts, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TINY_POLICY, one_line_error, run

from robodream.errors import ConfigError
from robodream.rl.takeover import (
    ExpertTakeover,
    KeyboardTakeover,
    SimulatedKeys,
    StepInfo,
    TakeoverConfig,
    check_takeover,
    make_takeover,
)

IMG = np.zeros((1, 8, 8, 3), np.uint8)


class FakeEnv:
    """Only what a takeover source may touch: the scripted expert's action."""

    def __init__(self, expert=(1.0, 1.0, 0.0, -1.0)) -> None:
        self.expert = np.asarray(expert, np.float32)

    def expert_action(self, target: str = "tcp") -> np.ndarray:
        return self.expert


def drive(source, env, proposals, rewards=None):
    """Run a source over steps; proposals[t] (4,), rewards[t] the shaped reward after step t."""
    source.reset(0)
    out = []
    for t, p in enumerate(proposals):
        dense = None if t == 0 or rewards is None else rewards[t - 1]
        out.append(source.act(env, np.asarray(p, np.float32), StepInfo(t, IMG, np.zeros(4, np.float32), dense)))
    return [took for took, _ in out], [a for _, a in out]


# ----------------------------------------------------------------------------- the trigger
def test_expert_takes_over_after_k_disagreeing_steps_and_hands_back():
    env = FakeEnv()  # the expert moves +x +y at full speed; the policy proposes nothing: distance sqrt(2)
    src = ExpertTakeover(takeover_steps=3, max_interventions=2, disagree_threshold=1.0, disagree_steps=2,
                         stall_steps=0)
    took, actions = drive(src, env, [np.zeros(4)] * 12)
    # fires at the 2nd disagreeing step, drives 3 steps, hands back, fires again 2 steps later,
    # then the cap (2 takeovers) leaves the policy in control
    assert took == [False, True, True, True, False, True, True, True, False, False, False, False]
    assert src.interventions == 2
    for t, a in zip(took, actions):
        np.testing.assert_array_equal(a, env.expert if t else np.zeros(4))
    # one agreeing step restarts the count; an agreeing policy is never taken over
    agree = np.asarray(env.expert)
    took, _ = drive(src, env, [np.zeros(4), agree, np.zeros(4), agree, np.zeros(4), np.zeros(4)])
    assert took == [False] * 5 + [True]
    took, _ = drive(src, env, [agree] * 50)
    assert not any(took) and src.interventions == 0


def test_expert_takes_over_when_the_dense_reward_stalls():
    env = FakeEnv()
    src = ExpertTakeover(takeover_steps=2, disagree_steps=0, stall_steps=3, stall_delta=0.05)
    rising = [1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]  # shaped reward after each step
    took, _ = drive(src, env, [env.expert] * 10, rising)
    # step t sees the rewards of steps 0..t-1: at t = 8 the last 3 (5, 5, 5) add nothing to the best before (5)
    assert took == [False] * 8 + [True, True]
    took, _ = drive(src, env, [env.expert] * 10, [1.0 + 0.01 * i for i in range(10)])  # creeping below delta
    assert took.index(True) == 4  # as soon as 3 rewards follow the first one
    took, _ = drive(src, env, [env.expert] * 30, [0.2 * i for i in range(30)])  # steady progress
    assert not any(took)


def test_takeover_settings_are_checked(monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO())  # no terminal
    with pytest.raises(ConfigError, match="expert, keyboard, none"):
        check_takeover(TakeoverConfig(source="joystick"))
    with pytest.raises(ConfigError, match="--takeover-steps"):
        check_takeover(TakeoverConfig(takeover_steps=0))
    with pytest.raises(ConfigError, match="--workers 1"):
        check_takeover(TakeoverConfig(source="keyboard"), workers=2, keys=SimulatedKeys([]))
    with pytest.raises(ConfigError, match="needs a terminal"):
        make_takeover(TakeoverConfig(source="keyboard"))
    took, action = make_takeover(TakeoverConfig(source="none")).act(None, np.ones(4), None)
    assert not took and (action == 1).all()


# ----------------------------------------------------------------------------- keyboard
def test_simulated_keys_drive_the_keyboard_takeover():
    keys = SimulatedKeys(["", "t w", "t w d", "shift r space", "shift f", "", "t a", "t a f"])
    src = KeyboardTakeover(keys)
    policy = np.array([0.3, -0.2, 0.1, 0.7], np.float32)  # closing the gripper (effort > 0)
    took, actions = drive(src, FakeEnv(), [policy] * 10)
    assert took == [False, True, True, True, True, False, True, True, False, False]
    want = {1: [0, 1, 0, 1], 2: [1, 1, 0, 1],  # w: +y, d: +x; the gripper stays closed as the policy had it
            3: [0, 0, 1, -1], 4: [0, 0, -1, -1],  # r: +z, Space toggles it open, f: -z
            6: [-1, 0, 0, 1], 7: [-1, 0, -1, 1]}  # a new takeover inherits the policy's gripper again
    for t, a in enumerate(actions):
        np.testing.assert_array_equal(a, want.get(t, policy), err_msg=f"step {t}")
    assert src.interventions == 2
    took, _ = drive(src, FakeEnv(), [policy] * 3)  # the script restarts with every episode
    assert took == [False, True, True]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny reach-v3 dataset, tokenizer and policy (as tests/test_cli.py's)."""
    w = tmp_path_factory.mktemp("rollout")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 4, "--batch-size", 8)
    run("train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "pol", "--steps", 4,
        *TINY_POLICY)
    return w


@pytest.fixture
def idle_policy(monkeypatch):
    """A policy that does nothing useful: every action zero."""
    from robodream.policy.runner import PolicyRunner

    monkeypatch.setattr(PolicyRunner, "act", lambda self, images, state: np.zeros(4, np.float32))


def test_expert_takeover_flags_written_and_read_back(work, idle_policy):
    from robodream.data.lerobot import LeRobotDataset
    from robodream.envs.meta_world import EnvConfig, MetaWorldEnv

    out = work / "ro_expert"
    res = run("rollout", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 2, "--out", out,
              "--max-steps", 24, "--disagree-threshold", 0.3, "--disagree-steps", 3, "--takeover-steps", 5,
              "--stall-steps", 0, "--max-interventions", 2)
    assert "rollout reach-v3" in res.output and "intervention" in res.output
    ds, demos = LeRobotDataset(out), LeRobotDataset(work / "ds")
    assert ds.features == demos.features  # the same columns as collect's: trains together with them
    prov = json.loads((out / "meta" / "robodream.json").read_text())
    results = json.loads((out / "meta" / "results.json").read_text())
    assert prov["source"] == "policy-rollout" and prov["seeds"] == [2_000_000, 2_000_001]
    assert prov["takeover"]["source"] == "expert" and prov["takeover"]["disagree_steps"] == 3
    assert prov["env"]["image_size"] == 32 and prov["env"]["cameras"] == ["corner", "behindGripper"]
    env = MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner",), image_size=8, max_steps=24))
    try:
        for i, (seed, ep_res) in enumerate(zip(prov["seeds"], prov["episodes"])):
            ep = ds.episode(i).extra
            flags = np.asarray(ep["complementary_info.is_intervention"]).reshape(-1)
            actions = np.asarray(ds.episode(i).action)
            assert flags.dtype == bool and not flags[:2].any() and flags[2:7].all()  # fired at the 3rd idle step
            assert int(flags.sum()) == ep_res["intervention_steps"] == results["episodes"][i]["intervention_steps"]
            assert 1 <= ep_res["interventions"] <= 2
            # replay: a flagged frame carries the expert's action, any other the idle policy's zeros
            env.reset(seed)
            for t in range(len(flags)):
                want = np.clip(env.expert_action(), -1, 1) if flags[t] else np.zeros(4)
                np.testing.assert_allclose(actions[t], want, atol=1e-6, err_msg=f"episode {i} step {t}")
                env.step(actions[t])
    finally:
        env.close()
    assert results["intervention_steps"] == sum(e["intervention_steps"] for e in results["episodes"])


def test_no_takeover_then_train_on_demos_and_rollouts(work, tmp_path):
    out = tmp_path / "ro"
    run("rollout", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 1, "--out", out,
        "--max-steps", 8, "--takeover", "none", "--fail-penalty", 7)
    from robodream.data.lerobot import LeRobotDataset

    ep = LeRobotDataset(out).episode(0).extra
    assert not np.asarray(ep["complementary_info.is_intervention"]).any()
    reward = np.asarray(ep["next.reward"]).reshape(-1)
    if not np.asarray(ep["next.success"]).any():  # a failed rollout is kept, with -C_fail at its end
        assert reward[-1] == -7 and len(reward) == 8
    run("train", "policy", "--data", work / "ds", "--data", out, "--tokenizer", work / "tok", "--out",
        tmp_path / "pol2", "--steps", 2, *TINY_POLICY)
    cfg = json.loads((tmp_path / "pol2" / "config.json").read_text())
    assert cfg["train_seeds"]["reach-v3"] == [0, 1, 2, 2_000_000]
    from robodream.rl.rollout import default_rollout_seed

    assert default_rollout_seed(cfg, "reach-v3") == 2_000_001  # the next round rolls out on new seeds


def test_simulated_keyboard_rollout(work, tmp_path, idle_policy):
    from robodream.data.lerobot import LeRobotDataset
    from robodream.rl.rollout import record_rollouts

    keys = SimulatedKeys(["", "", "t w", "t w r", "t space", ""])
    r = record_rollouts(work / "pol", "reach-v3", 1, tmp_path / "kb", takeover=TakeoverConfig(source="keyboard"),
                        keys=keys, max_steps=6)
    ds = LeRobotDataset(tmp_path / "kb")
    flags = np.asarray(ds.episode(0).extra["complementary_info.is_intervention"]).reshape(-1)
    np.testing.assert_array_equal(flags, [False, False, True, True, True, False])
    np.testing.assert_array_equal(np.asarray(ds.episode(0).action),
                                  [[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, -1], [0, 1, 1, -1], [0, 0, 0, 1], [0, 0, 0, 0]])
    assert r["intervention_steps"] == 3 and r["episodes"][0]["interventions"] == 1
    assert r["takeover"]["source"] == "keyboard" and r["takeover"]["keys"]["w"] == "+y"


def test_interrupted_rollout_leaves_nothing(work, tmp_path, monkeypatch):
    import robodream.rl.rollout as rollout

    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = rollout.write_episode
    monkeypatch.setattr(rollout, "write_episode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        rollout.record_rollouts(work / "pol", "reach-v3", 2, tmp_path / "ro", takeover=TakeoverConfig(source="none"),
                                max_steps=3)
    assert list(tmp_path.iterdir()) == []  # no dataset, no half-written episode, no temporary left


def test_rollout_bad_input(work):
    out = work / "ro_bad"
    base = ["rollout", "--policy", work / "pol", "--episodes", 1, "--out", out, "--max-steps", 4]
    one_line_error(run(*base, "--task", "reach-v3", "--takeover", "joystick", code=2),
                   "joystick", "expert, keyboard, none")
    one_line_error(run(*base, "--task", "push-v3", code=2), "not trained on task")
    one_line_error(run(*base, "--task", "reach-v3", "--takeover", "keyboard", code=2), "keyboard", "terminal")
    one_line_error(run(*base, "--task", "reach-v3", "--seed", 1, code=2), "overlap the training seeds", "--seed")
    one_line_error(run(*base, "--task", "no-such-task-v3", code=2), "unknown Meta-World task")
    assert not out.exists()
