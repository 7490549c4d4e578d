"""Evaluate an inverse-dynamics model on real episodes it never trained on.

``robodream eval idm --idm RUN --data DS --task TASK --episodes N --out DIR`` calls
:func:`evaluate_idm`. The episodes are the IDM run's held-out split of DS when DS is one of
its training datasets, else the first episodes of DS (a dataset the IDM never saw). Each
episode's video is labelled by :func:`~robodream.idm.modeling.label` (chunk by chunk, the
state known at frame 0 only, as for a generated video), and reported:

(a) **action error**: mean squared and mean absolute error per action number against the
    recorded actions, in action units, with the training-mean action as the baseline;
(b) **replay success**: the env is reset with the episode's seed (``meta/robodream.json``
    lists the seed of every kept episode, in episode order) and the labelled actions are
    replayed open loop; next to it the recorded actions are replayed from the same seed,
    which must reproduce the expert's success (``max_state_error_true``: the largest
    difference between the replayed and the recorded proprioceptive states, 0 when the
    simulator is deterministic). Success: ``info["success"]`` at any step of the replay.
    Rates come with Wilson 95% intervals.

DreamGen (arXiv 2505.12705) judges its IDM by the policies trained on the labels; replay
success is the direct, cheaper check that labels are executable.
"""

from __future__ import annotations

import os
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from robodream.data.collect import replayable_provenance, require_real
from robodream.data.latents import check_datasets, encode_dataset, split_episodes
from robodream.data.lerobot import LeRobotDataset
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv, check_task
from robodream.envs.parallel import RolloutPool, check_parallelism
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import wilson_interval
from robodream.eval.policy_eval import check_eval_dir
from robodream.idm.modeling import label
from robodream.idm.train import load_idm
from robodream.utils.io import atomic_directory, atomic_write_json
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now


def evaluate_idm(run_dir: str | os.PathLike, data: str | os.PathLike, task: str, episodes: int,
                 out: str | os.PathLike, *, workers: int = 1, device: str = "cpu",
                 overwrite: bool = False) -> dict[str, Any]:
    """Label ``episodes`` unseen episodes of ``data`` with the IDM, measure the action error and
    replay the labels; writes ``out/results.json`` atomically (an error writes nothing).

    Args:
        run_dir: IDM run directory.
        data: a LeRobot dataset recorded by ``robodream collect`` (its ``meta/robodream.json``
            holds the env seeds), with the IDM's cameras, image size and dimensions.
        task: the Meta-World task of ``data`` (checked against its provenance).
        episodes: at most this many episodes (the first of the held-out split); the number
            used is ``n_episodes`` in the results.
        workers: replay processes (:class:`~robodream.envs.parallel.RolloutPool`; same results
            for any number).
        overwrite: replace an existing evaluation at ``out``.

    Returns:
        The content of results.json (see the module docstring): ``action_mse``/``action_mae``
        (and ``_per_dim``), ``mean_action_mse`` (baseline), ``replay`` with ``true_actions``
        and ``idm_actions`` success rates, ``ci95``, counts, and per-episode results.

    Raises:
        UnknownTaskError, CheckpointError (not an IDM run), DatasetError (missing or
        incompatible dataset, no provenance, another task's dataset, no episode left),
        ConfigError (``episodes`` or ``workers`` < 1, ``out`` not empty without ``overwrite``).
    """
    check_task(task)
    if episodes < 1:
        raise ConfigError(f"--episodes must be >= 1, got {episodes}")
    check_parallelism(workers)
    out = Path(out)
    check_eval_dir(out, overwrite, {"results.json"}, "an IDM evaluation")
    idm, tokenizer, run_cfg = load_idm(run_dir, device=device)
    ds = LeRobotDataset(data)
    cameras, state_dim, action_dim = check_datasets([ds], tokenizer)
    if (tuple(cameras), state_dim, action_dim) != (idm.cfg.cameras, idm.cfg.state_dim, idm.cfg.action_dim):
        raise DatasetError(f"{data} has cameras {cameras}, state/action dims {state_dim}/{action_dim}; the IDM "
                           f"was trained on {list(idm.cfg.cameras)}, {idm.cfg.state_dim}/{idm.cfg.action_dim}")
    require_real(ds, "replay success (labels of real video replayed in the simulator)")
    prov = replayable_provenance(ds, "replayed")
    if prov["task"] != task:
        raise DatasetError(f"{data} holds {prov['task']} episodes, not {task}")
    held_out_split = str(Path(data).resolve()) in {str(Path(p).resolve()) for p in run_cfg.get("data", [])}
    if held_out_split:
        source = "held-out split of the IDM run"
        pool = split_episodes(ds.num_episodes, run_cfg.get("heldout_fraction", 0.1))[1]
    else:
        source = "a dataset the IDM run did not train on"
        pool = list(range(ds.num_episodes))
    chosen = pool[:episodes]
    if not chosen:
        raise DatasetError(f"{data} has no episode the IDM did not train on")
    # Another dataset may replay seeds of the run's datasets (e.g. the same episodes re-collected
    # under an appearance shift): the same initial scenes, so say so.
    shared = [] if held_out_split else sorted({int(prov["seeds"][i]) for i in chosen}
                                              & set(run_cfg.get("train_seeds", {}).get(task, [])))

    t_start = time.perf_counter()
    encoded = encode_dataset(ds, tokenizer, cameras, chosen)
    labels = [label(idm, e["latents"].to(device), e["state"][0].to(device)).cpu().numpy() for e in encoded]
    truth = [e["action"].numpy() for e in encoded]
    pred_all, true_all = np.concatenate(labels), np.concatenate(truth)  # (sum T, Da)
    err = pred_all - true_all
    base = idm.action_mean.cpu().numpy() - true_all
    names = ds.features.get("action", {}).get("names") or [f"action[{i}]" for i in range(action_dim)]

    env = prov["env"]
    env_cfg = EnvConfig(task=task, cameras=tuple(env["cameras"]), image_size=int(env["image_size"]),
                        proprio=tuple(env.get("proprio", ("hand", "gripper"))),
                        max_steps=max(int(env.get("max_steps", 500)), max(len(a) for a in truth)))
    jobs = [(int(prov["seeds"][i]), t, p, e["state"].numpy()) for i, t, p, e in zip(chosen, truth, labels, encoded)]
    per_episode: list[dict[str, Any]] = []
    with (RolloutPool(partial(MetaWorldEnv, env_cfg), replay_episode, workers=min(workers, len(jobs))) as rollouts,
          progress_bar() as progress):
        bar = progress.add_task(f"replay {task}", total=len(jobs))
        for k, (i, ep) in enumerate(zip(chosen, rollouts.imap(jobs))):
            per_episode.append({"episode": i, **ep, "action_mse": float(np.mean((labels[k] - truth[k]) ** 2))})
            progress.update(bar, advance=1)

    def rate(key: str) -> dict[str, Any]:
        k = sum(e[key] for e in per_episode)
        return {"success_rate": k / len(per_episode), "n_successes": k, "n_episodes": len(per_episode),
                "ci95": list(wilson_interval(k, len(per_episode)))}

    results = {
        "task": task, "dataset": str(data), "idm_run": str(run_dir), "episode_source": source,
        "seeds_also_in_run_datasets": shared,
        "n_episodes": len(chosen), "n_frames": len(true_all), "action_names": list(names),
        "action_mse": float(np.mean(err**2)), "action_mae": float(np.mean(np.abs(err))),
        "action_mse_per_dim": np.mean(err**2, 0).tolist(), "action_mae_per_dim": np.mean(np.abs(err), 0).tolist(),
        "mean_action_mse": float(np.mean(base**2)), "mean_action_mse_per_dim": np.mean(base**2, 0).tolist(),
        "labelling": f"chunks of {idm.cfg.horizon} at t = 0, {idm.cfg.horizon}, ...; state known at frame 0 only",
        "replay": {"true_actions": rate("success_true"), "idm_actions": rate("success_idm"),
                   "max_state_error_true": max(e["max_state_error_true"] for e in per_episode),
                   "mean_end_state_error_idm": float(np.mean([e["end_state_error_idm"] for e in per_episode]))},
        "episodes": per_episode, "wall_s": time.perf_counter() - t_start, "created": now(),
        "code": code_version(), "environment": environment_info(),
    }
    with atomic_directory(out, overwrite=out.exists()) as tmp:
        atomic_write_json(tmp / "results.json", results)
    return results


def replay_episode(env: MetaWorldEnv, job: tuple[int, np.ndarray, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Replay recorded and labelled actions open loop from ``reset(seed)``.

    job = (env seed, recorded actions (T, Da), labelled actions (T, Da), recorded states (T, Ds)).
    Returns {"seed", "steps" (T), "success_true", "success_idm" (``info["success"]`` at any
    step), "max_state_error_true" (max |replayed - recorded state| over the recorded replay, in
    state units: metres and gripper opening), "end_state_error_idm" (the same at the last frame
    for the labelled replay: how far open-loop labels drift)}.
    """
    seed, true_actions, idm_actions, states = job
    out: dict[str, Any] = {"seed": seed, "steps": len(true_actions)}
    for key, actions in (("true", true_actions), ("idm", idm_actions)):
        obs = env.reset(seed)
        replayed, success = [obs.state], False
        for a in actions:
            obs = env.step(a)
            replayed.append(obs.state)
            success = success or obs.success
        out[f"success_{key}"] = bool(success)
        if key == "true":
            out["max_state_error_true"] = float(np.abs(np.stack(replayed[:len(states)]) - states).max())
        else:  # how far open-loop labels drift: the state at the last recorded frame
            out["end_state_error_idm"] = float(np.abs(replayed[len(states) - 1] - states[-1]).max())
    return out
