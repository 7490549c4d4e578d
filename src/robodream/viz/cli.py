"""CLI verb ``robodream view``: a dataset or a run in the Rerun viewer.

A plain function with typer options; :func:`register` adds it to robodream's apps (the
convention of :mod:`robodream.utils.cli`). Logic lives in :mod:`robodream.viz.rerun_view`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, out_console, print_table, user_errors


def view_cmd(
    path: Annotated[Path, typer.Argument(help="LeRobot dataset directory, run directory (tokenizer, policy, "
                                              "world model, reconstruction) or 3DGS .ply file")],
    episode: Annotated[Optional[list[str]], typer.Option(
        help="dataset episode: an index, a range A..B (inclusive) or 'all'; repeatable (default: 0)")] = None,
    all_episodes: Annotated[bool, typer.Option("--all", help="every episode of the dataset")] = False,
    out: Annotated[Optional[Path], typer.Option(
        help="the .rrd file to write (default: ./NAME.rrd, NAME being the input's name; with --spawn: none)")] = None,
    spawn: Annotated[bool, typer.Option(help="start the native Rerun viewer and stream the data to it")] = False,
) -> None:
    """Look at a dataset or a run in Rerun: writes an .rrd (open it with `rerun FILE.rrd`) or spawns a viewer.

    A dataset: camera images, action and state dimensions, reward, success and task per episode.
    A run: metric curves, results and config; a reconstruction also its Gaussians and cameras.
    """
    from robodream.viz.rerun_view import parse_episodes, view

    episodes = "all" if all_episodes else parse_episodes(episode)
    if out is None and not spawn:
        out = Path(f"{(path.stem if path.suffix.lower() == '.ply' else path.resolve().name) or 'view'}.rrd")
    s = view(path, episodes, out, spawn)
    logged = ", ".join(f"{k}: {v}" for k, v in s.logged.items())
    sent = " + ".join([str(s.out)] * (s.out is not None) + ["viewer"] * s.spawned)
    print_table(f"view {s.kind}", ["input", "logged", "sent to"], [[str(s.source), logged, sent]])
    if s.out is not None:
        out_console.print(f"open with: rerun {s.out}", highlight=False, soft_wrap=True)


def register(apps: Apps) -> None:
    """Add ``view``."""
    apps.root.command("view")(user_errors(view_cmd))
