"""A long-lived stage worker: `python -m harness.stages --worker` runs one stage file after another in this
process, so torch, transformers and TRL are imported once per worker, not once per stage (5-8 s each).

The protocol is a line per stage. The executor writes a stage file's path on stdin; the worker runs it
(`runner.execute`, which writes <stage>.outcome.json) and answers with one JSON line `{"path", "status"}` on the
stdout it was started with. Everything else the stage prints (trainers' stdout, warnings, tracebacks) goes to
the stage's own log file, as it did when every stage was a process of its own; between stages, to stderr.
The worker ends at the end of stdin; SIGTERM interrupts the stage it runs (its cell's MLflow run is marked
KILLED) and ends it with 130.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path

from harness.stages.files import log_path
from harness.stages.runner import execute


def serve(commands, replies) -> None:
    """Answer each stage path read from `commands` with its outcome's status on `replies`."""
    for line in commands:
        path = Path(line.strip())
        if not line.strip():
            continue
        with _output_to(log_path(path)):
            result = execute(path)
        replies.write(json.dumps({"path": str(path), "status": result["status"]}) + "\n")
        replies.flush()


def main() -> int:
    # The answers keep the stdout the executor reads; fd 1 and 2 are pointed at each stage's log in turn, so a
    # stray print can never break a reply line.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        serve(sys.stdin, replies)
    except KeyboardInterrupt:
        return 130
    return 0


@contextlib.contextmanager
def _output_to(path: Path):
    """fd 1 and 2 (so C extensions and subprocesses too) append to `path` for the block, then return."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(path, "a") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in zip((1, 2), saved):
            os.dup2(copy, fd)
            os.close(copy)
