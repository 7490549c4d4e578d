"""Training rates of the demo's two trained stages on this CPU (benchmarks/RESULTS.md, issue 18):
the image tokenizer (default TokenizerConfig, batch 64 frames) in seconds a step, and the policy
(the demo's PolicyConfig, batch 32) in samples/s, both fp32 and in the precision "auto" resolves
to, 2 threads, median of the steps after warm-up.

Run it twice to see an AVX2-only host's rates on an AVX-512 one: oneDNN and ATen read their
instruction-set caps from the environment (bf16 there is forced off with --fp32-only):

    python benchmarks/scripts/demo_rates.py
    python benchmarks/scripts/demo_rates.py --video-strides 4,16,0   # the policy at other strides too
    ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 python benchmarks/scripts/demo_rates.py --fp32-only
"""

import argparse
import statistics
from dataclasses import replace

import torch
from tokenizer_precision import step_times, tokenizer_setup  # beside this script

from robodream.bench.policy_bench import train_throughput
from robodream.pipeline import DEMO
from robodream.train.loop import resolve_precision


def tokenizer_step_s(precision: str) -> float:
    """Median seconds of training steps 3-5 of a fresh default tokenizer, batch 64, in ``precision``."""
    return statistics.median(step_times(*tokenizer_setup(), precision, steps=5)[2:])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--fp32-only", action="store_true", help="skip the 'auto' precision rows")
    p.add_argument("--video-strides", default="", help="comma-separated video_stride values of the policy rows "
                   "(default: the demo's)")
    args = p.parse_args()
    torch.set_num_threads(2)
    auto = resolve_precision(torch.device("cpu"), "auto")
    precisions = ["fp32"] if args.fp32_only or auto == "fp32" else ["fp32", auto]
    print(f"torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}")
    print("| stage | precision | rate |\n|---|---|---|")
    for prec in precisions:
        print(f"| tokenizer, batch 64 | {prec} | {tokenizer_step_s(prec):.2f} s/step |", flush=True)
    strides = [int(s) for s in args.video_strides.split(",")] if args.video_strides else [DEMO.policy.video_stride]
    for prec in precisions:
        for stride in strides:
            cfg = replace(DEMO.policy, video_stride=stride)
            r = train_throughput(cfg, batch=DEMO.policy_train.batch_size, steps=8, warmup=3, precision=prec)
            print(f"| policy, batch {DEMO.policy_train.batch_size}, video_stride {stride} | {prec} | "
                  f"{r['train_samples_per_s']:.1f} samples/s |", flush=True)


if __name__ == "__main__":
    main()
