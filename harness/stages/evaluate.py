"""The evaluate stage: a cell's checkpoint (and its intermediate ones) evaluated, eval/* and cost/* logged, and
the cell's MLflow run closed. The SFT baseline's cell is this stage alone (it opens its run)."""

from __future__ import annotations

import json
from pathlib import Path

from harness import record
from harness.algorithms.spec import algorithm
from harness.generation.strategies import BestOfN, Sampling
from harness.metrics.evaluator import EvaluationSettings, evaluate_checkpoint
from harness.registry import GENERATORS
from harness.rewards import gold_reward_function
from harness.runs import OutputFolder, read_json, write_json
from harness.stages.cell_run import cell_attempt, finish_cell_run, log_judge_agreement, open_cell_run
from harness.stages.context import StageContext
from harness.stages.inputs import Prepared
from harness.stages.outcomes import COMPLETE, headline, outcome


def run(context: StageContext) -> dict:
    """Evaluate a cell's checkpoint (and its intermediate ones), log eval/* and cost/*, and close its run.
    An inference-time arm (best-of-n: trains_policy False) is evaluated as the best of its Config's `n` draws
    from its checkpoint (the SFT policy) per answer, its eval/kl the analytic bound, tagged as one."""
    arm, seed = context.stage.arm, context.stage.seed
    prepared = context.prepared(seed)
    run_id = open_cell_run(context, prepared)
    tracker, folder = context.tracker, context.cell_folder()
    log_judge_agreement(tracker, run_id, prepared)
    with cell_attempt(context, run_id):
        cost: dict[str, float] = {}
        checkpoint = prepared.sft_dir
        if arm != record.BASELINE:
            info = OutputFolder(folder / "train").info()
            checkpoint, cost = Path(info["checkpoint"]), info["cost"]
        strategy = _generation_strategy(context)
        baseline_samples = _baseline_samples(context) if arm != record.BASELINE else None
        graders = _Graders(context, prepared)
        # Intermediate checkpoints first, each logged as eval/* at its training step; the final one last, at the
        # last step, so it is the value MLflow shows (the latest step) and the one the report tables use.
        final_step = int(cost.get(record.COST_TRAIN_STEPS, 0))
        for step, snapshot in _snapshots(folder / "train" / "snapshots"):
            partial = _evaluate(
                context,
                f"{context.stage.cell} step {step}",
                prepared,
                snapshot,
                baseline_samples,
                graders,
                folder / "eval_snapshots" / f"step-{step}",
                strategy,
            )
            tracker.log_metrics(run_id, {f"{record.EVAL_PREFIX}{k}": v for k, v in partial["summary"].items()}, step)
        evaluation = _evaluate(
            context, context.stage.cell, prepared, checkpoint, baseline_samples, graders, folder / "eval", strategy
        )
        graders.close()
        tags = {record.TAG_BLEU_SIGNATURE: evaluation["bleu_signature"]}
        if not strategy.policy_is_a_model:
            # Best-of-n spends at inference: n completions (and n reward-model scores) per answer.
            cost.update(
                {
                    record.COST_COMPLETIONS_PER_ANSWER: float(strategy.n),
                    record.COST_EVAL_COMPLETIONS_GENERATED: float(evaluation["completions_generated"]),
                }
            )
            tags[record.TAG_KL_IS_BOUND] = "true"
        tracker.log_metrics(
            run_id, {f"{record.EVAL_PREFIX}{k}": v for k, v in evaluation["summary"].items()}, final_step
        )
        tracker.log_metrics(run_id, {f"{record.COST_PREFIX}{k}": v for k, v in cost.items()})
        tracker.set_tags(run_id, tags)
        tracker.log_artifact(run_id, folder / "eval" / "samples.jsonl", "eval")
        tracker.log_artifact(run_id, folder / "manifest.json")
        tracker.log_artifact(run_id, folder / "resolved_config.json", "config")
    summary = evaluation["summary"]
    finish_cell_run(tracker, run_id)
    OutputFolder(folder).complete({"run_id": run_id, "summary": summary})
    context.reporter.stage(context.stage.cell, "done", headline(summary))
    return outcome(context.stage, COMPLETE, run_id=run_id, summary=summary)


def _generation_strategy(context: StageContext):
    """How the cell's samples are drawn: the checkpoint's own, or for an inference-time algorithm (best-of-n)
    the best of its Config's `n` draws by the reward the online algorithms optimise
    (harness/algorithms/best_of_n.py)."""

    arm = context.stage.arm
    if arm == record.BASELINE or algorithm(record.algorithm_of(arm)).spec.trains_policy:
        return Sampling()
    reward = context.suite.reward
    return BestOfN(context.config.arms[arm].n, reward.source, reward.missing_stop_penalty)


def _evaluate(
    context: StageContext,
    name: str,
    prepared: Prepared,
    checkpoint: Path,
    baseline_samples,
    graders: "_Graders",
    folder: Path,
    strategy,
) -> dict:
    """One checkpoint's evaluation, kept in `folder` (samples.jsonl, summary.json); `strategy`: how its samples
    are drawn (harness.generation.strategies)."""

    stage = OutputFolder(folder)
    label = f"{name} evaluate"
    suite = context.suite
    if not stage.done:
        context.reporter.stage(label, "start")
        stage.begin()
        settings = EvaluationSettings(
            eval_rows=prepared.inputs.task_data.eval,
            config=suite.evaluation,
            seed=context.stage.seed,
            device=suite.device,
            reference_dir=prepared.sft_dir,
            reward_model_dir=prepared.reward_model_dir,
            gold_scorer=graders.gold,
            baseline_samples=baseline_samples,
            judge=graders.judge(),
            judge_vs_sft=suite.judge.vs_sft,
            judge_vs_reference=suite.judge.vs_reference,
            train_temperature=suite.sampling.temperature,
            strategy=strategy,
        )
        count = len(settings.rows)
        if settings.draws_at_train_temperature():
            count *= 2  # the prompts are sampled again at the training temperature, for kl_train_temperature
        with context.reporter.progress(f"{name} sampling", count) as advance:
            generator = GENERATORS.get(context.invocation.generator).create(
                suite.device, suite.evaluation.batch_size, advance
            )
            result = evaluate_checkpoint(checkpoint, generator, settings)
        with stage.writing():
            with open(folder / "samples.jsonl", "w") as handle:
                for sample in result.samples:
                    handle.write(json.dumps(sample) + "\n")
            write_json(
                folder / "summary.json",
                {
                    "summary": result.summary,
                    "bleu_signature": result.bleu_signature,
                    "completions_generated": result.completions_generated,
                },
            )
        stage.complete({"seconds": result.seconds})
        context.timings.append(
            {"stage": f"{label} (generate)", "kind": "generate", "seconds": result.seconds["generate"]}
        )
        context.timings.append({"stage": f"{label} (score)", "kind": "score", "seconds": result.seconds["score"]})
        context.reporter.stage(label, "done", f"{sum(result.seconds.values()):.1f}s")
    return read_json(folder / "summary.json")


def _baseline_samples(context: StageContext) -> list[dict] | None:
    """The SFT baseline's samples (completions, gold rewards) for the win rates against SFT; None when the
    baseline did not complete."""
    folder = context.plan.cell_folder(record.BASELINE, context.stage.seed)
    if not OutputFolder(folder).done:
        return None
    return [json.loads(line) for line in (folder / "eval" / "samples.jsonl").read_text().splitlines()]


class _Graders:
    """A cell's gold scorer and judge, loaded once for all its checkpoints and only when a checkpoint is
    actually evaluated (a resumed cell whose evaluations are complete loads nothing)."""

    def __init__(self, context: StageContext, prepared: Prepared):

        self.suite, self.prepared = context.suite, prepared
        self.gold = gold_reward_function(
            self.suite.gold, prepared.inputs.task_module, self.suite.device, self.suite.evaluation.batch_size
        )
        self._judge = None

    def judge(self):
        settings = self.suite.judge
        if self._judge is None and settings.enabled:
            if settings.kind == "gold":
                from harness.judges.gold import GoldJudge

                self._judge = GoldJudge(self.gold)
            else:
                from harness.judges.open import open_judge

                model = self.prepared.judge_dir if settings.kind == "trained" else settings.model
                self._judge = open_judge(settings, model, self.suite.device)
        return self._judge

    def close(self) -> None:
        if self._judge is not None:
            self._judge.close()
            self._judge = None


def _snapshots(folder: Path) -> list[tuple[int, Path]]:
    """The intermediate checkpoints a training stage saved, as (step, folder), in training order."""
    if not folder.is_dir():
        return []
    found = [
        (int(path.name.split("-")[-1]), path) for path in folder.glob("step-*") if (path / "config.json").is_file()
    ]
    return sorted(found)
