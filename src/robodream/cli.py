"""The ``robodream`` command line: one verb per pipeline step. Logic lives in the library."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from robodream.errors import RobodreamError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="robodream: robot world models — data, world-action policies, evaluation, benchmarks.")
train_app = typer.Typer(no_args_is_help=True, help="Train a model (tokenizer, policy).")
eval_app = typer.Typer(no_args_is_help=True, help="Evaluate a trained model.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks that print a table and write JSON.")
app.add_typer(train_app, name="train")
app.add_typer(eval_app, name="eval")
app.add_typer(bench_app, name="bench")

out_console = Console()
err_console = Console(stderr=True)


def user_errors(fn):
    """Print a robodream error as one line on stderr and exit with status 2 (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except RobodreamError as e:
            err_console.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _load_json(path: Optional[Path]) -> dict:
    if path is None:
        return {}
    from robodream.errors import ConfigError

    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from e


# Options shared by the training verbs (policy, tokenizer, world model); the default value
# stays at each parameter.
TrainDataOpt = Annotated[list[Path], typer.Option(help="dataset directory (repeat for several tasks)")]
TokenizerRunOpt = Annotated[Path, typer.Option(help="trained tokenizer run directory")]
RunOutOpt = Annotated[Path, typer.Option(help="run directory to create")]
StepsOpt = Annotated[Optional[int], typer.Option(help="optimiser steps")]
BatchSizeOpt = Annotated[Optional[int], typer.Option()]
SeedOpt = Annotated[int, typer.Option()]
TrainDeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda")]
ConfigOpt = Annotated[Optional[Path], typer.Option(help="a run's config.json to start from")]
ResumeOpt = Annotated[bool, typer.Option(help="continue the run in --out from its last checkpoint")]


def _train_config(base: dict, default, *, seed: int, device: str, steps: Optional[int], batch_size: Optional[int]):
    """A run's TrainConfig: ``default`` < ``--config`` file's "train" < command-line options."""
    from robodream.train.loop import TrainConfig
    from robodream.utils.run import from_dict

    train = from_dict(TrainConfig, {**default.__dict__, **base.get("train", {})})
    train.seed, train.device = seed, device
    if steps is not None:
        train.steps = steps
    if batch_size is not None:
        train.batch_size = batch_size
    return train


def _model_config(base: dict, cls, overrides: dict):
    """A model config: ``--config`` file's "model" with the command-line options that were given."""
    from robodream.utils.run import from_dict

    model = from_dict(cls, base.get("model", {}))
    for k, v in overrides.items():
        if v is not None:
            setattr(model, k, v)
    model.__post_init__()
    return model


def print_table(title: str, columns: list[str], rows: list[list], label_column: bool = False) -> None:
    """Print a rich table to stdout; ``label_column``: never wrap or shorten the first column."""
    table = Table(title=title)
    for i, c in enumerate(columns):
        table.add_column(c, no_wrap=label_column and i == 0)
    for r in rows:
        table.add_row(*[_fmt(x) for x in r])
    out_console.print(table)


def _fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:.3g}" if abs(x) < 1000 else f"{x:.0f}"
    return "-" if x is None else str(x)


# ----------------------------------------------------------------------------- collect
@app.command()
@user_errors
def collect(
    task: Annotated[str, typer.Option(help="Meta-World task, e.g. push-v3")],
    episodes: Annotated[int, typer.Option(help="successful episodes to record")],
    out: Annotated[Path, typer.Option(help="output LeRobotDataset v3.0 directory")],
    seed: Annotated[int, typer.Option(help="first env seed (attempts use seed, seed+1, ...)")] = 0,
    image_size: Annotated[int, typer.Option(help="square image side in pixels")] = 64,
    cameras: Annotated[Optional[str], typer.Option(help="comma-separated camera names")] = None,
    keep_failures: Annotated[bool, typer.Option(help="also keep unsuccessful episodes")] = False,
    post_success_steps: Annotated[int, typer.Option(help="expert steps recorded after the first success")] = 16,
    video_codec: Annotated[str, typer.Option(help="h264 (near-lossless), h264-rgb (exact) or av1")] = "h264",
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset at --out")] = False,
) -> None:
    """Record scripted-expert episodes of a Meta-World task into a LeRobotDataset v3.0."""
    from robodream.data.collect import CollectConfig
    from robodream.data.collect import collect as run_collect
    from robodream.envs.meta_world import DEFAULT_CAMERAS

    cfg = CollectConfig(task=task, episodes=episodes, seed=seed, image_size=image_size,
                        cameras=tuple(cameras.split(",")) if cameras else DEFAULT_CAMERAS,
                        keep_failures=keep_failures, post_success_steps=post_success_steps,
                        video_codec=video_codec)
    res = run_collect(cfg, out, overwrite=overwrite)
    print_table(f"collect {task}", ["kept", "discarded", "mean length", "seeds", "dataset"],
                [[res.kept, res.discarded, res.mean_length, f"{res.seeds[0]}..{res.seeds[-1]}", str(res.path)]])


@app.command()
def tasks() -> None:
    """List the 50 Meta-World task names."""
    from robodream.envs.meta_world import task_names

    for t in task_names():
        out_console.print(t)


# ----------------------------------------------------------------------------- train
@train_app.command("tokenizer")
@user_errors
def train_tokenizer_cmd(
    data: Annotated[list[Path], typer.Option(help="dataset directory (repeat for several)")],
    out: RunOutOpt,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    latent_channels: Annotated[Optional[int], typer.Option()] = None,
    seed: SeedOpt = 0,
    device: TrainDeviceOpt = "auto",
    config: ConfigOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train the image tokenizer (conv autoencoder) on the datasets' frames; report held-out PSNR."""
    from robodream.tokenizer.model import TokenizerConfig
    from robodream.tokenizer.train import TokenizerRunConfig, default_tokenizer_train, train_tokenizer

    base = _load_json(config)
    cfg = TokenizerRunConfig(
        data=tuple(str(d) for d in data),
        model=_model_config(base, TokenizerConfig, {"latent_channels": latent_channels}),
        train=_train_config(base, default_tokenizer_train(), seed=seed, device=device, steps=steps,
                            batch_size=batch_size),
    )
    res = train_tokenizer(cfg, out, resume=resume)
    print_table("tokenizer", ["held-out PSNR (dB)", "train PSNR (dB)", "held-out frames", "steps", "run"],
                [[res["psnr_heldout"], res["psnr_train"], res["n_heldout_frames"], res["steps"], str(out)]])


@train_app.command("policy")
@user_errors
def train_policy_cmd(
    data: TrainDataOpt,
    tokenizer: TokenizerRunOpt,
    out: RunOutOpt,
    steps: StepsOpt = None,
    batch_size: BatchSizeOpt = None,
    video_stride: Annotated[Optional[int], typer.Option(help="future-frame stride S; 0 = no video (plain BC)")] = None,
    mask: Annotated[Optional[str], typer.Option(help="block_causal (GigaWorld-Policy) or full (joint)")] = None,
    horizon: Annotated[Optional[int], typer.Option(help="action chunk length H")] = None,
    action_steps: Annotated[Optional[int], typer.Option(help="actions executed per chunk K")] = None,
    dim: Annotated[Optional[int], typer.Option(help="transformer width")] = None,
    depth: Annotated[Optional[int], typer.Option(help="transformer blocks")] = None,
    action_loss_weight: Annotated[Optional[float], typer.Option(help="lambda in L_video + lambda L_action")] = None,
    action_expert_dim: Annotated[Optional[int], typer.Option(
        help="width of a separate narrow action expert (Mixture-of-Transformers); 0 = shared weights")] = None,
    seed: SeedOpt = 0,
    device: TrainDeviceOpt = "auto",
    config: ConfigOpt = None,
    resume: ResumeOpt = False,
) -> None:
    """Train GigaWorld-Policy (world-action transformer) on one or more datasets."""
    from robodream.policy.configuration import PolicyConfig
    from robodream.policy.train import PolicyRunConfig, default_policy_train, train_policy

    base = _load_json(config)
    model = _model_config(base, PolicyConfig, {
        "video_stride": video_stride, "mask": mask, "horizon": horizon, "n_action_steps": action_steps,
        "dim": dim, "depth": depth, "action_loss_weight": action_loss_weight,
        "action_expert_dim": action_expert_dim})
    cfg = PolicyRunConfig(
        data=tuple(str(d) for d in data), tokenizer=str(tokenizer), model=model,
        train=_train_config(base, default_policy_train(), seed=seed, device=device, steps=steps,
                            batch_size=batch_size),
    )
    res = train_policy(cfg, out, resume=resume)
    print_table("policy", ["held-out action MSE", "held-out loss", "train frames", "steps", "run"],
                [[res.get("action_mse"), res.get("loss"), res["n_train_frames"], res["steps"], str(out)]])


# ----------------------------------------------------------------------------- eval
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
    mode: Annotated[Optional[str], typer.Option(help="action_only, with_video or joint")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    threads: Annotated[int, typer.Option(help="torch threads during evaluation")] = 2,
    compile: Annotated[bool, typer.Option(help="torch.compile the chunk sampling")] = False,
    n_action_steps: Annotated[Optional[int], typer.Option(
        help="actions executed per predicted chunk (receding horizon K; default: the run's)")] = None,
) -> None:
    """Closed-loop rollouts on seeds never used for training; writes results.json, MP4s, a PNG."""
    from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy

    r = evaluate_policy(policy, task, episodes, out, seed_start=DEFAULT_EVAL_SEED if seed_start is None else seed_start,
                        max_steps=max_steps, n_videos=videos, mode=mode, device=device, threads=threads,
                        compile=compile, n_action_steps=n_action_steps)
    print_table(f"eval {task}", ["success", "95% CI", "episodes", "steps to success", "latency p50 ms",
                                 "latency p90 ms", "out"],
                [[r["success_rate"], f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]", r["n_episodes"],
                  r["mean_steps_to_success"], r["latency_ms_p50"], r["latency_ms_p90"], str(out)]])


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
    from robodream.policy.configuration import PolicyConfig
    from robodream.utils.io import atomic_write_json
    from robodream.utils.run import from_dict

    cfg = from_dict(PolicyConfig, _load_json(config).get("model", {}))
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
    from robodream.pipeline import SUCCESS_BENCH, recipe_from_json, run_recipe
    from robodream.utils.io import atomic_write_json
    from robodream.utils.run import code_version, environment_info, now

    log = lambda m: err_console.print(f"[bold cyan]>>[/] {m}")  # noqa: E731
    rec = recipe_from_json(_load_json(recipe), SUCCESS_BENCH)
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


@app.command()
@user_errors
def demo(
    out: Annotated[Path, typer.Option(help="working directory for all outputs")] = Path("outputs/demo"),
    recipe: Annotated[Optional[Path], typer.Option(help="JSON overriding recipe fields")] = None,
) -> None:
    """The main job on the embedded default: collect -> tokenizer -> policy -> closed-loop evaluation."""
    import time as _time

    from robodream.pipeline import DEMO, recipe_from_json, run_recipe

    t0 = _time.perf_counter()
    log = lambda m: err_console.print(f"[bold cyan]>>[/] {m}")  # noqa: E731
    rec = recipe_from_json(_load_json(recipe), DEMO)
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


# ----------------------------------------------------------------------------- world model
from robodream.world_model.cli import register as _register_world_model  # noqa: E402

_register_world_model(app, train_app, eval_app, bench_app)


# ----------------------------------------------------------------------------- gaussians
from robodream.gaussians.cli import register as _register_gaussians  # noqa: E402

_register_gaussians(app, bench_app)  # robodream reconstruct, robodream bench rasterizer
