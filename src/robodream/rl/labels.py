"""RAMP's per-frame labels: the advantage indicator and the world model's future latent (issue 15, item 3).

GigaBrain-0.5M* (RAMP, arXiv 2602.12099) trains its policy on two per-frame conditions made
by the value world model (:mod:`robodream.world_model`, ``--value-frame``):

* the **advantage indicator** ``I = [A_t > eps]`` of the n-step TD advantage
  ``A_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}) - V(s_t)`` (:mod:`robodream.rl.advantages`),
  as RECAP (pi*0.6, Physical Intelligence 2025) does with its value function;
* the **future latent** ``z``: the world model's prediction of where the task goes from frame
  ``t``, which RAMP's "standard" inference mode computes with one denoising step.

:func:`relabel` (``robodream relabel``) computes both for every frame of one or more datasets
and writes them to one safetensors file; :func:`match_labels` / :func:`attach_labels` hand them
to policy training (``train policy --labels FILE``), as :func:`attach_intervention_weights` does
HG-DAgger's intervention-only weights (``train policy --intervention-only``); :class:`WorldModelFuture` computes ``z``
the same way at inference (``eval policy --mode standard``).

Values. The value world model predicts ``V`` of a chunk's *last* frame from a clip anchored
``n_w = chunk_steps`` env steps earlier, with the actions taken in between
(:meth:`~robodream.world_model.modeling.VideoWorldModel.predict_value`). So ``V(s_t)`` is the
value of the clip anchored at ``t - n_w``, with the episode's actual actions, for every frame
``t``; then ``V(s_{t+n})`` of the TD target is simply ``V`` of frame ``t + n`` (for ``n = n_w``:
the clip anchored at ``t``), and each frame costs one value prediction. Past an episode's
last frame ``V = 0`` (terminal). For ``t < n_w`` the anchor lies before the episode starts:
as :meth:`~robodream.data.windows.EpisodeTable.clips` does, the context frames are clamped to
frame 0 (the scene before the start is the first frame) and the steps before step 0 are
padded exactly as the world model's training pads steps outside an episode (zero normalised
actions), followed by the real actions ``a_0 .. a_{t-1}``: "the robot waits at frame 0, then
acts", a clip that ends in state ``s_t``.

Threshold. One ``eps`` over every frame of every given dataset, the ``1 - positive_fraction``
quantile of their advantages (:func:`~robodream.rl.advantages.indicator_threshold`), so that
``positive_fraction`` of the frames (up to ties, within one frame) are labelled positive
whatever the scale of ``V``. Default 0.3: RECAP sets its threshold per task so that about 30%
of the data is labelled positive; RAMP takes over RECAP's indicator.

Future latent. ``z`` of frame ``t`` is one Euler step from seeded noise of the world model's
*action-free* chunk prediction from frame ``t`` (the policy's future actions are unknown at
inference), keeping only the chunk's last future frame ``(N, C, h, w)``: one frame of tokens
keeps the policy's prefix short (its latency), and it is the state whose value the value
frame predicts. Frames of the tokenizer of the world model run.

File layout (safetensors; ``relabel`` writes it atomically): per dataset ``k`` (``dataset0``,
``dataset1``, ... in the order given), in the dataset's frame order (episodes in index order,
frames in time order)::

    {k}.indicator  (T_k,) uint8             1 where A > eps
    {k}.advantage  (T_k,) float32           A_t, return units
    {k}.value      (T_k,) float32           V(s_t), return units
    {k}.z          (T_k, N, C, h, w) float16 the future latent (absent when relabelled without z)

and the JSON metadata under the key ``robodream``: format, datasets (root, num_frames,
episode_lengths, achieved positive fraction), world model (run path, sha256 of its weights),
n, gamma, eps, positive_fraction, achieved_positive_fraction, value_steps, z_steps (0: no ``z``), seed,
precision (the world model's arithmetic: bf16 or fp32).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robodream.errors import ConfigError, DatasetError
from robodream.rl.advantages import advantage_indicator, indicator_threshold, n_step_advantages

#: The ``format`` entry of a labels file's metadata.
LABELS_FORMAT = "robodream.ramp_labels"
LABELS_VERSION = 1
#: Fraction of frames labelled positive (RECAP's ~30%).
DEFAULT_POSITIVE_FRACTION = 0.3
#: Added to an episode's seed to seed its z noise (kept apart from the action noise's stream).
Z_SEED_OFFSET = 1_000_000_007
#: relabel seeds dataset d's noise with seed + d * this (streams per dataset: resumable).
DATASET_SEED_STRIDE = 1009


def relabel(dataset_dirs: list[str | os.PathLike], world_model_run: str | os.PathLike, out_file: str | os.PathLike, *,
            n: int | None = None, gamma: float | None = None,
            positive_fraction: float = DEFAULT_POSITIVE_FRACTION, value_steps: int | None = None,
            with_z: bool = True, batch: int = 64, seed: int = 0, device: str = "cpu", precision: str = "auto",
            overwrite: bool = False) -> dict[str, Any]:
    """Label every frame of the datasets with RAMP's advantage indicator and future latent; write ``out_file``.

    Args:
        dataset_dirs: LeRobot datasets with ``next.reward`` (``robodream collect`` / ``rollout``
            write it), the world model's cameras and image size.
        world_model_run: a world-model run with a value frame (``--value-frame state_value`` or ``value``).
        n: TD steps (default: the world model's ``chunk_steps``), >= 1.
        gamma: discount in (0, 1] (default: the world model's, that of its value targets).
        positive_fraction: fraction of all frames labelled positive, in (0, 1).
        value_steps: Euler steps of each value prediction (default: the world model's
            ``n_sampling_steps``; fewer are faster and coarser). ``z`` always takes one.
        with_z: also predict every frame's future latent ``z`` (one world-model call a frame, as
            many as the values at ``value_steps=1``); without it the file holds no ``{k}.z``: the
            labels of a policy conditioned on the indicator only (RECAP) or weighted by the
            advantages (AWR).
        batch: clips per world-model call.
        seed: seeds the values' and the future latents' noise, one stream per dataset (same
            seed, batch, data and world model: the same file).
        precision: the world model's arithmetic: ``auto`` (bf16 autocast where the device has
            native bf16, as training does; else fp32), ``bf16`` or ``fp32``.
        overwrite: replace an existing ``out_file``.

    A killed relabel continues where it stopped: each finished dataset's predictions wait in
    :func:`partial_dir` until ``out`` is written, and a rerun with the same world model and
    settings takes them instead of predicting again (the same file as an uninterrupted run).

    Returns:
        The metadata written (see the module docstring), plus per-dataset summaries.

    Raises:
        ConfigError: no dataset or one given twice, a setting out of range, a world model
            without a value frame, ``out_file`` exists (and not ``overwrite``) or is a directory.
        CheckpointError: ``world_model_run`` is not a finished world-model run.
        DatasetError: a dataset that is missing or foreign, lacks ``next.reward``, or does not
            fit the world model (cameras, action size, image size), or has non-finite actions.
    """
    from safetensors.torch import save

    from robodream.data.lerobot import LeRobotDataset
    from robodream.utils.io import atomic_write_bytes
    from robodream.utils.progress import progress_bar
    from robodream.utils.run import code_version, now
    from robodream.world_model.train import load_world_model

    if not dataset_dirs:
        raise ConfigError("at least one dataset is required (--data)")
    if not 0 < positive_fraction < 1:
        raise ConfigError(f"--positive-fraction must be in (0, 1), got {positive_fraction}")
    from robodream.train.loop import PRECISIONS, autocast_context, resolve_precision

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision must be auto, bf16 or fp32, got {precision!r}")
    for name, v in (("--n", n), ("--value-steps", value_steps), ("--batch", batch)):
        if v is not None and v < 1:
            raise ConfigError(f"{name} must be >= 1, got {v}")
    if gamma is not None and not 0 < gamma <= 1:
        raise ConfigError(f"--gamma must be in (0, 1], got {gamma}")
    out = Path(out_file)
    if out.is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name (e.g. labels.safetensors)")
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists (pass --overwrite to replace it)")
    roots = [str(Path(p).resolve()) for p in dataset_dirs]
    if len(set(roots)) != len(roots):
        raise ConfigError(f"a dataset is given twice: {sorted(r for r in roots if roots.count(r) > 1)[0]}")
    model, tokenizer, _ = load_world_model(world_model_run, device=device)
    check_value_model(model, world_model_run)
    datasets = [LeRobotDataset(p) for p in dataset_dirs]
    for ds in datasets:  # every check before any work
        check_labelling_dataset(ds, model)
    cfg = model.cfg
    n = n or cfg.chunk_steps
    gamma = gamma or cfg.gamma
    wm_run = Path(world_model_run).resolve()
    wm_sha = weights_sha256(wm_run)
    partial = partial_dir(out)
    arithmetic = resolve_precision(torch.device(device), precision)
    parts = []
    with progress_bar() as progress:
        for d, (ds, root) in enumerate(zip(datasets, roots)):
            # each dataset's own noise streams: a resumed relabel draws what an uninterrupted one does
            gen_value = torch.Generator().manual_seed(seed + d * DATASET_SEED_STRIDE)
            gen_z = torch.Generator().manual_seed(seed + d * DATASET_SEED_STRIDE + Z_SEED_OFFSET)
            key = {"root": root, "episode_lengths": list(ds.episode_lengths), "world_model_sha256": wm_sha,
                   "value_steps": value_steps or cfg.n_sampling_steps, "with_z": with_z, "seed": seed,
                   "index": d, "batch": batch, "device": str(device), "precision": arithmetic}
            done = _read_partial(partial / f"dataset{d}.safetensors", key)
            if done is None:
                with autocast_context(torch.device(device), arithmetic):
                    done = _predict_dataset(ds, model, tokenizer, device, batch, value_steps, with_z, gen_value,
                                            gen_z, progress)
                _write_partial(partial / f"dataset{d}.safetensors", key, done)
            rewards, v = done["reward"].double().numpy(), done["value"].double().numpy()
            adv = np.concatenate([n_step_advantages(rewards[s0:s1], v[s0:s1], n, gamma)
                                  for s0, s1 in _episode_ranges(ds.episode_lengths)])
            parts.append({"value": v, "advantage": adv, "z": done.get("z")})
    all_adv = np.concatenate([p["advantage"] for p in parts])
    eps = indicator_threshold(all_adv, positive_fraction)
    tensors, entries = {}, []
    for d, (ds, p) in enumerate(zip(datasets, parts)):
        ind = advantage_indicator(p["advantage"], eps)
        key = f"dataset{d}"
        tensors.update({f"{key}.indicator": torch.from_numpy(ind.astype(np.uint8)),
                        f"{key}.advantage": torch.from_numpy(p["advantage"].astype(np.float32)),
                        f"{key}.value": torch.from_numpy(p["value"].astype(np.float32))})
        if with_z:
            tensors[f"{key}.z"] = p["z"]
        entries.append({"key": key, "root": roots[d], "num_frames": ds.num_frames, "num_episodes": ds.num_episodes,
                        "episode_lengths": list(ds.episode_lengths), "positive_fraction": float(ind.mean()),
                        "advantage_mean": float(p["advantage"].mean()), "value_mean": float(p["value"].mean())})
    meta = {"format": LABELS_FORMAT, "version": LABELS_VERSION, "created": now(), "code": code_version(),
            "datasets": entries,
            "world_model": {"run": str(wm_run), "sha256": wm_sha, "value_frame": cfg.value_frame,
                            "chunk_steps": cfg.chunk_steps, "action_drop_prob": cfg.action_drop_prob},
            "n": n, "gamma": gamma, "eps": eps, "positive_fraction": positive_fraction,
            "achieved_positive_fraction": float((all_adv > eps).mean()), "n_frames": len(all_adv),
            "value_steps": value_steps or cfg.n_sampling_steps, "z_steps": int(with_z), "seed": seed,
            "precision": arithmetic}
    atomic_write_bytes(out, save({k: v.contiguous() for k, v in tensors.items()}, metadata={"robodream": json.dumps(meta)}))
    shutil.rmtree(partial, ignore_errors=True)
    return meta


def partial_dir(out: str | os.PathLike) -> Path:
    """Where :func:`relabel` keeps each finished dataset's predictions until ``out`` is written:
    a hidden directory beside it, ``.<name>.partial``."""
    out = Path(out)
    return out.with_name(f".{out.name}.partial")


def _predict_dataset(ds, model, tokenizer, device, batch: int, value_steps: int | None, with_z: bool,
                     gen_value: torch.Generator, gen_z: torch.Generator, progress) -> dict[str, torch.Tensor]:
    """One dataset's rewards (T,) float64, values (T,) float32 and, ``with_z``, future latents (T, N, C, h, w) float16."""
    table, rewards, task_index, text = _encode(ds, model, tokenizer, device)
    bar = progress.add_task(f"label {Path(ds.root).name}", total=(1 + with_z) * len(table))
    values, z = [], []
    for b0 in range(0, len(table), batch):
        idx = torch.arange(b0, min(b0 + batch, len(table)))
        ctx, acts = value_clips(model, table, idx, device)
        ti, tx = task_index[table.task_index[idx]], None if text is None else text[table.task_index[idx]]
        values.append(model.predict_value(ctx, acts, ti, tx, n_steps=value_steps, generator=gen_value).cpu())
        progress.update(bar, advance=len(idx))
        if with_z:
            z.append(model.predict_future_latent(table.latents[idx].to(device), ti, tx, generator=gen_z).cpu())
            progress.update(bar, advance=len(idx))
    out = {"reward": torch.from_numpy(rewards), "value": torch.cat(values).float()}
    if with_z:
        out["z"] = torch.cat(z).half()
    return out


def _write_partial(path: Path, key: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    from robodream.utils.io import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()},
                                  metadata={"robodream": json.dumps(key)}))


def _read_partial(path: Path, key: dict[str, Any]) -> dict[str, torch.Tensor] | None:
    """A finished dataset's predictions from a killed relabel, if made with exactly ``key``'s settings."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            if json.loads((f.metadata() or {}).get("robodream", "null")) != key:
                return None
            return {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError):
        return None


def check_value_model(model, run: str | os.PathLike = "the world model") -> None:
    """Raise a one-line ConfigError unless ``model`` has a value frame (the ``V`` of the advantages)."""
    if not model.cfg.n_value_frames:
        raise ConfigError(f"{run} has no value frame (value_frame='none'), so it predicts no values; train a world "
                          "model with --value-frame state_value (or value) for robodream relabel")


def check_labelling_dataset(ds, model) -> None:
    """Raise a one-line DatasetError unless dataset ``ds`` can be labelled by world model ``model``:
    it records ``next.reward`` and has the model's cameras, action size and image size."""
    from robodream.world_model.evaluate import check_dataset

    if "next.reward" not in ds.features:
        raise DatasetError(f"{ds.root} has no next.reward, which the advantages need; record it with robodream "
                           "collect or robodream rollout")
    check_dataset(ds, model)


def value_clips(model, table, idx: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """The value clips that end at frames ``idx`` (B,) of ``table``: anchored ``chunk_steps`` earlier.

    Positions before the episode are clamped to its first frame and the steps outside it are
    zero normalised actions, as the world model's training pads them (module docstring).

    Returns:
        context (B, n_context_frames, N, C, h, w) and normalised frame_actions (B, T - 1, S, Da),
        on ``device``, for :meth:`~robodream.world_model.modeling.VideoWorldModel.predict_value`.
    """
    cfg = model.cfg
    c = table.clips(idx, [o - cfg.chunk_steps for o in cfg.frame_offsets])
    acts = model.normalize_action(c["actions"].to(device))
    acts = acts.masked_fill(c["action_is_pad"].to(device).unsqueeze(-1), 0.0)
    return c["latents"][:, :cfg.n_context_frames].to(device), acts


def _encode(ds, model, tokenizer, device):
    """(table of the dataset's episodes in order, rewards (T_total,), per-task world-model task rows
    (U,), per-task text embeddings (U, text_dim) or None); the table's task_index indexes both."""
    from robodream.data.latents import encode_dataset
    from robodream.data.windows import EpisodeTable
    from robodream.world_model.evaluate import batch_condition

    eps = encode_dataset(ds, tokenizer, list(model.cfg.cameras), list(range(ds.num_episodes)), task_offset={})
    tasks = list(dict.fromkeys(e["task"] for e in eps))
    for e in eps:
        e["task_index"] = tasks.index(e["task"])
    rewards = np.concatenate([np.asarray(e["reward"], np.float64) for e in eps])
    task_index, text = batch_condition(model, tasks, device)
    return EpisodeTable.from_episodes(eps), rewards, task_index, text


def _episode_ranges(lengths: list[int]) -> list[tuple[int, int]]:
    ends = np.cumsum(lengths)
    return [(int(e - n), int(e)) for e, n in zip(ends, lengths)]


def weights_sha256(run_dir: str | os.PathLike) -> str | None:
    """SHA-256 (hex) of a run's ``model.safetensors``, or None without one."""
    path = Path(run_dir) / "model.safetensors"
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def relocate_labels(src: str | os.PathLike, dst: str | os.PathLike, moves: dict[str, str], *,
                    drop_z: bool = False) -> dict[str, Any]:
    """Write the labels file ``src`` to ``dst`` for copies of its datasets and world model run.

    Labels are matched to datasets by resolved root (:func:`match_labels`); a loop that copies
    another loop's rollouts and world model (``robodream.rl.loop``, round 1 of ``bench rl``)
    copies their labels with this instead of computing them again. Every dataset root and the
    world model's run path that starts with a key of ``moves`` (a directory) gets that prefix
    replaced by its value; nothing else changes (the tensors, eps, world-model sha256). With
    ``drop_z`` the future latents are left out and ``z_steps`` is 0, the file :func:`relabel`
    writes ``with_z=False`` (the values' noise has its own stream, so they are the same).
    The metadata records ``relocated_from`` (``src``, resolved). Written atomically.

    Returns:
        the new file's metadata.

    Raises:
        DatasetError: ``src`` is not a readable labels file.
    """
    from safetensors.torch import save

    from robodream.utils.io import atomic_write_bytes

    meta, tensors = read_labels(src)

    def moved(path: str) -> str:
        for old, new in moves.items():
            old = str(Path(old).resolve())
            if path == old or path.startswith(old + os.sep):
                return str(Path(new).resolve()) + path[len(old):]
        return path

    meta = json.loads(json.dumps(meta))  # a deep copy
    for entry in meta["datasets"]:
        entry["root"] = moved(entry["root"])
    meta["world_model"]["run"] = moved(meta["world_model"]["run"])
    if drop_z:
        tensors = {k: v for k, v in tensors.items() if not k.endswith(".z")}
        meta["z_steps"] = 0
    meta["relocated_from"] = str(Path(src).resolve())
    atomic_write_bytes(dst, save({k: v.contiguous() for k, v in tensors.items()}, metadata={"robodream": json.dumps(meta)}))
    return meta


# ----------------------------------------------------------------------------- reading labels
def read_labels(path: str | os.PathLike, *, tensors: bool = True) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The metadata and tensors of a labels file written by :func:`relabel` (``tensors=False``:
    the metadata alone, from the file's header, and an empty dict).

    Raises:
        DatasetError: a missing or unreadable file, or not a labels file.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"labels file {path} does not exist; make it with robodream relabel")
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {}).get("robodream", "null"))
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (SafetensorError, OSError, ValueError) as e:
        raise DatasetError(f"{path} is not a readable labels file: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != LABELS_FORMAT:
        raise DatasetError(f"{path} is not a robodream relabel file (no '{LABELS_FORMAT}' metadata)")
    return meta, data


@dataclass
class DatasetLabels:
    """The labels of one dataset, in its frame order (see the module docstring)."""

    indicator: torch.Tensor  # (T,) uint8, 1 where A > eps
    z: torch.Tensor | None  # (T, N, C, h, w) float16 future latents; None: relabelled without z
    episode_lengths: list[int]
    file: str  # the labels file they come from
    advantage: torch.Tensor | None = None  # (T,) float32 n-step TD advantages (AWR's weights)


def match_labels(files: list[str | os.PathLike] | tuple[str, ...], datasets: list) -> tuple[list[DatasetLabels], dict]:
    """The labels of each of ``datasets`` (LeRobotDataset, matched by resolved root) from ``files``.

    Returns:
        per dataset its :class:`DatasetLabels`, and a summary for the run's records: ``files``,
        ``world_model`` (run path), ``world_model_sha256``, and per file ``eps``,
        ``positive_fraction``, ``n``, ``gamma``.

    Raises:
        DatasetError: an unreadable file, a dataset no file labels, or stale labels (the
            dataset's frame count or episode lengths differ from those labelled: relabel it).
        ConfigError: a dataset labelled by two files, or files made by different world models
            (one ``z`` model serves inference).
    """
    found: dict[str, DatasetLabels] = {}
    world_models, summary = set(), {"files": [], "per_file": []}
    for file in files:
        meta, tensors = read_labels(file)
        world_models.add((meta["world_model"]["run"], meta["world_model"].get("sha256")))
        summary["files"].append(str(Path(file).resolve()))
        summary["per_file"].append({k: meta.get(k) for k in ("eps", "positive_fraction", "achieved_positive_fraction",
                                                                "n", "gamma", "value_steps", "created")})
        for entry in meta["datasets"]:
            if entry["root"] in found:
                raise ConfigError(f"dataset {entry['root']} is labelled by both {found[entry['root']].file} and {file}")
            k = entry["key"]
            found[entry["root"]] = DatasetLabels(tensors[f"{k}.indicator"], tensors.get(f"{k}.z"),
                                                 list(entry["episode_lengths"]), str(file),
                                                 advantage=tensors.get(f"{k}.advantage"))
    if len(world_models) > 1:
        raise ConfigError(f"the labels files come from different world models {sorted(w for w, _ in world_models)}; "
                          "relabel every dataset with one")
    out = []
    for ds in datasets:
        root = str(Path(ds.root).resolve())
        if root not in found:
            raise DatasetError(f"{ds.root} is not labelled in {', '.join(map(str, files))}; run robodream relabel "
                               "with every --data dataset")
        lab = found[root]
        if lab.episode_lengths != list(ds.episode_lengths):
            raise DatasetError(f"stale labels: {ds.root} has {ds.num_frames} frames in {ds.num_episodes} episodes, but "
                               f"{lab.file} labelled {sum(lab.episode_lengths)} frames in {len(lab.episode_lengths)}; "
                               "run robodream relabel again")
        out.append(lab)
    if world_models:
        (summary["world_model"], summary["world_model_sha256"]), = world_models
    return out, summary


def attach_labels(episodes: list[dict], labels: list[DatasetLabels], *, conditioning: bool = True,
                  awr: tuple[float, float] | None = None) -> None:
    """Add ``indicator`` (T,) uint8 and ``z`` (T, N, C, h, w) float16 (``conditioning``) and, with
    ``awr = (beta, w_max)``, ``sample_weight`` (T,) float32 = :func:`awr_weights` of the
    advantages, to encoded episodes (dicts of :func:`~robodream.data.latents.encode_dataset` with
    ``source`` and ``episode_index``), from ``labels[source]``; in place.

    Raises:
        DatasetError: ``awr`` and a labels file without advantages.
    """
    starts = [np.concatenate([[0], np.cumsum(lab.episode_lengths)]) for lab in labels]
    if awr is not None:
        for lab in labels:
            if lab.advantage is None:
                raise DatasetError(f"{lab.file} holds no advantages (AWR weights); run robodream relabel again")
    for e in episodes:
        d, i = int(e["source"]), int(e["episode_index"])
        s0, T = int(starts[d][i]), len(e["action"])
        if conditioning:
            e["indicator"] = labels[d].indicator[s0:s0 + T]
            if labels[d].z is not None:
                e["z"] = labels[d].z[s0:s0 + T]
        if awr is not None:
            e["sample_weight"] = awr_weights(labels[d].advantage[s0:s0 + T], *awr)


def attach_intervention_weights(episodes: list[dict], datasets: list) -> None:
    """HG-DAgger's data (Kelly et al., ICRA 2019): multiply each encoded episode's
    ``sample_weight`` (T,) float32 (1 where absent) by 1 on frames whose action came from the
    expert and 0 on the policy's own frames; in place.

    A dataset recorded by ``robodream rollout`` (``"source": "policy-rollout"`` in
    ``meta/robodream.json``) gives weight 1 exactly where ``complementary_info.is_intervention``
    is True (the takeover source acted); every other dataset counts as demonstrations (weight 1
    on every frame; ``collect`` writes ``is_intervention`` False there, as LeRobot does). A
    window's weight is that of its anchor frame (the first step of its action chunk).

    Args:
        episodes: dicts of :func:`~robodream.data.latents.encode_dataset` with ``source`` and
            ``episode_index`` (``source`` indexes ``datasets``).
        datasets: the run's :class:`~robodream.data.lerobot.LeRobotDataset` list.

    Raises:
        DatasetError: a rollout dataset without ``complementary_info.is_intervention``.
    """
    from robodream.data.collect import dataset_provenance
    from robodream.rl.rewards import INTERVENTION, ROLLOUT_SOURCE

    rollout = [(dataset_provenance(ds) or {}).get("source") == ROLLOUT_SOURCE for ds in datasets]
    for ds, is_rollout in zip(datasets, rollout):
        if is_rollout and INTERVENTION not in ds.features:
            raise DatasetError(f"{ds.root} is a policy rollout without {INTERVENTION}; record it again with "
                               "robodream rollout")
    for e in episodes:
        d, T = int(e["source"]), len(e["action"])
        w = torch.ones(T, dtype=torch.float32)
        if rollout[d]:
            flag = datasets[d].episode(int(e["episode_index"])).extra[INTERVENTION]
            w = torch.as_tensor(np.asarray(flag, dtype=bool).reshape(-1), dtype=torch.float32)
        e["sample_weight"] = e["sample_weight"] * w if "sample_weight" in e else w


#: AWR's temperature and weight clip defaults (Peng et al. 2019, "Advantage-Weighted Regression",
#: arXiv 1910.00177, use beta = 0.05 on normalised advantages and w_max = 20); our advantages are
#: in reward units (RAMP's -1 per step, so |A| ~ 1 per step of progress), hence beta = 1.
DEFAULT_AWR_BETA = 1.0
DEFAULT_AWR_MAX_WEIGHT = 20.0


def awr_weights(advantage: torch.Tensor, beta: float = DEFAULT_AWR_BETA,
                max_weight: float = DEFAULT_AWR_MAX_WEIGHT) -> torch.Tensor:
    """AWR's per-sample weights ``w = min(exp(A / beta), w_max)`` (Peng et al. 2019, Eq. 8 with
    the weight clip of their implementation): ``advantage`` (T,) in reward units, ``beta`` > 0
    (same units), ``max_weight`` > 0 -> (T,) float32.

    Raises:
        ConfigError: ``beta`` or ``max_weight`` <= 0.
    """
    if not (beta > 0 and max_weight > 0):
        raise ConfigError(f"awr_beta and awr_max_weight must be > 0, got {beta}, {max_weight}")
    a = torch.as_tensor(advantage, dtype=torch.float64)
    return torch.clamp(torch.exp(a / beta), max=max_weight).float()


# ----------------------------------------------------------------------------- inference
class WorldModelFuture:
    """RAMP's "standard" mode: the future latent ``z`` of the current frame at inference.

    The same computation as the labels' ``z`` (:meth:`~robodream.world_model.modeling.VideoWorldModel.predict_future_latent`:
    one action-free Euler step, the chunk's last frame), called by
    :class:`~robodream.policy.runner.PolicyRunner` once per chunk.

    Args:
        model, tokenizer: a trained world model and its tokenizer (eval mode).
        task: the instruction (its row, or its text embedding for a task the world model does not know).
        cameras, latent_shape: the policy's camera order and latent (C, h, w), which ``z`` must have.
        policy_tokenizer: the policy's tokenizer; when it has the world model's tokenizer's
            weights, the policy's latents of the frame are reused (one encode saved).
        seed: seeds the noise until :meth:`reset`.

    Raises:
        ConfigError: a world model of other cameras or another latent shape than the policy.
    """

    def __init__(self, model, tokenizer, task: str, *, cameras: tuple[str, ...], latent_shape: tuple[int, int, int],
                 policy_tokenizer=None, seed: int = 0) -> None:
        from robodream.world_model.evaluate import task_condition

        cfg = model.cfg
        if tuple(cfg.cameras) != tuple(cameras) or (cfg.latent_channels, cfg.latent_size, cfg.latent_size) != tuple(latent_shape):
            raise ConfigError(f"the world model predicts cameras {list(cfg.cameras)} with latents "
                              f"{(cfg.latent_channels, cfg.latent_size, cfg.latent_size)}, but the policy reads "
                              f"{list(cameras)} with latents {tuple(latent_shape)}")
        self.model, self.tokenizer = model, tokenizer
        self.device = model.is_context.device
        self.task_index, self.text = task_condition(model, task, self.device)
        self.shared_tokenizer = policy_tokenizer is not None and _same_weights(tokenizer, policy_tokenizer)
        self.gen = torch.Generator()
        self.reset(seed)

    def reset(self, seed: int) -> None:
        """Re-seed the noise (the episode's seed; offset so it never repeats the action noise)."""
        self.gen.manual_seed(int(seed) + Z_SEED_OFFSET)

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """frames (N, H, W, 3) uint8 and the policy's latents (N, C, h, w) of the current frame -> z (1, N, C, h, w)."""
        cur = latents if self.shared_tokenizer else self.tokenizer.encode(frames)
        return self.model.predict_future_latent(cur.unsqueeze(0), self.task_index, self.text, generator=self.gen)


def load_world_model_future(run_dir: str | os.PathLike, task: str, *, cameras: tuple[str, ...],
                            latent_shape: tuple[int, int, int], device: str = "cpu", policy_tokenizer=None,
                            seed: int = 0) -> WorldModelFuture:
    """A :class:`WorldModelFuture` of the world-model run ``run_dir``.

    Raises:
        CheckpointError: not a finished world-model run. ConfigError: as :class:`WorldModelFuture`.
    """
    from robodream.world_model.train import load_world_model

    model, tokenizer, _ = load_world_model(run_dir, device=device)
    return WorldModelFuture(model, tokenizer, task, cameras=cameras, latent_shape=latent_shape,
                            policy_tokenizer=policy_tokenizer, seed=seed)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape and torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)
