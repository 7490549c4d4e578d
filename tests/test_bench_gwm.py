"""``robodream bench gwm --quick``: every stage on tiny settings, the issue's keys, resumable, settings guarded."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")


def test_quick_gwm_bench_runs_resumes_and_guards_its_settings(tmp_path):
    from cli_helpers import one_line_error, run

    res = run("bench", "gwm", "--quick", "--work", tmp_path / "work", "--out", tmp_path / "gwm.json")
    assert "per-frame Gaussians" in res.output
    r = json.loads((tmp_path / "gwm.json").read_text())
    for key in ("gaussians_heldout_camera_psnr_db", "gaussians_ms_per_frame", "vae_psnr_db", "psnr_by_horizon",
                "copy_last_psnr_by_horizon", "novel_camera_psnr_by_horizon", "video_world_model_psnr_by_horizon",
                "il_success", "mbrl_env_steps_to_80", "code", "wall_s"):
        assert key in r, key
    assert len(r["psnr_by_horizon"]) == 2 and len(r["novel_camera_psnr_by_horizon"]) == 2
    assert r["video_world_model_cameras"] == ["corner", "corner3"]  # the novel camera stays unseen
    assert len(r["video_world_model_psnr_by_horizon"]) == 2
    assert set(r["mbrl_env_steps_to_80"]) == {"mbpo_gwm", "sac", "mbpo_video"}
    assert set(r["mbrl_env_steps_to_80"]["mbpo_video"]) == {"reach-v3/seed0"}
    assert set(r["il_success"]) == {"tokenizer", "gwm"} and 0 <= r["il_success"]["gwm"] <= 1
    assert set(r["il_per_task"]["gwm"]) == {"default", "camera_shift"} and "imitation" in res.output
    assert (tmp_path / "work" / "mbrl" / "curves.png").is_file()
    timings = json.loads((tmp_path / "work" / "timings.json").read_text())
    res = run("bench", "gwm", "--quick", "--work", tmp_path / "work", "--out", tmp_path / "again.json")
    assert ">> " not in res.output  # every stage complete: nothing ran again
    assert json.loads((tmp_path / "work" / "timings.json").read_text()) == timings
    (tmp_path / "cfg.json").write_text('{"demos": 3}')
    res = run("bench", "gwm", "--quick", "--config", tmp_path / "cfg.json", "--work", tmp_path / "work", "--out",
              tmp_path / "x.json", code=2)
    one_line_error(res, "other settings")
