"""Train the image tokenizer on a dataset's frames; load a trained one.

``robodream train tokenizer --data DIR [DIR ...] --out RUN`` calls :func:`train_tokenizer`.
Frames of every camera of every dataset are pooled; the last ``heldout_fraction`` of each
dataset's episodes are held out and only used to report reconstruction PSNR.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from robodream.data.latents import split_episodes
from robodream.data.lerobot import LeRobotDataset
from robodream.errors import CheckpointError, ConfigError, DatasetError
from robodream.eval.metrics import psnr
from robodream.tokenizer.model import ImageTokenizer, TokenizerConfig
from robodream.train.checkpoint import load_model_weights
from robodream.train.distributed import broadcast_object, is_main
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import NO_HELDOUT, Run, read_run_config, run_config_from_dict

MODEL_TYPE = ImageTokenizer.model_type


def default_tokenizer_train() -> TrainConfig:
    """Optimisation defaults of the tokenizer (about 6 minutes on 2 CPU cores)."""
    return TrainConfig(steps=1500, batch_size=64, lr=2e-3, weight_decay=0.0, warmup_steps=100,
                       min_lr_ratio=0.05, ema_decay=0.995, val_every=500, checkpoint_every=500)


@dataclass
class TokenizerRunConfig:
    """Everything a tokenizer run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot dataset directories (repeat --data for several)
    model: TokenizerConfig = field(default_factory=TokenizerConfig)
    train: TrainConfig = field(default_factory=default_tokenizer_train)
    heldout_fraction: float = 0.1  # fraction of each dataset's episodes held out (at least 1)
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("model_type",)


def load_frames(datasets: list[LeRobotDataset], heldout_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """All frames of all cameras, split by episode: (N_train, H, W, 3), (N_held, H, W, 3) uint8.

    Raises:
        DatasetError: a dataset without cameras, or datasets with different image sizes.
    """
    for ds in datasets:
        if not ds.cameras:
            raise DatasetError(f"{ds.root} has no camera (video or image feature) to train a tokenizer on")
    sizes = {ds.image_size for ds in datasets}
    if len(sizes) != 1:
        raise DatasetError(f"datasets have different image sizes {sorted(sizes)}; train one tokenizer per size")
    train, held = [], []
    for ds in datasets:
        tr_eps, he_eps = split_episodes(ds.num_episodes, heldout_fraction)
        for cam in ds.cameras:
            frames = ds.all_frames(cam)
            train += [frames[i] for i in tr_eps]
            held += [frames[i] for i in he_eps]
    tr = torch.from_numpy(np.concatenate(train))
    he = torch.from_numpy(np.concatenate(held)) if held else tr[:0]
    return tr, he


def psnr_on(model: ImageTokenizer, frames: torch.Tensor, batch: int = 256) -> float | None:
    """Mean per-frame reconstruction PSNR (dB) of uint8 frames (N, H, W, 3); None for no frames."""
    if len(frames) == 0:
        return None
    vals = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = frames[i:i + batch]
            rec = model.decode(model.encode(x))
            vals.append(psnr(rec, x.permute(0, 3, 1, 2).float().to(rec.device) / 255.0) * len(x))
    return float(sum(vals) / len(frames))


def train_tokenizer(cfg: TokenizerRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train a tokenizer and write the run directory ``out``; returns results (held-out PSNR).

    Runs in one process or under torchrun (see :mod:`robodream.train.loop`). A dataset of one
    episode has no held-out episode: ``psnr_heldout`` is then None (stated, not NaN).

    Raises:
        DatasetError: missing/foreign datasets or image size mismatch.
        CheckpointError: ``out`` holds another run and ``resume`` is false.
        ConfigError: no dataset, bad settings, or a ``--resume`` that changes the run.
    """
    if not cfg.data:
        raise ConfigError("at least one dataset is required (--data)")
    run = Run(out, cfg, resume=resume)
    with run.guard():
        datasets = [LeRobotDataset(p) for p in cfg.data]
        cfg.model.image_size = datasets[0].image_size[0] if datasets[0].image_size else cfg.model.image_size
        cfg.model.__post_init__()
        train_frames, held_frames = load_frames(datasets, cfg.heldout_fraction)
        torch.manual_seed(cfg.train.seed)
        device = resolve_device(cfg.train.device)
        model = ImageTokenizer(cfg.model).to(device)
        held_eval = held_frames[:: max(1, len(held_frames) // 1024)]

        def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> torch.Tensor:
            idx = torch.randint(0, len(train_frames), (batch_size,), generator=gen)
            return train_frames[idx].to(device)

        def validate(m: ImageTokenizer, part: tuple[int, int]) -> dict[str, float]:
            frames = held_eval[shard(len(held_eval), *part)]
            return {"psnr_heldout": psnr_on(m, frames) or 0.0, "n": len(frames)}

        trainer = Trainer(model, cfg.train, run.path, sample_batch, lambda m, batch, gen: m(batch),
                          validate=validate if len(held_eval) else None, description="tokenizer",
                          model_factory=lambda: ImageTokenizer(cfg.model))
        run.fit(trainer, meta={"n_train_frames": len(train_frames), "n_heldout_frames": len(held_frames)})
        final = trainer.eval_model
        results: dict = {}
        if is_main():
            # Latent normalisation statistics on (a subset of) the training frames.
            sub = train_frames[torch.randperm(len(train_frames), generator=torch.Generator().manual_seed(0))[:4096]]
            final.set_latent_stats(sub[i:i + 256].to(device) for i in range(0, len(sub), 256))
            trainer.save_final(final)
            results = {"psnr_heldout": psnr_on(final, held_frames), "psnr_train": psnr_on(final, sub[:1024]),
                       "n_heldout_frames": len(held_frames), "n_train_frames": len(train_frames),
                       "steps": trainer.step}
            if not len(held_frames):
                results["heldout"] = NO_HELDOUT
            run.write_results(results)
            _save_examples(final, held_frames if len(held_frames) else train_frames, run.path / "reconstructions.png")
        results = broadcast_object(results)  # every process returns the results
    return results


def _save_examples(model: ImageTokenizer, frames: torch.Tensor, path: Path, n: int = 8) -> None:
    """PNG: n frames (top row) and their reconstructions (bottom row)."""
    from PIL import Image

    x = frames[torch.linspace(0, len(frames) - 1, n).long()]
    with torch.no_grad():
        rec = (model.decode(model.encode(x)) * 255).round().byte().permute(0, 2, 3, 1).cpu()
    grid = torch.cat([torch.cat(list(x), 1), torch.cat(list(rec), 1)], 0).numpy()
    tmp = path.with_name("." + path.name + ".tmp")
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(tmp, format="PNG")
    os.replace(tmp, path)


def load_tokenizer(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> ImageTokenizer:
    """Load a trained, frozen tokenizer (eval mode, no gradients).

    Raises:
        CheckpointError: not a tokenizer run, unfinished run, or weights that do not fit.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, MODEL_TYPE)
    model = ImageTokenizer(run_config_from_dict(TokenizerRunConfig, cfg, f"{run_dir}/config.json").model)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no model.safetensors (training not finished? use --resume)")
    load_model_weights(model, weights)
    return model.to(device).eval().requires_grad_(False)
