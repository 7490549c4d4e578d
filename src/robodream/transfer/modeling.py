"""AppearanceTransfer and ViewTransfer: control-conditioned generators of an episode's frames.

Cosmos-Transfer (arXiv 2503.14492) generates a video from control videos (depth, segmentation,
edges) with a diffusion transformer and ControlNet branches; GigaWorld-0's data engine uses
such transfer to multiply real episodes into new appearances and viewpoints. At robodream's
scale both models here are one network, :class:`TransferModel`, working **per frame** in the
tokenizer's latent space (64x64 RGB <-> 8x8x8 latents) with the project's rectified flow
(:mod:`robodream.models.flow`): the target frame's latents ``x0`` (C, h, w) are generated from
noise in a few Euler steps, conditioned on

* **control maps** at pixel resolution (B, Cc, H, W), encoded by a strided conv stem down to
  the latent grid and *added* to the noisy target tokens cell by cell (ControlNet-style: the
  control and the output share a grid);
* **reference tokens**: the latents of one reference frame (C, h, w), a second set of h*w
  tokens the target tokens attend to (full self-attention over both sets); they carry what the
  control does not: colours and textures;
* a **conditioning vector** (AdaLN) = flow-time embedding (+ the relative camera pose for view transfer).

Subclasses say what the control and the reference are:

:class:`AppearanceTransfer`: control = depth (:func:`depth_features`, 1 channel) + one-hot
segmentation (:data:`~robodream.envs.shift.SEG_CLASSES`, 7 channels) of the frame; reference =
one RGB frame in the target appearance (a frame, not text: random appearances have no
vocabulary, and a frame says "this colour of table" exactly). Motion comes from the control,
appearance from the reference.

:class:`ViewTransfer` (warp, then refine): control = the source frame forward-warped into the
target camera with its depth (:func:`~robodream.transfer.warp.forward_warp`: RGB, hole mask,
warped depth: 5 channels); reference = the source frame's latents (content for the holes);
pose = the relative camera transform and focal ratio (13 numbers).

Shapes (B batch, C/h/w latent grid, H/W image, Cc control channels, P pose size)::

    x0, x_t, v:   (B, C, h, w)     target latents, noisy latents, velocity
    control:      (B, Cc, H, W)    float control maps
    reference:    (B, C, h, w)     reference latents
    pose:         (B, P)           P = 13 for view transfer, 0 for appearance
    t:            (B,)             flow time, 0 = data, 1 = noise
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from robodream.envs.shift import SEG_CLASSES
from robodream.errors import ConfigError
from robodream.models.flow import euler_step, euler_timesteps, interpolate, sample_time, velocity_target
from robodream.models.stem import ConvStem
from robodream.models.transformer import AdaLNBlock, FinalLayer, TimestepEmbedding

KINDS = ("appearance", "view")
#: Depth features: ``2 min(NEAR / z, 1) - 1``, inverse depth in [-1, 1] (1 at NEAR metres or closer, -1 at infinity).
NEAR_M = 0.25
#: Size of the relative pose vector of view transfer: rotation (9), translation (3, metres), focal ratio - 1.
POSE_DIM = 13


@dataclass
class TransferConfig:
    """Architecture and objective of :class:`TransferModel`."""

    kind: str = "appearance"  # appearance (depth + segmentation + reference frame) or view (warp + source frame + pose)
    # --- inputs (filled in from the dataset and tokenizer at training time) ----------------------
    camera: str = ""  # the camera transferred (one per run)
    latent_channels: int = 8  # tokenizer latent channels C
    latent_size: int = 8  # tokenizer latent grid side h = w
    image_size: int = 64  # frame side H = W

    # --- transformer --------------------------------------------------------------------------
    dim: int = 128  # token width
    depth: int = 4  # number of AdaLN blocks
    n_heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    control_width: int = 64  # channels of the control conv stem

    # --- rectified flow -----------------------------------------------------------------------
    time_shift: float = 1.0  # s in t' = s t / (1 + (s - 1) t), training and sampling alike
    sample_steps: int = 8  # Euler steps at generation (1: the conditional mean, the best PSNR; more: sharper)

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("camera", "latent_channels", "latent_size", "image_size")

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} not divisible by n_heads {self.n_heads}")
        down = self.image_size // max(self.latent_size, 1)
        if self.latent_size < 1 or self.image_size % self.latent_size or down & (down - 1):
            raise ConfigError(f"image_size {self.image_size} must be latent_size {self.latent_size} times a power of 2")
        if self.sample_steps < 1:
            raise ConfigError(f"sample_steps must be >= 1, got {self.sample_steps}")

    @property
    def control_channels(self) -> int:
        return 1 + len(SEG_CLASSES) if self.kind == "appearance" else 5

    @property
    def pose_dim(self) -> int:
        return POSE_DIM if self.kind == "view" else 0


def depth_features(depth_m: torch.Tensor) -> torch.Tensor:
    """Depth (...) in metres (inf: nothing seen) -> inverse depth in [-1, 1]: ``2 min(NEAR / z, 1) - 1``."""
    return 2.0 * (NEAR_M / depth_m.float().clamp_min(1e-6)).clamp(0.0, 1.0) - 1.0


def relative_pose(K_src: np.ndarray, T_src: np.ndarray, K_dst: np.ndarray, T_dst: np.ndarray) -> np.ndarray:
    """Pose input of view transfer (13,) float32: source-to-target camera transform ``T_dst T_src^-1``
    (rotation row-major, 9; translation, metres, 3) and the focal-length ratio minus 1."""
    rel = T_dst @ np.linalg.inv(T_src)
    return np.concatenate([rel[:3, :3].ravel(), rel[:3, 3], [K_dst[1, 1] / K_src[1, 1] - 1.0]]).astype(np.float32)


class TransferModel(nn.Module):
    """Rectified-flow transformer over one frame's latents; see the module docstring."""

    model_type = "control_transfer"

    def __init__(self, cfg: TransferConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, C, L = cfg.dim, cfg.latent_channels, cfg.latent_size**2
        self.latent_in = nn.Linear(C, D)
        self.reference_in = nn.Linear(C, D)
        self.control = ConvStem(cfg.control_channels, cfg.control_width, D,
                                   int(math.log2(cfg.image_size // cfg.latent_size)))
        self.pos_target = nn.Parameter(torch.zeros(L, D))
        self.pos_reference = nn.Parameter(torch.zeros(L, D))
        self.time_embedding = TimestepEmbedding(D)
        self.pose_in = (nn.Sequential(nn.Linear(cfg.pose_dim, D), nn.SiLU(), nn.Linear(D, D))
                        if cfg.pose_dim else None)
        self.blocks = nn.ModuleList(AdaLNBlock(D, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = FinalLayer(D, C)  # zero-initialised: predicts v = 0 at the start
        for p in (self.pos_target, self.pos_reference):
            nn.init.normal_(p, std=0.02)

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, control: torch.Tensor, reference: torch.Tensor,
                pose: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity (B, C, h, w) at noisy latents ``x_t`` (B, C, h, w), flow time ``t`` (B,).

        control (B, Cc, H, W), reference (B, C, h, w), pose (B, P) (view transfer only).

        Raises:
            ValueError: inputs of another latent grid, image size or control channel count.
        """
        cfg = self.cfg
        B, h = x_t.shape[0], cfg.latent_size
        lat = (cfg.latent_channels, h, h)
        if tuple(x_t.shape[1:]) != lat or tuple(reference.shape[1:]) != lat:
            raise ValueError(f"latents must be (B, {', '.join(map(str, lat))}), got {tuple(x_t.shape)} and "
                             f"{tuple(reference.shape)}")
        ctl = (cfg.control_channels, cfg.image_size, cfg.image_size)
        if tuple(control.shape[1:]) != ctl:
            raise ValueError(f"control must be (B, {', '.join(map(str, ctl))}), got {tuple(control.shape)}")
        tokens = self.latent_in(rearrange(x_t, "b c y x -> b (y x) c")) + self.control(control) + self.pos_target
        ref = self.reference_in(rearrange(reference, "b c y x -> b (y x) c")) + self.pos_reference  # (B, L, D)
        x = torch.cat([tokens, ref], dim=1)  # (B, 2L, D)
        cond = self.time_embedding(t).unsqueeze(1)  # (B, 1, D)
        if self.pose_in is not None:
            if pose is None or pose.shape != (B, cfg.pose_dim):
                raise ValueError(f"view transfer needs a pose (B, {cfg.pose_dim})")
            cond = cond + self.pose_in(pose).unsqueeze(1)
        for blk in self.blocks:
            x, _ = blk(x, blk.modulate(cond))
        v = self.head(x[:, :h * h], self.head.modulate(cond))  # (B, L, C)
        return rearrange(v, "b (y x) c -> b c y x", y=h)

    def loss(self, x0: torch.Tensor, control: torch.Tensor, reference: torch.Tensor, pose: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow loss: mean squared velocity error at one time per sample (drawn from ``generator``)."""
        B = x0.shape[0]
        t = sample_time(B, self.cfg.time_shift, generator=generator, device=x0.device)  # (B,)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        v = self(interpolate(x0, eps, t), t, control, reference, pose)
        loss = (v.float() - velocity_target(x0, eps)).pow(2).mean()
        return loss, {"loss": float(loss.detach())}

    @torch.no_grad()
    def generate(self, control: torch.Tensor, reference: torch.Tensor, pose: torch.Tensor | None = None,
                 steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Target latents (B, C, h, w) by ``steps`` Euler steps (default ``cfg.sample_steps``) from
        noise (drawn from ``generator`` on the CPU). One step from t = 1 gives ``eps - v``, the
        network's estimate of E[x0 | condition]: the highest-PSNR (blurriest) output."""
        B, dev = control.shape[0], control.device
        x = torch.randn((B, self.cfg.latent_channels, self.cfg.latent_size, self.cfg.latent_size),
                        generator=generator).to(dev)
        ts = euler_timesteps(steps or self.cfg.sample_steps, self.cfg.time_shift).tolist()
        for t, t_next in zip(ts[:-1], ts[1:]):
            v = self(x, torch.full((B,), t, device=dev), control, reference, pose)
            x = euler_step(x, v.float(), t, t_next)
        return x

    # -------------------------------------------------------------- building the control maps
    def make_control(self, **inputs) -> torch.Tensor:  # pragma: no cover - subclasses
        raise NotImplementedError


class AppearanceTransfer(TransferModel):
    """Depth + segmentation (motion, layout) and a reference frame (appearance) -> the frame's latents."""

    def make_control(self, depth: torch.Tensor, segmentation: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """depth (B, H, W) metres, segmentation (B, H, W) integer SEG_CLASSES ids -> control (B, 8, H, W)."""
        onehot = F.one_hot(segmentation.long().clamp(0, len(SEG_CLASSES) - 1), len(SEG_CLASSES))  # (B, H, W, 7)
        return torch.cat([depth_features(depth).unsqueeze(1), onehot.permute(0, 3, 1, 2).float()], dim=1)


class ViewTransfer(TransferModel):
    """The source view warped into the target camera (+ hole mask, warped depth), the source
    frame's latents and the relative pose -> the target view's latents."""

    def make_control(self, warped: torch.Tensor, hole: torch.Tensor, warped_depth: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """warped (B, H, W, 3) uint8, hole (B, H, W) bool, warped_depth (B, H, W) metres -> control (B, 5, H, W)."""
        rgb = warped.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1], holes -1
        return torch.cat([rgb, hole.float().unsqueeze(1) * 2 - 1, depth_features(warped_depth).unsqueeze(1)], dim=1)


MODELS: dict[str, type[TransferModel]] = {"appearance": AppearanceTransfer, "view": ViewTransfer}


def build_transfer(cfg: TransferConfig) -> TransferModel:
    """The model class of ``cfg.kind``."""
    return MODELS[cfg.kind](cfg)
