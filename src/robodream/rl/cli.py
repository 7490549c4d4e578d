"""CLI verbs of RAMP: ``robodream relabel``, ``robodream train ramp`` (the loop and its baselines)
and ``robodream bench rl`` (convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, user_errors


def relabel_cmd(
    data: Annotated[list[Path], typer.Option(help="dataset directory with next.reward (repeat for several)")],
    world_model: Annotated[Path, typer.Option(help="world-model run with a value frame (--value-frame)")],
    out: Annotated[Path, typer.Option(help="labels file to write (safetensors)")],
    n: Annotated[Optional[int], typer.Option(help="TD steps of the advantage (default: the world model's chunk)")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="discount (default: the world model's)")] = None,
    positive_fraction: Annotated[float, typer.Option(help="fraction of all frames labelled I = 1 (sets eps)")] = 0.3,
    value_steps: Annotated[Optional[int], typer.Option(
        help="Euler steps of each value prediction (default: the world model's sampling steps)")] = None,
    z: Annotated[bool, typer.Option(help="also predict every frame's future latent z (RAMP's; --no-z: the "
                                         "indicator and advantages only, for RECAP and AWR, half the calls)")] = True,
    batch: Annotated[int, typer.Option(help="clips per world-model call")] = 64,
    seed: Annotated[int, typer.Option(help="seeds the values' and future latents' noise")] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where the device has native bf16, else fp32), "
                                                "bf16 or fp32")] = "auto",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """RAMP's labels: every frame's n-step TD advantage indicator and the world model's future latent z."""
    from robodream.rl.labels import relabel

    r = relabel([str(d) for d in data], world_model, out, n=n, gamma=gamma, positive_fraction=positive_fraction,
                value_steps=value_steps, with_z=z, batch=batch, seed=seed, device=device,
                precision=precision, overwrite=overwrite)
    print_table(f"relabel (n={r['n']}, gamma={r['gamma']}, eps={r['eps']:.4g})",
                ["dataset", "frames", "episodes", "positive", "mean advantage", "mean value"],
                [[d["root"], d["num_frames"], d["num_episodes"], d["positive_fraction"], d["advantage_mean"],
                  d["value_mean"]] for d in r["datasets"]])
    out_console.print(f"{r['achieved_positive_fraction']:.1%} of {r['n_frames']} frames positive; written to {out}")


def _loop_config(overrides: dict, data: list[Path], tokenizer: Path | str):
    from robodream.config import replace as config_replace
    from robodream.rl.loop import RampLoopConfig

    return config_replace(RampLoopConfig(), {**overrides, "data": [str(d) for d in data],
                                             "tokenizer": str(tokenizer) if tokenizer else ""})


def _ci(r: dict) -> str:
    return f"[{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}]"


def train_ramp_cmd(
    overrides: dict,
    data: Annotated[list[Path], typer.Option(help="demonstration dataset with next.reward (repeat for several)")],
    tokenizer: Annotated[Path, typer.Option(help="an existing tokenizer run (reused by every model of the loop)")],
    out: Annotated[Path, typer.Option(help="loop directory (rerun the same command to continue)")],
    overwrite: Annotated[bool, typer.Option(help="start over a loop directory that holds other settings (its rounds are removed)")] = False,
) -> None:
    """RAMP's loop (or a baseline, --method): pre-train, then per round rollouts with takeover ->
    relabel -> continue training world model and policy on demos + all rollouts -> evaluate. Resumable."""
    from robodream.rl.loop import run_ramp_loop

    cfg = _loop_config(overrides, data, tokenizer)
    s = run_ramp_loop(cfg, out, log=log, overwrite=overwrite)
    print_table(f"train ramp ({s['method']}): success per round", ["task", *[f"round {k}" for k in
                                                                             range(s["n_rounds_done"])], "final 95% CI"],
                [[t, *ys, _ci(s["final"][t])] for t, ys in s["success"].items()]
                + [["mean", *s["mean_success"], ""]]
                + ([["mean, efficient mode (no z)", *s["mean_success_efficient"], ""]]
                   if "mean_success_efficient" in s else []))
    out_console.print(f"{s['rollouts']} rollouts, {s['intervention_steps']} intervention steps; metrics "
                      f"{out / 'metrics.json'}, curve {out / 'success_curve.png'}")


def bench_rl_cmd(
    overrides: dict,
    data: Annotated[list[Path] | None, typer.Option(help="demonstration dataset with next.reward (repeat for "
                                                         "several); default: the bench collects its own")] = None,
    tokenizer: Annotated[Path | None, typer.Option(help="an existing tokenizer run of --data; default: the bench "
                                                        "trains one on its demos")] = None,
    demos: Annotated[int, typer.Option(help="expert episodes per task the bench collects without --data")] = 10,
    shared_threads: Annotated[int, typer.Option(help="torch threads of the stages every method shares (demos, "
                                                     "tokenizer, base policy, its rollouts); 0: every core")] = 0,
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/rl.json"),
    work: Annotated[Path, typer.Option(help="loop directories, WORK/<method> (resumable)")] = Path("outputs/bench_rl"),
    methods: Annotated[str, typer.Option(help="comma-separated methods")] = "ramp,recap,awr,hgdagger",
    quick: Annotated[bool, typer.Option(help="tiny settings, about a minute per method (a smoke test, "
                                             "not a measurement)")] = False,
) -> None:
    """RAMP vs RECAP vs AWR vs HG-DAgger in one harness: same data, rounds, rollouts and evaluation
    (RAMP also in efficient mode, without z), and the value model's Kendall tau against a value-only one."""
    from robodream.rl.bench import run_rl_bench
    from robodream.utils.io import atomic_write_json

    cfg = _loop_config(overrides, data or [], tokenizer or "")
    r = run_rl_bench(cfg, work, methods=tuple(m.strip() for m in methods.split(",") if m.strip()), quick=quick,
                     demos=demos, shared_threads=shared_threads, log=log)
    atomic_write_json(out, r)
    curves, takeover = r["success_by_round"], r["takeover_steps_by_round"]
    n = max(len(ys) for ys in curves.values())
    print_table("bench rl: mean success per round" + (" (quick: not a measurement)" if quick else ""),
                ["method", *[f"round {k}" for k in range(n)], "takeover steps per round"],
                [[m, *ys, ", ".join(map(str, takeover.get(m, []))) or "-"] for m, ys in curves.items()],
                label_column=True)
    print_table("final success per task (95% CI)", ["method", *r["tasks"]],
                [[m, *[f"{v[t]['success_rate']:.2f} {_ci(v[t])}" for t in r["tasks"]]] for m, v in r["per_task"].items()],
                label_column=True)
    fmt = lambda x: "n/a" if x is None else f"{x:.3f}"  # noqa: E731
    base = f"{r['base_success']:.2f}"
    tau = r["kendall_tau"]
    out_console.print(f"base policy (BC on the demos) {base}; value Kendall tau on held-out rollouts: "
                      + (f"state+value {fmt(tau['state_value'])}, value-only {fmt(tau['value_only'])}" if tau
                         else "n/a (needs ramp and a round >= 1)"))
    out_console.print(f"{r['wall_s'] / 3600:.2f} h of stages; written to {out}")


def register(apps: Apps) -> None:
    """Add ``relabel``, ``train ramp`` and ``bench rl``."""
    from robodream.rl.loop import RampLoopConfig

    apps.root.command("relabel")(user_errors(relabel_cmd))
    apps.train.command("ramp")(user_errors(config_verb(RampLoopConfig, exclude=("data", "tokenizer"))(train_ramp_cmd)))
    apps.bench.command("rl")(user_errors(config_verb(RampLoopConfig, exclude=("data", "tokenizer", "method"))(
        bench_rl_cmd)))
