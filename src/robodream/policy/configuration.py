"""Configuration of the GigaWorld-Policy world-action model (arXiv 2603.17240)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from robodream.envs.shift import SEG_CLASSES
from robodream.errors import ConfigError

MASKS = ("block_causal", "full")


@dataclass
class PolicyConfig:
    """Architecture, objective and inference settings of :class:`GigaWorldPolicy`.

    Token layout per sample: ``[state (1) | reference latents (n_cameras x tokens_per_frame) |
    z latents (n_cameras x tokens_per_frame, with future_conditioning) | GWM features (gwm_tokens) |
    action chunk (horizon) |
    future latents (n_future x n_cameras x tokens_per_frame)]``.
    """

    # --- inputs (filled from the dataset and tokenizer at training time) -------------------
    state_dim: int = 4  # proprioceptive state size
    action_dim: int = 4  # action size per step
    cameras: tuple[str, ...] = ("corner", "behindGripper")  # camera order of the latent tokens
    latent_channels: int = 8  # tokenizer latent channels C
    latent_size: int = 8  # tokenizer latent grid side h = w
    image_size: int = 64  # frame side the tokenizer expects (checked at evaluation)
    tasks: tuple[str, ...] = ("reach-v3",)  # task vocabulary; index = task embedding row

    # --- chunking ---------------------------------------------------------------------------
    horizon: int = 16  # action chunk length H (steps)
    n_action_steps: int = 8  # receding horizon: actions executed per predicted chunk (K <= H)
    video_stride: int = 4  # future frames at t+S, t+2S, ..., t+H; 0 disables video (plain BC)

    # --- transformer ------------------------------------------------------------------------
    dim: int = 192  # token width
    depth: int = 4  # number of blocks
    n_heads: int = 4  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / token width
    patch_size: int = 2  # latent patch side: a token covers patch_size^2 latent cells
    mask: str = "block_causal"  # "block_causal" (GigaWorld-Policy) or "full" (joint, Motus-style)
    # Width of a separate action expert (Mixture-of-Transformers, GigaWorld-Policy v0.5): action
    # tokens get their own narrower weights and share attention with the state/video tokens, so
    # action-only denoising runs only these narrow weights (lower chunk latency at equal success,
    # benchmarks/RESULTS.md). 0 = action tokens use the same weights as every other token.
    action_expert_dim: int = 64
    # Width of a conv stem over the raw reference frames whose features are added to the
    # reference-latent tokens (same grid): detail the tokenizer's latents lose, such as reach's
    # 2-5 pixel goal marker, reaches the policy. 0 = latents only (benchmarks/RESULTS.md: reach
    # 0.42 -> 0.76 on the same data and tokenizer).
    pixel_stem_width: int = 32
    # Keypoints per camera read from the pixel stem's half-resolution features by a spatial
    # softmax (models.stem.SpatialSoftmax); their (x, y) image coordinates are embedded into the
    # state token. 0 = none. Needs a pixel stem.
    stem_keypoints: int = 0
    # Supervised keypoints: keypoint k of every camera is trained to look at segmentation class
    # keypoint_targets[k] (e.g. "goal", "object"; robodream.envs.shift.SEG_CLASSES): a cross-entropy
    # between its softmax map and the class's pixels in the reference frame, weighted by
    # keypoint_loss_weight; frames where the class is not seen add nothing. A training signal from
    # the simulator's segmentation (collect --with-segmentation); inputs stay images + proprio.
    keypoint_targets: tuple[str, ...] = ()
    keypoint_loss_weight: float = 1.0
    # Auxiliary state prediction: a linear head on the state token's output (after all but the
    # last block) regresses the privileged object and goal state (observation.environment_state,
    # normalised), added to the loss with this weight. A training signal only: the environment
    # state is never an input, and inference does not run the head. It makes the prefix encode
    # where the objects and the goal are (reach's 2-5 px goal marker, benchmarks/RESULTS.md).
    # 0 = off. Needs datasets that record observation.environment_state (robodream collect does).
    aux_state_weight: float = 0.0
    aux_state_dim: int = 0  # size of the predicted environment state (from the datasets; 0 = no head)

    # --- Gaussian world-model features (GWM, arXiv 2508.17600, Sec. 3.3) ----------------------
    # Tokens of the frozen GWM set-VAE encoder's latent set (gwm_latents x gwm_latent_dim, posterior
    # means of the frame's per-frame Gaussians: robodream.gwm.features) pooled by cross-attention from
    # this many learned queries and appended to the clean prefix, beside the image tokens. 0 = none.
    gwm_tokens: int = 0
    gwm_latents: int = 0  # latent vectors per frame of the set VAE (from the VAE run)
    gwm_latent_dim: int = 0  # numbers per latent vector (from the VAE run)

    # --- RAMP conditioning (GigaBrain-0.5M*, arXiv 2602.12099) -------------------------------

    # Condition on the advantage indicator I = [A > eps] of each frame (labels of robodream relabel,
    # train with --labels): an embedding (rows negative / positive / unknown) added to the state
    # token. Inference asks for I = 1 (an advantageous action), RECAP's and RAMP's rule.
    advantage_conditioning: bool = False
    # Condition on the world model's predicted future latent z (the chunk's last frame, from the
    # labels; at inference --mode standard runs one world-model step for it, --mode efficient drops
    # it): its tokens join the clean prefix, so action-only inference still caches it.
    future_conditioning: bool = False
    # Training drops I and z, each independently per sample, with this probability (I becomes
    # "unknown", z a learned null token), so the same model also runs without them (RAMP: 0.2).
    condition_dropout: float = 0.2

    # --- rectified flow -----------------------------------------------------------------------
    time_shift: float = 5.0  # s in t' = s t / (1 + (s - 1) t)
    action_loss_weight: float = 5.0  # lambda in L = L_video + lambda * L_action
    n_inference_steps: int = 10  # Euler steps at inference

    extra: dict = field(default_factory=dict)  # free-form notes carried into config.json

    #: Fields filled in from the datasets and the tokenizer at training time (not options).
    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("state_dim", "action_dim", "cameras", "latent_channels",
                                                 "latent_size", "image_size", "tasks", "aux_state_dim",
                                                 "gwm_latents", "gwm_latent_dim")

    #: Values for fields a run's config.json lacks because it was written before the field
    #: existed (their defaults have changed since): such runs load as they were trained.
    LEGACY_DEFAULTS: ClassVar[dict[str, object]] = {"action_expert_dim": 0, "pixel_stem_width": 0,
                                                    "advantage_conditioning": False, "future_conditioning": False}

    def __post_init__(self) -> None:
        self.cameras = tuple(self.cameras)
        self.tasks = tuple(self.tasks)
        if self.mask not in MASKS:
            raise ConfigError(f"mask must be one of {MASKS}, got {self.mask!r}")
        if self.video_stride < 0:
            raise ConfigError(f"video_stride must be >= 0, got {self.video_stride}")
        if self.video_stride and self.horizon % self.video_stride:
            raise ConfigError(f"horizon {self.horizon} must be a multiple of video_stride {self.video_stride}")
        if not 1 <= self.n_action_steps <= self.horizon:
            raise ConfigError(f"n_action_steps must be in [1, horizon={self.horizon}], got {self.n_action_steps}")
        if self.latent_size % self.patch_size:
            raise ConfigError(f"latent_size {self.latent_size} not divisible by patch_size {self.patch_size}")
        if self.dim % self.n_heads:
            raise ConfigError(f"dim {self.dim} not divisible by n_heads {self.n_heads}")
        if self.action_expert_dim < 0:
            raise ConfigError(f"action_expert_dim must be >= 0 (0 = no separate expert), got {self.action_expert_dim}")
        if self.pixel_stem_width < 0:
            raise ConfigError(f"pixel_stem_width must be >= 0 (0 = no pixel stem), got {self.pixel_stem_width}")
        if self.pixel_stem_width and self.stem_halvings < 0:
            raise ConfigError(f"a pixel stem needs image_size / token grid to be a power of two, got "
                              f"{self.image_size} / {self.latent_size // self.patch_size}")
        if self.stem_keypoints < 0 or (self.stem_keypoints and not (self.pixel_stem_width and self.stem_halvings >= 1)):
            raise ConfigError(f"stem_keypoints must be >= 0 and needs a pixel stem with at least one halving, got "
                              f"stem_keypoints={self.stem_keypoints}, pixel_stem_width={self.pixel_stem_width}")
        self.keypoint_targets = tuple(self.keypoint_targets)
        unknown = [c for c in self.keypoint_targets if c not in SEG_CLASSES]
        if unknown or len(self.keypoint_targets) > self.stem_keypoints or self.keypoint_loss_weight < 0:
            raise ConfigError(f"keypoint_targets must be segmentation classes ({', '.join(SEG_CLASSES)}), at most "
                              f"stem_keypoints={self.stem_keypoints} of them, with keypoint_loss_weight >= 0; got "
                              f"{list(self.keypoint_targets)}, weight {self.keypoint_loss_weight}")
        if self.aux_state_weight < 0 or self.aux_state_dim < 0:
            raise ConfigError(f"aux_state_weight and aux_state_dim must be >= 0, got {self.aux_state_weight}, "
                              f"{self.aux_state_dim}")
        if self.gwm_tokens < 0 or self.gwm_latents < 0 or self.gwm_latent_dim < 0:
            raise ConfigError(f"gwm_tokens, gwm_latents and gwm_latent_dim must be >= 0, got {self.gwm_tokens}, "
                              f"{self.gwm_latents}, {self.gwm_latent_dim}")
        if not 0.0 <= self.condition_dropout < 1.0:
            raise ConfigError(f"condition_dropout must be in [0, 1), got {self.condition_dropout}")
        if self.mask == "full" and self.video_stride == 0:
            raise ConfigError("mask='full' (joint model) needs video tokens: set video_stride > 0")

    @property
    def action_width(self) -> int:
        """Token width of the action stream (``action_expert_dim`` or ``dim``)."""
        return self.action_expert_dim or self.dim

    @property
    def n_future(self) -> int:
        """Number of future frames predicted per chunk (H / S, or 0 without video)."""
        return self.horizon // self.video_stride if self.video_stride else 0

    @property
    def future_offsets(self) -> list[int]:
        """Frame offsets of the predicted future frames relative to the reference frame."""
        return [self.video_stride * (k + 1) for k in range(self.n_future)]

    @property
    def stem_halvings(self) -> int:
        """Stride-2 convolutions of the pixel stem (image side -> token grid side), -1 if not a power of two."""
        ratio, g = divmod(self.image_size, self.latent_size // self.patch_size)
        return ratio.bit_length() - 1 if not g and ratio and not ratio & (ratio - 1) else -1

    @property
    def tokens_per_frame(self) -> int:
        """Latent tokens per camera frame."""
        return (self.latent_size // self.patch_size) ** 2

    @property
    def patch_dim(self) -> int:
        """Numbers per latent token (C * p * p)."""
        return self.latent_channels * self.patch_size**2

    @property
    def n_z_tokens(self) -> int:
        """Tokens of the future latent z (one frame of every camera; 0 without future conditioning)."""
        return len(self.cameras) * self.tokens_per_frame if self.future_conditioning else 0

    @property
    def ramp_conditioned(self) -> bool:
        """Conditioned on RAMP's advantage indicator or future latent (runs modes efficient / standard)."""
        return self.advantage_conditioning or self.future_conditioning

    @property
    def n_prefix_tokens(self) -> int:
        """State, reference, z and GWM-feature tokens (clean, t = 0)."""
        return 1 + len(self.cameras) * self.tokens_per_frame + self.n_z_tokens + self.gwm_tokens

    @property
    def n_future_tokens(self) -> int:
        return self.n_future * len(self.cameras) * self.tokens_per_frame
