"""CLI verbs of the transfer models: ``robodream train transfer``, ``robodream eval transfer``,
``robodream generate`` (convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from robodream.errors import ConfigError
from robodream.utils.cli import Apps, print_table, register_train_verb, user_errors


def eval_transfer_cmd(
    transfer: Annotated[Path, typer.Option(help="trained transfer run directory")],
    data: Annotated[Path, typer.Option(help="dataset of a task the run never trained on, with the run's camera, "
                                            "its depth (and segmentation for appearance transfer)")],
    out: Annotated[Path, typer.Option(help="output directory (results.json)")] = Path("outputs/eval_transfer"),
    episodes: Annotated[int, typer.Option(help="the first this many episodes")] = 5,
    shift: Annotated[str, typer.Option(help="target appearance (appearance runs) or static-camera shift (view "
                                            "runs): a preset or random (a draw per episode seed)")] = "random",
    shift_seed: Annotated[int, typer.Option(help="seed of the random draws (training used the run's shift_seed)")] = 1000,
    shift_scale: Annotated[Optional[float], typer.Option(help="width of the random draws (default: the run's)")] = None,
    sample_steps: Annotated[Optional[int], typer.Option(help="Euler steps (default: the model's; 1: the "
                                                             "conditional mean)")] = None,
    seed: Annotated[int, typer.Option(help="seeds the sampling noise")] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation at --out")] = False,
) -> None:
    """PSNR/SSIM of generated re-renders vs the simulator's, next to the baseline (source copy / depth warp)."""
    from robodream.transfer.evaluate import evaluate_transfer

    r = evaluate_transfer(transfer, data, out, episodes=episodes, shift=shift, shift_seed=shift_seed,
                          shift_scale=shift_scale, sample_steps=sample_steps, seed=seed, device=device,
                          overwrite=overwrite)
    print_table(f"{r['kind']} transfer on {r['n_episodes']} episodes of {r['task']} ({r['camera']}, "
                f"{r['sample_steps']} Euler steps)", ["", "PSNR (dB)", "SSIM"],
                [["model", r["model"]["psnr"], r["model"]["ssim"]],
                 [f"baseline ({r['baseline_kind']})", r["baseline"]["psnr"], r["baseline"]["ssim"]],
                 ["tokenizer ceiling", r["tokenizer"]["psnr"], r["tokenizer"]["ssim"]],
                 *([["copy of the unmoved source view", r["source_copy"]["psnr"], r["source_copy"]["ssim"]]]
                   if "source_copy" in r else [])], label_column=True)
    print_table("target", ["PSNR gain (dB)", "target (dB)", "met", "out"],
                [[r["psnr_gain_db"], r["target_gain_db"], str(r["meets_target"]), str(out)]])


def generate_cmd(
    kind: Annotated[str, typer.Option(help="synthetic data: appearance or view (transferred copies), dream (IDM-labelled "
                                           "world-model dreams)")],
    out: Annotated[Path, typer.Option(help="the synthetic LeRobot dataset to write")],
    source: Annotated[Optional[Path], typer.Option(help="appearance/view: real dataset (robodream collect --with-depth "
                                                        "[--with-segmentation])")] = None,
    transfer: Annotated[Optional[list[Path]], typer.Option(help="appearance/view: transfer run, one per camera to "
                                                                "generate (repeat)")] = None,
    world_model: Annotated[Optional[Path], typer.Option(help="dream: world-model run (frame stride 1, trained "
                                                             "with action dropout)")] = None,
    idm: Annotated[Optional[Path], typer.Option(help="dream: IDM run with the world model's tokenizer")] = None,
    task: Annotated[Optional[str], typer.Option(help="dream: the Meta-World task to dream")] = None,
    copies: Annotated[int, typer.Option(help="appearance/view: copies per source episode, each under its own target "
                                             "shift")] = 1,
    shift: Annotated[str, typer.Option(help="target appearance / static-camera shift: a preset or random")] = "random",
    shift_seed: Annotated[int, typer.Option(help="copy c draws random shifts from shift_seed + c")] = 2000,
    shift_scale: Annotated[Optional[float], typer.Option(help="width of the random draws (default: each run's)")] = None,
    episodes: Annotated[Optional[int], typer.Option(help="appearance/view: the first this many source episodes "
                                                         "(default all); dream: dreams to generate (default 50)")] = None,
    steps: Annotated[int, typer.Option(help="dream: frames per dream, the rendered first one included")] = 128,
    seed_start: Annotated[int, typer.Option(help="dream: env seed of the first dream's initial state")] = 3_000_000,
    filter: Annotated[str, typer.Option(help="dream: success (keep dreams the IDM's success head passes, cut "
                                             "after) or none")] = "success",
    success_threshold: Annotated[float, typer.Option(help="dream: success probability that counts")] = 0.5,
    sample_steps: Annotated[Optional[int], typer.Option(help="Euler steps (default: the model's)")] = None,
    seed: Annotated[int, typer.Option(help="seeds the sampling noise")] = 0,
    device: Annotated[str, typer.Option()] = "cpu",
    video_codec: Annotated[str, typer.Option(help="h264 (near-lossless), h264-rgb (exact) or av1")] = "h264",
    overwrite: Annotated[bool, typer.Option(help="replace an existing dataset at --out")] = False,
) -> None:
    """Synthetic demonstrations (LeRobot v3.0, provenance in meta/robodream.json): appearance- or
    view-transferred copies of a real dataset, or IDM-labelled world-model dreams from new initial
    states; mix them in with train policy --data REAL --data OUT --data-weight."""
    from robodream.transfer.generate import KINDS

    if kind not in (*KINDS, "dream"):
        raise ConfigError(f"unknown kind {kind!r}; choose one of {', '.join((*KINDS, 'dream'))}")
    if kind == "dream":
        from robodream.world_model.dreams import generate_dreams

        missing = [n for n, v in (("--world-model", world_model), ("--idm", idm), ("--task", task)) if v is None]
        if missing or source is not None or transfer:
            raise ConfigError(f"--kind dream needs {', '.join(missing) or '--world-model, --idm, --task'} and takes "
                              "no --source or --transfer")
        r = generate_dreams(world_model, idm, task, out, episodes=50 if episodes is None else episodes, steps=steps,
                            seed_start=seed_start, filter=filter, success_threshold=success_threshold,
                            sample_steps=sample_steps, seed=seed, device=device, video_codec=video_codec,
                            overwrite=overwrite)
        print_table(f"generate dream ({filter} filter)", ["dreamed", "kept", "frames", "wall s", "out"],
                    [[r["n_dreamed"], r["n_kept"], r["n_frames"], r["wall_s"], r["out"]]])
        return
    from robodream.transfer.generate import generate_transfer

    if source is None or not transfer or world_model is not None or idm is not None or task is not None:
        raise ConfigError(f"--kind {kind} needs --source and --transfer and takes no --world-model, --idm or --task")
    r = generate_transfer(kind, source, transfer, out, copies=copies, shift=shift, shift_seed=shift_seed,
                          shift_scale=shift_scale, sample_steps=sample_steps, seed=seed, episodes=episodes,
                          device=device, video_codec=video_codec, overwrite=overwrite)
    print_table(f"generate {kind}", ["episodes", "frames", "models", "wall s", "out"],
                [[r["n_episodes"], r["n_frames"], ", ".join(f"{c}: {p}" for c, p in r["provenance"]["models"].items()),
                  r["wall_s"], r["out"]]])


def register(apps: Apps) -> None:
    """Add ``train transfer``, ``eval transfer`` and ``generate``."""
    from robodream.transfer.train import TransferRunConfig, train_transfer

    register_train_verb(apps, "transfer", TransferRunConfig, train_transfer, "transfer model",
                        ["held-out PSNR (1 step)", "baseline PSNR", "loss", "train frames"],
                        lambda r: [r.get("psnr"), r.get("baseline_psnr"), r.get("loss"), r["n_train_frames"]])
    apps.eval.command("transfer")(user_errors(eval_transfer_cmd))
    apps.root.command("generate")(user_errors(generate_cmd))
