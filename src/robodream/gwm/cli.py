"""CLI verbs of the Gaussian world model: ``robodream gaussians`` (per-frame Gaussians of a dataset) and
``robodream train gwm-vae`` (the set VAE).

Plain functions with typer options; :func:`register` adds them to robodream's apps (the
convention of :mod:`robodream.utils.cli`). Logic lives in :mod:`robodream.gwm.frames`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, register_train_verb, user_errors


def gaussians_cmd(
    overrides: dict,
    data: Annotated[Path, typer.Option(help="dataset recorded with robodream collect --with-depth")],
    out: Annotated[Path, typer.Option(help="companion directory to create (gaussians.npy, index.json, ...)")],
    cameras: Annotated[Optional[str], typer.Option(help="comma-separated input cameras (default: the static ones)")] = None,
    heldout: Annotated[Optional[str], typer.Option(help="a camera of the dataset left out of --cameras: report the "
                                                        "Gaussians' render PSNR/SSIM from it")] = None,
    episodes: Annotated[Optional[int], typer.Option(help="only the first N episodes")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing directory at --out")] = False,
) -> None:
    """Pixel-aligned Gaussians (14 numbers each) of every frame of a dataset, from its static cameras' RGB-D."""
    from robodream.config import from_dict
    from robodream.errors import ConfigError
    from robodream.gwm.frames import build_gaussian_frames, heldout_camera_psnr, load_gaussian_frames
    from robodream.gwm.pixel import PixelGaussianConfig
    from robodream.utils.io import atomic_write_json

    cfg = from_dict(PixelGaussianConfig, overrides)
    cams = [c.strip() for c in cameras.split(",") if c.strip()] if cameras else None
    if heldout and cams and heldout in cams:
        raise ConfigError(f"--heldout {heldout} is one of --cameras; a held-out camera must not be an input")
    if heldout and not cams:
        from robodream.data.lerobot import LeRobotDataset
        from robodream.gwm.frames import static_cameras

        cams = [c for c in static_cameras(LeRobotDataset(data)) if c != heldout]
    index = build_gaussian_frames(data, out, cameras=cams, cfg=cfg, episodes=episodes, overwrite=overwrite, log=log)
    row = [index["frames"], cfg.n, ",".join(index["cameras"]), index["ms_per_frame"]]
    cols = ["frames", "n", "cameras", "ms/frame"]
    if heldout:
        m = heldout_camera_psnr(load_gaussian_frames(out), data, heldout)
        atomic_write_json(out / "metrics.json", {"heldout": m, "ms_per_frame": index["ms_per_frame"]})
        inputs = m["per_input_camera_psnr_db"]
        row += [heldout, m["psnr_db"], m["ssim"], round(sum(inputs.values()) / len(inputs), 2)]
        cols += ["held-out", "PSNR dB", "SSIM", "inputs dB"]
    print_table(f"per-frame Gaussians of {data}", cols, [row])
    out_console.print(f"written to {out}")


def register(apps: Apps) -> None:
    """Add ``gaussians`` and ``train gwm-vae``."""
    from robodream.gwm.pixel import PixelGaussianConfig
    from robodream.gwm.train import SetVAERunConfig, train_set_vae

    apps.root.command("gaussians")(user_errors(config_verb(PixelGaussianConfig)(gaussians_cmd)))
    register_train_verb(apps, "gwm-vae", SetVAERunConfig, train_set_vae, "GWM set VAE",
                        ["decoded PSNR dB", "Chamfer", "train frames"],
                        lambda r: [r.get("psnr_db"), r.get("chamfer"), r["n_train_frames"]])
