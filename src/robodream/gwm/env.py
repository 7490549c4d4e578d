"""The Gaussian world model as a neural simulator (GWM, arXiv 2508.17600, Sec. 3.4), and the real
environment seen the same way.

Observation (both): the proprioceptive state followed by one number per latent token, the mean
over the token's channels — ``state_dim + n_latents`` numbers (516 by default). With the set
VAE's fixed anchors, token ``j`` describes the same region of space in every frame, so this is a
coarse spatial map of the scene an MLP policy (SAC) can read; the full set (8192 numbers) would
make every SAC update ~10x slower on a CPU for little more.

- :class:`GWMEnv`: a ``gymnasium.Env``; ``reset`` starts from a real state (two context latent
  sets + proprioception drawn from a :class:`StartBuffer`), ``step`` samples the dynamics: next
  latents, the predicted dense reward, the predicted next state; an episode is truncated after
  ``horizon`` steps (MBPO's short branched rollouts) and terminates when the predicted success
  probability exceeds 0.5 (if ``terminate_on_success``).
- :class:`GWMVecEnv`: the same for ``n`` environments stepped as one batch (a stable-baselines3
  ``VecEnv``), which is how SAC collects model rollouts fast.
- :class:`RealGWMObservation`: a Meta-World environment whose observation goes through the same
  path as the model's training data: RGB-D of the input cameras -> per-frame Gaussians -> set
  VAE latents -> the vector above (or, for dynamics over image tokens, RGB -> the tokenizer's
  latents -> the same vector: one number per latent cell).
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env.base_vec_env import VecEnv

from robodream.errors import ConfigError
from robodream.gwm.dynamics import GWMDynamics


def observation(latents: torch.Tensor, state: torch.Tensor) -> np.ndarray:
    """Observation vectors (B, Ds + L) float32 of latents (B, L, c) and states (B, Ds) (module docstring)."""
    return torch.cat([state.float(), latents.float().mean(-1)], -1).cpu().numpy().astype(np.float32)


@dataclass
class StartBuffer:
    """Real states a model rollout can start from: context latents (N, K, L, c) and states (N, Ds)."""

    context: torch.Tensor
    state: torch.Tensor

    def __post_init__(self) -> None:
        if len(self.context) != len(self.state) or not len(self.context):
            raise ConfigError(f"a start buffer needs as many (>= 1) contexts as states, got {len(self.context)} and "
                              f"{len(self.state)}")

    def sample(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        i = torch.from_numpy(rng.integers(0, len(self.context), n))
        return self.context[i].float(), self.state[i].float()


def _spaces(model: GWMDynamics) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    c = model.cfg
    obs = gym.spaces.Box(-np.inf, np.inf, shape=(c.state_dim + c.n_latents,), dtype=np.float32)
    act = gym.spaces.Box(-1.0, 1.0, shape=(c.action_dim,), dtype=np.float32)
    return obs, act


class _Batch:
    """The state of B model rollouts and one batched step."""

    def __init__(self, model: GWMDynamics, starts: StartBuffer, horizon: int, terminate_on_success: bool,
                 sample_steps: int | None) -> None:
        if not model.cfg.state_dim:
            raise ConfigError("a GWM environment needs a dynamics model with a state head (state_dim > 0)")
        if horizon < 1:
            raise ConfigError(f"horizon must be >= 1, got {horizon}")
        self.model, self.starts, self.horizon = model, starts, horizon
        self.terminate_on_success, self.sample_steps = terminate_on_success, sample_steps
        self.context = self.state = None
        self.t = None

    def reset(self, idx: np.ndarray, rng: np.random.Generator) -> None:
        ctx, st = self.starts.sample(len(idx), rng)
        self.context[idx], self.state[idx], self.t[idx] = ctx, st, 0

    def init(self, n: int, rng: np.random.Generator) -> None:
        ctx, st = self.starts.sample(n, rng)
        self.context, self.state, self.t = ctx, st, np.zeros(n, dtype=np.int64)

    def step(self, actions: np.ndarray, gen: torch.Generator):
        a = torch.as_tensor(np.clip(actions, -1.0, 1.0), dtype=torch.float32).reshape(len(self.t), -1)
        out = self.model.predict(self.context, a, self.state, steps=self.sample_steps, generator=gen)
        self.context = torch.cat([self.context[:, 1:], out["latents"][:, None]], 1)
        self.state = out["state"]
        self.t += 1
        terminated = (out["success_prob"] > 0.5).numpy() if self.terminate_on_success else np.zeros(len(self.t), bool)
        truncated = self.t >= self.horizon
        return (observation(out["latents"], out["state"]), out["reward"].numpy().astype(np.float32), terminated,
                truncated, out["success_prob"].numpy())


class GWMEnv(gym.Env):
    """One model rollout at a time as a ``gymnasium.Env`` (module docstring).

    Args:
        model: a :class:`~robodream.gwm.dynamics.GWMDynamics` with a state head.
        starts: real start states.
        horizon: steps before truncation.
        terminate_on_success: end the episode when the predicted success probability exceeds 0.5.
        sample_steps: Euler steps per prediction (default the model's).

    Raises:
        ConfigError: a model without a state head, horizon < 1, an empty start buffer.
    """

    metadata = {"render_modes": []}

    def __init__(self, model: GWMDynamics, starts: StartBuffer, horizon: int = 10, terminate_on_success: bool = False,
                 sample_steps: int | None = None) -> None:
        self.observation_space, self.action_space = _spaces(model)
        self._batch = _Batch(model, starts, horizon, terminate_on_success, sample_steps)
        self._gen = torch.Generator()

    def reset(self, *, seed: int | None = None, options=None):
        super().reset(seed=seed)
        if seed is not None:
            self._gen.manual_seed(seed)
        self._batch.init(1, self.np_random)
        return observation(self._batch.context[:, -1], self._batch.state)[0], {}

    def step(self, action):
        obs, rew, term, trunc, succ = self._batch.step(np.asarray(action)[None], self._gen)
        return obs[0], float(rew[0]), bool(term[0]), bool(trunc[0]), {"success_prob": float(succ[0])}


class GWMVecEnv(VecEnv):
    """``n`` model rollouts stepped as one batch: a stable-baselines3 ``VecEnv`` (finished rollouts
    restart from new real states; ``infos[i]["terminal_observation"]`` as SB3 expects)."""

    render_mode = None

    def __init__(self, model: GWMDynamics, starts: StartBuffer, n: int, horizon: int = 10,
                 terminate_on_success: bool = False, sample_steps: int | None = None, seed: int = 0) -> None:
        obs_space, act_space = _spaces(model)
        super().__init__(n, obs_space, act_space)
        self._batch = _Batch(model, starts, horizon, terminate_on_success, sample_steps)
        self._rng = np.random.default_rng(seed)
        self._gen = torch.Generator().manual_seed(seed)
        self._actions = None

    def reset(self):
        self._batch.init(self.num_envs, self._rng)
        return observation(self._batch.context[:, -1], self._batch.state)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rew, term, trunc, succ = self._batch.step(self._actions, self._gen)
        done = term | trunc
        infos = [{"success_prob": float(s), "TimeLimit.truncated": bool(tr and not te)}
                 for s, te, tr in zip(succ, term, trunc)]
        idx = np.nonzero(done)[0]
        if len(idx):
            for i in idx:
                infos[i]["terminal_observation"] = obs[i].copy()
            self._batch.reset(idx, self._rng)
            obs[idx] = observation(self._batch.context[idx, -1], self._batch.state[idx])
        return obs, rew, done, infos

    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        return [getattr(self, attr_name)] * len(self._indices(indices))

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *args, indices=None, **kwargs):
        raise NotImplementedError("GWMVecEnv has no per-environment methods")

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False] * len(self._indices(indices))

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)


class RealGWMObservation:
    """A Meta-World task observed through a latent-dynamics model's encoder (module docstring).

    Args:
        task: Meta-World task.
        observer: frames -> latents (1, L, c): a :class:`~robodream.gwm.features.GWMFeatureEncoder`
            (RGB-D -> Gaussians -> set-VAE latents) or an :class:`~robodream.gwm.features.ImageTokenObserver`;
            its ``cameras`` and ``image_size`` set up the env (with depth when it ``needs_depth``).
        max_steps: episode length.

    ``reset(seed)`` / ``step(action)`` return ``(obs (Ds + L,), info)`` / ``(obs, reward, success,
    truncated, info)`` with ``info["latents"]`` (L, c) and ``info["state"]`` (Ds,), the Meta-World
    dense reward and success flag.
    """

    def __init__(self, task: str, observer, max_steps: int = 500) -> None:
        from robodream.envs.meta_world import EnvConfig, MetaWorldEnv

        self.env = MetaWorldEnv(EnvConfig(task=task, cameras=tuple(observer.cameras), image_size=observer.image_size,
                                          depth=observer.needs_depth, max_steps=max_steps))
        self.features, self.cameras = observer, list(observer.cameras)

    def _observe(self, res) -> tuple[np.ndarray, dict]:
        z = self.features(res.images, res.depth)
        state = torch.from_numpy(res.state)[None]
        return observation(z, state)[0], {"latents": z[0], "state": state[0]}

    def reset(self, seed: int) -> tuple[np.ndarray, dict]:
        res = self.env.reset(seed)
        self.features.set_cameras_from_env(self.env)
        return self._observe(res)

    def step(self, action: np.ndarray):
        res = self.env.step(action)
        obs, info = self._observe(res)
        return obs, res.reward, res.success, res.truncated, info

    def close(self) -> None:
        self.env.close()
