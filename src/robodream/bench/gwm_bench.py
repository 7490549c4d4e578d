"""``robodream bench gwm``: the Gaussian world model measured end to end, in resumable stages.

Stages (each skipped when its output is complete; ``work/timings.json`` adds up their wall time):

1. ``collect``: expert demonstrations of every task, rendered by the input cameras and the novel
   camera, with depth.
2. ``gaussians``: per-frame Gaussians of each dataset from the input cameras; their render PSNR
   from the novel camera and the time per frame.
3. ``train gwm-vae``: the set VAE on all datasets' Gaussians — the GWM tasks' and the imitation
   tasks' (held-out episodes: decoded PSNR).
4. ``il``: imitation with GWM features: ``il_demos`` demonstrations of each ``il_tasks`` task
   (policy cameras + the GWM's input cameras, with depth), a tokenizer on them, and two
   GigaWorld-Policies with the same data, steps and seeds — image tokens alone, and image
   tokens + the frozen set VAE's latents (``--gwm-vae``) — each evaluated in closed loop
   (``il_eval_episodes`` per task, unseen seeds) at the default camera and under a random
   static-camera shift (seeded draws never used in training).
5. ``train gwm``: the latent dynamics.
6. ``tokenizer`` and ``train world model``: the video world model on the same episodes
   recorded again from the same seeds by the input cameras only (it never sees the novel camera).
7. ``eval gwm``: per-horizon render PSNR on held-out episodes, training cameras and novel camera,
   against copy-last and the video world model on the same rollouts.
8. ``train video dynamics``: the same latent dynamics on the tokenizer's latents of the input
   cameras (the iVideoGPT-style simulator of the ``mbpo_video`` arm).
9. ``mbrl``: MBPO on the GWM, MBPO on the video dynamics and model-free SAC, per task and seed.
"""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robodream.bench.stages import Stages
from robodream.config import to_dict
from robodream.data.collect import CollectConfig, collect
from robodream.envs.meta_world import check_task
from robodream.errors import ConfigError
from robodream.gwm.dynamics import GWMDynamicsConfig
from robodream.gwm.mbrl import ARMS, MBRLConfig
from robodream.gwm.pixel import PixelGaussianConfig
from robodream.gwm.vae import SetVAEConfig
from robodream.pipeline import BENCH_TASKS, dataset_complete, run_complete
from robodream.policy.configuration import PolicyConfig
from robodream.tokenizer.model import TokenizerConfig
from robodream.train.loop import TrainConfig
from robodream.utils.io import atomic_write_json
from robodream.utils.run import code_version, environment_info, now
from robodream.world_model.configuration import WorldModelConfig


def _train(steps: int, batch_size: int, lr: float, **kw) -> TrainConfig:
    return TrainConfig(steps=steps, batch_size=batch_size, lr=lr, val_every=0, checkpoint_every=max(1, min(250, steps)),
                       **kw)


@dataclass
class GWMBench:
    """Settings of ``bench gwm`` (``--config`` JSON overrides any field)."""

    # The MBRL tasks of the issue (dense rewards); the GWM is trained on their demonstrations.
    tasks: tuple[str, ...] = ("reach-v3", "button-press-topdown-v3", "drawer-open-v3")
    demos: int = 20  # expert episodes per task (the last 10% held out by every trainer)
    image_size: int = 64
    cameras: tuple[str, ...] = ("corner", "corner2", "corner3")  # input (training) cameras
    novel_camera: str = "corner4"  # never used to build Gaussians or to train
    workers: int = 2
    pixel: PixelGaussianConfig = field(default_factory=PixelGaussianConfig)
    vae: SetVAEConfig = field(default_factory=SetVAEConfig)
    vae_train: TrainConfig = field(default_factory=lambda: _train(2000, 8, 5e-4, weight_decay=0.01, ema_decay=0.995))
    gwm: GWMDynamicsConfig = field(default_factory=GWMDynamicsConfig)
    gwm_train: TrainConfig = field(default_factory=lambda: _train(3000, 16, 3e-4, weight_decay=0.01,
                                                                  ema_decay=0.995))
    # The video world model compared per horizon (the data engine's settings: every env step predicted).
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TrainConfig = field(default_factory=lambda: _train(1500, 64, 2e-3, min_lr_ratio=0.05,
                                                                        ema_decay=0.995))
    world_model: WorldModelConfig = field(default_factory=lambda: WorldModelConfig(frame_stride=1, n_future_frames=8))
    world_model_train: TrainConfig = field(default_factory=lambda: _train(3200, 8, 5e-4, weight_decay=0.01,
                                                                          ema_decay=0.999))
    eval_horizon: int = 16
    eval_starts: int = 2  # start frames per held-out episode
    mbrl: MBRLConfig = field(default_factory=MBRLConfig)
    mbrl_arms: tuple[str, ...] = ARMS
    mbrl_seeds: tuple[int, ...] = (0, 1, 2)
    # Imitation with GWM features (the issue: 10 demos per task on the 5 bench tasks, and under the
    # data engine's camera shift); the policy recipe is the data engine's.
    il_tasks: tuple[str, ...] = BENCH_TASKS
    il_demos: int = 10
    il_policy_cameras: tuple[str, ...] = ("corner", "behindGripper")
    il_policy: PolicyConfig = field(default_factory=PolicyConfig)
    il_policy_train: TrainConfig = field(default_factory=lambda: _train(1500, 32, 5e-4, weight_decay=0.01,
                                                                        warmup_steps=200, min_lr_ratio=0.1,
                                                                        ema_decay=0.999))
    il_gwm_tokens: int = 16  # pooled GWM tokens in the policy's prefix
    il_eval_episodes: int = 30
    il_eval_max_steps: int = 500
    camera_shift_scale: float = 1.0  # the camera-shift condition's draw width (envs.shift), as the data engine's
    eval_shift_seed: int = 7000  # the camera-shift condition's draws (never used in training)

    def __post_init__(self) -> None:
        for name in ("tasks", "cameras", "mbrl_arms", "mbrl_seeds", "il_tasks", "il_policy_cameras"):
            setattr(self, name, tuple(getattr(self, name)))
        for t in self.tasks:
            check_task(t)
        for t in self.il_tasks:
            check_task(t)
        if self.novel_camera in self.cameras:
            raise ConfigError(f"the novel camera {self.novel_camera!r} must not be an input camera")
        bad = [a for a in self.mbrl_arms if a not in ARMS]
        if bad:
            raise ConfigError(f"unknown MBRL arms {bad}; arms: {', '.join(ARMS)}")


def bench_config(overrides: dict[str, Any] | None = None, quick: bool = False) -> GWMBench:
    """The benchmark's settings: defaults, then ``--quick``'s tiny settings, then ``overrides``."""
    from robodream.config import deep_merge, from_dict

    base = to_dict(GWMBench())
    if quick:
        base = deep_merge(base, {
            "tasks": ["reach-v3"], "demos": 2, "image_size": 32, "cameras": ["corner", "corner3"],
            "pixel": {"n": 64},
            "vae": {"n_gaussians": 64, "n_latents": 16, "latent_dim": 4, "dim": 32, "heads": 2, "decoder_layers": 1,
                    "fourier_bands": 2},
            "vae_train": {"steps": 3, "batch_size": 2}, "gwm": {"dim": 32, "heads": 2, "depth": 1, "sample_steps": 2},
            "gwm_train": {"steps": 3, "batch_size": 2}, "eval_horizon": 2, "eval_starts": 1,
            "tokenizer_train": {"steps": 2, "batch_size": 8},
            "world_model": {"dim": 24, "depth": 1, "n_heads": 2, "n_future_frames": 2, "window": [0, 3, 3],
                            "text_encoder": ""},
            "world_model_train": {"steps": 1, "batch_size": 2},
            "mbrl": {"real_steps": 6, "chunk_steps": 6, "episode_steps": 6, "eval_episodes": 1, "refit_steps": 1,
                     "refit_batch": 2, "model_envs": 2, "rollout_length": 2, "model_steps": 8, "sac_net": [16],
                     "sac_batch": 4},
            "mbrl_seeds": [0],
            "il_tasks": ["reach-v3"], "il_demos": 2, "il_policy_cameras": ["corner"],
            "il_policy": {"dim": 32, "depth": 1, "horizon": 8, "n_action_steps": 4, "video_stride": 4,
                          "action_expert_dim": 16, "pixel_stem_width": 0},
            "il_policy_train": {"steps": 2, "batch_size": 4}, "il_gwm_tokens": 2, "il_eval_episodes": 1,
            "il_eval_max_steps": 4})
    return from_dict(GWMBench, deep_merge(base, overrides or {}))


def run_gwm_bench(cfg: GWMBench, work: str | Path, *, log=print) -> dict[str, Any]:
    """Run (or continue) every stage in ``work``; returns the result dict (module docstring).

    Raises:
        ConfigError: ``work`` holds a benchmark of other settings.
    """
    from robodream.gwm.evaluate import evaluate_gwm
    from robodream.gwm.frames import build_gaussian_frames, heldout_camera_psnr, load_gaussian_frames
    from robodream.gwm.mbrl import plot_curves, run_mbrl
    from robodream.gwm.train import GWMRunConfig, SetVAERunConfig, train_gwm, train_set_vae
    from robodream.tokenizer.train import TokenizerRunConfig, train_tokenizer
    from robodream.world_model.train import WorldModelRunConfig, train_world_model

    work = Path(work)
    settings = json.loads(json.dumps(to_dict(cfg)))
    saved = work / "config.json"
    if saved.is_file() and json.loads(saved.read_text()) != settings:
        raise ConfigError(f"{work} holds a GWM benchmark with other settings; continue it with the same settings "
                          "or use another --work")
    work.mkdir(parents=True, exist_ok=True)
    atomic_write_json(saved, settings)
    st = Stages(work, log)
    cams = (*cfg.cameras, cfg.novel_camera)
    gdirs = []
    for t in cfg.tasks:
        data, gdir = work / "data" / t, work / "gaussians" / t
        st.run(f"collect {t}", lambda p=data: dataset_complete(p), lambda p=data, t=t: collect(
            CollectConfig(task=t, episodes=cfg.demos, image_size=cfg.image_size, cameras=cams, with_depth=True),
            p, overwrite=p.exists(), workers=cfg.workers))
        st.run(f"gaussians {t}", lambda g=gdir: (g / "metrics.json").is_file(), lambda p=data, g=gdir: (
            build_gaussian_frames(p, g, cameras=list(cfg.cameras), cfg=cfg.pixel, overwrite=g.exists()),
            atomic_write_json(g / "metrics.json", {"heldout": heldout_camera_psnr(load_gaussian_frames(g), p,
                                                                                  cfg.novel_camera)})))
        gdirs.append(str(gdir))
    il_data, il_gdirs = [], []
    il_cams = (*cfg.il_policy_cameras, *(c for c in cfg.cameras if c not in cfg.il_policy_cameras))
    for t in cfg.il_tasks:
        data, gdir = work / "il" / "data" / t, work / "il" / "gaussians" / t
        st.run(f"collect il {t}", lambda p=data: dataset_complete(p), lambda p=data, t=t: collect(
            CollectConfig(task=t, episodes=cfg.il_demos, image_size=cfg.image_size, cameras=il_cams, with_depth=True),
            p, overwrite=p.exists(), workers=cfg.workers))
        st.run(f"gaussians il {t}", lambda g=gdir: (g / "index.json").is_file(), lambda p=data, g=gdir:
               build_gaussian_frames(p, g, cameras=list(cfg.cameras), cfg=cfg.pixel, overwrite=g.exists()))
        il_data.append(str(data))
        il_gdirs.append(str(gdir))
    vae_run, gwm_run = work / "runs" / "vae", work / "runs" / "gwm"
    vae_cfg = SetVAERunConfig(gaussians=tuple(gdirs + il_gdirs), model=replace(cfg.vae, n_gaussians=cfg.pixel.n),
                              train=cfg.vae_train)
    st.run("train gwm-vae", lambda: run_complete(vae_run),
           lambda: train_set_vae(vae_cfg, vae_run, resume=vae_run.exists()))
    il = run_il(cfg, work, st, il_data, vae_run)
    gwm_cfg = GWMRunConfig(gaussians=tuple(gdirs), vae=str(vae_run), model=cfg.gwm, train=cfg.gwm_train)
    st.run("train gwm", lambda: run_complete(gwm_run), lambda: train_gwm(gwm_cfg, gwm_run, resume=gwm_run.exists()))
    vdata = []
    for t in cfg.tasks:  # the same episodes (same seeds) seen by the input cameras only
        p = work / "data_input_cameras" / t
        st.run(f"collect {t} (input cameras)", lambda p=p: dataset_complete(p), lambda p=p, t=t: collect(
            CollectConfig(task=t, episodes=cfg.demos, image_size=cfg.image_size, cameras=cfg.cameras),
            p, overwrite=p.exists(), workers=cfg.workers))
        vdata.append(str(p))
    tok, wm = work / "runs" / "tokenizer", work / "runs" / "world_model"
    st.run("tokenizer", lambda: run_complete(tok), lambda: train_tokenizer(TokenizerRunConfig(
        data=tuple(vdata), model=replace(cfg.tokenizer, image_size=cfg.image_size), train=cfg.tokenizer_train),
        tok, resume=tok.exists()))
    st.run("train world model", lambda: run_complete(wm), lambda: train_world_model(WorldModelRunConfig(
        data=tuple(vdata), tokenizer=str(tok), model=replace(cfg.world_model), train=cfg.world_model_train), wm,
        resume=wm.exists()))
    vdyn = work / "runs" / "video_dynamics"
    st.run("train video dynamics", lambda: run_complete(vdyn), lambda: train_gwm(GWMRunConfig(
        data=tuple(vdata), tokenizer=str(tok), model=replace(cfg.gwm), train=cfg.gwm_train), vdyn,
        resume=vdyn.exists()))
    ev = work / "eval" / "gwm.json"
    st.run("eval gwm", ev.is_file, lambda: atomic_write_json(ev, evaluate_gwm(
        gwm_run, cfg.novel_camera, horizon=cfg.eval_horizon, starts_per_episode=cfg.eval_starts,
        video_world_model=wm)))
    mbrl: list[dict[str, Any]] = []
    for t in cfg.tasks:
        for arm in cfg.mbrl_arms:
            for seed in cfg.mbrl_seeds:
                path = work / "mbrl" / f"{t}_{arm}_{seed}.json"
                m = replace(cfg.mbrl, task=t, arm=arm, seed=seed, gwm=str(gwm_run), video_dynamics=str(vdyn),
                            cameras=cfg.cameras, image_size=cfg.image_size)
                st.run(f"mbrl {t} {arm} seed {seed}", path.is_file,
                       lambda p=path, m=m: atomic_write_json(p, run_mbrl(m, log=log)))
                mbrl.append(json.loads(path.read_text()))
    plot_curves(mbrl, work / "mbrl" / "curves.png")
    return summarize(cfg, work, st.timings, mbrl, il)


IL_ARMS = ("tokenizer", "gwm")
IL_CONDITIONS = ("default", "camera_shift")


def run_il(cfg: GWMBench, work: Path, st: Stages, data: list[str], vae_run: Path) -> dict[str, Any]:
    """The imitation stages (module docstring, stage 4); returns ``{arm: {condition: {task: results}}}``
    and the per-arm mean success."""
    from robodream.envs.shift import ShiftConfig
    from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy
    from robodream.policy.train import PolicyRunConfig, train_policy
    from robodream.tokenizer.train import TokenizerRunConfig, train_tokenizer

    tok = work / "il" / "runs" / "tokenizer"
    st.run("tokenizer il", lambda: run_complete(tok), lambda: train_tokenizer(TokenizerRunConfig(
        data=tuple(data), model=replace(cfg.tokenizer, image_size=cfg.image_size), train=cfg.tokenizer_train),
        tok, resume=tok.exists()))
    conditions = {"default": None, "camera_shift": ShiftConfig(camera_shift="random", seed=cfg.eval_shift_seed,
                                                               camera_shift_scale=cfg.camera_shift_scale)}
    evals: dict[str, dict[str, dict[str, Any]]] = {}
    for arm in IL_ARMS:
        pol = work / "il" / "runs" / f"policy_{arm}"
        gwm = arm == "gwm"
        run_cfg = PolicyRunConfig(data=tuple(data), tokenizer=str(tok), cameras=cfg.il_policy_cameras,
                                  model=replace(cfg.il_policy, gwm_tokens=cfg.il_gwm_tokens if gwm else 0),
                                  train=replace(cfg.il_policy_train), gwm_vae=str(vae_run) if gwm else "")
        st.run(f"train il policy {arm}", lambda p=pol: run_complete(p),
               lambda p=pol, c=run_cfg: train_policy(c, p, resume=p.exists()))
        for cond in IL_CONDITIONS:
            for t in cfg.il_tasks:
                ev = work / "il" / "eval" / arm / cond / t
                st.run(f"eval il {arm} {cond} {t}", lambda e=ev: (e / "results.json").is_file(),
                       lambda p=pol, t=t, e=ev, c=cond: evaluate_policy(
                           p, t, cfg.il_eval_episodes, e, seed_start=DEFAULT_EVAL_SEED, max_steps=cfg.il_eval_max_steps,
                           n_videos=1, workers=cfg.workers, overwrite=True, shift=conditions[c]))
                evals.setdefault(arm, {}).setdefault(cond, {})[t] = json.loads((ev / "results.json").read_text())
    return evals


def summarize_il(cfg: GWMBench, evals: dict[str, Any]) -> dict[str, Any]:
    """``il_success`` ({arm: mean success over tasks at the default camera}) and the per-task,
    per-condition table with Wilson 95% CIs."""
    def mean(arm: str, cond: str) -> float:
        return round(sum(r["success_rate"] for r in evals[arm][cond].values()) / len(evals[arm][cond]), 4)

    return {
        "il_success": {arm: mean(arm, "default") for arm in IL_ARMS},
        "il_success_camera_shift": {arm: mean(arm, "camera_shift") for arm in IL_ARMS},
        "il_per_task": {arm: {cond: {t: {"success_rate": r["success_rate"], "ci95": r["ci95"],
                                         "n_episodes": r["n_episodes"], "latency_ms_p50": r["latency_ms_p50"]}
                                     for t, r in by_task.items()} for cond, by_task in by_cond.items()}
                        for arm, by_cond in evals.items()},
        "il_settings": {"tasks": list(cfg.il_tasks), "demos": cfg.il_demos, "policy_cameras": list(cfg.il_policy_cameras),
                        "gwm_cameras": list(cfg.cameras), "gwm_tokens": cfg.il_gwm_tokens,
                        "eval_episodes": cfg.il_eval_episodes, "camera_shift_seed": cfg.eval_shift_seed},
    }


def summarize(cfg: GWMBench, work: Path, timings: dict[str, float], mbrl: list[dict[str, Any]],
              il: dict[str, Any]) -> dict[str, Any]:
    """The result dict of a finished benchmark directory (the issue's keys)."""
    g_metrics = [json.loads((work / "gaussians" / t / "metrics.json").read_text())["heldout"] for t in cfg.tasks]
    g_index = [json.loads((work / "gaussians" / t / "index.json").read_text()) for t in cfg.tasks]
    vae = json.loads((work / "runs" / "vae" / "results.json").read_text())
    gwm = json.loads((work / "runs" / "gwm" / "results.json").read_text())
    ev = json.loads((work / "eval" / "gwm.json").read_text())
    steps_to_80: dict[str, Any] = {}
    for arm in ARMS:
        runs = [r for r in mbrl if r["config"]["arm"] == arm]
        steps_to_80[arm] = {f"{r['config']['task']}/seed{r['config']['seed']}": r["env_steps_to_80"] for r in runs} \
            if runs else None
    n = sum(m["frames"] for m in g_metrics)
    return {
        "benchmark": "gwm", "tasks": list(cfg.tasks), "cameras": list(cfg.cameras), "novel_camera": cfg.novel_camera,
        "gaussians_heldout_camera_psnr_db": round(sum(m["psnr_db"] * m["frames"] for m in g_metrics) / n, 2),
        "gaussians_heldout_camera_ssim": round(sum(m["ssim"] * m["frames"] for m in g_metrics) / n, 4),
        "gaussians_input_camera_psnr_db": round(sum(sum(m["per_input_camera_psnr_db"].values()) /
                                                    len(m["per_input_camera_psnr_db"]) * m["frames"]
                                                    for m in g_metrics) / n, 2),
        "gaussians_ms_per_frame": round(sum(i["ms_per_frame"] * i["frames"] for i in g_index) /
                                        sum(i["frames"] for i in g_index), 2),
        "vae_psnr_db": vae.get("psnr_db"), "vae_chamfer": vae.get("chamfer"),
        "dynamics_validation": {k: gwm.get(k) for k in ("latent_mse", "copy_last_latent_mse", "reward_mae",
                                                         "success_accuracy", "state_mae")},
        "psnr_by_horizon": ev["psnr_by_horizon"], "copy_last_psnr_by_horizon": ev["copy_last_psnr_by_horizon"],
        "novel_camera_psnr_by_horizon": ev["novel_camera_psnr_by_horizon"],
        "novel_camera_copy_last_psnr_by_horizon": ev["novel_camera_copy_last_psnr_by_horizon"],
        "gaussians_psnr_by_horizon": ev["gaussians_psnr_by_horizon"],
        "psnr_vs_gaussians_by_horizon": ev["psnr_vs_gaussians_by_horizon"],
        "copy_last_psnr_vs_gaussians_by_horizon": ev["copy_last_psnr_vs_gaussians_by_horizon"],
        "copy_last_latent_psnr_vs_gaussians_by_horizon": ev["copy_last_latent_psnr_vs_gaussians_by_horizon"],
        "video_world_model_psnr_by_horizon": ev["video_world_model_psnr_by_horizon"],
        "video_world_model_cameras": ev["video_world_model_cameras"],
        **summarize_il(cfg, il),
        "mbrl_env_steps_to_80": steps_to_80, "mbrl_real_step_budget": cfg.mbrl.real_steps,
        "mbrl_curves": [{"task": r["config"]["task"], "arm": r["config"]["arm"], "seed": r["config"]["seed"],
                         "curve": r["curve"]} for r in mbrl],
        "code": code_version(), "created": now(), "environment": environment_info(),
        "wall_s": round(sum(timings.values()), 1), "stage_wall_s": {k: round(v, 1) for k, v in timings.items()},
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "settings": to_dict(cfg),
    }
