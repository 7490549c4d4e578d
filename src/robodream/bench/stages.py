"""Resumable benchmark stages shared by the long benchmarks (``bench data-engine``, ``bench gwm``)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from robodream.utils.io import atomic_write_json


class Stages:
    """Runs named stages once: a stage whose outputs are complete is skipped; wall times of the
    stages that ran accumulate in ``work/timings.json`` across invocations."""

    def __init__(self, work: Path, log) -> None:
        self.work, self.log = work, log
        self.path = work / "timings.json"
        self.timings: dict[str, float] = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def run(self, name: str, done: Callable[[], bool], fn: Callable[[], Any]) -> None:
        """Run ``fn`` unless ``done()``; log ``name`` and add its wall time to ``timings.json``."""
        if done():
            return
        self.log(name)
        t0 = time.perf_counter()
        fn()
        self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0
        atomic_write_json(self.path, self.timings)
