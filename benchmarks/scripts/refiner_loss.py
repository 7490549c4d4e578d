"""Does AppearanceTransfer's pixel refiner learn, and with which loss? (issue 14)

The refiner alone (the flow transformer untouched), fed the tokenizer's reconstruction of the
target as the decoded estimate, trained on episodes 0-7 of DATASET re-rendered under random
appearances (corner camera), scored on episodes 18-19: held-out PSNR of the prior and of the
refined output, for an L1 and a squared-error loss.

    MUJOCO_GL=egl python benchmarks/scripts/refiner_loss.py TOKENIZER_RUN DATASET [STEPS]
"""
import sys
import time

import torch

from robodream.data.lerobot import LeRobotDataset
from robodream.eval.metrics import psnr
from robodream.tokenizer.train import load_tokenizer
from robodream.transfer.data import FrameTable
from robodream.transfer.modeling import TransferConfig, build_transfer
from robodream.transfer.train import prepare_datasets, training_shift

tok = load_tokenizer(sys.argv[1])
ds = LeRobotDataset(sys.argv[2])
shift = training_shift("appearance", 1.0, 0)
tr = FrameTable(prepare_datasets("appearance", [ds], tok, "corner", shift, [list(range(8))]))
he = FrameTable(prepare_datasets("appearance", [ds], tok, "corner", shift, [[18, 19]]))
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 300
for loss_kind in ("l1", "mse"):
    torch.manual_seed(0)
    m = build_transfer(TransferConfig(kind="appearance", camera="corner", refiner_width=16))
    opt = torch.optim.AdamW(m.refiner.parameters(), lr=5e-4, betas=(0.9, 0.95), weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    def batch(table, n, gen, m=m):
        idx, ref = table.sample(n, gen)
        b = table.inputs(m, idx, ref, "cpu")
        with torch.no_grad():
            dec = tok.decode(b["x0"]).clamp(0, 1).permute(0, 2, 3, 1)
        return b, dec
    t0 = time.time()
    for _ in range(steps):
        b, dec = batch(tr, 32, g)
        px = b["pixels"]
        out = m.refine(dec, b["control"], clamp=False, **px)
        tgt = b["target_rgb"].float() / 255
        loss = (out - tgt).abs().mean() if loss_kind == "l1" else (out - tgt).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        b, dec = batch(he, 128, torch.Generator().manual_seed(1))
        px = b["pixels"]
        out = m.refine(dec, b["control"], **px)
        prior, _ = m.prior(dec, **px)
        tgt = b["target_rgb"].float() / 255
        print(loss_kind, steps, "steps", round(time.time() - t0), "s  held-out PSNR prior %.2f refined %.2f decoded %.2f" % (
            psnr(prior.permute(0, 2, 3, 1), tgt), psnr(out, tgt), psnr(dec, tgt)), flush=True)
