"""``robodream view``: what lands in the .rrd, read back with rerun's own RRD reader.

The claims: every camera of the chosen episodes is an image stream whose pixels are the
dataset's decoded frames; every action / state dimension is its own scalar series, named
from info.json, with one row per frame and the dataset's values; reward, success and the
task are there; a run's metrics.jsonl becomes curves over ``step``; a reconstruction's
Gaussians become a point cloud of N points with their centres and colours, and its cameras
pinholes at the right place. Bad inputs give one ``error:`` line and exit status 2.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from typer.testing import CliRunner

rr = pytest.importorskip("rerun", reason="rerun-sdk is not installed (pip install 'robodream[viz]')")

from rerun.chunk import RrdReader  # noqa: E402

from robodream.cli import app  # noqa: E402
from robodream.data.lerobot import LeRobotDataset, LeRobotDatasetWriter  # noqa: E402
from robodream.errors import ConfigError  # noqa: E402
from robodream.gaussians.ply import save_ply  # noqa: E402
from robodream.gaussians.scene import GaussianParams  # noqa: E402
from robodream.gaussians.sh import sh_to_rgb  # noqa: E402
from robodream.viz.rerun_view import RUN_KINDS, parse_episodes, view  # noqa: E402

runner = CliRunner()
CAMERAS = ["corner", "gripperPOV"]
STATE_NAMES = ["hand_x", "hand_y", "hand_z", "gripper.opening"]
ACTION_NAMES = ["delta_x", "delta_y", "delta_z", "grip"]
LENGTHS = (7, 5)
H = W = 16


def run(*args, code: int = 0):
    res = runner.invoke(app, ["view", *[str(a) for a in args]])
    assert res.exit_code == code, f"{args}: exit {res.exit_code}\n{res.output}\n{res.exception!r}"
    return res


def one_line_error(res, *needles: str) -> None:
    err = res.output.strip()
    assert err.startswith("error:") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def read_rrd(path: Path) -> dict[str, dict[str, list]]:
    """entity -> column name -> values of the non-null rows (static rows included, as the viewer sees them)."""
    out: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    recordings = RrdReader(path).recordings()
    assert len(recordings) == 1 and recordings[0].application_id == "robodream"
    for chunk in RrdReader(path).stream():
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            col = batch.column(name)
            if pa.types.is_duration(col.type):
                col = col.cast(pa.int64())  # nanoseconds
            if name != "rerun.controls.RowId":
                out[chunk.entity_path][name].extend(v for v in col.to_pylist() if v is not None)
    return out


def verify(path: Path) -> None:
    """rerun's own check that the file loads and every chunk is interpretable."""
    exe = shutil.which("rerun", path=str(Path(sys.executable).parent)) or shutil.which("rerun")
    if exe is not None:
        res = subprocess.run([exe, "rrd", "verify", str(path)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr


def scalar_series(rec: dict, entity: str, timeline: str) -> tuple[np.ndarray, np.ndarray]:
    """(times, values) of a Scalars entity, sorted by ``timeline``."""
    t = np.asarray(rec[entity][timeline])
    v = np.asarray([x[0] for x in rec[entity]["Scalars:scalars"]])
    order = np.argsort(t, kind="stable")
    return t[order], v[order]


# ----------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("view") / "tiny"
    rng = np.random.default_rng(0)
    extra = {"next.reward": {"dtype": "float32", "shape": [1]}, "next.success": {"dtype": "bool", "shape": [1]}}
    with LeRobotDatasetWriter(root, fps=10, robot_type="sawyer", state_names=STATE_NAMES, action_names=ACTION_NAMES,
                              cameras=CAMERAS, image_size=(H, W), extra_features=extra) as w:
        for k, T in enumerate(LENGTHS):
            w.add_episode(task=["reach the button", "push the puck"][k],
                          state=rng.normal(size=(T, 4)).astype(np.float32),
                          action=rng.uniform(-1, 1, (T, 4)).astype(np.float32),
                          images={c: rng.integers(0, 256, (T, H, W, 3), dtype=np.uint8) for c in CAMERAS},
                          extra={"next.reward": rng.normal(size=T).astype(np.float32),
                                 "next.success": np.arange(T) >= T - 2})
    return root


def test_dataset_episode_content(dataset, tmp_path):
    out = tmp_path / "ep1.rrd"
    res = run(dataset, "--episode", 1, "--out", out)
    assert out.is_file() and out.stat().st_size > 2 * LENGTHS[1] * H * W  # the images are in it
    assert f"rerun {out}" in res.output.replace("\n", "")
    verify(out)
    rec = read_rrd(out)
    ds, i, T = LeRobotDataset(dataset), 1, LENGTHS[1]
    ep = ds.episode(i)
    assert not any(e.startswith("/episode_0") for e in rec), "only the chosen episode is logged"
    p = "/episode_1"
    assert rec[f"{p}/task"]["TextDocument:text"] == [["push the puck"]]
    for cam in CAMERAS:
        img = rec[f"{p}/images/{cam}"]
        assert img["Image:format"][0][0]["width"] == W and img["Image:format"][0][0]["height"] == H
        assert img["frame_index"] == list(range(T))
        frames = np.asarray([b[0] for b in img["Image:buffer"]], np.uint8).reshape(T, H, W, 3)
        np.testing.assert_array_equal(frames, ds.frames(i, cam))
    for group, names, values in (("action", ACTION_NAMES, ep.action), ("state", STATE_NAMES, ep.state)):
        assert {e for e in rec if e.startswith(f"{p}/{group}/")} == {f"{p}/{group}/{n}" for n in names}
        for j, n in enumerate(names):
            t, v = scalar_series(rec, f"{p}/{group}/{n}", "frame_index")
            np.testing.assert_array_equal(t, np.arange(T))
            np.testing.assert_array_equal(v, values[:, j].astype(np.float64))
    _, reward = scalar_series(rec, f"{p}/next.reward", "frame_index")
    np.testing.assert_array_equal(reward, ep.extra["next.reward"].astype(np.float64))
    _, success = scalar_series(rec, f"{p}/next.success", "frame_index")
    np.testing.assert_array_equal(success, [0, 0, 0, 1, 1])
    # seconds from fps, and the position in the whole dataset (episode 0 has LENGTHS[0] frames)
    assert sorted(rec[f"{p}/action/grip"]["time"]) == [k * 100_000_000 for k in range(T)]  # ns at 10 fps
    assert sorted(rec[f"{p}/action/grip"]["index"]) == list(range(LENGTHS[0], LENGTHS[0] + T))


def test_dataset_default_episode_and_output(dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run(dataset)  # episode 0, ./tiny.rrd
    rec = read_rrd(tmp_path / "tiny.rrd")
    assert {e.split("/")[1] for e in rec if e.startswith("/episode")} == {"episode_0"}
    assert len(rec["/episode_0/images/corner"]["frame_index"]) == LENGTHS[0]
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.rrd"]  # no temporary left behind
    run(dataset, "--all", "--out", tmp_path / "all.rrd")
    rec = read_rrd(tmp_path / "all.rrd")
    assert {e.split("/")[1] for e in rec if e.startswith("/episode")} == {"episode_0", "episode_1"}


def test_parse_episodes():
    assert parse_episodes(None) is None
    assert parse_episodes(["3", "0..2", "1"]) == [3, 0, 1, 2]
    assert parse_episodes(["1", "all"]) == "all"
    for bad in (["x"], ["1..y"], ["3..1"]):
        with pytest.raises(ConfigError):
            parse_episodes(bad)


# ----------------------------------------------------------------------------- runs
def test_training_run_metrics(tmp_path):
    run_dir = tmp_path / "pol"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model_type": "gigaworld_policy", "model": {"dim": 32}}))
    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "val/loss": 2.0 / s} for s in (10, 20, 30)]
    rows[1].pop("val/loss")
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 40, "lo')
    (run_dir / "results.json").write_text(json.dumps({"action_mse": 0.125, "steps": 30}))
    assert "policy run" in run(run_dir, "--out", tmp_path / "pol.rrd").output
    assert view(run_dir, out=tmp_path / "again.rrd").logged == {
        "metric series": 3, "metric rows": 3, "images": 0, "unreadable metric lines": 1}  # the partial last line
    rec = read_rrd(tmp_path / "pol.rrd")
    step, loss = scalar_series(rec, "/metrics/loss", "step")
    np.testing.assert_array_equal(step, [10, 20, 30])
    np.testing.assert_allclose(loss, [0.1, 0.05, 1 / 30])
    step, _ = scalar_series(rec, "/metrics/val/loss", "step")  # "val/loss" nests under metrics/val
    np.testing.assert_array_equal(step, [10, 30])
    assert "0.125" in rec["/results"]["TextDocument:text"][0][0]
    assert '"dim": 32' in rec["/config"]["TextDocument:text"][0][0]


def _world_to_cam(center: np.ndarray) -> np.ndarray:
    """A camera at ``center`` looking down -z (OpenCV axes: x right, y down, z forward)."""
    R = np.diag([1.0, -1.0, -1.0])
    T = np.eye(4)
    T[:3, :3], T[:3, 3] = R, -R @ center
    return T


def test_reconstruction_run(tmp_path):
    from PIL import Image

    run_dir = tmp_path / "rec"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"model_type": "gaussian_scene", "reconstruct": {}}))
    g = torch.Generator().manual_seed(0)
    n = 37
    gs = GaussianParams(means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
                        log_scales=torch.randn(n, 3, generator=g) - 4, opacity_logits=torch.randn(n, generator=g),
                        sh=torch.randn(n, 4, 3, generator=g))
    save_ply(run_dir / "gaussians.ply", gs)
    K = [[20.0, 0, 8], [0, 20.0, 8], [0, 0, 1]]
    centers = [np.array([0.0, 0.0, 1.0]), np.array([0.5, 0.0, 1.0]), np.array([0.0, 0.5, 2.0])]
    views = [{"azimuth_deg": 0, "elevation_deg": -90, "K": K, "world_to_cam": _world_to_cam(c).tolist()}
             for c in centers]
    (run_dir / "cameras.json").write_text(json.dumps({"width": 16, "height": 16, "train": views[:2],
                                                      "heldout": views[2:]}))
    grid = np.zeros((32, 16, 3), np.uint8)
    grid[16:] = 200  # the render row
    Image.fromarray(grid).save(run_dir / "heldout.png")
    (run_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "psnr": 20.0, "n_gaussians": n}) + "\n")
    run(run_dir, "--out", tmp_path / "rec.rrd")
    verify(tmp_path / "rec.rrd")
    rec = read_rrd(tmp_path / "rec.rrd")
    pts = rec["/world/gaussians"]
    positions = np.asarray(pts["Points3D:positions"][0], np.float32)
    assert positions.shape == (n, 3)
    np.testing.assert_array_equal(positions, gs.means.numpy())
    rgba = np.asarray(pts["Points3D:colors"][0], np.uint32)
    red = (rgba >> 24) & 255
    expected = (sh_to_rgb(gs.sh[:, 0]).clamp(0, 1)[:, 0] * 255).numpy()
    assert np.abs(red - expected).max() <= 1
    np.testing.assert_allclose(pts["Points3D:radii"][0], gs.log_scales.mean(1).exp().numpy(), rtol=1e-6)
    for name, c in zip(["train_00", "train_01", "heldout_00"], centers):
        cam = rec[f"/world/cameras/{name}"]
        np.testing.assert_allclose(cam["Transform3D:translation"][0][0], c, atol=1e-6)  # camera centre, metres
        assert cam["Pinhole:resolution"][0][0] == [16.0, 16.0]
    render = np.asarray(rec["/world/cameras/heldout_00/render"]["Image:buffer"][0][0])
    assert render.size == 16 * 16 * 3 and (render == 200).all()
    assert "/images/heldout" in rec and "/metrics/psnr" in rec

    # a bare .ply is the same point cloud
    run(run_dir / "gaussians.ply", "--out", tmp_path / "ply.rrd")
    assert len(read_rrd(tmp_path / "ply.rrd")["/world/gaussians"]["Points3D:positions"][0]) == n


def test_run_kinds_match_the_models():
    from robodream.gaussians.reconstruct import MODEL_TYPE
    from robodream.idm.modeling import InverseDynamicsModel
    from robodream.policy.modeling import GigaWorldPolicy
    from robodream.tokenizer.model import ImageTokenizer
    from robodream.train.run_dir import RUN_TYPES
    from robodream.transfer.modeling import TransferModel
    from robodream.world_model.modeling import VideoWorldModel

    models = {ImageTokenizer.model_type, GigaWorldPolicy.model_type, VideoWorldModel.model_type, MODEL_TYPE,
              InverseDynamicsModel.model_type, TransferModel.model_type}
    assert set(RUN_KINDS) == models and models <= set(RUN_TYPES)


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(dataset, tmp_path):
    one_line_error(run(tmp_path / "missing", code=2), "does not exist")
    (tmp_path / "plain").mkdir()
    one_line_error(run(tmp_path / "plain", code=2), "neither a LeRobot dataset")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "diffusion_policy"}))
    one_line_error(run(tmp_path / "odd", code=2), "diffusion_policy", "gigaworld_policy")
    (tmp_path / "odd" / "config.json").write_text("{not json")
    one_line_error(run(tmp_path / "odd", code=2), "cannot read")
    one_line_error(run(dataset, "--episode", 2, "--out", tmp_path / "x.rrd", code=2), "out of range", "2 episodes")
    one_line_error(run(dataset, "--episode", "two", code=2), "--episode")
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "image_tokenizer"}))
    one_line_error(run(tmp_path / "odd", "--episode", 0, code=2), "dataset episodes")
    one_line_error(run(dataset, "--out", tmp_path, code=2), "is a directory")
    (tmp_path / "bad.ply").write_text("not a ply")
    one_line_error(run(tmp_path / "bad.ply", "--out", tmp_path / "y.rrd", code=2), "bad.ply")
    assert not list(tmp_path.glob("*.rrd")) and not list(tmp_path.glob(".*tmp"))


def test_spawn_failures_are_one_line(dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    if sys.platform.startswith("linux"):
        one_line_error(run(dataset, "--spawn", code=2), "--spawn needs a display")

    def no_viewer(**kw):
        raise RuntimeError("Failed to find Rerun Viewer executable in PATH.\n\n    You can install ...")

    monkeypatch.setenv("DISPLAY", ":99")
    monkeypatch.setattr(rr, "spawn", no_viewer)
    one_line_error(run(dataset, "--spawn", "--out", tmp_path / "s.rrd", code=2), "cannot start the Rerun viewer")
    monkeypatch.setattr(rr, "spawn", lambda **kw: None)  # a viewer that died at start: rr.spawn only warns
    monkeypatch.setattr("robodream.viz.rerun_view.VIEWER_PORT", 1)  # nothing listens on port 1
    one_line_error(run(dataset, "--spawn", "--out", tmp_path / "s.rrd", code=2), "nothing listens on port 1")
    assert not list(tmp_path.iterdir())


def test_cli_starts_without_rerun():
    code = "import sys, robodream.cli; assert 'rerun' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
