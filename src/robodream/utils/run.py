"""Provenance: code version, environment and time, written next to every output.

Run directories themselves are :mod:`robodream.train.run_dir`; configs are :mod:`robodream.config`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import platform
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robodream.utils.io import atomic_write_json


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


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; ``platform.processor()`` elsewhere): hosts of the
    same size differ up to ~3x in speed, so every timing names it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment_info() -> dict[str, Any]:
    """Python, torch and machine description for provenance."""
    import torch

    from robodream.train.loop import native_bf16

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_native_bf16": native_bf16(torch.device("cpu")),  # decides precision "auto" (train.loop)
    }
    return info


def now() -> str:
    """Current UTC time, ISO 8601."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def write_run_meta(run_dir: Path, extra: dict[str, Any] | None = None) -> None:
    """Write RUN/meta.json with code version, environment and command line."""
    meta = {"created": now(), "code": code_version(), "environment": environment_info(),
            "command": sys.argv, **(extra or {})}
    atomic_write_json(Path(run_dir) / "meta.json", meta)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[int]:
    """Run the block with ``n`` torch intra-op threads (``n <= 0``: every CPU core), then restore
    the previous count; yields the count used."""
    import torch

    prev = torch.get_num_threads()
    n = n if n > 0 else (os.cpu_count() or 1)
    torch.set_num_threads(n)
    try:
        yield n
    finally:
        torch.set_num_threads(prev)
