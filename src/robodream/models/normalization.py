"""Dataset normalisation of proprioceptive state and actions, carried inside a model.

The statistics are buffers, so they travel with the weights (Diffusion Policy's lesson) and
are also written to ``RUN/normalization.json`` by the trainers (layout of
:meth:`robodream.data.windows.EpisodeTable.normalization`).
"""

from __future__ import annotations

import torch

#: Standard deviations are clamped here, so a constant dimension (a gripper that never moves)
#: does not blow up its normalised values.
MIN_STD = 1e-3


class StateActionNormalization:
    """Mixin for an ``nn.Module``: buffers ``state_mean/std`` (Ds,) and ``action_mean/std`` (Da,)
    (identity until :meth:`set_normalization`); call :meth:`init_normalization` in ``__init__``."""

    def init_normalization(self, state_dim: int, action_dim: int) -> None:
        self.register_buffer("state_mean", torch.zeros(state_dim))
        self.register_buffer("state_std", torch.ones(state_dim))
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))

    def set_normalization(self, stats: dict[str, dict[str, list[float]]]) -> None:
        """Set mean/std of ``observation.state`` and ``action`` from a normalization.json dict."""
        for key, name in (("observation.state", "state"), ("action", "action")):
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(stats[key]["mean"], dtype=torch.float32))
            std = torch.as_tensor(stats[key]["std"], dtype=torch.float32).clamp_min(MIN_STD)
            getattr(self, f"{name}_std").copy_(std)

    def normalize_state(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.state_mean) / self.state_std

    def unnormalize_state(self, s: torch.Tensor) -> torch.Tensor:
        return s * self.state_std + self.state_mean

    def normalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return (a - self.action_mean) / self.action_std

    def unnormalize_action(self, a: torch.Tensor) -> torch.Tensor:
        return a * self.action_std + self.action_mean
