"""Training loop: schedule, exact resume, checkpoints, weight loading errors."""

from __future__ import annotations

import json

import pytest
import torch
from test_policy import inputs, tiny_cfg

from robodream.errors import CheckpointError
from robodream.policy.modeling import GigaWorldPolicy
from robodream.train.checkpoint import latest_checkpoint, load_model_weights, save_tensors
from robodream.train.loop import TrainConfig, Trainer, lr_at


def test_lr_schedule():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1)
    assert lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0)
    assert lr_at(99, cfg) == pytest.approx(0.1, abs=1e-3)
    assert all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 99))


def _make_trainer(run_dir, steps, seed=0, batch_size=3):
    cfg = tiny_cfg()
    torch.manual_seed(seed)
    model = GigaWorldPolicy(cfg)
    data = inputs(cfg, B=3)

    def sample_batch(step, gen, batch_size):
        noise = torch.randn(3, cfg.horizon, cfg.action_dim, generator=gen) * 0.1
        state, ref, task, actions, fut = data
        return dict(state=state, ref_latents=ref, task_index=task, actions=actions + noise, future_latents=fut)

    tc = TrainConfig(steps=steps, batch_size=batch_size, lr=1e-3, warmup_steps=2, checkpoint_every=3, log_every=1,
                     val_every=0, precision="fp32", ema_decay=0.9)
    return Trainer(model, tc, run_dir, sample_batch, lambda m, b, g: m(**b, generator=g),
                   validate=lambda m, shard: {"dummy": 0.0})


def test_resume_matches_uninterrupted_run(tmp_path):
    full = _make_trainer(tmp_path / "full", steps=7)
    full.fit()

    part = _make_trainer(tmp_path / "part", steps=7)
    part.cfg.steps = 4  # "killed" after step 4 (last checkpoint at step 3 + final at 4)
    part.fit()
    # simulate a crash after the step-3 checkpoint: drop the step-4 one
    ckpts = sorted((tmp_path / "part" / "checkpoints").glob("step_*"))
    assert [p.name for p in ckpts] == ["step_0000003", "step_0000004"]
    import shutil

    shutil.rmtree(ckpts[-1])
    (tmp_path / "part" / "checkpoints" / "latest.json").write_text(json.dumps({"step": 3, "dir": "step_0000003"}))

    resumed = _make_trainer(tmp_path / "part", steps=7, seed=123)  # different init: must be overwritten
    resumed.fit(resume=True)
    assert resumed.step == 7
    for k, v in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    for k, v in full.ema.model.state_dict().items():
        torch.testing.assert_close(resumed.ema.model.state_dict()[k], v, rtol=0, atol=0, msg=k)
    steps = [json.loads(ln)["step"] for ln in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 8))  # no duplicated or missing log lines


def test_checkpoint_errors(tmp_path):
    t = _make_trainer(tmp_path / "r", steps=3)
    t.fit()
    ckpt = latest_checkpoint(tmp_path / "r")
    for f in (ckpt / "state").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        _make_trainer(tmp_path / "r", steps=5).resume()
    (tmp_path / "r" / "checkpoints" / "latest.json").write_text(json.dumps({"step": 9, "dir": "step_0000009"}))
    with pytest.raises(CheckpointError, match="missing or incomplete"):
        latest_checkpoint(tmp_path / "r")


def test_load_weights_of_another_model_fails(tmp_path):
    small = GigaWorldPolicy(tiny_cfg())
    big = GigaWorldPolicy(tiny_cfg(dim=64))
    save_tensors(tmp_path / "w.safetensors", small.state_dict())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model_weights(big, tmp_path / "w.safetensors")
    save_tensors(tmp_path / "x.safetensors", {"encoder.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model_weights(small, tmp_path / "x.safetensors")


def test_precision_auto_is_bf16_only_with_native_bf16(monkeypatch):
    """"auto" autocasts to bf16 only where the CPU computes bf16 natively (emulated bf16 measured
    ~9x slower than fp32 on an AVX2-only host); explicit choices pass through."""
    from robodream.train.loop import autocast_context, resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    for native, want in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda native=native: native, raising=False)
        assert resolve_precision(cpu, "auto") == want
        with autocast_context(cpu, "auto"):
            assert torch.is_autocast_enabled("cpu") == (want == "bf16")
        assert resolve_precision(cpu, "bf16") == "bf16" and resolve_precision(cpu, "fp32") == "fp32"
    with pytest.raises(ValueError, match="precision"):
        resolve_precision(cpu, "fp16")
