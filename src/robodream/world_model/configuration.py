"""Configuration of the action-conditioned video world model (GigaWorld-0-Video, arXiv 2511.19861),
and of its value frame (GigaBrain-0.5M*'s value world model, RAMP, arXiv 2602.12099)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from robodream.errors import ConfigError
from robodream.models.text import DEFAULT_TEXT_ENCODER, TEXT_DIMS

MLPS = ("moe", "dense")
ATTENTIONS = ("neighborhood", "full")
#: "none": video only; "state_value": the value and the proprioceptive state tiled as an extra
#: latent frame (RAMP's design); "value": the value alone in that frame (RAMP's ablation).
VALUE_FRAMES = ("none", "state_value", "value")


@dataclass
class WorldModelConfig:
    """Architecture, objective and sampling settings of :class:`VideoWorldModel`.

    A clip is ``n_context_frames`` clean frames followed by ``n_future_frames`` predicted
    frames, ``frame_stride`` env steps apart; the cameras of a frame lie side by side, so a
    clip is a token grid ``(T, H, W) = (frames, latent_size / p, n_cameras * latent_size / p)``.
    With ``value_frame != "none"`` one more frame follows the future frames: the value (and the
    proprioceptive state) of the chunk's last frame, tiled over a latent frame
    (:meth:`VideoWorldModel.value_frame_target`).
    """

    # --- inputs (filled from the datasets and tokenizer at training time) -------------------
    action_dim: int = 4  # action size per env step
    cameras: tuple[str, ...] = ("corner", "behindGripper")  # camera order, left to right in the grid
    latent_channels: int = 8  # tokenizer latent channels C
    latent_size: int = 8  # tokenizer latent grid side h = w
    image_size: int = 64  # frame side the tokenizer expects
    fps: int = 80  # env steps per second of the datasets (for videos)
    tasks: tuple[str, ...] = ("reach-v3",)  # task vocabulary (instructions); index = task embedding row
    state_dim: int = 0  # observation.state size tiled into the value frame (0 unless value_frame = state_value)

    # --- clip ---------------------------------------------------------------------------------
    n_context_frames: int = 1  # clean conditioning frames (image-to-video), the last one at the anchor step
    # Default clip: 1 + 8 frames 2 env steps apart (a 16-step chunk), a 9 x 4 x 8 token grid:
    # long enough for the 3D neighbourhood kernel to beat full attention (benchmarks/RESULTS.md).
    n_future_frames: int = 8  # predicted frames per chunk
    frame_stride: int = 2  # env steps between frames; a chunk covers n_future_frames * frame_stride steps

    # --- transformer --------------------------------------------------------------------------
    dim: int = 192  # token width
    depth: int = 4  # CrossAttnBlocks
    n_heads: int = 4  # attention heads (dim / n_heads must be a multiple of 6: 3D RoPE)
    mlp_ratio: float = 4.0  # dense hidden = mlp_ratio * dim; MoE experts match its active parameters
    patch_size: int = 2  # latent patch side: a token covers patch_size^2 latent cells
    rope_theta: float = 100.0  # RoPE base (positions are small grid indices)

    # --- Mixture-of-Experts MLP ---------------------------------------------------------------
    mlp: str = "moe"  # "moe" or "dense"
    n_experts: int = 4  # routed experts E
    top_k: int = 2  # experts per token
    shared_expert: bool = False  # an always-active expert besides the routed ones
    moe_aux_weight: float = 0.01  # weight of the load-balance loss, per MoE layer

    # --- self-attention -------------------------------------------------------------------------
    attention: str = "neighborhood"  # "neighborhood" (3D NA) or "full"
    window: tuple[int, int, int] = (0, 3, 3)  # (t, h, w) tokens; 0 = the whole axis
    attention_backend: str = "auto"  # auto, blocked, reference, flex (see models.neighborhood)

    # --- conditioning -----------------------------------------------------------------------------
    text_encoder: str = DEFAULT_TEXT_ENCODER  # sentence encoder of the task instruction ("" = no text)
    cond_drop_prob: float = 0.1  # classifier-free guidance: drop task, text and actions together
    # Drop the actions alone (task and text kept) with this probability: trains the action-free
    # (text + first frame) mode of dreams (GigaWorld-0's data engine, DreamGen). 0 = off.
    action_drop_prob: float = 0.0

    # --- rectified flow -------------------------------------------------------------------------
    time_shift: float = 3.0  # s in t' = s t / (1 + (s - 1) t)
    n_sampling_steps: int = 16  # Euler steps
    guidance_scale: float = 1.0  # CFG scale at sampling (1 = conditional only, one forward per step)

    # --- value frame (GigaBrain-0.5M*, RAMP) ---------------------------------------------------------
    # "none", "state_value" (value + proprioceptive state of the chunk's last frame tiled as one more
    # generated latent frame, the paper's design) or "value" (the value alone, its ablation). Needs
    # next.reward in the datasets (robodream collect writes it).
    value_frame: str = "none"
    gamma: float = 0.99  # discount of the value targets (Monte-Carlo returns of next.reward)

    extra: dict = field(default_factory=dict)  # free-form notes carried into config.json

    #: Fields filled in from the datasets and the tokenizer at training time (not options).
    DERIVED_FIELDS: ClassVar[tuple[str, ...]] = ("action_dim", "cameras", "latent_channels", "latent_size",
                                                 "image_size", "fps", "tasks", "state_dim")

    def __post_init__(self) -> None:
        self.cameras, self.tasks, self.window = tuple(self.cameras), tuple(self.tasks), tuple(self.window)
        if self.mlp not in MLPS:
            raise ConfigError(f"mlp must be one of {MLPS}, got {self.mlp!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"attention must be one of {ATTENTIONS}, got {self.attention!r}")
        if self.n_context_frames < 1 or self.n_future_frames < 1 or self.frame_stride < 1:
            raise ConfigError("n_context_frames, n_future_frames and frame_stride must be >= 1")
        if self.latent_size % self.patch_size:
            raise ConfigError(f"latent_size {self.latent_size} not divisible by patch_size {self.patch_size}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 6:
            raise ConfigError(f"dim / n_heads = {self.dim}/{self.n_heads} must be a multiple of 6 (3D RoPE sections)")
        if self.mlp == "moe" and not 1 <= self.top_k <= self.n_experts:
            raise ConfigError(f"top_k must be in [1, n_experts={self.n_experts}], got {self.top_k}")
        if len(self.window) != 3 or any(k < 0 or (0 < k < n and k % 2 == 0) for k, n in zip(self.window, self.grid)):
            raise ConfigError(f"window {self.window} needs 3 sizes, each odd, 0 (whole axis) or >= the axis {self.grid}")
        if self.text_encoder and self.text_encoder not in TEXT_DIMS:
            raise ConfigError(f"unknown text encoder {self.text_encoder!r}; available: {sorted(TEXT_DIMS)} or ''")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ConfigError(f"cond_drop_prob must be in [0, 1), got {self.cond_drop_prob}")
        if not 0.0 <= self.action_drop_prob < 1.0:
            raise ConfigError(f"action_drop_prob must be in [0, 1), got {self.action_drop_prob}")
        if self.value_frame not in VALUE_FRAMES:
            raise ConfigError(f"value_frame must be one of {VALUE_FRAMES}, got {self.value_frame!r}")
        if not 0.0 < self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in (0, 1], got {self.gamma}")
        if self.value_frame == "state_value" and 1 + self.state_dim > self.latent_channels:
            raise ConfigError(f"value_frame 'state_value' tiles the value and the {self.state_dim}-dim state into "
                              f"{self.latent_channels} latent channels, which needs state_dim + 1 <= latent_channels")

    # ------------------------------------------------------------------ derived sizes
    @property
    def n_frames(self) -> int:
        """Frames per clip (context + future)."""
        return self.n_context_frames + self.n_future_frames

    @property
    def n_value_frames(self) -> int:
        """Generated value frames after the future frames: 1 with a value frame, else 0."""
        return int(self.value_frame != "none")

    @property
    def frame_offsets(self) -> list[int]:
        """Env-step offsets of the clip's frames from the anchor (last context) frame, e.g. [0, 2, 4, ..., 16]."""
        return [self.frame_stride * (k - self.n_context_frames + 1) for k in range(self.n_frames)]

    @property
    def chunk_steps(self) -> int:
        """Env steps covered by one predicted chunk (actions consumed per chunk)."""
        return self.n_future_frames * self.frame_stride

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (T, H, W) of a clip: cameras side by side along W; T counts the value frame."""
        g = self.latent_size // self.patch_size
        return (self.n_frames + self.n_value_frames, g, len(self.cameras) * g)

    @property
    def tokens_per_frame(self) -> int:
        return self.grid[1] * self.grid[2]

    @property
    def patch_dim(self) -> int:
        """Numbers per token read out (C * p * p); the input adds the mask channel: (C + 1) * p * p."""
        return self.latent_channels * self.patch_size**2

    @property
    def text_dim(self) -> int:
        return TEXT_DIMS.get(self.text_encoder, 0)

    @property
    def mlp_hidden(self) -> int:
        return int(self.dim * self.mlp_ratio)
