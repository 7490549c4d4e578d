"""Returns, n-step TD advantages and the advantage indicator of RAMP / RECAP.

GigaBrain-0.5M* (RAMP) conditions its policy on an indicator ``I = [A > eps]`` of the n-step
TD advantage ``A_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}) - V(s_t)`` computed with the
value world model's ``V``; RECAP (pi*0.6) does the same without the world model's future.
``eps`` is chosen per dataset so that a stated fraction of frames is positive (the quantile of
the advantages), which keeps the indicator informative whatever the scale of ``V``.

Episodes are terminal at their last frame (``next.done``): nothing is bootstrapped past it.
"""

from __future__ import annotations

import numpy as np


def discounted_returns(rewards: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """Monte-Carlo returns ``G_t = sum_{k >= 0} gamma^k r_{t+k}`` of one terminal episode.

    Args:
        rewards: (T,) per-step rewards (``next.reward``).
        gamma: discount in (0, 1].

    Returns:
        (T,) float64 returns; the value targets of the value model.

    Raises:
        ValueError: ``gamma`` outside (0, 1] or a non-1-D ``rewards``.
    """
    r = np.asarray(rewards, np.float64)
    if r.ndim != 1:
        raise ValueError(f"rewards must be (T,), got shape {r.shape}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    out = np.empty_like(r)
    acc = 0.0
    for t in range(len(r) - 1, -1, -1):
        acc = r[t] + gamma * acc
        out[t] = acc
    return out


def n_step_advantages(rewards: np.ndarray, values: np.ndarray, n: int, gamma: float = 1.0) -> np.ndarray:
    """n-step TD advantages of one terminal episode (RAMP, GigaBrain-0.5M*, Sec. 3).

    ``A_t = sum_{k < n} gamma^k r_{t+k} + gamma^n V_{t+n} - V_t``, where the sum stops at the
    episode's last step and ``V`` past the last step is 0 (the episode is terminal there).

    Args:
        rewards: (T,) per-step rewards.
        values: (T,) predicted values ``V(s_t)`` of each frame.
        n: steps looked ahead, >= 1.
        gamma: discount in (0, 1].

    Returns:
        (T,) float64 advantages.

    Raises:
        ValueError: mismatched shapes, ``n < 1`` or ``gamma`` outside (0, 1].
    """
    r = np.asarray(rewards, np.float64)
    v = np.asarray(values, np.float64)
    if r.ndim != 1 or v.shape != r.shape:
        raise ValueError(f"rewards and values must both be (T,), got {r.shape} and {v.shape}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    t_len = len(r)
    discounts = gamma ** np.arange(n)
    padded_r = np.concatenate([r, np.zeros(n)])
    padded_v = np.concatenate([v, np.zeros(n)])  # V = 0 past the terminal step
    windows = np.lib.stride_tricks.sliding_window_view(padded_r, n)[:t_len]  # (T, n): r_t .. r_{t+n-1}
    return windows @ discounts + gamma ** n * padded_v[n:n + t_len] - v


def indicator_threshold(advantages: np.ndarray, positive_fraction: float) -> float:
    """The ``eps`` that makes about ``positive_fraction`` of ``advantages`` exceed it (a quantile).

    Args:
        advantages: (N,) advantages of every frame of a dataset.
        positive_fraction: in (0, 1), e.g. 0.3.

    Raises:
        ValueError: an empty ``advantages`` or a fraction outside (0, 1).
    """
    a = np.asarray(advantages, np.float64).reshape(-1)
    if a.size == 0:
        raise ValueError("no advantages to threshold")
    if not 0 < positive_fraction < 1:
        raise ValueError(f"positive_fraction must be in (0, 1), got {positive_fraction}")
    return float(np.quantile(a, 1.0 - positive_fraction))


def advantage_indicator(advantages: np.ndarray, eps: float) -> np.ndarray:
    """``I = [A > eps]`` per frame, bool of the shape of ``advantages``."""
    return np.asarray(advantages) > eps
