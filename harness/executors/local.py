"""The local executor: the stages of a plan on this machine, one at a time in this process or several at once
as subprocesses (`executor.max_parallel`), each given the GPUs it asked for through CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from harness.executors import report_finished, settled_without_running, waits
from harness.plan import Stage, visible_gpu_count
from harness.processes import start_group, stop_groups
from harness.stages.files import log_path, outcome_path
from harness.stages.outcomes import FAILED, outcome
from harness.stages.runner import execute

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.2


def run_in_process(stages: list[Stage], files: dict[str, Path], reporter) -> dict[str, dict]:
    """One stage after another in this process, with the caller's progress bars."""
    outcomes: dict[str, dict] = {}
    for stage in stages:
        outcomes[stage.id] = settled_without_running(stage, outcomes, reporter) or execute(files[stage.id], reporter)
    return outcomes


def run_in_subprocesses(
    stages: list[Stage], files: dict[str, Path], reporter, max_parallel: int, cpus_per_stage: int
) -> dict[str, dict]:
    """Up to `max_parallel` ready stages at once, each `python -m harness.stages <file>` in its own session (so
    an interrupt reaches every process it started, `accelerate launch` ranks included)."""
    devices = _visible_devices()
    free = list(devices)
    threads = cpus_per_stage or max(1, (os.cpu_count() or 1) // max_parallel)
    pending = list(stages)
    running: dict[str, tuple[subprocess.Popen, list[str], Stage]] = {}
    outcomes: dict[str, dict] = {}
    try:
        while pending or running:
            for stage in list(pending):
                if not all(dependency in outcomes for dependency in waits(stage)):
                    continue
                settled = settled_without_running(stage, outcomes, reporter)
                if settled:
                    outcomes[stage.id] = settled
                    pending.remove(stage)
                    continue
                if stage.gpus > len(devices):
                    outcomes[stage.id] = outcome(
                        stage,
                        FAILED,
                        bad_input=True,
                        failure=(f"{stage.id} asks for {stage.gpus} GPU(s) and this machine shows {len(devices)}"),
                    )
                    pending.remove(stage)
                    continue
                if len(running) >= max_parallel or stage.gpus > len(free):
                    continue
                given, free = free[: stage.gpus], free[stage.gpus :]
                running[stage.id] = (_start(files[stage.id], given, bool(devices), threads), given, stage)
                pending.remove(stage)
                reporter.stage(stage.label, "start", f"(log: {log_path(files[stage.id])})")
            for stage_id, (process, given, stage) in list(running.items()):
                code = process.poll()
                if code is None:
                    continue
                del running[stage_id]
                free += given
                outcomes[stage_id] = _finished(stage, files[stage_id], code)
                report_finished(reporter, stage, outcomes[stage_id])
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        stop_groups([process for process, _, _ in running.values()])
        raise
    return outcomes


def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip() and device.strip() != "-1"]
    return [str(index) for index in range(visible_gpu_count())]


def _start(path: Path, devices: list[str], gpu_machine: bool, threads: int) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if gpu_machine:  # a stage that asked for none sees none, so it cannot take memory on another's GPU
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    with open(log_path(path), "a") as log:
        return start_group(
            [sys.executable, "-m", "harness.stages", str(path)], stdout=log, stderr=subprocess.STDOUT, env=environment
        )


def _finished(stage: Stage, path: Path, code: int) -> dict:
    """The outcome the stage wrote; a process that died before writing one failed with its exit status."""
    written = outcome_path(path)  # stage files are this invocation's own: an outcome there is this run's
    if written.is_file():
        from harness.runs import read_json

        return read_json(written)
    how = f"was killed by signal {-code}" if code < 0 else f"exited {code}"
    return outcome(stage, FAILED, failure=f"the stage's process {how} (log: {log_path(path)})")
