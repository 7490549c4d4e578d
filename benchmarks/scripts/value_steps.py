"""Value quality and cost against the number of Euler steps of each value prediction
(benchmarks/RESULTS.md, "Relabelling dominates the loop's cost: one Euler step per value").

Trains a value world model with the RAMP loop's settings (``default_loop_world_model()``,
default training) on ``--train`` datasets, then scores :func:`evaluate_value` (Kendall tau and
MAE of predicted values against Monte-Carlo returns) on up to ``--episodes`` episodes of the
``--test`` datasets at each step count, with the same noise seed. A finished world-model run
in ``--run`` is reused. Prints a table and writes it as JSON.

Usage:
    python benchmarks/scripts/value_steps.py --tokenizer TOK --run RUN --out FILE.json \
        --train DEMOS_A --train ROLLOUTS_A ... --test TEST_ROLLOUTS_A ... [--episodes 9] [--steps 1,2,4,16]
"""

import argparse
from pathlib import Path

from robodream.pipeline import run_complete
from robodream.rl.loop import default_loop_world_model
from robodream.utils.io import atomic_write_json
from robodream.world_model.evaluate import evaluate_value
from robodream.world_model.train import WorldModelRunConfig, default_world_model_train, train_world_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokenizer", required=True)
    ap.add_argument("--run", required=True, help="world-model run directory (trained here unless complete)")
    ap.add_argument("--train", action="append", default=[], help="training dataset (repeat)")
    ap.add_argument("--test", action="append", required=True, help="held-out dataset (repeat)")
    ap.add_argument("--episodes", type=int, default=9)
    ap.add_argument("--steps", default="1,2,4,16")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    run = Path(a.run)
    if not run_complete(run):
        if not a.train:
            ap.error(f"{run} is no finished world-model run: give --train datasets to train it")
        train_world_model(WorldModelRunConfig(data=tuple(a.train), tokenizer=a.tokenizer, model=default_loop_world_model(),
                                              train=default_world_model_train()), run, resume=run.exists())
    rows = {}
    for n in (int(x) for x in a.steps.split(",")):
        r = evaluate_value(run, a.test, max_episodes=a.episodes, n_steps=n, seed=0)
        rows[n] = {k: r[k] for k in ("value_kendall_tau", "value_mae", "value_n_frames", "n_episodes", "wall_s")}
        print(f"{n:>3} steps: Kendall tau {r['value_kendall_tau']:.3f}, MAE {r['value_mae']:.1f}, "
              f"{r['value_n_frames']} frames, {r['wall_s']:.1f} s", flush=True)
    atomic_write_json(Path(a.out), {"run": str(run), "test": a.test, "episodes": a.episodes, "by_steps": rows})
    print(f"written to {a.out}")


if __name__ == "__main__":
    main()
