"""How far does AppearanceTransfer's closed-form prior go without learning? (issue 14)

Scores, on held-out episodes of a real dataset re-rendered by the simulator under random
appearances (the targets ``eval transfer`` uses), three guesses of each frame 1..T-1 with frame 0
of the target as the reference: a copy of the source frame (the issue's baseline), the reference
pasted where the pixel shows the same class (the source elsewhere), and the full prior
(:func:`robodream.transfer.modeling.appearance_prior`: + per-class recolouring elsewhere).

    MUJOCO_GL=egl python benchmarks/scripts/appearance_prior.py DATASET [--episodes 5] [--shift-seed 1000]

Prints a table (mean PSNR in dB per camera) and writes it as JSON next to the numbers in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from robodream.data.lerobot import LeRobotDataset
from robodream.eval.metrics import psnr_per_image
from robodream.transfer.modeling import appearance_prior
from robodream.transfer.pairs import render_pairs
from robodream.transfer.train import training_shift
from robodream.utils.run import code_version, environment_info, now


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--shift-seed", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--out", default="benchmarks/appearance_prior.json")
    args = ap.parse_args()
    ds = LeRobotDataset(args.dataset)
    shift = training_shift("appearance", args.scale, args.shift_seed)
    table = {}
    for cam in ds.cameras:
        rows: dict[str, list[float]] = {"copy": [], "paste_same_class": [], "prior": []}
        for p in render_pairs(ds, shift, cam, list(range(min(args.episodes, ds.num_episodes))), segmentation=True):
            src, tgt, seg = (torch.from_numpy(p[k]) for k in ("source_rgb", "target_rgb", "source_segmentation"))
            n = len(src) - 1
            ref, ref_seg, src_ref = tgt[:1].expand(n, -1, -1, -1), seg[:1].expand(n, -1, -1), src[:1].expand(n, -1, -1, -1)
            prior, same = appearance_prior(src[1:], seg[1:], ref, ref_seg, src_ref)
            target = tgt[1:].float() / 255
            paste = same * ref.permute(0, 3, 1, 2).float() / 255 + (1 - same) * src[1:].permute(0, 3, 1, 2).float() / 255
            for name, img in (("copy", src[1:].float() / 255), ("paste_same_class", paste.permute(0, 2, 3, 1)),
                              ("prior", prior.permute(0, 2, 3, 1))):
                rows[name].append(float(psnr_per_image(img, target).mean()))
        table[cam] = {k: float(np.mean(v)) for k, v in rows.items()}
        print(f"{cam:>14}: " + "  ".join(f"{k} {v:.2f} dB" for k, v in table[cam].items()))
    with open(args.out, "w") as f:
        json.dump({"created": now(), "code": code_version(), "environment": environment_info(),
                   "dataset": args.dataset, "episodes": args.episodes, "shift_seed": args.shift_seed,
                   "scale": args.scale, "psnr_db": table}, f, indent=2)


if __name__ == "__main__":
    main()
