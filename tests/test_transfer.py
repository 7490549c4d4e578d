"""Transfer models of the data engine: the depth warp is exact where geometry says it must be,
re-renders replay the recorded trajectory (only pixels change), the models' shapes and claims,
and the train/eval CLI verbs (resumable runs, held-out tasks, one-line errors that write nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run

from robodream.envs.meta_world import EnvConfig, MetaWorldEnv
from robodream.envs.shift import ShiftConfig
from robodream.transfer.warp import forward_warp


def _view(shift: ShiftConfig, size: int = 64, seed: int = 3):
    """RGB (H, W, 3), depth (H, W) metres, K, world-to-camera of the corner camera at reset."""
    with MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner",), image_size=size, shift=shift, depth=True)) as env:
        obs = env.reset(seed)
        K, T = env.camera_matrices("corner")
    return obs.images[0], obs.depth[0], K, T


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1 / np.mean(((a.astype(np.float64) - b) / 255) ** 2)))


# ----------------------------------------------------------------------------- depth warp
@pytest.mark.parametrize("supersample", [1, 2])
def test_warp_into_itself_reproduces_the_view(supersample):
    rgb, depth, K, T = _view(ShiftConfig())
    assert np.isinf(depth).sum() == 0 and (depth > 50).any()  # MuJoCo's far plane: the sky
    warped, hole, wdepth = forward_warp(rgb, depth, K, T, K, T, supersample=supersample)
    np.testing.assert_array_equal(warped, rgb)  # sky included: points at infinity stay put
    assert not hole.any()
    near = depth < 50
    np.testing.assert_allclose(wdepth[near], depth[near], rtol=1e-5)
    assert np.isinf(wdepth[~near]).all()


def test_warp_between_two_real_renders_matches_on_non_hole_pixels():
    """A static scene from the corner camera and from the same camera moved 10 cm left and
    turned 6 degrees: the warp of the first render agrees with the second wherever it lands."""
    a_rgb, a_depth, a_K, a_T = _view(ShiftConfig())
    b_rgb, _, b_K, b_T = _view(ShiftConfig(camera_shift="left"))
    warped, hole, _ = forward_warp(a_rgb, a_depth, a_K, a_T, b_K, b_T)
    seen = ~hole
    assert 0.02 < hole.mean() < 0.3  # the part of B that A never saw
    assert _psnr(warped[seen], b_rgb[seen]) > 20
    assert _psnr(warped[seen], b_rgb[seen]) > _psnr(a_rgb[seen], b_rgb[seen]) + 3  # geometry, not luck
    assert (warped[hole] == 0).all()  # holes left black
    with pytest.raises(ValueError, match="differ in size"):
        forward_warp(a_rgb[:32], a_depth, a_K, a_T, b_K, b_T)


# ----------------------------------------------------------------------------- paired renders
TINY = ["--dim", "32", "--depth", "1", "--n-heads", "2", "--control-width", "8", "--batch-size", "8"]


def collect(out: Path, task: str, episodes: int, *extra) -> Path:
    run("collect", "--task", task, "--episodes", episodes, "--out", out, "--image-size", 32, "--max-steps", 40,
        "--keep-failures", "--video-codec", "h264-rgb", *extra)
    return out


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """reach-v3 (training task) and reach-wall-v3 (evaluation task) with depth and segmentation,
    a dataset without depth, a tokenizer; 32x32 images, 40-step episodes."""
    w = tmp_path_factory.mktemp("transfer")
    collect(w / "reach", "reach-v3", 3, "--with-depth", "--with-segmentation")
    collect(w / "wall", "reach-wall-v3", 1, "--with-depth", "--with-segmentation")
    collect(w / "nodepth", "reach-wall-v3", 1)
    run("train", "tokenizer", "--data", w / "reach", "--out", w / "tok", "--steps", 4, "--batch-size", 8)
    return w


def test_render_pairs_replays_the_trajectory_and_changes_only_pixels(work):
    from robodream.data.lerobot import LeRobotDataset
    from robodream.transfer.pairs import render_pairs

    ds = LeRobotDataset(work / "reach")
    same = render_pairs(ds, ShiftConfig(), "corner", [1], segmentation=True, cameras_matrices=True)[0]
    assert same["max_state_error"] == 0.0 and same["seed"] == 1
    np.testing.assert_array_equal(same["target_rgb"], same["source_rgb"])  # no shift: the recording, exactly
    assert same["source_depth"].shape == (40, 32, 32) and same["source_segmentation"].dtype == np.uint8
    np.testing.assert_array_equal(same["T_dst"], same["T_src"])
    look = render_pairs(ds, ShiftConfig(appearance="dark-wood"), "corner", [1], cameras_matrices=True)[0]
    again = render_pairs(ds, ShiftConfig(appearance="dark-wood"), "corner", [1])[0]
    np.testing.assert_array_equal(look["target_rgb"], again["target_rgb"])  # deterministic
    assert look["max_state_error"] == 0.0 and np.abs(look["target_rgb"].astype(int) - look["source_rgb"]).mean() > 5
    np.testing.assert_array_equal(look["T_dst"], look["T_src"])  # an appearance moves no camera
    moved = render_pairs(ds, ShiftConfig(camera_shift="random"), "corner", [1], cameras_matrices=True)[0]
    assert moved["max_state_error"] == 0.0 and np.abs(moved["T_dst"] - moved["T_src"]).max() > 1e-3
    wrist = render_pairs(ds, ShiftConfig(camera_shift="random"), "behindGripper", [1])[0]
    np.testing.assert_array_equal(wrist["target_rgb"], wrist["source_rgb"])  # mounted on the robot: unmoved


def test_render_pairs_names_a_missing_feature(work):
    from robodream.data.lerobot import LeRobotDataset
    from robodream.errors import DatasetError
    from robodream.transfer.pairs import render_pairs

    with pytest.raises(DatasetError, match="observation.depth.corner"):
        render_pairs(LeRobotDataset(work / "nodepth"), ShiftConfig(), "corner", [0])
    with pytest.raises(DatasetError, match="no camera 'topview'"):
        render_pairs(LeRobotDataset(work / "reach"), ShiftConfig(), "topview", [0])


# ----------------------------------------------------------------------------- models
def tiny_model(kind: str, refiner_width: int = 0):
    from robodream.transfer.modeling import TransferConfig, build_transfer

    torch.manual_seed(0)
    model = build_transfer(TransferConfig(kind=kind, latent_channels=4, latent_size=4, image_size=16, dim=32,
                                          depth=1, n_heads=2, control_width=8, refiner_width=refiner_width)).eval()
    with torch.no_grad():  # leave the zero-initialised gates and read-out, so every input shows in the output
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


@pytest.mark.parametrize("kind", ["appearance", "view"])
def test_model_shapes_and_every_condition_matters(kind):
    from robodream.transfer.modeling import POSE_DIM

    model = tiny_model(kind)
    B, g = 3, torch.Generator().manual_seed(0)
    if kind == "appearance":
        control = model.make_control(torch.rand(B, 16, 16, generator=g) + 0.3, torch.randint(0, 7, (B, 16, 16), generator=g))
        pose = None
    else:
        control = model.make_control(torch.randint(0, 256, (B, 16, 16, 3), generator=g, dtype=torch.uint8),
                                     torch.rand(B, 16, 16, generator=g) > 0.8, torch.rand(B, 16, 16, generator=g) + 0.3)
        pose = torch.randn(B, POSE_DIM, generator=g)
    assert control.shape == (B, model.cfg.control_channels, 16, 16)
    ref = torch.randn(B, 4, 4, 4, generator=g)
    x0 = torch.randn(B, 4, 4, 4, generator=g)
    loss, logs = model.loss(x0, control, ref, pose, generator=torch.Generator().manual_seed(1))
    assert loss.dim() == 0 and loss > 0 and logs["loss"] == float(loss.detach())
    out = model.generate(control, ref, pose, steps=2, generator=torch.Generator().manual_seed(2))
    assert out.shape == (B, 4, 4, 4)
    again = model.generate(control, ref, pose, steps=2, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(out, again)  # seeded noise: reproducible
    for changed in (dict(control=control.flip(0)), dict(reference=ref + 1),
                    *([dict(pose=pose + 1)] if pose is not None else [])):
        kw = {"control": control, "reference": ref, "pose": pose, **changed}
        other = model.generate(kw["control"], kw["reference"], kw["pose"], steps=2, generator=torch.Generator().manual_seed(2))
        assert not torch.allclose(other, out), list(changed)
    with pytest.raises(ValueError, match="control must be"):
        model(x0, torch.zeros(B), control[..., :8, :8], ref, pose)


def test_appearance_prior_pastes_the_same_class_and_recolours_the_rest():
    """A hand-made 2x2 frame: pixels of the reference's class at that pixel come from the
    reference; the others are the source times the class's gain (reference mean / source mean)."""
    from robodream.transfer.modeling import appearance_prior

    u8 = lambda a: torch.tensor(a, dtype=torch.uint8)[None]  # noqa: E731
    seg = torch.tensor([[[3, 3], [4, 4]]])  # table, table / robot, robot
    ref_seg = torch.tensor([[[3, 4], [4, 4]]])  # the robot has moved into pixel (0, 1) in the reference
    source = u8([[[100, 100, 100], [50, 50, 50]], [[40, 40, 40], [60, 60, 60]]])
    source_ref = u8([[[100, 100, 100], [20, 20, 20]], [[20, 20, 20], [20, 20, 20]]])  # robot grey 20
    reference = u8([[[200, 0, 0], [40, 80, 20]], [[40, 80, 20], [40, 80, 20]]])  # robot now (40, 80, 20)
    prior, same = appearance_prior(source, seg, reference, ref_seg, source_ref, min_pixels=1)
    assert same[0, 0].tolist() == [[1, 0], [1, 1]]
    torch.testing.assert_close(prior[0, :, 0, 0] * 255, torch.tensor([200.0, 0, 0]))  # pasted
    torch.testing.assert_close(prior[0, :, 1, 1] * 255, torch.tensor([40.0, 80, 20]))  # pasted (robot on robot)
    # pixel (0, 1): table in the frame, robot in the reference -> the source's 50 x table gain (200/100, 0, 0)
    gain = (torch.tensor([200.0, 0, 0]) + 1) / (100 + 1)
    torch.testing.assert_close(prior[0, :, 0, 1] * 255, (50 * gain).clamp(0, 255), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["appearance", "view"])
def test_pixel_refiner_starts_at_the_prior_and_trains_on_the_decoded_estimate(kind):
    from robodream.transfer.modeling import POSE_DIM

    model = tiny_model(kind, refiner_width=4)
    torch.nn.init.zeros_(model.refiner.out.weight)  # as built: the residual starts at zero
    torch.nn.init.zeros_(model.refiner.out.bias)
    B, g = 2, torch.Generator().manual_seed(0)
    rgb = lambda: torch.randint(0, 256, (B, 16, 16, 3), generator=g, dtype=torch.uint8)  # noqa: E731
    seg = torch.randint(0, 7, (B, 16, 16), generator=g)
    if kind == "appearance":
        control = model.make_control(torch.rand(B, 16, 16, generator=g) + 0.3, seg)
        pixels = {"source": rgb(), "segmentation": seg, "reference_rgb": rgb(), "reference_segmentation": seg.flip(1),
                  "source_reference": rgb()}
        pose = None
    else:
        hole = torch.rand(B, 16, 16, generator=g) > 0.7
        control = model.make_control(rgb(), hole, torch.rand(B, 16, 16, generator=g) + 0.3)
        pixels = {"warped": rgb(), "hole": hole}
        pose = torch.randn(B, POSE_DIM, generator=g)
    decoded = torch.rand(B, 16, 16, 3, generator=g)
    out = model.refine(decoded, control, **pixels)
    prior, _ = model.prior(decoded, **pixels)
    torch.testing.assert_close(out, prior.permute(0, 2, 3, 1).clamp(0, 1))
    if kind == "view":  # holes take the decoded latents, the rest the warp
        h = pixels["hole"]
        torch.testing.assert_close(out[h], decoded[h])
        torch.testing.assert_close(out[~h], pixels["warped"][~h].float() / 255)
    up = torch.nn.Upsample(scale_factor=4)
    decode = lambda z: torch.sigmoid(up(z[:, :3]))  # noqa: E731  (B, 3, 16, 16) in [0, 1]
    x0, ref = torch.randn(B, 4, 4, 4, generator=g), torch.randn(B, 4, 4, 4, generator=g)
    loss, logs = model.loss(x0, control, ref, pose, generator=torch.Generator().manual_seed(1),
                            pixels=pixels, target_rgb=rgb(), decode=decode)
    assert logs["loss"] == pytest.approx(logs["loss_flow"] + logs["loss_pixel"]) and logs["loss_pixel"] > 0
    loss.backward()
    assert model.refiner.out.weight.grad.abs().sum() > 0  # the refiner trains
    with pytest.raises(ValueError, match="pixel refiner"):
        model.loss(x0, control, ref, pose)


def test_runs_from_before_the_refiner_load_without_one():
    from robodream.train.run_dir import run_config_from_dict
    from robodream.transfer.modeling import TransferConfig

    assert run_config_from_dict(TransferConfig, {"kind": "view"}).refiner_width == 0  # a saved config of then
    assert TransferConfig().refiner_width > 0  # new runs refine


def test_config_errors():
    from robodream.errors import ConfigError
    from robodream.transfer.modeling import TransferConfig

    with pytest.raises(ConfigError, match="kind"):
        TransferConfig(kind="text")
    with pytest.raises(ConfigError, match="power of 2"):
        TransferConfig(image_size=48, latent_size=8)


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def runs(work) -> Path:
    for kind in ("appearance", "view"):
        run("train", "transfer", "--kind", kind, "--data", work / "reach", "--tokenizer", work / "tok",
            "--out", work / kind, "--steps", 4, "--checkpoint-every", 2, *TINY)
    return work


@pytest.mark.parametrize("kind", ["appearance", "view"])
def test_train_transfer_run(runs, kind):
    from robodream.train.run_dir import load_run
    from robodream.transfer.modeling import AppearanceTransfer, ViewTransfer

    d = runs / kind
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["model_type"] == "control_transfer" and cfg["model"]["kind"] == kind
    assert cfg["model"]["camera"] == "corner" and cfg["train_seeds"] == {"reach-v3": [0, 1, 2]}
    res = json.loads((d / "results.json").read_text())
    assert res["steps"] == 4 and res["n_heldout_frames"] == 40 and res["n_train_frames"] == 80
    for key in ("loss", "psnr", "baseline_psnr"):
        assert np.isfinite(res[key]), key
    model, tok, _ = load_run(d)
    assert isinstance(model, AppearanceTransfer if kind == "appearance" else ViewTransfer)
    # resumable: more steps continue the run; a changed model is refused and writes nothing
    run("train", "transfer", "--out", d, "--resume", "--steps", 6)
    assert json.loads((d / "results.json").read_text())["steps"] == 6
    before = (d / "config.json").read_bytes()
    one_line_error(run("train", "transfer", "--out", d, "--resume", "--steps", 8, "--dim", 64, code=2), "model.dim")
    assert (d / "config.json").read_bytes() == before


@pytest.mark.parametrize("kind", ["appearance", "view"])
def test_eval_transfer_on_an_unseen_task(runs, kind, tmp_path):
    res = run("eval", "transfer", "--transfer", runs / kind, "--data", runs / "wall", "--out", tmp_path / "ev",
              "--episodes", 3, "--sample-steps", 2)
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert r["kind"] == kind and r["task"] == "reach-wall-v3" and r["n_episodes"] == 1 and r["sample_steps"] == 2
    assert r["n_frames"] == (39 if kind == "appearance" else 40)  # appearance: frame 0 is the reference
    for row in ("model", "baseline", "tokenizer"):
        assert np.isfinite(r[row]["psnr"]) and -1 <= r[row]["ssim"] <= 1, row
    assert r["psnr_gain_db"] == pytest.approx(r["model"]["psnr"] - r["baseline"]["psnr"])
    assert r["episodes"][0]["max_state_error"] == 0.0 and "transfer on 1 episodes" in res.output
    if kind == "view":
        assert 0 < r["hole_fraction"] < 1 and np.isfinite(r["source_copy"]["psnr"])
    one_line_error(run("eval", "transfer", "--transfer", runs / kind, "--data", runs / "wall", "--out",
                       tmp_path / "ev", code=2), "--overwrite")


def test_transfer_bad_input_is_one_line_and_writes_nothing(runs, tmp_path):
    w, out = runs, tmp_path / "x"
    # a dataset without depth, for training and for evaluation
    one_line_error(run("train", "transfer", "--data", w / "nodepth", "--tokenizer", w / "tok", "--out", out, *TINY,
                       code=2), "observation.depth.corner")
    one_line_error(run("eval", "transfer", "--transfer", w / "view", "--data", w / "nodepth", "--out", out, code=2),
                   "observation.depth.corner")
    # a task the run trained on under shifted appearances
    one_line_error(run("eval", "transfer", "--transfer", w / "appearance", "--data", w / "reach", "--out", out,
                       code=2), "reach-v3", "trained on")
    # another model's run; a wrist camera for view transfer; another image size than the tokenizer's
    one_line_error(run("eval", "transfer", "--transfer", w / "tok", "--data", w / "wall", "--out", out, code=2),
                   "image_tokenizer", "control_transfer")
    one_line_error(run("train", "transfer", "--kind", "view", "--camera", "behindGripper", "--data", w / "reach",
                       "--tokenizer", w / "tok", "--out", out, *TINY, code=2), "behindGripper", "static camera")
    collect(tmp_path / "big", "reach-wall-v3", 1, "--with-depth", "--image-size", 64)
    one_line_error(run("eval", "transfer", "--transfer", w / "view", "--data", tmp_path / "big", "--out", out,
                       code=2), "64x64", "32x32")
    assert not out.exists()


def test_generate_writes_synthetic_data_that_train_policy_mixes_in(runs, tmp_path):
    """generate: transferred copies with the recorded motion and provenance; view transfer copies
    the wrist camera; appearance transfer needs a run per camera; train policy mixes real and
    synthetic data with --data-weight; a synthetic dataset is refused where real data is needed."""
    from robodream.data.lerobot import LeRobotDataset

    w = runs
    run("generate", "--kind", "view", "--source", w / "wall", "--transfer", w / "view", "--out", tmp_path / "v",
        "--copies", 2, "--sample-steps", 1, "--video-codec", "h264-rgb")
    src, syn = LeRobotDataset(w / "wall"), LeRobotDataset(tmp_path / "v")
    assert syn.num_episodes == 2 and syn.cameras == src.cameras and syn.tasks == src.tasks
    for i in (0, 1):
        np.testing.assert_array_equal(syn.episode(i).action, src.episode(0).action)
        np.testing.assert_array_equal(syn.episode(i).state, src.episode(0).state)
        np.testing.assert_array_equal(syn.frames(i, "behindGripper"), src.frames(0, "behindGripper"))
    assert not np.array_equal(syn.frames(0, "corner"), syn.frames(1, "corner"))  # two target cameras
    prov = json.loads((tmp_path / "v" / "meta" / "robodream.json").read_text())
    assert prov["synthetic"] == "view" and prov["source"] == str(w / "wall") and set(prov["models"]) == {"corner"}
    src_prov = json.loads((w / "wall" / "meta" / "robodream.json").read_text())
    assert prov["seeds"] == src_prov["seeds"] * 2 and prov["shift"]["seeds"] == [2000, 2001]

    one_line_error(run("generate", "--kind", "appearance", "--source", w / "wall", "--transfer", w / "appearance",
                       "--out", tmp_path / "a", code=2), "behindGripper", "every camera")
    run("train", "transfer", "--kind", "appearance", "--camera", "behindGripper", "--data", w / "reach",
        "--tokenizer", w / "tok", "--out", tmp_path / "wrist", "--steps", 2, *TINY)
    run("generate", "--kind", "appearance", "--source", w / "wall", "--transfer", w / "appearance", "--transfer",
        tmp_path / "wrist", "--out", tmp_path / "a", "--sample-steps", 1)
    assert json.loads((tmp_path / "a" / "meta" / "robodream.json").read_text())["synthetic"] == "appearance"

    run("train", "policy", "--data", w / "wall", "--data", tmp_path / "a", "--data-weight", "1,3", "--tokenizer",
        w / "tok", "--out", tmp_path / "pol", "--steps", 2, "--dim", 32, "--depth", 1, "--horizon", 8,
        "--n-action-steps", 4, "--video-stride", 4, "--action-expert-dim", 16, "--batch-size", 8)
    assert json.loads((tmp_path / "pol" / "config.json").read_text())["data_weight"] == [1.0, 3.0]

    for args in (["generate", "--kind", "view", "--source", tmp_path / "v", "--transfer", w / "view", "--out",
                  tmp_path / "vv"],
                 ["train", "transfer", "--kind", "view", "--data", tmp_path / "v", "--tokenizer", w / "tok",
                  "--out", tmp_path / "vv", *TINY]):
        one_line_error(run(*args, code=2), "synthetic (view", "real demonstrations")
    assert not (tmp_path / "vv").exists()



def test_render_copies_are_the_simulators_render_of_the_same_targets(work, tmp_path):
    """render_copies: the copies generate_transfer would write, rendered by replaying the recording
    under the same targets; motion and wrist frames as recorded, provenance says simulator."""
    from robodream.data.lerobot import LeRobotDataset
    from robodream.errors import DatasetError
    from robodream.transfer.generate import render_copies
    from robodream.transfer.pairs import render_pairs
    from robodream.transfer.train import training_shift

    src = LeRobotDataset(work / "wall")
    r = render_copies("view", work / "wall", tmp_path / "v", copies=2, video_codec="h264-rgb")
    syn = LeRobotDataset(tmp_path / "v")
    assert r["n_episodes"] == syn.num_episodes == 2 and syn.cameras == src.cameras
    for c in (0, 1):
        np.testing.assert_array_equal(syn.episode(c).action, src.episode(0).action)
        np.testing.assert_array_equal(syn.frames(c, "behindGripper"), src.frames(0, "behindGripper"))
        want = render_pairs(src, training_shift("view", 1.0, 2000 + c), "corner", [0])[0]["target_rgb"]
        np.testing.assert_array_equal(syn.frames(c, "corner"), want)
    assert not np.array_equal(syn.frames(0, "corner"), syn.frames(1, "corner"))
    prov = json.loads((tmp_path / "v" / "meta" / "robodream.json").read_text())
    assert prov["synthetic"] == "view" and prov["renderer"] == "simulator" and prov["shift"]["seeds"] == [2000, 2001]

    render_copies("appearance", work / "wall", tmp_path / "a", video_codec="h264-rgb")
    app = LeRobotDataset(tmp_path / "a")
    for cam in src.cameras:  # an appearance change changes every camera
        assert np.abs(app.frames(0, cam).astype(int) - src.frames(0, cam)).mean() > 1
    with pytest.raises(DatasetError, match="synthetic"):
        render_copies("view", tmp_path / "a", tmp_path / "x")
    assert not (tmp_path / "x").exists()
