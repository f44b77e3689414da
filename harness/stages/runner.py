"""Running one stage file: `execute` (in this process, whoever calls it: an executor, a worker, a Ray actor) and
`main`, the command `python -m harness.stages <stage.json> [--rank]` or `--worker` (a long-lived worker,
harness.stages.worker); each stage's log records go to its log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import traceback
from pathlib import Path

from harness.errors import UserError
from harness.plan import BASE, EVALUATE, JUDGE, REWARD_MODEL, SFT, TASK, TRAIN
from harness.runs import OutOfSpace, read_json, write_json
from harness.secrets import RedactingFilter
from harness.stages import base_model, evaluate, judge, reward_model, sft, task, train
from harness.stages.cell_run import RUN_ID_FILE
from harness.stages.context import SilentReporter, StageContext
from harness.stages.files import log_path, outcome_path
from harness.stages.outcomes import FAILED, one_line, outcome, skipped_outcome
from harness.tracking import TrackingError

logger = logging.getLogger(__name__)

# A user's data or settings (ConfigError, TaskDataError, ...): one line, exit code 2, no traceback. The
# UserErrors that are not the input's (a full disk, an unreachable tracking store) are caught before these, as
# failures with bad_input False.
BAD_INPUT_ERRORS = (UserError,)
NOT_THE_INPUTS_ERRORS = (OutOfSpace, TrackingError)

RUNNERS = {
    TASK: task.run,
    BASE: base_model.run,
    SFT: sft.run,
    REWARD_MODEL: reward_model.run,
    JUDGE: judge.run,
    TRAIN: train.run,
    EVALUATE: evaluate.run,
}  # the report runs in the driver (harness.pipeline), after every cell


def execute(path: Path, reporter=None) -> dict:
    """Run the stage in `path` in this process; return its outcome (also written to <stage>.outcome.json).
    KeyboardInterrupt (Ctrl-C, SIGTERM) propagates after the cell's MLflow run is marked KILLED."""
    try:
        result = _execute(path, reporter)
    finally:
        _release_memory()
    write_json(outcome_path(path), result)
    return result


def _execute(path: Path, reporter) -> dict:
    context = StageContext(read_json(path), reporter or SilentReporter(), path)
    stage = context.stage
    with _log_to(log_path(path)):
        if stage.done:
            result = skipped_outcome(stage)
            context.reporter.stage(stage.label, "skip", "complete in an earlier run")
        else:
            try:
                result = RUNNERS[stage.kind](context)
                context.flush_metrics()
            except KeyboardInterrupt:
                raise
            except NOT_THE_INPUTS_ERRORS as error:  # one line naming the folder or the store; the rerun resumes
                result = outcome(stage, FAILED, failure=str(error))
            except BAD_INPUT_ERRORS as error:
                result = outcome(stage, FAILED, failure=str(error), bad_input=True)
            except Exception as error:
                logger.error("stage %s failed:\n%s", stage.id, traceback.format_exc())
                result = outcome(stage, FAILED, failure=f"{one_line(error)} (log: {log_path(path)})")
        result["timings"] = context.timings
        result["pid"] = os.getpid()  # which process ran it: a worker runs many stages
        if result["status"] == FAILED:
            context.reporter.stage(stage.label, "fail", result["failure"])
    return result


def _release_memory() -> None:
    """Between stages that run in one process (serially, or in a worker): free what the stage left, then freeze
    what survives (imported modules, their caches) out of the garbage collector's way.

    A full collection walks every object alive. With torch, transformers, TRL and MLflow imported that is
    millions, about 0.5 s a walk here, and accelerate and the judge collect at every model they drop: 29 s of
    a 225 s tiny seed before this. Frozen objects are never walked again (gc.freeze, the permanent
    generation), so later collections cost what the stage itself allocated. What the stage made is garbage
    by now and goes in the collection before the freeze; what it cached on purpose lives on anyway.

    A stage on a GPU hands the GPU on too: what training cached must be free before vLLM, which refuses to
    start below gpu_memory_utilization x total."""
    import gc

    gc.collect()
    gc.freeze()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


@contextlib.contextmanager
def _log_to(path: Path):
    """This stage's log records (and the warnings of the libraries it calls) go to its log file too."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    handler.addFilter(RedactingFilter())  # a stage's log is read by people too: no key or password in it
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.stages <stage.json>`: exit 0 when the stage completed or was complete, 2 when it
    failed (its one-line reason on stderr and in <stage>.outcome.json), 130 when interrupted.
    `--rank`: one rank of a multi-process training stage, started by `accelerate launch` (ranks.py)."""
    import signal

    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        print("usage: python -m harness.stages <stage.json> [--rank] | --worker", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    if args == ["--worker"]:
        from harness.stages import worker

        return worker.main()
    path = Path(args[0])
    try:
        if "--rank" in args:
            from harness.processes import die_with_parent

            # torch starts each rank in a session of its own: a launcher SIGKILLed with its stage (a Ray worker
            # killed) would leave the ranks training; the kernel ends them with it instead.
            die_with_parent(expected_parent="accelerate")
            context = StageContext(read_json(path), SilentReporter(), path)
            prepared = context.prepared(context.stage.seed, with_judge=False)
            run_id = (context.cell_folder() / RUN_ID_FILE).read_text().strip()
            with _log_to(log_path(path).with_suffix(f".rank{os.environ.get('RANK', '0')}.log")):
                train.train_in_rank(context, prepared, run_id)
            return 0
        result = execute(path)
    except KeyboardInterrupt:
        print(f"harness.stages: interrupted: {path}", file=sys.stderr)
        return 130
    if result["status"] == FAILED:
        print(f"harness.stages: {result['stage']} failed: {result['failure']}", file=sys.stderr)
        return 2
    return 0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt
