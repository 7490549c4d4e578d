"""Meta-World environment wrapper: tasks, seeding, rendering, cameras, expert."""

from __future__ import annotations

import numpy as np
import pytest

from robodream.envs.cameras import camera_matrices, project
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv, check_task, task_instruction, task_names
from robodream.errors import ConfigError, UnknownTaskError


def test_task_names_and_unknown_task():
    names = task_names()
    assert len(names) == 50 and "push-v3" in names
    assert check_task("reach-v3") == "reach-v3"
    with pytest.raises(UnknownTaskError, match="valid tasks: .*reach-v3"):
        check_task("reach-v9")
    assert task_instruction("button-press-topdown-v3") == "button press topdown"


def test_bad_camera():
    with pytest.raises(ConfigError, match="unknown camera"):
        EnvConfig(cameras=("corner", "nope"))


@pytest.fixture(scope="module")
def push_env():
    env = MetaWorldEnv(EnvConfig(task="push-v3", cameras=("corner", "topview"), image_size=64))
    yield env
    env.close()


def test_seeded_reset_is_reproducible_and_varies(push_env):
    a = push_env.reset(seed=5)
    goal_a = push_env.privileged_positions["goal"].copy()
    b = push_env.reset(seed=5)
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.state, b.state)
    push_env.reset(seed=6)
    assert np.abs(push_env.privileged_positions["goal"] - goal_a).max() > 1e-3
    assert a.images.shape == (2, 64, 64, 3) and a.images.dtype == np.uint8
    assert a.state.shape == (4,) and a.images.std() > 10  # not a black or flat frame


def test_projection_matches_render(push_env):
    """Project the puck with the camera matrices; segmentation there must be the puck (upright image)."""
    import mujoco

    push_env.reset(seed=3)
    m, d = push_env.mujoco_model, push_env.mujoco_data
    size = 128
    r = mujoco.Renderer(m, size, size)
    try:
        r.enable_segmentation_rendering()
        for cam in ("corner", "corner2", "corner4", "behindGripper"):
            K, T = camera_matrices(m, d, cam, size, size)
            obj = push_env.privileged_positions["object"]
            uv, z = project(obj[None], K, T)
            u, v = uv[:, 0], uv[:, 1]
            r.update_scene(d, camera=cam)
            seg = r.render()
            cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            if d.cam_xmat[cam_id].reshape(3, 3)[2, 1] < -1e-6:  # rendered upside down; env rotates it
                seg = seg[::-1, ::-1]
            geom = seg[int(v[0]), int(u[0]), 0]
            assert z[0] > 0
            assert m.geom_bodyid[geom] == m.body("obj").id, f"{cam}: pixel ({u[0]:.1f}, {v[0]:.1f}) is not the puck"
    finally:
        r.close()


def test_expert_solves_reach():
    with MetaWorldEnv(EnvConfig(task="reach-v3", image_size=32)) as env:
        env.reset(seed=0)
        for _ in range(200):
            obs = env.step(env.expert_action())
            if obs.success:
                break
        assert obs.success


def test_reach_expert_steers_the_finger_centre(tmp_path):
    """Meta-World's reach expert steers the hand to the goal and ends with the finger centre
    4.5 cm away (the success ball is 5 cm); expert_target="tcp" brings the fingers there instead.
    Other tasks' experts are untouched; a bad target is refused before anything is written."""
    final = {}
    with MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner",), image_size=8, proprio=("tcp",))) as env:
        for target in ("hand", "tcp"):
            env.reset(seed=3)
            for _ in range(150):
                tcp = env.step(env.expert_action(target)).state
            final[target] = float(np.linalg.norm(tcp - env.privileged_positions["goal"]))
        with pytest.raises(ConfigError, match="expert target"):
            env.expert_action("wrist")
    assert 0.04 < final["hand"] < 0.05 and final["tcp"] < 0.01
    with MetaWorldEnv(EnvConfig(task="push-v3", cameras=("corner",), image_size=8)) as env:
        env.reset(seed=0)
        np.testing.assert_array_equal(env.expert_action("tcp"), env.expert_action("hand"))

    from robodream.data.collect import CollectConfig, collect

    with pytest.raises(ConfigError, match="expert-target"):
        collect(CollectConfig(task="reach-v3", episodes=1, expert_target="wrist"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_finger_centre_in_the_state(tmp_path):
    """proprio=("hand", "gripper", "tcp") adds the finger centre (a kinematic function of the
    robot's joints, never the object or goal) after the default 4 numbers; collect records it
    with its names and the policy run remembers the layout for evaluation."""
    with pytest.raises(ConfigError, match="proprio"):
        EnvConfig(proprio=("hand", "goal"))
    env = MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner",), image_size=16,
                                 proprio=("hand", "gripper", "tcp")))
    try:
        s = env.reset(seed=0).state
        for _ in range(5):
            s = env.step(env.expert_action()).state
    finally:
        env.close()
    assert s.shape == (7,)
    hand, tcp = s[:3], s[4:]
    assert abs(tcp[2] - (hand[2] - 0.045)) < 0.01 and np.abs(tcp[:2] - hand[:2]).max() < 0.01  # fingers below the hand

    from robodream.data.collect import CollectConfig, collect
    from robodream.data.lerobot import LeRobotDataset

    collect(CollectConfig(task="reach-v3", episodes=1, image_size=16, cameras=("corner",),
                          proprio=("hand", "gripper", "tcp")), tmp_path / "ds")
    ds = LeRobotDataset(tmp_path / "ds")
    assert ds.state_dim == 7 and ds.features["observation.state"]["names"][4:] == ["tcp_x", "tcp_y", "tcp_z"]


def test_first_frame_shows_the_fixture_where_it_is():
    """drawer-open-v3 places its cabinet through model.body_pos at reset: the bodies' world poses (and so
    the first frame) must already be there, not where the cabinet stood before (12 cm off, seed 0)."""
    import mujoco

    env = MetaWorldEnv(EnvConfig(task="drawer-open-v3", cameras=("corner",), image_size=32))
    try:
        for seed in (0, 1):
            first = env.reset(seed).images
            m, d = env.mujoco_model, env.mujoco_data
            xpos = d.xpos.copy()
            mujoco.mj_forward(m, d)
            np.testing.assert_array_equal(d.xpos, xpos)
            np.testing.assert_array_equal(env.render_views(depth=False, segmentation=False)[0], first)
    finally:
        env.close()
