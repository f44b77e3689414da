"""The loop every parallel executor shares: the plan's stages, in `start_order`, handed to a pool of long-lived
workers as soon as what they wait on has settled and a worker can take them.

A pool (local.WorkerProcesses, ray_cluster.StageActors) says whether it can start a stage now (`start`), which
stages finished (`finished`, waiting up to a timeout), how many run (`running`), and stops its workers (`stop`).
Which worker takes which stage, and when a worker is replaced, is the pool's business.
"""

from __future__ import annotations

from typing import Protocol

from harness.executors import report_finished, settled_without_running, waits
from harness.plan import PREPARE_KINDS, Stage
from harness.stages.outcomes import FAILED, outcome

POLL_SECONDS = 0.2


class Pool(Protocol):
    def refusal(self, stage: Stage) -> str | None:
        """Why no worker of this pool can ever run the stage (it asks for more GPUs than there are), else None."""

    def start(self, stage: Stage) -> bool:
        """Start the stage on a worker if one can take it now."""

    def finished(self, timeout: float) -> list[tuple[Stage, dict]]:
        """The stages that ended since the last call, with their outcomes; waits up to `timeout` for one."""

    def running(self) -> int: ...

    def stop(self, interrupted: bool) -> None:
        """End every worker: at once when interrupted (their cells' runs marked KILLED), else when idle."""


def run_stages(stages: list[Stage], pool: Pool, reporter) -> dict[str, dict]:
    """Every stage's outcome by id. A stage whose hard dependency failed is blocked and never started; a complete
    one is skipped without a worker. Ctrl-C stops every worker (what they ran resumes on the rerun)."""
    pending = start_order(stages)
    outcomes: dict[str, dict] = {}
    try:
        while pending or pool.running():
            for stage in list(pending):
                if not all(dependency in outcomes for dependency in waits(stage)):
                    continue
                settled = settled_without_running(stage, outcomes, reporter)
                refusal = None if settled else pool.refusal(stage)
                if refusal:
                    settled = outcome(stage, FAILED, bad_input=True, failure=refusal)
                    reporter.stage(stage.label, "fail", refusal)
                if settled:
                    outcomes[stage.id] = settled
                    pending.remove(stage)
                elif pool.start(stage):
                    pending.remove(stage)
            if pending and not pool.running():  # nothing will settle: a stage waits on one outside the plan
                raise RuntimeError(f"no stage can start: {pending[0].id} waits for a stage that never runs")
            for stage, result in pool.finished(POLL_SECONDS):
                outcomes[stage.id] = result
                report_finished(reporter, stage, result)
    except BaseException:
        pool.stop(interrupted=True)
        raise
    pool.stop(interrupted=False)
    return outcomes


def start_order(stages: list[Stage]) -> list[Stage]:
    """The order in which ready stages take free workers: every seed's prepare chain (task, base model, SFT,
    reward model, judge) before any cell, else plan order. The chains are the run's critical path: started
    first, they run side by side, and every seed's cells are ready while there are cells left to run, instead of
    the last seed's chain running alone at the end."""
    return sorted(stages, key=lambda stage: stage.kind not in PREPARE_KINDS)  # stable: plan order within each
