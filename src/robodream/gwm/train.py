"""Train the GWM set VAE on per-frame Gaussians and the latent dynamics on its latents; load trained ones.

``robodream train gwm-vae --gaussians DIR [--gaussians DIR2 ...] --out RUN`` calls
:func:`train_set_vae`. The last ``heldout_fraction`` of each directory's episodes are never
trained on; validation renders the decoded Gaussians (posterior mean) and the input Gaussians
from every input camera of those frames and reports the PSNR between them (``psnr_db``, the
issue's "decoded render PSNR"), with the Chamfer distance.

``robodream train gwm --gaussians DIR... --vae RUN --out RUN`` calls :func:`train_gwm` (the latent
dynamics); ``--data D... --tokenizer TOK`` instead trains the same dynamics on image-tokenizer
latents (the video-world-model arm of the MBRL comparison). The shared
:class:`~robodream.train.loop.Trainer` does checkpoints, exact resume and ``metrics.jsonl``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from robodream.errors import CheckpointError, ConfigError, DatasetError
from robodream.gwm.dynamics import GWMDynamics, GWMDynamicsConfig
from robodream.gwm.frames import GaussianFrames, load_gaussian_frames
from robodream.gwm.pixel import PixelGaussianConfig, render, unpack
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


def split_episodes(fr: GaussianFrames | int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices of a Gaussian directory (or of ``fr`` episodes): the last
    ``heldout_fraction`` (at least one when > 0 and there are two or more episodes) are held out."""
    n = fr if isinstance(fr, int) else fr.index["episodes"]
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
    """Everything a latent-dynamics run needs; saved as RUN/config.json.

    Two representations, one model: the GWM's (``gaussians`` + ``vae``: set-VAE latents of per-frame
    Gaussians) or, for the iVideoGPT-style comparison, a video world model's (``data`` + ``tokenizer``:
    the image tokenizer's latents of the datasets' frames, every latent cell of every camera a token
    of ``latent_channels`` numbers; token ``j`` is the same pixel region of the same static camera in
    every frame, as the VAE's fixed anchors make token ``j`` the same region of space).
    """

    gaussians: tuple[str, ...] = ()  # per-frame Gaussian directories (robodream gaussians), repeat --gaussians
    vae: str = ""  # set-VAE run (robodream train gwm-vae), copied into RUN/vae
    data: tuple[str, ...] = ()  # or: LeRobot datasets whose frames the image tokenizer encodes
    tokenizer: str = ""  # ... and the tokenizer run (copied into RUN/tokenizer)
    cameras: tuple[str, ...] = ()  # the tokenizer's cameras, token order (empty: every camera of the datasets)
    token_cameras: tuple[str, ...] = ()  # filled in: the cameras of the image tokens, in token order
    model: GWMDynamicsConfig = field(default_factory=GWMDynamicsConfig)
    train: TrainConfig = field(default_factory=default_gwm_train)
    heldout_fraction: float = 0.1  # fraction of each directory's episodes held out (at least 1)
    val_windows: int = 128  # held-out transitions validated (fixed draw)
    model_type: str = "gwm_dynamics"

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("model.n_latents", "model.latent_dim", "model.action_dim",
                                                 "model.state_dim", "token_cameras", "model_type")

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.val_windows < 1:
            raise ConfigError(f"val_windows must be >= 1, got {self.val_windows}")
        self.gaussians, self.data, self.cameras = tuple(self.gaussians), tuple(self.data), tuple(self.cameras)
        self.token_cameras = tuple(self.token_cameras)

    @property
    def representation(self) -> str:
        """``"gaussian_set"`` (set-VAE latents) or ``"image_tokens"`` (tokenizer latents).

        Raises:
            ConfigError: neither or both pairs of inputs.
        """
        gwm, video = bool(self.gaussians or self.vae), bool(self.data or self.tokenizer)
        if gwm == video or (gwm and not (self.gaussians and self.vae)) or (video and not (self.data and self.tokenizer)):
            raise ConfigError("train gwm needs per-frame Gaussian directories and a set-VAE run (--gaussians, --vae), "
                              "or datasets and an image tokenizer run (--data, --tokenizer), not both")
        return "gaussian_set" if gwm else "image_tokens"


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
    def latents(e: int) -> torch.Tensor:
        g, _ = fr.episode(e)
        return torch.cat([vae.encode(g[b:b + batch].to(device))[0].cpu() for b in range(0, len(g), batch)])

    return _latent_episodes(ds, episodes, latents)


@torch.no_grad()
def encode_image_token_episodes(tokenizer, ds, episodes: list[int], cameras: list[str], batch: int = 64,
                                device="cpu") -> LatentEpisodes:
    """Image-tokenizer latents of every frame of ``episodes`` of ``ds`` as tokens (T, V * h * w, C) (camera-major,
    then row-major cells), with their actions, dense rewards and success flags.

    Raises:
        DatasetError: a missing camera, another image size than the tokenizer's, no actions or reward columns.
    """
    missing = [c for c in cameras if c not in ds.cameras]
    if missing:
        raise DatasetError(f"{ds.root} has no camera {missing[0]!r}; it has {', '.join(ds.cameras)}")
    if ds.image_size != (tokenizer.cfg.image_size, tokenizer.cfg.image_size):
        raise DatasetError(f"{ds.root} has {ds.image_size[0]}x{ds.image_size[1]} images but the tokenizer expects "
                           f"{tokenizer.cfg.image_size}")

    def latents(e: int) -> torch.Tensor:
        frames = torch.from_numpy(np.stack([ds.frames(e, c) for c in cameras], 1))  # (T, V, H, W, 3)
        lat = torch.cat([tokenizer.encode(frames[b:b + batch].flatten(0, 1).to(device)).cpu()
                         for b in range(0, len(frames), batch)])  # (T * V, C, h, w)
        return image_tokens(lat.unflatten(0, (len(frames), len(cameras))))

    return _latent_episodes(ds, episodes, latents)


def image_tokens(latents: torch.Tensor) -> torch.Tensor:
    """Tokenizer latents (B, V, C, h, w) -> tokens (B, V * h * w, C) (camera-major, row-major cells)."""
    return latents.permute(0, 1, 3, 4, 2).flatten(1, 3)


def _latent_episodes(ds, episodes: list[int], latents) -> LatentEpisodes:
    """:class:`LatentEpisodes` of ``episodes`` of ``ds``, ``latents(e)`` giving episode e's (T, L, c).

    Raises:
        DatasetError: no actions or reward columns (``next.success``, ``complementary_info.dense_reward``).
    """
    src = ds.root
    lat, st, act, rew, suc, start, end = [], [], [], [], [], [], []
    f0 = 0
    for e in episodes:
        ep = ds.episode(e)
        for key in ("next.success", "complementary_info.dense_reward"):
            if key not in ep.extra:
                raise DatasetError(f"{src} has no {key} column (record it with robodream collect)")
        if ep.action.shape[1] == 0:
            raise DatasetError(f"{src} has no action feature")
        lat.append(latents(e).to(torch.float16))
        T = len(lat[-1])
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


def image_token_datasets(cfg: GWMRunConfig, tokenizer, device) -> tuple[list[str], LatentEpisodes,
                                                                         LatentEpisodes | None]:
    """The run's cameras and its datasets' training and held-out episodes as image tokens
    (:func:`encode_image_token_episodes`; held out as :func:`split_episodes`).

    Raises:
        DatasetError: unreadable datasets, datasets with other cameras, a camera they lack.
    """
    from robodream.data.lerobot import LeRobotDataset

    datasets = [LeRobotDataset(p) for p in cfg.data]
    cams = {tuple(ds.cameras) for ds in datasets}
    if len(cams) != 1:
        raise DatasetError(f"the datasets have different cameras {sorted(cams)}")
    cameras = list(cfg.cameras) or list(cams.pop())
    splits = [split_episodes(ds.num_episodes, cfg.heldout_fraction) for ds in datasets]
    train = _cat_latent_episodes([encode_image_token_episodes(tokenizer, ds, s[0], cameras, device=device)
                                  for ds, s in zip(datasets, splits)])
    held = [encode_image_token_episodes(tokenizer, ds, s[1], cameras, device=device)
            for ds, s in zip(datasets, splits) if s[1]]
    return cameras, train, _cat_latent_episodes(held) if held else None


def train_gwm(cfg: GWMRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train the latent dynamics on set-VAE latents (the GWM) or on image-tokenizer latents (the video
    arm of the comparison; :class:`GWMRunConfig`) and write the run directory ``out``; returns held-out
    validation results (``latent_mse`` of one-step predictions and ``copy_last_latent_mse``, normalised
    units; ``reward_mae``; ``success_accuracy``; ``state_mae`` in state units).

    Raises:
        DatasetError: unreadable Gaussian directories or (source) datasets, Gaussian counts that differ
            from the VAE's, images the tokenizer does not take.
        CheckpointError: a bad VAE or tokenizer run; ``out`` holds another run and not ``resume``.
        ConfigError: neither or both representations' inputs, bad settings, or a ``--resume`` that
            changes the run.
    """
    from robodream.tokenizer.train import load_tokenizer

    representation = cfg.representation
    run = Run(out, cfg, resume=resume)
    with run.guard():
        device = resolve_device(cfg.train.device)
        m = cfg.model
        if representation == "gaussian_set":
            vae, _ = load_set_vae(cfg.vae, device=device)
            _, train, held = gwm_datasets(cfg, vae, device)
            m.n_latents, m.latent_dim = vae.cfg.n_latents, vae.cfg.latent_dim
            frozen = ("vae", cfg.vae)
        else:
            tokenizer = load_tokenizer(cfg.tokenizer, device=device)
            cameras, train, held = image_token_datasets(cfg, tokenizer, device)
            cfg.token_cameras = tuple(cameras)
            m.n_latents, m.latent_dim = train.latents.shape[1], train.latents.shape[2]
            frozen = ("tokenizer", cfg.tokenizer)
        m.action_dim = train.action.shape[1]
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
        val = run.fit(trainer, meta={"n_train_transitions": len(anchors), "representation": representation},
                      json_files={"normalization.json": norm}, copies=dict([frozen]))
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


def _load_dynamics(run_dir: Path, device) -> tuple[GWMDynamics, dict]:
    from robodream.train.run_dir import load_model_run
    from robodream.utils.io import read_json

    model, cfg = load_model_run(run_dir, GWMDynamics, GWMDynamicsConfig)
    norm = read_json(run_dir / "normalization.json")
    model.set_normalization(*(torch.tensor(norm[k]) for k in GWMDynamics.NORMALIZATION))
    return model.to(device).eval().requires_grad_(False), cfg


def load_gwm(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained GWM run (set-VAE latents): ``(dynamics, vae, run config dict)``, both in eval mode.

    Raises:
        CheckpointError: not a GWM run (e.g. a policy run, or dynamics over image tokens), unfinished,
            or weights that do not fit.
    """
    run_dir = Path(run_dir)
    model, cfg = _load_dynamics(run_dir, device)
    if cfg.get("tokenizer"):
        raise CheckpointError(f"{run_dir} is latent dynamics over image tokens (trained with --tokenizer), not a "
                              "Gaussian world model; it has no Gaussians to render")
    vae, _ = load_set_vae(run_dir / "vae", device=device)
    return model, vae, cfg


def load_dynamics_observer(run_dir: str | os.PathLike, *, cameras: list[str] | None = None, image_size: int = 64,
                           device: str | torch.device = "cpu"):
    """Any latent-dynamics run and the observer that turns live frames into its latents:
    ``(dynamics, observer, run config dict)``. A GWM run's observer is a
    :class:`~robodream.gwm.features.GWMFeatureEncoder` over ``cameras`` at ``image_size`` (default
    back-projection settings); an image-token run's a :class:`~robodream.gwm.features.ImageTokenObserver`
    over its own cameras and its tokenizer's image size.

    Raises:
        CheckpointError: not a latent-dynamics run, unfinished, or weights that do not fit.
        ConfigError: a GWM run without ``cameras``.
    """
    from robodream.gwm.features import GWMFeatureEncoder, ImageTokenObserver
    from robodream.tokenizer.train import load_tokenizer

    run_dir = Path(run_dir)
    model, cfg = _load_dynamics(run_dir, device)
    if cfg.get("tokenizer"):
        return model, ImageTokenObserver(load_tokenizer(run_dir / "tokenizer", device=device),
                                         cfg["token_cameras"]), cfg
    if not cameras:
        raise ConfigError(f"{run_dir} is a GWM run: name the cameras its Gaussians were built from")
    vae, _ = load_set_vae(run_dir / "vae", device=device)
    spec = {"cameras": list(cameras), "image_size": [image_size, image_size],
            "pixel": dataclasses.asdict(PixelGaussianConfig(n=vae.cfg.n_gaussians))}
    return model, GWMFeatureEncoder(vae, spec), cfg
