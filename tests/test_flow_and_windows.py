"""Rectified-flow schedule and training-window gathering."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from robodream.data.windows import EpisodeTable
from robodream.models.flow import euler_timesteps, sample_time, shift_time, velocity_target


def test_shift_time_formula_and_endpoints():
    t = torch.linspace(0, 1, 11)
    s = 5.0
    torch.testing.assert_close(shift_time(t, s), s * t / (1 + (s - 1) * t))
    assert shift_time(torch.tensor(0.0), s) == 0 and shift_time(torch.tensor(1.0), s) == 1
    torch.testing.assert_close(shift_time(t, 1.0), t)
    # shift > 1 moves mass to high noise: t' >= t, strictly inside (0, 1)
    assert (shift_time(t, s) >= t).all() and (shift_time(t[1:-1], s) > t[1:-1]).all()


def test_sample_time_is_shifted_uniform():
    g = torch.Generator().manual_seed(0)
    t = sample_time(200_000, 5.0, generator=g)
    assert t.min() >= 0 and t.max() <= 1
    # median of the shifted uniform is shift(0.5) = 5/6
    assert float(t.median()) == pytest.approx(5 / 6, abs=5e-3)


def test_euler_timesteps_and_velocity():
    ts = euler_timesteps(10, 5.0)
    assert ts.shape == (11,) and ts[0] == 1 and ts[-1] == 0 and (ts[1:] < ts[:-1]).all()
    # integrating the exact velocity of a straight path recovers x0 exactly
    x0, eps = torch.randn(4, 3), torch.randn(4, 3)
    x = eps.clone()
    for t, tn in zip(ts[:-1], ts[1:]):
        x = x + (tn - t) * velocity_target(x0, eps)
    torch.testing.assert_close(x, x0)
    with pytest.raises(ValueError):
        euler_timesteps(0, 1.0)


def _table():
    eps = []
    for e, T in enumerate([5, 3]):
        eps.append({"latents": torch.arange(T).float().view(T, 1, 1, 1, 1).expand(T, 2, 1, 1, 1) + 100 * e,
                    "state": np.arange(T, dtype=np.float32)[:, None] + 100 * e,
                    "action": np.arange(T, dtype=np.float32)[:, None] + 100 * e, "task_index": e})
    return EpisodeTable.from_episodes(eps)


def test_windows_pad_at_episode_end():
    tab = _table()
    assert len(tab) == 8 and tab.n_episodes == 2
    w = tab.windows(torch.tensor([3, 6]), horizon=4, future_offsets=[2, 4])
    # frame 3 of episode 0 (length 5): actions 3, 4, then padded with 4
    assert w["actions"][0, :, 0].tolist() == [3, 4, 4, 4]
    assert w["action_is_pad"][0].tolist() == [False, False, True, True]
    # frame 1 of episode 1 (global 6, length 3): actions 101, 102, pad
    assert w["actions"][1, :, 0].tolist() == [101, 102, 102, 102]
    # future frames clamp to the episode's last frame, never leak into the next episode
    assert w["future_latents"][0, :, 0, 0, 0, 0].tolist() == [4, 4]
    assert w["future_latents"][1, :, 0, 0, 0, 0].tolist() == [102, 102]
    assert w["task_index"].tolist() == [0, 1]
    assert w["ref_latents"].shape == (2, 2, 1, 1, 1)


def test_balanced_anchor_sampling():
    tab = _table()  # task 0 has 5 frames, task 1 has 3
    g = torch.Generator().manual_seed(0)
    idx = tab.sample_anchors(20_000, g)
    frac_task1 = (tab.task_index[idx] == 1).float().mean()
    assert abs(float(frac_task1) - 0.5) < 0.02
    assert set(idx.tolist()) == set(range(8))
    uni = tab.sample_anchors(20_000, g, balance_tasks=False)
    assert abs(float((tab.task_index[uni] == 1).float().mean()) - 3 / 8) < 0.02


def test_source_weighted_anchor_sampling():
    """Per-dataset sampling weights (real vs synthetic data) replace task balancing."""
    eps = [{"latents": torch.zeros(T, 1, 1, 1, 1), "state": np.zeros((T, 1), np.float32),
            "action": np.zeros((T, 1), np.float32), "task_index": 0, "source": s} for s, T in enumerate([6, 2, 4])]
    eps[1]["frames"] = torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8)  # not on every episode: no frames kept
    tab = EpisodeTable.from_episodes(eps)
    assert tab.frames is None and tab.source.tolist() == [0] * 6 + [1] * 2 + [2] * 4
    idx = tab.sample_anchors(30_000, torch.Generator().manual_seed(0), source_weights=(3.0, 1.0, 0.0))
    frac = torch.bincount(tab.source[idx], minlength=3).float() / len(idx)
    assert abs(float(frac[0]) - 0.75) < 0.02 and abs(float(frac[1]) - 0.25) < 0.02 and frac[2] == 0
    assert set(idx.tolist()) == set(range(8))  # every frame of the weighted sources is drawn
    with pytest.raises(ValueError, match="source weights"):
        tab.sample_anchors(4, torch.Generator(), source_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="no sources"):
        _table().sample_anchors(4, torch.Generator(), source_weights=(1.0, 1.0))


def test_shifted_frames_replicate_the_edges():
    from robodream.data.latents import shifted

    f = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    up = shifted(f, 1, 0, pad=2)  # output (y, x) = input (y + 1, x): content moves up, the last row repeats
    np.testing.assert_array_equal(up[:, :-1], f[:, 1:])
    np.testing.assert_array_equal(up[:, -1], f[:, -1])
    np.testing.assert_array_equal(shifted(f, 0, 0, pad=2), f)
    left = shifted(f, 0, 2, pad=2)
    np.testing.assert_array_equal(left[:, :, :2], f[:, :, 2:])


def test_color_jitter():
    """Identity factors keep the frames; brightness scales; saturation and hue leave grey pixels
    grey; an augmented copy is one draw per episode and deterministic per rng seed."""
    from robodream.data.latents import augmented, color_jittered

    rng = np.random.default_rng(0)
    f = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(color_jittered(f, 1.0, 1.0, 1.0, 0.0), f)
    half = color_jittered(f, 0.5, 1.0, 1.0, 0.0).astype(int)
    assert np.abs(half - np.round(f / 2)).max() <= 1
    grey = np.repeat(rng.integers(0, 256, (1, 8, 8, 1), dtype=np.uint8), 3, axis=-1)
    for out in (color_jittered(grey, 1.0, 1.0, 0.3, 0.0), color_jittered(grey, 1.0, 1.0, 1.0, 0.2)):
        assert np.abs(out.astype(int) - grey).max() <= 1  # no colour to change
    a = augmented(f, np.random.default_rng(5), 2, 0.4)
    assert a.shape == f.shape and a.dtype == np.uint8 and not np.array_equal(a, f)
    np.testing.assert_array_equal(a, augmented(f, np.random.default_rng(5), 2, 0.4))


def test_windows_take_one_shifted_copy_per_sample():
    """Random-shift augmentation: a sample's reference and future frames come from the same
    shifted copy (view k - 1), view 0 is the original."""
    eps = _episodes_for_views()
    tab = EpisodeTable.from_episodes(eps)
    assert tab.n_views == 2
    idx = torch.tensor([0, 1, 2])
    view = torch.tensor([0, 1, 2])
    w = tab.windows(idx, horizon=2, future_offsets=[1, 2], view=view)
    # latents hold the frame index; copy k adds 100 * (k + 1)
    assert w["ref_latents"][:, 0, 0, 0, 0].tolist() == [0, 101, 202]
    assert w["future_latents"][:, :, 0, 0, 0, 0].tolist() == [[1, 2], [102, 103], [203, 204]]
    plain = tab.windows(idx, horizon=2, future_offsets=[1, 2])
    assert plain["ref_latents"][:, 0, 0, 0, 0].tolist() == [0, 1, 2]


def _episodes_for_views():
    T = 6
    lat = torch.arange(T, dtype=torch.float32).view(T, 1, 1, 1, 1)
    views = torch.stack([lat + 100, lat + 200], 1)  # (T, K=2, n_cam, C, h, w)
    return [{"latents": lat, "views": views, "state": torch.zeros(T, 1), "action": torch.zeros(T, 1), "task_index": 0}]
