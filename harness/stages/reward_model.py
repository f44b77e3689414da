"""The reward-model stage: a seed's proxy reward model, trained on its preference pairs or loaded."""

from __future__ import annotations

from harness.algorithms.reward_model import load_reward_model, train_reward_model
from harness.plan import SFT
from harness.stages.context import StageContext
from harness.stages.outcomes import COMPLETE, outcome


def run(context: StageContext) -> dict:

    seed, suite = context.stage.seed, context.suite
    inputs = context.task_inputs(seed)
    policy = context.prepared_folder(SFT, seed) / "model" if suite.sft.enabled else inputs.base_model
    trained = suite.reward_model.source == "train"
    with context.timed("train" if trained else "other") as folder:
        if trained:
            with context.reporter.progress(f"reward model (seed {seed}) steps") as advance:
                _, metrics = train_reward_model(
                    policy,
                    inputs.task_data,
                    suite,
                    seed,
                    folder,
                    context.parent_logger("prepare/reward_model"),
                    advance,
                    context.flush_metrics,
                )
        else:
            _, metrics = load_reward_model(inputs.task_data, suite, folder)
        context.reporter.stage(context.stage.label, "info", f"held-out pair accuracy {metrics['heldout_accuracy']:.3f}")
    return outcome(context.stage, COMPLETE)
