"""Executors run a plan's stages: each stage is the same `harness.stages` command whoever runs it.

- `local.run_in_process`: one stage after another in this process (executor.max_parallel=1, the default);
- `local.run_in_subprocesses`: up to executor.max_parallel ready stages at once, each a `python -m
  harness.stages` subprocess given the GPUs it asked for through CUDA_VISIBLE_DEVICES;
- `ray_cluster.run_on_ray`: every stage a Ray task asking for its CPUs and GPUs, started by Ray when the
  stages it waits on have finished.

Every executor takes the stages in plan order (the report excluded) with their stage files and returns each
stage's outcome by id. A stage whose hard dependency failed is `blocked` and never started; a stage whose
folder is complete is `skipped` without starting anything.
"""

from __future__ import annotations

from harness.plan import Stage
from harness.stages.outcomes import BLOCKED, FAILED, SKIPPED, headline, outcome, skipped_outcome


def settled_without_running(stage: Stage, outcomes: dict[str, dict], reporter) -> dict | None:
    """The outcome of a stage that need not run (blocked or already complete), else None."""
    failed = [dependency for dependency in stage.waits_on if outcomes[dependency]["status"] in (FAILED, BLOCKED)]
    if failed:
        return outcome(stage, BLOCKED, failure=f"not started: {failed[0]} did not complete")
    if stage.done:
        reporter.stage(stage.label, "skip", "complete in an earlier run")
        return skipped_outcome(stage)
    return None


def waits(stage: Stage) -> list[str]:
    return [*stage.waits_on, *stage.soft_waits]


def report_finished(reporter, stage: Stage, result: dict) -> None:
    """The line a stage that ran elsewhere (a subprocess, a Ray task) gets when its outcome comes back."""
    if result["status"] in (FAILED, BLOCKED):
        reporter.stage(stage.label, "fail", result["failure"])
    elif result["status"] == SKIPPED:
        reporter.stage(stage.label, "skip", "complete in an earlier run")
    else:
        seconds = sum(t["seconds"] for t in result.get("timings", []) if t["stage"] == stage.label)
        reporter.stage(
            stage.label,
            "done",
            "  ".join(filter(None, [f"{seconds:.1f}s" if seconds else "", headline(result["summary"])])),
        )
