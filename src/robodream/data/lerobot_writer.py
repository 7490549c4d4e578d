"""Writer of LeRobotDataset v3.0 directories (see :mod:`robodream.data.lerobot` for the layout)."""

from __future__ import annotations

import shutil
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from robodream.data.lerobot_format import (
    _ARROW,
    CODEBASE_VERSION,
    DEFAULT_DATA_PATH,
    DEFAULT_FEATURES,
    DEFAULT_VIDEO_PATH,
    EPISODES_PATH,
    IMAGE_PREFIX,
    _Aborted,
    _aggregate_stats,
    _arrow_column,
    _arrow_type,
    _image_stats,
    _json_number,
    _next_file,
    _numeric_stats,
    _pandas_index_metadata,
    _ParquetFile,
)
from robodream.data.video import VIDEO_CODECS, VideoFileEncoder, probe_video
from robodream.errors import DatasetError
from robodream.utils.io import atomic_directory, atomic_write_bytes, atomic_write_json, remove_stale_temporaries


def _array_stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Stats of an array feature ``(T, *shape)`` over all its values, shaped ``(1,)``; count = T frames."""
    stats = _numeric_stats(x.reshape(-1))
    stats["count"] = np.array([len(x)])
    return stats


class LeRobotDatasetWriter:
    """Write a LeRobotDataset v3.0 episode by episode; the dataset appears at ``root`` atomically.

    Everything is built in a temporary sibling directory (``.{name}.pid{pid}@{host}.*.tmp``) that
    is moved to ``root`` by :meth:`finalize`; :meth:`abort` (or an exception in a ``with`` block)
    deletes it and leaves ``root`` untouched. A killed process cannot clean up, so a new writer
    for the same ``root`` first deletes the temporary siblings of earlier runs whose process is
    gone (same host), or, for those it cannot attribute, that nothing has modified for 24 hours
    (:func:`robodream.utils.io.remove_stale_temporaries`); a concurrent live writer's directory is
    never touched. Use as a context manager::

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
            "shape": [1], [D], [H, W] or [H, W, C], "names": optional, "info": optional dict}``, e.g.
            ``{"next.reward": {"dtype": "float32", "shape": [1]}}``. Array features (2 or 3
            dimensions: depth, segmentation) are nested-list columns, Hugging Face's
            ``Array2D``/``Array3D`` storage; their stats are over all values, shaped ``(1,)``.
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
        remove_stale_temporaries(self.root)
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
        self._schema = pa.schema([(k, _arrow_type(f["dtype"], f["shape"])) for k, f in self.features.items()
                                  if f["dtype"] != "video"])
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
            raise DatasetError(f"dataset directory {self.root} already exists; pass --overwrite (overwrite=True) to replace it")
        if not self.root.is_dir() or (any(self.root.iterdir()) and not (self.root / "meta/info.json").is_file()):
            raise DatasetError(f"refusing to overwrite {self.root}: it is not a LeRobot dataset or an empty directory")

    def _check_extra(self, extra: dict[str, dict]) -> dict[str, dict]:
        out = {}
        for name, spec in extra.items():
            if not isinstance(name, str) or "/" in name or name in self.features or name in DEFAULT_FEATURES \
                    or name.startswith(IMAGE_PREFIX):  # fmt: skip
                raise DatasetError(f"extra feature name {name!r} is reserved or invalid")
            shape = list(spec.get("shape", [1])) if isinstance(spec, dict) else None
            if not isinstance(spec, dict) or spec.get("dtype") not in _ARROW or not 1 <= len(shape) <= 3 \
                    or min(shape) < 1:  # fmt: skip
                raise DatasetError(f"extra feature {name!r}: need dtype in {sorted(_ARROW)} and shape [D], [H, W] "
                                   f"or [H, W, C], got {spec!r}")
            out[name] = {"dtype": spec["dtype"], "shape": [int(d) for d in shape], "names": spec.get("names")}
            if "info" in spec:
                out[name]["info"] = dict(spec["info"])
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
            extra: ``name -> (T,)`` / ``(T, 1)`` (shape ``[1]``), ``(T, D)`` or ``(T, *shape)``
                arrays of the declared dtype, one entry per extra feature.

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
            if len(spec["shape"]) > 1:
                cols[name] = self._check_array(f"extra[{name!r}]", x, spec["dtype"], (T, *spec["shape"]))
                continue
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
        stats = {k: _image_stats(images[k[len(IMAGE_PREFIX):]]) if f["dtype"] == "video"
                 else _array_stats(cols[k]) if len(f["shape"]) > 1 else _numeric_stats(cols[k])
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
