"""Multi-process helpers for ``torchrun`` runs (one process per GPU, or per CPU worker with gloo).

Every trainer runs unchanged in one process or under ``torchrun`` (single node or multi-node):
the process group is set up from the environment torchrun provides (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...), NCCL on CUDA and gloo on CPU. Without
torchrun every helper here is a no-op for a world of one process.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence

import torch
import torch.distributed as dist

from robodream.errors import ConfigError

_CPU_GROUP = None  # a gloo group for CPU-tensor collectives when the default backend is NCCL


def world_size() -> int:
    """Processes in the run (``WORLD_SIZE`` set by torchrun; 1 without it)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", 1))


def rank() -> int:
    """This process's global rank (0 without torchrun)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", 0))


def is_main() -> bool:
    """True on the process that writes the run directory (global rank 0)."""
    return rank() == 0


def init_distributed(device: torch.device | None = None, timeout_s: float = 1800.0) -> tuple[int, int]:
    """Initialise the default process group when launched by torchrun; returns (rank, world_size).

    NCCL when ``device`` is CUDA, gloo otherwise. Idempotent; a world of one process
    initialises nothing.

    Raises:
        ConfigError: ``WORLD_SIZE > 1`` but the torchrun rendezvous variables are missing.
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world > 1 and not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ and "TORCHELASTIC_RUN_ID" not in os.environ:
            raise ConfigError(f"WORLD_SIZE={world} but no MASTER_ADDR: launch multi-process runs with torchrun")
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(seconds=timeout_s))
    return rank(), world_size()


def barrier() -> None:
    """Wait for every process (no-op in one process)."""
    if world_size() > 1 and dist.is_initialized():
        dist.barrier()


def _cpu_group():
    """The process group for CPU tensors: the default one (gloo), or a gloo group beside NCCL."""
    global _CPU_GROUP
    if dist.get_backend() == "gloo":
        return None
    if _CPU_GROUP is None:
        _CPU_GROUP = dist.new_group(backend="gloo")
    return _CPU_GROUP


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of a CPU float64 tensor over every process (returns it in one process)."""
    if world_size() > 1:
        values = values.clone()
        dist.all_reduce(values, group=_cpu_group())
    return values


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Broadcast CPU tensors in place from rank ``src`` (shapes and dtypes must already agree)."""
    if world_size() > 1:
        for t in tensors:
            dist.broadcast(t, src=src, group=_cpu_group())


def broadcast_object(obj, src: int = 0):
    """A small JSON-able object from rank ``src`` to every process (shapes, names, counts)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=_cpu_group())
    return box[0]


def any_process(flag: bool) -> bool:
    """True if ``flag`` is true on any process (a collective: every process must call it)."""
    return bool(all_reduce_sum(torch.tensor([float(flag)], dtype=torch.float64))[0] > 0)
