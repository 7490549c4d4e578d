"""Checkpoints: safetensors for tensors, JSON for everything else, no pickle anywhere.

A checkpoint is a directory ``RUN/checkpoints/step_XXXXXXX/``::

    state/              a torch.distributed.checkpoint (DCP) in safetensors files
                        (``HuggingFaceStorageWriter``): keys ``model.<name>``, ``ema.<name>``,
                        ``optim.<name>.<exp_avg|exp_avg_sq|step>``; each process writes the
                        shards it holds (FSDP2), replicated tensors (one process, DDP) once
    trainer_state.json  step, optimizer hyperparameters, train config, world size

It is written under a temporary name and renamed into place, and
``RUN/checkpoints/latest.json`` (also written atomically) names the newest complete one, so
a run killed at any moment resumes from its last complete checkpoint. DCP reshards on load:
a run resumes with another number of processes, or moves between DDP and FSDP2.
Checkpoints written before this layout (``model.safetensors``, ``ema.safetensors``,
``optimizer.safetensors`` in the step directory) still resume in one process.
"""

from __future__ import annotations

import os
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robodream.errors import CheckpointError
from robodream.utils.io import atomic_write_json, read_json

_STEP_DIR = re.compile(r"^step_(\d{7,})$")


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Save a flat dict of tensors to ``path`` (contiguous CPU copies)."""
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file. Raises CheckpointError if missing or corrupt."""
    if not Path(path).is_file():
        raise CheckpointError(f"missing checkpoint file {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"corrupt checkpoint file {path}: {e}") from e


def load_model_weights(model: torch.nn.Module, path: Path, *, may_lack: tuple[str, ...] = ()) -> None:
    """Load weights into ``model`` strictly.

    ``may_lack``: name prefixes of parameters the file may lack (modules a warm start adds to
    the source run's model); those keep the model's own initial values. Everything else is strict.

    Raises:
        CheckpointError: missing/corrupt file, or tensors that do not fit the model
            (another architecture or size).
    """
    sd = load_tensors(path)
    if hasattr(model, "upgrade_state_dict"):  # weights of an earlier version of the model
        sd = model.upgrade_state_dict(sd)
    own = model.state_dict()
    added = {k for k in set(own) - set(sd) if may_lack and k.startswith(may_lack)}
    sd.update({k: own[k] for k in added})
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if own[k].shape != sd[k].shape)
    if missing or unexpected or wrong:
        what = (missing[:3] and f"missing {missing[:3]}") or (unexpected[:3] and f"unexpected {unexpected[:3]}") \
            or f"shape mismatch {wrong[:3]}"
        raise CheckpointError(f"{path} does not fit this model ({what})")
    model.load_state_dict(sd, strict=True)


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state dict into tensors (safetensors) and JSON-able hyperparameters."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{idx}.{name}"] = v
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_to_tensors`."""
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = v
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    try:
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not fit this model: {e}") from e


def checkpoint_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any],
                     keep: int = 2) -> Path:
    """Write ``step_XXXXXXX/`` atomically, point ``latest.json`` at it, prune older ones.

    A collective under torchrun: every process calls it with its own (possibly sharded,
    DTensor) ``tensors``; rank 0 prepares the temporary directory, writes
    ``trainer_state.json``, renames and prunes, with barriers in between.

    Args:
        tensors: flat ``{key: tensor}`` (plain tensors or DTensors), e.g. ``model.<name>``.
        state: JSON-able trainer state (step, optimizer hyperparameters, ...).
        keep: number of newest checkpoints to keep (>= 1).
    """
    import torch.distributed.checkpoint as dcp

    from robodream.train.distributed import barrier, is_main, world_size

    root = checkpoint_dir(run_dir)
    final = root / f"step_{step:07d}"
    tmp = root / f".{final.name}.tmp"
    if is_main():
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".step_*"):  # left by a run killed while writing (one writer per run)
            shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    barrier()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP warns about its own storage-metadata internals
        dcp.save(tensors, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp / "state"),
                                                                       save_distributed=world_size() > 1))
    barrier()
    if is_main():
        atomic_write_json(tmp / "trainer_state.json", state)
        old = None
        if final.exists():
            old = root / f".{final.name}.old"
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        atomic_write_json(root / "latest.json", {"step": step, "dir": final.name})
        steps = sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
        for stale in steps[:-max(keep, 1)]:
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def read_checkpoint(ckpt: Path, template: dict[str, torch.Tensor]) -> None:
    """Fill ``template`` (flat ``{key: tensor}``, plain or DTensor, this process's layout) in place
    from a checkpoint written by :func:`write_checkpoint`, with any number of processes.

    Raises:
        CheckpointError: a missing or corrupt checkpoint, or one whose tensors do not fit
            ``template`` (another model or size).
    """
    import torch.distributed.checkpoint as dcp

    state = Path(ckpt) / "state"
    if not state.is_dir():
        raise CheckpointError(f"checkpoint {ckpt} has no state/ directory")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            dcp.load(template, storage_reader=dcp.HuggingFaceStorageReader(str(state)))
    except (Exception, dcp.CheckpointException) as e:  # DCP wraps reader failures in a BaseException
        first = str(e).strip().splitlines()
        raise CheckpointError(f"checkpoint {ckpt} does not fit this model or is corrupt: "
                              f"{first[-1] if first else type(e).__name__}") from e


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint directory of a run, or None if there is none.

    Raises:
        CheckpointError: ``latest.json`` names a checkpoint that is missing.
    """
    root = checkpoint_dir(run_dir)
    latest = root / "latest.json"
    if not latest.is_file():
        return None
    try:
        d = root / read_json(latest)["dir"]
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"corrupt {latest}: {e}") from e
    if not (d / "trainer_state.json").is_file():
        raise CheckpointError(f"{latest} points to {d.name}, which is missing or incomplete")
    return d
