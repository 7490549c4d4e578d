"""Image tokenizer training step time, fp32 vs bf16 autocast, on this CPU (benchmarks/RESULTS.md,
"Training precision depends on the CPU"): default TokenizerConfig, batch 64 uint8 frames, 2 threads,
4 steps per pass, median of the last 3; passes fp32, bf16, fp32.

Usage: python benchmarks/scripts/tokenizer_precision.py
"""

import statistics
import time

import torch

from robodream.tokenizer.model import ImageTokenizer, TokenizerConfig
from robodream.train.loop import autocast_context


def tokenizer_setup() -> tuple[ImageTokenizer, torch.optim.Optimizer, torch.Tensor]:
    """The default tokenizer (seed 0), its AdamW and a batch of 64 random (64, 64, 3) uint8 frames."""
    torch.manual_seed(0)
    model = ImageTokenizer(TokenizerConfig()).train()
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    frames = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)  # (N, H, W, 3)
    return model, opt, frames


def step_times(model: ImageTokenizer, opt: torch.optim.Optimizer, frames: torch.Tensor, precision: str,
               steps: int) -> list[float]:
    """Wall seconds of each of ``steps`` training steps (forward, backward, AdamW) in ``precision``."""
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        with autocast_context(torch.device("cpu"), precision):
            loss, _ = model(frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return times


if __name__ == "__main__":
    torch.set_num_threads(2)
    setup = tokenizer_setup()
    for precision in ("fp32", "bf16", "fp32"):
        times = step_times(*setup, precision, steps=4)
        print(precision, "step s p50 of last 3:", round(statistics.median(times[1:]), 2), flush=True)
