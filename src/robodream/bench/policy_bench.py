"""``robodream bench policy``: inference latency per action chunk and training throughput.

Latency is measured at batch 1 on the default model size, medians (and p90) over repeats
in one process, for
  (a) action-only inference with the prefix key/value cache (GigaWorld-Policy's mode),
  (a') action-only without the cache (reference path; shows what the cache buys),
  (b) with-video inference (actions and future latents denoised together),
  (c) the ``mask = "full"`` joint model (Motus-style: everything denoised every step),
  (a'') action-only and (c') the joint model again after ``torch.compile`` of a whole chunk
        each (``speedup_vs_joint_compiled`` compares compiled with compiled).
Training throughput (samples/s) and peak resident memory are measured in a fresh
subprocess so the number is the training step's own footprint.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
import resource
import statistics
import time
from dataclasses import replace
from typing import Any

import torch

from robodream.envs.shift import SEG_CLASSES
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import GigaWorldPolicy
from robodream.train.loop import autocast_context, resolve_precision
from robodream.utils.progress import progress_bar
from robodream.utils.run import code_version, environment_info, now


def _time_ms(fns: dict[str, Any], repeats: int, warmup: int) -> dict[str, list[float]]:
    """Time each callable ``repeats`` times, interleaved round-robin so that a slow spell of a
    shared machine hits every mode alike (the ratios are what matter); ms per call."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            out[k].append((time.perf_counter() - t0) * 1000.0)
    return out


def _inputs(cfg: PolicyConfig, batch: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(batch, cfg.state_dim, generator=g)
    ref = torch.randn(batch, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)
    frames = (torch.randint(0, 256, (batch, len(cfg.cameras), 3, cfg.image_size, cfg.image_size), generator=g,
                            dtype=torch.uint8) if cfg.pixel_stem_width else None)  # raw frames of a pixel stem
    return state, ref, torch.zeros(batch, dtype=torch.long), frames


def latency(cfg: PolicyConfig, repeats: int = 50, warmup: int = 5, threads: int = 2,
            compile: bool = True) -> dict[str, Any]:
    """Per-chunk latency (ms) of the inference modes at batch 1; see the module docstring.

    With ``compile`` copies with the same weights of the policy and the joint model are also
    timed after ``torch.compile``; ``speedup_vs_joint`` compares eager with eager,
    ``speedup_vs_joint_compiled`` compiled with compiled."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        torch.manual_seed(0)
        # Models are built outside inference mode, as a loaded run is (see sample's caches).
        policy = GigaWorldPolicy(cfg).eval()
        joint = GigaWorldPolicy(replace(cfg, mask="full")).eval()
        if compile:  # second copies with the same weights, so the eager numbers stay eager
            compiled = GigaWorldPolicy(cfg).eval()
            compiled.load_state_dict(policy.state_dict())
            joint_c = GigaWorldPolicy(joint.cfg).eval()
            joint_c.load_state_dict(joint.state_dict())
        state, ref, task, frames = _inputs(cfg)
        compile_s = None
        with torch.inference_mode():
            fns = {
                "action_only": lambda: policy.sample(state, ref, task, ref_frames=frames),
                "action_only_nocache": lambda: policy.sample(state, ref, task, ref_frames=frames, use_cache=False),
                "with_video": lambda: policy.sample(state, ref, task, ref_frames=frames, mode="with_video"),
                "joint": lambda: joint.sample(state, ref, task, ref_frames=frames, mode="joint"),
            }
            if compile:
                t0 = time.perf_counter()
                compiled.compile_inference()
                compiled.sample(state, ref, task, ref_frames=frames)
                compile_s = time.perf_counter() - t0
                joint_c.compile_inference()
                joint_c.sample(state, ref, task, ref_frames=frames, mode="joint")
                fns["action_only_compiled"] = lambda: compiled.sample(state, ref, task, ref_frames=frames)
                fns["joint_compiled"] = lambda: joint_c.sample(state, ref, task, ref_frames=frames, mode="joint")
            runs = _time_ms(fns, repeats, warmup)
    finally:
        torch.set_num_threads(prev)
    out: dict[str, Any] = {}
    for k, v in runs.items():
        out[f"{k}_p50_ms"] = statistics.median(v)
        out[f"{k}_p90_ms"] = sorted(v)[int(0.9 * (len(v) - 1))]
    if compile_s is not None:
        out["compile_s"] = compile_s
        out["speedup_vs_joint_compiled"] = out["joint_compiled_p50_ms"] / out["action_only_compiled_p50_ms"]
    out["speedup_vs_joint"] = out["joint_p50_ms"] / out["action_only_p50_ms"]
    out["speedup_vs_with_video"] = out["with_video_p50_ms"] / out["action_only_p50_ms"]
    out["cache_speedup"] = out["action_only_nocache_p50_ms"] / out["action_only_p50_ms"]
    out["n_parameters"] = sum(p.numel() for p in policy.parameters())
    out["tokens"] = {"prefix": cfg.n_prefix_tokens, "action": cfg.horizon, "future": cfg.n_future_tokens}
    out["repeats"], out["threads"] = repeats, threads
    return out


def _train_worker(cfg: PolicyConfig, batch: int, steps: int, warmup: int, threads: int, precision: str, q) -> None:
    torch.set_num_threads(threads)
    precision = resolve_precision(torch.device("cpu"), precision)
    torch.manual_seed(0)
    model = GigaWorldPolicy(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    state, ref, task, frames = _inputs(cfg, batch)
    actions = torch.randn(batch, cfg.horizon, cfg.action_dim, generator=g)
    fut = torch.randn(batch, cfg.n_future, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size,
                      generator=g) if cfg.n_future else None
    # supervised keypoints need per-camera segmentation (class ids) of the reference frames
    seg = (torch.randint(0, len(SEG_CLASSES), (batch, len(cfg.cameras), cfg.image_size, cfg.image_size), generator=g,
                         dtype=torch.uint8) if cfg.keypoint_targets else None)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        with autocast_context(torch.device("cpu"), precision):
            loss, _ = model(state, ref, actions, task, fut, generator=g, ref_frames=frames, ref_segmentation=seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    q.put({"train_step_s_p50": statistics.median(times),
           "train_samples_per_s": batch / statistics.median(times),
           "train_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
           "train_batch_size": batch, "train_precision": precision, "train_threads": threads})


def train_throughput(cfg: PolicyConfig, batch: int = 64, steps: int = 10, warmup: int = 3, threads: int = 2,
                     precision: str = "auto") -> dict[str, Any]:
    """Training samples/s (median step) and peak RSS (MiB) of a fresh process, in ``precision``
    as training resolves it (``"auto"``: bf16 only on a CPU with native bf16).

    Raises:
        RuntimeError: the measuring process died (its traceback is on stderr).
    """
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_train_worker, args=(cfg, batch, steps, warmup, threads, precision, q))
    p.start()
    while True:  # a dead worker never puts its result: poll instead of blocking forever
        try:
            res = q.get(timeout=1.0)
            break
        except queue.Empty:
            if not p.is_alive():
                raise RuntimeError(f"the training-throughput process died (exit code {p.exitcode})") from None
    p.join()
    return res


def bench_policy(cfg: PolicyConfig | None = None, repeats: int = 50, train_steps: int = 10, threads: int = 2,
                 compile: bool = True) -> dict[str, Any]:
    """Run the whole benchmark; returns the JSON-able result."""
    cfg = cfg or PolicyConfig()
    res: dict[str, Any] = {"benchmark": "policy", "created": now(), "code": code_version(),
                           "environment": environment_info(), "config": cfg.__dict__ | {"cameras": list(cfg.cameras)}}
    with progress_bar() as progress:
        bar = progress.add_task("bench policy: latency", total=2)
        res.update(latency(cfg, repeats=repeats, threads=threads, compile=compile))
        progress.update(bar, advance=1, description="bench policy: training throughput")
        res.update(train_throughput(cfg, steps=train_steps))
        progress.update(bar, advance=1, description="bench policy")
    return res
