"""``robodream bench data-engine``: does generated data improve a policy under shift?

GigaWorld-0 (arXiv 2511.19861) claims a video world model is a data engine: it turns a few real
demonstrations into many, re-textured (AppearanceTransfer), seen from new cameras (ViewTransfer)
or imagined from new initial states (dreams labelled by an inverse-dynamics model, as DreamGen,
arXiv 2505.12705). This benchmark trains one multi-task GigaWorld-Policy per arm on the same
real demonstrations plus each kind of extra data, and evaluates every arm in closed loop on
unseen seeds at three conditions:

========================  ==================================================================
arm                       training data
========================  ==================================================================
``real``                  ``demos`` real demonstrations per task, default appearance and camera
``real_aug``              the same, with random-shift + colour-jitter augmentation
``real_transfer``         + ``transfer_copies`` appearance- and as many view-transferred copies
``real_dreams``           + ``dreams_per_task`` IDM-labelled, success-filtered dreams per task
``oracle``                ``demos`` demonstrations per task collected under random appearance
                          and camera (the issue's upper bound of the transfer arm)
``real_rendered``         ``real_transfer`` with the copies rendered by the simulator (the same
                          trajectories and targets, replayed): a perfect transfer model
``real_no_video``         ``real`` with ``video_stride = 0`` (item 8: the WAM's video supervision)
``low_*``                 ``real``, ``real_dreams`` and ``real_no_video`` at ``low_demos`` per task
========================  ==================================================================

Conditions: ``default``, ``appearance_shift`` (random appearances drawn from
``eval_shift_seed``: never used in training) and ``camera_shift`` (random static-camera poses,
the same seed); the low-data arms are evaluated at ``default`` only.

What each generator may see: the transfer models and the tokenizer's shifted frames come from
``other_tasks`` only (never the evaluated tasks under a shift); the world models and IDMs train
on the arm's own real demonstrations plus the other tasks' real demonstrations (the same robot);
the 5-demo arm's generators never see the 20-demo data.

Two upper bounds for the transfer arm: ``oracle`` (the issue's) and ``real_rendered``, the
transfer arm's own data made perfect. ``gap_closed`` is ``(real_transfer - real) / (oracle - real)``
per shifted condition; ``gap_closed_rendered`` the same against ``real_rendered``, which isolates
the generators' error from the choice of trajectories and copies (at 20 demos per task and 1500
policy steps the oracle, whose every demonstration has another look and camera, measured below
``real`` even under shift, so its gap is undefined there). Every stage writes its outputs under
``work`` and is skipped when they are complete, so the same command continues an interrupted
benchmark (stage wall times accumulate in ``work/timings.json``).

A run may train a subset of the arms (``arms``) and runs only the stages those arms need. Its
results are merged into an earlier result file of the same settings (:func:`merge_results`), so
the whole table can be built over several sessions whose working directories do not survive.
Settings that only some arms depend on (:data:`ARM_SETTINGS`: the transfer models', the dreams',
augmentation's) may change between invocations: those arms are then re-measured, their earlier
stage outputs move to ``work/superseded/STAMP/`` (with their stage times and the old settings)
and their earlier results to the result file's ``superseded`` list, so nothing is lost and no
number mixes two settings; any other changed setting is an error. Settings saved by older code
read its values for fields added since (``LEGACY_DEFAULTS``). Every invocation is listed with its
code version, host, arms and the SHA-256 of its tokenizer's weights: the data and the tokenizer are recomputed from the same seeds in each working directory,
and equal hashes show that arms measured in different invocations saw the same latents.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import resource
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, ClassVar

from robodream.bench.stages import Stages
from robodream.config import from_dict, to_dict
from robodream.config import replace as config_replace
from robodream.data.collect import CollectConfig, collect
from robodream.envs.meta_world import check_task
from robodream.envs.shift import ShiftConfig
from robodream.errors import ConfigError
from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy
from robodream.idm.modeling import IDMConfig
from robodream.pipeline import dataset_complete, run_complete, training_seconds
from robodream.policy.configuration import PolicyConfig
from robodream.tokenizer.model import TokenizerConfig
from robodream.train.loop import TrainConfig
from robodream.transfer.modeling import TransferConfig
from robodream.transfer.pairs import WRIST_CAMERAS
from robodream.utils.io import atomic_write_json, atomic_write_text
from robodream.utils.run import code_version, environment_info, now
from robodream.world_model.configuration import WorldModelConfig

ARMS = ("real", "real_aug", "real_transfer", "real_dreams", "oracle")  # the main table's arms
CONDITIONS = ("default", "appearance_shift", "camera_shift")
#: Every arm the benchmark can train: the main table's, item 8's ``video_stride = 0`` arm and the
#: low-data arms (evaluated at ``default`` only).
ALL_ARMS = (*ARMS, "real_rendered", "real_no_video", "low_real", "low_real_dreams", "low_real_no_video")
#: Settings only some arms depend on -> those arms (every other setting changes every arm).
ARM_SETTINGS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("augment_views", "augment_pad", "augment_color"), ("real_aug",)),
    **dict.fromkeys(("transfer", "transfer_train", "transfer_sample_steps", "transfer_eval_episodes"),
                    ("real_transfer",)),
    **dict.fromkeys(("transfer_copies", "generate_shift_seed"), ("real_transfer", "real_rendered")),
    "real_share": ("real_transfer", "real_rendered", "real_dreams", "low_real_dreams"),
    **dict.fromkeys(("world_model", "world_model_train", "idm", "idm_train", "dreams_per_task", "dream_steps",
                     "dream_filter", "dream_sample_steps", "idm_test_demos"), ("real_dreams", "low_real_dreams")),
}
#: What an arm's stages leave besides its policy and evaluations: paths under ``work`` (globs),
#: stage names (fnmatch patterns) and result keys.
_ARM_EXTRAS: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "real_transfer": (("runs/transfer_*", "eval/transfer", "data/synthetic/appearance", "data/synthetic/view"),
                      ("train transfer *", "eval transfer *", "generate *"),
                      ("transfer_psnr_db", "transfer_baseline_psnr_db")),
    "real_rendered": (("data/synthetic/rendered_*",), ("render *",), ()),
    "real_dreams": (("runs/idm", "runs/world_model", "data/synthetic/dream", "eval/idm", "data/idm_test"),
                    ("train idm", "train world model", "dream *", "eval idm *", "collect data/idm_test/*"),
                    ("idm_replay_success", "true_action_replay_success", "idm_action_mse")),
    "low_real_dreams": (("runs/idm_low", "runs/world_model_low", "data/synthetic/dream_low"),
                        ("train idm_low", "train world model_low", "dream_low *"), ()),
}


def arm_outputs(arm: str) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``arm``'s outputs: path globs under the working directory, stage-name patterns, result keys."""
    paths, stages, keys = _ARM_EXTRAS.get(arm, ((), (), ()))
    return ((*paths, f"runs/policy_{arm}", f"eval/policy/{arm}"), (*stages, f"train policy {arm}", f"eval {arm} *"),
            keys)


def changed_settings(saved: dict[str, Any], cfg: DataEngineBench, where: str) -> tuple[list[str], tuple[str, ...]]:
    """The settings in which ``saved`` (settings JSON written by this or older code; fields added
    since read their ``LEGACY_DEFAULTS``) differs from ``cfg``, and the arms they make stale.

    Raises:
        ConfigError: a changed setting every arm depends on (``where`` names the holder), or
            saved settings that are not a data-engine benchmark's.
    """
    now_s = json.loads(json.dumps(to_dict(cfg)))
    try:
        old = json.loads(json.dumps(to_dict(from_dict(DataEngineBench, saved, legacy=True))))
    except ConfigError as e:
        raise ConfigError(f"{where} holds data-engine settings this version cannot read ({e})") from None
    changed = sorted(k for k in now_s if old.get(k) != now_s[k])
    shared = [k for k in changed if k not in ARM_SETTINGS]
    if shared:
        raise ConfigError(f"{where} holds a data-engine benchmark with other settings ({', '.join(shared)})")
    return changed, tuple(a for a in ALL_ARMS if any(a in ARM_SETTINGS[k] for k in changed))


def _supersede_work(work: Path, old_settings: dict[str, Any], changed: list[str], stale: tuple[str, ...],
                    log) -> None:
    """Move the ``stale`` arms' outputs and stage times out of ``work`` into
    ``work/superseded/STAMP/`` with a ``superseded.json`` that says why."""
    dest = work / "superseded" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    timings_path = work / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    patterns = [pat for a in stale for pat in arm_outputs(a)[1]]
    old_times = {k: v for k, v in timings.items() if any(fnmatch.fnmatchcase(k, pat) for pat in patterns)}
    paths = sorted({p for a in stale for g in arm_outputs(a)[0] for p in work.glob(g)})
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_json(dest / "superseded.json", {
        "created": now(), "changed_settings": changed, "arms": list(stale), "settings": old_settings,
        "moved": [str(p.relative_to(work)) for p in paths], "stage_s": old_times})
    for p in paths:
        target = dest / p.relative_to(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        p.rename(target)
    atomic_write_json(timings_path, {k: v for k, v in timings.items() if k not in old_times})
    log(f"settings changed ({', '.join(changed)}): {', '.join(stale)} will be re-measured; "
        f"their earlier outputs are in {dest}")


def parse_arms(spec: str) -> tuple[str, ...]:
    """Arms from a comma-separated list of arm names (``all``: every arm), in :data:`ALL_ARMS` order.

    Raises:
        ConfigError: an unknown name.
    """
    arms: set[str] = set()
    for name in (x.strip() for x in spec.split(",") if x.strip()):
        if name == "all":
            arms.update(ALL_ARMS)
        elif name in ALL_ARMS:
            arms.add(name)
        else:
            raise ConfigError(f"unknown arm {name!r}; arms: {', '.join(ALL_ARMS)}, all")
    if not arms:
        raise ConfigError("no arms given")
    return tuple(a for a in ALL_ARMS if a in arms)


def _train(steps: int, batch_size: int, lr: float, **kw) -> Callable[[], TrainConfig]:
    return lambda: TrainConfig(steps=steps, batch_size=batch_size, lr=lr, val_every=0,
                               checkpoint_every=max(1, min(500, steps)), **kw)


@dataclass
class DataEngineBench:
    """Settings of the data-engine benchmark (``--config`` JSON overrides any field)."""

    # 3 of the 5 bench tasks, for the 6-hour budget: reach (a small goal marker), push (an object
    # on the table) and drawer-open (an articulated body); button and door already reach 1.0 and
    # 0.98 with 50 demos (benchmarks/RESULTS.md), so they would tell the arms apart least.
    tasks: tuple[str, ...] = ("reach-v3", "push-v3", "drawer-open-v3")
    other_tasks: tuple[str, ...] = ("window-open-v3", "door-close-v3", "button-press-v3")  # generators' extra data
    demos: int = 20  # real demonstrations per task
    low_demos: int = 5  # the low-data arms' demonstrations per task (the first ``low_demos`` of the 20)
    other_demos: int = 20  # demonstrations per other task
    image_size: int = 64
    workers: int = 2  # rollout processes of collection and evaluation
    # Shift strength: the random draws' width (envs.shift), for the eval conditions, the oracle data
    # and the generators' training targets alike.
    appearance_scale: float = 1.0
    camera_shift_scale: float = 1.0
    eval_shift_seed: int = 7000  # the conditions' draws (never used in training)
    oracle_shift_seed: int = 5000
    generate_shift_seed: int = 2000  # copy c of the transferred data draws from generate_shift_seed + c
    transfer_copies: int = 2  # appearance copies and view copies per real episode
    dreams_per_task: int = 40
    dream_steps: int = 128  # frames per dream, the rendered first one included
    dream_filter: str = "success"
    dream_sample_steps: int | None = None  # Euler steps per dreamed chunk (default: the world model's)
    transfer_eval_episodes: int = 5  # held-out real episodes the transfer models are scored on
    idm_test_demos: int = 10  # fresh real episodes per task for the IDM's replay success
    eval_episodes: int = 30
    eval_max_steps: int = 500
    # Share of the policy's training draws taken from the real demonstrations in the arms that add
    # generated or rendered data (real_transfer, real_rendered, real_dreams, low_real_dreams), the
    # rest spread equally over the synthetic datasets. None: every dataset equally often (real is
    # then 1/3 of the draws beside appearance and view copies, 1/2 beside dreams): real_rendered
    # lost 12 points on the default condition that way, 1.2 at 0.5 (each against real on its own
    # host; benchmarks/RESULTS.md).
    real_share: float | None = 0.5
    augment_views: int = 2  # real_aug: augmented copies per episode
    augment_pad: int = 4
    augment_color: float = 0.3
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TrainConfig = field(default_factory=_train(1500, 64, 2e-3, min_lr_ratio=0.05, ema_decay=0.995))
    transfer: TransferConfig = field(default_factory=TransferConfig)
    transfer_train: TrainConfig = field(default_factory=_train(2000, 32, 5e-4, weight_decay=0.01, ema_decay=0.995))
    transfer_sample_steps: int = 1  # Euler steps of generation (1: the conditional mean)
    world_model: WorldModelConfig = field(default_factory=lambda: WorldModelConfig(
        frame_stride=1, n_future_frames=8, action_drop_prob=0.3))
    world_model_train: TrainConfig = field(default_factory=_train(3200, 8, 5e-4, weight_decay=0.01, ema_decay=0.999))
    idm: IDMConfig = field(default_factory=IDMConfig)
    idm_train: TrainConfig = field(default_factory=_train(2000, 64, 5e-4, weight_decay=0.01, ema_decay=0.995))
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    # batch 32: 60 real episodes (the demo's batch for 45); each of the nine policies costs ~20 min
    # instead of ~37 min at batch 64 on the slower 2-core host (0.7 steps/s there at 64, pixel stem)
    policy_train: TrainConfig = field(default_factory=_train(1500, 32, 5e-4, weight_decay=0.01, ema_decay=0.999,
                                                             warmup_steps=200))

    # Settings saved before a field existed read as these (the value that behaved as it then).
    LEGACY_DEFAULTS: ClassVar[dict[str, object]] = {"real_share": None}

    def __post_init__(self) -> None:
        self.tasks, self.other_tasks = tuple(self.tasks), tuple(self.other_tasks)
        for t in (*self.tasks, *self.other_tasks):
            check_task(t)
        if set(self.tasks) & set(self.other_tasks):
            raise ConfigError(f"other_tasks must not include evaluated tasks: {sorted(set(self.tasks) & set(self.other_tasks))}")
        if not 1 <= self.low_demos <= self.demos or self.other_demos < 2 or self.eval_episodes < 1:
            raise ConfigError("need 1 <= low_demos <= demos, other_demos >= 2 and eval_episodes >= 1")
        if self.real_share is not None and not 0.0 < self.real_share < 1.0:
            raise ConfigError(f"real_share must be in (0, 1) or null, got {self.real_share}")


#: ``--quick``: every stage on tiny settings (CI, under a minute of work on 2 cores).
QUICK = {
    "tasks": ["reach-v3"], "other_tasks": ["window-open-v3"], "demos": 2, "low_demos": 1, "other_demos": 2,
    "image_size": 32, "workers": 1, "transfer_copies": 1, "dreams_per_task": 1, "dream_steps": 6,
    "dream_filter": "none", "dream_sample_steps": 2, "transfer_eval_episodes": 1, "idm_test_demos": 1, "eval_episodes": 1, "eval_max_steps": 8, "augment_views": 1,
    "tokenizer_train": {"steps": 2, "batch_size": 8},
    "transfer": {"dim": 16, "depth": 1, "n_heads": 2, "control_width": 8},
    "transfer_train": {"steps": 1, "batch_size": 4},
    "world_model": {"dim": 24, "depth": 1, "n_heads": 2, "n_future_frames": 2, "window": [0, 3, 3],
                    "text_encoder": ""},
    "world_model_train": {"steps": 1, "batch_size": 2},
    "idm": {"dim": 16, "depth": 1, "n_heads": 2, "horizon": 2},
    "idm_train": {"steps": 1, "batch_size": 4},
    "policy": {"dim": 32, "depth": 1, "horizon": 8, "n_action_steps": 4, "action_expert_dim": 16,
               "pixel_stem_width": 8},
    "policy_train": {"steps": 1, "batch_size": 4, "warmup_steps": 0},
}


def bench_config(overrides: dict[str, Any] | None = None, quick: bool = False) -> DataEngineBench:
    """The benchmark's settings: defaults, then :data:`QUICK` (``quick``), then ``overrides``.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    cfg = DataEngineBench()
    if quick:
        cfg = config_replace(cfg, QUICK)
    return config_replace(cfg, overrides or {}) if overrides else cfg


def _results_done(path: Path) -> bool:
    return (path / "results.json").is_file()


def run_data_engine_bench(cfg: DataEngineBench, work: str | Path, *, arms: tuple[str, ...] = ALL_ARMS,
                          previous: dict[str, Any] | None = None, log=print) -> dict[str, Any]:
    """Run (or continue) the benchmark in ``work`` for ``arms`` (a subset of :data:`ALL_ARMS`;
    only the stages they need run); returns the result dict (:func:`merge_results`), merged into
    ``previous`` (an earlier result dict of the same settings, or None).

    Raises:
        ConfigError: ``previous`` or ``work`` holds a benchmark of other settings (checked before
            any stage runs).
        DatasetError, CheckpointError: from the stages (a failed collection, a run of another
            kind in the way).
    """
    from robodream.idm.evaluate import evaluate_idm
    from robodream.idm.train import IDMRunConfig, train_idm
    from robodream.policy.train import PolicyRunConfig, train_policy
    from robodream.tokenizer.train import TokenizerRunConfig, train_tokenizer
    from robodream.transfer.evaluate import evaluate_transfer
    from robodream.transfer.generate import generate_transfer, render_copies
    from robodream.transfer.train import TransferRunConfig, train_transfer
    from robodream.world_model.dreams import generate_dreams
    from robodream.world_model.train import WorldModelRunConfig, train_world_model

    arms = parse_arms(",".join(arms))
    low_arms = any(a.startswith("low_") for a in arms)
    work = Path(work)
    settings = json.loads(json.dumps(to_dict(cfg)))
    saved = work / "config.json"
    old_settings = json.loads(saved.read_text()) if saved.is_file() else None
    try:
        changed, stale = changed_settings(old_settings, cfg, str(work)) if old_settings is not None else ([], ())
    except ConfigError as e:
        raise ConfigError(f"{e}; continue it with the same settings or use another --work") from None
    if previous is not None:
        check_mergeable(previous, cfg)
    if stale:
        _supersede_work(work, old_settings, changed, stale, log)
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, settings)
    if not (work / "work_id").is_file():  # tells this directory's invocations apart from other directories'
        atomic_write_text(work / "work_id", uuid.uuid4().hex)
    st = Stages(work, log)
    D = work / "data"
    cams = tuple(cfg.policy.cameras)
    static = [c for c in cams if c not in WRIST_CAMERAS]
    app_shift = ShiftConfig(appearance="random", appearance_scale=cfg.appearance_scale)
    cam_shift = ShiftConfig(camera_shift="random", camera_shift_scale=cfg.camera_shift_scale)

    # ------------------------------------------------------------------ data
    def collect_into(path: Path, task: str, episodes: int, seed: int = 0, shift: ShiftConfig | None = None,
                     depth: bool = False) -> None:
        st.run(f"collect {path.relative_to(work)}", lambda: dataset_complete(path), lambda: collect(
            CollectConfig(task=task, episodes=episodes, image_size=cfg.image_size, cameras=cams, seed=seed,
                          shift=shift or ShiftConfig(), with_depth=depth, with_segmentation=depth),
            path, overwrite=path.exists(), workers=cfg.workers))

    both = replace(app_shift, camera_shift="random", camera_shift_scale=cfg.camera_shift_scale)
    for t in cfg.tasks:
        collect_into(D / "real" / t, t, cfg.demos, depth=True)
        if low_arms:
            collect_into(D / "real_low" / t, t, cfg.low_demos)  # the same seeds: the first low_demos of real
        if "oracle" in arms:
            collect_into(D / "oracle" / t, t, cfg.demos, shift=replace(both, seed=cfg.oracle_shift_seed))
        if "real_dreams" in arms:
            collect_into(D / "idm_test" / t, t, cfg.idm_test_demos, seed=10_000)
    for t in cfg.other_tasks:
        collect_into(D / "other" / t, t, cfg.other_demos, depth=True)
        collect_into(D / "other_shifted" / t, t, cfg.other_demos, shift=replace(both, seed=cfg.oracle_shift_seed + 1))
    real = [str(D / "real" / t) for t in cfg.tasks]
    low = [str(D / "real_low" / t) for t in cfg.tasks]
    other = [str(D / "other" / t) for t in cfg.other_tasks]

    # ------------------------------------------------------------------ tokenizer (shared by every model)
    tok = work / "tokenizer"
    tok_data = (*real, *other, *[str(D / "other_shifted" / t) for t in cfg.other_tasks])
    st.run("tokenizer", lambda: run_complete(tok), lambda: train_tokenizer(TokenizerRunConfig(
        data=tok_data, model=replace(cfg.tokenizer, image_size=cfg.image_size), train=replace(cfg.tokenizer_train)),
        tok, resume=tok.exists()))

    # ------------------------------------------------------------------ transfer models, their scores, their data
    R = work / "runs"
    transfer_runs = {("appearance", c): R / f"transfer_appearance_{c}" for c in cams}
    transfer_runs.update({("view", c): R / f"transfer_view_{c}" for c in static})
    if "real_transfer" not in arms:
        transfer_runs = {}
    for (kind, cam), path in transfer_runs.items():
        scale = cfg.appearance_scale if kind == "appearance" else cfg.camera_shift_scale
        st.run(f"train transfer {kind} {cam}", lambda p=path: run_complete(p), lambda k=kind, c=cam, p=path, s=scale:
               train_transfer(TransferRunConfig(data=tuple(other), tokenizer=str(tok), camera=c,
                                                model=replace(cfg.transfer, kind=k), train=replace(cfg.transfer_train),
                                                shift_scale=s), p, resume=p.exists()))
        ev = work / "eval" / "transfer" / path.name
        st.run(f"eval transfer {kind} {cam}", lambda e=ev: _results_done(e), lambda p=path, e=ev: evaluate_transfer(
            p, real[0], e, episodes=min(cfg.transfer_eval_episodes, cfg.demos), sample_steps=cfg.transfer_sample_steps, overwrite=True))
    S = D / "synthetic"
    for t, src in zip(cfg.tasks, real):
        for kind in ("appearance", "view") if transfer_runs else ():
            out = S / kind / t
            runs = [str(p) for (k, _), p in transfer_runs.items() if k == kind]
            st.run(f"generate {kind} {t}", lambda o=out: dataset_complete(o), lambda k=kind, s=src, r=runs, o=out:
                   generate_transfer(k, s, r, o, copies=cfg.transfer_copies, shift_seed=cfg.generate_shift_seed,
                                     sample_steps=cfg.transfer_sample_steps, overwrite=o.exists()))
        for kind in ("appearance", "view") if "real_rendered" in arms else ():
            out = S / f"rendered_{kind}" / t  # the same copies and targets, rendered by the simulator
            scale = cfg.appearance_scale if kind == "appearance" else cfg.camera_shift_scale
            st.run(f"render {kind} {t}", lambda o=out: dataset_complete(o), lambda k=kind, s=src, o=out, sc=scale:
                   render_copies(k, s, o, copies=cfg.transfer_copies, shift_seed=cfg.generate_shift_seed,
                                 shift_scale=sc, workers=cfg.workers, overwrite=o.exists()))

    # ------------------------------------------------------------------ IDMs, world models, dreams (per data size)
    dream_sizes = [(size, d) for size, d, arm in (("", real, "real_dreams"), ("_low", low, "low_real_dreams"))
                   if arm in arms]
    for size, demos in dream_sizes:
        idm, wm = R / f"idm{size}", R / f"world_model{size}"
        st.run(f"train idm{size}", lambda p=idm: run_complete(p), lambda d=demos, p=idm: train_idm(IDMRunConfig(
            data=(*d, *other), tokenizer=str(tok), model=replace(cfg.idm), train=replace(cfg.idm_train)),
            p, resume=p.exists()))
        st.run(f"train world model{size}", lambda p=wm: run_complete(p), lambda d=demos, p=wm: train_world_model(
            WorldModelRunConfig(data=(*d, *other), tokenizer=str(tok), model=replace(cfg.world_model),
                                train=replace(cfg.world_model_train)), p, resume=p.exists()))
        for t in cfg.tasks:
            out = S / f"dream{size}" / t
            st.run(f"dream{size} {t}", lambda o=out: dataset_complete(o), lambda t=t, o=out, i=idm, w=wm: generate_dreams(
                w, i, t, o, episodes=cfg.dreams_per_task, steps=cfg.dream_steps, filter=cfg.dream_filter,
                sample_steps=cfg.dream_sample_steps, overwrite=o.exists()))
    for t in cfg.tasks if "real_dreams" in arms else ():
        ev = work / "eval" / "idm" / t
        st.run(f"eval idm {t}", lambda e=ev: _results_done(e), lambda t=t, e=ev: evaluate_idm(
            R / "idm", D / "idm_test" / t, t, cfg.idm_test_demos, e, workers=cfg.workers, overwrite=True))

    # ------------------------------------------------------------------ policies
    synth = {k: [str(S / k / t) for t in cfg.tasks]
             for k in ("appearance", "view", "rendered_appearance", "rendered_view", "dream", "dream_low")}
    specs: dict[str, dict[str, Any]] = {
        "real": {"data": real},
        "real_aug": {"data": real, "augment_views": cfg.augment_views, "augment_pad": cfg.augment_pad,
                     "augment_color": cfg.augment_color},
        "real_transfer": {"data": real + synth["appearance"] + synth["view"]},
        "real_rendered": {"data": real + synth["rendered_appearance"] + synth["rendered_view"]},
        "real_dreams": {"data": real + synth["dream"]},
        "oracle": {"data": [str(D / "oracle" / t) for t in cfg.tasks]},
        "real_no_video": {"data": real, "video_stride": 0},
        "low_real": {"data": low},
        "low_real_dreams": {"data": low + synth["dream_low"]},
        "low_real_no_video": {"data": low, "video_stride": 0},
    }
    conditions = {"default": None, "appearance_shift": replace(app_shift, seed=cfg.eval_shift_seed),
                  "camera_shift": replace(cam_shift, seed=cfg.eval_shift_seed)}
    evals: dict[str, dict[str, dict[str, dict]]] = {}
    for arm in arms:
        spec = specs[arm]
        pol = R / f"policy_{arm}"
        data = spec["data"]
        model = replace(cfg.policy, video_stride=spec.get("video_stride", cfg.policy.video_stride))
        weights = mix_weights(len(data) - len(cfg.tasks), len(cfg.tasks), cfg.real_share)
        st.run(f"train policy {arm}", lambda p=pol: run_complete(p), lambda p=pol, d=data, m=model, s=spec, w=weights:
               train_policy(PolicyRunConfig(data=tuple(d), tokenizer=str(tok), model=m, train=replace(cfg.policy_train),
                                            data_weight=w, augment_views=s.get("augment_views", 0),
                                            augment_pad=s.get("augment_pad", 4),
                                            augment_color=s.get("augment_color", 0.0)), p, resume=p.exists()))
        conds = ("default",) if arm.startswith("low_") else CONDITIONS
        for cond in conds:
            for t in cfg.tasks:
                ev = work / "eval" / "policy" / arm / cond / t
                st.run(f"eval {arm} {cond} {t}", lambda e=ev: _results_done(e), lambda p=pol, t=t, e=ev, c=cond:
                       evaluate_policy(p, t, cfg.eval_episodes, e, seed_start=DEFAULT_EVAL_SEED,
                                       max_steps=cfg.eval_max_steps, n_videos=1, workers=cfg.workers,
                                       overwrite=True, shift=conditions[c]))
                evals.setdefault(arm, {}).setdefault(cond, {})[t] = json.loads((ev / "results.json").read_text())
    return summarize(cfg, work, evals, st.timings, arms, previous)


def mix_weights(n_synthetic: int, n_real: int, real_share: float | None) -> tuple[float, ...]:
    """Sampling weights (``PolicyRunConfig.data_weight``) of ``n_real`` real datasets followed by
    ``n_synthetic`` synthetic ones: ``()`` (the trainer's default) when there is no synthetic
    data; every dataset equally often when ``real_share`` is None; else the real datasets share
    ``real_share`` of the draws equally and the synthetic ones the rest.

    >>> mix_weights(2, 1, 0.5)
    (0.5, 0.25, 0.25)
    """
    if n_synthetic <= 0:
        return ()
    if real_share is None:
        return (1.0,) * (n_real + n_synthetic)
    return (real_share / n_real,) * n_real + ((1.0 - real_share) / n_synthetic,) * n_synthetic


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _conditions(arm: str) -> tuple[str, ...]:
    return ("default",) if arm.startswith("low_") else CONDITIONS


def summarize(cfg: DataEngineBench, work: Path, evals: dict, timings: dict[str, float],
              arms: tuple[str, ...] = ALL_ARMS, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """What this invocation measured in ``work`` (``evals``: ``{arm: {condition: {task:
    eval results.json}}}``), merged into ``previous`` (an earlier result of the same settings,
    or None) by :func:`merge_results`.

    Raises:
        ConfigError: ``previous`` holds results of other settings.
    """
    per_task = {arm: {c: {t: {"success_rate": r["success_rate"], "ci95": r["ci95"], "n_episodes": r["n_episodes"],
                              "code": r.get("code")}  # the evaluation's code version: arms may span commits
                          for t, r in per.items()} for c, per in conds.items()} for arm, conds in evals.items()}
    tr: dict[str, list] = {}
    for path in sorted((work / "eval" / "transfer").glob("*/results.json")):
        r = json.loads(path.read_text())
        tr.setdefault("appearance" if "appearance" in path.parent.name else "view", []).append(r)
    idm_paths = [work / "eval" / "idm" / t / "results.json" for t in cfg.tasks]
    idm = [json.loads(p.read_text()) for p in idm_paths] if all(p.is_file() for p in idm_paths) else []
    runs = work / "runs"
    run_dirs = [work / "tokenizer", *(sorted(runs.iterdir()) if runs.is_dir() else [])]
    tok_weights = work / "tokenizer" / "model.safetensors"
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    measured = {
        "per_task": per_task,
        "transfer_psnr_db": {k: _mean([r["model"]["psnr"] for r in v]) for k, v in tr.items()} or None,
        "transfer_baseline_psnr_db": {k: _mean([r["baseline"]["psnr"] for r in v]) for k, v in tr.items()} or None,
        "idm_replay_success": _mean([r["replay"]["idm_actions"]["success_rate"] for r in idm]),
        "true_action_replay_success": _mean([r["replay"]["true_actions"]["success_rate"] for r in idm]),
        "idm_action_mse": _mean([r["action_mse"] for r in idm]),
        "training_s": {p.name: training_seconds(p) for p in run_dirs if (p / "results.json").is_file()},
        "dreams_kept": {p.parent.name + "/" + p.name: len(json.loads((p / "meta" / "robodream.json").read_text())["seeds"])
                        for p in sorted((work / "data" / "synthetic").glob("dream*/*"))},
    }
    invocation = {
        "created": now(), "code": code_version(), "environment": environment_info(), "work": str(work.resolve()),
        "work_id": (work / "work_id").read_text().strip(),
        "arms": list(arms), "tokenizer_sha256": _sha256(tok_weights) if tok_weights.is_file() else None,
        "stage_s": timings, "wall_s": sum(timings.values()), "peak_rss_gib": rss / 2**20,
    }
    return merge_results(previous, cfg, measured, invocation)


def check_mergeable(previous: dict[str, Any] | None, cfg: DataEngineBench) -> tuple[list[str], tuple[str, ...]]:
    """The settings in which ``previous`` (a result dict, or None) was measured differently from
    ``cfg`` and the arms they make stale (:func:`changed_settings`).

    Raises:
        ConfigError: ``previous`` was measured with other settings every arm depends on.
    """
    if previous is None:
        return [], ()
    try:
        return changed_settings(previous.get("config") or {}, cfg, "the result file")
    except ConfigError as e:
        raise ConfigError(f"{e}; write to another --out") from None


def _drop_stale(prev: dict[str, Any], changed: list[str], stale: tuple[str, ...]) -> dict[str, Any]:
    """``prev`` without the ``stale`` arms' results, which move to its ``superseded`` list."""
    prev = dict(prev)
    runs = [g[len("runs/"):] for a in stale for g in arm_outputs(a)[0] if g.startswith("runs/")]
    synth = [g[len("data/synthetic/"):] + "/*" for a in stale for g in arm_outputs(a)[0]
             if g.startswith("data/synthetic/")]
    keys = [k for a in stale for k in arm_outputs(a)[2]]
    old = {
        "changed_settings": changed, "arms": list(stale), "settings": prev.get("config"),
        "per_task": {a: prev.get("per_task", {})[a] for a in stale if a in prev.get("per_task", {})},
        **{k: prev.get(k) for k in keys},
        "training_s": {k: v for k, v in prev.get("training_s", {}).items() if any(fnmatch.fnmatchcase(k, g) for g in runs)},
        "dreams_kept": {k: v for k, v in prev.get("dreams_kept", {}).items() if any(fnmatch.fnmatchcase(k, g) for g in synth)},
    }
    prev["per_task"] = {a: v for a, v in prev.get("per_task", {}).items() if a not in stale}
    prev.update({k: None for k in keys})
    prev["training_s"] = {k: v for k, v in prev.get("training_s", {}).items() if k not in old["training_s"]}
    prev["dreams_kept"] = {k: v for k, v in prev.get("dreams_kept", {}).items() if k not in old["dreams_kept"]}
    prev["superseded"] = [*prev.get("superseded", []), old]
    return prev


def merge_results(previous: dict[str, Any] | None, cfg: DataEngineBench, measured: dict[str, Any],
                  invocation: dict[str, Any]) -> dict[str, Any]:
    """One result dict from an earlier result (``previous``, or None) and this invocation's.

    An arm's numbers come from the latest invocation that evaluated it; the transfer and IDM
    metrics from the latest that measured them; invocations of the same working directory
    replace each other (its stage times accumulate, and its peak memory is the highest of its
    invocations'), so ``wall_s`` sums distinct directories.
    Derived numbers (``mean_success`` over tasks, ``gap_closed``, ``real_drop``, ``low_data``,
    ``video_supervision``) are recomputed from the merged per-task table; arms not measured yet
    read None, and ``missing`` lists them.

    Results of arms that ``previous`` measured with other arm-specific settings move to the
    ``superseded`` list (with the settings they had).

    Raises:
        ConfigError: ``previous`` was measured with other settings every arm depends on.
    """
    changed, stale = check_mergeable(previous, cfg)
    settings = json.loads(json.dumps(to_dict(cfg)))
    prev = _drop_stale(previous, changed, stale) if previous is not None and stale else (previous or {})
    per_task = {**prev.get("per_task", {}), **measured["per_task"]}
    later = {k: measured[k] if measured[k] is not None else prev.get(k)
             for k in ("transfer_psnr_db", "transfer_baseline_psnr_db", "idm_replay_success",
                       "true_action_replay_success", "idm_action_mse")}
    same_work = [i for i in prev.get("invocations", []) if i["work_id"] == invocation["work_id"]]
    invocation = {**invocation, "peak_rss_gib": max(i["peak_rss_gib"] for i in [*same_work, invocation])}
    invocations = [i for i in prev.get("invocations", []) if i["work_id"] != invocation["work_id"]] + [invocation]
    ms = {a: {c: _mean([r["success_rate"] for r in per_task.get(a, {}).get(c, {}).values()]) for c in _conditions(a)}
          for a in ALL_ARMS}

    def diff(a: str, b: str, c: str) -> float | None:
        return None if ms[a][c] is None or ms[b][c] is None else ms[a][c] - ms[b][c]

    def ratio(num: float | None, den: float | None) -> float | None:  # None when undefined (den <= 0)
        return num / den if num is not None and den is not None and den > 1e-9 else None

    gap, gap_rendered, real_drop = {}, {}, {}
    for c in ("appearance_shift", "camera_shift"):
        closed = diff("real_transfer", "real", c)
        gap[c], gap_rendered[c] = ratio(closed, diff("oracle", "real", c)), ratio(closed, diff("real_rendered", "real", c))
        d, x = ms["real"]["default"], ms["real"][c]
        real_drop[c] = None if d is None or x is None else d - x
    return {
        "benchmark": "data-engine", "created": invocation["created"], "code": invocation["code"],
        "environment": invocation["environment"], "config": settings, "tasks": list(cfg.tasks),
        "mean_success": ms, "per_task": per_task,
        "missing": [a for a in ALL_ARMS if a not in per_task],
        "gap_closed": gap, "gap_closed_rendered": gap_rendered, "real_drop": real_drop,
        "shift_hard_enough": {c: None if d is None else d >= 0.20 for c, d in real_drop.items()},
        **later,
        "low_data": {"demos_per_task": cfg.low_demos, "real": ms["low_real"]["default"],
                     "real_dreams": ms["low_real_dreams"]["default"]},
        "video_supervision": {
            str(cfg.demos): {"video": ms["real"], "no_video": ms["real_no_video"]},
            str(cfg.low_demos): {"video": ms["low_real"], "no_video": ms["low_real_no_video"]},
        },
        "dreams_kept": {**prev.get("dreams_kept", {}), **measured["dreams_kept"]},
        "training_s": {**prev.get("training_s", {}), **measured["training_s"]},
        "superseded": prev.get("superseded", []),
        "invocations": invocations,
        "wall_s": sum(i["wall_s"] for i in invocations),
        "peak_rss_gib": max(i["peak_rss_gib"] for i in invocations),
    }
