"""Transfer models of the data engine: the depth warp is exact where geometry says it must be,
re-renders replay the recorded trajectory (only pixels change), the models' shapes and claims,
and the train/eval CLI verbs (resumable runs, held-out tasks, one-line errors that write nothing)."""

from __future__ import annotations

import numpy as np
import pytest

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.envs.shift import ShiftConfig
from robodream.transfer.warp import forward_warp


def _view(shift: ShiftConfig, size: int = 64, seed: int = 3):
    """RGB (H, W, 3), depth (H, W) metres, K, world-to-camera of the corner camera at reset."""
    with MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner",), image_size=size, shift=shift, depth=True)) as env:
        obs = env.reset(seed)
        K, T = env.camera_matrices("corner")
    return obs.images[0], obs.depth[0], K, T


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean(((a.astype(np.float64) - b) / 255) ** 2)))


# ----------------------------------------------------------------------------- depth warp
@pytest.mark.parametrize("supersample", [1, 2])
def test_warp_into_itself_reproduces_the_view(supersample):
    rgb, depth, K, T = _view(ShiftConfig())
    assert np.isinf(depth).sum() == 0 and (depth > 50).any()  # MuJoCo's far plane: the sky
    warped, hole, wdepth = forward_warp(rgb, depth, K, T, K, T, supersample=supersample)
    np.testing.assert_array_equal(warped, rgb)  # sky included: points at infinity stay put
    assert not hole.any()
    near = depth < 50
    np.testing.assert_allclose(wdepth[near], depth[near], rtol=1e-5)
    assert np.isinf(wdepth[~near]).all()


def test_warp_between_two_real_renders_matches_on_non_hole_pixels():
    """A static scene from the corner camera and from the same camera moved 10 cm left and
    turned 6 degrees: the warp of the first render agrees with the second wherever it lands."""
    a_rgb, a_depth, a_K, a_T = _view(ShiftConfig())
    b_rgb, _, b_K, b_T = _view(ShiftConfig(camera_shift="left"))
    warped, hole, _ = forward_warp(a_rgb, a_depth, a_K, a_T, b_K, b_T)
    seen = ~hole
    assert 0.02 < hole.mean() < 0.3  # the part of B that A never saw
    assert _psnr(warped[seen], b_rgb[seen]) > 20
    assert _psnr(warped[seen], b_rgb[seen]) > _psnr(a_rgb[seen], b_rgb[seen]) + 3  # geometry, not luck
    assert (warped[hole] == 0).all()  # holes left black
    with pytest.raises(ValueError, match="differ in size"):
        forward_warp(a_rgb[:32], a_depth, a_K, a_T, b_K, b_T)
