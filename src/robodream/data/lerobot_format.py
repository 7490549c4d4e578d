"""LeRobotDataset v3.0 format constants and helpers shared by the reader and the writer.

See :mod:`robodream.data.lerobot` for the layout.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robodream.errors import DatasetError

CODEBASE_VERSION = "v3.0"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PREFIX = "observation.images."
#: Per-camera depth and segmentation: data-file columns of ``(H, W)`` arrays (see :mod:`robodream.data.collect`).
DEPTH_PREFIX = "observation.depth."
SEGMENTATION_PREFIX = "observation.segmentation."
#: Privileged simulator state (objects, goal) per frame, LeRobot's feature name; see data.collect.
ENV_STATE = "observation.environment_state"
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
REQUIRED_FEATURES = tuple(DEFAULT_FEATURES)  # all LeRobot itself requires (lerobot/datasets/utils.py)
STATE_ACTION_FEATURES = ("observation.state", "action")  # optional; 0-dimensional when absent
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}
_ARROW = {
    "float32": pa.float32(), "float64": pa.float64(), "float16": pa.float16(), "bool": pa.bool_(),
    "int8": pa.int8(), "int16": pa.int16(), "int32": pa.int32(), "int64": pa.int64(),
    "uint8": pa.uint8(), "uint16": pa.uint16(), "uint32": pa.uint32(), "uint64": pa.uint64(),
}  # fmt: skip
_IMAGE_STATS_PIXELS = 20_000_000  # per episode and camera; more frames than that are subsampled


class EpisodeIndexError(DatasetError, IndexError):
    """An episode index outside ``0..num_episodes-1`` (also an :class:`IndexError`)."""


class _Aborted(Exception):
    """Thrown into :func:`atomic_directory` to make it delete the temporary directory."""


# ----------------------------------------------------------------------------- statistics
def _numeric_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of ``x`` ``(T,)`` or ``(T, D)`` over axis 0; scalar features get shape ``(1,)``."""
    xf = x.astype(np.float64)
    ext = xf if x.dtype == np.bool_ else x
    stats = {"min": ext.min(0), "max": ext.max(0), "mean": xf.mean(0), "std": xf.std(0), "count": np.array([len(x)])}
    for key, q in zip(QUANTILES, np.quantile(xf, list(QUANTILES.values()), axis=0), strict=True):
        stats[key] = q
    return {k: np.reshape(v, (1,)) if x.ndim == 1 else v for k, v in stats.items()}


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats of ``(T, H, W, 3) uint8`` frames, in [0, 1], shaped ``(3, 1, 1)``."""
    t, h, w = frames.shape[:3]
    n_use = min(t, max(1, _IMAGE_STATS_PIXELS // (h * w)))
    sub = frames[np.round(np.linspace(0, t - 1, n_use)).astype(int)] if n_use < t else frames
    values = np.arange(256, dtype=np.float64)
    out: dict[str, list] = {k: [] for k in ("min", "max", "mean", "std", *QUANTILES)}
    for c in range(3):
        hist = np.bincount(sub[..., c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        nz = np.nonzero(hist)[0]
        mean = (hist * values).sum() / n
        out["min"].append(nz[0])
        out["max"].append(nz[-1])
        out["mean"].append(mean)
        out["std"].append(math.sqrt((hist * (values - mean) ** 2).sum() / n))
        cum = np.cumsum(hist)
        for key, q in QUANTILES.items():  # np.quantile's linear interpolation, from the histogram
            pos = q * (n - 1)
            k = math.floor(pos)
            a, b = np.searchsorted(cum, [k, min(k + 1, n - 1)], side="right")
            out[key].append(a + (pos - k) * (b - a))
    stats = {k: np.asarray(v, dtype=np.float64).reshape(3, 1, 1) / 255.0 for k, v in out.items()}
    stats["count"] = np.array([len(sub)])
    return stats


def _aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Combine per-episode stats like LeRobot: exact min/max/mean/std, count-weighted quantiles."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    total = counts.sum()
    means = np.stack([s["mean"] for s in per_episode])
    w = counts.reshape(-1, *([1] * (means.ndim - 1)))
    mean = (w * means).sum(0) / total
    var = (w * (np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2)).sum(0) / total
    out = {
        "min": np.stack([s["min"] for s in per_episode]).min(0),
        "max": np.stack([s["max"] for s in per_episode]).max(0),
        "mean": mean,
        "std": np.sqrt(var),
        "count": np.array([int(total)]),
    }
    for key in QUANTILES:
        out[key] = (w * np.stack([s[key] for s in per_episode])).sum(0) / total
    return out


# ----------------------------------------------------------------------------- arrow helpers
def _arrow_type(dtype: str, shape: list[int]) -> pa.DataType:
    """Arrow type of a feature: scalar for ``[1]``, fixed-size list for ``[D]``, nested lists for
    ``[H, W]`` / ``[H, W, C]`` (the storage of Hugging Face ``Array2D`` / ``Array3D``)."""
    if list(shape) == [1]:
        return _ARROW[dtype]
    if len(shape) == 1:
        return pa.list_(_ARROW[dtype], int(shape[0]))
    t = _ARROW[dtype]
    for _ in shape:
        t = pa.list_(t)
    return t


def _arrow_column(values: np.ndarray, dtype: str, shape: list[int]) -> pa.Array:
    """``values`` ``(N, *shape)`` as a column of :func:`_arrow_type`."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=_ARROW[dtype])
    if list(shape) == [1]:
        return flat
    if len(shape) == 1:
        return pa.FixedSizeListArray.from_arrays(flat, int(shape[0]))
    for d in reversed(shape):
        n = len(flat) // d
        flat = pa.ListArray.from_arrays(pa.array(np.arange(0, n * d + 1, d, dtype=np.int32)), flat)
    return flat


def _to_numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Arrow column -> numpy; (fixed-size) list columns of equal lengths become ``(N, D)``."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_fixed_size_list(arr.type):
        inner = _to_numpy(arr.flatten())
        return inner.reshape(len(arr), arr.type.list_size, *inner.shape[1:])
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lens = np.diff(arr.offsets.to_numpy())
        if len(arr) and arr.null_count == 0 and np.all(lens == lens[0]):
            inner = _to_numpy(arr.flatten())
            return inner.reshape(len(arr), int(lens[0]), *inner.shape[1:])
    return arr.to_numpy(zero_copy_only=False)


def _pandas_index_metadata(index_col: str, columns: list[tuple[str, str, str]]) -> bytes:
    """The ``pandas`` schema metadata that makes ``pd.read_parquet`` restore ``index_col`` as index."""
    return json.dumps({
        "index_columns": [index_col],
        "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                            "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": n, "field_name": n, "pandas_type": p, "numpy_type": t, "metadata": None}
                    for n, p, t in columns],
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.3",
    }).encode()  # fmt: skip


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    """LeRobot's ``update_chunk_file_indices``: next file, or file 0 of the next chunk."""
    return (chunk + 1, 0) if file >= chunks_size - 1 else (chunk, file + 1)


def _json_number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


# ----------------------------------------------------------------------------- writer
class _ParquetFile:
    """A parquet file that episodes are appended to as row groups; tracks its size on disk."""

    def __init__(self, path: Path, schema: pa.Schema):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.sink = pa.OSFile(str(path), "wb")
        self.writer = pq.ParquetWriter(self.sink, schema, compression="snappy", use_dictionary=True)
        self.frames = 0

    def size_bytes(self) -> int:
        return self.sink.tell()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.sink.close()
            self.writer = None


