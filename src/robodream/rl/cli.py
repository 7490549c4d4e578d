"""CLI verb of RAMP's labels: ``robodream relabel`` (convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, out_console, print_table, user_errors


def relabel_cmd(
    data: Annotated[list[Path], typer.Option(help="dataset directory with next.reward (repeat for several)")],
    world_model: Annotated[Path, typer.Option(help="world-model run with a value frame (--value-frame)")],
    out: Annotated[Path, typer.Option(help="labels file to write (safetensors)")],
    n: Annotated[Optional[int], typer.Option(help="TD steps of the advantage (default: the world model's chunk)")] = None,
    gamma: Annotated[Optional[float], typer.Option(help="discount (default: the world model's)")] = None,
    positive_fraction: Annotated[float, typer.Option(help="fraction of all frames labelled I = 1 (sets eps)")] = 0.3,
    value_steps: Annotated[Optional[int], typer.Option(
        help="Euler steps of each value prediction (default: the world model's sampling steps)")] = None,
    batch: Annotated[int, typer.Option(help="clips per world-model call")] = 64,
    seed: Annotated[int, typer.Option(help="seeds the values' and future latents' noise")] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out file")] = False,
) -> None:
    """RAMP's labels: every frame's n-step TD advantage indicator and the world model's future latent z."""
    from robodream.rl.labels import relabel

    r = relabel([str(d) for d in data], world_model, out, n=n, gamma=gamma, positive_fraction=positive_fraction,
                value_steps=value_steps, batch=batch, seed=seed, device=device, overwrite=overwrite)
    print_table(f"relabel (n={r['n']}, gamma={r['gamma']}, eps={r['eps']:.4g})",
                ["dataset", "frames", "episodes", "positive", "mean advantage", "mean value"],
                [[d["root"], d["num_frames"], d["num_episodes"], d["positive_fraction"], d["advantage_mean"],
                  d["value_mean"]] for d in r["datasets"]])
    out_console.print(f"{r['achieved_positive_fraction']:.1%} of {r['n_frames']} frames positive; written to {out}")


def register(apps: Apps) -> None:
    """Add ``relabel``."""
    apps.root.command("relabel")(user_errors(relabel_cmd))
