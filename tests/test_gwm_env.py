"""GWM as a neural simulator: the gymnasium API checker, the batched VecEnv under stable-baselines3's
SAC, and the real environment observed through the same Gaussians -> VAE path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodream.errors import ConfigError
from robodream.gwm.dynamics import GWMDynamics, GWMDynamicsConfig
from robodream.gwm.env import GWMEnv, GWMVecEnv, RealGWMObservation, StartBuffer
from robodream.gwm.features import GWMFeatureEncoder
from robodream.gwm.vae import GaussianSetVAE, SetVAEConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(state_dim: int = 4) -> GWMDynamics:
    torch.manual_seed(0)
    return GWMDynamics(GWMDynamicsConfig(n_latents=16, latent_dim=4, action_dim=4, state_dim=state_dim, dim=32,
                                         heads=2, depth=1, sample_steps=2)).eval()


def starts(n: int = 5) -> StartBuffer:
    g = torch.Generator().manual_seed(0)
    return StartBuffer(torch.randn(n, 2, 16, 4, generator=g), torch.randn(n, 4, generator=g))


def test_gwm_env_passes_the_gymnasium_checker():
    from gymnasium.utils.env_checker import check_env

    env = GWMEnv(tiny_model(), starts(), horizon=4)
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4 + 16,) and obs.dtype == np.float32
    done, steps = False, 0
    while not done:
        obs, r, term, trunc, info = env.step(env.action_space.sample())
        done, steps = term or trunc, steps + 1
        assert np.isfinite(obs).all() and np.isfinite(r) and 0 <= info["success_prob"] <= 1
    assert steps == 4


def test_gwm_env_needs_a_state_head_and_a_start():
    with pytest.raises(ConfigError, match="state head"):
        GWMEnv(tiny_model(state_dim=0), starts())
    with pytest.raises(ConfigError, match="start buffer"):
        StartBuffer(torch.zeros(0, 2, 16, 4), torch.zeros(0, 4))


def test_vec_env_batches_rollouts_and_sac_learns_on_it():
    from stable_baselines3 import SAC

    venv = GWMVecEnv(tiny_model(), starts(), n=4, horizon=3, seed=0)
    obs = venv.reset()
    assert obs.shape == (4, 20)
    dones_seen = 0
    for _ in range(6):
        venv.step_async(np.stack([venv.action_space.sample() for _ in range(4)]))
        obs, rew, done, infos = venv.step_wait()
        assert obs.shape == (4, 20) and rew.shape == (4,) and np.isfinite(obs).all()
        for d, info in zip(done, infos):
            if d:
                dones_seen += 1
                assert info["terminal_observation"].shape == (20,) and info["TimeLimit.truncated"]
    assert dones_seen == 8  # every rollout ends after 3 steps and restarts from a real state
    sac = SAC("MlpPolicy", venv, learning_starts=8, batch_size=8, buffer_size=200, seed=0,
              policy_kwargs={"net_arch": [16]}, device="cpu")
    sac.learn(total_timesteps=24)
    assert sac.num_timesteps == 24


def test_real_environment_is_observed_through_gaussians_and_the_vae():
    vae = GaussianSetVAE(SetVAEConfig(n_gaussians=64, n_latents=16, latent_dim=4, dim=32, heads=2, decoder_layers=1,
                                      fourier_bands=2)).eval()
    vae.set_anchors(torch.rand(200, 3))
    spec = {"cameras": ["corner", "corner3"], "image_size": [32, 32], "pixel": {"n": 64}}
    env = RealGWMObservation("reach-v3", GWMFeatureEncoder(vae, spec), max_steps=5)
    try:
        obs, info = env.reset(seed=3)
        assert obs.shape == (4 + 16,) and info["latents"].shape == (16, 4) and np.isfinite(obs).all()
        obs2, reward, success, truncated, info = env.step(np.zeros(4))
        assert obs2.shape == obs.shape and isinstance(reward, float) and not truncated
        np.testing.assert_allclose(obs2[:4], info["state"].numpy())  # proprioception first
        np.testing.assert_allclose(obs2[4:], info["latents"].mean(-1).numpy(), rtol=1e-6)  # then one number a token
    finally:
        env.close()
