"""Train the GWM set VAE on per-frame Gaussians and the latent dynamics on its latents; load trained ones.

``robodream train gwm-vae --gaussians DIR [--gaussians DIR2 ...] --out RUN`` calls
:func:`train_set_vae`. The last ``heldout_fraction`` of each directory's episodes are never
trained on; validation renders the decoded Gaussians (posterior mean) and the input Gaussians
from every input camera of those frames and reports the PSNR between them (``psnr_db``, the
issue's "decoded render PSNR"), with the Chamfer distance. The shared
:class:`~robodream.train.loop.Trainer` does checkpoints, exact resume and ``metrics.jsonl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from robodream.errors import ConfigError, DatasetError
from robodream.gwm.dynamics import GWMDynamics, GWMDynamicsConfig
from robodream.gwm.frames import GaussianFrames, load_gaussian_frames
from robodream.gwm.pixel import render, unpack
from robodream.gwm.vae import GaussianSetVAE, SetVAEConfig
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import Run

MODEL_TYPE = GaussianSetVAE.model_type


def default_vae_train() -> TrainConfig:
    return TrainConfig(steps=2000, batch_size=8, lr=5e-4, weight_decay=0.01, warmup_steps=100, ema_decay=0.995,
                       val_every=500, checkpoint_every=250)


@dataclass
class SetVAERunConfig:
    """Everything a set-VAE run needs; saved as RUN/config.json."""

    gaussians: tuple[str, ...] = ()  # per-frame Gaussian directories (robodream gaussians), repeat --gaussians
    model: SetVAEConfig = field(default_factory=SetVAEConfig)
    train: TrainConfig = field(default_factory=default_vae_train)
    heldout_fraction: float = 0.1  # fraction of each directory's episodes held out (at least 1)
    val_frames: int = 64  # held-out frames validated (fixed draw)
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("model.center", "model.extent", "model_type")

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.val_frames < 1:
            raise ConfigError(f"val_frames must be >= 1, got {self.val_frames}")


class FrameTable:
    """Frames of several Gaussian directories, addressable by one index.

    ``frames[k]`` of table row ``k``: its directory, global frame row and episode (for the cameras).
    """

    def __init__(self, dirs: list[GaussianFrames], episodes: list[list[int]]) -> None:
        self.dirs = dirs
        rows = []
        for d, (fr, eps) in enumerate(zip(dirs, episodes)):
            for e in eps:
                o, n = fr.index["episode_offsets"][e], fr.index["episode_lengths"][e]
                rows += [(d, o + t, e) for t in range(n)]
        self.rows = np.asarray(rows, dtype=np.int64).reshape(-1, 3)

    def __len__(self) -> int:
        return len(self.rows)

    def batch(self, idx: torch.Tensor, cams: torch.Tensor | None = None, device="cpu"):
        """Gaussians (B, n, 14), background (B, 3), Ks (B, C, 3, 3), viewmats (B, C, 4, 4) of rows ``idx``;
        ``cams`` (B, C) picks input cameras per frame (default: all)."""
        g, bg, Ks, Ts = [], [], [], []
        for j, k in enumerate(idx.tolist()):
            d, r, e = self.rows[k]
            fr = self.dirs[d]
            g.append(np.asarray(fr.gaussians[r], dtype=np.float32))
            bg.append(np.asarray(fr.background[r], dtype=np.float32))
            sel = slice(None) if cams is None else cams[j].numpy()
            Ks.append(fr.Ks[e][sel])
            Ts.append(fr.viewmats[e][sel])
        t = lambda a: torch.from_numpy(np.stack(a)).float().to(device)  # noqa: E731
        return t(g), t(bg), t(Ks), t(Ts)


def split_episodes(fr: GaussianFrames, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: the last ``heldout_fraction`` (at least one when > 0 and
    there are two or more episodes) are held out."""
    n = fr.index["episodes"]
    k = 0 if heldout_fraction == 0 or n < 2 else max(1, int(round(heldout_fraction * n)))
    return list(range(n - k)), list(range(n - k, n))


def scene_normalization(table: FrameTable, n: int = 256, seed: int = 0) -> tuple[tuple[float, float, float], float]:
    """Centre (midpoint of the 1st-99th percentile box) and extent (its largest half-side, metres) of
    the live Gaussian centres of ``n`` random frames."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(table), (min(n, len(table)),), generator=gen)
    g = table.batch(idx)[0]
    p = unpack(g)
    pts = p["means"][p["opacities"] > 0]
    lo, hi = torch.quantile(pts[::7], 0.01, dim=0), torch.quantile(pts[::7], 0.99, dim=0)
    center = (lo + hi) / 2
    return tuple(round(float(c), 4) for c in center), round(float((hi - lo).max() / 2), 4)


def scene_anchors(table: FrameTable, n: int = 64, seed: int = 0) -> torch.Tensor:
    """Live Gaussian centres (P, 3) of ``n`` random training frames, pooled (the VAE's anchors are FPS of these)."""
    gen = torch.Generator().manual_seed(seed + 1)
    g = table.batch(torch.randint(0, len(table), (min(n, len(table)),), generator=gen))[0]
    p = unpack(g)
    return p["means"][p["opacities"] > 0]


def train_set_vae(cfg: SetVAERunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train the set VAE and write the run directory ``out``; returns held-out validation results
    (``psnr_db``: decoded vs input Gaussians rendered from the input cameras; ``chamfer``).

    Raises:
        DatasetError: unreadable Gaussian directories, Gaussian counts or image sizes that differ
            between directories or from the model's ``n_gaussians``.
        CheckpointError: ``out`` holds another run and not ``resume``.
        ConfigError: no directory, bad settings, or a ``--resume`` that changes the run.
    """
    if not cfg.gaussians:
        raise ConfigError("at least one per-frame Gaussian directory is required (--gaussians)")
    run = Run(out, cfg, resume=resume)
    with run.guard():
        device = resolve_device(cfg.train.device)
        dirs = [load_gaussian_frames(p) for p in cfg.gaussians]
        sizes = {tuple(d.index["image_size"]) for d in dirs}
        counts = {d.gaussians.shape[1] for d in dirs}
        if len(sizes) > 1 or len(counts) > 1:
            raise DatasetError(f"the Gaussian directories differ in image size {sorted(sizes)} or Gaussians per frame "
                               f"{sorted(counts)}")
        (n,) = counts
        if n != cfg.model.n_gaussians:
            raise DatasetError(f"{cfg.gaussians[0]} has {n} Gaussians a frame but the model takes "
                               f"{cfg.model.n_gaussians} (--n-gaussians)")
        image_size = tuple(sizes.pop())
        splits = [split_episodes(d, cfg.heldout_fraction) for d in dirs]
        train_table = FrameTable(dirs, [s[0] for s in splits])
        held_table = FrameTable(dirs, [s[1] for s in splits])
        if not len(train_table):
            raise DatasetError("no training frames (every episode is held out)")
        m = cfg.model
        if not resume or run.saved is None:
            m.center, m.extent = scene_normalization(train_table)
        m.__post_init__()
        n_cams = min(d.Ks.shape[1] for d in dirs)
        r_cams = min(m.render_cameras, n_cams)

        torch.manual_seed(cfg.train.seed)
        model = GaussianSetVAE(m)
        anchors = scene_anchors(train_table) if m.query_mode == "fixed" else None
        if anchors is not None:
            model.set_anchors(anchors)
        model.to(device)

        def factory() -> GaussianSetVAE:
            f = GaussianSetVAE(m)
            if anchors is not None:
                f.set_anchors(anchors)
            return f

        def sample_batch(step: int, gen: torch.Generator, batch_size: int):
            idx = torch.randint(0, len(train_table), (batch_size,), generator=gen)
            cams = torch.stack([torch.randperm(n_cams, generator=gen)[:r_cams] for _ in range(batch_size)])
            return train_table.batch(idx, cams, device)

        def loss_fn(mod, batch, gen):
            g, bg, Ks, Ts = batch
            return mod.loss(g, bg, Ks, Ts, image_size, generator=gen)

        def validate(mod: GaussianSetVAE, part: tuple[int, int]) -> dict[str, float]:
            return validate_set_vae(mod, held_table, image_size, cfg.val_frames, device, shard_of=part)

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if len(held_table) else None, description="gwm-vae",
                          model_factory=factory)
        val = run.fit(trainer, meta={"n_train_frames": len(train_table), "n_heldout_frames": len(held_table)})
        results = run.finish(trainer, val, n_train_frames=len(train_table), n_heldout_frames=len(held_table))
    return results


@torch.no_grad()
def validate_set_vae(model: GaussianSetVAE, table: FrameTable, image_size: tuple[int, int], n: int, device,
                     seed: int = 0, shard_of: tuple[int, int] = (0, 1), batch: int = 8) -> dict[str, float]:
    """Held-out metrics on ``n`` fixed frames: PSNR (dB) between the renders of the decoded (posterior
    mean) and of the input Gaussians from every input camera, the Chamfer distance (normalised
    units)."""
    from robodream.eval.metrics import psnr_per_image
    from robodream.gwm.vae import chamfer

    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(table), generator=gen)[:n]
    idx = idx[shard(len(idx), *shard_of)]
    if not len(idx):
        return {"n": 0}
    model.eval()
    H, W = image_size
    ps, chs = [], []
    for b0 in range(0, len(idx), batch):
        g, bg, Ks, Ts = table.batch(idx[b0:b0 + batch], device=device)
        out = model(g)
        pred, target = render(out, Ts, Ks, W, H, bg), render(g, Ts, Ks, W, H, bg)
        ps.append(psnr_per_image(pred.flatten(0, 1), target.flatten(0, 1)).reshape(len(g), -1).mean(1))
        live = unpack(g)["opacities"] > 0
        a, b = model.normalize_centers(unpack(out)["means"]), model.normalize_centers(unpack(g)["means"])
        chs.append(chamfer(a, torch.where(live[..., None], b, b[:, :1])))
    return {"psnr_db": float(torch.cat(ps).mean()), "chamfer": float(torch.cat(chs).mean()), "n": len(idx)}


def load_set_vae(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained set-VAE run: ``(model, run config dict)``, the model in eval mode.

    Raises:
        CheckpointError: not a set-VAE run (e.g. a policy run), unfinished, or weights that do not fit.
    """
    from robodream.train.run_dir import load_model_run

    model, cfg = load_model_run(run_dir, GaussianSetVAE, SetVAEConfig)
    return model.to(device).eval().requires_grad_(False), cfg


# ============================================================================ latent dynamics
def default_gwm_train() -> TrainConfig:
    return TrainConfig(steps=3000, batch_size=16, lr=3e-4, weight_decay=0.01, warmup_steps=100, ema_decay=0.995,
                       val_every=500, checkpoint_every=500)


@dataclass
class GWMRunConfig:
    """Everything a GWM dynamics run needs; saved as RUN/config.json."""

    gaussians: tuple[str, ...] = ()  # per-frame Gaussian directories (robodream gaussians), repeat --gaussians
    vae: str = ""  # set-VAE run (robodream train gwm-vae), copied into RUN/vae
    model: GWMDynamicsConfig = field(default_factory=GWMDynamicsConfig)
    train: TrainConfig = field(default_factory=default_gwm_train)
    heldout_fraction: float = 0.1  # fraction of each directory's episodes held out (at least 1)
    val_windows: int = 128  # held-out transitions validated (fixed draw)
    model_type: str = "gwm_dynamics"

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("model.n_latents", "model.latent_dim", "model.action_dim",
                                                 "model.state_dim", "model_type")

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.val_windows < 1:
            raise ConfigError(f"val_windows must be >= 1, got {self.val_windows}")


@dataclass
class LatentEpisodes:
    """Latent sets of episodes and their transitions (all tensors, one row per frame).

    latents (F, L, c); state (F, Ds) proprioception; action (F, Da); reward (F,) dense reward of the
    step from frame f; success (F,) ``next.success``; episode_start / episode_end (F,) the frame range
    of each frame's episode.
    """

    latents: torch.Tensor
    state: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    success: torch.Tensor
    episode_start: torch.Tensor
    episode_end: torch.Tensor

    def anchors(self) -> torch.Tensor:
        """Frames f with a next frame (f + 1 < end): the transitions."""
        return torch.nonzero(torch.arange(len(self.latents)) + 1 < self.episode_end).squeeze(1)

    def windows(self, f: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
        """Transitions from frames ``f`` (B,): context (B, k, L, c) (frames before the episode start repeat
        its first), action, target (B, L, c), reward, success."""
        offs = torch.arange(-k + 1, 1)
        ctx_idx = torch.maximum(f[:, None] + offs, self.episode_start[f, None])
        return {"context": self.latents[ctx_idx].float(), "target": self.latents[f + 1].float(),
                "action": self.action[f], "reward": self.reward[f], "success": self.success[f],
                "state": self.state[f], "next_state": self.state[f + 1]}


@torch.no_grad()
def encode_latent_episodes(vae: GaussianSetVAE, fr: GaussianFrames, episodes: list[int], batch: int = 32,
                           device="cpu") -> LatentEpisodes:
    """Posterior-mean latents of every frame of ``episodes`` and their actions, dense rewards and success flags
    (read from the Gaussian directory's source dataset).

    Raises:
        DatasetError: the source dataset is gone, differs from the one the Gaussians were built from,
            or lacks actions or the reward columns (``next.success``, ``complementary_info.dense_reward``).
    """
    from robodream.data.lerobot import LeRobotDataset

    src = fr.index["source"]
    try:
        ds = LeRobotDataset(src)
    except DatasetError as e:
        raise DatasetError(f"{fr.root} was built from {src}, which cannot be read: {e}") from e
    if ds.num_frames != fr.index["source_frames"]:
        raise DatasetError(f"{src} has {ds.num_frames} frames but {fr.root} was built from one with "
                           f"{fr.index['source_frames']}: rebuild the Gaussians")
    lat, st, act, rew, suc, start, end = [], [], [], [], [], [], []
    f0 = 0
    for e in episodes:
        g, _ = fr.episode(e)
        lat.append(torch.cat([vae.encode(g[b:b + batch].to(device))[0].cpu() for b in range(0, len(g), batch)])
                   .to(torch.float16))
        ep = ds.episode(e)
        for key in ("next.success", "complementary_info.dense_reward"):
            if key not in ep.extra:
                raise DatasetError(f"{src} has no {key} column (record it with robodream collect)")
        if ep.action.shape[1] == 0:
            raise DatasetError(f"{src} has no action feature")
        T = len(g)
        act.append(torch.from_numpy(ep.action[:T]))
        st.append(torch.from_numpy(ep.state[:T]))
        rew.append(torch.from_numpy(np.asarray(ep.extra["complementary_info.dense_reward"], np.float32).reshape(-1)[:T]))
        suc.append(torch.from_numpy(np.asarray(ep.extra["next.success"]).reshape(-1)[:T].astype(np.float32)))
        start.append(torch.full((T,), f0))
        end.append(torch.full((T,), f0 + T))
        f0 += T
    return LatentEpisodes(torch.cat(lat), torch.cat(st), torch.cat(act), torch.cat(rew), torch.cat(suc),
                          torch.cat(start), torch.cat(end))


def _cat_latent_episodes(parts: list[LatentEpisodes]) -> LatentEpisodes:
    offs = np.cumsum([0] + [len(p.latents) for p in parts[:-1]]).tolist()
    return LatentEpisodes(*(torch.cat([getattr(p, f) for p in parts])
                            for f in ("latents", "state", "action", "reward", "success")),
                          torch.cat([p.episode_start + o for p, o in zip(parts, offs)]),
                          torch.cat([p.episode_end + o for p, o in zip(parts, offs)]))


def gwm_datasets(cfg: GWMRunConfig, vae: GaussianSetVAE, device) -> tuple[list[GaussianFrames], LatentEpisodes,
                                                                          LatentEpisodes | None]:
    """Open the run's Gaussian directories and encode their training and held-out episodes.

    Raises:
        DatasetError: Gaussian counts that differ from the VAE's.
    """
    dirs = [load_gaussian_frames(p) for p in cfg.gaussians]
    for d in dirs:
        if d.gaussians.shape[1] != vae.cfg.n_gaussians:
            raise DatasetError(f"{d.root} has {d.gaussians.shape[1]} Gaussians a frame but the VAE takes "
                               f"{vae.cfg.n_gaussians}")
    splits = [split_episodes(d, cfg.heldout_fraction) for d in dirs]
    train = _cat_latent_episodes([encode_latent_episodes(vae, d, s[0], device=device) for d, s in zip(dirs, splits)])
    held_parts = [encode_latent_episodes(vae, d, s[1], device=device) for d, s in zip(dirs, splits) if s[1]]
    return dirs, train, _cat_latent_episodes(held_parts) if held_parts else None


def train_gwm(cfg: GWMRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train the GWM latent dynamics on set-VAE latents and write the run directory ``out``; returns held-out
    validation results (``latent_mse`` of one-step predictions and ``copy_last_latent_mse``, normalised
    units; ``reward_mae``; ``success_accuracy``; ``state_mae`` in state units).

    Raises:
        DatasetError: unreadable Gaussian directories or source datasets, Gaussian counts that differ
            from the VAE's.
        CheckpointError: a bad VAE run; ``out`` holds another run and not ``resume``.
        ConfigError: no directory, no VAE, bad settings, or a ``--resume`` that changes the run.
    """
    import shutil

    if not cfg.gaussians or not cfg.vae:
        raise ConfigError("train gwm needs per-frame Gaussian directories (--gaussians) and a set-VAE run (--vae)")
    run = Run(out, cfg, resume=resume)
    with run.guard():
        device = resolve_device(cfg.train.device)
        vae, _ = load_set_vae(cfg.vae, device=device)
        _, train, held = gwm_datasets(cfg, vae, device)
        m = cfg.model
        m.n_latents, m.latent_dim, m.action_dim = vae.cfg.n_latents, vae.cfg.latent_dim, train.action.shape[1]
        m.state_dim = train.state.shape[1]
        m.__post_init__()
        torch.manual_seed(cfg.train.seed)
        model = GWMDynamics(m)
        flat = train.latents.float().flatten(0, 1)
        anchors = train.anchors()
        if not len(anchors):
            raise DatasetError("no training transitions (episodes of one frame)")
        delta = (train.latents[anchors + 1].float() - train.latents[anchors].float()).flatten(0, 1)
        model.set_normalization(flat.mean(0), flat.std(0), delta.pow(2).mean(0).sqrt(), train.action.mean(0),
                                train.action.std(0), train.state.mean(0), train.state.std(0))
        norm = {k: getattr(model, k).tolist() for k in GWMDynamics.NORMALIZATION}
        model.to(device)

        def sample_batch(step: int, gen: torch.Generator, batch_size: int):
            f = anchors[torch.randint(0, len(anchors), (batch_size,), generator=gen)]
            return {k: v.to(device) for k, v in train.windows(f, m.context_frames).items()}

        def loss_fn(mod, batch, gen):
            return mod.loss(**batch, generator=gen)

        def validate(mod: GWMDynamics, part: tuple[int, int]) -> dict[str, float]:
            return validate_gwm(mod, held, cfg.val_windows, device, shard_of=part)

        def factory() -> GWMDynamics:
            f = GWMDynamics(m)
            f.set_normalization(*(torch.tensor(norm[k]) for k in GWMDynamics.NORMALIZATION))
            return f

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if held is not None else None, description="gwm", model_factory=factory)
        if run.fresh or not (run.path / "vae").is_dir():
            (run.path / "vae").mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "model.safetensors"):
                shutil.copyfile(Path(cfg.vae) / name, run.path / "vae" / name)
        val = run.fit(trainer, meta={"n_train_transitions": len(anchors)}, json_files={"normalization.json": norm})
        results = run.finish(trainer, val, n_train_frames=len(train.latents),
                             n_heldout_frames=0 if held is None else len(held.latents))
    return results


@torch.no_grad()
def validate_gwm(model: GWMDynamics, held: LatentEpisodes, n: int, device, seed: int = 0,
                 shard_of: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Held-out one-step metrics on ``n`` fixed transitions (sampled with a fixed noise seed)."""
    gen = torch.Generator().manual_seed(seed)
    anchors = held.anchors()
    f = anchors[torch.randperm(len(anchors), generator=gen)[:n]]
    f = f[shard(len(f), *shard_of)]
    if not len(f):
        return {"n": 0}
    model.eval()
    w = {k: v.to(device) for k, v in held.windows(f, model.cfg.context_frames).items()}
    out = model.predict(w["context"], w["action"], w["state"] if model.cfg.state_dim else None,
                        generator=torch.Generator().manual_seed(seed))
    target = model.normalize(w["target"])
    mse = (model.normalize(out["latents"]) - target).pow(2).mean()
    copy = (model.normalize(w["context"][:, -1]) - target).pow(2).mean()
    acc = ((out["success_prob"] > 0.5).float() == w["success"]).float().mean()
    return {"latent_mse": float(mse), "copy_last_latent_mse": float(copy),
            "reward_mae": float((out["reward"] - w["reward"]).abs().mean()), "success_accuracy": float(acc),
            **({"state_mae": float((out["state"] - w["next_state"]).abs().mean())} if "state" in out else {}),
            "n": len(f)}


def load_gwm(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained GWM run: ``(dynamics, vae, run config dict)``, both in eval mode.

    Raises:
        CheckpointError: not a GWM run (e.g. a policy run), unfinished, or weights that do not fit.
    """
    from robodream.train.run_dir import load_model_run
    from robodream.utils.io import read_json

    run_dir = Path(run_dir)
    model, cfg = load_model_run(run_dir, GWMDynamics, GWMDynamicsConfig)
    norm = read_json(run_dir / "normalization.json")
    model.set_normalization(*(torch.tensor(norm[k]) for k in GWMDynamics.NORMALIZATION))
    vae, _ = load_set_vae(run_dir / "vae", device=device)
    return model.to(device).eval().requires_grad_(False), vae, cfg
