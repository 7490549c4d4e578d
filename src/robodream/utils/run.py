"""Run directories: resolved config, code version and provenance next to every output.

Layout of a run directory (tokenizer, policy, world model alike)::

    RUN/config.json        {"model_type": ..., "model": {...}, "train": {...}, ...} (resolved)
    RUN/meta.json          code version, library versions, machine, command line, times
    RUN/metrics.jsonl      one JSON object per logged step
    RUN/checkpoints/       step_XXXXXXX/ (safetensors + trainer_state.json), latest.json
    RUN/model.safetensors  final (EMA) weights used for inference
    RUN/results.json       final metrics of the run
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from robodream.errors import CheckpointError
from robodream.utils.io import atomic_write_json, read_json


def code_version() -> dict[str, Any]:
    """robodream version plus the git commit (and whether the tree was dirty), if available."""
    import robodream

    out: dict[str, Any] = {"robodream": getattr(robodream, "__version__", "unknown")}
    src = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(src), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        out["git_commit"] = sha
        out["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        out["git_commit"] = None
    return out


def environment_info() -> dict[str, Any]:
    """Python, torch and machine description for provenance."""
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def now() -> str:
    """Current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def to_jsonable(obj: Any) -> Any:
    """Dataclasses (nested), tuples and Paths to plain JSON types."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def from_dict(cls, d: dict[str, Any]):
    """Build dataclass ``cls`` from a dict, ignoring unknown keys and converting lists to tuples
    where the default is a tuple."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(v, list) and isinstance(default, tuple):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def write_run_meta(run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write RUN/meta.json with code version, environment and command line."""
    meta = {"created": now(), "code": code_version(), "environment": environment_info(),
            "command": sys.argv, **(extra or {})}
    atomic_write_json(Path(run_dir) / "meta.json", meta)


def read_run_config(run_dir: str | os.PathLike, expected_type: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read RUN/config.json and check its ``model_type``.

    Raises:
        CheckpointError: missing directory/config, or a run of another model type.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise CheckpointError(f"run directory {run_dir} does not exist")
    path = run_dir / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a robodream run (no config.json)")
    try:
        cfg = read_json(path)
    except ValueError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if expected_type is not None:
        expected = (expected_type,) if isinstance(expected_type, str) else expected_type
        got = cfg.get("model_type")
        if got not in expected:
            raise CheckpointError(
                f"{run_dir} holds a {got or 'unknown'} checkpoint, expected {' or '.join(expected)}"
            )
    return cfg
