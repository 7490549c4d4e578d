"""GWM features as a policy's visual input (issue 16, part 4): the pooled set-VAE latents enter the
policy's prefix (cached sampler = reference sampler), ``train policy --gwm-vae`` end to end, and
``eval policy`` of such a policy, also under a camera shift; bad input is refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli_helpers import TINY_POLICY, run

from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import GigaWorldPolicy

pytestmark = pytest.mark.usefixtures("one_thread")


def test_gwm_tokens_enter_the_prefix_and_the_fast_sampler_matches():
    cfg = PolicyConfig(dim=32, depth=2, n_heads=2, action_expert_dim=16, pixel_stem_width=0, gwm_tokens=3,
                       gwm_latents=8, gwm_latent_dim=4, latent_channels=4, latent_size=4)
    assert cfg.n_prefix_tokens == 1 + 2 * 4 + 3
    torch.manual_seed(0)
    m = GigaWorldPolicy(cfg).eval()
    with torch.no_grad():  # away from AdaLN-Zero's identity start, so every input matters
        for p in m.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    st, lat = torch.randn(2, 4), torch.randn(2, 2, 4, 4, 4)
    ti, g, noise = torch.zeros(2, dtype=torch.long), torch.randn(2, 8, 4), torch.randn(2, 16, 4)
    fast = m.sample(st, lat, ti, noise=noise, gwm_latents=g).actions
    ref = m.sample(st, lat, ti, noise=noise, gwm_latents=g, use_cache=False).actions
    torch.testing.assert_close(fast, ref)
    other = m.sample(st, lat, ti, noise=noise, gwm_latents=g + 1).actions
    assert (fast - other).abs().max() > 1e-4  # the actions read the GWM features
    with pytest.raises(ValueError, match="gwm_latents"):
        m.sample(st, lat, ti, noise=noise)
    loss, _ = m(st, lat, torch.randn(2, 16, 4), ti, torch.randn(2, 4, 2, 4, 4, 4), gwm_latents=g)
    loss.backward()
    assert m.gwm_pool.queries.grad.abs().sum() > 0


@pytest.fixture(scope="module")
def gwm_policy(tmp_path_factory):
    w = tmp_path_factory.mktemp("gwmfeat")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32, "--max-steps", 10,
        "--keep-failures", "--cameras", "corner,corner3,behindGripper", "--with-depth")
    run("gaussians", "--data", w / "ds", "--out", w / "g", "--n", 64, "--cameras", "corner,corner3")
    run("train", "gwm-vae", "--gaussians", w / "g", "--n-gaussians", 64, "--n-latents", 16, "--latent-dim", 4,
        "--dim", 32, "--heads", 2, "--decoder-layers", 1, "--steps", 2, "--batch-size", 2, "--val-frames", 2,
        "--out", w / "vae")
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 2, "--batch-size", 8)
    args = ["train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--steps", 4, *TINY_POLICY,
            "--cameras", "corner,behindGripper", "--gwm-vae", w / "vae", "--gwm-tokens", 2]
    run(*args, "--out", w / "pol")
    return w, args


def test_train_policy_with_gwm_features_writes_a_self_contained_run(gwm_policy):
    w, _ = gwm_policy
    cfg = json.loads((w / "pol" / "config.json").read_text())
    assert cfg["model"]["cameras"] == ["corner", "behindGripper"]
    assert (cfg["model"]["gwm_tokens"], cfg["model"]["gwm_latents"], cfg["model"]["gwm_latent_dim"]) == (2, 16, 4)
    assert cfg["gwm"]["cameras"] == ["corner", "corner3"] and cfg["gwm"]["pixel"]["n"] == 64
    assert (w / "pol" / "gwm_vae" / "model.safetensors").is_file()
    from robodream.gwm.features import load_policy_gwm_features

    enc = load_policy_gwm_features(w / "pol", cfg)
    from robodream.envs.meta_world import EnvConfig, MetaWorldEnv

    env = MetaWorldEnv(EnvConfig(task="reach-v3", cameras=("corner", "corner3"), image_size=32, depth=True))
    try:
        obs = env.reset(100)
        enc.set_cameras_from_env(env)
        z = enc(obs.images, obs.depth)
    finally:
        env.close()
    assert z.shape == (1, 16, 4) and torch.isfinite(z).all()


@pytest.mark.parametrize("shift", [[], ["--camera-shift", "random"]])
def test_eval_policy_with_gwm_features(gwm_policy, tmp_path, shift):
    w, _ = gwm_policy
    run("eval", "policy", "--policy", w / "pol", "--task", "reach-v3", "--episodes", 1, "--max-steps", 6,
        "--videos", 1, "--out", tmp_path / "ev", "--seed-start", 500, *shift)
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert r["n_episodes"] == 1 and r["episodes"][0]["steps"] == 6 and "GWM features" in r["latency_includes"]
    assert r["n_chunks"] == 2 and np.isfinite(r["latency_ms_p50"])


def test_gwm_features_bad_input_is_refused(gwm_policy, tmp_path):
    w, args = gwm_policy
    base = [a for a in args if a not in ("--gwm-vae", w / "vae", "--gwm-tokens", 2)]
    res = run(*base, "--gwm-vae", w / "vae", "--out", tmp_path / "a", code=2)  # no --gwm-tokens
    assert "gwm-tokens" in res.output and not (tmp_path / "a").exists()
    res = run(*base, "--gwm-vae", w / "tok", "--gwm-tokens", 2, "--out", tmp_path / "b", code=2)  # not a VAE
    assert "gwm_set_vae" in res.output
    run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "nodepth", "--image-size", 32,
        "--max-steps", 4, "--keep-failures", "--cameras", "corner,corner3,behindGripper")
    nd = [tmp_path / "nodepth" if a == w / "ds" else a for a in args]
    res = run(*nd, "--out", tmp_path / "c", code=2)
    assert "depth" in res.output
    res = run(*base, "--cameras", "corner,corner2", "--out", tmp_path / "d", code=2)
    assert "corner2" in res.output
    res = run("rollout", "--policy", w / "pol", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "r", code=2)
    assert "GWM features" in res.output
