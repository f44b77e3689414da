"""The judge stage (judge.kind trained): a seed's small pairwise judge, trained on its preference pairs, and its
agreement with the gold reward on held-out pairs (harness/judges/training.py)."""

from __future__ import annotations

from harness import record
from harness.judges.templates import load_template
from harness.judges.training import train_judge
from harness.plan import TASK
from harness.runs import write_json
from harness.stages.context import StageContext
from harness.stages.inputs import task_module
from harness.stages.outcomes import COMPLETE, outcome
from harness.tasks.common import load_task_data


def run(context: StageContext) -> dict:

    seed, suite = context.stage.seed, context.suite
    module = task_module(context.config.task_name)
    task_data = load_task_data(
        context.prepared_folder(TASK, seed) / "data.json"
    )  # the task's own text, no chat template
    gold = module.gold_reward if module.HAS_GOLD_REWARD else None
    with context.timed("train") as folder:
        metrics = train_judge(
            task_data,
            load_template(suite.judge.template),
            suite.judge.training,
            folder / "model",
            seed,
            suite.device,
            gold,
        )
        write_json(folder / "metrics.json", metrics)
    agreement = metrics.get(record.PREPARE_JUDGE_AGREEMENT)
    if agreement is not None:
        context.reporter.stage(context.stage.label, "info", f"agreement with gold on held-out pairs {agreement:.3f}")
    return outcome(context.stage, COMPLETE)
