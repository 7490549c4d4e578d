"""Cameras from MuJoCo in the rasteriser's conventions: orbit cameras around the table,
RGB-D renders, projection of known MuJoCo points, multi-view depth consistency."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodream.envs.cameras import (
    TABLE_CENTER,
    backproject,
    camera_matrices,
    free_camera,
    free_camera_matrices,
    look_at,
    orbit_angles,
    orbit_eye,
    project,
    render_rgbd,
)
from robodream.envs.meta_world import CAMERAS, EnvConfig, MetaWorldEnv
from robodream.errors import ConfigError
from robodream.gaussians.rasterizer import rasterize

SIZE = 96
DIST = 1.3


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def env():
    e = MetaWorldEnv(EnvConfig(task="push-v3", cameras=("corner",), image_size=SIZE))
    e.reset(seed=3)
    yield e
    e.close()


def test_look_at_and_orbit_geometry():
    eye, target = np.array([1.0, -0.5, 0.8]), np.array([0.0, 0.6, 0.0])
    T = look_at(eye, target)
    R = T[:3, :3]
    np.testing.assert_allclose(R @ R.T, np.eye(3), atol=1e-12)
    assert np.isclose(np.linalg.det(R), 1.0)
    np.testing.assert_allclose(T[:3, :3] @ eye + T[:3, 3], 0.0, atol=1e-12)  # eye is the camera centre
    K = np.array([[100.0, 0, 32], [0, 100, 24], [0, 0, 1]])
    uv, z = project(np.stack([target, target + [0, 0, 0.1]]), K, T)
    np.testing.assert_allclose(uv[0], [32, 24], atol=1e-9)  # target at the principal point
    assert uv[1, 1] < uv[0, 1] and z[0] > 0  # world up is image up
    angles = orbit_angles(6, (-30.0, -50.0), azimuth_offset_deg=15.0)
    assert [a for a, _ in angles] == [15.0, 75.0, 135.0, 195.0, 255.0, 315.0]
    assert [e for _, e in angles] == [-30.0, -50.0] * 3
    np.testing.assert_allclose(np.linalg.norm(orbit_eye(TABLE_CENTER, 2.0, 40, -30) - TABLE_CENTER), 2.0)
    with pytest.raises(ConfigError):
        look_at(eye, eye)
    with pytest.raises(ConfigError):
        orbit_angles(0)


def test_free_camera_projects_known_points_to_their_pixels(env):
    """Project the puck centre into orbit views; where it is not occluded the segmentation
    there is the puck and the rendered depth is the puck's near surface."""
    import mujoco

    m, d = env.mujoco_model, env.mujoco_data
    seg_r = mujoco.Renderer(m, SIZE, SIZE)
    seg_r.enable_segmentation_rendering()
    checked = 0
    try:
        obj = env.privileged_positions["object"]
        for az, el in orbit_angles(8, (-35.0, -55.0)):
            K, T = free_camera_matrices(m, TABLE_CENTER, DIST, az, el, SIZE, SIZE)
            (u, v), z = (x[0] for x in project(obj[None], K, T))
            cam = free_camera(TABLE_CENTER, DIST, az, el)
            _, depth = render_rgbd(env._renderer, d, cam)
            if depth[int(v), int(u)] < z - 0.05:  # something in front of the puck (the arm)
                continue
            seg_r.update_scene(d, camera=cam)
            geom = seg_r.render()[int(v), int(u), 0]
            assert m.geom_bodyid[geom] == m.body("obj").id, f"az {az}: ({u:.1f}, {v:.1f}) is not the puck"
            assert z - 0.04 < depth[int(v), int(u)] < z  # the puck's near surface, 2 cm radius
            checked += 1
    finally:
        seg_r.close()
    assert checked >= 4


def test_fixed_cameras_project_known_points_to_their_pixels(env):
    """Every Meta-World camera (upside-down corner cameras and the hand-mounted ones
    included): the puck centre projected with :func:`camera_matrices` lands on the puck in
    the upright image, and the rendered depth there is the puck's near surface."""
    import mujoco

    m, d = env.mujoco_model, env.mujoco_data
    seg_r = mujoco.Renderer(m, SIZE, SIZE)
    seg_r.enable_segmentation_rendering()
    checked, flipped = [], 0
    try:
        obj = env.privileged_positions["object"]
        for cam in CAMERAS:
            cam_id = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_CAMERA, cam)
            upside_down = d.cam_xmat[cam_id].reshape(3, 3)[2, 1] < -1e-6  # as MetaWorldEnv.render rotates
            K, T = camera_matrices(m, d, cam, SIZE, SIZE)
            np.testing.assert_allclose(K, env.camera_matrices(cam)[0])
            (u, v), z = (x[0] for x in project(obj[None], K, T))
            assert z > 0 and 0 <= u < SIZE and 0 <= v < SIZE, f"{cam}: puck projects outside ({u:.1f}, {v:.1f})"
            _, depth = render_rgbd(env._renderer, d, cam)
            if depth[int(v), int(u)] < z - 0.05:  # the arm is in front of the puck
                continue
            seg_r.update_scene(d, camera=cam_id)
            seg = seg_r.render()[..., 0]
            seg = seg[::-1, ::-1] if upside_down else seg
            assert m.geom_bodyid[seg[int(v), int(u)]] == m.body("obj").id, f"{cam}: ({u:.1f}, {v:.1f}) is not the puck"
            assert z - 0.04 < depth[int(v), int(u)] < z, cam
            checked.append(cam)
            flipped += int(upside_down)
    finally:
        seg_r.close()
    assert len(checked) >= 5 and flipped >= 2, checked


@pytest.mark.parametrize("view_b", ["free", "corner2"])
def test_multiview_depth_consistency(env, view_b):
    """Back-project one view's depth and reproject into another (free or fixed camera):
    the predicted depths match that view's rendered depth to millimetres."""
    m, d = env.mujoco_model, env.mujoco_data
    az, el = 20.0, -50.0
    Ka, Ta = free_camera_matrices(m, TABLE_CENTER, DIST, az, el, SIZE, SIZE)
    _, depth_a = render_rgbd(env._renderer, d, free_camera(TABLE_CENTER, DIST, az, el))
    pts = backproject(depth_a, Ka, Ta)[depth_a < 10.0]  # (M, 3), sky removed
    if view_b == "free":
        Kb, Tb = free_camera_matrices(m, TABLE_CENTER, DIST, az + 25.0, -40.0, SIZE, SIZE)
        _, depth_b = render_rgbd(env._renderer, d, free_camera(TABLE_CENTER, DIST, az + 25.0, -40.0))
    else:
        Kb, Tb = camera_matrices(m, d, view_b, SIZE, SIZE)
        _, depth_b = render_rgbd(env._renderer, d, view_b)
    uv, z = project(pts, Kb, Tb)
    x, y = uv[:, 0] - 0.5, uv[:, 1] - 0.5  # continuous coordinates of pixel centres
    inside = (x >= 0) & (x < SIZE - 1) & (y >= 0) & (y < SIZE - 1) & (z > 0)
    x, y, z = x[inside], y[inside], z[inside]
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    bilinear = ((1 - fx) * (1 - fy) * depth_b[y0, x0] + fx * (1 - fy) * depth_b[y0, x0 + 1]
                + (1 - fx) * fy * depth_b[y0 + 1, x0] + fx * fy * depth_b[y0 + 1, x0 + 1])
    err = np.abs(bilinear - z)
    assert inside.mean() > 0.3
    assert np.median(err) < 0.003  # visible (non-occluded) points agree to millimetres


def test_rasterised_backprojection_reproduces_mujoco_render(env):
    """Small Gaussians on the back-projected pixels of an RGB-D render, rasterised with the
    same K and world-to-camera, give back the image and the depth."""
    m, d = env.mujoco_model, env.mujoco_data
    K, T = free_camera_matrices(m, TABLE_CENTER, DIST, 60.0, -45.0, SIZE, SIZE)
    rgb, depth = render_rgbd(env._renderer, d, free_camera(TABLE_CENTER, DIST, 60.0, -45.0))
    pts = backproject(depth, K, T).reshape(-1, 3)
    n = pts.shape[0]
    f32 = dict(dtype=torch.float32)
    scales = torch.tensor(depth.reshape(-1) / K[0, 0] * 0.6, **f32)[:, None].repeat(1, 3)  # ~0.6 px
    out = rasterize(torch.tensor(pts, **f32), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), scales,
                    torch.full((n,), 0.99), torch.tensor(rgb.reshape(-1, 3) / 255.0, **f32),
                    torch.tensor(T, **f32)[None], torch.tensor(K, **f32)[None], SIZE, SIZE)
    mse = ((out.rgb[0].numpy() - rgb / 255.0) ** 2).mean()
    assert -10 * np.log10(mse) > 20.0
    visible = depth < 10.0
    assert np.median(np.abs(out.depth[0].numpy() - depth)[visible]) < 0.01
