"""GigaWorld-Policy: an action-centred world-action model (arXiv 2603.17240).

One transformer reads ``[state | reference-frame latents | action chunk | future-frame
latents]`` and is trained with rectified flow on the action chunk and the future latents
(one noise level per sample, time shift s = 5; state and reference tokens stay clean at
t = 0). A **block-causal mask** lets state+reference attend only to themselves, actions to
state+reference+actions, and future frames to everything — so future video never
influences the actions, and at inference the future tokens can be dropped entirely
("action-only" mode, Sec. 3.3): the clean prefix is encoded once, its keys/values are
cached, and only the action tokens are denoised for ``n_inference_steps`` Euler steps.

``mask = "full"`` gives the joint (Motus-style) ablation where actions see the future
video, so inference must denoise video and actions together and nothing can be cached.
``video_stride = 0`` removes the future tokens (plain flow-matching behaviour cloning).
``action_expert_dim > 0`` gives the action tokens their own narrower weights that share
attention with the other tokens (Mixture-of-Transformers, GigaWorld-Policy v0.5), so the
action-only denoising steps run only the narrow expert.

Tensor conventions (B = batch, N = cameras, C/h/w = tokenizer latent grid):
    state:          (B, state_dim)            normalised
    ref_latents:    (B, N, C, h, w)           tokenizer latents of the current frames
    actions:        (B, H, action_dim)        normalised action chunk
    future_latents: (B, F, N, C, h, w)        latents of frames t+S, ..., t+H
    task_index:     (B,) long
    ref_frames:     (B, N, 3, H, W) uint8     the raw current frames (only with a pixel stem)

``pixel_stem_width > 0`` adds a conv stem over the raw reference frames whose features are
added to the reference tokens (same grid, so the token count and latency barely change): the
tokenizer's latents lose 2-5 pixel objects such as reach's goal marker (benchmarks/RESULTS.md).
``stem_keypoints > 0`` adds a spatial softmax on the stem's half-resolution features: K (x, y)
keypoints per camera, embedded into the state token.

``aux_state_weight > 0`` adds auxiliary state prediction: a linear head regresses the
privileged object and goal state (``observation.environment_state``, normalised) from the state
token's output, a training loss only (Jaderberg et al. 2017's auxiliary tasks; the privileged
targets of asymmetric actor-critic, Pinto et al. 2018). Inputs never include that state.

RAMP conditioning (GigaBrain-0.5M*, arXiv 2602.12099; :mod:`robodream.rl.labels` makes the
labels): ``advantage_conditioning`` adds an embedding of the advantage indicator ``I`` to the
state token (rows 0 negative, 1 positive, 2 unknown / dropped); ``future_conditioning``
appends the world model's predicted future latent ``z`` (one frame) to the clean prefix as
its own tokens (``z_in`` + positions; a learned null token where dropped). Both are prefix,
so the block-causal mask, the cached prefix and action-only inference work unchanged. In
training each is dropped per sample with probability ``condition_dropout`` (RAMP: 0.2), so
the model is also the unconditioned policy; inference asks for ``I = 1`` (RECAP's and
RAMP's rule) with ``z`` ("standard") or without ("efficient").

    indicator:      (B,) long in {0, 1, 2}    advantage indicator (2 = unknown); None = unknown
    z_latents:      (B, N, C, h, w)           the world model's future latent; None = dropped
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from robodream.envs.shift import SEG_CLASSES
from robodream.errors import ConfigError
from robodream.models.flow import euler_timesteps, interpolate, sample_time, velocity_target
from robodream.models.normalization import MIN_STD, StateActionNormalization
from robodream.models.stem import ConvStem, SpatialSoftmax, keypoint_target
from robodream.models.transformer import (
    KV,
    MLP,
    AdaLNBlock,
    CrossAttention,
    FinalLayer,
    RMSNorm,
    TimestepEmbedding,
    modulated_norm,
    multi_stream_block,
    split_modulation,
)
from robodream.policy.configuration import PolicyConfig
from robodream.policy.inference import FastInference

# Token groups of the block-causal mask, in sequence order.
PREFIX, ACTION, FUTURE = 0, 1, 2
# Rows of the advantage-indicator embedding: I = 0, I = 1, and unknown (dropped in training).
NEGATIVE, POSITIVE, UNKNOWN = 0, 1, 2


def block_causal_mask(group_of_query: torch.Tensor, group_of_key: torch.Tensor, mask: str) -> torch.Tensor:
    """Boolean attention mask (Lq, Lk), True where a query token may attend a key token.

    Block-causal (GigaWorld-Policy, Sec. 3.2): a token attends keys whose group index is
    <= its own (prefix=0, action=1, future=2). ``mask="full"`` lets everything attend
    everything.
    """
    if mask == "full":
        return torch.ones(len(group_of_query), len(group_of_key), dtype=torch.bool)
    return group_of_key.unsqueeze(0) <= group_of_query.unsqueeze(1)


@dataclass
class PolicyOutput:
    """Result of one inference call.

    actions: (B, H, action_dim) normalised action chunk.
    future_latents: (B, F, N, C, h, w) predicted future latents, or None (action-only).
    """

    actions: torch.Tensor
    future_latents: torch.Tensor | None = None


class GWMFeaturePool(nn.Module):
    """GWM set-VAE latents -> a few prefix tokens (GWM, arXiv 2508.17600, Sec. 3.3: the GWM's
    features as the policy's visual input; Perceiver-style pooling, Jaegle et al. 2021).

    Every latent vector is embedded (a linear map plus a learned embedding of its index: with the
    VAE's fixed anchors, index j is the same region of space in every frame), then ``n_tokens``
    learned queries cross-attend to all of them, followed by an MLP.
    (B, n_latents, latent_dim) -> (B, n_tokens, dim).

    Raises:
        ConfigError: ``n_latents`` or ``latent_dim`` < 1 (no VAE to read from).
    """

    def __init__(self, n_latents: int, latent_dim: int, n_tokens: int, dim: int, heads: int) -> None:
        super().__init__()
        if n_latents < 1 or latent_dim < 1:
            raise ConfigError(f"GWM features (gwm_tokens={n_tokens}) need a set VAE's latent shape, got "
                              f"{n_latents} x {latent_dim}: train with --gwm-vae RUN")
        self.embed = nn.Linear(latent_dim, dim)
        self.pos = nn.Parameter(torch.randn(n_latents, dim) * 0.02)
        self.queries = nn.Parameter(torch.randn(n_tokens, dim) * 0.02)
        self.q_norm, self.kv_norm, self.mlp_norm = RMSNorm(dim), RMSNorm(dim), RMSNorm(dim)
        self.attn = CrossAttention(dim, heads)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        kv = self.kv_norm(self.embed(latents) + self.pos)  # (B, L, D)
        q = self.queries.expand(latents.shape[0], -1, -1)
        x = q + self.attn(self.q_norm(q), kv)
        return x + self.mlp(self.mlp_norm(x))


class GigaWorldPolicy(FastInference, StateActionNormalization, nn.Module):
    """The world-action transformer. See the module docstring for the token layout."""

    model_type = "gigaworld_policy"
    #: RAMP's conditioning modules, which a warm start (``init_from``) may add to a plain policy's
    #: weights: config flag -> parameter name prefixes (:func:`robodream.train.run_dir.init_from_run`).
    ADDABLE_MODULES = {"advantage_conditioning": ("indicator_embedding.",),
                       "future_conditioning": ("z_in.", "pos_z", "z_null")}
    #: Settings read only by those modules.
    ADDABLE_SETTINGS = ("condition_dropout",)

    def __init__(self, cfg: PolicyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, Da = cfg.dim, cfg.action_width
        n_cam = len(cfg.cameras)
        self.state_in = nn.Linear(cfg.state_dim, D)
        self.latent_in = nn.Linear(cfg.patch_dim, D)
        self.pixel_stem = ConvStem(3, cfg.pixel_stem_width, D, cfg.stem_halvings) if cfg.pixel_stem_width else None
        self.keypoints = SpatialSoftmax(cfg.pixel_stem_width, cfg.stem_keypoints) if cfg.stem_keypoints else None
        self.keypoint_in = nn.Linear(n_cam * cfg.stem_keypoints * 2, D) if cfg.stem_keypoints else None
        has_aux = bool(cfg.aux_state_weight and cfg.aux_state_dim)
        self.aux_head = nn.Sequential(nn.LayerNorm(D), nn.Linear(D, cfg.aux_state_dim)) if has_aux else None
        self.action_in = nn.Linear(cfg.action_dim, Da)
        self.pos_state = nn.Parameter(torch.zeros(1, D))
        self.pos_ref = nn.Parameter(torch.zeros(n_cam * cfg.tokens_per_frame, D))
        self.pos_action = nn.Parameter(torch.zeros(cfg.horizon, Da))
        # Future-frame parameters exist only with video supervision (video_stride > 0), so a
        # plain-BC model has no unused parameters (DDP requires every parameter to get a gradient).
        self.pos_future = nn.Parameter(torch.zeros(cfg.n_future_tokens, D)) if cfg.n_future else None
        self.task_embedding = nn.Embedding(len(cfg.tasks), D)
        self.time_embedding = TimestepEmbedding(D)
        # With an action expert and no video tokens, the last wide block only gives the prefix's
        # keys/values to the action tokens: it has no output projection or MLP (nothing reads them).
        kv_only_last = bool(cfg.action_expert_dim) and not cfg.n_future
        self.blocks = nn.ModuleList(AdaLNBlock(D, cfg.n_heads, cfg.mlp_ratio, kv_only=kv_only_last and i == cfg.depth - 1)
                                    for i in range(cfg.depth))
        # The action expert: narrow blocks whose attention uses the main blocks' heads.
        self.action_blocks = nn.ModuleList(
            AdaLNBlock(Da, cfg.n_heads, cfg.mlp_ratio, cond_dim=D, attn_dim=D) for _ in range(cfg.depth)
        ) if cfg.action_expert_dim else None
        self.action_out = FinalLayer(Da, cfg.action_dim, cond_dim=D)
        self.latent_out = FinalLayer(D, cfg.patch_dim) if cfg.n_future else None
        for p in (self.pos_state, self.pos_ref, self.pos_action, self.pos_future):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        # RAMP conditioning (created last: unconditioned models keep their initial weights).
        self.indicator_embedding = nn.Embedding(3, D) if cfg.advantage_conditioning else None
        self.z_in = nn.Linear(cfg.patch_dim, D) if cfg.future_conditioning else None
        self.pos_z = nn.Parameter(torch.zeros(cfg.n_z_tokens, D)) if cfg.future_conditioning else None
        self.z_null = nn.Parameter(torch.zeros(D)) if cfg.future_conditioning else None
        for p in (self.pos_z, self.z_null, None if self.indicator_embedding is None else self.indicator_embedding.weight):
            if p is not None:
                nn.init.normal_(p, std=0.02)
        # GWM features (created after RAMP's: models without them keep their initial weights).
        self.gwm_pool = GWMFeaturePool(cfg.gwm_latents, cfg.gwm_latent_dim, cfg.gwm_tokens, D, cfg.n_heads) \
            if cfg.gwm_tokens else None

        # Group index of every token of a full training sequence [prefix | actions | future].
        groups = torch.cat([
            torch.full((cfg.n_prefix_tokens,), PREFIX),
            torch.full((cfg.horizon,), ACTION),
            torch.full((cfg.n_future_tokens,), FUTURE),
        ]).long()
        self.register_buffer("groups", groups, persistent=False)
        self.register_buffer("train_mask", block_causal_mask(groups, groups, cfg.mask), persistent=False)
        # Normalisation statistics travel with the weights (also written to normalization.json).
        self.init_normalization(cfg.state_dim, cfg.action_dim)
        if has_aux:
            self.register_buffer("env_state_mean", torch.zeros(cfg.aux_state_dim))
            self.register_buffer("env_state_std", torch.ones(cfg.aux_state_dim))

    def set_normalization(self, stats: dict[str, dict[str, list[float]]]) -> None:
        """State and action statistics (:class:`StateActionNormalization`), and those of
        ``observation.environment_state`` for a model with an auxiliary state head.

        Raises:
            KeyError: an auxiliary head and no ``observation.environment_state`` statistics.
        """
        super().set_normalization(stats)
        if self.aux_head is not None:
            env = stats["observation.environment_state"]
            self.env_state_mean.copy_(torch.as_tensor(env["mean"], dtype=torch.float32))
            self.env_state_std.copy_(torch.as_tensor(env["std"], dtype=torch.float32).clamp_min(MIN_STD))

    def normalize_env_state(self, e: torch.Tensor) -> torch.Tensor:
        """(B, De) environment state -> normalised (a model with an auxiliary state head)."""
        return (e - self.env_state_mean) / self.env_state_std

    def upgrade_state_dict(self, sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Weights saved by earlier versions, made to fit: the kv-only last block of a no-video
        action-expert model had an output projection and MLP that nothing used (dropped here)."""
        if self.blocks[-1].kv_only:
            stale = (f"blocks.{len(self.blocks) - 1}.attn.proj.", f"blocks.{len(self.blocks) - 1}.mlp.")
            sd = {k: v for k, v in sd.items() if not k.startswith(stale)}
        return sd

    # ------------------------------------------------------------------ token embedding
    def _patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, ..., C, h, w) -> (B, n_tokens, C*p*p), frames and cameras flattened in order."""
        p = self.cfg.patch_size
        lat = latents.reshape(latents.shape[0], -1, *latents.shape[-3:])  # (B, M, C, h, w)
        return rearrange(lat, "b m c (y p) (x q) -> b (m y x) (c p q)", p=p, q=p)

    def _unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, F*N*tokens_per_frame, C*p*p) -> (B, F, N, C, h, w)."""
        cfg = self.cfg
        g = cfg.latent_size // cfg.patch_size
        return rearrange(
            tokens, "b (f n y x) (c p q) -> b f n c (y p) (x q)",
            f=cfg.n_future, n=len(cfg.cameras), y=g, x=g, p=cfg.patch_size, q=cfg.patch_size,
        )

    def _embed_prefix(self, state: torch.Tensor, ref_latents: torch.Tensor, ref_frames: torch.Tensor | None = None,
                      indicator: torch.Tensor | None = None, z_latents: torch.Tensor | None = None,
                      z_drop: torch.Tensor | None = None, gwm_latents: torch.Tensor | None = None) -> torch.Tensor:
        """Prefix tokens (B, P, D): [state (+ keypoints, + indicator) | reference latents (+ stem) | z | GWM]."""
        return self._embed_prefix_with_maps(state, ref_latents, ref_frames, indicator, z_latents, z_drop,
                                            gwm_latents)[0]

    def _embed_prefix_with_maps(self, state: torch.Tensor, ref_latents: torch.Tensor,
                                ref_frames: torch.Tensor | None = None, indicator: torch.Tensor | None = None,
                                z_latents: torch.Tensor | None = None, z_drop: torch.Tensor | None = None,
                                gwm_latents: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Prefix tokens (B, P, D), and with keypoints the log-probabilities of their maps
        (B * N, K, (H / 2) * (W / 2)) float32 (what supervised keypoints are trained on), else None.
        ``indicator`` (B,) long (None: unknown), ``z_latents`` (B, N, C, h, w) (None: null tokens),
        ``z_drop`` (B,) bool: null tokens for those samples; ``gwm_latents`` (B, L, c): the GWM
        set VAE's latent set (required by a model with GWM features, ignored by the others).

        Raises:
            ValueError: a pixel-stem model without ``ref_frames``, a GWM-feature model without
                ``gwm_latents``.
        """
        B = state.shape[0]
        s = self.state_in(state).unsqueeze(1) + self.pos_state  # (B, 1, D)
        r = self.latent_in(self._patchify(ref_latents)) + self.pos_ref  # (B, N*T, D)
        log_prob = None
        if self.pixel_stem is not None:
            if ref_frames is None:
                raise ValueError("this policy has a pixel stem: ref_frames (B, N, 3, H, W) are required")
            x = ref_frames.flatten(0, 1).to(r.dtype) * (2.0 / 255.0) - 1.0  # (B*N, 3, H, W) in [-1, 1]
            if self.keypoints is None:
                r = r + self.pixel_stem(x).reshape(r.shape)  # (B*N, T, D) -> (B, N*T, D), camera-major
            else:
                tokens, feats = self.pixel_stem.forward_with_features(x)
                r = r + tokens.reshape(r.shape)
                kp, log_prob = self.keypoints.forward_with_log_prob(feats)  # (B*N, K, 2), (B*N, K, h*w)
                s = s + self.keypoint_in(kp.reshape(B, -1)).unsqueeze(1)  # (B, N*K*2) -> (B, 1, D)
        if self.indicator_embedding is not None:
            ind = torch.full((B,), UNKNOWN, dtype=torch.long, device=s.device) if indicator is None else indicator.long()
            s = s + self.indicator_embedding(ind.to(s.device)).unsqueeze(1)
        parts = [s, r]
        if self.z_in is not None:
            null = (self.z_null.to(r.dtype) + self.pos_z).expand(B, -1, -1)  # (B, Z, D)
            if z_latents is None:
                z = null
            else:
                z = self.z_in(self._patchify(z_latents.to(r.dtype))) + self.pos_z
                if z_drop is not None:
                    z = torch.where(z_drop.to(z.device)[:, None, None], null, z)
            parts.append(z)
        if self.gwm_pool is not None:
            if gwm_latents is None:
                raise ValueError("this policy reads GWM features: gwm_latents (B, L, c) are required")
            parts.append(self.gwm_pool(gwm_latents.to(r.dtype)))
        return torch.cat(parts, dim=1), log_prob

    def _embed_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.action_in(actions) + self.pos_action  # (B, H, action_width)

    def _embed_future(self, future_latents: torch.Tensor) -> torch.Tensor:
        return self.latent_in(self._patchify(future_latents)) + self.pos_future  # (B, F*N*T, D)

    def _cond(self, t: torch.Tensor, task_index: torch.Tensor) -> torch.Tensor:
        """AdaLN conditioning: flow-time embedding plus task embedding. t (B, G) -> (B, G, D)."""
        return self.time_embedding(t) + self.task_embedding(task_index).unsqueeze(1)

    def _layer_blocks(self, segments: tuple[int, ...]) -> list[list[AdaLNBlock]]:
        """Per layer, the block of each segment (token group PREFIX / ACTION / FUTURE)."""
        act = self.action_blocks if self.action_blocks is not None else self.blocks
        return [[act[i] if g == ACTION else main for g in segments] for i, main in enumerate(self.blocks)]

    def _modulations(self, segments: tuple[int, ...], conds: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """Per layer, per segment modulation from the segment's conditioning (B, G, D) -> (B, G, 6 D_seg)."""
        return [[b.modulate(c) for b, c in zip(blks, conds)] for blks in self._layer_blocks(segments)]

    def _blocks(self, xs: list[torch.Tensor], segments: tuple[int, ...], mods: list[list[torch.Tensor]],
                mask: torch.Tensor | None = None, kv_cache: list[KV] | None = None) -> list[torch.Tensor]:
        """Run every layer on the token segments ``xs`` (groups ``segments``, in sequence order).

        ``mods[i][j]`` is layer i's modulation of segment j (B, L_j or 1, 6 D_j). Nothing reads
        the prefix's outputs after the last layer, so there the prefix gives only its keys and
        values (its returned segment is stale): compute only what is used.
        """
        layers = self._layer_blocks(segments)
        for i, blks in enumerate(layers):
            if i == len(layers) - 1 and segments[0] == PREFIX and len(segments) > 1:
                shift, scale = split_modulation(mods[i][0], 6)[:2]
                kv = blks[0].attn.project_kv(modulated_norm(xs[0], shift, scale))  # (B, nh, P, hd) each
                rest, _ = multi_stream_block(blks[1:], xs[1:], mods[i][1:], kv_prefix=kv,
                                             mask=None if mask is None else mask[xs[0].shape[1]:])
                xs = [xs[0], *rest]
            else:
                xs, _ = multi_stream_block(blks, xs, mods[i], mask=mask,
                                           kv_prefix=None if kv_cache is None else kv_cache[i])
        return xs

    # ------------------------------------------------------------------ training
    def velocity(
        self,
        state: torch.Tensor,
        ref_latents: torch.Tensor,
        noisy_actions: torch.Tensor,
        task_index: torch.Tensor,
        t: torch.Tensor,
        noisy_future: torch.Tensor | None = None,
        ref_frames: torch.Tensor | None = None,
        indicator: torch.Tensor | None = None,
        z_latents: torch.Tensor | None = None,
        gwm_latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Predicted velocities on the full sequence with the configured mask (training path).

        Args:
            noisy_actions: (B, H, action_dim) at flow time ``t`` (B,).
            noisy_future: (B, F*N*T, C*p*p) patchified future latents at time ``t``, or None.
            ref_frames: (B, N, 3, H, W) uint8 raw reference frames (pixel-stem models only).
            indicator, z_latents: RAMP's conditions (module docstring; None: unknown / dropped).
            gwm_latents: (B, L, c) GWM set-VAE latents (GWM-feature models only).

        Returns:
            action velocity (B, H, action_dim) and future-token velocity (B, F*N*T, C*p*p) or None.
        """
        v_a, v_f, _, _ = self._velocity_and_prefix(state, ref_latents, noisy_actions, task_index, t, noisy_future,
                                                ref_frames, indicator, z_latents, gwm_latents=gwm_latents)
        return v_a, v_f

    def _velocity_and_prefix(self, state, ref_latents, noisy_actions, task_index, t, noisy_future=None,
                             ref_frames=None, indicator=None, z_latents=None,
                             z_drop=None, gwm_latents=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor,
                                                   torch.Tensor | None]:
        """:meth:`velocity`, plus the prefix tokens (B, P, D) after all but the last block (the
        last one gives the prefix only keys and values) and the keypoint maps' log-probabilities
        (:meth:`_embed_prefix_with_maps`); ``z_drop`` (B,) bool drops z per sample."""
        prefix, log_prob = self._embed_prefix_with_maps(state, ref_latents, ref_frames, indicator, z_latents, z_drop,
                                                        gwm_latents)
        xs = [prefix, self._embed_actions(noisy_actions)]
        segments: tuple[int, ...] = (PREFIX, ACTION)
        if noisy_future is not None:
            xs.append(self.latent_in(noisy_future) + self.pos_future)
            segments += (FUTURE,)
        L = sum(x.shape[1] for x in xs)
        # Clean (t = 0) conditioning for the prefix, flow time t for actions and future.
        cond = self._cond(torch.stack([torch.zeros_like(t), t], dim=1), task_index)  # (B, 2, D)
        conds = [cond[:, :1] if g == PREFIX else cond[:, 1:] for g in segments]
        xs = self._blocks(xs, segments, self._modulations(segments, conds), mask=self.train_mask[:L, :L])
        v_a = self.action_out(xs[1], self.action_out.modulate(cond[:, 1:]))
        v_f = None if noisy_future is None else self.latent_out(xs[2], self.latent_out.modulate(cond[:, 1:]))
        return v_a, v_f, xs[0], log_prob

    def forward(
        self,
        state: torch.Tensor,
        ref_latents: torch.Tensor,
        actions: torch.Tensor,
        task_index: torch.Tensor,
        future_latents: torch.Tensor | None = None,
        action_is_pad: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        ref_frames: torch.Tensor | None = None,
        env_state: torch.Tensor | None = None,
        indicator: torch.Tensor | None = None,
        z_latents: torch.Tensor | None = None,
        ref_segmentation: torch.Tensor | None = None,
        sample_weight: torch.Tensor | None = None,
        gwm_latents: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Rectified-flow training loss ``L_video + lambda * L_action`` (Sec. 3.2), plus
        ``aux_state_weight * L_aux`` with an auxiliary state head, plus ``keypoint_loss_weight *
        L_keypoint`` with supervised keypoints: ``ref_segmentation`` (B, N, H, W) uint8 class ids
        of the reference frames; the mean cross-entropy between a keypoint's map and its class's
        pixels over the (sample, camera, keypoint) triples where the class is seen.

        Inputs are normalised (see module docstring); ``action_is_pad`` (B, H) bool marks
        chunk steps past the episode end, excluded from the action loss; ``ref_frames`` (B, N, 3,
        H, W) uint8 are required by pixel-stem models; ``env_state`` (B, De) is the normalised
        environment state, the auxiliary head's target (ignored by a model without one);
        ``indicator`` (B,) long and ``z_latents`` (B, N, C, h, w) are RAMP's labels, required by
        models conditioned on them (ignored by the others): in training mode each is dropped per
        sample with probability ``condition_dropout`` (:meth:`condition_drops`; the logs hold the
        dropped fractions). ``gwm_latents`` (B, L, c) are the GWM set VAE's latents of the reference
        frame, required by a model with GWM features. ``sample_weight`` (B,) >= 0 weights each sample's action loss (AWR,
        Peng et al. 2019): ``L_action = sum_b w_b sum_h m_bh e_bh / sum_b w_b sum_h m_bh`` with
        ``m`` the non-pad mask and ``e`` the per-step velocity error (the unweighted loss when all
        ``w_b`` are equal); the video, auxiliary and keypoint losses stay unweighted. Returns the
        scalar loss and a dict of its parts.

        Raises:
            ValueError: missing future latents (video models), ``env_state`` (auxiliary head),
                ``indicator`` (advantage conditioning) or ``z_latents`` (future conditioning).
        """
        cfg = self.cfg
        B = state.shape[0]
        dev = state.device
        t = sample_time(B, cfg.time_shift, generator=generator, device=dev)  # (B,)
        eps_a = torch.randn(actions.shape, generator=generator, device="cpu").to(dev)
        a_t = interpolate(actions, eps_a, t)
        f_t = x0_f = eps_f = None
        if cfg.n_future:
            if future_latents is None:
                raise ValueError("future_latents are required when video_stride > 0")
            x0_f = self._patchify(future_latents)  # (B, F*N*T, C*p*p)
            eps_f = torch.randn(x0_f.shape, generator=generator, device="cpu").to(dev)
            f_t = interpolate(x0_f, eps_f, t)
        logs: dict[str, float] = {}
        z_drop = None
        if cfg.ramp_conditioned:
            if self.indicator_embedding is not None and indicator is None:
                raise ValueError("this policy is advantage-conditioned: indicator (B,) is required in training")
            if self.z_in is not None and z_latents is None:
                raise ValueError("this policy is future-conditioned: z_latents (B, N, C, h, w) are required in training")
            if self.training and cfg.condition_dropout > 0:  # drawn only here: other runs keep their random stream
                drop_i, z_drop = (d.to(dev) for d in self.condition_drops(B, generator))
                if indicator is not None:
                    indicator = torch.where(drop_i, UNKNOWN, indicator.to(dev).long())
                    logs["indicator_dropped"] = float(drop_i.float().mean())
                if self.z_in is not None:
                    logs["z_dropped"] = float(z_drop.float().mean())
            elif self.training:  # no dropout: the null token still enters the graph (DDP: every parameter a gradient)
                z_drop = torch.zeros(B, dtype=torch.bool, device=dev)
        v_a, v_f, prefix, kp_log_prob = self._velocity_and_prefix(state, ref_latents, a_t, task_index, t, f_t,
                                                                  ref_frames, indicator, z_latents, z_drop,
                                                                  gwm_latents)
        err_a = (v_a.float() - velocity_target(actions, eps_a)).pow(2).mean(-1)  # (B, H)
        w = (~action_is_pad).float() if action_is_pad is not None else torch.ones_like(err_a)
        if sample_weight is not None:
            w = w * sample_weight.to(dev, torch.float32).unsqueeze(1)
            logs["sample_weight_mean"] = float(sample_weight.float().mean())
        loss_action = (err_a * w).sum() / w.sum().clamp_min(1e-8 if sample_weight is not None else 1.0)
        loss = cfg.action_loss_weight * loss_action
        logs["loss_action"] = float(loss_action.detach())
        if cfg.n_future:
            loss_video = F.mse_loss(v_f.float(), velocity_target(x0_f, eps_f))
            loss = loss + loss_video
            logs["loss_video"] = float(loss_video.detach())
        if self.aux_head is not None:
            if env_state is None:
                raise ValueError("this policy has an auxiliary state head: env_state (B, De) is required in training")
            loss_aux = F.mse_loss(self.aux_head(prefix[:, 0]).float(), env_state.float())
            loss = loss + cfg.aux_state_weight * loss_aux
            logs["loss_aux_state"] = float(loss_aux.detach())
        if cfg.keypoint_targets:
            if ref_segmentation is None:
                raise ValueError("this policy has supervised keypoints: ref_segmentation (B, N, H, W) is required")
            H, W = ref_segmentation.shape[-2:]
            target = keypoint_target(ref_segmentation.flatten(0, 1), [SEG_CLASSES.index(c) for c in cfg.keypoint_targets],
                                     (H // 2, W // 2))  # (B*N, K', h*w), the stem's half-resolution maps
            seen = target.sum(-1) > 0  # (B*N, K')
            ce = -(target * kp_log_prob[:, :len(cfg.keypoint_targets)]).sum(-1)  # (B*N, K')
            loss_kp = (ce * seen).sum() / seen.sum().clamp_min(1)
            loss = loss + cfg.keypoint_loss_weight * loss_kp
            logs["loss_keypoint"] = float(loss_kp.detach())
        logs["loss"] = float(loss.detach())
        return loss, logs

    def condition_drops(self, B: int, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """RAMP's condition dropout: (drop the indicator, drop z), each (B,) bool, independent
        Bernoulli(``condition_dropout``) draws per sample (on the CPU, from ``generator``)."""
        u = torch.rand(2, B, generator=generator)
        return u[0] < self.cfg.condition_dropout, u[1] < self.cfg.condition_dropout

    # ------------------------------------------------------------------ inference
    def encode_prefix(self, state: torch.Tensor, ref_latents: torch.Tensor, task_index: torch.Tensor,
                      mods: list | torch.Tensor | None = None, ref_frames: torch.Tensor | None = None,
                      indicator: torch.Tensor | None = None, z_latents: torch.Tensor | None = None,
                      gwm_latents: torch.Tensor | None = None) -> list[KV]:
        """Run the clean prefix once; returns every block's keys/values (B, nh, P, hd).

        ``mods``: the blocks' clean (t = 0) modulations, one per block as in
        :meth:`AdaLNBlock.forward` (a stacked (depth, 6, B, 1, D) tensor also works); computed
        here when None (:meth:`sample` passes cached ones, see :meth:`_inference_modulations`).
        The last block's prefix outputs are never read (only its keys/values), so that block
        stops after its key/value projection.
        """
        if mods is None:
            cond = self._cond(torch.zeros(state.shape[0], 1, device=state.device), task_index)  # (B, 1, D)
            mods = [blk.modulate(cond) for blk in self.blocks]
        x = self._embed_prefix(state, ref_latents, ref_frames, indicator, z_latents, gwm_latents=gwm_latents)
        kvs: list[KV] = []
        for i, blk in enumerate(self.blocks):
            if i < len(self.blocks) - 1:
                x, kv = blk(x, mods[i])
            else:
                shift, scale = split_modulation(mods[i], 6)[:2]
                kv = blk.attn.project_kv(modulated_norm(x, shift, scale))
            kvs.append(kv)
        return kvs

    @torch.no_grad()
    def sample(
        self,
        state: torch.Tensor,
        ref_latents: torch.Tensor,
        task_index: torch.Tensor,
        *,
        mode: str = "action_only",
        noise: torch.Tensor | None = None,
        future_noise: torch.Tensor | None = None,
        use_cache: bool = True,
        n_steps: int | None = None,
        ref_frames: torch.Tensor | None = None,
        indicator: torch.Tensor | None = None,
        z_latents: torch.Tensor | None = None,
        gwm_latents: torch.Tensor | None = None,
    ) -> PolicyOutput:
        """Predict a normalised action chunk by Euler integration from t = 1 to t = 0.

        Args:
            state, ref_latents, task_index: see the module docstring.
            mode: ``"action_only"`` (future tokens dropped; block-causal models only),
                ``"with_video"`` (also denoise and return future latents) or ``"joint"``
                (every token recomputed every step; the only mode of ``mask="full"``).
            noise: (B, H, action_dim) initial action noise; drawn if None.
            future_noise: (B, F*N*T, C*p*p) initial future-token noise; drawn if None.
            use_cache: the fast path (:mod:`robodream.policy.inference`: the clean prefix
                encoded once and its keys/values reused, modulations cached across calls,
                optionally compiled); ``False`` runs :meth:`sample_reference`, the plain sampler
                the fast path is tested against.
            n_steps: Euler steps (default ``cfg.n_inference_steps``).
            ref_frames: (B, N, 3, H, W) uint8 raw current frames (required by pixel-stem models).
            indicator: (B,) long advantage indicator of an advantage-conditioned model: RAMP's
                inference asks for 1 (positive); None = unknown (the unconditioned policy).
            z_latents: (B, N, C, h, w) the world model's future latent of a future-conditioned
                model (RAMP's "standard" mode); None = null tokens ("efficient").
            gwm_latents: (B, L, c) GWM set-VAE latents of the current frame (GWM-feature models only).

        Raises:
            ValueError: a mode the configuration cannot run (e.g. action_only with mask="full").
        """
        cfg = self.cfg
        if cfg.mask == "full" and mode != "joint":
            raise ValueError("a mask='full' (joint) model can only sample in mode='joint'")
        if mode not in ("action_only", "with_video", "joint"):
            raise ValueError(f"unknown mode {mode!r}")
        if mode != "action_only" and not cfg.n_future:
            raise ValueError(f"mode {mode!r} needs video tokens (video_stride > 0)")
        B, dev = state.shape[0], state.device
        a = noise if noise is not None else torch.randn(B, cfg.horizon, cfg.action_dim, device=dev)
        f = None
        if mode != "action_only":
            f = future_noise if future_noise is not None else torch.randn(
                B, cfg.n_future_tokens, cfg.patch_dim, device=dev)
        times = euler_timesteps(n_steps or cfg.n_inference_steps, cfg.time_shift)
        if use_cache:
            return self.sample_fast(state, ref_latents, task_index, a, f, times, mode, ref_frames, indicator, z_latents,
                                    gwm_latents)
        return self.sample_reference(state, ref_latents, task_index, a, f, times, ref_frames, indicator, z_latents,
                                     gwm_latents)

    @torch.no_grad()
    def sample_reference(self, state: torch.Tensor, ref_latents: torch.Tensor, task_index: torch.Tensor,
                         a: torch.Tensor, f: torch.Tensor | None, times: torch.Tensor,
                         ref_frames: torch.Tensor | None = None, indicator: torch.Tensor | None = None,
                         z_latents: torch.Tensor | None = None, gwm_latents: torch.Tensor | None = None) -> PolicyOutput:
        """The plain sampler: Euler steps of :meth:`velocity`, the training path, from noise.

        a: (B, H, action_dim) initial noise; f: (B, F*N*T, C*p*p) initial future-token noise, or
        None (action-only: the future tokens are dropped — the block-causal mask guarantees the
        actions never depended on them); times: (n + 1,) flow times from 1 to 0. Every step
        recomputes the whole sequence; :mod:`robodream.policy.inference` computes the same
        numbers faster.
        """
        B, dev = state.shape[0], state.device
        for k in range(len(times) - 1):
            dt = float(times[k + 1] - times[k])  # negative
            v_a, v_f = self.velocity(state, ref_latents, a, task_index, times[k].to(dev).expand(B), f, ref_frames,
                                     indicator, z_latents, gwm_latents)
            a = a + dt * v_a
            if f is not None:
                f = f + dt * v_f
        return PolicyOutput(actions=a, future_latents=None if f is None else self._unpatchify(f))
