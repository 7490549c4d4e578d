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

and, unless ``refiner_width`` is 0, a **pixel refiner** (:class:`PixelRefiner`, a small U-Net)
that turns the decoded latents into the output frame at pixel resolution: the tokenizer's
reconstruction caps any latent-space output (26.6 dB on the corner camera under random
appearances, only 1.4 dB above copying the unshifted source frame; the latent-only model reached
24.0, below the copy), while the target is pixel-aligned with inputs the model has. The refiner
adds a residual to a **prior** frame computed in closed form from those inputs (the warp, or the
paste of the reference), so it starts from the prior and learns what the prior gets wrong. It is
trained with the flow model, on the decoded one-step estimate ``x_t - t v`` (detached), by the
mean squared error against the target frame (PSNR's own measure; with L1 the refiner stayed at the
prior: most pixels are exact there, and the signs of their tiny errors drowned the few large ones;
300 refiner-only steps: L1 +0.00 dB, MSE +0.19 dB over the prior).

Subclasses say what the control, the reference and the prior are:

:class:`AppearanceTransfer`: control = depth (:func:`depth_features`, 1 channel) + one-hot
segmentation (:data:`~robodream.envs.shift.SEG_CLASSES`, 7 channels) of the frame; reference =
one RGB frame in the target appearance (a frame, not text: random appearances have no
vocabulary, and a frame says "this colour of table" exactly). Motion comes from the control,
appearance from the reference. Prior (:func:`appearance_prior`): the reference frame comes from
the same static camera, so where a pixel shows the same class as in the reference it is pasted
from the reference; elsewhere the source frame is recoloured per class by the gain between the
reference and the source frame at the reference's time. (A copy of the source scores 25.2 dB on
held-out reach episodes, this prior alone 32.6 dB on the corner camera and 29.3 dB on the wrist
camera, whose view moves; ``benchmarks/scripts/appearance_prior.py``, 2026-12-03.) The refiner also sees the
source frame (Cosmos-Transfer's "vis" control is the blurred source video).

:class:`ViewTransfer` (warp, then refine): control = the source frame forward-warped into the
target camera with its depth (:func:`~robodream.transfer.warp.forward_warp`: RGB, hole mask,
warped depth: 5 channels); reference = the source frame's latents (content for the holes);
pose = the relative camera transform and focal ratio (13 numbers). Prior: the warp where it
landed, the decoded latents in its holes.

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
from typing import Callable, ClassVar

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

    # --- pixel refiner (0: none; the output is the tokenizer's decoding of the latents) ----------
    refiner_width: int = 16  # channels of the U-Net's full-resolution level (twice that below)
    pixel_loss_weight: float = 1.0  # weight of the refiner's squared pixel error beside the flow loss

    # --- rectified flow -----------------------------------------------------------------------
    time_shift: float = 1.0  # s in t' = s t / (1 + (s - 1) t), training and sampling alike
    sample_steps: int = 8  # Euler steps at generation (1: the conditional mean, the best PSNR; more: sharper)

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("camera", "latent_channels", "latent_size", "image_size")
    #: Runs saved before the refiner existed generated through the tokenizer alone.
    LEGACY_DEFAULTS: ClassVar[dict[str, object]] = {"refiner_width": 0}

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
        if self.refiner_width < 0 or self.pixel_loss_weight < 0:
            raise ConfigError(f"refiner_width and pixel_loss_weight must be >= 0, got {self.refiner_width}, "
                              f"{self.pixel_loss_weight}")
        if self.refiner_width and self.image_size % 4:
            raise ConfigError(f"the pixel refiner needs image_size divisible by 4, got {self.image_size}")

    @property
    def control_channels(self) -> int:
        return 1 + len(SEG_CLASSES) if self.kind == "appearance" else 5

    @property
    def pose_dim(self) -> int:
        return POSE_DIM if self.kind == "view" else 0

    @property
    def refiner_channels(self) -> int:
        """Input channels of the refiner: decoded frame + prior (+ source frame and the same-class
        mask for appearance) + the control maps."""
        return 3 + 3 + (4 if self.kind == "appearance" else 0) + self.control_channels


def depth_features(depth_m: torch.Tensor) -> torch.Tensor:
    """Depth (...) in metres (inf: nothing seen) -> inverse depth in [-1, 1]: ``2 min(NEAR / z, 1) - 1``."""
    return 2.0 * (NEAR_M / depth_m.float().clamp_min(1e-6)).clamp(0.0, 1.0) - 1.0


def _rgb(x: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 or float in [0, 1] -> (B, 3, H, W) float in [0, 1]."""
    x = x.permute(0, 3, 1, 2)
    return x.float() / 255.0 if not x.is_floating_point() else x.float()


def appearance_prior(source: torch.Tensor, segmentation: torch.Tensor, reference: torch.Tensor,
                     reference_segmentation: torch.Tensor, source_reference: torch.Tensor,
                     min_pixels: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """The closed-form guess of a frame in the reference's appearance (AppearanceTransfer's prior).

    Where pixel p shows the same segmentation class as the reference at p, the reference's pixel
    (a static camera sees the same surface there); elsewhere the source pixel times the class's
    per-channel gain, (mean of the class in the reference + 1/255) / (mean in the source frame at
    the reference's time + 1/255), or 1 for a class with fewer than ``min_pixels`` pixels there.

    Args:
        source: the source frames (B, H, W, 3) uint8; segmentation: their classes (B, H, W).
        reference: the reference frames in the target appearance (B, H, W, 3) uint8.
        reference_segmentation: their classes (B, H, W); source_reference: the source frames at
            the reference's time (B, H, W, 3) uint8 (same state, source appearance).

    Returns:
        The prior (B, 3, H, W) float in [0, 1] and the same-class mask (B, 1, H, W) float.
    """
    K = len(SEG_CLASSES)
    seg = segmentation.long().clamp(0, K - 1)
    rseg = reference_segmentation.long().clamp(0, K - 1)
    src, ref, src_ref = _rgb(source), _rgb(reference), _rgb(source_reference)
    onehot = F.one_hot(rseg, K).permute(0, 3, 1, 2).float()  # (B, K, H, W)
    count = onehot.sum((2, 3))  # (B, K)
    mean_ref = torch.einsum("bkhw,bchw->bkc", onehot, ref) / count.clamp_min(1).unsqueeze(-1)
    mean_src = torch.einsum("bkhw,bchw->bkc", onehot, src_ref) / count.clamp_min(1).unsqueeze(-1)
    gain = torch.where((count >= min_pixels).unsqueeze(-1), (mean_ref + 1 / 255) / (mean_src + 1 / 255),
                       torch.ones_like(mean_ref))  # (B, K, 3)
    per_pixel = torch.gather(gain, 1, seg.flatten(1).unsqueeze(-1).expand(-1, -1, 3))  # (B, H*W, 3)
    recoloured = (src * rearrange(per_pixel, "b (y x) c -> b c y x", y=src.shape[2])).clamp(0, 1)
    same = (seg == rseg).unsqueeze(1).float()
    return same * ref + (1 - same) * recoloured, same


class PixelRefiner(nn.Module):
    """Pixel maps (B, C_in, H, W) -> a residual frame (B, 3, H, W): a U-Net of three levels (H,
    H/2, H/4; ``width``, 2 ``width``, 2 ``width`` channels; a dilated conv at the bottom), skip
    connections by concatenation, SiLU; the last conv starts at zero, so the output starts as the
    prior it is added to. Ronneberger et al. 2015 (U-Net), at a restoration network's scale."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        w, w2 = width, 2 * width
        act = nn.SiLU

        def conv(i: int, o: int, dilation: int = 1) -> nn.Conv2d:
            return nn.Conv2d(i, o, 3, padding=dilation, dilation=dilation)

        self.enc0 = nn.Sequential(conv(in_channels, w), act(), conv(w, w), act())
        self.enc1 = nn.Sequential(nn.Conv2d(w, w2, 4, stride=2, padding=1), act(), conv(w2, w2), act())
        self.enc2 = nn.Sequential(nn.Conv2d(w2, w2, 4, stride=2, padding=1), act(), conv(w2, w2, 2), act(),
                                  conv(w2, w2), act())
        self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(w2, w2), act())
        self.dec1 = nn.Sequential(conv(2 * w2, w2), act())
        self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv(w2, w), act())
        self.dec0 = nn.Sequential(conv(2 * w, w), act())
        self.out = nn.Conv2d(w, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e0 = self.enc0(x)
        e1 = self.enc1(e0)
        d1 = self.dec1(torch.cat([self.up2(self.enc2(e1)), e1], 1))
        return self.out(self.dec0(torch.cat([self.up1(d1), e0], 1)))


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
        self.refiner = PixelRefiner(cfg.refiner_channels, cfg.refiner_width) if cfg.refiner_width else None
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
             generator: torch.Generator | None = None, pixels: dict[str, torch.Tensor] | None = None,
             target_rgb: torch.Tensor | None = None, decode: Callable[[torch.Tensor], torch.Tensor] | None = None
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow loss: mean squared velocity error at one time per sample (drawn from
        ``generator``); with a refiner, ``pixels`` (:meth:`refine`'s inputs), ``target_rgb`` (B, H,
        W, 3) uint8 and ``decode`` (latents (B, C, h, w) -> frames (B, 3, H, W) in [0, 1], the
        tokenizer's decoder), plus ``pixel_loss_weight`` times the mean squared error of the refined
        one-step estimate ``x_t - t v`` (detached: the refiner does not train the flow)."""
        B = x0.shape[0]
        t = sample_time(B, self.cfg.time_shift, generator=generator, device=x0.device)  # (B,)
        eps = torch.randn(x0.shape, generator=generator).to(x0.device)
        x_t = interpolate(x0, eps, t)
        v = self(x_t, t, control, reference, pose)
        flow = (v.float() - velocity_target(x0, eps)).pow(2).mean()
        if self.refiner is None:
            return flow, {"loss": float(flow.detach())}
        if pixels is None or target_rgb is None or decode is None:
            raise ValueError("a transfer model with a pixel refiner needs pixels, target_rgb and decode in its loss")
        with torch.no_grad():
            decoded = decode(x_t - t.view(-1, 1, 1, 1) * v.float()).permute(0, 2, 3, 1)
        pixel = (self.refine(decoded, control, clamp=False, **pixels) - _rgb(target_rgb).permute(0, 2, 3, 1)
                 ).pow(2).mean()
        loss = flow + self.cfg.pixel_loss_weight * pixel
        return loss, {"loss": float(loss.detach()), "loss_flow": float(flow.detach()), "loss_pixel": float(pixel.detach())}

    @torch.no_grad()
    def generate_frames(self, control: torch.Tensor, reference: torch.Tensor, pose: torch.Tensor | None,
                        decode: Callable[[torch.Tensor], torch.Tensor], pixels: dict[str, torch.Tensor] | None = None,
                        steps: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Output frames (B, H, W, 3) float in [0, 1]: :meth:`generate`, ``decode`` (the tokenizer's
        decoder: latents (B, C, h, w) -> (B, 3, H, W) in [0, 1]), then :meth:`refine` with ``pixels``."""
        x = self.generate(control, reference, pose, steps=steps, generator=generator)
        return self.refine(decode(x.float()).permute(0, 2, 3, 1), control, **(pixels or {}))

    def refine(self, decoded: torch.Tensor, control: torch.Tensor, clamp: bool = True,
               **pixels: torch.Tensor) -> torch.Tensor:
        """The output frames (B, H, W, 3) float in [0, 1] from the decoded latents ``decoded`` (B,
        H, W, 3) in [0, 1], the control maps (B, Cc, H, W) and the subclass's pixel inputs
        (:meth:`prior`); without a refiner, ``decoded`` itself. ``clamp``: clip to [0, 1]."""
        if self.refiner is None:
            return decoded
        prior, extra = self.prior(decoded, **pixels)  # (B, 3, H, W), (B, E, H, W)
        dec = decoded.permute(0, 3, 1, 2).float()
        out = prior + self.refiner(torch.cat([dec, prior, extra, control.float()], 1))
        out = out.permute(0, 2, 3, 1)
        return out.clamp(0, 1) if clamp else out

    def prior(self, decoded: torch.Tensor, **pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover
        """The prior frame (B, 3, H, W) the refiner adds to, and extra refiner inputs (B, E, H, W)."""
        raise NotImplementedError

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

    def prior(self, decoded: torch.Tensor, *, source: torch.Tensor, segmentation: torch.Tensor,  # type: ignore[override]
              reference_rgb: torch.Tensor, reference_segmentation: torch.Tensor,
              source_reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`appearance_prior`; extra refiner inputs: the source frame and the same-class mask.
        source, reference_rgb, source_reference (B, H, W, 3) uint8; segmentations (B, H, W)."""
        prior, same = appearance_prior(source, segmentation, reference_rgb, reference_segmentation, source_reference)
        return prior, torch.cat([_rgb(source), same], 1)


class ViewTransfer(TransferModel):
    """The source view warped into the target camera (+ hole mask, warped depth), the source
    frame's latents and the relative pose -> the target view's latents."""

    def make_control(self, warped: torch.Tensor, hole: torch.Tensor, warped_depth: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """warped (B, H, W, 3) uint8, hole (B, H, W) bool, warped_depth (B, H, W) metres -> control (B, 5, H, W)."""
        rgb = warped.permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (B, 3, H, W) in [-1, 1], holes -1
        return torch.cat([rgb, hole.float().unsqueeze(1) * 2 - 1, depth_features(warped_depth).unsqueeze(1)], dim=1)

    def prior(self, decoded: torch.Tensor, *, warped: torch.Tensor, hole: torch.Tensor  # type: ignore[override]
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The warp where it landed, the decoded latents in its holes; no extra inputs (the control
        holds the warp). warped (B, H, W, 3) uint8, hole (B, H, W) bool."""
        h = hole.float().unsqueeze(1)
        return h * decoded.permute(0, 3, 1, 2).float() + (1 - h) * _rgb(warped), decoded.new_zeros(
            (decoded.shape[0], 0, *decoded.shape[1:3]))


MODELS: dict[str, type[TransferModel]] = {"appearance": AppearanceTransfer, "view": ViewTransfer}


def build_transfer(cfg: TransferConfig) -> TransferModel:
    """The model class of ``cfg.kind``."""
    return MODELS[cfg.kind](cfg)
