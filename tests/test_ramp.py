"""RAMP (GigaBrain-0.5M*, issue 15 items 3-4): advantage labels from the value world model
(``robodream relabel``) and the advantage/future-conditioned policy (condition dropout, the
cached sampler, modes efficient / standard, labels in training, old runs)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from cli_helpers import TINY_POLICY, run
from fixtures.lerobot_v30 import make_lerobot_v30_fixture
from test_policy import inputs, random_policy, tiny_cfg

from robodream.config import from_dict, to_dict
from robodream.data.windows import EpisodeTable
from robodream.errors import ConfigError, DatasetError
from robodream.policy.modeling import POSITIVE, UNKNOWN, GigaWorldPolicy
from robodream.policy.runner import PolicyRunner, resolve_mode
from robodream.policy.train import PolicyRunConfig
from robodream.rl.advantages import advantage_indicator, indicator_threshold, n_step_advantages
from robodream.rl.labels import (
    check_labelling_dataset,
    check_value_model,
    match_labels,
    read_labels,
    value_clips,
)
from robodream.world_model.configuration import WorldModelConfig
from robodream.world_model.modeling import VideoWorldModel

TINY_WM = ["--dim", "24", "--n-heads", "2", "--depth", "1", "--n-future-frames", "2", "--frame-stride", "2",
           "--window", "0,3,3", "--batch-size", "4", "--text-encoder", "", "--value-frame", "state_value",
           "--action-drop-prob", "0.3"]
RAMP = ["--advantage-conditioning", "--future-conditioning"]
NEW_POLICY_NAMES = ("indicator_embedding", "z_in", "pos_z", "z_null")


def one_line_error(res, *needles: str) -> None:
    err = " ".join(res.output.split())
    assert err.startswith("error:") and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """3 collected reach episodes (32 px, next.reward), a tokenizer, a tiny value world model trained with
    action dropout, its labels, and a policy conditioned on them."""
    w = tmp_path_factory.mktemp("ramp")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 2, "--batch-size", 8,
        "--channels", "8,16,32")
    run("train", "world-model", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "wm", "--steps", 2, *TINY_WM)
    run("relabel", "--data", w / "ds", "--world-model", w / "wm", "--out", w / "labels.safetensors",
        "--value-steps", 2, "--batch", 64)
    run("train", "policy", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "pol", "--steps", 3,
        "--labels", w / "labels.safetensors", *RAMP, *TINY_POLICY)
    return w


# ----------------------------------------------------------------------------- labels (item 3)
def test_indicator_on_a_five_step_episode():
    """The advantages of tests/test_rl_rewards.py's hand-made episode, thresholded for 40% positive."""
    r = np.array([-1, -1, -1, 0, 0], np.float32)
    a = n_step_advantages(r, np.array([-2.0, -2.0, -1.0, -0.5, 0.0]), n=2, gamma=0.5)  # 0.25 0.375 0 0.5 0
    eps = indicator_threshold(a, 0.4)  # the 0.6 quantile of [0, 0, 0.25, 0.375, 0.5]: 0.25 + 0.4 * 0.125
    assert eps == pytest.approx(0.3)
    np.testing.assert_array_equal(advantage_indicator(a, eps), [False, True, False, True, False])


def test_value_clips_clamp_before_the_episode_start():
    """V(s_t) is the clip anchored at t - n (n = chunk_steps = 4 here): for t = 1 its context is frame 0
    and the steps before step 0 are zero normalised actions (the world model's padding); for t = 5 all
    is real."""
    cfg = WorldModelConfig(n_context_frames=1, n_future_frames=2, frame_stride=2, window=(0, 3, 3))
    assert cfg.chunk_steps == 4 and cfg.frame_offsets == [0, 2, 4]
    model = SimpleNamespace(cfg=cfg, normalize_action=lambda a: 10 * a)
    T = 7
    lat = torch.arange(T, dtype=torch.float32).view(T, 1, 1, 1, 1).expand(T, 2, 1, 2, 2)
    act = torch.arange(1, T + 1, dtype=torch.float32).view(T, 1)  # a_k = k + 1
    table = EpisodeTable.from_episodes([{"latents": lat, "state": torch.zeros(T, 0), "action": act, "task_index": 0}])
    ctx, acts = value_clips(model, table, torch.tensor([1, 5]), "cpu")
    assert ctx.shape == (2, 1, 2, 1, 2, 2) and acts.shape == (2, 2, 2, 1)
    assert ctx[0].unique().tolist() == [0.0] and ctx[1].unique().tolist() == [1.0]  # frames 0 (clamped) and 1
    torch.testing.assert_close(acts[0].flatten(), torch.tensor([0.0, 0.0, 0.0, 10.0]))  # steps -3 -2 -1 | 0
    torch.testing.assert_close(acts[1].flatten(), torch.tensor([20.0, 30.0, 40.0, 50.0]))  # steps 1 .. 4


def test_relabel_file(work):
    """Shapes and dtypes per dataset frame, the advantages are n-step TD of the recorded rewards and the
    stored values, the indicator is A > eps with eps the stated fraction's quantile, and it reruns
    bit-identically from its seed."""
    from robodream.data.lerobot import LeRobotDataset

    meta, t = read_labels(work / "labels.safetensors")
    ds = LeRobotDataset(work / "ds")
    T = ds.num_frames
    assert meta["datasets"][0]["root"] == str((work / "ds").resolve()) and meta["datasets"][0]["num_frames"] == T
    assert meta["world_model"]["run"] == str((work / "wm").resolve()) and len(meta["world_model"]["sha256"]) == 64
    assert meta["n"] == 4 and meta["gamma"] == 0.99 and meta["positive_fraction"] == 0.3 and meta["value_steps"] == 2
    assert t["dataset0.indicator"].shape == (T,) and t["dataset0.indicator"].dtype == torch.uint8
    assert t["dataset0.advantage"].dtype == t["dataset0.value"].dtype == torch.float32
    assert t["dataset0.z"].shape == (T, 2, 8, 4, 4) and t["dataset0.z"].dtype == torch.float16
    assert torch.isfinite(t["dataset0.z"].float()).all()
    v, a = t["dataset0.value"].double().numpy(), t["dataset0.advantage"].double().numpy()
    s0 = 0
    for i in range(ds.num_episodes):
        r = np.asarray(ds.episode(i).extra["next.reward"], np.float64).reshape(-1)
        s1 = s0 + len(r)
        np.testing.assert_allclose(a[s0:s1], n_step_advantages(r, v[s0:s1], 4, 0.99), rtol=1e-5, atol=1e-4)
        s0 = s1
    eps = meta["eps"]
    assert eps == pytest.approx(indicator_threshold(a, 0.3), abs=1e-4)
    np.testing.assert_array_equal(t["dataset0.indicator"].numpy(), (a > eps).astype(np.uint8))
    frac = t["dataset0.indicator"].float().mean().item()
    assert abs(frac - 0.3) <= 1 / T and meta["achieved_positive_fraction"] == pytest.approx(frac)
    res = run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", work / "labels.safetensors",
              "--value-steps", 2, code=2)
    one_line_error(res, "already exists", "--overwrite")
    run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", work / "again.safetensors",
        "--value-steps", 2, "--batch", 64)
    _, again = read_labels(work / "again.safetensors")
    assert again.keys() == t.keys() and all(torch.equal(again[k], t[k]) for k in t)


def test_relabel_without_z_keeps_the_values(work, tmp_path):
    """``--no-z`` (RECAP's and AWR's labels) writes the same values, advantages and indicator as the
    full file from the same seed, and no z; an indicator-only policy trains on it, a future-conditioned
    one refuses it in one line."""
    run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", tmp_path / "noz.safetensors",
        "--value-steps", 2, "--batch", 64, "--no-z")
    meta, t = read_labels(tmp_path / "noz.safetensors")
    _, full = read_labels(work / "labels.safetensors")
    assert meta["z_steps"] == 0 and "dataset0.z" not in t and set(full) - set(t) == {"dataset0.z"}
    assert all(torch.equal(t[k], full[k]) for k in t)
    base = ["train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--steps", 1, *TINY_POLICY,
            "--labels", tmp_path / "noz.safetensors"]
    one_line_error(run(*base, "--out", tmp_path / "p", *RAMP, code=2), "no future latents z", "--no-z")
    assert not (tmp_path / "p").exists()
    run(*base, "--out", tmp_path / "recap", "--advantage-conditioning")
    assert (tmp_path / "recap" / "model.safetensors").is_file()


def test_relocated_labels_match_the_copied_datasets(work, tmp_path):
    """A labels file moved with its dataset and world model (a loop copying a sibling's round 1):
    the roots and the world model's run point at the copies, the copies match it
    (``match_labels``), the original no longer does, and without ``z`` it is the file a ``--no-z``
    relabel writes, tensor for tensor."""
    import shutil

    from robodream.data.lerobot import LeRobotDataset
    from robodream.rl.labels import relocate_labels

    shutil.copytree(work / "ds", tmp_path / "copy" / "ds")
    meta = relocate_labels(work / "labels.safetensors", tmp_path / "moved.safetensors", {str(work): str(tmp_path / "copy")},
                           drop_z=True)
    assert meta["datasets"][0]["root"] == str((tmp_path / "copy" / "ds").resolve()) and meta["z_steps"] == 0
    assert meta["world_model"]["run"] == str((tmp_path / "copy" / "wm").resolve())
    assert meta["relocated_from"] == str((work / "labels.safetensors").resolve())
    labels, _ = match_labels([tmp_path / "moved.safetensors"], [LeRobotDataset(tmp_path / "copy" / "ds")])
    assert labels[0].z is None
    with pytest.raises(DatasetError, match="not labelled"):
        match_labels([tmp_path / "moved.safetensors"], [LeRobotDataset(work / "ds")])
    run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", tmp_path / "noz.safetensors",
        "--value-steps", 2, "--batch", 64, "--no-z")
    _, noz = read_labels(tmp_path / "noz.safetensors")
    _, moved = read_labels(tmp_path / "moved.safetensors")
    assert moved.keys() == noz.keys() and all(torch.equal(moved[k], noz[k]) for k in noz)
    kept = relocate_labels(work / "labels.safetensors", tmp_path / "z.safetensors", {})
    assert kept["z_steps"] == 1 and kept["datasets"][0]["root"] == str((work / "ds").resolve())


def test_relabel_resumes_after_a_kill(work, tmp_path, monkeypatch):
    """Killed after its first dataset, relabel keeps that dataset's predictions; the rerun predicts only
    the second and writes the file an uninterrupted run writes, then drops the partial directory."""
    import shutil

    import robodream.rl.labels as labels_mod

    shutil.copytree(work / "ds", tmp_path / "ds2")
    args = dict(value_steps=2, seed=5)
    full = labels_mod.relabel([work / "ds", tmp_path / "ds2"], work / "wm", tmp_path / "full.safetensors", **args)
    predict, calls = labels_mod._predict_dataset, []

    def killed_at_second(ds, *a):
        calls.append(Path(ds.root).name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return predict(ds, *a)

    monkeypatch.setattr(labels_mod, "_predict_dataset", killed_at_second)
    with pytest.raises(KeyboardInterrupt):
        labels_mod.relabel([work / "ds", tmp_path / "ds2"], work / "wm", tmp_path / "r.safetensors", **args)
    assert not (tmp_path / "r.safetensors").exists()
    assert [p.name for p in labels_mod.partial_dir(tmp_path / "r.safetensors").iterdir()] == ["dataset0.safetensors"]
    monkeypatch.setattr(labels_mod, "_predict_dataset", lambda ds, *a: (calls.append(Path(ds.root).name), predict(ds, *a))[1])
    again = labels_mod.relabel([work / "ds", tmp_path / "ds2"], work / "wm", tmp_path / "r.safetensors", **args)
    assert calls == ["ds", "ds2", "ds2"] and again["eps"] == full["eps"]
    assert not labels_mod.partial_dir(tmp_path / "r.safetensors").exists()
    _, a = read_labels(tmp_path / "r.safetensors")
    _, b = read_labels(tmp_path / "full.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert labels_mod.read_labels(tmp_path / "r.safetensors")[0]["precision"] in ("bf16", "fp32")  # auto: the host's
    _, other = read_labels(work / "labels.safetensors")  # another seed: other noise, other values
    assert not torch.equal(a["dataset0.value"], other["dataset0.value"]) or not torch.equal(a["dataset0.z"], other["dataset0.z"])


def test_relabel_errors(work, tmp_path):
    wm = VideoWorldModel(WorldModelConfig(dim=24, n_heads=2, depth=1, latent_size=4, n_future_frames=2,
                                          window=(0, 3, 3), text_encoder=""))
    with pytest.raises(ConfigError, match="no value frame"):
        check_value_model(wm, "RUN")
    ds = SimpleNamespace(root="D", features={"next.reward": {}}, cameras=["front"], action_dim=4, image_size=(32, 32))
    with pytest.raises(DatasetError, match="camera"):  # the world model's cameras are corner and behindGripper
        check_labelling_dataset(ds, SimpleNamespace(cfg=wm.cfg))
    make_lerobot_v30_fixture(tmp_path / "norew", image_size=(32, 32), lengths=(6, 5))
    res = run("relabel", "--data", tmp_path / "norew", "--world-model", work / "wm", "--out", tmp_path / "x", code=2)
    one_line_error(res, "next.reward")
    res = run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", tmp_path / "x",
              "--positive-fraction", 1.0, code=2)
    one_line_error(res, "--positive-fraction")
    res = run("relabel", "--data", work / "ds", "--world-model", work / "wm", "--out", tmp_path / "x",
              "--precision", "fp16", code=2)
    one_line_error(res, "--precision")
    res = run("relabel", "--data", work / "ds", "--world-model", work / "tok", "--out", tmp_path / "x", code=2)
    one_line_error(res, "image_tokenizer")  # not a world-model run
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the policy (item 4)
def ramp_cfg(**kw):
    return tiny_cfg(advantage_conditioning=True, future_conditioning=True, **kw)


def z_of(cfg, B: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, len(cfg.cameras), cfg.latent_channels, cfg.latent_size, cfg.latent_size, generator=g)


def test_condition_dropout_rates():
    """In training, I and z are each dropped per sample with p = 0.2, independently; a dropped I is
    the "unknown" row and dropped z tokens are the null token; eval mode drops nothing."""
    cfg = ramp_cfg(video_stride=0, depth=1)
    m = random_policy(cfg).train()
    B = 10_000
    state, ref, task, actions, _ = inputs(cfg, B=3)
    rep = lambda x: x.repeat_interleave(-(-B // 3), 0)[:B]  # noqa: E731
    state, ref, task, actions = rep(state), rep(ref), rep(task), rep(actions)
    indicator = torch.randint(0, 2, (B,), generator=torch.Generator().manual_seed(0))
    rows, prefixes = [], []
    m.indicator_embedding.register_forward_hook(lambda mod, inp, out: rows.append(inp[0]))
    embed = m._embed_prefix_with_maps  # the training path's prefix embedding: catch its z tokens
    m._embed_prefix_with_maps = lambda *a, **k: prefixes.append(embed(*a, **k)) or prefixes[-1]
    with torch.no_grad():
        _, logs = m(state, ref, actions, task, indicator=indicator, z_latents=z_of(cfg, B),
                    generator=torch.Generator().manual_seed(1))
    drop_i = rows[0] == UNKNOWN
    z_tokens = prefixes[0][0][:, -cfg.n_z_tokens:]  # (B, Z, D), the prefix's last tokens
    drop_z = (z_tokens - (m.z_null + m.pos_z)).abs().amax(dim=(1, 2)) == 0
    assert abs(drop_i.float().mean().item() - 0.2) < 0.02 and abs(drop_z.float().mean().item() - 0.2) < 0.02
    assert abs((drop_i & drop_z).float().mean().item() - 0.04) < 0.01  # independent draws
    assert logs["indicator_dropped"] == pytest.approx(drop_i.float().mean().item())
    assert logs["z_dropped"] == pytest.approx(drop_z.float().mean().item())
    assert torch.equal(rows[0][~drop_i], indicator[~drop_i])  # the others keep their label
    rows.clear()
    with torch.no_grad():
        _, logs = m.eval()(state[:8], ref[:8], actions[:8], task[:8], indicator=indicator[:8], z_latents=z_of(cfg, 8))
    assert torch.equal(rows[0], indicator[:8]) and "indicator_dropped" not in logs
    with pytest.raises(ValueError, match="indicator"):
        m(state[:2], ref[:2], actions[:2], task[:2], z_latents=z_of(cfg, 2))
    with pytest.raises(ValueError, match="z_latents"):
        m(state[:2], ref[:2], actions[:2], task[:2], indicator=indicator[:2])


@pytest.mark.parametrize("expert", [0, 16])
@pytest.mark.parametrize("B", [1, 3])
def test_conditioned_fast_sampler_equals_reference(expert, B):
    """Both RAMP modes (z given: standard; None: efficient) with I = 1: the cached sampler equals the
    plain one (action-only and with-video), and z tokens are in the prefix (the action-only path
    caches them)."""
    cfg = ramp_cfg(action_expert_dim=expert)
    assert cfg.n_prefix_tokens == tiny_cfg().n_prefix_tokens + cfg.n_z_tokens and cfg.n_z_tokens == 8
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg, B=B)
    noise, fn = torch.randn(B, cfg.horizon, cfg.action_dim), torch.randn(B, cfg.n_future_tokens, cfg.patch_dim)
    ind = torch.full((B,), POSITIVE)
    for z in (z_of(cfg, B), None):
        for mode in ("action_only", "with_video"):
            fast = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, indicator=ind, z_latents=z)
            slow = m.sample(state, ref, task, mode=mode, noise=noise, future_noise=fn, indicator=ind, z_latents=z,
                            use_cache=False)
            torch.testing.assert_close(fast.actions, slow.actions, rtol=1e-5, atol=1e-5)
    joint = random_policy(ramp_cfg(action_expert_dim=expert, mask="full"))
    a = joint.sample(state, ref, task, mode="joint", noise=noise, future_noise=fn, indicator=ind, z_latents=z_of(cfg, B))
    b = joint.sample(state, ref, task, mode="joint", noise=noise, future_noise=fn, indicator=ind,
                     z_latents=z_of(cfg, B), use_cache=False)
    torch.testing.assert_close(a.actions, b.actions, rtol=1e-5, atol=1e-5)


def test_indicator_and_z_reach_the_actions():
    """The claim of RAMP's conditioning as a property: another indicator or another z gives another
    action chunk (same noise); no indicator is the unknown row."""
    cfg = ramp_cfg()
    m = random_policy(cfg)
    state, ref, task, _, _ = inputs(cfg)
    noise, z = torch.randn(3, cfg.horizon, cfg.action_dim), z_of(cfg, 3)

    def act(indicator, z_latents):
        return m.sample(state, ref, task, noise=noise, indicator=indicator, z_latents=z_latents).actions

    pos = act(torch.full((3,), 1), z)
    assert (pos - act(torch.full((3,), 0), z)).abs().amax() > 1e-3
    assert (pos - act(torch.full((3,), 1), None)).abs().amax() > 1e-3
    assert (pos - act(torch.full((3,), 1), z_of(cfg, 3, seed=9))).abs().amax() > 1e-3
    torch.testing.assert_close(act(None, z), act(torch.full((3,), UNKNOWN), z))


@pytest.mark.parametrize("expert,stride", [(16, 4), (0, 0)])
def test_every_parameter_gets_a_gradient(expert, stride):
    """DDP needs every parameter in the loss's graph: the null z token too (it enters through a
    per-sample selection), in a batch where nothing happens to be dropped."""
    cfg = ramp_cfg(action_expert_dim=expert, video_stride=stride, condition_dropout=0.0)
    m = random_policy(cfg).train()
    state, ref, task, actions, fut = inputs(cfg)
    loss, _ = m(state, ref, actions, task, future_latents=fut if stride else None, indicator=torch.tensor([0, 1, 1]),
                z_latents=z_of(cfg, 3), generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert not [n for n, p in m.named_parameters() if p.grad is None]


def test_old_configs_load_unconditioned():
    """A run saved before these fields loads as an unconditioned policy with the same parameters."""
    saved = to_dict(PolicyRunConfig())
    for key in ("advantage_conditioning", "future_conditioning", "condition_dropout"):
        del saved["model"][key]
    del saved["labels"], saved["world_model"]
    cfg = from_dict(PolicyRunConfig, saved, legacy=True)
    assert not cfg.model.advantage_conditioning and not cfg.model.future_conditioning and cfg.labels == ()
    plain, ramp = GigaWorldPolicy(tiny_cfg()), GigaWorldPolicy(ramp_cfg())
    assert not any(k.startswith(NEW_POLICY_NAMES) for k in plain.state_dict())
    assert {k for k in ramp.state_dict() if k.startswith(NEW_POLICY_NAMES)} == {
        "indicator_embedding.weight", "z_in.weight", "z_in.bias", "pos_z", "z_null"}
    with pytest.raises(ConfigError, match="condition_dropout"):
        ramp_cfg(condition_dropout=1.0)


def test_modes():
    plain, adv, fut = tiny_cfg(), tiny_cfg(advantage_conditioning=True), ramp_cfg()
    assert resolve_mode(adv, None) == "efficient" and resolve_mode(fut, None) == "standard"
    assert resolve_mode(fut, "efficient") == "efficient" and resolve_mode(plain, None) == "action_only"
    for cfg, mode, msg in ((adv, "standard", "not future-conditioned"), (fut, "with_video", "efficient or standard"),
                           (plain, "standard", "RAMP-conditioned")):
        with pytest.raises(ConfigError, match=msg):
            resolve_mode(cfg, mode)
    with pytest.raises(ConfigError, match="world model"):
        PolicyRunner(random_policy(fut), None, "a", mode="standard")


def test_windows_carry_the_labels():
    T = 5
    ep = {"latents": torch.zeros(T, 2, 4, 2, 2), "state": torch.zeros(T, 3), "action": torch.zeros(T, 4),
          "task_index": 0, "indicator": torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8),
          "z": torch.arange(T, dtype=torch.float16).view(T, 1, 1, 1, 1).expand(T, 2, 4, 2, 2)}
    w = EpisodeTable.from_episodes([ep, ep]).windows(torch.tensor([1, 8]), 4, [])
    assert w["indicator"].tolist() == [1, 0] and w["indicator"].dtype == torch.long
    assert w["z_latents"].dtype == torch.float32 and w["z_latents"][:, 0, 0, 0, 0].tolist() == [1.0, 3.0]


# ----------------------------------------------------------------------------- training and evaluation
def test_training_records_the_labels(work):
    cfg = json.loads((work / "pol" / "config.json").read_text())
    assert cfg["model"]["advantage_conditioning"] and cfg["model"]["future_conditioning"]
    assert cfg["world_model"] == str((work / "wm").resolve()) and cfg["labels"] == [str(work / "labels.safetensors")]
    meta = json.loads((work / "pol" / "meta.json").read_text())
    assert meta["labels"]["per_file"][0]["positive_fraction"] == 0.3 and meta["labels"]["world_model_sha256"]
    rows = [json.loads(ln) for ln in (work / "pol" / "metrics.jsonl").read_text().splitlines()]
    assert "indicator_dropped" in rows[-1] and "z_dropped" in rows[-1]


def test_labels_required_and_stale(work, tmp_path):
    base = ["train", "policy", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "p",
            "--steps", 1, *TINY_POLICY]
    one_line_error(run(*base, "--advantage-conditioning", code=2), "--labels", "robodream relabel")
    one_line_error(run(*base, "--labels", work / "labels.safetensors", code=2), "RAMP-conditioned")
    assert not (tmp_path / "p").exists()
    from safetensors.torch import save_file

    from robodream.data.lerobot import LeRobotDataset

    meta, tensors = read_labels(work / "labels.safetensors")
    meta["datasets"][0]["episode_lengths"][0] -= 1  # made before the dataset changed
    save_file(tensors, str(tmp_path / "stale.safetensors"), metadata={"robodream": json.dumps(meta)})
    ds = LeRobotDataset(work / "ds")
    with pytest.raises(DatasetError, match="stale labels"):
        match_labels([tmp_path / "stale.safetensors"], [ds])
    meta["datasets"][0]["root"] = "/elsewhere"
    save_file(tensors, str(tmp_path / "other.safetensors"), metadata={"robodream": json.dumps(meta)})
    one_line_error(run(*base, "--labels", tmp_path / "other.safetensors", *RAMP, code=2), "is not labelled")
    labels, info = match_labels([work / "labels.safetensors"], [ds])
    assert labels[0].z.shape[0] == ds.num_frames and info["world_model"] == str((work / "wm").resolve())


def test_eval_policy_standard_and_efficient(work):
    """Both RAMP modes end to end; standard mode's chunk latency includes the world-model step."""
    r = {}
    for mode in ("standard", "efficient"):
        run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 2, "--max-steps", 8,
            "--videos", 0, "--mode", mode, "--out", work / f"ev_{mode}")
        r[mode] = json.loads((work / f"ev_{mode}" / "results.json").read_text())
        assert r[mode]["mode"] == mode and r[mode]["n_episodes"] == 2 and r[mode]["latency_ms_p50"] > 0
    assert r["standard"]["world_model_run"] == str((work / "wm").resolve()) and r["efficient"]["world_model_run"] is None
    assert "world-model z step" in r["standard"]["latency_includes"]
    assert "world-model" not in r["efficient"]["latency_includes"]
    res = run("eval", "policy", "--policy", work / "pol", "--task", "reach-v3", "--episodes", 1, "--mode",
              "action_only", "--out", work / "ev_bad", code=2)
    one_line_error(res, "efficient or standard")
