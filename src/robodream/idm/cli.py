"""CLI verbs of the inverse-dynamics model: ``robodream train idm``, ``robodream eval idm``
(convention: :mod:`robodream.utils.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from robodream.utils.cli import Apps, print_table, register_train_verb, user_errors


def eval_idm_cmd(
    idm: Annotated[Path, typer.Option(help="trained IDM run directory")],
    data: Annotated[Path, typer.Option(help="dataset whose unseen episodes are labelled and replayed (the run's "
                                            "held-out split when the IDM trained on it)")],
    task: Annotated[str, typer.Option(help="Meta-World task of the dataset, e.g. reach-v3")],
    episodes: Annotated[int, typer.Option(help="at most this many episodes")] = 10,
    out: Annotated[Path, typer.Option(help="output directory (results.json)")] = Path("outputs/eval_idm"),
    workers: Annotated[int, typer.Option(help="replay processes, each with its own env")] = 1,
    device: Annotated[str, typer.Option()] = "cpu",
    overwrite: Annotated[bool, typer.Option(help="replace an existing evaluation at --out")] = False,
) -> None:
    """Held-out action error of the IDM's labels and open-loop replay success (labels vs recorded actions)."""
    from robodream.idm.evaluate import evaluate_idm

    r = evaluate_idm(idm, data, task, episodes, out, workers=workers, device=device, overwrite=overwrite)
    rp = r["replay"]
    print_table(f"IDM on {r['n_episodes']} episodes of {task} ({r['episode_source']})",
                ["action MSE", "mean-action MSE", "action MAE", "replay success (IDM)", "95% CI",
                 "replay success (recorded)", "95% CI", "out"],
                [[r["action_mse"], r["mean_action_mse"], r["action_mae"], rp["idm_actions"]["success_rate"],
                  "[{:.2f}, {:.2f}]".format(*rp["idm_actions"]["ci95"]), rp["true_actions"]["success_rate"],
                  "[{:.2f}, {:.2f}]".format(*rp["true_actions"]["ci95"]), str(out)]])
    print_table("action error per dimension (action units)", ["action", "MSE", "MAE", "mean-action MSE"],
                [[n, a, b, c] for n, a, b, c in zip(r["action_names"], r["action_mse_per_dim"],
                                                    r["action_mae_per_dim"], r["mean_action_mse_per_dim"])],
                label_column=True)


def register(apps: Apps) -> None:
    """Add ``train idm`` and ``eval idm``."""
    from robodream.idm.train import IDMRunConfig, train_idm

    register_train_verb(apps, "idm", IDMRunConfig, train_idm, "inverse-dynamics model",
                        ["held-out action MSE", "no-state MSE", "mean-action MSE", "train frames"],
                        lambda r: [r.get("action_mse"), r.get("action_mse_no_state"), r.get("mean_action_mse"),
                                   r["n_train_frames"]])
    apps.eval.command("idm")(user_errors(eval_idm_cmd))
