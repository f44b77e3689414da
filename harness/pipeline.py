"""The pipeline: build a suite's plan, hand its stages to an executor, then write the report.

    plan (harness.plan) -> stage files (harness.stages) -> executor (harness.executors) -> report

`harness run` holds the suite's lock, opens the invocation's MLflow parent run, writes one stage file per
stage (each names the resolved config, the tracking URI and the parent run), and lets the executor chosen by
`executor.name` / `executor.max_parallel` run them. Whatever ran a stage, its outcome comes back the same way;
a cell's failure is reported and the other cells go on; a prepare stage's failure ends the command with its
one line once the stages that could still run have run.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from harness import record
from harness.config import ResolvedConfig, flatten
from harness.errors import UserError
from harness.executors.local import run_in_process, run_in_workers
from harness.generation.select import resolve_generator_name
from harness.judges.preflight import check_judge_endpoint
from harness.plan import EVALUATE, PREPARE_KINDS, REPORT, TRAIN, Plan, build_plan, parallel_workers
from harness.report.leaderboard_runs import write_report_and_leaderboard
from harness.runs import SuiteLock, require_writable, write_json
from harness.stages.files import Invocation, stage_file
from harness.stages.outcomes import BLOCKED, FAILED
from harness.tasks.common import TaskDataError
from harness.tracking import Tracker, default_tracking_uri
from harness.tracking_retry import call_retried

logger = logging.getLogger(__name__)


@dataclass
class CellOutcome:
    name: str
    arm: str
    seed: int
    status: str  # complete | skipped | failed
    run_id: str | None
    summary: dict[str, float] = field(default_factory=dict)
    failure: str = ""


@dataclass
class RunOutcome:
    suite: str
    tracking_uri: str
    experiment: str
    parent_run_id: str
    cells: list[CellOutcome]
    report_path: Path | None = None
    leaderboard: object = None  # harness.report.leaderboard_runs.LeaderboardLink

    @property
    def failed(self) -> list[CellOutcome]:
        return [cell for cell in self.cells if cell.status == "failed"]


class PrepareFailed(UserError, RuntimeError):
    """Task data, base model, SFT or reward model could not be prepared; one line with the reason."""


def tracking_uri_of(config: ResolvedConfig) -> str:
    return config.suite.tracking.uri or default_tracking_uri(Path(config.suite.output_dir).resolve())


def executor_label(config: ResolvedConfig) -> str:
    executor = config.suite.executor
    if executor.name == "ray":
        return f"ray ({config.suite.ray.address})"
    workers = parallel_workers(config.suite)
    return "local" if workers == 1 else f"local ({workers} workers)"


@contextlib.contextmanager
def ready_to_run(config: ResolvedConfig):
    """Everything that can refuse a run, checked before anything of it is made (no run folder, no MLflow run) and
    before the CLI prints its banner: the output folder, the judge's endpoint, the Ray cluster, the tracking
    store. Yields the Tracker the run writes with; the cluster (when executor=ray) stays joined for the block."""

    plan = build_plan(config)
    tracking_uri = tracking_uri_of(config)
    require_writable(plan.root.parent)
    check_judge_endpoint(config.suite.judge)
    with contextlib.ExitStack() as cluster:
        if config.suite.executor.name == "ray":
            from harness.executors.ray_cluster import joined_cluster

            cluster.enter_context(joined_cluster(config.suite, tracking_uri))
        if tracking_uri.startswith("sqlite:///"):
            Path(tracking_uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        yield Tracker(tracking_uri, config.suite.name, config.suite.tracking.retry_seconds)


def run_suite(config: ResolvedConfig, reporter, tracker) -> RunOutcome:
    """The run, inside `ready_to_run` (the CLI checks first, then prints its banner); `tracker` is the one it yielded."""

    plan = build_plan(config)
    plan.root.mkdir(parents=True, exist_ok=True)
    with SuiteLock(plan.root):
        # Holding the suite's lock, no other harness process of this output folder works on this suite: a run
        # still RUNNING whose heartbeat has stopped was left by a process that died (SIGKILL, power loss) and is
        # marked KILLED; one another command (any host) still beats for is left alone.
        tracker.kill_stale_runs(config.suite.name)
        return _run_locked(config, plan, tracker, reporter)


def _run_locked(config: ResolvedConfig, plan: Plan, tracker, reporter) -> RunOutcome:

    suite = config.suite
    parent_run_id = tracker.start_invocation(
        suite.name, {record.TAG_CONFIG_HASH: plan.config_hash, record.TAG_EXECUTOR: executor_label(config)}
    )
    tracker.log_params(parent_run_id, flatten(config.to_dict()))
    stage_dir = plan.root / "invocations" / parent_run_id
    config_file = stage_dir / "resolved.yaml"
    config_file.parent.mkdir(parents=True, exist_ok=True)
    config_file.write_text(config.to_yaml())
    invocation = Invocation(
        str(config_file),
        plan.config_hash,
        tracker.uri,
        parent_run_id,
        resolve_generator_name(suite.evaluation.generator),  # "auto" decided once, for every stage
        str(stage_dir),
        os.getcwd(),
    )
    stages = [stage for stage in plan.stages if stage.kind != REPORT]
    files = {stage.id: stage_file(invocation, stage) for stage in stages}
    with tracker.heartbeat(parent_run_id, lambda: _open_cell_run_ids(plan)):
        return _execute_and_report(config, plan, tracker, reporter, parent_run_id, stages, files, stage_dir)


def _open_cell_run_ids(plan: Plan) -> list[str]:
    """The MLflow run id of every cell of the plan that has one yet (a stage process writes it when it opens the run)."""
    found = (_cell_run_id(Path(stage.folder)) for stage in plan.stages if stage.kind == EVALUATE)
    return [run_id for run_id in found if run_id]


def _execute_and_report(config, plan, tracker, reporter, parent_run_id, stages, files, stage_dir) -> RunOutcome:
    suite = config.suite
    outcomes: dict[str, dict] = {}
    status = "FAILED"
    try:
        outcomes = _execute(config, stages, files, reporter, tracker, stage_dir)
        _raise_prepare_failure(stages, outcomes)
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM (the CLI turns it into KeyboardInterrupt)
        status = "KILLED"
        raise
    finally:
        # Stage timings of this invocation, for benchmarks/stage_times.py and for anyone asking where time went
        # (first: a tracking store that never came back fails the calls below).
        write_json(plan.root / "timings.json", [t for result in outcomes.values() for t in result.get("timings", [])])
        cells = _cells(plan, outcomes)
        tracker.set_tags(
            parent_run_id,
            {
                record.TAG_FAILED_CELLS: sum(cell.status == "failed" for cell in cells),
                # The cells this invocation used, computed now or kept: the report's current configuration.
                record.TAG_CELL_RUNS: ",".join(cell.run_id for cell in cells if cell.run_id),
            },
        )
        tracker.finish(parent_run_id, status)
    result = RunOutcome(suite.name, tracker.uri, record.experiment_name(suite.name), parent_run_id, cells)
    result.report_path, result.leaderboard = write_report(config, tracker.uri)
    return result


def _execute(config, stages, files, reporter, tracker, stage_dir: Path) -> dict[str, dict]:
    executor = config.suite.executor
    if executor.name == "ray":
        from harness.executors.ray_cluster import run_on_ray

        return run_on_ray(stages, files, reporter, config.suite, tracker)

    workers = parallel_workers(config.suite)
    if workers == 1:
        return run_in_process(stages, files, reporter)
    return run_in_workers(stages, files, reporter, tracker, workers, executor.cpus_per_stage, stage_dir / "workers.log")


def _raise_prepare_failure(stages, outcomes: dict[str, dict]) -> None:
    """Without prepared data and models no cell of that seed could run: the command ends with the first
    prepare stage's one line (bad data or settings as themselves, anything else with its log file)."""
    for stage in stages:
        result = outcomes.get(stage.id)
        if stage.kind in PREPARE_KINDS and result and result["status"] == FAILED:
            if result["bad_input"]:
                raise TaskDataError(result["failure"])
            raise PrepareFailed(f"preparing seed {stage.seed} failed at {stage.label}: {result['failure']}")


def _cells(plan: Plan, outcomes: dict[str, dict]) -> list[CellOutcome]:
    """One outcome per cell that ran or was kept; a cell's failure is its training's when training failed."""
    cells = []
    for stage in plan.stages:
        result = outcomes.get(stage.id)
        if stage.kind != EVALUATE or result is None:
            continue
        if result["status"] == BLOCKED:
            upstream = outcomes.get(f"{TRAIN}:{stage.cell}")
            if not upstream or upstream["status"] != FAILED:
                continue  # blocked by a prepare stage: that failure is the command's, not the cell's
            result = upstream
        run_id = result.get("run_id") or _cell_run_id(Path(stage.folder))
        status = "failed" if result["status"] == FAILED else result["status"]
        cells.append(
            CellOutcome(stage.cell, stage.arm, stage.seed, status, run_id, result.get("summary", {}), result["failure"])
        )
    return cells


def _cell_run_id(folder: Path) -> str | None:
    id_file = folder / "mlflow_run_id"
    return id_file.read_text().strip() if id_file.is_file() else None


def write_report(config: ResolvedConfig, tracking_uri: str):
    """The Markdown report, and the leaderboard runs that make the MLflow UI's runs table the leaderboard
    (one run per algorithm and configuration, replaced on every call); returns (report path, link).

    Its reads ride out a store outage like the run's writes: once the store has answered this command, a
    transient failure anywhere in it retries the whole report (reading again, then replacing the leaderboard runs
    and the file: nothing doubles) until the store is back or `tracking.retry_seconds` have passed."""

    return call_retried(
        tracking_uri,
        config.suite.tracking.retry_seconds,
        "the report",
        write_report_and_leaderboard,
        tracking_uri,
        config.suite.name,
        Path(config.suite.reports_dir),
    )
