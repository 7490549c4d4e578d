"""Policy rollouts with takeover, recorded as a LeRobotDataset v3.0 (RAMP's HIL rollouts).

``robodream rollout --policy RUN --task T --episodes N --out DIR`` calls
:func:`record_rollouts`: the trained policy drives N episodes of a Meta-World task while a
takeover source (:mod:`robodream.rl.takeover`: the scripted expert by default, a person at
the keyboard, or none) acts instead when it goes wrong, the HG-DAgger protocol (Kelly et al.,
ICRA 2019) that GigaBrain-0.5M* (RAMP, arXiv 2602.12099) uses for its Human-in-the-Loop
Rollouts. Every frame is written with the action actually applied (the policy's, or the
source's, clipped to [-1, 1]) and ``complementary_info.is_intervention`` True where the source
acted. Failed episodes are kept (with RAMP's ``-C_fail`` on their last step): RL needs them.

The dataset has exactly the features of ``robodream collect``'s (shared writer,
:func:`~robodream.data.collect.open_episode_writer`), in the policy's own env settings
(cameras, image size, proprioception of its training data), so ``train policy --data DEMOS
--data ROLLOUTS`` trains on both. ``DIR/meta/robodream.json`` marks it ``"source":
"policy-rollout"`` with the policy run, the takeover settings, the seeds and per-episode
success and intervention counts; ``DIR/meta/results.json`` holds the summary (success rate
with its Wilson interval, intervention fraction, per-episode results).

Seeds: by default from ``max(DEFAULT_ROLLOUT_SEED, largest training seed of the task + 1)``,
above the collection seeds (0, 1, ...) and the evaluation seeds (``DEFAULT_EVAL_SEED`` =
1,000,000 upward), and above the seeds of earlier rollouts a policy trained on, so each round
of the RAMP loop rolls out on new seeds. Explicit seeds must not be training seeds.

Atomic, not resumable: the dataset appears at ``DIR`` only when every episode is written; a
killed or interrupted rollout leaves nothing there (its temporary sibling is removed at once,
or by the next writer for ``DIR`` if the process was killed), never a half-written episode:
run the command again. ``--workers N`` rolls out on N processes and writes the same dataset as
one worker at the same torch threads (episodes in seed order; each episode depends on its seed
only).
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.config import to_dict
from robodream.data.collect import PROVENANCE_FILE, open_episode_writer, write_episode
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv, check_task
from robodream.envs.parallel import RolloutPool, check_parallelism
from robodream.errors import ConfigError
from robodream.eval.metrics import wilson_interval
from robodream.eval.policy_eval import load_runner, prepare_policy_rollouts
from robodream.rl.rewards import DEFAULT_FAIL_PENALTY, ROLLOUT_SOURCE
from robodream.rl.takeover import KeySource, StepInfo, TakeoverConfig, check_takeover, make_takeover, takeover_settings
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now

#: Rollout seeds start here by default: above collection seeds (0, 1, ...) and evaluation
#: seeds (1,000,000 upward), so neither training nor evaluation ever meets them by accident.
DEFAULT_ROLLOUT_SEED = 2_000_000
#: The summary file written next to the provenance, ``DIR/meta/results.json``.
RESULTS_FILE = "results.json"


def default_rollout_seed(run_cfg: dict, task: str) -> int:
    """The first rollout seed of ``task`` for a policy run's config: ``DEFAULT_ROLLOUT_SEED``, or
    one past its largest training seed of ``task`` (a policy trained on earlier rollouts)."""
    train = run_cfg.get("train_seeds", {}).get(task, [])
    return max([DEFAULT_ROLLOUT_SEED, *(int(s) + 1 for s in train)])


def record_rollouts(run_dir: str | os.PathLike, task: str, episodes: int, out: str | os.PathLike, *,
                    takeover: TakeoverConfig | None = None, seed: int | None = None, max_steps: int = 500,
                    fail_penalty: float = DEFAULT_FAIL_PENALTY, mode: str | None = None,
                    n_action_steps: int | None = None, device: str = "cpu", threads: int | None = None,
                    workers: int = 1, overwrite: bool = False, keys: KeySource | None = None,
                    video_codec: str = "h264", world_model: str | os.PathLike | None = None) -> dict[str, Any]:
    """Roll out the policy ``episodes`` times with takeover and write them as a dataset at ``out``.

    Args:
        run_dir: policy run directory (``robodream train policy``).
        task: Meta-World task the policy was trained on, e.g. ``"reach-v3"``.
        episodes: >= 1, all kept, successful or not.
        takeover: the takeover source and its trigger (default: :class:`TakeoverConfig`, the expert).
        seed: first env seed (episode i: ``seed + i``); default :func:`default_rollout_seed`.
            Each episode's chunk noise is seeded by its env seed.
        max_steps: episode step limit, >= 1; an episode also ends at its first success.
        fail_penalty: C_fail of the RAMP reward ``next.reward`` (:mod:`robodream.rl.rewards`), >= 0.
        mode, n_action_steps, device, threads, world_model: the policy's inference (as ``eval
            policy``; a RAMP-conditioned policy runs ``efficient`` or ``standard``).
        workers: rollout processes, each with its own env, policy and takeover source (the
            keyboard source needs 1).
        overwrite: replace an existing dataset at ``out`` (only once the new one is complete).
        keys: the key source of a keyboard takeover (e.g. :class:`~robodream.rl.takeover.SimulatedKeys`);
            None: the real keyboard.
        video_codec: the camera videos' codec (:data:`~robodream.data.lerobot_writer.VIDEO_CODECS`).

    Returns:
        The content of ``meta/results.json``: n_episodes, success_rate, ci95 (Wilson),
        intervention_steps, intervention_fraction (intervention frames / frames),
        mean_intervention_fraction (mean over episodes), seeds, and per-episode ``episodes``
        (seed, success, steps, intervention_steps, interventions).

    Raises:
        UnknownTaskError: not a Meta-World task.
        CheckpointError: ``run_dir`` is not a policy run.
        ConfigError: a task the policy was not trained on, a seed among its training seeds, an
            unknown takeover source or setting out of range, a keyboard source without a
            terminal or display, ``episodes`` / ``max_steps`` / ``workers`` < 1, fail_penalty < 0.
        DatasetError: ``out`` exists (and not ``overwrite``).
    """
    check_task(task)
    takeover = takeover or TakeoverConfig()
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
    if not fail_penalty >= 0:
        raise ConfigError(f"--fail-penalty (C_fail) must be >= 0, got {fail_penalty}")
    check_parallelism(workers)
    check_takeover(takeover, workers=workers, keys=keys)
    explicit = [] if seed is None else list(range(seed, seed + episodes))
    ps = prepare_policy_rollouts(run_dir, task, explicit, max_steps=max_steps, mode=mode, device=device,
                                 n_action_steps=n_action_steps, what="rollout", seed_flag="--seed",
                                 world_model=world_model, gwm_ok=False)
    start = default_rollout_seed(ps.run_cfg, task) if seed is None else seed
    seeds = list(range(start, start + episodes))
    env_cfg = ps.env_cfg
    writer = open_episode_writer(out, env_cfg, video_codec=video_codec, overwrite=overwrite)
    setup = partial(_RolloutWorker, str(run_dir), ps.instruction, env_cfg, takeover, mode=ps.mode, device=device,
                    n_action_steps=n_action_steps, keys=keys, world_model=ps.world_model)
    workers = min(workers, episodes)
    per_episode: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    with (writer,
          RolloutPool(setup, _RolloutWorker.episode, workers=workers, threads=threads) as pool,
          progress_bar() as progress):
        bar = progress.add_task(f"rollout {task}", total=episodes)
        for ep in pool.imap(seeds):
            write_episode(writer, env_cfg, ps.instruction, ep, fail_penalty=fail_penalty)
            per_episode.append({k: ep[k] for k in ("seed", "success", "steps", "intervention_steps", "interventions")})
            n_ok = sum(e["success"] for e in per_episode)
            progress.update(bar, advance=1, description=f"rollout {task} {n_ok}/{len(per_episode)} ok")
        n_ok = sum(e["success"] for e in per_episode)
        frames = sum(e["steps"] for e in per_episode)
        takeover_frames = sum(e["intervention_steps"] for e in per_episode)
        results = {
            "task": task, "instruction": ps.instruction, "n_episodes": episodes, "n_successes": n_ok,
            "success_rate": n_ok / episodes, "ci95": list(wilson_interval(n_ok, episodes)),
            "n_frames": frames, "intervention_steps": takeover_frames, "intervention_fraction": takeover_frames / frames,
            "mean_intervention_fraction": float(np.mean([e["intervention_steps"] / e["steps"] for e in per_episode])),
            "episodes_with_intervention": sum(e["interventions"] > 0 for e in per_episode),
            "takeover": takeover_settings(takeover), "seeds": seeds, "max_steps": max_steps,
            "workers": workers, "backend": pool.backend,
            "threads": threads or (torch.get_num_threads() if pool.backend == "in-process" else 1),
            "wall_s": time.perf_counter() - t_start, "episodes": per_episode,
        }
        writer.write_meta_json(PROVENANCE_FILE, {
            "created": now(), "code": code_version(), "source": ROLLOUT_SOURCE,
            "env": to_dict(env_cfg), "task": task, "seeds": seeds,
            "policy": {"run": str(Path(run_dir).resolve()), "mode": ps.mode, "world_model": ps.world_model,
                       "n_action_steps": ps.cfg.n_action_steps,
                       "horizon": ps.cfg.horizon, "tasks": list(ps.cfg.tasks), "device": device},
            "takeover": takeover_settings(takeover), "takeover_config": to_dict(takeover),
            "fail_penalty": fail_penalty, "max_steps": max_steps, "video_codec": video_codec,
            "episodes": per_episode, "environment": environment_info(),
        })
        writer.write_meta_json(RESULTS_FILE, {**results, "policy_run": str(run_dir), "created": now()})
    return results


class _RolloutWorker:
    """A rollout worker's state: its own env, copy of the policy and takeover source (see
    :class:`~robodream.envs.parallel.RolloutPool`)."""

    def __init__(self, run_dir: str, instruction: str, env_cfg: EnvConfig, takeover: TakeoverConfig, *, mode: str,
                 device: str, n_action_steps: int | None, keys: KeySource | None,
                 world_model: str | None = None) -> None:
        self.runner = load_runner(run_dir, instruction, mode=mode, device=device, n_action_steps=n_action_steps,
                                  world_model=world_model)
        self.env = MetaWorldEnv(env_cfg)
        self.source = make_takeover(takeover, keys)

    def episode(self, seed: int) -> dict[str, Any]:
        """Roll out one episode from env seed ``seed`` until its first success or the step limit.

        Returns, over its T steps, what :func:`~robodream.data.collect.write_episode` writes:
        images (T, n_cam, H, W, 3) uint8, state (T, Ds), env_state (T, 17), action (T, 4) as
        applied, reward (T,) shaped, success_flags (T,) bool, intervention (T,) bool; and seed,
        success, steps (T), intervention_steps (frames the source acted on), interventions
        (takeovers started).
        """
        env, runner, source = self.env, self.runner, self.source
        runner.reset(seed)
        source.reset(seed)
        obs = env.reset(seed)
        images, states, env_states, actions, rewards, flags, takeover = [], [], [], [], [], [], []
        dense: float | None = None
        while True:
            proposed = np.clip(np.asarray(runner.act(obs.images, obs.state), np.float32), -1.0, 1.0)
            took, action = source.act(env, proposed, StepInfo(len(actions), obs.images, obs.state, dense))
            action = np.clip(np.asarray(action, np.float32).reshape(4), -1.0, 1.0)
            images.append(obs.images)
            states.append(obs.state)
            env_states.append(env.environment_state())
            actions.append(action)
            takeover.append(bool(took))
            obs = env.step(action)
            dense = obs.reward
            rewards.append(obs.reward)
            flags.append(obs.success)
            if obs.success or obs.truncated:
                break
        flags_arr = np.asarray(takeover, bool)
        return {"images": np.stack(images), "state": np.stack(states), "env_state": np.stack(env_states),
                "action": np.stack(actions), "reward": np.asarray(rewards, np.float32),
                "success_flags": np.asarray(flags, bool), "intervention": flags_arr,
                "seed": int(seed), "success": bool(obs.success), "steps": len(actions),
                "intervention_steps": int(flags_arr.sum()), "interventions": int(source.interventions)}

    def close(self) -> None:
        try:
            self.source.close()
        finally:
            self.env.close()
