"""Points in and on MuJoCo geoms: the particles and Gaussians of the digital twin.

Primitive geoms (sphere, capsule, ellipsoid, cylinder, box) use their signed distance in the
geom frame: a regular grid of spacing ``s`` over the bounding box keeps the points with
``sdf <= 0`` (volume, the particles of a dynamic body) or ``-s < sdf <= 0`` (a one-cell shell,
the surface Gaussians). Mesh geoms are filled and sampled through the convex hull of their
vertices (the shape MuJoCo collides with) as the half-spaces of its facets. Every function
returns points in the geom's local frame, metres.
"""

from __future__ import annotations

import numpy as np

from robodream.errors import ConfigError

SPHERE, CAPSULE, ELLIPSOID, CYLINDER, BOX, MESH = 2, 3, 4, 5, 6, 7  # mujoco.mjtGeom values
SUPPORTED = (SPHERE, CAPSULE, ELLIPSOID, CYLINDER, BOX, MESH)


def _half_extent(gtype: int, size: np.ndarray, verts: np.ndarray | None) -> np.ndarray:
    r, a, b = size[0], size[1], size[2]
    if gtype == SPHERE:
        return np.array([r, r, r])
    if gtype == CAPSULE:
        return np.array([r, r, r + a])
    if gtype == ELLIPSOID:
        return np.array([r, a, b])
    if gtype == CYLINDER:
        return np.array([r, r, a])
    if gtype == BOX:
        return np.array([r, a, b])
    return (verts.max(0) - verts.min(0)) / 2


def _mesh_halfspaces(verts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Outward unit normals (F, 3) and offsets (F,) of the facets of the vertices' convex hull
    (``n . x <= d`` inside; scipy's Qhull). The mesh's own faces would not do for a non-convex mesh:
    the planes of its concave faces cut through its inside (Sawyer's hand kept a single point)."""
    from scipy.spatial import ConvexHull

    eq = ConvexHull(verts).equations  # (F, 4): n . x + c <= 0 inside
    return eq[:, :3], -eq[:, 3]


def signed_distance(points: np.ndarray, gtype: int, size: np.ndarray, verts: np.ndarray | None = None) -> np.ndarray:
    """Signed distance (P,) of local points (P, 3) to a geom (negative inside; exact for box, sphere,
    capsule and the cylinder's inside, a bound for ellipsoids and for the convex hull of a mesh's
    vertices ``verts`` (V, 3)).

    Raises:
        ConfigError: an unsupported geom type (plane, height field).
    """
    p = np.asarray(points, dtype=np.float64)
    r, a, b = float(size[0]), float(size[1]), float(size[2])
    if gtype == SPHERE:
        return np.linalg.norm(p, axis=1) - r
    if gtype == CAPSULE:
        q = p.copy()
        q[:, 2] = np.clip(q[:, 2], -a, a)
        return np.linalg.norm(p - q * np.array([0, 0, 1.0]), axis=1) - r
    if gtype == ELLIPSOID:
        sz = np.array([r, a, b])
        return (np.linalg.norm(p / sz, axis=1) - 1.0) * sz.min()
    if gtype == CYLINDER:
        return np.maximum(np.linalg.norm(p[:, :2], axis=1) - r, np.abs(p[:, 2]) - a)
    if gtype == BOX:
        return (np.abs(p) - np.array([r, a, b])).max(1)
    if gtype == MESH:
        if verts is None:
            raise ConfigError("a mesh geom needs its vertices")
        n, d = _mesh_halfspaces(verts)
        return (p @ n.T - d).max(1)
    raise ConfigError(f"geom type {gtype} (plane or height field) cannot be filled with particles or Gaussians")


def _grid(ext: np.ndarray, spacing: float) -> np.ndarray:
    """A grid of spacing ``spacing`` centred on 0 within [-ext, ext] per axis (P, 3)."""
    counts = [int(np.floor(2 * e / spacing + 1e-9)) for e in ext]
    axes = [(np.arange(k + 1) - k / 2) * spacing for k in counts]
    return np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)


def volume_points(gtype: int, size: np.ndarray, spacing: float, verts: np.ndarray | None = None,
                  inset: float = 0.0) -> np.ndarray:
    """Points (P, 3) at most ``spacing`` apart inside a geom, their grid inset by ``inset`` from its
    bounding box and kept when at least ``inset - spacing / 4`` inside the surface: particles of
    radius ``inset`` then reach the surface from inside (a body rests on them at its true height and
    is as wide as it is). Falls back to the points inside, then to the centre, for geoms too thin.

    Raises:
        ConfigError: spacing <= 0, inset < 0, or an unsupported geom type.
    """
    if spacing <= 0 or inset < 0:
        raise ConfigError(f"need spacing > 0 and inset >= 0, got {spacing}, {inset}")
    ext = _half_extent(gtype, np.asarray(size), verts)
    axes = []
    for e in ext - inset:
        n = int(np.ceil(2 * e / spacing - 1e-9)) + 1 if e > 1e-9 else 1
        axes.append(np.linspace(-e, e, n) if n > 1 else np.zeros(1))
    pts = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    if verts is not None:
        pts = pts + (verts.max(0) + verts.min(0)) / 2
    sdf = signed_distance(pts, gtype, size, verts)
    for keep in (sdf <= -inset + 0.25 * spacing, sdf <= 1e-9):
        if keep.any():
            return pts[keep]
    return np.zeros((1, 3)) if verts is None else verts.mean(0, keepdims=True)


def surface_points(gtype: int, size: np.ndarray, spacing: float, verts: np.ndarray | None = None) -> np.ndarray:
    """Points (P, 3) about ``spacing`` apart in a one-cell shell just inside a geom's surface
    (for a geom thinner than two cells: all its inside points).

    Raises:
        ConfigError: spacing <= 0, or an unsupported geom type.
    """
    if spacing <= 0:
        raise ConfigError(f"spacing must be > 0, got {spacing}")
    pts = _grid(_half_extent(gtype, np.asarray(size), verts) + spacing / 2, spacing)
    if verts is not None:
        pts = pts + (verts.max(0) + verts.min(0)) / 2
    sdf = signed_distance(pts, gtype, size, verts)
    shell = pts[(sdf <= 1e-9) & (sdf > -spacing)]
    return shell if len(shell) else volume_points(gtype, size, spacing, verts)
