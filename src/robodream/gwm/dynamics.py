"""GWM latent dynamics: a diffusion transformer over latent sets (GWM, arXiv 2508.17600, Sec. 3.3).

Given the set-VAE latents of the last two frames ``z_{t-1}, z_t`` (each ``n_latents x
latent_dim``) and the action ``a_t``, it generates the next frame's latent set ``z_{t+1}``, and
predicts the transition's reward and success.

Generative objective: the project's rectified flow (:mod:`robodream.models.flow`, the same as
the video world model and the policy) rather than the paper's EDM preconditioning — one
objective across robodream, Euler sampling with few steps; the noisy target set attends to
itself and, by cross-attention, to the two context sets; flow time and action modulate every
block (AdaLN-Zero, :class:`~robodream.models.transformer.CrossAttnBlock`). Target token ``j``
also receives token ``j`` of the newest context frame: with the set VAE's fixed anchors
(``query_mode="fixed"``) token ``j`` describes the same region of space in every frame, so the
next frame's token ``j`` is an update of this one's. Otherwise no positional encoding.

Heads: the dense reward (Meta-World's shaped reward, ``complementary_info.dense_reward``) and
the success logit (``next.success``) of step ``t`` read the mean of the target tokens; training
sees them at every noise level, inference reads them at the last sampling step (near clean).

What the flow generates is the *change* ``(z_{t+1} - z_t) / std(change)``, per channel: with
the VAE's fixed anchors consecutive latent sets differ little (copy-last is the zero change), so
the model spends its capacity on what moves. Context latents are normalised per channel with
the training set's mean and standard deviation (buffers, filled in by training).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from robodream.errors import ConfigError
from robodream.models.flow import euler_step, euler_timesteps, interpolate, sample_time, velocity_target
from robodream.models.transformer import MLP, CrossAttnBlock, FinalLayer, TimestepEmbedding


@dataclass
class GWMDynamicsConfig:
    """Architecture and objective of the latent dynamics (saved under ``model`` in a run's config.json)."""

    n_latents: int = 512  # from the set VAE
    latent_dim: int = 16  # from the set VAE
    action_dim: int = 4
    state_dim: int = 4  # proprioception predicted for the next frame (0: no state head)
    context_frames: int = 2  # frames of latents the prediction is conditioned on
    dim: int = 128
    heads: int = 4
    depth: int = 4
    flow_shift: float = 1.0  # time shift of the flow's noise levels (1: uniform)
    sample_steps: int = 8  # Euler steps at inference
    reward_weight: float = 0.1
    success_weight: float = 0.1
    state_weight: float = 0.1
    reward_scale: float = 10.0  # rewards are divided by this before regression (Meta-World's shaped reward is 0..10)

    LEGACY_DEFAULTS: ClassVar[dict] = {}

    def __post_init__(self) -> None:
        if self.state_dim < 0 or min(self.n_latents, self.latent_dim, self.action_dim, self.context_frames,
                                     self.depth, self.sample_steps) < 1:
            raise ConfigError("n_latents, latent_dim, action_dim, context_frames, depth and sample_steps must be >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if self.flow_shift <= 0 or self.reward_scale <= 0:
            raise ConfigError("flow_shift and reward_scale must be > 0")


class GWMDynamics(nn.Module):
    """Latent-set dynamics (module docstring). ``model_type``: ``gwm_dynamics``."""

    model_type = "gwm_dynamics"

    def __init__(self, cfg: GWMDynamicsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.dim
        self.register_buffer("latent_mean", torch.zeros(cfg.latent_dim))
        self.register_buffer("latent_std", torch.ones(cfg.latent_dim))
        self.register_buffer("delta_std", torch.ones(cfg.latent_dim))
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))
        self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
        self.register_buffer("state_std", torch.ones(cfg.state_dim))
        self.in_target = nn.Linear(cfg.latent_dim, d)
        self.in_last = nn.Linear(cfg.latent_dim, d)  # token j of the newest context frame, added to target token j
        self.in_context = nn.Linear(cfg.latent_dim, d)
        self.frame_embed = nn.Parameter(torch.zeros(cfg.context_frames, d))
        self.context_mlp = MLP(d, 2 * d)
        self.time = TimestepEmbedding(d)
        self.action = nn.Sequential(nn.Linear(cfg.action_dim, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(CrossAttnBlock(d, cfg.heads) for _ in range(cfg.depth))
        self.final = FinalLayer(d, cfg.latent_dim)
        self.in_state = nn.Linear(cfg.state_dim, d) if cfg.state_dim else None
        # reward, success logit, next state (normalised)
        self.heads = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2 + cfg.state_dim))

    # ------------------------------------------------------------------ normalisation
    def set_normalization(self, latent_mean: Tensor, latent_std: Tensor, delta_std: Tensor, action_mean: Tensor,
                          action_std: Tensor, state_mean: Tensor, state_std: Tensor) -> None:
        """Per-channel statistics of the training latents (latent_dim,), of their one-step changes
        ``z_{t+1} - z_t`` (latent_dim,), of the actions (action_dim,) and of the states (state_dim,)."""
        for name, v in (("latent_mean", latent_mean), ("latent_std", latent_std.clamp_min(1e-4)),
                        ("delta_std", delta_std.clamp_min(1e-4)), ("action_mean", action_mean),
                        ("action_std", action_std.clamp_min(1e-4)), ("state_mean", state_mean),
                        ("state_std", state_std.clamp_min(1e-4))):
            getattr(self, name).copy_(torch.as_tensor(v, dtype=torch.float32))

    def normalize(self, z: Tensor) -> Tensor:
        return (z - self.latent_mean) / self.latent_std

    def unnormalize(self, z: Tensor) -> Tensor:
        return z * self.latent_std + self.latent_mean

    NORMALIZATION: ClassVar[tuple[str, ...]] = ("latent_mean", "latent_std", "delta_std", "action_mean", "action_std",
                                                "state_mean", "state_std")

    def _check(self, context: Tensor, action: Tensor, state: Tensor | None = None) -> None:
        c = self.cfg
        if c.state_dim and (state is None or state.shape != (context.shape[0], c.state_dim)):
            raise ConfigError(f"the model takes the current {c.state_dim}-number state, got "
                              f"{None if state is None else tuple(state.shape)}")
        if context.dim() != 4 or context.shape[1:] != (c.context_frames, c.n_latents, c.latent_dim):
            raise ConfigError(f"context must be (B, {c.context_frames}, {c.n_latents}, {c.latent_dim}) latents, "
                              f"got {tuple(context.shape)}")
        if action.dim() != 2 or action.shape != (context.shape[0], c.action_dim):
            raise ConfigError(f"the model was trained on {c.action_dim}-dimensional actions; got actions of shape "
                              f"{tuple(action.shape)} for a batch of {context.shape[0]}")

    # ------------------------------------------------------------------ network
    def forward(self, x_t: Tensor, t: Tensor, context: Tensor, action: Tensor,
                state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Velocity and heads.

        Args:
            x_t: (B, L, c) noisy normalised change of the latents; t: (B,) flow time in [0, 1].
            context: (B, K, L, c) normalised latents of the K context frames (oldest first).
            action: (B, Da) normalised action; state: (B, Ds) normalised current state (when state_dim).

        Returns:
            velocity (B, L, c) and heads (B, 2 + Ds): reward (scaled), success logit, next state (normalised).
        """
        B, K, L, _ = context.shape
        ctx = self.in_context(context) + self.frame_embed[None, :, None, :]  # (B, K, L, d)
        ctx = ctx.flatten(1, 2)
        ctx = ctx + self.context_mlp(ctx)
        cond = self.time(t) + self.action(action)  # (B, d)
        if self.in_state is not None:
            cond = cond + self.in_state(state)
        x = self.in_target(x_t) + self.in_last(context[:, -1])  # token j continues token j (the VAE's fixed anchors)
        for blk in self.blocks:
            x = blk(x, blk.modulate(cond)[:, None], ctx)
        v = self.final(x, self.final.modulate(cond)[:, None])
        heads = self.heads(x.mean(1))
        return v, heads

    def loss(self, context: Tensor, target: Tensor, action: Tensor, reward: Tensor, success: Tensor,
             state: Tensor | None = None, next_state: Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[Tensor, dict[str, float]]:
        """Rectified-flow loss on the next latents plus the head losses.

        Args:
            context: (B, K, L, c) latents (VAE units); target: (B, L, c) next latents;
            action: (B, Da) raw actions; reward: (B,) dense reward; success: (B,) bool/float;
            state / next_state: (B, Ds) raw states (when state_dim).

        Returns:
            scalar loss and ``{"flow", "reward", "success"}`` (and ``"state"``).
        """
        self._check(context, action, state)
        c = self.cfg
        x0 = (target - context[:, -1]) / self.delta_std  # the flow generates the change of the latents
        eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = sample_time(x0.shape[0], c.flow_shift, generator=generator, device=x0.device)
        st = None if state is None or not c.state_dim else (state - self.state_mean) / self.state_std
        v, heads = self(interpolate(x0, eps, t), t, self.normalize(context), (action - self.action_mean) / self.action_std,
                        st)
        flow = F.mse_loss(v.float(), velocity_target(x0, eps).float())
        r = F.mse_loss(heads[:, 0].float(), reward.float() / c.reward_scale)
        s = F.binary_cross_entropy_with_logits(heads[:, 1].float(), success.float())
        total = flow + c.reward_weight * r + c.success_weight * s
        logs = {"flow": float(flow.detach()), "reward": float(r.detach()), "success": float(s.detach())}
        if c.state_dim:
            sl = F.mse_loss(heads[:, 2:].float(), ((next_state - self.state_mean) / self.state_std).float())
            total = total + c.state_weight * sl
            logs["state"] = float(sl.detach())
        return total, logs

    @torch.no_grad()
    def predict(self, context: Tensor, action: Tensor, state: Tensor | None = None, *, steps: int | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Sample the next latents.

        Args:
            context: (B, K, L, c) latents (VAE units), oldest first; action: (B, Da) raw action;
            state: (B, Ds) raw current state (required when ``state_dim``).
            steps: Euler steps (default ``cfg.sample_steps``).

        Returns:
            ``{"latents": (B, L, c) in VAE units, "reward": (B,), "success_prob": (B,)}`` and
            ``"state": (B, Ds)`` (raw units) when ``state_dim``.

        Raises:
            ConfigError: wrong shapes, e.g. an action dimension the model was not trained on.
        """
        self._check(context, action, state)
        ctx = self.normalize(context)
        a = (action - self.action_mean) / self.action_std
        st = None if not self.cfg.state_dim else (state - self.state_mean) / self.state_std
        B = context.shape[0]
        x = torch.randn((B, self.cfg.n_latents, self.cfg.latent_dim), generator=generator, device=context.device,
                        dtype=context.dtype)
        ts = euler_timesteps(steps or self.cfg.sample_steps, self.cfg.flow_shift)
        heads = None
        for i in range(len(ts) - 1):
            v, heads = self(x, ts[i].expand(B).to(x.device), ctx, a, st)
            x = euler_step(x, v, float(ts[i]), float(ts[i + 1]))
        out = {"latents": context[:, -1] + x * self.delta_std, "reward": heads[:, 0] * self.cfg.reward_scale,
               "success_prob": torch.sigmoid(heads[:, 1])}
        if self.cfg.state_dim:
            out["state"] = heads[:, 2:] * self.state_std + self.state_mean
        return out

    @torch.no_grad()
    def rollout(self, context: Tensor, actions: Tensor, state: Tensor | None = None, *, steps: int | None = None,
                generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Open-loop rollout from ``state`` (B, Ds) under actions (B, T, Da) -> latents (B, T, L, c),
        reward (B, T), success_prob (B, T) and, with a state head, state (B, T, Ds)."""
        ctx = context
        outs: dict[str, list[Tensor]] = {}
        for k in range(actions.shape[1]):
            out = self.predict(ctx, actions[:, k], state, steps=steps, generator=generator)
            for key, v in out.items():
                outs.setdefault(key, []).append(v)
            ctx = torch.cat([ctx[:, 1:], out["latents"][:, None]], 1)
            state = out.get("state")
        return {k: torch.stack(v, 1) for k, v in outs.items()}
