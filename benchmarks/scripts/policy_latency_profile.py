"""Where the eager action-only chunk spends its time (issue 18, diagnostic).

Times :meth:`~robodream.policy.modeling.GigaWorldPolicy.sample` in action-only mode alone in
its own process (``robodream bench policy`` interleaves it with the other modes), at batch 1
on the default :class:`~robodream.policy.configuration.PolicyConfig` with the bench's inputs,
with 2 and 1 torch threads (p50 ms over 50 chunks), then prints a ``torch.profiler`` table of
20 chunks (self CPU time per operator; divide by 20 for one chunk).

    python benchmarks/scripts/policy_latency_profile.py
"""

from __future__ import annotations

import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from robodream.bench.policy_bench import _inputs
from robodream.policy.configuration import PolicyConfig
from robodream.policy.modeling import GigaWorldPolicy


def main() -> None:
    cfg = PolicyConfig()
    torch.manual_seed(0)
    policy = GigaWorldPolicy(cfg).eval()
    state, ref, task, frames = _inputs(cfg)
    with torch.inference_mode():
        for threads in (2, 1):
            torch.set_num_threads(threads)
            for _ in range(10):
                policy.sample(state, ref, task, ref_frames=frames)
            ms = []
            for _ in range(50):
                t0 = time.perf_counter()
                policy.sample(state, ref, task, ref_frames=frames)
                ms.append((time.perf_counter() - t0) * 1000.0)
            print(f"threads {threads}: action-only p50 {statistics.median(ms):.1f} ms/chunk")
        torch.set_num_threads(2)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(20):
                policy.sample(state, ref, task, ref_frames=frames)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


if __name__ == "__main__":
    main()
