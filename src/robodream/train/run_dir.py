"""Run directories: one layout and one life cycle for every trained model.

Layout (tokenizer, policy, world model, inverse-dynamics model alike)::

    RUN/config.json        {"model_type": ..., "model": {...}, "train": {...}, ...} (resolved)
    RUN/meta.json          code version, library versions, machine, command line, times, resumes
    RUN/metrics.jsonl      one JSON object per logged step
    RUN/checkpoints/       step_XXXXXXX/ (see robodream.train.checkpoint), latest.json
    RUN/model.safetensors  final (EMA) weights used for inference
    RUN/results.json       final metrics of the run
    RUN/tokenizer/         a copy of the tokenizer run (models over tokenizer latents)

Life cycle (:class:`Run`): every check happens before anything is written — the output
path, an existing run without ``--resume``, the saved config against the new options on
``--resume`` (only :data:`RESUMABLE` settings may change; ``train.steps`` not below the
steps done), then data loading and the checkpoint restore by the trainer; only then
:meth:`Run.start` writes ``config.json`` and ``meta.json``. A fresh run that fails before its
first checkpoint removes its directory (:meth:`Run.guard`), so a rerun is not blocked. Only
rank 0 writes under torchrun. A run with ``init_from`` (a warm start) begins from another
finished run's final weights (:func:`init_from_run`), unless it resumes from its own checkpoint.

Registry: :func:`load_run` loads any run by the ``model_type`` its config records
(:data:`RUN_TYPES`; systems add theirs with :func:`register_run_type`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import shutil
import sys
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from robodream.config import flatten, from_dict, to_dict
from robodream.errors import CheckpointError, ConfigError
from robodream.train.checkpoint import latest_checkpoint
from robodream.train.distributed import barrier, init_distributed, is_main, world_size
from robodream.train.loop import micro_batch_size, resolve_device
from robodream.utils.io import atomic_write_json, read_json
from robodream.utils.run import code_version, environment_info, now

#: results.json's note when a run has no held-out episode (a stated absence, never a NaN metric).
NO_HELDOUT = "none: every dataset has a single episode, so nothing is held out"

#: Settings a resumed run may change: how long and how it trains, not what it trains.
RESUMABLE = ("train.steps", "train.log_every", "train.val_every", "train.checkpoint_every",
             "train.keep_checkpoints", "train.device", "train.grad_accum_steps", "train.parallel")

#: model_type -> "module:loader" of ``loader(run_dir, device) -> loaded run`` (``robodream view``
#: and :func:`load_run` know a run type by its entry here).
RUN_TYPES: dict[str, str] = {
    "image_tokenizer": "robodream.tokenizer.train:load_tokenizer",
    "gigaworld_policy": "robodream.policy.train:load_policy",
    "video_world_model": "robodream.world_model.train:load_world_model",
    "gaussian_scene": "robodream.gaussians.reconstruct:load_scene",
    "inverse_dynamics": "robodream.idm.train:load_idm",
    "control_transfer": "robodream.transfer.train:load_transfer",
    "gwm_set_vae": "robodream.gwm.train:load_set_vae",
    "gwm_dynamics": "robodream.gwm.train:load_gwm",
}


def register_run_type(model_type: str, loader: str) -> None:
    """Make :func:`load_run` load runs of ``model_type`` with ``loader`` ("package.module:function")."""
    RUN_TYPES[model_type] = loader


def read_run_config(run_dir: str | os.PathLike, expected_type: str | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read RUN/config.json and check its ``model_type``.

    Raises:
        CheckpointError: missing directory/config, invalid JSON, or a run of another model type.
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
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{path} does not hold a JSON object")
    if expected_type is not None:
        expected = (expected_type,) if isinstance(expected_type, str) else expected_type
        got = cfg.get("model_type")
        if got not in expected:
            raise CheckpointError(f"{run_dir} holds a {got or 'unknown'} run, expected {' or '.join(expected)}")
    return cfg


def load_run(run_dir: str | os.PathLike, device: str = "cpu"):
    """Load a finished run of any registered type (what its loader returns).

    Raises:
        CheckpointError: not a run, an unregistered model type, or what the loader raises.
    """
    model_type = read_run_config(run_dir).get("model_type")
    if model_type not in RUN_TYPES:
        raise CheckpointError(f"{run_dir} holds a {model_type or 'unknown'} run, which no loader is registered for "
                              f"(known: {', '.join(sorted(RUN_TYPES))})")
    module, fn = RUN_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), fn)(run_dir, device)


def run_config_from_dict(cls, d: dict[str, Any], where: str = "config"):
    """A run config dataclass from a saved dict (older runs' missing fields take their
    ``LEGACY_DEFAULTS``), as a CheckpointError when it does not fit."""
    try:
        return from_dict(cls, d, legacy=True)
    except ConfigError as e:
        raise CheckpointError(f"{where} is not a valid {cls.__name__}: {e}") from e


def resolve_run_config(cls, *, out: str | os.PathLike, resume: bool, config_file: str | os.PathLike | None,
                       overrides: dict[str, Any], default=None):
    """The config of a training verb: ``default`` (or ``cls()``) < the run's saved config when
    resuming < ``--config`` file < command-line ``overrides``, rebuilt strictly.

    Raises:
        ConfigError: an unknown key or bad value (in the file or the options), or a config
            file of another model type.
        CheckpointError: the run to resume has an unreadable config or another model type.
    """
    from robodream.config import deep_merge, load_config_file

    base = to_dict(default if default is not None else cls())
    model_type = base.get("model_type")
    out = Path(out)
    if resume and (out / "config.json").is_file():
        saved = read_run_config(out, model_type)
        base = to_dict(run_config_from_dict(cls, saved, f"{out}/config.json"))
    if config_file is not None:
        file = load_config_file(config_file)
        if file.get("model_type", model_type) != model_type:
            raise ConfigError(f"--config {config_file} is a {file.get('model_type')} config, not {model_type}")
        base = deep_merge(base, file)
    return from_dict(cls, deep_merge(base, overrides))


def derived_paths(cls, prefix: str = "") -> set[str]:
    """Dotted paths of the fields filled in from the data (``DERIVED_FIELDS`` of every nested config)."""
    out = {f"{prefix}{n}" for n in getattr(cls, "DERIVED_FIELDS", ())}
    for name, tp in typing.get_type_hints(cls).items():
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            out |= derived_paths(tp, f"{prefix}{name}.")
    return out


def _same(key: str, a: Any, b: Any) -> bool:
    """Equal settings; dataset and run paths compare as resolved paths."""
    if key in ("data", "tokenizer"):
        norm = lambda v: [str(Path(x).resolve()) for x in (v if isinstance(v, (list, tuple)) else [v]) if x]  # noqa: E731
        return norm(a) == norm(b)
    return a == b


class Run:
    """A run directory about to be trained: every check of the output path and of a resume.

    Args:
        path: the run directory (``--out``).
        cfg: the resolved run config (a dataclass with a ``model_type`` field).
        resume: continue the run in ``path``; without a run there it starts a fresh one.

    Attributes:
        fresh: nothing was there before (the directory is removed again if training fails
            before its first checkpoint).
        completed_step: the step of the newest checkpoint (0 for a fresh run).

    Raises:
        ConfigError: ``path`` is a file; ``--resume`` with settings that differ from the run's
            (other than :data:`RESUMABLE`), or fewer steps than already done.
        CheckpointError: ``path`` holds a run and not ``resume``; a run of another model
            type; an unreadable config.
    """

    def __init__(self, path: str | os.PathLike, cfg, *, resume: bool) -> None:
        self.path = path = Path(path)
        self.cfg = cfg
        self.model_type = cfg.model_type
        self.resume = resume
        self.saved: dict[str, Any] | None = None
        self.completed_step = 0
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--out {path} is a file, not a directory")
        init_distributed(resolve_device(cfg.train.device))  # under torchrun: the process group, first
        micro_batch_size(cfg.train, world_size())  # a batch that does not divide: fail before any work
        self.fresh = not path.exists() or not any(path.iterdir())
        if self.fresh:
            return
        if not resume:
            raise CheckpointError(f"{path} already exists; pass --resume to continue it or choose another --out")
        self.saved = read_run_config(path, self.model_type)
        saved_cfg = run_config_from_dict(type(cfg), self.saved, f"{path}/config.json")
        self._check_changes(to_dict(saved_cfg), to_dict(cfg), derived_paths(type(cfg)))
        ckpt = latest_checkpoint(path)
        if ckpt is not None:
            self.completed_step = int(read_json(ckpt / "trainer_state.json")["step"])
        if cfg.train.steps < self.completed_step:
            raise ConfigError(f"--resume: {path} is at step {self.completed_step}; --steps {cfg.train.steps} "
                              f"must not be below it")

    def _check_changes(self, saved: dict, new: dict, derived: set[str]) -> None:
        a, b = flatten(saved), flatten(new)
        for key in sorted(set(a) | set(b)):
            if key in RESUMABLE or any(key == d or key.startswith(d + ".") for d in derived):
                continue
            if not _same(key, a.get(key), b.get(key)):
                raise ConfigError(
                    f"--resume: {key} is {a.get(key)!r} in {self.path}/config.json but {b.get(key)!r} was given; "
                    f"a resumed run may change only {', '.join(k.removeprefix('train.') for k in RESUMABLE)} "
                    f"(start a new run with another --out to change it)")

    @contextlib.contextmanager
    def guard(self) -> Iterator[Run]:
        """Remove a fresh run's directory when training fails before its first checkpoint."""
        try:
            yield self
        except BaseException:
            if self.fresh and is_main() and self.path.is_dir() and latest_checkpoint(self.path) is None:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def start(self, meta: dict[str, Any] | None = None) -> None:
        """Write ``config.json`` and ``meta.json`` (a fresh run) or record the resume (rank 0 only).

        Call after every check passed (data loaded, checkpoint restored)."""
        if is_main():
            self.path.mkdir(parents=True, exist_ok=True)
            cfg = to_dict(self.cfg)
            info = {"time": now(), "code": code_version(), "command": sys.argv, "world_size": world_size()}
            if self.saved is None:
                atomic_write_json(self.path / "config.json", cfg)
                atomic_write_json(self.path / "meta.json", {
                    "created": info["time"], "code": info["code"], "environment": environment_info(),
                    "command": sys.argv, "world_size": world_size(), **(meta or {})})
            else:
                now_flat = flatten(cfg)
                changed = {k: [v, now_flat.get(k)] for k, v in flatten(self.saved).items()
                           if k in RESUMABLE and now_flat.get(k) != v}
                if changed:
                    atomic_write_json(self.path / "config.json", cfg)
                old = _read_meta(self.path)
                old.setdefault("resumes", []).append({**info, "from_step": self.completed_step, "changed": changed})
                atomic_write_json(self.path / "meta.json", old)
        barrier()

    def fit(self, trainer, *, meta: dict[str, Any], json_files: dict[str, Any] | None = None,
            tokenizer: str | os.PathLike | None = None,
            copies: dict[str, str | os.PathLike] | None = None) -> dict[str, float]:
        """Restore the trainer when resuming, write the run (:meth:`start`, ``json_files`` such as
        ``normalization.json``, a copy of the tokenizer and of the other frozen model runs in
        ``copies``: subdirectory -> run), then train; returns the last validation metrics. The
        common middle of every trainer (a collective under torchrun)."""
        if self.resume:
            trainer.resume()
        self.start(meta)
        if is_main():
            for name, obj in (json_files or {}).items():
                atomic_write_json(self.path / name, obj)
        if tokenizer is not None:
            self.copy_model_run(tokenizer, "tokenizer")
        for sub, src in (copies or {}).items():
            self.copy_model_run(src, sub)
        return trainer.fit()

    def finish(self, trainer, val: dict[str, float], *, n_train_frames: int, n_heldout_frames: int) -> dict[str, Any]:
        """Save the evaluation (EMA) weights and ``results.json`` (validation metrics, steps,
        frame counts; a stated absence when nothing was held out); returns the results on every
        process (a collective under torchrun)."""
        final = trainer.eval_model
        results = {**{k.removeprefix("val/"): v for k, v in val.items()}, "steps": trainer.step,
                   "n_train_frames": n_train_frames, "n_heldout_frames": n_heldout_frames}
        if not n_heldout_frames:
            results["heldout"] = NO_HELDOUT
        if is_main():
            trainer.save_final(final)
            self.write_results(results)
        barrier()
        return results

    def write_results(self, results: dict[str, Any]) -> None:
        """``RUN/results.json`` (rank 0); non-finite numbers become null."""
        if is_main():
            atomic_write_json(self.path / "results.json", results)

    def copy_model_run(self, src: str | os.PathLike, sub: str) -> None:
        """Copy a frozen model run's config and weights into ``RUN/sub`` (self-contained runs; rank 0)."""
        if not is_main():
            return
        dst = self.path / sub
        dst.mkdir(parents=True, exist_ok=True)
        for name in ("config.json", "model.safetensors"):
            tmp = dst / f".{name}.tmp"
            shutil.copyfile(Path(src) / name, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dst / name)


def load_model_run(run_dir: str | os.PathLike, model_cls, config_cls):
    """Build ``model_cls(config_cls(...))`` from ``RUN/config.json`` (checking ``model_type ==
    model_cls.model_type``; fields the file lacks take ``config_cls.LEGACY_DEFAULTS``, then the
    defaults) and load ``model.safetensors``. Returns ``(model, run config dict)`` on the CPU.

    Raises:
        CheckpointError: a run of another model type, an invalid model config, unfinished
            training, or weights that do not fit the configuration.
    """
    from robodream.train.checkpoint import load_model_weights

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, model_cls.model_type)
    if not isinstance(cfg.get("model"), dict):
        raise CheckpointError(f"{run_dir}/config.json is not a valid {model_cls.model_type} config: no model section")
    model = model_cls(run_config_from_dict(config_cls, cfg["model"], f"{run_dir}/config.json"))
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{run_dir} has no model.safetensors (training not finished? use --resume)")
    load_model_weights(model, weights)
    return model, cfg


def load_latent_run(run_dir: str | os.PathLike, model_cls, config_cls, device="cpu"):
    """Load a trained run of a model over tokenizer latents (policy or video world model).

    :func:`load_model_run`, then ``normalization.json`` and the run's copy of the tokenizer.
    Returns ``(model, tokenizer, run config dict)``, both models in eval mode without
    gradients, on ``device``.

    Raises:
        CheckpointError: a run of another model type, an invalid model config, unfinished
            training, weights that do not fit the configuration, or a tokenizer whose latent
            shape differs from the model's.
    """
    from robodream.tokenizer.train import load_tokenizer

    run_dir = Path(run_dir)
    model, cfg = load_model_run(run_dir, model_cls, config_cls)
    norm_path = run_dir / "normalization.json"
    if norm_path.is_file():
        model.set_normalization(read_json(norm_path))
    tokenizer = load_tokenizer(run_dir / "tokenizer", device=device)
    m = model.cfg
    if tokenizer.cfg.latent_shape != (m.latent_channels, m.latent_size, m.latent_size):
        raise CheckpointError(f"{run_dir}: tokenizer latent shape {tokenizer.cfg.latent_shape} does not match the model")
    return model.to(device).eval().requires_grad_(False), tokenizer, cfg


def check_init_run(run_dir: str | os.PathLike, model_type: str) -> dict[str, Any]:
    """The config of the finished run ``run_dir`` that a new run of ``model_type`` starts from
    (``init_from``), checked before any data is encoded: its type and its final weights.

    Raises:
        CheckpointError: not a run, a run of another model type, or one without ``model.safetensors``.
    """
    saved = read_run_config(run_dir, model_type)
    if not (Path(run_dir) / "model.safetensors").is_file():
        raise CheckpointError(f"init_from {run_dir} has no model.safetensors (its training has not finished)")
    return saved


def warm_start_source(run: Run, init_from: str, model_type: str) -> str:
    """The run a new training run ``run`` warm-starts from: ``init_from`` checked by
    :func:`check_init_run`, or ``""`` without one or when ``run`` has a checkpoint to resume
    (a resumed run continues its own weights).

    Raises:
        CheckpointError: as :func:`check_init_run`.
    """
    if not init_from or latest_checkpoint(run.path) is not None:
        return ""
    check_init_run(init_from, model_type)
    return init_from


def init_from_run(model, run_dir: str | os.PathLike, config_cls, tokenizer: str | os.PathLike) -> None:
    """Initialise a freshly built ``model`` with the final (EMA) weights of the finished run
    ``run_dir`` (a warm start: weights only; the new run has its own optimizer, step counter,
    learning-rate warm-up and data normalisation, so call this before setting the normalisation).

    The run must be one of the same model: the same ``model_type``, the same resolved model
    config (``model.cfg``, data-derived fields included: tasks, cameras, dimensions) and latents
    of the same tokenizer weights (``tokenizer``, the new run's tokenizer run). One exception:
    a model may switch on modules the source run lacked, the flags of its class attribute
    ``ADDABLE_MODULES`` (flag -> parameter name prefixes; GigaWorld-Policy's RAMP conditioning,
    so a RAMP or RECAP policy fine-tunes a plain BC base policy); those parameters keep their
    fresh initialisation and the settings only they read (``ADDABLE_SETTINGS``) may differ.

    Raises:
        CheckpointError: as :func:`check_init_run`; another model config (naming the first
            settings that differ), another tokenizer, or weights that do not fit.
    """
    import filecmp

    from robodream.train.checkpoint import load_model_weights

    run_dir = Path(run_dir)
    saved = check_init_run(run_dir, model.model_type)
    if not isinstance(saved.get("model"), dict):
        raise CheckpointError(f"init_from {run_dir}/config.json has no model section")
    old = flatten(to_dict(run_config_from_dict(config_cls, saved["model"], f"{run_dir}/config.json")))
    new = flatten(to_dict(model.cfg))
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    # modules switched on here that the source lacked (the model's ADDABLE_MODULES): they start from
    # their fresh initialisation, and the settings only they read (ADDABLE_SETTINGS) may differ too
    addable = getattr(model, "ADDABLE_MODULES", {})
    added = [k for k in diff if k in addable and old.get(k) is False and new.get(k) is True]
    if added:
        diff = [k for k in diff if k not in added and k not in getattr(model, "ADDABLE_SETTINGS", ())]
    if diff:
        shown = ", ".join(f"model.{k} is {old.get(k)!r} there but {new.get(k)!r} here" for k in diff[:3])
        raise CheckpointError(f"init_from {run_dir} is another model ({shown}{', ...' if len(diff) > 3 else ''}); "
                              "a warm start needs a run of the same model config")
    theirs, ours = run_dir / "tokenizer" / "model.safetensors", Path(tokenizer) / "model.safetensors"
    if not (theirs.is_file() and ours.is_file() and filecmp.cmp(theirs, ours, shallow=False)):
        raise CheckpointError(f"init_from {run_dir} was trained on another tokenizer's latents than {tokenizer}")
    load_model_weights(model, run_dir / "model.safetensors", may_lack=tuple(p for k in added for p in addable[k]))


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = read_json(path / "meta.json")
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


__all__ = ["RESUMABLE", "RUN_TYPES", "Run", "check_init_run", "init_from_run", "load_latent_run", "load_run",
           "read_run_config", "register_run_type", "warm_start_source"]
