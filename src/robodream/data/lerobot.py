"""LeRobotDataset v3.0: reader and writer, without a dependency on the ``lerobot`` package.

Layout (as written by LeRobot's ``LeRobotDatasetMetadata`` / ``DatasetWriter``)::

    ROOT/meta/info.json                 schema, fps, counts, path templates
    ROOT/meta/stats.json                per-feature min/max/mean/std/count/q01..q99
    ROOT/meta/tasks.parquet             task string (pandas index column "task") -> task_index
    ROOT/meta/episodes/chunk-XXX/file-YYY.parquet   one row per episode: lengths, file indices,
                                        frame range, video time windows, per-episode stats
    ROOT/data/chunk-XXX/file-YYY.parquet            frames of many episodes, concatenated
    ROOT/videos/{video_key}/chunk-XXX/file-YYY.mp4  frames of many episodes per camera

Data and video files grow until the next episode would pass ``data_files_size_in_mb`` /
``video_files_size_in_mb``; then a new file starts, and a new chunk after ``chunks_size``
files. Camera ``cam`` is the video feature ``observation.images.{cam}``.
"""

from __future__ import annotations

import json
import math
import shutil
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robodream.data.video import (
    VIDEO_CODECS,
    VideoFileEncoder,
    decode_window,
    decode_windows,
    probe_video,
)
from robodream.errors import DatasetError
from robodream.utils.io import atomic_directory, atomic_write_bytes, atomic_write_json, read_json

__all__ = ["VIDEO_CODECS", "CODEBASE_VERSION", "Episode", "EpisodeIndexError", "LeRobotDataset", "LeRobotDatasetWriter"]

CODEBASE_VERSION = "v3.0"
DEFAULT_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DEFAULT_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
IMAGE_PREFIX = "observation.images."
DEFAULT_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
REQUIRED_FEATURES = ("observation.state", "action", *DEFAULT_FEATURES)
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
def _arrow_column(values: np.ndarray, dtype: str, shape: list[int]) -> pa.Array:
    """Scalar column for shape ``[1]``, fixed-size list column for ``[D]`` (what HF datasets writes)."""
    flat = pa.array(np.ascontiguousarray(values).reshape(-1), type=_ARROW[dtype])
    return flat if list(shape) == [1] else pa.FixedSizeListArray.from_arrays(flat, int(shape[0]))


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


class LeRobotDatasetWriter:
    """Write a LeRobotDataset v3.0 episode by episode; the dataset appears at ``root`` atomically.

    Everything is built in a temporary sibling directory (``.{name}.*.tmp``) that is moved to
    ``root`` by :meth:`finalize`; :meth:`abort` (or an exception in a ``with`` block) deletes
    it and leaves ``root`` untouched. Use as a context manager::

        with LeRobotDatasetWriter(root, fps=10, robot_type="sawyer", state_names=[...],
                                  action_names=[...], cameras=["corner"], image_size=(64, 64)) as w:
            w.add_episode(task="reach", state=s, action=a, images={"corner": frames})

    Args:
        root: dataset directory to create.
        fps: frames per second (int > 0); ``timestamp = frame_index / fps`` seconds.
        robot_type: stored as ``info.json["robot_type"]``.
        state_names, action_names: names of the ``observation.state`` / ``action`` dimensions.
        cameras: camera names; camera ``cam`` becomes video feature ``observation.images.{cam}``.
        image_size: ``(H, W)`` of every camera.
        video_codec: a key of :data:`VIDEO_CODECS` ("h264" near-lossless default, "h264-rgb"
            bit-exact, "av1" LeRobot's lossy default).
        extra_features: more per-frame columns, ``name -> {"dtype": "float32"|"bool"|"int64"|...,
            "shape": [1] or [D], "names": optional}``, e.g. ``{"next.reward": {"dtype": "float32",
            "shape": [1]}}``.
        data_files_size_in_mb, video_files_size_in_mb, chunks_size: file rotation thresholds.
        overwrite: replace an existing dataset at ``root`` (only a LeRobot dataset or an empty
            directory is ever replaced, and only once the new one is complete).

    Raises:
        DatasetError: for invalid arguments, or ``root`` existing without ``overwrite``.
    """

    def __init__(self, root, *, fps: int, robot_type: str | None, state_names: list[str], action_names: list[str],
                 cameras: list[str], image_size: tuple[int, int], video_codec: str = "h264",
                 extra_features: dict[str, dict] | None = None, data_files_size_in_mb: float = 100,
                 video_files_size_in_mb: float = 500, chunks_size: int = 1000, overwrite: bool = False):  # fmt: skip
        self.root = Path(root)
        self._check_args(fps, state_names, action_names, cameras, image_size, video_codec,
                         data_files_size_in_mb, video_files_size_in_mb, chunks_size)  # fmt: skip
        self._check_root(overwrite)
        self.fps, self.robot_type = int(fps), robot_type
        self.cameras, self.image_size = list(cameras), (int(image_size[0]), int(image_size[1]))
        self.codec_name, self._codec = video_codec, VIDEO_CODECS[video_codec]
        self._data_mb, self._video_mb, self._chunks = data_files_size_in_mb, video_files_size_in_mb, chunks_size
        h, w = self.image_size
        self.features: dict[str, dict] = {
            "observation.state": {"dtype": "float32", "shape": [len(state_names)], "names": list(state_names)},
            "action": {"dtype": "float32", "shape": [len(action_names)], "names": list(action_names)},
        }
        for cam in self.cameras:
            self.features[IMAGE_PREFIX + cam] = {"dtype": "video", "shape": [h, w, 3],
                                                 "names": ["height", "width", "channels"]}  # fmt: skip
        self._extra = self._check_extra(extra_features or {})
        self.features.update(self._extra)
        self.features.update({k: dict(v) for k, v in DEFAULT_FEATURES.items()})
        self._schema = pa.schema(
            [(k, _ARROW[f["dtype"]] if f["shape"] == [1] else pa.list_(_ARROW[f["dtype"]], f["shape"][0]))
             for k, f in self.features.items() if f["dtype"] != "video"]
        )  # fmt: skip
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []  # episodes-parquet rows, without stats
        self._episode_stats: list[dict[str, dict[str, np.ndarray]]] = []
        self._total_frames = 0
        self._data: _ParquetFile | None = None
        self._data_pos = (0, 0)
        self._videos: dict[str, VideoFileEncoder] = {}
        self._video_pos = {cam: (0, 0) for cam in self.cameras}
        try:
            self._ctx = atomic_directory(self.root, overwrite=overwrite)
            self._tmp = self._ctx.__enter__()
        except (FileExistsError, OSError) as e:
            raise DatasetError(f"cannot create dataset directory {self.root}: {e}") from e
        # Never leave the temporary directory behind, even if neither finalize nor abort is called.
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self._tmp), True)
        self._state = "open"

    # -- validation
    @staticmethod
    def _check_args(fps, state_names, action_names, cameras, image_size, video_codec, data_mb, video_mb, chunks):
        if not isinstance(fps, (int, np.integer)) or isinstance(fps, bool) or fps <= 0:
            raise DatasetError(f"fps must be a positive int, got {fps!r}")
        for what, names in (("state_names", state_names), ("action_names", action_names)):
            if not names or not all(isinstance(n, str) for n in names):
                raise DatasetError(f"{what} must be a non-empty list of str, got {names!r}")
        if len(set(cameras)) != len(cameras) or not all(isinstance(c, str) and c and "/" not in c for c in cameras):
            raise DatasetError(f"cameras must be distinct non-empty names without '/', got {cameras!r}")
        if len(tuple(image_size)) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in image_size):
            raise DatasetError(f"image_size must be (H, W) positive ints, got {image_size!r}")
        if video_codec not in VIDEO_CODECS:
            raise DatasetError(f"unknown video_codec {video_codec!r}; choose one of {sorted(VIDEO_CODECS)}")
        if not (data_mb > 0 and video_mb > 0 and isinstance(chunks, int) and chunks > 0):
            raise DatasetError("data_files_size_in_mb, video_files_size_in_mb and chunks_size must be positive")

    def _check_root(self, overwrite: bool) -> None:
        if not self.root.exists() and not self.root.is_symlink():
            return
        if not overwrite:
            raise DatasetError(f"dataset directory {self.root} already exists (pass overwrite=True to replace it)")
        if not self.root.is_dir() or (any(self.root.iterdir()) and not (self.root / "meta/info.json").is_file()):
            raise DatasetError(f"refusing to overwrite {self.root}: it is not a LeRobot dataset or an empty directory")

    def _check_extra(self, extra: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for name, spec in extra.items():
            if not isinstance(name, str) or "/" in name or name in self.features or name in DEFAULT_FEATURES \
                    or name.startswith(IMAGE_PREFIX):  # fmt: skip
                raise DatasetError(f"extra feature name {name!r} is reserved or invalid")
            shape = list(spec.get("shape", [1])) if isinstance(spec, dict) else None
            if not isinstance(spec, dict) or spec.get("dtype") not in _ARROW or len(shape) != 1 or shape[0] < 1:
                raise DatasetError(f"extra feature {name!r}: need dtype in {sorted(_ARROW)} and shape [D], got {spec!r}")
            out[name] = {"dtype": spec["dtype"], "shape": [int(shape[0])], "names": spec.get("names")}
        return out

    def _check_array(self, what: str, x, dtype, shape: tuple) -> np.ndarray:
        if not isinstance(x, np.ndarray):
            raise DatasetError(f"add_episode: {what} must be a numpy array, got {type(x).__name__} (dataset {self.root})")
        if x.dtype != np.dtype(dtype):
            raise DatasetError(f"add_episode: {what} has dtype {x.dtype}, expected {np.dtype(dtype)} (dataset {self.root})")
        if x.shape != shape:
            raise DatasetError(f"add_episode: {what} has shape {x.shape}, expected {shape} (dataset {self.root})")
        return x

    # -- writing
    def add_episode(self, *, task: str, state: np.ndarray, action: np.ndarray, images: dict[str, np.ndarray],
                    extra: dict[str, np.ndarray] | None = None) -> int:  # fmt: skip
        """Append one episode of ``T >= 1`` frames; returns its ``episode_index``.

        Args:
            task: natural-language task; new tasks get the next ``task_index``.
            state: ``(T, Ds) float32`` -> ``observation.state``.
            action: ``(T, Da) float32`` -> ``action``.
            images: ``cam -> (T, H, W, 3) uint8`` RGB, upright, one entry per camera.
            extra: ``name -> (T,)`` / ``(T, 1)`` (shape ``[1]``) or ``(T, D)`` arrays of the declared
                dtype, one entry per extra feature.

        Raises:
            DatasetError: wrong shape/dtype/camera set/feature set, non-finite state or action,
                or a closed writer (nothing is written; the writer stays usable), or an encoder
                or disk failure (the writer is then aborted).
        """
        if self._state != "open":
            raise DatasetError(f"add_episode: the writer for {self.root} is already {self._state}")
        if not isinstance(task, str) or not task:
            raise DatasetError(f"add_episode: task must be a non-empty str, got {task!r}")
        if not isinstance(state, np.ndarray) or state.ndim != 2 or len(state) < 1:
            raise DatasetError(f"add_episode: state must be a (T, Ds) array with T >= 1 (dataset {self.root})")
        T, (h, w) = len(state), self.image_size
        cols = {
            "observation.state": self._check_array("state", state, np.float32, (T, self.features["observation.state"]["shape"][0])),
            "action": self._check_array("action", action, np.float32, (T, self.features["action"]["shape"][0])),
        }  # fmt: skip
        for k in cols:
            if not np.isfinite(cols[k]).all():
                raise DatasetError(f"add_episode: {k} contains NaN or inf (dataset {self.root})")
        if not isinstance(images, dict) or set(images) != set(self.cameras):
            got = sorted(images) if isinstance(images, dict) else type(images).__name__
            raise DatasetError(f"add_episode: images has cameras {got}, expected {sorted(self.cameras)} (dataset {self.root})")
        for cam in self.cameras:
            self._check_array(f"images[{cam!r}]", images[cam], np.uint8, (T, h, w, 3))
        extra = extra or {}
        if set(extra) != set(self._extra):
            raise DatasetError(f"add_episode: extra has features {sorted(extra)}, expected {sorted(self._extra)} (dataset {self.root})")
        for name, spec in self._extra.items():
            x, d = extra[name], spec["shape"][0]
            shape = (T, d) if d > 1 else (T,) if isinstance(x, np.ndarray) and x.ndim == 1 else (T, 1)
            self._check_array(f"extra[{name!r}]", x, spec["dtype"], shape)
            cols[name] = x.reshape(T, d) if d > 1 else x.reshape(T)

        ep = len(self._episodes)
        task_index = self._tasks.setdefault(task, len(self._tasks))
        frame_index = np.arange(T, dtype=np.int64)
        cols["timestamp"] = (frame_index / self.fps).astype(np.float32)
        cols["frame_index"] = frame_index
        cols["episode_index"] = np.full(T, ep, dtype=np.int64)
        cols["index"] = np.arange(self._total_frames, self._total_frames + T, dtype=np.int64)
        cols["task_index"] = np.full(T, task_index, dtype=np.int64)

        row = {"episode_index": ep, "tasks": [task], "length": T}
        try:  # a half-written episode would corrupt the files: give up the whole dataset instead
            row.update(self._write_data(cols, T))
            for cam in self.cameras:
                row.update(self._write_video(cam, images[cam]))
        except BaseException:
            self.abort()
            raise
        stats = {k: _image_stats(images[k[len(IMAGE_PREFIX):]]) if f["dtype"] == "video" else _numeric_stats(cols[k])
                 for k, f in self.features.items()}  # fmt: skip
        self._episodes.append(row)
        self._episode_stats.append(stats)
        self._total_frames += T
        return ep

    def _write_data(self, cols: dict[str, np.ndarray], T: int) -> dict:
        if self._data is not None and self._data.frames > 0:
            size_mb = self._data.size_bytes() / 2**20
            if size_mb + size_mb / self._data.frames * T >= self._data_mb:
                self._data.close()
                self._data = None
                self._data_pos = _next_file(*self._data_pos, self._chunks)
        chunk, file = self._data_pos
        if self._data is None:
            path = self._tmp / DEFAULT_DATA_PATH.format(chunk_index=chunk, file_index=file)
            self._data = _ParquetFile(path, self._schema)
        table = pa.table(
            [_arrow_column(cols[f.name], self.features[f.name]["dtype"], self.features[f.name]["shape"]) for f in self._schema],
            schema=self._schema,
        )  # fmt: skip
        self._data.writer.write_table(table)
        self._data.frames += T
        return {"data/chunk_index": chunk, "data/file_index": file,
                "dataset_from_index": self._total_frames, "dataset_to_index": self._total_frames + T}  # fmt: skip

    def _write_video(self, cam: str, frames: np.ndarray) -> dict:
        key, T = IMAGE_PREFIX + cam, len(frames)
        enc = self._videos.get(cam)
        if enc is not None and enc.frames > 0:
            size = enc.estimated_size_bytes()
            if (size + size / enc.frames * T) / 2**20 >= self._video_mb:
                enc.close()
                enc = None
                self._video_pos[cam] = _next_file(*self._video_pos[cam], self._chunks)
        chunk, file = self._video_pos[cam]
        if enc is None:
            path = self._tmp / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            path.parent.mkdir(parents=True, exist_ok=True)
            enc = self._videos[cam] = VideoFileEncoder(path, self._codec, self.fps, *self.image_size)
        start, stop = enc.append(frames)
        return {f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file,
                f"videos/{key}/from_timestamp": start / self.fps, f"videos/{key}/to_timestamp": stop / self.fps}  # fmt: skip

    def write_meta_json(self, name: str, obj) -> None:
        """Write ``meta/{name}`` (JSON) inside the dataset being built, e.g. collection provenance.

        LeRobot ignores unknown files under ``meta/``; robodream keeps its own metadata
        (environment settings, episode seeds) in ``meta/robodream.json``.
        """
        if self._state != "open":
            raise DatasetError(f"write_meta_json: the writer for {self.root} is {self._state}")
        atomic_write_json(self._tmp / "meta" / name, obj)

    def finalize(self) -> Path:
        """Close all files, write ``meta/`` and move the dataset to ``root``; returns ``root``.

        Raises:
            DatasetError: if no episode was added or a file cannot be written (the temporary
                directory is then removed and ``root`` left as it was).
        """
        if self._state == "finalized":
            return self.root
        if self._state != "open":
            raise DatasetError(f"finalize: the writer for {self.root} was aborted")
        try:
            if not self._episodes:
                raise DatasetError(f"finalize: no episodes were added to {self.root}")
            if self._data is not None:
                self._data.close()
            for enc in self._videos.values():
                enc.close()
            self._write_meta()
        except BaseException:
            self.abort()
            raise
        try:
            self._ctx.__exit__(None, None, None)
        except OSError as e:
            self._state = "aborted"
            raise DatasetError(f"cannot move the finished dataset into place at {self.root}: {e}") from e
        self._cleanup.detach()
        self._state = "finalized"
        return self.root

    def _write_meta(self) -> None:
        tmp = self._tmp
        names = list(self._tasks)
        tasks = pa.table({"task_index": pa.array(range(len(names)), pa.int64()), "task": pa.array(names, pa.string())})
        meta = _pandas_index_metadata("task", [("task_index", "int64", "int64"), ("task", "unicode", "object")])
        tasks = tasks.replace_schema_metadata({b"pandas": meta})
        sink = pa.BufferOutputStream()
        pq.write_table(tasks, sink)
        atomic_write_bytes(tmp / "meta/tasks.parquet", sink.getvalue().to_pybytes())

        rows = []
        for row, stats in zip(self._episodes, self._episode_stats, strict=True):
            r = dict(row)
            for feat, st in stats.items():
                r.update({f"stats/{feat}/{k}": v.tolist() for k, v in st.items()})
            rows.append(r)
        # Split the episode rows into files of about data_files_size_in_mb, as LeRobot does.
        per_row = pa.Table.from_pylist(rows[:1]).nbytes
        rows_per_file = max(1, int(self._data_mb * 2**20 // max(per_row, 1)))
        pos = (0, 0)
        for start in range(0, len(rows), rows_per_file):
            part = rows[start:start + rows_per_file]
            for r in part:
                r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = pos
            path = tmp / EPISODES_PATH.format(chunk_index=pos[0], file_index=pos[1])
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.Table.from_pylist(part), str(path), compression="snappy")
            pos = _next_file(*pos, self._chunks)

        stats = {feat: {k: v.tolist() for k, v in _aggregate_stats([s[feat] for s in self._episode_stats]).items()}
                 for feat in self.features}  # fmt: skip
        atomic_write_json(tmp / "meta/stats.json", stats)
        for cam in self.cameras:
            key = IMAGE_PREFIX + cam
            first = tmp / DEFAULT_VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0)
            self.features[key]["info"] = probe_video(first)
        n = len(self._episodes)
        info = {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type, "total_episodes": n,
            "total_frames": self._total_frames, "total_tasks": len(self._tasks), "chunks_size": self._chunks,
            "data_files_size_in_mb": _json_number(self._data_mb), "video_files_size_in_mb": _json_number(self._video_mb),
            "fps": self.fps, "splits": {"train": f"0:{n}"}, "data_path": DEFAULT_DATA_PATH,
            "video_path": DEFAULT_VIDEO_PATH if self.cameras else None, "features": self.features,
        }  # fmt: skip
        atomic_write_json(tmp / "meta/info.json", info)

    def abort(self) -> None:
        """Stop writing and delete the temporary directory; ``root`` is left untouched (idempotent)."""
        if self._state != "open":
            return
        self._state = "aborted"
        if self._data is not None:
            try:
                self._data.close()
            except Exception:  # noqa: BLE001 - the file is deleted next
                pass
        for enc in self._videos.values():
            enc.abort()
        self._videos, self._data = {}, None
        self._ctx.__exit__(_Aborted, _Aborted(), None)  # removes the temporary directory
        self._cleanup()

    def __enter__(self) -> LeRobotDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.finalize()
        else:
            self.abort()
        return False


# ----------------------------------------------------------------------------- reader
@dataclass
class Episode:
    """One episode's tabular data.

    Attributes:
        index: ``episode_index``.
        task: the task string of the episode's first frame; ``task_index`` its index in
            :attr:`LeRobotDataset.tasks`.
        length: number of frames ``T``.
        state: ``(T, Ds) float32`` ``observation.state``.
        action: ``(T, Da) float32``.
        timestamp: ``(T,) float32`` seconds from the episode start (``frame_index / fps``).
        frame_index: ``(T,) int64`` ``0..T-1``.
        extra: every other column of the data file except image features, ``name -> (T,)``
            for shape-``[1]`` features or ``(T, D)`` for vector features, in the stored dtype
            (e.g. ``next.done`` bool, ``next.reward`` float32).
    """

    index: int
    task: str
    task_index: int
    length: int
    state: np.ndarray
    action: np.ndarray
    timestamp: np.ndarray
    frame_index: np.ndarray
    extra: dict[str, np.ndarray]


def _fmt_path(template: str, root: Path, what: str, **kw) -> Path:
    try:
        return root / template.format(**kw)
    except (KeyError, IndexError, ValueError) as e:
        raise DatasetError(f"{root}: meta/info.json {what} template {template!r} is not a v3.0 template ({e})") from e


class LeRobotDataset:
    """Read a LeRobotDataset v3.0 directory (ours or LeRobot's) with pyarrow and PyAV.

    Attributes:
        root: the dataset directory. ``info``: parsed ``meta/info.json``; ``stats``: parsed
        ``meta/stats.json`` (``{}`` if absent). ``fps``: frames per second. ``robot_type``:
        ``str`` or ``None``. ``cameras``: camera names in ``info.json`` order (video features,
        without the ``observation.images.`` prefix). ``image_size``: ``(H, W)`` of the first
        camera (``None`` without cameras). ``num_episodes``, ``num_frames``, ``episode_lengths``.
        ``tasks``: task strings, position = ``task_index``. ``state_dim``, ``action_dim``.

    Raises:
        DatasetError: missing directory or ``meta/info.json``, unparsable metadata, a
            codebase_version other than v3.0, missing required features or metadata columns,
            inconsistent episode metadata, a missing or corrupt data or video file.
    """

    def __init__(self, root):
        self.root = root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset directory not found: {root}")
        info_path = root / "meta/info.json"
        if not info_path.is_file():
            raise DatasetError(f"{root} is not a LeRobot dataset: meta/info.json is missing")
        try:
            self.info = read_json(info_path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot parse {info_path}: {e}") from e
        if not isinstance(self.info, dict):
            raise DatasetError(f"cannot parse {info_path}: top level is not an object")
        version = str(self.info.get("codebase_version"))
        if version != CODEBASE_VERSION:
            hint = "; convert it with lerobot's convert_dataset_v21_to_v30" if version.startswith(("v1", "v2")) else ""
            raise DatasetError(f"{root} is a LeRobot {version} dataset but v3.0 is required{hint}")
        feats = self.info.get("features")
        missing = [k for k in REQUIRED_FEATURES if not isinstance(feats, dict) or k not in feats]
        if missing:
            raise DatasetError(f"{info_path} lacks required features {missing}")
        try:
            self.fps = int(self.info["fps"])
            if self.fps <= 0 or self.fps != float(self.info["fps"]):
                raise ValueError(self.info["fps"])
            self.state_dim = int(feats["observation.state"]["shape"][0])
            self.action_dim = int(feats["action"]["shape"][0])
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DatasetError(f"{info_path}: invalid fps or state/action shape ({e!r})") from e
        self.robot_type = self.info.get("robot_type")
        self.features = feats
        self._video_keys = [k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") == "video"]
        self.cameras = [k.removeprefix(IMAGE_PREFIX) for k in self._video_keys]
        self.image_size = self._hw(self._video_keys[0]) if self._video_keys else None
        self.stats = self._load_stats()
        self.tasks = self._load_tasks()
        self._load_episodes()
        self._tables: OrderedDict[Path, tuple[pa.Table, np.ndarray]] = OrderedDict()

    def _hw(self, key: str) -> tuple[int, int]:
        f = self.features[key]
        shape, names = list(f.get("shape", [])), list(f.get("names") or [])
        if len(shape) != 3:
            raise DatasetError(f"{self.root}: video feature {key} has shape {shape}, expected [H, W, C]")
        if names and names[0] in ("channel", "channels"):
            return int(shape[1]), int(shape[2])
        return int(shape[0]), int(shape[1])

    def _load_stats(self) -> dict:
        path = self.root / "meta/stats.json"
        if not path.is_file():
            return {}
        try:
            return read_json(path)
        except (OSError, ValueError) as e:
            raise DatasetError(f"cannot parse {path}: {e}") from e

    def _read_parquet(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        if not path.is_file():
            raise DatasetError(f"{self.root}: missing file {path}")
        try:
            schema = pq.read_schema(path)
            absent = [c for c in columns or [] if c not in schema.names]
            if absent:
                raise DatasetError(f"{path} lacks columns {absent}")
            return pq.read_table(path, columns=columns)
        except (pa.ArrowException, OSError) as e:
            raise DatasetError(f"corrupt or foreign parquet file {path}: {e}") from e

    def _load_tasks(self) -> list[str]:
        path = self.root / "meta/tasks.parquet"
        table = self._read_parquet(path)
        name = next((c for c in ("task", "__index_level_0__") if c in table.column_names), None)
        if name is None or "task_index" not in table.column_names:
            raise DatasetError(f"{path} needs a task column (or pandas index) and a task_index column")
        idx, names = _to_numpy(table["task_index"]).astype(int), _to_numpy(table[name])
        if sorted(idx.tolist()) != list(range(len(idx))):
            raise DatasetError(f"{path}: task_index values are not 0..{len(idx) - 1}")
        tasks = [""] * len(idx)
        for i, t in zip(idx, names, strict=True):
            tasks[i] = str(t)
        return tasks

    def _load_episodes(self) -> None:
        files = sorted((self.root / "meta/episodes").glob("chunk-*/file-*.parquet"))
        if not files:
            raise DatasetError(f"{self.root}: no episode metadata in meta/episodes/chunk-*/file-*.parquet")
        cols = ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                "dataset_from_index", "dataset_to_index"]  # fmt: skip
        for key in self._video_keys:
            cols += [f"videos/{key}/{s}" for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]
        tables = [self._read_parquet(f, cols) for f in files]
        cols.remove("tasks")  # checked for presence only; the data files carry task_index
        nulls = [c for c in cols for t in tables if t[c].null_count]
        if nulls:
            raise DatasetError(f"{self.root}: meta/episodes column {nulls[0]} has missing values")
        ep = {c: np.concatenate([_to_numpy(t[c]) for t in tables]) for c in cols}
        order = np.argsort(ep["episode_index"], kind="stable")
        ep = {c: v[order] for c, v in ep.items()}
        n = len(order)
        if ep["episode_index"].tolist() != list(range(n)):
            raise DatasetError(f"{self.root}: episode_index values in meta/episodes are not 0..{n - 1}")
        total = self.info.get("total_episodes")
        if total is not None and total != n:
            raise DatasetError(f"{self.root}: info.json says {total} episodes but meta/episodes has {n} (unfinalized recording?)")
        self._ep = ep
        self.num_episodes = n
        self.episode_lengths = [int(x) for x in ep["length"]]
        self.num_frames = int(sum(self.episode_lengths))
        data_tpl = self.info.get("data_path") or DEFAULT_DATA_PATH
        self._data_files = [
            _fmt_path(data_tpl, self.root, "data_path", chunk_index=int(c), file_index=int(f))
            for c, f in zip(ep["data/chunk_index"], ep["data/file_index"], strict=True)
        ]
        for path in dict.fromkeys(self._data_files):
            if not path.is_file():
                raise DatasetError(f"{self.root}: missing data file {path}")
            try:
                names = pq.read_schema(path).names
            except (pa.ArrowException, OSError) as e:
                raise DatasetError(f"corrupt or foreign parquet file {path}: {e}") from e
            absent = [c for c in REQUIRED_FEATURES if c not in names]
            if absent:
                raise DatasetError(f"data file {path} lacks columns {absent}")
        video_tpl = self.info.get("video_path") or DEFAULT_VIDEO_PATH
        self._video_files: dict[str, list[Path]] = {}
        for key in self._video_keys:
            paths = [
                _fmt_path(video_tpl, self.root, "video_path", video_key=key, chunk_index=int(c), file_index=int(f))
                for c, f in zip(ep[f"videos/{key}/chunk_index"], ep[f"videos/{key}/file_index"], strict=True)
            ]
            for path in dict.fromkeys(paths):
                if not path.is_file():
                    raise DatasetError(f"{self.root}: missing video file {path}")
            self._video_files[key] = paths

    def _check_index(self, i) -> int:
        if not isinstance(i, (int, np.integer)) or not 0 <= i < self.num_episodes:
            raise EpisodeIndexError(f"episode {i!r} out of range: {self.root} has {self.num_episodes} episodes")
        return int(i)

    def _video_key(self, cam: str) -> str:
        for key in (IMAGE_PREFIX + cam, cam):
            if key in self._video_keys:
                return key
        raise DatasetError(f"unknown camera {cam!r}: {self.root} has cameras {self.cameras}")

    def _data_table(self, path: Path) -> tuple[pa.Table, np.ndarray]:
        if path not in self._tables:
            table = self._read_parquet(path)
            self._tables[path] = (table, _to_numpy(table["episode_index"]))
            while len(self._tables) > 2:
                self._tables.popitem(last=False)
        self._tables.move_to_end(path)
        return self._tables[path]

    def episode(self, i: int) -> Episode:
        """The tabular data of episode ``i`` (see :class:`Episode` for shapes and dtypes).

        Raises:
            EpisodeIndexError: ``i`` out of range (a DatasetError and an IndexError).
            DatasetError: a corrupt data file, or a row count that differs from ``length``.
        """
        i = self._check_index(i)
        path = self._data_files[i]
        table, ep_col = self._data_table(path)
        rows = np.nonzero(ep_col == i)[0]
        length = self.episode_lengths[i]
        if len(rows) != length:
            raise DatasetError(f"data file {path} has {len(rows)} rows for episode {i}, expected {length}")
        part = table.slice(rows[0], length) if rows[-1] - rows[0] + 1 == length else table.take(rows)
        try:
            skip = {k for k, f in self.features.items() if isinstance(f, dict) and f.get("dtype") in ("video", "image")}
            cols = {name: _to_numpy(part[name]) for name in part.column_names if name not in skip}
        except (pa.ArrowException, ValueError) as e:
            raise DatasetError(f"cannot read episode {i} from {path}: {e}") from e
        frame_index = cols.pop("frame_index").astype(np.int64)
        order = np.argsort(frame_index, kind="stable")
        cols = {k: v[order] for k, v in cols.items()}
        frame_index = frame_index[order]
        timestamp = cols.pop("timestamp").astype(np.float32)
        task_index = int(cols.pop("task_index")[0])
        for k in ("episode_index", "index"):
            cols.pop(k)
        if not 0 <= task_index < len(self.tasks):
            raise DatasetError(f"data file {path}: task_index {task_index} of episode {i} is not in meta/tasks.parquet")
        state = np.asarray(cols.pop("observation.state"), dtype=np.float32).reshape(length, -1)
        action = np.asarray(cols.pop("action"), dtype=np.float32).reshape(length, -1)
        return Episode(index=i, task=self.tasks[task_index], task_index=task_index, length=length, state=state,
                       action=action, timestamp=timestamp, frame_index=frame_index, extra=cols)  # fmt: skip

    def _window(self, i: int, key: str) -> tuple[float, float, int]:
        return (float(self._ep[f"videos/{key}/from_timestamp"][i]), float(self._ep[f"videos/{key}/to_timestamp"][i]),
                self.episode_lengths[i])  # fmt: skip

    def frames(self, i: int, cam: str) -> np.ndarray:
        """Decoded frames ``(T, H, W, 3) uint8`` RGB of camera ``cam`` in episode ``i``.

        Frames are selected by presentation time inside the episode's
        ``[from_timestamp, to_timestamp)`` window of its video file (half a frame of slack).

        Raises:
            DatasetError: bad ``i`` or ``cam``, an undecodable file, or a frame count != length.
        """
        i, key = self._check_index(i), self._video_key(cam)
        return decode_window(self._video_files[key][i], *self._window(i, key)[:2], self.fps, self.episode_lengths[i])

    def all_frames(self, cam: str) -> list[np.ndarray]:
        """``[frames(i, cam) for i in range(num_episodes)]``, decoding each video file once, in order.

        Raises:
            DatasetError: as :meth:`frames`.
        """
        key = self._video_key(cam)
        by_file: dict[Path, list[int]] = {}
        for i, path in enumerate(self._video_files[key]):
            by_file.setdefault(path, []).append(i)
        out: list[np.ndarray | None] = [None] * self.num_episodes
        for path, eps in by_file.items():
            for i, frames in zip(eps, decode_windows(path, [self._window(i, key) for i in eps], self.fps), strict=True):
                out[i] = frames
        return out

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"fps={self.fps}, cameras={self.cameras})")  # fmt: skip
