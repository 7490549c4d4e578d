"""Model-based RL on the Gaussian world model: MBPO with stable-baselines3's SAC, against model-free SAC
(GWM, arXiv 2508.17600, Sec. 4.3; MBPO, Janner et al. 2019).

Every arm observes the real task through a model's encoder
(:class:`~robodream.gwm.env.RealGWMObservation`: proprioception + one number per latent token) and
is scored the same way: success rate of the deterministic policy on evaluation seeds no training
episode uses, with a 95% Wilson interval, after every ``chunk_steps`` real environment steps (the
learning curve).

- ``sac``: SAC on the real environment (stable-baselines3, its defaults but the network size),
  observing through the GWM's set VAE.
- ``mbpo_gwm``: per chunk, run the current SAC policy for ``chunk_steps`` real steps (the first
  chunk with uniformly random actions), refit the GWM dynamics on every real transition so far
  (``refit_steps`` gradient steps, starting from the pretrained run), then let SAC learn from
  ``model_steps`` transitions of short model rollouts (``rollout_length`` steps) branched from
  real states the policy visited (:class:`~robodream.gwm.env.GWMVecEnv`). SAC's replay buffer
  holds model transitions only (MBPO's real-data ratio 0).
- ``mbpo_video``: the same loop with a video world model as the simulator (the iVideoGPT-style
  arm): the same latent dynamics trained on the image tokenizer's latents of the same cameras
  (``train gwm --data --tokenizer``), observing through the tokenizer. Only the representation
  differs — 2D image tokens against the GWM's 3D Gaussian set — so the comparison isolates it.

The encoders (set VAE, tokenizer) are the pretrained runs' and stay frozen.
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch

from robodream.errors import ConfigError
from robodream.eval.metrics import wilson_interval
from robodream.gwm.env import GWMVecEnv, RealGWMObservation, StartBuffer
from robodream.gwm.train import LatentEpisodes

ARMS = ("mbpo_gwm", "mbpo_video", "sac")


@dataclass
class MBRLConfig:
    """One learning run (one task, arm and seed)."""

    task: str = "reach-v3"
    arm: str = "mbpo_gwm"  # mbpo_gwm, mbpo_video or sac
    gwm: str = ""  # a robodream train gwm run: its VAE observes for sac and mbpo_gwm, its dynamics simulates for mbpo_gwm
    video_dynamics: str = ""  # a train gwm --data --tokenizer run: mbpo_video's simulator and observer
    cameras: tuple[str, ...] = ("corner", "corner2", "corner3")  # input cameras of the run's Gaussians
    image_size: int = 64
    seed: int = 0
    real_steps: int = 3000  # real environment steps in all
    # real steps between refits and evaluations; with eval_episodes, sized for bench gwm's 6-hour budget: a real step
    # observed through the GWM cost 0.18 s on one thread of a shared 2-core host (RGB-D of 3 cameras -> 2048
    # Gaussians -> set VAE), so 12 evaluations of 10 episodes would take most of an hour per run
    chunk_steps: int = 500
    episode_steps: int = 100  # steps per real episode
    eval_episodes: int = 5
    eval_seed: int = 900_000  # evaluation seeds eval_seed + i (training episodes use seed * 100_000 + k)
    refit_steps: int = 50  # dynamics gradient steps per chunk (mbpo)
    refit_batch: int = 16
    refit_lr: float = 1e-4
    model_envs: int = 32  # model rollouts stepped together (mbpo)
    rollout_length: int = 5  # steps of each branched model rollout (mbpo)
    model_steps: int = 2000  # model transitions SAC learns from per chunk (mbpo)
    sample_steps: int = 2  # Euler steps of each model prediction (mbpo)
    sac_net: tuple[int, ...] = (256, 256)
    sac_batch: int = 256
    sac_gradient_steps: int = 1  # per environment step (per vector step of model_envs for mbpo)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cameras, self.sac_net = tuple(self.cameras), tuple(self.sac_net)
        if self.arm not in ARMS:
            raise ConfigError(f"unknown MBRL arm {self.arm!r}; arms: {', '.join(ARMS)}")
        if min(self.real_steps, self.chunk_steps, self.episode_steps, self.eval_episodes, self.model_envs,
               self.rollout_length, self.model_steps, self.sample_steps) < 1 or self.refit_steps < 0:
            raise ConfigError("step counts, episodes and sizes must be >= 1 (refit_steps >= 0)")


class _RealGym(gym.Env):
    """:class:`RealGWMObservation` as a gymnasium env with seeds ``base + k`` per episode (SAC arm)."""

    def __init__(self, real: RealGWMObservation, obs_dim: int, max_steps: int, base_seed: int) -> None:
        self.real, self.max_steps, self.next_seed = real, max_steps, base_seed
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.t = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        obs, _ = self.real.reset(self.next_seed)
        self.next_seed += 1
        self.t = 0
        return obs, {}

    def step(self, action):
        obs, r, success, truncated, _ = self.real.step(action)
        self.t += 1
        return obs, float(r), bool(success), bool(truncated or self.t >= self.max_steps), {"is_success": success}


def evaluate_policy_success(policy: Callable[[np.ndarray], np.ndarray], real: RealGWMObservation, episodes: int,
                            base_seed: int, max_steps: int) -> dict[str, Any]:
    """Success rate of ``policy`` (obs -> action) over ``episodes`` real episodes (seeds ``base_seed + i``)."""
    wins = 0
    for i in range(episodes):
        obs, _ = real.reset(base_seed + i)
        for _ in range(max_steps):
            obs, _, success, truncated, _ = real.step(policy(obs))
            if success:
                wins += 1
                break
            if truncated:
                break
    lo, hi = wilson_interval(wins, episodes)
    return {"success_rate": wins / episodes, "ci95": [round(lo, 3), round(hi, 3)], "episodes": episodes}


def _deterministic(sac) -> Callable[[np.ndarray], np.ndarray]:
    return lambda o: sac.predict(o, deterministic=True)[0]


def _episodes_to_latents(eps: list[dict[str, list]]) -> LatentEpisodes:
    lat, st, act, rew, suc, start, end = [], [], [], [], [], [], []
    f0 = 0
    for e in eps:
        T = len(e["latents"])
        lat.append(torch.stack(e["latents"]))
        st.append(torch.stack(e["state"]))
        act.append(torch.as_tensor(np.stack(e["action"] + [np.zeros(4, np.float32)]), dtype=torch.float32)[:T])
        rew.append(torch.tensor(e["reward"] + [0.0])[:T])
        suc.append(torch.tensor(e["success"] + [0.0])[:T])
        start.append(torch.full((T,), f0))
        end.append(torch.full((T,), f0 + T))
        f0 += T
    return LatentEpisodes(torch.cat(lat), torch.cat(st), torch.cat(act), torch.cat(rew), torch.cat(suc),
                          torch.cat(start), torch.cat(end))


def run_mbrl(cfg: MBRLConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """One learning run; returns the learning curve ``[{"real_steps", "success_rate", "ci95"}]``,
    ``env_steps_to_80`` (the first evaluated real-step count at >= 80% success, or None), the config
    and ``wall_s``.

    Raises:
        ConfigError: bad settings; CheckpointError: a bad GWM run.
    """
    from stable_baselines3 import SAC

    from robodream.gwm.train import load_dynamics_observer

    run = cfg.video_dynamics if cfg.arm == "mbpo_video" else cfg.gwm
    if not run:
        raise ConfigError(f"arm {cfg.arm} needs " + ("a video-dynamics run (train gwm --data --tokenizer)"
                                                    if cfg.arm == "mbpo_video" else "a GWM run (--gwm): its VAE makes "
                                                    "the observations"))
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    dynamics, observer, _ = load_dynamics_observer(run, cameras=list(cfg.cameras), image_size=cfg.image_size)
    obs_dim = dynamics.cfg.state_dim + dynamics.cfg.n_latents
    real = RealGWMObservation(cfg.task, observer, max_steps=cfg.episode_steps)
    eval_real = RealGWMObservation(cfg.task, observer, max_steps=cfg.episode_steps)
    sac_kw = dict(learning_rate=3e-4, batch_size=cfg.sac_batch, seed=cfg.seed, device="cpu", verbose=0,
                  policy_kwargs={"net_arch": list(cfg.sac_net)})
    curve: list[dict[str, Any]] = []
    train_seed = cfg.seed * 100_000
    try:
        if cfg.arm == "sac":
            env = _RealGym(real, obs_dim, cfg.episode_steps, train_seed)
            sac = SAC("MlpPolicy", env, learning_starts=min(cfg.chunk_steps, 1000),
                      gradient_steps=cfg.sac_gradient_steps, **sac_kw)
            done = 0
            while done < cfg.real_steps:
                n = min(cfg.chunk_steps, cfg.real_steps - done)
                sac.learn(total_timesteps=n, reset_num_timesteps=False)
                done += n
                curve.append({"real_steps": done, **evaluate_policy_success(
                    _deterministic(sac), eval_real, cfg.eval_episodes, cfg.eval_seed, cfg.episode_steps)})
                if log:
                    log(f"{cfg.task} sac seed {cfg.seed}: {done} real steps, success {curve[-1]['success_rate']:.2f}")
        else:
            model = copy.deepcopy(dynamics).train().requires_grad_(True)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.refit_lr)
            episodes: list[dict[str, list]] = []
            sac = None
            done = 0
            rng = np.random.default_rng(cfg.seed)
            gen = torch.Generator().manual_seed(cfg.seed)
            while done < cfg.real_steps:
                n = min(cfg.chunk_steps, cfg.real_steps - done)
                k = 0
                while k < n:  # real steps with the current policy (random before SAC exists)
                    obs, info = real.reset(train_seed)
                    train_seed += 1
                    ep = {"latents": [info["latents"]], "state": [info["state"]], "action": [], "reward": [],
                          "success": []}
                    for _ in range(cfg.episode_steps):
                        a = (rng.uniform(-1, 1, 4).astype(np.float32) if sac is None
                             else sac.predict(obs, deterministic=False)[0])
                        obs, r, success, truncated, info = real.step(a)
                        for key, v in (("latents", info["latents"]), ("state", info["state"]), ("action", a),
                                       ("reward", float(r)), ("success", float(success))):
                            ep[key].append(v)
                        k += 1
                        if truncated or k >= n:
                            break
                    episodes.append(ep)
                done += n
                data = _episodes_to_latents(episodes)
                anchors = data.anchors()
                model.train()
                for _ in range(cfg.refit_steps):  # refit the dynamics on every real transition so far
                    f = anchors[torch.randint(0, len(anchors), (cfg.refit_batch,), generator=gen)]
                    loss, _ = model.loss(**data.windows(f, model.cfg.context_frames), generator=gen)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                model.eval()
                frames = torch.arange(len(data.latents))
                ctx_idx = torch.maximum(frames[:, None] + torch.arange(-model.cfg.context_frames + 1, 1),
                                        data.episode_start[:, None])
                starts = StartBuffer(data.latents[ctx_idx].float(), data.state.float())
                venv = GWMVecEnv(model, starts, cfg.model_envs, horizon=cfg.rollout_length,
                                 sample_steps=cfg.sample_steps, seed=cfg.seed + done)
                if sac is None:
                    sac = SAC("MlpPolicy", venv, learning_starts=cfg.model_envs * 2,
                              gradient_steps=cfg.sac_gradient_steps, **sac_kw)
                else:
                    sac.set_env(venv)
                sac.learn(total_timesteps=cfg.model_steps, reset_num_timesteps=False)
                curve.append({"real_steps": done, **evaluate_policy_success(
                    _deterministic(sac), eval_real, cfg.eval_episodes, cfg.eval_seed, cfg.episode_steps)})
                if log:
                    log(f"{cfg.task} {cfg.arm} seed {cfg.seed}: {done} real steps, success "
                        f"{curve[-1]['success_rate']:.2f}")
    finally:
        real.close()
        eval_real.close()
    reached = [c["real_steps"] for c in curve if c["success_rate"] >= 0.8]
    return {"config": asdict(cfg), "curve": curve, "env_steps_to_80": reached[0] if reached else None,
            "real_step_budget": cfg.real_steps, "wall_s": round(time.perf_counter() - t0, 1)}


def plot_curves(results: list[dict[str, Any]], path: str | Path) -> None:
    """Success rate against real environment steps, one line per arm (mean over seeds, min-max band), per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["config"]["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for arm in ARMS:
            runs = [r for r in results if r["config"]["task"] == task and r["config"]["arm"] == arm]
            if not runs:
                continue
            steps = [c["real_steps"] for c in runs[0]["curve"]]
            rates = np.array([[c["success_rate"] for c in r["curve"]][:len(steps)] for r in runs])
            ax.plot(steps, rates.mean(0), label=f"{arm} ({len(runs)} seeds)")
            ax.fill_between(steps, rates.min(0), rates.max(0), alpha=0.2)
        ax.axhline(0.8, color="grey", lw=0.5, ls="--")
        ax.set(title=task, xlabel="real environment steps", ylabel="success rate", ylim=(-0.02, 1.02))
        ax.legend(fontsize=8)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
