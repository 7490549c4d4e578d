"""Train the video world model on LeRobot datasets; load a trained one.

``robodream train world-model --data DIR [DIR ...] --tokenizer RUN --out RUN`` calls
:func:`train_world_model`. It follows the policy's conventions (:mod:`robodream.policy.train`):
frames are encoded once by the frozen tokenizer, the last ``heldout_fraction`` of each
dataset's episodes are held out, the shared :class:`~robodream.train.loop.Trainer` does
checkpoints, exact resume and ``metrics.jsonl``, and the run directory is self-contained
(``config.json``, ``normalization.json``, ``model.safetensors``, a copy of the tokenizer).

With a value frame (``--value-frame state_value`` or ``value``, GigaBrain-0.5M*'s value world
model, RAMP, arXiv 2602.12099) the datasets must carry ``next.reward``: every frame's discounted
return (``--gamma``) is computed once per episode, and the mean/std of the training returns
(and states) normalise the value frame's numbers (stored in ``normalization.json`` and the
model's buffers).

Warm start (``--init-from RUN``): as the policy's (:mod:`robodream.policy.train`): the final
weights of a finished world-model run of the same model config and tokenizer, weights only,
this run's normalisation; ignored by a run resumed from its checkpoint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robodream.data.collect import require_real
from robodream.data.latents import check_datasets, encode_run_data
from robodream.data.lerobot import LeRobotDataset
from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import psnr
from robodream.models.text import encode_texts
from robodream.tokenizer.model import ImageTokenizer
from robodream.tokenizer.train import load_tokenizer
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import Run, init_from_run, load_latent_run, warm_start_source
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.modeling import VideoWorldModel

MODEL_TYPE = VideoWorldModel.model_type


def default_world_model_train() -> TrainConfig:
    return TrainConfig(steps=2000, batch_size=8, lr=5e-4, weight_decay=0.01, warmup_steps=100,
                       ema_decay=0.995, val_every=500, checkpoint_every=250)


@dataclass
class WorldModelRunConfig:
    """Everything a world-model run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot dataset directories, one or more tasks (repeat --data)
    tokenizer: str = ""  # tokenizer run directory (copied into RUN/tokenizer)
    model: WorldModelConfig = field(default_factory=WorldModelConfig)
    train: TrainConfig = field(default_factory=default_world_model_train)
    heldout_fraction: float = 0.1  # last episodes of each dataset, never trained on
    balance_tasks: bool = True  # draw every task equally often in multi-task training
    # Warm start: a finished world-model run of the same model config and tokenizer whose final weights
    # initialise this run (weights only; ignored when resuming from a checkpoint). Empty: random init.
    init_from: str = ""
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("model_type",)


def clip_margin(cfg: WorldModelConfig) -> tuple[int, int]:
    """(steps before, steps after) the anchor frame that a clip spans."""
    return (cfg.n_context_frames - 1) * cfg.frame_stride, cfg.chunk_steps


def clip_batch(model: VideoWorldModel, table: EpisodeTable, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """Clips anchored at ``idx`` as keyword arguments of :meth:`VideoWorldModel.forward` (actions
    normalised); with a value frame also ``returns`` (B,) (and ``state`` (B, Ds) for
    ``"state_value"``) of the chunk's last frame, unnormalised (the model normalises them)."""
    cfg = model.cfg
    c = table.clips(idx, cfg.frame_offsets)
    batch = {"latents": c["latents"].to(device), "frame_actions": model.normalize_action(c["actions"].to(device)),
             "task_index": c["task_index"].to(device), "action_is_pad": c["action_is_pad"].to(device)}
    if cfg.n_value_frames:
        batch["returns"] = c["returns"][:, -1].to(device)
        if cfg.value_frame == "state_value":
            batch["state"] = c["state"][:, -1].to(device)
    return batch


def check_rewards(datasets: list[LeRobotDataset], cfg: WorldModelConfig) -> None:
    """A value-frame model learns from ``next.reward``: raise a one-line DatasetError naming the
    datasets without it (checked on the metadata, before any encoding)."""
    if not cfg.n_value_frames:
        return
    missing = [str(ds.root) for ds in datasets if "next.reward" not in ds.features]
    if missing:
        raise DatasetError(f"value_frame={cfg.value_frame!r} learns values from next.reward, and {', '.join(missing)} "
                           "has none; record the dataset with robodream collect, or set --value-frame none")


def train_world_model(cfg: WorldModelRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train a video world model and write the run directory ``out``; returns held-out validation results.

    Runs in one process or under torchrun (see :mod:`robodream.train.loop`); frames are
    encoded once (rank 0) and shared.

    Raises:
        DatasetError: missing/foreign or synthetic datasets, camera/image-size/dimension
            mismatches, a dataset without actions, non-finite actions; with a value frame, a
            dataset without next.reward (or observation.state, for ``"state_value"``).
        CheckpointError: bad tokenizer run, or ``out`` holds another run and not ``resume``;
            an ``init_from`` run of another model type, model config or tokenizer, or unfinished.
        ConfigError: no dataset, an inconsistent model configuration, or a ``--resume`` that
            changes the run.
    """
    if not cfg.data:
        raise ConfigError("at least one dataset is required (--data)")
    run = Run(out, cfg, resume=resume)
    warm = warm_start_source(run, cfg.init_from, MODEL_TYPE)  # checked before any encoding
    with run.guard():
        device = resolve_device(cfg.train.device)
        tokenizer = load_tokenizer(cfg.tokenizer, device=device)
        datasets = [LeRobotDataset(p) for p in cfg.data]
        for ds in datasets:  # the data engine's generator learns from real video only
            require_real(ds, "a world model")
        m = cfg.model
        needs = ("action", "observation.state") if m.value_frame == "state_value" else ("action",)
        cameras, state_dim, action_dim = check_datasets(datasets, tokenizer, needs=needs)
        check_rewards(datasets, m)
        m.action_dim, m.cameras = action_dim, tuple(cameras)
        m.state_dim = state_dim if m.value_frame == "state_value" else 0
        m.latent_channels, m.latent_size = tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
        m.image_size, m.fps = tokenizer.cfg.image_size, datasets[0].fps
        m.__post_init__()  # before encoding: a configuration the data cannot fit fails fast

        tasks, train_eps, held_eps = encode_run_data(datasets, tokenizer, cameras, cfg.heldout_fraction)
        m.tasks = tuple(tasks)

        train_table = EpisodeTable.from_episodes(train_eps)
        held_table = EpisodeTable.from_episodes(held_eps) if held_eps else None

        torch.manual_seed(cfg.train.seed)
        model = VideoWorldModel(m)
        if warm:  # before the normalisation: that stays this run's
            init_from_run(model, warm, WorldModelConfig, cfg.tokenizer)
        a_mean, a_std = train_table.mean_std("action")
        norm = {"action": {"mean": a_mean.tolist(), "std": a_std.tolist()}}
        if m.n_value_frames:  # value targets: discounted returns, normalised by the training frames' statistics
            for table in (train_table, held_table):
                if table is not None:
                    table.set_returns(m.gamma)
            r_mean, r_std = train_table.mean_std("returns")
            norm["value"] = {"mean": [float(r_mean)], "std": [float(r_std)]}
        if m.value_frame == "state_value":
            s_mean, s_std = train_table.mean_std("state")
            norm["observation.state"] = {"mean": s_mean.tolist(), "std": s_std.tolist()}
        model.set_normalization(norm)
        text_table = encode_texts(list(tasks), m.text_encoder) if m.text_dim else None
        if text_table is not None:
            model.set_text_table(text_table)
        model.to(device)
        n_parameters = sum(p.numel() for p in model.parameters())  # before FSDP2 shards them
        margin = clip_margin(m)

        def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
            idx = train_table.sample_anchors(batch_size, gen, balance_tasks=cfg.balance_tasks, margin=margin)
            return clip_batch(model, train_table, idx, device)

        def loss_fn(mod, batch, gen):
            return mod(**batch, generator=gen)

        def validate(mod: VideoWorldModel, part: tuple[int, int]) -> dict[str, float]:
            return validate_world_model(mod, tokenizer, held_table, device, shard_of=part)

        def factory() -> VideoWorldModel:
            f = VideoWorldModel(m)
            f.set_normalization(norm)
            if text_table is not None:
                f.set_text_table(text_table)
            return f

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if held_table is not None else None, description="world model",
                          model_factory=factory)
        meta = {"n_train_episodes": len(train_eps), "n_heldout_episodes": len(held_eps),
                "n_train_frames": len(train_table), "n_parameters": n_parameters}
        if warm:
            meta["init_from"] = warm
        val = run.fit(trainer, meta=meta,
                      json_files={"normalization.json": norm}, tokenizer=cfg.tokenizer)
        results = run.finish(trainer, val, n_train_frames=len(train_table),
                             n_heldout_frames=len(held_table) if held_table else 0)
    return results


@torch.no_grad()
def validate_world_model(model: VideoWorldModel, tokenizer: ImageTokenizer, table: EpisodeTable, device,
                         n_loss: int = 64, n_sample: int = 16, seed: int = 0,
                         shard_of: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Held-out flow loss on fixed clips, and the latent MSE / decoded PSNR of sampled chunks
    (with a value frame also ``loss_value_frame`` and ``value_mae``, the mean absolute error of
    the sampled values in return units).

    PSNR here compares decoded predictions with the *decoded* true latents (the tokenizer's
    reconstruction), so it measures the world model alone; ``robodream eval world-model``
    compares with the real frames. The clips are drawn once from ``seed``; ``shard_of =
    (rank, world_size)`` takes this process's part (the returned ``"n"`` weights it).
    """
    gen = torch.Generator().manual_seed(seed)
    pool = table.anchor_pool(*clip_margin(model.cfg))
    idx = pool[torch.randint(0, len(pool), (min(n_loss, len(pool)),), generator=gen)]
    idx = idx[shard(len(idx), *shard_of)]
    if not len(idx):
        return {"n": 0}
    batch = clip_batch(model, table, idx, device)
    model.eval()
    _, logs = model(**batch, generator=gen)
    n_ctx, k = model.cfg.n_context_frames, min(-(-n_sample // shard_of[1]), len(idx))  # the shard's share
    b = {key: v[:k] for key, v in batch.items()}
    clip, value = model.sample_with_value(b["latents"][:, :n_ctx], b["frame_actions"], b["task_index"], generator=gen)
    pred, true = clip[:, n_ctx:], b["latents"][:, n_ctx:]
    dec = lambda z: tokenizer.decode(z.reshape(-1, *z.shape[-3:]).float())  # noqa: E731
    out = {"loss_flow": logs["loss_flow"], "latent_mse": float((pred - true).pow(2).mean()),
           "psnr_vs_tokenizer": psnr(dec(pred), dec(true)), "n": len(idx)}
    if value is not None:
        out["loss_value_frame"] = logs["loss_value_frame"]
        out["value_mae"] = float((value - b["returns"]).abs().mean())
    return out


def load_world_model(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained world-model run: ``(model, tokenizer, run config dict)``, both in eval mode.

    Raises:
        CheckpointError: not a world-model run (e.g. a policy run), unfinished, or weights that
            do not fit the configuration.
    """
    return load_latent_run(run_dir, VideoWorldModel, WorldModelConfig, device)
