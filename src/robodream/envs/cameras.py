"""Camera intrinsics and extrinsics of MuJoCo cameras in the OpenCV convention.

Convention used across robodream (rasteriser, reconstruction, projection tests):
camera frame x right, y down, z forward (OpenCV); pixel (u, v) with u along the image
width, v along the height, pixel i covering [i, i + 1); units are metres. MuJoCo cameras
look along their local -z with y up; :func:`camera_matrices` converts, and also folds in
the 180-degree image rotation that :class:`~robodream.envs.meta_world.MetaWorldEnv`
applies to upside-down cameras, so the matrices describe the images as rendered.
"""

from __future__ import annotations

import math

import numpy as np

from robodream.errors import ConfigError

_MJ_TO_CV = np.diag([1.0, -1.0, -1.0])  # MuJoCo camera axes (x right, y up, -z forward) -> OpenCV


def intrinsics(fovy_deg: float, width: int, height: int) -> np.ndarray:
    """Pinhole intrinsics K (3, 3) for a vertical field of view in degrees (MuJoCo's ``cam_fovy``)."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def camera_matrices(model, data, cam: str | int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics K (3, 3) and world-to-camera transform (4, 4) of a fixed MuJoCo camera.

    Uses the camera's current pose in ``data`` (``cam_xpos``, ``cam_xmat``, valid after
    ``mj_forward``/``mj_step``). Cameras whose image up axis points down in the world are
    reported rotated by 180 degrees about the optical axis, matching the upright images.

    Raises:
        ConfigError: unknown camera name.
    """
    import mujoco

    cam_id = cam if isinstance(cam, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, cam)
    if cam_id < 0:
        raise ConfigError(f"unknown camera {cam!r}")
    K = intrinsics(float(model.cam_fovy[cam_id]), width, height)
    R_wc = data.cam_xmat[cam_id].reshape(3, 3)  # columns: camera axes in world
    pos = data.cam_xpos[cam_id]
    R = _MJ_TO_CV @ R_wc.T
    if R_wc[2, 1] < -1e-6:  # upside-down camera, image rotated by 180 degrees
        R = np.diag([-1.0, -1.0, 1.0]) @ R
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ pos
    return K, T


def project(points: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Project world points (N, 3) to pixels (N, 2) (u, v) and depths (N,) in metres."""
    p = points @ world_to_cam[:3, :3].T + world_to_cam[:3, 3]
    z = p[:, 2]
    uv = (p[:, :2] / z[:, None]) @ K[:2, :2].T + K[:2, 2]
    return uv, z
