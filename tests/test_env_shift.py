"""Shift in the environment (appearance, static cameras) and depth/segmentation recording."""

from __future__ import annotations

import json

import numpy as np
import pytest

from robodream.config import from_dict, to_dict
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.envs.shift import SEG_CLASSES, Appearance, CameraShift, ShiftConfig
from robodream.errors import ConfigError

CAMS = ("corner", "behindGripper")


def test_unknown_preset_and_round_trip():
    with pytest.raises(ConfigError, match="unknown appearance 'foggy'; valid: default, .*random"):
        ShiftConfig(appearance="foggy")
    with pytest.raises(ConfigError, match="unknown camera shift"):
        from_dict(EnvConfig, {"shift": {"camera_shift": "nope"}})
    cfg = ShiftConfig(appearance="random", camera_shift="random", appearance_scale=2.0)
    app, cam = cfg.draw(7)
    assert (app, cam) == cfg.draw(7) and cfg.draw(8) != (app, cam)  # seeded, a new draw per episode seed
    assert ShiftConfig(appearance="random", seed=1).draw(7)[0] != app
    assert from_dict(Appearance, json.loads(json.dumps(to_dict(app)))) == app
    assert from_dict(CameraShift, json.loads(json.dumps(to_dict(cam)))) == cam
    assert from_dict(EnvConfig, to_dict(EnvConfig(shift=cfg))).shift == cfg


def _rollout(shift: ShiftConfig, seed: int, actions: np.ndarray):
    with MetaWorldEnv(EnvConfig(task="push-v3", cameras=CAMS, image_size=24, shift=shift)) as env:
        obs = [env.reset(seed)] + [env.step(a) for a in actions]
        again = env.reset(seed + 1).images, env.reset(seed).images  # another draw, then back
        K = {c: env.camera_matrices(c) for c in CAMS}
    return np.stack([o.state for o in obs]), np.stack([o.images for o in obs]), again, K


def test_shift_changes_pixels_not_physics():
    """Same seed and actions: the same states under any shift; the pixels differ, are the same
    for the same seed (textures and all restored after another episode's draw), and the
    static camera shift leaves the wrist camera exactly as it was."""
    actions = np.random.default_rng(0).uniform(-1, 1, (6, 4)).astype(np.float32)
    s0, im0, _, K0 = _rollout(ShiftConfig(), 3, actions)
    s1, im1, (other, back), K1 = _rollout(ShiftConfig(appearance="random", camera_shift="random"), 3, actions)
    np.testing.assert_array_equal(s0, s1)
    assert np.abs(im0.astype(int) - im1).mean() > 5
    np.testing.assert_array_equal(back, im1[0])
    assert np.abs(other.astype(int) - back).mean() > 5
    s2, im2, _, K2 = _rollout(ShiftConfig(camera_shift="left"), 3, actions)
    np.testing.assert_array_equal(s0, s2)
    assert np.abs(im0[:, 0].astype(int) - im2[:, 0]).mean() > 5  # static corner camera moved
    np.testing.assert_array_equal(im0[:, 1], im2[:, 1])  # wrist camera untouched
    np.testing.assert_array_equal(K0["behindGripper"][1], K2["behindGripper"][1])
    assert np.abs(K0["corner"][1] - K2["corner"][1]).max() > 0.05


def test_depth_and_segmentation_round_trip(tmp_path):
    from robodream.data.collect import CollectConfig, collect, depth_to_mm, run_expert_episode
    from robodream.data.lerobot import LeRobotDataset

    cfg = CollectConfig(task="reach-v3", episodes=1, image_size=16, cameras=CAMS, with_depth=True,
                        with_segmentation=True, shift=ShiftConfig(appearance="random", camera_shift="high"))
    collect(cfg, tmp_path / "ds")
    ds = LeRobotDataset(tmp_path / "ds")
    with MetaWorldEnv(EnvConfig(task="reach-v3", cameras=CAMS, image_size=16, shift=cfg.shift, depth=True,
                                segmentation=True)) as env:
        ep = run_expert_episode(env, 0, post_success_steps=cfg.post_success_steps)
    for i, cam in enumerate(CAMS):
        depth, seg = ds.all_depth(cam)[0], ds.all_segmentation(cam)[0]
        assert depth.dtype == np.uint16 and seg.dtype == np.uint8 and depth.shape == (ds.num_frames, 16, 16)
        np.testing.assert_array_equal(depth, depth_to_mm(ep["depth"][:, i]))
        np.testing.assert_array_equal(seg, ep["segmentation"][:, i])
    assert 300 < np.median(ds.all_depth("behindGripper")[0]) < 2000  # millimetres to the table
    seen = set(np.unique(ds.all_segmentation("corner")[0]))
    assert {SEG_CLASSES.index("robot"), SEG_CLASSES.index("table")} <= seen
    assert "observation.depth.corner" not in ds.episode(0).extra  # arrays only through array()
    info = json.loads((tmp_path / "ds/meta/info.json").read_text())["features"]
    assert info["observation.segmentation.corner"]["info"]["classes"] == list(SEG_CLASSES)
    prov = json.loads((tmp_path / "ds/meta/robodream.json").read_text())
    assert prov["shift"]["appearance"] == "random" and prov["shift"]["episode_seeds"] == [0, 0]
    assert prov["env"]["shift"]["camera_shift"] == "high"
