"""Multi-process training through torchrun (DDP, gloo backend on CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_ddp_two_processes_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    h0 = (tmp_path / "weights_rank0.sha256").read_text()
    h1 = (tmp_path / "weights_rank1.sha256").read_text()
    assert h0 == h1  # gradients were all-reduced: replicas identical
    assert (tmp_path / "checkpoints" / "latest.json").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # rank 0 logs once per step
