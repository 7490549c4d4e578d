"""On a CUDA GPU: the tiled PyTorch path gives the CPU's images and gradients; with gsplat
installed, ``rasterize`` dispatches to gsplat, and gsplat's images and gradients match robodream's
tiled path (run on the same GPU). Skipped without CUDA (conftest) or, for the gsplat tests,
without gsplat (``pip install 'robodream[gpu]'``)."""

from __future__ import annotations

import pytest
import torch

from robodream.gaussians import rasterizer
from robodream.gaussians.rasterizer import rasterize

pytestmark = pytest.mark.gpu


def _scene(n: int, seed: int, sh_degree: int | None = None):
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(n, 3, generator=g) * 0.4
    quats = torch.randn(n, 4, generator=g)
    scales = torch.rand(n, 3, generator=g) * 0.05 + 0.01
    opac = torch.rand(n, generator=g)
    colors = (torch.rand(n, 3, generator=g) if sh_degree is None
              else torch.randn(n, (sh_degree + 1) ** 2, 3, generator=g) * 0.3)
    params = [t.cuda().requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    vm = torch.eye(4).repeat(2, 1, 1)
    vm[:, 2, 3] = 3.0
    vm[1, 0, 3] = 0.2
    K = torch.tensor([[120.0, 0, 64], [0, 120.0, 48], [0, 0, 1]]).repeat(2, 1, 1)
    return params, vm.cuda(), K.cuda()


def _grads(params, vm, K, backend):
    for p in params:
        p.grad = None
    out = rasterize(*params, vm, K, 128, 96, background=torch.tensor([0.1, 0.2, 0.3], device="cuda"),
                    backend=backend)
    g = torch.Generator(device="cuda").manual_seed(0)
    w = torch.rand(out.rgb.shape, generator=g, device="cuda")
    ((out.rgb * w).sum() + out.alpha.sum()).backward()
    return out, [p.grad.clone() for p in params]


def test_tiled_path_on_cuda_equals_cpu(monkeypatch):
    """The pure-PyTorch path runs on CUDA too (and is what ``auto`` picks without gsplat)."""
    monkeypatch.setattr(rasterizer, "gsplat_available", lambda: False)
    params, vm, K = _scene(1000, 3, sh_degree=2)
    out, grads = _grads(params, vm, K, "auto")
    assert out.info["backend"] == "tiled" and out.rgb.is_cuda
    cpu = [p.detach().cpu().requires_grad_(True) for p in params]
    ref = rasterize(*cpu, vm.cpu(), K.cpu(), 128, 96, background=torch.tensor([0.1, 0.2, 0.3]), backend="tiled")
    w = torch.rand(ref.rgb.shape, generator=torch.Generator(device="cuda").manual_seed(0), device="cuda")
    ((ref.rgb * w.cpu()).sum() + ref.alpha.sum()).backward()
    for a, b in zip(ref[:3], out[:3]):  # float32 rounding may flip a truncation threshold at a pixel
        diff = (b.cpu() - a).abs()
        assert diff.mean() < 1e-4 and diff.max() < 5e-2
    for p, g in zip(cpu, grads):
        cos = torch.nn.functional.cosine_similarity(p.grad.flatten(), g.cpu().flatten(), dim=0)
        assert cos > 0.999


def test_auto_backend_is_gsplat_on_cuda():
    pytest.importorskip("gsplat")
    params, vm, K = _scene(100, 0)
    assert rasterize(*params, vm, K, 64, 48).info["backend"] == "gsplat"


@pytest.mark.parametrize("sh_degree", [None, 3])
def test_gsplat_matches_tiled_path(sh_degree):
    """Same images up to gsplat's looser truncation (<= opacity * exp(-4.5) at 3-sigma edges)."""
    pytest.importorskip("gsplat")
    params, vm, K = _scene(2000, 1, sh_degree)
    ref, g_ref = _grads(params, vm, K, "tiled")
    out, g_out = _grads(params, vm, K, "gsplat")
    diff = (out.rgb - ref.rgb).abs()
    assert diff.mean() < 2e-3 and diff.max() < 0.05
    assert (out.alpha - ref.alpha).abs().mean() < 2e-3
    solid = ref.alpha > 0.5
    assert ((out.depth - ref.depth).abs()[solid] / ref.depth[solid]).median() < 1e-3
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], g_ref, g_out):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.98, f"{name}: cosine {cos:.4f}"
    torch.testing.assert_close(out.info["means2d"], ref.info["means2d"], rtol=1e-4, atol=1e-3)


def test_gsplat_degenerate_inputs_are_finite():
    pytest.importorskip("gsplat")
    params, vm, K = _scene(50, 2)
    with torch.no_grad():
        params[0][0] = float("nan")
        params[2][1] = 0.0
        params[1][2] = 0.0
        params[0][3] = torch.tensor([0.0, 0.0, -5.0], device="cuda")  # behind the camera
    out, grads = _grads(params, vm, K, "gsplat")
    assert torch.isfinite(out.rgb).all() and torch.isfinite(out.depth).all()
    assert all(torch.isfinite(g).all() for g in grads)
    assert (grads[0][0] == 0).all()
