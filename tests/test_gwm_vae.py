"""GWM set VAE: permutation invariance, Chamfer against the plain definition, a loss that trains, and
``robodream train gwm-vae`` end to end (run directory, resume, bad input)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from robodream.errors import CheckpointError, ConfigError
from robodream.gwm.pixel import GAUSSIAN_DIM, pack, unpack
from robodream.gwm.vae import GaussianSetVAE, SetVAEConfig, canonical_order, chamfer

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = SetVAEConfig(n_gaussians=64, n_latents=16, latent_dim=4, dim=32, heads=2, decoder_layers=1, fourier_bands=2,
                    encoder_neighbors=0)


def random_gaussians(B: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(B, n, 3, generator=g) * 0.4 + torch.tensor([-0.2, 0.4, 0.0])
    quats = torch.nn.functional.normalize(torch.randn(B, n, 4, generator=g), dim=-1)
    scales = torch.rand(B, n, 3, generator=g) * 0.02 + 0.01
    return pack(means, quats, scales, torch.full((B, n), 0.9), torch.rand(B, n, 3, generator=g))


@pytest.mark.parametrize("neighbors", [0, 8])
def test_encoder_is_permutation_invariant(neighbors):
    model = GaussianSetVAE(replace(TINY, encoder_neighbors=neighbors)).eval()
    g = random_gaussians(2, 64)
    model.set_anchors(unpack(g)["means"].flatten(0, 1))
    g[:, 5] = g[:, 6]  # exact duplicates (float16 storage makes ties common) do not break it
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a, la = model.encode(g)
        b, lb = model.encode(g[:, perm])
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(la, lb)
    torch.testing.assert_close(canonical_order(g), canonical_order(g[:, perm]))


def test_decoder_gives_valid_gaussians_and_bad_shapes_are_clear():
    model = GaussianSetVAE(TINY)
    out = model.decode(torch.randn(3, 16, 4))
    assert out.shape == (3, 64, GAUSSIAN_DIM) and torch.isfinite(out).all()
    assert torch.allclose(out[..., 3:7].norm(dim=-1), torch.ones(3, 64), atol=1e-5)
    assert (out[..., 7:10] > 0).all() and ((out[..., 10] > 0) & (out[..., 10] < 1)).all()
    with pytest.raises(ConfigError, match="takes"):
        model.encode(torch.zeros(1, 64, 13))
    with pytest.raises(ConfigError, match="multiple"):
        SetVAEConfig(n_gaussians=100, n_latents=16)


def test_anchor_decoding_starts_at_the_anchors_and_needs_fixed_queries():
    cfg = replace(TINY, decode_means="anchor", anchor_radius=0.05, extent=0.5)
    model = GaussianSetVAE(cfg)
    anchors = torch.rand(40, 3, generator=torch.Generator().manual_seed(1))
    model.set_anchors(anchors)
    out = model.decode(torch.randn(2, 16, 4))
    base = model.anchors.repeat_interleave(4, 0)  # 64 Gaussians, 4 per latent vector
    # head weights start near zero: every decoded centre within a few mm of its latent's anchor
    assert (out[..., :3] - base).abs().max() < 0.01
    with pytest.raises(ConfigError, match="needs query_mode 'fixed'"):
        SetVAEConfig(decode_means="anchor", query_mode="frame", encoder_neighbors=0)
    with pytest.raises(ConfigError, match="decode_means"):
        SetVAEConfig(decode_means="relative")
    with pytest.raises(ConfigError, match="encoder_neighbors"):
        SetVAEConfig(encoder_neighbors=4, query_mode="frame", decode_means="absolute")


def test_a_vae_saved_before_anchor_decoding_loads_as_absolute():
    from robodream.config import from_dict, to_dict
    from robodream.gwm.train import SetVAERunConfig

    d = to_dict(SetVAERunConfig())
    del d["model"]["decode_means"], d["model"]["encoder_neighbors"], d["model"]["anchor_radius"]
    old = from_dict(SetVAERunConfig, d, legacy=True).model  # a saved run
    new = from_dict(SetVAERunConfig, d).model  # a new config
    assert (old.decode_means, old.encoder_neighbors) == ("absolute", 0)
    assert (new.decode_means, new.encoder_neighbors) == ("anchor", 16)


def test_chamfer_equals_the_plain_definition_in_value_and_gradient():
    a = torch.randn(2, 30, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, 40, 3, dtype=torch.float64)
    d = torch.cdist(a, b).pow(2)
    ref = d.min(2).values.mean(1) + d.min(1).values.mean(1)
    (ga,) = torch.autograd.grad(ref.sum(), a)
    fast = chamfer(a, b)
    (gb,) = torch.autograd.grad(fast.sum(), a)
    torch.testing.assert_close(fast, ref)
    torch.testing.assert_close(ga, gb)


@pytest.mark.parametrize("decode_means, neighbors", [("absolute", 0), ("anchor", 0), ("anchor", 8)])
def test_the_loss_trains_a_tiny_vae(decode_means, neighbors):
    torch.manual_seed(0)
    model = GaussianSetVAE(replace(TINY, decode_means=decode_means, encoder_neighbors=neighbors))
    g = random_gaussians(4, 64)
    model.set_anchors(unpack(g)["means"].flatten(0, 1))
    K = torch.tensor([[30.0, 0, 16], [0, 30.0, 16], [0, 0, 1]])
    T = torch.eye(4)
    T[:3, :3] = torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # looks along +y from y = -0.5
    T[:3, 3] = torch.tensor([0.0, 0.1, 0.5])
    Ks, Ts = K.expand(4, 1, 3, 3), T.expand(4, 1, 4, 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    first = None
    for _ in range(60):
        loss, logs = model.loss(g, torch.zeros(4, 3), Ks, Ts, (32, 32), generator=gen)
        first = first or logs
        opt.zero_grad()
        loss.backward()
        opt.step()
    # anchor decoding starts near the points (its anchors are theirs) and still cuts the distance by 40%
    assert logs["chamfer"] < (0.3 if decode_means == "absolute" else 0.6) * first["chamfer"]
    assert logs["render_l1"] < first["render_l1"]


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    from cli_helpers import run

    w = tmp_path_factory.mktemp("gwmvae")
    run("collect", "--task", "reach-v3", "--episodes", 2, "--out", w / "data", "--image-size", 32, "--max-steps", 8,
        "--keep-failures", "--cameras", "corner,corner3,corner4", "--with-depth")
    run("gaussians", "--data", w / "data", "--out", w / "g", "--n", 64, "--cameras", "corner,corner3")
    args = ["train", "gwm-vae", "--gaussians", w / "g", "--n-gaussians", 64, "--n-latents", 16, "--latent-dim", 4,
            "--dim", 32, "--heads", 2, "--decoder-layers", 1, "--steps", 6, "--batch-size", 2, "--val-every", 3,
            "--checkpoint-every", 3, "--val-frames", 4, "--heldout-fraction", 0.5]
    res = run(*args, "--out", w / "run")
    return w, args, res


def test_train_gwm_vae_writes_a_run_that_loads(vae_run):
    from robodream.gwm.train import load_set_vae
    from robodream.train.run_dir import load_run

    w, _, res = vae_run
    assert "decoded PSNR" in res.output
    r = json.loads((w / "run" / "results.json").read_text())
    assert r["steps"] == 6 and r["n_train_frames"] == 8 and r["n_heldout_frames"] == 8
    assert 0 < r["psnr_db"] < 100 and r["chamfer"] > 0
    cfg = json.loads((w / "run" / "config.json").read_text())
    assert cfg["model_type"] == "gwm_set_vae" and cfg["model"]["extent"] > 0
    model, _ = load_set_vae(w / "run")
    assert model.cfg.n_gaussians == 64
    model2, _ = load_run(w / "run")
    assert isinstance(model2, GaussianSetVAE)


def test_train_gwm_vae_resumes_and_refuses_bad_input(vae_run, tmp_path):
    from cli_helpers import one_line_error, run

    w, args, _ = vae_run
    run(*[a if a != 6 else 9 for a in args], "--out", w / "run", "--resume")
    assert json.loads((w / "run" / "results.json").read_text())["steps"] == 9
    res = run(*args, "--out", w / "run", code=2)
    one_line_error(res, "already exists")
    res = run(*[a if a != 64 else 128 for a in args], "--out", tmp_path / "x", code=2)
    one_line_error(res, "64 Gaussians a frame")
    res = run("train", "gwm-vae", "--gaussians", w / "data", "--out", tmp_path / "y", code=2)
    one_line_error(res, "not a per-frame Gaussian directory")
    with pytest.raises(CheckpointError):
        from robodream.gwm.train import load_set_vae

        load_set_vae(w / "data")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


# ----------------------------------------------------------------------------- latent dynamics
TINY_DYN = dict(n_latents=16, latent_dim=4, action_dim=4, state_dim=0, dim=32, heads=2, depth=1, sample_steps=2)


def test_dynamics_shapes_rollout_and_wrong_action_dimension():
    from robodream.gwm.dynamics import GWMDynamics, GWMDynamicsConfig

    model = GWMDynamics(GWMDynamicsConfig(**TINY_DYN)).eval()
    ctx = torch.randn(3, 2, 16, 4)
    out = model.predict(ctx, torch.randn(3, 4), generator=torch.Generator().manual_seed(0))
    assert out["latents"].shape == (3, 16, 4) and out["reward"].shape == (3,) and out["success_prob"].shape == (3,)
    roll = model.rollout(ctx, torch.randn(3, 5, 4))
    assert roll["latents"].shape == (3, 5, 16, 4) and torch.isfinite(roll["latents"]).all()
    with pytest.raises(ConfigError, match="trained on 4-dimensional actions"):
        model.predict(ctx, torch.randn(3, 7))
    with pytest.raises(ConfigError, match="context must be"):
        model.predict(torch.randn(3, 1, 16, 4), torch.randn(3, 4))
    with_state = GWMDynamics(GWMDynamicsConfig(**{**TINY_DYN, "state_dim": 3})).eval()
    out = with_state.predict(ctx, torch.randn(3, 4), torch.randn(3, 3))
    assert out["state"].shape == (3, 3)
    roll = with_state.rollout(ctx, torch.randn(3, 5, 4), torch.randn(3, 3))
    assert roll["state"].shape == (3, 5, 3)
    with pytest.raises(ConfigError, match="3-number state"):
        with_state.predict(ctx, torch.randn(3, 4))


def test_dynamics_learns_an_action_dependent_transition():
    from robodream.gwm.dynamics import GWMDynamics, GWMDynamicsConfig

    torch.manual_seed(0)
    model = GWMDynamics(GWMDynamicsConfig(**{**TINY_DYN, "depth": 2}))
    gen = torch.Generator().manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    base = torch.randn(16, 4, generator=gen)

    def batch(n):
        a = torch.randn(n, 4, generator=gen)
        ctx = base.expand(n, 2, 16, 4) + 0.01 * torch.randn(n, 2, 16, 4, generator=gen)
        target = base + a[:, None, :]  # the next latents move with the action
        return ctx, target, a

    for _ in range(300):
        ctx, target, a = batch(32)
        loss, _ = model.loss(ctx, target, a, a[:, 0], (a[:, 1] > 0).float(), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ctx, target, a = batch(64)
    model.eval()
    pred = model.predict(ctx, a, steps=8, generator=gen)
    err = (pred["latents"] - target).pow(2).mean()
    copy = (ctx[:, -1] - target).pow(2).mean()
    assert err < 0.25 * copy
    assert (pred["reward"] - a[:, 0]).abs().mean() < 0.5 * a[:, 0].abs().mean()


@pytest.fixture(scope="module")
def gwm_run(vae_run):
    from cli_helpers import run

    w, _, _ = vae_run
    args = ["train", "gwm", "--gaussians", w / "g", "--vae", w / "run", "--dim", 32, "--heads", 2, "--depth", 1,
            "--sample-steps", 2, "--steps", 4, "--batch-size", 2, "--val-every", 2, "--val-windows", 4,
            "--heldout-fraction", 0.5]
    res = run(*args, "--out", w / "gwm")
    return w, res


def test_train_and_eval_gwm_cli(gwm_run, tmp_path):
    import shutil

    from cli_helpers import one_line_error, run

    from robodream.gwm.train import load_gwm

    w, res = gwm_run
    shutil.copytree(w / "gwm", tmp_path / "gwm")
    assert "copy-last" in res.output
    r = json.loads((tmp_path / "gwm" / "results.json").read_text())
    assert r["steps"] == 4 and r["latent_mse"] > 0 and r["copy_last_latent_mse"] >= 0
    model, vae, cfg = load_gwm(tmp_path / "gwm")
    assert model.cfg.n_latents == 16 and model.cfg.action_dim == 4 and vae.cfg.n_gaussians == 64
    assert model.cfg.state_dim == 4 and r["state_mae"] >= 0
    run("train", "tokenizer", "--data", w / "data", "--out", tmp_path / "tok", "--steps", 3, "--batch-size", 8)
    run("train", "world-model", "--data", w / "data", "--tokenizer", tmp_path / "tok", "--out", tmp_path / "wm",
        "--steps", 3, "--dim", 24, "--n-heads", 2, "--depth", 1, "--n-future-frames",
        2, "--frame-stride", 2, "--window", "0,3,3", "--batch-size", 4)
    res = run("eval", "gwm", "--run", tmp_path / "gwm", "--camera", "corner4", "--horizon", 4, "--starts", 1,
              "--video-world-model", tmp_path / "wm")
    assert "world model on the same" in " ".join(res.output.split())
    e = json.loads((tmp_path / "gwm" / "eval_corner4.json").read_text())
    assert e["rollouts"] == 1 and len(e["psnr_by_horizon"]) == 4 and len(e["novel_camera_psnr_by_horizon"]) == 4
    assert all(10 < x < 100 for x in e["copy_last_psnr_by_horizon"] + e["novel_camera_psnr_by_horizon"])
    v = e["video_world_model_psnr_by_horizon"]  # frame stride 2: only even horizons are predicted
    assert v[0] is None and v[2] is None and v[1] > 0 and v[3] > 0
    assert e["video_world_model_cameras"] == ["corner", "corner3", "corner4"]  # a world model takes every camera
    res = run("eval", "gwm", "--run", tmp_path / "gwm", "--camera", "topview", "--horizon", 3, code=2)
    one_line_error(res, "topview")  # the dataset has no such camera
    res = run("eval", "gwm", "--run", tmp_path / "gwm", "--camera", "corner", "--horizon", 3, code=2)
    one_line_error(res, "input camera")
    res = run("dream", "--gwm", tmp_path / "gwm", "--episode", f"{w / 'g'}:1", "--steps", 3, "--orbit", "150,-35,1.4",
              "--out", tmp_path / "orbit.mp4")
    assert (tmp_path / "orbit.mp4").stat().st_size > 0 and "orbit az 150" in res.output
    res = run("dream", "--gwm", tmp_path / "gwm", "--episode", f"{w / 'g'}:1", "--steps", 3, "--camera", "corner",
              "--out", tmp_path / "corner.mp4")
    assert (tmp_path / "corner.mp4").stat().st_size > 0
    res = run("dream", "--gwm", tmp_path / "gwm", "--episode", f"{w / 'g'}:1", "--steps", 3, "--out", tmp_path / "x.mp4",
              code=2)
    one_line_error(res, "--camera NAME or --orbit")
    res = run("dream", "--gwm", tmp_path / "gwm", "--episode", f"{w / 'g'}:1", "--steps", 30, "--camera", "corner",
              "--out", tmp_path / "x.mp4", code=2)
    one_line_error(res, "start + steps")
    res = run("train", "gwm", "--gaussians", w / "g", "--vae", w / "g", "--out", tmp_path / "bad", code=2)
    one_line_error(res)
    assert not (tmp_path / "bad").exists()


@pytest.fixture(scope="module")
def video_dynamics_run(vae_run):
    """The same latent dynamics over image-tokenizer latents (the MBRL comparison's video arm)."""
    from cli_helpers import run

    w, _, _ = vae_run
    run("train", "tokenizer", "--data", w / "data", "--out", w / "vtok", "--steps", 2, "--batch-size", 8)
    res = run("train", "gwm", "--data", w / "data", "--tokenizer", w / "vtok", "--cameras", "corner,corner3",
              "--dim", 32, "--heads", 2, "--depth", 1, "--sample-steps", 2, "--steps", 3, "--batch-size", 2,
              "--val-every", 3, "--val-windows", 4, "--heldout-fraction", 0.5, "--out", w / "vdyn")
    return w, res


def test_dynamics_over_image_tokens(video_dynamics_run, tmp_path):
    from cli_helpers import one_line_error, run

    from robodream.gwm.train import load_dynamics_observer, load_gwm

    w, res = video_dynamics_run
    cfg = json.loads((w / "vdyn" / "config.json").read_text())
    assert cfg["token_cameras"] == ["corner", "corner3"] and (w / "vdyn" / "tokenizer" / "model.safetensors").is_file()
    tok_cfg = json.loads((w / "vtok" / "config.json").read_text())["model"]
    grid = tok_cfg["image_size"] // 2 ** len(tok_cfg["channels"])
    assert cfg["model"]["n_latents"] == 2 * grid**2 and cfg["model"]["latent_dim"] == tok_cfg["latent_channels"]
    assert json.loads((w / "vdyn" / "meta.json").read_text())["representation"] == "image_tokens"
    model, observer, _ = load_dynamics_observer(w / "vdyn")
    frames = np.zeros((2, 32, 32, 3), np.uint8)
    assert observer(frames).shape == (1, model.cfg.n_latents, model.cfg.latent_dim)
    with pytest.raises(CheckpointError, match="image tokens"):
        load_gwm(w / "vdyn")
    res = run("eval", "gwm", "--run", w / "vdyn", "--camera", "corner4", "--horizon", 2, code=2)
    one_line_error(res, "image tokens")
    res = run("train", "gwm", "--data", w / "data", "--tokenizer", w / "vtok", "--gaussians", w / "g", "--vae",
              w / "run", "--out", tmp_path / "both", code=2)
    one_line_error(res, "not both")


@pytest.mark.parametrize("arm", ["mbpo_gwm", "mbpo_video", "sac"])
def test_mbrl_runs_a_tiny_learning_curve(gwm_run, video_dynamics_run, tmp_path, arm):
    from robodream.gwm.mbrl import MBRLConfig, plot_curves, run_mbrl

    w, _ = gwm_run
    cfg = MBRLConfig(task="reach-v3", arm=arm, gwm=str(w / "gwm"), video_dynamics=str(w / "vdyn"),
                     cameras=("corner", "corner3"), image_size=32,
                     real_steps=12, chunk_steps=6, episode_steps=6, eval_episodes=1, refit_steps=2, refit_batch=2,
                     model_envs=4, rollout_length=2, model_steps=16, sac_net=(16,), sac_batch=8)
    r = run_mbrl(cfg)
    assert [c["real_steps"] for c in r["curve"]] == [6, 12]
    assert all(0 <= c["success_rate"] <= 1 and c["episodes"] == 1 for c in r["curve"])
    assert r["env_steps_to_80"] in (None, 6, 12) and r["real_step_budget"] == 12
    plot_curves([r], tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 0
    with pytest.raises(ConfigError, match="unknown MBRL arm"):
        MBRLConfig(arm="dreamer")
