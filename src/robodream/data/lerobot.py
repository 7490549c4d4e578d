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
files. Camera ``cam`` is the feature ``observation.images.{cam}``: ``"dtype": "video"`` (frames
in the MP4 files) or ``"dtype": "image"`` (LeRobot's ``use_videos=False``: a data-file column of
Hugging Face ``datasets.Image`` structs ``{bytes: PNG/JPEG file bytes, path: str}``, one per frame).

Only LeRobot's own columns (``timestamp``, ``frame_index``, ``episode_index``, ``index``,
``task_index``) are required; ``observation.state`` and ``action`` may be absent (e.g. a
dataset with only ``observation.environment_state``, or video only): the reader then reports
``state_dim`` / ``action_dim`` 0 and empty ``(T, 0)`` arrays, and a model that needs them says so.
"""

from __future__ import annotations

import io
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from robodream.data.lerobot_format import (
    CODEBASE_VERSION,
    DEFAULT_DATA_PATH,
    DEFAULT_VIDEO_PATH,
    DEPTH_PREFIX,
    IMAGE_PREFIX,
    REQUIRED_FEATURES,
    SEGMENTATION_PREFIX,
    STATE_ACTION_FEATURES,
    EpisodeIndexError,
    _to_numpy,
)
from robodream.data.lerobot_writer import LeRobotDatasetWriter
from robodream.data.video import VIDEO_CODECS, FrameRateError, decode_window, decode_windows
from robodream.errors import DatasetError
from robodream.utils.io import read_json

__all__ = ["VIDEO_CODECS", "CODEBASE_VERSION", "Episode", "EpisodeIndexError", "LeRobotDataset", "LeRobotDatasetWriter"]


# ----------------------------------------------------------------------------- reader
@dataclass
class Episode:
    """One episode's tabular data.

    Attributes:
        index: ``episode_index``.
        task: the task string of the episode's first frame; ``task_index`` its index in
            :attr:`LeRobotDataset.tasks`.
        length: number of frames ``T``.
        state: ``(T, Ds) float32`` ``observation.state``; ``(T, 0)`` if the dataset has none.
        action: ``(T, Da) float32``; ``(T, 0)`` if the dataset has none.
        timestamp: ``(T,) float32`` seconds from the episode start (``frame_index / fps``).
        frame_index: ``(T,) int64`` ``0..T-1``.
        extra: every other column of the data file except camera and array features (see
            :meth:`LeRobotDataset.array`), ``name -> (T,)`` for shape-``[1]`` features or ``(T, D)``
            for vector features, in the stored dtype (e.g. ``next.done`` bool, ``next.reward`` float32).
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
        ``str`` or ``None``. ``cameras``: camera names in ``info.json`` order (video and image
        features, without the ``observation.images.`` prefix). ``image_size``: ``(H, W)`` of the
        first camera (``None`` without cameras). ``num_episodes``, ``num_frames``,
        ``episode_lengths``. ``tasks``: task strings, position = ``task_index``. ``state_dim``,
        ``action_dim``: sizes of ``observation.state`` / ``action``, 0 when the feature is absent.

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
            self.state_dim, self.action_dim = (int(feats[k]["shape"][0]) if k in feats else 0
                                               for k in STATE_ACTION_FEATURES)  # fmt: skip
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise DatasetError(f"{info_path}: invalid fps or state/action shape ({e!r})") from e
        self.robot_type = self.info.get("robot_type")
        self.features = feats
        dtypes = {k: f.get("dtype") if isinstance(f, dict) else None for k, f in feats.items()}
        self._camera_keys = [k for k, d in dtypes.items() if d in ("video", "image")]
        self._video_keys = [k for k in self._camera_keys if dtypes[k] == "video"]
        self._image_keys = [k for k in self._camera_keys if dtypes[k] == "image"]
        #: Features of (H, W) or (H, W, C) arrays per frame in the data files (depth, segmentation).
        self.array_keys = [k for k, f in feats.items() if k not in self._camera_keys and isinstance(f, dict)
                           and len(f.get("shape") or []) > 1]
        self.cameras = [k.removeprefix(IMAGE_PREFIX) for k in self._camera_keys]
        self.image_size = self._hw(self._camera_keys[0]) if self._camera_keys else None
        self.stats = self._load_stats()
        self.tasks = self._load_tasks()
        self._load_episodes()
        self._tables: OrderedDict[Path, tuple[pa.Table, np.ndarray]] = OrderedDict()

    def _hw(self, key: str) -> tuple[int, int]:
        f = self.features[key]
        shape, names = list(f.get("shape", [])), list(f.get("names") or [])
        if len(shape) != 3:
            raise DatasetError(f"{self.root}: camera feature {key} has shape {shape}, expected [H, W, C]")
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
            declared = [k for k in STATE_ACTION_FEATURES if k in self.features]
            absent = [c for c in (*REQUIRED_FEATURES, *declared, *self._image_keys) if c not in names]
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

    def _camera_key(self, cam: str) -> str:
        for key in (IMAGE_PREFIX + cam, cam):
            if key in self._camera_keys:
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

    def _episode_rows(self, i: int) -> tuple[Path, pa.Table]:
        """The data-file rows of episode ``i`` (a valid index), in ``frame_index`` order."""
        path = self._data_files[i]
        table, ep_col = self._data_table(path)
        rows = np.nonzero(ep_col == i)[0]
        length = self.episode_lengths[i]
        if len(rows) != length:
            raise DatasetError(f"data file {path} has {len(rows)} rows for episode {i}, expected {length}")
        part = table.slice(rows[0], length) if rows[-1] - rows[0] + 1 == length else table.take(rows)
        try:
            order = np.argsort(_to_numpy(part["frame_index"]), kind="stable")
        except (pa.ArrowException, ValueError) as e:
            raise DatasetError(f"cannot read episode {i} from {path}: {e}") from e
        return path, part if np.array_equal(order, np.arange(length)) else part.take(order)

    def episode(self, i: int) -> Episode:
        """The tabular data of episode ``i`` (see :class:`Episode` for shapes and dtypes).

        Raises:
            EpisodeIndexError: ``i`` out of range (a DatasetError and an IndexError).
            DatasetError: a corrupt data file, or a row count that differs from ``length``.
        """
        i = self._check_index(i)
        path, part = self._episode_rows(i)
        length = self.episode_lengths[i]
        try:
            # copies: arrow's zero-copy arrays are read-only, and callers may write into episodes
            cols = {name: np.array(_to_numpy(part[name])) for name in part.column_names
                    if name not in self._camera_keys and name not in self.array_keys}
        except (pa.ArrowException, ValueError) as e:
            raise DatasetError(f"cannot read episode {i} from {path}: {e}") from e
        frame_index = cols.pop("frame_index").astype(np.int64)
        timestamp = cols.pop("timestamp").astype(np.float32)
        task_index = int(cols.pop("task_index")[0])
        for k in ("episode_index", "index"):
            cols.pop(k)
        if not 0 <= task_index < len(self.tasks):
            raise DatasetError(f"data file {path}: task_index {task_index} of episode {i} is not in meta/tasks.parquet")
        state, action = (np.asarray(cols.pop(k, np.zeros((length, 0))), dtype=np.float32).reshape(length, -1)
                         for k in STATE_ACTION_FEATURES)
        return Episode(index=i, task=self.tasks[task_index], task_index=task_index, length=length, state=state,
                       action=action, timestamp=timestamp, frame_index=frame_index, extra=cols)  # fmt: skip

    def array(self, i: int, key: str) -> np.ndarray:
        """Array feature ``key`` of episode ``i``: ``(T, *shape)`` in the stored dtype, exactly as written.

        Raises:
            DatasetError: bad ``i``, ``key`` not an array feature, or a value of another shape.
        """
        i = self._check_index(i)
        if key not in self.array_keys:
            raise DatasetError(f"{self.root} has no array feature {key!r}; it has {self.array_keys}")
        path, part = self._episode_rows(i)
        shape = (self.episode_lengths[i], *self.features[key]["shape"])
        try:
            x = np.array(_to_numpy(part[key]))
        except (pa.ArrowException, ValueError) as e:
            raise DatasetError(f"cannot read {key} of episode {i} from {path}: {e}") from e
        if x.shape != shape:
            raise DatasetError(f"data file {path}: {key} of episode {i} has shape {x.shape}, expected {shape}")
        return x

    def all_depth(self, cam: str) -> list[np.ndarray]:
        """Depth of camera ``cam`` in every episode: ``(T, H, W) uint16`` millimetres (65535: nothing
        within 65.5 m); see :mod:`robodream.data.collect`. Raises DatasetError as :meth:`array`."""
        return [self.array(i, DEPTH_PREFIX + cam) for i in range(self.num_episodes)]

    def all_segmentation(self, cam: str) -> list[np.ndarray]:
        """Segmentation of camera ``cam`` in every episode: ``(T, H, W) uint8`` class ids (the
        feature's ``info.classes``). Raises DatasetError as :meth:`array`."""
        return [self.array(i, SEGMENTATION_PREFIX + cam) for i in range(self.num_episodes)]

    def _window(self, i: int, key: str) -> tuple[float, float, int]:
        return (float(self._ep[f"videos/{key}/from_timestamp"][i]), float(self._ep[f"videos/{key}/to_timestamp"][i]),
                self.episode_lengths[i])  # fmt: skip

    def frames(self, i: int, cam: str) -> np.ndarray:
        """Decoded frames ``(T, H, W, 3) uint8`` RGB of camera ``cam`` in episode ``i``.

        Video cameras: frames are selected by presentation time inside the episode's
        ``[from_timestamp, to_timestamp)`` window of its video file (half a frame of slack), and
        must be ``1/fps`` apart. Image cameras: the episode's PNG/JPEG cells, decoded with Pillow
        (greyscale, palette and RGBA images converted to RGB), in ``frame_index`` order.

        Raises:
            DatasetError: bad ``i`` or ``cam``, an undecodable file or image, a frame count !=
                length, frames spaced at a rate other than ``fps``, or an image of another size.
        """
        i, key = self._check_index(i), self._camera_key(cam)
        if key in self._image_keys:
            return self._image_frames(i, key)
        try:
            from_ts, to_ts, length = self._window(i, key)
            return decode_window(self._video_files[key][i], from_ts, to_ts, self.fps, length)
        except FrameRateError as e:
            raise self._fps_error(e, i) from e

    def all_frames(self, cam: str) -> list[np.ndarray]:
        """``[frames(i, cam) for i in range(num_episodes)]``, decoding each video file once, in order.

        Raises:
            DatasetError: as :meth:`frames`.
        """
        key = self._camera_key(cam)
        if key in self._image_keys:
            return [self._image_frames(i, key) for i in range(self.num_episodes)]
        by_file: dict[Path, list[int]] = {}
        for i, path in enumerate(self._video_files[key]):
            by_file.setdefault(path, []).append(i)
        out: list[np.ndarray | None] = [None] * self.num_episodes
        for path, eps in by_file.items():
            try:
                decoded = decode_windows(path, [self._window(i, key) for i in eps], self.fps)
            except FrameRateError as e:
                raise self._fps_error(e, eps[e.window]) from e
            for i, frames in zip(eps, decoded, strict=True):
                out[i] = frames
        return out

    def _fps_error(self, e: FrameRateError, i: int) -> DatasetError:
        return DatasetError(f"{self.root}: meta/info.json says fps={self.fps} but the video of episode {i} "
                            f"({e.path.relative_to(self.root) if e.path.is_relative_to(self.root) else e.path}) "
                            f"has frames at {e.measured_fps:.4g} fps; "
                            f"one of them is wrong (usually \"fps\" in meta/info.json)")  # fmt: skip

    def _image_frames(self, i: int, key: str) -> np.ndarray:
        """Decode the ``datasets.Image`` cells of image feature ``key`` in episode ``i``: ``(T, H, W, 3) uint8``."""
        path, part = self._episode_rows(i)
        col = part[key].combine_chunks()
        if pa.types.is_struct(col.type) and col.type.get_field_index("bytes") >= 0:
            blobs = col.field("bytes").to_pylist()
            files = col.field("path").to_pylist() if col.type.get_field_index("path") >= 0 else [None] * len(col)
        elif pa.types.is_binary(col.type) or pa.types.is_large_binary(col.type):
            blobs, files = col.to_pylist(), [None] * len(col)
        else:
            raise DatasetError(f"data file {path}: image column {key} is {col.type}, expected struct<bytes, path>")
        h, w = self._hw(key)
        out = np.empty((len(blobs), h, w, 3), np.uint8)
        for t, (blob, file) in enumerate(zip(blobs, files, strict=True)):
            where = f"{self.root}: image {key} of episode {i}, frame {t} ({path.name})"
            if blob is None and file is None:
                raise DatasetError(f"{where} is missing")
            src = io.BytesIO(blob) if blob is not None else Path(file) if Path(file).is_absolute() else self.root / file
            try:
                with Image.open(src) as img:
                    rgb = np.asarray(img.convert("RGB"))
            except (OSError, UnidentifiedImageError, ValueError) as e:
                raise DatasetError(f"{where} cannot be decoded: {e}") from e
            if rgb.shape != (h, w, 3):
                raise DatasetError(f"{where} is {rgb.shape[1]}x{rgb.shape[0]}, but info.json declares {w}x{h}")
            out[t] = rgb
        return out

    def __repr__(self) -> str:
        return (f"LeRobotDataset({str(self.root)!r}, episodes={self.num_episodes}, frames={self.num_frames}, "
                f"fps={self.fps}, cameras={self.cameras})")  # fmt: skip
