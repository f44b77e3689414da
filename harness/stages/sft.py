"""The SFT stage: a seed's supervised fine-tune of the base model, the policy every cell starts from."""

from __future__ import annotations

from harness.algorithms.sft import run_sft
from harness.stages.context import StageContext
from harness.stages.outcomes import COMPLETE, outcome


def run(context: StageContext) -> dict:

    seed = context.stage.seed
    inputs = context.task_inputs(seed)  # before the folder is begun: bad data leaves nothing behind
    with context.timed("train") as folder:
        with context.reporter.progress(f"SFT (seed {seed}) steps") as advance:
            run_sft(
                inputs.base_model,
                inputs.task_data,
                context.suite,
                seed,
                folder,
                context.parent_logger("prepare/sft"),
                advance,
                context.flush_metrics,
            )
    return outcome(context.stage, COMPLETE)
