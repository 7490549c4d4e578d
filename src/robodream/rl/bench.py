"""``robodream bench rl``: RAMP against RECAP, AWR and HG-DAgger in one harness (issue 15, item 7).

:func:`run_rl_bench` runs :func:`~robodream.rl.loop.run_ramp_loop` for every method in
``WORK/<method>`` with the same settings, data, rounds, rollouts and evaluation seeds, then
measures the value world model (:func:`value_ablation`), and returns the benchmark JSON
(``benchmarks/rl.json``). Its method keys are the issue's: ``ramp`` (standard mode, with
``z``), ``ramp_efficient`` (the same policies in efficient mode, no ``z``), ``recap``, ``awr``
and ``hg_dagger`` (the CLI's ``hgdagger``; :data:`JSON_NAMES`).

Round 0 and most of round 1 do not depend on the method. Every method starts from one base
policy, plain BC on the demos, trained and evaluated first in ``WORK/base`` (a loop of 0 rounds;
the issue's ``base_success``), whose round-1 rollouts (``WORK/base/round_1/rollouts``, no mode)
are recorded there too; each loop copies them, and the base policy as its round 0. RAMP and
RECAP add their conditioning when round 1 fine-tunes the base. The value world models of rounds
0 and 1 and round 1's labels are computed by the first world-model method to reach them and
copied by the others (RECAP and AWR without ``z``, which only RAMP's policy reads)
(:func:`~robodream.rl.loop.pull_shared`). So two ``bench rl --methods ...`` processes can share
``WORK`` (the second waits on a lock while the first trains the base and rolls it out).

Value model (GigaBrain-0.5M*'s Kendall tau, state+value 0.80 vs value-only 0.73). With R the
last round of the ramp loop (R >= 1), round R-1's state+value world model (trained on the
demos and the rollouts of rounds < R) and a value-only world model (``value_frame="value"``,
otherwise the same config, trained on exactly the same data with the same steps and, with
``warm_start``, the same chain of warm starts: ``WORK/ramp/value_only/round_j``) predict the
values of round R's rollouts, which neither trained on; both are scored by
:func:`~robodream.world_model.evaluate.evaluate_value` (``eval world-model``'s
``value_kendall_tau``) on the same episodes (at most :data:`KENDALL_EPISODES`) and noise, with
the loop's ``value_steps`` (the values relabel uses) (``WORK/ramp/value_eval/round_R/``).
Every stage is resumable, as the loop's.
"""

from __future__ import annotations

import fcntl
from dataclasses import replace
from pathlib import Path
from typing import Any

from robodream.config import to_dict
from robodream.errors import ConfigError
from robodream.pipeline import training_seconds
from robodream.rl.loop import (
    METHODS,
    RampLoopConfig,
    infer_tasks,
    record_round_rollouts,
    round_data,
    run_ramp_loop,
    train_round_world_model,
)
from robodream.utils.io import atomic_write_json, read_json
from robodream.utils.run import code_version, environment_info, now, torch_threads

#: The benchmark JSON's name of each loop method (the issue's names).
JSON_NAMES = {"ramp": "ramp", "recap": "recap", "awr": "awr", "hgdagger": "hg_dagger"}
#: WORK's directory of the base policy: a loop of 0 rounds (plain BC on the demos), copied as round 0 by every method.
BASE_DIR = "base"
#: Held-out rollout episodes (round-robin over the tasks) of the Kendall tau, as ``eval world-model``'s default.
KENDALL_EPISODES = 20
#: The bench's tasks without ``--data``: those whose base policy on 10 demos succeeds 20-60% of the
#: time (measured over 5 candidates, benchmarks/rl_task_selection.json), and the demos per task.
RL_TASKS = ("pick-place-v3", "push-v3", "peg-insert-side-v3")
RL_DEMOS = 10


def quick_loop_config(cfg: RampLoopConfig) -> RampLoopConfig:
    """``cfg`` on tiny settings that finish in about a minute per method on 2 CPU cores (a smoke
    test of the harness, never a measurement): 1 round, 2 rollouts and 2 evaluation episodes of
    at most 30 steps (or ``cfg.max_steps`` if lower) per task, 32-wide one-layer models trained for a few steps."""
    wm = replace(cfg.world_model, dim=24, n_heads=2, depth=1, n_future_frames=2, frame_stride=2, window=(0, 3, 3),
                 text_encoder="")
    pol = replace(cfg.policy, dim=32, depth=1, horizon=8, n_action_steps=4, video_stride=4, action_expert_dim=16)
    return replace(cfg, rounds=1, rollouts=2, eval_episodes=2, max_steps=min(cfg.max_steps, 30), videos=1, value_steps=2, world_model=wm,
                   world_model_train=replace(cfg.world_model_train, steps=2, batch_size=4, warmup_steps=1,
                                             val_every=0, checkpoint_every=1),
                   policy=pol, policy_train=replace(cfg.policy_train, steps=3, batch_size=8, warmup_steps=1,
                                                    val_every=0, checkpoint_every=1),
                   round_world_model_steps=0, round_policy_steps=0)


def bench_inputs(cfg: RampLoopConfig, work: Path, *, demos: int = RL_DEMOS, quick: bool = False,
                 log=print) -> RampLoopConfig:
    """``cfg`` with the bench's own demos and tokenizer (see :func:`run_rl_bench`): resumable
    stages in ``work/data`` and ``work/tokenizer``.

    Raises:
        ConfigError: ``demos`` < 1, an unknown task, or only one of ``--data`` and ``--tokenizer``.
    """
    from robodream.pipeline import Recipe, demos_and_tokenizer
    from robodream.tokenizer.model import TokenizerConfig

    if cfg.data or cfg.tokenizer:
        raise ConfigError("--data and --tokenizer go together (demos and a tokenizer run of them); or pass neither "
                          "and the bench collects its own demos and trains the tokenizer")
    if demos < 1:
        raise ConfigError(f"--demos must be >= 1, got {demos}")
    recipe = Recipe(name="rl", tasks=cfg.tasks or RL_TASKS, demos_per_task=demos, workers=cfg.workers)
    if quick:
        recipe = replace(recipe, image_size=32, tokenizer=TokenizerConfig(channels=(8, 16, 32)),
                         tokenizer_train=replace(recipe.tokenizer_train, steps=2, batch_size=8, val_every=0,
                                                 checkpoint_every=1))
    datasets, tok, _ = demos_and_tokenizer(recipe, work, log=log)
    return replace(cfg, data=tuple(datasets), tokenizer=str(tok), tasks=recipe.tasks)


def value_ablation(cfg: RampLoopConfig, ramp_dir: Path, *, log=print) -> dict[str, Any] | None:
    """State+value vs value-only world model on the held-out rollouts of a finished ramp loop
    (see the module docstring); None without a round >= 1.

    Args:
        cfg: the ramp loop's config (``cfg.rounds`` rounds done in ``ramp_dir``).

    Returns:
        ``{"state_value": tau, "value_only": tau, "round", "held_out": [datasets],
        "state_value_eval": {...}, "value_only_eval": {...}, "timings_s"}``: the evaluations are
        :func:`~robodream.world_model.evaluate.evaluate_value`'s results (tau is None where
        fewer than two frames fit a clip); ``timings_s``: the value-only runs' training loops
        and the two evaluations, wall seconds.
    """
    from robodream.world_model.evaluate import evaluate_value

    R = cfg.rounds
    if R < 1:
        return None
    timings = {"value_only_train": 0.0}
    value_only = replace(cfg.world_model, value_frame="value")
    for j in range(R) if cfg.warm_start else [R - 1]:  # the same chain of runs as the ramp loop's world models
        run = ramp_dir / "value_only" / f"round_{j}"
        prev = ramp_dir / "value_only" / f"round_{j - 1}" if j >= 1 else None
        train_round_world_model(cfg, round_data(cfg, ramp_dir, j), j, run, prev, model=value_only, log=log)
        timings["value_only_train"] += training_seconds(run)
    held = [str(ramp_dir / f"round_{R}" / "rollouts" / t) for t in cfg.tasks]
    out: dict[str, Any] = {"round": R, "held_out": held}
    for name, run in (("state_value", ramp_dir / f"round_{R - 1}" / "world_model"),
                      ("value_only", ramp_dir / "value_only" / f"round_{R - 1}")):
        file = ramp_dir / "value_eval" / f"round_{R}" / f"{name}.json"
        if file.is_file():
            r = read_json(file)
        else:
            log(f"bench rl: Kendall tau of the {name} world model {run} on round {R}'s rollouts -> {file}")
            r = evaluate_value(run, held, max_episodes=KENDALL_EPISODES, n_steps=cfg.value_steps or None,
                               seed=cfg.seed)
            file.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(file, r)
        out[name] = r["value_kendall_tau"]
        out[f"{name}_eval"] = r
        timings[f"{name}_eval"] = r["wall_s"]
    out["timings_s"] = timings
    return out


def run_rl_bench(cfg: RampLoopConfig, work: str | Path, *, methods: tuple[str, ...] = METHODS, quick: bool = False,
                 demos: int = RL_DEMOS, shared_threads: int = 0, log=print) -> dict[str, Any]:
    """Run the loop of every method in ``work/<method>`` with the same settings, data and budget.

    Without ``cfg.data`` the bench makes its own: ``demos`` expert episodes per task of
    ``cfg.tasks`` (default :data:`RL_TASKS`) in ``work/data/<task>`` and a tokenizer trained on
    them in ``work/tokenizer`` (:func:`~robodream.pipeline.demos_and_tokenizer`, the main job's
    defaults; ``quick``: 32-pixel images and a two-step tokenizer).

    The stages every method shares (those inputs, the base policy and its round-1 rollouts) run
    first, under a file lock in ``work`` (a second bench process on the same ``work`` waits for
    them), with ``shared_threads`` torch threads (0: every core; the other process is idle).

    Returns:
        the benchmark JSON (method keys: :data:`JSON_NAMES` and ``ramp_efficient``, in the
        order of ``methods``):

        - ``tasks``; ``base_success``: mean success of the base policy, plain BC on the demos
          alone (``WORK/base``, every method's round 0), and ``base_per_task`` (Wilson 95% CIs);
        - ``success_by_round`` ``{method: [mean success per round]}``, ``final_success``
          ``{method: mean}``, ``per_task`` ``{method: {task: {success_rate, n_episodes,
          ci95}}}`` (last round, Wilson 95% CI);
        - ``takeover_steps_by_round`` ``{method: [expert intervention steps per round]}`` (round
          0 has no rollouts: 0; ``ramp_efficient`` has no rollouts of its own);
        - ``kendall_tau`` ``{state_value, value_only}`` (:func:`value_ablation`; None without
          ``ramp`` or a round >= 1) and ``kendall_tau_detail`` (its evaluations);
        - ``wall_s``: the sum of the base's, every method's and round's stage timings
          (``timings_s`` of the round metrics: rollouts, relabel, evaluations, and the
          world-model and policy training loops' logged time, without frame encoding; a copied
          stage counts once, where it ran), the base's round-1 rollouts and the value
          ablation's; the time of the stages as they ran, across resumes;
        - ``benchmark = "rl"``, created, ``code``, environment, quick, ``methods`` (CLI names),
          ``config`` (the settings, without ``method``), and ``results`` per CLI method: its
          round curve (``mean_success``), final per-task success, rollouts and intervention
          steps used, and RUN path.

    Raises:
        ConfigError: an unknown method, or bad settings (as :func:`run_ramp_loop`).
    """
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        raise ConfigError(f"--methods must name some of {', '.join(METHODS)}, got {', '.join(methods) or 'none'}")
    if quick:
        cfg = quick_loop_config(cfg)
    if cfg.data and not cfg.tasks:
        cfg = replace(cfg, tasks=infer_tasks(cfg.data))
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    # the stages every method shares, once, under a lock (parallel bench processes wait for them):
    # demos and tokenizer (without --data / --tokenizer), the base policy (every method's round 0)
    # and its round-1 rollouts
    with open(work / ".base.lock", "w") as lock, torch_threads(shared_threads):
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not cfg.data or not cfg.tokenizer:
            cfg = bench_inputs(cfg, work, demos=demos, quick=quick, log=log)
        base_cfg = replace(cfg, method="hgdagger", rounds=0)
        log(f"bench rl: the base policy (plain BC on the demos, every method's round 0) -> {work / BASE_DIR}")
        base = run_ramp_loop(base_cfg, work / BASE_DIR, log=log)
        if cfg.rounds >= 1:  # round 1's rollouts are the base policy's, the same for every method
            base_rollouts = record_round_rollouts(base_cfg, work / BASE_DIR, 1, log=log)
    summaries: dict[str, dict[str, Any]] = {}
    for m in methods:
        log(f"bench rl: method {m} -> {work / m}")
        # round 0's base policy comes from WORK/base, its world model from a sibling that finished it
        siblings = (work / BASE_DIR, *(work / d for d in METHODS if d != m))
        summaries[m] = run_ramp_loop(replace(cfg, method=m), work / m, log=log, share_from=siblings)
    kendall = value_ablation(replace(cfg, method="ramp"), work / "ramp", log=log) if "ramp" in summaries else None

    curves: dict[str, tuple[list[float], dict[str, Any]]] = {}  # JSON method -> (mean per round, final per task)
    for m, s in summaries.items():
        curves[JSON_NAMES[m]] = (s["mean_success"], s["final"])
        if m == "ramp":
            curves["ramp_efficient"] = (s["mean_success_efficient"], s["final_efficient"])
    # every stage once: copied stages count 0 s in the loops that copied them
    wall = sum(t for s in (base, *summaries.values()) for r in s["rounds"] for t in r["timings_s"].values())
    if cfg.rounds >= 1:
        wall += sum(read_json(work / BASE_DIR / "round_1" / "rollouts" / t / "meta" / "results.json").get("wall_s", 0.0)
                    for t in base_rollouts)
    settings = to_dict(cfg)
    settings.pop("method")
    return {
        "benchmark": "rl", "created": now(), "code": code_version(), "environment": environment_info(),
        "quick": quick, "methods": list(methods), "tasks": list(cfg.tasks),
        "base_success": base["mean_success"][0],
        "base_per_task": {t: {k: base["final"][t][k] for k in ("success_rate", "n_episodes", "ci95")} for t in cfg.tasks},
        "success_by_round": {n: ys for n, (ys, _) in curves.items()},
        "final_success": {n: ys[-1] for n, (ys, _) in curves.items()},
        "per_task": {n: {t: {k: final[t][k] for k in ("success_rate", "n_episodes", "ci95")} for t in cfg.tasks}
                     for n, (_, final) in curves.items()},
        "takeover_steps_by_round": {JSON_NAMES[m]: s["intervention_steps_by_round"] for m, s in summaries.items()},
        "kendall_tau": {k: kendall[k] for k in ("state_value", "value_only")} if kendall else None,
        "kendall_tau_detail": kendall,
        "wall_s": wall + (sum(kendall["timings_s"].values()) if kendall else 0.0),
        "config": settings,
        "results": {m: {"mean_success": s["mean_success"], "success": s["success"], "final": s["final"],
                        "rollouts": s["rollouts"], "intervention_steps": s["intervention_steps"],
                        "run": str(work / m)} for m, s in summaries.items()},
    }
