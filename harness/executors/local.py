"""The local executor: the stages of a plan on this machine, one at a time in this process or several at once
in long-lived worker processes (`executor.max_parallel`), each worker given its GPUs through
CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import subprocess
import sys
import time
from pathlib import Path

from harness.executors import close_cell_run, settled_without_running
from harness.executors.scheduler import run_stages
from harness.plan import Stage, visible_gpu_count
from harness.processes import GRACE_SECONDS, start_group, stop_groups
from harness.stages.files import log_path, outcome_path
from harness.stages.outcomes import FAILED, outcome
from harness.stages.runner import execute

logger = logging.getLogger(__name__)


def run_in_process(stages: list[Stage], files: dict[str, Path], reporter) -> dict[str, dict]:
    """One stage after another in this process, with the caller's progress bars."""
    outcomes: dict[str, dict] = {}
    for stage in stages:
        outcomes[stage.id] = settled_without_running(stage, outcomes, reporter) or execute(files[stage.id], reporter)
    return outcomes


def run_in_workers(
    stages: list[Stage], files: dict[str, Path], reporter, tracker, workers: int, cpus_per_stage: int, worker_log: Path
) -> dict[str, dict]:
    """Up to `workers` ready stages at once, each in a long-lived `python -m harness.stages --worker` process
    (harness.stages.worker) that keeps its imports from one stage to the next."""
    threads = cpus_per_stage or max(1, (os.cpu_count() or 1) // workers)
    pool = WorkerProcesses(files, reporter, tracker, workers, threads, _visible_devices(), worker_log)
    return run_stages(stages, pool, reporter)


class WorkerProcesses:
    """The local pool (scheduler.Pool): worker processes, each in its own session (an interrupt reaches every
    process it started, `accelerate launch` ranks included) and pinned to the GPUs it was started with.

    A stage runs on an idle worker that sees exactly as many GPUs as the stage asks for; else a new worker is
    started on free GPUs (retiring idle workers that hold them, or an idle one to make room), so no two live
    workers share a GPU. A worker whose stage failed or died is retired: the next stage gets a fresh process,
    never one a failure may have left in a bad state (a CUDA error, a half-loaded library)."""

    def __init__(
        self, files: dict[str, Path], reporter, tracker, size: int, threads: int, devices: list[str], log: Path
    ):
        self.files, self.reporter, self.tracker = files, reporter, tracker
        self.size, self.threads, self.devices, self.log = size, threads, devices, log
        self.workers: list[_Worker] = []

    def refusal(self, stage: Stage) -> str | None:
        if stage.gpus > len(self.devices):
            return f"{stage.id} asks for {stage.gpus} GPU(s) and this machine shows {len(self.devices)}"
        return None

    def start(self, stage: Stage) -> bool:
        worker = self._worker_for(stage.gpus)
        if worker is None:
            return False
        worker.give(stage, self.files[stage.id])
        self.reporter.stage(stage.label, "start", f"(log: {log_path(self.files[stage.id])})")
        return True

    def running(self) -> int:
        return sum(worker.stage is not None for worker in self.workers)

    def finished(self, timeout: float) -> list[tuple[Stage, dict]]:
        busy = {worker.replies: worker for worker in self.workers if worker.stage is not None}
        if not busy:
            time.sleep(timeout)
            return []
        answered = [busy[stream] for stream in select.select(list(busy), [], [], timeout)[0]]
        dead = [worker for worker in busy.values() if worker.process.poll() is not None and worker not in answered]
        done = []
        for worker in answered + dead:
            stage, path = worker.stage, self.files[worker.stage.id]
            replied = worker.answer()
            result = _outcome_of(stage, path, None if replied else worker.exit_status())
            if not replied:  # the stage could not end its cell's run: the worker died under it
                close_cell_run(stage, self.tracker, result["failure"])
            if not replied or result["status"] == FAILED:
                self._retire(worker)
            done.append((stage, result))
        return done

    def stop(self, interrupted: bool) -> None:
        if interrupted:
            stop_groups([worker.process for worker in self.workers])
        else:
            for worker in self.workers:
                worker.close()
        self.workers = []

    def _worker_for(self, gpus: int) -> _Worker | None:
        idle = [worker for worker in self.workers if worker.stage is None]
        for worker in idle:
            if len(worker.devices) == gpus:
                return worker
        held_by_busy = {device for worker in self.workers if worker.stage is not None for device in worker.devices}
        held = {device for worker in self.workers for device in worker.devices}
        unheld = [device for device in self.devices if device not in held]
        held_by_idle = [device for device in self.devices if device in held and device not in held_by_busy]
        chosen = (unheld + held_by_idle)[:gpus]
        if len(chosen) < gpus:
            return None
        for worker in idle:
            if set(worker.devices) & set(chosen):
                self._retire(worker)
        if len(self.workers) >= self.size:
            idle = [worker for worker in self.workers if worker.stage is None]
            if not idle:
                return None
            self._retire(idle[0])
        worker = _Worker(chosen, bool(self.devices), self.threads, self.log)
        self.workers.append(worker)
        return worker

    def _retire(self, worker: _Worker) -> None:
        worker.close()
        self.workers.remove(worker)


class _Worker:
    """One `python -m harness.stages --worker` process and the stage it runs (None when idle)."""

    def __init__(self, devices: list[str], gpu_machine: bool, threads: int, log: Path):
        self.devices = devices
        self.stage: Stage | None = None
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if gpu_machine:  # a stage that asked for none sees none, so it cannot take memory on another's GPU
            environment["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as stderr:  # what the worker says between stages; each stage's output goes to its log
            self.process = start_group(
                [sys.executable, "-m", "harness.stages", "--worker"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env=environment,
                text=True,
                bufsize=1,
            )
        self.replies = self.process.stdout

    def give(self, stage: Stage, path: Path) -> None:
        self.stage = stage
        with contextlib.suppress(BrokenPipeError):  # it died while idle: `finished` reports it, with its status
            self.process.stdin.write(f"{path}\n")
            self.process.stdin.flush()

    def answer(self) -> bool:
        """Read the worker's answer for its stage; False when it died without one."""
        line = self.replies.readline()  # readable, or the worker is gone: then "" at once
        self.stage = None
        return bool(line.strip())

    def exit_status(self) -> int | None:
        """The status of a worker that closed its answers without one: it is exiting, if not reaped yet."""
        try:
            return self.process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:  # it closed its stdout and lives on: end it
            stop_groups([self.process])
            return self.process.poll()

    def close(self) -> None:
        """End of input: an idle worker exits at once; waited for so no process outlives the run."""
        with contextlib.suppress(BrokenPipeError, OSError):
            self.process.stdin.close()
        try:
            self.process.wait(timeout=GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            stop_groups([self.process])


def _visible_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip() and device.strip() != "-1"]
    return [str(index) for index in range(visible_gpu_count())]


def _outcome_of(stage: Stage, path: Path, code: int | None) -> dict:
    """The outcome the stage wrote; a worker that died (exit status `code`) before writing one failed with it."""
    written = outcome_path(path)  # stage files are this invocation's own: an outcome there is this run's
    if written.is_file():
        from harness.runs import read_json

        return read_json(written)
    how = f"was killed by signal {-code}" if code and code < 0 else f"exited {code}"
    return outcome(stage, FAILED, failure=f"the stage's worker process {how} (log: {log_path(path)})")
