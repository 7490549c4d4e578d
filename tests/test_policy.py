"""GigaWorld-Policy: block-causal mask, KV-cached inference, training loss, modes."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from robodream.errors import ConfigError
from robodream.models.flow import interpolate
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import ACTION, FUTURE, PREFIX, GigaWorldPolicy, block_causal_mask


def tiny_cfg(**kw) -> PolicyConfig:
    base = dict(dim=32, depth=2, n_heads=2, horizon=8, n_action_steps=4, video_stride=4, latent_channels=4,
                latent_size=4, patch_size=2, tasks=("a", "b"), n_inference_steps=4, action_expert_dim=16,
                pixel_stem_width=0)  # latents only; test_pixel_stem_sees_the_raw_frames covers the stem
    base.update(kw)
    return PolicyConfig(**base)


def random_policy(cfg: PolicyConfig, seed: int = 0) -> GigaWorldPolicy:
    """A policy with non-trivial weights everywhere (AdaLN-Zero would otherwise start as identity)."""
    torch.manual_seed(seed)
    m = GigaWorldPolicy(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    return m.eval()


def inputs(cfg: PolicyConfig, B: int = 3, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(B, cfg.state_dim, generator=g)
    ref = torch.randn(B, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    task = torch.tensor([0, 1, 0][:B])
    actions = torch.randn(B, cfg.horizon, cfg.action_dim, generator=g)
    fut = torch.randn(B, cfg.n_future, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                      generator=g)
    return state, ref, task, actions, fut


def test_block_causal_mask_structure():
    g = torch.tensor([PREFIX, PREFIX, ACTION, ACTION, FUTURE])
    m = block_causal_mask(g, g, "block_causal")
    assert m[:2, :2].all() and not m[:2, 2:].any()  # prefix sees only prefix
    assert m[2:4, :4].all() and not m[2:4, 4:].any()  # actions see prefix + actions, never future
    assert m[4].all()  # future sees everything
    assert block_causal_mask(g, g, "full").all()


# 0: action tokens share the main weights; 16: a narrow action expert (Mixture-of-Transformers).
EXPERT_DIMS = pytest.mark.parametrize("expert", [0, 16])


@EXPERT_DIMS
def test_training_path_actions_ignore_future_tokens(expert):
    cfg = tiny_cfg(action_expert_dim=expert)
    m = random_policy(cfg)
    state, ref, task, actions, fut = inputs(cfg)
    t = torch.tensor([0.3, 0.7, 0.9])
    f_a = m._patchify(fut)
    f_b = torch.randn_like(f_a) * 5
    va1, vf1 = m.velocity(state, ref, actions, task, t, f_a)
    va2, vf2 = m.velocity(state, ref, actions, task, t, f_b)
    torch.testing.assert_close(va1, va2, rtol=0, atol=1e-6)
    assert (vf1 - vf2).abs().max() > 1e-3  # the future tokens themselves do change
    # the joint (mask=full) ablation does let the future influence the actions
    mj = random_policy(tiny_cfg(mask="full", action_expert_dim=expert))
    assert (mj.velocity(state, ref, actions, task, t, f_a)[0] - mj.velocity(state, ref, actions, task, t, f_b)[0]
            ).abs().max() > 1e-4


@EXPERT_DIMS
def test_inference_actions_ignore_future_noise_and_match_action_only(expert):
    cfg = tiny_cfg(action_expert_dim=expert)
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg)
    noise = torch.randn(3, cfg.horizon, cfg.action_dim)
    a_only = m.sample(state, ref, task, noise=noise).actions
    for seed in (0, 1):
        fn = torch.randn(3, cfg.n_future_tokens, cfg.patch_dim, generator=torch.Generator().manual_seed(seed)) * 3
        out = m.sample(state, ref, task, mode="with_video", noise=noise, future_noise=fn)
        torch.testing.assert_close(out.actions, a_only, rtol=0, atol=1e-5)
        assert out.future_latents.shape == (3, cfg.n_future, 2, cfg.latent_channels, cfg.latent_size, cfg.latent_size)


@EXPERT_DIMS
@pytest.mark.parametrize("mode", ["action_only", "with_video"])
@pytest.mark.parametrize("B", [1, 3])  # batch 1 takes the pre-split modulations
def test_kv_cache_equals_uncached(mode, expert, B):
    cfg = tiny_cfg(action_expert_dim=expert)
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg, B=B)
    noise = torch.randn(B, cfg.horizon, cfg.action_dim)
    fn = torch.randn(B, cfg.n_future_tokens, cfg.patch_dim)
    a = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, use_cache=True)
    b = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, use_cache=False)
    torch.testing.assert_close(a.actions, b.actions, rtol=1e-5, atol=1e-5)
    if mode == "with_video":
        torch.testing.assert_close(a.future_latents, b.future_latents, rtol=1e-5, atol=1e-5)


@EXPERT_DIMS
def test_cached_inference_matches_training_path_velocity(expert):
    """One Euler step of the cached sampler equals a step computed with the training-path velocity."""
    cfg = tiny_cfg(n_inference_steps=1, time_shift=1.0, action_expert_dim=expert)
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg)
    noise = torch.randn(3, cfg.horizon, cfg.action_dim)
    out = m.sample(state, ref, task, noise=noise).actions
    v, _ = m.velocity(state, ref, noise, task, torch.ones(3), None)
    torch.testing.assert_close(out, noise - v, rtol=1e-5, atol=1e-5)


def test_loss_backward_and_padding_mask():
    cfg = tiny_cfg()
    m = random_policy(cfg).train()
    state, ref, task, actions, fut = inputs(cfg)
    pad = torch.zeros(3, cfg.horizon, dtype=torch.bool)
    pad[:, -3:] = True
    loss, logs = m(state, ref, actions, task, fut, action_is_pad=pad, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert {"loss", "loss_action", "loss_video"} <= logs.keys()
    assert all(p.grad is not None for p in m.parameters())
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    m.eval()
    full, _ = m(state, ref, actions, task, fut, generator=g())
    nopad, _ = m(state, ref, actions, task, fut, action_is_pad=torch.zeros_like(pad), generator=g())
    padded, _ = m(state, ref, actions, task, fut, action_is_pad=pad, generator=g())
    torch.testing.assert_close(full, nopad)
    assert abs(full.item() - padded.item()) > 1e-6


def test_lambda_weights_action_loss():
    state, ref, task, actions, fut = inputs(tiny_cfg())
    losses = {}
    for lam in (1.0, 5.0):
        m = random_policy(tiny_cfg(action_loss_weight=lam))
        loss, logs = m(state, ref, actions, task, fut, generator=torch.Generator().manual_seed(0))
        losses[lam] = (loss.item(), logs)
    for lam, (loss, logs) in losses.items():
        assert loss == pytest.approx(logs["loss_video"] + lam * logs["loss_action"], rel=1e-5)


def test_no_video_ablation_has_no_future_tokens():
    cfg = tiny_cfg(video_stride=0)
    assert cfg.n_future == 0 and cfg.n_future_tokens == 0
    m = random_policy(cfg)
    state, ref, task, actions, _ = inputs(cfg)
    loss, logs = m(state, ref, actions, task, None, generator=torch.Generator().manual_seed(0))
    assert "loss_video" not in logs and torch.isfinite(loss)
    with pytest.raises(ValueError):
        m.sample(state, ref, task, mode="with_video")


def test_joint_model_only_samples_jointly():
    m = random_policy(tiny_cfg(mask="full"))
    state, ref, task, _, _ = inputs(tiny_cfg())
    with pytest.raises(ValueError):
        m.sample(state, ref, task, mode="action_only")
    out = m.sample(state, ref, task, mode="joint")
    assert out.actions.shape == (3, 8, 4) and out.future_latents is not None


@pytest.mark.parametrize("bad", [dict(mask="diagonal"), dict(horizon=10, video_stride=4), dict(n_action_steps=9),
                                 dict(mask="full", video_stride=0), dict(patch_size=3)])
def test_config_errors(bad):
    with pytest.raises(ConfigError):
        tiny_cfg(**bad)


def test_interpolate_endpoints():
    x0, eps = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(interpolate(x0, eps, torch.zeros(2)), x0)
    torch.testing.assert_close(interpolate(x0, eps, torch.ones(2)), eps)


@EXPERT_DIMS
def test_compiled_action_only_matches_eager(expert):
    cfg = tiny_cfg(depth=1, action_expert_dim=expert)
    m = random_policy(cfg)
    for B in (1, 3):
        state, ref, task, _, _ = inputs(cfg, B=B)
        noise = torch.randn(B, cfg.horizon, cfg.action_dim)
        eager = m.sample(state, ref, task, noise=noise).actions
        m.compile_inference()
        compiled = m.sample(state, ref, task, noise=noise).actions
        m.__dict__.pop("_compiled_action_only_chunk")  # back to eager for the next batch size
        torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)


def test_step_modulation_cache_follows_the_weights():
    """sample() caches the modulations of a task across calls; new weights (load, an in-place
    optimiser/EMA update, a copy) are never served stale ones."""
    cfg = tiny_cfg()
    m, other = random_policy(cfg, seed=0), random_policy(cfg, seed=5)
    state, ref, task, _, _ = inputs(cfg, B=1)
    noise = torch.randn(1, cfg.horizon, cfg.action_dim)

    def act(model):
        return model.sample(state, ref, task, noise=noise).actions

    def reference(model):  # the uncached path recomputes every modulation
        return model.sample(state, ref, task, noise=noise, use_cache=False).actions

    torch.testing.assert_close(act(m), act(m))
    m.load_state_dict(other.state_dict())
    torch.testing.assert_close(act(m), reference(other), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        for p in m.time_embedding.parameters():
            p.mul_(1.5)
        m.action_blocks[0].modulation.bias.add_(0.3)
    torch.testing.assert_close(act(m), reference(m), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(act(m), reference(other), atol=1e-3)
    with torch.no_grad():  # a wide block: the clean prefix's modulation (cached too) changes
        m.blocks[0].modulation.bias.add_(0.3)
    torch.testing.assert_close(act(m), reference(m), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        m.blocks[1].modulation.bias.add_(0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # modulations rounded to bf16 here ...
        act(m)
    torch.testing.assert_close(act(m), reference(m), rtol=1e-5, atol=1e-5)  # ... never served to fp32 calls
    twin = copy.deepcopy(m)
    with torch.no_grad():
        twin.task_embedding.weight.mul_(-1.0)
    torch.testing.assert_close(act(twin), reference(twin), rtol=1e-5, atol=1e-5)
    with torch.inference_mode():  # weights without version counters are never cached
        fresh = GigaWorldPolicy(cfg)
        fresh.load_state_dict(m.state_dict())
        torch.testing.assert_close(act(fresh), reference(m), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mask,mode", [("block_causal", "with_video"), ("full", "joint")])
def test_video_mode_modulation_cache_follows_the_weights(mask, mode):
    """With-video and joint sampling take their modulations from the same cache: after an
    in-place weight update a model samples what a fresh copy of it (nothing cached) does."""
    cfg = tiny_cfg(depth=1, mask=mask)
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg)
    noise = torch.randn(3, cfg.horizon, cfg.action_dim)
    fn = torch.randn(3, cfg.n_future_tokens, cfg.patch_dim)

    def run(model):
        out = model.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn)
        return torch.cat([out.actions.flatten(), out.future_latents.flatten()])

    before = run(m)
    torch.testing.assert_close(run(m), before)
    with torch.no_grad():
        m.blocks[0].modulation.bias.add_(0.3)
        m.latent_out.modulation.weight.mul_(2.0)
    after = run(m)
    torch.testing.assert_close(after, run(copy.deepcopy(m)), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, before, atol=1e-3)


def test_compiled_joint_and_with_video_match_eager():
    """The video denoising step compiles too (the benchmark compares compiled with compiled)."""
    base = tiny_cfg(depth=1)
    fn = torch.randn(3, base.n_future_tokens, base.patch_dim)
    for cfg, mode in ((tiny_cfg(depth=1, mask="full"), "joint"), (base, "with_video")):
        m = random_policy(cfg)
        state, ref, task, _, _ = inputs(cfg)
        noise = torch.randn(3, cfg.horizon, cfg.action_dim)
        eager = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn)
        m.compile_inference()
        compiled = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn)
        torch.testing.assert_close(compiled.actions, eager.actions, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(compiled.future_latents, eager.future_latents, rtol=1e-4, atol=1e-4)


def test_action_expert_steps_run_only_the_narrow_weights():
    """With an action expert, the denoising steps never touch the wide blocks' weights (the
    prefix is encoded once by them; the last wide block only projects keys/values), and the
    expert's parameters are narrow."""
    cfg = tiny_cfg(action_expert_dim=16)
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg)
    calls = {"main.qkv": 0, "main.mlp": 0, "expert.qkv": 0, "expert.mlp": 0}
    for name, blocks in (("main", m.blocks), ("expert", m.action_blocks)):
        for b in blocks:
            for part, mod in (("qkv", b.attn.qkv), ("mlp", b.mlp)):
                mod.register_forward_hook(lambda *_, n=f"{name}.{part}": calls.__setitem__(n, calls[n] + 1))
    m.sample(state, ref, task)
    steps = cfg.depth * cfg.n_inference_steps
    assert calls == {"main.qkv": cfg.depth, "main.mlp": cfg.depth - 1, "expert.qkv": steps, "expert.mlp": steps}
    assert m.action_blocks[0].mlp.fc1.weight.shape == (64, 16)
    assert m.action_blocks[0].attn.qkv.weight.shape == (3 * cfg.dim, 16)  # projects into the shared heads


@pytest.mark.parametrize("expert,stride,mask", [(16, 0, "block_causal"), (16, 4, "block_causal"),
                                                (0, 0, "block_causal"), (0, 4, "block_causal"), (0, 4, "full")])
def test_every_parameter_gets_a_gradient(expert, stride, mask):
    """DDP (find_unused_parameters=False) needs every parameter in the graph of the loss: the
    model computes only what is used, and has no parameter it would not use. With the action
    expert and no video (the bench success ablation) the last wide block only feeds the
    actions' keys/values, so it has no output projection or MLP."""
    cfg = tiny_cfg(action_expert_dim=expert, video_stride=stride, mask=mask)
    m = random_policy(cfg).train()
    state, ref, task, actions, fut = inputs(cfg)
    loss, _ = m(state, ref, actions, task, future_latents=fut if stride else None,
                generator=torch.Generator().manual_seed(0))
    loss.backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None]
    assert not missing, missing


def test_kv_only_last_block_loads_weights_written_before_it():
    """Runs trained before the last wide block of a no-video action-expert model lost its unused
    output projection and MLP still load (the stale tensors are dropped)."""
    from robodream.train.checkpoint import load_model_weights, save_tensors

    cfg = tiny_cfg(action_expert_dim=16, video_stride=0)
    m = random_policy(cfg)
    sd = dict(m.state_dict())
    last = cfg.depth - 1
    sd[f"blocks.{last}.attn.proj.weight"] = torch.zeros(cfg.dim, cfg.dim)
    sd[f"blocks.{last}.mlp.fc1.weight"] = torch.zeros(4 * cfg.dim, cfg.dim)
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        save_tensors(Path(d) / "w.safetensors", sd)
        fresh = GigaWorldPolicy(cfg)
        load_model_weights(fresh, Path(d) / "w.safetensors")
    for k, v in m.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


@pytest.mark.parametrize("keypoints", [0, 3])
def test_pixel_stem_sees_the_raw_frames(keypoints):
    """A pixel-stem policy (with or without spatial-softmax keypoints) needs the raw frames, its
    fast sampler equals the reference one, and a few changed pixels (a goal marker the latents
    would lose) change its actions."""
    cfg = tiny_cfg(pixel_stem_width=8, image_size=16, stem_keypoints=keypoints)  # 16 px -> 2x2 grid: 3 halvings
    assert cfg.stem_halvings == 3
    m = random_policy(cfg)
    state, ref, task, actions, fut = inputs(cfg)
    frames = torch.randint(0, 256, (3, len(cfg.cameras), 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    noise = torch.randn(3, cfg.horizon, cfg.action_dim)
    with pytest.raises(ValueError, match="ref_frames"):
        m.sample(state, ref, task, noise=noise)
    a = m.sample(state, ref, task, noise=noise, ref_frames=frames).actions
    for mode in ("action_only", "with_video"):
        fn = torch.randn(3, cfg.n_future_tokens, cfg.patch_dim)
        fast = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, ref_frames=frames)
        slow = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, ref_frames=frames, use_cache=False)
        torch.testing.assert_close(fast.actions, slow.actions, rtol=1e-5, atol=1e-5)
    marked = frames.clone()
    marked[:, 0, :, 5:7, 9:11] = torch.tensor([255, 0, 0], dtype=torch.uint8).view(3, 1, 1)  # a 2x2 red dot
    b = m.sample(state, ref, task, noise=noise, ref_frames=marked).actions
    assert (a - b).abs().amax() > 1e-3
    loss, _ = m.train()(state, ref, actions, task, fut, ref_frames=frames)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.pixel_stem.parameters())
    if keypoints:
        assert all(p.grad is not None and p.grad.abs().sum() > 0
                   for p in [*m.keypoints.parameters(), *m.keypoint_in.parameters()])


def test_spatial_softmax_finds_a_bright_spot():
    """With a sharp temperature, the keypoint of a map that is high at one pixel is that pixel's
    coordinates in [-1, 1] (x to the right, y down)."""
    from robodream.models.stem import SpatialSoftmax

    ss = SpatialSoftmax(1, 1)
    with torch.no_grad():
        ss.proj.weight.fill_(1.0)
        ss.proj.bias.zero_()
        ss.log_temperature.fill_(-5.0)
    x = torch.zeros(2, 1, 9, 17)
    x[0, 0, 2, 13] = 1.0
    x[1, 0, 8, 0] = 1.0
    kp = ss(x)
    assert kp.shape == (2, 1, 2)
    torch.testing.assert_close(kp[:, 0], torch.tensor([[13 / 16 * 2 - 1, 2 / 8 * 2 - 1], [-1.0, 1.0]]), atol=1e-3,
                               rtol=0)


@pytest.mark.parametrize("bad", [dict(pixel_stem_width=-1), dict(pixel_stem_width=8, image_size=24),
                                 dict(pixel_stem_width=0, stem_keypoints=4), dict(pixel_stem_width=8, stem_keypoints=-1)])
def test_pixel_stem_config_errors(bad):
    with pytest.raises(ConfigError, match="pixel"):
        tiny_cfg(**bad)



def test_auxiliary_state_head_is_a_training_loss_only():
    """With aux_state_weight the loss adds the weighted MSE of the state token's environment-state
    prediction (and requires the target); every parameter gets a gradient; sampling never reads the
    environment state, and the head does not exist at weight 0 (DDP: no unused parameters)."""
    cfg = tiny_cfg(aux_state_weight=0.5, aux_state_dim=5)
    m = random_policy(cfg).train()
    state, ref, task, actions, fut = inputs(cfg)
    env = torch.randn(3, 5)
    with pytest.raises(ValueError, match="env_state"):
        m(state, ref, actions, task, future_latents=fut)
    loss, logs = m(state, ref, actions, task, future_latents=fut, env_state=env,
                   generator=torch.Generator().manual_seed(0))
    base, base_logs = m(state, ref, actions, task, future_latents=fut, env_state=env + 1.0,
                        generator=torch.Generator().manual_seed(0))
    assert logs["loss_action"] == base_logs["loss_action"] and logs["loss_aux_state"] != base_logs["loss_aux_state"]
    torch.testing.assert_close(loss - base, torch.tensor(0.5 * (logs["loss_aux_state"] - base_logs["loss_aux_state"])),
                               rtol=1e-4, atol=1e-4)
    loss.backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]
    m.set_normalization({"observation.state": {"mean": [0.0] * 4, "std": [1.0] * 4},
                         "action": {"mean": [0.0] * 4, "std": [1.0] * 4},
                         "observation.environment_state": {"mean": [1.0] * 5, "std": [2.0, 2.0, 2.0, 2.0, 0.0]}})
    torch.testing.assert_close(m.normalize_env_state(torch.full((1, 5), 3.0)),
                               torch.tensor([[1.0, 1.0, 1.0, 1.0, 2000.0]]))  # std clamped to MIN_STD
    assert GigaWorldPolicy(tiny_cfg(aux_state_weight=0.0, aux_state_dim=5)).aux_head is None
    with pytest.raises(ConfigError, match="aux_state"):
        tiny_cfg(aux_state_weight=-1.0)


def test_keypoint_target_is_the_class_share_of_each_cell():
    """keypoint_target: per class, the share of each cell of the map covered by it, summing to 1;
    zeros where the class is absent."""
    from robodream.models.stem import keypoint_target

    seg = torch.zeros(2, 4, 4, dtype=torch.uint8)
    seg[0, 0, 0] = 6  # one goal pixel in cell (0, 0) of a 2x2 map
    seg[0, 2:4, 2] = 6  # two in cell (1, 1)
    seg[1, 1, 3] = 5  # an object pixel only
    t = keypoint_target(seg, [6, 5], (2, 2))
    assert t.shape == (2, 2, 4)
    torch.testing.assert_close(t[0, 0], torch.tensor([1 / 3, 0.0, 0.0, 2 / 3]))
    torch.testing.assert_close(t[0, 1], torch.zeros(4))
    torch.testing.assert_close(t[1, 1], torch.tensor([0.0, 1.0, 0.0, 0.0]))


def test_supervised_keypoints_loss():
    """With keypoint_targets the loss adds the cross-entropy of each supervised keypoint's map
    against its class's pixels (needs the segmentation; uniform maps give log(cells)), samples and
    cameras where the class is absent add nothing, and the stem and keypoint weights get gradients."""
    cfg = tiny_cfg(pixel_stem_width=8, image_size=16, stem_keypoints=2, keypoint_targets=("goal",))
    m = random_policy(cfg).train()
    state, ref, task, actions, fut = inputs(cfg)
    frames = torch.randint(0, 256, (3, len(cfg.cameras), 3, 16, 16), generator=torch.Generator().manual_seed(0),
                           dtype=torch.uint8)
    with pytest.raises(ValueError, match="ref_segmentation"):
        m(state, ref, actions, task, fut, ref_frames=frames)
    seg = torch.zeros(3, len(cfg.cameras), 16, 16, dtype=torch.uint8)
    seg[0, 0, 4:6, 4:6] = 6
    with torch.no_grad():
        m.keypoints.proj.weight.zero_()
        m.keypoints.proj.bias.zero_()  # uniform maps over the 8x8 half-resolution grid
    loss, logs = m(state, ref, actions, task, fut, ref_frames=frames, ref_segmentation=seg,
                   generator=torch.Generator().manual_seed(0))
    assert abs(logs["loss_keypoint"] - math.log(64)) < 1e-4  # only (sample 0, camera 0) counts
    loss.backward()
    assert all(p.grad is not None for p in [*m.pixel_stem.parameters(), *m.keypoints.parameters()])
    with pytest.raises(ConfigError, match="keypoint_targets"):
        tiny_cfg(pixel_stem_width=8, image_size=16, stem_keypoints=1, keypoint_targets=("goal", "object"))
    with pytest.raises(ConfigError, match="keypoint_targets"):
        tiny_cfg(pixel_stem_width=8, image_size=16, stem_keypoints=1, keypoint_targets=("puck",))
