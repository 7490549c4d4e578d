"""Smoke runs of ``robodream reconstruct`` and ``robodream bench rasterizer`` on tiny settings,
density control, and bad input at the command line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from cli_helpers import run
from PIL import Image
from typer.testing import CliRunner

from robodream.cli import app
from robodream.errors import CheckpointError
from robodream.gaussians.densify import DensifyConfig, DensityControl
from robodream.gaussians.reconstruct import load_scene
from robodream.utils.io import atomic_write_json

runner = CliRunner()

TINY = ["--views", "4", "--heldout", "2", "--image-size", "32", "--steps", "30", "--init-points", "400",
        "--threads", "1"]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_verbs_are_registered_in_the_main_cli():
    """``robodream reconstruct`` and ``robodream bench rasterizer`` exist without any extra setup,
    and the Gaussian CLI module imports on its own (no circular import with ``robodream.cli``)."""
    assert "reconstruct" in run("--help").output
    assert "rasterizer" in run("bench", "--help").output
    assert "--views" in run("reconstruct", "--help").output
    code = ("import sys, robodream.gaussians.cli as g; assert 'torch' not in sys.modules; "
            "import robodream.cli as c; assert any(x.name == 'reconstruct' for x in c.app.registered_commands)")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.fixture(scope="module")
def recon(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "run"
    res = run("reconstruct", "--task", "reach-v3", "--out", out, *TINY)
    return out, res


def test_reconstruct_smoke_outputs(recon):
    out, res = recon
    assert "held-out PSNR" in res.output
    for name in ("config.json", "meta.json", "results.json", "metrics.jsonl", "gaussians.ply", "cameras.json",
                 "heldout.png"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "gaussian_scene" and cfg["reconstruct"]["views"] == 4
    r = json.loads((out / "results.json").read_text())
    for key in ("psnr_heldout", "ssim_heldout", "n_gaussians", "wall_s"):
        assert isinstance(r[key], (int, float)) and math.isfinite(r[key]), key
    assert r["psnr_heldout"] > 12 and 0 < r["ssim_heldout"] <= 1
    assert r["rasterizer_backend"] == "tiled" and "rasteriser: tiled path" in res.output  # which path ran
    g = load_scene(out)
    assert g.n == r["n_gaussians"] and g.sh_degree == 1
    assert Image.open(out / "heldout.png").size == (2 * 32, 2 * 32)  # held-out views over their renders
    cams = json.loads((out / "cameras.json").read_text())
    assert len(cams["train"]) == 4 and len(cams["heldout"]) == 2
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 30


def test_reconstruct_is_reproducible(recon, tmp_path):
    out, _ = recon
    run("reconstruct", "--task", "reach-v3", "--out", tmp_path / "again", *TINY)
    a, b = load_scene(out), load_scene(tmp_path / "again")
    torch.testing.assert_close(a.means, b.means)


def test_reconstruct_bad_input(recon, tmp_path):
    out, _ = recon
    res = run("reconstruct", "--task", "reach-v9", "--out", tmp_path / "x", *TINY, code=2)
    assert "unknown Meta-World task" in res.output
    res = run("reconstruct", "--task", "reach-v3", "--out", out, *TINY, code=2)
    assert "already exists" in res.output
    res = run("reconstruct", "--task", "reach-v3", "--out", tmp_path / "y", "--views", "0", code=2)
    assert "at least one training" in res.output
    (tmp_path / "bad.json").write_text("{not json")
    res = run("reconstruct", "--task", "reach-v3", "--out", tmp_path / "z", "--config", tmp_path / "bad.json", code=2)
    assert "cannot read config" in res.output
    atomic_write_json(tmp_path / "other" / "config.json", {"model_type": "policy"})
    with pytest.raises(CheckpointError, match="holds a policy run"):
        load_scene(tmp_path / "other")


def test_bench_rasterizer_smoke(tmp_path):
    out = tmp_path / "bench.json"
    res = runner.invoke(app, ["bench", "rasterizer", "--out", str(out), "--counts", "64,128", "--sizes", "16,32",
                              "--repeats", "1", "--threads", "1", "--dense-max-pairs", "70000"])
    assert res.exit_code == 0, res.output
    r = json.loads(out.read_text())
    assert {"path", "device", "n_gaussians", "width", "height", "forward_ms", "forward_backward_ms"} <= set(r["rows"][0])
    paths = {(x["path"], x["n_gaussians"], x["width"]) for x in r["rows"]}
    assert ("tiled", 128, 32) in paths and ("dense", 64, 16) in paths
    skipped = [x for x in r["rows"] if x["path"] == "dense" and x["n_gaussians"] == 128 and x["width"] == 32]
    assert skipped[0]["forward_ms"] is None and "skipped" in skipped[0]  # 131k pairs > 70k
    assert any("dense_over_tiled_forward_backward" in x for x in r["ratios"])
    res = runner.invoke(app, ["bench", "rasterizer", "--out", str(out), "--counts", "abc"])
    assert res.exit_code == 2 and "comma-separated integers" in res.output


def test_density_control_clones_splits_prunes_and_keeps_adam_state():
    g = torch.Generator().manual_seed(0)
    n = 40
    params = {"means": torch.randn(n, 3), "quats": torch.randn(n, 4), "log_scales": torch.full((n, 3), math.log(0.005)),
              "opacity_logits": torch.full((n,), 2.0), "sh0": torch.zeros(n, 1, 3)}
    params["log_scales"][20:] = math.log(0.2)  # large: split instead of clone
    params["opacity_logits"][-5:] = -10.0  # nearly transparent: pruned
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.Adam([{"params": [t]} for t in params.values()], lr=1e-3)
    for t in params.values():
        t.grad = torch.ones_like(t)
    opt.step()
    ctrl = DensityControl(DensifyConfig(start=1, every=1, stop_fraction=1.0), scene_scale=1.0, total_steps=10,
                          generator=g)
    means2d = torch.zeros(1, n, 2, requires_grad=True)
    means2d.grad = torch.zeros(1, n, 2)
    means2d.grad[0, ::2] = 1e-3  # every other Gaussian has a high view-space gradient
    ctrl.accumulate(means2d, torch.ones(1, n, 2), 64, 64)
    changed = ctrl.step(1, params, opt)
    high = np.arange(n) % 2 == 0
    assert changed["cloned"] == int(high[:20].sum()) == 10
    assert changed["split"] == int(high[20:].sum()) == 10
    assert changed["pruned"] == 7  # 3 transparent originals + 2 x 2 transparent split children
    n_new = n + 10 + 10 - 7  # clones added, splits replace 1 by 2
    for t in params.values():
        assert t.shape[0] == n_new and t.requires_grad
        state = opt.state[t]
        assert state["exp_avg"].shape == t.shape and state["exp_avg_sq"].shape == t.shape
    assert sum(len(gr["params"]) for gr in opt.param_groups) == len(params)
