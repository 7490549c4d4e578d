"""Closed-loop evaluation of a trained policy on Meta-World.

``robodream eval policy --policy RUN --task TASK --episodes N --out DIR`` calls
:func:`evaluate_policy`: N rollouts on env seeds disjoint from every seed the policy's
training data was collected with, success from ``info["success"]``, per-chunk inference
latency, and ``DIR/results.json``, a few rollout MP4s and ``DIR/evaluation.png``.
``--workers N`` runs the rollouts on N processes (``--ray-address``: on a Ray cluster) with
the same per-episode results as one worker: each episode's chunk noise is seeded by its env
seed. ``--appearance`` / ``--camera-shift`` evaluate under a shift in the environment
(:mod:`robodream.envs.shift`; ``random``: a new draw per evaluation seed, so appearances never
seen in training), recorded in results.json with the seed range. A RAMP-conditioned policy
(GigaBrain-0.5M*) runs ``--mode efficient`` (no future latent) or ``--mode standard`` (one
world-model step predicts ``z`` per chunk, counted in the chunk latency; the world model is the
policy run's ``world_model``, or ``--world-model``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.config import to_dict
from robodream.envs.meta_world import (
    DEFAULT_PROPRIO,
    EnvConfig,
    MetaWorldEnv,
    check_task,
    state_names,
    task_instruction,
)
from robodream.envs.parallel import RolloutPool, check_parallelism
from robodream.envs.shift import ShiftConfig
from robodream.errors import ConfigError
from robodream.eval.metrics import percentile, wilson_interval
from robodream.eval.video import write_mp4
from robodream.policy.configuration import PolicyConfig
from robodream.policy.runner import PolicyRunner, resolve_mode
from robodream.policy.train import load_policy
from robodream.utils.io import atomic_directory, atomic_write_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now

#: Evaluation seeds start here by default, far from the collection seeds (0, 1, 2, ...).
DEFAULT_EVAL_SEED = 1_000_000


def evaluate_policy(run_dir: str | os.PathLike, task: str, episodes: int, out: str | os.PathLike, *,
                    seed_start: int = DEFAULT_EVAL_SEED, max_steps: int = 500, n_videos: int = 3,
                    mode: str | None = None, device: str = "cpu", threads: int | None = None,
                    compile: bool = False, n_action_steps: int | None = None, workers: int = 1,
                    ray_address: str | None = None, overwrite: bool = False,
                    shift: ShiftConfig | None = None, world_model: str | os.PathLike | None = None) -> dict[str, Any]:
    """Roll out the policy ``episodes`` times and write the evaluation to ``out``.

    ``out`` (results.json, evaluation.png, rollouts/*.mp4) appears atomically when the
    evaluation is complete; an error leaves the file system as it was.

    Args:
        run_dir: policy run directory.
        task: Meta-World task name, e.g. ``"push-v3"``.
        seed_start: env seeds ``seed_start, seed_start + 1, ...``; must not overlap the
            training seeds recorded in the policy run. Episode ``seed`` also seeds its chunk
            noise, so its result does not depend on the episodes before it.
        max_steps: episode step limit (Meta-World's own limit is 500), >= 1.
        n_videos: number of rollouts saved as MP4 (the first ones, in seed order).
        mode: inference mode (default: action_only, or joint for mask="full" models; for
            RAMP-conditioned policies efficient or standard, default standard with future
            conditioning).
        threads: torch intra-op threads of each rollout process (default: unchanged with one
            worker, 1 per worker with several). Per-episode results are identical for any
            ``workers`` at the same ``threads``.
        compile: ``torch.compile`` the chunk sampling (compiled in every worker before its
            first rollout, so compilation is not counted in the latency).
        n_action_steps: receding horizon K, actions executed per predicted chunk (default: the
            run's ``n_action_steps``); must be in [1, horizon].
        workers: rollout processes, each with its own env and copy of the policy (see
            :class:`RolloutPool`); latencies are pooled over all of them.
        ray_address: run the workers as actors on the Ray cluster at this address (each
            node must see ``run_dir`` at the same path).
        overwrite: replace an existing non-empty ``out`` (only an evaluation directory is
            ever replaced, and only once the new one is complete).
        shift: appearance and static-camera shift of the evaluation env (default: none).
        world_model: the world-model run of standard mode's ``z`` (default: the policy run's
            ``world_model``, the one that made its labels).

    Returns:
        The content of results.json: success_rate, ci95, per-episode results (seed,
        success, steps), latency percentiles (ms per chunk; standard mode: including the
        world-model step), mode, world_model_run (standard mode), ...

    Raises:
        UnknownTaskError, CheckpointError, ConfigError (task not trained, seed overlap, bad
        mode, ``episodes``/``max_steps``/``workers`` < 1, ``out`` not empty without
        ``overwrite``, Ray missing or unreachable).
    """
    check_task(task)
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    if max_steps < 1:
        raise ConfigError(f"--max-steps must be >= 1, got {max_steps}")
    check_parallelism(workers, ray_address)
    out = Path(out)
    check_eval_dir(out, overwrite)
    seeds = list(range(seed_start, seed_start + episodes))
    ps = prepare_policy_rollouts(run_dir, task, seeds, max_steps=max_steps, mode=mode, device=device,
                                 n_action_steps=n_action_steps, shift=shift, world_model=world_model)
    instruction, mode, env_cfg, cfg = ps.instruction, ps.mode, ps.env_cfg, ps.cfg
    setup = partial(_Evaluator, str(run_dir), instruction, env_cfg, mode=mode, device=device, compile=compile,
                    n_action_steps=n_action_steps, world_model=ps.world_model)
    workers = min(workers, episodes)
    per_episode: list[dict[str, Any]] = []
    lat: list[float] = []  # ms per chunk, all episodes
    t_start = time.perf_counter()
    with (RolloutPool(setup, _Evaluator.episode, workers=workers, ray_address=ray_address, threads=threads) as pool,
          atomic_directory(out, overwrite=out.exists()) as tmp,
          progress_bar() as progress):
        bar = progress.add_task(f"eval {task}", total=episodes)
        jobs = [(seed, i < n_videos) for i, seed in enumerate(seeds)]  # (env seed, record the rollout)
        for ep in pool.imap(jobs):
            lat += ep.pop("latency_ms")
            if "frames" in ep:
                tag = "success" if ep["success"] else "fail"
                frames = ep.pop("frames")
                write_mp4(tmp / "rollouts" / f"seed{ep['seed']}_{tag}.mp4", frames)
                if ep["video_predictions"]:
                    save_future_grid(ep["video_predictions"], frames, cfg.future_offsets,
                                     tmp / "rollouts" / f"seed{ep['seed']}_predicted_future.png")
            ep.pop("video_predictions", None)
            per_episode.append(ep)
            n_ok = sum(e["success"] for e in per_episode)
            progress.update(bar, advance=1, description=f"eval {task} {n_ok}/{len(per_episode)} ok")
        n_ok = sum(e["success"] for e in per_episode)
        steps_ok = [e["steps"] for e in per_episode if e["success"]]
        results = {
            "task": task, "instruction": instruction, "success_rate": n_ok / episodes, "n_episodes": episodes,
            "n_successes": n_ok, "ci95": list(wilson_interval(n_ok, episodes)),
            "mean_steps_to_success": float(np.mean(steps_ok)) if steps_ok else None,
            "latency_ms_p50": percentile(lat, 50), "latency_ms_p90": percentile(lat, 90),
            "latency_includes": ("tokenizer encode" + (" + world-model z step" if mode == "standard" else "")
                                 + (" + GWM features (Gaussians + set-VAE encoder)" if cfg.gwm_tokens else "")
                                 + " + chunk sampling, batch 1"),
            "mode": mode, "world_model_run": ps.world_model, "compiled": compile,
            "threads": threads or (torch.get_num_threads() if pool.backend == "in-process" else 1),
            "workers": workers, "backend": pool.backend,
            "n_chunks": len(lat), "n_action_steps": cfg.n_action_steps, "horizon": cfg.horizon,
            "seeds": seeds, "max_steps": max_steps,
            "shift": {**to_dict(env_cfg.shift), "episode_seeds": [seeds[0], seeds[-1]]}, "wall_s": time.perf_counter() - t_start,
            "policy_run": str(run_dir), "episodes": per_episode, "created": now(), "code": code_version(),
            "environment": environment_info(),
        }
        atomic_write_json(tmp / "results.json", results)
        plot_evaluation(results, lat, tmp / "evaluation.png")
    return results


#: What an evaluation directory holds; only such a directory is replaced by ``overwrite``.
EVAL_OUTPUTS = {"results.json", "evaluation.png", "rollouts"}


def check_eval_dir(out: Path, overwrite: bool, outputs: set[str] = EVAL_OUTPUTS, what: str = "a policy evaluation") -> None:
    """Raises ConfigError unless ``out`` is absent, empty, or (with ``overwrite``) an evaluation
    (a directory holding only names of ``outputs``; ``what`` names it in the error)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    names = {p.name for p in out.iterdir()}
    if names and not overwrite:
        raise ConfigError(f"output directory {out} already exists and is not empty (pass --overwrite to replace it)")
    if names - outputs:
        raise ConfigError(f"refusing to overwrite {out}: it holds {sorted(names - outputs)[0]!r}, "
                          f"which is not part of {what}")


@dataclass
class PolicyRollouts:
    """What :func:`prepare_policy_rollouts` resolves for rollouts of a trained policy."""

    instruction: str  # the task's instruction as in the policy's training data
    mode: str  # the inference mode (resolve_mode)
    env_cfg: EnvConfig  # the env of the rollouts: the training data's cameras, image size, proprioception
    cfg: PolicyConfig  # the policy's model config (n_action_steps overridden when given)
    run_cfg: dict  # the policy run's config.json (train_seeds, env_tasks, env, ...)
    world_model: str | None = None  # the world-model run of standard mode's z (None in the other modes)


def prepare_policy_rollouts(run_dir: str | os.PathLike, task: str, seeds: list[int], *, max_steps: int = 500,
                            mode: str | None = None, device: str = "cpu", n_action_steps: int | None = None,
                            shift: ShiftConfig | None = None, what: str = "evaluation",
                            seed_flag: str = "--seed-start",
                            world_model: str | os.PathLike | None = None, gwm_ok: bool = True) -> PolicyRollouts:
    """Check that a trained policy can roll out ``task`` on env ``seeds``, and resolve its env.

    Shared by ``eval policy`` and ``rollout``. The env uses the policy's cameras and image size
    and its training data's proprioception (run config ``env``), so its observations are the
    training data's. ``what`` / ``seed_flag`` name the rollouts and their seed option in errors.
    In standard mode the world model of ``z`` is ``world_model``, or the run's ``world_model``.
    A policy with GWM features also renders its GWM cameras (after its own), with depth
    (``gwm_ok=False``: such policies are refused).

    Raises:
        UnknownTaskError: not a Meta-World task.
        CheckpointError: ``run_dir`` is not a policy run; standard mode's world model is not a
            world-model run.
        ConfigError: a task the policy was not trained on (its task set is in the error), a
            seed among the policy's training seeds of ``task``, ``n_action_steps`` outside
            [1, horizon], a mode the model cannot run, a state layout that does not match, or a
            policy with GWM features where ``gwm_ok`` is False.
    """
    check_task(task)
    policy, tokenizer, run_cfg = load_policy(run_dir, device=device)
    if n_action_steps is not None:
        if not 1 <= n_action_steps <= policy.cfg.horizon:
            raise ConfigError(f"--n-action-steps must be in [1, horizon={policy.cfg.horizon}], got {n_action_steps}")
        policy.cfg.n_action_steps = n_action_steps
    env_tasks = run_cfg.get("env_tasks", {})  # instruction -> Meta-World task
    instruction = next((k for k, v in env_tasks.items() if v == task), task_instruction(task))
    if instruction not in policy.cfg.tasks:
        known = ", ".join(env_tasks.get(t, repr(t)) for t in policy.cfg.tasks)
        raise ConfigError(f"the policy in {run_dir} was not trained on task {task}; it knows {known}")
    overlap = sorted(set(seeds) & set(run_cfg.get("train_seeds", {}).get(task, [])))
    if overlap:
        raise ConfigError(f"{what} seeds overlap the training seeds of {task} (e.g. {overlap[:3]}); "
                          f"choose another {seed_flag}")
    mode = resolve_mode(policy.cfg, mode)
    wm = None
    if mode == "standard":
        wm = str(world_model or run_cfg.get("world_model") or "")
        if not wm:
            raise ConfigError(f"mode 'standard' needs the world model that predicts z, and {run_dir} records none; "
                              "pass --world-model")
        from robodream.train.run_dir import read_run_config

        read_run_config(wm, "video_world_model")  # fail before any rollout starts
    cfg = policy.cfg
    proprio = tuple(run_cfg.get("env", {}).get("proprio", DEFAULT_PROPRIO))  # the training data's state layout
    if len(state_names(proprio)) != cfg.state_dim:
        raise ConfigError(f"the policy expects a {cfg.state_dim}-number state, but its data's proprioception "
                          f"{proprio} gives {len(state_names(proprio))}")
    gwm_cams = list(run_cfg.get("gwm", {}).get("cameras", [])) if cfg.gwm_tokens else []
    if gwm_cams and not gwm_ok:
        raise ConfigError(f"{what} of a policy with GWM features is not supported; evaluate it with robodream eval policy")
    cameras = tuple(cfg.cameras) + tuple(c for c in gwm_cams if c not in cfg.cameras)
    env_cfg = EnvConfig(task=task, cameras=cameras, image_size=cfg.image_size, max_steps=max_steps,
                        proprio=proprio, shift=shift or ShiftConfig(), depth=bool(gwm_cams))
    return PolicyRollouts(instruction, mode, env_cfg, cfg, run_cfg, wm)


def load_runner(run_dir: str | os.PathLike, instruction: str, *, mode: str, device: str = "cpu",
                n_action_steps: int | None = None, compile: bool = False,
                world_model: str | os.PathLike | None = None) -> PolicyRunner:
    """A rollout worker's :class:`PolicyRunner`: its own copy of the policy in ``run_dir``
    (``n_action_steps`` overrides the run's receding horizon K; ``compile``: compiled and run
    once now, so compilation is not counted in the chunk latency; ``world_model``: the run of
    standard mode's ``z``, default the policy run's)."""
    policy, tokenizer, run_cfg = load_policy(run_dir, device=device)
    if n_action_steps is not None:
        policy.cfg.n_action_steps = n_action_steps
    future = None
    if mode == "standard":
        from robodream.rl.labels import load_world_model_future

        cfg = policy.cfg
        future = load_world_model_future(world_model or run_cfg.get("world_model", ""), instruction,
                                         cameras=cfg.cameras, device=device, policy_tokenizer=tokenizer,
                                         latent_shape=(cfg.latent_channels, cfg.latent_size, cfg.latent_size))
    gwm = None
    if policy.gwm_pool is not None:
        from robodream.gwm.features import load_policy_gwm_features

        gwm = load_policy_gwm_features(run_dir, run_cfg, device=device)
    runner = PolicyRunner(policy, tokenizer, instruction, mode=mode, future=future, gwm=gwm)
    cfg = policy.cfg
    if compile and gwm is None:  # a GWM policy compiles on its first chunk (no blank frame has depth)
        policy.compile_inference()
        runner.predict_chunk(np.zeros((len(cfg.cameras), cfg.image_size, cfg.image_size, 3), np.uint8),
                             np.zeros(cfg.state_dim, np.float32))
    elif compile:
        policy.compile_inference()
    return runner


class _Evaluator:
    """A rollout worker's state: its own env and copy of the policy (see :class:`RolloutPool`)."""

    def __init__(self, run_dir: str, instruction: str, env_cfg: EnvConfig, *, mode: str, device: str,
                 compile: bool, n_action_steps: int | None, world_model: str | None = None) -> None:
        self.runner = load_runner(run_dir, instruction, mode=mode, device=device, n_action_steps=n_action_steps,
                                  compile=compile, world_model=world_model)
        self.env = MetaWorldEnv(env_cfg)

    def episode(self, job: tuple[int, bool]) -> dict[str, Any]:
        """Roll out one episode; job = (env seed, record frames).

        Returns {"seed", "success", "steps", "latency_ms": [ms per chunk]}, and when recorded
        "frames" (T + 1, H, n_cameras * W, 3) uint8 and "video_predictions" [(step, (F, N, 3,
        H, W) float32 in [0, 1])].
        """
        seed, record = job
        env, runner = self.env, self.runner
        runner.reset(seed)
        runner.chunk_latency_ms.clear()
        obs = env.reset(seed)
        n_cam = len(runner.policy.cfg.cameras)
        gwm_idx = None
        if runner.gwm is not None:  # its cameras as the env set them up for this seed (a shift moves them)
            runner.gwm.set_cameras_from_env(env)
            gwm_idx = [env.cfg.cameras.index(c) for c in runner.gwm.cameras]
        frames = [np.concatenate(list(obs.images[:n_cam]), axis=1)] if record else None
        steps = 0
        while True:
            gwm_view = None if gwm_idx is None else (obs.images[gwm_idx], obs.depth[gwm_idx])
            obs = env.step(runner.act(obs.images[:n_cam], obs.state, gwm_view))
            steps += 1
            if record:
                frames.append(np.concatenate(list(obs.images[:n_cam]), axis=1))
            if obs.success or obs.truncated:
                break
        ep: dict[str, Any] = {"seed": seed, "success": bool(obs.success), "steps": steps,
                              "latency_ms": list(runner.chunk_latency_ms)}
        if record:
            ep["frames"] = np.stack(frames)
            ep["video_predictions"] = [(t, p.float().numpy()) for t, p in runner.video_predictions]
        return ep

    def close(self) -> None:
        self.env.close()


def save_future_grid(predictions: list, frames: np.ndarray, offsets: list[int], path: Path, max_rows: int = 4) -> None:
    """PNG: for the first chunks of an episode, predicted future frames next to the real ones.

    predictions: [(step t, (F, N, 3, H, W) float array in [0, 1])]; frames: (T + 1, H, N * W, 3) uint8
    (cameras side by side) of the rollout. Each row: for every offset o, predicted | actual
    frame at t + o (black when the episode ended earlier).
    """
    from PIL import Image

    rows = []
    for t, pred in predictions[:max_rows]:
        cells = []
        for k, o in enumerate(offsets):
            p = (np.asarray(pred[k]).transpose(0, 2, 3, 1) * 255).round().astype(np.uint8)  # (N, H, W, 3)
            p = np.concatenate(list(p), axis=1)
            real = frames[t + o] if t + o < len(frames) else np.zeros_like(p)
            cells += [p, real, np.full((p.shape[0], 2, 3), 255, np.uint8)]
        rows.append(np.concatenate(cells, axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    Image.fromarray(grid).resize((grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST).save(tmp, format="PNG")
    os.replace(tmp, path)


def plot_evaluation(results: dict[str, Any], latencies: list[float], path: Path) -> None:
    """PNG with the success-vs-steps curve and the per-chunk latency histogram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = results["episodes"]
    n = len(eps)
    limit = results["max_steps"]
    xs = np.arange(limit + 1)
    done = np.array([e["steps"] if e["success"] else limit + 1 for e in eps])
    curve = [(done <= x).sum() / n for x in xs]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
    lo, hi = results["ci95"]
    ax[0].plot(xs, curve, color="C0")
    ax[0].axhspan(lo, hi, color="C0", alpha=0.15, label=f"95% CI (Wilson), n={n}")
    ax[0].set(xlabel="env steps", ylabel="success rate", ylim=(0, 1.02),
              title=f"{results['task']}: {results['success_rate']:.0%} success")
    ax[0].legend(loc="lower right")
    if latencies:
        ax[1].hist(latencies, bins=40, color="C1")
        ax[1].axvline(results["latency_ms_p50"], color="k", ls="--", label=f"p50 {results['latency_ms_p50']:.1f} ms")
        ax[1].legend()
    ax[1].set(xlabel="ms per action chunk", ylabel="chunks", title=f"inference latency ({results['mode']})")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
