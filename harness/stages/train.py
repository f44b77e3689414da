"""The train stage: one cell's algorithm trained, in this process or under `accelerate launch` (ranks.py) when
it asks for several; opens the cell's MLflow run (cell_run.py) and logs train/* to it."""

from __future__ import annotations

import contextlib
import os
import resource
import time

from harness import record
from harness.algorithms.context import TrainContext, no_progress
from harness.algorithms.spec import algorithm
from harness.generation.rollouts import rollout_generator
from harness.rewards import training_reward_function
from harness.runs import OutputFolder, discard_resume_checkpoints, read_json, write_json
from harness.stages.cell_run import cell_attempt, open_cell_run
from harness.stages.context import StageContext
from harness.stages.inputs import Prepared
from harness.stages.outcomes import COMPLETE, outcome

TRAIN_RESULT = "result.json"  # written by rank 0 of a training stage: checkpoint, spend, steps
WORKER_PID = "worker.pid"  # the process training a cell, for whoever needs to find (or kill) it


def run(context: StageContext) -> dict:
    """Train one cell's algorithm: in this process, or under `accelerate launch` when it asks for several."""
    prepared = context.prepared(context.stage.seed, with_judge=False)  # before the folder is begun
    run_id = open_cell_run(context, prepared)
    # Who samples this cell's rollouts, "auto" decided here: the same function the algorithm asks.
    context.tracker.set_tags(
        run_id, {record.TAG_ROLLOUT_GENERATOR: rollout_generator(context.suite, record.algorithm_of(context.stage.arm))}
    )
    stage = OutputFolder(context.folder)
    label = context.stage.label
    with cell_attempt(context, run_id):
        context.reporter.stage(label, "start")
        stage.begin(keep_partial=True)  # the trainer resumes from its last checkpoint in there
        with stage.writing():
            (stage.folder / WORKER_PID).write_text(str(os.getpid()))
            started = time.perf_counter()
            if context.stage.processes > 1:
                from harness.stages.ranks import launch_ranks

                launch_ranks(context)
            else:
                train_in_rank(context, prepared, run_id)
            result = read_json(stage.folder / TRAIN_RESULT)
        seconds = time.perf_counter() - started
        cost = {
            **result["spend"],
            record.COST_TRAIN_STEPS: float(result["final_step"]),
            record.COST_WALL_TIME_S: seconds,
            record.COST_PEAK_MEMORY_MB: result[record.COST_PEAK_MEMORY_MB],
            record.COST_PROCESSES: float(context.stage.processes),
        }
        discard_resume_checkpoints(stage.folder)  # the final model is saved: no pickle outlives the stage
        stage.complete({"checkpoint": result["checkpoint"], "cost": cost})
    context.timings.append({"stage": label, "kind": "train", "seconds": seconds})
    context.reporter.stage(label, "done", f"{seconds:.1f}s")
    return outcome(context.stage, COMPLETE, run_id=run_id)


def train_in_rank(context: StageContext, prepared: Prepared, run_id: str) -> None:
    """The algorithm's training in this process: the only one, or one rank of `accelerate launch`. Only the
    main process logs and writes the result; the algorithm reduces what it logs over the ranks."""

    main_process = int(os.environ.get("RANK", "0")) == 0
    arm, seed, suite = context.stage.arm, context.stage.seed, context.suite
    name = record.algorithm_of(arm)
    peak_before = _reset_peak_memory()
    train_context = TrainContext(
        algorithm=name,
        config=context.config.arms[arm],
        suite=suite,
        seed=seed,
        base_dir=prepared.sft_dir,
        reward_model_dir=prepared.reward_model_dir,
        task_data=prepared.inputs.task_data,
        reward_function=training_reward_function(
            suite.reward.source,
            suite.reward.missing_stop_penalty,
            prepared.inputs.task_module,
            prepared.reward_model_dir,
            suite.device,
        ),
        output_dir=context.folder,
        snapshots=suite.evaluation.checkpoints,
        flush_metrics=context.tracker.flush if main_process else (lambda: None),
        log_metrics=(
            (
                lambda step, metrics: context.tracker.log_metrics(
                    run_id, {f"{record.TRAIN_PREFIX}{k}": v for k, v in metrics.items()}, step
                )
            )
            if main_process
            else (lambda step, metrics: None)
        ),
    )
    progress = (
        context.reporter.progress(f"{context.stage.label} steps")
        if main_process
        else contextlib.nullcontext(no_progress)
    )
    with progress as advance:
        train_context.progress = advance
        result = algorithm(name).train(train_context)
    if main_process:
        write_json(
            context.folder / TRAIN_RESULT,
            {
                "checkpoint": str(result.checkpoint_dir),
                "spend": result.spend,
                "final_step": result.final_step,
                record.COST_PEAK_MEMORY_MB: _peak_memory_mb(peak_before),
            },
        )


def _reset_peak_memory() -> float:
    """On CUDA, reset the allocator's peak so each cell measures its own; returns the RSS peak so far (MB)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory_mb(rss_peak_before: float) -> float:
    """CUDA peak allocated by this cell; on CPU the process's peak resident memory (an upper bound)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return max(rss_peak_before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
