"""Train the inverse-dynamics model on LeRobot datasets; load a trained one.

``robodream train idm --data DIR [--data DIR2 ...] --tokenizer RUN --out RUN`` calls
:func:`train_idm`. It follows the policy's conventions (:mod:`robodream.policy.train`):
frames are encoded once by the frozen tokenizer, the last ``heldout_fraction`` of each
dataset's episodes are held out and never trained on (validation: action MSE on their
windows), the shared :class:`~robodream.train.loop.Trainer` does checkpoints, exact resume
and ``metrics.jsonl``, and the run directory is self-contained (``config.json``,
``normalization.json``, ``model.safetensors``, a copy of the tokenizer).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robodream.data.collect import record_provenance, require_real
from robodream.data.latents import check_datasets, encode_run_data
from robodream.data.lerobot import LeRobotDataset
from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError
from robodream.idm.modeling import IDMConfig, InverseDynamicsModel
from robodream.tokenizer.train import load_tokenizer
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import Run, load_latent_run

MODEL_TYPE = InverseDynamicsModel.model_type


def default_idm_train() -> TrainConfig:
    return TrainConfig(steps=3000, batch_size=64, lr=5e-4, weight_decay=0.01, warmup_steps=100,
                       ema_decay=0.995, val_every=500, checkpoint_every=500)


@dataclass
class IDMRunConfig:
    """Everything an IDM run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot dataset directories, one or more tasks (repeat --data)
    tokenizer: str = ""  # tokenizer run directory (copied into RUN/tokenizer)
    model: IDMConfig = field(default_factory=IDMConfig)
    train: TrainConfig = field(default_factory=default_idm_train)
    heldout_fraction: float = 0.1  # fraction of each dataset's episodes held out for validation (at least 1)
    balance_tasks: bool = True  # draw every task equally often in multi-task training
    # Filled in from the datasets: instruction -> Meta-World task, env seeds of the datasets'
    # episodes per task, and their env settings (cameras, image size, step limit, proprioception).
    env_tasks: dict = field(default_factory=dict)
    train_seeds: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("env_tasks", "train_seeds", "env", "model_type")

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")


def train_idm(cfg: IDMRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train an inverse-dynamics model and write the run directory ``out``; returns held-out
    validation results (``action_mse``: action units, state at t known; ``action_mse_no_state``;
    ``mean_action_mse``: the training-mean baseline on the same windows).

    Raises:
        DatasetError: missing/foreign or synthetic datasets, camera/image-size/dimension mismatches, a
            dataset without observation.state or action, non-finite states or actions.
        CheckpointError: bad tokenizer run, or ``out`` holds another run and not ``resume``.
        ConfigError: no dataset, bad settings, or a ``--resume`` that changes the run.
    """
    if not cfg.data:
        raise ConfigError("at least one dataset is required (--data)")
    run = Run(out, cfg, resume=resume)
    with run.guard():
        device = resolve_device(cfg.train.device)
        tokenizer = load_tokenizer(cfg.tokenizer, device=device)
        datasets = [LeRobotDataset(p) for p in cfg.data]
        for ds in datasets:  # labels of generated video must come from a model of real motion
            require_real(ds, "an IDM")
        cameras, state_dim, action_dim = check_datasets(datasets, tokenizer)
        _, train_eps, held_eps = encode_run_data(datasets, tokenizer, cameras, cfg.heldout_fraction,
                                                 seed=cfg.train.seed)
        m = cfg.model
        m.state_dim, m.action_dim, m.cameras = state_dim, action_dim, tuple(cameras)
        m.latent_channels, m.latent_size = tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
        m.image_size = tokenizer.cfg.image_size
        m.__post_init__()
        record_provenance(cfg, datasets)

        train_table = EpisodeTable.from_episodes(train_eps)
        held_table = EpisodeTable.from_episodes(held_eps) if held_eps else None

        torch.manual_seed(cfg.train.seed)
        model = InverseDynamicsModel(m)
        norm = train_table.normalization()
        model.set_normalization(norm)
        model.to(device)

        def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
            idx = train_table.sample_anchors(batch_size, gen, balance_tasks=cfg.balance_tasks)
            return clip_batch(model, train_table, idx, device)

        def loss_fn(mod, batch, gen):
            return mod.loss(**batch, generator=gen)

        def validate(mod: InverseDynamicsModel, part: tuple[int, int]) -> dict[str, float]:
            return validate_idm(mod, held_table, device, shard_of=part)

        def factory() -> InverseDynamicsModel:
            f = InverseDynamicsModel(m)
            f.set_normalization(norm)
            return f

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if held_table is not None else None, description="idm",
                          model_factory=factory)
        val = run.fit(trainer, meta={"n_train_episodes": len(train_eps), "n_heldout_episodes": len(held_eps),
                                     "n_train_frames": len(train_table)},
                      json_files={"normalization.json": norm}, tokenizer=cfg.tokenizer)
        results = run.finish(trainer, val, n_train_frames=len(train_table),
                             n_heldout_frames=len(held_table) if held_table else 0)
    return results


def clip_batch(model: InverseDynamicsModel, table: EpisodeTable, idx: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """Clips anchored at ``idx`` (B,) as keyword arguments of :meth:`InverseDynamicsModel.loss`:
    latents (B, F, N, C, h, w), normalised state at t (B, Ds), normalised actions (B, H, Da) and
    action_is_pad (B, H) (:meth:`EpisodeTable.clips`: frames past the episode end repeat its last);
    for the state head the normalised next states (B, H, Ds) with next_state_is_pad (B, H) (the
    step or its next frame past the episode end), and for the success head ``success`` (B, H)
    (``next.success``; only when the table records it)."""
    cfg = model.cfg
    c = table.clips(idx, cfg.frame_offsets)
    B, H = len(idx), cfg.horizon
    out = {"latents": c["latents"].to(device),
           "state": model.normalize_state(table.state[idx].to(device)),
           "actions": model.normalize_action(c["actions"].reshape(B, H, -1).to(device)),
           "action_is_pad": c["action_is_pad"].reshape(B, H).to(device)}
    steps = idx[:, None] + torch.arange(H)  # (B, H) the env step of each action
    last = table.episode_end[idx, None] - 1  # (B, 1)
    if cfg.predict_state:
        nxt = (steps + 1).clamp_max(last)
        out["next_state"] = model.normalize_state(table.state[nxt].to(device))  # (B, H, Ds)
        out["next_state_is_pad"] = (steps + 1 > last).to(device)
    if cfg.predict_success and table.success is not None:
        out["success"] = table.success[steps.clamp_max(last)].to(device)
    return out


@torch.no_grad()
def validate_idm(model: InverseDynamicsModel, table: EpisodeTable, device, n: int = 256, seed: int = 0,
                 shard_of: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Held-out metrics on ``n`` fixed windows (drawn once from ``seed``; ``shard_of`` takes this
    process's part, ``"n"`` its size): the training loss, and the mean squared error per action
    number in action units, with the state at t known (``action_mse``), unknown
    (``action_mse_no_state``) and for the training-mean action (``mean_action_mse``); padded
    steps excluded. With the state head ``next_state_mse`` (state units), with the success head
    and labels ``success_accuracy`` (logit > 0 against ``next.success``)."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(table), (min(n, len(table)),), generator=gen)
    idx = idx[shard(len(idx), *shard_of)]
    if not len(idx):
        return {"n": 0}
    model.eval()
    b = clip_batch(model, table, idx, device)
    valid = (~b["action_is_pad"]).float().unsqueeze(-1)  # (B, H, 1)
    denom = valid.sum() * model.cfg.action_dim
    truth = model.unnormalize_action(b["actions"])

    def mse(pred_norm: torch.Tensor) -> float:
        return float(((model.unnormalize_action(pred_norm.float()) - truth).pow(2) * valid).sum() / denom)

    pred = model.predict(b["latents"], b["state"])  # state at t known
    act = pred["action"].float()
    err = (act - b["actions"]).abs() if model.cfg.loss == "l1" else (act - b["actions"]).pow(2)
    out = {"loss": float((err.mean(-1) * valid.squeeze(-1)).sum() / valid.sum().clamp_min(1.0)),
           "action_mse": mse(act),
           "action_mse_no_state": mse(model(b["latents"], None)),
           "mean_action_mse": mse(torch.zeros_like(b["actions"])), "n": len(idx)}
    if "state" in pred:  # state units, after each action; the mean of the next frame's position error
        ok = (~b["next_state_is_pad"]).float().unsqueeze(-1)
        d = model.unnormalize_state(pred["state"].float()) - model.unnormalize_state(b["next_state"])
        out["next_state_mse"] = float((d.pow(2) * ok).sum() / (ok.sum() * model.cfg.state_dim).clamp_min(1.0))
    if "success_logit" in pred and "success" in b:
        ok = valid.squeeze(-1)
        hit = ((pred["success_logit"] > 0) == b["success"]).float()
        out["success_accuracy"] = float((hit * ok).sum() / ok.sum().clamp_min(1.0))
    return out


def load_idm(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained IDM run: ``(idm, tokenizer, run config dict)``, both models in eval mode.

    Raises:
        CheckpointError: not an IDM run (e.g. a policy run), unfinished, or weights that do
            not fit the configuration.
    """
    return load_latent_run(run_dir, InverseDynamicsModel, IDMConfig, device)
