"""Train AppearanceTransfer or ViewTransfer on re-rendered episodes; load a trained one.

``robodream train transfer --kind appearance|view --data DIR [--data DIR2 ...] --tokenizer RUN
--out RUN`` calls :func:`train_transfer`. Every episode of the datasets is re-rendered from its
seed under a random shift (:func:`~robodream.transfer.pairs.render_pairs`): a random appearance
per episode seed for ``appearance``, a random static-camera pose for ``view``
(``shift_scale`` widens the draws, ``shift_seed`` picks other ones). The pairs are rendered and
encoded once per run start (deterministic, so a ``--resume`` rebuilds the same data). The last
``heldout_fraction`` of each dataset's episodes is held out (validation: the rectified-flow
loss and the PSNR of one-step generations against the re-render, next to the baseline's). The
datasets' tasks are recorded (``train_seeds``): ``eval transfer`` refuses them, the models must
be judged on tasks they never saw under a shift. Run layout and resume: :mod:`robodream.train.run_dir`.

The tokenizer bounds every score: generated frames are its decodings, so no model beats the
target re-encoded and decoded (``eval transfer`` reports this ceiling). A tokenizer trained on
default appearances only reconstructs shifted ones worse (in a probe, 22.9 dB on reach under
random appearances, below the 23.2 dB of simply copying the unshifted source frame): train the
tokenizer for appearance transfer on renders under random appearances too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robodream.data.collect import record_provenance
from robodream.data.latents import check_datasets, split_episodes
from robodream.data.lerobot import LeRobotDataset
from robodream.envs.shift import ShiftConfig
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import psnr
from robodream.tokenizer.model import ImageTokenizer
from robodream.tokenizer.train import load_tokenizer
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import Run, load_latent_run, read_run_config
from robodream.transfer.data import FrameTable, prepare_episode
from robodream.transfer.modeling import TransferConfig, TransferModel, build_transfer
from robodream.transfer.pairs import WRIST_CAMERAS, check_source, render_pairs
from robodream.utils.progress import progress_bar

MODEL_TYPE = TransferModel.model_type


def default_transfer_train() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=32, lr=5e-4, weight_decay=0.01, warmup_steps=200,
                       ema_decay=0.995, val_every=500, checkpoint_every=250)


@dataclass
class TransferRunConfig:
    """Everything a transfer run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot datasets with depth (+ segmentation for appearance) of other tasks than evaluated
    tokenizer: str = ""  # tokenizer run directory (copied into RUN/tokenizer)
    camera: str = ""  # the camera to transfer; default: the datasets' first camera (view: first static one)
    model: TransferConfig = field(default_factory=TransferConfig)
    train: TrainConfig = field(default_factory=default_transfer_train)
    heldout_fraction: float = 0.1  # fraction of each dataset's episodes held out for validation (at least 1)
    shift_scale: float = 1.0  # width of the random draws (appearance or camera pose) the targets are rendered with
    shift_seed: int = 0  # seed of those draws (mixed with each episode's env seed)
    # Filled in from the datasets: instruction -> task, env seeds per task (the tasks seen under a
    # shift: never evaluated), env settings.
    env_tasks: dict = field(default_factory=dict)
    train_seeds: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("env_tasks", "train_seeds", "env", "model_type")

    def __post_init__(self) -> None:
        if not 0 <= self.heldout_fraction < 1:
            raise ConfigError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.shift_scale < 0 or self.shift_seed < 0:
            raise ConfigError(f"shift_scale and shift_seed must be >= 0, got {self.shift_scale}, {self.shift_seed}")


def training_shift(kind: str, scale: float, seed: int, name: str = "random") -> ShiftConfig:
    """The shift targets are rendered under: ``name`` (a preset or random) of the appearance
    (``kind`` appearance) or of the static cameras (``kind`` view); the other part unchanged."""
    if kind == "appearance":
        return ShiftConfig(appearance=name, appearance_scale=scale, seed=seed)
    return ShiftConfig(camera_shift=name, camera_shift_scale=scale, seed=seed)


def resolve_camera(kind: str, camera: str, cameras: list[str]) -> str:
    """The camera a run transfers (see :attr:`TransferRunConfig.camera`).

    Raises:
        DatasetError: a camera the datasets lack. ConfigError: a wrist camera for view transfer.
    """
    if camera and camera not in cameras:
        raise DatasetError(f"the datasets have no camera {camera!r}; they have {', '.join(cameras)}")
    if kind == "view":
        if camera in WRIST_CAMERAS:
            raise ConfigError(f"{camera} is mounted on the robot and a camera shift leaves it where it is; "
                              f"view transfer needs a static camera")
        static = [c for c in cameras if c not in WRIST_CAMERAS]
        if not camera and not static:
            raise DatasetError(f"the datasets have only wrist cameras ({', '.join(cameras)}); view transfer needs a static one")
        return camera or static[0]
    return camera or cameras[0]


def prepare_datasets(kind: str, datasets: list[LeRobotDataset], tokenizer: ImageTokenizer, camera: str,
                     shift: ShiftConfig, episodes: list[list[int]], chunk: int = 16) -> list[dict]:
    """Render, pair and encode ``episodes[k]`` of ``datasets[k]`` (:func:`prepare_episode` dicts)."""
    out = []
    with progress_bar() as progress:
        bar = progress.add_task(f"render {kind} pairs", total=sum(map(len, episodes)))
        for ds, eps in zip(datasets, episodes):
            for j in range(0, len(eps), chunk):  # the raw renders of ``chunk`` episodes in memory at a time
                for pair in render_pairs(ds, shift, camera, eps[j:j + chunk], segmentation=kind == "appearance",
                                         cameras_matrices=kind == "view"):
                    out.append(prepare_episode(kind, pair, tokenizer))
                    progress.update(bar, advance=1)
    return out


def train_transfer(cfg: TransferRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train a transfer model and write the run directory ``out``; returns held-out validation
    results (``loss``; ``psnr`` of one-step generations and ``baseline_psnr`` of the source
    frame / depth warp against the re-render, dB).

    Raises:
        DatasetError: missing/foreign datasets, a camera, depth or segmentation feature missing,
            image sizes that differ from the tokenizer's, episodes that do not replay.
        CheckpointError: bad tokenizer run, or ``out`` holds another run and not ``resume``.
        ConfigError: no dataset, bad settings, a wrist camera for view transfer, or a ``--resume``
            that changes the run.
    """
    if not cfg.data:
        raise ConfigError("at least one dataset is required (--data)")
    run = Run(out, cfg, resume=resume)
    with run.guard():
        device = resolve_device(cfg.train.device)
        tokenizer = load_tokenizer(cfg.tokenizer, device=device)
        datasets = [LeRobotDataset(p) for p in cfg.data]
        cameras, _, _ = check_datasets(datasets, tokenizer, needs=("action",))
        m = cfg.model
        m.camera = resolve_camera(m.kind, cfg.camera, cameras)
        m.latent_channels, m.latent_size = tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
        m.image_size = tokenizer.cfg.image_size
        m.__post_init__()
        record_provenance(cfg, datasets)
        splits = [split_episodes(ds.num_episodes, cfg.heldout_fraction) for ds in datasets]
        shift = training_shift(m.kind, cfg.shift_scale, cfg.shift_seed)
        for ds in datasets:  # every feature before any rendering
            check_source(ds, m.camera, segmentation=m.kind == "appearance")
        train_eps = prepare_datasets(m.kind, datasets, tokenizer, m.camera, shift, [s[0] for s in splits])
        held_eps = prepare_datasets(m.kind, datasets, tokenizer, m.camera, shift, [s[1] for s in splits])
        train_table = FrameTable(train_eps)
        held_table = FrameTable(held_eps) if held_eps else None

        torch.manual_seed(cfg.train.seed)
        model = build_transfer(m).to(device)

        def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
            return train_table.inputs(model, *train_table.sample(batch_size, gen), device)

        def loss_fn(mod, batch, gen):
            return mod.loss(**batch, generator=gen, decode=tokenizer.decode)

        def validate(mod: TransferModel, part: tuple[int, int]) -> dict[str, float]:
            return validate_transfer(mod, held_table, tokenizer, device, shard_of=part)

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if held_table is not None else None, description=f"{m.kind} transfer",
                          model_factory=lambda: build_transfer(m))
        val = run.fit(trainer, meta={"n_train_episodes": len(train_eps), "n_heldout_episodes": len(held_eps),
                                     "n_train_frames": len(train_table), "training_shift": str(shift)},
                      tokenizer=cfg.tokenizer)
        results = run.finish(trainer, val, n_train_frames=len(train_table),
                             n_heldout_frames=len(held_table) if held_table else 0)
    return results


@torch.no_grad()
def validate_transfer(model: TransferModel, table: FrameTable, tokenizer: ImageTokenizer, device, n: int = 64,
                      seed: int = 0, shard_of: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Held-out metrics on ``n`` fixed frames (drawn once from ``seed``; ``shard_of`` takes this
    process's part): the rectified-flow loss, the PSNR (dB) of a one-step generation (the
    conditional mean) decoded by the tokenizer against the re-render, and the baseline's PSNR."""
    gen = torch.Generator().manual_seed(seed)
    idx, ref = table.sample(min(n, len(table)), gen)
    part = shard(len(idx), *shard_of)
    idx, ref = idx[part], ref[part]
    if not len(idx):
        return {"n": 0}
    model.eval()
    b = table.inputs(model, idx, ref, device)
    loss, _ = model.loss(**b, generator=torch.Generator().manual_seed(seed + 1), decode=tokenizer.decode)
    pred = model.generate_frames(b["control"], b["reference"], b.get("pose"), tokenizer.decode, b.get("pixels"),
                                 steps=1, generator=torch.Generator().manual_seed(seed)).cpu()  # (B, H, W, 3) in [0, 1]
    target = torch.from_numpy(table.target_rgb[idx.numpy()]).float() / 255
    base = torch.from_numpy(table.baseline_rgb[idx.numpy()]).float() / 255
    return {"loss": float(loss), "psnr": psnr(pred, target), "baseline_psnr": psnr(base, target), "n": len(idx)}


def load_transfer(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained transfer run: ``(AppearanceTransfer or ViewTransfer, tokenizer, run config dict)``,
    in eval mode.

    Raises:
        CheckpointError: not a transfer run (e.g. an IDM run), unfinished, or weights that do not fit.
    """
    from robodream.transfer.modeling import MODELS

    kind = (read_run_config(run_dir, MODEL_TYPE).get("model") or {}).get("kind", "appearance")
    return load_latent_run(run_dir, MODELS.get(kind, TransferModel), TransferConfig, device)
