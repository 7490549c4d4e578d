"""The RAMP loop and its baselines (issue 15, items 6-7): AWR's weights and weighted loss, one
evaluation path for the four methods, one quick round of the real loop that resumes after a kill
at each stage, and ``bench rl --quick`` on it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from cli_helpers import run
from test_policy import inputs, random_policy, tiny_cfg
from test_ramp import one_line_error

import robodream.rl.loop as loop
from robodream.errors import ConfigError
from robodream.eval.policy_eval import DEFAULT_EVAL_SEED
from robodream.rl.labels import awr_weights
from robodream.rl.loop import METHODS, RampLoopConfig, quick_loop_config, run_ramp_loop

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
        Path(out).write_text("")

    def rollouts(pol, task, n, out, **kw):
        calls.setdefault("rollouts", []).append((str(pol), task, n, kw))
        (Path(out) / "meta").mkdir(parents=True)
        (Path(out) / "meta" / "results.json").write_text(json.dumps(
            {"n_episodes": n, "intervention_steps": 7, "seeds": [2_000_000, 2_000_000 + n - 1]}))

    def evaluate(pol, task, n, out, **kw):
        calls.setdefault("eval", []).append((Path(pol).parent.name, task, n, kw))
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
    monkeypatch.setattr(loop, "labels_meta", lambda f: {"eps": 0.1, "positive_fraction": 0.3,
                                                        "achieved_positive_fraction": 0.3})


def test_four_methods_share_one_evaluation(monkeypatch, tmp_path):
    """Every method evaluates through evaluate_policy with the same tasks, episodes, seeds and step
    limit per round; ramp in standard mode, recap efficient, the plain policies their default; the
    policies differ as the methods say, and HG-DAgger trains no world model."""
    evals, policies = {}, {}
    for m in METHODS:
        calls: dict = {}
        _fake_stages(monkeypatch, calls)
        cfg = RampLoopConfig(data=("demos",), tokenizer="tok", tasks=("reach-v3", "push-v3"), method=m, rounds=2,
                             rollouts=3, eval_episodes=4)
        s = run_ramp_loop(cfg, tmp_path / m, log=lambda *_: None)
        assert s["mean_success"] == [0.5, 0.5, 0.5] and s["rollouts"] == 2 * 2 * 3 and s["intervention_steps"] == 28
        assert (tmp_path / m / "success_curve.png").is_file() and (tmp_path / m / "round_2" / "metrics.json").is_file()
        evals[m] = calls["eval"]
        policies[m] = calls["policy"]
        assert len(calls.get("wm", [])) == (0 if m == "hgdagger" else 3)
        assert [len(p.data) for p in calls["policy"]] == [1, 3, 5]  # demos + all rollouts so far
        assert [r[0].split("/")[-2] for r in calls["rollouts"]] == ["round_0"] * 2 + ["round_1"] * 2
    same = {m: [(r, t, n, kw["seed_start"], kw["max_steps"]) for r, t, n, kw in e] for m, e in evals.items()}
    assert all(v == same["ramp"] for v in same.values())
    assert {kw["seed_start"] for _, _, _, kw in evals["awr"]} == {DEFAULT_EVAL_SEED}
    assert {m: {kw["mode"] for *_, kw in e} for m, e in evals.items()} == {
        "ramp": {"standard"}, "recap": {"efficient"}, "awr": {None}, "hgdagger": {None}}
    p = {m: v[-1] for m, v in policies.items()}
    assert (p["ramp"].model.advantage_conditioning, p["ramp"].model.future_conditioning) == (True, True)
    assert (p["recap"].model.advantage_conditioning, p["recap"].model.future_conditioning) == (True, False)
    assert not p["awr"].model.ramp_conditioned and p["awr"].advantage_weighting and p["awr"].labels
    assert not p["hgdagger"].model.ramp_conditioned and not p["hgdagger"].advantage_weighting
    assert not p["hgdagger"].labels


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
    assert set(r1) == {"round", "method", "timings_s", "rollouts", "labels", "per_task", "mean_success"}
    assert r1["per_task"]["reach-v3"]["n_episodes"] == 2 and r1["per_task"]["reach-v3"]["mode"] == "standard"
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
    if not (loop_work / "bench" / "ramp" / "metrics.json").is_file():
        pytest.skip("the ramp loop test did not run")
    res = run("bench", "rl", "--data", loop_work / "ds", "--tokenizer", loop_work / "tok", "--out",
              tmp_path / "rl.json", "--work", loop_work / "bench", "--methods", "ramp,hgdagger", "--quick", "--max-steps", 12)
    r = json.loads((tmp_path / "rl.json").read_text())
    assert r["benchmark"] == "rl" and r["quick"] and set(r["results"]) == {"ramp", "hgdagger"}
    assert r["results"]["hgdagger"]["mean_success"] == s["mean_success"] and "environment" in r
    assert "mean success per round" in res.output
    bad = run("bench", "rl", "--data", loop_work / "ds", "--tokenizer", loop_work / "tok", "--out", tmp_path / "x.json",
              "--work", loop_work / "bench", "--methods", "ppo", code=2)
    one_line_error(bad, "--methods")


def test_awr_policy_trains_on_the_loops_labels(loop_work, tmp_path):
    """An advantage-weighted policy run on round 0's labels: the windows carry min(exp(A/beta), w_max)
    of the labels' advantages and training runs; a plain run refuses labels without the weighting."""
    from robodream.data.lerobot import LeRobotDataset
    from robodream.policy.train import PolicyRunConfig, train_policy
    from robodream.rl.labels import attach_labels, match_labels, read_labels

    labels = loop_work / "bench" / "ramp" / "round_0" / "labels.safetensors"
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
