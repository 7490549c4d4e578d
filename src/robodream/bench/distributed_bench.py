"""``robodream bench distributed``: data-parallel policy training, 1 process against N under torchrun.

Four runs of ``robodream train policy`` on the same data, config, seed and global batch, each
a fresh subprocess launched as a user would launch it:

* ``1proc``        one process, all cores (the usual run);
* ``1proc_accumN`` one process, ``grad_accum_steps = N``: the exact single-process counterpart
  of N processes (the same micro-batches, samples and noise; robodream.train.loop);
* ``ddpN`` / ``fsdpN``  ``torchrun --nproc-per-node N``, DDP and FSDP2, cores split evenly.

Reported: training throughput (median over the logged intervals after the first, samples/s)
and the loss curves side by side: the N-process runs against ``1proc_accumN`` (equal up to
float rounding) and against ``1proc`` (other micro-batches: equal only statistically).
Resumable: a run whose directory holds ``results.json`` is not trained again.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from robodream.errors import RobodreamError
from robodream.utils.run import code_version, environment_info, now


def _launch(nproc: int, threads: int) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:
        return [sys.executable, "-m", "robodream"], env
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "robodream"], env


def _curve(run: Path) -> tuple[list[int], list[float], list[float]]:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [r["step"] for r in rows], [r["loss"] for r in rows], [r["steps_per_s"] for r in rows]


def bench_distributed(data: list[str], tokenizer: str, work: str | Path, *, steps: int = 200, nproc: int = 2,
                      batch_size: int = 64, log_every: int = 10, config: str | None = None,
                      cores: int | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the four trainings (see the module docstring) in ``work`` and compare them.

    Args:
        data, tokenizer: datasets and tokenizer run of the policy training.
        steps, batch_size, log_every: the training of every run (global batch).
        nproc: processes of the torchrun runs.
        config: a policy config.json to start from (default: the default policy).
        cores: CPU cores to share (default: all of this machine's).

    Raises:
        RobodreamError: a training run failed (its last stderr lines in the message).
    """
    work = Path(work)
    cores = cores or os.cpu_count() or 1
    common = ["train", "policy", *[x for d in data for x in ("--data", d)], "--tokenizer", tokenizer,
              "--steps", str(steps), "--batch-size", str(batch_size), "--log-every", str(log_every),
              "--val-every", "0", "--checkpoint-every", str(steps)]
    if config:
        common += ["--config", config]
    runs = {"1proc": (1, cores, []), f"1proc_accum{nproc}": (1, cores, ["--grad-accum-steps", str(nproc)]),
            f"ddp{nproc}": (nproc, max(1, cores // nproc), ["--parallel", "ddp"]),
            f"fsdp{nproc}": (nproc, max(1, cores // nproc), ["--parallel", "fsdp"])}
    out: dict[str, Any] = {"benchmark": "distributed", "created": now(), "code": code_version(),
                           "environment": environment_info(), "steps": steps, "batch_size": batch_size,
                           "nproc": nproc, "cores": cores, "runs": {}}
    curves = {}
    for name, (n, threads, extra) in runs.items():
        run_dir = work / name
        if not (run_dir / "results.json").is_file():
            log(f"training {name}: {n} process(es) x {threads} thread(s) -> {run_dir}")
            cmd, env = _launch(n, threads)
            resume = ["--resume"] if run_dir.exists() else []
            res = subprocess.run([*cmd, *common, *extra, "--out", str(run_dir), *resume], env=env,
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RobodreamError(f"{name} failed: {' | '.join(res.stderr.strip().splitlines()[-3:])}")
        steps_logged, losses, rates = _curve(run_dir)
        curves[name] = losses
        rate = statistics.median(rates[1:] or rates)  # the first interval holds start-up costs
        out["runs"][name] = {"processes": n, "threads_per_process": threads, "steps_per_s": rate,
                             "samples_per_s": rate * batch_size, "final_loss": losses[-1],
                             "steps_logged": steps_logged, "loss": losses}
    base = out["runs"]["1proc"]["samples_per_s"]
    ref = curves[f"1proc_accum{nproc}"]
    for name in (f"ddp{nproc}", f"fsdp{nproc}"):
        r = out["runs"][name]
        r["throughput_vs_1proc"] = r["samples_per_s"] / base
        r["max_rel_loss_diff_vs_1proc_accum"] = max(abs(a - b) / abs(b) for a, b in zip(curves[name], ref))
        r["mean_rel_loss_diff_vs_1proc"] = statistics.mean(
            abs(a - b) / abs(b) for a, b in zip(curves[name], curves["1proc"]))
    acc = out["runs"][f"1proc_accum{nproc}"]
    acc["mean_rel_loss_diff_vs_1proc"] = statistics.mean(abs(a - b) / abs(b) for a, b in zip(ref, curves["1proc"]))
    return out
