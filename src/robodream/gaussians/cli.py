"""CLI verbs of the Gaussian splatting module: ``robodream reconstruct`` and ``robodream bench rasterizer``.

Plain functions with typer options; :func:`register` adds them to robodream's apps (the
convention of :mod:`robodream.utils.cli`). Logic lives in
:mod:`robodream.gaussians.reconstruct` and :mod:`robodream.gaussians.bench`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.errors import ConfigError
from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, user_errors


def reconstruct_cmd(
    overrides: dict,
    out: Annotated[Path, typer.Option(help="run directory to create")],
    config: Annotated[Optional[Path], typer.Option(help="a reconstruction run's config.json to start from")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run at --out")] = False,
) -> None:
    """3D Gaussian Splatting of a static Meta-World scene; reports held-out PSNR/SSIM, writes a .ply."""
    from robodream.config import deep_merge, from_dict, load_config_file, to_dict
    from robodream.gaussians.reconstruct import MODEL_TYPE, ReconstructConfig, reconstruct

    base = to_dict(ReconstructConfig())
    if config is not None:
        file = load_config_file(config)
        if file.get("model_type", MODEL_TYPE) != MODEL_TYPE:
            raise ConfigError(f"--config {config} is a {file.get('model_type')} config, not {MODEL_TYPE}")
        base = deep_merge(base, file.get("reconstruct", {k: v for k, v in file.items() if k != "model_type"}))
    cfg = from_dict(ReconstructConfig, deep_merge(base, overrides))
    r = reconstruct(cfg, out, overwrite=overwrite, log=log)
    print_table(f"reconstruct {cfg.task}: {cfg.views} views at {cfg.image_size}x{cfg.image_size}",
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
    from robodream.gaussians.bench import bench_rasterizer
    from robodream.utils.io import atomic_write_json

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


def register(apps: Apps) -> None:
    """Add ``reconstruct`` and ``bench rasterizer``."""
    from robodream.gaussians.reconstruct import ReconstructConfig

    apps.root.command("reconstruct")(user_errors(config_verb(ReconstructConfig)(reconstruct_cmd)))
    apps.bench.command("rasterizer")(user_errors(bench_rasterizer_cmd))
