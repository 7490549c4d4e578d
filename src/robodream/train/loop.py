"""The training loop shared by every robodream model, in one process or under torchrun.

AdamW, linear warm-up then cosine decay, gradient clipping, gradient accumulation, an
exponential moving average (EMA) of the weights used for evaluation, periodic held-out
validation (sharded over processes), atomic checkpoints and exact resume, scalars to
``metrics.jsonl`` (and TensorBoard if installed), a rich progress bar.

Multi-process: launched by ``torchrun`` the same code runs data-parallel — DDP (replicated
weights, ``TrainConfig.parallel = "ddp"``, the default) or FSDP2 (``"fsdp"``:
``fully_shard``; weights, gradients and optimizer state sharded, see :func:`_fully_shard`).
Only rank 0 writes the run directory.

Randomness that does not depend on how the batch is split: the global batch of step ``k``
is ``world_size x grad_accum_steps`` micro-batches, and micro-batch ``m`` (process
``m // grad_accum_steps``) draws its samples and noise from a generator seeded with
``(seed, k, m)``. Two processes with one micro-batch each therefore compute exactly what
one process with ``grad_accum_steps = 2`` computes (up to float summation order), a run
resumes exactly after a kill, and it may resume with another world size (checkpoints are
resharded by torch.distributed.checkpoint).
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

from robodream.errors import CheckpointError, ConfigError, TrainingError
from robodream.train.checkpoint import (
    latest_checkpoint,
    load_tensors,
    optimizer_from_tensors,
    read_checkpoint,
    save_tensors,
    write_checkpoint,
)
from robodream.train.distributed import all_reduce_sum, barrier, init_distributed
from robodream.utils.io import read_json
from robodream.utils.progress import progress_bar

PARALLEL = ("ddp", "fsdp")
PRECISIONS = ("auto", "bf16", "fp32")


@dataclass
class TrainConfig:
    """Optimisation settings (one per run; saved in config.json under ``train``)."""

    steps: int = 4000  # optimiser steps
    batch_size: int = 32  # samples per optimiser step (global: across all processes and micro-batches)
    lr: float = 3e-4  # peak learning rate
    weight_decay: float = 0.01  # AdamW decoupled weight decay
    beta1: float = 0.9  # AdamW first-moment decay
    beta2: float = 0.95  # AdamW second-moment decay
    warmup_steps: int = 200  # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    grad_clip: float = 1.0  # max global gradient norm (0 disables)
    ema_decay: float = 0.999  # EMA of weights used for evaluation (0 disables)
    log_every: int = 50  # steps between metrics.jsonl lines
    val_every: int = 500  # steps between held-out validations (0: only at the end)
    checkpoint_every: int = 500  # steps between checkpoints
    keep_checkpoints: int = 2  # newest checkpoints kept on disk
    seed: int = 0  # seeds batches, noise and initialisation
    precision: str = "auto"  # "auto" (bf16 autocast where the device has native bf16, else fp32), "bf16" or "fp32"
    device: str = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    grad_accum_steps: int = 1  # micro-batches per optimiser step in each process (same global batch)
    parallel: str = "ddp"  # under torchrun: "ddp" (replicated weights) or "fsdp" (FSDP2, sharded weights)

    def __post_init__(self) -> None:
        positive = {"steps": self.steps, "batch_size": self.batch_size, "log_every": self.log_every,
                    "checkpoint_every": self.checkpoint_every, "keep_checkpoints": self.keep_checkpoints,
                    "grad_accum_steps": self.grad_accum_steps}
        for name, v in positive.items():
            if v < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {v}")
        if not self.lr > 0 or self.warmup_steps < 0 or self.val_every < 0 or self.grad_clip < 0:
            raise ConfigError(f"need lr > 0, warmup_steps >= 0, val_every >= 0, grad_clip >= 0; got lr={self.lr}, "
                              f"warmup_steps={self.warmup_steps}, val_every={self.val_every}, grad_clip={self.grad_clip}")
        if not 0 <= self.ema_decay < 1:
            raise ConfigError(f"train.ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train.precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.parallel not in PARALLEL:
            raise ConfigError(f"train.parallel must be one of {PARALLEL}, got {self.parallel!r}")


def resolve_device(name: str = "auto") -> torch.device:
    """``"auto"`` -> the local CUDA device if available (``LOCAL_RANK`` aware), else CPU.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {name!r} (auto, cpu, cuda, cuda:N)") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but CUDA is not available here")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return dev


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 matmuls natively (fast), not by emulation.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AVX512-BF16 or AMX tiles. Without them
    oneDNN emulates bf16 and autocast is far slower than fp32 (measured: policy training 1.3 vs
    11.3 samples/s on an AVX2-only AMD EPYC; see benchmarks/RESULTS.md)."""
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


def resolve_precision(device: torch.device, precision: str) -> str:
    """``"auto"`` -> ``"bf16"`` where the device has native bf16 (:func:`native_bf16`), else
    ``"fp32"``; ``"bf16"`` and ``"fp32"`` are returned as asked.

    Raises:
        ValueError: a precision other than auto, bf16 or fp32.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be auto, bf16 or fp32, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def autocast_context(device: torch.device, precision: str):
    """bf16 autocast where ``precision`` resolves to bf16 (:func:`resolve_precision`); a no-op
    context for fp32."""
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``step``: linear warm-up, then cosine to ``lr * min_lr_ratio``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cos = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cos)


def step_generator(seed: int, step: int, micro_batch: int = 0) -> torch.Generator:
    """A CPU generator for one micro-batch's samples and noise, independent of anything before it."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + micro_batch)


def micro_batch_size(cfg: TrainConfig, world: int) -> int:
    """Samples per micro-batch: ``batch_size / (world x grad_accum_steps)``.

    Raises:
        ConfigError: the batch does not divide.
    """
    n_micro = world * cfg.grad_accum_steps
    if cfg.batch_size % n_micro:
        raise ConfigError(f"batch_size {cfg.batch_size} is not divisible by {world} process(es) x "
                          f"grad_accum_steps {cfg.grad_accum_steps}")
    return cfg.batch_size // n_micro


def shard(n: int, rank: int, world: int) -> slice:
    """This process's contiguous part of ``n`` items (sizes differ by at most one)."""
    return slice(n * rank // world, n * (rank + 1) // world)


class EMA:
    """Exponential moving average of a model's floating-point state (params and buffers).

    decay at step k is ``min(decay, (1 + k) / (10 + k))`` so early averages are not
    dominated by the random initialisation. ``model``: a frozen copy holding the average
    (plain module); under FSDP2 the average is kept sharded in :attr:`shards` instead.
    """

    def __init__(self, model: torch.nn.Module, decay: float, sharded: bool = False) -> None:
        self.decay = decay
        self.model: torch.nn.Module | None = None
        self.shards: dict[str, torch.Tensor] | None = None
        if sharded:
            self.shards = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.shards if self.shards is not None else self.model.state_dict()

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        src = model.state_dict()
        for k, v in self.state_dict().items():
            if v.dtype.is_floating_point:
                v.lerp_(src[k].to(v.dtype), 1.0 - d)
            else:
                v.copy_(src[k])


class Trainer:
    """Runs ``TrainConfig.steps`` optimiser steps of ``loss_fn`` on ``model``.

    Args:
        model: the module to train, a plain ``nn.Module`` already on ``device`` (the trainer
            wraps it in DDP or shards it with FSDP2 under torchrun).
        cfg: optimisation settings.
        run_dir: where checkpoints, metrics.jsonl and the final weights go (rank 0 writes).
        sample_batch: ``(step, generator, batch_size) -> batch`` (any structure ``loss_fn``
            accepts) for one micro-batch of ``batch_size`` samples; all randomness must
            come from ``generator`` (exact resume, split-independent batches).
        loss_fn: ``(model, batch, generator) -> (scalar loss, {name: float})``.
        validate: optional ``(eval_model, shard) -> {name: float}`` on held-out data, run
            on every process with ``shard = (rank, world_size)`` (use :func:`shard` to take
            this process's part); each metric must be a mean over samples, and a key ``"n"``
            (samples in the shard) weights the processes' means. Runs on the EMA weights.
        description: text of the progress bar.
        model_factory: ``() -> nn.Module``, a fresh unsharded model of the same config;
            required for FSDP2 (the evaluation model is gathered into it).

    Raises:
        ConfigError: a batch size not divisible by ``world_size x grad_accum_steps``, or
            FSDP2 without ``model_factory``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        cfg: TrainConfig,
        run_dir: str | os.PathLike,
        sample_batch: Callable[[int, torch.Generator, int], Any],
        loss_fn: Callable[[torch.nn.Module, Any, torch.Generator], tuple[torch.Tensor, dict[str, float]]],
        validate: Callable[[torch.nn.Module, tuple[int, int]], dict[str, float]] | None = None,
        description: str = "train",
        model_factory: Callable[[], torch.nn.Module] | None = None,
    ) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.device = next(model.parameters()).device
        self.rank, self.world = init_distributed(self.device)
        self.micro_batch_size = micro_batch_size(cfg, self.world)
        self.local_batch_size = self.micro_batch_size * cfg.grad_accum_steps
        self.fsdp = self.world > 1 and cfg.parallel == "fsdp"
        self.precision = resolve_precision(self.device, cfg.precision)  # "auto" resolved once, not every step
        if self.fsdp and model_factory is None:
            raise ConfigError("FSDP2 training needs a model_factory for the evaluation model")
        self.model_factory = model_factory
        self.model = model
        self.train_model: torch.nn.Module = model
        if self.fsdp:
            _fully_shard(model, self.device)
        elif self.world > 1:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        decay, no_decay = [], []
        for p in model.parameters():
            if p.requires_grad:
                (decay if p.dim() >= 2 else no_decay).append(p)
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
        self.ema = EMA(model, cfg.ema_decay, sharded=self.fsdp) if cfg.ema_decay > 0 else None
        self.sample_batch, self.loss_fn, self.validate = sample_batch, loss_fn, validate
        self.description = description
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._tb = None
        self._gathered: torch.nn.Module | None = None

    # ------------------------------------------------------------------ state
    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights used for evaluation (the EMA average when enabled), as a plain module.

        Under FSDP2 this gathers the full weights into a module from ``model_factory`` — a
        collective: every process must ask for it.
        """
        if not self.fsdp:
            return self.ema.model if self.ema is not None else self.model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        if self.ema is not None:  # the EMA shards have the model's layout: gather them the same way
            full = {k: _full(v) for k, v in self.ema.shards.items()}
        else:
            full = get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True))
        if self._gathered is None:
            self._gathered = self.model_factory().to(self.device).eval().requires_grad_(False)
        self._gathered.load_state_dict(full)
        return self._gathered

    def _checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """Flat ``{key: tensor}`` of model, EMA and optimizer state in this process's layout."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        out = {f"model.{k}": v for k, v in get_model_state_dict(self.model).items()}
        if self.ema is not None:
            out.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        osd = get_optimizer_state_dict(self.model, self.opt)
        for name, st in osd["state"].items():
            for k, v in st.items():
                out[f"optim.{name}.{k}"] = v if torch.is_tensor(v) else torch.tensor(float(v))
        return out

    def _param_groups_json(self) -> list[dict[str, Any]]:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        groups = get_optimizer_state_dict(self.model, self.opt)["param_groups"]
        return [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in groups]

    def save_checkpoint(self) -> None:
        """Write a checkpoint of this step (a collective under torchrun)."""
        tensors = self._checkpoint_tensors()
        optim_keys = sorted({k.removeprefix("optim.").rsplit(".", 1)[0] for k in tensors if k.startswith("optim.")})
        state = {"step": self.step, "optimizer": {"param_groups": self._param_groups_json(), "params_with_state": optim_keys},
                 "train_config": self.cfg.__dict__, "world_size": self.world, "format": "dcp-safetensors"}
        write_checkpoint(self.run_dir, self.step, tensors, state, keep=self.cfg.keep_checkpoints)

    def resume(self) -> bool:
        """Load the newest checkpoint of ``run_dir`` if there is one (and drop the metrics logged
        after it); returns whether it did. Every process calls it.

        Raises:
            CheckpointError: a checkpoint that is corrupt or does not fit the model.
        """
        ckpt = latest_checkpoint(self.run_dir)
        if ckpt is None:
            return False
        state = read_json(ckpt / "trainer_state.json")
        if (ckpt / "optimizer.safetensors").is_file():
            self._resume_legacy(ckpt, state)
        else:
            self._resume_dcp(ckpt, state)
        self.step = int(state["step"])
        self._truncate_metrics()
        return True

    def _resume_dcp(self, ckpt: Path, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        model_sd = {k: v.detach().clone() for k, v in self._model_state().items()}
        tensors = {f"model.{k}": v for k, v in model_sd.items()}
        if self.ema is not None:
            tensors.update({f"ema.{k}": v for k, v in self.ema.state_dict().items()})
        params = state["optimizer"]["params_with_state"]
        unknown = sorted(set(params) - set(model_sd))
        if unknown:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model (unexpected parameters {unknown[:3]})")
        for k in params:  # AdamW's state of every parameter that had one (exp_avg, exp_avg_sq, step)
            tensors[f"optim.{k}.exp_avg"] = torch.zeros_like(model_sd[k])
            tensors[f"optim.{k}.exp_avg_sq"] = torch.zeros_like(model_sd[k])
            tensors[f"optim.{k}.step"] = torch.zeros(())
        read_checkpoint(ckpt, tensors)
        set_model_state_dict(self.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                             options=StateDictOptions(strict=True))
        osd = {"state": {k: {n: tensors[f"optim.{k}.{n}"] for n in ("step", "exp_avg", "exp_avg_sq")} for k in params},
               "param_groups": state["optimizer"]["param_groups"]}
        try:
            set_optimizer_state_dict(self.model, self.opt, osd)
        except (KeyError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"optimizer state of {ckpt} does not fit this model: {e}") from e

    def _model_state(self) -> dict[str, torch.Tensor]:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        return get_model_state_dict(self.model)

    def _resume_legacy(self, ckpt: Path, state: dict) -> None:
        """Checkpoints written before the DCP layout (one process, unsharded)."""
        if self.world > 1:
            raise CheckpointError(f"{ckpt} is an old-format checkpoint: resume it in one process first")
        try:
            self.model.load_state_dict(load_tensors(ckpt / "model.safetensors"))
            if self.ema is not None:
                self.ema.model.load_state_dict(load_tensors(ckpt / "ema.safetensors"))
        except RuntimeError as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this model: {str(e).splitlines()[0]}") from e
        optimizer_from_tensors(self.opt, load_tensors(ckpt / "optimizer.safetensors"), state["optimizer"])

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
    def _validate(self) -> dict[str, float]:
        """Held-out metrics on the evaluation weights, each process on its shard, weighted means."""
        model = self.eval_model
        part = self.validate(model, (self.rank, self.world))
        n = float(part.pop("n", 1.0))
        keys = sorted(part)
        tot = all_reduce_sum(torch.tensor([n, *[n * float(part[k]) for k in keys]], dtype=torch.float64))
        return {k: float(v) / float(tot[0]) for k, v in zip(keys, tot[1:])}

    def _micro_step(self, step: int, j: int, scale: float) -> tuple[float, dict[str, float]]:
        """Forward and backward of micro-batch ``j`` of this process; returns its loss and logs."""
        cfg = self.cfg
        gen = step_generator(cfg.seed, step, self.rank * cfg.grad_accum_steps + j)
        batch = self.sample_batch(step, gen, self.micro_batch_size)
        last = j == cfg.grad_accum_steps - 1
        sync = contextlib.nullcontext()
        if isinstance(self.train_model, torch.nn.parallel.DistributedDataParallel) and not last:
            sync = self.train_model.no_sync()
        elif self.fsdp:
            self.model.set_requires_gradient_sync(last)
        with sync:
            with autocast_context(self.device, self.precision):
                loss, logs = self.loss_fn(self.train_model, batch, gen)
            (loss * scale).backward()
        return float(loss.detach()), logs

    def fit(self, resume: bool = False) -> dict[str, float]:
        """Train to ``cfg.steps`` (from the newest checkpoint when ``resume``); returns the last
        validation metrics (may be empty).

        Raises:
            TrainingError: a non-finite loss or gradient (nothing of that step is applied).
        """
        cfg = self.cfg
        if self.rank == 0:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            self.resume()
        barrier()
        val: dict[str, float] = {}
        running: dict[str, float] = {}
        n_running = 0
        t_last = time.perf_counter()
        accum = cfg.grad_accum_steps
        with progress_bar(disable=self.rank != 0) as progress:
            task = progress.add_task(self.description, total=cfg.steps, completed=self.step)
            while self.step < cfg.steps:
                step = self.step
                lr = lr_at(step, cfg)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                self.train_model.train()
                self.opt.zero_grad(set_to_none=True)
                loss_sum, log_sums = 0.0, {}
                for j in range(accum):
                    loss_j, logs = self._micro_step(step, j, 1.0 / accum)
                    loss_sum += loss_j
                    for k, v in logs.items():
                        log_sums[k] = log_sums.get(k, 0.0) + float(v)
                keys = sorted(log_sums)
                tot = all_reduce_sum(torch.tensor([loss_sum, *[log_sums[k] for k in keys]], dtype=torch.float64))
                n_micro = accum * self.world
                loss_mean = float(tot[0]) / n_micro
                logs = {k: float(v) / n_micro for k, v in zip(keys, tot[1:])}
                if not math.isfinite(loss_mean):
                    raise TrainingError(f"non-finite loss ({loss_mean}) at step {step}; nothing of this step was "
                                        f"applied, the last checkpoint of {self.run_dir} is intact (lower the learning "
                                        f"rate or check the data, then --resume)")
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
                    logs["grad_norm"] = float(_full(norm))
                    if not math.isfinite(logs["grad_norm"]):
                        raise TrainingError(f"non-finite gradient norm at step {step}; nothing of this step was "
                                            f"applied, the last checkpoint of {self.run_dir} is intact")
                self.opt.step()
                if self.ema is not None:
                    self.ema.update(self.model, step)
                self.step = step + 1
                for k, v in logs.items():
                    running[k] = running.get(k, 0.0) + v
                n_running += 1
                progress.update(task, advance=1, description=f"{self.description} loss {loss_mean:.4f}")
                done = self.step == cfg.steps
                if self.step % cfg.log_every == 0 or done:
                    now = time.perf_counter()
                    row = {"step": self.step, "lr": lr, **{k: v / n_running for k, v in running.items()},
                           "steps_per_s": n_running / max(now - t_last, 1e-9)}
                    running, n_running, t_last = {}, 0, now
                    if self.validate is not None and (done or (cfg.val_every and self.step % cfg.val_every == 0)):
                        val = {f"val/{k}": v for k, v in self._validate().items()}
                        row.update(val)
                    self._log(row)
                if self.step % cfg.checkpoint_every == 0 or done:
                    self.save_checkpoint()
        if self._tb:
            self._tb.close()
        return val

    def save_final(self, model: torch.nn.Module | None = None,
                   extra_tensors: dict[str, torch.Tensor] | None = None) -> Path:
        """Write ``RUN/model.safetensors`` from ``model`` (default: :attr:`eval_model`, the EMA
        weights; under FSDP2 that default is a collective) on rank 0."""
        path = self.run_dir / "model.safetensors"
        model = model if model is not None else self.eval_model
        if self.rank == 0:
            tmp = path.with_name(".model.safetensors.tmp")
            save_tensors(tmp, {**model.state_dict(), **(extra_tensors or {})})
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        return path


def _full(t: torch.Tensor) -> torch.Tensor:
    """A DTensor gathered to a plain tensor (a plain tensor as is)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _fully_shard(model: torch.nn.Module, device: torch.device) -> None:
    """FSDP2: shard the modules ``model.fsdp_units()`` lists (if it has that method), then the root.

    A sub-module may be its own FSDP unit only if the model reaches its parameters solely through
    its ``forward`` (FSDP2 gathers a unit's weights in forward hooks). robodream's transformers
    call parts of their blocks directly (multi-stream attention, modulations computed once per
    sampling schedule), so by default the whole model is one unit: weights, gradients and
    optimizer state are sharded between steps and gathered for each forward/backward.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    from robodream.train.distributed import world_size

    mesh = init_device_mesh(device.type, (world_size(),))
    for unit in getattr(model, "fsdp_units", lambda: [])():
        fully_shard(unit, mesh=mesh)
    fully_shard(model, mesh=mesh)
