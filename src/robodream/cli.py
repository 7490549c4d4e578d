"""The ``robodream`` command line: one verb per pipeline step. Logic lives in the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer

from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, user_errors

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="robodream: robot world models — data, world-action policies, evaluation, benchmarks.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model (tokenizer, policy, world model, inverse-dynamics model).")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a trained model.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table and write JSON.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

# ----------------------------------------------------------------------------- collect
def collect(
    overrides: dict,
    out: Annotated[Path, typer.Option(help="output LeRobotDataset v3.0 directory")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset at --out")] = False,
    workers: Annotated[int, typer.Option(help="rollout processes, each with its own env (same dataset for any N)")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="run the workers on the Ray cluster at host:port")] = None,
    config: Annotated[Optional[Path], typer.Option(help="a JSON CollectConfig (or a dataset's meta/robodream.json "
                                                        "\"collect\" entry) to start from")] = None,
) -> None:
    """Record scripted-expert episodes of a Meta-World task into a LeRobotDataset v3.0."""
    from robodream.config import deep_merge, from_dict, load_config_file, to_dict
    from robodream.data.collect import CollectConfig
    from robodream.data.collect import collect as run_collect
    from robodream.errors import ConfigError

    if "task" not in overrides and config is None:
        raise ConfigError("--task is required (e.g. --task push-v3; robodream tasks lists them)")
    base = to_dict(CollectConfig())
    if config is not None:
        file = load_config_file(config)
        base = deep_merge(base, file.get("collect", file))
    cfg = from_dict(CollectConfig, deep_merge(base, overrides))
    res = run_collect(cfg, out, overwrite=overwrite, workers=workers, ray_address=ray_address)
    print_table(f"collect {cfg.task}", ["kept", "discarded", "mean length", "seeds", "dataset"],
                [[res.kept, res.discarded, res.mean_length, f"{res.seeds[0]}..{res.seeds[-1]}", str(res.path)]])


@app.command()
def tasks() -> None:
    """List the 50 Meta-World task names."""
    from robodream.envs.meta_world import task_names

    for t in task_names():
        out_console.print(t)


# ----------------------------------------------------------------------------- eval
def _shift_help() -> dict[str, str]:
    from robodream.config import field_comments
    from robodream.envs.shift import ShiftConfig

    return field_comments(ShiftConfig)  # the help of collect's generated --appearance etc., declared once


_SHIFT_HELP = _shift_help()
_MODE_HELP = ("action_only, with_video or joint; a RAMP-conditioned policy: efficient (no future latent) or standard "
              "(one world-model step predicts z)")
_WORLD_MODEL_HELP = "world-model run of --mode standard's z (default: the one recorded in the policy run)"


@eval_app.command("policy")
@user_errors
def eval_policy_cmd(
    policy: Annotated[Path, typer.Option(help="trained policy run directory")],
    task: Annotated[str, typer.Option(help="Meta-World task, e.g. push-v3")],
    episodes: Annotated[int, typer.Option(help="closed-loop rollouts")] = 50,
    out: Annotated[Path, typer.Option(help="output directory")] = Path("outputs/eval"),
    seed_start: Annotated[Optional[int], typer.Option(help="first evaluation env seed")] = None,
    max_steps: Annotated[int, typer.Option(help="episode step limit")] = 500,
    videos: Annotated[int, typer.Option(help="rollouts saved as MP4")] = 3,
    mode: Annotated[Optional[str], typer.Option(help=_MODE_HELP)] = None,
    world_model: Annotated[Optional[Path], typer.Option(help=_WORLD_MODEL_HELP)] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        help="torch threads of each rollout process (default: 2 with one worker, 1 with several)")] = None,
    compile: Annotated[bool, typer.Option(help="torch.compile the chunk sampling")] = False,
    n_action_steps: Annotated[Optional[int], typer.Option(
        help="actions executed per predicted chunk (receding horizon K; default: the run's)")] = None,
    workers: Annotated[int, typer.Option(help="rollout processes, each with its own env and policy")] = 1,
    ray_address: Annotated[Optional[str], typer.Option(help="run the workers on the Ray cluster at host:port")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation at --out")] = False,
    appearance: Annotated[str, typer.Option(help=_SHIFT_HELP["appearance"])] = "default",
    camera_shift: Annotated[str, typer.Option(help=_SHIFT_HELP["camera_shift"])] = "none",
    appearance_scale: Annotated[float, typer.Option(help=_SHIFT_HELP["appearance_scale"])] = 1.0,
    camera_shift_scale: Annotated[float, typer.Option(help=_SHIFT_HELP["camera_shift_scale"])] = 1.0,
    shift_seed: Annotated[int, typer.Option(help=_SHIFT_HELP["seed"])] = 0,
) -> None:
    """Closed-loop rollouts on seeds never used for training; writes results.json, MP4s, a PNG."""
    from robodream.envs.shift import ShiftConfig
    from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy

    shift = ShiftConfig(appearance=appearance, camera_shift=camera_shift, appearance_scale=appearance_scale,
                        camera_shift_scale=camera_shift_scale, seed=shift_seed)

    if threads is None and workers == 1 and ray_address is None:
        threads = 2
    r = evaluate_policy(policy, task, episodes, out, seed_start=DEFAULT_EVAL_SEED if seed_start is None else seed_start,
                        max_steps=max_steps, n_videos=videos, mode=mode, device=device, threads=threads,
                        compile=compile, n_action_steps=n_action_steps, workers=workers, ray_address=ray_address,
                        overwrite=overwrite, shift=shift, world_model=world_model)
    print_table(f"eval {task} ({r['mode']})", ["success", "95% CI", "episodes", "steps to success",
                                               "latency p50 ms", "latency p90 ms", "out"],
                [[r["success_rate"], f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", r["n_episodes"],
                  r["mean_steps_to_success"], r["latency_ms_p50"], r["latency_ms_p90"], str(out)]])


# ----------------------------------------------------------------------------- rollout
def rollout(
    overrides: dict,
    policy: Annotated[Path, typer.Option(help="trained policy run directory")],
    task: Annotated[str, typer.Option(help="Meta-World task the policy was trained on, e.g. push-v3")],
    out: Annotated[Path, typer.Option(help="output LeRobotDataset v3.0 directory")],
    episodes: Annotated[int, typer.Option(help="rollouts, all kept (failures too)")] = 10,
    takeover: Annotated[str, typer.Option(help="who acts when the policy goes wrong: expert (scripted, "
                                               "automatic trigger), keyboard (a person) or none")] = "expert",
    seed: Annotated[Optional[int], typer.Option(help="first env seed (default: above the policy's training "
                                                     "and the evaluation seeds, from 2000000)")] = None,
    max_steps: Annotated[int, typer.Option(help="episode step limit (an episode also ends at success)")] = 500,
    fail_penalty: Annotated[float, typer.Option(help="C_fail of next.reward on a failed episode's last step")] = 500.0,
    workers: Annotated[int, typer.Option(help="rollout processes, each with its own env, policy and source "
                                              "(same dataset for any N)")] = 1,
    mode: Annotated[Optional[str], typer.Option(help=_MODE_HELP)] = None,
    world_model: Annotated[Optional[Path], typer.Option(help=_WORLD_MODEL_HELP)] = None,
    n_action_steps: Annotated[Optional[int], typer.Option(
        help="actions executed per predicted chunk (receding horizon K; default: the run's)")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[Optional[int], typer.Option(
        help="torch threads of each rollout process (default: 2 with one worker, 1 with several)")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset at --out")] = False,
) -> None:
    """Policy rollouts with takeover (HG-DAgger), recorded as a dataset with intervention flags."""
    from robodream.config import from_dict
    from robodream.rl.rollout import record_rollouts
    from robodream.rl.takeover import TakeoverConfig

    cfg = from_dict(TakeoverConfig, {**overrides, "source": takeover})
    if threads is None and workers == 1:
        threads = 2
    r = record_rollouts(policy, task, episodes, out, takeover=cfg, seed=seed, max_steps=max_steps,
                        fail_penalty=fail_penalty, mode=mode, n_action_steps=n_action_steps, device=device,
                        threads=threads, workers=workers, overwrite=overwrite, world_model=world_model)
    print_table(f"rollout {task}, takeover {cfg.source}, seeds {r['seeds'][0]}..{r['seeds'][-1]}",
                ["episodes", "success", "95% CI", "mean intervention fraction", "takeovers", "dataset"],
                [[r["n_episodes"], r["success_rate"], f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]",
                  r["mean_intervention_fraction"], sum(e["interventions"] for e in r["episodes"]), str(out)]])

def main() -> None:  # pragma: no cover
    sys.exit(app())


# ----------------------------------------------------------------------------- bench
@bench_app.command("policy")
@user_errors
def bench_policy_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/policy.json"),
    repeats: Annotated[int, typer.Option(help="timed repeats per mode")] = 50,
    train_steps: Annotated[int, typer.Option(help="timed training steps")] = 10,
    config: Annotated[Optional[Path], typer.Option(help="a policy run's config.json (default: default model)")] = None,
    threads: Annotated[int, typer.Option(help="torch threads for the latency measurements")] = 2,
    compile: Annotated[bool, typer.Option(help="also time the torch.compile'd action-only and joint models")] = True,
) -> None:
    """Latency per action chunk (action-only vs with-video vs joint) and training throughput."""
    from robodream.bench.policy_bench import bench_policy
    from robodream.config import from_dict, load_config_file
    from robodream.policy.configuration import PolicyConfig
    from robodream.utils.io import atomic_write_json

    cfg = from_dict(PolicyConfig, load_config_file(config).get("model", {}), where="model", legacy=True) \
        if config else PolicyConfig()
    r = bench_policy(cfg, repeats=repeats, train_steps=train_steps, threads=threads, compile=compile)
    atomic_write_json(out, r)
    print_table(f"policy inference, batch 1, {r['threads']} thread(s), median of {r['repeats']}",
                ["mode", "p50 ms/chunk", "p90 ms/chunk", "x slower than action-only"],
                [[m, r[f"{m}_p50_ms"], r[f"{m}_p90_ms"], r[f"{m}_p50_ms"] / r["action_only_p50_ms"]]
                 for m in ("action_only", "action_only_compiled", "action_only_nocache", "with_video", "joint",
                           "joint_compiled")
                 if f"{m}_p50_ms" in r])
    print_table("policy training", ["samples/s", "step s", "batch", "precision", "peak RSS MiB"],
                [[r["train_samples_per_s"], r["train_step_s_p50"], r["train_batch_size"], r["train_precision"],
                  r["train_peak_rss_mib"]]])
    compiled = (f", compiled vs compiled {r['speedup_vs_joint_compiled']:.1f}x"
                if "speedup_vs_joint_compiled" in r else "")
    out_console.print(f"speedup vs joint: {r['speedup_vs_joint']:.1f}x eager{compiled}; written to {out}")


def _summary_table(title: str, summary: dict) -> None:
    rows = [[task, r["success_rate"], f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", r["n_episodes"],
             r["latency_ms_p50"], r["latency_ms_p90"], r["out"]] for task, r in summary["per_task"].items()]
    rows.append(["mean", summary["mean_success_rate"], "", "", "", "", ""])
    print_table(title, ["task", "success", "95% CI", "episodes", "latency p50 ms", "latency p90 ms", "outputs"], rows)


@bench_app.command("success")
@user_errors
def bench_success_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/success.json"),
    work: Annotated[Path, typer.Option(help="working directory (datasets, runs, evaluations)")] = Path("outputs/bench_success"),
    ablation: Annotated[bool, typer.Option(help="also train and evaluate the video_stride=0 ablation")] = True,
    recipe: Annotated[Optional[Path], typer.Option(help="JSON overriding recipe fields")] = None,
) -> None:
    """The success-rate recipe: 50 demos/task, one multi-task policy, 50 evaluation episodes/task.

    Resumable: run the same command again to continue after an interruption.
    """
    from robodream.config import load_config_file
    from robodream.pipeline import SUCCESS_BENCH, recipe_from_json, run_recipe
    from robodream.utils.io import atomic_write_json
    from robodream.utils.run import code_version, environment_info, now

    rec = recipe_from_json(load_config_file(recipe) if recipe else {}, SUCCESS_BENCH)
    main = run_recipe(rec, work, log=log)
    result = {"benchmark": "success", "created": now(), "code": code_version(), "environment": environment_info(),
              "per_task": {t: r["success_rate"] for t, r in main["per_task"].items()},
              "mean_success_rate": main["mean_success_rate"], "min_success_rate": main["min_success_rate"],
              "training_s": main["training_s"], "details": main}
    _summary_table(f"GigaWorld-Policy (video_stride={rec.policy.video_stride})", main)
    if ablation:
        abl = run_recipe(rec, work, log=log, policy_name="policy_no_video",
                         policy_overrides={"video_stride": 0})
        result["ablation_no_video"] = {"per_task": {t: r["success_rate"] for t, r in abl["per_task"].items()},
                                       "mean_success_rate": abl["mean_success_rate"],
                                       "training_s": abl["training_s"], "details": abl}
        _summary_table("ablation: video_stride=0 (plain flow-matching BC)", abl)
    atomic_write_json(out, result)
    out_console.print(f"written to {out}")


@bench_app.command("data-engine")
@user_errors
def bench_data_engine_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write; an existing one of the same settings is merged into")] = Path("benchmarks/data_engine.json"),
    work: Annotated[Path, typer.Option(help="working directory (datasets, runs, evaluations)")] = Path("outputs/bench_data_engine"),
    config: Annotated[Optional[Path], typer.Option(help="JSON overriding benchmark fields (bench.data_engine.DataEngineBench)")] = None,
    arms: Annotated[str, typer.Option(help="comma-separated arms to train and evaluate (only the stages they need run), or all")] = "all",
    quick: Annotated[bool, typer.Option(help="every stage on tiny settings (a smoke test, not a measurement)")] = False,
) -> None:
    """Does generated data improve a policy under shift? Arms real, real+augmentation, real+transfer,
    real+dreams, oracle and real_rendered (the transfer copies rendered by the simulator), evaluated
    at default, appearance-shift and camera-shift conditions.

    Resumable in stages: run the same command again to continue after an interruption. With
    --arms, a run measures some arms and merges them into --out, so the table can be built over
    several sessions.
    """
    from robodream.bench.data_engine import ALL_ARMS, CONDITIONS, bench_config, parse_arms, run_data_engine_bench
    from robodream.config import load_config_file
    from robodream.errors import ConfigError
    from robodream.utils.io import atomic_write_json, read_json

    cfg = bench_config(load_config_file(config) if config else None, quick=quick)
    chosen = parse_arms(arms)
    previous = None
    if out.is_file():
        try:
            previous = read_json(out)
        except ValueError as e:
            raise ConfigError(f"{out} is not valid JSON ({e}); write to another --out") from None
        if not isinstance(previous, dict) or previous.get("benchmark") != "data-engine":
            raise ConfigError(f"{out} is not a data-engine result; write to another --out")
    r = run_data_engine_bench(cfg, work, arms=chosen, previous=previous, log=log)
    atomic_write_json(out, r)
    ms = r["mean_success"]
    print_table(f"data engine: mean success over {', '.join(r['tasks'])}", ["arm", *CONDITIONS],
                [[a, *[ms[a].get(c) for c in CONDITIONS]] for a in ALL_ARMS])

    def pair(a, b, fmt="{:.2f}"):
        return None if a is None else f"{fmt.format(a)} ({fmt.format(b)})"

    tp, tb = r["transfer_psnr_db"] or {}, r["transfer_baseline_psnr_db"] or {}
    print_table("generators and derived measures", ["measure", "value"], [
        *[[f"{k} transfer PSNR (baseline) dB", pair(tp[k], tb[k])] for k in tp],
        ["IDM replay success (true actions)", pair(r["idm_replay_success"], r["true_action_replay_success"])],
        *[[f"gap closed by transfer vs {ref} (appearance, camera)", f"{g['appearance_shift']}, {g['camera_shift']}"]
          for ref, g in (("oracle", r["gap_closed"]), ("real_rendered", r["gap_closed_rendered"]))],
        ["real's drop under shift (appearance, camera)", f"{r['real_drop']['appearance_shift']}, "
                                                         f"{r['real_drop']['camera_shift']}"],
        ["arms not measured yet", ", ".join(r["missing"]) or "none"],
        ["wall h (all stages, all invocations)", r["wall_s"] / 3600], ["peak RSS GiB", r["peak_rss_gib"]]])
    out_console.print(f"written to {out}")


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="working directory for all outputs")] = Path("outputs/demo"),
    recipe: Annotated[Optional[Path], typer.Option(help="JSON overriding recipe fields")] = None,
) -> None:
    """The main job on the embedded default: collect -> tokenizer -> policy -> closed-loop evaluation."""
    import time as _time

    from robodream.config import load_config_file
    from robodream.pipeline import DEMO, recipe_from_json, run_recipe

    t0 = _time.perf_counter()
    rec = recipe_from_json(load_config_file(recipe) if recipe else {}, DEMO)
    summary = run_recipe(rec, out, log=log)
    _summary_table(f"robodream demo: GigaWorld-Policy on {len(rec.tasks)} Meta-World tasks", summary)
    out_console.print(f"total {(_time.perf_counter() - t0) / 60:.1f} min; datasets {out / 'data'}, "
                      f"tokenizer {out / 'tokenizer'}, policy {out / 'policy'}, evaluations {out / 'eval' / 'policy'}")


@bench_app.command("cameras")
@user_errors
def bench_cameras_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/cameras.json"),
    tasks: Annotated[Optional[str], typer.Option(help="comma-separated tasks (default: the 5 bench tasks)")] = None,
    episodes: Annotated[int, typer.Option(help="expert episodes per task")] = 3,
    image_size: Annotated[int, typer.Option()] = 64,
) -> None:
    """Pixels of task objects and goal markers seen by each camera; recommends a camera pair."""
    from robodream.bench.cameras_bench import bench_cameras
    from robodream.envs.meta_world import check_task
    from robodream.pipeline import BENCH_TASKS
    from robodream.utils.io import atomic_write_json

    task_list = tuple(check_task(t) for t in tasks.split(",")) if tasks else BENCH_TASKS
    r = bench_cameras(task_list, episodes=episodes, image_size=image_size)
    atomic_write_json(out, r)
    print_table(f"camera visibility at {image_size}x{image_size} (mean over tasks)",
                ["camera", "object px", "object visible", "goal px", "goal visible"],
                [[cam, *[float(np.mean([x[k] for x in r["rows"] if x["camera"] == cam and x[k] is not None]))
                         for k in ("object_px", "object_visible", "goal_px", "goal_visible")]]
                 for cam in dict.fromkeys(x["camera"] for x in r["rows"])])
    print_table("best camera pairs", ["cameras", "object & goal seen by both", "object + goal px"],
                [[" + ".join(p["cameras"]), p["both_visible"], p["pixels"]] for p in r["pairs"][:5]])
    out_console.print(f"recommended: {' + '.join(r['best_pair'])}; written to {out}")


# ----------------------------------------------------------------------------- systems
#: Modules whose ``register(apps)`` adds a system's verbs (see :mod:`robodream.utils.cli`).
SYSTEM_CLIS = ("robodream.tokenizer.cli", "robodream.policy.cli", "robodream.world_model.cli",
               "robodream.gaussians.cli", "robodream.viz.cli", "robodream.idm.cli",
               "robodream.transfer.cli", "robodream.rl.cli", "robodream.gwm.cli", "robodream.twin.cli")


def _register_systems() -> None:
    import importlib

    from robodream.data.collect import CollectConfig
    from robodream.rl.takeover import TakeoverConfig

    app.command("collect")(user_errors(config_verb(CollectConfig)(collect)))
    app.command("rollout")(user_errors(config_verb(TakeoverConfig, exclude=("source",))(rollout)))
    apps = Apps(root=app, train=train_app, eval=eval_app, bench=bench_app)
    for name in SYSTEM_CLIS:
        importlib.import_module(name).register(apps)


_register_systems()
