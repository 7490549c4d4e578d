"""Image tokenizer: shapes, normalised latents, input validation, a short training run."""

from __future__ import annotations

import pytest
import torch

from robodream.errors import ConfigError
from robodream.eval.metrics import psnr
from robodream.tokenizer.model import ImageTokenizer, TokenizerConfig


def test_shapes_and_normalisation():
    cfg = TokenizerConfig(image_size=32, latent_channels=4, channels=(8, 16))
    assert cfg.latent_shape == (4, 8, 8) and cfg.downsample == 4
    tok = ImageTokenizer(cfg).eval()
    frames = torch.randint(0, 255, (6, 32, 32, 3), dtype=torch.uint8)
    tok.set_latent_stats([frames[:3], frames[3:]])
    z = tok.encode(frames)
    assert z.shape == (6, 4, 8, 8)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(dim=(0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3, rtol=0)
    x = tok.decode(z)
    assert x.shape == (6, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    # float (N, 3, H, W) input in [0, 1] is the same as uint8 (N, H, W, 3)
    torch.testing.assert_close(tok.encode(frames.permute(0, 3, 1, 2).float() / 255), z)


def test_wrong_image_size():
    tok = ImageTokenizer(TokenizerConfig(image_size=32, channels=(8, 16)))
    with pytest.raises(ConfigError, match="32x32"):
        tok.encode(torch.zeros(2, 64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ConfigError):
        TokenizerConfig(image_size=30, channels=(8, 16))


def test_training_reduces_reconstruction_error():
    torch.manual_seed(0)
    tok = ImageTokenizer(TokenizerConfig(image_size=16, latent_channels=4, channels=(16,)))
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    frames = torch.stack([((xx + s) % 16 * 16).clamp(0, 255) for s in range(8)]).to(torch.uint8)
    frames = frames[..., None].expand(8, 16, 16, 3).contiguous()
    opt = torch.optim.Adam(tok.parameters(), 3e-3)
    target = frames.permute(0, 3, 1, 2).float() / 255
    before = psnr(tok.decode(tok.encode(frames)), target)
    for _ in range(150):
        loss, _ = tok.reconstruct_loss(frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = psnr(tok.decode(tok.encode(frames)), target)
    assert after > before + 8
