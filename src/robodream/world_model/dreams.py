"""Dreamed demonstrations: action-free world-model rollouts from new initial states, labelled by
the inverse-dynamics model (the "Dreamer" part of GigaWorld-0's data engine, arXiv 2511.19861;
the recipe of DreamGen, arXiv 2505.12705, Sec. 3: generate video from an initial frame and an
instruction, label it with an IDM, filter, train the policy on it).

``robodream generate --kind dream --world-model WM --idm IDM --task TASK --episodes N --out OUT``
calls :func:`generate_dreams`. For episode k:

1. the simulator is reset with seed ``seed_start + k`` (seeds neither run trained on) and renders
   the first frame of every camera, and gives the state at frame 0: this is the only thing the
   simulator contributes (the "photo of a new scene" a real robot would take);
2. the world model dreams ``steps - 1`` further frames from it, conditioned on the task
   instruction only (``frame_actions=None``: the action-free mode trained with
   ``action_drop_prob > 0``), chunk after chunk;
3. the IDM labels the dreamed video: the action of every step, the state after it (its state
   head) and the probability that the task reports success after it (its success head);
4. filtering (``filter``): ``success`` keeps a dream only if the success head passes
   ``success_threshold`` at some step, and cuts it ``post_success_steps`` after the first such
   step (as ``collect`` records real demonstrations); ``none`` keeps every dream whole.

The world model must predict every env step (``frame_stride`` 1), so that every frame of the
dataset is dreamed and every action labelled from the frames it moved between; both runs must
share the tokenizer (the IDM reads the world model's latents). The output is a LeRobot v3.0
dataset (frames decoded by the tokenizer, ``observation.state`` and ``action`` from the IDM,
``next.success`` = the success head above the threshold) with ``meta/robodream.json``
recording ``synthetic: dream``, the runs, seeds, filter and per-episode success probability.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.data.collect import PROVENANCE_FILE, dataset_provenance
from robodream.data.lerobot import LeRobotDataset
from robodream.data.lerobot_writer import LeRobotDatasetWriter
from robodream.envs.meta_world import (
    ACTION_NAMES,
    FPS,
    EnvConfig,
    MetaWorldEnv,
    check_task,
    state_names,
    task_instruction,
)
from robodream.errors import ConfigError, DatasetError
from robodream.idm.modeling import label_video
from robodream.idm.train import load_idm
from robodream.tokenizer.model import decode_latents, encode_frames
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, now
from robodream.world_model.evaluate import task_condition
from robodream.world_model.train import load_world_model

#: How dreams are filtered (module docstring).
FILTERS = ("success", "none")


def generate_dreams(world_model: str | os.PathLike, idm: str | os.PathLike, task: str, out: str | os.PathLike, *,
                    episodes: int = 50, steps: int = 128, seed_start: int = 3_000_000, filter: str = "success",
                    success_threshold: float = 0.5, post_success_steps: int = 16, batch_size: int = 8,
                    sample_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                    device: str = "cpu", video_codec: str = "h264", overwrite: bool = False) -> dict[str, Any]:
    """Dream ``episodes`` episodes of ``task`` and write those the filter keeps to the dataset ``out``.

    Args:
        world_model: a world-model run with ``frame_stride`` 1 trained with ``action_drop_prob`` > 0.
        idm: an IDM run with the world model's tokenizer and cameras, with a state head (and a
            success head for ``filter="success"``).
        task: the Meta-World task (its instruction conditions the dream).
        episodes: dreams to generate; ``steps``: frames per dream (the first one rendered).
        seed_start: env seed of dream 0 (dream k: ``seed_start + k``); must not be a seed the
            runs trained on.
        filter, success_threshold, post_success_steps: see the module docstring.
        batch_size: dreams rolled out together; sample_steps, guidance_scale: of the world model
            (default: its own); seed: the dream noise (the same seed gives the same dataset).
        video_codec: of the written videos.

    Returns:
        A summary: ``out``, ``n_dreamed``, ``n_kept``, ``n_frames``, ``wall_s``, ``provenance``.

    Raises:
        UnknownTaskError: ``task`` is not a Meta-World task.
        ConfigError: bad counts or filter, a world model with ``frame_stride`` != 1 or never
            trained action-free, an IDM without the heads the filter needs, runs with different
            tokenizers or cameras, seeds the runs trained on.
        CheckpointError: a run of another kind.
        DatasetError: ``out`` exists (without ``overwrite``), or the filter kept no dream.
    """
    check_task(task)
    if episodes < 1 or steps < 2 or batch_size < 1:
        raise ConfigError(f"--episodes, --batch-size must be >= 1 and --steps >= 2, got {episodes}, {batch_size}, "
                          f"{steps}")
    if filter not in FILTERS:
        raise ConfigError(f"unknown filter {filter!r}; choose one of {', '.join(FILTERS)}")
    wm, tok, wm_cfg = load_world_model(world_model, device=device)
    labeller, idm_tok, idm_cfg = load_idm(idm, device=device)
    _check_pair(wm, tok, wm_cfg, labeller, idm_tok, idm_cfg, filter, world_model, idm)
    seeds = list(range(seed_start, seed_start + episodes))
    used = _training_seeds(task, wm_cfg, idm_cfg) & set(seeds)
    if used:
        raise ConfigError(f"seeds {sorted(used)[:5]} of --seed-start {seed_start} are training seeds of the runs; "
                          "dreams start from new initial states")
    env_info = idm_cfg.get("env", {})
    proprio = tuple(env_info.get("proprio", ("hand", "gripper")))
    env_cfg = EnvConfig(task=task, cameras=wm.cfg.cameras, image_size=wm.cfg.image_size, proprio=proprio,
                        max_steps=int(env_info.get("max_steps", 500)))
    if len(state_names(proprio)) != labeller.cfg.state_dim:
        raise ConfigError(f"the IDM predicts {labeller.cfg.state_dim} state numbers but its env's proprio {proprio} "
                          f"has {len(state_names(proprio))}")
    instruction = task_instruction(task)
    task_index, text = task_condition(wm, instruction, device)
    n_chunks = math.ceil((steps - 1) / wm.cfg.chunk_steps)

    t0 = time.perf_counter()
    out = Path(out)
    writer = LeRobotDatasetWriter(
        out, fps=FPS, robot_type="sawyer", state_names=list(state_names(proprio)), action_names=list(ACTION_NAMES),
        cameras=list(wm.cfg.cameras), image_size=(wm.cfg.image_size, wm.cfg.image_size), video_codec=video_codec,
        extra_features={"next.success": {"dtype": "bool", "shape": [1], "names": None}}, overwrite=overwrite)
    kept_seeds, kept_prob, dropped, lengths = [], [], [], []
    gen = torch.Generator().manual_seed(seed)
    env = MetaWorldEnv(env_cfg)
    try:
        with writer, progress_bar() as progress:
            bar = progress.add_task(f"dream {task}", total=episodes)
            for b0 in range(0, episodes, batch_size):
                batch = seeds[b0:b0 + batch_size]
                first = [env.reset(s) for s in batch]
                images = np.stack([o.images for o in first])  # (B, N, H, W, 3)
                B, N = images.shape[:2]
                ctx = encode_frames(tok, images.reshape(B * N, *images.shape[2:])).to(device)
                ctx = ctx.view(B, 1, N, *ctx.shape[1:]).expand(-1, wm.cfg.n_context_frames, -1, -1, -1, -1)
                lat = wm.rollout(ctx.contiguous(), None, task_index.expand(B), n_chunks,
                                 None if text is None else text.expand(B, -1), n_steps=sample_steps,
                                 guidance_scale=guidance_scale, generator=gen)  # (B, n_chunks * F, N, C, h, w)
                video = torch.cat([ctx[:, -1:], lat], 1)[:, :steps]  # (B, steps, N, C, h, w)
                for j, s in enumerate(batch):
                    lab = label_video(labeller, video[j], torch.from_numpy(first[j].state).to(device))
                    T, prob = steps, None
                    if "success_prob" in lab:
                        prob = lab["success_prob"].cpu().numpy()
                    if filter == "success":
                        hit = np.flatnonzero(prob >= success_threshold)
                        if not len(hit):
                            dropped.append(s)
                            progress.update(bar, advance=1)
                            continue
                        T = min(steps, int(hit[0]) + 1 + post_success_steps)
                    frames = (decode_latents(tok, video[j, :T].flatten(0, 1)).clamp(0, 1) * 255).round()
                    frames = frames.to(torch.uint8).cpu().numpy().reshape(T, N, *frames.shape[1:])
                    success = (prob[:T] >= success_threshold) if prob is not None else np.zeros(T, bool)
                    writer.add_episode(task=instruction, state=lab["state"][:T].cpu().numpy(),
                                       action=lab["action"][:T].cpu().numpy(),
                                       images={c: frames[:, i] for i, c in enumerate(wm.cfg.cameras)},
                                       extra={"next.success": success})
                    kept_seeds.append(s)
                    kept_prob.append(float(prob.max()) if prob is not None else None)
                    lengths.append(T)
                    progress.update(bar, advance=1)
            if not kept_seeds:
                raise DatasetError(f"the {filter} filter kept none of the {episodes} dreams of {task} (success head "
                                   f"never reached {success_threshold}); nothing written")
            provenance = {
                "created": now(), "code": code_version(), "synthetic": "dream", "source": str(world_model),
                "env": {"task": task, "cameras": list(env_cfg.cameras), "image_size": env_cfg.image_size,
                        "max_steps": env_cfg.max_steps, "proprio": list(proprio)},
                "task": task, "seeds": kept_seeds, "discarded_seeds": dropped,
                "models": {"world_model": str(world_model), "idm": str(idm)},
                "filter": {"name": filter, "success_threshold": success_threshold,
                           "post_success_steps": post_success_steps, "max_success_prob": kept_prob},
                "steps": steps, "sample_steps": sample_steps, "guidance_scale": guidance_scale, "seed": seed,
            }
            writer.write_meta_json(PROVENANCE_FILE, provenance)
    finally:
        env.close()
    return {"out": str(out), "n_dreamed": episodes, "n_kept": len(kept_seeds), "n_frames": int(sum(lengths)),
            "wall_s": time.perf_counter() - t0, "provenance": provenance}


def _check_pair(wm, tok, wm_cfg: dict, idm, idm_tok, idm_cfg: dict, filter: str, wm_run, idm_run) -> None:
    """One-line ConfigErrors for a world model and an IDM that cannot make dreams together."""
    if wm.cfg.frame_stride != 1:
        raise ConfigError(f"{wm_run} predicts a frame every {wm.cfg.frame_stride} env steps; dreams need every step "
                          "(train the world model with --model.frame-stride 1)")
    if wm.cfg.action_drop_prob <= 0:
        raise ConfigError(f"{wm_run} was never trained without actions (action_drop_prob 0), so it cannot dream "
                          "action-free (train it with --model.action-drop-prob > 0)")
    if tuple(idm.cfg.cameras) != tuple(wm.cfg.cameras) or idm.cfg.image_size != wm.cfg.image_size:
        raise ConfigError(f"{idm_run} reads cameras {list(idm.cfg.cameras)} at {idm.cfg.image_size} px; {wm_run} "
                          f"dreams {list(wm.cfg.cameras)} at {wm.cfg.image_size} px")
    a, b = tok.state_dict(), idm_tok.state_dict()
    if a.keys() != b.keys() or any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a):
        raise ConfigError(f"{wm_run} and {idm_run} were trained with different tokenizers; the IDM must read the "
                          "world model's latents")
    if not idm.cfg.predict_state:
        raise ConfigError(f"{idm_run} has no state head (predict_state); a dream needs the state of every frame")
    if filter == "success" and not idm.cfg.predict_success:
        raise ConfigError(f"{idm_run} has no success head (predict_success); use --filter none or retrain it")
    if idm.cfg.action_dim != wm.cfg.action_dim:
        raise ConfigError(f"{idm_run} labels {idm.cfg.action_dim}-dim actions, {wm_run} takes {wm.cfg.action_dim}")


def _training_seeds(task: str, wm_cfg: dict, idm_cfg: dict) -> set[int]:
    """Env seeds of ``task`` the runs trained on: the IDM's record, and the world model's datasets'
    provenance where they can still be read."""
    seeds = set(idm_cfg.get("train_seeds", {}).get(task, []))
    for path in wm_cfg.get("data", []):
        try:
            prov = dataset_provenance(LeRobotDataset(path))
        except DatasetError:
            continue
        if prov and prov.get("task") == task:
            seeds |= set(prov.get("seeds", []))
    return seeds
