"""Train GigaWorld-Policy on LeRobot datasets; load a trained policy.

``robodream train policy --data DIR [DIR ...] --tokenizer RUN --out RUN`` calls
:func:`train_policy`. Several datasets (tasks) train one multi-task model. Frames are
encoded once by the frozen tokenizer; the last ``heldout_fraction`` of each dataset's
episodes are held out for validation (flow loss and sampled-chunk action error).

The policy run is self-contained: it copies the tokenizer (config and weights) into
``RUN/tokenizer/`` and writes ``RUN/normalization.json`` next to ``RUN/config.json``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from robodream.data.collect import dataset_provenance
from robodream.data.lerobot import LeRobotDataset
from robodream.data.windows import EpisodeTable
from robodream.errors import CheckpointError, ConfigError, DatasetError
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import GigaWorldPolicy
from robodream.tokenizer.model import ImageTokenizer, encode_frames
from robodream.tokenizer.train import _check_out, load_tokenizer, split_episodes
from robodream.train.checkpoint import load_model_weights
from robodream.train.loop import TrainConfig, Trainer, resolve_device
from robodream.utils.io import atomic_write_json, read_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import from_dict, read_run_config, to_jsonable, write_run_meta

MODEL_TYPE = GigaWorldPolicy.model_type


def default_policy_train() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=64, lr=5e-4, weight_decay=0.01, warmup_steps=200,
                       ema_decay=0.999, val_every=1000, checkpoint_every=500)


@dataclass
class PolicyRunConfig:
    """Everything a policy run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot dataset directories (one or more tasks)
    tokenizer: str = ""  # tokenizer run directory (copied into RUN/tokenizer)
    model: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=default_policy_train)
    heldout_fraction: float = 0.1
    balance_tasks: bool = True  # draw every task equally often in multi-task training
    # Filled in from the datasets: instruction -> Meta-World task name, and the env seeds
    # (per Meta-World task) of the training episodes, so evaluation can avoid them.
    env_tasks: dict = field(default_factory=dict)
    train_seeds: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # env settings of the datasets (cameras, image size)
    model_type: str = MODEL_TYPE


def encode_dataset(ds: LeRobotDataset, tokenizer: ImageTokenizer, cameras: list[str], episodes: list[int],
                   batch: int = 512, progress=None, task_offset: dict[str, int] | None = None) -> list[dict]:
    """Encode the frames of ``episodes`` with the tokenizer.

    Returns one dict per episode: latents (T, n_cam, C, h, w), state (T, Ds), action (T, Da),
    task_index (int, in the run's vocabulary ``task_offset``), task (str).
    """
    frames = {c: ds.all_frames(c) for c in cameras}
    out = []
    for i in episodes:
        ep = ds.episode(i)
        lats = [encode_frames(tokenizer, frames[c][i], batch).cpu() for c in cameras]
        out.append({"latents": torch.stack(lats, 1), "state": ep.state, "action": ep.action,
                    "task_index": (task_offset or {}).get(ep.task, ep.task_index), "task": ep.task})
        if progress is not None:
            progress()
    return out


def _check_datasets(datasets: list[LeRobotDataset], tokenizer: ImageTokenizer) -> tuple[list[str], int, int]:
    cams = {tuple(ds.cameras) for ds in datasets}
    if len(cams) != 1:
        raise DatasetError(f"datasets have different cameras {sorted(cams)}")
    for ds in datasets:
        if ds.image_size != (tokenizer.cfg.image_size, tokenizer.cfg.image_size):
            raise DatasetError(f"{ds.root} has {ds.image_size[0]}x{ds.image_size[1]} images but the tokenizer "
                               f"expects {tokenizer.cfg.image_size}x{tokenizer.cfg.image_size}")
    dims = {(ds.state_dim, ds.action_dim) for ds in datasets}
    if len(dims) != 1:
        raise DatasetError(f"datasets have different (state, action) dimensions {sorted(dims)}")
    sd, ad = dims.pop()
    return list(cams.pop()), sd, ad


def encode_run_data(datasets: list[LeRobotDataset], tokenizer: ImageTokenizer, cameras: list[str],
                    heldout_fraction: float) -> tuple[list[str], list[dict], list[dict]]:
    """Task vocabulary and tokenizer-encoded episodes of a training run, split per dataset.

    Returns ``(tasks, train_episodes, heldout_episodes)``: the instruction strings in
    first-seen order (index = task-embedding row) and :func:`encode_dataset` episodes; the
    last ``heldout_fraction`` of each dataset's episodes is held out (never trained on).
    Shared by the policy and the video world model.
    """
    tasks: list[str] = []
    for ds in datasets:
        tasks += [t for t in ds.tasks if t not in tasks]
    vocab = {t: i for i, t in enumerate(tasks)}
    train_eps, held_eps = [], []
    with progress_bar() as progress:
        bar = progress.add_task("encode frames", total=sum(ds.num_episodes for ds in datasets))
        adv = lambda: progress.update(bar, advance=1)  # noqa: E731
        for ds in datasets:
            tr, he = split_episodes(ds.num_episodes, heldout_fraction)
            train_eps += encode_dataset(ds, tokenizer, cameras, tr, progress=adv, task_offset=vocab)
            held_eps += encode_dataset(ds, tokenizer, cameras, he, progress=adv, task_offset=vocab)
    return tasks, train_eps, held_eps


def train_policy(cfg: PolicyRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train a policy and write the run directory ``out``; returns held-out validation results.

    Raises:
        DatasetError: missing/foreign datasets, camera/image-size/dimension mismatches.
        CheckpointError: bad tokenizer run, or ``out`` holds another run and not ``resume``.
    """
    out = Path(out)
    _check_out(out, resume, MODEL_TYPE)
    if not cfg.data:
        raise ConfigError("at least one dataset is required")
    device = resolve_device(cfg.train.device)
    tokenizer = load_tokenizer(cfg.tokenizer, device=device)
    datasets = [LeRobotDataset(p) for p in cfg.data]
    cameras, state_dim, action_dim = _check_datasets(datasets, tokenizer)

    tasks, train_eps, held_eps = encode_run_data(datasets, tokenizer, cameras, cfg.heldout_fraction)
    m = cfg.model
    m.state_dim, m.action_dim, m.cameras, m.tasks = state_dim, action_dim, tuple(cameras), tuple(tasks)
    m.latent_channels, m.latent_size = tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
    m.image_size = tokenizer.cfg.image_size
    m.__post_init__()
    for ds in datasets:
        prov = dataset_provenance(ds)
        if prov:
            for t in ds.tasks:
                cfg.env_tasks[t] = prov["task"]
            cfg.train_seeds.setdefault(prov["task"], [])
            cfg.train_seeds[prov["task"]] = sorted(set(cfg.train_seeds[prov["task"]]) | set(prov["seeds"]))
            cfg.env = {k: prov["env"][k] for k in ("cameras", "image_size", "max_steps") if k in prov["env"]}

    train_table = EpisodeTable.from_episodes(train_eps)
    held_table = EpisodeTable.from_episodes(held_eps) if held_eps else None

    torch.manual_seed(cfg.train.seed)
    model = GigaWorldPolicy(m)
    s_mean, s_std = train_table.mean_std("state")
    a_mean, a_std = train_table.mean_std("action")
    norm = {"observation.state": {"mean": s_mean.tolist(), "std": s_std.tolist()},
            "action": {"mean": a_mean.tolist(), "std": a_std.tolist()}}
    model.set_normalization(norm)
    model.to(device)

    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "config.json", to_jsonable(cfg))
    atomic_write_json(out / "normalization.json", norm)
    write_run_meta(out, {"n_train_episodes": len(train_eps), "n_heldout_episodes": len(held_eps),
                         "n_train_frames": len(train_table)})
    _copy_tokenizer(Path(cfg.tokenizer), out / "tokenizer")

    def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
        idx = train_table.sample_anchors(batch_size, gen, balance_tasks=cfg.balance_tasks)
        return _prepare(model, train_table.windows(idx, m.horizon, m.future_offsets), device)

    def loss_fn(mod, batch, gen):
        return mod(**batch, generator=gen)

    validate = (lambda mod: validate_policy(mod, held_table, device)) if held_table is not None else None
    trainer = Trainer(model, cfg.train, out, sample_batch, loss_fn, validate=validate, description="policy")
    val = trainer.fit(resume=resume)
    trainer.save_final()
    results = {**{k.removeprefix("val/"): v for k, v in val.items()}, "steps": trainer.step,
               "n_train_frames": len(train_table), "n_heldout_frames": len(held_table) if held_table else 0}
    atomic_write_json(out / "results.json", results)
    return results


def _prepare(model: GigaWorldPolicy, w: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    """Normalise state/actions of a window batch and move it to ``device``."""
    w = {k: v.to(device) for k, v in w.items()}
    w["state"] = model.normalize_state(w["state"])
    w["actions"] = model.normalize_action(w["actions"])
    if not model.cfg.n_future:
        w.pop("future_latents", None)
    return w


@torch.no_grad()
def validate_policy(model: GigaWorldPolicy, table: EpisodeTable, device, n: int = 256, seed: int = 0) -> dict[str, float]:
    """Held-out metrics: flow losses on fixed windows and the MSE of sampled (normalised) chunks."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(table), (min(n, len(table)),), generator=gen)
    batch = _prepare(model, table.windows(idx, model.cfg.horizon, model.cfg.future_offsets), device)
    model.eval()
    _, logs = model(**batch, generator=gen)
    mode = "joint" if model.cfg.mask == "full" else "action_only"
    noise = torch.randn(batch["actions"].shape, generator=gen).to(device)
    pred = model.sample(batch["state"], batch["ref_latents"], batch["task_index"], mode=mode, noise=noise)
    valid = (~batch["action_is_pad"]).float().unsqueeze(-1)
    mse = ((pred.actions - batch["actions"]).pow(2) * valid).sum() / (valid.sum() * model.cfg.action_dim)
    return {**logs, "action_mse": float(mse)}


def _copy_tokenizer(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("config.json", "model.safetensors"):
        tmp = dst / f".{name}.tmp"
        shutil.copyfile(src / name, tmp)
        os.replace(tmp, dst / name)


def load_latent_model_run(run_dir: str | os.PathLike, model_cls, config_cls, device: str | torch.device = "cpu"):
    """Load a trained run of a model over tokenizer latents (policy or video world model).

    Reads ``RUN/config.json`` (checking ``model_type == model_cls.model_type``), builds
    ``model_cls(config_cls(...))`` (fields the file lacks take ``config_cls.LEGACY_DEFAULTS``,
    then the defaults), loads ``model.safetensors`` and ``normalization.json``
    and the run's copy of the tokenizer. Returns ``(model, tokenizer, run config dict)``,
    both models in eval mode without gradients, on ``device``.

    Raises:
        CheckpointError: a run of another model type, an invalid model config, unfinished
            training, weights that do not fit the configuration, or a tokenizer whose latent
            shape differs from the model's.
    """
    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, model_cls.model_type)
    try:
        model = model_cls(from_dict(config_cls, {**getattr(config_cls, "LEGACY_DEFAULTS", {}), **cfg["model"]}))
    except (KeyError, TypeError, ConfigError) as e:
        raise CheckpointError(f"{run_dir}/config.json is not a valid {model_cls.model_type} config: {e}") from e
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no model.safetensors (training not finished? use --resume)")
    load_model_weights(model, weights)
    norm_path = run_dir / "normalization.json"
    if norm_path.is_file():
        model.set_normalization(read_json(norm_path))
    tokenizer = load_tokenizer(run_dir / "tokenizer", device=device)
    m = model.cfg
    if tokenizer.cfg.latent_shape != (m.latent_channels, m.latent_size, m.latent_size):
        raise CheckpointError(f"{run_dir}: tokenizer latent shape {tokenizer.cfg.latent_shape} does not match the model")
    return model.to(device).eval().requires_grad_(False), tokenizer, cfg


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained policy run: ``(policy, tokenizer, run config dict)``, both models in eval mode.

    Raises:
        CheckpointError: not a policy run (e.g. a tokenizer run), unfinished, or weights that
            do not fit the configuration.
    """
    return load_latent_model_run(run_dir, GigaWorldPolicy, PolicyConfig, device)
