"""Gaussian rasteriser: tiled path == dense reference (values and gradients), gradient check,
projection geometry, SH, and defined behaviour on degenerate input."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from robodream.errors import ConfigError
from robodream.gaussians import rasterizer, tiled
from robodream.gaussians.rasterizer import rasterize
from robodream.gaussians.sh import eval_sh, rgb_to_sh

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def random_scene(n: int, seed: int, *, sh_degree: int | None = None, dtype=F64, opaque: bool = False):
    """n Gaussians in a 1 m ball 3 m in front of the cameras of :func:`cameras`."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g, dtype=dtype) * 0.4
    quats = torch.randn(n, 4, generator=g, dtype=dtype)
    scales = torch.rand(n, 3, generator=g, dtype=dtype) * 0.08 + (0.04 if opaque else 0.01)
    opac = torch.rand(n, generator=g, dtype=dtype) * 0.3 + 0.7 if opaque else torch.rand(n, generator=g, dtype=dtype)
    if sh_degree is None:
        colors = torch.rand(n, 3, generator=g, dtype=dtype)
    else:
        colors = torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g, dtype=dtype) * 0.3
    return [t.requires_grad_() for t in (means, quats, scales, opac, colors)]


def cameras(n_cams: int, width: int, height: int, dtype=F64):
    """Cameras 3 m from the origin looking at it, slightly shifted sideways."""
    vm = torch.eye(4, dtype=dtype).repeat(n_cams, 1, 1)
    vm[:, 2, 3] = 3.0
    vm[:, 0, 3] = torch.linspace(-0.3, 0.3, n_cams, dtype=dtype)
    f = 1.1 * width
    K = torch.tensor([[f, 0, width / 2], [0, f * 1.05, height / 2], [0, 0, 1]], dtype=dtype).repeat(n_cams, 1, 1)
    return vm, K


def render_and_grad(params, vm, K, W, H, backend, bg=None, **kw):
    out = rasterize(*params, vm, K, W, H, background=bg, backend=backend, **kw)
    g = torch.Generator().manual_seed(123)
    w = [torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype) for t in out[:3]]  # same weights in any dtype
    loss = (out.rgb * w[0]).sum() + 0.1 * (out.depth * w[1]).sum() + (out.alpha * w[2]).sum()
    inputs = list(params) + ([bg] if bg is not None else [])
    return out, torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("n,W,H,C,sh,opaque,chunk", [
    (60, 40, 30, 2, None, False, 32),  # image size not a multiple of 16, two cameras
    (400, 64, 64, 1, 1, False, 8),  # many chunks
    (300, 33, 47, 2, 3, False, 32),  # SH degree 3
    (1500, 48, 48, 1, 2, True, 16),  # opaque: transmittance saturates, early termination
])
def test_tiled_equals_dense(n, W, H, C, sh, opaque, chunk, monkeypatch):
    params = random_scene(n, seed=n, sh_degree=sh, opaque=opaque)
    vm, K = cameras(C, W, H)
    bg = torch.tensor([0.1, 0.5, 0.9], dtype=F64, requires_grad=True)
    ref, g_ref = render_and_grad(params, vm, K, W, H, "dense", bg)
    if opaque:
        assert ref.alpha.max() > 0.999  # saturated pixels exist
    for cache_elems in (1 << 25, 0):  # alphas kept for the backward pass, and recomputed there
        monkeypatch.setattr(rasterizer, "composite_tiled", functools.partial(tiled.composite_tiled,
                                                                             cache_elems=cache_elems))
        out, g_out = render_and_grad(params, vm, K, W, H, "tiled", bg, chunk=chunk)
        for a, b in zip(ref[:3], out[:3]):
            torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-10)
        for name, a, b in zip(["means", "quats", "scales", "opacities", "colors", "background"], g_ref, g_out):
            assert a.abs().max() > 0, name
            torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("tile_size", [8, 32])
def test_images_do_not_depend_on_tile_size(tile_size):
    params = random_scene(500, seed=2, sh_degree=1, opaque=True)
    vm, K = cameras(1, 50, 40)
    ref, g_ref = render_and_grad(params, vm, K, 50, 40, "dense")
    out, g_out = render_and_grad(params, vm, K, 50, 40, "tiled", tile_size=tile_size)
    for a, b in zip(list(ref[:3]) + list(g_ref), list(out[:3]) + list(g_out)):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9)


def test_tiled_float32_close_to_dense_float64():
    params = random_scene(800, seed=7, sh_degree=1)
    vm, K = cameras(1, 64, 64)
    ref, g_ref = render_and_grad(params, vm, K, 64, 64, "dense")
    p32 = [p.detach().float().requires_grad_() for p in params]
    out, g_out = render_and_grad(p32, vm.float(), K.float(), 64, 64, "tiled")
    assert (out.rgb.double() - ref.rgb).abs().mean() < 1e-5
    assert (out.rgb.double() - ref.rgb).abs().max() < 1e-2  # a threshold may flip at one pixel
    for a, b in zip(g_ref, g_out):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.double().flatten(), dim=0)
        assert cos > 0.9999


def test_gradcheck_tiny_scene():
    params = random_scene(5, seed=3, sh_degree=1)
    vm, K = cameras(1, 12, 10)
    K[:, :2] *= 0.15  # Gaussians a few pixels wide on a 12x10 image
    bg = torch.tensor([0.2, 0.3, 0.4], dtype=F64, requires_grad=True)

    def f(*p):
        return tuple(rasterize(*p[:5], vm, K, 12, 10, background=p[5], backend="tiled")[:3])

    assert torch.autograd.gradcheck(f, (*params, bg), eps=1e-6, atol=1e-5)


def test_single_gaussian_geometry():
    """An isotropic Gaussian projects to K [x/z, y/z] with the EWA footprint and depth z."""
    W = H = 32
    mean = torch.tensor([[0.1, -0.05, 2.0]], dtype=F64)
    s = 0.02
    vm = torch.eye(4, dtype=F64)[None]
    f = 100.0
    K = torch.tensor([[[f, 0, W / 2], [0, f, H / 2], [0, 0, 1]]], dtype=F64)
    out = rasterize(mean, torch.tensor([[1.0, 0, 0, 0]], dtype=F64), torch.full((1, 3), s, dtype=F64),
                    torch.tensor([0.9], dtype=F64), torch.tensor([[1.0, 0.5, 0.25]], dtype=F64), vm, K, W, H)
    u, v = f * 0.1 / 2 + W / 2, f * -0.05 / 2 + H / 2  # (21, 13.5)
    torch.testing.assert_close(out.info["means2d"][0, 0], torch.tensor([u, v], dtype=F64))
    var = (f * s / 2.0) ** 2 + 0.3  # px^2, EWA + low-pass (off-axis terms are second order here)
    # pixel centre (20.5, 13.5) is 0.5 px left of the mean
    alpha_expected = 0.9 * math.exp(-0.5 * 0.25 / var)
    assert abs(out.alpha[0, 13, 20].item() - alpha_expected) < 2e-3
    assert abs(out.depth[0, 13, 20].item() - 2.0) < 1e-12
    torch.testing.assert_close(out.rgb[0, 13, 20], alpha_expected * torch.tensor([1.0, 0.5, 0.25], dtype=F64),
                               atol=2e-3, rtol=0)
    # truncated beyond the 3-sigma ellipse: nothing at 4 sigma
    sd = math.sqrt(var)
    assert out.alpha[0, 13, int(u + 4 * sd)].item() == 0.0


def test_sh_degree0_equals_rgb_and_view_dependence():
    params = random_scene(200, seed=11)
    vm, K = cameras(2, 32, 32)
    rgb = rasterize(*params, vm, K, 32, 32).rgb
    sh = rgb_to_sh(params[4].detach())[:, None, :]  # (N, 1, 3)
    rgb_sh = rasterize(*params[:4], sh, vm, K, 32, 32).rgb
    torch.testing.assert_close(rgb_sh, rgb)
    # degree-1 coefficients change colour with the viewing direction
    dirs = torch.tensor([[[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]]], dtype=F64)  # (C=2, N=1, 3)
    coeffs = torch.zeros(1, 4, 3, dtype=F64)
    coeffs[0, 3] = 2.0  # the -x band: 0.5 - 2 C1 x < 0 at x = 1
    c = eval_sh(coeffs, dirs)
    assert torch.allclose(c[0], torch.full((1, 3), 0.5, dtype=F64)) and (c[1] == 0).all()  # clamped at 0


def test_degenerate_inputs_defined_and_finite():
    """NaN/inf Gaussians vanish (zero gradient), zero scale and zero quaternion render,
    points behind or at the camera are culled; no NaN anywhere."""
    params = random_scene(50, seed=5)
    good = [p.detach().clone() for p in params]
    vm, K = cameras(1, 32, 32)
    bad = [torch.cat([g, g[:6]]) for g in good]
    bad[0][50] = float("nan")  # NaN mean
    bad[2][51] = float("inf")  # inf scale
    bad[4][52] = float("nan")  # NaN colour
    bad[3][53] = float("nan")  # NaN opacity
    bad[0][54] = torch.tensor([0.0, 0.0, -5.0], dtype=F64)  # behind the camera (camera at z = -3)
    bad[0][55] = torch.tensor([0.0, 0.0, -3.0], dtype=F64)  # exactly at the camera centre
    bad = [b.requires_grad_() for b in bad]
    for backend in ("tiled", "dense"):
        ref = rasterize(*good, vm, K, 32, 32, backend=backend)
        out = rasterize(*bad, vm, K, 32, 32, backend=backend)
        torch.testing.assert_close(out.rgb, ref.rgb)
        (out.rgb.sum() + out.depth.sum() + out.alpha.sum()).backward()
        for b in bad:
            assert torch.isfinite(b.grad).all()
            assert (b.grad[50:] == 0).all()
            b.grad = None
    # zero scales, zero and unnormalised quaternions: finite, and a zero quaternion is the identity
    p = [g.clone() for g in good]
    p[2][:10] = 0.0
    p[1][10:20] = 0.0
    p[1][20:30] *= 7.5
    p = [t.requires_grad_() for t in p]
    out = rasterize(*p, vm, K, 32, 32)
    out.rgb.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in p) and torch.isfinite(out.rgb).all()
    q_id = good[1].clone()
    q_id[10:20] = torch.tensor([1.0, 0, 0, 0], dtype=F64)
    p2 = [good[0], q_id, p[2].detach(), good[3], good[4]]
    p2[1][20:30] = good[1][20:30]
    torch.testing.assert_close(rasterize(*p2, vm, K, 32, 32).rgb, out.rgb)


def _extreme_scene(dtype):
    """Random Gaussians plus extreme but finite ones (see the test below)."""
    p = [t.detach().clone() for t in random_scene(40, seed=9, dtype=dtype)]
    p[2][0], p[3][0] = 1e20, 0.9  # huge scale (clamped to MAX_SCALE = 1e6 m), nearly opaque
    p[2][1] = torch.tensor([1e5, 1e-4, 0.0])  # 100 km needle: a rank-1 covariance
    p[2][2, 0] = -0.05  # negative scale: same as +0.05
    p[0][3] = torch.tensor([1e19, 1e19, 0.0])  # in front, but ~1e20 px off-image
    p[0][4] = torch.tensor([0.5, -0.2, -3.0 + 0.011])  # just past the near plane, far outside the field of view
    p[3][5], p[3][6] = 5.0, -1.0  # opacities outside [0, 1]: clamped
    p[1][7] = 1e-30  # quaternion of length 1e-30
    return [t.requires_grad_() for t in p]


def test_extreme_values_finite_and_tiled_equals_dense():
    """Huge (finite) scales, a needle-shaped Gaussian, centres that project ~1e20 px away, a centre
    just past the near plane, opacities outside [0, 1]: finite images and gradients in float32, and
    the tiled path still equals the dense reference (float64)."""
    for dtype in (torch.float32, F64):
        vm, K = cameras(2, 24, 20, dtype)
        for backend in ("tiled", "dense"):
            p = _extreme_scene(dtype)
            out = rasterize(*p, vm, K, 24, 20, backend=backend)
            assert all(torch.isfinite(t).all() for t in out[:3]), (dtype, backend)
            (out.rgb.sum() + out.depth.sum() + out.alpha.sum()).backward()
            assert all(torch.isfinite(t.grad).all() for t in p), (dtype, backend)
            assert (p[0].grad[3] == 0).all() and (p[0].grad[4] == 0).all()  # culled: exactly zero
            assert out.alpha.min() > 0.89  # the huge Gaussian covers the whole image
    p = _extreme_scene(F64)
    vm, K = cameras(2, 24, 20)
    ref, g_ref = render_and_grad(p, vm, K, 24, 20, "dense")
    out, g_out = render_and_grad(p, vm, K, 24, 20, "tiled")
    for a, b in zip(list(ref[:3]) + list(g_ref), list(out[:3]) + list(g_out)):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-9)


def test_sh_degree_argument_uses_the_lower_bands_only():
    params = random_scene(100, seed=4, sh_degree=3)
    vm, K = cameras(1, 24, 24)
    sh = params[4].detach()
    for d in range(4):
        low = sh[:, : (d + 1) ** 2]
        torch.testing.assert_close(rasterize(*params[:4], sh, vm, K, 24, 24, sh_degree=d).rgb,
                                   rasterize(*params[:4], low, vm, K, 24, 24).rgb)
    with pytest.raises(ConfigError, match="SH degree"):
        rasterize(*params[:4], sh[:, :4], vm, K, 24, 24, sh_degree=2)


@pytest.mark.parametrize("backend", ["tiled", "dense"])
def test_empty_scene_is_background(backend):
    vm, K = cameras(2, 20, 18)
    z = torch.zeros(0, 3, dtype=F64, requires_grad=True)
    bg = torch.tensor([[0.2, 0.4, 0.6], [1.0, 0.0, 0.5]], dtype=F64, requires_grad=True)
    out = rasterize(z, torch.zeros(0, 4, dtype=F64), torch.zeros(0, 3, dtype=F64), torch.zeros(0, dtype=F64),
                    torch.zeros(0, 3, dtype=F64), vm, K, 20, 18, background=bg, backend=backend)
    assert out.rgb.shape == (2, 18, 20, 3) and out.depth.shape == (2, 18, 20) and out.alpha.shape == (2, 18, 20)
    torch.testing.assert_close(out.rgb, bg[:, None, None, :].expand(2, 18, 20, 3))
    assert (out.alpha == 0).all() and (out.depth == 0).all()
    out.rgb.sum().backward()
    torch.testing.assert_close(bg.grad, torch.full((2, 3), 18.0 * 20.0, dtype=F64))


def test_bad_arguments_raise_config_error():
    params = random_scene(4, seed=0)
    vm, K = cameras(1, 16, 16)
    with pytest.raises(ConfigError, match="quats must be"):
        rasterize(params[0], params[1][:2], *params[2:], vm, K, 16, 16)
    with pytest.raises(ConfigError, match="colors must be"):
        rasterize(*params[:4], torch.zeros(4, 2), vm, K, 16, 16)
    with pytest.raises(ConfigError, match="K in"):
        rasterize(*params[:4], torch.zeros(4, 5, 3, dtype=F64), vm, K, 16, 16)
    with pytest.raises(ConfigError, match="unknown rasteriser backend"):
        rasterize(*params, vm, K, 16, 16, backend="opengl")
    with pytest.raises(ConfigError, match="CUDA"):
        rasterize(*params, vm, K, 16, 16, backend="gsplat")
    with pytest.raises(ConfigError, match="finite"):
        rasterize(*params, vm * float("nan"), K, 16, 16)
    with pytest.raises(ConfigError, match="share dtype and device"):
        rasterize(params[0], params[1].float(), *params[2:], vm, K, 16, 16)
    with pytest.raises(ConfigError, match="tile_size >= 1"):
        rasterize(*params, vm, K, 16, 16, tile_size=0)
    with pytest.raises(ConfigError, match="near_plane"):
        rasterize(*params, vm, K, 16, 16, near_plane=2.0, far_plane=1.0)
    with pytest.raises(ConfigError, match="image size"):
        rasterize(*params, vm, K, 0, 16)
    # cameras in another dtype are converted to the Gaussians' dtype
    torch.testing.assert_close(rasterize(*params, vm.float(), K.float(), 16, 16).rgb,
                               rasterize(*params, vm, K, 16, 16).rgb)


def test_broken_gsplat_is_an_error_not_a_silent_fallback(tmp_path, monkeypatch):
    """Only a missing gsplat means "unavailable"; an installed one that fails to import (another
    CUDA, a bad build) must not silently send CUDA renders down the slow path."""
    import sys

    from robodream.gaussians.rasterizer import gsplat_available

    monkeypatch.setitem(sys.modules, "gsplat", None)  # None in sys.modules: "not installed"
    assert gsplat_available() is False
    monkeypatch.delitem(sys.modules, "gsplat")
    (tmp_path / "gsplat").mkdir()
    (tmp_path / "gsplat" / "__init__.py").write_text("raise OSError('libcudart.so.12: cannot open shared object')")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(OSError, match="libcudart"):
        gsplat_available()
