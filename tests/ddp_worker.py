"""Run by tests/test_distributed.py under ``torchrun --nproc_per_node=2`` (gloo, CPU)."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_train_loop import _make_trainer  # noqa: E402


def main(run_dir: str) -> None:
    trainer = _make_trainer(Path(run_dir), steps=4, batch_size=6)  # 3 per process
    assert trainer.world == 2 and trainer.local_batch_size == 3
    trainer.fit()
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.model.parameters())).hexdigest()
    rank = torch.distributed.get_rank()
    (Path(run_dir) / f"weights_rank{rank}.sha256").write_text(digest)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
