"""bench data-engine --quick: every stage (collection under shifts, tokenizer, transfer models and
their scores, transferred data, IDMs, world models, dreams, nine policies, evaluations at three
conditions) on tiny settings; a second run resumes and redoes nothing; bad settings are one-line
errors."""

from __future__ import annotations

import json

from cli_helpers import run


def test_quick_data_engine_bench_runs_and_resumes(tmp_path):
    w, out = tmp_path / "w", tmp_path / "r.json"
    shift_arms = ("real", "real_aug", "real_transfer", "oracle")
    res = run("bench", "data-engine", "--quick", "--work", w, "--out", out, "--arms", ",".join(shift_arms))
    r = json.loads(out.read_text())  # only the shift arms and their stages
    assert set(r["missing"]) == {"real_dreams", "real_rendered", "real_no_video", "low_real", "low_real_dreams",
                                 "low_real_no_video"}
    assert r["gap_closed_rendered"] == {"appearance_shift": None, "camera_shift": None}
    assert r["mean_success"]["real_dreams"] == {"default": None, "appearance_shift": None, "camera_shift": None}
    assert r["idm_replay_success"] is None and r["low_data"]["real"] is None and r["transfer_psnr_db"]["view"] > 0
    assert not (w / "runs" / "idm").exists() and not (w / "data" / "real_low").exists()
    assert "train policy real_dreams" not in res.output

    run("bench", "data-engine", "--quick", "--work", w, "--out", out)  # the rest, in the same directory
    r = json.loads(out.read_text())
    arms = ("real", "real_aug", "real_transfer", "real_dreams", "oracle", "real_rendered")
    conds = ("default", "appearance_shift", "camera_shift")
    assert r["missing"] == [] and len(r["invocations"]) == 1  # the same working directory: one invocation
    for a in arms:
        assert set(r["mean_success"][a]) == set(conds) and all(0 <= v <= 1 for v in r["mean_success"][a].values())
    t = r["per_task"]["real"]["appearance_shift"]["reach-v3"]
    assert t["n_episodes"] == 1 and len(t["ci95"]) == 2 and "git_commit" in t["code"]
    assert set(r["transfer_psnr_db"]) == set(r["transfer_baseline_psnr_db"]) == {"appearance", "view"}
    assert r["true_action_replay_success"] == 1.0 and 0 <= r["idm_replay_success"] <= 1
    assert set(r["low_data"]) == {"demos_per_task", "real", "real_dreams"} and r["low_data"]["demos_per_task"] == 1
    assert set(r["video_supervision"]) == {"2", "1"} and set(r["video_supervision"]["1"]) == {"video", "no_video"}
    assert "git_commit" in r["code"] and len(r["invocations"][0]["tokenizer_sha256"]) == 64
    assert r["wall_s"] > 0 and r["peak_rss_gib"] > 0 and r["dreams_kept"] == {"dream/reach-v3": 1,
                                                                             "dream_low/reach-v3": 1}
    prov = json.loads((w / "data" / "synthetic" / "view" / "reach-v3" / "meta" / "robodream.json").read_text())
    assert prov["synthetic"] == "view" and "renderer" not in prov
    prov = json.loads((w / "data" / "synthetic" / "rendered_view" / "reach-v3" / "meta" / "robodream.json").read_text())
    assert prov["synthetic"] == "view" and prov["renderer"] == "simulator"
    assert set(r["gap_closed_rendered"]) == {"appearance_shift", "camera_shift"}
    timings = json.loads((w / "timings.json").read_text())
    res = run("bench", "data-engine", "--quick", "--work", w, "--out", out)  # resumes: every stage is complete
    assert json.loads((w / "timings.json").read_text()) == timings and "train policy" not in res.output
    assert json.loads(out.read_text())["mean_success"] == r["mean_success"]

    # another working directory (a later session): one arm again, merged beside the first invocation
    w2 = tmp_path / "w2"
    run("bench", "data-engine", "--quick", "--work", w2, "--out", out, "--arms", "real_no_video")
    r2 = json.loads(out.read_text())
    assert [i["arms"] for i in r2["invocations"]] == [list(r["invocations"][0]["arms"]), ["real_no_video"]]
    assert r2["wall_s"] > r["wall_s"] and r2["per_task"]["real"] == r["per_task"]["real"]
    assert r2["transfer_psnr_db"] == r["transfer_psnr_db"]  # kept from the invocation that measured it
    # the tokenizer is recomputed from the same seeds: the hash tells whether both saw the same latents
    assert all(len(i["tokenizer_sha256"]) == 64 for i in r2["invocations"])

    # an arm-specific setting changes: those arms are re-measured, their earlier outputs and results kept aside
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"transfer_copies": 2}))
    before = json.loads(out.read_text())
    res = run("bench", "data-engine", "--quick", "--work", w, "--out", out, "--config", cfg, "--arms", "real_rendered")
    r3 = json.loads(out.read_text())
    (sup,) = r3["superseded"]
    assert sup["changed_settings"] == ["transfer_copies"] and sup["arms"] == ["real_transfer", "real_rendered"]
    assert sup["per_task"]["real_transfer"] == before["per_task"]["real_transfer"] and sup["settings"]["transfer_copies"] == 1
    assert sup["transfer_psnr_db"] == before["transfer_psnr_db"] and r3["transfer_psnr_db"] is None
    assert "real_transfer" in r3["missing"] and "real_rendered" not in r3["missing"]
    assert r3["per_task"]["real"] == before["per_task"]["real"]  # the other arms stand
    assert "policy_real_transfer" not in r3["training_s"] and "transfer_copies" in res.output
    (moved,) = (w / "superseded").iterdir()
    info = json.loads((moved / "superseded.json").read_text())
    assert "runs/policy_real_transfer" in info["moved"] and (moved / "runs" / "policy_real_transfer").is_dir()
    assert not (w / "runs" / "transfer_appearance_corner").exists()
    assert "train policy real_transfer" in info["stage_s"]
    assert "train policy real_transfer" not in json.loads((w / "timings.json").read_text())
    assert json.loads((w / "data" / "synthetic" / "rendered_view" / "reach-v3" / "meta" / "info.json").read_text()
                      )["total_episodes"] == 4  # 2 demos x 2 copies, rendered again

    cfg.write_text(json.dumps({"eval_episodes": 2}))
    res = run("bench", "data-engine", "--quick", "--work", w, "--out", out, "--config", cfg, code=2)
    assert res.output.startswith("error:") and "eval_episodes" in res.output
    res = run("bench", "data-engine", "--quick", "--work", tmp_path / "w3", "--out", out, "--config", cfg, code=2)
    assert res.output.startswith("error:") and "--out" in res.output and not (tmp_path / "w3").exists()


def test_bad_settings_are_one_line_errors(tmp_path):
    cfg = tmp_path / "c.json"
    for bad, needle in (({"tasks": ["reach-v9"]}, "reach-v9"), ({"other_tasks": ["reach-v3"]}, "other_tasks"),
                        ({"demoz": 3}, "demoz")):
        cfg.write_text(json.dumps(bad))
        res = run("bench", "data-engine", "--quick", "--work", tmp_path / "w", "--config", cfg, "--out",
                  tmp_path / "r.json", code=2)
        err = res.output.strip()
        assert err.startswith("error:") and len(err.splitlines()) == 1 and needle in err, err
    res = run("bench", "data-engine", "--quick", "--work", tmp_path / "w", "--out", tmp_path / "r.json",
              "--arms", "real,dreamz", code=2)
    assert "dreamz" in res.output and "real_dreams" in res.output
    for text in ("{not json", json.dumps({"benchmark": "success"})):  # a corrupt or foreign result file
        (tmp_path / "other.json").write_text(text)
        res = run("bench", "data-engine", "--quick", "--work", tmp_path / "w", "--out", tmp_path / "other.json", code=2)
        assert res.output.startswith("error:") and (tmp_path / "other.json").read_text() == text
    assert not (tmp_path / "w").exists() and not (tmp_path / "r.json").exists()


def test_real_share_weights_and_staleness():
    import pytest

    from robodream.bench.data_engine import bench_config, changed_settings, mix_weights
    from robodream.config import to_dict
    from robodream.errors import ConfigError

    assert mix_weights(0, 3, 0.5) == () and mix_weights(6, 3, None) == (1.0,) * 9
    w = mix_weights(6, 3, 0.6)  # 3 real tasks, appearance + view copies of each
    assert sum(w[:3]) == pytest.approx(0.6) and sum(w[3:]) == pytest.approx(0.4) and len(set(w[3:])) == 1
    old = json.loads(json.dumps(to_dict(bench_config())))
    old.pop("real_share")  # settings saved before the field existed read as None (LEGACY_DEFAULTS)
    assert changed_settings(old, bench_config({"real_share": None}), "x") == ([], ())
    changed, stale = changed_settings(old, bench_config(), "x")  # the default is 0.5
    assert changed == ["real_share"] and stale == ("real_transfer", "real_dreams", "real_rendered", "low_real_dreams")
    with pytest.raises(ConfigError, match="real_share"):
        bench_config({"real_share": 1.0})


def test_merge_keeps_a_work_directorys_peak_memory():
    from robodream.bench.data_engine import bench_config, merge_results

    cfg = bench_config()
    measured = {k: None for k in ("transfer_psnr_db", "transfer_baseline_psnr_db", "idm_replay_success",
                                  "true_action_replay_success", "idm_action_mse")}
    measured |= {"per_task": {}, "training_s": {}, "dreams_kept": {}}

    def invocation(work_id, rss):
        return {"created": "t", "code": {}, "environment": {}, "work_id": work_id, "stage_s": {"a": 1.0},
                "wall_s": 1.0, "peak_rss_gib": rss}

    r = merge_results(None, cfg, measured, invocation("w1", 5.0))
    r = merge_results(r, cfg, measured, invocation("w1", 3.0))  # the same directory: replaces, keeps the peak
    assert len(r["invocations"]) == 1 and r["invocations"][0]["peak_rss_gib"] == 5.0 and r["peak_rss_gib"] == 5.0
    r = merge_results(r, cfg, measured, invocation("w2", 2.0))  # another directory: its own entry
    assert [i["peak_rss_gib"] for i in r["invocations"]] == [5.0, 2.0] and r["wall_s"] == 2.0
