"""End-to-end smoke runs of every CLI command on tiny settings, and bad-input handling."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import TINY_POLICY, one_line_error, run
from fixtures.lerobot_v30 import make_lerobot_v30_fixture


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A tiny collected dataset, tokenizer and policy shared by the tests of this module."""
    w = tmp_path_factory.mktemp("cli")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 6, "--batch-size", 8)
    run("train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "pol", "--steps", 6,
        *TINY_POLICY)
    return w


def test_collect_train_outputs(work):
    info = json.loads((work / "ds" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == 3
    prov = json.loads((work / "ds" / "meta" / "robodream.json").read_text())
    assert prov["seeds"] == [0, 1, 2] and prov["task"] == "reach-v3"
    from robodream.data.lerobot import LeRobotDataset

    ds = LeRobotDataset(work / "ds")
    for i in range(ds.num_episodes):  # recording goes on 16 steps past the first success
        flags = ds.episode(i).extra["next.success"]
        assert flags.any() and len(flags) == int(flags.argmax()) + 1 + 16
        extra = ds.episode(i).extra  # the RAMP/RECAP reward columns read back (robodream.rl.rewards)
        first = int(flags.argmax())
        reward = np.asarray(extra["next.reward"]).reshape(-1)
        assert (reward[:first] == -1).all() and (reward[first:] == 0).all()
        done = np.asarray(extra["next.done"]).reshape(-1)
        assert done[-1] and not done[:-1].any()
        assert not np.asarray(extra["complementary_info.is_intervention"]).any()
        assert np.asarray(extra["complementary_info.dense_reward"]).reshape(-1)[-1] > 0
        env = np.asarray(extra["observation.environment_state"])  # objects + goal (ENV_STATE_NAMES)
        assert env.shape == (len(flags), 17) and np.ptp(env[:, -3:], axis=0).max() == 0  # the goal stays put
    goals = [tuple(np.asarray(ds.episode(i).extra["observation.environment_state"])[0, -3:]) for i in range(3)]
    assert len(set(goals)) == 3  # a new goal per episode seed
    for run_dir in ("tok", "pol"):
        for name in ("config.json", "meta.json", "metrics.jsonl", "model.safetensors", "results.json"):
            assert (work / run_dir / name).is_file(), (run_dir, name)
    cfg = json.loads((work / "pol" / "config.json").read_text())
    assert cfg["model_type"] == "gigaworld_policy" and cfg["train_seeds"] == {"reach-v3": [0, 1, 2]}
    assert (work / "pol" / "normalization.json").is_file() and (work / "pol" / "tokenizer" / "model.safetensors").is_file()
    assert json.loads((work / "tok" / "results.json").read_text())["psnr_heldout"] > 5


def test_eval_policy(work):
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 2, "--out",
              work / "ev", "--max-steps", 12, "--videos", 1)
    r = json.loads((work / "ev" / "results.json").read_text())
    for key in ("success_rate", "n_episodes", "ci95", "mean_steps_to_success", "latency_ms_p50", "latency_ms_p90",
                "task", "seeds"):
        assert key in r
    assert r["n_episodes"] == 2 and r["seeds"] == [1_000_000, 1_000_001] and r["latency_ms_p50"] > 0
    assert (work / "ev" / "evaluation.png").is_file() and len(list((work / "ev" / "rollouts").glob("*.mp4"))) == 1
    assert "latency" in res.output
    # with-video inference works from the CLI too
    run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 1, "--out", work / "ev2",
        "--max-steps", 12, "--videos", 1, "--mode", "with_video")
    assert len(list((work / "ev2" / "rollouts").glob("*_predicted_future.png"))) == 1
    # a shorter receding horizon replans more often: 12 steps at K = 2 are 6 chunks
    run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 1, "--out", work / "ev3",
        "--max-steps", 12, "--videos", 0, "--n-action-steps", 2, "--appearance", "random", "--camera-shift", "left")
    r = json.loads((work / "ev3" / "results.json").read_text())
    assert r["n_action_steps"] == 2 and r["n_chunks"] == 6
    assert r["shift"]["appearance"] == "random" and r["shift"]["episode_seeds"] == [1_000_000, 1_000_000]
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--out", work / "ev4",
              "--n-action-steps", 99, code=2)
    _one_line_error(res, "--n-action-steps", "horizon")
    assert not (work / "ev4").exists()


def test_resume_and_existing_run(work):
    run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", work / "pol", "--steps", 6,
        *TINY_POLICY, code=2)  # exists, no --resume: refused, nothing lost
    assert (work / "pol" / "model.safetensors").is_file()
    run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", work / "pol", "--steps", 6,
        *TINY_POLICY, "--resume")  # already complete: nothing to do, still fine


def test_policy_with_auxiliary_state_head(tmp_path, work):
    """--aux-state-weight trains a state-token head on observation.environment_state (a logged,
    held-out loss); the run's config records the target size and the policy evaluates as any other."""
    run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "aux", "--steps",
        4, *TINY_POLICY, "--aux-state-weight", 1)
    cfg = json.loads((tmp_path / "aux" / "config.json").read_text())
    assert cfg["model"]["aux_state_dim"] == 17 and cfg["model"]["aux_state_weight"] == 1
    assert json.loads((tmp_path / "aux" / "results.json").read_text())["loss_aux_state"] > 0
    norm = json.loads((tmp_path / "aux" / "normalization.json").read_text())
    assert len(norm["observation.environment_state"]["mean"]) == 17
    run("eval", "policy", "--policy", tmp_path / "aux", "--task", "reach-v3", "--episodes", 1, "--out",
        tmp_path / "ev", "--max-steps", 4)


def test_policy_with_supervised_keypoints(tmp_path, work):
    """--keypoint-targets needs segmentation (a one-line error on a dataset without it, nothing
    written) and trains on a dataset collected --with-segmentation, logging the keypoint loss."""
    kp = ["--stem-keypoints", 2, "--keypoint-targets", "goal"]
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "no",
              "--steps", 2, *TINY_POLICY, *kp, code=2)
    _one_line_error(res, "observation.segmentation", "--with-segmentation")
    assert not (tmp_path / "no" / "model.safetensors").exists()
    run("collect", "--task", "reach-v3", "--episodes", 2, "--out", tmp_path / "seg", "--image-size", 32,
        "--with-segmentation")
    run("train", "policy", "--data", tmp_path / "seg", "--tokenizer", work / "tok", "--out", tmp_path / "kp",
        "--steps", 2, *TINY_POLICY, *kp)
    assert json.loads((tmp_path / "kp" / "results.json").read_text())["loss_keypoint"] > 0


def test_run_written_before_the_action_expert_loads_as_trained(tmp_path, work):
    """A config.json without ``action_expert_dim`` (runs older than the field, whose default is
    now 64) means shared weights, and such a run still loads and acts."""
    import shutil

    from safetensors.torch import save_file

    from robodream.config import from_dict
    from robodream.policy.configuration import PolicyConfig
    from robodream.policy.modeling import GigaWorldPolicy
    from robodream.policy.train import load_policy

    old = tmp_path / "old"
    shutil.copytree(work / "pol", old)
    cfg = json.loads((old / "config.json").read_text())
    del cfg["model"]["action_expert_dim"]
    (old / "config.json").write_text(json.dumps(cfg))
    shared = GigaWorldPolicy(from_dict(PolicyConfig, {**cfg["model"], "action_expert_dim": 0}))
    save_file(shared.state_dict(), old / "model.safetensors")
    policy, _, _ = load_policy(old)
    assert policy.cfg.action_expert_dim == 0 and policy.action_blocks is None


def test_bench_policy(tmp_path, work):
    run("bench", "policy", "--out", tmp_path / "b.json", "--repeats", 3, "--train-steps", 1, "--config",
        work / "pol" / "config.json", "--no-compile")
    r = json.loads((tmp_path / "b.json").read_text())
    for key in ("action_only_p50_ms", "with_video_p50_ms", "joint_p50_ms", "speedup_vs_joint",
                "train_samples_per_s", "train_peak_rss_mib"):
        assert r[key] > 0, key


def test_training_throughput_of_a_keypoint_policy_and_a_dead_process():
    from robodream.bench.policy_bench import train_throughput
    from robodream.policy.configuration import PolicyConfig
    cfg = PolicyConfig(dim=32, depth=1, horizon=8, n_action_steps=4, video_stride=8, action_expert_dim=16, image_size=32,
                       latent_size=4, pixel_stem_width=8, stem_keypoints=2, keypoint_targets=("goal", "object"))
    assert train_throughput(cfg, batch=2, steps=1, warmup=0, threads=1)["train_samples_per_s"] > 0
    with pytest.raises(RuntimeError, match="died"):  # the measuring process fails: an error, not a hang
        train_throughput(cfg, batch=2, steps=1, warmup=0, threads=1, precision="no-such-precision")


def _tiny_recipe(path: Path) -> Path:
    path.write_text(json.dumps({
        "tasks": ["reach-v3"], "demos_per_task": 1, "task_demos": [2], "eval_episodes": 1, "eval_max_steps": 8, "image_size": 32,
        "videos_per_task": 1, "task_weight": [2.0], "tokenizer_train": {"steps": 4, "batch_size": 8},
        "policy": {"dim": 32, "depth": 1, "horizon": 8, "n_action_steps": 4, "video_stride": 4,
                   "action_expert_dim": 16, "pixel_stem_width": 8},
        "policy_train": {"steps": 4, "batch_size": 8}}))
    return path


def test_demo_and_bench_success(tmp_path):
    from robodream.data.lerobot import LeRobotDataset
    recipe = _tiny_recipe(tmp_path / "recipe.json")
    res = run("demo", "--out", tmp_path / "demo", "--recipe", recipe)
    assert "reach-v3" in res.output and (tmp_path / "demo" / "policy_summary.json").is_file()
    assert json.loads((tmp_path / "demo" / "policy" / "config.json").read_text())["model"]["pixel_stem_width"] == 8
    meta = json.loads((tmp_path / "demo" / "data" / "reach-v3" / "meta" / "robodream.json").read_text())
    assert meta["collect"]["expert_target"] == "tcp" and meta["collect"]["with_segmentation"]
    assert LeRobotDataset(tmp_path / "demo" / "data" / "reach-v3").num_episodes == 2  # task_demos over demos_per_task
    policy_cfg = json.loads((tmp_path / "demo" / "policy" / "config.json").read_text())
    assert policy_cfg["model"]["keypoint_targets"] == ["goal", "object"]  # the recipes' supervised keypoints
    assert policy_cfg["data_weight"] == [2.0]
    run("bench", "success", "--out", tmp_path / "s.json", "--work", tmp_path / "bs", "--recipe", recipe)
    s = json.loads((tmp_path / "s.json").read_text())
    assert set(s["per_task"]) == {"reach-v3"} and "ablation_no_video" in s
    assert s["ablation_no_video"]["details"]["recipe"]["policy"]["video_stride"] == 4  # recipe unchanged
    assert json.loads((tmp_path / "bs" / "policy_no_video" / "config.json").read_text())["model"]["video_stride"] == 0


def test_recipe_task_weight_and_demos_need_one_value_per_task(tmp_path):
    from robodream.errors import ConfigError
    from robodream.pipeline import SUCCESS_BENCH, recipe_from_json
    assert recipe_from_json({"task_weight": [3, 1, 1, 1, 1]}, SUCCESS_BENCH).task_weight == (3.0, 1.0, 1.0, 1.0, 1.0)
    assert SUCCESS_BENCH.tasks[0] == "reach-v3" and SUCCESS_BENCH.task_weight == (2.0, 1.0, 1.0, 1.0, 1.0)
    other = recipe_from_json({"tasks": ["push-v3", "reach-wall-v3"]}, SUCCESS_BENCH)  # weights belong to their tasks
    assert other.task_weight == () and recipe_from_json({}, SUCCESS_BENCH).task_weight == SUCCESS_BENCH.task_weight
    for bad in ([2, 1], [0, 0, 0, 0, 0], [-1, 1, 1, 1, 1]):
        with pytest.raises(ConfigError, match="task_weight"):
            recipe_from_json({"task_weight": bad}, SUCCESS_BENCH)
    from robodream.pipeline import DEMO
    assert [DEMO.demos(i) for i in range(len(DEMO.tasks))] == [50, 15, 15]  # reach: 50 goal positions
    other = recipe_from_json({"tasks": ["push-v3"]}, DEMO)  # task_demos belong to their tasks too
    assert other.task_demos == () and other.demos(0) == DEMO.demos_per_task
    for bad in ([2, 1], [50, 0, 15], [50, 15, 1.5]):
        with pytest.raises(ConfigError, match="task_demos"):
            recipe_from_json({"task_demos": bad}, DEMO)
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"task_weight": [1, 2]}))
    one_line_error(run("demo", "--out", tmp_path / "d", "--recipe", path, code=2), "task_weight")
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_tasks_command():
    assert "door-open-v3" in run("tasks").output


def test_foreign_lerobot_dataset_trains(tmp_path):
    """A dataset laid out by LeRobot's writer (other robot, 6-dim state/action) trains end to end."""
    make_lerobot_v30_fixture(tmp_path / "foreign", image_size=(32, 32))
    run("train", "tokenizer", "--data", tmp_path / "foreign", "--out", tmp_path / "tok", "--steps", 3,
        "--batch-size", 8)
    run("train", "policy", "--data", tmp_path / "foreign", "--tokenizer", tmp_path / "tok", "--out",
        tmp_path / "pol", "--steps", 3, *TINY_POLICY)
    cfg = json.loads((tmp_path / "pol" / "config.json").read_text())
    assert cfg["model"]["action_dim"] == 6 and cfg["model"]["cameras"] == ["front", "wrist"]
    # Auxiliary state prediction needs observation.environment_state, which this dataset lacks.
    res = run("train", "policy", "--data", tmp_path / "foreign", "--tokenizer", tmp_path / "tok", "--out",
              tmp_path / "aux", "--steps", 3, *TINY_POLICY, "--aux-state-weight", 1, code=2)
    _one_line_error(res, "observation.environment_state", "aux-state-weight 0")
    assert not (tmp_path / "aux" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- bad input
def _one_line_error(res, *needles: str) -> None:
    err = res.output.strip()
    assert err.startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def test_unknown_task(tmp_path):
    res = run("collect", "--task", "pusj-v3", "--episodes", 1, "--out", tmp_path / "x", code=2)
    _one_line_error(res, "unknown Meta-World task", "push-v3")
    assert not (tmp_path / "x").exists()


def test_missing_and_foreign_dataset(tmp_path):
    res = run("train", "tokenizer", "--data", tmp_path / "nope", "--out", tmp_path / "t", code=2)
    _one_line_error(res, "nope")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("hello")
    res = run("train", "tokenizer", "--data", foreign, "--out", tmp_path / "t", code=2)
    _one_line_error(res, "info.json")
    assert not (tmp_path / "t").exists()


def test_missing_video_file(tmp_path, work):
    ds = tmp_path / "ds"
    shutil.copytree(work / "ds", ds)
    next(ds.glob("videos/*/chunk-000/file-000.mp4")).unlink()
    res = run("train", "tokenizer", "--data", ds, "--out", tmp_path / "t", code=2)
    _one_line_error(res, "file-000.mp4")
    assert not (tmp_path / "t").exists()


def test_checkpoint_of_another_model(tmp_path, work):
    res = run("eval", "policy", "--policy", work / "tok", "--task", "reach-v3", "--out", tmp_path / "e", code=2)
    _one_line_error(res, "image_tokenizer", "gigaworld_policy")
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "pol", "--out", tmp_path / "p", code=2)
    _one_line_error(res, "gigaworld_policy", "image_tokenizer")


def test_untrained_task_and_image_size_mismatch(tmp_path, work):
    res = run("eval", "policy", "--policy", work / "pol", "--task", "push-v3", "--out", tmp_path / "e", code=2)
    _one_line_error(res, "not trained on task")
    run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "ds48", "--image-size", 48)
    res = run("train", "policy", "--data", tmp_path / "ds48", "--tokenizer", work / "tok", "--out", tmp_path / "p",
              code=2)
    _one_line_error(res, "48x48", "32x32")
    assert not (tmp_path / "p").exists()


def test_action_dimension_mismatch(tmp_path, work):
    make_lerobot_v30_fixture(tmp_path / "foreign", image_size=(32, 32), cameras=("corner", "behindGripper"),
                             episodes_per_video_file={"corner": 2, "behindGripper": 5})
    res = run("train", "policy", "--data", work / "ds", "--data", tmp_path / "foreign", "--tokenizer", work / "tok",
              "--out", tmp_path / "p", code=2)
    _one_line_error(res, "dimensions")


def test_collect_shift_depth_segmentation_flags(tmp_path):
    """collect takes the environment-shift and depth/segmentation flags and records them; an
    unknown preset is one line, and nothing is written."""
    run("collect", "--task", "reach-v3", "--episodes", 1, "--image-size", 16, "--cameras", "corner",
        "--appearance", "night", "--camera-shift", "random", "--camera-shift-scale", 0.5, "--shift.seed", 3,
        "--with-depth", "--with-segmentation", "--out", tmp_path / "ds")
    prov = json.loads((tmp_path / "ds" / "meta" / "robodream.json").read_text())
    assert prov["shift"] == {"appearance": "night", "camera_shift": "random", "appearance_scale": 1.0,
                             "camera_shift_scale": 0.5, "seed": 3, "episode_seeds": [0, 0]}
    features = json.loads((tmp_path / "ds" / "meta" / "info.json").read_text())["features"]
    assert features["observation.depth.corner"]["dtype"] == "uint16"
    assert features["observation.segmentation.corner"]["shape"] == [16, 16]
    res = run("collect", "--task", "reach-v3", "--episodes", 1, "--appearance", "foggy", "--out", tmp_path / "x",
              code=2)
    _one_line_error(res, "unknown appearance 'foggy'", "dark-wood")
    assert not (tmp_path / "x").exists()
