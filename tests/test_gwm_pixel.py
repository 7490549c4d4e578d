"""Per-frame pixel-aligned Gaussians (GWM): back-projection re-renders the image, farthest-point
sampling against a plain reference, batched rasterisation equals per-scene calls, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import psnr
from robodream.gaussians.projection import quat_to_rotmat
from robodream.gaussians.rasterizer import rasterize, rasterize_batched
from robodream.gwm.pixel import (
    GAUSSIAN_DIM,
    PixelGaussianConfig,
    farthest_point_sample,
    pixel_gaussians,
    render,
    rotmat_to_quat,
    unpack,
)

pytestmark = pytest.mark.usefixtures("one_thread")

W = H = 32


def camera(yaw_deg: float = 0.0, dist: float = 1.0):
    """A camera ``dist`` m from the origin looking at it, turned ``yaw_deg`` about the world y axis."""
    a = math.radians(yaw_deg)
    R = torch.tensor([[math.cos(a), 0.0, -math.sin(a)], [0.0, 1.0, 0.0], [math.sin(a), 0.0, math.cos(a)]])
    T = torch.eye(4)
    T[:3, :3] = R
    T[:3, 3] = torch.tensor([0.0, 0.0, dist])
    K = torch.tensor([[40.0, 0.0, W / 2], [0.0, 40.0, H / 2], [0.0, 0.0, 1.0]])
    return K, T


def synthetic_frame():
    """RGB (1, 1, H, W, 3) of a smooth colour pattern on a plane 1 m in front of the camera, its depth."""
    v, u = torch.meshgrid(torch.linspace(0, 1, H), torch.linspace(0, 1, W), indexing="ij")
    rgb = torch.stack([u, v, 0.5 + 0.4 * torch.sin(6 * u) * torch.cos(4 * v)], -1)
    depth = torch.ones(H, W)
    return rgb[None, None], depth[None, None]


def test_backprojected_plane_rerenders_its_image():
    rgb, depth = synthetic_frame()
    K, T = camera()
    cfg = PixelGaussianConfig(n=H * W, spacing_scale=0.01, footprint_scale=0.5)
    g, bg = pixel_gaussians(rgb, depth, K[None], T[None], cfg)
    assert g.shape == (1, H * W, GAUSSIAN_DIM) and bg.shape == (1, 3)
    parts = unpack(g)
    assert torch.allclose(parts["means"][0, :, 2], torch.zeros(H * W), atol=1e-5)  # on the plane z = 0
    assert torch.allclose(parts["quats"].norm(dim=-1), torch.ones(1, H * W), atol=1e-5)
    out = render(g, T[None], K[None], W, H, bg)
    assert out.shape == (1, 1, H, W, 3)
    assert psnr(out[0], rgb[0]) > 30.0
    # A second camera turned by 20 degrees about the plane's centre sees the same colour there.
    K2, T2 = camera(20.0)
    side = render(g, T2[None], K2[None], W, H, torch.zeros(1, 3))
    centre = rgb[0, 0, H // 2 - 1:H // 2 + 1, W // 2 - 1:W // 2 + 1].mean((0, 1))
    assert torch.isfinite(side).all()
    assert torch.allclose(side[0, 0, H // 2 - 1:H // 2 + 1, W // 2 - 1:W // 2 + 1].mean((0, 1)), centre, atol=0.05)


def test_pixels_beyond_max_depth_are_dropped_and_give_the_background():
    rgb, depth = synthetic_frame()
    depth = depth.clone()
    depth[..., :, : W // 2] = float("inf")  # left half sees nothing (as datasets store it)
    depth[..., 0, : W // 2] = 100.0  # or sees beyond max_depth
    rgb = rgb.clone()
    rgb[..., :, : W // 2, :] = torch.tensor([0.2, 0.3, 0.4])
    K, T = camera()
    g, bg = pixel_gaussians(rgb, depth, K[None], T[None], PixelGaussianConfig(n=64))
    assert torch.allclose(bg, torch.tensor([[0.2, 0.3, 0.4]]), atol=1e-6)
    means = unpack(g)["means"][0]
    assert torch.isfinite(g).all()
    assert (means[:, 0] > -1e-6).all()  # only the right half (x >= 0) became Gaussians


def test_fewer_valid_pixels_than_n_repeat_with_zero_opacity():
    rgb, depth = synthetic_frame()
    depth = torch.full_like(depth, 100.0)
    depth[..., :2, :5] = 1.0  # 10 valid pixels
    K, T = camera()
    g, _ = pixel_gaussians(rgb, depth, K[None], T[None], PixelGaussianConfig(n=16))
    op = unpack(g)["opacities"][0]
    assert int((op > 0).sum()) == 10


def test_frames_without_depth_and_bad_shapes_are_clear_errors():
    rgb, depth = synthetic_frame()
    K, T = camera()
    with pytest.raises(ConfigError, match="no pixel with a depth"):
        pixel_gaussians(rgb, torch.full_like(depth, 1e3), K[None], T[None])
    with pytest.raises(ConfigError, match="depth must be"):
        pixel_gaussians(rgb, depth[..., :-1], K[None], T[None])
    with pytest.raises(ConfigError, match="viewmats must be"):
        pixel_gaussians(rgb, depth, K[None], T[None].repeat(2, 1, 1))
    with pytest.raises(ConfigError, match="14 numbers"):
        unpack(torch.zeros(3, 13))


def test_camera_with_every_gaussian_behind_it_renders_the_background():
    rgb, depth = synthetic_frame()
    K, T = camera()
    g, bg = pixel_gaussians(rgb, depth, K[None], T[None], PixelGaussianConfig(n=64))
    back = T.clone()
    back[2, 3] = -1.0  # the plane 1 m behind the camera
    out = render(g, back[None], K[None], W, H, bg)
    assert torch.isfinite(out).all()
    assert torch.allclose(out, bg[0].expand_as(out))


def _fps_reference(points: torch.Tensor, n: int, start: int) -> list[int]:
    chosen = [start]
    d = ((points - points[start]) ** 2).sum(-1)
    for _ in range(n - 1):
        nxt = int(d.argmax())
        chosen.append(nxt)
        d = torch.minimum(d, ((points - points[nxt]) ** 2).sum(-1))
    return chosen


def test_farthest_point_sampling_matches_the_plain_algorithm():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(5, 300, 3, generator=g, dtype=torch.float64)
    idx, radius = farthest_point_sample(pts, 40, chunk=2)
    for b in range(5):
        assert idx[b].tolist() == _fps_reference(pts[b], 40, int(idx[b, 0]))
        assert len(set(idx[b].tolist())) == 40
    assert (radius[:, 1:-1] >= radius[:, 2:]).all()  # coverage radius never grows
    # The start is the point nearest the centroid.
    assert idx[0, 0] == ((pts[0] - pts[0].mean(0)) ** 2).sum(-1).argmin()
    # Every point lies within the final radius of a sample.
    d = torch.cdist(pts[0], pts[0, idx[0]]).min(1).values
    assert d.max() <= radius[0, -1] + 1e-12


def test_farthest_point_sampling_never_picks_invalid_points():
    pts = torch.rand(2, 100, 3)
    valid = torch.rand(2, 100) > 0.5
    idx, _ = farthest_point_sample(pts, 20, valid)
    assert valid.gather(1, idx).all()
    with pytest.raises(ConfigError, match="no valid point"):
        farthest_point_sample(pts, 5, torch.zeros(2, 100, dtype=torch.bool))


def test_rotmat_to_quat_inverts_quat_to_rotmat():
    q = torch.randn(200, 4, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    q = torch.where(q[:, :1] < 0, -q, q)
    assert torch.allclose(rotmat_to_quat(quat_to_rotmat(q)), q, atol=1e-9)


@pytest.mark.parametrize("backend", ["tiled", "dense"])
def test_batched_rasterisation_equals_per_scene_calls(backend):
    g = torch.Generator().manual_seed(1)
    B, N, C = 3, 50, 2
    means = (torch.randn(B, N, 3, generator=g) * 0.3).requires_grad_()
    quats = torch.randn(B, N, 4, generator=g)
    scales = torch.rand(B, N, 3, generator=g) * 0.05 + 0.01
    opac = torch.rand(B, N, generator=g)
    colors = torch.rand(B, N, 3, generator=g)
    cams = [camera(a, 3.0) for a in (0.0, 15.0)]
    Ks, Ts = torch.stack([c[0] for c in cams]), torch.stack([c[1] for c in cams])
    bg = torch.rand(B, C, 3, generator=g)
    out = rasterize_batched(means, quats, scales, opac, colors, Ts, Ks, W, H, background=bg, backend=backend)
    (out.rgb * torch.arange(out.rgb.numel()).reshape(out.rgb.shape).sin()).sum().backward()
    grad_batched = means.grad.clone()
    means.grad = None
    for b in range(B):
        one = rasterize(means[b], quats[b], scales[b], opac[b], colors[b], Ts, Ks, W, H, background=bg[b],
                        backend=backend)
        assert torch.allclose(out.rgb[b], one.rgb, atol=1e-6)
        assert torch.allclose(out.alpha[b], one.alpha, atol=1e-6)
    loss = sum((rasterize(means[b], quats[b], scales[b], opac[b], colors[b], Ts, Ks, W, H, background=bg[b],
                          backend=backend).rgb * torch.arange(out.rgb.numel()).reshape(out.rgb.shape)[b].sin()).sum()
               for b in range(B))
    loss.backward()
    assert torch.allclose(grad_batched, means.grad, atol=1e-5)


# ----------------------------------------------------------------------------- dataset + CLI
@pytest.fixture(scope="module")
def depth_data(tmp_path_factory):
    from cli_helpers import run

    w = tmp_path_factory.mktemp("gwm")
    run("collect", "--task", "push-v3", "--episodes", 1, "--out", w / "data", "--image-size", 32, "--max-steps", 12,
        "--keep-failures", "--cameras", "corner,corner3,corner4,behindGripper", "--with-depth")
    run("collect", "--task", "push-v3", "--episodes", 1, "--out", w / "nodepth", "--image-size", 32,
        "--max-steps", 12, "--keep-failures")
    return w


def test_gaussians_cli_writes_a_companion_directory_and_scores_a_heldout_camera(depth_data):
    import json

    from cli_helpers import run

    from robodream.gwm.frames import load_gaussian_frames

    out = depth_data / "g"
    res = run("gaussians", "--data", depth_data / "data", "--out", out, "--heldout", "corner4", "--n", 256)
    assert "PSNR dB" in res.output and "corner4" in res.output
    fr = load_gaussian_frames(out)
    assert fr.index["cameras"] == ["corner", "corner3"]  # static cameras without the held-out one
    assert fr.gaussians.shape == (12, 256, GAUSSIAN_DIM) and fr.gaussians.dtype == np.float16
    g, bg = fr.episode(0)
    assert torch.isfinite(g).all() and g.shape == (12, 256, 14) and bg.shape == (12, 3)
    m = json.loads((out / "metrics.json").read_text())["heldout"]
    assert m["camera"] == "corner4" and m["frames"] == 12 and 10.0 < m["psnr_db"] < 60.0
    assert min(m["per_input_camera_psnr_db"].values()) > m["psnr_db"] - 3.0


def test_gaussians_cli_bad_input_is_one_line_and_writes_nothing(depth_data, tmp_path):
    from cli_helpers import one_line_error, run

    from robodream.gwm.frames import load_gaussian_frames

    res = run("gaussians", "--data", depth_data / "nodepth", "--out", tmp_path / "x", code=2)
    one_line_error(res, "observation.depth.corner", "--with-depth")
    res = run("gaussians", "--data", tmp_path / "missing", "--out", tmp_path / "x", code=2)
    one_line_error(res, "not found")
    res = run("gaussians", "--data", depth_data / "data", "--out", tmp_path / "x", "--cameras", "corner",
              "--heldout", "corner", code=2)
    one_line_error(res, "held-out")
    assert not (tmp_path / "x").exists()
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "gaussians.npy", np.zeros((2, 4, 13), np.float16))
    (tmp_path / "bad" / "index.json").write_text('{"format": "robodream.gwm.gaussian_frames/1", "frames": 2}')
    np.save(tmp_path / "bad" / "background.npy", np.zeros((2, 3), np.float16))
    np.savez(tmp_path / "bad" / "cameras.npz", Ks=np.zeros((1, 1, 3, 3)), viewmats=np.zeros((1, 1, 4, 4)))
    with pytest.raises(DatasetError, match="14 numbers"):
        load_gaussian_frames(tmp_path / "bad")
