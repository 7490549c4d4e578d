"""Dreaming and evaluation of a trained video world model.

* :func:`dream` — ``robodream dream``: start from real frames of an episode and roll the model
  out autoregressively under the episode's actions (or actions from a file), writing an MP4
  with the ground truth above the dream when it exists.
* :func:`evaluate_world_model` — ``robodream eval world-model``: on held-out episodes, PSNR
  and SSIM of the predicted frames against the real frames per prediction horizon, the
  copy-last-frame baseline, and *action controllability*: the same start frames rolled out
  with the true actions and with another episode's actions; the gap (dB) says how much the
  prediction depends on the actions. For a model with a value frame (GigaBrain-0.5M*'s value
  world model, RAMP, arXiv 2602.12099) also the value quality (:func:`value_quality`): Kendall
  tau and mean absolute error between predicted values and Monte-Carlo returns.
* :func:`evaluate_value` — the value quality alone (``bench rl``'s state+value vs value-only
  Kendall tau on rollouts neither model trained on).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from robodream.data.latents import split_episodes
from robodream.data.lerobot import LeRobotDataset
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import kendall_tau, psnr_per_image, ssim
from robodream.eval.video import write_mp4
from robodream.rl.advantages import discounted_returns
from robodream.tokenizer.model import ImageTokenizer, decode_latents, encode_frames
from robodream.utils.io import atomic_write_json
from robodream.utils.run import code_version, environment_info, now
from robodream.world_model.modeling import VideoWorldModel
from robodream.world_model.train import check_rewards, load_world_model


# ----------------------------------------------------------------------------- helpers
def check_dataset(ds: LeRobotDataset, model: VideoWorldModel) -> None:
    """Raise a one-line DatasetError when ``ds`` cannot feed the model (cameras, actions, image size)."""
    cfg = model.cfg
    missing = [c for c in cfg.cameras if c not in ds.cameras]
    if missing:
        raise DatasetError(f"{ds.root} lacks camera(s) {missing} that the world model was trained on "
                           f"(it has {ds.cameras})")
    if ds.action_dim != cfg.action_dim:
        raise DatasetError(f"{ds.root} has {ds.action_dim}-dim actions but the world model expects {cfg.action_dim}")
    if ds.image_size != (cfg.image_size, cfg.image_size):
        raise DatasetError(f"{ds.root} has {ds.image_size[0]}x{ds.image_size[1]} images but the world model expects "
                           f"{cfg.image_size}x{cfg.image_size}")


def episode_frames(ds: LeRobotDataset, i: int, cameras: tuple[str, ...]) -> np.ndarray:
    """(T, N, H, W, 3) uint8 frames of episode ``i``, cameras in model order."""
    return np.stack([ds.frames(i, c) for c in cameras], axis=1)


def side_by_side(x: torch.Tensor) -> torch.Tensor:
    """(..., N, H, W, 3) -> (..., H, N * W, 3): cameras left to right."""
    return torch.cat(x.unbind(-4), dim=-2)


def task_condition(model: VideoWorldModel, task: str, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(task_index (1,), text_emb (1, text_dim) or None) for an instruction string.

    Known tasks use their stored row and text embedding; an unknown instruction uses the
    null task row and, when the model has text conditioning, its freshly encoded text.
    """
    tasks = model.cfg.tasks
    if task in tasks:
        return torch.tensor([tasks.index(task)], device=device), None
    text = None
    if model.cfg.text_dim:
        from robodream.models.text import encode_texts

        text = encode_texts([task], model.cfg.text_encoder).to(device)
    return torch.tensor([len(tasks)], device=device), text


def batch_condition(model: VideoWorldModel, tasks: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(task_index (B,), text_emb (B, text_dim) or None) of a batch of instructions (:func:`task_condition`)."""
    cond = [task_condition(model, t, device) for t in tasks]
    task_index = torch.cat([c[0] for c in cond])
    text = None if all(c[1] is None for c in cond) else torch.cat([
        c[1] if c[1] is not None else model.text_table[c[0]] for c in cond])
    return task_index, text


def clamped(x: np.ndarray, start: int, stop: int) -> np.ndarray:
    """``x[start:stop]`` with indices clamped into ``[0, len(x) - 1]`` (edge rows repeat)."""
    return x[np.clip(np.arange(start, stop), 0, len(x) - 1)]


def read_actions(path: Path, action_dim: int) -> np.ndarray:
    """Actions (A, Da) float32 from ``.npy``, ``.json`` (list of lists) or ``.csv`` (one step per row)."""
    try:
        if path.suffix == ".npy":
            a = np.load(path, allow_pickle=False)
        elif path.suffix == ".json":
            import json

            a = np.asarray(json.loads(path.read_text()), dtype=np.float32)
        else:
            a = np.loadtxt(path, delimiter=",", dtype=np.float32, ndmin=2)
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read actions from {path}: {e}") from e
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[1] != action_dim:
        raise ConfigError(f"{path} holds actions of shape {a.shape}; the world model expects (steps, {action_dim})")
    return a


def parse_episode(spec: str) -> tuple[Path, int]:
    """``"DIR:INDEX"`` -> (DIR, INDEX)."""
    root, sep, index = spec.rpartition(":")
    if not sep or not root:
        raise ConfigError(f"--episode must be DIR:INDEX, got {spec!r}")
    try:
        return Path(root), int(index)
    except ValueError:
        raise ConfigError(f"--episode must be DIR:INDEX with an integer index, got {spec!r}") from None


# ----------------------------------------------------------------------------- dream
def dream(run_dir: str | os.PathLike, episode: str, out: str | os.PathLike, *, steps: int,
          actions_file: str | os.PathLike | None = None, start: int = 0, n_steps: int | None = None,
          guidance_scale: float | None = None, seed: int = 0, device: str = "cpu") -> dict:
    """Roll the world model out from frame ``start`` of an episode for ``steps`` env steps; write an MP4.

    Args:
        episode: ``"DIR:INDEX"``.
        actions_file: actions from ``start`` on (``.npy``, ``.json`` or ``.csv``, (A, Da));
            default: the episode's own actions (then the ground truth is shown above the dream).

    Returns:
        ``{"out", "frames", "chunks", "frame_stride", "psnr_by_frame" (vs ground truth, or [])}``.

    Raises:
        DatasetError: bad dataset, missing camera, action dimension or episode index.
        ConfigError: a malformed episode spec or actions file.
    """
    model, tokenizer, _ = load_world_model(run_dir, device=device)
    cfg = model.cfg
    root, index = parse_episode(episode)
    ds = LeRobotDataset(root)
    check_dataset(ds, model)
    ep = ds.episode(index)
    if not 0 <= start < ep.length:
        raise ConfigError(f"--start {start} is outside episode {index} ({ep.length} frames)")
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    S, hist = cfg.frame_stride, (cfg.n_context_frames - 1) * cfg.frame_stride
    n_chunks = math.ceil(steps / cfg.chunk_steps)
    need = n_chunks * cfg.chunk_steps
    frames = episode_frames(ds, index, cfg.cameras)  # (T, N, H, W, 3)
    past = clamped(ep.action, start - hist, start)
    if actions_file is not None:
        future = read_actions(Path(actions_file), cfg.action_dim)
        if len(future) < steps:
            raise ConfigError(f"{actions_file} has {len(future)} actions but --steps {steps} needs {steps}")
        future = clamped(future, 0, need)
    else:
        future = clamped(ep.action, start, start + need)
    actions = torch.from_numpy(np.concatenate([past, future])).to(device)[None]
    ctx_steps = [start - hist + k * S for k in range(cfg.n_context_frames)]
    context = encode_frames(tokenizer, frames[np.clip(ctx_steps, 0, ep.length - 1)])[None]  # (1, n_ctx, N, C, h, w)
    task_index, text = task_condition(model, ep.task, device)
    gen = torch.Generator().manual_seed(seed)
    pred = model.rollout(context, model.normalize_action(actions), task_index, n_chunks, text, n_steps=n_steps,
                         guidance_scale=guidance_scale, generator=gen)[0]  # (K, N, C, h, w)
    n_out = steps // S
    images = side_by_side(decode_latents(tokenizer, pred[:n_out]))  # (K, H, N*W, 3)
    first = side_by_side(torch.from_numpy(frames[start]).float() / 255.0)[None]
    video = torch.cat([first, images])  # the real start frame, then the dream
    psnrs: list[float] = []
    if actions_file is None:  # ground truth exists: show it above the dream
        gt_steps = [start + k * S for k in range(n_out + 1)]
        gt = torch.stack([side_by_side(torch.from_numpy(frames[s]).float() / 255.0) if s < ep.length
                          else torch.zeros_like(video[0]) for s in gt_steps])
        valid = [k for k, s in enumerate(gt_steps[1:], 1) if s < ep.length]
        psnrs = psnr_per_image(video[valid], gt[valid]).tolist() if valid else []
        sep = torch.ones(len(video), 2, video.shape[2], 3)
        video = torch.cat([gt, sep, video], dim=1)
    out = Path(out)
    write_mp4(out, (video.numpy() * 255).round().astype(np.uint8), fps=max(1, round(ds.fps / S)))
    return {"out": str(out), "frames": len(video), "chunks": n_chunks, "frame_stride": S, "psnr_by_frame": psnrs}


# ----------------------------------------------------------------------------- evaluation
def heldout_episodes(ds: LeRobotDataset, run_cfg: dict) -> list[int]:
    """Episodes of ``ds`` never trained on: the held-out split of a training dataset, else all."""
    trained = {Path(p).resolve() for p in run_cfg.get("data", [])}
    if ds.root.resolve() in trained:
        return split_episodes(ds.num_episodes, run_cfg.get("heldout_fraction", 0.1))[1]
    return list(range(ds.num_episodes))


def heldout_episode_data(model: VideoWorldModel, run_cfg: dict, data: list[str | os.PathLike], max_episodes: int,
                         min_length: int) -> list[dict]:
    """Up to ``max_episodes`` episodes of ``data`` never trained on (:func:`heldout_episodes`,
    round-robin over the datasets) of at least ``min_length`` frames, as dicts: ``ds``,
    ``index``, ``task``, ``action`` (T, Da), ``frames`` (T, N, H, W, 3) uint8 and, for a
    value-frame model, ``returns`` (T,) (discounted with the model's ``gamma``).

    Raises:
        DatasetError: a dataset the model cannot read (cameras, action dimension, image size,
            no next.reward for a value-frame model).
    """
    cfg = model.cfg
    episodes = []  # (dataset, index)
    per_ds = []
    for d in data:
        ds = LeRobotDataset(d)
        check_dataset(ds, model)
        check_rewards([ds], cfg)
        per_ds.append((ds, heldout_episodes(ds, run_cfg)))
    while len(episodes) < max_episodes and any(eps for _, eps in per_ds):  # round-robin over datasets
        for ds, eps in per_ds:
            if eps and len(episodes) < max_episodes:
                i = eps.pop(0)
                if ds.episode_lengths[i] >= min_length:
                    episodes.append((ds, i))
    eps_data = []
    for ds, i in episodes:
        ep = ds.episode(i)
        eps_data.append({"ds": ds, "index": i, "task": ep.task, "action": ep.action,
                         "frames": episode_frames(ds, i, cfg.cameras)})
        if cfg.n_value_frames:
            eps_data[-1]["returns"] = discounted_returns(ep.extra["next.reward"].reshape(-1), cfg.gamma)
    return eps_data


@torch.no_grad()
def evaluate_world_model(run_dir: str | os.PathLike, data: list[str | os.PathLike], out: str | os.PathLike, *,
                         max_episodes: int = 20, anchors_per_episode: int = 4, n_chunks: int = 1,
                         n_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                         device: str = "cpu", batch_size: int = 32) -> dict:
    """Prediction quality and action controllability on held-out episodes; writes ``out/results.json`` and PNGs.

    For every held-out episode, ``anchors_per_episode`` start frames (evenly spaced) are
    rolled out ``n_chunks`` chunks with (a) the episode's actions and (b) the actions of
    another held-out episode from the same step, with the same noise. Metrics are per
    prediction horizon (env steps ``S, 2S, ...``) against the real frames (cameras side by
    side). ``controllability_gap_db`` = mean over horizons of PSNR(true) - PSNR(foreign).

    With a value frame, ``value_kendall_tau``, ``value_mae`` and ``value_n_frames`` of
    :func:`value_quality` on every frame of the same episodes where a clip fits.

    Raises:
        DatasetError: a dataset the model cannot read (cameras, action dimension, image
            size, no next.reward for a value-frame model), or no held-out episode long enough
            for one clip.
    """
    t0 = time.perf_counter()
    model, tokenizer, run_cfg = load_world_model(run_dir, device=device)
    cfg = model.cfg
    S, hist = cfg.frame_stride, (cfg.n_context_frames - 1) * cfg.frame_stride
    span = n_chunks * cfg.chunk_steps
    eps_data = heldout_episode_data(model, run_cfg, data, max_episodes, hist + span + 1)
    if not eps_data:
        raise DatasetError(f"no held-out episode is longer than one clip ({hist + span + 1} frames)")
    clips = []  # (episode position, anchor step)
    for e, ed in enumerate(eps_data):
        T = len(ed["action"])
        anchors = np.unique(np.linspace(hist, T - 1 - span, anchors_per_episode).round().astype(int))
        clips += [(e, int(a)) for a in anchors]
    n_ep = len(eps_data)

    def actions_of(e: int, a: int) -> np.ndarray:
        return clamped(eps_data[e]["action"], a - hist, a + span)

    K = n_chunks * cfg.n_future_frames
    res = {k: [] for k in ("true", "foreign", "copy", "true_ssim", "foreign_ssim", "copy_ssim", "tok")}
    samples = []
    gen_seed = seed
    for b0 in range(0, len(clips), batch_size):
        part = clips[b0:b0 + batch_size]
        ctx_frames = np.stack([eps_data[e]["frames"][[a - hist + k * S for k in range(cfg.n_context_frames)]]
                               for e, a in part])  # (B, n_ctx, N, H, W, 3)
        context = encode_frames(tokenizer, ctx_frames)
        # Foreign actions: the next held-out episode (cyclically), from the same step, clamped.
        foreign_ep = [(e + 1) % n_ep if n_ep > 1 else e for e, _ in part]
        foreign_at = [a if n_ep > 1 else (a + len(eps_data[e]["action"]) // 2) % len(eps_data[e]["action"])
                      for e, a in part]
        true_a = torch.from_numpy(np.stack([actions_of(e, a) for e, a in part])).to(device)
        foreign_a = torch.from_numpy(np.stack([actions_of(f, a) for f, a in zip(foreign_ep, foreign_at)])).to(device)
        task_index, text = batch_condition(model, [eps_data[e]["task"] for e, _ in part], device)
        preds = []
        for acts in (true_a, foreign_a):
            gen = torch.Generator().manual_seed(gen_seed)  # the same noise for both action sequences
            z = model.rollout(context, model.normalize_action(acts), task_index, n_chunks, text, n_steps=n_steps,
                              guidance_scale=guidance_scale, generator=gen)
            preds.append(side_by_side(decode_latents(tokenizer, z)))  # (B, K, H, N*W, 3)
        gen_seed += 1
        gt = torch.from_numpy(np.stack([eps_data[e]["frames"][[min(a + k * S, len(eps_data[e]["action"]) - 1)
                                                                for k in range(K + 1)]] for e, a in part]))
        gt = side_by_side(gt.float() / 255.0)  # (B, K + 1, H, N*W, 3); index 0 = anchor frame
        tok = side_by_side(decode_latents(tokenizer, encode_frames(
            tokenizer, np.stack([eps_data[e]["frames"][a] for e, a in part]))))
        res["tok"].append(psnr_per_image(tok, gt[:, 0]))
        for name, p in (("true", preds[0]), ("foreign", preds[1]), ("copy", gt[:, :1].expand(-1, K, -1, -1, -1))):
            res[name].append(torch.stack([psnr_per_image(p[:, k], gt[:, k + 1]) for k in range(K)], 1))  # (B, K)
            res[f"{name}_ssim"].append(torch.stack([
                torch.stack([ssim(p[j:j + 1, k], gt[j:j + 1, k + 1]) for j in range(len(part))]) for k in range(K)], 1))
        if len(samples) < 4:
            samples += [(gt[j], preds[0][j], preds[1][j]) for j in range(min(4 - len(samples), len(part)))]
    r = {k: torch.cat(v).numpy() for k, v in res.items()}
    horizons = [S * (k + 1) for k in range(K)]
    gap = r["true"].mean(0) - r["foreign"].mean(0)
    per_chunk = cfg.n_future_frames
    results = {
        "created": now(), "world_model": str(run_dir), "data": [str(d) for d in data],
        "horizons_steps": horizons,
        "psnr_by_horizon": r["true"].mean(0).tolist(),
        "ssim_by_horizon": r["true_ssim"].mean(0).tolist(),
        "copy_last_frame_psnr_by_horizon": r["copy"].mean(0).tolist(),
        "copy_last_frame_ssim_by_horizon": r["copy_ssim"].mean(0).tolist(),
        "foreign_actions_psnr_by_horizon": r["foreign"].mean(0).tolist(),
        "foreign_actions_ssim_by_horizon": r["foreign_ssim"].mean(0).tolist(),
        "controllability_gap_db_by_horizon": gap.tolist(),
        "controllability_gap_db": float(gap.mean()),
        "next_chunk_psnr": float(r["true"][:, :per_chunk].mean()),
        "next_chunk_copy_last_frame_psnr": float(r["copy"][:, :per_chunk].mean()),
        "tokenizer_psnr": float(r["tok"].mean()),  # ceiling: real frame vs its own reconstruction
        "n_episodes": n_ep, "n_clips": len(clips), "n_chunks": n_chunks,
        "n_sampling_steps": n_steps or cfg.n_sampling_steps,
        "guidance_scale": cfg.guidance_scale if guidance_scale is None else guidance_scale,
        "seed": seed, "device": str(device),
    }
    if cfg.n_value_frames:
        results.update(value_quality(model, tokenizer, eps_data, n_steps=n_steps, guidance_scale=guidance_scale,
                                     seed=seed, device=device, batch_size=batch_size))
    results.update({"wall_s": time.perf_counter() - t0, "code": code_version(), "environment": environment_info()})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "results.json", results)
    plot_metrics(results, out / "metrics_by_horizon.png")
    save_sample_grid(samples, out / "samples.png")
    return results


@torch.no_grad()
def value_quality(model: VideoWorldModel, tokenizer: ImageTokenizer, episodes: list[dict], *,
                  n_steps: int | None = None, guidance_scale: float | None = None, seed: int = 0,
                  device: str = "cpu", batch_size: int = 32) -> dict:
    """Value quality of a value-frame world model, the metric of GigaBrain-0.5M* (RAMP, arXiv 2602.12099).

    On every frame ``t`` of ``episodes`` where a clip fits (``t - (n_context_frames - 1) S >= 0``
    and ``t + n`` inside the episode, ``n = chunk_steps``), the model predicts ``V(s_{t+n})``
    from the real context frames and actions (:meth:`VideoWorldModel.predict_value`, the full
    denoising, batched); the truth is the Monte-Carlo return ``G_{t+n}``.

    Args:
        episodes: dicts with ``frames`` (T, N, H, W, 3) uint8, ``action`` (T, Da), ``task`` and
            ``returns`` (T,) discounted returns (``gamma`` of the model).

    Returns:
        ``value_kendall_tau`` (None when undefined: fewer than two frames or constant values),
        ``value_mae`` (return units; None without frames), ``value_n_frames``.
    """
    cfg = model.cfg
    S, n = cfg.frame_stride, cfg.chunk_steps
    hist = (cfg.n_context_frames - 1) * S
    latents = [encode_frames(tokenizer, ed["frames"]) for ed in episodes]  # (T, N, C, h, w) each
    items = [(e, t) for e, ed in enumerate(episodes) for t in range(hist, len(ed["action"]) - n)]
    gen = torch.Generator().manual_seed(seed)
    pred, true = [], []
    for b0 in range(0, len(items), batch_size):
        part = items[b0:b0 + batch_size]
        context = torch.stack([latents[e][t - hist:t + 1:S] for e, t in part])  # (B, n_ctx, N, C, h, w)
        acts = torch.from_numpy(np.stack([episodes[e]["action"][t - hist:t + n] for e, t in part])).to(device)
        acts = model.normalize_action(acts).reshape(len(part), cfg.n_frames - 1, S, cfg.action_dim)
        task_index, text = batch_condition(model, [episodes[e]["task"] for e, _ in part], device)
        pred.append(model.predict_value(context, acts, task_index, text, n_steps=n_steps,
                                        guidance_scale=guidance_scale, generator=gen).cpu())
        true += [float(episodes[e]["returns"][t + n]) for e, t in part]
    p = torch.cat(pred).double().numpy() if pred else np.zeros(0)
    g = np.asarray(true, dtype=np.float64)
    return {"value_kendall_tau": kendall_tau(p, g), "value_mae": float(np.abs(p - g).mean()) if len(g) else None,
            "value_n_frames": len(g)}


@torch.no_grad()
def evaluate_value(run_dir: str | os.PathLike, data: list[str | os.PathLike], *, max_episodes: int = 20,
                   n_steps: int | None = None, seed: int = 0, device: str = "cpu", batch_size: int = 32) -> dict:
    """Only the value quality of :func:`evaluate_world_model` (:func:`value_quality`: Kendall tau
    and MAE of predicted values against Monte-Carlo returns) of a value-frame world-model run,
    on the same choice of episodes: up to ``max_episodes`` episodes of ``data`` it never trained on.

    Returns:
        ``value_kendall_tau`` (None with fewer than two frames where a clip fits), ``value_mae``,
        ``value_n_frames``, ``n_episodes``, ``value_frame``, ``world_model``, ``seed``, ``wall_s``.

    Raises:
        ConfigError: a world model without a value frame.
        DatasetError: a dataset the model cannot read (as :func:`evaluate_world_model`).
    """
    t0 = time.perf_counter()
    model, tokenizer, run_cfg = load_world_model(run_dir, device=device)
    cfg = model.cfg
    if not cfg.n_value_frames:
        raise ConfigError(f"{run_dir} has no value frame (value_frame={cfg.value_frame!r}): nothing to evaluate")
    min_length = (cfg.n_context_frames - 1) * cfg.frame_stride + cfg.chunk_steps + 1  # one frame where a clip fits
    eps_data = heldout_episode_data(model, run_cfg, data, max_episodes, min_length)
    r = value_quality(model, tokenizer, eps_data, n_steps=n_steps, seed=seed, device=device, batch_size=batch_size)
    return {**r, "n_episodes": len(eps_data), "value_frame": cfg.value_frame, "world_model": str(run_dir),
            "seed": seed, "wall_s": time.perf_counter() - t0}


def plot_metrics(r: dict, path: Path) -> None:
    """PNG: PSNR and SSIM vs prediction horizon (true actions, foreign actions, copy-last-frame)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h = r["horizons_steps"]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, metric in enumerate(("psnr", "ssim")):
        ax[i].plot(h, r[f"{metric}_by_horizon"], "o-", label="world model, true actions")
        ax[i].plot(h, r[f"foreign_actions_{metric}_by_horizon"], "s--", label="world model, foreign actions")
        ax[i].plot(h, r[f"copy_last_frame_{metric}_by_horizon"], "x:", color="gray", label="copy last frame")
        ax[i].set(xlabel="prediction horizon (env steps)", ylabel="PSNR (dB)" if metric == "psnr" else "SSIM")
    ax[0].axhline(r["tokenizer_psnr"], color="k", lw=0.8, ls="-.", label="tokenizer ceiling")
    ax[0].set_title(f"controllability gap {r['controllability_gap_db']:.2f} dB, {r['n_clips']} clips")
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def save_sample_grid(samples: list, path: Path) -> None:
    """PNG: per sample three rows (real, dreamed with true actions, dreamed with foreign actions).

    Columns are the anchor frame then every prediction horizon; samples: [(gt (K+1, H, W, 3),
    pred (K, H, W, 3), foreign (K, H, W, 3))] floats in [0, 1].
    """
    from PIL import Image

    rows = []
    for gt, pred, foreign in samples:
        for seq in (gt, torch.cat([gt[:1], pred]), torch.cat([gt[:1], foreign])):
            rows.append(torch.cat([torch.cat([f, torch.ones(f.shape[0], 2, 3)], 1) for f in seq], 1))
        rows.append(torch.ones(4, rows[-1].shape[1], 3))
    grid = (torch.cat(rows).numpy() * 255).round().astype(np.uint8)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(tmp, format="PNG")
    os.replace(tmp, path)
