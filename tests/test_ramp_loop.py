"""The RAMP loop and its baselines (issue 15, items 6-7): AWR's weights and weighted loss,
HG-DAgger's intervention-only weights, one evaluation path for the four methods, warm starts
(``init_from``), one quick round of the real loop that resumes after a kill at each stage, and
``bench rl --quick`` on it."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from cli_helpers import run
from test_policy import inputs, random_policy, tiny_cfg
from test_ramp import one_line_error

import robodream.rl.loop as loop
from robodream.errors import CheckpointError, ConfigError
from robodream.eval.policy_eval import DEFAULT_EVAL_SEED
from robodream.rl.bench import quick_loop_config
from robodream.rl.labels import awr_weights, weights_sha256
from robodream.rl.loop import METHODS, RampLoopConfig, run_ramp_loop

STAGES = ("record_rollouts", "train_world_model", "relabel", "train_policy", "evaluate_policy")


# ----------------------------------------------------------------------------- AWR
def test_awr_weights_exact():
    """w = min(exp(A / beta), w_max): beta = 0.5, w_max = 20."""
    w = awr_weights(torch.tensor([-2.0, 0.0, 1.0, 5.0]), beta=0.5, max_weight=20.0)
    torch.testing.assert_close(w, torch.tensor([math.exp(-4), 1.0, math.exp(2), 20.0]))
    assert w.dtype == torch.float32
    with pytest.raises(ConfigError):
        awr_weights(torch.zeros(2), beta=0.0)


def test_sample_weight_weights_the_action_loss_only():
    """Without padding L_action(w) = sum_b w_b l_b / sum_b w_b (l_b: sample b's action loss); equal
    weights give the unweighted loss; the video loss does not change."""
    cfg = tiny_cfg()
    m = random_policy(cfg)
    state, ref, task, actions, fut = inputs(cfg, B=2)

    def losses(w):
        g = torch.Generator().manual_seed(0)
        _, logs = m(state, ref, actions, task, future_latents=fut, generator=g, sample_weight=w)
        return logs["loss_action"], logs["loss_video"]

    base, video = losses(None)
    l0, _ = losses(torch.tensor([1.0, 0.0]))
    l1, _ = losses(torch.tensor([0.0, 1.0]))
    la, va = losses(torch.tensor([3.0, 1.0]))
    assert losses(torch.tensor([2.0, 2.0]))[0] == pytest.approx(base, rel=1e-5)
    assert base == pytest.approx((l0 + l1) / 2, rel=1e-5)
    assert la == pytest.approx((3 * l0 + l1) / 4, rel=1e-5) and va == pytest.approx(video, rel=1e-6)
    assert la != pytest.approx(base, rel=1e-3)


# ----------------------------------------------------------------------------- one evaluation path
def _fake_stages(monkeypatch, calls: dict) -> None:
    """Every stage of the loop replaced by a recorder that writes its completion marker."""

    def train(kind):
        def f(cfg, out, resume=False):
            calls.setdefault(kind, []).append(cfg)
            Path(out).mkdir(parents=True, exist_ok=True)
            (Path(out) / "model.safetensors").write_text("")
            (Path(out) / "results.json").write_text("{}")
        return f

    def relabel(data, wm, out, **kw):
        calls.setdefault("relabel", []).append(list(data))
        calls.setdefault("relabel_z", []).append(kw["with_z"])
        Path(out).write_text(json.dumps({"z_steps": int(kw["with_z"]), "world_model": {"sha256": weights_sha256(wm)}}))

    def relocate(src, dst, moves, drop_z=False):
        meta = json.loads(Path(src).read_text())
        Path(dst).write_text(json.dumps({**meta, "z_steps": 0 if drop_z else meta["z_steps"], "relocated_from": str(src)}))

    def rollouts(pol, task, n, out, **kw):
        calls.setdefault("rollouts", []).append((str(pol), task, n, kw))
        (Path(out) / "meta").mkdir(parents=True)
        (Path(out) / "meta" / "results.json").write_text(json.dumps(
            {"n_episodes": n, "intervention_steps": 7, "seeds": [2_000_000, 2_000_000 + n - 1]}))

    def evaluate(pol, task, n, out, **kw):
        calls.setdefault("eval", []).append((Path(pol).parent.name, task, n, {**kw, "stage": Path(out).parent.name}))
        Path(out).mkdir(parents=True)
        r = {"success_rate": 0.5, "n_episodes": n, "ci95": [0.1, 0.9], "mode": kw.get("mode")}
        (Path(out) / "results.json").write_text(json.dumps(r))
        return r

    monkeypatch.setattr(loop, "train_world_model", train("wm"))
    monkeypatch.setattr(loop, "train_policy", train("policy"))
    monkeypatch.setattr(loop, "relabel", relabel)
    monkeypatch.setattr(loop, "record_rollouts", rollouts)
    monkeypatch.setattr(loop, "evaluate_policy", evaluate)
    monkeypatch.setattr(loop, "dataset_complete", lambda p: (Path(p) / "meta" / "results.json").is_file())
    monkeypatch.setattr(loop, "relocate_labels", relocate)
    monkeypatch.setattr(loop, "labels_meta", lambda f: {"eps": 0.1, "positive_fraction": 0.3,
                                                        "achieved_positive_fraction": 0.3,
                                                        **json.loads(Path(f).read_text())})


def test_four_methods_share_one_evaluation(monkeypatch, tmp_path):
    """Every method evaluates through evaluate_policy with the same tasks, episodes, seeds and step
    limit per round (4 episodes in rounds 0 and 2, round_eval_episodes = 3 between); ramp in
    standard mode (and again in efficient mode), recap efficient, the plain policies their default;
    round 0 is one plain BC base policy for all; later the policies differ as the methods say
    (HG-DAgger: intervention frames only, no world model) and warm-start from the round before for
    a quarter of the steps; round 1's rollouts are the base policy's (no mode)."""
    evals, policies = {}, {}
    for m in METHODS:
        calls: dict = {}
        _fake_stages(monkeypatch, calls)
        cfg = RampLoopConfig(data=("demos",), tokenizer="tok", tasks=("reach-v3", "push-v3"), method=m, rounds=2,
                             rollouts=3, eval_episodes=4, round_eval_episodes=3)
        s = run_ramp_loop(cfg, tmp_path / m, log=lambda *_: None)
        assert s["mean_success"] == [0.5, 0.5, 0.5] and s["rollouts"] == 2 * 2 * 3 and s["intervention_steps"] == 28
        assert s["intervention_steps_by_round"] == [0, 14, 14]
        assert (tmp_path / m / "success_curve.png").is_file() and (tmp_path / m / "round_2" / "metrics.json").is_file()
        evals[m] = calls["eval"]
        policies[m] = calls["policy"]
        assert len(calls.get("wm", [])) == (0 if m == "hgdagger" else 3)
        assert [len(p.data) for p in calls["policy"]] == [1, 3, 5]  # demos + all rollouts so far
        assert [r[0].split("/")[-2] for r in calls["rollouts"]] == ["round_0"] * 2 + ["round_1"] * 2
        assert [r[3]["mode"] for r in calls["rollouts"]] == [None] * 2 + [cfg.eval_mode] * 2
        assert len(calls.get("relabel", [])) == (0 if m == "hgdagger" else 2)  # rounds 1 and 2: the base reads none
        for kind, name, steps in (("policy", "policy", [4000, 1000, 1000]), ("wm", "world_model", [2000, 500, 500])):
            if kind in calls:
                assert [c.init_from for c in calls[kind]] == ["", *[str(tmp_path / m / f"round_{k}" / name)
                                                                    for k in (0, 1)]]
                assert [c.train.steps for c in calls[kind]] == steps
    same = {m: [(r, t, n, kw["seed_start"], kw["max_steps"]) for r, t, n, kw in e if kw["stage"] == "eval"]
            for m, e in evals.items()}
    assert all(v == same["ramp"] for v in same.values())
    assert [e[2] for e in same["ramp"]] == [4, 4, 3, 3, 4, 4]
    assert [(r, t, n, kw["seed_start"], kw["max_steps"]) for r, t, n, kw in evals["ramp"]
            if kw["stage"] == "eval_efficient"] == same["ramp"][2:]  # round 0: the base has no modes
    assert {kw["seed_start"] for _, _, _, kw in evals["awr"]} == {DEFAULT_EVAL_SEED}
    assert {m: {(r, kw["stage"], kw["mode"]) for r, *_, kw in e} for m, e in evals.items()} == {
        "ramp": {("round_0", "eval", None), *{(f"round_{k}", "eval", "standard") for k in (1, 2)},
                 *{(f"round_{k}", "eval_efficient", "efficient") for k in (1, 2)}},
        "recap": {("round_0", "eval", None), *{(f"round_{k}", "eval", "efficient") for k in (1, 2)}},
        "awr": {(f"round_{k}", "eval", None) for k in (0, 1, 2)}, "hgdagger": {(f"round_{k}", "eval", None) for k in (0, 1, 2)}}
    base = policies["ramp"][0]
    assert all(v[0] == base for v in policies.values())  # one base policy: plain BC on the demos
    assert not base.model.ramp_conditioned and not base.labels and not base.advantage_weighting
    assert not base.intervention_only and base.init_from == ""
    p = {m: v[-1] for m, v in policies.items()}
    assert (p["ramp"].model.advantage_conditioning, p["ramp"].model.future_conditioning) == (True, True)
    assert (p["recap"].model.advantage_conditioning, p["recap"].model.future_conditioning) == (True, False)
    assert not p["awr"].model.ramp_conditioned and p["awr"].advantage_weighting and p["awr"].labels
    assert not p["hgdagger"].model.ramp_conditioned and not p["hgdagger"].advantage_weighting
    assert not p["hgdagger"].labels and p["hgdagger"].intervention_only
    assert not any(p[m].intervention_only for m in ("ramp", "recap", "awr"))
    cold = RampLoopConfig(warm_start=False)
    assert [cold.round_steps(k, 4000, 0) for k in (0, 1)] == [4000, 4000] and cold.round_steps(1, 4000, 7) == 7


def test_method_independent_stages_are_computed_once(monkeypatch, tmp_path):
    """RECAP copies from ramp (same settings) round 0's world model, base policy and evaluation and
    round 1's rollouts, world model and labels (without z), and trains and evaluates only its round-1
    policy; copied stages count 0 s. A loop of another seed copies nothing. HG-DAgger copies the base
    policy and the rollouts but no world model. RAMP takes no labels without z, and no labels of
    another world model's weights: it relabels."""
    calls: dict = {}
    _fake_stages(monkeypatch, calls)
    cfg = RampLoopConfig(data=("demos",), tokenizer="tok", tasks=("reach-v3",), rounds=1, rollouts=2, eval_episodes=2)
    run_ramp_loop(cfg, tmp_path / "ramp", log=lambda *_: None)
    assert len(calls["wm"]) == 2 and calls["relabel_z"] == [True] and len(calls["policy"]) == 2
    assert len(calls["rollouts"]) == 1
    calls.clear()
    logs = []
    run_ramp_loop(replace(cfg, method="recap"), tmp_path / "recap", log=logs.append,
                  share_from=(tmp_path / "awr", tmp_path / "ramp"))  # awr: no loop there yet
    assert set(calls) == {"policy", "eval"} and len(calls["policy"]) == 1 and {e[0] for e in calls["eval"]} == {"round_1"}
    r0, r1 = (json.loads((tmp_path / "recap" / f"round_{k}" / "metrics.json").read_text()) for k in (0, 1))
    assert r0["copied"] == ["world_model_train", "policy_train", "eval"]
    assert r1["copied"] == ["rollouts", "world_model_train", "relabel"]
    assert all(r1["timings_s"][st] == 0.0 for st in r1["copied"]) and r1["timings_s"]["policy_train"] == 0.0  # fakes log none
    labels = json.loads((tmp_path / "recap" / "round_1" / "labels.safetensors").read_text())
    assert labels["z_steps"] == 0 and labels["relocated_from"] == str(tmp_path / "ramp" / "round_1" / "labels.safetensors")
    for part in ("world_model/copied_from.json", "policy/model.safetensors", "eval/reach-v3/results.json"):
        assert (tmp_path / "recap" / "round_0" / part).is_file()
    assert (tmp_path / "recap" / "round_1" / "rollouts" / "reach-v3" / "copied_from.json").is_file()
    assert sum("copied, not recomputed" in ln for ln in logs) == 5
    assert not list((tmp_path / "recap").rglob(".*tmp"))
    calls.clear()
    run_ramp_loop(replace(cfg, method="awr", seed=1), tmp_path / "awr", log=lambda *_: None, share_from=(tmp_path / "ramp",))
    assert len(calls["wm"]) == 2 and calls["relabel_z"] == [False] and len(calls["policy"]) == 2
    assert len(calls["rollouts"]) == 1
    calls.clear()
    run_ramp_loop(replace(cfg, method="hgdagger"), tmp_path / "h", log=lambda *_: None, share_from=(tmp_path / "ramp",))
    assert set(calls) == {"policy", "eval"} and (tmp_path / "h" / "round_1" / "rollouts" / "reach-v3").is_dir()
    assert not (tmp_path / "h" / "round_0" / "world_model").exists()
    calls.clear()
    run_ramp_loop(cfg, tmp_path / "ramp2", log=lambda *_: None, share_from=(tmp_path / "recap",))
    assert "wm" not in calls and calls["relabel_z"] == [True]  # recap's labels have no z
    calls.clear()
    (tmp_path / "recap" / "round_1" / "world_model" / "model.safetensors").write_text("other weights")
    for f in ("labels.safetensors", "metrics.json"):
        (tmp_path / "recap" / "round_1" / f).unlink()
    run_ramp_loop(replace(cfg, method="recap"), tmp_path / "recap", log=lambda *_: None, share_from=(tmp_path / "ramp",))
    assert calls["relabel_z"] == [False]  # ramp's labels are another world model's


def test_loop_refuses_another_config(monkeypatch, tmp_path):
    _fake_stages(monkeypatch, {})
    cfg = RampLoopConfig(data=("demos",), tokenizer="tok", tasks=("reach-v3",), rounds=0, eval_episodes=2)
    run_ramp_loop(cfg, tmp_path / "r", log=lambda *_: None)
    with pytest.raises(ConfigError, match="other settings"):
        run_ramp_loop(RampLoopConfig(**{**cfg.__dict__, "eval_episodes": 3}), tmp_path / "r", log=lambda *_: None)
    s = run_ramp_loop(RampLoopConfig(**{**cfg.__dict__, "eval_episodes": 3}), tmp_path / "r", log=lambda *_: None,
                      overwrite=True)  # started over: evaluated again with 3 episodes
    assert s["final"]["reach-v3"]["n_episodes"] == 3
    with pytest.raises(ConfigError, match="method"):
        RampLoopConfig(method="ppo")
    args = ["train", "ramp", "--data", "demos", "--tokenizer", "tok", "--tasks", "reach-v3", "--rounds", 0,
            "--out", tmp_path / "cli"]
    res = run(*args, "--eval-episodes", 2, "--method", "awr")
    assert "final 95% CI" in res.output and json.loads((tmp_path / "cli" / "loop.json").read_text())["method"] == "awr"
    one_line_error(run(*args, "--eval-episodes", 3, "--method", "awr", code=2), "other settings", "--overwrite")


# ----------------------------------------------------------------------------- the real loop
@pytest.fixture(scope="module")
def loop_work(tmp_path_factory) -> Path:
    """3 collected reach episodes (32 px) and a tokenizer run."""
    w = tmp_path_factory.mktemp("ramp_loop")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 2, "--batch-size", 8,
        "--channels", "8,16,32")
    return w


def _quick(w: Path, method: str) -> RampLoopConfig:
    """``bench rl --quick --max-steps 12``'s settings (episodes cut to 12 steps: a fast test)."""
    return quick_loop_config(RampLoopConfig(data=(str(w / "ds"),), tokenizer=str(w / "tok"), method=method,
                                            max_steps=12))


def test_quick_round_resumes_after_a_kill_at_each_stage(monkeypatch, loop_work):
    """RAMP, one round: each stage function is killed once: a training run after its last checkpoint
    (no results.json), the atomic writers (rollouts, labels, evaluation) before their output
    appears; rerunning the same loop continues to the end, and once more skips every stage."""
    out = loop_work / "bench" / "ramp"
    killed = []

    def killing(name, fn):
        def f(*a, **kw):
            if name in killed:
                return fn(*a, **kw)
            killed.append(name)
            if name in ("train_world_model", "train_policy"):  # killed after its last checkpoint
                fn(*a, **kw)
                (Path(a[1]) / "results.json").unlink()
            # the atomic writers (rollouts, labels, evaluation) leave nothing at their target when
            # killed (tested with them): killing one is raising in place of it
            raise KeyboardInterrupt(f"killed in {name}")
        return f

    for name in STAGES:
        monkeypatch.setattr(loop, name, killing(name, getattr(loop, name)))
    cfg = _quick(loop_work, "ramp")
    for _ in range(len(STAGES) + 1):
        try:
            s = run_ramp_loop(cfg, out, log=lambda *_: None)
            break
        except KeyboardInterrupt:
            continue
    assert sorted(killed) == sorted(STAGES)
    assert s["n_rounds_done"] == 2 and len(s["mean_success"]) == 2 and s["rollouts"] == 2
    r1 = json.loads((out / "round_1" / "metrics.json").read_text())
    assert set(r1) == {"round", "method", "timings_s", "rollouts", "labels", "per_task", "mean_success",
                       "per_task_efficient", "mean_success_efficient"}
    assert set(r1["timings_s"]) == {"rollouts", "world_model_train", "relabel", "policy_train", "eval", "eval_efficient"}
    assert r1["per_task"]["reach-v3"]["n_episodes"] == 2 and r1["per_task"]["reach-v3"]["mode"] == "standard"
    assert r1["per_task_efficient"]["reach-v3"]["mode"] == "efficient" and len(s["mean_success_efficient"]) == 2
    for name in ("world_model", "policy"):  # round 1 continued round 0's weights
        assert json.loads((out / "round_1" / name / "config.json").read_text())["init_from"] == str(out / "round_0" / name)
        assert json.loads((out / "round_1" / name / "meta.json").read_text())["init_from"] == str(out / "round_0" / name)
    assert 0 <= r1["rollouts"]["reach-v3"]["intervention_fraction"] <= 1
    assert list((out / "round_1" / "eval" / "reach-v3" / "rollouts").glob("*.mp4"))
    assert (out / "success_curve.png").is_file()
    again = run_ramp_loop(cfg, out, log=lambda *_: None)  # complete: every stage skipped
    assert again["mean_success"] == s["mean_success"] and set(again) == set(s)


def test_hgdagger_round_and_bench_rl_quick(loop_work, tmp_path):
    """HG-DAgger's quick round (no world model) and ``bench rl --quick`` over ramp and hgdagger,
    which continues the loops of these tests (same settings) and writes the table's JSON."""
    s = run_ramp_loop(_quick(loop_work, "hgdagger"), loop_work / "bench" / "hgdagger", log=lambda *_: None)
    assert not (loop_work / "bench" / "hgdagger" / "round_0" / "world_model").exists()
    assert s["n_rounds_done"] == 2 and "labels" not in s["rounds"][1]
    meta = json.loads((loop_work / "bench" / "hgdagger" / "round_1" / "policy" / "meta.json").read_text())
    assert meta["n_train_frames_weighted"] <= meta["n_train_frames"]  # the policy's own rollout frames weigh 0
    if not (loop_work / "bench" / "ramp" / "metrics.json").is_file():
        pytest.skip("the ramp loop test did not run")
    res = run("bench", "rl", "--data", loop_work / "ds", "--tokenizer", loop_work / "tok", "--out",
              tmp_path / "rl.json", "--work", loop_work / "bench", "--methods", "ramp,hgdagger", "--quick", "--max-steps", 12)
    r = json.loads((tmp_path / "rl.json").read_text())
    assert r["benchmark"] == "rl" and r["quick"] and set(r["results"]) == {"ramp", "hgdagger"}
    assert r["results"]["hgdagger"]["mean_success"] == s["mean_success"] and "environment" in r
    assert {"tasks", "base_success", "success_by_round", "final_success", "per_task", "kendall_tau",
            "takeover_steps_by_round", "code", "wall_s"} <= set(r)
    base = json.loads((loop_work / "bench" / "base" / "metrics.json").read_text())  # WORK/base: 0 rounds
    assert (loop_work / "bench" / "base" / "round_1" / "rollouts" / "reach-v3" / "meta" / "results.json").is_file()
    assert base["n_rounds_done"] == 1 and base["rounds"][0]["per_task"]["reach-v3"]["n_episodes"] == 2
    assert r["tasks"] == ["reach-v3"] and r["base_success"] == base["mean_success"][0] and r["wall_s"] > 0
    assert r["base_per_task"]["reach-v3"]["success_rate"] == r["base_success"]
    methods = ["ramp", "ramp_efficient", "hg_dagger"]
    assert list(r["success_by_round"]) == list(r["final_success"]) == list(r["per_task"]) == methods
    assert r["success_by_round"]["hg_dagger"] == s["mean_success"] and len(r["success_by_round"]["ramp_efficient"]) == 2
    assert all(r["final_success"][m] == r["success_by_round"][m][-1] for m in methods)
    assert set(r["per_task"]["ramp_efficient"]["reach-v3"]) == {"success_rate", "n_episodes", "ci95"}
    assert r["takeover_steps_by_round"] == {"ramp": [0, r["results"]["ramp"]["intervention_steps"]],
                                            "hg_dagger": [0, s["intervention_steps"]]}
    assert set(r["kendall_tau"]) == {"state_value", "value_only"} and r["kendall_tau_detail"]["round"] == 1
    vo = json.loads((loop_work / "bench" / "ramp" / "value_only" / "round_0" / "config.json").read_text())
    assert vo["model"]["value_frame"] == "value" and vo["data"] == [str(loop_work / "ds")]  # round 0's data
    assert "mean success per round" in res.output and "ramp_efficient" in res.output and "Kendall" in res.output
    bad = run("bench", "rl", "--data", loop_work / "ds", "--tokenizer", loop_work / "tok", "--out", tmp_path / "x.json",
              "--work", loop_work / "bench", "--methods", "ppo", code=2)
    one_line_error(bad, "--methods")


def test_awr_policy_trains_on_the_loops_labels(loop_work, tmp_path):
    """An advantage-weighted policy run on round 1's labels: the windows carry min(exp(A/beta), w_max)
    of the labels' advantages and training runs; a plain run refuses labels without the weighting."""
    from robodream.data.lerobot import LeRobotDataset
    from robodream.policy.train import PolicyRunConfig, train_policy
    from robodream.rl.labels import attach_labels, match_labels, read_labels

    labels = loop_work / "bench" / "ramp" / "round_1" / "labels.safetensors"
    if not labels.is_file():
        pytest.skip("the ramp loop test did not run")
    ds = LeRobotDataset(loop_work / "ds")
    labs, _ = match_labels([labels], [ds])
    eps = [{"source": 0, "episode_index": i, "action": [0] * n} for i, n in enumerate(ds.episode_lengths)]
    attach_labels(eps, labs, conditioning=False, awr=(0.5, 3.0))
    adv = read_labels(labels)[1]["dataset0.advantage"]
    torch.testing.assert_close(torch.cat([e["sample_weight"] for e in eps]), awr_weights(adv, 0.5, 3.0))
    assert "indicator" not in eps[0] and "z" not in eps[0]
    cfg = _quick(loop_work, "awr").policy_run_config((str(loop_work / "ds"),), str(labels), 2)
    assert cfg.advantage_weighting and not cfg.model.ramp_conditioned
    r = train_policy(cfg, tmp_path / "awr")
    assert r["steps"] == 2 and json.loads((tmp_path / "awr" / "config.json").read_text())["advantage_weighting"]
    ev = loop.evaluate_policy(tmp_path / "awr", "reach-v3", 1, tmp_path / "ev", max_steps=12, n_videos=0)
    assert ev["mode"] == "action_only" and ev["n_episodes"] == 1  # a plain policy: no world model at inference
    with pytest.raises(ConfigError, match="labels"):
        PolicyRunConfig(data=cfg.data, tokenizer=cfg.tokenizer, labels=cfg.labels).check_labels()


# ----------------------------------------------------------------------------- HG-DAgger, warm start
def test_intervention_only_weighs_the_experts_frames(loop_work, tmp_path):
    """HG-DAgger's weights: 1 on every demonstration frame and on a rollout's intervention frames,
    0 on the policy's own rollout frames (multiplying weights already there, e.g. AWR's)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from robodream.data.lerobot import LeRobotDataset
    from robodream.errors import DatasetError
    from robodream.rl.labels import attach_intervention_weights

    ro = tmp_path / "rollouts"  # the demos, recorded as a policy rollout whose expert acted every third frame
    shutil.copytree(loop_work / "ds", ro)
    (ro / "meta" / "robodream.json").write_text(json.dumps({"source": "policy-rollout"}))
    for f in (ro / "data").rglob("*.parquet"):
        t = pq.read_table(f)
        flags = pa.array([i % 3 == 0 for i in t["index"].to_pylist()])
        pq.write_table(t.set_column(t.schema.get_field_index("complementary_info.is_intervention"),
                                    "complementary_info.is_intervention", flags), f)
    demos, rollouts = LeRobotDataset(loop_work / "ds"), LeRobotDataset(ro)
    eps = [{"source": d, "episode_index": i, "action": [0] * n}
           for d, ds in enumerate((demos, rollouts)) for i, n in enumerate(ds.episode_lengths)]
    eps[-1]["sample_weight"] = torch.full((len(eps[-1]["action"]),), 2.0)
    attach_intervention_weights(eps, [demos, rollouts])
    n_demo = demos.num_episodes
    assert all(torch.equal(e["sample_weight"], torch.ones(len(e["action"]))) for e in eps[:n_demo])
    flags = torch.cat([torch.as_tensor(rollouts.episode(i).extra["complementary_info.is_intervention"]).reshape(-1)
                       for i in range(rollouts.num_episodes)]).float()
    last = len(eps[-1]["action"])
    want = torch.cat([flags[:-last], 2 * flags[-last:]])
    torch.testing.assert_close(torch.cat([e["sample_weight"] for e in eps[n_demo:]]), want)
    assert 0 < float(flags.mean()) < 1
    (ro / "meta" / "info.json").write_text((ro / "meta" / "info.json").read_text().replace(
        "complementary_info.is_intervention", "complementary_info.other"))
    with pytest.raises(DatasetError, match="is_intervention"):
        attach_intervention_weights(eps, [demos, LeRobotDataset(ro)])


def test_init_from_starts_from_the_runs_weights(monkeypatch, loop_work, tmp_path):
    """A warm start enters training (before step 0) with exactly the finished run's final weights; a
    run of another model config or model type is refused with a one-line CheckpointError; a run
    resumed from its checkpoint no longer reads init_from."""
    import robodream.policy.train as ptrain
    from robodream.train.checkpoint import load_tensors
    from robodream.world_model.train import WorldModelRunConfig, train_world_model

    cfg = _quick(loop_work, "hgdagger").policy_run_config((str(loop_work / "ds"),), None, 2)
    ptrain.train_policy(cfg, tmp_path / "a")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["n_train_frames_weighted"] == meta["n_train_frames"]  # demos only: every frame weighs 1
    seen: dict = {}

    class Recording(ptrain.Trainer):
        def __init__(self, model, *a, **kw):
            seen.update({k: v.detach().clone() for k, v in model.named_parameters()})
            super().__init__(model, *a, **kw)

    monkeypatch.setattr(ptrain, "Trainer", Recording)
    warm = replace(cfg, init_from=str(tmp_path / "a"))
    ptrain.train_policy(warm, tmp_path / "b")
    final = load_tensors(tmp_path / "a" / "model.safetensors")
    assert seen and all(torch.equal(v, final[k]) for k, v in seen.items())
    other = replace(warm, model=replace(warm.model, dim=48))
    with pytest.raises(CheckpointError, match="another model.*model.dim is 32 there but 48 here") as e:
        ptrain.train_policy(other, tmp_path / "c")
    assert "\n" not in str(e.value) and not (tmp_path / "c").exists()
    with pytest.raises(CheckpointError, match="gigaworld_policy run, expected video_world_model"):
        train_world_model(WorldModelRunConfig(data=cfg.data, tokenizer=cfg.tokenizer, init_from=str(tmp_path / "a")),
                          tmp_path / "w")
    # RAMP's conditioning added to the plain run's weights (round 1 fine-tuning the base policy):
    # every other parameter is the run's, the added ones keep their fresh initialisation
    from robodream.config import from_dict
    from robodream.policy.configuration import PolicyConfig
    from robodream.policy.modeling import GigaWorldPolicy
    from robodream.train.run_dir import init_from_run

    plain = from_dict(PolicyConfig, json.loads((tmp_path / "a" / "config.json").read_text())["model"])
    m = GigaWorldPolicy(replace(plain, advantage_conditioning=True, future_conditioning=True, condition_dropout=0.5))
    fresh = {k: v.detach().clone() for k, v in m.state_dict().items()}
    init_from_run(m, tmp_path / "a", PolicyConfig, cfg.tokenizer)
    added = {k for k in fresh if k not in final}
    assert added == {"indicator_embedding.weight", "z_in.weight", "z_in.bias", "pos_z", "z_null"}
    assert all(torch.equal(v, fresh[k] if k in added else final[k]) for k, v in m.state_dict().items())
    with pytest.raises(CheckpointError, match="model.dim is 32 there but 48 here"):
        init_from_run(GigaWorldPolicy(replace(plain, advantage_conditioning=True, dim=48)), tmp_path / "a",
                      PolicyConfig, cfg.tokenizer)
    shutil.rmtree(tmp_path / "a")  # resumed from its checkpoint: init_from is not read again
    r = ptrain.train_policy(replace(warm, train=replace(warm.train, steps=3)), tmp_path / "b", resume=True)
    assert r["steps"] == 3


def test_bench_rl_makes_its_own_demos_and_tokenizer(tmp_path):
    """Without --data and --tokenizer, ``bench rl`` collects the demos and trains the tokenizer in
    WORK (quick: 32 px, two steps) before the base policy; --data without --tokenizer, or the other
    way round, is refused."""
    run("bench", "rl", "--tasks", "reach-v3", "--demos", 2, "--methods", "hgdagger", "--quick", "--max-steps", 12,
        "--work", tmp_path / "w", "--out", tmp_path / "rl.json")
    r = json.loads((tmp_path / "rl.json").read_text())
    assert r["tasks"] == ["reach-v3"] and r["config"]["data"] == [str(tmp_path / "w" / "data" / "reach-v3")]
    assert r["config"]["tokenizer"] == str(tmp_path / "w" / "tokenizer")
    assert json.loads((tmp_path / "w" / "data" / "reach-v3" / "meta" / "info.json").read_text())["total_episodes"] == 2
    assert (tmp_path / "w" / "hgdagger" / "round_1" / "rollouts" / "reach-v3" / "copied_from.json").is_file()
    bad = run("bench", "rl", "--data", tmp_path / "w" / "data" / "reach-v3", "--quick", "--work", tmp_path / "x",
              "--out", tmp_path / "x.json", code=2)
    one_line_error(bad, "--tokenizer")
    bad = run("bench", "rl", "--tokenizer", tmp_path / "w" / "tokenizer", "--quick", "--work", tmp_path / "x",
              "--out", tmp_path / "x.json", code=2)
    one_line_error(bad, "--data and --tokenizer go together")
