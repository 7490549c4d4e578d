"""CLI verbs of the digital twin: ``robodream track`` and ``robodream bench track``
(convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, user_errors


def track_cmd(
    overrides: dict,
    out: Annotated[Path, typer.Option(help="directory to write (results.json, errors.png, rollouts/*.mp4)")],
    overwrite: Annotated[bool, typer.Option(help="replace an existing tracking directory at --out")] = False,
) -> None:
    """Replay expert episodes; MuJoCo is the real world, the twin (particles + Gaussians + visual forces)
    tracks its objects from the camera images and the robot's joint state only."""
    from robodream.config import from_dict
    from robodream.twin.track import TrackConfig, run_track

    cfg = from_dict(TrackConfig, overrides)
    r = run_track(cfg, out, overwrite=overwrite, log=log)
    print_table(f"twin tracking {cfg.task}, {cfg.episodes} episodes, forces {'on' if cfg.twin.forces else 'off'}, "
                f"mass x{cfg.twin.mass_scale}, friction x{cfg.twin.friction_scale}",
                ["position error mm (mean)", "p90", "rotation error deg", "twin steps/s", "diverged"],
                [[r["pos_error_mm_mean"], r["pos_error_mm_p90"], r["rot_error_deg_mean"], r["steps_per_s"],
                  len(r["diverged_episodes"])]])
    out_console.print(f"written to {out}")


def bench_track_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/track.json"),
    work: Annotated[Path, typer.Option(help="tracking directories (resumable)")] = Path("outputs/bench_track"),
    config: Annotated[Optional[Path], typer.Option(help="JSON overriding fields of twin.bench.TrackBench")] = None,
    quick: Annotated[bool, typer.Option(help="tiny settings (a smoke test, not a measurement)")] = False,
) -> None:
    """The twin on push and pick-place: physics right/wrong, visual forces on/off, a wrong initial state."""
    from robodream.config import load_config_file
    from robodream.twin.bench import bench_config, run_track_bench
    from robodream.utils.io import atomic_write_json

    cfg = bench_config(load_config_file(config) if config else None, quick=quick)
    r = run_track_bench(cfg, work, log=log)
    atomic_write_json(out, r)
    print_table(f"digital twin vs MuJoCo, {cfg.episodes} episodes a row", ["task", "physics", "forces", "initial error mm",
                "pos mm mean", "p90", "rot deg", "steps/s"],
                [[x["task"], x["physics"], x["forces"], max(abs(v) for v in x["init_offset_mm"]), x["pos_error_mm_mean"],
                  x["pos_error_mm_p90"], x["rot_error_deg_mean"], x["steps_per_s"]] for x in r["rows"]])
    out_console.print(f"written to {out}")


def register(apps: Apps) -> None:
    """Add ``track`` and ``bench track``."""
    from robodream.twin.track import TrackConfig

    apps.root.command("track")(user_errors(config_verb(TrackConfig)(track_cmd)))
    apps.bench.command("track")(user_errors(bench_track_cmd))
