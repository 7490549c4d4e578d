"""Train GigaWorld-Policy on LeRobot datasets; load a trained policy.

``robodream train policy --data DIR [DIR ...] --tokenizer RUN --out RUN`` calls
:func:`train_policy`. Several datasets (tasks) train one multi-task model. Frames are
encoded once by the frozen tokenizer; the last ``heldout_fraction`` of each dataset's
episodes are held out for validation (flow loss and sampled-chunk action error).

The policy run is self-contained: it copies the tokenizer (config and weights) into
``RUN/tokenizer/`` and writes ``RUN/normalization.json`` next to ``RUN/config.json``.

A RAMP-conditioned policy (``--advantage-conditioning``, ``--future-conditioning``;
GigaBrain-0.5M*, arXiv 2602.12099) trains on the per-frame labels of ``robodream relabel``
(``--labels FILE``, covering every ``--data`` dataset): each window's anchor frame brings its
advantage indicator and the world model's future latent. The run records the labels files
and the world model that made them (``world_model`` in config.json: standard-mode inference
loads it for ``z``); ``meta.json`` holds the labels' eps and positive fraction.

HG-DAgger (``--intervention-only``; Kelly et al., ICRA 2019) learns from the expert's actions
only: demonstrations, and the frames of policy rollouts where the takeover source acted
(``complementary_info.is_intervention``); the policy's own rollout frames get action-loss
weight 0 (:func:`~robodream.rl.labels.attach_intervention_weights`). Their frames still train
the video prediction (the observed futures are real whoever acted), so zero-weight anchors stay
in the sampling pool.

GWM features (``--gwm-vae RUN --gwm-tokens K``; GWM, arXiv 2508.17600): every frame of every dataset
becomes pixel-aligned Gaussians from its recorded depth of the set VAE's cameras, and the frozen
VAE's posterior means enter the policy's prefix as K pooled tokens
(:mod:`robodream.gwm.features`); the VAE is copied into ``RUN/gwm_vae`` and its input spec into
config.json's ``gwm``. Under torchrun every process computes them for its copy of the episodes.

Warm start (``--init-from RUN``): the model starts from the final weights of a finished run of
the same model config and tokenizer (the RAMP loop's rounds continue the previous round's
policy); only the weights: the optimizer, step counter and learning-rate warm-up start afresh
and the normalisation is this run's data's. A run resumed from its checkpoint ignores it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from robodream.data.collect import record_provenance
from robodream.data.latents import check_datasets, encode_run_data
from robodream.data.lerobot import LeRobotDataset
from robodream.data.lerobot_format import ENV_STATE, SEGMENTATION_PREFIX
from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError, DatasetError
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import GigaWorldPolicy
from robodream.rl.labels import (
    DEFAULT_AWR_BETA,
    DEFAULT_AWR_MAX_WEIGHT,
    attach_intervention_weights,
    attach_labels,
    match_labels,
)
from robodream.tokenizer.train import load_tokenizer
from robodream.train.loop import TrainConfig, Trainer, resolve_device, shard
from robodream.train.run_dir import Run, init_from_run, load_latent_run, warm_start_source
from robodream.utils.progress import progress_bar

MODEL_TYPE = GigaWorldPolicy.model_type


def check_draw_weights(weights, n: int, name: str, per: str) -> tuple[float, ...]:
    """Sampling weights of a training draw (``data_weight``, a recipe's ``task_weight``) as floats:
    empty (draw evenly) or one weight >= 0 per ``per`` (``n`` of them), not all 0.

    Raises:
        ConfigError: naming ``name``, when the weights break that rule.
    """
    weights = tuple(float(w) for w in weights)
    if weights and (len(weights) != n or min(weights) < 0 or not sum(weights) > 0):
        raise ConfigError(f"{name} needs one weight >= 0 per {per} ({n}), not all 0, got {list(weights)}")
    return weights


def default_policy_train() -> TrainConfig:
    return TrainConfig(steps=4000, batch_size=64, lr=5e-4, weight_decay=0.01, warmup_steps=200,
                       ema_decay=0.999, val_every=1000, checkpoint_every=500)


@dataclass
class PolicyRunConfig:
    """Everything a policy run needs; saved as RUN/config.json."""

    data: tuple[str, ...] = ()  # LeRobot dataset directories, one or more tasks (repeat --data)
    tokenizer: str = ""  # tokenizer run directory (copied into RUN/tokenizer)
    model: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=default_policy_train)
    heldout_fraction: float = 0.1  # fraction of each dataset's episodes held out for validation (at least 1)
    balance_tasks: bool = True  # draw every task equally often in multi-task training
    # Sampling weight per --data dataset (e.g. real vs synthetic): a sample comes from dataset d
    # with probability w_d / sum(w), replacing task balancing. Empty: task balancing.
    data_weight: tuple[float, ...] = ()
    # Image augmentation: random shift (DrQ) and colour jitter; augmented copies of every training
    # episode encoded once (a sample uses the original or one copy, for its reference and future
    # frames alike; data.latents).
    augment_views: int = 0  # augmented copies per episode (0: no augmentation)
    augment_pad: int = 4  # maximum shift, pixels (0: no shift)
    augment_color: float = 0.0  # colour jitter strength: brightness/contrast/saturation factors in 1 +- it, hue +- it/2
    # Filled in from the datasets: instruction -> Meta-World task name, and the env seeds
    # (per Meta-World task) of the training episodes, so evaluation can avoid them.
    env_tasks: dict = field(default_factory=dict)
    train_seeds: dict = field(default_factory=dict)
    env: dict = field(default_factory=dict)  # env settings of the datasets (cameras, image size)
    # RAMP labels (robodream relabel): one or more files that together label every --data dataset;
    # required by advantage- or future-conditioned models, and only by them.
    labels: tuple[str, ...] = ()
    # AWR (Peng et al. 2019): weight each sample's action loss by min(exp(A / awr_beta), awr_max_weight),
    # A the labels' advantage (reads --labels; the model need not be RAMP-conditioned).
    advantage_weighting: bool = False
    awr_beta: float = DEFAULT_AWR_BETA  # temperature, reward units, > 0
    awr_max_weight: float = DEFAULT_AWR_MAX_WEIGHT  # weight clip w_max, > 0
    # HG-DAgger: train on the expert's actions only: demonstration frames and the intervention frames
    # (complementary_info.is_intervention) of policy rollouts weigh 1, the policy's own rollout frames 0.
    intervention_only: bool = False
    # Warm start: a finished policy run of the same model config and tokenizer whose final weights
    # initialise this run (weights only; ignored when resuming from a checkpoint). Empty: random init.
    init_from: str = ""
    world_model: str = ""  # filled from the labels: the world-model run that made them (standard mode's z)
    # The policy's cameras, a subset of the datasets' (empty: all of them), in token order.
    cameras: tuple[str, ...] = ()
    # GWM features (GWM, arXiv 2508.17600): a set-VAE run (robodream train gwm-vae) whose frozen encoder
    # turns every frame's RGB-D from its input cameras into a latent set the policy reads beside its
    # image tokens (--model.gwm-tokens > 0; copied into RUN/gwm_vae). The datasets need those cameras'
    # depth (collect --with-depth). Empty: no GWM features.
    gwm_vae: str = ""
    gwm: dict = field(default_factory=dict)  # filled in: the GWM input cameras, image size, pixel settings
    model_type: str = MODEL_TYPE

    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("env_tasks", "train_seeds", "env", "world_model", "gwm",
                                                 "model_type")

    def __post_init__(self) -> None:
        if self.augment_views < 0 or self.augment_pad < 0 or not 0 <= self.augment_color <= 1:
            raise ConfigError(f"augment_views and augment_pad must be >= 0 and augment_color in [0, 1], got "
                              f"{self.augment_views}, {self.augment_pad}, {self.augment_color}")
        if self.augment_views and not (self.augment_pad or self.augment_color):
            raise ConfigError("augment_views needs augment_pad >= 1 or augment_color > 0 (otherwise the copies are "
                              "the frames)")
        self.data_weight = check_draw_weights(self.data_weight, len(self.data), "data_weight", "dataset")
        self.labels = tuple(self.labels)
        self.cameras = tuple(self.cameras)
        if bool(self.gwm_vae) != bool(self.model.gwm_tokens):
            raise ConfigError("GWM features need both a set-VAE run (--gwm-vae RUN) and --model.gwm-tokens > 0; got "
                              f"gwm_vae={self.gwm_vae!r}, gwm_tokens={self.model.gwm_tokens}")
        if not (self.awr_beta > 0 and self.awr_max_weight > 0):
            raise ConfigError(f"awr_beta and awr_max_weight must be > 0, got {self.awr_beta}, {self.awr_max_weight}")

    def check_labels(self) -> None:
        """Labels exactly when the model is RAMP-conditioned or advantage-weighted (AWR).

        Raises:
            ConfigError: a conditioned or weighted model without ``labels``, or ``labels`` for one
                that is neither.
        """
        m = self.model
        if self.advantage_weighting and not self.labels:
            raise ConfigError("advantage_weighting (AWR) weights samples by the labels' advantages: pass --labels FILE "
                              "(made by robodream relabel)")
        if self.advantage_weighting:
            return
        if m.ramp_conditioned and not self.labels:
            raise ConfigError("advantage_conditioning / future_conditioning train on RAMP's labels: pass --labels FILE "
                              "(made by robodream relabel --data ... --world-model RUN)")
        if self.labels and not m.ramp_conditioned:
            raise ConfigError("--labels are read only by a RAMP-conditioned policy: add --advantage-conditioning "
                              "and/or --future-conditioning, or drop --labels")


def train_policy(cfg: PolicyRunConfig, out: str | os.PathLike, *, resume: bool = False) -> dict[str, float]:
    """Train a policy and write the run directory ``out``; returns held-out validation results.

    Runs in one process or under torchrun (see :mod:`robodream.train.loop`); frames are
    encoded once (rank 0) and shared.

    Raises:
        DatasetError: missing/foreign datasets, camera/image-size/dimension mismatches, a
            dataset without observation.state or action, non-finite states or actions; labels
            that miss a dataset, are stale (another frame count) or whose z does not fit the
            tokenizer's latents.
        CheckpointError: bad tokenizer run, or ``out`` holds another run and not ``resume``;
            an ``init_from`` run of another model type, model config or tokenizer, or unfinished.
        ConfigError: no dataset, bad settings, a RAMP-conditioned model without ``labels`` (or
            labels without one), or a ``--resume`` that changes the run.
    """
    if not cfg.data:
        raise ConfigError("at least one dataset is required (--data)")
    cfg.check_labels()
    run = Run(out, cfg, resume=resume)
    warm = warm_start_source(run, cfg.init_from, MODEL_TYPE)  # checked before any encoding
    with run.guard():
        device = resolve_device(cfg.train.device)
        tokenizer = load_tokenizer(cfg.tokenizer, device=device)
        datasets = [LeRobotDataset(p) for p in cfg.data]
        cameras, state_dim, action_dim = check_datasets(datasets, tokenizer)
        cameras = select_cameras(cameras, cfg.cameras)
        gwm_vae = None
        if cfg.gwm_vae:  # checked before any encoding
            from robodream.gwm.features import gwm_input_spec
            from robodream.gwm.train import load_set_vae

            gwm_vae, _ = load_set_vae(cfg.gwm_vae, device=device)
            cfg.gwm = gwm_input_spec(cfg.gwm_vae)
        cfg.model.aux_state_dim = aux_state_dim(datasets, cfg.model.aux_state_weight)
        labels, labels_info = None, {}
        if cfg.labels:  # matched before any encoding: a stale file fails fast
            labels, labels_info = match_labels(cfg.labels, datasets)
            check_label_latents(labels, len(cameras), tokenizer.cfg.latent_shape,
                                need_z=cfg.model.future_conditioning)
            cfg.world_model = labels_info.get("world_model", "")
        if cfg.model.keypoint_targets:
            check_segmentation(datasets, cameras, cfg)

        tasks, train_eps, held_eps = encode_run_data(datasets, tokenizer, cameras, cfg.heldout_fraction,
                                                     views=cfg.augment_views, pad=cfg.augment_pad, seed=cfg.train.seed,
                                                     keep_frames=bool(cfg.model.pixel_stem_width),
                                                     color=cfg.augment_color,
                                                     keep_segmentation=bool(cfg.model.keypoint_targets))
        if gwm_vae is not None:
            from robodream.gwm.features import attach_gwm_features

            with progress_bar() as progress:
                bar = progress.add_task("GWM features", total=len(train_eps) + len(held_eps))
                attach_gwm_features(train_eps + held_eps, datasets, gwm_vae, cfg.gwm,
                                    progress=lambda: progress.update(bar, advance=1))
        m = cfg.model
        m.state_dim, m.action_dim, m.cameras, m.tasks = state_dim, action_dim, tuple(cameras), tuple(tasks)
        if gwm_vae is not None:
            m.gwm_latents, m.gwm_latent_dim = gwm_vae.cfg.n_latents, gwm_vae.cfg.latent_dim
        m.latent_channels, m.latent_size = tokenizer.cfg.latent_channels, tokenizer.cfg.latent_size
        m.image_size = tokenizer.cfg.image_size
        m.__post_init__()
        record_provenance(cfg, datasets)
        if labels is not None:  # validation windows carry the weights too: the held-out loss is the trained one
            attach_labels(train_eps + held_eps, labels, conditioning=m.ramp_conditioned,
                          awr=(cfg.awr_beta, cfg.awr_max_weight) if cfg.advantage_weighting else None)
        if cfg.intervention_only:
            attach_intervention_weights(train_eps + held_eps, datasets)

        train_table = EpisodeTable.from_episodes(train_eps)
        held_table = EpisodeTable.from_episodes(held_eps) if held_eps else None

        torch.manual_seed(cfg.train.seed)
        model = GigaWorldPolicy(m)
        if warm:  # before the normalisation: that stays this run's
            init_from_run(model, warm, PolicyConfig, cfg.tokenizer)
        norm = train_table.normalization()
        model.set_normalization(norm)
        model.to(device)

        def sample_batch(step: int, gen: torch.Generator, batch_size: int) -> dict[str, torch.Tensor]:
            idx = train_table.sample_anchors(batch_size, gen, balance_tasks=cfg.balance_tasks,
                                             source_weights=cfg.data_weight or None)
            view = torch.randint(0, train_table.n_views + 1, (batch_size,), generator=gen) if train_table.n_views else None
            return _prepare(model, train_table.windows(idx, m.horizon, m.future_offsets, view=view), device)

        def loss_fn(mod, batch, gen):
            return mod(**batch, generator=gen)

        def validate(mod: GigaWorldPolicy, part: tuple[int, int]) -> dict[str, float]:
            return validate_policy(mod, held_table, device, shard_of=part)

        def factory() -> GigaWorldPolicy:
            f = GigaWorldPolicy(m)
            f.set_normalization(norm)
            return f

        trainer = Trainer(model, cfg.train, run.path, sample_batch, loss_fn,
                          validate=validate if held_table is not None else None, description="policy",
                          model_factory=factory)
        meta = {"n_train_episodes": len(train_eps), "n_heldout_episodes": len(held_eps),
                "n_train_frames": len(train_table)}
        if labels_info:
            meta["labels"] = labels_info
        if warm:
            meta["init_from"] = warm
        if cfg.intervention_only:
            meta["n_train_frames_weighted"] = int((train_table.sample_weight > 0).sum())  # the expert's frames
        val = run.fit(trainer, meta=meta, json_files={"normalization.json": norm}, tokenizer=cfg.tokenizer,
                      copies={"gwm_vae": cfg.gwm_vae} if cfg.gwm_vae else None)
        results = run.finish(trainer, val, n_train_frames=len(train_table),
                             n_heldout_frames=len(held_table) if held_table else 0)
    return results


def select_cameras(available: list[str], wanted: tuple[str, ...]) -> list[str]:
    """The policy's cameras: ``wanted`` (in that order) when given, else every camera ``available``.

    Raises:
        DatasetError: a wanted camera the datasets do not have.
    """
    missing = [c for c in wanted if c not in available]
    if missing:
        raise DatasetError(f"--cameras {','.join(missing)}: the datasets have only {', '.join(available)}")
    return list(wanted) or list(available)


def aux_state_dim(datasets: list[LeRobotDataset], weight: float) -> int:
    """Size of the auxiliary state target (``observation.environment_state``) of a run with
    auxiliary weight ``weight``: 0 when the weight is 0.

    Raises:
        DatasetError: a positive weight and a dataset without the feature, or different sizes.
    """
    if not weight:
        return 0
    missing = [str(ds.root) for ds in datasets if ENV_STATE not in ds.features]
    if missing:
        raise DatasetError(f"aux_state_weight={weight} needs {ENV_STATE} in every dataset, and {', '.join(missing)} "
                           "has none; record it with robodream collect, or set --model.aux-state-weight 0")
    dims = {ds.features[ENV_STATE]["shape"][0] for ds in datasets}
    if len(dims) != 1:
        raise DatasetError(f"datasets have different {ENV_STATE} sizes {sorted(dims)}")
    return dims.pop()


def check_label_latents(labels: list, n_cameras: int, latent_shape: tuple[int, int, int], *,
                        need_z: bool = True) -> None:
    """The labels' future latents ``z`` (T, N, C, h, w) must have the policy's cameras and tokenizer
    latents; with ``need_z`` (a future-conditioned policy) every file must hold them.

    Raises:
        DatasetError: another shape (labels made by a world model on another tokenizer or
            cameras), or ``need_z`` and labels relabelled without ``z``.
    """
    for lab in labels:
        if lab.z is None:
            if need_z:
                raise DatasetError(f"{lab.file} holds no future latents z (relabelled without them), which a "
                                   "future-conditioned policy needs; run robodream relabel without --no-z")
            continue
        if tuple(lab.z.shape[1:]) != (n_cameras, *latent_shape):
            raise DatasetError(f"the future latents in {lab.file} have shape {tuple(lab.z.shape[1:])} per frame, but the "
                               f"policy's tokenizer gives {(n_cameras, *latent_shape)}; relabel with a world model on "
                               "this tokenizer")


def check_segmentation(datasets: list[LeRobotDataset], cameras: list[str], cfg: PolicyRunConfig) -> None:
    """Supervised keypoints (``keypoint_targets``) learn from every camera's segmentation.

    Raises:
        DatasetError: a dataset without ``observation.segmentation.{cam}`` for some camera.
        ConfigError: with image augmentation (the segmentation is not shifted with the frames).
    """
    missing = [SEGMENTATION_PREFIX + cam for ds in datasets for cam in cameras if SEGMENTATION_PREFIX + cam not in ds.features]
    if missing:
        without = sorted({str(ds.root) for ds in datasets if any(SEGMENTATION_PREFIX + c not in ds.features for c in cameras)})
        raise DatasetError(f"keypoint_targets={list(cfg.model.keypoint_targets)} learn from {', '.join(sorted(set(missing)))}, "
                           f"which {', '.join(without)} lacks; record it with robodream collect --with-segmentation")
    if cfg.augment_views:
        raise ConfigError("keypoint_targets and augment_views cannot be combined (segmentation is not augmented)")


def _prepare(model: GigaWorldPolicy, w: dict[str, torch.Tensor], device, keep_weight: bool = True) -> dict[str, torch.Tensor]:
    """Normalise state/actions of a window batch and move it to ``device`` (RAMP's labels only for
    a model conditioned on them; AWR's ``sample_weight`` where the table has it and ``keep_weight``)."""
    if model.indicator_embedding is None:
        w.pop("indicator", None)
    if model.z_in is None:
        w.pop("z_latents", None)
    if not keep_weight:
        w.pop("sample_weight", None)
    w = {k: v.to(device) for k, v in w.items()}
    w["state"] = model.normalize_state(w["state"])
    w["actions"] = model.normalize_action(w["actions"])
    if model.aux_head is not None:
        w["env_state"] = model.normalize_env_state(w["env_state"])
    else:
        w.pop("env_state", None)
    if not model.cfg.keypoint_targets:
        w.pop("ref_segmentation", None)
    if not model.cfg.n_future:
        w.pop("future_latents", None)
    if model.gwm_pool is None:
        w.pop("gwm_latents", None)
    return w


@torch.no_grad()
def validate_policy(model: GigaWorldPolicy, table: EpisodeTable, device, n: int = 256, seed: int = 0,
                    shard_of: tuple[int, int] = (0, 1)) -> dict[str, float]:
    """Held-out metrics: flow losses on fixed windows and the MSE of sampled (normalised) chunks.

    The ``n`` windows are drawn once from ``seed``; ``shard_of = (rank, world_size)`` takes this
    process's part of them (the returned ``"n"`` is its size, for weighting).
    """
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(table), (min(n, len(table)),), generator=gen)
    idx = idx[shard(len(idx), *shard_of)]
    if not len(idx):
        return {"n": 0}
    batch = _prepare(model, table.windows(idx, model.cfg.horizon, model.cfg.future_offsets), device)
    model.eval()
    _, logs = model(**batch, generator=gen)
    mode = "joint" if model.cfg.mask == "full" else "action_only"
    noise = torch.randn(batch["actions"].shape, generator=gen).to(device)
    pred = model.sample(batch["state"], batch["ref_latents"], batch["task_index"], mode=mode, noise=noise,
                        ref_frames=batch.get("ref_frames"), indicator=batch.get("indicator"),
                        z_latents=batch.get("z_latents"), gwm_latents=batch.get("gwm_latents"))
    valid = (~batch["action_is_pad"]).float().unsqueeze(-1)
    mse = ((pred.actions - batch["actions"]).pow(2) * valid).sum() / (valid.sum() * model.cfg.action_dim)
    return {**logs, "action_mse": float(mse), "n": len(idx)}


def load_policy(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """Load a trained policy run: ``(policy, tokenizer, run config dict)``, both models in eval mode.

    Raises:
        CheckpointError: not a policy run (e.g. a tokenizer run), unfinished, or weights that
            do not fit the configuration.
    """
    return load_latent_run(run_dir, GigaWorldPolicy, PolicyConfig, device)
