"""The RAMP training loop and its baselines, in one resumable harness (issue 15, items 6-7).

``robodream train ramp --data DEMOS --tokenizer TOK --out RUN`` calls :func:`run_ramp_loop`,
GigaBrain-0.5M*'s RAMP loop (arXiv 2602.12099): pre-train on the demonstrations, then per round
roll the current policy out with takeover, relabel every frame with the current value world
model and co-train the world model and the policy on demos + all rollouts so far. The same
harness, data budget, rounds and evaluation run the baselines (``method``). Round 0 is the same
for every method: the value world model pre-trained on the demos (world-model methods) and a
base policy, plain BC on the demos (:meth:`RampLoopConfig.base_policy_run_config`), which round
1 fine-tunes with the method's objective; RAMP and RECAP add their conditioning then, as RAMP
fine-tunes a pre-trained policy (GigaBrain-0.5 -> 0.5M*), so all methods start from one policy
and differ only in what the rounds do:

- ``ramp``: policy conditioned on the advantage indicator ``I`` and the world model's future
  latent ``z`` (condition dropout), evaluated in ``mode="standard"`` (one world-model step per
  chunk predicts ``z``), ``I = 1``; every round's policy is also evaluated in
  ``mode="efficient"`` (``I = 1``, no ``z``: the same model without the world model at
  inference; ``ramp_efficient`` in ``bench rl``).
- ``recap``: pi*0.6's RECAP (Physical Intelligence 2025): advantage-indicator conditioning
  without ``z``, evaluated ``mode="efficient"``, ``I = 1``.
- ``awr``: advantage-weighted regression (Peng et al. 2019, arXiv 1910.00177): a plain policy
  whose per-sample action loss is weighted ``min(exp(A / beta), w_max)``
  (:func:`robodream.rl.labels.awr_weights`).
- ``hgdagger``: HG-DAgger (Kelly et al., ICRA 2019): plain flow-matching BC on the expert's
  actions only: every demonstration frame and the rollout frames where the takeover source
  acted (``complementary_info.is_intervention``; the policy's own rollout frames get weight 0,
  ``PolicyRunConfig.intervention_only``); no world model, no labels.

Layout of ``RUN`` (every stage is skipped when its output is complete, so a killed loop is
continued by running the same command again; training runs resume from their last checkpoint)::

    loop.json                       the loop's config (another config in RUN is refused)
    round_*/<stage>/copied_from.json  a stage copied from another loop (``share_from``, below)
    round_0/world_model/            value world model on the demos          (not hgdagger)
    round_0/policy/                 the base policy (plain BC on the demos; no labels)
    round_0/eval/<task>/            evaluate_policy: results.json, MP4s
    round_0/metrics.json
    round_k/rollouts/<task>/        record_rollouts of round k-1's policy, with takeover
    round_k/world_model/            trained on demos + rollouts of rounds 1..k  (not hgdagger)
    round_k/labels.safetensors      advantages / I (/ z: ramp only) of all of it (not hgdagger)
    round_k/policy/, eval/          the method's policy; ramp also eval_efficient/ (mode="efficient")
    metrics.json, success_curve.png updated after every round
    value_only/, value_eval/        bench rl only, in its ramp loop: the value-only ablation
                                    (:mod:`robodream.rl.bench`)

Warm start (``warm_start``, the default): round k >= 1 continues from round k-1's final weights
(world model and policy, ``init_from``: weights only, a fresh optimizer and learning-rate
warm-up, the normalisation of the round's data) for ``round_*_steps`` steps, by default a
quarter of the pre-training steps (:meth:`RampLoopConfig.round_steps`); without it each round
trains from scratch for as many steps as pre-training. Every method gets the same steps, so
the budget stays equal.

Shared stages (``share_from``, :func:`pull_shared`): round 0 and, but for its policy, round 1
do not depend on the method (round 1 rolls out the base policy); a loop copies them from a
sibling loop that finished them with the same settings, so ``bench rl`` computes them once.

Evaluation uses ``eval_episodes`` per task in round 0 and the last round, and
``round_eval_episodes`` (if set) in the rounds between, whose success only draws the curve.

Rollout seeds need no bookkeeping: :func:`~robodream.rl.rollout.default_rollout_seed` starts
above every training seed of the policy, so round k's rollouts (made by a policy trained on
rounds < k) are on new seeds; every method sees the same seeds in the same round. Evaluation:
:func:`~robodream.eval.policy_eval.evaluate_policy` for every method, round and task, from
``eval_seed`` (default ``DEFAULT_EVAL_SEED``), so all success rates are on the same episodes.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robodream.config import from_dict, to_dict
from robodream.data.collect import dataset_provenance
from robodream.data.lerobot import LeRobotDataset
from robodream.errors import ConfigError, DatasetError
from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy
from robodream.pipeline import dataset_complete, run_complete, training_seconds
from robodream.policy.configuration import PolicyConfig
from robodream.policy.train import PolicyRunConfig, default_policy_train, train_policy
from robodream.rl.labels import (
    DEFAULT_AWR_BETA,
    DEFAULT_AWR_MAX_WEIGHT,
    DEFAULT_POSITIVE_FRACTION,
    read_labels,
    relabel,
    relocate_labels,
    weights_sha256,
)
from robodream.rl.rollout import record_rollouts
from robodream.rl.takeover import TakeoverConfig
from robodream.train.loop import TrainConfig
from robodream.utils.io import atomic_directory, atomic_write_json, read_json
from robodream.utils.run import code_version, environment_info, now
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.train import WorldModelRunConfig, default_world_model_train, train_world_model

METHODS = ("ramp", "recap", "awr", "hgdagger")
#: A warm-started round trains for 1/4 of the pre-training steps (defaults: policy 4000 -> 1000,
#: world model 2000 -> 500). It starts from a model already fitted to all of its data but the
#: newest round's rollouts and restarts warm-up and cosine decay: a fine-tune, not a new fit.
#: 1000 policy steps of 64 samples are about 1.5 passes over round 1's data (3 tasks x (10 demos
#: + 50 rollouts of ~250 steps)), and the 3-round loop trains 1.75x the pre-training steps instead
#: of 4x. An unmeasured choice: ``bench rl`` with ``--no-warm-start`` is the comparison.
WARM_START_DIVISOR = 4
#: The file of the loop's config in RUN.
LOOP_FILE = "loop.json"
#: The settings round 0's value world model depends on: not the method, so ramp, recap and awr
#: loops that agree on these share it (:func:`reuse_round0`).
ROUND0_WORLD_MODEL_KEYS = ("data", "tokenizer", "world_model", "world_model_train", "seed")
#: The settings round 0's base policy and its evaluation depend on: every method's round 0 is the
#: same plain BC policy (:meth:`RampLoopConfig.base_policy_run_config`), shared the same way.
ROUND0_POLICY_KEYS = ("data", "tokenizer", "tasks", "policy", "policy_train", "seed", "eval_episodes", "eval_seed",
                      "max_steps", "videos")
#: The settings round 1's rollouts depend on beyond the base policy (no mode: the base has none).
ROLLOUT_KEYS = ("rollouts", "takeover")


def default_loop_world_model() -> WorldModelConfig:
    """A value world model (``state_value`` frame) trained with action dropout (RAMP's action-free ``z``)."""
    return WorldModelConfig(value_frame="state_value", action_drop_prob=0.3)


@dataclass
class RampLoopConfig:
    """Everything a RAMP loop (or baseline) needs; saved as RUN/loop.json."""

    data: tuple[str, ...] = ()  # demonstration datasets (robodream collect, with next.reward)
    tokenizer: str = ""  # an existing tokenizer run (reused by every world model and policy)
    tasks: tuple[str, ...] = ()  # Meta-World tasks rolled out and evaluated (default: the datasets' tasks)
    method: str = "ramp"  # ramp, recap, awr or hgdagger
    rounds: int = 3  # rounds of rollouts + retraining after the pre-training round 0
    rollouts: int = 50  # rollout episodes per task and round
    eval_episodes: int = 50  # evaluation episodes per task of round 0 (the base) and the last round
    round_eval_episodes: int = 0  # evaluation episodes per task of the rounds in between (0: eval_episodes)
    eval_seed: int = DEFAULT_EVAL_SEED  # first evaluation env seed (the same for every method and round)
    max_steps: int = 500  # episode step limit of rollouts and evaluation
    videos: int = 2  # evaluation episodes per task saved as MP4
    takeover: TakeoverConfig = field(default_factory=TakeoverConfig)
    world_model: WorldModelConfig = field(default_factory=default_loop_world_model)
    world_model_train: TrainConfig = field(default_factory=default_world_model_train)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    policy_train: TrainConfig = field(default_factory=default_policy_train)
    warm_start: bool = True  # rounds >= 1 start from the previous round's world model and policy weights
    round_world_model_steps: int = 0  # world-model steps of rounds >= 1 (0: pre-training's / 4 warm-started, else all)
    round_policy_steps: int = 0  # policy steps of rounds >= 1 (0: pre-training's / 4 warm-started, else all)
    positive_fraction: float = DEFAULT_POSITIVE_FRACTION  # fraction of frames labelled I = 1 (sets eps)
    # Euler steps of each value prediction in relabel (0: the world model's 16). 1: one step predicts the
    # conditional mean; it ranked held-out rollouts as well (Kendall tau 0.551 vs 0.507) at 1/12 the time
    value_steps: int = 1
    awr_beta: float = DEFAULT_AWR_BETA  # AWR temperature, reward units
    awr_max_weight: float = DEFAULT_AWR_MAX_WEIGHT  # AWR weight clip w_max
    condition_dropout: float = 0.2  # RAMP/RECAP: per-sample dropout of I and z in training
    seed: int = 0  # training seed of every world model and policy, and relabel's noise seed
    workers: int = 1  # rollout processes of rollouts and evaluation (results do not depend on it)
    threads: int = 0  # torch threads per rollout process (0: 2 with one worker, 1 with several)

    def __post_init__(self) -> None:
        self.data, self.tasks = tuple(self.data), tuple(self.tasks)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.rounds < 0 or self.rollouts < 1 or self.eval_episodes < 1 or self.max_steps < 1:
            raise ConfigError(f"rounds must be >= 0 and rollouts, eval_episodes, max_steps >= 1, got {self.rounds}, "
                              f"{self.rollouts}, {self.eval_episodes}, {self.max_steps}")
        if not 0 < self.positive_fraction < 1:
            raise ConfigError(f"positive_fraction must be in (0, 1), got {self.positive_fraction}")
        if min(self.round_world_model_steps, self.round_policy_steps, self.value_steps, self.round_eval_episodes) < 0:
            raise ConfigError("round_world_model_steps, round_policy_steps, value_steps and round_eval_episodes "
                              "must be >= 0")

    def round_steps(self, k: int, pretrain_steps: int, round_steps: int) -> int:
        """Training steps of round ``k``: ``pretrain_steps`` in round 0; later ``round_steps``, or
        when that is 0, ``pretrain_steps // WARM_START_DIVISOR`` (at least 1) with ``warm_start``
        and ``pretrain_steps`` from scratch."""
        if k == 0:
            return pretrain_steps
        if round_steps:
            return round_steps
        return max(1, pretrain_steps // WARM_START_DIVISOR) if self.warm_start else pretrain_steps

    @property
    def rollout_threads(self) -> int:
        """Torch threads per process of rollouts and evaluation (``threads``; 0: 2 with one worker, 1 with several)."""
        return self.threads or (2 if self.workers == 1 else 1)

    @property
    def uses_world_model(self) -> bool:
        return self.method != "hgdagger"

    @property
    def eval_mode(self) -> str | None:
        """The inference mode of rollouts and evaluation (I = 1 for the conditioned methods)."""
        return {"ramp": "standard", "recap": "efficient"}.get(self.method)

    def episodes_of_round(self, k: int) -> int:
        """Evaluation episodes per task in round ``k``: ``eval_episodes`` in round 0 and the last
        round, ``round_eval_episodes`` (if set) in between."""
        return self.eval_episodes if k in (0, self.rounds) or not self.round_eval_episodes else self.round_eval_episodes

    def base_policy_run_config(self, data: tuple[str, ...], steps: int) -> PolicyRunConfig:
        """Round 0's policy, the same for every method: plain flow-matching BC on the demos (the
        issue's base policy), no conditioning, labels or weights. RAMP and RECAP add their
        conditioning when round 1 fine-tunes it (``init_from`` adds those modules), as
        GigaBrain-0.5M*'s RAMP fine-tunes a pre-trained policy."""
        return PolicyRunConfig(data=data, tokenizer=self.tokenizer, model=replace(self.policy),  # a copy: training fills it in
                               train=replace(self.policy_train, steps=steps, seed=self.seed))

    def policy_run_config(self, data: tuple[str, ...], labels: str | None, steps: int,
                          init_from: str = "") -> PolicyRunConfig:
        """The method's policy run on ``data`` in a round >= 1 (``labels``: the round's labels
        file; ``init_from``: the previous round's policy run of a warm start)."""
        m = self.method
        model = replace(self.policy, advantage_conditioning=m in ("ramp", "recap"), future_conditioning=m == "ramp",
                        condition_dropout=self.condition_dropout if m in ("ramp", "recap") else self.policy.condition_dropout)
        return PolicyRunConfig(data=data, tokenizer=self.tokenizer, model=model,
                               train=replace(self.policy_train, steps=steps, seed=self.seed),
                               labels=(labels,) if labels and m != "hgdagger" else (),
                               advantage_weighting=m == "awr", awr_beta=self.awr_beta,
                               awr_max_weight=self.awr_max_weight, intervention_only=m == "hgdagger",
                               init_from=init_from)


def infer_tasks(data: tuple[str, ...]) -> tuple[str, ...]:
    """The Meta-World tasks of datasets, from their ``meta/robodream.json`` (in order, unique).

    Raises:
        DatasetError: a dataset without robodream provenance (pass ``tasks``).
    """
    tasks = []
    for d in data:
        prov = dataset_provenance(LeRobotDataset(d))
        if not prov or "task" not in prov:
            raise DatasetError(f"{d} has no robodream provenance naming its task; pass --tasks")
        if prov["task"] not in tasks:
            tasks.append(prov["task"])
    return tuple(tasks)


def check_loop_dir(out: Path, cfg: RampLoopConfig, overwrite: bool) -> None:
    """Write ``loop.json`` or check it: the same config continues, another one is refused.

    With ``overwrite`` a loop of other settings is started over: its rounds, metrics and curve
    (and ``bench rl``'s value-only ablation, ``value_*``) are removed first (nothing else in ``out``).

    Raises:
        ConfigError: ``out`` holds a loop of another config (and not ``overwrite``), or is a
            non-empty directory that is no loop.
    """
    file = out / LOOP_FILE
    new = to_dict(cfg)
    if file.is_file():
        old = read_json(file)
        if old != new:
            if not overwrite:
                diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
                raise ConfigError(f"{out} holds a loop with other settings ({', '.join(diff)}); rerun with the same "
                                  "settings to continue, choose another --out, or pass --overwrite to start it over")
            for p in [*out.glob("round_*"), *out.glob("value_*"), out / "metrics.json", out / "success_curve.png"]:
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} exists and is not a RAMP loop; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(file, new)


def labels_meta(file: Path) -> dict[str, Any]:
    """The metadata of a labels file (eps, positive fractions, ...), from its header alone."""
    return read_labels(file, tensors=False)[0]


#: What a copied stage records about its source: a file in a copied run or evaluation directory
#: (a labels file records ``relocated_from`` in its metadata instead).
COPIED_FILE = "copied_from.json"


def shared_keys(k: int, stage: str) -> tuple[str, ...] | None:
    """The config keys round ``k``'s ``stage`` depends on when it does not depend on the method,
    or None when it does (every stage of rounds >= 2, and round 1's policy).

    Round 0 is the value world model pre-trained on the demos and the base policy; round 1's
    rollouts are the base policy's (no mode), its world model continues round 0's on the demos
    and those rollouts, and its labels are that world model's (RAMP's with ``z``).
    """
    rollouts = ROUND0_POLICY_KEYS + ROLLOUT_KEYS
    world_model = ROUND0_WORLD_MODEL_KEYS + rollouts + ("warm_start", "round_world_model_steps")
    return {(0, "world_model"): ROUND0_WORLD_MODEL_KEYS, (0, "policy"): ROUND0_POLICY_KEYS,
            (1, "rollouts"): rollouts, (1, "world_model"): world_model,
            (1, "labels"): world_model + ("positive_fraction", "value_steps")}.get((k, stage))


def _copy_stage_dir(src: Path, dst: Path) -> None:
    """Copy a stage's directory atomically (replacing an unfinished one), recording its source."""
    with atomic_directory(dst, overwrite=True) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        atomic_write_json(tmp / COPIED_FILE, {"from": str(src.resolve()), "copied": now()})


def was_copied(path: Path) -> bool:
    """Whether a stage's output was copied from another loop (:func:`pull_shared`)."""
    if path.is_dir():
        return (path / COPIED_FILE).is_file()
    return path.is_file() and "relocated_from" in labels_meta(path)


def pull_shared(cfg: RampLoopConfig, out: Path, k: int, stage: str, sources: tuple[str | Path, ...], *,
                log=print) -> Path | None:
    """Copy round ``k``'s ``stage`` from the first loop in ``sources`` that finished it with the
    same settings, instead of computing it again; returns that loop's directory, or None.

    Stages (:func:`shared_keys` gives the settings each depends on): ``world_model`` of rounds 0
    and 1 (world-model methods), ``policy`` of round 0 (the base policy with its evaluation),
    ``rollouts`` of round 1 (every task's), ``labels`` of round 1. ``bench rl`` runs every method
    on one config, so these are computed once (round 1's rollouts of one base policy on the same
    seeds came out byte-identical for two methods). Labels are taken only when they are this
    loop's world model's (the same weights, by sha256) and carry ``z`` where RAMP needs it, and are
    rewritten for this loop's paths (:func:`~robodream.rl.labels.relocate_labels`; ``z`` left out
    for the other methods). Copies are atomic and replace an unfinished output of this loop; a
    copied directory holds :data:`COPIED_FILE`.
    """
    keys = shared_keys(k, stage)
    if keys is None or (stage in ("world_model", "labels") and not cfg.uses_world_model):
        return None
    ours = to_dict(cfg)
    o = out / f"round_{k}"
    for src in map(Path, sources):
        if not (src / LOOP_FILE).is_file() or src.resolve() == out.resolve():
            continue
        theirs = read_json(src / LOOP_FILE)
        if any(theirs.get(key) != ours.get(key) for key in keys):
            continue
        s = src / f"round_{k}"
        if stage == "world_model" and run_complete(s / "world_model"):
            _copy_stage_dir(s / "world_model", o / "world_model")
        elif (stage == "policy" and run_complete(s / "policy")
              and all((s / "eval" / t / "results.json").is_file() for t in cfg.tasks)):
            _copy_stage_dir(s / "policy", o / "policy")
            for t in cfg.tasks:
                _copy_stage_dir(s / "eval" / t, o / "eval" / t)
        elif stage == "rollouts" and all(dataset_complete(s / "rollouts" / t) for t in cfg.tasks):
            for t in cfg.tasks:
                if not dataset_complete(o / "rollouts" / t):
                    _copy_stage_dir(s / "rollouts" / t, o / "rollouts" / t)
        elif stage == "labels" and (s / "labels.safetensors").is_file():
            meta = labels_meta(s / "labels.safetensors")
            if ((cfg.method == "ramp" and not meta.get("z_steps"))
                    or meta["world_model"].get("sha256") != weights_sha256(o / "world_model")):
                continue
            relocate_labels(s / "labels.safetensors", o / "labels.safetensors", {str(s): str(o)},
                            drop_z=cfg.method != "ramp")
        else:
            continue
        log(f"round {k}: the {stage.replace('_', ' ')} of {src} has this loop's settings; copied, not recomputed")
        return src
    return None


def run_ramp_loop(cfg: RampLoopConfig, out: str | Path, *, log=print, overwrite: bool = False,
                  share_from: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """Run (or continue) the loop of ``cfg.method`` in ``out``; returns the content of RUN/metrics.json.

    ``share_from``: other loop directories; the stages that do not depend on the method (round
    0's world model, base policy and its evaluation; round 1's rollouts, world model and labels)
    are copied from the first that has them finished with the same settings instead of being
    computed (:func:`pull_shared`). Copied stages count 0 s in ``timings_s``.

    Returns:
        ``{"method", "tasks", "rounds": [round metrics...], "mean_success": [per round],
        "success": {task: [per round]}, "final": {task: ...}, "rollouts", "intervention_steps",
        "intervention_steps_by_round" (round 0: 0), "config", "code", "environment"}``, for
        ``ramp`` also ``mean_success_efficient``, ``success_efficient`` and ``final_efficient``
        (mode="efficient"); a round's metrics (RUN/round_k/metrics.json) hold per task
        success_rate, n_episodes, ci95 (Wilson), eval dir (``per_task``; ramp also
        ``per_task_efficient``); the rollouts' episodes, frames, intervention steps and fraction;
        the labels' eps and positive fraction; ``timings_s``: wall seconds of the stages
        (rollouts, relabel, eval, eval_efficient; world_model_train and policy_train: the training
        loops' logged time, :func:`~robodream.pipeline.training_seconds`).

    Raises:
        ConfigError: bad settings, or ``out`` holds another loop (see :func:`check_loop_dir`).
        DatasetError, CheckpointError: from the stages (datasets, tokenizer run).
    """
    out = Path(out)
    if not cfg.data:
        raise ConfigError("at least one demonstration dataset is required (--data)")
    if not cfg.tokenizer:
        raise ConfigError("--tokenizer RUN is required (the loop reuses an existing tokenizer run)")
    if not cfg.tasks:
        cfg = replace(cfg, tasks=infer_tasks(cfg.data))
    check_loop_dir(out, cfg, overwrite)
    rounds = []
    for k in range(cfg.rounds + 1):
        rounds.append(run_round(cfg, out, k, log=log, share_from=share_from))
        write_summary(cfg, out, rounds)
    return read_json(out / "metrics.json")


def round_data(cfg: RampLoopConfig, out: Path, k: int) -> list[str]:
    """The training datasets of round ``k``: the demos and the rollouts of rounds 1..k."""
    return list(cfg.data) + [str(out / f"round_{j}" / "rollouts" / t) for j in range(1, k + 1) for t in cfg.tasks]


def train_round_world_model(cfg: RampLoopConfig, data: list[str], k: int, run: Path, prev: Path | None, *,
                            model: WorldModelConfig | None = None, log=print) -> None:
    """Round ``k``'s world model in ``run`` on ``data`` (skipped when complete, continued from its
    checkpoint when killed), warm-started from ``prev`` (the round before's run) with
    ``cfg.warm_start``; ``model`` replaces ``cfg.world_model`` (the value-only ablation of ``bench rl``)."""
    if run_complete(run):
        return
    steps = cfg.round_steps(k, cfg.world_model_train.steps, cfg.round_world_model_steps)
    init = str(prev) if cfg.warm_start and k >= 1 and prev is not None else ""
    log(f"round {k}: training the world model on {len(data)} datasets -> {run}" + (f" (from {init})" if init else ""))
    model = model if model is not None else cfg.world_model
    train_world_model(WorldModelRunConfig(data=tuple(data), tokenizer=cfg.tokenizer,
                                          model=from_dict(WorldModelConfig, to_dict(model)),
                                          train=replace(cfg.world_model_train, steps=steps, seed=cfg.seed),
                                          init_from=init),
                      run, resume=run.exists())


def record_round_rollouts(cfg: RampLoopConfig, out: Path, k: int, *, log=print) -> dict[str, dict[str, Any]]:
    """Round ``k``'s rollouts (k >= 1) of round k-1's policy in ``out``, with takeover, for every
    task (complete ones are skipped); returns per task the rollouts' summary (episodes, success
    with takeover, intervention steps and fraction, first and last seed). Round 1 rolls out the
    base policy, which has no mode; later rounds use the method's (:attr:`RampLoopConfig.eval_mode`)."""
    rd = out / f"round_{k}"
    roll = {}
    for task in cfg.tasks:
        path = rd / "rollouts" / task
        if not dataset_complete(path):
            log(f"round {k}: {cfg.rollouts} rollouts of {task} with takeover -> {path}")
            record_rollouts(out / f"round_{k - 1}" / "policy", task, cfg.rollouts, path, takeover=cfg.takeover,
                            max_steps=cfg.max_steps, mode=cfg.eval_mode if k >= 2 else None,
                            threads=cfg.rollout_threads, workers=cfg.workers, overwrite=path.exists())
        r = read_json(path / "meta" / "results.json")
        roll[task] = {key: r.get(key) for key in ("n_episodes", "success_rate", "intervention_steps",
                                                   "intervention_fraction", "mean_intervention_fraction")}
        roll[task]["seeds"] = [r["seeds"][0], r["seeds"][-1]] if r.get("seeds") else None
    return roll


def run_round(cfg: RampLoopConfig, out: Path, k: int, *, log=print,
              share_from: tuple[str | Path, ...] = ()) -> dict[str, Any]:
    """Round ``k`` of the loop (see the module docstring); its stages skip complete outputs and
    copy the method-independent ones from the loops in ``share_from`` (:func:`pull_shared`)."""
    rd = out / f"round_{k}"
    rd.mkdir(parents=True, exist_ok=True)
    old = read_json(rd / "metrics.json") if (rd / "metrics.json").is_file() else {}
    # wall seconds of the stages run by this call; a skipped stage keeps its earlier time
    metrics: dict[str, Any] = {"round": k, "method": cfg.method, "timings_s": dict(old.get("timings_s", {}))}
    ran: set[str] = set()

    def timed(stage: str, t0: float) -> None:
        if stage in ran or stage not in metrics["timings_s"]:
            metrics["timings_s"][stage] = time.perf_counter() - t0

    data = round_data(cfg, out, k)  # this round's rollouts are made here
    prev = out / f"round_{k - 1}" if k >= 1 else None

    def pull(stage: str, done: bool) -> None:  # a shared stage this loop lacks, from a sibling
        if not done:
            pull_shared(cfg, out, k, stage, share_from, log=log)

    if k >= 1:  # rollouts of the previous round's policy, with takeover
        t0 = time.perf_counter()
        def complete() -> bool:
            return all(dataset_complete(rd / "rollouts" / t) for t in cfg.tasks)

        pull("rollouts", complete())
        if not complete():  # checked again: pull may have copied them
            ran.add("rollouts")
        metrics["rollouts"] = record_round_rollouts(cfg, out, k, log=log)
        timed("rollouts", t0)

    labels = None
    if cfg.uses_world_model:
        wm = rd / "world_model"
        pull("world_model", run_complete(wm))
        train_round_world_model(cfg, data, k, wm, prev / "world_model" if prev else None, log=log)
        metrics["timings_s"]["world_model_train"] = training_seconds(wm)
    if cfg.uses_world_model and k >= 1:  # round 0's base policy reads no labels
        labels = rd / "labels.safetensors"
        t0 = time.perf_counter()
        pull("labels", labels.is_file())
        if not labels.is_file():
            log(f"round {k}: relabelling {len(data)} datasets -> {labels}")
            ran.add("relabel")
            relabel(data, wm, labels, positive_fraction=cfg.positive_fraction, value_steps=cfg.value_steps or None,
                    with_z=cfg.method == "ramp", seed=cfg.seed)
        timed("relabel", t0)
        meta = labels_meta(labels)
        metrics["labels"] = {"eps": meta.get("eps"), "positive_fraction": meta.get("positive_fraction"),
                             "achieved_positive_fraction": meta.get("achieved_positive_fraction")}

    pol = rd / "policy"
    pull("policy", run_complete(pol))  # round 0: with its evaluation
    if not run_complete(pol):
        steps = cfg.round_steps(k, cfg.policy_train.steps, cfg.round_policy_steps)
        init = str(prev / "policy") if cfg.warm_start and prev else ""
        log(f"round {k}: training the {cfg.method if k else 'base (plain BC)'} policy on {len(data)} datasets -> {pol}"
            + (f" (from {init})" if init else ""))
        run_cfg = (cfg.policy_run_config(tuple(data), str(labels) if labels else None, steps, init) if k
                   else cfg.base_policy_run_config(tuple(data), steps))
        train_policy(run_cfg, pol, resume=pol.exists())
    metrics["timings_s"]["policy_train"] = training_seconds(pol)

    # the method's evaluation; RAMP's policy also without z (efficient mode, I = 1). Round 0's base
    # policy has no conditioning and no modes: one evaluation
    evals = [("eval", "per_task", "mean_success", cfg.eval_mode if k else None)]
    if cfg.method == "ramp" and k:
        evals.append(("eval_efficient", "per_task_efficient", "mean_success_efficient", "efficient"))
    n_eval = cfg.episodes_of_round(k)
    for stage, key, mean_key, mode in evals:
        t0 = time.perf_counter()
        per_task = {}
        for task in cfg.tasks:
            ev = rd / stage / task
            if (ev / "results.json").is_file():
                r = read_json(ev / "results.json")
            else:
                log(f"round {k}: evaluating on {task} ({n_eval} episodes, mode {mode or 'default'}) -> {ev}")
                ran.add(stage)
                r = evaluate_policy(pol, task, n_eval, ev, seed_start=cfg.eval_seed,
                                    max_steps=cfg.max_steps, n_videos=cfg.videos, mode=mode,
                                    threads=cfg.rollout_threads,
                                    workers=cfg.workers, overwrite=ev.exists())
            per_task[task] = {"success_rate": r["success_rate"], "n_episodes": r["n_episodes"],
                              "ci95": list(r["ci95"]),
                              "mode": r.get("mode"), "out": str(ev)}
        timed(stage, t0)
        metrics[key] = per_task
        metrics[mean_key] = sum(v["success_rate"] for v in per_task.values()) / len(per_task)
    if cfg.method == "ramp" and not k:  # the base policy: efficient mode is the same evaluation
        metrics["per_task_efficient"], metrics["mean_success_efficient"] = metrics["per_task"], metrics["mean_success"]
    # stages copied from another loop took no time here: their source counts them
    outputs = {"rollouts": rd / "rollouts" / cfg.tasks[0], "world_model_train": rd / "world_model",
               "relabel": labels, "policy_train": pol, "eval": rd / "eval" / cfg.tasks[0]}
    copied = [st for st, path in outputs.items() if st in metrics["timings_s"] and path and was_copied(path)]
    metrics["timings_s"].update(dict.fromkeys(copied, 0.0))
    if copied:
        metrics["copied"] = copied
    atomic_write_json(rd / "metrics.json", metrics)
    return metrics


def write_summary(cfg: RampLoopConfig, out: Path, rounds: list[dict[str, Any]]) -> None:
    """RUN/metrics.json and RUN/success_curve.png from the rounds done so far."""
    success = {t: [r["per_task"][t]["success_rate"] for r in rounds] for t in cfg.tasks}
    roll = [r.get("rollouts", {}) for r in rounds]
    summary = {
        "method": cfg.method, "tasks": list(cfg.tasks), "n_rounds_done": len(rounds),
        "mean_success": [r["mean_success"] for r in rounds], "success": success,
        "final": rounds[-1]["per_task"],
        "rollouts": sum(v.get("n_episodes") or 0 for r in roll for v in r.values()),
        "intervention_steps": sum(v.get("intervention_steps") or 0 for r in roll for v in r.values()),
        "intervention_steps_by_round": [sum(v.get("intervention_steps") or 0 for v in r.values()) for r in roll],
    }
    if cfg.method == "ramp":  # the same policies without z
        summary.update({
            "mean_success_efficient": [r["mean_success_efficient"] for r in rounds],
            "success_efficient": {t: [r["per_task_efficient"][t]["success_rate"] for r in rounds] for t in cfg.tasks},
            "final_efficient": rounds[-1]["per_task_efficient"]})
    summary.update({"rounds": rounds, "config": to_dict(cfg), "updated": now(), "code": code_version(),
                    "environment": environment_info()})
    atomic_write_json(out / "metrics.json", summary)
    plot_success_curve(summary, out / "success_curve.png")


def plot_success_curve(summary: dict[str, Any], path: Path) -> None:
    """Success rate vs round, one line per task and the mean (bold; ramp also the mean in efficient
    mode, dashed); written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for task, ys in summary["success"].items():
        ax.plot(range(len(ys)), ys, marker="o", alpha=0.7, label=task)
    ax.plot(range(len(summary["mean_success"])), summary["mean_success"], marker="s", color="k", lw=2.5, label="mean")
    if "mean_success_efficient" in summary:  # ramp: the same policies without z
        ys = summary["mean_success_efficient"]
        ax.plot(range(len(ys)), ys, marker="s", color="k", ls="--", lw=1.5, label="mean, efficient mode (no z)")
    ax.set(xlabel="round", ylabel="success rate", ylim=(-0.02, 1.02), title=f"{summary['method']}: success per round")
    ax.set_xticks(range(len(summary["mean_success"])))
    ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
