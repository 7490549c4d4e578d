"""Paired renders for transfer models: an episode as recorded, and the same episode re-rendered.

Our datasets store proprioception, not the full simulator state, so a trajectory is
reproduced by replaying its recorded *actions* from its env seed (``meta/robodream.json`` lists
the seed of every kept episode): Meta-World under MuJoCo is deterministic, and a shift
(:mod:`robodream.envs.shift`) changes rendering fields only, so the replay under another
appearance or static-camera pose passes through exactly the recorded states (checked:
``max_state_error``) and only the pixels differ. :func:`render_pairs` does this; it gives the
training pairs of AppearanceTransfer / ViewTransfer and the held-out targets of their
evaluation (the simulator's own re-render of the same trajectory).

The source side comes from the dataset: RGB of camera ``camera``, its depth
(``observation.depth.{camera}``, uint16 millimetres) and, when asked, its segmentation
(``observation.segmentation.{camera}``); record them with ``collect --with-depth
--with-segmentation``.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Any

import numpy as np

from robodream.config import from_dict
from robodream.data.collect import replayable_provenance, require_real
from robodream.data.lerobot import LeRobotDataset
from robodream.data.lerobot_format import DEPTH_PREFIX, SEGMENTATION_PREFIX
from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.envs.parallel import RolloutPool
from robodream.envs.shift import ShiftConfig
from robodream.errors import DatasetError

#: Cameras mounted on the robot: they follow the hand, a camera shift leaves them as they are.
WRIST_CAMERAS = ("behindGripper", "gripperPOV")
#: Largest |replayed - recorded| state (metres, gripper opening) accepted as the same trajectory.
REPLAY_TOLERANCE = 1e-4
#: The stored depth value meaning "nothing seen" (see :mod:`robodream.data.collect`).
NOTHING_SEEN_MM = 65535


def depth_from_mm(mm: np.ndarray) -> np.ndarray:
    """Stored depth (uint16 millimetres, 65535 = nothing seen) -> float32 metres, inf where nothing is seen."""
    m = np.asarray(mm).astype(np.float32) / 1000.0
    m[np.asarray(mm) == NOTHING_SEEN_MM] = np.inf
    return m


def check_source(ds: LeRobotDataset, camera: str, segmentation: bool) -> dict[str, Any]:
    """A dataset a transfer model can read for ``camera``: real (not ``robodream generate``d), the
    camera, its depth (and segmentation when ``segmentation``), provenance with one env seed per
    episode. Returns the provenance.

    Raises:
        DatasetError: a synthetic dataset, a missing camera, depth or segmentation feature (named),
            or no provenance.
    """
    require_real(ds, "a transfer model (its pairs are re-rendered from the recorded trajectory)")
    if camera not in ds.cameras:
        raise DatasetError(f"{ds.root} has no camera {camera!r}; it has {', '.join(ds.cameras) or 'none'}")
    needed = [DEPTH_PREFIX + camera] + ([SEGMENTATION_PREFIX + camera] if segmentation else [])
    for key in needed:
        if key not in ds.array_keys:
            raise DatasetError(f"{ds.root} has no {key} feature; a transfer model needs it "
                               f"(record it with robodream collect --with-depth --with-segmentation)")
    return replayable_provenance(ds, "re-rendered")


def source_env_config(prov: dict[str, Any], camera: str, max_steps: int) -> EnvConfig:
    """The env a dataset was recorded in (from its provenance), rendering only ``camera``."""
    env = from_dict(EnvConfig, {k: v for k, v in prov["env"].items() if k in {f.name for f in dataclasses.fields(EnvConfig)}})
    return dataclasses.replace(env, cameras=(camera,), depth=False, segmentation=False,
                               max_steps=max(env.max_steps, max_steps))


def render_pairs(ds: LeRobotDataset, shift: ShiftConfig, camera: str, episodes: list[int], *,
                 segmentation: bool = False, cameras_matrices: bool = False, workers: int = 1) -> list[dict[str, Any]]:
    """Replay ``episodes`` of ``ds`` from their seeds under ``shift`` and pair them with the recording.

    Args:
        ds: a dataset recorded by ``robodream collect`` with the depth of ``camera``.
        shift: the target appearance / static-camera shift (``random``: a draw per episode seed).
        camera: the camera rendered (one camera per call).
        episodes: episode indices of ``ds``.
        segmentation: also read the source segmentation (AppearanceTransfer's control).
        cameras_matrices: also return the camera's intrinsics and extrinsics in the recording
            and in the replay (ViewTransfer; a static camera's pose is fixed within an episode).
        workers: replay processes (:class:`~robodream.envs.parallel.RolloutPool`; same result for any).

    Returns:
        One dict per episode: ``episode``, ``seed``, ``source_rgb`` (T, H, W, 3) uint8,
        ``source_depth`` (T, H, W) float32 metres (inf: nothing seen), ``source_segmentation``
        (T, H, W) uint8 when asked, ``target_rgb`` (T, H, W, 3) uint8 (the replay; frame t is the
        observation before action t, as recorded), ``max_state_error`` (max |replayed -
        recorded state|), and with ``cameras_matrices`` ``K_src``, ``T_src``, ``K_dst``, ``T_dst``
        ((3, 3) and (4, 4) world-to-camera, OpenCV frame, metres).

    Raises:
        DatasetError: see :func:`check_source`; a replay that leaves the recorded states.
    """
    prov = check_source(ds, camera, segmentation)
    data = [ds.episode(i) for i in episodes]
    seeds = [int(prov["seeds"][i]) for i in episodes]
    src_cfg = source_env_config(prov, camera, max((len(e.action) for e in data), default=1))
    out = []
    for i, s in zip(episodes, seeds):
        d = {"episode": i, "seed": s, "source_rgb": ds.frames(i, camera),
             "source_depth": depth_from_mm(ds.array(i, DEPTH_PREFIX + camera))}
        if segmentation:
            d["source_segmentation"] = ds.array(i, SEGMENTATION_PREFIX + camera)
        out.append(d)
    if cameras_matrices:  # one env at a time (MuJoCo's EGL contexts): the recording's cameras first
        with RolloutPool(partial(MetaWorldEnv, src_cfg), _camera_at_reset, workers=min(workers, len(seeds))) as pool:
            for d, (K, T) in zip(out, pool.imap(seeds)):
                d["K_src"], d["T_src"] = K, T
    tgt_cfg = dataclasses.replace(src_cfg, shift=shift)
    jobs = [(s, e.action, e.state) for s, e in zip(seeds, data)]
    with RolloutPool(partial(MetaWorldEnv, tgt_cfg), _replay, workers=min(workers, max(len(jobs), 1))) as pool:
        for d, r in zip(out, pool.imap(jobs)):
            if r["max_state_error"] > REPLAY_TOLERANCE:
                raise DatasetError(f"{ds.root}: episode {d['episode']} (seed {d['seed']}) does not replay: the states "
                                   f"leave the recording by {r['max_state_error']:.3g} (another simulator version?)")
            d["target_rgb"], d["max_state_error"] = r["rgb"], r["max_state_error"]
            if cameras_matrices:
                d["K_dst"], d["T_dst"] = r["K"], r["T"]
    return out


def _camera_at_reset(env: MetaWorldEnv, seed: int) -> tuple[np.ndarray, np.ndarray]:
    env.reset(seed)
    return env.camera_matrices(env.cfg.cameras[0])


def _replay(env: MetaWorldEnv, job: tuple[int, np.ndarray, np.ndarray]) -> dict[str, Any]:
    """Recorded actions (T, Da) from ``reset(seed)``: T frames of the env's camera and the state error."""
    seed, actions, states = job
    obs = env.reset(seed)
    K, T = env.camera_matrices(env.cfg.cameras[0])
    rgb, replayed = [obs.images[0]], [obs.state]
    for a in actions[:-1]:  # the last action leads to a frame the recording does not hold
        obs = env.step(a)
        rgb.append(obs.images[0])
        replayed.append(obs.state)
    err = float(np.abs(np.stack(replayed) - states).max()) if len(states) else 0.0
    return {"rgb": np.stack(rgb), "max_state_error": err, "K": K, "T": T}
