"""Per-frame Gaussians of a whole dataset, stored as a companion directory (GWM, arXiv 2508.17600, Sec. 3.1).

``robodream gaussians --data DATASET --out GAUSSIANS`` turns every frame of a dataset recorded
with ``collect --with-depth`` into :func:`~robodream.gwm.pixel.pixel_gaussians` of its static
cameras. The result is a *companion directory*, not a dataset feature:

- 2048 x 14 numbers a frame are 57 KB in float16 — larger than the frame's video — and a LeRobot
  reader (ours or ``lerobot``) would decode them for every sample even when only images are
  wanted. A memory-mapped array reads one frame in microseconds and leaves the dataset as it is.
- They are derived data: rebuilt from the dataset at any time, with other settings.

Layout (``GAUSSIANS/``)::

    gaussians.npy     (F, n, 14) float16, frames of all episodes in dataset order (layout:
                      robodream.gwm.pixel; float16 keeps centres to ~1 mm at 2 m, below the
                      ~13 mm footprint of a 64x64 pixel at 1 m)
    background.npy    (F, 3) float16, what lies beyond the scene in each frame
    cameras.npz       Ks (E, V, 3, 3), viewmats (E, V, 4, 4) per episode, float64
    index.json        cameras, episode offsets/lengths, source dataset, settings, code version
    metrics.json      ms per frame (and held-out PSNR once evaluated)

Writes are atomic (the directory appears complete or not at all).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from robodream.errors import ConfigError, DatasetError
from robodream.gwm.pixel import GAUSSIAN_DIM, PixelGaussianConfig, pixel_gaussians, render

INDEX_FILE = "index.json"
FORMAT = "robodream.gwm.gaussian_frames/1"


def static_cameras(ds) -> list[str]:
    """The dataset's cameras that do not move with the robot (back-projection needs fixed poses)."""
    from robodream.transfer.pairs import WRIST_CAMERAS

    return [c for c in ds.cameras if c not in WRIST_CAMERAS]


def episode_camera_matrices(ds, cameras: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Ks (E, V, 3, 3) and world-to-camera (E, V, 4, 4) of ``cameras`` in every episode of ``ds``.

    The cameras are set up as the dataset was recorded (its provenance: task, shift, image size),
    reset with each episode's seed (a random camera shift is drawn per seed).

    Raises:
        DatasetError: a dataset without robodream provenance (one env seed per episode).
    """
    from robodream.data.collect import replayable_provenance
    from robodream.envs.meta_world import MetaWorldEnv
    from robodream.transfer.pairs import source_env_config

    prov = replayable_provenance(ds, "given camera poses")
    cfg = dataclasses.replace(source_env_config(prov, cameras[0], max_steps=1), cameras=tuple(cameras))
    Ks, Ts = [], []
    env = MetaWorldEnv(cfg)
    try:
        for s in prov["seeds"]:
            env.reset(int(s))
            mats = [env.camera_matrices(c) for c in cameras]
            Ks.append(np.stack([m[0] for m in mats]))
            Ts.append(np.stack([m[1] for m in mats]))
    finally:
        env.close()
    return np.stack(Ks), np.stack(Ts)


def check_depth_source(ds, cameras: list[str]) -> None:
    """Raise DatasetError unless ``ds`` is real (not generated) and holds every camera's depth."""
    from robodream.data.collect import require_real
    from robodream.data.lerobot_format import DEPTH_PREFIX

    require_real(ds, "per-frame Gaussians (they back-project its depth through its cameras)")
    for cam in cameras:
        if cam not in ds.cameras:
            raise DatasetError(f"{ds.root} has no camera {cam!r}; it has {', '.join(ds.cameras) or 'none'}")
        if DEPTH_PREFIX + cam not in ds.array_keys:
            raise DatasetError(f"{ds.root} has no {DEPTH_PREFIX + cam} feature: frames without depth cannot become "
                               "Gaussians (record with robodream collect --with-depth)")


def episode_rgbd(ds, i: int, cameras: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """RGB (T, V, H, W, 3) uint8 and depth (T, V, H, W) float32 metres of episode ``i`` of ``ds``
    (recorded by ``collect --with-depth``; :func:`check_depth_source` first)."""
    from robodream.data.lerobot_format import DEPTH_PREFIX
    from robodream.transfer.pairs import depth_from_mm

    rgb = np.stack([ds.frames(i, c) for c in cameras], 1)
    depth = np.stack([depth_from_mm(ds.array(i, DEPTH_PREFIX + c)) for c in cameras], 1)
    return rgb, depth


def build_gaussian_frames(data: str | Path, out: str | Path, *, cameras: list[str] | None = None,
                          cfg: PixelGaussianConfig | None = None, episodes: int | None = None, batch: int = 16,
                          overwrite: bool = False, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Per-frame Gaussians of every frame of ``data`` (first ``episodes`` episodes), written to ``out``.

    Args:
        data: a LeRobotDataset v3.0 recorded by ``robodream collect --with-depth``.
        out: the companion directory to create (module docstring).
        cameras: input cameras (default: the dataset's static cameras).
        cfg: :class:`~robodream.gwm.pixel.PixelGaussianConfig`.
        batch: frames per call (speed and memory only).

    Returns:
        The index (also written as ``index.json``) with ``ms_per_frame`` (Gaussians only, not
        video decoding).

    Raises:
        DatasetError: bad dataset, generated dataset, missing camera or depth; FileExistsError
            when ``out`` exists and not ``overwrite``.
    """
    from robodream.data.lerobot import LeRobotDataset
    from robodream.utils.io import atomic_directory, atomic_write_json
    from robodream.utils.run import code_version, cpu_model, now

    cfg = cfg or PixelGaussianConfig()
    ds = LeRobotDataset(data)
    cams = list(cameras) if cameras else static_cameras(ds)
    if not cams:
        raise DatasetError(f"{ds.root} has no static camera (only {', '.join(ds.cameras)})")
    check_depth_source(ds, cams)
    n_ep = ds.num_episodes if episodes is None else min(episodes, ds.num_episodes)
    Ks, Ts = episode_camera_matrices(ds, cams)
    Ks, Ts = Ks[:n_ep], Ts[:n_ep]
    lengths = [int(ds.episode_lengths[i]) for i in range(n_ep)]
    F = sum(lengths)
    out = Path(out)
    t_gauss = 0.0
    with atomic_directory(out, overwrite=overwrite) as tmp:
        g_all = np.lib.format.open_memmap(tmp / "gaussians.npy", mode="w+", dtype=np.float16,
                                          shape=(F, cfg.n, GAUSSIAN_DIM))
        bg_all = np.zeros((F, 3), dtype=np.float16)
        off = 0
        for i in range(n_ep):
            rgb, depth = episode_rgbd(ds, i, cams)
            for b0 in range(0, lengths[i], batch):
                t0 = time.perf_counter()
                g, bg = pixel_gaussians(torch.from_numpy(rgb[b0:b0 + batch]), torch.from_numpy(depth[b0:b0 + batch]),
                                        torch.from_numpy(Ks[i]).float(), torch.from_numpy(Ts[i]).float(), cfg)
                t_gauss += time.perf_counter() - t0
                g_all[off + b0:off + b0 + len(g)] = g.numpy().astype(np.float16)
                bg_all[off + b0:off + b0 + len(g)] = bg.numpy().astype(np.float16)
            off += lengths[i]
            if log:
                log(f"episode {i + 1}/{n_ep}: {lengths[i]} frames, {1e3 * t_gauss / off:.1f} ms a frame so far")
        g_all.flush()
        del g_all
        np.save(tmp / "background.npy", bg_all)
        np.savez(tmp / "cameras.npz", Ks=Ks, viewmats=Ts)
        index = {
            "format": FORMAT, "source": str(Path(data).resolve()), "source_frames": int(ds.num_frames),
            "cameras": cams, "image_size": list(ds.image_size), "episodes": n_ep, "episode_lengths": lengths,
            "episode_offsets": np.cumsum([0] + lengths[:-1]).tolist(), "frames": F,
            "config": dataclasses.asdict(cfg), "ms_per_frame": round(1e3 * t_gauss / max(F, 1), 2),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_model(), "created": now(), "code": code_version(),
        }
        atomic_write_json(tmp / INDEX_FILE, index)
    return index


@dataclass
class GaussianFrames:
    """A companion directory opened for reading (module docstring).

    gaussians: (F, n, 14) float16 memory map; background: (F, 3); Ks (E, V, 3, 3) and
    viewmats (E, V, 4, 4) per episode; index: ``index.json``.
    """

    root: Path
    gaussians: np.ndarray
    background: np.ndarray
    Ks: np.ndarray
    viewmats: np.ndarray
    index: dict[str, Any]

    def episode(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Gaussians (T, n, 14) and background (T, 3) of episode ``i``, float32 tensors."""
        o, n = self.index["episode_offsets"][i], self.index["episode_lengths"][i]
        return (torch.from_numpy(np.asarray(self.gaussians[o:o + n], dtype=np.float32)),
                torch.from_numpy(np.asarray(self.background[o:o + n], dtype=np.float32)))


def load_gaussian_frames(path: str | Path) -> GaussianFrames:
    """Open a directory written by :func:`build_gaussian_frames`.

    Raises:
        DatasetError: not such a directory, or arrays whose shapes disagree with the index (a
            Gaussian array with another field count than 14 included).
    """
    root = Path(path)
    if not (root / INDEX_FILE).is_file():
        raise DatasetError(f"{root} is not a per-frame Gaussian directory: {INDEX_FILE} is missing "
                           "(make one with robodream gaussians)")
    try:
        index = json.loads((root / INDEX_FILE).read_text())
        g = np.load(root / "gaussians.npy", mmap_mode="r")
        bg = np.load(root / "background.npy")
        cams = np.load(root / "cameras.npz")
        Ks, Ts = cams["Ks"], cams["viewmats"]
    except (OSError, ValueError, KeyError) as e:
        raise DatasetError(f"cannot read per-frame Gaussians in {root}: {e}") from e
    if index.get("format") != FORMAT:
        raise DatasetError(f"{root}/{INDEX_FILE} is format {index.get('format')!r}, not {FORMAT}")
    if g.ndim != 3 or g.shape[2] != GAUSSIAN_DIM:
        raise DatasetError(f"{root}/gaussians.npy must be (frames, n, {GAUSSIAN_DIM}); got {g.shape} "
                           f"(a Gaussian has {GAUSSIAN_DIM} numbers: centre 3, quaternion 4, scale 3, opacity 1, RGB 3)")
    if g.shape[0] != index["frames"] or bg.shape != (index["frames"], 3) or Ks.shape[0] != index["episodes"]:
        raise DatasetError(f"{root}: arrays disagree with {INDEX_FILE} ({g.shape}, {bg.shape}, {Ks.shape})")
    return GaussianFrames(root, g, bg, Ks, Ts, index)


@torch.no_grad()
def heldout_camera_psnr(frames: GaussianFrames, data: str | Path, camera: str, *, episodes: int | None = None,
                        stride: int = 1, batch: int = 16) -> dict[str, Any]:
    """Render the per-frame Gaussians into a camera of ``data`` they were not built from, against its video.

    Returns ``{"camera", "psnr_db", "ssim", "frames", "per_input_camera_psnr_db"}``: the mean over
    every ``stride``-th frame of the first ``episodes`` episodes, and the same metric on the input
    cameras (how well the Gaussians reproduce what they were made from).

    Raises:
        ConfigError: ``camera`` is one of the input cameras. DatasetError: ``data`` lacks it.
    """
    from robodream.data.lerobot import LeRobotDataset
    from robodream.eval.metrics import psnr_per_image, ssim

    if camera in frames.index["cameras"]:
        raise ConfigError(f"{camera!r} is an input camera of {frames.root}; a held-out camera must not be")
    ds = LeRobotDataset(data)
    if camera not in ds.cameras:
        raise DatasetError(f"{ds.root} has no camera {camera!r}; it has {', '.join(ds.cameras)}")
    Kh, Th = episode_camera_matrices(ds, [camera])
    H, W = frames.index["image_size"]
    n_ep = frames.index["episodes"] if episodes is None else min(episodes, frames.index["episodes"])
    held, held_ssim, inputs = [], [], []
    for i in range(n_ep):
        g, bg = frames.episode(i)
        keep = torch.arange(0, len(g), stride)
        g, bg = g[keep], bg[keep]
        truth_h = torch.from_numpy(ds.frames(i, camera)[keep.numpy()]).float() / 255.0
        truth_in = torch.from_numpy(np.stack([ds.frames(i, c)[keep.numpy()] for c in frames.index["cameras"]], 1)
                                    ).float() / 255.0
        Ks = torch.from_numpy(np.concatenate([frames.Ks[i], Kh[i]])).float()
        Ts = torch.from_numpy(np.concatenate([frames.viewmats[i], Th[i]])).float()
        for b0 in range(0, len(g), batch):
            out = render(g[b0:b0 + batch], Ts, Ks, W, H, bg[b0:b0 + batch])  # (b, V + 1, H, W, 3)
            held.append(psnr_per_image(out[:, -1], truth_h[b0:b0 + batch]))
            held_ssim.append(torch.stack([ssim(out[j:j + 1, -1], truth_h[b0 + j:b0 + j + 1]) for j in range(len(out))]))
            inputs.append(psnr_per_image(out[:, :-1].flatten(0, 1), truth_in[b0:b0 + batch].flatten(0, 1))
                          .reshape(len(out), -1))
    held_t, inp = torch.cat(held), torch.cat(inputs)
    return {"camera": camera, "psnr_db": round(float(held_t.mean()), 2), "ssim": round(float(torch.cat(held_ssim).mean()), 4),
            "frames": int(held_t.numel()),
            "per_input_camera_psnr_db": {c: round(float(inp[:, k].mean()), 2) for k, c in enumerate(frames.index["cameras"])}}
