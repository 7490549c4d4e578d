"""Record scripted-expert episodes of a Meta-World task into a LeRobotDataset v3.0.

``robodream collect --task TASK --episodes N --out DIR`` calls :func:`collect`. Episode
``i`` of attempt order uses env seed ``seed + i``; by default only successful episodes are
kept (recording stops at the step the task reports success) and the number discarded is
reported. Per frame it writes the RAMP/RECAP reward ``next.reward`` (-1 a step, 0 once solved,
``-fail_penalty`` on the last step of a failed episode), ``next.done``, ``next.success``,
``complementary_info.is_intervention`` (all False: a demonstration), Meta-World's shaped
reward ``complementary_info.dense_reward`` (:mod:`robodream.rl.rewards`) and the privileged
object and goal state ``observation.environment_state`` (LeRobot's name for simulator state;
17 numbers, :data:`~robodream.envs.meta_world.ENV_STATE_NAMES`: a training target, never a
policy input). Provenance (env settings, the seed of every kept and discarded episode) goes to
``DIR/meta/robodream.json`` so that evaluation can pick seeds never used for training.
``--workers N`` rolls out on N processes (``--ray-address``: on a Ray cluster) and writes
the same dataset as one worker.

Environment shift: ``--appearance`` and ``--camera-shift`` (a preset or ``random``, a new draw
per episode seed; :mod:`robodream.envs.shift`) are recorded in ``meta/robodream.json``.

Depth and segmentation (``--with-depth``, ``--with-segmentation``) are stored per camera in
the data parquet files, as fixed-shape ``(H, W)`` array features (nested-list columns, the
storage of Hugging Face ``Array2D``, which LeRobot's reader builds for 2-D features), and
read back exactly by :meth:`LeRobotDataset.all_depth` / :meth:`~LeRobotDataset.all_segmentation`:

- ``observation.depth.{cam}``: uint16 millimetres of camera-frame z, ``round(1000 * metres)``
  (0.5 mm of quantisation), 65535 where nothing is seen within 65.5 m (the sky);
- ``observation.segmentation.{cam}``: uint8 class ids, :data:`~robodream.envs.shift.SEG_CLASSES`
  (0 background, 1 floor, 2 wall, 3 table, 4 robot, 5 object, 6 goal; the list is in the
  feature's ``info.classes``).

Lossless by construction (integers in parquet), unlike a video codec; the cost is size:
about 2 + 1 bytes per pixel before parquet's compression.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from robodream.config import to_dict
from robodream.data.lerobot import LeRobotDataset, LeRobotDatasetWriter
from robodream.data.lerobot_format import DEPTH_PREFIX, ENV_STATE, SEGMENTATION_PREFIX
from robodream.envs.meta_world import (
    ACTION_NAMES,
    DEFAULT_CAMERAS,
    DEFAULT_PROPRIO,
    ENV_STATE_NAMES,
    EXPERT_TARGETS,
    FPS,
    EnvConfig,
    MetaWorldEnv,
    check_task,
    state_names,
    task_instruction,
)
from robodream.envs.parallel import RolloutPool, check_parallelism
from robodream.envs.shift import SEG_CLASSES, ShiftConfig
from robodream.errors import ConfigError, DatasetError
from robodream.rl.rewards import DEFAULT_FAIL_PENALTY, REWARD_FEATURES, episode_reward_columns
from robodream.utils.io import read_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, now

PROVENANCE_FILE = "robodream.json"


@dataclass
class CollectConfig:
    """What ``robodream collect`` records."""

    task: str = "reach-v3"  # Meta-World task, e.g. push-v3 (robodream tasks lists them)
    episodes: int = 50  # episodes to keep
    seed: int = 0  # first env seed; attempts use seed, seed + 1, ...
    image_size: int = 64  # square image side, pixels
    cameras: tuple[str, ...] = DEFAULT_CAMERAS  # camera names (comma-separated)
    proprio: tuple[str, ...] = DEFAULT_PROPRIO  # parts of observation.state: hand, gripper, tcp
    max_steps: int = 500  # per episode (Meta-World's limit)
    keep_failures: bool = False  # keep unsuccessful episodes too
    # Steps recorded after the first success (the expert holds the goal). Without them, action
    # chunks anchored near the end of an episode are mostly padding, and a policy executing them
    # has never seen what to do when it arrives at the goal a little off: it overshoots.
    post_success_steps: int = 16
    # The point the reach experts steer to the goal: "tcp", the finger centre the success test
    # measures, or "hand", Meta-World's scripted policy as written (0.5 cm of margin; see
    # TCP_STEERED_TASKS). Other tasks' experts are the same either way.
    expert_target: str = "tcp"
    max_attempts_factor: float = 2.0  # give up after episodes * factor attempts
    video_codec: str = "h264"  # h264 (near-lossless), h264-rgb (exact) or av1
    shift: ShiftConfig = field(default_factory=ShiftConfig)  # appearance and static-camera shift
    with_depth: bool = False  # also record each camera's depth (uint16 millimetres)
    with_segmentation: bool = False  # also record each camera's segmentation (uint8 SEG_CLASSES ids)
    # C_fail of the RAMP/RECAP reward in next.reward (-1 a step, 0 once solved, -C_fail on the last
    # step of a failed episode; robodream.rl.rewards). Meta-World's shaped reward is kept as
    # complementary_info.dense_reward.
    fail_penalty: float = DEFAULT_FAIL_PENALTY
    extra: dict = field(default_factory=dict)  # free-form notes carried into meta/robodream.json


@dataclass
class CollectResult:
    path: Path
    kept: int
    discarded: int
    seeds: list[int]
    discarded_seeds: list[int]
    mean_length: float


def collect(cfg: CollectConfig, out: str | os.PathLike, *, overwrite: bool = False, workers: int = 1,
            ray_address: str | None = None) -> CollectResult:
    """Run the expert and write the dataset atomically to ``out``.

    Attempt ``i`` uses env seed ``cfg.seed + i``; the first ``cfg.episodes`` successful
    attempts (in seed order) are kept, the failed ones before them are recorded as discarded.

    Args:
        workers: rollout processes, each with its own env (see :class:`RolloutPool`). The
            dataset is the same for any number of workers: episodes are written in seed
            order, and attempts run ahead of the last one needed are dropped.
        ray_address: run the workers as actors on the Ray cluster at this address.

    Raises:
        UnknownTaskError: unknown task.
        ConfigError: ``episodes < 1`` or ``workers < 1``; Ray missing or unreachable.
        DatasetError: ``out`` exists (and not ``overwrite``), or too few successful episodes.
    """
    check_task(cfg.task)
    if cfg.episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {cfg.episodes}")
    if cfg.expert_target not in EXPERT_TARGETS:
        raise ConfigError(f"--expert-target must be one of {', '.join(EXPERT_TARGETS)}, got {cfg.expert_target!r}")
    check_parallelism(workers, ray_address)
    env_cfg = EnvConfig(task=cfg.task, cameras=cfg.cameras, image_size=cfg.image_size, max_steps=cfg.max_steps,
                        proprio=cfg.proprio, shift=cfg.shift, depth=cfg.with_depth, segmentation=cfg.with_segmentation)
    writer = open_episode_writer(out, env_cfg, video_codec=cfg.video_codec, overwrite=overwrite)
    seeds: list[int] = []
    discarded: list[int] = []
    lengths: list[int] = []
    max_attempts = max(cfg.episodes, int(np.ceil(cfg.episodes * cfg.max_attempts_factor)))
    attempts = range(cfg.seed, cfg.seed + max_attempts)
    episode = partial(run_expert_episode, post_success_steps=cfg.post_success_steps, expert_target=cfg.expert_target)  # (env, seed) -> episode
    with (writer,
          RolloutPool(partial(MetaWorldEnv, env_cfg), episode, workers=min(workers, max_attempts),
                      ray_address=ray_address) as pool,
          progress_bar() as progress):
        bar = progress.add_task(f"collect {cfg.task}", total=cfg.episodes)
        for seed, ep in zip(attempts, pool.imap(attempts)):
            if ep["success"] or cfg.keep_failures:
                write_episode(writer, env_cfg, task_instruction(cfg.task), ep, fail_penalty=cfg.fail_penalty)
                seeds.append(seed)
                lengths.append(len(ep["action"]))
                progress.update(bar, advance=1)
            else:
                discarded.append(seed)
            if len(seeds) == cfg.episodes:
                break
        else:
            raise DatasetError(
                f"only {len(seeds)} of {cfg.episodes} expert episodes succeeded in {max_attempts} attempts")
        writer.write_meta_json(PROVENANCE_FILE, {
            "created": now(), "code": code_version(), "source": "metaworld-scripted-expert",
            "env": to_dict(env_cfg), "task": cfg.task, "seeds": seeds, "discarded_seeds": discarded,
            "keep_failures": cfg.keep_failures, "post_success_steps": cfg.post_success_steps,
            "collect": to_dict(cfg),  # the resolved config: robodream collect --config reproduces it
            "shift": {**to_dict(cfg.shift), "episode_seeds": [attempts[0], seed]},  # random draws come from these
        })
    return CollectResult(Path(out), len(seeds), len(discarded), seeds, discarded, float(np.mean(lengths)))


def open_episode_writer(out: str | os.PathLike, env_cfg: EnvConfig, *, video_codec: str = "h264",
                        overwrite: bool = False) -> LeRobotDatasetWriter:
    """The dataset writer of every robodream episode dataset recorded in ``env_cfg``'s env
    (``collect``'s expert demonstrations, ``rollout``'s policy rollouts): the same features
    for both, so that one policy trains on them together.

    Features: ``observation.state`` (:func:`state_names` of ``env_cfg.proprio``), ``action``
    (:data:`ACTION_NAMES`), ``observation.images.{cam}`` per camera (``image_size`` square),
    :data:`REWARD_FEATURES`, ``observation.environment_state`` (17,) and, with the env's depth /
    segmentation, ``observation.depth.{cam}`` / ``observation.segmentation.{cam}`` (H, W).

    Raises:
        DatasetError: ``out`` exists (and not ``overwrite``), or bad writer arguments.
    """
    hw = [env_cfg.image_size, env_cfg.image_size]
    extra = dict(REWARD_FEATURES)
    extra[ENV_STATE] = {"dtype": "float32", "shape": [len(ENV_STATE_NAMES)], "names": list(ENV_STATE_NAMES)}
    for cam in env_cfg.cameras if env_cfg.depth else ():
        extra[DEPTH_PREFIX + cam] = {"dtype": "uint16", "shape": hw, "names": ["height", "width"],
                                     "info": {"unit": "mm", "nothing_seen": 65535}}
    for cam in env_cfg.cameras if env_cfg.segmentation else ():
        extra[SEGMENTATION_PREFIX + cam] = {"dtype": "uint8", "shape": hw, "names": ["height", "width"],
                                            "info": {"classes": list(SEG_CLASSES)}}
    return LeRobotDatasetWriter(
        out, fps=FPS, robot_type="sawyer", state_names=list(state_names(env_cfg.proprio)),
        action_names=list(ACTION_NAMES), cameras=list(env_cfg.cameras), image_size=(env_cfg.image_size,) * 2,
        video_codec=video_codec, extra_features=extra, overwrite=overwrite)


def write_episode(writer: LeRobotDatasetWriter, env_cfg: EnvConfig, task: str, ep: dict, *,
                  fail_penalty: float = DEFAULT_FAIL_PENALTY) -> int:
    """Append one recorded episode to a writer from :func:`open_episode_writer`; returns its index.

    ``ep`` holds what :func:`run_expert_episode` returns over T steps: images (T, n_cam, H, W, 3)
    uint8, state (T, Ds), env_state (T, 17), action (T, 4) as applied, reward (T,) Meta-World's
    shaped reward, success_flags (T,) bool, with the env's depth (T, n_cam, H, W) metres /
    segmentation (T, n_cam, H, W) uint8; and optionally ``intervention`` (T,) bool, the steps a
    takeover source acted (:mod:`robodream.rl.takeover`; all False when absent).
    ``task`` is the instruction stored as the episode's task.

    Raises:
        DatasetError: arrays of the wrong shape or dtype (nothing is written).
    """
    arrays = episode_reward_columns(ep["success_flags"], ep["reward"], intervention=ep.get("intervention"),
                                    fail_penalty=fail_penalty)
    arrays[ENV_STATE] = ep["env_state"]
    for i, c in enumerate(env_cfg.cameras):
        if env_cfg.depth:
            arrays[DEPTH_PREFIX + c] = depth_to_mm(ep["depth"][:, i])
        if env_cfg.segmentation:
            arrays[SEGMENTATION_PREFIX + c] = np.ascontiguousarray(ep["segmentation"][:, i])
    return writer.add_episode(task=task, state=ep["state"], action=ep["action"],
                              images={c: ep["images"][:, i] for i, c in enumerate(env_cfg.cameras)}, extra=arrays)


def run_expert_episode(env: MetaWorldEnv, seed: int, post_success_steps: int = 0,
                       expert_target: str = "tcp") -> dict[str, np.ndarray | bool]:
    """Roll out the scripted expert (steering ``expert_target``, see
    :meth:`MetaWorldEnv.expert_action`) from ``reset(seed)`` until ``post_success_steps`` steps
    after the first success, or the step limit.

    Returns arrays over the T recorded steps: images (T, n_cam, H, W, 3) uint8, state (T, 4),
    env_state (T, 17) (:meth:`MetaWorldEnv.environment_state`), action (T, 4) (clipped to [-1, 1], as applied), reward (T,), success_flags (T,) bool,
    ``success`` (whether the task was ever solved) and ``success_step`` (steps to first success);
    with the env's depth / segmentation also depth (T, n_cam, H, W) float32 metres and
    segmentation (T, n_cam, H, W) uint8.
    """
    obs = env.reset(seed)
    images, states, env_states, actions, rewards, flags, depth, seg = [], [], [], [], [], [], [], []
    first_success: int | None = None
    while True:
        a = np.clip(env.expert_action(expert_target), -1.0, 1.0).astype(np.float32)
        images.append(obs.images)
        if obs.depth is not None:
            depth.append(obs.depth)
        if obs.segmentation is not None:
            seg.append(obs.segmentation)
        states.append(obs.state)
        env_states.append(env.environment_state())
        actions.append(a)
        obs = env.step(a)
        rewards.append(obs.reward)
        flags.append(obs.success)
        if obs.success and first_success is None:
            first_success = len(actions)
        if obs.truncated or (first_success is not None and len(actions) >= first_success + post_success_steps):
            break
    ep = {"images": np.stack(images), "state": np.stack(states), "env_state": np.stack(env_states),
          "action": np.stack(actions),
          "reward": np.asarray(rewards, np.float32), "success_flags": np.asarray(flags, bool),
          "success": first_success is not None, "success_step": first_success}
    if depth:
        ep["depth"] = np.stack(depth)
    if seg:
        ep["segmentation"] = np.stack(seg)
    return ep


def depth_to_mm(depth: np.ndarray) -> np.ndarray:
    """Depth in metres (any shape, float) -> uint16 millimetres, rounded; 65535 (nothing seen)
    for 65.535 m and beyond, the stored encoding (see the module docstring)."""
    return np.clip(np.rint(np.asarray(depth, np.float64) * 1000.0), 0, 65535).astype(np.uint16)


def dataset_provenance(ds: LeRobotDataset) -> dict | None:
    """robodream's ``meta/robodream.json`` of a dataset, or None for a dataset from elsewhere."""
    path = Path(ds.root) / "meta" / PROVENANCE_FILE
    if not path.is_file():
        return None
    try:
        return read_json(path)
    except ValueError as e:
        raise DatasetError(f"corrupt {path}: {e}") from e


def require_real(ds: LeRobotDataset, what: str) -> None:
    """Refuse a synthetic dataset (``meta/robodream.json`` with ``synthetic``) where ``what`` needs real data.

    Raises:
        DatasetError: naming the dataset, its kind of synthetic data and ``what``.
    """
    prov = dataset_provenance(ds)
    if prov and prov.get("synthetic"):
        raise DatasetError(f"{ds.root} is synthetic ({prov['synthetic']}, generated from {prov.get('source')}); "
                           f"{what} needs real demonstrations")


def replayable_provenance(ds: LeRobotDataset, use: str) -> dict:
    """``robodream.json`` of a dataset whose episodes can be replayed in the simulator (one env
    seed per episode); ``use`` says what for ("replayed", "re-rendered") in the error.

    Raises:
        DatasetError: no robodream provenance, or not one seed per episode.
    """
    prov = dataset_provenance(ds)
    if prov is None or len(prov.get("seeds", [])) != ds.num_episodes:
        raise DatasetError(f"{ds.root} has no robodream provenance (meta/robodream.json) with one env seed per "
                           f"episode, so its episodes cannot be {use}")
    return prov


def record_provenance(cfg, datasets: list[LeRobotDataset]) -> None:
    """Fill a run config's ``env_tasks`` (instruction -> Meta-World task), ``train_seeds`` (task ->
    sorted env seeds of every episode of the datasets, held-out ones included, so evaluation can
    avoid them) and ``env`` (cameras, image size, step limit, proprioception) from the datasets'
    ``meta/robodream.json``, merging into what ``cfg`` already holds; datasets from elsewhere add nothing."""
    for ds in datasets:
        prov = dataset_provenance(ds)
        if prov:
            for t in ds.tasks:
                cfg.env_tasks[t] = prov["task"]
            cfg.train_seeds.setdefault(prov["task"], [])
            cfg.train_seeds[prov["task"]] = sorted(set(cfg.train_seeds[prov["task"]]) | set(prov["seeds"]))
            cfg.env = {k: prov["env"][k] for k in ("cameras", "image_size", "max_steps", "proprio")
                       if k in prov["env"]}
