"""LeRobotDataset v3.0 reader/writer: round trips, file splitting, LeRobot's layout, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robodream.data.lerobot import VIDEO_CODECS, LeRobotDataset, LeRobotDatasetWriter
from robodream.errors import DatasetError

try:  # tests/ is on sys.path under pytest's default import mode
    from fixtures.lerobot_v30 import make_lerobot_v30_fixture, smooth_frames
except ImportError:  # pragma: no cover - when tests/ is a package
    from tests.fixtures.lerobot_v30 import make_lerobot_v30_fixture, smooth_frames

H = W = 64
CAMERAS = ["corner", "gripper"]
EXTRA = {"next.reward": {"dtype": "float32", "shape": [1]}, "next.success": {"dtype": "bool", "shape": [1]},
         "observation.goal": {"dtype": "float32", "shape": [3], "names": ["x", "y", "z"]}}  # fmt: skip


def structured_frames(T: int, seed: int) -> np.ndarray:
    """Gradient background, a few 2-5 px coloured objects moving about, mild noise: (T, H, W, 3) uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    out = np.empty((T, H, W, 3), np.uint8)
    pos = rng.integers(5, 55, (4, 2))
    colors = rng.integers(0, 256, (4, 3))
    sizes = rng.integers(2, 6, 4)
    for t in range(T):
        img = np.stack([(x * 3 + t * 4) % 256, (y * 2 + 40) % 256, ((x + y) + 2 * t) % 256], -1).astype(np.int32)
        for (py, px), c, s in zip((pos + t * np.array([[1, 0], [0, 1], [1, 1], [-1, 1]])) % (H - 6), colors, sizes,
                                  strict=True):  # fmt: skip
            img[py:py + s, px:px + s] = c
        out[t] = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255)
    return out


def make_episodes(lengths=(17, 30, 9), seed=0) -> list[dict]:
    rng = np.random.default_rng(seed)
    eps = []
    for k, T in enumerate(lengths):
        eps.append({
            "task": ["reach the red button", "push the puck"][k % 2],
            "state": rng.normal(size=(T, 4)).astype(np.float32),
            "action": rng.uniform(-1, 1, size=(T, 4)).astype(np.float32),
            "images": {cam: structured_frames(T, seed=100 * k + c) for c, cam in enumerate(CAMERAS)},
            "extra": {"next.reward": rng.normal(size=T).astype(np.float32), "next.success": rng.random(T) > 0.7,
                      "observation.goal": rng.normal(size=(T, 3)).astype(np.float32)},
        })  # fmt: skip
    return eps


def write(root, eps, **kw) -> Path:
    args = dict(fps=10, robot_type="sawyer", state_names=[f"s{i}" for i in range(4)],
                action_names=[f"a{i}" for i in range(4)], cameras=CAMERAS, image_size=(H, W), extra_features=EXTRA)  # fmt: skip
    args.update(kw)
    with LeRobotDatasetWriter(root, **args) as w:
        for e in eps:
            w.add_episode(**e)
    return Path(root)


@pytest.fixture(scope="module")
def episodes():
    return make_episodes()


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory, episodes):
    return write(tmp_path_factory.mktemp("small") / "ds", episodes, video_codec="h264-rgb")


def check_episodes(ds: LeRobotDataset, eps: list[dict], max_image_err: int) -> None:
    assert ds.num_episodes == len(eps)
    assert ds.num_frames == sum(len(e["state"]) for e in eps)
    for i, e in enumerate(eps):
        ep = ds.episode(i)
        T = len(e["state"])
        assert (ep.index, ep.length, ep.task) == (i, T, e["task"])
        assert ds.tasks[ep.task_index] == e["task"]
        assert ep.state.dtype == np.float32 and np.array_equal(ep.state, e["state"])
        assert np.array_equal(ep.action, e["action"])
        assert ep.timestamp.dtype == np.float32 and np.array_equal(ep.timestamp, (np.arange(T) / 10).astype(np.float32))
        assert ep.frame_index.dtype == np.int64 and np.array_equal(ep.frame_index, np.arange(T))
        assert set(ep.extra) == set(e["extra"])
        for k, v in e["extra"].items():
            assert ep.extra[k].dtype == v.dtype and np.array_equal(ep.extra[k], v), k
        for cam in CAMERAS:
            frames = ds.frames(i, cam)
            assert frames.shape == (T, H, W, 3) and frames.dtype == np.uint8
            assert np.abs(frames.astype(int) - e["images"][cam]).max() <= max_image_err
    for cam in CAMERAS:
        all_frames = ds.all_frames(cam)
        assert len(all_frames) == len(eps)
        for i in range(len(eps)):
            assert np.array_equal(all_frames[i], ds.frames(i, cam))


# ----------------------------------------------------------------------------- round trip
@pytest.mark.parametrize("codec,max_err", [("h264", 1), ("h264-rgb", 0)])
def test_round_trip(tmp_path, episodes, codec, max_err):
    root = write(tmp_path / "ds", episodes, video_codec=codec)
    ds = LeRobotDataset(root)
    assert ds.fps == 10 and ds.robot_type == "sawyer" and ds.cameras == CAMERAS and ds.image_size == (H, W)
    assert ds.state_dim == 4 and ds.action_dim == 4
    assert ds.tasks == ["reach the red button", "push the puck"]
    assert [ds.episode(i).task_index for i in range(3)] == [0, 1, 0]
    check_episodes(ds, episodes, max_err)
    assert not [p for p in tmp_path.iterdir() if p.name != "ds"]  # no temporary directory left


def test_stats_match_numpy(small_dataset, episodes):
    ds = LeRobotDataset(small_dataset)
    for key, values in [("observation.state", [e["state"] for e in episodes]),
                        ("action", [e["action"] for e in episodes]),
                        ("observation.goal", [e["extra"]["observation.goal"] for e in episodes]),
                        ("next.reward", [e["extra"]["next.reward"][:, None] for e in episodes])]:  # fmt: skip
        x = np.concatenate(values).astype(np.float64)
        st = ds.stats[key]
        assert set(st) == {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}
        np.testing.assert_allclose(st["min"], x.min(0), rtol=1e-6)
        np.testing.assert_allclose(st["max"], x.max(0), rtol=1e-6)
        np.testing.assert_allclose(st["mean"], x.mean(0), rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(st["std"], x.std(0), rtol=1e-6)
        assert st["count"] == [len(x)]
        assert np.all(np.array(st["q01"]) <= np.array(st["q99"]))
    for cam in CAMERAS:
        px = np.concatenate([e["images"][cam] for e in episodes]).reshape(-1, 3) / 255.0
        st = ds.stats[f"observation.images.{cam}"]
        assert np.array(st["mean"]).shape == (3, 1, 1)
        np.testing.assert_allclose(np.array(st["mean"]).ravel(), px.mean(0), rtol=1e-9)
        np.testing.assert_allclose(np.array(st["std"]).ravel(), px.std(0), rtol=1e-9)
        np.testing.assert_allclose(np.array(st["min"]).ravel(), px.min(0))
        np.testing.assert_allclose(np.array(st["max"]).ravel(), px.max(0))
    for key in ("timestamp", "frame_index", "episode_index", "index", "task_index", "next.success"):
        assert key in ds.stats
    # per-episode stats in the episodes parquet
    meta = pq.read_table(small_dataset / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    np.testing.assert_allclose(meta[1]["stats/observation.state/mean"], episodes[1]["state"].astype(np.float64).mean(0), rtol=1e-9)
    np.testing.assert_allclose(meta[2]["stats/action/max"], episodes[2]["action"].max(0))
    assert meta[0]["stats/observation.images.corner/count"] == [17]


def test_layout_follows_lerobot_v30(small_dataset):
    root = small_dataset
    info = json.loads((root / "meta/info.json").read_text())
    assert list(info)[:12] == ["codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                               "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                               "data_path", "video_path"]  # fmt: skip
    assert info["codebase_version"] == "v3.0" and info["splits"] == {"train": "0:3"}
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 56, 2)
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    feats = info["features"]
    assert feats["timestamp"] == {"dtype": "float32", "shape": [1], "names": None}
    assert feats["observation.state"] == {"dtype": "float32", "shape": [4], "names": ["s0", "s1", "s2", "s3"]}
    video = feats["observation.images.corner"]
    assert video["dtype"] == "video" and video["shape"] == [H, W, 3]
    assert video["names"] == ["height", "width", "channels"]
    assert list(video["info"]) == ["video.height", "video.width", "video.codec", "video.pix_fmt",
                                   "video.is_depth_map", "video.fps", "video.channels", "has_audio"]  # fmt: skip
    assert video["info"]["video.codec"] == "h264" and video["info"]["video.fps"] == 10
    # tasks: task string as the pandas index, column task_index
    tasks = pq.read_table(root / "meta/tasks.parquet")
    assert tasks.column_names == ["task_index", "task"]
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == ["task"]
    # episodes parquet columns, in LeRobot's order
    ep = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet")
    names = ep.column_names
    assert names[:7] == ["episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                         "dataset_from_index", "dataset_to_index"]  # fmt: skip
    assert names[7:11] == [f"videos/observation.images.corner/{s}"
                           for s in ("chunk_index", "file_index", "from_timestamp", "to_timestamp")]  # fmt: skip
    assert names[-2:] == ["meta/episodes/chunk_index", "meta/episodes/file_index"]
    assert "stats/observation.state/q99" in names and "stats/observation.images.gripper/std" in names
    assert ep.schema.field("tasks").type == pa.list_(pa.string())
    rows = ep.to_pylist()
    assert [(r["dataset_from_index"], r["dataset_to_index"]) for r in rows] == [(0, 17), (17, 47), (47, 56)]
    assert [r["videos/observation.images.corner/to_timestamp"] for r in rows] == [1.7, 4.7, 5.6]
    # data parquet: fixed-size lists for vectors, scalars for shape [1], many episodes in one file
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 4)
    assert data.schema.field("next.success").type == pa.bool_()
    assert data.schema.field("index").type == pa.int64()
    assert data.column("index").to_pylist() == list(range(56))
    assert "observation.images.corner" not in data.column_names


def test_av1_round_trip(tmp_path):
    eps = make_episodes(lengths=(8, 5), seed=1)
    for k, e in enumerate(eps):
        e["images"] = {cam: smooth_frames(len(e["state"]), H, W, phase=k + c) for c, cam in enumerate(CAMERAS)}
    ds = LeRobotDataset(write(tmp_path / "ds", eps, video_codec="av1"))
    assert ds.info["features"]["observation.images.corner"]["info"]["video.codec"] == "av1"
    assert ds.info["features"]["observation.images.corner"]["info"]["video.pix_fmt"] == "yuv420p"
    for i, e in enumerate(eps):
        for cam in CAMERAS:
            assert np.abs(ds.frames(i, cam).astype(int) - e["images"][cam]).mean() < 6


# ----------------------------------------------------------------------------- files split
def test_episodes_split_over_files_and_chunks(tmp_path):
    eps = make_episodes(lengths=(12, 20, 7, 15, 11, 9), seed=3)
    root = write(tmp_path / "ds", eps, video_codec="h264-rgb", data_files_size_in_mb=0.004,
                 video_files_size_in_mb=0.15, chunks_size=2)  # fmt: skip
    data_files = sorted((root / "data").glob("*/*.parquet"))
    video_files = sorted((root / "videos/observation.images.corner").glob("*/*.mp4"))
    assert len(data_files) >= 3 and len(video_files) >= 2
    assert (root / "data/chunk-001").is_dir()  # chunks_size=2 files per chunk
    meta = [r for f in sorted((root / "meta/episodes").glob("*/*.parquet")) for r in pq.read_table(f).to_pylist()]
    files = {(r["data/chunk_index"], r["data/file_index"]) for r in meta}
    vfiles = {(r["videos/observation.images.corner/chunk_index"], r["videos/observation.images.corner/file_index"])
              for r in meta}  # fmt: skip
    assert len(files) == len(data_files) and len(vfiles) == len(video_files)
    assert any(r["videos/observation.images.corner/from_timestamp"] > 0 for r in meta)  # several episodes per video
    check_episodes(LeRobotDataset(root), eps, max_image_err=0)


# ----------------------------------------------------------------------------- LeRobot's own layout
def test_reads_lerobot_written_layout(tmp_path):
    exp = make_lerobot_v30_fixture(tmp_path / "so100", chunks_size=2)
    ds = LeRobotDataset(tmp_path / "so100")
    assert ds.robot_type == "so100" and ds.cameras == ["front", "wrist"] and ds.image_size == (48, 64)
    assert ds.state_dim == 6 and ds.action_dim == 6
    assert ds.tasks == exp["tasks"] and ds.episode_lengths == exp["lengths"]
    assert set(ds.stats["observation.state"]) >= {"min", "max", "mean", "std", "count", "q01", "q50", "q99"}
    for i, T in enumerate(exp["lengths"]):
        ep = ds.episode(i)
        assert ep.length == T and ep.task == exp["episode_tasks"][i]
        assert np.array_equal(ep.state, exp["state"][i]) and np.array_equal(ep.action, exp["action"][i])
        assert np.array_equal(ep.extra["next.done"], exp["done"][i])
        for cam in ds.cameras:
            frames, src = ds.frames(i, cam).astype(int), exp["images"][cam][i].astype(int)
            assert frames.shape == src.shape
            err = np.abs(frames - src).mean(axis=(1, 2, 3))
            assert err.max() < 6, err  # AV1 crf 30 is lossy, but smooth images survive
            if T > 1:  # and each frame is the right one, not its neighbour
                assert np.all(err[1:] < np.abs(frames[1:] - src[:-1]).mean(axis=(1, 2, 3)))
    for cam in ds.cameras:
        for i, frames in enumerate(ds.all_frames(cam)):
            assert np.array_equal(frames, ds.frames(i, cam))


def test_reads_variable_length_list_columns(tmp_path):
    exp = make_lerobot_v30_fixture(tmp_path / "ds", lengths=(5, 4), cameras=("front",), vector_type="list")
    ep = LeRobotDataset(tmp_path / "ds").episode(1)
    assert ep.state.shape == (4, 6) and np.array_equal(ep.state, exp["state"][1])


# ----------------------------------------------------------------------------- bad input
def test_missing_directory(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        LeRobotDataset(tmp_path / "nope")


@pytest.mark.parametrize("content", [{}, {"README.md": "hello", "data/x.csv": "1,2"}])
def test_directory_without_info_json(tmp_path, content):
    for name, text in content.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(DatasetError, match="meta/info.json is missing"):
        LeRobotDataset(tmp_path)


def test_v21_dataset_is_rejected(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text(json.dumps({"codebase_version": "v2.1", "fps": 30, "features": {}}))
    with pytest.raises(DatasetError, match=r"v2\.1 dataset but v3\.0 is required"):
        LeRobotDataset(tmp_path)


def test_unparsable_info_json(tmp_path):
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot parse"):
        LeRobotDataset(tmp_path)


def _copy(src, dst) -> Path:
    return Path(shutil.copytree(src, dst))


def test_missing_video_file(tmp_path, small_dataset):
    root = _copy(small_dataset, tmp_path / "ds")
    victim = root / "videos/observation.images.gripper/chunk-000/file-000.mp4"
    victim.unlink()
    with pytest.raises(DatasetError, match="missing video file .*observation.images.gripper/chunk-000/file-000.mp4"):
        LeRobotDataset(root)


def test_corrupt_data_parquet(tmp_path, small_dataset):
    root = _copy(small_dataset, tmp_path / "ds")
    (root / "data/chunk-000/file-000.parquet").write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(DatasetError, match="corrupt or foreign parquet file .*file-000.parquet"):
        LeRobotDataset(root)


def test_video_window_with_wrong_frame_count(tmp_path, small_dataset):
    root = _copy(small_dataset, tmp_path / "ds")
    path = root / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    col = "videos/observation.images.corner/to_timestamp"
    table = table.set_column(table.column_names.index(col), col, pa.array([1.5, 4.7, 5.6]))
    pq.write_table(table, path)
    ds = LeRobotDataset(root)
    with pytest.raises(DatasetError, match=r"has 15 frames in the episode window .* expected 17"):
        ds.frames(0, "corner")
    with pytest.raises(DatasetError, match="expected 17"):
        ds.all_frames("corner")
    assert ds.frames(0, "gripper").shape == (17, H, W, 3)


def test_info_json_disagreeing_with_episode_metadata(tmp_path, small_dataset):
    root = _copy(small_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["total_episodes"] = 5  # e.g. a LeRobot recording that was never finalized
    (root / "meta/info.json").write_text(json.dumps(info))
    with pytest.raises(DatasetError, match="says 5 episodes but meta/episodes has 3"):
        LeRobotDataset(root)


def test_out_of_range_episode_and_unknown_camera(small_dataset):
    ds = LeRobotDataset(small_dataset)
    with pytest.raises(DatasetError, match="out of range"):
        ds.episode(3)
    with pytest.raises(IndexError):
        ds.frames(-1, "corner")
    with pytest.raises(DatasetError, match="unknown camera"):
        ds.frames(0, "top")


def test_writer_refuses_existing_directory(tmp_path, episodes):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "keep.txt").write_text("precious")
    with pytest.raises(DatasetError, match="already exists"):
        write(root, episodes[:1])
    with pytest.raises(DatasetError, match="refusing to overwrite"):  # not a dataset: never replaced
        write(root, episodes[:1], overwrite=True)
    assert [p.name for p in root.iterdir()] == ["keep.txt"] and (root / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_writer_overwrites_a_dataset_when_asked(tmp_path, episodes):
    root = write(tmp_path / "ds", episodes[:2], video_codec="h264-rgb")
    write(root, episodes[2:], video_codec="h264-rgb", overwrite=True)
    assert LeRobotDataset(root).episode_lengths == [9]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_exception_in_with_block_leaves_nothing(tmp_path, episodes):
    with pytest.raises(RuntimeError, match="simulator crashed"):
        with LeRobotDatasetWriter(tmp_path / "ds", fps=10, robot_type="sawyer", state_names=list("abcd"),
                                  action_names=list("abcd"), cameras=CAMERAS, image_size=(H, W),
                                  extra_features=EXTRA) as w:  # fmt: skip
            w.add_episode(**episodes[0])
            raise RuntimeError("simulator crashed")
    assert list(tmp_path.iterdir()) == []


def test_abort_and_empty_finalize(tmp_path, episodes):
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=10, robot_type=None, state_names=list("abcd"),
                             action_names=list("abcd"), cameras=CAMERAS, image_size=(H, W), extra_features=EXTRA)  # fmt: skip
    w.add_episode(**episodes[2])
    w.abort()
    assert list(tmp_path.iterdir()) == []
    w = LeRobotDatasetWriter(tmp_path / "ds", fps=10, robot_type=None, state_names=list("abcd"),
                             action_names=list("abcd"), cameras=CAMERAS, image_size=(H, W))  # fmt: skip
    with pytest.raises(DatasetError, match="no episodes"):
        w.finalize()
    assert list(tmp_path.iterdir()) == []


def _bad(e, **changes):
    e = {**e, "images": dict(e["images"]), "extra": dict(e["extra"])}
    for k, v in changes.items():
        if k in CAMERAS:
            e["images"][k] = v
        elif k == "images":
            e["images"] = v
        else:
            e[k] = v
    return e


@pytest.mark.parametrize("case,match", [
    ("image_size", r"images\['corner'\] has shape \(17, 32, 32, 3\), expected \(17, 64, 64, 3\)"),
    ("image_dtype", r"images\['gripper'\] has dtype float32, expected uint8"),
    ("missing_camera", r"images has cameras \['corner'\], expected \['corner', 'gripper'\]"),
    ("extra_camera", r"images has cameras \['corner', 'gripper', 'top'\]"),
    ("state_dtype", r"state has dtype float64, expected float32"),
    ("action_length", r"action has shape \(16, 4\), expected \(17, 4\)"),
    ("image_length", r"has shape \(16, 64, 64, 3\)"),
    ("missing_extra", r"extra has features"),
    ("nan_state", r"observation.state contains NaN"),
])  # fmt: skip
def test_add_episode_validates(tmp_path, episodes, case, match):
    e = episodes[0]
    bad = {
        "image_size": lambda: _bad(e, corner=np.zeros((17, 32, 32, 3), np.uint8)),
        "image_dtype": lambda: _bad(e, gripper=e["images"]["gripper"].astype(np.float32)),
        "missing_camera": lambda: _bad(e, images={"corner": e["images"]["corner"]}),
        "extra_camera": lambda: _bad(e, images={**e["images"], "top": e["images"]["corner"]}),
        "state_dtype": lambda: _bad(e, state=e["state"].astype(np.float64)),
        "action_length": lambda: _bad(e, action=e["action"][:16]),
        "image_length": lambda: _bad(e, corner=e["images"]["corner"][:16]),
        "missing_extra": lambda: _bad(e, extra={"next.reward": e["extra"]["next.reward"]}),
        "nan_state": lambda: _bad(e, state=np.full_like(e["state"], np.nan)),
    }[case]()
    with LeRobotDatasetWriter(tmp_path / "ds", fps=10, robot_type="sawyer", state_names=list("abcd"),
                              action_names=list("abcd"), cameras=CAMERAS, image_size=(H, W),
                              extra_features=EXTRA, video_codec="h264-rgb") as w:  # fmt: skip
        with pytest.raises(DatasetError, match=match):
            w.add_episode(**bad)
        w.add_episode(**e)  # the writer is still usable after a rejected episode
    assert LeRobotDataset(tmp_path / "ds").num_episodes == 1


@pytest.mark.parametrize("kw,match", [
    ({"video_codec": "vp9"}, "unknown video_codec"),
    ({"fps": 0}, "fps must be a positive int"),
    ({"image_size": (64,)}, "image_size"),
    ({"cameras": ["a", "a"]}, "cameras must be distinct"),
    ({"extra_features": {"action": {"dtype": "float32", "shape": [1]}}}, "reserved or invalid"),
    ({"extra_features": {"x": {"dtype": "complex64", "shape": [1]}}}, "need dtype"),
])  # fmt: skip
def test_writer_rejects_bad_arguments(tmp_path, kw, match):
    args = dict(fps=10, robot_type="x", state_names=["a"], action_names=["b"], cameras=["c"], image_size=(8, 8))
    with pytest.raises(DatasetError, match=match):
        LeRobotDatasetWriter(tmp_path / "ds", **{**args, **kw})
    assert list(tmp_path.iterdir()) == []


def test_codec_table():
    assert set(VIDEO_CODECS) == {"h264", "h264-rgb", "av1"}
    assert VIDEO_CODECS["h264"].encoder == "libx264" and VIDEO_CODECS["h264"].pix_fmt == "yuv444p"
    assert VIDEO_CODECS["av1"].options == {"crf": "30", "g": "2"}


# ----------------------------------------------------------------------------- datasets written by lerobot itself
REAL = Path(__file__).parent / "fixtures" / "real_lerobot"  # made by fixtures/make_real_lerobot_fixtures.py


@pytest.fixture(scope="module")
def real_expected():
    with np.load(REAL / "expected.npz") as z:
        arrays = dict(z)
    return arrays, json.loads((REAL / "expected.json").read_text())


def test_reads_real_lerobot_image_dataset(real_expected):
    """lerobot 0.4.4, use_videos=False: the camera is a column of PNG structs; decoded bit-exact."""
    arrays, meta = real_expected
    ds = LeRobotDataset(REAL / "images")
    assert meta["lerobot_version"] == "0.4.4" and ds.info["features"]["observation.images.top"]["dtype"] == "image"
    assert ds.cameras == ["top"] and ds.image_size == (16, 16) and (ds.state_dim, ds.action_dim) == (3, 2)
    assert ds.episode_lengths == meta["datasets"]["images"]["lengths"] and ds.fps == 10
    all_frames = ds.all_frames("top")
    for i, task in enumerate(meta["datasets"]["images"]["tasks"]):
        ep = ds.episode(i)
        assert ep.task == task and ep.extra == {}  # the image column is not an extra
        assert ep.state.flags.writeable and ep.action.flags.writeable  # copies, not arrow's read-only views
        assert np.array_equal(ep.state, arrays[f"images/{i}/observation.state"])
        assert np.array_equal(ep.action, arrays[f"images/{i}/action"])
        frames = ds.frames(i, "observation.images.top")
        assert frames.dtype == np.uint8 and np.array_equal(frames, arrays[f"images/{i}/frames"])
        assert np.array_equal(all_frames[i], frames)


def test_reads_real_lerobot_video_dataset_without_state(real_expected):
    """lerobot 0.4.4, default AV1 video, observation.environment_state but no observation.state."""
    arrays, meta = real_expected
    ds = LeRobotDataset(REAL / "video_no_state")
    assert ds.cameras == ["front"] and ds.image_size == (32, 32)
    assert ds.state_dim == 0 and ds.action_dim == 2
    all_frames = ds.all_frames("front")
    for i, T in enumerate(meta["datasets"]["video_no_state"]["lengths"]):
        ep = ds.episode(i)
        assert ep.state.shape == (T, 0) and ep.state.dtype == np.float32
        assert np.array_equal(ep.action, arrays[f"video_no_state/{i}/action"])
        assert np.array_equal(ep.extra["observation.environment_state"],
                              arrays[f"video_no_state/{i}/observation.environment_state"])
        err = np.abs(ds.frames(i, "front").astype(int) - arrays[f"video_no_state/{i}/frames"])
        assert err.mean() < 3 and err.max() <= 16  # lossy AV1 (measured: mean 1.6, max 10)
        assert np.array_equal(all_frames[i], ds.frames(i, "front"))


def test_dataset_without_action_or_state_loads(tmp_path):
    """LeRobot requires only its index columns: drop action too and nothing raises a KeyError."""
    root = _copy(REAL / "video_no_state", tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    del info["features"]["action"]
    (root / "meta/info.json").write_text(json.dumps(info))
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["action"]), path)
    ds = LeRobotDataset(root)
    assert (ds.state_dim, ds.action_dim) == (0, 0)
    ep = ds.episode(1)
    assert ep.state.shape == ep.action.shape == (4, 0)
    assert ds.frames(1, "front").shape == (4, 32, 32, 3)


def test_declared_feature_missing_from_data_file(tmp_path):
    root = _copy(REAL / "images", tmp_path / "ds")
    path = root / "data/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["observation.images.top", "action"]), path)
    with pytest.raises(DatasetError, match=r"lacks columns \['action', 'observation.images.top'\]"):
        LeRobotDataset(root)


def test_corrupt_image_cell(tmp_path):
    root = _copy(REAL / "images", tmp_path / "ds")
    path = root / "data/chunk-000/file-000.parquet"
    table = pq.read_table(path)
    col = table["observation.images.top"].combine_chunks()
    blobs = col.field("bytes").to_pylist()
    blobs[7] = b"\x89PNG not really"
    cells = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), col.field("path")], names=["bytes", "path"])
    pq.write_table(table.set_column(table.column_names.index("observation.images.top"), "observation.images.top",
                                    cells), path)  # fmt: skip
    ds = LeRobotDataset(root)
    assert ds.frames(0, "top").shape == (6, 16, 16, 3)
    with pytest.raises(DatasetError, match=r"image observation.images.top of episode 1, frame 1 .* cannot be decoded"):
        ds.frames(1, "top")


def test_real_lerobot_datasets_train_downstream(tmp_path):
    """Image cameras feed the tokenizer and policy unchanged; a stateless dataset stops the policy in one line."""
    from typer.testing import CliRunner

    from robodream.cli import app

    def run(*args, code=0):
        res = CliRunner().invoke(app, [str(a) for a in args])
        assert res.exit_code == code, f"{args}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
        return res.output

    try:  # the CLI smoke tests' tiny policy settings
        from test_cli import TINY_POLICY
    except ImportError:  # pragma: no cover - when tests/ is a package
        from tests.test_cli import TINY_POLICY
    tiny = [*TINY_POLICY, "--steps", "2"]
    run("train", "tokenizer", "--data", REAL / "images", "--out", tmp_path / "tok16", "--steps", 2, "--batch-size", 4)
    run("train", "policy", "--data", REAL / "images", "--tokenizer", tmp_path / "tok16", "--out", tmp_path / "pol",
        *tiny)
    cfg = json.loads((tmp_path / "pol/config.json").read_text())
    assert cfg["model"]["cameras"] == ["top"] and (cfg["model"]["state_dim"], cfg["model"]["action_dim"]) == (3, 2)
    stateless = REAL / "video_no_state"
    run("train", "tokenizer", "--data", stateless, "--out", tmp_path / "tok32", "--steps", 2, "--batch-size", 4)
    out = run("train", "policy", "--data", stateless, "--tokenizer", tmp_path / "tok32", "--out", tmp_path / "p2",
              *tiny, code=2)  # fmt: skip
    err = out.strip()
    assert err.startswith(f"error: {stateless} has no observation.state") and "proprioception" in err, err
    assert len(err.splitlines()) == 1, err


# ----------------------------------------------------------------------------- error messages
@pytest.mark.parametrize("fps", [30, 5, 11])
def test_wrong_fps_in_info_json_is_named(tmp_path, small_dataset, fps):
    """The videos are intact (10 fps); the error blames info.json's fps, not the video."""
    root = _copy(small_dataset, tmp_path / "ds")
    info = json.loads((root / "meta/info.json").read_text())
    info["fps"] = fps
    (root / "meta/info.json").write_text(json.dumps(info))
    ds = LeRobotDataset(root)
    msg = (rf"meta/info.json says fps={fps} but the video of episode {{i}} "
           r"\(videos/observation.images.corner/.*\) has frames at 10 fps")
    with pytest.raises(DatasetError, match=msg.format(i=1)):
        ds.frames(1, "corner")
    with pytest.raises(DatasetError, match=msg.format(i=0)):
        ds.all_frames("corner")


def test_writer_removes_temporaries_of_killed_runs_only(tmp_path, episodes):
    """Leftovers of dead writers go; a live writer's directory and fresh unattributable ones stay."""
    import os
    import socket
    import subprocess
    import sys
    import time

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is now free: stands for a killed collect
    host = socket.gethostname()
    names = {
        "dead": f".ds.pid{child.pid}@{host}.abcd1234.tmp",
        "live": f".ds.pid{os.getpid()}@{host}.efgh5678.tmp",  # e.g. another writer of this process
        "other_host_fresh": f".ds.pid{child.pid}@elsewhere.example.ijkl9012.tmp",
        "legacy_old": ".ds.mnop3456.tmp",
        "legacy_fresh": ".ds.qrst7890.tmp",
        "other_target": f".ds2.pid{child.pid}@{host}.uvwx1234.tmp",
        "old_copy": f".ds.old-{child.pid}",  # may hold the only copy of a dataset: never touched
    }
    for name in names.values():
        (tmp_path / name / "data").mkdir(parents=True)
        (tmp_path / name / "data/x.parquet").write_bytes(b"x")
    week_ago = time.time() - 7 * 24 * 3600
    for p in [tmp_path / names["legacy_old"], *(tmp_path / names["legacy_old"]).rglob("*")]:
        os.utime(p, (week_ago, week_ago))
    write(tmp_path / "ds", episodes[2:], video_codec="h264-rgb")
    left = {p.name for p in tmp_path.iterdir()}
    assert left == {"ds"} | {names[k] for k in ("live", "other_host_fresh", "legacy_fresh", "other_target", "old_copy")}


def test_existing_directory_error_names_the_cli_flag_too(tmp_path, episodes):
    root = write(tmp_path / "ds", episodes[2:], video_codec="h264-rgb")
    with pytest.raises(DatasetError, match=r"already exists; pass --overwrite \(overwrite=True\) to replace it"):
        write(root, episodes[2:])


def test_array_features_round_trip_exactly(tmp_path, episodes):
    """(H, W) and (H, W, C) extra features (depth, segmentation) come back bit-exact through
    LeRobotDataset.array, outside Episode.extra; a wrong shape is refused and nothing is written."""
    import pyarrow.parquet as pq

    rng = np.random.default_rng(1)
    spec = {**EXTRA, "observation.depth.top": {"dtype": "uint16", "shape": [3, 5]},
            "observation.rgbd": {"dtype": "float32", "shape": [2, 3, 4]}}
    eps = [dict(e, extra={**e["extra"], "observation.depth.top": rng.integers(0, 65536, (len(e["state"]), 3, 5),
                                                                              dtype=np.uint16),
                          "observation.rgbd": rng.normal(size=(len(e["state"]), 2, 3, 4)).astype(np.float32)})
           for e in episodes[:2]]
    ds = LeRobotDataset(write(tmp_path / "ds", eps, extra_features=spec))
    assert ds.array_keys == ["observation.depth.top", "observation.rgbd"]
    assert ds.all_depth("top")[1].dtype == np.uint16
    for i, e in enumerate(eps):
        np.testing.assert_array_equal(ds.all_depth("top")[i], e["extra"]["observation.depth.top"])
        np.testing.assert_array_equal(ds.array(i, "observation.rgbd"), e["extra"]["observation.rgbd"])
        assert set(ds.episode(i).extra) == set(EXTRA)
    assert str(pq.read_schema(tmp_path / "ds/data/chunk-000/file-000.parquet").field("observation.depth.top").type) \
        == "list<element: list<element: uint16>>"
    bad = dict(eps[0], extra={**eps[0]["extra"], "observation.depth.top": np.zeros((len(eps[0]["state"]), 5, 3),
                                                                                   np.uint16)})
    with pytest.raises(DatasetError, match="observation.depth.top.*shape"):
        write(tmp_path / "bad", [bad], extra_features=spec)
    assert not (tmp_path / "bad").exists()
