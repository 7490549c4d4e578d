"""``robodream bench rasterizer``: forward and forward+backward time of the rasteriser paths.

Scene (fixed, seeded): N Gaussians with centres uniform in a box that fills a 60-degree
field of view (x, y in [-1.2, 1.2] m, z in [2, 4] m in front of an identity camera), random
rotations, log-uniform scales in [0.01, 0.05] m, opacities uniform in [0.2, 1], RGB colours.
This is denser than a fitted scene at small N and sparser at large N; it is a
throughput test, not a quality one.

Paths: ``tiled`` (robodream's PyTorch path, ``tile_size`` 16 unless asked), ``dense`` (the reference; skipped above
``dense_max_pairs`` Gaussian-pixel pairs, where it takes minutes and gigabytes), and on CUDA
with gsplat installed ``gsplat`` (gsplat through :func:`rasterize`) and ``gsplat_direct``
(``gsplat.rasterization`` called as its docs show). Times are medians over repeats of wall
time (``forward_ms``, ``forward_backward_ms``) and, on CPU, of process CPU time summed over
threads (``*_cpu_ms``; close to wall time with one thread, and less sensitive to other jobs).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch

from robodream.errors import ConfigError
from robodream.gaussians.projection import project_gaussians
from robodream.gaussians.rasterizer import composite_dense, gsplat_available, rasterize
from robodream.utils.run import code_version, environment_info, now

SCENE = ("centres uniform in x,y in [-1.2,1.2] m, z in [2,4] m; identity camera, 60 deg fov; scales log-uniform "
         "[0.01,0.05] m; opacity U[0.2,1]; random rotations; RGB colours; loss = sum(rgb) + 0.01 sum(depth) + sum(alpha)")


def bench_scene(n: int, width: int, height: int, device: str = "cpu", seed: int = 0):
    """The benchmark's Gaussians (N, ...) and camera: ``(means, quats, scales, opacities, colors), viewmats, Ks``."""
    g = torch.Generator().manual_seed(seed)
    means = torch.stack([torch.rand(n, generator=g) * 2.4 - 1.2, torch.rand(n, generator=g) * 2.4 - 1.2,
                         torch.rand(n, generator=g) * 2 + 2], -1)
    quats = torch.randn(n, 4, generator=g)
    scales = torch.exp(torch.rand(n, 3, generator=g) * math.log(5) + math.log(0.01))
    opac = torch.rand(n, generator=g) * 0.8 + 0.2
    colors = torch.rand(n, 3, generator=g)
    f = 0.5 * width / math.tan(math.radians(30))
    Ks = torch.tensor([[[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]])
    params = [t.to(device).requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    return params, torch.eye(4)[None].to(device), Ks.to(device)


def _render_fn(path: str, params, viewmats, Ks, W: int, H: int, tile_size: int = 16) -> Callable[[], tuple]:
    if path == "dense":
        chunk = max(64, 4_000_000 // max(params[0].shape[0], 1))  # bounds memory; checkpointed

        def fn():
            p = project_gaussians(*params, viewmats, Ks, W, H)
            rgb, depth, alpha = composite_dense(p, params[0].new_zeros(1, 3), W, H, pixel_chunk=chunk)
            return rgb, depth, alpha
        return fn
    if path == "gsplat_direct":
        from robodream.gaussians.gsplat_backend import rasterize_gsplat_direct

        def fn():
            render, alphas, _ = rasterize_gsplat_direct(*params, viewmats, Ks, W, H)
            return render[..., :3], render[..., 3], alphas[..., 0]
        return fn
    backend = {"tiled": "tiled", "gsplat": "gsplat"}[path]
    return lambda: tuple(rasterize(*params, viewmats, Ks, W, H, backend=backend, tile_size=tile_size)[:3])


def _time(fn: Callable[[], Any], repeats: int, warmup: int, cuda: bool) -> tuple[float, float]:
    """Median wall ms and median process-CPU ms of ``fn``."""
    for _ in range(warmup):
        fn()
    if cuda:
        torch.cuda.synchronize()
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        if cuda:
            torch.cuda.synchronize()
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return statistics.median(wall), statistics.median(cpu)


def bench_rasterizer(counts=(2048, 8192, 32768), sizes=(64, 128, 256), repeats: int = 5, device: str = "auto",
                     threads: int = 0, dense_max_pairs: float = 1.4e8, dense_repeats: int = 3, tile_size: int = 16,
                     log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time every path on every (count, size); returns the JSON-able result with ``rows`` and ``ratios``.

    Raises:
        ConfigError: unknown device, CUDA requested but absent, or empty counts/sizes.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") or (device == "cuda" and not torch.cuda.is_available()):
        raise ConfigError(f"device must be cpu, cuda (when available) or auto, got {device!r}")
    if not counts or not sizes or repeats < 1:
        raise ConfigError("need at least one Gaussian count, one image size and one repeat")
    log = log or (lambda m: None)
    cuda = device == "cuda"
    paths = ["tiled", "dense"] + (["gsplat", "gsplat_direct"] if cuda and gsplat_available() else [])
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rows: list[dict[str, Any]] = []
    try:
        for n in counts:
            for s in sizes:
                for path in paths:
                    row = {"path": path, "device": device, "n_gaussians": int(n), "width": int(s), "height": int(s),
                           "tile_size": tile_size if path in ("tiled", "gsplat") else None}
                    if path == "dense" and n * s * s > dense_max_pairs:
                        rows.append({**row, "forward_ms": None, "forward_backward_ms": None,
                                     "skipped": f"{n * s * s:.2g} Gaussian-pixel pairs > dense_max_pairs"})
                        continue
                    params, vm, K = bench_scene(int(n), int(s), int(s), device)
                    fn = _render_fn(path, params, vm, K, int(s), int(s), tile_size)
                    reps = min(repeats, dense_repeats) if path == "dense" else repeats

                    def forward(fn=fn):
                        with torch.no_grad():
                            fn()

                    def forward_backward(fn=fn, params=params):
                        rgb, depth, alpha = fn()
                        (rgb.sum() + 0.01 * depth.sum() + alpha.sum()).backward()
                        for p in params:
                            p.grad = None

                    warm = 0 if path == "dense" else 1  # the dense reference takes seconds; no warm-up needed
                    f_ms, f_cpu = _time(forward, reps, warm, cuda)
                    fb_ms, fb_cpu = _time(forward_backward, reps, warm, cuda)
                    row.update(forward_ms=f_ms, forward_backward_ms=fb_ms, repeats=reps)
                    if not cuda:
                        row.update(forward_cpu_ms=f_cpu, forward_backward_cpu_ms=fb_cpu)
                    rows.append(row)
                    log(f"{path:>13} N={n:>6} {s}x{s}: forward {f_ms:8.1f} ms, forward+backward {fb_ms:8.1f} ms")
    finally:
        threads_used = torch.get_num_threads()
        torch.set_num_threads(prev)
    return {"benchmark": "rasterizer", "created": now(), "code": code_version(), "environment": environment_info(),
            "device": device, "torch_threads": threads_used, "repeats": repeats, "scene": SCENE, "rows": rows,
            "ratios": ratios(rows)}


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (device, N, size): dense / tiled, and on CUDA gsplat-through-rasterize / gsplat-direct and tiled / gsplat."""
    by = {(r["device"], r["n_gaussians"], r["width"], r["height"], r["path"]): r for r in rows}
    out = []
    for (dev, n, w, h, path), r in by.items():
        if path != "tiled":
            continue
        entry: dict[str, Any] = {"device": dev, "n_gaussians": n, "width": w, "height": h}
        for other, name in (("dense", "dense_over_tiled"), ("gsplat", "tiled_over_gsplat")):
            o = by.get((dev, n, w, h, other))
            if o and o.get("forward_ms") and r.get("forward_ms"):
                a, b = (o, r) if other == "dense" else (r, o)
                entry[f"{name}_forward"] = a["forward_ms"] / b["forward_ms"]
                entry[f"{name}_forward_backward"] = a["forward_backward_ms"] / b["forward_backward_ms"]
        g, gd = by.get((dev, n, w, h, "gsplat")), by.get((dev, n, w, h, "gsplat_direct"))
        if g and gd:
            entry["gsplat_via_rasterize_over_direct_forward"] = g["forward_ms"] / gd["forward_ms"]
            entry["gsplat_via_rasterize_over_direct_forward_backward"] = g["forward_backward_ms"] / gd["forward_backward_ms"]
        out.append(entry)
    return out
