"""Evaluate a GWM run: open-loop rollouts rendered from the training cameras and from a camera never used
for training, against the recorded video (GWM, arXiv 2508.17600, Sec. 4).

From a start frame ``t0`` of a held-out episode, the two context latent sets (frames ``t0 - 1``,
``t0``, the set VAE's posterior means of their per-frame Gaussians) and the recorded actions
``a_t0 .. a_t0+H-1`` roll the dynamics forward ``H`` steps; every predicted latent set is decoded
into Gaussians and rendered. Scores per horizon ``h``: PSNR/SSIM against the dataset's video frame
``t0 + h`` from the input (training) cameras and from ``camera`` (a camera of the dataset that
no Gaussians were built from: a view the model never saw), next to

- copy-last: the recorded frame ``t0`` for every horizon (the same camera);
- the per-frame Gaussians of frame ``t0 + h`` rendered (what a perfect dynamics and VAE give;
  the ceiling set by the Gaussians themselves);
- optionally a video world model (``robodream train world-model`` on the same datasets): its
  rollout from the same start frames under the same actions, decoded by its tokenizer, scored on
  its own cameras against the same video frames (it cannot render the novel camera). Horizons it
  does not predict (its frame stride) are null.

Because that ceiling (pixel-aligned Gaussians of 64x64 views) is far below copy-last's score on
a mostly static scene, the same scores are also given in the Gaussians' own image space
(``*_vs_gaussians``): the truth is the render of frame ``t0 + h``'s per-frame Gaussians and
copy-last is the render of frame ``t0``'s, and copy-last-latent the render of the decoded last
context latent ``z_t0`` (through the same VAE as the prediction) — the dynamics alone, separated
from how well Gaussians reproduce a camera image and how well the VAE reproduces Gaussians.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.errors import ConfigError, DatasetError
from robodream.gwm.frames import episode_camera_matrices, load_gaussian_frames
from robodream.gwm.pixel import render
from robodream.gwm.train import encode_latent_episodes, load_gwm, split_episodes


@torch.no_grad()
def evaluate_gwm(run: str | Path, camera: str, *, gaussians: str | Path | None = None, horizon: int = 16,
                 episodes: int | None = None, starts_per_episode: int = 2, seed: int = 0,
                 sample_steps: int | None = None, video_world_model: str | Path | None = None) -> dict[str, Any]:
    """Per-horizon render scores of a GWM run (module docstring).

    Args:
        run: a ``robodream train gwm`` run.
        camera: the novel camera (in the Gaussians' source dataset, not one of their input cameras).
        gaussians: a per-frame Gaussian directory to evaluate on; default the run's first directory,
            only its held-out episodes (never trained on).
        horizon: steps rolled out (H).
        episodes: evaluate at most this many episodes.
        starts_per_episode: start frames per episode, evenly spaced.
        video_world_model: a video world model run scored on the same rollouts (module docstring).

    Returns:
        ``psnr_by_horizon``, ``ssim_by_horizon``, ``copy_last_psnr_by_horizon``,
        ``novel_camera_psnr_by_horizon``, ``novel_camera_ssim_by_horizon``,
        ``video_world_model_psnr_by_horizon`` (with ``video_world_model``, else None),
        ``novel_camera_copy_last_psnr_by_horizon``, ``gaussians_psnr_by_horizon`` and
        ``novel_camera_gaussians_psnr_by_horizon``, and ``psnr_vs_gaussians_by_horizon``,
        ``copy_last_psnr_vs_gaussians_by_horizon``, ``copy_last_latent_psnr_vs_gaussians_by_horizon``
        with their ``novel_camera_`` twins (lists of H dB
        values), ``rollouts``, ``camera``,
        ``cameras``, ``wall_s``.

    Raises:
        ConfigError: ``camera`` is an input camera; horizon < 1. DatasetError: ``camera`` missing,
            no episode long enough for the horizon.
    """
    from robodream.data.lerobot import LeRobotDataset
    from robodream.eval.metrics import psnr_per_image, ssim

    if horizon < 1 or starts_per_episode < 1:
        raise ConfigError(f"horizon and starts_per_episode must be >= 1, got {horizon}, {starts_per_episode}")
    t_start = time.perf_counter()
    model, vae, cfg = load_gwm(run)
    fr = load_gaussian_frames(gaussians if gaussians is not None else cfg["gaussians"][0])
    if camera in fr.index["cameras"]:
        raise ConfigError(f"{camera!r} is an input camera of {fr.root}; the novel camera must be another one")
    eps = (list(range(fr.index["episodes"])) if gaussians is not None
           else split_episodes(fr, cfg["heldout_fraction"])[1])
    eps = eps[:episodes] if episodes is not None else eps
    ds = LeRobotDataset(fr.index["source"])
    if camera not in ds.cameras:
        raise DatasetError(f"{ds.root} has no camera {camera!r}; it has {', '.join(ds.cameras)}")
    K_novel, T_novel = episode_camera_matrices(ds, [camera])
    H_img, W_img = fr.index["image_size"]
    K = model.cfg.context_frames
    gen = torch.Generator().manual_seed(seed)
    vwm = _VideoWorldModelScorer(video_world_model, ds, horizon, seed) if video_world_model else None
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in (
        "psnr", "ssim", "copy", "novel", "novel_ssim", "novel_copy", "gauss", "novel_gauss", "vs_g", "copy_vs_g",
        "novel_vs_g", "novel_copy_vs_g", "copy_z_vs_g", "novel_copy_z_vs_g")}
    n_roll = 0
    for e in eps:
        T = fr.index["episode_lengths"][e]
        if T < K + horizon:
            continue
        lat = encode_latent_episodes(vae, fr, [e])
        g_all, bg_all = fr.episode(e)
        cams = fr.index["cameras"]
        truth = {c: torch.from_numpy(ds.frames(e, c)).float() / 255.0 for c in [*cams, camera]}
        Ks = torch.from_numpy(np.concatenate([fr.Ks[e], K_novel[e]])).float()
        Ts = torch.from_numpy(np.concatenate([fr.viewmats[e], T_novel[e]])).float()
        for t0 in np.linspace(K - 1, T - horizon - 1, starts_per_episode).round().astype(int).tolist():
            ctx = lat.latents[t0 - K + 1:t0 + 1].float()[None]
            acts = lat.action[t0:t0 + horizon][None]
            st = lat.state[t0][None] if model.cfg.state_dim else None
            out = model.rollout(ctx, acts, st, steps=sample_steps, generator=gen)
            g = vae.decode(out["latents"][0])  # (H, n, 14)
            bg = bg_all[t0 + 1:t0 + 1 + horizon]
            pred = render(g, Ts, Ks, W_img, H_img, bg)  # (H, V + 1, h, w, 3)
            upper = render(g_all[t0 + 1:t0 + 1 + horizon], Ts, Ks, W_img, H_img, bg)
            tgt = torch.stack([truth[c][t0 + 1:t0 + 1 + horizon] for c in [*cams, camera]], 1)  # (H, V + 1, ...)
            last = torch.stack([truth[c][t0] for c in [*cams, camera]], 0)[None].expand_as(tgt)

            def per_h(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # (H, C, ...) -> (H, C) dB
                return psnr_per_image(a.flatten(0, 1), b.flatten(0, 1)).reshape(a.shape[:2])

            def ssim_h(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
                return torch.stack([torch.stack([ssim(a[h, c:c + 1], b[h, c:c + 1]) for c in range(a.shape[1])])
                                    for h in range(a.shape[0])])

            p, s, cp, up = per_h(pred, tgt), ssim_h(pred, tgt), per_h(last, tgt), per_h(upper, tgt)
            last_g = render(g_all[t0:t0 + 1], Ts, Ks, W_img, H_img, bg_all[t0:t0 + 1]).expand_as(upper)
            last_z = render(vae.decode(ctx[:, -1]), Ts, Ks, W_img, H_img, bg_all[t0:t0 + 1]).expand_as(upper)
            pg, cg, cz = per_h(pred, upper), per_h(last_g, upper), per_h(last_z, upper)
            rows["copy_z_vs_g"].append(cz[:, :-1].mean(1))
            rows["novel_copy_z_vs_g"].append(cz[:, -1])
            if vwm is not None:
                vwm.score(e, t0)
            rows["vs_g"].append(pg[:, :-1].mean(1))
            rows["copy_vs_g"].append(cg[:, :-1].mean(1))
            rows["novel_vs_g"].append(pg[:, -1])
            rows["novel_copy_vs_g"].append(cg[:, -1])
            rows["psnr"].append(p[:, :-1].mean(1))
            rows["ssim"].append(s[:, :-1].mean(1))
            rows["copy"].append(cp[:, :-1].mean(1))
            rows["gauss"].append(up[:, :-1].mean(1))
            rows["novel"].append(p[:, -1])
            rows["novel_ssim"].append(s[:, -1])
            rows["novel_copy"].append(cp[:, -1])
            rows["novel_gauss"].append(up[:, -1])
            n_roll += 1
    if not n_roll:
        raise DatasetError(f"no evaluated episode of {fr.root} has {K + horizon} frames (horizon {horizon})")

    def mean(k: str) -> list[float]:
        return [round(float(x), 3) for x in torch.stack(rows[k]).mean(0)]

    return {"camera": camera, "cameras": fr.index["cameras"], "horizon": horizon, "rollouts": n_roll,
            "episodes": len(eps), "psnr_by_horizon": mean("psnr"), "ssim_by_horizon": mean("ssim"),
            "copy_last_psnr_by_horizon": mean("copy"), "gaussians_psnr_by_horizon": mean("gauss"),
            "novel_camera_psnr_by_horizon": mean("novel"), "novel_camera_ssim_by_horizon": mean("novel_ssim"),
            "novel_camera_copy_last_psnr_by_horizon": mean("novel_copy"),
            "novel_camera_gaussians_psnr_by_horizon": mean("novel_gauss"),
            "psnr_vs_gaussians_by_horizon": mean("vs_g"), "copy_last_psnr_vs_gaussians_by_horizon": mean("copy_vs_g"),
            "novel_camera_psnr_vs_gaussians_by_horizon": mean("novel_vs_g"),
            "novel_camera_copy_last_psnr_vs_gaussians_by_horizon": mean("novel_copy_vs_g"),
            "copy_last_latent_psnr_vs_gaussians_by_horizon": mean("copy_z_vs_g"),
            "novel_camera_copy_last_latent_psnr_vs_gaussians_by_horizon": mean("novel_copy_z_vs_g"),
            "video_world_model_psnr_by_horizon": None if vwm is None else vwm.psnr_by_horizon(),
            "video_world_model_cameras": None if vwm is None else list(vwm.model.cfg.cameras),
            "sample_steps": sample_steps or model.cfg.sample_steps, "wall_s": round(time.perf_counter() - t_start, 1)}


class _VideoWorldModelScorer:
    """The video world model's rollouts from the GWM's start frames, PSNR per horizon on its own cameras."""

    def __init__(self, run: str | Path, ds, horizon: int, seed: int) -> None:
        import math

        from robodream.world_model.evaluate import check_dataset
        from robodream.world_model.train import load_world_model

        self.model, self.tokenizer, _ = load_world_model(run)
        check_dataset(ds, self.model)
        self.ds, self.horizon = ds, horizon
        c = self.model.cfg
        self.n_chunks = math.ceil(horizon / c.chunk_steps)
        self.gen = torch.Generator().manual_seed(seed)
        self.sums, self.counts = np.zeros(horizon), np.zeros(horizon)

    @torch.no_grad()
    def score(self, e: int, t0: int) -> None:
        from robodream.eval.metrics import psnr_per_image
        from robodream.tokenizer.model import decode_latents, encode_frames
        from robodream.world_model.evaluate import clamped, episode_frames, task_condition

        m, c = self.model, self.model.cfg
        S, hist = c.frame_stride, (c.n_context_frames - 1) * c.frame_stride
        ep = self.ds.episode(e)
        frames = episode_frames(self.ds, e, c.cameras)  # (T, N, H, W, 3)
        need = self.n_chunks * c.chunk_steps
        actions = np.concatenate([clamped(ep.action, t0 - hist, t0), clamped(ep.action, t0, t0 + need)])
        ctx_steps = np.clip([t0 - hist + k * S for k in range(c.n_context_frames)], 0, ep.length - 1)
        context = encode_frames(self.tokenizer, frames[ctx_steps])[None]
        task_index, text = task_condition(m, ep.task, "cpu")
        pred = m.rollout(context, m.normalize_action(torch.from_numpy(actions)[None]), task_index, self.n_chunks,
                         text, generator=self.gen)[0]  # (K, N, C, h, w) at steps S, 2S, ...
        images = decode_latents(self.tokenizer, pred)  # (K, N, H, W, 3)
        for k in range(len(images)):
            h = (k + 1) * S
            if h > self.horizon or t0 + h >= ep.length:
                break
            truth = torch.from_numpy(frames[t0 + h]).float() / 255.0  # (N, H, W, 3)
            self.sums[h - 1] += float(psnr_per_image(images[k], truth).mean())
            self.counts[h - 1] += 1

    def psnr_by_horizon(self) -> list[float | None]:
        return [round(float(s / n), 3) if n else None for s, n in zip(self.sums, self.counts)]


def camera_for_dream(fr, episode: int, camera: str | None, orbit: str | None) -> tuple[np.ndarray, np.ndarray, str]:
    """K (3, 3), world-to-camera (4, 4) and a label of the camera a dream is rendered from: a named
    Meta-World camera (``camera``) or a free camera on an orbit around the table (``orbit``:
    ``AZIMUTH,ELEVATION,DISTANCE`` in degrees, degrees, metres; MuJoCo's conventions).

    Raises:
        ConfigError: neither or both given, a malformed orbit, an unknown camera.
    """
    import dataclasses

    from robodream.data.collect import replayable_provenance
    from robodream.data.lerobot import LeRobotDataset
    from robodream.envs.cameras import TABLE_CENTER, free_camera_matrices
    from robodream.envs.meta_world import MetaWorldEnv
    from robodream.transfer.pairs import source_env_config

    if (camera is None) == (orbit is None):
        raise ConfigError("give exactly one of --camera NAME or --orbit AZIMUTH,ELEVATION,DISTANCE")
    H, W = fr.index["image_size"]
    ds = LeRobotDataset(fr.index["source"])
    prov = replayable_provenance(ds, "given camera poses")
    if camera is not None:
        from robodream.envs.meta_world import CAMERAS

        if camera not in CAMERAS:
            raise ConfigError(f"unknown camera {camera!r}; cameras: {', '.join(CAMERAS)}")
        K, T = episode_camera_matrices(ds, [camera])
        return K[episode, 0], T[episode, 0], camera
    try:
        az, el, dist = (float(x) for x in orbit.split(","))
    except ValueError as e:
        raise ConfigError(f"--orbit must be AZIMUTH,ELEVATION,DISTANCE (degrees, degrees, metres), got {orbit!r}") from e
    if dist <= 0:
        raise ConfigError(f"--orbit distance must be > 0, got {dist}")
    env = MetaWorldEnv(dataclasses.replace(source_env_config(prov, fr.index["cameras"][0], max_steps=1)))
    try:
        K, T = free_camera_matrices(env.mujoco_model, TABLE_CENTER, dist, az, el, W, H)
    finally:
        env.close()
    return K, T, f"orbit az {az:g} el {el:g} d {dist:g}"


@torch.no_grad()
def dream_gwm(run: str | Path, episode: str, out: str | Path, *, steps: int, start: int = 1,
              camera: str | None = None, orbit: str | None = None, seed: int = 0,
              sample_steps: int | None = None) -> dict[str, Any]:
    """Roll a GWM out from frame ``start`` of an episode under its recorded actions and write an MP4
    rendered from any camera pose (the recorded video above it when the camera is one of the dataset's).

    Args:
        episode: ``GAUSSIANS_DIR:INDEX``.
        steps: predicted frames (the episode must have ``start + steps + 1`` frames).
        camera / orbit: see :func:`camera_for_dream`.

    Returns:
        ``{"out", "frames", "camera", "psnr_by_frame" (vs the recorded video, or [])}``.

    Raises:
        ConfigError: bad episode spec, steps < 1, a start or length outside the episode; see
            :func:`camera_for_dream`.
    """
    from robodream.data.lerobot import LeRobotDataset
    from robodream.eval.metrics import psnr_per_image
    from robodream.eval.video import write_mp4
    from robodream.world_model.evaluate import parse_episode

    model, vae, _ = load_gwm(run)
    gdir, e = parse_episode(episode)
    fr = load_gaussian_frames(gdir)
    if not 0 <= e < fr.index["episodes"]:
        raise ConfigError(f"{gdir} has episodes 0..{fr.index['episodes'] - 1}, not {e}")
    T_ep = fr.index["episode_lengths"][e]
    Kc = model.cfg.context_frames
    if steps < 1 or start < Kc - 1 or start + steps >= T_ep:
        raise ConfigError(f"need steps >= 1 and {Kc - 1} <= start, start + steps < {T_ep} (episode {e} has {T_ep} "
                          f"frames); got start {start}, steps {steps}")
    K, Tm, label = camera_for_dream(fr, e, camera, orbit)
    lat = encode_latent_episodes(vae, fr, [e])
    ctx = lat.latents[start - Kc + 1:start + 1].float()[None]
    roll = model.rollout(ctx, lat.action[start:start + steps][None],
                         lat.state[start][None] if model.cfg.state_dim else None, steps=sample_steps,
                         generator=torch.Generator().manual_seed(seed))
    g = vae.decode(roll["latents"][0])
    _, bg_all = fr.episode(e)
    H, W = fr.index["image_size"]
    Ks, Ts = torch.from_numpy(K).float()[None], torch.from_numpy(Tm).float()[None]
    frames = render(g, Ts, Ks, W, H, bg_all[start + 1:start + 1 + steps])[:, 0]  # (steps, H, W, 3)
    psnr: list[float] = []
    ds = LeRobotDataset(fr.index["source"])
    video = frames
    if camera is not None and camera in ds.cameras:
        truth = torch.from_numpy(ds.frames(e, camera)[start + 1:start + 1 + steps]).float() / 255.0
        psnr = [round(float(x), 2) for x in psnr_per_image(frames, truth)]
        video = torch.cat([truth, frames], 1)  # recorded above, dreamed below
    write_mp4(out, (video.clamp(0, 1) * 255).round().to(torch.uint8).numpy(), fps=20)
    return {"out": str(out), "frames": steps, "camera": label, "psnr_by_frame": psnr,
            "reward": [round(float(x), 3) for x in roll["reward"][0]]}
