"""Executors run a plan's stages: each stage is the same `harness.stages` command whoever runs it.

- `local.run_in_process`: one stage after another in this process (executor.max_parallel=1);
- `local.run_in_workers`: up to executor.max_parallel ready stages at once (auto, the default: one per core or
  GPU), each in one of as many long-lived `python -m harness.stages --worker` processes given the GPUs it
  asked for through CUDA_VISIBLE_DEVICES;
- `ray_cluster.run_on_ray`: the same on Ray actors, each asking for one stage's CPUs and GPUs.

The two parallel ones share `scheduler.run_stages`, which hands a stage to a worker when what it waits on has
settled.

Every executor takes the stages in plan order (the report excluded) with their stage files and returns each
stage's outcome by id. A stage whose hard dependency failed is `blocked` and never started; a stage whose
folder is complete is `skipped` without starting anything.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness import record
from harness.plan import EVALUATE, TRAIN, Stage
from harness.stages.outcomes import BLOCKED, FAILED, SKIPPED, headline, outcome, skipped_outcome

logger = logging.getLogger(__name__)


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


def close_cell_run(stage: Stage, tracker, reason: str, status: str = "FAILED") -> None:
    """A cell whose worker died (a local worker process, a Ray actor) left its MLflow run RUNNING: end it, so
    nothing stays RUNNING; the rerun reopens the same run (its id is in the cell folder) instead of creating a
    second one."""

    if stage.kind not in (TRAIN, EVALUATE):
        return
    cell_folder = Path(stage.folder).parent if stage.kind == TRAIN else Path(stage.folder)
    id_file = cell_folder / "mlflow_run_id"
    if not id_file.is_file():
        return
    run_id = id_file.read_text().strip()
    try:
        if tracker.client.get_run(run_id).info.status != "RUNNING":
            return
        state = record.STATUS_KILLED if status == "KILLED" else record.STATUS_FAILED
        tracker.set_tags(run_id, {record.TAG_STATUS: state, record.TAG_FAILURE: reason[:4000]})
        tracker.finish(run_id, status)
    except Exception:  # the tracking store is the stage's problem to report, not this bookkeeping's
        logger.warning("could not close the MLflow run of %s", stage.id, exc_info=True)
