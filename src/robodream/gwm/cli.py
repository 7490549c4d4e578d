"""CLI verbs of the Gaussian world model: ``robodream gaussians`` (per-frame Gaussians of a dataset) and
``robodream train gwm-vae`` (the set VAE).

Plain functions with typer options; :func:`register` adds them to robodream's apps (the
convention of :mod:`robodream.utils.cli`). Logic lives in :mod:`robodream.gwm.frames`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.utils.cli import Apps, config_verb, log, out_console, print_table, register_train_verb, user_errors


def gaussians_cmd(
    overrides: dict,
    data: Annotated[Path, typer.Option(help="dataset recorded with robodream collect --with-depth")],
    out: Annotated[Path, typer.Option(help="companion directory to create (gaussians.npy, index.json, ...)")],
    cameras: Annotated[Optional[str], typer.Option(help="comma-separated input cameras (default: the static ones)")] = None,
    heldout: Annotated[Optional[str], typer.Option(help="a camera of the dataset left out of --cameras: report the "
                                                        "Gaussians' render PSNR/SSIM from it")] = None,
    episodes: Annotated[Optional[int], typer.Option(help="only the first N episodes")] = None,
    overwrite: Annotated[bool, typer.Option(help="replace an existing directory at --out")] = False,
) -> None:
    """Pixel-aligned Gaussians (14 numbers each) of every frame of a dataset, from its static cameras' RGB-D."""
    from robodream.config import from_dict
    from robodream.errors import ConfigError
    from robodream.gwm.frames import build_gaussian_frames, heldout_camera_psnr, load_gaussian_frames
    from robodream.gwm.pixel import PixelGaussianConfig
    from robodream.utils.io import atomic_write_json

    cfg = from_dict(PixelGaussianConfig, overrides)
    cams = [c.strip() for c in cameras.split(",") if c.strip()] if cameras else None
    if heldout and cams and heldout in cams:
        raise ConfigError(f"--heldout {heldout} is one of --cameras; a held-out camera must not be an input")
    if heldout and not cams:
        from robodream.data.lerobot import LeRobotDataset
        from robodream.gwm.frames import static_cameras

        cams = [c for c in static_cameras(LeRobotDataset(data)) if c != heldout]
    index = build_gaussian_frames(data, out, cameras=cams, cfg=cfg, episodes=episodes, overwrite=overwrite, log=log)
    row = [index["frames"], cfg.n, ",".join(index["cameras"]), index["ms_per_frame"]]
    cols = ["frames", "n", "cameras", "ms/frame"]
    if heldout:
        m = heldout_camera_psnr(load_gaussian_frames(out), data, heldout)
        atomic_write_json(out / "metrics.json", {"heldout": m, "ms_per_frame": index["ms_per_frame"]})
        inputs = m["per_input_camera_psnr_db"]
        row += [heldout, m["psnr_db"], m["ssim"], round(sum(inputs.values()) / len(inputs), 2)]
        cols += ["held-out", "PSNR dB", "SSIM", "inputs dB"]
    print_table(f"per-frame Gaussians of {data}", cols, [row])
    out_console.print(f"written to {out}")


def eval_gwm_cmd(
    run: Annotated[Path, typer.Option(help="a robodream train gwm run")],
    camera: Annotated[str, typer.Option(help="novel camera: one of the source dataset's cameras that no Gaussians "
                                             "were built from")],
    gaussians: Annotated[Optional[Path], typer.Option(help="Gaussian directory to evaluate on (default: the run's "
                                                           "held-out episodes)")] = None,
    horizon: Annotated[int, typer.Option(help="rollout steps")] = 16,
    episodes: Annotated[Optional[int], typer.Option(help="at most this many episodes")] = None,
    starts: Annotated[int, typer.Option(help="start frames per episode")] = 2,
    sample_steps: Annotated[Optional[int], typer.Option(help="Euler steps (default: the model's)")] = None,
    video_world_model: Annotated[Optional[Path], typer.Option(help="a video world model run scored on the same "
                                                                   "rollouts (its own cameras)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="JSON to write (default RUN/eval_CAMERA.json)")] = None,
) -> None:
    """Open-loop GWM rollouts rendered from the training cameras and a never-trained camera, per horizon,
    against the recorded video, next to copy-last and the per-frame Gaussians."""
    from robodream.gwm.evaluate import evaluate_gwm
    from robodream.utils.io import atomic_write_json

    r = evaluate_gwm(run, camera, gaussians=gaussians, horizon=horizon, episodes=episodes, starts_per_episode=starts,
                     sample_steps=sample_steps, video_world_model=video_world_model)
    out = out or run / f"eval_{camera}.json"
    atomic_write_json(out, r)
    hs = sorted({h for h in (1, 2, 4, 8, 16, horizon) if h <= horizon})
    rows = [[h, r["psnr_by_horizon"][h - 1], r["copy_last_psnr_by_horizon"][h - 1],
             r["gaussians_psnr_by_horizon"][h - 1], r["novel_camera_psnr_by_horizon"][h - 1],
             r["novel_camera_copy_last_psnr_by_horizon"][h - 1], r["novel_camera_gaussians_psnr_by_horizon"][h - 1]]
            for h in hs]
    print_table(f"GWM rollouts: PSNR dB against the video, {r['rollouts']} rollouts, train cameras "
                f"{','.join(r['cameras'])}, novel {camera}", ["h", "GWM", "copy-last", "Gaussians", f"GWM {camera}",
                                                             "copy-last", "Gaussians"], rows)
    print_table("against the per-frame Gaussians' renders (the dynamics alone)",
                ["h", "GWM", "copy-last", "copy z", f"GWM {camera}", "copy-last", "copy z"],
                [[h, r["psnr_vs_gaussians_by_horizon"][h - 1], r["copy_last_psnr_vs_gaussians_by_horizon"][h - 1],
                  r["copy_last_latent_psnr_vs_gaussians_by_horizon"][h - 1],
                  r["novel_camera_psnr_vs_gaussians_by_horizon"][h - 1],
                  r["novel_camera_copy_last_psnr_vs_gaussians_by_horizon"][h - 1],
                  r["novel_camera_copy_last_latent_psnr_vs_gaussians_by_horizon"][h - 1]] for h in hs])
    if r["video_world_model_psnr_by_horizon"] is not None:
        print_table(f"video world model on the same rollouts (its cameras {','.join(r['video_world_model_cameras'])})",
                    ["h", "PSNR dB"], [[h, r["video_world_model_psnr_by_horizon"][h - 1]] for h in hs])
    out_console.print(f"written to {out}")


def bench_gwm_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/gwm.json"),
    work: Annotated[Path, typer.Option(help="working directory (datasets, Gaussians, runs, evaluations)")] = Path(
        "outputs/bench_gwm"),
    config: Annotated[Optional[Path], typer.Option(help="JSON overriding benchmark fields (bench.gwm_bench.GWMBench)")] = None,
    quick: Annotated[bool, typer.Option(help="every stage on tiny settings (a smoke test, not a measurement)")] = False,
) -> None:
    """The Gaussian world model end to end: per-frame Gaussians, set VAE, imitation with GWM features,
    dynamics per horizon from a novel camera, MBPO on the GWM against SAC. Resumable in stages: run the same command again to continue."""
    from robodream.bench.gwm_bench import bench_config, run_gwm_bench
    from robodream.config import load_config_file
    from robodream.utils.io import atomic_write_json

    cfg = bench_config(load_config_file(config) if config else None, quick=quick)
    r = run_gwm_bench(cfg, work, log=log)
    atomic_write_json(out, r)
    print_table(f"GWM: per-frame Gaussians and set VAE ({', '.join(r['tasks'])})", ["measure", "value"], [
        [f"Gaussians: {r['novel_camera']} (held-out camera) PSNR dB", r["gaussians_heldout_camera_psnr_db"]],
        ["Gaussians: input-camera PSNR dB", r["gaussians_input_camera_psnr_db"]],
        ["Gaussians: ms per frame", r["gaussians_ms_per_frame"]], ["set VAE: decoded PSNR dB", r["vae_psnr_db"]]])
    H = len(r["psnr_by_horizon"])
    hs = sorted({h for h in (1, 2, 4, 8, 16, H) if h <= H})
    vwm = r["video_world_model_psnr_by_horizon"] or [None] * H
    print_table("GWM rollouts: PSNR dB by horizon", ["h", "GWM", "video WM", "copy-last", f"GWM {r['novel_camera']}",
                                                      "copy-last", "vs Gaussians: GWM", "copy z"],
                [[h, r["psnr_by_horizon"][h - 1], vwm[h - 1], r["copy_last_psnr_by_horizon"][h - 1],
                  r["novel_camera_psnr_by_horizon"][h - 1], r["novel_camera_copy_last_psnr_by_horizon"][h - 1],
                  r["psnr_vs_gaussians_by_horizon"][h - 1], r["copy_last_latent_psnr_vs_gaussians_by_horizon"][h - 1]]
                 for h in hs])
    il = r["il_per_task"]
    print_table(f"imitation, {r['il_settings']['demos']} demos per task: success (95% CI) by condition",
                ["task"] + [f"{arm} {cond}" for arm in il for cond in il[arm]],
                [[t] + [f"{il[arm][cond][t]['success_rate']:.2f} ({il[arm][cond][t]['ci95'][0]:.2f}-"
                         f"{il[arm][cond][t]['ci95'][1]:.2f})" for arm in il for cond in il[arm]]
                 for t in r["il_settings"]["tasks"]]
                + [["mean"] + [f"{r['il_success' if cond == 'default' else 'il_success_camera_shift'][arm]:.3f}"
                               for arm in il for cond in il[arm]]])
    print_table(f"MBRL: real steps to 80% success (budget {r['mbrl_real_step_budget']})", ["arm", "runs"],
                [[arm, v if v is None else ", ".join(f"{k}: {s}" for k, s in v.items())]
                 for arm, v in r["mbrl_env_steps_to_80"].items()])
    out_console.print(f"wall {r['wall_s'] / 3600:.2f} h, peak RSS {r['peak_rss_gib']} GiB; written to {out}")


def register(apps: Apps) -> None:
    """Add ``gaussians``, ``train gwm-vae``, ``train gwm``, ``eval gwm`` and ``bench gwm``."""
    from robodream.gwm.pixel import PixelGaussianConfig
    from robodream.gwm.train import GWMRunConfig, SetVAERunConfig, train_gwm, train_set_vae

    apps.root.command("gaussians")(user_errors(config_verb(PixelGaussianConfig)(gaussians_cmd)))
    register_train_verb(apps, "gwm-vae", SetVAERunConfig, train_set_vae, "GWM set VAE",
                        ["decoded PSNR dB", "Chamfer", "train frames"],
                        lambda r: [r.get("psnr_db"), r.get("chamfer"), r["n_train_frames"]])
    apps.eval.command("gwm")(user_errors(eval_gwm_cmd))
    apps.bench.command("gwm")(user_errors(bench_gwm_cmd))
    register_train_verb(apps, "gwm", GWMRunConfig, train_gwm, "GWM latent dynamics",
                        ["1-step latent MSE", "copy-last MSE", "reward MAE", "success acc", "train frames"],
                        lambda r: [r.get("latent_mse"), r.get("copy_last_latent_mse"), r.get("reward_mae"),
                                   r.get("success_accuracy"), r["n_train_frames"]])
