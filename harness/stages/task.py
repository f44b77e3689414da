"""The task stage: a seed's task data (train prompts, preference pairs, evaluation rows), built and saved."""

from __future__ import annotations

from harness.stages.context import StageContext
from harness.stages.inputs import task_module
from harness.stages.outcomes import COMPLETE, outcome
from harness.tasks.common import save_task_data


def run(context: StageContext) -> dict:

    with context.timed("other") as folder:
        module = task_module(context.config.task_name)
        save_task_data(module.build_task_data(context.config.task, context.stage.seed), folder / "data.json")
    return outcome(context.stage, COMPLETE)
