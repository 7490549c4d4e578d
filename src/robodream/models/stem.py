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
