"""Training windows over episodes: reference frame, state, action chunk, future frames.

All frames of all episodes are held in memory as flat arrays (frames are pre-encoded to
tokenizer latents, so a 25k-frame dataset takes ~100 MB). A window anchored at frame ``i``
of an episode spanning ``[start, end)`` holds::

    reference latents  lat[i]                      (N, C, h, w)
    state              state[i]                    (Ds,)
    action chunk       action[i : i + H]           (H, Da), padded past the episode end
    action_is_pad      i + k >= end                (H,)
    future latents     lat[min(i + o, end - 1)]    (F, N, C, h, w) for o in future_offsets

Padding repeats the last action and the last frame (the scene after the episode end is
the scene at its end); padded actions are excluded from the action loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from robodream.rl.advantages import discounted_returns

#: Optional per-frame keys of an encoded episode -> (EpisodeTable field, dtype, flattened to (T,)).
OPTIONAL_FIELDS: dict[str, tuple[str, torch.dtype, bool]] = {
    "views": ("views", torch.float32, False),
    "frames": ("frames", torch.uint8, False),
    "view_frames": ("view_frames", torch.uint8, False),
    "success": ("success", torch.bool, True),
    "segmentation": ("segmentation", torch.uint8, False),
    "env_state": ("env_state", torch.float32, False),
    "reward": ("reward", torch.float32, True),
    "indicator": ("indicator", torch.uint8, True),
    "sample_weight": ("sample_weight", torch.float32, True),
    "z": ("z_latents", torch.float16, False),
    "gwm": ("gwm_latents", torch.float16, False),
}


@dataclass
class EpisodeTable:
    """Flat per-frame arrays of many episodes.

    latents: (N, n_cam, C, h, w) float32 tokenizer latents.
    state: (N, Ds) float32; action: (N, Da) float32; task_index: (N,) int64.
    episode_start / episode_end: (N,) int64, the [start, end) frame range of each frame's episode.
    views: (N, K, n_cam, C, h, w) float32, K randomly shifted copies of the latents
        (random-shift augmentation, :mod:`robodream.data.latents`), or None.
    frames: (N, n_cam, 3, H, W) uint8 raw frames (for models with a pixel stem), or None.
    view_frames: (N, K, n_cam, 3, H, W) uint8 raw frames of the augmented copies, or None.
    source: (N,) int64 index of each frame's dataset (for per-source sampling weights), or None.
    success: (N,) bool ``next.success`` of each frame (the task reported success after its
        action), or None (labels for the IDM's success head).
    env_state: (N, De) float32 ``observation.environment_state`` (privileged object and goal
        state: auxiliary targets, never a model input), or None.
    segmentation: (N, n_cam, H, W) uint8 segmentation class ids (supervised keypoints), or None.
    reward: (N,) float32 ``next.reward`` of each frame (RAMP's reward, :mod:`robodream.rl.rewards`), or None.
    returns: (N,) float32 discounted Monte-Carlo returns of each frame within its episode (the
        value targets), filled by :meth:`set_returns`, or None.
    indicator: (N,) uint8 RAMP's advantage indicator ``I = [A > eps]`` of each frame
        (:mod:`robodream.rl.labels`), or None.
    z_latents: (N, n_cam, C, h, w) float16 the world model's predicted future latent of each
        frame (RAMP's ``z``, :mod:`robodream.rl.labels`), or None.
    sample_weight: (N,) float32 per-frame loss weight (AWR's ``min(exp(A / beta), w_max)``,
        :func:`robodream.rl.labels.awr_weights`), or None.
    gwm_latents: (N, L, c) float16 the GWM set VAE's latent set of each frame (posterior means of
        its per-frame Gaussians, :mod:`robodream.gwm.features`), or None.
    """

    latents: torch.Tensor
    state: torch.Tensor
    action: torch.Tensor
    task_index: torch.Tensor
    episode_start: torch.Tensor
    episode_end: torch.Tensor
    views: torch.Tensor | None = None
    frames: torch.Tensor | None = None
    source: torch.Tensor | None = None
    success: torch.Tensor | None = None
    view_frames: torch.Tensor | None = None
    env_state: torch.Tensor | None = None
    reward: torch.Tensor | None = None
    returns: torch.Tensor | None = None
    indicator: torch.Tensor | None = None
    z_latents: torch.Tensor | None = None
    segmentation: torch.Tensor | None = None
    sample_weight: torch.Tensor | None = None
    gwm_latents: torch.Tensor | None = None

    @property
    def n_views(self) -> int:
        """Shifted copies per frame (0 without augmentation)."""
        return 0 if self.views is None else self.views.shape[1]

    def latents_at(self, frames: torch.Tensor, view: torch.Tensor | None = None) -> torch.Tensor:
        """Latents of ``frames`` ((B,) or (B, F) long): the originals where ``view`` (B,) is 0
        (or None), else shifted copy ``view - 1`` (the same copy for a sample's every frame)."""
        out = self.latents[frames]
        if view is None or self.views is None or not bool((view > 0).any()):
            return out
        v = (view - 1).clamp_min(0).view(-1, *([1] * (frames.dim() - 1))).expand_as(frames)
        aug = self.views[frames, v]
        keep = (view == 0).view(-1, *([1] * (out.dim() - 1)))
        return torch.where(keep, out, aug)

    @classmethod
    def from_episodes(cls, episodes: list[dict]) -> EpisodeTable:
        """Build from dicts with ``latents`` (T, N, C, h, w), ``state`` (T, Ds), ``action`` (T, Da), ``task_index``
        and optionally the keys of :data:`OPTIONAL_FIELDS` and ``source`` (kept when every episode has them)."""
        lengths = torch.tensor([len(ep["action"]) for ep in episodes], dtype=torch.long)
        ends = lengths.cumsum(0)

        def per_frame(values) -> torch.Tensor:  # one value per episode -> (N,) one per frame
            return torch.repeat_interleave(torch.as_tensor(values, dtype=torch.long), lengths)
        optional = {}
        for key, (name, dtype, flat) in OPTIONAL_FIELDS.items():
            parts = [torch.as_tensor(ep[key], dtype=dtype) for ep in episodes if key in ep]
            if parts and len(parts) == len(episodes):
                optional[name] = torch.cat([p.reshape(-1) if flat else p for p in parts])
        if episodes and all("source" in ep for ep in episodes):
            optional["source"] = per_frame([int(ep["source"]) for ep in episodes])
        return cls(
            latents=torch.cat([torch.as_tensor(ep["latents"], dtype=torch.float32) for ep in episodes]),
            state=torch.cat([torch.as_tensor(ep["state"], dtype=torch.float32) for ep in episodes]),
            action=torch.cat([torch.as_tensor(ep["action"], dtype=torch.float32) for ep in episodes]),
            task_index=per_frame([int(ep["task_index"]) for ep in episodes]),
            episode_start=per_frame(ends - lengths),
            episode_end=per_frame(ends),
            **optional,
        )

    def __len__(self) -> int:
        return len(self.action)

    def set_returns(self, gamma: float) -> None:
        """Fill ``returns``: the discounted returns ``G_t = sum_k gamma^k r_{t+k}`` of every frame,
        each episode terminal at its last frame (:func:`~robodream.rl.advantages.discounted_returns`).

        Raises:
            ValueError: a table without rewards, or ``gamma`` outside (0, 1].
        """
        if self.reward is None:
            raise ValueError("the table has no rewards (next.reward) to compute returns from")
        r = self.reward.numpy()
        out = np.empty(len(self), np.float32)
        for s0, s1 in torch.unique_consecutive(torch.stack([self.episode_start, self.episode_end], 1), dim=0).tolist():
            out[s0:s1] = discounted_returns(r[s0:s1], gamma)
        self.returns = torch.from_numpy(out)

    def sample_anchors(self, n: int, generator: torch.Generator, balance_tasks: bool = True,
                       margin: tuple[int, int] | None = None,
                       source_weights: tuple[float, ...] | None = None) -> torch.Tensor:
        """Draw ``n`` window anchor frames (n,) long.

        With ``balance_tasks`` every task is drawn equally often (then a frame uniformly within
        it), so short-episode tasks are not drowned out in multi-task training; otherwise
        frames are drawn uniformly. ``margin = (before, after)`` restricts anchors to
        :meth:`anchor_pool` (windows that reach ``before`` frames back and ``after`` frames
        ahead stay inside their episode). ``source_weights`` (one per dataset, see ``source``)
        replace task balancing: a sample comes from dataset d with probability w_d / sum(w), then
        from a frame uniformly within it.

        Raises:
            ValueError: ``source_weights`` without per-frame sources, or of the wrong length.
        """
        if source_weights or balance_tasks:  # a group (dataset or task), then a frame within it
            if source_weights and self.source is None:
                raise ValueError(f"{len(source_weights)} source weights for a table of no sources")
            order, counts, starts, keys = self._groups("source" if source_weights else "task_index", margin)
            if source_weights:
                if len(source_weights) <= int(keys[-1]):
                    raise ValueError(f"{len(source_weights)} source weights for a table of {int(keys[-1]) + 1} sources")
                g = torch.multinomial(torch.tensor(source_weights, dtype=torch.float64)[keys], n, replacement=True,
                                      generator=generator)
            else:
                g = torch.randint(0, len(counts), (n,), generator=generator)
            offset = (torch.rand(n, generator=generator) * counts[g]).long().clamp_max(counts[g] - 1)
            return order[starts[g] + offset]
        if margin is None:
            return torch.randint(0, len(self), (n,), generator=generator)
        pool = self.anchor_pool(*margin)
        return pool[torch.randint(0, len(pool), (n,), generator=generator)]

    def _groups(self, key: str, margin: tuple[int, int] | None) -> tuple[torch.Tensor, ...]:
        """Anchor frames grouped by ``key`` (``task_index`` or ``source``), cached: (order, counts,
        starts, keys): ``order[starts[g]:starts[g] + counts[g]]`` are group ``keys[g]``'s frames."""
        cache = self.__dict__.setdefault("_groups_cache", {})
        if (key, margin) not in cache:
            frames = torch.arange(len(self)) if margin is None else self.anchor_pool(*margin)
            values = getattr(self, key)
            order = frames[torch.argsort(values[frames], stable=True)]
            keys, counts = torch.unique_consecutive(values[order], return_counts=True)
            cache[(key, margin)] = (order, counts, torch.cumsum(counts, 0) - counts, keys)
        return cache[(key, margin)]

    def anchor_pool(self, before: int, after: int) -> torch.Tensor:
        """Frames ``i`` (M,) long whose span ``[i - before, i + after]`` lies inside their episode.

        Every frame of an episode too short to hold such a span is kept (its windows are
        clamped at the episode ends, see :meth:`clips`).
        """
        i = torch.arange(len(self))
        start, end = self.episode_start, self.episode_end
        inside = (i - before >= start) & (i + after <= end - 1)
        too_short = end - start <= before + after
        return torch.nonzero(inside | too_short).squeeze(1)

    def clips(self, idx: torch.Tensor, frame_offsets: list[int]) -> dict[str, torch.Tensor]:
        """Video clips anchored at frames ``idx`` (B,): frames ``idx + o`` for ``o`` in ``frame_offsets``.

        Offsets must be increasing and evenly spaced by a stride ``S`` (negative offsets reach
        back before the anchor). Positions outside the episode are clamped to its first or
        last frame (the scene before the start is the first frame, after the end the last).

        Returns:
            latents: (B, T, N, C, h, w) the clip's frames.
            actions: (B, T - 1, S, Da) the actions taken between frame k and frame k + 1
                (env steps ``idx + o_k ... idx + o_k + S - 1``), clamped like the frames.
            action_is_pad: (B, T - 1, S) bool, True where that step lies outside the episode.
            task_index: (B,).
            state: (B, T, Ds) observation.state of the clip's frames (clamped like the frames).
            returns: (B, T) discounted returns of the clip's frames (clamped like the frames),
                when the table has them (:meth:`set_returns`).
        """
        offsets = torch.tensor(frame_offsets)
        gaps = offsets.diff()
        if len(offsets) < 2 or not bool((gaps == gaps[0]).all()) or int(gaps[0]) < 1:
            raise ValueError(f"frame_offsets must be >= 2 evenly spaced increasing offsets, got {frame_offsets}")
        S = int(gaps[0])
        start, last = self.episode_start[idx, None], self.episode_end[idx, None] - 1  # (B, 1)
        pos = idx[:, None] + offsets  # (B, T)
        steps = (pos[:, :-1, None] + torch.arange(S)).flatten(1)  # (B, (T - 1) * S)
        is_pad = (steps < start) | (steps > last)
        steps = torch.minimum(torch.maximum(steps, start), last)
        B, T = pos.shape
        frames = torch.minimum(torch.maximum(pos, start), last)  # (B, T)
        out = {
            "latents": self.latents[frames],
            "actions": self.action[steps].view(B, T - 1, S, -1),
            "action_is_pad": is_pad.view(B, T - 1, S),
            "task_index": self.task_index[idx],
            "state": self.state[frames],
        }
        if self.returns is not None:
            out["returns"] = self.returns[frames]
        return out

    @property
    def n_episodes(self) -> int:
        return int(torch.unique(self.episode_start).numel())

    def windows(self, idx: torch.Tensor, horizon: int, future_offsets: list[int],
                view: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Gather the windows anchored at frame indices ``idx`` (B,). See module docstring.

        ``view`` (B,): 0 the original frames, k > 0 augmented copy k - 1 (see :meth:`latents_at`).
        With raw frames in the table, ``ref_frames`` (B, n_cam, 3, H, W) uint8 too (of the same copy);
        with environment states, ``env_state`` (B, De) of the anchor frames; with RAMP's labels,
        ``indicator`` (B,) long and ``z_latents`` (B, n_cam, C, h, w) float32 of the anchor frames
        (the original frames' ``z`` whatever the view); with AWR weights, ``sample_weight`` (B,)
        float32 of the anchor frames; with GWM features, ``gwm_latents`` (B, L, c) float32 of the
        anchor frames (the original frames' whatever the view).
        """
        end = self.episode_end[idx]  # (B,)
        steps = idx.unsqueeze(1) + torch.arange(horizon)  # (B, H)
        is_pad = steps >= end.unsqueeze(1)
        steps = torch.minimum(steps, end.unsqueeze(1) - 1)
        out = {
            "state": self.state[idx],
            "ref_latents": self.latents_at(idx, view),
            "actions": self.action[steps],
            "action_is_pad": is_pad,
            "task_index": self.task_index[idx],
        }
        if self.frames is not None:
            out["ref_frames"] = self.frames[idx]
            if view is not None and self.view_frames is not None and bool((view > 0).any()):
                aug = self.view_frames[idx, (view - 1).clamp_min(0)]
                out["ref_frames"] = torch.where((view == 0).view(-1, 1, 1, 1, 1), out["ref_frames"], aug)
        if self.env_state is not None:
            out["env_state"] = self.env_state[idx]
        if self.indicator is not None:
            out["indicator"] = self.indicator[idx].long()
        if self.z_latents is not None:
            out["z_latents"] = self.z_latents[idx].float()
        if self.sample_weight is not None:
            out["sample_weight"] = self.sample_weight[idx]
        if self.gwm_latents is not None:
            out["gwm_latents"] = self.gwm_latents[idx].float()  # (B, L, c) of the original frames
        if self.segmentation is not None:
            out["ref_segmentation"] = self.segmentation[idx]  # (B, n_cam, H, W) of the original frames
        if future_offsets:
            fut = torch.minimum(idx.unsqueeze(1) + torch.tensor(future_offsets), end.unsqueeze(1) - 1)  # (B, F)
            out["future_latents"] = self.latents_at(fut, view)
        return out

    def mean_std(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-dimension mean and std of ``state``, ``action``, ``env_state`` or ``returns`` over all frames."""
        x = getattr(self, key).double()
        return x.mean(0).numpy(), x.std(0, unbiased=False).numpy()

    def normalization(self) -> dict[str, dict[str, list[float]]]:
        """Mean/std of state and action over all frames, as ``normalization.json`` holds them:
        ``{"observation.state": {"mean": [...], "std": [...]}, "action": {...}}`` (std unclamped;
        models clamp it when they load it), and ``observation.environment_state`` when the table
        has environment states."""
        out = {}
        for key, name in (("observation.state", "state"), ("action", "action"), ("observation.environment_state", "env_state")):
            if getattr(self, name) is not None:
                mean, std = self.mean_std(name)
                out[key] = {"mean": mean.tolist(), "std": std.tolist()}
        return out
