"""``robodream bench track``: the digital twin against MuJoCo on push-v3 and pick-place-v3, physics right
and wrong (mass x3, friction x0.3), visual forces on and off, and a wrong initial state (the object
2 cm from where it is) that only the cameras can correct — 10 episodes each, one row per setting.

Resumable: each setting is a ``robodream track`` directory in ``work`` (skipped when complete).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robodream.bench.stages import Stages
from robodream.config import to_dict
from robodream.twin.scene import TwinConfig
from robodream.twin.track import TrackConfig, run_track
from robodream.utils.run import code_version, environment_info, now


@dataclass
class TrackBench:
    """Settings of ``bench track`` (``--config`` JSON overrides any field)."""

    tasks: tuple[str, ...] = ("push-v3", "pick-place-v3")
    episodes: int = 10
    wrong_mass_scale: float = 3.0
    wrong_friction_scale: float = 0.3
    init_offset: tuple[float, float, float] = (0.02, 0.0, 0.0)  # the "state wrong" rows' initial error, metres
    max_steps: int = 150
    twin: TwinConfig = field(default_factory=TwinConfig)


def bench_config(overrides: dict[str, Any] | None = None, quick: bool = False) -> TrackBench:
    """Defaults, then ``--quick``'s tiny settings, then ``overrides``."""
    from robodream.config import deep_merge, from_dict

    base = to_dict(TrackBench())
    if quick:
        base = deep_merge(base, {"tasks": ["push-v3"], "episodes": 1, "max_steps": 3,
                                 "twin": {"image_size": 32, "cameras": ["corner", "corner3"], "color_fit_steps": 2,
                                          "visual_steps": 1}})
    return from_dict(TrackBench, deep_merge(base, overrides or {}))


SETTINGS = (("right", False, False), ("right", True, False), ("wrong", False, False), ("wrong", True, False),
            ("right", False, True), ("right", True, True))  # (physics, forces, wrong initial state)


def run_track_bench(cfg: TrackBench, work: str | Path, *, log=print) -> dict[str, Any]:
    """Every (task, setting) row (module docstring); returns ``{"rows": [...], "code", ...}``."""
    work = Path(work)
    st = Stages(work, log)
    rows = []
    for task in cfg.tasks:
        for physics, forces, offset in SETTINGS:
            twin = replace(cfg.twin, forces=forces,
                           mass_scale=cfg.wrong_mass_scale if physics == "wrong" else 1.0,
                           friction_scale=cfg.wrong_friction_scale if physics == "wrong" else 1.0)
            tc = TrackConfig(task=task, episodes=cfg.episodes, max_steps=cfg.max_steps, videos=1, twin=twin,
                             init_offset=cfg.init_offset if offset else (0.0, 0.0, 0.0))
            name = f"{task}_{physics}_{'forces' if forces else 'noforces'}{'_offset' if offset else ''}"
            out = work / name
            st.run(f"track {name}", (out / "results.json").is_file,
                   lambda o=out, c=tc: run_track(c, o, overwrite=True, log=log))
            r = json.loads((out / "results.json").read_text())
            rows.append({"task": task, "physics": physics, "forces": forces,
                         "init_offset_mm": [round(1000 * v, 1) for v in tc.init_offset],
                         **{k: r[k] for k in ("pos_error_mm_mean", "pos_error_mm_p90", "rot_error_deg_mean",
                                              "steps_per_s", "cameras", "image_size", "device",
                                              "diverged_episodes")},
                         "episodes": cfg.episodes, "run": str(out)})
    return {"benchmark": "track", "rows": rows, "settings": to_dict(cfg), "code": code_version(), "created": now(),
            "environment": environment_info(), "wall_s": round(sum(st.timings.values()), 1)}
