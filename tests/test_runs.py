"""The run layer and strict configs: resume checks that write nothing, one-line errors for bad
input, stated absences instead of NaN, the run-type registry, file modes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import TINY_POLICY, one_line_error, run
from typer.testing import CliRunner

from robodream.config import config_options, from_dict, parse_option_value, to_dict
from robodream.errors import CheckpointError, ConfigError
from robodream.policy.train import PolicyRunConfig
from robodream.train.loop import TrainConfig

runner = CliRunner()


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory with its bytes (to prove a refused command wrote nothing)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("runs")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 4, "--batch-size", 8)
    run("train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "pol", "--steps", 4,
        "--checkpoint-every", 2, *TINY_POLICY)
    return w


# ----------------------------------------------------------------------------- strict configs
def test_from_dict_is_strict_and_recursive():
    cfg = from_dict(PolicyRunConfig, {"model": {"dim": 48, "cameras": ["a", "b"]}, "train": {"steps": 7}})
    assert isinstance(cfg.train, TrainConfig) and cfg.train.steps == 7 and cfg.model.dim == 48
    assert cfg.model.cameras == ("a", "b")  # lists become tuples
    with pytest.raises(ConfigError, match=r"unknown config key 'model\.dimm' \(did you mean 'model\.dim'\?\)"):
        from_dict(PolicyRunConfig, {"model": {"dimm": 48}})
    with pytest.raises(ConfigError, match="'train.steps' must be an integer"):
        from_dict(PolicyRunConfig, {"train": {"steps": "many"}})
    with pytest.raises(ConfigError, match="train.batch_size must be >= 1"):
        from_dict(PolicyRunConfig, {"train": {"batch_size": 0}})
    assert from_dict(PolicyRunConfig, to_dict(cfg)) == cfg  # round trip


def test_legacy_defaults_fill_fields_older_configs_lack():
    """A saved config without action_expert_dim (written before the field, whose default is now
    64) means shared weights; a config that states it keeps it."""
    d = to_dict(PolicyRunConfig())
    del d["model"]["action_expert_dim"]
    assert from_dict(PolicyRunConfig, d, legacy=True).model.action_expert_dim == 0  # a saved run
    assert from_dict(PolicyRunConfig, d).model.action_expert_dim == 64  # a new config: today's default
    assert from_dict(PolicyRunConfig, to_dict(PolicyRunConfig()), legacy=True).model.action_expert_dim == 64
    del d["model"]["pixel_stem_width"]  # written before the pixel stem: latents only
    assert from_dict(PolicyRunConfig, d, legacy=True).model.pixel_stem_width == 0
    assert from_dict(PolicyRunConfig, d).model.pixel_stem_width == 32


def test_options_are_generated_from_the_dataclasses():
    opts = {o.path: o for o in config_options(PolicyRunConfig)}
    assert opts["train.steps"].flags == ("--train.steps", "--steps")
    assert opts["model.video_stride"].flags == ("--model.video-stride", "--video-stride")
    assert opts["train.steps"].default == 4000  # the policy's own training defaults, not TrainConfig's
    assert "future frames" in opts["model.video_stride"].help  # the field's comment is the help
    for derived in ("model.state_dim", "model.tasks", "env_tasks", "train_seeds", "model_type"):
        assert derived not in opts  # filled in from the data, not options
    assert parse_option_value(opts["data"], ["a,b", "c"]) == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="--dim must be an integer"):
        parse_option_value(opts["model.dim"], "wide")


def test_config_file_errors(tmp_path, work):
    bad = tmp_path / "typo.json"
    bad.write_text(json.dumps({"model": {"video_strde": 0}}))
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "p",
              "--config", bad, code=2)
    one_line_error(res, "model.video_strde", "model.video_stride")
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "p",
              "--config", work / "tok" / "config.json", code=2)
    one_line_error(res, "image_tokenizer config, not gigaworld_policy")
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "p",
              "--dimm", 3, code=2)
    one_line_error(res, "No such option: --dimm")
    # a run's config.json reproduces it (nested configs rebuilt, derived fields refilled)
    run("train", "policy", "--out", tmp_path / "again", "--config", work / "pol" / "config.json")
    a, b = (json.loads((d / "config.json").read_text()) for d in (work / "pol", tmp_path / "again"))
    assert a == b
    assert not (tmp_path / "p").exists()


# ----------------------------------------------------------------------------- resume
@pytest.mark.parametrize("change", [["--seed", "1"], ["--batch-size", "4"], ["--lr", "0.1"],
                                    ["--video-stride", "2"], ["--data", "elsewhere"]])
def test_resume_refuses_other_settings_and_writes_nothing(work, change):
    before = snapshot(work / "pol")
    res = run("train", "policy", "--out", work / "pol", "--resume", "--steps", 6, *change, code=2)
    one_line_error(res, "--resume:", "another --out")
    assert snapshot(work / "pol") == before


def test_resume_with_another_tokenizer_shape_writes_nothing(work, tmp_path):
    """The review's case: a resume that fails late (another tokenizer) must not have rewritten
    config.json/meta.json first; the finished run still loads."""
    run("train", "tokenizer", "--data", work / "ds", "--out", tmp_path / "tok4", "--steps", 2, "--batch-size", 8,
        "--latent-channels", 4)
    before = snapshot(work / "pol")
    res = run("train", "policy", "--out", work / "pol", "--resume", "--tokenizer", tmp_path / "tok4", code=2)
    one_line_error(res, "tokenizer")
    assert snapshot(work / "pol") == before
    tok_run = tmp_path / "tok_resume"
    run("train", "tokenizer", "--data", work / "ds", "--out", tok_run, "--steps", 2, "--batch-size", 8)
    before = snapshot(tok_run)
    res = run("train", "tokenizer", "--out", tok_run, "--resume", "--latent-channels", 4, code=2)
    one_line_error(res, "model.latent_channels")
    assert snapshot(tok_run) == before
    from robodream.policy.train import load_policy

    load_policy(work / "pol")


def test_resume_accepts_more_steps_and_records_it(work, tmp_path):
    import shutil

    pol = tmp_path / "pol"
    shutil.copytree(work / "pol", pol)
    res = run("train", "policy", "--out", pol, "--resume", "--steps", 2, code=2)
    one_line_error(res, "at step 4", "--steps 2")
    run("train", "policy", "--out", pol, "--resume", "--steps", 6)  # settings come from the run
    cfg = json.loads((pol / "config.json").read_text())
    meta = json.loads((pol / "meta.json").read_text())
    assert cfg["train"]["steps"] == 6 and json.loads((pol / "results.json").read_text())["steps"] == 6
    assert meta["resumes"][-1]["from_step"] == 4 and meta["resumes"][-1]["changed"] == {"train.steps": [4, 6]}
    steps = [json.loads(ln)["step"] for ln in (pol / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 6


def test_library_resume_ignores_fields_filled_in_from_the_data(work, tmp_path):
    """A config built in Python (derived fields at their defaults: no task vocabulary, no seeds)
    resumes a run whose saved config has them filled in."""
    import dataclasses
    import shutil

    from robodream.policy.configuration import PolicyConfig
    from robodream.policy.train import train_policy

    shutil.copytree(work / "pol", tmp_path / "pol")
    saved = from_dict(PolicyRunConfig, json.loads((work / "pol" / "config.json").read_text()), legacy=True)
    fresh_model = {f: getattr(PolicyConfig(), f) for f in PolicyConfig.DERIVED_FIELDS}
    cfg = dataclasses.replace(saved, env_tasks={}, train_seeds={}, env={},
                              model=dataclasses.replace(saved.model, **fresh_model),
                              train=dataclasses.replace(saved.train, steps=5))
    assert train_policy(cfg, tmp_path / "pol", resume=True)["steps"] == 5


def test_image_augmentation_is_seeded(work, tmp_path):
    """Augmented (shifted, colour-jittered) copies of the training episodes are encoded once, from the run's seed: the same
    seed gives the same copies, another seed others; held-out episodes are never augmented."""
    from robodream.data.latents import encode_run_data
    from robodream.data.lerobot import LeRobotDataset
    from robodream.tokenizer.train import load_tokenizer

    ds, tok = [LeRobotDataset(work / "ds")], load_tokenizer(work / "tok")
    _, a, held = encode_run_data(ds, tok, ds[0].cameras, 0.34, views=2, pad=3, seed=0)
    _, b, _ = encode_run_data(ds, tok, ds[0].cameras, 0.34, views=2, pad=3, seed=0)
    _, c, _ = encode_run_data(ds, tok, ds[0].cameras, 0.34, views=2, pad=3, seed=1)
    assert a[0]["views"].shape == (len(a[0]["action"]), 2, *a[0]["latents"].shape[1:])
    assert all("views" not in e for e in held)
    assert all(torch.equal(x["views"], y["views"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["views"], y["views"]) for x, y in zip(a, c))
    assert not torch.equal(a[0]["views"][:, 0], a[0]["latents"])  # a copy is shifted
    run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "aug", "--steps", 2,
        "--augment-views", 2, "--augment-pad", 3, "--model.pixel-stem-width", 0, *TINY_POLICY)
    assert json.loads((tmp_path / "aug" / "config.json").read_text())["augment_views"] == 2
    res = run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "bad",
              "--augment-views", 2, "--augment-pad", 0, "--model.pixel-stem-width", 0, code=2)
    one_line_error(res, "augment_pad")
    # colour jitter with a pixel stem: the stem sees the same augmented copy as the latents
    _, d, _ = encode_run_data(ds, tok, ds[0].cameras, 0.34, views=2, pad=0, seed=0, keep_frames=True, color=0.4)
    T = len(d[0]["action"])
    assert d[0]["view_frames"].shape == (T, 2, *d[0]["frames"].shape[1:]) and d[0]["view_frames"].dtype == torch.uint8
    assert not torch.equal(d[0]["view_frames"][:, 0], d[0]["frames"])
    from robodream.data.windows import EpisodeTable

    table = EpisodeTable.from_episodes(d)
    w = table.windows(torch.tensor([0, 1]), 4, [], view=torch.tensor([0, 2]))
    assert torch.equal(w["ref_frames"][0], table.frames[0]) and torch.equal(w["ref_frames"][1], table.view_frames[1, 1])
    run("train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "aug2", "--steps", 2,
        "--augment-views", 1, "--augment-pad", 2, "--augment-color", 0.3, "--pixel-stem-width", 8, *TINY_POLICY)
    assert json.loads((tmp_path / "aug2" / "config.json").read_text())["augment_color"] == 0.3


def test_policy_with_pixel_stem_and_data_weights(work, tmp_path):
    """Raw frames reach a pixel-stem policy (trained, saved, loaded and run in closed loop);
    --data-weight weights the datasets and must give one weight per dataset."""
    from robodream.data.lerobot import LeRobotDataset
    from robodream.policy.runner import PolicyRunner
    from robodream.policy.train import load_policy

    out = tmp_path / "stem"
    run("train", "policy", "--data", work / "ds", "--data", work / "ds", "--data-weight", "3,1", "--tokenizer",
        work / "tok", "--out", out, "--steps", 2, "--model.pixel-stem-width", 8, *TINY_POLICY)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["data_weight"] == [3.0, 1.0] and cfg["model"]["pixel_stem_width"] == 8
    policy, tok, _ = load_policy(out)
    ds = LeRobotDataset(work / "ds")
    images = np.stack([ds.frames(0, c)[0] for c in ds.cameras])
    runner = PolicyRunner(policy, tok, policy.cfg.tasks[0])
    a = runner.predict_chunk(images, ds.episode(0).state[0])
    assert a.shape == (policy.cfg.horizon, policy.cfg.action_dim) and np.isfinite(a).all()
    res = run("train", "policy", "--data", work / "ds", "--data-weight", "1,2", "--tokenizer", work / "tok",
              "--out", tmp_path / "bad3", code=2)
    one_line_error(res, "data_weight")


# ----------------------------------------------------------------------------- bad input
def test_bad_training_options_leave_nothing(work, tmp_path):
    common = ["--data", work / "ds", "--tokenizer", work / "tok"]
    for opts, needle in ((["--batch-size", 0], "batch_size must be >= 1"), (["--steps", 0], "steps must be >= 1"),
                         (["--steps", -3], "steps must be >= 1"), (["--batch-size", 6, "--grad-accum-steps", 4],
                                                                   "not divisible")):
        res = run("train", "policy", *common, "--out", tmp_path / "p", *opts, code=2)
        one_line_error(res, needle)
        assert not (tmp_path / "p").exists()
    (tmp_path / "file").write_text("x")
    res = run("train", "policy", *common, "--out", tmp_path / "file", code=2)
    one_line_error(res, "is a file")
    res = run("train", "tokenizer", "--out", tmp_path / "t", code=2)
    one_line_error(res, "--data")


def test_non_finite_actions_are_a_dataset_error(tmp_path, work):
    """A dataset written elsewhere with a NaN action (robodream's writer refuses them)."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    shutil.copytree(work / "ds", tmp_path / "nan")
    path = next((tmp_path / "nan" / "data").rglob("*.parquet"))
    table = pq.read_table(path)
    actions = np.stack(table["action"].to_numpy(zero_copy_only=False)).astype(np.float32)
    actions[3, 1] = np.nan  # episode 0, frame 3
    col = pa.FixedSizeListArray.from_arrays(pa.array(actions.ravel()), actions.shape[1])
    pq.write_table(table.set_column(table.schema.get_field_index("action"), "action", col), path)
    res = run("train", "policy", "--data", tmp_path / "nan", "--tokenizer", work / "tok", "--out", tmp_path / "p",
              *TINY_POLICY, code=2)
    one_line_error(res, "episode 0", "non-finite action", "frame 3")
    assert not (tmp_path / "p").exists()  # no half-made run blocks a rerun


def test_one_episode_dataset_states_the_missing_heldout_split(tmp_path):
    run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "one", "--image-size", 32)
    res = run("train", "tokenizer", "--data", tmp_path / "one", "--out", tmp_path / "tok", "--steps", 2,
              "--batch-size", 8)
    assert "nan" not in res.output.lower() and "no held-out" in res.output
    r = json.loads((tmp_path / "tok" / "results.json").read_text())  # valid JSON: no bare NaN
    assert r["psnr_heldout"] is None and "single episode" in r["heldout"] and math.isfinite(r["psnr_train"])


# ----------------------------------------------------------------------------- registry, files, imports
def test_any_run_loads_by_its_model_type(work, tmp_path):
    from robodream.policy.modeling import GigaWorldPolicy
    from robodream.tokenizer.model import ImageTokenizer
    from robodream.train.run_dir import load_run

    assert isinstance(load_run(work / "tok"), ImageTokenizer)
    assert isinstance(load_run(work / "pol")[0], GigaWorldPolicy)
    (tmp_path / "alien").mkdir()
    (tmp_path / "alien" / "config.json").write_text(json.dumps({"model_type": "alien"}))
    with pytest.raises(CheckpointError, match="no loader is registered"):
        load_run(tmp_path / "alien")


def test_files_are_world_readable(work):
    for name in ("config.json", "meta.json", "results.json", "model.safetensors", "normalization.json"):
        assert (work / "pol" / name).stat().st_mode & 0o777 == 0o644, name
    ckpt = next((work / "pol" / "checkpoints").glob("step_*"))
    assert (ckpt / "trainer_state.json").stat().st_mode & 0o777 == 0o644


def test_system_cli_modules_import_on_their_own():
    for mod in ("robodream.world_model.cli", "robodream.gaussians.cli", "robodream.tokenizer.cli",
                "robodream.policy.cli", "robodream.idm.cli", "robodream.transfer.cli"):
        subprocess.run([sys.executable, "-c", f"import {mod}"], check=True)
