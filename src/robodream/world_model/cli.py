"""CLI verbs of the video world model: ``train world-model``, ``dream``, ``eval world-model``, ``bench world-model``.

Plain functions with typer options; :func:`register` adds them to robodream's apps (the
convention of :mod:`robodream.utils.cli`). Logic lives in :mod:`robodream.world_model.train` and
:mod:`robodream.world_model.evaluate`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.errors import ConfigError
from robodream.utils.cli import Apps, out_console, print_table, register_train_verb, user_errors

# Options shared by ``dream`` and ``eval world-model``.
WorldModelRunOpt = Annotated[Path, typer.Option(help="trained world-model run directory")]
SamplingStepsOpt = Annotated[Optional[int], typer.Option(help="Euler steps per chunk")]
GuidanceOpt = Annotated[Optional[float], typer.Option(help="classifier-free guidance scale")]
EvalDeviceOpt = Annotated[str, typer.Option()]
SeedOpt = Annotated[int, typer.Option(help="seeds the sampling noise")]


@user_errors
def dream_cmd(
    episode: Annotated[str, typer.Option(help="DIR:INDEX, the episode whose frames start the dream (a dataset for "
                                              "--world-model, a per-frame Gaussian directory for --gwm)")],
    steps: Annotated[int, typer.Option(help="env steps to dream (autoregressive beyond one chunk)")],
    out: Annotated[Path, typer.Option(help="MP4 file to write")],
    world_model: Annotated[Optional[Path], typer.Option(help="trained world-model run directory")] = None,
    gwm: Annotated[Optional[Path], typer.Option(help="a Gaussian world model run (robodream train gwm) instead")] = None,
    camera: Annotated[Optional[str], typer.Option(help="--gwm: render from this Meta-World camera")] = None,
    orbit: Annotated[Optional[str], typer.Option(help="--gwm: render from a free camera AZIMUTH,ELEVATION,DISTANCE "
                                                      "(degrees, degrees, metres) around the table")] = None,
    actions: Annotated[Optional[Path], typer.Option(help="actions (.npy/.json/.csv, steps x dim); default the episode's")] = None,
    start: Annotated[int, typer.Option(help="frame of the episode to start from")] = 0,
    sampling_steps: SamplingStepsOpt = None,
    guidance: GuidanceOpt = None,
    seed: SeedOpt = 0,
    device: EvalDeviceOpt = "cpu",
) -> None:
    """Imagine how an episode continues under a sequence of actions; MP4 with ground truth above when known.

    With ``--gwm`` the Gaussian world model dreams, rendered from any camera (``--camera`` or ``--orbit``)."""
    if (world_model is None) == (gwm is None):
        raise ConfigError("give exactly one of --world-model RUN or --gwm RUN")
    if gwm is not None:
        from robodream.gwm.evaluate import dream_gwm

        r = dream_gwm(gwm, episode, out, steps=steps, start=max(start, 1), camera=camera, orbit=orbit, seed=seed,
                      sample_steps=sampling_steps)
        psnr = sum(r["psnr_by_frame"]) / len(r["psnr_by_frame"]) if r["psnr_by_frame"] else None
        print_table("dream (GWM)", ["frames", "camera", "mean PSNR vs truth (dB)", "video"],
                    [[r["frames"], r["camera"], psnr, r["out"]]])
        return
    from robodream.world_model.evaluate import dream

    r = dream(world_model, episode, out, steps=steps, actions_file=actions, start=start, n_steps=sampling_steps,
              guidance_scale=guidance, seed=seed, device=device)
    psnr = sum(r["psnr_by_frame"]) / len(r["psnr_by_frame"]) if r["psnr_by_frame"] else None
    print_table("dream", ["frames", "chunks", "frame stride", "mean PSNR vs truth (dB)", "video"],
                [[r["frames"], r["chunks"], r["frame_stride"], psnr, r["out"]]])


@user_errors
def eval_world_model_cmd(
    world_model: WorldModelRunOpt,
    data: Annotated[list[Path], typer.Option(help="dataset directory (repeat for several); held-out episodes only")],
    out: Annotated[Path, typer.Option(help="output directory")] = Path("outputs/eval/world_model"),
    episodes: Annotated[int, typer.Option(help="held-out episodes at most")] = 20,
    anchors: Annotated[int, typer.Option(help="start frames per episode")] = 4,
    chunks: Annotated[int, typer.Option(help="chunks rolled out per start (horizon = chunks x chunk steps)")] = 1,
    sampling_steps: SamplingStepsOpt = None,
    guidance: GuidanceOpt = None,
    seed: SeedOpt = 0,
    device: EvalDeviceOpt = "cpu",
) -> None:
    """PSNR/SSIM per horizon vs copy-last-frame, and action controllability, on held-out episodes
    (and, with a value frame, the values' Kendall tau and MAE vs Monte-Carlo returns)."""
    from robodream.world_model.evaluate import evaluate_world_model

    r = evaluate_world_model(world_model, data, out, max_episodes=episodes, anchors_per_episode=anchors,
                             n_chunks=chunks, n_steps=sampling_steps, guidance_scale=guidance, seed=seed, device=device)
    print_table(f"world model on {r['n_clips']} clips of {r['n_episodes']} held-out episodes",
                ["horizon (steps)", "PSNR (dB)", "SSIM", "copy-last PSNR", "foreign-actions PSNR"],
                [[h, p, s, c, f] for h, p, s, c, f in zip(
                    r["horizons_steps"], r["psnr_by_horizon"], r["ssim_by_horizon"],
                    r["copy_last_frame_psnr_by_horizon"], r["foreign_actions_psnr_by_horizon"])])
    if "value_kendall_tau" in r:
        tau = "n/a" if r["value_kendall_tau"] is None else f"{r['value_kendall_tau']:.3f}"
        mae = "n/a" if r["value_mae"] is None else f"{r['value_mae']:.2f}"
        out_console.print(f"value frame: Kendall tau {tau} vs Monte-Carlo returns, MAE {mae} (return units) on "
                          f"{r['value_n_frames']} frames")
    out_console.print(f"controllability gap {r['controllability_gap_db']:.2f} dB; tokenizer ceiling "
                      f"{r['tokenizer_psnr']:.1f} dB; written to {out}")


@user_errors
def bench_world_model_cmd(
    out: Annotated[Path, typer.Option(help="JSON file to write")] = Path("benchmarks/world_model.json"),
    config: Annotated[Optional[Path], typer.Option(help="a world-model run's config.json (default: default model)")] = None,
    train_steps: Annotated[int, typer.Option(help="timed training steps per variant")] = 10,
    batch_size: Annotated[Optional[int], typer.Option(help="training batch (default: the world model's training batch)")] = None,
    repeats: Annotated[int, typer.Option(help="timed sampling calls per variant")] = 3,
    threads: Annotated[int, typer.Option(help="torch threads (0 = torch default)")] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 autocast where the device has native bf16, else fp32), bf16 or fp32")] = "auto",
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    data: Annotated[Optional[list[Path]], typer.Option(help="datasets for the held-out PSNR comparison")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="tokenizer run for the PSNR comparison")] = None,
    quality_steps: Annotated[int, typer.Option(help="training steps per variant before comparing PSNR (0 = skip)")] = 0,
    work: Annotated[Path, typer.Option(help="run directories of the PSNR comparison")] = Path("outputs/bench_world_model"),
) -> None:
    """MoE + 3D neighbourhood attention vs dense MLP + full attention at matched active parameters
    (and neighbourhood attention with a dense MLP, the attention ablation)."""
    from robodream.config import from_dict, load_config_file
    from robodream.utils.io import atomic_write_json
    from robodream.world_model.bench import LABELS, VARIANTS, bench_world_model
    from robodream.world_model.configuration import WorldModelConfig

    cfg = from_dict(WorldModelConfig, load_config_file(config).get("model", {}), where="model", legacy=True) \
        if config else WorldModelConfig()
    if quality_steps and not (data and tokenizer):
        raise ConfigError("--quality-steps needs --data and --tokenizer")
    r = bench_world_model(cfg, train_steps=train_steps, batch_size=batch_size, sample_repeats=repeats, threads=threads,
                          precision=precision, device=device, data=[str(d) for d in data or []],
                          tokenizer=str(tokenizer) if tokenizer else None, quality_steps=quality_steps, work=work,
                          log=lambda m: out_console.print(f"[bold cyan]>>[/] {m}"))
    atomic_write_json(out, r)
    rows = [[LABELS[name], r[name]["train_step_s"], r[name]["sample_s_per_frame"], r[name]["train_saved_activations_mib"],
             r[name]["n_active_parameters"] / 1e6, r[name]["n_parameters"] / 1e6, r[name].get("next_chunk_psnr")]
            for name in VARIANTS]
    psnr_note = f"; PSNR held-out after {r['quality_steps']} steps" if r.get("quality_steps") else ""
    print_table(f"world model on {r['device']}, {r['threads']} thread(s), grid {tuple(r['grid'])}{psnr_note}",
                ["variant", "train step s", "sample s/frame", "saved acts MiB", "active M params", "M params",
                 "PSNR dB"], rows, label_column=True)
    print_table("self-attention kernel, forward + backward, by clip length",
                ["frames", "grid", "tokens", "neighbourhood s", "full s", "sparse/full speedup"],
                [[c["n_frames"], "x".join(map(str, c["grid"])), c["tokens"], c["attention_neighborhood_s"],
                  c["attention_full_s"], c["sparse_over_full_attention_speedup"]] for c in r["attention_by_clip"]])
    least = "n/a" if r.get("expert_token_fraction_min") is None else f"{r['expert_token_fraction_min']:.2f}"
    out_console.print(f"sparse/full speedup: train step {r['sparse_over_full_train_step_speedup']:.2f}x, sampling "
                      f"{r['sparse_over_full_sample_speedup']:.2f}x, attention kernel "
                      f"{r['sparse_over_full_attention_speedup']:.2f}x; sparse attention alone (dense MLP): "
                      f"train step {r['sparse_attention_train_step_speedup']:.2f}x, sampling "
                      f"{r['sparse_attention_sample_speedup']:.2f}x; least-used expert {least} of tokens "
                      f"(balanced: {cfg.top_k / cfg.n_experts:.2f}); written to {out}")


def register(apps: Apps) -> None:
    """Add ``train world-model``, ``dream``, ``eval world-model`` and ``bench world-model``."""
    from robodream.world_model.train import WorldModelRunConfig, train_world_model

    register_train_verb(apps, "world-model", WorldModelRunConfig, train_world_model, "world model",
                        ["held-out flow loss", "held-out latent MSE", "PSNR vs tokenizer (dB)", "train frames"],
                        lambda r: [r.get("loss_flow"), r.get("latent_mse"), r.get("psnr_vs_tokenizer"),
                                   r["n_train_frames"]])
    apps.root.command("dream")(dream_cmd)
    apps.eval.command("world-model")(eval_world_model_cmd)
    apps.bench.command("world-model")(bench_world_model_cmd)
