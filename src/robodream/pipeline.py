"""The main job as one resumable pipeline: collect -> tokenizer -> policy -> evaluation.

``robodream demo`` runs :data:`DEMO` (a short recipe, under 20 minutes on 2 CPU cores);
``robodream bench success`` runs :data:`SUCCESS_BENCH` (50 demonstrations and 50
evaluation episodes per task) and its ``video_stride = 0`` ablation. Every stage writes
into ``WORK/`` and is skipped when its output is already complete, so a killed run is
continued by running the same command again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from robodream.config import replace as config_replace
from robodream.config import to_dict
from robodream.data.collect import CollectConfig, collect
from robodream.data.lerobot import LeRobotDataset
from robodream.envs.meta_world import DEFAULT_CAMERAS, DEFAULT_PROPRIO
from robodream.errors import ConfigError, DatasetError
from robodream.eval.policy_eval import DEFAULT_EVAL_SEED, evaluate_policy
from robodream.policy.configuration import PolicyConfig
from robodream.policy.train import PolicyRunConfig, check_draw_weights, default_policy_train, train_policy
from robodream.tokenizer.model import TokenizerConfig
from robodream.tokenizer.train import TokenizerRunConfig, default_tokenizer_train, train_tokenizer
from robodream.train.loop import TrainConfig
from robodream.utils.io import atomic_write_json, read_json

#: The five tasks of the success target (easy reach to harder push/door).
BENCH_TASKS = ("reach-v3", "button-press-topdown-v3", "drawer-open-v3", "push-v3", "door-open-v3")


@dataclass
class Recipe:
    """A complete main-job recipe."""

    name: str = "demo"
    tasks: tuple[str, ...] = BENCH_TASKS
    demos_per_task: int = 50
    eval_episodes: int = 50
    eval_max_steps: int = 500
    image_size: int = 64  # square camera images, pixels
    cameras: tuple[str, ...] = DEFAULT_CAMERAS  # rendered cameras, in the policy's token order
    proprio: tuple[str, ...] = DEFAULT_PROPRIO  # parts of the proprioceptive state (envs.meta_world.PROPRIO_PARTS)
    workers: int = 1  # rollout processes of collection and evaluation (the results do not depend on it)
    expert_target: str = "tcp"  # the point the reach experts steer to the goal: tcp or hand (CollectConfig)
    with_segmentation: bool = False  # record per-camera segmentation (needed by PolicyConfig.keypoint_targets)
    augment_views: int = 0  # image augmentation: augmented copies per training episode (PolicyRunConfig)
    augment_pad: int = 4  # their maximum shift, pixels
    augment_color: float = 0.0  # their colour jitter strength
    # policy training's draw: one weight per task (a sample comes from task i with probability
    # w_i / sum(w)); empty: every task equally often (PolicyRunConfig.data_weight)
    task_weight: tuple[float, ...] = ()
    # demonstrations per task, one count per task (e.g. more of a task whose goal varies most);
    # empty: ``demos_per_task`` for every task
    task_demos: tuple[int, ...] = ()
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    tokenizer_train: TrainConfig = field(default_factory=default_tokenizer_train)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    policy_train: TrainConfig = field(default_factory=default_policy_train)
    videos_per_task: int = 2

    def __post_init__(self) -> None:
        self.tasks = tuple(self.tasks)
        self.task_weight = check_draw_weights(self.task_weight, len(self.tasks), "task_weight", "task")
        self.task_demos = tuple(self.task_demos)
        if self.task_demos and (len(self.task_demos) != len(self.tasks)
                                or not all(isinstance(n, int) and n >= 1 for n in self.task_demos)):
            raise ConfigError(f"task_demos needs one count >= 1 per task ({len(self.tasks)}), "
                              f"got {list(self.task_demos)}")

    def demos(self, i: int) -> int:
        """Demonstrations of task ``i`` (``task_demos[i]``, else ``demos_per_task``)."""
        return self.task_demos[i] if self.task_demos else self.demos_per_task


#: Supervised keypoints on the pixel stem (benchmarks/RESULTS.md, Change 8: reach 0.76 -> 0.88):
#: the recipes record segmentation and train two keypoints per camera on the goal and object.
KEYPOINT_POLICY = PolicyConfig(stem_keypoints=2, keypoint_targets=("goal", "object"))

#: The demo: the three easiest bench tasks, sized for under 20 minutes on the slower of our 2-core
#: hosts (benchmarks/RESULTS.md, "The demo at its budget"): one future frame (``video_stride``
#: 16, the chunk's last step: about half the cost of a training step at stride 4), a 100-step
#: tokenizer, 1000 policy steps at batch 32 with a learning rate of 1e-3 (5e-4 is sized for
#: 4000 steps), reach drawn three times as often and shown 50 goal positions (its goal is the
#: only thing that varies; 15 left the policy missing the goal's height); collection and
#: evaluation in two processes.
DEMO = Recipe(
    name="demo",
    with_segmentation=True,
    policy=replace(KEYPOINT_POLICY, video_stride=16),
    tasks=("reach-v3", "button-press-topdown-v3", "drawer-open-v3"),
    demos_per_task=15,
    task_demos=(50, 15, 15),
    task_weight=(3.0, 1.0, 1.0),
    workers=2,  # collection and evaluation in two processes (the same datasets and results as one)
    eval_episodes=10,
    eval_max_steps=300,
    tokenizer_train=replace(default_tokenizer_train(), steps=100, warmup_steps=50, val_every=0, checkpoint_every=50),
    policy_train=replace(default_policy_train(), steps=1000, batch_size=32, lr=1e-3, warmup_steps=100, val_every=0,
                         checkpoint_every=250),
)

#: 4000 policy steps at batch 64: tokenizer + policy train in 96 min on 2 CPU cores (AMD EPYC,
#: 2026-12-07; mean success 0.952 against 0.948 at 3000 steps; benchmarks/RESULTS.md, Change 10).
#: Reach is drawn twice as often as each other task (benchmarks/RESULTS.md, Change 9: reach 0.76 -> 0.90 at the
#: same total budget, the other tasks within two episodes).
SUCCESS_BENCH = Recipe(name="success", with_segmentation=True, policy=replace(KEYPOINT_POLICY),
                       policy_train=replace(default_policy_train(), steps=4000), task_weight=(2.0, 1.0, 1.0, 1.0, 1.0))


def dataset_complete(path: Path) -> bool:
    """Whether ``path`` holds a readable LeRobot dataset (a stage's output is complete)."""
    if not path.exists():
        return False
    try:
        LeRobotDataset(path)
        return True
    except DatasetError:
        return False


def run_complete(path: Path) -> bool:
    """Whether ``path`` holds a finished training run (weights and results.json)."""
    return (path / "model.safetensors").is_file() and (path / "results.json").is_file()


def demos_and_tokenizer(recipe: Recipe, work: str | Path, *, log=print) -> tuple[list[str], Path, dict[str, float]]:
    """The first two stages of a recipe in ``work``: ``recipe.demos(i)`` expert episodes of
    task i (``work/data/<task>``, ``robodream collect``) and a tokenizer trained on all of them
    (``work/tokenizer``). A complete stage is skipped, an unfinished one continued or redone.

    Returns:
        the dataset directories (in ``recipe.tasks`` order), the tokenizer run, and
        ``{"collect_s", "tokenizer_s"}`` (wall seconds of this call's stages).

    Raises:
        UnknownTaskError: not a Meta-World task (from collect).
    """
    work = Path(work)
    timings: dict[str, float] = {}
    datasets = []
    t0 = time.perf_counter()
    for i, task in enumerate(recipe.tasks):
        path = work / "data" / task
        if not dataset_complete(path):
            log(f"collecting {recipe.demos(i)} expert episodes of {task} -> {path}")
            collect(CollectConfig(task=task, episodes=recipe.demos(i), image_size=recipe.image_size,
                                  cameras=recipe.cameras, proprio=recipe.proprio, expert_target=recipe.expert_target,
                                  with_segmentation=recipe.with_segmentation),
                    path, overwrite=path.exists(), workers=recipe.workers)
        datasets.append(str(path))
    timings["collect_s"] = time.perf_counter() - t0

    tok = work / "tokenizer"
    t0 = time.perf_counter()
    if not run_complete(tok):
        log(f"training the tokenizer -> {tok}")
        train_tokenizer(TokenizerRunConfig(data=tuple(datasets), model=replace(recipe.tokenizer),
                                           train=replace(recipe.tokenizer_train)), tok, resume=tok.exists())
    timings["tokenizer_s"] = time.perf_counter() - t0

    return datasets, tok, timings


def run_recipe(recipe: Recipe, work: str | Path, *, log=print, policy_name: str = "policy",
               policy_overrides: dict[str, Any] | None = None, train_seed: int = 0) -> dict[str, Any]:
    """Run (or continue) a recipe in ``work``; returns a summary with per-task results.

    Layout: ``work/data/<task>``, ``work/tokenizer``, ``work/<policy_name>``,
    ``work/eval/<policy_name>/<task>``, ``work/<policy_name>_summary.json``.
    """
    work = Path(work)
    datasets, tok, timings = demos_and_tokenizer(recipe, work, log=log)

    pol = work / policy_name
    t0 = time.perf_counter()
    if not run_complete(pol):
        log(f"training the policy -> {pol}")
        model = replace(recipe.policy, **(policy_overrides or {}))
        train_cfg = replace(recipe.policy_train, seed=train_seed)
        train_policy(PolicyRunConfig(data=tuple(datasets), tokenizer=str(tok), model=model, train=train_cfg,
                                     augment_views=recipe.augment_views, augment_pad=recipe.augment_pad,
                                     augment_color=recipe.augment_color, data_weight=recipe.task_weight),
                     pol, resume=pol.exists())
    timings["policy_s"] = time.perf_counter() - t0

    per_task = {}
    t0 = time.perf_counter()
    for task in recipe.tasks:
        out = work / "eval" / policy_name / task
        if (out / "results.json").is_file():
            r = read_json(out / "results.json")
        else:
            log(f"evaluating {policy_name} on {task} ({recipe.eval_episodes} episodes) -> {out}")
            r = evaluate_policy(pol, task, recipe.eval_episodes, out, seed_start=DEFAULT_EVAL_SEED,
                                max_steps=recipe.eval_max_steps, n_videos=recipe.videos_per_task,
                                workers=recipe.workers, overwrite=out.exists())  # an incomplete one is redone
        per_task[task] = {k: r[k] for k in ("success_rate", "n_episodes", "ci95", "mean_steps_to_success",
                                            "latency_ms_p50", "latency_ms_p90")}
        per_task[task]["out"] = str(out)
    timings["eval_s"] = time.perf_counter() - t0
    pol_meta = read_json(pol / "results.json")
    rates = [v["success_rate"] for v in per_task.values()]
    summary = {
        "recipe": to_dict(recipe), "policy": str(pol), "policy_overrides": policy_overrides or {},
        "per_task": per_task, "mean_success_rate": sum(rates) / len(rates), "min_success_rate": min(rates),
        "policy_results": pol_meta, "timings_s": timings,
        "training_s": training_seconds(tok) + training_seconds(pol),
    }
    atomic_write_json(work / f"{policy_name}_summary.json", summary)
    return summary


def training_seconds(run: Path) -> float:
    """Wall time of a run's training loop from its metrics.jsonl (sum of logged intervals)."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0.0
    import json

    rows = [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
    total, prev = 0.0, 0
    for r in rows:
        if r.get("steps_per_s"):
            total += (r["step"] - prev) / r["steps_per_s"]
        prev = r["step"]
    return total


def recipe_from_json(d: dict[str, Any], base: Recipe) -> Recipe:
    """Override fields of ``base`` from a JSON dict, strictly (nested configs merged field by field).

    Example: ``{"tasks": ["reach-v3"], "demos_per_task": 5, "policy_train": {"steps": 100}}``.
    ``task_weight`` and ``task_demos`` belong to their task list: overriding ``tasks`` without
    them draws every task equally often and collects ``demos_per_task`` of each.

    Raises:
        ConfigError: an unknown key (named) or a bad value.
    """
    if "tasks" in d:
        d = {"task_weight": [], "task_demos": [], **d}
    return config_replace(base, d)
