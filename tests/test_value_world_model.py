"""The value frame of the world model (GigaBrain-0.5M*, RAMP): target layout, loss, decoding,
backward compatibility of value-free runs, returns in the episode table, the metric."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from robodream.config import from_dict, to_dict
from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError, DatasetError
from robodream.eval.metrics import kendall_tau
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.modeling import VideoWorldModel
from robodream.world_model.train import WorldModelRunConfig, check_rewards

TINY = dict(dim=24, depth=1, n_heads=2, latent_channels=6, latent_size=4, action_dim=3, tasks=("reach", "push"),
            text_encoder="", n_context_frames=1, n_future_frames=2, frame_stride=2, window=(0, 1, 3))
#: value mean/std (return units) and state mean/std of the tests' normalisation
NORM = {"action": {"mean": [0.0] * 3, "std": [1.0] * 3}, "value": {"mean": [-50.0], "std": [10.0]},
        "observation.state": {"mean": [1.0, 2.0], "std": [2.0, 4.0]}}
NEW_NAMES = {"value_token", "value_mean", "value_std", "state_mean", "state_std"}


def _model(value_frame: str = "state_value", **kw) -> VideoWorldModel:
    torch.manual_seed(0)
    m = VideoWorldModel(WorldModelConfig(**{**TINY, "value_frame": value_frame,
                                            "state_dim": 2 if value_frame == "state_value" else 0, **kw}))
    with torch.no_grad():  # zero-initialised AdaLN gates/read-out would hide most of the network
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.set_normalization(NORM)
    return m.eval()


def _batch(m: VideoWorldModel, B: int = 2) -> dict[str, torch.Tensor]:
    cfg, g = m.cfg, torch.Generator().manual_seed(0)
    return {"latents": torch.randn(B, cfg.n_frames, len(cfg.cameras), cfg.latent_channels, 4, 4, generator=g),
            "frame_actions": torch.randn(B, cfg.n_frames - 1, cfg.frame_stride, cfg.action_dim, generator=g),
            "task_index": torch.arange(B) % 2, "returns": torch.tensor([-60.0, -30.0])[:B],
            "state": torch.tensor([[3.0, 2.0], [1.0, 10.0]])[:B]}


def test_value_frame_target_layout():
    """state_value: channel 0 the value, 1..Ds the state, the rest the value; value: every channel
    the value; each number repeated over (h, w) and every camera; decoding inverts it."""
    returns, state = torch.tensor([-60.0, -30.0]), torch.tensor([[3.0, 2.0], [1.0, 10.0]])
    m = _model("state_value")
    frame = m.value_frame_target(returns, state)
    assert frame.shape == (2, 2, 6, 4, 4)  # (B, N, C, h, w)
    # value (G + 50) / 10 = [-1, 2]; state ((3, 2) - (1, 2)) / (2, 4) = (1, 0), ((1, 10) - (1, 2)) / (2, 4) = (0, 2)
    expected = torch.tensor([[-1.0, 1.0, 0.0, -1.0, -1.0, -1.0], [2.0, 0.0, 2.0, 2.0, 2.0, 2.0]])
    torch.testing.assert_close(frame, expected[:, None, :, None, None].expand_as(frame))
    assert m.value_channels == [0, 3, 4, 5]
    torch.testing.assert_close(m.decode_value(frame), returns)
    v = _model("value")
    frame = v.value_frame_target(returns)
    torch.testing.assert_close(frame, torch.tensor([-1.0, 2.0])[:, None, None, None, None].expand(2, 2, 6, 4, 4))
    torch.testing.assert_close(v.decode_value(frame), returns)
    with pytest.raises(ValueError, match="state"):
        m.value_frame_target(returns)
    with pytest.raises(ValueError, match="no value frame"):
        _model("none").value_frame_target(returns)


def test_loss_includes_the_value_frame_and_every_parameter_learns():
    m = _model().train()
    b = _batch(m)
    loss, logs = m(**b, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and {"loss_flow", "loss_value_frame", "loss_balance"} <= set(logs)
    for name, p in m.named_parameters():
        if name == "action_null":  # used only by clips whose conditions are dropped
            continue
        assert p.grad is not None, name
    assert m.value_token.grad.abs().sum() > 0
    # the value frame's target is part of the flow loss: other returns, same noise, another loss
    _, other = m(**{**b, "returns": b["returns"] + 100.0}, generator=torch.Generator().manual_seed(0))
    assert other["loss_flow"] > logs["loss_flow"] and other["loss_value_frame"] > logs["loss_value_frame"]
    with pytest.raises(ValueError, match="returns"):
        m(**{**b, "returns": None})


def test_none_model_is_unchanged_and_old_configs_load_as_none():
    """value_frame = "none" adds no parameter or buffer (old checkpoints load strictly) and is what
    a config saved before the field means."""
    none, value = _model("none"), _model("state_value")
    none_sd, value_sd = none.state_dict(), value.state_dict()
    assert set(none_sd) == set(value_sd) - NEW_NAMES and NEW_NAMES <= set(value_sd)
    assert all(none_sd[k].shape == value_sd[k].shape for k in none_sd)
    assert none.cfg.grid[0] == 3 and value.cfg.grid[0] == 4  # one more frame of tokens
    saved = to_dict(WorldModelRunConfig())
    for key in ("value_frame", "gamma", "state_dim"):
        del saved["model"][key]
    assert from_dict(WorldModelRunConfig, saved, legacy=True).model.value_frame == "none"
    with pytest.raises(ValueError, match="no value frame"):
        none.predict_value(torch.zeros(1, 1, 2, 6, 4, 4), None, torch.tensor([0]))


def test_config_validation():
    with pytest.raises(ConfigError, match="value_frame must be one of"):
        WorldModelConfig(**TINY, value_frame="q")
    with pytest.raises(ConfigError, match="gamma"):
        WorldModelConfig(**TINY, gamma=0.0)
    with pytest.raises(ConfigError, match="state_dim \\+ 1 <= latent_channels"):
        WorldModelConfig(**TINY, value_frame="state_value", state_dim=6)
    assert WorldModelConfig(**TINY, value_frame="state_value", state_dim=5).n_value_frames == 1


@pytest.mark.parametrize("value_frame", ["state_value", "value"])
def test_predict_value_is_in_return_units(value_frame):
    """predict_value decodes the jointly generated value frame: with the oracle velocity toward a
    known value frame the sampler lands on it, and the returns come back in return units."""
    m = _model(value_frame)
    b = _batch(m)
    target = m.value_frame_target(b["returns"], b["state"])  # (B, N, C, h, w)

    def oracle(x, t_frame, *args, **kw):  # v = (x_t - x0) / t on the value frame, 0 elsewhere
        v = torch.zeros_like(x)
        v[:, -1] = (x[:, -1] - target) / t_frame[:, -1].view(-1, 1, 1, 1, 1)
        return v

    m.velocity = oracle
    value = m.predict_value(b["latents"][:, :1], b["frame_actions"], b["task_index"], n_steps=3,
                            generator=torch.Generator().manual_seed(0))
    assert value.shape == (2,)
    torch.testing.assert_close(value, b["returns"], rtol=1e-5, atol=1e-4)
    clip, same = m.sample_with_value(b["latents"][:, :1], b["frame_actions"], b["task_index"], n_steps=3,
                                     generator=torch.Generator().manual_seed(0))
    assert clip.shape == b["latents"].shape and torch.equal(same, value)  # the video keeps its shape


def test_sampling_a_value_model_with_its_network():
    m = _model()
    b = _batch(m)
    clip, value = m.sample_with_value(b["latents"][:, :1], b["frame_actions"], b["task_index"], n_steps=2,
                                      guidance_scale=2.0, generator=torch.Generator().manual_seed(0))
    assert clip.shape == b["latents"].shape and torch.equal(clip[:, :1], b["latents"][:, :1])
    assert value.shape == (2,) and torch.isfinite(value).all()
    dream = m.rollout(b["latents"][:, :1], None, b["task_index"], n_chunks=2, n_steps=2)
    assert dream.shape == (2, 4, *b["latents"].shape[2:])  # value frames are not part of the video


def test_episode_table_returns_and_clip_targets():
    rewards = [[-1.0, -1.0, 0.0], [-1.0, -5.0]]
    eps = [{"latents": torch.zeros(len(r), 1, 1, 1, 1), "state": torch.arange(len(r), dtype=torch.float32)[:, None],
            "action": torch.zeros(len(r), 1), "task_index": 0, "reward": torch.tensor(r)} for r in rewards]
    table = EpisodeTable.from_episodes(eps)
    table.set_returns(0.5)
    # G_t = r_t + 0.5 G_{t+1}, each episode terminal at its last frame
    assert table.returns.tolist() == [-1.5, -1.0, 0.0, -3.5, -5.0]
    c = table.clips(torch.tensor([0, 3]), [0, 2])
    assert c["returns"].tolist() == [[-1.5, 0.0], [-3.5, -5.0]]  # clamped at the second episode's end
    assert c["state"][..., 0].tolist() == [[0.0, 2.0], [0.0, 1.0]]
    bare = EpisodeTable.from_episodes([{k: v for k, v in e.items() if k != "reward"} for e in eps])
    assert bare.reward is None and "returns" not in bare.clips(torch.tensor([0]), [0, 1])
    with pytest.raises(ValueError, match="no rewards"):
        bare.set_returns(0.9)


def test_a_dataset_without_rewards_is_refused():
    cfg = WorldModelConfig(**TINY, value_frame="value")
    ds = SimpleNamespace(root="demos/ds", features={"action": {}})
    with pytest.raises(DatasetError, match="next.reward, and demos/ds has none") as e:
        check_rewards([ds], cfg)
    assert len(str(e.value).splitlines()) == 1
    check_rewards([ds], WorldModelConfig(**TINY))  # no value frame: rewards not needed
    check_rewards([SimpleNamespace(root="ok", features={"next.reward": {}})], cfg)


def test_kendall_tau_on_known_rankings():
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([4, 3, 2, 1], [10, 20, 30, 40]) == pytest.approx(-1.0)
    # one swapped pair of six: (5 concordant - 1 discordant) / 6
    assert kendall_tau([1, 2, 4, 3], [10, 20, 30, 40]) == pytest.approx(2 / 3)
    assert kendall_tau([1.0], [2.0]) is None and kendall_tau([1, 1, 1], [1, 2, 3]) is None
    with pytest.raises(ValueError, match="equal length"):
        kendall_tau([1, 2], [1, 2, 3])
