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


# ----------------------------------------------------------------------------- free cameras
# Cameras that are not part of the MuJoCo model: placed on an orbit around a point (the
# table) and rendered through MuJoCo's free camera, in the same OpenCV convention.

#: Centre of the Meta-World table top (metres, world frame), a natural orbit centre.
TABLE_CENTER = (0.0, 0.6, 0.0)


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """World-to-camera transform (4, 4), OpenCV frame, of a camera at ``eye`` looking at ``target``.

    The image "up" is the projection of ``up`` (world z by default); no roll.

    Raises:
        ConfigError: ``eye == target`` or viewing direction parallel to ``up``.
    """
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    fwd = target - eye
    if np.linalg.norm(fwd) < 1e-9:
        raise ConfigError("look_at: eye and target coincide")
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, up)
    if np.linalg.norm(right) < 1e-9:
        raise ConfigError("look_at: viewing direction is parallel to the up vector")
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    R = np.stack([right, down, fwd])  # rows: camera x, y, z axes in world coordinates
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = -R @ eye
    return T


def orbit_eye(center, distance: float, azimuth_deg: float, elevation_deg: float) -> np.ndarray:
    """Camera position (3,) on a sphere around ``center``, in MuJoCo's free-camera angles.

    The camera looks along ``(cos el cos az, cos el sin az, sin el)``; negative elevations
    look down (MuJoCo ``mjvCamera`` convention), so it sits at ``center - distance * forward``.
    """
    az, el = math.radians(azimuth_deg), math.radians(elevation_deg)
    fwd = np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
    return np.asarray(center, dtype=np.float64) - distance * fwd


def orbit_angles(n: int, elevations_deg=(-40.0, -60.0), azimuth_offset_deg: float = 0.0) -> list[tuple[float, float]]:
    """``n`` (azimuth, elevation) pairs in degrees: azimuths evenly spread over 360 degrees,
    elevations cycling through ``elevations_deg`` (rings), starting at ``azimuth_offset_deg``."""
    if n < 1:
        raise ConfigError(f"need at least one view, got {n}")
    els = list(elevations_deg)
    return [((azimuth_offset_deg + 360.0 * i / n) % 360.0, float(els[i % len(els)])) for i in range(n)]


def free_camera(center, distance: float, azimuth_deg: float, elevation_deg: float):
    """A MuJoCo ``mjvCamera`` of type free looking at ``center`` (for ``Renderer.update_scene``)."""
    import mujoco

    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = np.asarray(center, dtype=np.float64)
    cam.distance = float(distance)
    cam.azimuth = float(azimuth_deg)
    cam.elevation = float(elevation_deg)
    return cam


def free_camera_matrices(model, center, distance: float, azimuth_deg: float, elevation_deg: float,
                         width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Intrinsics K (3, 3) and world-to-camera (4, 4), OpenCV frame, of :func:`free_camera`.

    MuJoCo renders free cameras with the model's global vertical field of view
    (``model.vis.global_.fovy``, degrees) and no roll; images come out upright.
    """
    K = intrinsics(float(model.vis.global_.fovy), width, height)
    eye = orbit_eye(center, distance, azimuth_deg, elevation_deg)
    return K, look_at(eye, center)


def render_rgbd(renderer, data, camera) -> tuple[np.ndarray, np.ndarray]:
    """RGB (H, W, 3) uint8 and depth (H, W) float32 of one camera with a ``mujoco.Renderer``.

    ``camera`` is a camera name/id of the model (rendered upright, i.e. rotated by 180
    degrees when MuJoCo renders it upside down, as :func:`camera_matrices` describes it)
    or an ``mjvCamera`` (:func:`free_camera`; always upright). Depth is the camera-frame z
    (metres) of the visible surface — the OpenCV/rasteriser depth, not the distance along
    the ray; pixels that see nothing (sky) hold MuJoCo's far plane,
    ``model.stat.extent * model.vis.map.zfar``.

    Raises:
        ConfigError: unknown camera name.
    """
    flip = False
    if isinstance(camera, (str, int)):
        import mujoco

        model = data.model
        cam_id = camera if isinstance(camera, int) else mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if cam_id < 0:
            raise ConfigError(f"unknown camera {camera!r}")
        camera = cam_id
        flip = bool(data.cam_xmat[cam_id].reshape(3, 3)[2, 1] < -1e-6)
    renderer.update_scene(data, camera=camera)
    rgb = renderer.render().copy()
    renderer.enable_depth_rendering()
    try:
        renderer.update_scene(data, camera=camera)
        depth = renderer.render().astype(np.float32)
    finally:
        renderer.disable_depth_rendering()
    if flip:
        rgb, depth = np.ascontiguousarray(rgb[::-1, ::-1]), np.ascontiguousarray(depth[::-1, ::-1])
    return rgb, depth


def backproject(depth: np.ndarray, K: np.ndarray, world_to_cam: np.ndarray) -> np.ndarray:
    """World points (H, W, 3) of a z-depth image (H, W) seen through ``K``, ``world_to_cam``.

    Pixel (u, v) is back-projected through its centre (u + 0.5, v + 0.5); inverse of :func:`project`.
    """
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = (v - K[1, 2]) / K[1, 1] * depth
    p_cam = np.stack([x, y, depth.astype(np.float64)], -1)  # (H, W, 3)
    R, t = world_to_cam[:3, :3], world_to_cam[:3, 3]
    return (p_cam - t) @ R  # R^T (p - t) for each point
