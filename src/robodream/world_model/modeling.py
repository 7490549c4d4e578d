"""GigaWorld-0-Video at laptop scale: an action-conditioned latent video diffusion transformer.

The model (arXiv 2511.19861, Sec. 3.1) denoises the tokenizer latents of a short clip of
``T = n_context_frames + n_future_frames`` frames, ``frame_stride`` env steps apart, all
cameras side by side. Tokens form a ``(T, H, W)`` grid (``W`` = cameras x patches per row)
in row-major order; every block is

    self-attention (3D RoPE over (t, h, w); full or 3D neighbourhood attention)
    cross-attention to the conditioning tokens [task | text | action_0 .. action_{T-1}]
    MLP (dense, or Mixture-of-Experts with a load-balance loss)

each AdaLN-modulated per frame by ``time_embedding(t_frame) + action_token(frame)``.

Objective: rectified flow shared with the policy (:mod:`robodream.models.flow`): one noise
level ``t`` per clip, ``x_t = (1 - t) x0 + t eps``, the network predicts ``v = eps - x0`` on
the future frames. Image-to-video: the context frames stay clean (``t = 0``) and an extra
mask channel (1 on context frames, 0 elsewhere) tells the network which frames are given.
Classifier-free guidance: with probability ``cond_drop_prob`` a clip's task, text and
actions are all replaced by learned null tokens; sampling mixes the two velocities with
``guidance_scale``. With probability ``action_drop_prob`` only the actions are dropped (task and
text kept), which trains the action-free mode: ``sample(..., frame_actions=None)`` imagines how
the task goes on from the first frame and the instruction alone (the dreams of GigaWorld-0's
data engine, labelled afterwards by an inverse-dynamics model).

Value frame (GigaBrain-0.5M*'s value world model, RAMP, arXiv 2602.12099): with
``value_frame != "none"`` the clip gets one more frame after the future frames, generated
jointly with them by the same flow and sampler (mask channel 0, RoPE time index ``T``, its own
learned per-frame token in place of an action token). Its target tiles numbers over a latent
frame (:meth:`VideoWorldModel.value_frame_target`): the normalised value and, with
``"state_value"``, the normalised proprioceptive state of the chunk's *last* frame (anchor +
``chunk_steps``). See :meth:`VideoWorldModel.predict_value` for why that frame.

Tensor conventions (B = batch, T = clip frames, N = cameras, C/h/w = latent grid, S =
``frame_stride``, Da = action size):
    latents:        (B, T, N, C, h, w)   context frames first, then future frames
    frame_actions:  (B, T - 1, S, Da)    normalised actions taken between frame k and k + 1
    task_index:     (B,) long            row of the task vocabulary; ``len(tasks)`` = unknown task
    text_emb:       (B, text_dim)        sentence embedding of the instruction (default: the
                                         stored embedding of ``task_index``)
    returns:        (B,)                 discounted return of the chunk's last frame (value frame only)
    state:          (B, Ds)              observation.state of that frame (``"state_value"`` only)
"""

from __future__ import annotations

import functools

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from robodream.models.flow import euler_step, euler_timesteps, interpolate, sample_time, velocity_target
from robodream.models.moe import MoEMLP
from robodream.models.neighborhood import neighborhood_attention
from robodream.models.rope import RotaryEmbedding, grid_positions
from robodream.models.transformer import CrossAttnBlock, FinalLayer, TimestepEmbedding, full_attention
from robodream.world_model.configuration import WorldModelConfig


class VideoWorldModel(nn.Module):
    """Action-conditioned latent video DiT; see the module docstring for shapes."""

    model_type = "video_world_model"

    def __init__(self, cfg: WorldModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.dim, cfg.patch_size, cfg.latent_channels
        self.patch_in = nn.Linear((C + 1) * p * p, D)  # latents + image-to-video mask channel
        self.time_embedding = TimestepEmbedding(D)
        self.action_in = nn.Sequential(nn.Linear(cfg.frame_stride * cfg.action_dim, D), nn.SiLU(), nn.Linear(D, D))
        self.action_start = nn.Parameter(torch.zeros(D))  # "no action yet" token of the first frame
        self.action_null = nn.Parameter(torch.zeros(D))  # CFG: actions dropped
        self.task_embedding = nn.Embedding(len(cfg.tasks) + 1, D)  # last row: unknown / dropped task
        if cfg.text_dim:
            self.text_proj = nn.Linear(cfg.text_dim, D)
            self.text_null = nn.Parameter(torch.zeros(D))
            # Sentence embeddings of the task vocabulary travel with the weights, so dreaming on
            # known tasks never loads the text encoder (see robodream.models.text).
            self.register_buffer("text_table", torch.zeros(len(cfg.tasks), cfg.text_dim))
        else:
            self.text_proj = None
        for prm in (self.action_start, self.action_null, *([self.text_null] if cfg.text_dim else [])):
            nn.init.normal_(prm, std=0.02)
        mlp = lambda: (MoEMLP(D, cfg.mlp_hidden, cfg.n_experts, cfg.top_k, cfg.shared_expert)  # noqa: E731
                       if cfg.mlp == "moe" else None)
        self.blocks = nn.ModuleList(CrossAttnBlock(D, cfg.n_heads, mlp=mlp(), mlp_ratio=cfg.mlp_ratio)
                                    for _ in range(cfg.depth))
        self.final = FinalLayer(D, cfg.patch_dim)
        self.register_buffer("action_mean", torch.zeros(cfg.action_dim))
        self.register_buffer("action_std", torch.ones(cfg.action_dim))
        self.value_token = None
        if cfg.n_value_frames:  # a "none" model has no parameter or buffer of its own here
            self.value_token = nn.Parameter(0.02 * torch.randn(D))  # the value frame's per-frame token
            # Value (return units) and state normalisation: statistics of the training returns and
            # states (set_normalization), so a run is self-contained.
            self.register_buffer("value_mean", torch.zeros(1))
            self.register_buffer("value_std", torch.ones(1))
            if cfg.value_frame == "state_value":
                self.register_buffer("state_mean", torch.zeros(cfg.state_dim))
                self.register_buffer("state_std", torch.ones(cfg.state_dim))

        # Rotary angles of the fixed clip grid: self-attention rotates with (t, h, w); cross-
        # attention with time only, so a frame's queries align with its own action token.
        T = cfg.grid[0]  # context + future (+ value) frames
        rope = RotaryEmbedding(D // cfg.n_heads, theta=cfg.rope_theta)
        pos = grid_positions(cfg.grid)  # (L, 3)
        n_global = 1 + int(bool(cfg.text_dim))
        ctx_t = torch.cat([torch.zeros(n_global), torch.arange(T, dtype=torch.float32)])  # (M,)
        ctx_pos = torch.stack([ctx_t, torch.zeros_like(ctx_t), torch.zeros_like(ctx_t)], 1)  # (M, 3)
        for name, (c, s) in {"rope_self": rope.angles(pos), "rope_q": rope.angles(pos, axes=(0,)),
                             "rope_k": rope.angles(ctx_pos, axes=(0,))}.items():
            self.register_buffer(f"{name}_cos", c, persistent=False)
            self.register_buffer(f"{name}_sin", s, persistent=False)
        self.register_buffer("is_context", torch.arange(T) < cfg.n_context_frames, persistent=False)  # (T,)
        # Latent channels whose number is the value (the others hold the state): decoded by their mean.
        n_numbers = 1 + cfg.state_dim if cfg.value_frame == "state_value" else 1
        self.value_channels = [0, *range(n_numbers, cfg.latent_channels)]

    # ------------------------------------------------------------------ normalisation
    def set_normalization(self, stats: dict[str, dict[str, list[float]]]) -> None:
        """Set mean/std of ``action`` from a stats dict (same layout as the policy's normalization.json),
        and with a value frame of ``value`` (discounted returns, one number each; std clamped to >= 1,
        one step's reward) and, for ``"state_value"``, ``observation.state``."""
        self.action_mean.copy_(torch.as_tensor(stats["action"]["mean"], dtype=torch.float32))
        self.action_std.copy_(torch.as_tensor(stats["action"]["std"], dtype=torch.float32).clamp_min(1e-3))
        if self.cfg.n_value_frames:
            self.value_mean.copy_(torch.as_tensor(stats["value"]["mean"], dtype=torch.float32))
            self.value_std.copy_(torch.as_tensor(stats["value"]["std"], dtype=torch.float32).clamp_min(1.0))
        if self.cfg.value_frame == "state_value":
            self.state_mean.copy_(torch.as_tensor(stats["observation.state"]["mean"], dtype=torch.float32))
            self.state_std.copy_(torch.as_tensor(stats["observation.state"]["std"], dtype=torch.float32).clamp_min(1e-3))

    def normalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.action_mean) / self.action_std

    def value_frame_target(self, returns: torch.Tensor, state: torch.Tensor | None = None) -> torch.Tensor:
        """The value frame that rectified flow learns to generate after the future frames.

        Channel ``c`` holds one number, repeated over (h, w) and every camera. ``"value"``: every
        channel holds the normalised value ``(G - value_mean) / value_std``. ``"state_value"``
        (RAMP's layout): channel 0 the value, channels ``1 .. Ds`` the normalised state
        ``(s - state_mean) / state_std``, the remaining channels the value again (so the value
        has the most weight).

        Args:
            returns: (B,) discounted return ``G`` of the chunk's last frame, return units.
            state: (B, Ds) observation.state of that frame; needed for ``"state_value"`` only.

        Returns:
            (B, N, C, h, w) float32.

        Raises:
            ValueError: a model without a value frame, or ``"state_value"`` without ``state``.
        """
        cfg = self.cfg
        if not cfg.n_value_frames:
            raise ValueError("this world model has no value frame (value_frame = 'none')")
        v = ((returns.float() - self.value_mean) / self.value_std)[:, None]  # (B, 1)
        per_channel = v.expand(-1, cfg.latent_channels)  # (B, C)
        if cfg.value_frame == "state_value":
            if state is None:
                raise ValueError("a 'state_value' frame needs the state of the chunk's last frame")
            s = (state.float() - self.state_mean) / self.state_std  # (B, Ds)
            per_channel = torch.cat([v, s, v.expand(-1, cfg.latent_channels - 1 - cfg.state_dim)], 1)
        B, N, h = len(returns), len(cfg.cameras), cfg.latent_size
        return per_channel[:, None, :, None, None].expand(B, N, cfg.latent_channels, h, h)

    def decode_value(self, frame: torch.Tensor) -> torch.Tensor:
        """Value of a generated value frame (B, N, C, h, w): the mean of its value channels, in return units. (B,)"""
        v = frame[:, :, self.value_channels].float().mean(dim=(1, 2, 3, 4))
        return v * self.value_std + self.value_mean

    def set_text_table(self, emb: torch.Tensor) -> None:
        """Store the sentence embeddings (len(tasks), text_dim) of the task vocabulary."""
        if self.text_proj is not None:
            self.text_table.copy_(emb)

    # ------------------------------------------------------------------ tokens
    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, N, c, h, w) -> (B, T * H * W, c * p * p) tokens in row-major (t, h, w) order, cameras along w."""
        p = self.cfg.patch_size
        return rearrange(x, "b t n c (y p) (x q) -> b (t y n x) (c p q)", p=p, q=p)

    def unpatchify(self, tokens: torch.Tensor, n_frames: int) -> torch.Tensor:
        """(B, T * H * W, C * p * p) -> (B, T, N, C, h, w)."""
        cfg = self.cfg
        g = cfg.latent_size // cfg.patch_size
        return rearrange(tokens, "b (t y n x) (c p q) -> b t n c (y p) (x q)", t=n_frames, n=len(cfg.cameras),
                         y=g, x=g, p=cfg.patch_size, q=cfg.patch_size)

    def action_tokens(self, frame_actions: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """Per-frame action tokens (B, T, D): a start token, then one per transition (null where dropped)."""
        B = frame_actions.shape[0]
        a = self.action_in(frame_actions.flatten(2))  # (B, T-1, D)
        a = torch.where(drop[:, None, None], self.action_null.to(a.dtype), a)
        return torch.cat([self.action_start.to(a.dtype).expand(B, 1, -1), a], 1)

    def context_tokens(self, task_index: torch.Tensor, text_emb: torch.Tensor | None, actions: torch.Tensor,
                       drop: torch.Tensor) -> torch.Tensor:
        """Cross-attention tokens (B, M, D) = [task | text | actions (T)]; task and text null where dropped."""
        null_task = torch.full_like(task_index, len(self.cfg.tasks))
        parts = [self.task_embedding(torch.where(drop, null_task, task_index)).unsqueeze(1)]
        if self.text_proj is not None:
            if text_emb is None:
                known = task_index < len(self.cfg.tasks)
                text_emb = self.text_table[task_index.clamp_max(len(self.cfg.tasks) - 1)]
                drop = drop | ~known  # unknown task and no text given: null text
            txt = self.text_proj(text_emb.to(self.text_proj.weight.dtype))
            parts.append(torch.where(drop[:, None], self.text_null.to(txt.dtype), txt).unsqueeze(1))
        parts.append(actions.to(parts[0].dtype))
        return torch.cat(parts, 1)

    @functools.cached_property
    def attn_fn(self):
        """Self-attention kernel (q, k, v) -> out for the clip grid: full or 3D neighbourhood."""
        cfg = self.cfg
        if cfg.attention == "full":
            return full_attention
        return functools.partial(neighborhood_attention, grid=cfg.grid, window=cfg.window,
                                 backend=cfg.attention_backend)

    # ------------------------------------------------------------------ network
    def velocity(self, x: torch.Tensor, t_frame: torch.Tensor, frame_actions: torch.Tensor, task_index: torch.Tensor,
                 text_emb: torch.Tensor | None = None, drop: torch.Tensor | None = None,
                 drop_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted velocity of every frame.

        Args:
            x: (B, T, N, C, h, w) clip: clean context frames, then future frames (and the value
                frame, ``T = cfg.grid[0]``) at flow time t.
            t_frame: (B, T) flow time of each frame (0 on context frames).
            frame_actions, task_index, text_emb: see the module docstring.
            drop: (B,) bool, conditions replaced by null tokens (classifier-free guidance).
            drop_actions: (B,) bool, only the actions replaced by null tokens (action-free).

        Returns:
            (B, T, N, C, h, w); only the future frames are meaningful.
        """
        cfg = self.cfg
        B, T = x.shape[:2]
        drop = torch.zeros(B, dtype=torch.bool, device=x.device) if drop is None else drop
        mask = self.is_context.to(x.dtype).view(1, T, 1, 1, 1, 1).expand(B, T, x.shape[2], 1, *x.shape[-2:])
        h = self.patch_in(self.patchify(torch.cat([x, mask], 3)))  # (B, L, D)
        act = self.action_tokens(frame_actions, drop if drop_actions is None else drop | drop_actions)  # (B, T, D)
        if self.value_token is not None:  # the value frame's token in place of an action token
            act = torch.cat([act, self.value_token.to(act.dtype).expand(B, 1, -1)], 1)  # (B, T, D)
        ctx = self.context_tokens(task_index, text_emb, act, drop)  # (B, M, D)
        cond = self.time_embedding(t_frame) + act.to(torch.float32)  # (B, T, D), one AdaLN vector per frame
        rope = (self.rope_self_cos, self.rope_self_sin)
        ctx_rope = ((self.rope_q_cos, self.rope_q_sin), (self.rope_k_cos, self.rope_k_sin))
        for blk in self.blocks:
            h = blk(h, blk.modulate(cond), ctx, rope=rope, context_rope=ctx_rope, attn_fn=self.attn_fn)
        mod = self.final.modulate(cond).repeat_interleave(cfg.tokens_per_frame, dim=1)  # (B, L, 2D)
        return self.unpatchify(self.final(h, mod), T)

    def moe_layers(self) -> list[MoEMLP]:
        return [b.mlp for b in self.blocks if isinstance(b.mlp, MoEMLP)]

    # ------------------------------------------------------------------ training
    def forward(self, latents: torch.Tensor, frame_actions: torch.Tensor, task_index: torch.Tensor,
                text_emb: torch.Tensor | None = None, action_is_pad: torch.Tensor | None = None,
                returns: torch.Tensor | None = None, state: torch.Tensor | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow loss on the future (and value) frames plus ``moe_aux_weight`` x the load-balance losses.

        ``action_is_pad`` (B, T-1, S) zeroes actions past the episode ends. With a value frame,
        ``returns`` (B,) and, for ``"state_value"``, ``state`` (B, Ds) of the chunk's last frame
        build its target (:meth:`value_frame_target`). Returns the scalar loss and its parts
        (``loss_flow`` over every generated frame, ``loss_value_frame`` its value-frame part,
        ``loss_balance``, ``expert_fraction_min``).

        Raises:
            ValueError: a value-frame model without ``returns`` (or ``state``).
        """
        cfg = self.cfg
        B, dev = latents.shape[0], latents.device
        if action_is_pad is not None:
            frame_actions = frame_actions.masked_fill(action_is_pad.unsqueeze(-1), 0.0)
        x0 = latents  # (B, T, N, C, h, w): context + future (+ value) frames
        if cfg.n_value_frames:
            if returns is None:
                raise ValueError("a value-frame world model needs the returns of the chunks' last frames")
            value_frame = self.value_frame_target(returns, state).unsqueeze(1)  # (B, 1, N, C, h, w)
            x0 = torch.cat([latents, value_frame.to(latents.dtype)], 1)
        T = x0.shape[1]
        t = sample_time(B, cfg.time_shift, generator=generator, device=dev)  # (B,)
        eps = torch.randn(x0.shape, generator=generator, device="cpu").to(dev)
        drop = (torch.rand(B, generator=generator) < cfg.cond_drop_prob).to(dev) if self.training else None
        drop_actions = None  # drawn only when used, so runs without it keep their random stream
        if self.training and cfg.action_drop_prob > 0:
            drop_actions = (torch.rand(B, generator=generator) < cfg.action_drop_prob).to(dev)
        ctx = self.is_context.view(1, T, 1, 1, 1, 1)
        x_t = torch.where(ctx, x0, interpolate(x0, eps, t))
        t_frame = torch.where(self.is_context, 0.0, t[:, None])  # (B, T)
        v = self.velocity(x_t, t_frame, frame_actions, task_index, text_emb, drop, drop_actions)
        n_ctx = cfg.n_context_frames
        loss_flow = F.mse_loss(v[:, n_ctx:].float(), velocity_target(x0[:, n_ctx:], eps[:, n_ctx:]))
        loss, logs = loss_flow, {"loss_flow": float(loss_flow.detach())}
        if cfg.n_value_frames:
            loss_value = F.mse_loss(v[:, -1].detach().float(), velocity_target(x0[:, -1], eps[:, -1]))
            logs["loss_value_frame"] = float(loss_value)
        moe = self.moe_layers()
        if moe:
            balance = torch.stack([m.aux_loss for m in moe]).mean()
            loss = loss + cfg.moe_aux_weight * len(moe) * balance
            logs["loss_balance"] = float(balance.detach())
            logs["expert_fraction_min"] = float(torch.stack([m.expert_fraction for m in moe]).min())
        logs["loss"] = float(loss.detach())
        return loss, logs

    # ------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, context: torch.Tensor, frame_actions: torch.Tensor | None, task_index: torch.Tensor,
               text_emb: torch.Tensor | None = None, **sample_kw) -> torch.Tensor:
        """Generate one chunk: :meth:`sample_with_value` without the value. (B, T, N, C, h, w)"""
        return self.sample_with_value(context, frame_actions, task_index, text_emb, **sample_kw)[0]

    @torch.no_grad()
    def predict_value(self, context: torch.Tensor, frame_actions: torch.Tensor | None, task_index: torch.Tensor,
                      text_emb: torch.Tensor | None = None, **sample_kw) -> torch.Tensor:
        """The value ``V(s_{t+n})`` of the state at the end of the chunk, ``n = chunk_steps``, in return units. (B,)

        ``t`` is the anchor (the last context frame). The value frame is generated jointly with
        the chunk (:meth:`sample_with_value`, the full ``n_sampling_steps`` denoising). Why the
        chunk's last frame and not the anchor: the model is conditioned on the chunk's actions,
        so a value of the anchor would be ``Q(s_t, a_{t:t+n})`` and the n-step TD advantage
        ``A_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}) - V(s_t)`` (RAMP) would lose the
        actions' effect; the value of the frame the actions lead to is a function of them,
        is what RAMP tiles (the value and state of a predicted frame), and is exactly the
        bootstrap term of ``A_t``. ``V(s_t)`` itself is the previous chunk's prediction (the
        clip anchored at ``t - n``). Targets past an episode's end are its last frame's return.

        Raises:
            ValueError: a model without a value frame, or what :meth:`sample_with_value` raises.
        """
        if not self.cfg.n_value_frames:
            raise ValueError("this world model has no value frame (value_frame = 'none'); train with --value-frame")
        return self.sample_with_value(context, frame_actions, task_index, text_emb, **sample_kw)[1]

    @torch.no_grad()
    def predict_future_latent(self, current: torch.Tensor, task_index: torch.Tensor, text_emb: torch.Tensor | None = None,
                              *, n_steps: int = 1, generator: torch.Generator | None = None,
                              noise: torch.Tensor | None = None) -> torch.Tensor:
        """RAMP's future latent ``z``: the action-free prediction of the chunk's *last* frame (B, N, C, h, w).

        GigaBrain-0.5M* (RAMP, arXiv 2602.12099) conditions its policy on the world model's
        predicted future; its "standard" inference mode runs one denoising step for it. Here:
        ``n_steps`` Euler steps (default 1) of :meth:`sample` from ``noise`` (drawn from
        ``generator`` if None) with ``frame_actions=None`` (null action tokens: what the task
        does next from this frame, meaningful for models trained with ``action_drop_prob > 0``),
        keeping only the last future frame (``chunk_steps`` env steps ahead, the frame whose
        value the value frame predicts). The context is ``current`` repeated
        ``n_context_frames`` times (the one frame a policy has at inference; the clamped history
        of an episode's first frame), so labels and inference compute ``z`` alike.

        Args:
            current: (B, N, C, h, w) latents of the current frame (this model's tokenizer).
            task_index, text_emb: see the module docstring.
        """
        context = current.unsqueeze(1).expand(-1, self.cfg.n_context_frames, *current.shape[1:])
        return self.sample(context, None, task_index, text_emb, n_steps=n_steps, noise=noise, generator=generator)[:, -1]

    @torch.no_grad()
    def sample_with_value(self, context: torch.Tensor, frame_actions: torch.Tensor | None, task_index: torch.Tensor,
                          text_emb: torch.Tensor | None = None, *, n_steps: int | None = None,
                          guidance_scale: float | None = None, noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Generate one chunk (and its value frame) by ``n_steps`` Euler steps from t = 1 to t = 0.

        Args:
            context: (B, n_context_frames, N, C, h, w) clean conditioning latents.
            frame_actions: (B, T - 1, S, Da) normalised actions leading into every later frame, or
                None: action-free (null action tokens; meaningful for models trained with
                ``action_drop_prob > 0``).
            guidance_scale: ``v = v_uncond + g (v_cond - v_uncond)``; 1 = conditional only.
            noise: (B, n_future_frames + n_value_frames, N, C, h, w) initial noise; drawn from
                ``generator`` if None.

        Returns:
            clip: (B, T, N, C, h, w), the context frames exactly as given, then the generated frames.
            value: (B,) ``V(s_{t+n})`` in return units (:meth:`predict_value`), or None without a
                value frame.
        """
        cfg = self.cfg
        n_ctx, n_fut = cfg.n_context_frames, cfg.n_future_frames
        if context.shape[1] != n_ctx:
            raise ValueError(f"expected {n_ctx} context frames, got {context.shape[1]}")
        B, dev = context.shape[0], context.device
        g = cfg.guidance_scale if guidance_scale is None else guidance_scale
        n_gen = n_fut + cfg.n_value_frames
        x = noise if noise is not None else torch.randn((B, n_gen, *context.shape[2:]), generator=generator).to(dev)
        x = x.to(context.dtype)
        guided = g != 1.0
        rep = (lambda a: torch.cat([a, a])) if guided else (lambda a: a)  # noqa: E731
        drop = torch.zeros(B, dtype=torch.bool, device=dev)
        drop = torch.cat([drop, ~drop]) if guided else drop
        drop_actions = None
        if frame_actions is None:
            frame_actions = torch.zeros(B, cfg.n_frames - 1, cfg.frame_stride, cfg.action_dim, device=dev)
            drop_actions = torch.ones_like(drop)
        acts, task = rep(frame_actions), rep(task_index)
        text = None if text_emb is None else rep(text_emb)
        times = euler_timesteps(n_steps or cfg.n_sampling_steps, cfg.time_shift).tolist()
        for t, t_next in zip(times[:-1], times[1:]):
            clip = torch.cat([context, x], 1)  # context frames are re-inserted clean at every step
            t_frame = torch.where(self.is_context, 0.0, t).expand(len(drop), -1)
            v = self.velocity(rep(clip), t_frame, acts, task, text, drop, drop_actions)[:, n_ctx:].float()
            if guided:
                v_cond, v_uncond = v.chunk(2)
                v = v_uncond + g * (v_cond - v_uncond)
            x = euler_step(x, v.to(x.dtype), t, t_next)
        value = self.decode_value(x[:, n_fut]) if cfg.n_value_frames else None
        return torch.cat([context, x[:, :n_fut]], 1), value

    @torch.no_grad()
    def rollout(self, context: torch.Tensor, actions: torch.Tensor | None, task_index: torch.Tensor, n_chunks: int,
                text_emb: torch.Tensor | None = None, **sample_kw) -> torch.Tensor:
        """Autoregressive dreaming over ``n_chunks`` chunks; each chunk conditions on the last frames so far.

        Args:
            context: (B, n_context_frames, N, C, h, w) clean start latents, the last one at step 0.
            actions: (B, (n_context_frames - 1) * S + n_chunks * chunk_steps, Da) normalised
                actions from the first context frame on (those between context frames first), or
                None: an action-free dream (see :meth:`sample`).
            sample_kw: passed to :meth:`sample` (n_steps, guidance_scale, generator).

        Returns:
            (B, n_chunks * n_future_frames, N, C, h, w) generated latents at steps S, 2S, ...
        """
        cfg = self.cfg
        S, hist, n_ctx = cfg.frame_stride, (cfg.n_context_frames - 1) * cfg.frame_stride, cfg.n_context_frames
        need = hist + n_chunks * cfg.chunk_steps
        if actions is not None and actions.shape[1] < need:
            raise ValueError(f"{n_chunks} chunks need {need} actions, got {actions.shape[1]}")
        frames = list(context.unbind(1))
        for c in range(n_chunks):
            a = None
            if actions is not None:
                a = actions[:, c * cfg.chunk_steps: c * cfg.chunk_steps + hist + cfg.chunk_steps]
                a = a.reshape(a.shape[0], cfg.n_frames - 1, S, -1)
            clip = self.sample(torch.stack(frames[-n_ctx:], 1), a, task_index, text_emb, **sample_kw)
            frames += clip[:, n_ctx:].unbind(1)
        return torch.stack(frames[n_ctx:], 1)
