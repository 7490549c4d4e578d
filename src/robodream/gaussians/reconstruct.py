"""``robodream reconstruct``: 3D Gaussian Splatting of a static Meta-World scene.

Pipeline (Kerbl et al. 2023, with gsplat's simple-trainer defaults scaled to a short run):

1. Render N training and M held-out RGB-D views of the task's scene (``reset(seed)``) from
   free cameras on orbits around the table (:mod:`robodream.envs.cameras`); held-out views
   sit between the training azimuths, at an elevation between the training rings. Views
   are rendered at 2x and box-filtered (anti-aliased), under fixed lighting (MuJoCo's
   camera-attached headlight keeps only its ambient term; a real scene's lights do not
   follow the camera).
2. Initialise Gaussians on the back-projected training depth, voxel-downsampled to about
   ``init_points`` with voxels that follow the pixel footprint (isotropic, standard
   deviation = half the voxel, colour from the pixels).
3. Optimise with Adam on ``(1 - 0.2) L1 + 0.2 D-SSIM`` against one random training view per
   step (plus a learnable background colour), raising the SH degree on a schedule, with
   adaptive density control (:mod:`robodream.gaussians.densify`).
4. Report held-out PSNR/SSIM and the Gaussian count; write the run directory.

Run directory::

    RUN/config.json     {"model_type": "gaussian_scene", "reconstruct": {...}} (resolved config)
    RUN/meta.json       code version, machine, command line
    RUN/metrics.jsonl   loss, PSNR and Gaussian count during optimisation
    RUN/results.json    psnr_heldout, ssim_heldout, n_gaussians, wall_s, ...
    RUN/gaussians.ply   the scene, standard 3DGS layout
    RUN/cameras.json    K (3, 3) and world-to-camera (4, 4) (OpenCV, metres) of every view
    RUN/heldout.png     held-out views (top) vs renders (bottom)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robodream.config import to_dict
from robodream.envs.cameras import (
    TABLE_CENTER,
    backproject,
    free_camera,
    free_camera_matrices,
    orbit_angles,
    render_rgbd,
)
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv, check_task
from robodream.errors import ConfigError, RobodreamError
from robodream.eval.metrics import psnr, ssim
from robodream.gaussians.densify import DensifyConfig, DensityControl
from robodream.gaussians.losses import photometric_loss
from robodream.gaussians.ply import load_ply, save_ply
from robodream.gaussians.scene import GaussianParams, downsample_to, from_points
from robodream.train.run_dir import read_run_config
from robodream.utils.io import atomic_directory, atomic_write_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import write_run_meta

MODEL_TYPE = "gaussian_scene"


@dataclass
class ReconstructConfig:
    """Everything that determines a reconstruction (saved as RUN/config.json)."""

    task: str = "push-v3"  # Meta-World task whose scene (after reset(seed)) is reconstructed
    seed: int = 0  # scene variation, initialisation, view order, densification noise
    views: int = 32  # training views
    heldout: int = 8  # held-out views (never optimised on)
    image_size: int = 128  # square images, pixels
    center: tuple[float, float, float] = (TABLE_CENTER[0], TABLE_CENTER[1], 0.05)  # orbit centre, metres
    distance: float = 1.3  # camera distance to the centre, metres
    train_elevations: tuple[float, ...] = (-40.0, -60.0)  # degrees (negative looks down), one ring each
    heldout_elevation: float = -50.0  # degrees
    steps: int = 2000  # optimiser steps (one view each)
    sh_degree: int = 1  # final SH degree (0..3)
    sh_every: int = 500  # steps per SH degree increase
    init_points: int = 20_000  # Gaussians after voxel-downsampling the back-projected depth
    init_opacity: float = 0.5
    max_depth: float = 10.0  # metres; farther pixels (sky) are not back-projected
    supersample: int = 2  # render at this factor and box-filter down (anti-aliased ground truth)
    fixed_lighting: bool = True  # headlight ambient only: lighting does not follow the camera
    lr_means: float = 1.6e-4  # x scene scale, decays exponentially to 1% at the last step
    lr_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_sh0: float = 2.5e-3
    lr_shN: float = 2.5e-3 / 20
    lr_background: float = 1e-2
    ssim_lambda: float = 0.2
    densify: DensifyConfig = field(default_factory=DensifyConfig)
    tile_size: int = 8  # rasteriser tile side, pixels: speed only (images do not depend on it); 8x8 tiles
    # are ~1.5x faster than 16x16 on CPU for fitted scenes, whose tiles stay unsaturated longer
    log_every: int = 50
    eval_every: int = 0  # also log held-out PSNR every this many steps (0 = only at the end)
    threads: int = 0  # torch CPU threads (0 = torch's default)

    def __post_init__(self) -> None:
        if isinstance(self.densify, dict):
            self.densify = DensifyConfig(**self.densify)
        self.center = tuple(float(c) for c in self.center)
        self.train_elevations = tuple(float(e) for e in self.train_elevations)
        if self.views < 1 or self.heldout < 1:
            raise ConfigError(f"need at least one training and one held-out view, got {self.views} and {self.heldout}")
        if self.image_size < 16:
            raise ConfigError(f"image_size must be >= 16, got {self.image_size}")
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if not 0 <= self.sh_degree <= 3:
            raise ConfigError(f"sh_degree must be in 0..3, got {self.sh_degree}")
        if self.supersample < 1:
            raise ConfigError(f"supersample must be >= 1, got {self.supersample}")
        if self.init_points < 1:
            raise ConfigError(f"init_points must be >= 1, got {self.init_points}")


@dataclass
class Views:
    """Rendered views: rgb (V, H, W, 3) float in [0, 1], Ks (V, 3, 3), viewmats (V, 4, 4) (OpenCV, metres),
    and the back-projected surface points of each view: (M, 3) positions, (M, 3) colours, (M,) pixel footprints (m)."""

    rgb: torch.Tensor
    Ks: torch.Tensor
    viewmats: torch.Tensor
    angles: list[tuple[float, float]]
    points: list[np.ndarray]
    point_colors: list[np.ndarray]
    footprints: list[np.ndarray]


def render_views(cfg: ReconstructConfig) -> tuple[Views, Views]:
    """Training and held-out RGB-D views of the task's scene after ``reset(seed=cfg.seed)``.

    Views are rendered at ``supersample`` times the resolution and box-filtered down
    (anti-aliasing: MuJoCo's fast offscreen mode has no multisampling). With
    ``fixed_lighting`` the camera-attached headlight keeps only its ambient term, so the
    scene is lit by its fixed lights the same way from every view (as a real capture is).

    Raises:
        RobodreamError: MuJoCo returned an all-black frame (broken GL context).
    """
    train_angles = orbit_angles(cfg.views, cfg.train_elevations)
    step = 360.0 / cfg.views
    held_angles = orbit_angles(cfg.heldout, (cfg.heldout_elevation,), azimuth_offset_deg=step / 2)
    S, ss = cfg.image_size, cfg.supersample
    env = MetaWorldEnv(EnvConfig(task=cfg.task, cameras=("corner",), image_size=S * ss))
    try:
        env.reset(seed=cfg.seed)
        m, d = env.mujoco_model, env.mujoco_data
        if cfg.fixed_lighting:
            m.vis.headlight.diffuse[:] = 0.0
            m.vis.headlight.specular[:] = 0.0
        out = []
        for angles in (train_angles, held_angles):
            rgb, Ks, Ts, pts, cols, fps = [], [], [], [], [], []
            for az, el in angles:
                K, T = free_camera_matrices(m, cfg.center, cfg.distance, az, el, S * ss, S * ss)
                # The env's own renderer (one renderer per env; see robodream.envs.meta_world).
                im, dp = render_rgbd(env._renderer, d, free_camera(cfg.center, cfg.distance, az, el))
                if not im.any():
                    raise RobodreamError("MuJoCo renderer returned an all-black frame (broken GL context)")
                ok = dp < cfg.max_depth
                pts.append(backproject(dp, K, T)[ok])
                cols.append(im[ok] / 255.0)
                fps.append(dp[ok] / K[0, 0] * ss)  # footprint of a final (not supersampled) pixel
                rgb.append(im.reshape(S, ss, S, ss, 3).mean(axis=(1, 3)) / 255.0)  # box filter
                Ks.append(np.diag([1.0 / ss, 1.0 / ss, 1.0]) @ K)
                Ts.append(T)
            out.append(Views(rgb=torch.tensor(np.stack(rgb), dtype=torch.float32),
                             Ks=torch.tensor(np.stack(Ks), dtype=torch.float32),
                             viewmats=torch.tensor(np.stack(Ts), dtype=torch.float32), angles=list(angles),
                             points=pts, point_colors=cols, footprints=fps))
    finally:
        env.close()
    return out[0], out[1]


def initial_gaussians(views: Views, cfg: ReconstructConfig) -> tuple[GaussianParams, np.ndarray]:
    """Gaussians on the back-projected depth of the training views; returns them and their voxel sizes.

    Voxel sizes follow each pixel's footprint (depth / focal length), so the table is sampled
    finely and the far floor coarsely; each Gaussian's standard deviation is half its voxel.

    Raises:
        RobodreamError: no training pixel sees a surface closer than ``cfg.max_depth``.
    """
    if sum(p.shape[0] for p in views.points) == 0:
        raise RobodreamError("no scene surface within max_depth in the training views")
    points, colors, voxel = downsample_to(np.concatenate(views.points), np.concatenate(views.point_colors),
                                          cfg.init_points, np.concatenate(views.footprints))
    return from_points(points, colors, 0.5 * voxel, sh_degree=cfg.sh_degree, opacity=cfg.init_opacity), voxel


def _optimizer(params: dict[str, torch.Tensor], bg: torch.Tensor, cfg: ReconstructConfig, scene_scale: float):
    """Adam with one param group per tensor and 3DGS's per-parameter learning rates."""
    lrs = {"means": cfg.lr_means * scene_scale, "log_scales": cfg.lr_scales, "quats": cfg.lr_quats,
           "opacity_logits": cfg.lr_opacity, "sh0": cfg.lr_sh0, "shN": cfg.lr_shN}
    groups = [{"params": [t], "lr": lrs[name], "name": name} for name, t in params.items()]
    groups.append({"params": [bg], "lr": cfg.lr_background, "name": "background"})
    return torch.optim.Adam(groups, eps=1e-15)


def _split_sh(g: GaussianParams) -> dict[str, torch.Tensor]:
    """Optimised tensors: the DC and higher SH bands apart (3DGS gives them different rates)."""
    t = {k: v for k, v in g.tensors().items() if k != "sh"}
    t["sh0"] = g.sh[:, :1]
    if g.sh.shape[1] > 1:
        t["shN"] = g.sh[:, 1:]
    return {k: v.detach().clone().requires_grad_(True) for k, v in t.items()}


def _join_sh(params: dict[str, torch.Tensor]) -> GaussianParams:
    sh = torch.cat([params["sh0"], params["shN"]], 1) if "shN" in params else params["sh0"]
    return GaussianParams(means=params["means"], quats=params["quats"], log_scales=params["log_scales"],
                          opacity_logits=params["opacity_logits"], sh=sh)


def reconstruct(cfg: ReconstructConfig, out: str | Path, *, overwrite: bool = False,
                log: Callable[[str], None] | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Reconstruct a Meta-World scene into RUN = ``out``; returns the results dict.

    Raises:
        UnknownTaskError: unknown task.
        ConfigError: invalid configuration.
        RobodreamError: ``out`` exists and ``overwrite`` is false; rendering failed.
    """
    check_task(cfg.task)
    out = Path(out)
    if out.exists() and not overwrite:
        raise RobodreamError(f"{out} already exists; pass --overwrite to replace it")
    log = log or (lambda m: None)
    t0, c0 = time.perf_counter(), time.process_time()
    prev_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with atomic_directory(out, overwrite=overwrite) as tmp:
            results = _run(cfg, tmp, log, show_progress, t0)
            results["cpu_s"] = time.process_time() - c0  # process CPU time, all threads
            atomic_write_json(tmp / "results.json", results)
    finally:
        torch.set_num_threads(prev_threads)
    return results


def _run(cfg: ReconstructConfig, run: Path, log, show_progress: bool, t0: float) -> dict[str, Any]:
    c0 = time.process_time()
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    atomic_write_json(run / "config.json", {"model_type": MODEL_TYPE, "reconstruct": to_dict(cfg)})
    write_run_meta(run)
    log(f"rendering {cfg.views} training + {cfg.heldout} held-out views of {cfg.task} at {cfg.image_size}px")
    train, held = render_views(cfg)
    _write_cameras(run / "cameras.json", train, held)
    g0, voxel = initial_gaussians(train, cfg)
    log(f"initialised {g0.n} Gaussians (voxels {voxel.min() * 100:.2f} to {voxel.max() * 100:.2f} cm)")
    scene_scale = 1.1 * cfg.distance
    params = _split_sh(g0)
    bg = torch.full((3,), 0.5).requires_grad_(True)
    opt = _optimizer(params, bg, cfg, scene_scale)
    density = DensityControl(cfg.densify, scene_scale, cfg.steps, gen)
    lr_decay = 0.01 ** (1.0 / max(cfg.steps, 1))
    S = cfg.image_size
    n_views = train.rgb.shape[0]
    order = torch.randperm(n_views, generator=gen)
    metrics = (run / "metrics.jsonl").open("w")
    with progress_bar(disable=not show_progress) as bar:
        task = bar.add_task("reconstruct", total=cfg.steps)
        for step in range(1, cfg.steps + 1):
            i = int(order[(step - 1) % n_views])
            if (step - 1) % n_views == n_views - 1:
                order = torch.randperm(n_views, generator=gen)
            g = _join_sh(params)
            r = g.render(train.viewmats[i:i + 1], train.Ks[i:i + 1], S, S, background=bg,
                         sh_degree=min(cfg.sh_degree, (step - 1) // cfg.sh_every), tile_size=cfg.tile_size)
            if step == 1:
                backend = r.info["backend"]
                log(f"rasteriser: {backend} path on {r.rgb.device}")
            r.info["means2d"].retain_grad()
            loss = photometric_loss(r.rgb, train.rgb[i:i + 1], cfg.ssim_lambda)
            loss.backward()
            density.accumulate(r.info["means2d"], r.info["radii"], S, S)
            opt.step()
            opt.zero_grad(set_to_none=True)
            opt.param_groups[0]["lr"] *= lr_decay
            changed = density.step(step, params, opt)
            if step % cfg.log_every == 0 or step == cfg.steps:
                rec = {"step": step, "loss": loss.item(), "psnr": psnr(r.rgb.detach().clamp(0, 1), train.rgb[i:i + 1]),
                       "n_gaussians": params["means"].shape[0], "elapsed_s": time.perf_counter() - t0,
                       "cpu_s": time.process_time() - c0, **changed}
                if cfg.eval_every and (step % cfg.eval_every == 0):
                    rec["psnr_heldout"] = evaluate(_join_sh({k: v.detach() for k, v in params.items()}), held,
                                                   bg.detach().clamp(0, 1), cfg.tile_size)["psnr"]
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                bar.update(task, description=f"reconstruct  {rec['n_gaussians']} G  {rec['psnr']:.1f} dB")
            bar.advance(task)
    metrics.close()
    final = _join_sh({k: v.detach() for k, v in params.items()})
    save_ply(run / "gaussians.ply", final)
    background = bg.detach().clamp(0, 1)
    held_eval = evaluate(final, held, background, cfg.tile_size)
    train_eval = evaluate(final, train, background, cfg.tile_size)
    _save_grid(run / "heldout.png", held.rgb, held_eval.pop("renders"))
    train_eval.pop("renders")
    wall = time.perf_counter() - t0
    log(f"held-out PSNR {held_eval['psnr']:.2f} dB, SSIM {held_eval['ssim']:.4f}, {final.n} Gaussians, {wall:.0f} s")
    return {"psnr_heldout": held_eval["psnr"], "ssim_heldout": held_eval["ssim"], "n_gaussians": final.n,
            "wall_s": wall, "psnr_train": train_eval["psnr"], "ssim_train": train_eval["ssim"],
            "psnr_heldout_per_view": held_eval["psnr_per_view"], "steps": cfg.steps, "views": cfg.views,
            "heldout": cfg.heldout, "image_size": S, "n_gaussians_init": g0.n, "background": background.tolist(),
            "torch_threads": torch.get_num_threads(), "rasterizer_backend": backend}


@torch.no_grad()
def evaluate(g: GaussianParams, views: Views, background: torch.Tensor, tile_size: int = 16) -> dict[str, Any]:
    """Mean PSNR (dB) and SSIM over views of renders clamped to [0, 1]; also returns the renders."""
    renders, p, s = [], [], []
    S = views.rgb.shape[1]
    for i in range(views.rgb.shape[0]):
        img = g.render(views.viewmats[i:i + 1], views.Ks[i:i + 1], S, S, background=background,
                       tile_size=tile_size).rgb.clamp(0, 1)
        renders.append(img[0])
        p.append(psnr(img, views.rgb[i:i + 1]))
        s.append(float(ssim(img, views.rgb[i:i + 1])))
    return {"psnr": float(np.mean(p)), "ssim": float(np.mean(s)), "psnr_per_view": p, "renders": torch.stack(renders)}


def _save_grid(path: Path, truth: torch.Tensor, renders: torch.Tensor) -> None:
    from PIL import Image

    top = torch.cat(list(truth), dim=1)  # (H, V*W, 3)
    bottom = torch.cat(list(renders), dim=1)
    grid = (torch.cat([top, bottom], dim=0).clamp(0, 1) * 255).round().byte().numpy()
    Image.fromarray(grid).save(path)


def _write_cameras(path: Path, train: Views, held: Views) -> None:
    def cams(v: Views) -> list[dict]:
        return [{"azimuth_deg": a, "elevation_deg": e, "K": K.tolist(), "world_to_cam": T.tolist()}
                for (a, e), K, T in zip(v.angles, v.Ks, v.viewmats)]

    atomic_write_json(path, {"convention": "OpenCV (x right, y down, z forward), metres, pixel centres at +0.5",
                             "width": int(train.rgb.shape[2]), "height": int(train.rgb.shape[1]),
                             "train": cams(train), "heldout": cams(held)})


def load_scene(run: str | Path, device: str = "cpu") -> GaussianParams:
    """The Gaussians of a reconstruction run (on the CPU; ``device`` is the run registry's
    loader signature, :func:`robodream.train.run_dir.load_run`).

    Raises:
        CheckpointError: not a run directory, a run of another model type, or a bad PLY.
    """
    read_run_config(run, MODEL_TYPE)
    return load_ply(Path(run) / "gaussians.ply")

