"""Multi-process training through torchrun (gloo on CPU): DDP and FSDP2, the CLI run as is,
batches independent of how they are split, kill-and-resume, resume with another world size."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from robodream.cli import app

TINY = ["--dim", "32", "--depth", "1", "--horizon", "8", "--n-action-steps", "4", "--action-expert-dim", "16",
        "--batch-size", "8", "--log-every", "1", "--precision", "fp32", "--checkpoint-every", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def robodream(*args, nproc: int = 1, code: int = 0) -> subprocess.CompletedProcess:
    """The CLI in a subprocess, under torchrun when ``nproc`` > 1 (as a user runs it)."""
    launch = [sys.executable, "-m", "robodream"] if nproc == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "robodream"]
    res = subprocess.run([*launch, *map(str, args)], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == code, res.stderr[-4000:]
    return res


def losses(run_dir: Path) -> list[float]:
    return [json.loads(ln)["loss"] for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=atol, msg=k)


def kill_after(run_dir: Path, step: int) -> None:
    """What a kill after checkpoint ``step`` leaves: later checkpoints and the final weights gone."""
    ckpts = run_dir / "checkpoints"
    for p in ckpts.glob("step_*"):
        if int(p.name.split("_")[1]) > step:
            shutil.rmtree(p)
    (ckpts / "latest.json").write_text(json.dumps({"step": step, "dir": f"step_{step:07d}"}))
    for name in ("model.safetensors", "results.json"):
        (run_dir / name).unlink()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("dist")
    runner = CliRunner()
    for args in (["collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32],
                 ["train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 2, "--batch-size", 8]):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
    return w


def test_ddp_equals_one_process_with_accumulation_and_resumes_exactly(data, tmp_path):
    """2 processes x 1 micro-batch compute what 1 process x 2 micro-batches computes (same global
    batch, the same samples and noise), so their loss curves agree to float rounding. The model is
    the action-expert, no-video ablation, whose unused weights made DDP raise before."""
    common = ["train", "policy", "--data", data / "ds", "--tokenizer", data / "tok", "--steps", 6,
              "--video-stride", 0, *TINY]
    robodream(*common, "--out", tmp_path / "ddp", nproc=2)
    robodream(*common, "--out", tmp_path / "accum", "--grad-accum-steps", 2)
    a, b = losses(tmp_path / "ddp"), losses(tmp_path / "accum")
    assert len(a) == 6 and max(abs(x - y) / abs(y) for x, y in zip(a, b)) < 1e-5, (a, b)
    assert_same_weights(tmp_path / "ddp", tmp_path / "accum", atol=1e-5)
    meta = json.loads((tmp_path / "ddp" / "meta.json").read_text())
    assert meta["world_size"] == 2
    # killed after the step-3 checkpoint, resumed under torchrun: continues exactly
    shutil.copytree(tmp_path / "ddp", tmp_path / "killed")
    kill_after(tmp_path / "killed", 3)
    robodream("train", "policy", "--out", tmp_path / "killed", "--resume", nproc=2)
    assert losses(tmp_path / "killed") == a
    assert_same_weights(tmp_path / "killed", tmp_path / "ddp", atol=0)


def test_fsdp_and_resume_with_another_world_size(data, tmp_path):
    """FSDP2 (sharded checkpoint, one safetensors file per process) follows the same curve, and its
    checkpoint resumes in one process (resharded by torch.distributed.checkpoint)."""
    common = ["train", "policy", "--data", data / "ds", "--tokenizer", data / "tok", "--steps", 6,
              "--video-stride", 4, *TINY]
    robodream(*common, "--out", tmp_path / "fsdp", "--parallel", "fsdp", nproc=2)
    assert len(list((tmp_path / "fsdp" / "checkpoints" / "step_0000006" / "state").glob("*.safetensors"))) == 2
    shutil.copytree(tmp_path / "fsdp", tmp_path / "one")
    kill_after(tmp_path / "one", 3)
    robodream("train", "policy", "--out", tmp_path / "one", "--resume", "--grad-accum-steps", 2)
    a, b = losses(tmp_path / "fsdp"), losses(tmp_path / "one")
    assert max(abs(x - y) / abs(y) for x, y in zip(a, b)) < 1e-5, (a, b)
    assert_same_weights(tmp_path / "fsdp", tmp_path / "one", atol=1e-5)
    from robodream.policy.train import load_policy

    load_policy(tmp_path / "fsdp")  # the final weights are a plain, unsharded model


def test_world_size_that_does_not_divide_the_batch(data, tmp_path):
    res = robodream("train", "tokenizer", "--data", data / "ds", "--out", tmp_path / "t", "--batch-size", 5,
                    nproc=2, code=1)
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert errors and all("batch_size 5 is not divisible by 2 process(es)" in e for e in errors), res.stderr[-2000:]
    assert not (tmp_path / "t").exists()


def test_trainer_replicas_stay_in_sync(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(worker), str(tmp_path)], capture_output=True, text=True, timeout=300, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    h0 = (tmp_path / "weights_rank0.sha256").read_text()
    h1 = (tmp_path / "weights_rank1.sha256").read_text()
    assert h0 == h1  # gradients were all-reduced: replicas identical
    assert (tmp_path / "checkpoints" / "latest.json").is_file()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 4  # rank 0 logs once per step


def test_every_train_verb_runs_under_torchrun(data, tmp_path):
    """The tokenizer and the world model train under torchrun as the policy does (DDP and FSDP2),
    and their runs load like single-process ones."""
    robodream("train", "tokenizer", "--data", data / "ds", "--out", tmp_path / "tok", "--steps", 3,
              "--batch-size", 8, "--parallel", "fsdp", nproc=2)
    robodream("train", "world-model", "--data", data / "ds", "--tokenizer", data / "tok", "--out", tmp_path / "wm",
              "--steps", 3, "--dim", 24, "--n-heads", 2, "--depth", 1, "--n-future-frames", 2, "--frame-stride", 2,
              "--batch-size", 4, nproc=2)
    from robodream.train.run_dir import load_run

    assert load_run(tmp_path / "tok").cfg.image_size == 32
    wm, _, cfg = load_run(tmp_path / "wm")
    assert cfg["train"]["steps"] == 3 and json.loads((tmp_path / "wm" / "meta.json").read_text())["world_size"] == 2
