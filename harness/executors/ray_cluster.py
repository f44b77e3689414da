"""The Ray executor: every stage a Ray task asking for its CPUs, GPUs and memory; Ray starts a task when the
tasks it waits on have returned (their outcomes are its arguments), on whichever node has room.

- `ray.address=local` starts a Ray instance on this machine for the run; `auto` joins the cluster `ray start`
  made this machine part of; `<host>:<port>` joins that cluster's head.
- Each task runs `harness.stage.execute` on the stage file in a fresh worker process (`max_calls=1`: the
  worker exits afterwards, so a stage's GPU memory is gone before the next stage on that GPU starts).
- A stage that fails by itself returns a failed outcome and is never retried; a worker that dies (killed, out
  of memory, node lost) is retried `executor.retries` times by Ray, and the new attempt resumes the stage in
  the same MLflow run. When none is left, that stage fails alone: its cell's run is marked FAILED, the other
  cells go on.
- Ctrl-C (or SIGTERM) cancels every unfinished task; the rerun resumes.
- Run folders must be on storage every node sees, and the MLflow store must be a tracking server: a cluster
  with a node other than this machine is refused with a SQLite store.
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

from harness.executors import report_finished, settled_without_running, waits
from harness.plan import EVALUATE, TRAIN, PlannedStage
from harness.runs import RunRefused
from harness.stage import BLOCKED, FAILED, outcome, one_line
from harness.tracking_retry import ANSWERED_ENV

logger = logging.getLogger(__name__)


def run_on_ray(stages: list[PlannedStage], files: dict[str, Path], reporter, suite, tracker) -> dict[str, dict]:
    import ray

    address = suite.ray.address
    try:
        ray.init(
            address=None if address == "local" else address,
            # The store answered this command: a stage that starts during an outage waits for it like the rest.
            runtime_env={"env_vars": {ANSWERED_ENV: os.environ[ANSWERED_ENV]}} if ANSWERED_ENV in os.environ else None,
            include_dashboard=False,
            log_to_driver=False,  # each stage writes its own log file beside its stage file
            configure_logging=False,
        )
    except Exception as error:  # an unreachable head, a refused connection: one line naming the address
        raise RunRefused(f"cannot join the Ray cluster at ray.address={address}: {one_line(error)}") from None
    try:
        if tracker.uri.startswith("sqlite:") and address != "local" and not _every_node_is_this_machine(ray):
            raise RunRefused(
                f"a Ray cluster with other nodes cannot share the SQLite store '{tracker.uri}': start an MLflow "
                "tracking server and pass tracking.uri=http://<host>:<port> (README, 'On a cluster')"
            )
        return _run(ray, stages, files, reporter, suite, tracker)
    finally:
        ray.shutdown()


def _run(ray, stages, files, reporter, suite, tracker) -> dict[str, dict]:
    executor = suite.executor
    task = ray.remote(max_calls=1)(_stage_task)
    references: dict[str, object] = {}
    outcomes: dict[str, dict] = {}
    for stage in stages:
        known = {dependency: outcomes[dependency] for dependency in waits(stage) if dependency in outcomes}
        if len(known) == len(waits(stage)):  # everything it waits on was settled without Ray: settle it too
            settled = settled_without_running(stage, outcomes, reporter)
            if settled:
                outcomes[stage.id] = settled
                continue
        pending = [dependency for dependency in waits(stage) if dependency in references]
        references[stage.id] = task.options(
            name=stage.id,
            num_cpus=executor.cpus_per_stage or 1,
            num_gpus=stage.gpus,
            memory=int(executor.memory_gb * 2**30) or None,
            max_retries=executor.retries,
            retry_exceptions=False,  # a stage's own failure is an outcome, never an exception: only deaths retry
        ).remote(str(files[stage.id]), stage.waits_on, known, pending, *(references[d] for d in pending))
        reporter.stage(stage.label, "start", "(queued on Ray)")

    by_id = {stage.id: stage for stage in stages}
    unfinished = {reference: stage_id for stage_id, reference in references.items()}
    try:
        while unfinished:
            ready, _ = ray.wait(list(unfinished), num_returns=1)
            for reference in ready:
                stage = by_id[unfinished.pop(reference)]
                try:
                    result = ray.get(reference)
                except Exception as error:  # the worker died and no retry was left, or a dependency's did
                    result = outcome(stage, FAILED, failure=f"its Ray task ended: {one_line(error)}")
                    _close_cell_run(stage, tracker, result["failure"])
                outcomes[stage.id] = result
                report_finished(reporter, stage, result)
    except KeyboardInterrupt:
        for reference in unfinished:
            ray.cancel(reference, force=True)
        for stage_id in unfinished.values():
            _close_cell_run(by_id[stage_id], tracker, "interrupted", status="KILLED")
        raise
    return outcomes


def _stage_task(path: str, hard: list[str], known: dict[str, dict], pending: list[str], *results: dict) -> dict:
    """Runs on a Ray worker: the stage, unless something it needs did not complete."""
    from harness.plan import PlannedStage
    from harness.runs import read_json
    from harness.stage import execute

    outcomes = {**known, **dict(zip(pending, results))}
    failed = [dependency for dependency in hard if outcomes[dependency]["status"] in (FAILED, BLOCKED)]
    if failed:
        stage = PlannedStage(**read_json(Path(path))["stage"])
        return outcome(stage, BLOCKED, failure=f"not started: {failed[0]} did not complete")
    return execute(Path(path))


def _close_cell_run(stage: PlannedStage, tracker, reason: str, status: str = "FAILED") -> None:
    """A cell whose worker died left its MLflow run RUNNING: end it, so nothing stays RUNNING; the rerun
    reopens the same run (its id is in the cell folder) instead of creating a second one."""
    from harness import record

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


def _every_node_is_this_machine(ray) -> bool:
    """Every live node of the cluster has one of this machine's addresses (any interface's, not only the one
    the host name resolves to: Ray picks the address of the default route)."""
    import psutil  # Ray's own dependency

    local = {"localhost", socket.gethostname()}
    local |= {address.address for addresses in psutil.net_if_addrs().values() for address in addresses}
    return all(node["NodeManagerAddress"] in local for node in ray.nodes() if node.get("Alive"))
