"""The digital twin (issue 17): position-based dynamics (resting stack, rigidity, free fall), visual
forces that pull a displaced body toward the image, ``robodream track`` / ``bench track`` end to end,
and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from robodream.errors import ConfigError
from robodream.twin.pbd import HINGE, SLIDE, Joint, ParticleWorld, rotation_about, soft_limit_from_solref, twist_angle
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


def test_twist_angle_inverts_rotation_about():
    g = torch.Generator().manual_seed(0)
    axis = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=-1)
    angle = torch.linspace(-3.0, 3.0, 6)
    torch.testing.assert_close(twist_angle(rotation_about(axis, angle), axis), angle, atol=1e-5, rtol=0)
    swing = rotation_about(torch.nn.functional.normalize(torch.cross(axis, torch.randn(6, 3, generator=g), dim=-1),
                                                         dim=-1), torch.full((6,), 0.3))  # about a perpendicular axis
    torch.testing.assert_close(twist_angle(rotation_about(axis, angle) @ swing, axis), angle, atol=0.05, rtol=0)


def test_a_drawer_slides_on_its_joint_and_stops_at_its_range():
    """A box on a slide along y (range [-0.05, 0]), pushed by a kinematic pad moving 4 cm along -y and
    1 cm sideways: it moves with the pad along the axis only, without turning or falling (no table
    under it); then a steady 20 N along the axis stops it at the end of its range."""
    box = torch.cat([cube([dx, 0, 0.1]) for dx in (-2 * R, 2 * R)])
    joint = Joint(SLIDE, axis=(0.0, 1.0, 0.0), anchor=(0.0, 0.0, 0.1), range=(-0.05, 0.0), damping=2.0)
    pad0 = cube([0, 4 * R, 0.1])
    w = ParticleWorld(box, torch.zeros(16).long(), torch.tensor([0.4]), torch.tensor([1.0]), pad0, radius=R,
                      table_z=-10.0, joints=[joint])
    start = w.com.clone()
    for k in range(1, 41):
        w.step(0.0125, pad0 + torch.tensor([0.01 * k / 40, -0.04 * k / 40, 0.0]))
    d = w.com - start
    assert abs(float(d[0, 0])) < 1e-6 and abs(float(d[0, 2])) < 1e-6  # on the axis: no sideways drift, no fall
    assert torch.allclose(w.R, torch.eye(3).expand(1, 3, 3), atol=1e-6)
    assert float(w.joint_position()[0]) == pytest.approx(-0.04, abs=1e-3)  # moved with the pad
    away = pad0 + torch.tensor([0.0, 0.5, 0.0])
    for _ in range(80):
        w.step(0.0125, away, force=torch.tensor([[0.0, -20.0, 0.0]]))
    assert float(w.joint_position()[0]) == pytest.approx(-0.05, abs=1e-6)
    w.displace(torch.tensor([0.0, 0.0, 0.02]))  # a wrong state: 2 cm along the joint, into the room it has
    assert float(w.joint_position()[0]) == pytest.approx(-0.03, abs=1e-6)
    assert abs(float((w.com - start)[0, 2])) < 1e-6
    with pytest.raises(ValueError, match="one entry per body"):
        ParticleWorld(box, torch.zeros(16).long(), torch.tensor([0.4]), torch.tensor([1.0]), pad0, radius=R,
                      table_z=-10.0, joints=[joint, None])


def test_a_soft_limit_gives_way_to_the_robot_and_springs_back():
    """With MuJoCo's soft limit (solref (0.02, 1)), a kinematic pad pushes a box on a slide 2 cm past
    the end of its range (-5 cm), as Meta-World's robot pulls its drawer 4 cm past; a hard range stops
    it at -5 cm, as does a soft limit whose soft end is the other one. Let go, the soft limit pushes
    it back into its range."""
    box = torch.cat([cube([dx, 0, 0.1]) for dx in (-2 * R, 2 * R)])
    pad0 = cube([0, 4 * R, 0.1])  # pushing it along -y
    ends = {}
    k_b = soft_limit_from_solref((0.02, 1.0))
    for name, soft, which in (("soft", k_b, (True, True)), ("hard", None, (True, True)), ("hard end", k_b, (False, True))):
        joint = Joint(SLIDE, axis=(0.0, 1.0, 0.0), anchor=(0.0, 0.0, 0.1), range=(-0.05, 0.0), damping=2.0, soft_limit=soft,
                      soft_ends=which)
        w = ParticleWorld(box, torch.zeros(16).long(), torch.tensor([0.4]), torch.tensor([1.0]), pad0, radius=R,
                          table_z=-10.0, joints=[joint])
        for k in range(1, 61):
            w.step(0.0125, pad0 + torch.tensor([0.0, -0.07 * min(k, 40) / 40, 0.0]))
        ends[name] = float(w.joint_position()[0])
        if name == "soft":
            away = pad0 + torch.tensor([0.0, -0.5, 0.0])
            for _ in range(80):
                w.step(0.0125, away)
            assert -0.05 <= float(w.joint_position()[0]) <= 0.002
    assert ends["hard"] == pytest.approx(-0.05, abs=1e-6)
    assert ends["hard end"] == pytest.approx(-0.05, abs=1e-6)  # soft only at the other end
    assert ends["soft"] == pytest.approx(-0.07, abs=2e-3)  # follows the pad past the range


def test_soft_limit_from_solref():
    """MuJoCo's solref as a stiffness and damping: (timeconst, dampratio), or both <= 0 given directly."""
    assert soft_limit_from_solref((0.02, 1.0)) == pytest.approx((2631.58, 100.0), rel=1e-5)
    assert soft_limit_from_solref((-1000.0, -50.0), dmax=1.0) == pytest.approx((1000.0, 50.0))
    with pytest.raises(ValueError, match="time constant"):
        soft_limit_from_solref((0.0, 1.0))


def test_a_door_turns_about_its_hinge():
    """A plank hinged about z at x = 0, pushed at its far end along +y: it turns about the hinge
    (every particle keeps its distance to the axis and its height), within its range."""
    plank = torch.cat([cube([float(x), 0, 0.1]) for x in np.arange(0.01, 0.1, 2 * R)]).float()
    n = len(plank)
    joint = Joint(HINGE, axis=(0.0, 0.0, 1.0), anchor=(0.0, 0.0, 0.1), range=(0.0, 0.5))
    pad0 = cube([0.09, -4 * R, 0.1])
    w = ParticleWorld(plank, torch.zeros(n).long(), torch.tensor([1.0]), torch.tensor([1.0]), pad0, radius=R,
                      table_z=-10.0, joints=[joint])
    radial = lambda p: p[:, :2].norm(dim=-1)  # noqa: E731
    for k in range(1, 41):
        w.step(0.0125, pad0 + torch.tensor([0.0, 0.06 * k / 40, 0.0]))
    theta = float(w.joint_position()[0])
    assert 0.2 < theta <= 0.5 + 1e-6
    torch.testing.assert_close(radial(w.x), radial(plank), atol=1e-4, rtol=0)
    torch.testing.assert_close(w.x[:, 2], plank[:, 2], atol=1e-4, rtol=0)
    torch.testing.assert_close(w.R[0], rotation_about(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([theta]))[0],
                               atol=1e-5, rtol=0)
    near = ParticleWorld(plank, torch.zeros(n).long(), torch.tensor([1.0]), torch.tensor([1.0]),
                         cube([0.006, -R, 0.1]), radius=R, table_z=-10.0, joints=[Joint(HINGE, (0.0, 0.0, 1.0), (0.006, 0.0, 0.1))])
    near.step(0.0125, cube([0.006, -R, 0.1]))  # a pad sunk into the plank at its hinge: a bounded turn
    assert abs(float(near.joint_position()[0])) < 0.5 and not near.diverged(near.com0)
    x = w.x.clone()
    w.displace(torch.tensor([0.02, 0.0, 0.0]))  # turned so that its particles move 2 cm (rms; chords of them)
    assert float((w.x - x).norm(dim=-1).pow(2).mean().sqrt()) == pytest.approx(0.02, rel=0.02)
    torch.testing.assert_close(radial(w.x), radial(plank), atol=1e-4, rtol=0)


def test_articulated_bodies_of_a_meta_world_scene():
    """drawer-open-v3's drawer (a slide along y, range 16 cm) and door-open-v3's door (a hinge about z)
    become jointed dynamic bodies, from MuJoCo's joints at the reset state; the gripper's own slide
    joints do not (they are the robot's)."""
    import mujoco

    from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
    from robodream.twin.scene import body_joint, dynamic_body_ids, subtree

    for task, name, kind in (("drawer-open-v3", "drawer_link", SLIDE), ("door-open-v3", "door_link", HINGE)):
        env = MetaWorldEnv(EnvConfig(task=task, cameras=("corner",), image_size=16))
        try:
            env.reset(0)
            m, d = env.mujoco_model, env.mujoco_data
            robot = set(subtree(m, mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, "base")))
            ids = dynamic_body_ids(m, robot)
            assert [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, b) for b in ids] == [name]
            j = body_joint(m, d, ids[0])
            assert j.kind == kind and j.damping == 2.0
            np.testing.assert_allclose(j.anchor, d.xanchor[m.body_jntadr[ids[0]]])
            assert j.range[1] - j.range[0] == pytest.approx(0.16 if kind == SLIDE else 2.0)
            assert j.soft_limit == pytest.approx((1 / (0.95 * 0.02 ** 2), 100.0))  # MuJoCo's default solref
            assert j.soft_ends == (True, False)  # closed at the start: a hard stop there
        finally:
            env.close()


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


def test_a_hinged_body_is_turned_back_by_the_forces_moment():
    """A 6 cm plank hinged about z through its own centre, turned 0.3 rad: the force at its centre of mass
    has no moment about the axis, so only the Gaussians' forces' moment (``visual_torque``) turns it back."""
    from robodream.twin.geometry import BOX, surface_points

    scene, poses = synthetic_scene()
    pts = surface_points(BOX, np.array([0.03, 0.006, 0.006]), 0.004)
    parts = np.stack(np.meshgrid(np.arange(-0.025, 0.026, 2 * R), [0.0], [0.0], indexing="ij"), -1).reshape(-1, 3)
    scene.dynamic = [TwinBody("plank", 1, False, parts.astype(np.float32), pts,
                              np.tile([[0.9, 0.1, 0.1]], (len(pts), 1)).astype(np.float32), 0.3, 1.0,
                              joint=Joint(HINGE, (0.0, 0.0, 1.0), (0.0, 0.0, 0.0)))]
    cfg = TwinConfig(cameras=("a", "b"), image_size=32, visual_steps=5, color_fit_steps=0, visual_torque=True)
    observed = (DigitalTwin(scene, cfg, poses, []).render().detach().clamp(0, 1) * 255).byte().numpy()
    twin = DigitalTwin(scene, cfg, poses, [])
    ph = twin.physics
    ph.x = ph._shape_match(ph._move_joints(ph.x, torch.tensor([0.3])))
    assert float(ph.joint_position()[0]) == pytest.approx(0.3, abs=1e-5)
    for _ in range(30):
        twin.step([], observed)
    assert abs(float(ph.joint_position()[0])) < 0.15


def test_overlaps_are_exact_where_cdist_loses_precision():
    """Contacts' distances and normals come from exact differences: 40 pairs 2 micrometres apart at
    a metre from the origin (torch.cdist's matrix-product form puts some at distance 0)."""
    from robodream.twin.pbd import _overlaps

    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.4, 0.8, 0.15]) + 0.01 * torch.rand(40, 3, generator=g)
    b = a + torch.tensor([2e-6, 0.0, 0.0])
    i, j, n, pen = _overlaps(a, b, 0.012, torch.eye(40, dtype=torch.bool))
    assert len(i) == 40 and torch.equal(i, j)
    torch.testing.assert_close(n.norm(dim=-1), torch.ones(40), atol=1e-3, rtol=0)
    torch.testing.assert_close(pen, 0.012 - (a - b).norm(dim=-1))
    assert len(_overlaps(a, a + 0.02, 0.012)[0]) == 0


def test_a_door_is_turned_back_by_the_visual_force_about_its_hinge():
    """A 6 cm plank hinged about z at its end (a door), turned 0.3 rad: the visual force at its centre
    of mass has a moment about the hinge, which turns it back without ``visual_torque``; physics
    alone keeps it turned."""
    from robodream.twin.geometry import BOX, surface_points

    scene, poses = synthetic_scene()
    pts = surface_points(BOX, np.array([0.03, 0.006, 0.006]), 0.004)
    parts = np.stack(np.meshgrid(np.arange(-0.025, 0.026, 2 * R), [0.0], [0.0], indexing="ij"), -1).reshape(-1, 3)
    scene.dynamic = [TwinBody("door", 1, False, parts.astype(np.float32), pts,
                              np.tile([[0.9, 0.1, 0.1]], (len(pts), 1)).astype(np.float32), 0.3, 1.0,
                              joint=Joint(HINGE, (0.0, 0.0, 1.0), (-0.03, 0.0, 0.0)))]
    angles = {}
    for forces in (True, False):
        cfg = TwinConfig(cameras=("a", "b"), image_size=32, visual_steps=5, color_fit_steps=0, forces=forces)
        observed = (DigitalTwin(scene, cfg, poses, []).render().detach().clamp(0, 1) * 255).byte().numpy()
        twin = DigitalTwin(scene, cfg, poses, [])
        ph = twin.physics
        ph.x = ph._shape_match(ph._move_joints(ph.x, torch.tensor([0.3])))
        for _ in range(30):
            twin.step([], observed)
        angles[forces] = float(ph.joint_position()[0])
    assert abs(angles[True]) < 0.15 and angles[False] == pytest.approx(0.3, abs=1e-3)


def test_kd_damps_a_touched_jointed_body_but_not_a_touched_free_one():
    """``kd`` damps a body's velocity while the forces act; a free body the robot touches moves as
    the robot makes it (undamped), a jointed one is damped even then (a door turning at 2 rad/s
    turns less in a step with kd; the same free body moving at 0.1 m/s moves as far with or without)."""
    from robodream.twin.geometry import BOX, surface_points

    def moved(jointed: bool, kd: float) -> float:
        scene, poses = synthetic_scene()
        if jointed:
            pts = surface_points(BOX, np.array([0.03, 0.006, 0.006]), 0.004)
            parts = np.stack(np.meshgrid(np.arange(-0.025, 0.026, 2 * R), [0.0], [0.0], indexing="ij"), -1).reshape(-1, 3)
            scene.dynamic = [TwinBody("door", 1, False, parts.astype(np.float32), pts,
                                      np.tile([[0.9, 0.1, 0.1]], (len(pts), 1)).astype(np.float32), 0.3, 1.0,
                                      joint=Joint(HINGE, (0.0, 0.0, 1.0), (-0.03, 0.0, 0.0)))]
        twin = DigitalTwin(scene, TwinConfig(cameras=("a", "b"), image_size=32, color_fit_steps=0, kd=kd), poses, [])
        ph = twin.physics
        ph.g = torch.zeros(3)  # no gravity or table: only the velocity and the damping
        if jointed:
            ph.v = torch.cross(torch.tensor([0.0, 0.0, 2.0]).expand_as(ph.x), ph.x - ph.joint_anchor[0], dim=-1)
        else:
            ph.v = torch.tensor([0.1, 0.0, 0.0]).expand_as(ph.x).clone()
        start = float(ph.joint_position()[0]) if jointed else float(ph.com[0, 0])
        ph.touching = torch.ones(ph.B, dtype=torch.bool)  # the robot touched every body in the last step
        twin.step([], None)
        return (float(ph.joint_position()[0]) if jointed else float(ph.com[0, 0])) - start

    assert moved(True, 20.0) < 0.8 * moved(True, 0.0) and moved(True, 0.0) > 0.01
    assert moved(False, 20.0) == pytest.approx(moved(False, 0.0), rel=1e-4) and moved(False, 0.0) > 5e-4


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
    # plate-slide's puck moves on two slide joints: neither free nor one joint, so nothing to track
    res = run("track", "--task", "plate-slide-v3", "--max-steps", 2, "--image-size", 32, "--out", tmp_path / "d", code=2)
    one_line_error(res, "no dynamic object")
    assert not (tmp_path / "d").exists()
    res = run("track", "--kp", 0, "--max-steps", 2, "--out", tmp_path / "k", code=2)
    one_line_error(res, "kp")
    res = run("track", "--task", "push-v9", "--out", tmp_path / "u", code=2)
    one_line_error(res, "push-v9")
    with pytest.raises(ConfigError, match="camera"):
        TwinConfig(cameras=())
