"""CLI verbs of the Gaussian splatting module: ``robodream reconstruct`` and ``robodream bench rasterizer``.

Plain functions with typer options; :func:`register` adds them to robodream's app (the
main ``cli.py`` calls it at the end of its module). This module does not import
``robodream.cli`` at import time (that would be circular: ``robodream.cli`` imports this
one); its helpers are looked up when a command is registered or runs. Logic lives in
:mod:`robodream.gaussians.reconstruct` and :mod:`robodream.gaussians.bench`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.errors import ConfigError


def _read_config(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    try:
        cfg = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e
    return cfg.get("reconstruct", cfg)


def reconstruct_cmd(
    task: Annotated[str, typer.Option(help="Meta-World task whose scene is reconstructed, e.g. push-v3")],
    out: Annotated[Path, typer.Option(help="run directory to create")],
    views: Annotated[int, typer.Option(help="training views (orbit cameras around the table)")] = 32,
    heldout: Annotated[int, typer.Option(help="held-out views for PSNR/SSIM")] = 8,
    image_size: Annotated[int, typer.Option(help="square image side in pixels")] = 128,
    steps: Annotated[Optional[int], typer.Option(help="optimiser steps (default from the config)")] = None,
    sh_degree: Annotated[Optional[int], typer.Option(help="final spherical-harmonics degree, 0-3")] = None,
    init_points: Annotated[Optional[int], typer.Option(help="Gaussians initialised from depth")] = None,
    max_gaussians: Annotated[Optional[int], typer.Option(help="densification stops at this count")] = None,
    seed: Annotated[int, typer.Option(help="scene variation (env reset seed) and optimisation seed")] = 0,
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch default)")] = 0,
    config: Annotated[Optional[Path], typer.Option(help="a reconstruction run's config.json to start from")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run at --out")] = False,
) -> None:
    """3D Gaussian Splatting of a static Meta-World scene; reports held-out PSNR/SSIM, writes a .ply."""
    from robodream.cli import err_console, print_table
    from robodream.gaussians.reconstruct import ReconstructConfig, reconstruct
    from robodream.utils.run import from_dict

    base = _read_config(config)
    try:
        cfg = from_dict(ReconstructConfig, {**base, "task": task, "views": views, "heldout": heldout,
                                             "image_size": image_size, "seed": seed, "threads": threads})
    except TypeError as e:
        raise ConfigError(f"bad reconstruction config: {e}") from e
    if steps is not None:
        cfg.steps = steps
    if sh_degree is not None:
        cfg.sh_degree = sh_degree
    if init_points is not None:
        cfg.init_points = init_points
    if max_gaussians is not None:
        cfg.densify.max_gaussians = max_gaussians
    cfg.__post_init__()
    log = lambda m: err_console.print(f"[bold cyan]>>[/] {m}")  # noqa: E731
    r = reconstruct(cfg, out, overwrite=overwrite, log=log)
    print_table(f"reconstruct {task}: {views} views at {image_size}x{image_size}",
                ["held-out PSNR (dB)", "held-out SSIM", "train PSNR (dB)", "Gaussians", "steps", "wall s", "run"],
                [[r["psnr_heldout"], r["ssim_heldout"], r["psnr_train"], r["n_gaussians"], r["steps"], r["wall_s"],
                  str(out)]])


def _ints(text: str, what: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError as e:
        raise ConfigError(f"--{what} must be comma-separated integers, got {text!r}") from e
    if not vals or min(vals) < 1:
        raise ConfigError(f"--{what} must list positive integers, got {text!r}")
    return vals


def bench_rasterizer_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/rasterizer.json"),
    counts: Annotated[str, typer.Option(help="comma-separated Gaussian counts")] = "2048,8192,32768",
    sizes: Annotated[str, typer.Option(help="comma-separated square image sizes (pixels)")] = "64,128,256",
    repeats: Annotated[int, typer.Option(help="timed repeats per measurement (median reported)")] = 5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda")] = "auto",
    threads: Annotated[int, typer.Option(help="torch CPU threads (0 = torch default)")] = 0,
    dense_max_pairs: Annotated[float, typer.Option(help="skip the dense reference above N*H*W pairs")] = 1.4e8,
    tile_size: Annotated[int, typer.Option(help="tile side of the tiled path, pixels")] = 16,
) -> None:
    """Forward and forward+backward time of the tiled rasteriser vs the dense reference (and gsplat on CUDA)."""
    from robodream.cli import err_console, out_console, print_table
    from robodream.gaussians.bench import bench_rasterizer
    from robodream.utils.io import atomic_write_json

    log = lambda m: err_console.print(f"[bold cyan]>>[/] {m}")  # noqa: E731
    r = bench_rasterizer(_ints(counts, "counts"), _ints(sizes, "sizes"), repeats=repeats, device=device,
                         threads=threads, dense_max_pairs=dense_max_pairs, tile_size=tile_size, log=log)
    atomic_write_json(out, r)
    rows = [[x["path"], x["device"], x["n_gaussians"], f"{x['width']}x{x['height']}", x["forward_ms"],
             x["forward_backward_ms"]] for x in r["rows"]]
    print_table(f"rasteriser, {r['device']}, {r['torch_threads']} thread(s), {tile_size}px tiles, median of {r['repeats']}",
                ["path", "device", "Gaussians", "image", "forward ms", "fwd+bwd ms"], rows)
    print_table("ratios", ["Gaussians", "image", "dense/tiled fwd", "dense/tiled fwd+bwd", "tiled/gsplat fwd+bwd",
                           "gsplat via rasterize / direct fwd+bwd"],
                [[x["n_gaussians"], f"{x['width']}x{x['height']}", x.get("dense_over_tiled_forward"),
                  x.get("dense_over_tiled_forward_backward"), x.get("tiled_over_gsplat_forward_backward"),
                  x.get("gsplat_via_rasterize_over_direct_forward_backward")] for x in r["ratios"]])
    out_console.print(f"written to {out}")


def register(app: typer.Typer, bench_app: typer.Typer) -> None:
    """Add ``reconstruct`` to ``app`` and ``rasterizer`` to ``bench_app`` (idempotent).

    Errors a user can cause (:class:`robodream.errors.RobodreamError`) print as one line and
    exit with status 2, like every robodream verb.
    """
    from robodream.cli import user_errors

    if not any(c.name == "reconstruct" for c in app.registered_commands):
        app.command("reconstruct")(user_errors(reconstruct_cmd))
    if not any(c.name == "rasterizer" for c in bench_app.registered_commands):
        bench_app.command("rasterizer")(user_errors(bench_rasterizer_cmd))
