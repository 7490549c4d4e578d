"""Standard 3D Gaussian Splatting ``.ply`` files (the format common splat viewers open).

Layout of the reference implementation (Kerbl et al. 2023, ``GaussianModel.save_ply``),
read by SuperSplat, the antimatter15 / gsplat.js web viewers, nerfstudio and gsplat's
examples: one binary little-endian ``vertex`` element with float32 properties

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3 (K - 1) - 1)  opacity  scale_0..2  rot_0..3

where ``f_dc`` is the DC SH coefficient per channel, ``f_rest`` the higher bands stored
channel-major (all of red's K - 1 coefficients, then green's, then blue's), ``opacity`` the
logit, ``scale_*`` log standard deviations (metres) and ``rot_*`` the quaternion (w, x, y, z).
Normals are written as zeros (viewers expect the properties). Uses ``plyfile`` for parsing.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from robodream.errors import CheckpointError
from robodream.gaussians.scene import GaussianParams
from robodream.utils.io import atomic_write_bytes

_REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
             "rot_0", "rot_1", "rot_2", "rot_3")


class PlyFormatError(CheckpointError):
    """A ``.ply`` file that is missing, unreadable or not a 3DGS Gaussian scene."""


def save_ply(path: str | os.PathLike, g: GaussianParams) -> None:
    """Write Gaussians as a standard 3DGS binary ``.ply`` (atomically).

    ``g`` holds raw parameters (log-scales in metres, opacity logits, SH (N, K, 3)); they are
    written as float32 exactly as stored, so :func:`load_ply` returns them bit for bit.
    Non-finite values are written as they are (and :func:`load_ply` rejects such a file).

    Raises:
        OSError: the file cannot be written.
    """
    n, k = g.n, g.sh.shape[1]
    sh = g.sh.detach().float().cpu().numpy()  # (N, K, 3)
    columns = {"x": g.means[:, 0], "y": g.means[:, 1], "z": g.means[:, 2]}
    arrays = {name: t.detach().float().cpu().numpy() for name, t in columns.items()}
    arrays.update({"nx": np.zeros(n, np.float32), "ny": np.zeros(n, np.float32), "nz": np.zeros(n, np.float32)})
    for c in range(3):
        arrays[f"f_dc_{c}"] = sh[:, 0, c]
    rest = sh[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major
    for i in range(rest.shape[1]):
        arrays[f"f_rest_{i}"] = rest[:, i]
    arrays["opacity"] = g.opacity_logits.detach().float().cpu().numpy()
    ls = g.log_scales.detach().float().cpu().numpy()
    q = g.quats.detach().float().cpu().numpy()
    for i in range(3):
        arrays[f"scale_{i}"] = ls[:, i]
    for i in range(4):
        arrays[f"rot_{i}"] = q[:, i]
    from plyfile import PlyData, PlyElement

    vertex = np.empty(n, dtype=[(name, "<f4") for name in arrays])
    for name, a in arrays.items():
        vertex[name] = a
    buf = io.BytesIO()
    PlyData([PlyElement.describe(vertex, "vertex")], text=False, byte_order="<").write(buf)
    atomic_write_bytes(path, buf.getvalue())


def load_ply(path: str | os.PathLike) -> GaussianParams:
    """Read a 3DGS ``.ply`` (binary or ASCII, any byte order, float or double properties).

    Returns :class:`GaussianParams` in float32 on the CPU; SH degree from the ``f_rest`` count.
    Every error message is one line that names the file.

    Raises:
        PlyFormatError: missing file, not a PLY, no ``vertex`` element, missing Gaussian
            properties, an ``f_rest`` count that is not 0, 9, 24 or 45, or non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise PlyFormatError(f"{path} does not exist")
    from plyfile import PlyData

    try:
        data = PlyData.read(str(path))
    except Exception as e:  # noqa: BLE001 - plyfile raises several types for corrupt input
        raise PlyFormatError(f"{path} is not a readable PLY file: {type(e).__name__}: {e}".replace("\n", " ")) from e
    names = [el.name for el in data.elements]
    if "vertex" not in names:
        raise PlyFormatError(f"{path} has no 'vertex' element (elements: {', '.join(names) or 'none'})")
    v = data["vertex"]
    props = [p.name for p in v.properties]
    missing = [p for p in _REQUIRED if p not in props]
    if missing:
        raise PlyFormatError(f"{path} is not a Gaussian splat PLY: missing properties {', '.join(missing)}")
    rest_names = sorted((p for p in props if p.startswith("f_rest_")), key=lambda s: int(s.rsplit("_", 1)[1]))
    if len(rest_names) not in (0, 9, 24, 45) or rest_names != [f"f_rest_{i}" for i in range(len(rest_names))]:
        raise PlyFormatError(f"{path}: {len(rest_names)} f_rest properties; a 3DGS file has 0, 9, 24 or 45")
    n = v.count

    def col(*names) -> np.ndarray:
        try:
            return np.stack([np.asarray(v[name], dtype=np.float32) for name in names], -1).reshape(n, len(names))
        except Exception as e:  # noqa: BLE001 - truncated data shows up here for some layouts
            raise PlyFormatError(f"{path}: cannot read vertex data: {e}".replace("\n", " ")) from e

    k = 1 + len(rest_names) // 3
    sh = np.zeros((n, k, 3), np.float32)
    sh[:, 0] = col("f_dc_0", "f_dc_1", "f_dc_2")
    if k > 1:
        sh[:, 1:] = col(*rest_names).reshape(n, 3, k - 1).transpose(0, 2, 1)
    arrays = {"means": col("x", "y", "z"), "quats": col("rot_0", "rot_1", "rot_2", "rot_3"),
              "log_scales": col("scale_0", "scale_1", "scale_2"), "opacity_logits": col("opacity")[:, 0], "sh": sh}
    bad = sum(int((~np.isfinite(a)).sum()) for a in arrays.values())
    if bad:
        raise PlyFormatError(f"{path} holds {bad} non-finite values (NaN or inf)")
    return GaussianParams(**{name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in arrays.items()})
