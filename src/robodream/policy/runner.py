"""Closed-loop control with a trained policy: receding-horizon execution of action chunks.

At each replanning point the runner encodes the current camera frames with the frozen
tokenizer, samples an action chunk (H steps) and executes its first K =
``n_action_steps`` actions before planning again (GigaWorld-Policy, Sec. 3.3).

A RAMP-conditioned policy (GigaBrain-0.5M*, arXiv 2602.12099: advantage and/or future
conditioning) runs one of RAMP's two modes, both with the indicator ``I = 1`` and the
transformer's action-only sampler: ``"standard"`` first predicts the future latent ``z`` with
one world-model step (a ``future`` callable, :class:`robodream.rl.labels.WorldModelFuture`),
``"efficient"`` runs without ``z``. The chunk latency includes the world-model step.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

import numpy as np
import torch

from robodream.errors import ConfigError
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import POSITIVE, GigaWorldPolicy
from robodream.tokenizer.model import ImageTokenizer

#: Inference modes of :meth:`GigaWorldPolicy.sample`.
MODES = ("action_only", "with_video", "joint")
#: Inference modes of RAMP-conditioned policies: without / with the world model's future latent z.
RAMP_MODES = ("efficient", "standard")


def resolve_mode(cfg: PolicyConfig, mode: str | None) -> str:
    """The inference mode to run: ``mode``, or by default ``"joint"`` for a ``mask="full"``
    model and ``"action_only"`` otherwise. A RAMP-conditioned policy runs :data:`RAMP_MODES`
    (default ``"standard"`` with future conditioning, else ``"efficient"``).

    Raises:
        ConfigError: an unknown mode, or one the model cannot run (a joint model in another
            mode; with_video or joint without video tokens; a RAMP mode on an unconditioned
            policy or another mode on a conditioned one; standard without future conditioning).
    """
    if cfg.ramp_conditioned:
        if mode is None:
            return "standard" if cfg.future_conditioning else "efficient"
        if mode not in RAMP_MODES:
            raise ConfigError(f"a RAMP-conditioned policy runs mode efficient or standard, not {mode!r}")
        if mode == "standard" and not cfg.future_conditioning:
            raise ConfigError("mode 'standard' feeds the world model's future latent z, and this policy is not "
                              "future-conditioned (future_conditioning=false); use --mode efficient")
        return mode
    if mode in RAMP_MODES:
        raise ConfigError(f"mode {mode!r} is for RAMP-conditioned policies (advantage or future conditioning); this "
                          f"one runs {', '.join(MODES)}")
    if mode is None:
        return "joint" if cfg.mask == "full" else "action_only"
    if mode not in MODES:
        raise ConfigError(f"unknown inference mode {mode!r}; choose one of {', '.join(MODES)}")
    if cfg.mask == "full" and mode != "joint":
        raise ConfigError(f"a mask='full' (joint) model can only run mode 'joint', not {mode!r}")
    if mode != "action_only" and not cfg.n_future:
        raise ConfigError(f"mode {mode!r} needs video tokens, and this policy has none (video_stride=0)")
    return mode


def sampler_mode(cfg: PolicyConfig, mode: str) -> str:
    """The :meth:`GigaWorldPolicy.sample` mode of a runner mode: RAMP's modes use the action-only
    sampler (the joint one for a mask="full" model)."""
    if mode in RAMP_MODES:
        return "joint" if cfg.mask == "full" else "action_only"
    return mode


class PolicyRunner:
    """Turns observations into actions with a :class:`GigaWorldPolicy`.

    Args:
        policy, tokenizer: trained models (eval mode).
        task: the task instruction string (must be in ``policy.cfg.tasks``).
        mode: ``"action_only"`` (default; future video dropped, prefix cached),
            ``"with_video"`` (also predicts future frames) or ``"joint"`` (mask="full" models);
            for RAMP-conditioned policies ``"efficient"`` or ``"standard"`` (:func:`resolve_mode`).
        seed: seeds the initial noise of the chunks until the first ``reset(seed)``.
        future: standard mode's source of ``z``: ``future(frames (N, H, W, 3) uint8, latents
            (N, C, h, w)) -> (1, N, C, h, w)`` with a ``reset(seed)`` method
            (:class:`robodream.rl.labels.WorldModelFuture`); ignored in the other modes.
        gwm: a policy with GWM features reads the frozen set VAE's latents through this
            :class:`robodream.gwm.features.GWMFeatureEncoder` (its cameras set at every episode
            start; :meth:`act` then takes those cameras' RGB-D as ``gwm_view``).

    The noise of an episode's chunks comes from a generator re-seeded by ``reset(seed)``,
    so an episode's actions depend on its seed only, not on the episodes run before it.

    Raises:
        ConfigError: a task the policy was not trained on; a mode it cannot run; standard mode
            without ``future``; a policy with GWM features without ``gwm``.
    """

    def __init__(self, policy: GigaWorldPolicy, tokenizer: ImageTokenizer, task: str, *,
                 mode: str | None = None, seed: int = 0, future: Callable | None = None,
                 gwm: Callable | None = None) -> None:
        if task not in policy.cfg.tasks:
            raise ConfigError(f"the policy was not trained on task {task!r}; it knows {list(policy.cfg.tasks)}")
        self.policy, self.tokenizer = policy, tokenizer
        self.mode = resolve_mode(policy.cfg, mode)
        self.sampler_mode = sampler_mode(policy.cfg, self.mode)
        if self.mode == "standard" and future is None:
            raise ConfigError("mode 'standard' needs the world model that predicts z (the policy run's world_model, "
                              "or --world-model)")
        self.future = future if self.mode == "standard" else None
        if policy.gwm_pool is not None and gwm is None:
            raise ConfigError("this policy reads GWM features: it needs its set VAE (the run's gwm_vae) to run")
        self.gwm = gwm if policy.gwm_pool is not None else None
        if self.future is not None and hasattr(self.future, "reset"):
            self.future.reset(seed)
        self.device = policy.state_mean.device
        self.task_index = torch.tensor([policy.cfg.tasks.index(task)], device=self.device)
        self.gen = torch.Generator().manual_seed(seed)
        self.queue: deque[np.ndarray] = deque()
        # tokenizer encode (+ world-model z step, + GWM features) + chunk sampling, per chunk
        self.chunk_latency_ms: list[float] = []
        self.last_future_frames: torch.Tensor | None = None  # (F, N, 3, H, W) in with_video mode
        # with_video mode: (env step of the chunk's reference frame, predicted frames (F, N, 3, H, W))
        self.video_predictions: list[tuple[int, torch.Tensor]] = []
        self._t = 0

    def reset(self, seed: int | None = None) -> None:
        """Forget queued actions and predictions (call at the start of every episode).

        seed: re-seeds the chunk noise (pass the episode's env seed); None keeps drawing from
        the current generator.
        """
        if seed is not None:
            self.gen.manual_seed(int(seed))
            if self.future is not None and hasattr(self.future, "reset"):
                self.future.reset(int(seed))
        self.queue.clear()
        self.video_predictions.clear()
        self._t = 0

    @torch.inference_mode()
    def predict_chunk(self, images: np.ndarray, state: np.ndarray,
                      gwm_view: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """Sample a whole action chunk (H, action_dim) in env units from one observation.

        images: (n_cameras, H, W, 3) uint8 in the policy's camera order; state: (state_dim,);
        gwm_view: the GWM cameras' RGB (V, H, W, 3) uint8 and depth (V, H, W) metres (policies
        with GWM features only).

        Raises:
            ConfigError: another number of cameras; a GWM-feature policy without ``gwm_view``.
        """
        cfg = self.policy.cfg
        if images.shape[0] != len(cfg.cameras):
            raise ConfigError(f"expected {len(cfg.cameras)} camera images, got {images.shape[0]}")
        t0 = time.perf_counter()
        frames = torch.from_numpy(images).to(self.device)  # (N, H, W, 3) uint8
        lat = self.tokenizer.encode(frames).unsqueeze(0)  # (1, N, C, h, w)
        s = self.policy.normalize_state(torch.as_tensor(state, dtype=torch.float32, device=self.device)[None])
        noise = torch.randn(1, cfg.horizon, cfg.action_dim, generator=self.gen).to(self.device)
        ref_frames = frames.permute(0, 3, 1, 2)[None] if self.policy.pixel_stem is not None else None  # (1, N, 3, H, W)
        ramp = {}
        if cfg.advantage_conditioning:  # RAMP's (and RECAP's) inference rule: ask for an advantageous action
            ramp["indicator"] = torch.full((1,), POSITIVE, dtype=torch.long, device=self.device)
        if self.future is not None:  # standard mode: one world-model step predicts z
            ramp["z_latents"] = self.future(frames, lat[0])  # (1, N, C, h, w)
        if self.gwm is not None:  # Gaussians of this frame -> the set VAE's latents (1, L, c)
            if gwm_view is None:
                raise ConfigError(f"this policy reads GWM features: pass the RGB-D of {self.gwm.cameras} (gwm_view)")
            ramp["gwm_latents"] = self.gwm(*gwm_view).to(self.device)
        out = self.policy.sample(s, lat, self.task_index, mode=self.sampler_mode, noise=noise, ref_frames=ref_frames,
                                 **ramp)
        actions = self.policy.unnormalize_action(out.actions)[0].float().cpu().numpy()
        self.chunk_latency_ms.append((time.perf_counter() - t0) * 1000.0)
        if out.future_latents is not None:
            fl = out.future_latents[0]  # (F, N, C, h, w)
            self.last_future_frames = self.tokenizer.decode(fl.flatten(0, 1)).unflatten(0, fl.shape[:2]).cpu()
        return actions

    def act(self, images: np.ndarray, state: np.ndarray,
            gwm_view: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """The next action (action_dim,) in env units; replans when the queue is empty
        (arguments as :meth:`predict_chunk`)."""
        if not self.queue:
            chunk = self.predict_chunk(images, state, gwm_view)
            self.queue.extend(chunk[: self.policy.cfg.n_action_steps])
            if self.last_future_frames is not None:
                self.video_predictions.append((self._t, self.last_future_frames))
        self._t += 1
        return self.queue.popleft()
