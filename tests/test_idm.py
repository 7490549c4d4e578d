"""Inverse-dynamics model: it recovers actions from latent motion, labels whole videos chunk by
chunk with the state known at frame 0 only, and its CLI verbs follow the run conventions
(resumable runs, held-out episodes, one-line errors that write nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_helpers import one_line_error, run

from robodream.data.windows import EpisodeTable
from robodream.idm.modeling import IDMConfig, InverseDynamicsModel, label, label_video
from robodream.idm.train import clip_batch

TINY_IDM = ["--dim", "32", "--depth", "1", "--n-heads", "2", "--horizon", "4", "--batch-size", "8"]


# ----------------------------------------------------------------------------- model
def synthetic_episode(gen: torch.Generator, T: int = 24) -> dict:
    """Latents that move by half the action: lat[t + 1] = lat[t] + 0.5 a_t on channel c = action dim c.

    latents (T, 1, 2, 2, 2), state (T, 2) (a corner of the latent grid), action (T, 2) in [-1, 1].
    """
    a = torch.rand(T, 2, generator=gen) * 2 - 1
    lat = torch.zeros(T, 1, 2, 2, 2)
    lat[0] = torch.randn(1, 2, 2, 2, generator=gen)
    for t in range(T - 1):
        lat[t + 1] = lat[t] + 0.5 * a[t].view(1, 2, 1, 1)
    return {"latents": lat, "state": lat[:, 0, :, 0, 0].clone(), "action": a, "task_index": 0}


def tiny_idm(**kw) -> InverseDynamicsModel:
    cfg = IDMConfig(state_dim=2, action_dim=2, cameras=("c",), latent_channels=2, latent_size=2, patch_size=2,
                    horizon=2, dim=32, depth=2, n_heads=2, **kw)
    return InverseDynamicsModel(cfg)


def test_idm_recovers_actions_from_latent_motion(one_thread):
    table = EpisodeTable.from_episodes([synthetic_episode(torch.Generator().manual_seed(i)) for i in range(64)])
    torch.manual_seed(0)
    model = tiny_idm()
    model.set_normalization(table.normalization())
    test = synthetic_episode(torch.Generator().manual_seed(99))

    def label_mse() -> float:  # the last action leads to no frame of the video: not observable
        model.eval()
        pred = label(model, test["latents"], test["state"][0])
        return float((pred[:-1] - test["action"][:-1]).pow(2).mean())

    untrained = label_mse()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(600):
        gen = torch.Generator().manual_seed(step)
        loss, _ = model.loss(**clip_batch(model, table, table.sample_anchors(64, gen), "cpu"), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained = label_mse()
    assert untrained > 0.3 and trained < 0.1, (untrained, trained)  # 64 episodes: it must generalise


def test_label_shapes_and_state_seen_only_by_the_first_window():
    torch.manual_seed(0)
    model = tiny_idm().eval()
    with torch.no_grad():  # leave the zero-initialised gates and read-out, so every input shows in the output
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    ep = synthetic_episode(torch.Generator().manual_seed(0), T=7)
    pred = label(model, ep["latents"], ep["state"][0])
    assert pred.shape == (7, 2) and pred.dtype == torch.float32
    other = label(model, ep["latents"], ep["state"][0] + 5.0)
    H = model.cfg.horizon
    assert not torch.allclose(pred[:H], other[:H]) and torch.equal(pred[H:], other[H:])
    assert torch.equal(label(model, ep["latents"], None)[H:], pred[H:])
    one = label(model, ep["latents"][:1], None)  # a one-frame video: one padded window
    assert one.shape == (1, 2)
    with pytest.raises(ValueError, match="latents must be"):
        label(model, ep["latents"][:, :, :1], None)


def test_config_errors():
    from robodream.errors import ConfigError

    with pytest.raises(ConfigError, match="multiple of frame_stride"):
        IDMConfig(horizon=8, frame_stride=3)
    with pytest.raises(ConfigError, match="loss"):
        IDMConfig(loss="huber")
    assert IDMConfig(horizon=8, frame_stride=8).frame_offsets == [0, 8]  # DreamGen's two-frame IDM


# ----------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    w = tmp_path_factory.mktemp("idm")
    run("collect", "--task", "reach-v3", "--episodes", 3, "--out", w / "ds", "--image-size", 32)
    run("train", "tokenizer", "--data", w / "ds", "--out", w / "tok", "--steps", 4, "--batch-size", 8)
    run("train", "idm", "--data", w / "ds", "--tokenizer", w / "tok", "--out", w / "idm", "--steps", 4,
        "--checkpoint-every", 2, *TINY_IDM)
    return w


def test_train_idm_run(work):
    cfg = json.loads((work / "idm" / "config.json").read_text())
    assert cfg["model_type"] == "inverse_dynamics" and cfg["model"]["horizon"] == 4
    assert cfg["train_seeds"] == {"reach-v3": [0, 1, 2]} and cfg["model"]["cameras"] == ["corner", "behindGripper"]
    res = json.loads((work / "idm" / "results.json").read_text())
    for key in ("action_mse", "action_mse_no_state", "mean_action_mse", "loss"):
        assert res[key] >= 0, key
    assert res["n_heldout_frames"] > 0 and res["steps"] == 4
    meta = json.loads((work / "idm" / "meta.json").read_text())
    assert meta["n_train_episodes"] == 2 and meta["n_heldout_episodes"] == 1
    from robodream.train.run_dir import load_run

    idm, tok, _ = load_run(work / "idm")
    assert isinstance(idm, InverseDynamicsModel) and (work / "idm" / "tokenizer" / "model.safetensors").is_file()
    # resumable: more steps continue the run; another model is refused and writes nothing
    run("train", "idm", "--out", work / "idm", "--resume", "--steps", 6)
    assert json.loads((work / "idm" / "results.json").read_text())["steps"] == 6
    before = (work / "idm" / "config.json").read_bytes()
    res = run("train", "idm", "--out", work / "idm", "--resume", "--steps", 8, "--dim", 64, code=2)
    one_line_error(res, "model.dim")
    assert (work / "idm" / "config.json").read_bytes() == before


def test_eval_idm_replays_held_out_episodes(work):
    res = run("eval", "idm", "--idm", work / "idm", "--data", work / "ds", "--task", "reach-v3", "--episodes", 5,
              "--out", work / "ev")
    r = json.loads((work / "ev" / "results.json").read_text())
    assert r["n_episodes"] == 1 and r["episodes"][0]["episode"] == 2 and r["episodes"][0]["seed"] == 2
    assert r["episode_source"] == "held-out split of the IDM run"
    assert len(r["action_mse_per_dim"]) == 4 and len(r["action_mae_per_dim"]) == 4 and r["mean_action_mse"] > 0
    true = r["replay"]["true_actions"]
    assert true["success_rate"] == 1.0 and true["n_episodes"] == 1 and len(true["ci95"]) == 2
    assert r["replay"]["max_state_error_true"] < 1e-6  # the simulator replays the expert exactly
    assert r["episodes"][0]["end_state_error_idm"] >= 0 and r["replay"]["mean_end_state_error_idm"] >= 0
    assert 0 <= r["replay"]["idm_actions"]["success_rate"] <= 1 and "IDM on 1 episodes" in res.output
    one_line_error(run("eval", "idm", "--idm", work / "idm", "--data", work / "ds", "--task", "reach-v3",
                       "--out", work / "ev", code=2), "--overwrite")


def test_eval_idm_bad_input_writes_nothing(work, tmp_path):
    res = run("eval", "idm", "--idm", work / "tok", "--data", work / "ds", "--task", "reach-v3",
              "--out", tmp_path / "e", code=2)
    one_line_error(res, "image_tokenizer", "inverse_dynamics")
    res = run("eval", "idm", "--idm", work / "idm", "--data", work / "ds", "--task", "push-v3",
              "--out", tmp_path / "e", code=2)
    one_line_error(res, "reach-v3", "push-v3")
    res = run("train", "idm", "--data", work / "ds", "--tokenizer", work / "idm", "--out", tmp_path / "p", code=2)
    one_line_error(res, "inverse_dynamics", "image_tokenizer")
    assert not (tmp_path / "e").exists() and not (tmp_path / "p").exists()


def test_eval_idm_on_a_dataset_it_never_saw(work, tmp_path):
    # the run's first episode re-collected under an appearance shift: the same initial scene, new pixels
    run("collect", "--task", "reach-v3", "--episodes", 1, "--out", tmp_path / "shifted", "--image-size", 32,
        "--appearance", "dark-wood")
    run("eval", "idm", "--idm", work / "idm", "--data", tmp_path / "shifted", "--task", "reach-v3", "--episodes", 3,
        "--out", tmp_path / "ev")
    r = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert r["episode_source"] == "a dataset the IDM run did not train on" and r["n_episodes"] == 1
    assert r["seeds_also_in_run_datasets"] == [0] and r["replay"]["true_actions"]["success_rate"] == 1.0


# ----------------------------------------------------------------------------- labeller heads and dreams
def test_state_and_success_heads_learn_and_label_a_video(one_thread):
    """The state head predicts the state after each action and the success head next.success;
    label_video gives state[0] = the given state and later rows from the windows."""
    gens = [torch.Generator().manual_seed(i) for i in range(48)]
    eps = []
    for g in gens:
        e = synthetic_episode(g)
        e["success"] = e["state"][:, 0] > 0.0  # "done" when the first state number is positive: visible in the latents
        e["success"] = torch.cat([e["success"][1:], e["success"][-1:]])  # next.success: after the action
        eps.append(e)
    table = EpisodeTable.from_episodes(eps)
    assert table.success is not None and table.success.dtype == torch.bool
    torch.manual_seed(0)
    model = tiny_idm()
    model.set_normalization(table.normalization())
    b = clip_batch(model, table, torch.arange(len(table)), "cpu")
    assert b["next_state"].shape == (len(table), 2, 2) and b["success"].shape == (len(table), 2)
    # the next state of the anchor's first action is the state of the next frame
    assert torch.allclose(model.unnormalize_state(b["next_state"][0, 0]), table.state[1], atol=1e-5)
    assert bool(b["next_state_is_pad"][table.episode_end - 1][:, 0].all())  # the last frame has no next frame
    test = synthetic_episode(torch.Generator().manual_seed(99))

    def state_error() -> float:
        model.eval()
        return float((label_video(model, test["latents"], test["state"][0])["state"][1:] - test["state"][1:])
                     .pow(2).mean())

    untrained = state_error()  # the zero-initialised head predicts the mean state
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(400):
        gen = torch.Generator().manual_seed(step)
        loss, parts = model.loss(**clip_batch(model, table, table.sample_anchors(64, gen), "cpu"), generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert {"action_loss", "state_loss", "success_loss"} <= set(parts)
    model.eval()
    lab = label_video(model, test["latents"], test["state"][0])
    assert lab["action"].shape == (24, 2) and lab["state"].shape == (24, 2) and lab["success_prob"].shape == (24,)
    assert torch.equal(lab["state"][0], test["state"][0])
    assert state_error() < 0.15 * untrained, (state_error(), untrained)
    truth = torch.cat([test["state"][1:, 0] > 0, test["state"][-1:, 0] > 0])
    assert float(((lab["success_prob"] > 0.5) == truth)[:-1].float().mean()) > 0.85


def test_runs_saved_before_the_heads_load_without_them():
    from robodream.config import from_dict

    cfg = from_dict(IDMConfig, {"horizon": 4}, legacy=True)
    assert not cfg.predict_state and not cfg.predict_success and cfg.out_dim == cfg.action_dim
    assert IDMConfig().out_dim == IDMConfig().action_dim + IDMConfig().state_dim + 1


def test_generate_dreams_writes_a_labelled_synthetic_dataset(work, tmp_path):
    """generate --kind dream: action-free world-model rollouts from new seeds, labelled by the IDM,
    written with provenance; train policy accepts them; runs that cannot dream are refused."""
    from robodream.data.lerobot import LeRobotDataset

    wm_args = ["--dim", "24", "--n-heads", "2", "--depth", "1", "--n-future-frames", "4", "--window", "0,3,3",
               "--batch-size", "4", "--steps", 2]
    run("train", "world-model", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "wm",
        "--frame-stride", 1, "--action-drop-prob", 0.3, *wm_args)
    run("generate", "--kind", "dream", "--world-model", tmp_path / "wm", "--idm", work / "idm", "--task", "reach-v3",
        "--episodes", 3, "--steps", 10, "--filter", "none", "--sample-steps", 2, "--out", tmp_path / "d")
    ds = LeRobotDataset(tmp_path / "d")
    assert ds.num_episodes == 3 and list(ds.episode_lengths) == [10, 10, 10]
    assert list(ds.cameras) == ["corner", "behindGripper"]
    prov = json.loads((tmp_path / "d" / "meta" / "robodream.json").read_text())
    assert prov["synthetic"] == "dream" and prov["seeds"] == [3_000_000, 3_000_001, 3_000_002]
    assert prov["filter"]["name"] == "none" and prov["models"]["idm"] == str(work / "idm")
    from robodream.envs.meta_world import EnvConfig, MetaWorldEnv

    env = MetaWorldEnv(EnvConfig(task="reach-v3", image_size=32))
    try:  # each dream starts from the rendered initial state of its seed
        first = env.reset(3_000_001)
    finally:
        env.close()
    np.testing.assert_allclose(ds.episode(1).state[0], first.state, atol=1e-6)
    run("train", "policy", "--data", work / "ds", "--data", tmp_path / "d", "--data-weight", "1,1", "--tokenizer",
        work / "tok", "--out", tmp_path / "pol", "--steps", 2, "--dim", 32, "--depth", 1, "--horizon", 8,
        "--n-action-steps", 4, "--video-stride", 4, "--action-expert-dim", 16, "--batch-size", 8)
    # refused: a synthetic dataset for the IDM, a world model that predicts every other step, bad options
    one_line_error(run("train", "idm", "--data", tmp_path / "d", "--tokenizer", work / "tok", "--out",
                       tmp_path / "i2", code=2), "synthetic (dream", "an IDM needs real demonstrations")
    one_line_error(run("train", "world-model", "--data", tmp_path / "d", "--tokenizer", work / "tok", "--out",
                       tmp_path / "i2", *wm_args, code=2), "synthetic (dream", "a world model needs real")
    run("train", "world-model", "--data", work / "ds", "--tokenizer", work / "tok", "--out", tmp_path / "wm2",
        "--frame-stride", 2, "--action-drop-prob", 0.3, *wm_args)
    one_line_error(run("generate", "--kind", "dream", "--world-model", tmp_path / "wm2", "--idm", work / "idm",
                       "--task", "reach-v3", "--out", tmp_path / "d2", code=2), "frame-stride 1")
    one_line_error(run("generate", "--kind", "dream", "--world-model", tmp_path / "wm", "--idm", work / "idm",
                       "--task", "reach-v3", "--seed-start", 0, "--out", tmp_path / "d2", code=2), "training seeds")
    one_line_error(run("generate", "--kind", "dream", "--world-model", tmp_path / "wm", "--task", "reach-v3",
                       "--out", tmp_path / "d2", code=2), "--idm")
    one_line_error(run("generate", "--kind", "dreams", "--out", tmp_path / "d2", code=2), "unknown kind")
    assert not (tmp_path / "d2").exists() and not (tmp_path / "i2").exists()
