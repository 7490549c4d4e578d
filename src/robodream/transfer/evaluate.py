"""Evaluate a transfer model on episodes of a task it never saw under a shift.

``robodream eval transfer --transfer RUN --data DS --out DIR`` calls :func:`evaluate_transfer`.
DS is a dataset recorded with the source camera's depth (and segmentation, for appearance
transfer) of a task the run did not train on (refused otherwise: the run saw its tasks under
shifted appearances/cameras). Each of its first ``episodes`` episodes is re-rendered from its
seed under the evaluation shift (default: a random draw per episode seed from ``shift_seed``,
other draws than training's) by :func:`~robodream.transfer.pairs.render_pairs`: the simulator's
own render of the same trajectory is the target. Reported per episode and averaged over
episodes (PSNR in dB and SSIM, :mod:`robodream.eval.metrics`, images in [0, 1]):

* ``model``: the generated frames (``sample_steps`` Euler steps, tokenizer-decoded);
* ``baseline``: appearance transfer: a copy of the source frame (the recording, unshifted
  appearance); view transfer: the forward depth warp of the source frame into the target camera,
  holes black;
* ``tokenizer``: the target re-encoded and decoded, the ceiling of any model over these latents;
* view transfer also ``source_copy`` (the unmoved source frame) and ``hole_fraction``: the warp
  leaves its holes black, as the issue defines the baseline, which costs it more PSNR than the
  copy loses by not moving; a model should beat both;
* ``psnr_gain_db`` = model - baseline, and ``meets_target``: gain >= :data:`TARGET_GAIN_DB`.

Appearance transfer is given frame 0 of the target episode as its reference frame, so frame 0
is not scored (for any row); view transfer scores every frame.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.data.latents import check_datasets
from robodream.data.lerobot import LeRobotDataset
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import psnr_per_image, ssim
from robodream.eval.policy_eval import check_eval_dir
from robodream.tokenizer.model import decode_latents
from robodream.transfer.data import FrameTable, prepare_episode
from robodream.transfer.pairs import check_source, render_pairs
from robodream.transfer.train import load_transfer, training_shift
from robodream.utils.io import atomic_directory, atomic_write_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now

#: The issue's target: each model beats its baseline by this many dB of PSNR on held-out episodes.
TARGET_GAIN_DB = 3.0


def evaluate_transfer(run_dir: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
                      episodes: int = 5, shift: str = "random", shift_seed: int = 1000,
                      shift_scale: float | None = None, sample_steps: int | None = None, seed: int = 0,
                      batch_size: int = 128, device: str = "cpu", overwrite: bool = False) -> dict[str, Any]:
    """Generate ``episodes`` re-rendered episodes of ``data`` and score them; writes
    ``out/results.json`` atomically (an error writes nothing).

    Args:
        run_dir: a transfer run.
        data: dataset of an unseen task with the run's camera, its depth (+ segmentation).
        shift: the evaluation appearance (appearance runs) or static-camera shift (view runs):
            a preset of :mod:`robodream.envs.shift` or ``random`` (a draw per episode seed).
        shift_seed, shift_scale: seed and width of random draws (scale default: the run's).
        sample_steps: Euler steps (default: the model's ``sample_steps``; 1 = conditional mean).
        seed: seeds the sampling noise (episode k uses ``seed + k``).

    Returns:
        The content of results.json (see the module docstring).

    Raises:
        CheckpointError: not a transfer run. DatasetError: a missing camera/depth/segmentation
        feature, an image size other than the run's, a task the run trained on, episodes that
        do not replay. ConfigError: ``episodes`` < 1, unknown shift, ``out`` not empty without ``overwrite``.
    """
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    out = Path(out)
    check_eval_dir(out, overwrite, {"results.json"}, "a transfer evaluation")
    model, tokenizer, run_cfg = load_transfer(run_dir, device=device)
    m = model.cfg
    eval_shift = training_shift(m.kind, run_cfg.get("shift_scale", 1.0) if shift_scale is None else shift_scale,
                                shift_seed, shift)
    ds = LeRobotDataset(data)
    check_datasets([ds], tokenizer, needs=("action",))
    prov = check_source(ds, m.camera, segmentation=m.kind == "appearance")
    if prov["task"] in run_cfg.get("train_seeds", {}):
        raise DatasetError(f"{data} holds {prov['task']} episodes, which the run trained on under shifted "
                           f"{'appearances' if m.kind == 'appearance' else 'cameras'}; evaluate on another task")
    chosen = list(range(min(episodes, ds.num_episodes)))
    steps = sample_steps or m.sample_steps

    t_start = time.perf_counter()
    per_episode: list[dict[str, Any]] = []
    with progress_bar() as progress:
        bar = progress.add_task(f"{m.kind} transfer", total=len(chosen))
        for k, i in enumerate(chosen):
            pair = render_pairs(ds, eval_shift, m.camera, [i], segmentation=m.kind == "appearance",
                                cameras_matrices=m.kind == "view")[0]
            ep = prepare_episode(m.kind, pair, tokenizer)
            per_episode.append({"episode": i, "seed": pair["seed"], "max_state_error": pair["max_state_error"],
                                **score_episode(model, tokenizer, ep, steps, seed + k, batch_size, device)})
            progress.update(bar, advance=1)

    def mean(key: str) -> float:
        return float(np.mean([e[key] for e in per_episode]))

    rows = {r: {"psnr": mean(f"{r}_psnr"), "ssim": mean(f"{r}_ssim")} for r in ("model", "baseline", "tokenizer")}
    gain = rows["model"]["psnr"] - rows["baseline"]["psnr"]
    results = {
        "kind": m.kind, "camera": m.camera, "task": prov["task"], "dataset": str(data), "transfer_run": str(run_dir),
        "shift": {"name": shift, "seed": shift_seed, "scale": eval_shift.appearance_scale if m.kind == "appearance"
                  else eval_shift.camera_shift_scale},
        "baseline_kind": "copy of the source frame" if m.kind == "appearance" else "forward depth warp, holes black",
        "sample_steps": steps, "n_episodes": len(per_episode), "n_frames": int(sum(e["n_frames"] for e in per_episode)),
        "scored_frames": "1 .. T-1 (frame 0 is the reference)" if m.kind == "appearance" else "all",
        **rows, "psnr_gain_db": gain, "target_gain_db": TARGET_GAIN_DB, "meets_target": bool(gain >= TARGET_GAIN_DB),
        "episodes": per_episode, "wall_s": time.perf_counter() - t_start, "created": now(),
        "code": code_version(), "environment": environment_info(),
    }
    if m.kind == "view":  # the unmoved source view: the warp must beat it too to be worth its geometry
        results["hole_fraction"] = mean("hole_fraction")
        results["source_copy"] = {"psnr": mean("source_copy_psnr"), "ssim": mean("source_copy_ssim")}
    with atomic_directory(out, overwrite=out.exists()) as tmp:
        atomic_write_json(tmp / "results.json", results)
    return results


@torch.no_grad()
def score_episode(model, tokenizer, ep: dict[str, Any], steps: int, seed: int, batch_size: int,
                  device) -> dict[str, Any]:
    """PSNR/SSIM of the generated frames, the baseline and the tokenizer ceiling against the
    re-render, over the scored frames of one prepared episode (means over frames)."""
    table = FrameTable([ep])
    T = len(table)
    if model.cfg.kind == "appearance":
        idx = torch.arange(1, T) if T > 1 else torch.arange(0, 1)
        ref = torch.zeros_like(idx)  # frame 0 of the target episode
    else:
        idx = ref = torch.arange(T)
    gen = torch.Generator().manual_seed(seed)
    preds = []
    for j in range(0, len(idx), batch_size):
        b = table.inputs(model, idx[j:j + batch_size], ref[j:j + batch_size], device)
        preds.append(model.generate_frames(b["control"], b["reference"], b.get("pose"), tokenizer.decode,
                                           b.get("pixels"), steps=steps, generator=gen).cpu())
    pred = torch.cat(preds)  # (n, H, W, 3) in [0, 1]
    rows = idx.numpy()
    target = torch.from_numpy(table.target_rgb[rows]).float() / 255
    base = torch.from_numpy(table.baseline_rgb[rows]).float() / 255
    recon = decode_latents(tokenizer, table.x0[idx].to(device))
    out: dict[str, Any] = {"n_frames": len(rows)}
    for name, img in (("model", pred), ("baseline", base), ("tokenizer", recon)):
        out[f"{name}_psnr"] = float(psnr_per_image(img, target).mean())
        out[f"{name}_ssim"] = float(ssim(img, target))
    if model.cfg.kind == "view":
        out["hole_fraction"] = float(table.hole[rows].mean())
        copy = torch.from_numpy(table.source_rgb[rows]).float() / 255
        out["source_copy_psnr"], out["source_copy_ssim"] = float(psnr_per_image(copy, target).mean()), float(ssim(copy, target))
    return out


