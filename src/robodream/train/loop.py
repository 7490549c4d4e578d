"""The training loop shared by every robodream model.

AdamW, linear warm-up then cosine decay, gradient clipping, an exponential moving average
(EMA) of the weights used for evaluation, periodic held-out validation, atomic checkpoints
and exact resume, scalars to ``metrics.jsonl`` (and TensorBoard if installed), a rich
progress bar. Multi-GPU runs go through ``torchrun`` (DDP); see :func:`distributed_setup`.

Exact resume: the batch and the noise of step ``k`` come from a generator seeded with
``(seed, k)``, and model, EMA and optimizer states are restored bit for bit, so a run
killed and resumed from step ``k`` continues exactly as if it had never stopped.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from robodream.errors import CheckpointError
from robodream.train.checkpoint import (
    latest_checkpoint,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
    save_tensors,
    write_checkpoint,
)
from robodream.utils.io import read_json
from robodream.utils.progress import progress_bar


@dataclass
class TrainConfig:
    """Optimisation settings (one per run; saved in config.json under ``train``)."""

    steps: int = 4000  # optimiser steps
    batch_size: int = 32  # samples per step (global, across all processes)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    beta1: float = 0.9
    beta2: float = 0.95
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema_decay: float = 0.999  # EMA of weights used for evaluation (0 disables)
    log_every: int = 50  # steps between metrics.jsonl lines
    val_every: int = 500  # steps between held-out validations (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    seed: int = 0  # seeds batches, noise and initialisation
    precision: str = "auto"  # "auto" (bf16 autocast), "bf16" or "fp32"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the local CUDA device if available (``LOCAL_RANK`` aware), else CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    return torch.device(name)


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast for ``precision`` in ("auto", "bf16"); a no-op context for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in ("auto", "bf16"):
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    return torch.autocast(device.type, dtype=torch.bfloat16)


def distributed_setup() -> tuple[int, int]:
    """Initialise torch.distributed when launched by torchrun; returns (rank, world_size)."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    rank = torch.distributed.get_rank() if world > 1 else 0
    return rank, world


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up, then cosine to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator for one step's batch and noise, independent of anything before it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + rank)


class EMA:
    """Exponential moving average of a model's floating-point state (params and buffers).

    decay at step k is ``min(decay, (1 + k) / (10 + k))`` so early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        for k, v in self.model.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k].to(v.dtype), 1.0 - d)
            else:
                v.copy_(src[k])


class Trainer:
    """Runs ``TrainConfig.steps`` optimiser steps of ``loss_fn`` on ``model``.

    Args:
        model: the module to train (already on ``device``).
        cfg: optimisation settings.
        run_dir: where checkpoints, metrics.jsonl and the final weights go.
        sample_batch: ``(step, generator, batch_size) -> batch`` (any structure ``loss_fn``
            accepts); ``batch_size`` is this process's share of ``cfg.batch_size``; all
            randomness must come from ``generator`` for exact resume.
        loss_fn: ``(model, batch, generator) -> (scalar loss, {name: float})``.
        validate: optional ``(eval_model) -> {name: float}`` on held-out data (run on the
            EMA weights when EMA is on).
        description: text of the progress bar.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        run_dir: str | os.PathLike,
        sample_batch: Callable[[int, torch.Generator, int], Any],
        loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
        validate: Callable[[torch.nn.Module], dict[str, float]] | None = None,
        description: str = "train",
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = next(model.parameters()).device
        self.rank, self.world = distributed_setup()
        if cfg.batch_size % self.world:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by {self.world} processes")
        self.local_batch_size = cfg.batch_size // self.world
        self.model = model
        self.train_model: torch.nn.Module = model
        if self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        self.sample_batch, self.loss_fn, self.validate = sample_batch, loss_fn, validate
        self.description = description
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._tb = None

    # ------------------------------------------------------------------ state
    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights used for evaluation: the EMA copy when enabled."""
        return self.ema.model if self.ema is not None else self.model

    def save_checkpoint(self) -> None:
        if self.rank != 0:
            return
        opt_tensors, opt_meta = optimizer_to_tensors(self.opt)
        files = {"model": self.model.state_dict(), "optimizer": opt_tensors}
        if self.ema is not None:
            files["ema"] = self.ema.model.state_dict()
        state = {"step": self.step, "optimizer": opt_meta, "train_config": self.cfg.__dict__}
        write_checkpoint(self.run_dir, self.step, files, state, keep=self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint of ``run_dir`` if there is one; returns whether it did.

        Raises:
            CheckpointError: a checkpoint that is corrupt or does not fit the model.
        """
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = read_json(ckpt / "trainer_state.json")
        try:
            self.model.load_state_dict(load_tensors(ckpt / "model.safetensors"))
            if self.ema is not None:
                self.ema.model.load_state_dict(load_tensors(ckpt / "ema.safetensors"))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model: {str(e).splitlines()[0]}") from e
        optimizer_from_tensors(self.opt, load_tensors(ckpt / "optimizer.safetensors"), state["optimizer"])
        self.step = int(state["step"])
        return True

    # ------------------------------------------------------------------ logging
    def _log(self, row: dict[str, Any]) -> None:
        if self.rank != 0:
            return
        self.history.append(row)
        with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
            except ImportError:
                self._tb = False
        if self._tb:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, row["step"])

    def _truncate_metrics(self) -> None:
        """Drop metrics.jsonl lines logged after the checkpoint we resume from."""
        path = self.run_dir / "metrics.jsonl"
        if self.rank != 0 or not path.is_file():
            return
        keep = [ln for ln in path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= self.step]
        path.write_text("".join(ln + "\n" for ln in keep))

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``cfg.steps``; returns the last validation metrics (may be empty)."""
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume and self.resume():
            self._truncate_metrics()
        val: dict[str, float] = {}
        running: dict[str, float] = {}
        n_running = 0
        t_last = time.perf_counter()
        with progress_bar(disable=self.rank != 0) as progress:
            task = progress.add_task(self.description, total=cfg.steps, completed=self.step)
            while self.step < cfg.steps:
                step = self.step
                lr = lr_at(step, cfg)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                gen = step_generator(cfg.seed, step, self.rank)
                batch = self.sample_batch(step, gen, self.local_batch_size)
                self.train_model.train()
                with autocast_context(self.device, cfg.precision):
                    loss, logs = self.loss_fn(self.train_model, batch, gen)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"non-finite loss {float(loss)} at step {step}")
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    logs["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.model, step)
                self.step = step + 1
                for k, v in logs.items():
                    running[k] = running.get(k, 0.0) + float(v)
                n_running += 1
                progress.update(task, advance=1, description=f"{self.description} loss {loss.item():.4f}")
                done = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or done:
                    now = time.perf_counter()
                    row = {"step": self.step, "lr": lr, **{k: v / n_running for k, v in running.items()},
                           "steps_per_s": n_running / max(now - t_last, 1e-9)}
                    running, n_running, t_last = {}, 0, now
                    if self.validate is not None and (done or (cfg.val_every and self.step % cfg.val_every == 0)):
                        val = {f"val/{k}": v for k, v in self.validate(self.eval_model).items()}
                        row.update(val)
                    self._log(row)
                if self.step % cfg.checkpoint_every == 0 or done:
                    self.save_checkpoint()
        if self._tb:
            self._tb.close()
        return val

    def save_final(self, extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``RUN/model.safetensors`` from the evaluation (EMA) weights."""
        path = self.run_dir / "model.safetensors"
        if self.rank == 0:
            tmp = path.with_name(".model.safetensors.tmp")
            save_tensors(tmp, {**self.eval_model.state_dict(), **(extra_tensors or {})})
            os.replace(tmp, path)
        return path
