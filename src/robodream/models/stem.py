"""A strided convolutional stem: pixel-resolution maps to a coarse grid of tokens.

Used where a model needs detail that the image tokenizer's latents do not keep: the control
maps of the transfer models (ControlNet-style, added to the target tokens) and the raw
reference frames of GigaWorld-Policy (``PolicyConfig.pixel_stem_width``; small task objects
such as reach's goal marker cover 2-5 pixels of a 64x64 frame and do not survive the
tokenizer, benchmarks/RESULTS.md).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from einops import rearrange


class ConvStem(nn.Module):
    """Maps (B, C_in, H, W) -> tokens (B, (H / 2^k) * (W / 2^k), dim), row-major.

    A 3x3 conv at full resolution, then ``halvings`` (k) stride-2 4x4 convs of ``width``
    channels (SiLU between), then a 1x1 projection to ``dim``. H and W must be multiples of 2^k.
    The patch-embedding role of ViT's hybrid conv stem (Dosovitskiy et al. 2021, Sec. 3.1;
    Xiao et al. 2021, "Early convolutions help transformers see better"); for control maps the
    ControlNet-style encoder of Cosmos-Transfer (arXiv 2503.14492).
    """

    def __init__(self, in_channels: int, width: int, dim: int, halvings: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(halvings):
            layers += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rearrange(self.net(x), "b d y x -> b (y x) d")

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens as :meth:`forward`, plus the feature map after the first halving
        (B, width, H / 2, W / 2): the finest map with a receptive field beyond one 3x3 conv
        (what :class:`SpatialSoftmax` reads). Needs ``halvings >= 1``."""
        h = self.net[:4](x)
        return rearrange(self.net[4:](h), "b d y x -> b (y x) d"), h


class SpatialSoftmax(nn.Module):
    """Feature map (B, C, H, W) -> K keypoints (B, K, 2): image coordinates in [-1, 1] (x, y).

    A 1x1 conv gives K maps; each becomes a distribution over pixels by a softmax with a learned
    temperature, and its keypoint is the expected pixel position. Position is read explicitly
    rather than left to be inferred from which token a feature sits in: a small object (reach's
    goal marker, 2-5 px at 64x64) gets a sub-token position. Levine et al. 2016, "End-to-end
    training of deep visuomotor policies" (JMLR 17), Sec. 4.2; used by robomimic and Diffusion
    Policy (Chi et al. 2023) image encoders.
    """

    def __init__(self, in_channels: int, n_keypoints: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, n_keypoints, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_log_prob(x)[0]

    def forward_with_log_prob(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keypoints (B, K, 2) and the log-probabilities (B, K, H * W) float32 of the K
        distributions over pixels (row-major), for a loss that supervises where they look."""
        B, _, H, W = x.shape
        logits = self.proj(x).flatten(2).float() / self.log_temperature.float().exp()  # (B, K, H*W)
        log_prob = logits.log_softmax(-1)
        ys = torch.linspace(-1.0, 1.0, H, device=x.device)
        xs = torch.linspace(-1.0, 1.0, W, device=x.device)
        grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
        coords = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=-1)  # (H*W, 2)
        return (log_prob.exp() @ coords).to(x.dtype), log_prob  # (B, K, 2), (B, K, H*W)


def keypoint_target(segmentation: torch.Tensor, class_ids: list[int], size: tuple[int, int]) -> torch.Tensor:
    """Where supervised keypoints should look: per class, the share of each cell of a ``size``
    grid covered by that class, normalised to sum to 1 (all zeros where the class is not seen).

    Args:
        segmentation: (B, H, W) uint8 class ids (robodream.envs.shift.SEG_CLASSES).
        class_ids: K class ids, one per supervised keypoint.
        size: (h, w) of the keypoint maps; H and W must be multiples of them.

    Returns:
        (B, K, h * w) float32 target distributions (rows of zeros: class absent).
    """
    masks = torch.stack([segmentation == c for c in class_ids], 1).float()  # (B, K, H, W)
    cells = torch.nn.functional.adaptive_avg_pool2d(masks, size).flatten(2)  # (B, K, h*w)
    return cells / cells.sum(-1, keepdim=True).clamp_min(1e-12)
