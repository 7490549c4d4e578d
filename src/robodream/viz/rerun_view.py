"""Log a dataset, a training run or a Gaussian reconstruction to Rerun (an ``.rrd`` file or a viewer).

What each input becomes (entity paths; ``<p>`` is ``episode_<i>``)::

    LeRobotDataset v3.0   <p>/task                 TextDocument (static)
                          <p>/images/<cam>         Image, (H, W, 3) uint8 RGB per frame
                          <p>/action/<name>        Scalars, one entity per action dimension
                          <p>/state/<name>         Scalars, one entity per observation.state dimension
                          <p>/<column>[/<name>]    Scalars, every other numeric column
                                                   (next.reward, next.success as 0/1, ...)
        timelines: frame_index (sequence, from 0 in each episode), time (duration, seconds =
        frame_index / fps) and index (sequence, the frame's position in the whole dataset).

    training run          metrics/<key>            Scalars over the ``step`` timeline (metrics.jsonl;
    (tokenizer, policy,                            "val/loss" becomes metrics/val/loss)
    world model)          results, config          TextDocument (markdown) of results.json, config.json
                          images/<stem>            EncodedImage of every PNG in the run directory

    reconstruction        (all of the above, plus, static, in world coordinates: metres, z up)
    (gaussian_scene)      world/gaussians          Points3D: means, RGB from the SH DC term, alpha =
                                                   opacity, radius = geometric mean of the 3 scales
                          world/cameras/<split>_<k> Transform3D (camera to world) + Pinhole (K), with
                                                   the held-out view and its render under heldout_<k>

    a standard 3DGS .ply  world/gaussians          as above

The output file is written atomically (a temporary sibling, renamed once everything is logged).
``rerun-sdk`` is imported inside the functions so that ``robodream --help`` does not load it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from robodream.errors import CheckpointError, ConfigError, DatasetError

#: What ``view`` calls the runs it knows; every run type of the registry
#: (:data:`robodream.train.run_dir.RUN_TYPES`) is viewable, these names are only labels.
RUN_KINDS = {
    "image_tokenizer": "tokenizer run",
    "gigaworld_policy": "policy run",
    "video_world_model": "world-model run",
    "gaussian_scene": "reconstruction",
    "inverse_dynamics": "inverse-dynamics model run",
    "control_transfer": "transfer model run",
}
VIEWER_PORT = 9876  # the Rerun viewer's default gRPC port


@dataclass
class ViewSummary:
    """What :func:`view` logged.

    Attributes:
        kind: "dataset", one of :data:`RUN_KINDS`' values, or "gaussians" (a bare .ply).
        source: the input path.
        out: the ``.rrd`` written, or None (viewer only).
        spawned: whether a viewer was started and sent the data.
        logged: counts of what was logged, e.g. ``{"episodes": 1, "frames": 93, "cameras": 2}``.
    """

    kind: str
    source: Path
    out: Path | None
    spawned: bool
    logged: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- entry points
def view(path: str | os.PathLike, episodes: list[int] | str | None = None, out: str | os.PathLike | None = None,
         spawn: bool = False) -> ViewSummary:
    """Log whatever ``path`` is (dataset directory, run directory or ``.ply``) to Rerun.

    Args:
        path: a LeRobotDataset v3.0 directory (``meta/info.json``), a run directory with a
            ``config.json`` whose ``model_type`` is in :data:`RUN_KINDS`, or a 3DGS ``.ply`` file.
        episodes: dataset episodes to log (indices, or "all"); None = episode 0. Datasets only.
        out: the ``.rrd`` file to write; None = none (then ``spawn`` must be true).
        spawn: start the native Rerun viewer and stream the data to it.

    Raises:
        ConfigError: ``path`` is none of these, ``episodes`` given for a run, neither ``out`` nor
            ``spawn``, rerun-sdk missing, or the viewer cannot be started.
        DatasetError: a broken dataset or an episode index out of range.
        CheckpointError: a run of a model type robodream does not know, or a broken run / .ply.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind == "dataset":
        return view_dataset(path, episodes, out, spawn)
    if episodes is not None:
        raise ConfigError(f"--episode and --all select dataset episodes, but {path} is a {kind}")
    return view_run(path, out, spawn)


def input_kind(path: Path) -> str:
    """What ``path`` is: "dataset", a value of :data:`RUN_KINDS`, or "gaussians" (a ``.ply``).

    Raises:
        ConfigError, CheckpointError: as :func:`view`.
    """
    if not path.exists():
        raise ConfigError(f"nothing to view: {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".ply":
        return "gaussians"
    if path.is_dir() and (path / "meta" / "info.json").is_file():
        return "dataset"
    if path.is_dir() and (path / "config.json").is_file():
        from robodream.train.run_dir import RUN_TYPES

        model_type = _read_json(path / "config.json", CheckpointError).get("model_type")
        if model_type not in RUN_TYPES:
            raise CheckpointError(f"{path} holds a run of model_type {model_type!r}, which robodream view does "
                                  f"not know (known: {', '.join(RUN_TYPES)})")
        return RUN_KINDS.get(model_type, f"{model_type} run")
    raise ConfigError(f"{path} is neither a LeRobot dataset (no meta/info.json) nor a robodream run "
                      "(no config.json) nor a .ply file")


def parse_episodes(specs: list[str] | None) -> list[int] | str | None:
    """``--episode`` values -> episode indices: "3", "2..5" (inclusive), "all"; None if none given.

    Raises:
        ConfigError: a value that is none of these.
    """
    if not specs:
        return None
    out: list[int] = []
    for s in specs:
        s = s.strip()
        if s == "all":
            return "all"
        try:
            a, _, b = s.partition("..")
            lo, hi = int(a), int(b) if b else int(a)
        except ValueError:
            raise ConfigError(f"--episode must be an index, a range A..B or 'all', got {s!r}") from None
        if hi < lo:
            raise ConfigError(f"--episode range {s!r} is empty")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def view_dataset(path: str | os.PathLike, episodes: list[int] | str | None = None,
                 out: str | os.PathLike | None = None, spawn: bool = False) -> ViewSummary:
    """Log episodes of a LeRobotDataset v3.0: camera images, action/state/reward/success scalars, task.

    Args:
        episodes: indices, "all", or None (episode 0).

    Raises:
        DatasetError: a broken dataset, or an index out of range (one line, naming the count).
        ConfigError: see :func:`view`.
    """
    from robodream.data.lerobot import LeRobotDataset

    path = Path(path)
    ds = LeRobotDataset(path)
    eps = list(range(ds.num_episodes)) if episodes == "all" else [0] if episodes is None else list(episodes)
    for i in eps:
        if not 0 <= i < ds.num_episodes:
            raise DatasetError(f"episode {i} out of range: {path} has {ds.num_episodes} episodes "
                               f"(0..{ds.num_episodes - 1})")
    action_names = _dim_names(ds.features.get("action", {}), ds.action_dim)  # [] if the dataset has none
    state_names = _dim_names(ds.features.get("observation.state", {}), ds.state_dim)
    offsets = np.concatenate([[0], np.cumsum(ds.episode_lengths)])  # first dataset index of each episode
    logged = {"episodes": len(eps), "frames": 0, "cameras": len(ds.cameras), "fps": ds.fps}
    with _recording(path.resolve().name, out, spawn) as (rr, rec):
        for i in eps:
            ep = ds.episode(i)
            p = f"episode_{i}"
            T = ep.length
            times = [rr.TimeColumn("frame_index", sequence=ep.frame_index),
                     rr.TimeColumn("time", duration=ep.frame_index / ds.fps),  # seconds
                     rr.TimeColumn("index", sequence=offsets[i] + ep.frame_index)]
            rec.log(f"{p}/task", rr.TextDocument(ep.task), static=True)
            for cam in ds.cameras:
                frames = ds.frames(i, cam)  # (T, H, W, C) uint8, C = 3 (RGB) for every robodream dataset
                _, H, W, C = frames.shape
                entity = f"{p}/images/{_part(cam)}"
                fmt = rr.components.ImageFormat(width=W, height=H, color_model={1: "L", 4: "RGBA"}.get(C, "RGB"),
                                                channel_datatype="U8")
                rec.log(entity, rr.Image.from_fields(format=fmt), static=True)
                rec.send_columns(entity, times, rr.Image.columns(buffer=frames.reshape(T, -1)))
            _send_dims(rr, rec, f"{p}/action", ep.action, action_names, times)
            _send_dims(rr, rec, f"{p}/state", ep.state, state_names, times)
            for name, col in ep.extra.items():
                col = np.asarray(col)
                if col.dtype.kind not in "biuf":  # strings and objects are not time series
                    continue
                col = col.reshape(T, -1)
                names = _dim_names(ds.features.get(name, {}), col.shape[1]) if col.shape[1] > 1 else None
                _send_dims(rr, rec, f"{p}/{_part(name)}", col, names, times)
            logged["frames"] += T
    return ViewSummary("dataset", path, _final(out), spawn, logged)


def view_run(path: str | os.PathLike, out: str | os.PathLike | None = None, spawn: bool = False) -> ViewSummary:
    """Log a run directory (metrics curves, results, config, PNGs; Gaussians and cameras for a
    reconstruction) or a bare 3DGS ``.ply``.

    Raises:
        CheckpointError: unknown model type, unreadable config/results, a broken ``.ply``.
        ConfigError: see :func:`view`.
    """
    path = Path(path)
    kind = input_kind(path)
    if kind == "dataset":
        raise ConfigError(f"{path} is a dataset, not a run; use view_dataset")
    logged: dict[str, Any] = {}
    with _recording(path.stem if kind == "gaussians" else path.resolve().name, out, spawn) as (rr, rec):
        if kind == "gaussians":
            logged["gaussians"] = _log_gaussians(rr, rec, path)
        else:
            logged.update(_log_training(rr, rec, path))
            if (path / "gaussians.ply").is_file():
                logged["gaussians"] = _log_gaussians(rr, rec, path / "gaussians.ply")
            if (path / "cameras.json").is_file():
                logged["cameras"] = _log_cameras(rr, rec, path)
    return ViewSummary(kind, path, _final(out), spawn, logged)


# ----------------------------------------------------------------------------- runs
def _log_training(rr, rec, run: Path) -> dict[str, int]:
    """metrics.jsonl as scalars over ``step``; results.json and config.json as text; PNGs as images."""
    series, n_lines, skipped = _read_metrics(run / "metrics.jsonl")
    for key, (steps, values) in series.items():
        entity = "metrics/" + "/".join(_part(k) for k in key.split("/"))
        rec.send_columns(entity, [rr.TimeColumn("step", sequence=steps)], rr.Scalars.columns(scalars=values))
    for name in ("results", "config"):
        if (run / f"{name}.json").is_file():
            text = json.dumps(_read_json(run / f"{name}.json", CheckpointError), indent=2)
            rec.log(name, rr.TextDocument(f"```json\n{text}\n```", media_type=rr.MediaType.MARKDOWN), static=True)
    pngs = sorted(run.glob("*.png"))
    for png in pngs:
        rec.log(f"images/{_part(png.stem)}", rr.EncodedImage(path=png), static=True)
    out = {"metric series": len(series), "metric rows": n_lines, "images": len(pngs)}
    if skipped:
        out["unreadable metric lines"] = skipped
    return out


def _read_metrics(path: Path) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], int, int]:
    """metrics.jsonl -> ``{key: (steps (n,) int64, values (n,) float64)}``, lines read, lines skipped.

    Numeric values only (nested objects flattened with "/"); a line without "step" counts by its
    position. Unparsable lines (a run still being written ends with a partial one) are skipped.
    """
    if not path.is_file():
        return {}, 0, 0
    acc: dict[str, tuple[list[int], list[float]]] = {}
    n, skipped = 0, 0
    for k, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines()):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            skipped += 1
            continue
        if not isinstance(row, dict):
            skipped += 1
            continue
        n += 1
        step = row.get("step", k)
        step = int(step) if isinstance(step, (int, float)) and math.isfinite(step) else k
        for key, v in _flatten(row):
            if key != "step":
                acc.setdefault(key, ([], []))
                acc[key][0].append(step)
                acc[key][1].append(float(v))
    return {k: (np.asarray(s, np.int64), np.asarray(v, np.float64)) for k, (s, v) in acc.items()}, n, skipped


def _flatten(row: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    for k, v in row.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}/")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield f"{prefix}{k}", v


def _log_gaussians(rr, rec, ply: Path) -> int:
    """The splats as a point cloud in world coordinates (metres, z up); returns the count N."""
    import torch

    from robodream.gaussians.ply import load_ply
    from robodream.gaussians.sh import sh_to_rgb

    g = load_ply(ply)
    rgb = sh_to_rgb(g.sh[:, 0]).clamp(0, 1)  # (N, 3) view-independent colour
    alpha = torch.sigmoid(g.opacity_logits)[:, None]  # (N, 1)
    radii = g.log_scales.mean(1).exp()  # (N,) metres: geometric mean of the three standard deviations
    rec.log("world", rr.ViewCoordinates.RIGHT_HAND_Z_UP, static=True)
    rec.log("world/gaussians", rr.Points3D(g.means.numpy(), colors=torch.cat([rgb, alpha], 1).numpy(),
                                           radii=radii.numpy()), static=True)
    return g.n


def _log_cameras(rr, rec, run: Path) -> int:
    """cameras.json views as pinhole frusta; held-out views get heldout.png's truth and render."""
    cams = _read_json(run / "cameras.json", CheckpointError)
    try:
        W, H = int(cams["width"]), int(cams["height"])
        views = [(split, k, np.asarray(c["K"], np.float64), np.asarray(c["world_to_cam"], np.float64))
                 for split in ("train", "heldout") for k, c in enumerate(cams.get(split, []))]
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{run}/cameras.json is not a camera list: {e!r}") from e
    grid = _heldout_grid(run / "heldout.png", H, W, len(cams.get("heldout", [])))
    for split, k, K, world_to_cam in views:
        R, t = world_to_cam[:3, :3], world_to_cam[:3, 3]  # OpenCV camera frame, metres
        entity = f"world/cameras/{split}_{k:02d}"
        rec.log(entity, rr.Transform3D(translation=-R.T @ t, mat3x3=R.T), static=True)  # camera -> world
        rec.log(entity, rr.Pinhole(image_from_camera=K, width=W, height=H, camera_xyz=rr.ViewCoordinates.RDF,
                                   image_plane_distance=0.1), static=True)
        if split == "heldout" and grid is not None:
            rec.log(f"{entity}/truth", rr.Image(grid[:H, k * W:(k + 1) * W]), static=True)
            rec.log(f"{entity}/render", rr.Image(grid[H:, k * W:(k + 1) * W]), static=True)
    return len(views)


def _heldout_grid(png: Path, H: int, W: int, n: int) -> np.ndarray | None:
    """heldout.png ((2H, nW, 3): views on top, renders below), or None if absent or another shape."""
    if not png.is_file() or n == 0:
        return None
    from PIL import Image

    with Image.open(png) as im:
        grid = np.asarray(im.convert("RGB"))
    return grid if grid.shape == (2 * H, n * W, 3) else None


# ----------------------------------------------------------------------------- helpers
def _send_dims(rr, rec, prefix: str, x: np.ndarray, names: list[str] | None, times: list) -> None:
    """Columns of ``x`` (T, D) as D scalar entities ``prefix/<name>``; D = 1 without names -> ``prefix``."""
    x = np.asarray(x).reshape(len(x), -1).astype(np.float64)
    for j in range(x.shape[1]):
        entity = prefix if names is None and x.shape[1] == 1 else f"{prefix}/{_part(names[j] if names else str(j))}"
        rec.send_columns(entity, times, rr.Scalars.columns(scalars=x[:, j]))


def _dim_names(feature: dict, d: int) -> list[str]:
    """Per-dimension names from an info.json feature: a list, or LeRobot's ``{"motors": [...]}``."""
    names = feature.get("names") if isinstance(feature, dict) else None
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, list) and len(names) == d and all(isinstance(n, str) and n for n in names):
        if len(set(names)) == d:
            return names
    return [str(j) for j in range(d)]


def _part(name: str) -> str:
    """One entity-path part (``/``, spaces and other specials escaped)."""
    from rerun import escape_entity_path_part

    return escape_entity_path_part(name)


def _read_json(path: Path, error: type[Exception]) -> dict:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise error(f"cannot read {path}: {e}") from e
    if not isinstance(obj, dict):
        raise error(f"{path} is not a JSON object")
    return obj


def _final(out) -> Path | None:
    return None if out is None else Path(out)


def _import_rerun():
    try:
        import rerun as rr
    except ImportError as e:
        raise ConfigError(f"robodream view needs rerun-sdk ({e}); install it with pip install 'robodream[viz]'") from e
    return rr


@contextlib.contextmanager
def _recording(name: str, out: str | os.PathLike | None, spawn: bool):
    """A fresh Rerun recording whose data goes to ``out`` (atomically) and/or a spawned viewer.

    Yields ``(rerun module, RecordingStream)``; strict mode is on inside, so bad data raises.
    """
    rr = _import_rerun()
    if out is None and not spawn:
        raise ConfigError("nothing to do: give an output .rrd file or spawn a viewer")
    if out is not None and Path(out).is_dir():
        raise ConfigError(f"--out {out} is a directory; give a file name such as {Path(out) / (name + '.rrd')}")
    rec = rr.RecordingStream("robodream", recording_id=uuid.uuid4())
    sinks, tmp = [], None
    if spawn:
        sinks.append(rr.GrpcSink(_spawn_viewer(rr, rec)))
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        sinks.append(rr.FileSink(str(tmp)))
    strict = rr.strict_mode()
    rr.set_strict_mode(True)
    try:
        rec.set_sinks(*sinks)
        rec.send_recording_name(name)
        yield rr, rec
        try:
            rec.flush(timeout_sec=60.0)
        except RuntimeError as e:  # the spawned viewer went away
            raise ConfigError(f"the Rerun viewer did not take the data: {_first_line(e)}") from None
        rec.disconnect()  # closes the file (writes its footer)
        if tmp is not None:
            os.replace(tmp, out)
            tmp = None
    finally:
        rr.set_strict_mode(strict)
        rec.disconnect()
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _spawn_viewer(rr, rec) -> str:
    """Start the native viewer (or reuse one on :data:`VIEWER_PORT`); returns its gRPC URL."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise ConfigError("--spawn needs a display (DISPLAY and WAYLAND_DISPLAY are unset); write an .rrd with "
                          "--out and open it with `rerun FILE.rrd` on a machine with a screen")
    # the viewer installed with this rerun-sdk (same version) first, then any on PATH
    exe = shutil.which("rerun", path=str(Path(sys.executable).parent)) or shutil.which("rerun")
    if exe is None:
        raise ConfigError("--spawn: the `rerun` viewer executable was not found (it comes with rerun-sdk)")
    try:
        rr.spawn(port=VIEWER_PORT, connect=False, executable_path=exe, recording=rec)
    except (RuntimeError, OSError) as e:
        raise ConfigError(f"cannot start the Rerun viewer: {_first_line(e)}") from None
    try:  # rr.spawn only warns when the viewer dies at start (e.g. no usable display)
        socket.create_connection(("127.0.0.1", VIEWER_PORT), timeout=2.0).close()
    except OSError:
        raise ConfigError(f"cannot start the Rerun viewer: nothing listens on port {VIEWER_PORT} "
                          "(see the viewer's messages above)") from None
    return f"rerun+http://127.0.0.1:{VIEWER_PORT}/proxy"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
