"""Inverse-dynamics model (IDM): the actions that moved the robot through a short video clip.

The data engine of GigaWorld-0 (GigaWorld-0, Sec. on data engine; arXiv 2511.19861) turns
generated videos into training data by labelling them with actions; the labeller is an
inverse-dynamics model as in DreamGen (arXiv 2505.12705, Sec. 3: "neural trajectories" are
generated videos labelled by an IDM). DreamGen's IDM reads two frames, the start and the end
of an action chunk, and predicts the chunk between them (a diffusion transformer over
SigLIP-2 features). Here:

* **Input**: tokenizer latents of the clip ``t, t + s, ..., t + H`` (``frame_stride`` s; the
  default s = 1 sees every frame, s = H is DreamGen's two-frame IDM) of every camera, plus the
  proprioceptive state at t. A generated video has images only: the state is known at its
  first frame (the initial state the video was generated from) and nowhere later, so the
  state is the only non-image input and it may be missing: with probability
  ``state_dropout`` it is replaced in training by a learned "state unknown" token, which
  :func:`label` uses for every window after the first.
* **Output**: the action chunk ``a_t, ..., a_{t+H-1}`` (H, Da) that took frame t to frame
  t + H (action ``a_i`` is applied at frame i and leads to frame i + 1), normalised with the
  training data's mean/std (the gripper dimension too). Two optional heads on the same query
  tokens make it the full labeller of a generated video: ``predict_state`` regresses the
  normalised state each action led to (frames t + 1 .. t + H: a generated video shows the robot
  but records no proprioception) and ``predict_success`` a logit of ``next.success`` (the task
  is done after action i), which :mod:`robodream.world_model.dreams` uses to filter dreams.
* **Model**: a transformer encoder (the shared :class:`~robodream.models.transformer.AdaLNBlock`,
  full attention) over ``[state (1) | clip patches (F x n_cam x tokens_per_frame) | action
  queries (H)]``; the query tokens are read out by a zero-initialised linear head (so an
  untrained model predicts the mean action). No flow time and no task: the blocks'
  AdaLN conditioning is one learned vector. Objective: L1 (default) or MSE regression on
  the normalised chunk, steps past the episode end masked out (DreamGen uses flow matching;
  a deterministic regression is the simpler labeller, one forward pass per chunk).

Tensor conventions (B = batch, F = clip frames, N = cameras, C/h/w = tokenizer latent grid):
    latents:  (B, F, N, C, h, w)  tokenizer latents of frames t + frame_offsets
    state:    (B, Ds)             normalised state at t
    actions:  (B, H, Da)          normalised action chunk
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
from einops import rearrange

from robodream.errors import ConfigError
from robodream.models.normalization import StateActionNormalization
from robodream.models.transformer import AdaLNBlock, FinalLayer

LOSSES = ("l1", "mse")


@dataclass
class IDMConfig:
    """Architecture and objective of :class:`InverseDynamicsModel`."""

    # --- inputs (filled from the dataset and tokenizer at training time) -------------------
    state_dim: int = 4  # proprioceptive state size (state at the clip's first frame only)
    action_dim: int = 4  # action size per step
    cameras: tuple[str, ...] = ("corner", "behindGripper")  # camera order of the latent tokens
    latent_channels: int = 8  # tokenizer latent channels C
    latent_size: int = 8  # tokenizer latent grid side h = w
    image_size: int = 64  # frame side the tokenizer expects

    # --- clip and chunk ---------------------------------------------------------------------
    horizon: int = 8  # action chunk length H: actions a_t .. a_{t+H-1}, clip frames t .. t+H
    frame_stride: int = 1  # clip frames every s steps (1: all H + 1 frames; H: DreamGen's first and last)
    state_dropout: float = 0.5  # training probability of the "state unknown" token (label() knows only state 0)

    # --- transformer ------------------------------------------------------------------------
    dim: int = 128  # token width
    depth: int = 3  # number of blocks
    n_heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    patch_size: int = 2  # latent patch side: a token covers patch_size^2 latent cells
    loss: str = "l1"  # regression loss on normalised actions: l1 or mse
    predict_state: bool = True  # also regress the state after each action (frames t+1 .. t+H)
    predict_success: bool = True  # also predict next.success after each action (a logit)
    state_loss_weight: float = 1.0  # weight of the state regression (same loss as the actions)
    success_loss_weight: float = 0.1  # weight of the success binary cross-entropy

    extra: dict = field(default_factory=dict)  # free-form notes carried into config.json

    #: Fields filled in from the datasets and the tokenizer at training time (not options).
    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("state_dim", "action_dim", "cameras", "latent_channels",
                                                 "latent_size", "image_size")
    #: Values of fields added since the first runs, for runs saved without them.
    LEGACY_DEFAULTS: ClassVar[dict[str, object]] = {"predict_state": False, "predict_success": False}

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        if self.horizon < 1 or self.frame_stride < 1 or self.horizon % self.frame_stride:
            raise ConfigError(f"horizon ({self.horizon}) must be a positive multiple of frame_stride "
                              f"({self.frame_stride})")
        if not 0 <= self.state_dropout <= 1:
            raise ConfigError(f"state_dropout must be in [0, 1], got {self.state_dropout}")
        if self.latent_size % self.patch_size:
            raise ConfigError(f"latent_size {self.latent_size} not divisible by patch_size {self.patch_size}")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} not divisible by n_heads {self.n_heads}")
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def frame_offsets(self) -> list[int]:
        """Clip frames relative to t: 0, s, ..., H."""
        return list(range(0, self.horizon + 1, self.frame_stride))

    @property
    def out_dim(self) -> int:
        """Numbers per query token: the action, then the state and the success logit when predicted."""
        return self.action_dim + self.state_dim * self.predict_state + int(self.predict_success)

    @property
    def tokens_per_frame(self) -> int:
        return (self.latent_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Numbers per latent token (C * p * p)."""
        return self.latent_channels * self.patch_size**2

    @property
    def n_clip_tokens(self) -> int:
        return len(self.frame_offsets) * len(self.cameras) * self.tokens_per_frame


class InverseDynamicsModel(StateActionNormalization, nn.Module):
    """Clip latents (+ state at t) -> action chunk. See the module docstring."""

    model_type = "inverse_dynamics"

    def __init__(self, cfg: IDMConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D = cfg.dim
        self.latent_in = nn.Linear(cfg.patch_dim, D)
        self.state_in = nn.Linear(cfg.state_dim, D)
        self.unknown_state = nn.Parameter(torch.zeros(D))  # the state token when the state is not observed
        self.pos_state = nn.Parameter(torch.zeros(1, D))
        self.pos_clip = nn.Parameter(torch.zeros(cfg.n_clip_tokens, D))
        self.action_queries = nn.Parameter(torch.zeros(cfg.horizon, D))
        self.cond = nn.Parameter(torch.zeros(1, 1, D))  # AdaLN conditioning shared by every token and sample
        self.blocks = nn.ModuleList(AdaLNBlock(D, cfg.n_heads, cfg.mlp_ratio) for _ in range(cfg.depth))
        self.head = FinalLayer(D, cfg.out_dim)  # zero-initialised: starts at the mean action (and state)
        for p in (self.unknown_state, self.pos_state, self.pos_clip, self.action_queries, self.cond):
            nn.init.normal_(p, std=0.02)
        self.init_normalization(cfg.state_dim, cfg.action_dim)

    def forward(self, latents: torch.Tensor, state: torch.Tensor | None = None,
                state_known: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted normalised action chunk (B, H, Da); see :meth:`predict` for the arguments."""
        return self.predict(latents, state, state_known)["action"]

    def predict(self, latents: torch.Tensor, state: torch.Tensor | None = None,
                state_known: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Every head's output for a batch of clips.

        Args:
            latents: (B, F, N, C, h, w) clip latents, F = ``len(cfg.frame_offsets)``.
            state: (B, Ds) normalised state at the clip's first frame, or None (not observed).
            state_known: (B,) bool, False where ``state`` is to be ignored (the "state unknown"
                token instead); None: every given state is known.

        Returns:
            ``action`` (B, H, Da) normalised; with ``predict_state`` also ``state`` (B, H, Ds), the
            normalised state after each action (frames t + 1 .. t + H); with ``predict_success``
            ``success_logit`` (B, H), the logit of ``next.success`` after each action.

        Raises:
            ValueError: latents of another clip length, camera count or latent grid.
        """
        cfg = self.cfg
        B = latents.shape[0]
        want = (len(cfg.frame_offsets), len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if tuple(latents.shape[1:]) != want:
            raise ValueError(f"latents must be (B, {', '.join(map(str, want))}), got {tuple(latents.shape)}")
        p = cfg.patch_size
        patches = rearrange(latents, "b f n c (y p) (x q) -> b (f n y x) (c p q)", p=p, q=p)  # (B, L, C*p*p)
        clip = self.latent_in(patches) + self.pos_clip  # (B, L, D)
        unknown = self.unknown_state.expand(B, 1, -1)  # (B, 1, D)
        if state is None:
            s = unknown
        else:
            s = self.state_in(state).unsqueeze(1)  # (B, 1, D)
            if state_known is not None:
                s = torch.where(state_known.view(B, 1, 1), s, unknown)
        x = torch.cat([s + self.pos_state, clip, self.action_queries.expand(B, -1, -1)], dim=1)  # (B, 1+L+H, D)
        cond = self.cond.expand(B, -1, -1)  # (B, 1, D)
        for blk in self.blocks:
            x, _ = blk(x, blk.modulate(cond))
        y = self.head(x[:, -cfg.horizon:], self.head.modulate(cond))  # (B, H, out_dim)
        Da, Ds = cfg.action_dim, cfg.state_dim
        out = {"action": y[..., :Da]}
        if cfg.predict_state:
            out["state"] = y[..., Da:Da + Ds]
        if cfg.predict_success:
            out["success_logit"] = y[..., -1]
        return out

    def loss(self, latents: torch.Tensor, state: torch.Tensor, actions: torch.Tensor,
             action_is_pad: torch.Tensor | None = None, next_state: torch.Tensor | None = None,
             next_state_is_pad: torch.Tensor | None = None, success: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss, with the state dropped (``cfg.state_dropout``, drawn from ``generator``).

        The regression loss (``cfg.loss``) on normalised actions (B, H, Da), steps past the
        episode end (``action_is_pad`` (B, H) bool) excluded; plus, for the heads the config
        enables and whose targets are given, ``state_loss_weight`` x the same loss on the
        normalised next states (B, H, Ds) (``next_state_is_pad`` (B, H): no next frame in the
        episode) and ``success_loss_weight`` x the binary cross-entropy of ``success`` (B, H)
        (float 0/1, padded steps excluded). Returns the scalar loss and its parts as floats.
        """
        cfg = self.cfg
        B = latents.shape[0]
        known = torch.rand(B, generator=generator) >= cfg.state_dropout  # (B,) on CPU: device-independent
        pred = self.predict(latents, state, known.to(latents.device))

        def masked_mean(err: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:  # err (B, H)
            if pad is None:
                return err.mean()
            w = (~pad).float()
            return (err * w).sum() / w.sum().clamp_min(1.0)

        def regression(p: torch.Tensor, target: torch.Tensor) -> torch.Tensor:  # (B, H, D) -> (B, H)
            d = p.float() - target
            return (d.abs() if cfg.loss == "l1" else d.pow(2)).mean(-1)

        loss = masked_mean(regression(pred["action"], actions), action_is_pad)
        parts = {"action_loss": float(loss.detach())}
        if cfg.predict_state and next_state is not None:
            state_loss = masked_mean(regression(pred["state"], next_state), next_state_is_pad)
            loss = loss + cfg.state_loss_weight * state_loss
            parts["state_loss"] = float(state_loss.detach())
        if cfg.predict_success and success is not None:
            bce = nn.functional.binary_cross_entropy_with_logits(pred["success_logit"].float(), success.float(),
                                                                 reduction="none")
            success_loss = masked_mean(bce, action_is_pad)
            loss = loss + cfg.success_loss_weight * success_loss
            parts["success_loss"] = float(success_loss.detach())
        return loss, {"loss": float(loss.detach()), **parts}


@torch.no_grad()
def label(idm: InverseDynamicsModel, latents: torch.Tensor, state0: torch.Tensor | None = None,
          batch_size: int = 64) -> torch.Tensor:
    """Label a whole episode video with actions, chunk by chunk.

    Windows start at t = 0, H, 2H, ... (H = ``idm.cfg.horizon``): window t reads frames
    ``t + frame_offsets`` (clamped to the last frame: the scene after the video is its last
    frame) and gives actions ``t .. t + H - 1``; the chunks are concatenated and cut to T. Every
    action is predicted once, from a clip that spans it (the alternative, a window per step
    keeping its first action, costs H times more and never uses the rest of the chunk). Only the
    first window sees the state (``state0``); later windows get the "state unknown" token the
    model was trained with (a generated video shows no later proprioception). The last action
    ``a_{T-1}`` leads to a frame the video does not hold, so it is predicted from a clip padded
    with the last frame: expect it to be the least accurate.

    Args:
        idm: a trained model (normalisation set; eval mode is the caller's business).
        latents: (T, N, C, h, w) tokenizer latents of every frame of the video, T >= 1.
        state0: (Ds,) the state at frame 0 in state units (metres, gripper opening), or None.
        batch_size: windows per forward pass.

    Returns:
        (T, Da) float32 actions in action units (unnormalised), on ``latents.device``; action t
        is the one applied at frame t.

    Raises:
        ValueError: ``latents`` not 5-D or with another camera count or latent grid than the model.
    """
    return label_video(idm, latents, state0, batch_size)["action"]


@torch.no_grad()
def label_video(idm: InverseDynamicsModel, latents: torch.Tensor, state0: torch.Tensor | None = None,
                batch_size: int = 64) -> dict[str, torch.Tensor]:
    """:func:`label` with every head the model has: actions, states and success.

    Windows as in :func:`label`. Returns, on ``latents.device``, float32:
        ``action`` (T, Da) in action units;
        with ``predict_state`` and ``state0``: ``state`` (T, Ds) in state units, ``state[0] = state0`` and
        ``state[t]`` for t >= 1 the predicted state after action t - 1;
        with ``predict_success``: ``success_prob`` (T,), the probability that the task reports
        success after action t (``next.success``).

    Raises:
        ValueError: as :func:`label`.
    """
    cfg = idm.cfg
    if latents.dim() != 5:
        raise ValueError(f"latents must be (T, N, C, h, w), got shape {tuple(latents.shape)}")
    T, H, dev = latents.shape[0], cfg.horizon, latents.device
    starts = torch.arange(0, T, H, device=dev)  # (W,)
    frames = (starts[:, None] + torch.tensor(cfg.frame_offsets, device=dev)).clamp_max(T - 1)  # (W, F)
    known = starts == 0  # (W,)
    state = None
    if state0 is not None:
        state = idm.normalize_state(torch.as_tensor(state0, dtype=torch.float32, device=dev)).expand(len(starts), -1)
    parts: dict[str, list[torch.Tensor]] = {}
    for i in range(0, len(starts), batch_size):
        sl = slice(i, i + batch_size)
        out = idm.predict(latents[frames[sl]].float(), None if state is None else state[sl], known[sl])
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float())
    pred = {k: torch.cat(v) for k, v in parts.items()}  # (W, H, ...)
    result = {"action": idm.unnormalize_action(pred["action"]).reshape(-1, cfg.action_dim)[:T]}
    if "state" in pred and state0 is not None:  # without the state at frame 0 no row 0
        after = idm.unnormalize_state(pred["state"]).reshape(-1, cfg.state_dim)[:T]  # after action t
        first = torch.as_tensor(state0, dtype=torch.float32, device=dev).reshape(1, -1)
        result["state"] = torch.cat([first, after[:T - 1]])
    if "success_logit" in pred:
        result["success_prob"] = torch.sigmoid(pred["success_logit"]).reshape(-1)[:T]
    return result
