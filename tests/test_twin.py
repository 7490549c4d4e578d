"""The digital twin (issue 17): position-based dynamics (resting stack, rigidity, free fall), visual
forces that pull a displaced body toward the image, ``robodream track`` / ``bench track`` end to end,
and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robodream.errors import ConfigError
from robodream.twin.pbd import ParticleWorld
from robodream.twin.scene import TwinBody, TwinConfig, TwinScene
from robodream.twin.twin import DigitalTwin

pytestmark = pytest.mark.usefixtures("one_thread")
R = 0.005


def cube(offset) -> torch.Tensor:
    g = torch.stack(torch.meshgrid(*(torch.tensor([-R, R]),) * 3, indexing="ij"), -1).reshape(-1, 3)
    return g + torch.tensor(offset)


def test_a_resting_stack_does_not_drift():
    x = torch.cat([cube([0, 0, 2 * R]), cube([0, 0, 6 * R])])
    body = torch.cat([torch.zeros(8), torch.ones(8)]).long()
    w = ParticleWorld(x, body, torch.tensor([0.1, 0.1]), torch.tensor([1.0, 1.0]), torch.zeros(0, 3), radius=R,
                      table_z=0.0)
    for _ in range(20):
        w.step(0.0125, torch.zeros(0, 3))
    settled = w.com.clone()
    for _ in range(200):
        w.step(0.0125, torch.zeros(0, 3))
    assert (w.com - settled).norm(dim=-1).max() < 1e-5  # no drift once settled
    assert (settled - torch.tensor([[0, 0, 2 * R], [0, 0, 6 * R]])).abs().max() < 0.3e-3  # resting where placed
    assert torch.allclose(w.R, torch.eye(3).expand(2, 3, 3), atol=1e-5)


def test_shape_matching_keeps_a_body_rigid_and_a_free_fall_follows_gravity():
    x = cube([0, 0, 1.0])
    w = ParticleWorld(x, torch.zeros(8).long(), torch.tensor([0.2]), torch.tensor([1.0]), torch.zeros(0, 3), radius=R,
                      table_z=-10.0)
    w.x = w.x + torch.randn(8, 3, generator=torch.Generator().manual_seed(0)) * 1e-3  # a non-rigid perturbation
    w.v = torch.randn(8, 3, generator=torch.Generator().manual_seed(1)) * 0.1
    for _ in range(10):
        w.step(0.0125, torch.zeros(0, 3))
    torch.testing.assert_close(torch.cdist(w.x, w.x), torch.cdist(x, x), atol=1e-5, rtol=0)
    free = ParticleWorld(x, torch.zeros(8).long(), torch.tensor([0.2]), torch.tensor([1.0]), torch.zeros(0, 3),
                         radius=R, table_z=-10.0)
    for _ in range(16):
        free.step(0.0125, torch.zeros(0, 3))
    t = 16 * 0.0125
    fall = 1.0 - float(free.com[0, 2])
    assert abs(fall - 0.5 * 9.81 * t * t) < 0.05 * 0.5 * 9.81 * t * t  # semi-implicit Euler: within 5%
    bad = ParticleWorld(x, torch.zeros(8).long(), torch.tensor([0.2]), torch.tensor([1.0]), torch.zeros(0, 3),
                        radius=R, table_z=-10.0)
    start = bad.com.clone()
    bad.step(0.0125, torch.zeros(0, 3), force=torch.tensor([[float("nan"), 0.0, 0.0]]))
    assert bad.diverged(start)


def test_a_robot_contact_takes_the_larger_friction():
    """A gripper pad (kinematic, mu 2) pressing down on a block on a frictionless table (the block's
    mu 0) while sliding 1 cm: with MuJoCo's rule (the larger coefficient of the two sides) the grip
    holds the block under the pad; with the block's own mu alone it is squeezed out (the lost grasp
    of push-v3 with friction x0.3, benchmarks/RESULTS.md)."""
    pad = cube([0, 0, 4 * R - 0.6e-3])  # resting on the block, pressing 0.6 mm into it
    moved = {}
    for name, k_mu in (("max", torch.full((8,), 2.0)), ("block only", None)):
        w = ParticleWorld(cube([0, 0, R]), torch.zeros(8).long(), torch.tensor([0.1]), torch.tensor([0.0]), pad,
                          radius=R, table_z=0.0, kinematic_friction=k_mu)
        k = pad.clone()
        for _ in range(10):
            k = k + torch.tensor([0.001, 0, 0])  # the pad slides 1 cm in x, pressing down all the time
            w.step(0.0125, k)
        moved[name] = float(w.com[0, 0])
    assert 0.0 < moved["max"] < 0.011 and abs(moved["block only"]) > 0.05, moved
    with pytest.raises(ValueError, match="kinematic_friction"):
        ParticleWorld(cube([0, 0, R]), torch.zeros(8).long(), torch.tensor([0.1]), torch.tensor([0.0]), pad,
                      radius=R, table_z=0.0, kinematic_friction=torch.ones(3))


def test_a_non_convex_mesh_is_filled_through_its_convex_hull():
    """An L-shaped mesh still gets particles everywhere in its convex hull (the planes of its own
    faces, which the twin used before, keep only the corner square where the two bars meet)."""
    from scipy.spatial import ConvexHull

    from robodream.twin.geometry import MESH, signed_distance, volume_points

    # the vertices of an L of two 4 cm x 2 cm x 2 cm bars
    v = np.array([[0, 0, 0], [4, 0, 0], [4, 2, 0], [2, 2, 0], [2, 4, 0], [0, 4, 0]], float) / 100
    verts = np.concatenate([v, v + [0, 0, 0.02]])
    pts = volume_points(MESH, np.zeros(3), 0.005, verts, inset=0.0025)
    hull = ConvexHull(verts).volume
    assert len(pts) > 0.5 * hull / 0.005 ** 3  # the grid fills the hull, not just the corner square
    assert (signed_distance(pts, MESH, np.zeros(3), verts) <= 1e-9).all()
    assert signed_distance(np.array([[0.03, 0.01, 0.01]]), MESH, np.zeros(3), verts)[0] < -0.009  # 1 cm deep in a bar


def synthetic_scene() -> tuple[TwinScene, list]:
    """One 2 cm box of red Gaussians on a table plane, seen from above by two 32x32 cameras."""
    from robodream.envs.cameras import intrinsics
    from robodream.twin.geometry import BOX, surface_points

    pts = surface_points(BOX, np.array([0.01, 0.01, 0.01]), 0.006)  # a shell, as build_scene makes them
    box = TwinBody("box", 1, False, cube([0, 0, 0]).numpy() * 2, pts, np.tile([[0.9, 0.1, 0.1]], (len(pts), 1)).astype(
        np.float32), 0.75, 1.0)
    K = intrinsics(40.0, 32, 32)
    views = []
    for tilt in (0.0, 0.3):  # looking down from 0.4 m, the second camera tilted about x
        c, s = np.cos(tilt), np.sin(tilt)
        Rwc = np.array([[1, 0, 0], [0, -c, -s], [0, s, -c]])  # camera axes (x right, y down, z forward) in the world
        pos = Rwc[:, 2] * -0.4
        T = np.eye(4)
        T[:3, :3], T[:3, 3] = Rwc.T, -Rwc.T @ pos
        views.append(T)
    scene = TwinScene([box], [], -0.02 - R, np.stack([K, K]), np.stack(views),
                      np.full((2, 32, 32, 3), 0.2, np.float32), 0.0125)
    return scene, [(np.zeros(3), np.eye(3))]


def test_a_visual_force_pulls_a_displaced_body_toward_the_image():
    scene, poses = synthetic_scene()
    cfg = TwinConfig(cameras=("a", "b"), image_size=32, visual_steps=5, color_fit_steps=0)
    truth = DigitalTwin(scene, cfg, poses, [])
    observed = (truth.render().detach().clamp(0, 1) * 255).byte().numpy()
    twin = DigitalTwin(scene, cfg, poses, [])
    twin.displace([0.008, 0.0, 0.0])
    force, _, _ = twin.visual_forces(observed)
    assert force[0, 0] < -abs(force[0, 1])  # towards -x, where the image has the box
    start = float(twin.physics.com[0, 0])
    for _ in range(15):
        twin.step([], observed)
    assert abs(float(twin.physics.com[0, 0])) < 0.5 * abs(start)  # the error at least halved
    still = DigitalTwin(scene, TwinConfig(cameras=("a", "b"), image_size=32, forces=False, color_fit_steps=0), poses, [])
    still.displace([0.008, 0.0, 0.0])
    for _ in range(15):
        still.step([], observed)
    assert abs(float(still.physics.com[0, 0]) - 0.008) < 1e-3  # physics alone keeps the wrong state


def test_track_cli_and_bench_quick(tmp_path):
    from cli_helpers import one_line_error, run

    res = run("track", "--task", "push-v3", "--episodes", 1, "--max-steps", 3, "--image-size", 32, "--cameras",
              "corner,corner3", "--color-fit-steps", 2, "--visual-steps", 1, "--out", tmp_path / "t")
    assert "twin steps/s" in res.output
    r = json.loads((tmp_path / "t" / "results.json").read_text())
    ep = r["episodes"][0]
    assert ep["steps"] == 3 and len(ep["pos_error_mm"]) == 3 and r["pos_error_mm_mean"] < 50
    assert r["steps_per_s"] > 0 and r["cameras"] == ["corner", "corner3"] and r["image_size"] == 32
    assert (tmp_path / "t" / "rollouts" / "seed0.mp4").stat().st_size > 0 and (tmp_path / "t" / "errors.png").is_file()
    res = run("bench", "track", "--quick", "--work", tmp_path / "w", "--out", tmp_path / "track.json")
    b = json.loads((tmp_path / "track.json").read_text())
    assert len(b["rows"]) == 6 and {x["physics"] for x in b["rows"]} == {"right", "wrong"} and "code" in b
    for key in ("task", "physics", "forces", "pos_error_mm_mean", "pos_error_mm_p90", "rot_error_deg_mean",
                "steps_per_s", "cameras", "image_size", "device"):
        assert key in b["rows"][0], key
    run("track", "--max-steps", 10, "--image-size", 32, "--cameras", "corner,corner3", "--color-fit-steps", 1,
        "--visual-steps", 1, "--kp", 100000, "--kd", 0, "--init-offset", "0.02,0,0", "--out", tmp_path / "div")
    div = json.loads((tmp_path / "div" / "results.json").read_text())  # a twin thrown off is stopped and reported
    assert div["diverged_episodes"] == [0] and div["episodes"][0]["diverged"] is not None
    assert div["episodes"][0]["steps"] < 10
    res = run("track", "--task", "drawer-open-v3", "--max-steps", 2, "--image-size", 32, "--out", tmp_path / "d", code=2)
    one_line_error(res, "no dynamic object")
    assert not (tmp_path / "d").exists()
    res = run("track", "--kp", 0, "--max-steps", 2, "--out", tmp_path / "k", code=2)
    one_line_error(res, "kp")
    res = run("track", "--task", "push-v9", "--out", tmp_path / "u", code=2)
    one_line_error(res, "push-v9")
    with pytest.raises(ConfigError, match="camera"):
        TwinConfig(cameras=())
