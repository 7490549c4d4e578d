"""How much of a 64x64 view can per-frame pixel-aligned Gaussians hold? (issue 16, diagnostic)

Renders :func:`robodream.gwm.pixel.pixel_gaussians` of three input cameras into those cameras
and into a fourth, held-out one, beside two references that need no Gaussians:

- each view area-downsampled to k x k and bilinearly upsampled back (what k*k samples on a
  regular grid keep of the view's detail; 2048 Gaussians from three cameras are ~26 x 26 a view);
- one camera's own pixels, every one a Gaussian, rendered into itself (the blur of splatting
  one Gaussian a pixel, at several footprint scales).

Then the feed-forward settings and a few rasteriser refinement steps. PSNR in dB, mean over
6 frames spread over episode 0. The per-frame times are printed but mean nothing on a busy host.

    robodream collect --task push-v3 --episodes 2 --cameras corner,corner2,corner3,corner4 --with-depth --out D
    python benchmarks/scripts/gwm_pixel_ceiling.py D
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from robodream.data.lerobot import LeRobotDataset
from robodream.eval.metrics import psnr
from robodream.gwm.frames import episode_camera_matrices, episode_rgbd
from robodream.gwm.pixel import PixelGaussianConfig, pixel_gaussians, render

CAMERAS = ["corner", "corner2", "corner3", "corner4"]  # the first three are inputs, the last held out
INPUTS = [0, 1, 2]


def main(data: str) -> None:
    torch.set_num_threads(1)
    ds = LeRobotDataset(data)
    Ks, Ts = episode_camera_matrices(ds, CAMERAS)
    rgb, depth = episode_rgbd(ds, 0, CAMERAS)
    sel = np.linspace(0, len(rgb) - 1, 6).astype(int)
    rgb, depth = torch.from_numpy(rgb[sel]), torch.from_numpy(depth[sel])
    K, T = torch.tensor(Ks[0], dtype=torch.float32), torch.tensor(Ts[0], dtype=torch.float32)
    img = rgb.float() / 255  # (B, 4, H, W, 3)
    H, W = img.shape[2:4]

    views = img.flatten(0, 1).permute(0, 3, 1, 2)  # (B*4, 3, H, W)
    print("| reference | PSNR dB (all four views) |\n|---|---|")
    for k in (16, 26, 32, 48):
        y = F.interpolate(F.interpolate(views, size=(k, k), mode="area"), size=(H, W), mode="bilinear",
                          align_corners=False)
        print(f"| area-downsampled to {k}x{k}, bilinear back | {psnr(y, views):.2f} |")
    for fs in (0.35, 0.5, 0.7):
        cfg = PixelGaussianConfig(n=H * W, spacing_scale=0.01, footprint_scale=fs)
        own = []
        for c in INPUTS:
            g, bg = pixel_gaussians(rgb[:, [c]], depth[:, [c]], K[[c]], T[[c]], cfg)
            own.append(psnr(render(g, T[[c]], K[[c]], W, H, bg)[:, 0], img[:, c]))
        print(f"| every pixel of a camera a Gaussian (footprint x {fs}), rendered into that camera | "
              f"{np.mean(own):.2f} |")

    print("\n| pixel Gaussians of corner, corner2, corner3 | inputs dB | corner4 (held out) dB | ms a frame |")
    print("|---|---|---|---|")
    for kw in ({}, {"n": 4096}, {"n": H * W * 3}, {"spacing_scale": 0.4}, {"refine_steps": 10},
               {"refine_steps": 30}, {"n": 4096, "refine_steps": 30}):
        t0 = time.perf_counter()
        g, bg = pixel_gaussians(rgb[:, INPUTS], depth[:, INPUTS], K[INPUTS], T[INPUTS], PixelGaussianConfig(**kw))
        ms = (time.perf_counter() - t0) * 1000 / len(rgb)
        out = render(g, T, K, W, H, bg)
        ins = " / ".join(f"{psnr(out[:, c], img[:, c]):.2f}" for c in INPUTS)
        print(f"| {kw or 'defaults (2048)'} | {ins} | {psnr(out[:, 3], img[:, 3]):.2f} | {ms:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
