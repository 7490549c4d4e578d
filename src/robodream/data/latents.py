"""Tokenizer-encoded episodes: the training data of every model over image latents.

Frames are encoded once by the frozen tokenizer (per run, not per step); the last
``heldout_fraction`` of each dataset's episodes are held out and never trained on. Under
torchrun, rank 0 encodes and the other processes receive the encoded episodes
(:func:`share_episodes`), so a run of N processes encodes once, not N times.

An encoded episode is a dict::

    latents     (T, n_cam, C, h, w) float32   tokenizer latents of every camera
    state       (T, Ds) float32                observation.state (Ds = 0 without it)
    action      (T, Da) float32
    task_index  int                            row in the run's task vocabulary
    task        str                            the instruction
    views       (T, K, n_cam, C, h, w) float32 K augmented copies (random shift, colour jitter), if asked
    frames      (T, n_cam, 3, H, W) uint8      the raw frames, if asked (models with a pixel stem)
    view_frames (T, K, n_cam, 3, H, W) uint8   the augmented copies' raw frames, with both
    source      int                            index of the episode's dataset in the run's list
    episode_index int                          the episode's index in its dataset
    success     (T,) bool                      next.success, when the dataset records it
    reward      (T,) float32                   next.reward (RAMP's reward: value targets), when recorded
    segmentation (T, n_cam, H, W) uint8        per-camera segmentation class ids, if asked (supervised keypoints)
    env_state   (T, De) float32                observation.environment_state (privileged object and
                                               goal state: auxiliary training targets), when recorded

Image augmentation, the standard pair of visuomotor policy learning: random shift (DrQ,
Kostrikov et al. 2020; the random crop of Diffusion Policy): frames are translated by up to
``pad`` pixels (edges replicated); and colour jitter (torchvision's ColorJitter with brightness
= contrast = saturation = ``color`` and hue = ``color / 2``, written here in numpy because
there is no CPU torchvision). Since frames are encoded once, ``K`` augmented copies of every
episode are encoded, each copy with one draw per camera for the whole episode (so a training
window's reference and future frames change together, as a camera or lighting change would).
"""

from __future__ import annotations

import numpy as np
import torch

from robodream.data.lerobot import LeRobotDataset
from robodream.data.lerobot_format import ENV_STATE
from robodream.data.windows import OPTIONAL_FIELDS
from robodream.errors import DatasetError
from robodream.tokenizer.model import ImageTokenizer, encode_frames
from robodream.train.distributed import broadcast_object, broadcast_tensors, is_main, world_size
from robodream.utils.progress import progress_bar

#: What a model over latents may need from a dataset, with the reason given in the error.
NEEDS = {"observation.state": "proprioception", "action": "actions"}


def split_episodes(n: int, heldout_fraction: float) -> tuple[list[int], list[int]]:
    """(train, held-out) episode indices: the last ``ceil(n * f)`` episodes (>= 1 when n > 1) are held out.

    A one-episode dataset has no held-out episode (``([0], [])``).
    """
    n_held = int(np.ceil(n * heldout_fraction)) if n > 1 else 0
    n_held = min(max(n_held, 1 if n > 1 else 0), n - 1)
    return list(range(n - n_held)), list(range(n - n_held, n))


def check_datasets(datasets: list[LeRobotDataset], tokenizer: ImageTokenizer,
                   needs: tuple[str, ...] = ("observation.state", "action")) -> tuple[list[str], int, int]:
    """Datasets one model can train on: same cameras, the tokenizer's image size, the same
    state and action sizes, and the features ``needs``. Returns (cameras, state_dim, action_dim).

    Raises:
        DatasetError: no camera, mismatched cameras, image sizes or dimensions, or a needed
            feature missing (LeRobot datasets may lack observation.state or action).
    """
    for ds in datasets:
        if not ds.cameras:
            raise DatasetError(f"{ds.root} has no camera (video or image feature); models over latents need one")
        for feature in needs:
            if (ds.state_dim if feature == "observation.state" else ds.action_dim) == 0:
                raise DatasetError(f"{ds.root} has no {feature}; this model needs {NEEDS[feature]}")
    cams = {tuple(ds.cameras) for ds in datasets}
    if len(cams) != 1:
        raise DatasetError(f"datasets have different cameras {sorted(cams)}")
    for ds in datasets:
        if ds.image_size != (tokenizer.cfg.image_size, tokenizer.cfg.image_size):
            raise DatasetError(f"{ds.root} has {ds.image_size[0]}x{ds.image_size[1]} images but the tokenizer "
                               f"expects {tokenizer.cfg.image_size}x{tokenizer.cfg.image_size}")
    dims = {(ds.state_dim, ds.action_dim) for ds in datasets}
    if len(dims) != 1:
        raise DatasetError(f"datasets have different (state, action) dimensions {sorted(dims)}")
    sd, ad = dims.pop()
    return list(cams.pop()), sd, ad


def check_finite(ds: LeRobotDataset, episodes: list[int] | None = None) -> None:
    """Raise a DatasetError naming the dataset, episode and frame of the first non-finite
    observation.state or action value (NaN or inf would poison normalisation and training)."""
    for i in range(ds.num_episodes) if episodes is None else episodes:
        ep = ds.episode(i)
        for name, values in (("observation.state", ep.state), ("action", ep.action)):
            bad = np.argwhere(~np.isfinite(values))
            if len(bad):
                raise DatasetError(f"{ds.root}: episode {i} has a non-finite {name} value at frame {int(bad[0][0])}")


def shifted(frames: np.ndarray, dy: int, dx: int, pad: int) -> np.ndarray:
    """Frames (T, H, W, 3) translated by (dy, dx) pixels (|dy|, |dx| <= pad): output pixel (y, x) is
    input pixel (y + dy, x + dx), the edge rows and columns replicated beyond the image."""
    H, W = frames.shape[1:3]
    p = np.pad(frames, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    return p[:, pad + dy:pad + dy + H, pad + dx:pad + dx + W]


#: Luminance weights (ITU-R BT.601), as torchvision's rgb_to_grayscale.
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def color_jittered(frames: np.ndarray, brightness: float, contrast: float, saturation: float,
                   hue: float) -> np.ndarray:
    """Frames (T, H, W, 3) uint8 with torchvision ColorJitter's four operations, in its default
    order: brightness (x b), contrast (blend with the mean grey level, factor c), saturation
    (blend with the grey image, factor s), hue (rotation by ``hue`` turns, in [-0.5, 0.5],
    about the grey axis in YIQ space, a close linear stand-in for torchvision's HSV shift).
    Factors of 1 and hue 0 return the frames unchanged."""
    x = frames.astype(np.float32) / 255.0
    x = np.clip(x * brightness, 0, 1)
    grey = x @ _LUMA  # (T, H, W)
    x = np.clip((x - grey.mean(axis=(1, 2), keepdims=True)[..., None]) * contrast
                + grey.mean(axis=(1, 2), keepdims=True)[..., None], 0, 1)
    grey = (x @ _LUMA)[..., None]
    x = np.clip(grey + (x - grey) * saturation, 0, 1)
    if hue:
        to_yiq = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32)
        a = 2 * np.pi * hue
        rot = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]], np.float32)
        m = np.linalg.inv(to_yiq) @ rot @ to_yiq
        x = np.clip(x @ m.T.astype(np.float32), 0, 1)
    return (x * 255).round().astype(np.uint8)


def augmented(frames: np.ndarray, rng: np.random.Generator, pad: int, color: float) -> np.ndarray:
    """One augmented copy of a camera's frames (T, H, W, 3) uint8: a random shift of at most
    ``pad`` pixels, then colour jitter of strength ``color`` (factors in [1 - color, 1 + color],
    hue in [-color / 2, color / 2] turns); one draw from ``rng`` for all T frames."""
    dy, dx = rng.integers(-pad, pad + 1, 2) if pad else (0, 0)
    out = shifted(frames, int(dy), int(dx), pad) if pad else frames
    if color:
        b, c, s = rng.uniform(max(0.0, 1 - color), 1 + color, 3)
        out = color_jittered(out, b, c, s, rng.uniform(-color / 2, color / 2))
    return np.ascontiguousarray(out)


def encode_dataset(ds: LeRobotDataset, tokenizer: ImageTokenizer, cameras: list[str], episodes: list[int],
                   batch: int = 512, progress=None, task_offset: dict[str, int] | None = None,
                   views: int = 0, pad: int = 4, rng: np.random.Generator | None = None,
                   keep_frames: bool = False, color: float = 0.0, keep_segmentation: bool = False) -> list[dict]:
    """Encode the frames of ``episodes`` with the tokenizer (see the module docstring for the dicts).

    ``views`` > 0 also encodes that many augmented copies of each episode (:func:`augmented`:
    shifts of at most ``pad`` pixels and colour jitter of strength ``color``, drawn from
    ``rng``, one draw per copy and camera). ``keep_frames`` also keeps the raw frames
    (``frames``, and ``view_frames`` of the copies; uint8); ``keep_segmentation`` the cameras'
    segmentation (``segmentation``, unaugmented: not with ``views``).

    Raises:
        DatasetError: a non-finite state or action value (named by dataset, episode and frame).
    """
    check_finite(ds, episodes)
    frames = {c: ds.all_frames(c) for c in cameras}
    seg = {c: ds.all_segmentation(c) for c in cameras} if keep_segmentation else {}
    rng = rng if rng is not None else np.random.default_rng(0)
    out = []
    for i in episodes:
        ep = ds.episode(i)
        lats = [encode_frames(tokenizer, frames[c][i], batch).cpu() for c in cameras]
        e = {"latents": torch.stack(lats, 1), "state": torch.as_tensor(ep.state), "action": torch.as_tensor(ep.action),
             "task_index": (task_offset or {}).get(ep.task, ep.task_index), "task": ep.task, "episode_index": i}
        if "next.success" in ep.extra:
            e["success"] = torch.as_tensor(np.asarray(ep.extra["next.success"], dtype=bool).reshape(-1))
        if "next.reward" in ep.extra:
            e["reward"] = torch.as_tensor(np.asarray(ep.extra["next.reward"], dtype=np.float32).reshape(-1))
        if ENV_STATE in ep.extra:
            e["env_state"] = torch.as_tensor(np.asarray(ep.extra[ENV_STATE], dtype=np.float32).reshape(len(ep.action), -1))
        if keep_segmentation:
            e["segmentation"] = torch.from_numpy(np.stack([seg[c][i] for c in cameras], 1))  # (T, n_cam, H, W)
        if keep_frames:
            e["frames"] = torch.from_numpy(np.stack([frames[c][i] for c in cameras], 1)).permute(0, 1, 4, 2, 3).contiguous()
        if views:
            raw = [[augmented(frames[c][i], rng, pad, color) for c in cameras] for _ in range(views)]
            e["views"] = torch.stack([torch.stack([encode_frames(tokenizer, f, batch).cpu() for f in copy], 1)
                                      for copy in raw], 1)  # (T, K, n_cam, C, h, w)
            if keep_frames:
                e["view_frames"] = torch.from_numpy(np.stack([np.stack(copy, 1) for copy in raw], 1)).permute(
                    0, 1, 2, 5, 3, 4).contiguous()  # (T, K, n_cam, 3, H, W)
        out.append(e)
        if progress is not None:
            progress()
    return out


def encode_run_data(datasets: list[LeRobotDataset], tokenizer: ImageTokenizer, cameras: list[str],
                    heldout_fraction: float, views: int = 0, pad: int = 4,
                    seed: int = 0, keep_frames: bool = False,
                    color: float = 0.0, keep_segmentation: bool = False) -> tuple[list[str], list[dict], list[dict]]:
    """Task vocabulary and tokenizer-encoded episodes of a training run, split per dataset.

    Returns ``(tasks, train_episodes, heldout_episodes)``: the instruction strings in
    first-seen order (index = task-embedding row) and :func:`encode_dataset` episodes; the
    last ``heldout_fraction`` of each dataset's episodes is held out (never trained on).
    ``views`` augmented copies (shifts of at most ``pad`` pixels, colour jitter of strength
    ``color``, draws from ``seed``) of the training episodes only are encoded too (see the
    module docstring);
    ``keep_frames`` keeps every episode's raw frames too, ``keep_segmentation`` their segmentation.
    Under torchrun rank 0 encodes and shares the result (the others must call this too).

    Raises:
        DatasetError: as :func:`encode_dataset` (raised on every process).
    """
    tasks: list[str] = []
    for ds in datasets:
        tasks += [t for t in ds.tasks if t not in tasks]
    vocab = {t: i for i, t in enumerate(tasks)}
    train_eps: list[dict] = []
    held_eps: list[dict] = []
    error = None
    if is_main():
        try:
            for ds in datasets:  # before any work
                check_finite(ds)
            with progress_bar() as progress:
                bar = progress.add_task("encode frames", total=sum(ds.num_episodes for ds in datasets))
                adv = lambda: progress.update(bar, advance=1)  # noqa: E731
                rng = np.random.default_rng(seed)
                for d, ds in enumerate(datasets):
                    tr, he = split_episodes(ds.num_episodes, heldout_fraction)
                    tr_eps = encode_dataset(ds, tokenizer, cameras, tr, progress=adv, task_offset=vocab,
                                            views=views, pad=pad, rng=rng, keep_frames=keep_frames,
                                            color=color, keep_segmentation=keep_segmentation)
                    he_eps = encode_dataset(ds, tokenizer, cameras, he, progress=adv, task_offset=vocab,
                                            keep_frames=keep_frames, keep_segmentation=keep_segmentation)
                    for e in tr_eps + he_eps:
                        e["source"] = d
                    train_eps += tr_eps
                    held_eps += he_eps
        except DatasetError as e:
            if world_size() == 1:
                raise
            error = str(e)
    if world_size() > 1:
        error = broadcast_object(error)
        if error is not None:
            raise DatasetError(error)
        n_train = broadcast_object(len(train_eps))
        both = share_episodes(train_eps + held_eps)
        train_eps, held_eps = both[:n_train], both[n_train:]
    return tasks, train_eps, held_eps


def share_episodes(episodes: list[dict]) -> list[dict]:
    """Rank 0's encoded episodes on every process (a collective; one process: returned as is).

    The tensors travel as one concatenated buffer per key (latents, state, action, and each key of
    :data:`robodream.data.windows.OPTIONAL_FIELDS` present) over the CPU (gloo) group; only their
    shapes, dtypes, task strings, sources and episode indices go as objects.
    """
    if world_size() == 1:
        return episodes
    meta = broadcast_object([(len(e["action"]), int(e["task_index"]), e["task"], e.get("source"),
                             e.get("episode_index")) for e in episodes] if is_main() else None)
    keys = broadcast_object([k for k in ("latents", "state", "action", *OPTIONAL_FIELDS) if k in episodes[0]]
                            if is_main() and episodes else None)
    shapes = broadcast_object([(tuple(episodes[0][k].shape[1:]), episodes[0][k].dtype) for k in keys]
                              if is_main() and episodes else None)
    if not meta:
        return []
    total = sum(m[0] for m in meta)
    if is_main():
        bufs = [torch.cat([e[k].to(dt) for e in episodes]) for k, (_, dt) in zip(keys, shapes)]
    else:
        bufs = [torch.empty(total, *s, dtype=dt) for s, dt in shapes]
    broadcast_tensors(bufs)
    out, pos = [], 0
    for T, task_index, task, source, episode_index in meta:
        e = {**{k: b[pos:pos + T] for k, b in zip(keys, bufs)}, "task_index": task_index, "task": task}
        if source is not None:
            e["source"] = source
        if episode_index is not None:
            e["episode_index"] = episode_index
        out.append(e)
        pos += T
    return out
