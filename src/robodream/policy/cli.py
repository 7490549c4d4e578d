"""CLI verbs of GigaWorld-Policy: ``robodream train policy``, ``robodream bench distributed``
(convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, log, out_console, print_table, register_train_verb, user_errors


def bench_distributed_cmd(
    data: Annotated[list[Path], typer.Option(help="dataset directory (repeat for several)")],
    tokenizer: Annotated[Path, typer.Option(help="tokenizer run directory")],
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/distributed.json"),
    work: Annotated[Path, typer.Option(help="run directories (resumable)")] = Path("outputs/bench_distributed"),
    steps: Annotated[int, typer.Option(help="optimiser steps of every run")] = 200,
    nproc: Annotated[int, typer.Option(help="processes of the torchrun runs")] = 2,
    batch_size: Annotated[int, typer.Option(help="global batch of every run")] = 64,
    config: Annotated[Optional[Path], typer.Option(help="a policy run's config.json (default: default model)")] = None,
) -> None:
    """Policy training in 1 process vs N under torchrun (DDP, FSDP2): throughput and loss curves."""
    from robodream.bench.distributed_bench import bench_distributed
    from robodream.errors import ConfigError
    from robodream.utils.io import atomic_write_json

    if nproc < 2:
        raise ConfigError(f"--nproc must be >= 2, got {nproc}")
    r = bench_distributed([str(d) for d in data], str(tokenizer), work, steps=steps, nproc=nproc,
                          batch_size=batch_size, config=str(config) if config else None, log=log)
    atomic_write_json(out, r)
    rows = [[name, x["processes"], x["threads_per_process"], x["samples_per_s"], x.get("throughput_vs_1proc"),
             x["final_loss"], x.get("max_rel_loss_diff_vs_1proc_accum"), x.get("mean_rel_loss_diff_vs_1proc")]
            for name, x in r["runs"].items()]
    print_table(f"policy training, {steps} steps at global batch {batch_size}, {r['cores']} cores",
                ["run", "procs", "threads", "samples/s", "x 1proc", "loss", f"max dL/L vs accum{nproc}",
                 "mean dL/L vs 1proc"], rows, label_column=True)
    out_console.print(f"written to {out}")


def register(apps: Apps) -> None:
    """Add ``train policy`` and ``bench distributed``."""
    apps.bench.command("distributed")(user_errors(bench_distributed_cmd))
    from robodream.policy.train import PolicyRunConfig, train_policy

    register_train_verb(apps, "policy", PolicyRunConfig, train_policy, "policy",
                        ["held-out action MSE", "held-out loss", "train frames"],
                        lambda r: [r.get("action_mse"), r.get("loss"), r["n_train_frames"]])
