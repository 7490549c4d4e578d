"""Parallel rollouts (robodream.envs.parallel): N workers give exactly what one worker gives.

The one-worker path runs in the calling process and is the reference; the process pool and
Ray actors are held equal to it: the same collected dataset (bit-identical frames and
parquet with the lossless codec, same kept and discarded seeds) and the same per-episode
evaluation results and rollout videos.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from cli_helpers import TINY_POLICY, run

from robodream.data.collect import CollectConfig, collect
from robodream.data.lerobot import LeRobotDataset
from robodream.envs.parallel import RolloutPool, WorkerError
from robodream.errors import ConfigError, DatasetError

ROBODREAM = str(Path(sys.executable).parent / "robodream")

# reach-v3 at 45 steps: the expert fails seeds 0, 1, 4 and solves 2, 3, 5, so collecting 3
# episodes keeps [2, 3, 5], discards [0, 1, 4] and (attempts up to 3x) lets a second worker
# start seeds past 5 that must be dropped.
# Meta-World's hand-steered reach expert needs more than 45 steps for some seeds: discards happen.
COLLECT = CollectConfig(task="reach-v3", episodes=3, image_size=32, max_steps=45, post_success_steps=4,
                        max_attempts_factor=3.0, video_codec="h264-rgb", expert_target="hand")
EVAL = ["--task", "reach-v3", "--episodes", "3", "--max-steps", "10", "--videos", "3"]


def _one_line_error(output: str, *needles: str) -> None:
    err = output.strip()
    assert err.startswith("error:") and "Traceback" not in err and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same episodes, seeds, parquet tables and decoded frames (bit-identical)."""
    pa_, pb = (json.loads((d / "meta" / "robodream.json").read_text()) for d in (a, b))
    assert (pa_["seeds"], pa_["discarded_seeds"]) == (pb["seeds"], pb["discarded_seeds"])
    for rel in ("data/chunk-000/file-000.parquet", "meta/episodes/chunk-000/file-000.parquet"):
        assert pq.read_table(a / rel).equals(pq.read_table(b / rel)), rel
    da, db = LeRobotDataset(a), LeRobotDataset(b)
    assert da.num_episodes == db.num_episodes
    for cam in ("corner", "behindGripper"):
        for fa, fb in zip(da.all_frames(cam), db.all_frames(cam)):
            np.testing.assert_array_equal(fa, fb)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The one-worker (in-process) dataset of COLLECT."""
    out = tmp_path_factory.mktemp("ref") / "ds"
    res = collect(COLLECT, out)
    assert res.seeds == [2, 3, 5] and res.discarded_seeds == [0, 1, 4]
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny dataset, tokenizer and policy, and the one-worker evaluation of EVAL."""
    w = tmp_path_factory.mktemp("par")
    run("collect", "--task", "reach-v3", "--episodes", 2, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 4, "--batch-size", 8)
    run("train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "pol", "--steps", 4,
        *TINY_POLICY)
    run("eval", "policy", "--policy", w / "pol", *EVAL, "--out", w / "ev1", "--threads", 1)
    return w


def assert_same_evaluation(a: Path, b: Path) -> None:
    """Same per-episode results, and the same rollouts frame for frame (identical MP4 bytes)."""
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["episodes"] == rb["episodes"] and ra["seeds"] == rb["seeds"]
    assert ra["n_chunks"] == rb["n_chunks"]
    videos = sorted(p.name for p in (a / "rollouts").glob("*.mp4"))
    assert len(videos) == 3 and videos == sorted(p.name for p in (b / "rollouts").glob("*.mp4"))
    for name in videos:
        assert (a / "rollouts" / name).read_bytes() == (b / "rollouts" / name).read_bytes(), name


# ----------------------------------------------------------------------------- local processes
def test_collect_two_workers_equal_one(tmp_path, reference):
    res = collect(COLLECT, tmp_path / "ds2", workers=2)
    assert res.seeds == [2, 3, 5] and res.discarded_seeds == [0, 1, 4]
    assert_same_dataset(reference, tmp_path / "ds2")


def test_eval_two_workers_equal_one(work):
    res = run("eval", "policy", "--policy", work / "pol", *EVAL, "--out", work / "ev2", "--workers", 2)
    assert "latency" in res.output
    assert_same_evaluation(work / "ev1", work / "ev2")
    r = json.loads((work / "ev2" / "results.json").read_text())
    assert r["workers"] == 2 and r["backend"] == "processes" and r["threads"] == 1


def test_episode_noise_depends_on_its_seed_only(work):
    """reset(seed) fixes an episode's chunk noise; evaluating seeds s+1, s+2 alone gives the
    same rollouts as inside s, s+1, s+2."""
    from robodream.eval.policy_eval import DEFAULT_EVAL_SEED
    from robodream.policy.runner import PolicyRunner
    from robodream.policy.train import load_policy

    policy, tokenizer, _ = load_policy(work / "pol")
    pr = PolicyRunner(policy, tokenizer, policy.cfg.tasks[0])
    images, state = np.full((2, 32, 32, 3), 128, np.uint8), np.zeros(4, np.float32)
    chunks = []
    for seed in (1, 2, 1):
        pr.reset(seed)
        chunks.append(pr.predict_chunk(images, state))
    np.testing.assert_array_equal(chunks[0], chunks[2])
    assert not np.array_equal(chunks[0], chunks[1])  # the noise matters: the comparisons below have teeth
    run("eval", "policy", "--policy", work / "pol", *EVAL[:2], "--episodes", 2, "--max-steps", 10, "--videos", 2,
        "--seed-start", DEFAULT_EVAL_SEED + 1, "--out", work / "ev_shift", "--threads", 1)
    for p in (work / "ev_shift" / "rollouts").glob("*.mp4"):
        assert p.read_bytes() == (work / "ev1" / "rollouts" / p.name).read_bytes(), p.name


def test_worker_errors_surface_in_the_parent():
    """A RobodreamError stays one (with its message); another exception keeps its type and
    carries the worker's traceback; a dead worker is a WorkerError."""
    with RolloutPool(_make_state, _fail_on, workers=2) as pool:
        assert list(pool.imap([1, 2, 3])) == [10, 20, 30]
        with pytest.raises(DatasetError, match="bad item 13") as e:
            list(pool.imap([11, 12, 13]))
        assert any("item 2" in n for n in e.value.__notes__)
        with pytest.raises(ZeroDivisionError) as e:
            list(pool.imap([0]))
        assert "ZeroDivisionError" in str(e.value.__cause__)
        assert list(pool.imap([4])) == [40]  # still usable after an error
        with pytest.raises(WorkerError, match="died"):
            list(pool.imap([-1]))
    with RolloutPool(_make_state, _fail_on, workers=1) as pool:  # the in-process reference
        with pytest.raises(DatasetError, match="bad item 13"):
            list(pool.imap([13]))


def _make_state() -> int:
    return 10


def _fail_on(state: int, item: int) -> int:
    """state * item, except: 13 raises a DatasetError, 0 a ZeroDivisionError, -1 kills the worker."""
    if item == 13:
        raise DatasetError("bad item 13")
    if item == -1:
        import os

        os._exit(3)
    if item == 0:
        return state // item
    return state * item


def test_abandoned_items_are_dropped():
    """The consumer stops early: items started ahead are dropped, the pool stays usable."""
    with RolloutPool(_make_state, partial(_slow, 0.05), workers=2, max_ahead=4) as pool:
        it = pool.imap(range(100))
        assert [next(it) for _ in range(3)] == [0, 10, 20]
        del it
        assert list(pool.imap([7, 8])) == [70, 80]


def _slow(seconds: float, state: int, item: int) -> int:
    time.sleep(seconds)
    return state * item


# ----------------------------------------------------------------------------- bad input
def test_bad_workers(tmp_path, work):
    res = run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "x", "--workers", 0, code=2)
    _one_line_error(res.output, "--workers", ">= 1")
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--out", tmp_path / "e",
              "--workers", -1, code=2)
    _one_line_error(res.output, "--workers")
    assert not (tmp_path / "x").exists() and not (tmp_path / "e").exists()
    with pytest.raises(ConfigError):
        RolloutPool(_make_state, _fail_on, workers=0)


def test_bad_mode_and_max_steps(tmp_path, work):
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--out", tmp_path / "e",
              "--mode", "bogus", code=2)
    _one_line_error(res.output, "bogus", "action_only")
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--out", tmp_path / "e",
              "--max-steps", 0, code=2)
    _one_line_error(res.output, "--max-steps")
    assert not (tmp_path / "e").exists()


def test_eval_refuses_an_existing_out_dir(tmp_path, work):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    res = run("eval", "policy", "--policy", work / "pol", *EVAL, "--out", out, code=2)
    _one_line_error(res.output, "--overwrite")
    res = run("eval", "policy", "--policy", work / "pol", *EVAL, "--out", out, "--overwrite", code=2)
    _one_line_error(res.output, "notes.txt")  # not an evaluation: never replaced
    assert [p.name for p in tmp_path.iterdir()] == ["ev"] and [p.name for p in out.iterdir()] == ["notes.txt"]
    # an earlier evaluation is replaced with --overwrite only, and an empty directory is fine
    import shutil

    shutil.copytree(work / "ev1", tmp_path / "ev_old")
    run("eval", "policy", "--policy", work / "pol", *EVAL, "--out", tmp_path / "ev_old", code=2)
    (tmp_path / "ev_old" / "rollouts" / "stale.mp4").write_bytes(b"")
    run("eval", "policy", "--policy", work / "pol", *EVAL, "--episodes", 1, "--videos", 1, "--out",
        tmp_path / "ev_old", "--overwrite")
    assert not (tmp_path / "ev_old" / "rollouts" / "stale.mp4").exists()
    (tmp_path / "empty").mkdir()
    run("eval", "policy", "--policy", work / "pol", *EVAL, "--episodes", 1, "--videos", 0, "--out", tmp_path / "empty")
    assert (tmp_path / "empty" / "results.json").is_file()


def test_ray_not_installed(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ConfigError, match=r"pip install robodream\[ray\]"):
        collect(COLLECT, tmp_path / "x", ray_address="127.0.0.1:6379")
    res = run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "x", "--ray-address",
              "127.0.0.1:6379", code=2)
    _one_line_error(res.output, "pip install robodream")  # the CLI's rich markup swallows "[ray]"
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- Ray
@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance started by this test module; yields its address."""
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install robodream[ray])")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _cli(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    """The robodream CLI in a fresh process (a Ray driver of its own)."""
    return subprocess.run([ROBODREAM, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_ray_workers_equal_one(tmp_path, reference, work, ray_cluster):
    p = _cli("eval", "policy", "--policy", work / "pol", *EVAL, "--out", tmp_path / "ev", "--workers", 2,
             "--ray-address", ray_cluster)
    assert p.returncode == 0, p.stderr
    assert_same_evaluation(work / "ev1", tmp_path / "ev")
    assert json.loads((tmp_path / "ev" / "results.json").read_text())["backend"] == "ray"
    # the same pool from the library, on this process's Ray connection
    res = collect(COLLECT, tmp_path / "ds", workers=2, ray_address=ray_cluster)
    assert res.seeds == [2, 3, 5]
    assert_same_dataset(reference, tmp_path / "ds")


def test_unreachable_ray_address(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed (pip install robodream[ray])")
    t0 = time.perf_counter()
    p = _cli("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "x", "--ray-address",
             "127.0.0.1:1", timeout=60)
    assert time.perf_counter() - t0 < 30
    assert p.returncode == 2, p.stderr
    _one_line_error(p.stdout + p.stderr, "127.0.0.1:1")
    assert not (tmp_path / "x").exists()
