"""Image tokenizer training step time, fp32 vs bf16 autocast, on this CPU (benchmarks/RESULTS.md,
"Training precision depends on the CPU"). Run: python benchmarks/scripts/tokenizer_precision.py"""
import time, statistics, torch
from robodream.tokenizer.model import ImageTokenizer, TokenizerConfig
from robodream.train.loop import autocast_context
torch.set_num_threads(2); torch.manual_seed(0)
m = ImageTokenizer(TokenizerConfig()).train(); opt = torch.optim.AdamW(m.parameters(), 1e-3)
x = torch.randint(0, 256, (64, 64, 64, 3), dtype=torch.uint8)
for prec in ("fp32", "bf16", "fp32"):
    ts = []
    for i in range(4):
        t0 = time.perf_counter()
        with autocast_context(torch.device("cpu"), prec):
            loss, _ = m(x)
        opt.zero_grad(); loss.backward(); opt.step(); ts.append(time.perf_counter() - t0)
    print(prec, "step s p50 of last 3:", round(statistics.median(ts[1:]), 2), flush=True)
