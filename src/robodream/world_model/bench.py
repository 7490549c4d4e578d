"""``robodream bench world-model``: MoE + sparse attention vs dense MLP + full attention.

Both variants have the same width, depth and *active* parameters per token (each routed
expert is ``hidden / top_k`` wide, see :class:`~robodream.models.moe.MoEMLP`); they differ
only in the MLP (MoE vs dense) and the self-attention kernel (3D neighbourhood vs full). A
third variant, ``sparse_dense`` (neighbourhood attention, dense MLP), isolates what the sparse
attention alone does to the model's step times. Measured in one process on the same machine,
the variants timed round-robin (one call of each per round, medians) so that a slow spell of
a shared machine hits all alike:

* training step time (forward + backward + AdamW) on random latents of the default clip;
* sampling time per generated frame (batch 1, the configured Euler steps);
* memory: peak CUDA memory on a GPU; on a CPU, the bytes autograd saves for backward during
  one training forward (activations, the part that differs between the variants);
* the self-attention kernel alone (neighbourhood vs full) at the clip's token grid, forward +
  backward in the training precision, and again for clips of 2x and 4x the predicted frames
  (same window), which shows from what clip length the sparse kernel pays off;
* optionally (``data`` and ``tokenizer`` given) held-out PSNR after the same number of
  training steps for each variant, and the routing balance measured on real data.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import time
from pathlib import Path

import torch

from robodream.models.moe import MoEMLP
from robodream.models.neighborhood import neighborhood_attention
from robodream.models.transformer import full_attention
from robodream.train.loop import autocast_context, resolve_device, resolve_precision
from robodream.utils.run import code_version, environment_info, now
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.modeling import VideoWorldModel

VARIANTS = {"sparse_moe": {"mlp": "moe", "attention": "neighborhood"},
            "full_dense": {"mlp": "dense", "attention": "full"},
            # the attention ablation: sparse attention alone, dense MLP (timed, not trained)
            "sparse_dense": {"mlp": "dense", "attention": "neighborhood"}}
LABELS = {"sparse_moe": "sparse+MoE", "full_dense": "full+dense", "sparse_dense": "sparse+dense"}  # printed names
QUALITY_VARIANTS = ("sparse_moe", "full_dense")


def active_parameters(model: VideoWorldModel) -> int:
    """Parameters used per token: all, minus the routed experts a token does not visit."""
    n = sum(p.numel() for p in model.parameters())
    for moe in model.modules():
        if isinstance(moe, MoEMLP):
            per_expert = sum(p.numel() for p in moe.experts[0].parameters())
            n -= (moe.n_experts - moe.top_k) * per_expert
    return n


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_times(fns: dict, repeats: int, device: torch.device) -> dict[str, float]:
    """Median seconds per call of each callable, timed round-robin (one call of each per round)
    so that a slow spell of a shared machine hits every variant alike."""
    for fn in fns.values():
        fn()  # warm-up (allocations, kernel selection, flex compilation)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _random_batch(cfg: WorldModelConfig, batch: int, device, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lat = torch.randn(batch, cfg.n_frames, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                      generator=g)
    act = torch.randn(batch, cfg.n_frames - 1, cfg.frame_stride, cfg.action_dim, generator=g)
    out = {"latents": lat.to(device), "frame_actions": act.to(device),
           "task_index": torch.zeros(batch, dtype=torch.long, device=device)}
    if cfg.n_value_frames:  # the value frame's targets: returns (and states) of the chunks' last frames
        out["returns"] = torch.randn(batch, generator=g).to(device)
        out["state"] = torch.randn(batch, cfg.state_dim, generator=g).to(device)
    return out


def _saved_activation_bytes(model: VideoWorldModel, batch: dict, precision: str, device) -> int:
    total = 0

    def pack(t: torch.Tensor):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast_context(device, precision):
        model(**batch, generator=torch.Generator().manual_seed(0))
    return total


def _step_fns(model: VideoWorldModel, cfg: WorldModelConfig, batch: dict, precision: str, device: torch.device):
    """A training step (forward + backward + AdamW) and a batch-1 sampling call of ``model``."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    one = {k: v[:1] for k, v in batch.items()}

    def train_step():
        model.train()
        with autocast_context(device, precision):
            loss, _ = model(**batch, generator=gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample():
        model.eval()
        with autocast_context(device, precision):
            model.sample(one["latents"][:, :cfg.n_context_frames], one["frame_actions"], one["task_index"],
                         generator=torch.Generator().manual_seed(1))

    return train_step, sample


def time_variants(cfgs: dict[str, WorldModelConfig], *, train_steps: int, batch_size: int, sample_repeats: int,
                  precision: str, device: torch.device) -> dict[str, dict]:
    """Training-step and sampling timings (the variants interleaved), parameters and memory of each configuration."""
    out: dict[str, dict] = {}
    models, train_fns, sample_fns = {}, {}, {}
    for name, cfg in cfgs.items():
        torch.manual_seed(0)
        models[name] = model = VideoWorldModel(cfg).to(device)
        batch = _random_batch(cfg, batch_size, device)
        train_fns[name], sample_fns[name] = _step_fns(model, cfg, batch, precision, device)
        out[name] = {"n_parameters": sum(p.numel() for p in model.parameters()),
                     "n_active_parameters": active_parameters(model),
                     "train_saved_activations_mib": _saved_activation_bytes(model, batch, precision, device) / 2**20}
    for name, step_s in _median_times(train_fns, train_steps, device).items():
        out[name].update(train_step_s=step_s, train_samples_per_s=batch_size / step_s)
    for name, model in models.items():
        if device.type == "cuda":  # one more step alone, for this variant's own peak
            torch.cuda.reset_peak_memory_stats(device)
            train_fns[name]()
            out[name]["train_peak_cuda_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
        moe = model.moe_layers()
        if moe:  # routing after the timed steps (random latents)
            out[name]["expert_assignment_fraction_min"] = float(torch.stack([m.expert_fraction for m in moe]).min())
    for name, s in _median_times(sample_fns, sample_repeats, device).items():
        out[name]["sample_s_per_frame"] = s / cfgs[name].n_future_frames
    return out


def time_attention(cfg: WorldModelConfig, batch_size: int, repeats: int, device: torch.device,
                   precision: str = "auto") -> dict:
    """The self-attention kernel alone at the clip grid, forward + backward in the training
    precision (``precision`` as training resolves it, :func:`resolve_precision`): neighbourhood
    vs full, interleaved.
    Queries, keys and values come in the dtype the model gives the kernel (bf16 under
    autocast: they leave a bf16 projection and RoPE keeps their dtype)."""
    precision = resolve_precision(device, precision)
    hd, L = cfg.dim // cfg.n_heads, cfg.grid[0] * cfg.grid[1] * cfg.grid[2]
    g = torch.Generator().manual_seed(0)
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    qkv = [torch.randn(batch_size, cfg.n_heads, L, hd, generator=g).to(device, dtype).requires_grad_(True)
           for _ in range(3)]
    kernels = {"neighborhood": lambda q, k, v: neighborhood_attention(q, k, v, cfg.grid, cfg.window,
                                                                      backend=cfg.attention_backend),
               "full": full_attention}

    def fwd_bwd(fn):
        with autocast_context(device, precision):
            out = fn(*qkv)
        out.float().sum().backward()

    times = _median_times({name: (lambda fn=fn: fwd_bwd(fn)) for name, fn in kernels.items()}, repeats, device)
    res = {f"attention_{name}_s": t for name, t in times.items()}
    res["attention_precision"] = "fp32" if precision == "fp32" else "bf16 autocast"
    res["sparse_over_full_attention_speedup"] = res["attention_full_s"] / res["attention_neighborhood_s"]
    return res


def attention_by_clip(cfg: WorldModelConfig, batch_size: int, repeats: int, device: torch.device,
                      precision: str = "auto", factors: tuple[int, ...] = (1, 2, 4)) -> list[dict]:
    """:func:`time_attention` for clips of ``factor x`` the configured predicted frames (same
    spatial grid and window): one row per factor with the grid, token count, both kernel
    times (s) and ``sparse_over_full_attention_speedup``."""
    rows = []
    for f in factors:
        c = dataclasses.replace(cfg, n_future_frames=cfg.n_future_frames * f)
        r = time_attention(c, batch_size, repeats, device, precision)
        rows.append({"n_frames": c.n_frames, "grid": list(c.grid), "tokens": c.grid[0] * c.grid[1] * c.grid[2],
                     **{k: r[k] for k in ("attention_neighborhood_s", "attention_full_s",
                                          "sparse_over_full_attention_speedup")}})
    return rows


def bench_world_model(base: WorldModelConfig, *, train_steps: int = 10, batch_size: int | None = None,
                      sample_repeats: int = 3,
                      threads: int = 0, precision: str = "auto", device: str = "auto",
                      data: list[str] | None = None, tokenizer: str | None = None, quality_steps: int = 0,
                      work: str | os.PathLike | None = None, log=print) -> dict:
    """Run the variants (see the module docstring); returns the JSON-able result with the ratios.
    ``batch_size`` None = the world model's training batch (:func:`default_world_model_train`)."""
    from robodream.world_model.train import default_world_model_train

    batch_size = batch_size or default_world_model_train().batch_size
    if threads:
        torch.set_num_threads(threads)
    dev = resolve_device(device)
    precision = resolve_precision(dev, precision)
    res: dict = {"benchmark": "world_model", "created": now(), "device": str(dev), "threads": torch.get_num_threads(),
                 "precision": precision, "batch_size": batch_size, "train_steps_timed": train_steps,
                 "grid": list(base.grid), "window": list(base.window), "code": code_version(),
                 "environment": environment_info()}
    cfgs = {name: dataclasses.replace(base, **kw) for name, kw in VARIANTS.items()}
    log(f"timing {', '.join(cfgs)} (interleaved)")
    timed = time_variants(cfgs, train_steps=train_steps, batch_size=batch_size, sample_repeats=sample_repeats,
                          precision=precision, device=dev)
    for name, cfg in cfgs.items():
        res[name] = {**timed[name], "config": dataclasses.asdict(cfg)}
    res.update(time_attention(cfgs["sparse_moe"], batch_size, max(train_steps, 3), dev, precision))
    res["attention_by_clip"] = attention_by_clip(cfgs["sparse_moe"], batch_size, max(train_steps, 3), dev, precision)
    s, f = res["sparse_moe"], res["full_dense"]
    res["sparse_over_full_train_step_speedup"] = f["train_step_s"] / s["train_step_s"]
    res["sparse_over_full_sample_speedup"] = f["sample_s_per_frame"] / s["sample_s_per_frame"]
    a = res["sparse_dense"]  # sparse attention alone (dense MLP) vs full attention
    res["sparse_attention_train_step_speedup"] = f["train_step_s"] / a["train_step_s"]
    res["sparse_attention_sample_speedup"] = f["sample_s_per_frame"] / a["sample_s_per_frame"]
    res["active_parameter_ratio"] = s["n_active_parameters"] / f["n_active_parameters"]
    # Fraction of *tokens* reaching the least-used expert: each token visits top_k experts, so
    # a balanced router gives top_k / E (0.5 for top-2 of 4); the assignment fraction gives 1 / E.
    res["expert_assignment_fraction_min"] = s.get("expert_assignment_fraction_min")
    res["expert_fraction_source"] = "random latents"
    if data and tokenizer and quality_steps > 0:
        q = _quality({n: cfgs[n] for n in QUALITY_VARIANTS}, data, tokenizer, quality_steps, batch_size,
                     Path(work or "outputs/bench_world_model"), str(dev), log)
        for name in QUALITY_VARIANTS:
            res[name].update(q.pop(name))
        res.update(q)
    if res["expert_assignment_fraction_min"] is not None:
        res["expert_token_fraction_min"] = base.top_k * res["expert_assignment_fraction_min"]
    return res


def _quality(cfgs: dict, data: list[str], tokenizer: str, steps: int, batch_size: int, work: Path, device: str,
             log) -> dict:
    """Train each variant ``steps`` steps on ``data`` and evaluate held-out PSNR; routing balance on real data."""
    import json

    from robodream.world_model.evaluate import evaluate_world_model
    from robodream.world_model.train import WorldModelRunConfig, default_world_model_train, train_world_model

    out: dict = {"quality_steps": steps}
    for name, cfg in cfgs.items():
        run = work / name
        train = dataclasses.replace(default_world_model_train(), steps=steps, batch_size=batch_size, device=device,
                                    val_every=0, checkpoint_every=max(steps // 4, 1))
        resume = (run / "config.json").is_file()
        if not (run / "model.safetensors").is_file():
            log(f"training {name} for {steps} steps")
            train_world_model(WorldModelRunConfig(data=tuple(data), tokenizer=tokenizer, model=cfg, train=train), run,
                              resume=resume)
        log(f"evaluating {name}")
        ev = evaluate_world_model(run, data, work / f"eval_{name}", device=device)
        out[name] = {"psnr_by_horizon": ev["psnr_by_horizon"], "next_chunk_psnr": ev["next_chunk_psnr"],
                     "controllability_gap_db": ev["controllability_gap_db"]}
        if cfg.mlp == "moe":
            rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
            if rows[-1].get("expert_fraction_min") is not None:
                out["expert_assignment_fraction_min"] = rows[-1]["expert_fraction_min"]
                out["expert_fraction_source"] = "training batches (last logged step)"
    out["sparse_minus_full_next_chunk_psnr_db"] = (out["sparse_moe"]["next_chunk_psnr"]
                                                   - out["full_dense"]["next_chunk_psnr"])
    return out
