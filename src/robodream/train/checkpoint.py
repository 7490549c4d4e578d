"""Checkpoints: safetensors for tensors, JSON for everything else, no pickle anywhere.

A checkpoint is a directory ``RUN/checkpoints/step_XXXXXXX/`` holding ``model.safetensors``,
``ema.safetensors``, ``optimizer.safetensors`` and ``trainer_state.json``; it is written
under a temporary name and renamed into place, and ``RUN/checkpoints/latest.json`` (also
written atomically) names the newest complete one. A run killed at any moment therefore
resumes from its last complete checkpoint.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from robodream.errors import CheckpointError
from robodream.utils.io import atomic_directory, atomic_write_json, read_json

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


def load_model_weights(model: torch.nn.Module, path: Path) -> None:
    """Load weights into ``model`` strictly.

    Raises:
        CheckpointError: missing/corrupt file, or tensors that do not fit the model
            (another architecture or size).
    """
    sd = load_tensors(path)
    own = model.state_dict()
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


def write_checkpoint(run_dir: Path, step: int, files: dict[str, dict[str, torch.Tensor]],
                     state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``step_XXXXXXX/`` atomically, point ``latest.json`` at it, prune older ones.

    Args:
        files: ``{"model": tensors, "ema": tensors, "optimizer": tensors}`` -> ``<name>.safetensors``.
        state: JSON-able trainer state (step, RNG, optimizer hyperparameters, ...).
        keep: number of newest checkpoints to keep (>= 1).
    """
    root = checkpoint_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    with atomic_directory(final, overwrite=True) as tmp:
        for name, tensors in files.items():
            save_tensors(tmp / f"{name}.safetensors", tensors)
        atomic_write_json(tmp / "trainer_state.json", state)
    atomic_write_json(root / "latest.json", {"step": step, "dir": final.name})
    steps = sorted(p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))
    for old in steps[:-max(keep, 1)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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
