"""Child processes that never outlive the harness: each is started in its own session (process group), and
an interrupted parent stops the whole group, so `accelerate launch` ranks and vLLM workers go with it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

GRACE_SECONDS = 30  # what an interrupted child gets to close its MLflow run as KILLED before SIGKILL


def start_group(command: list[str], **popen) -> subprocess.Popen:
    """Popen in a new session: the child and everything it starts form one group that `stop_groups` ends."""
    return subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL, **popen)


def stop_groups(processes: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM every group, wait up to `grace` seconds for them all, then SIGKILL whatever is left of each
    group (a rank or worker that ignored SIGTERM, or outlived the process that started it)."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):  # it has exited already
            os.killpg(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


def wait_or_stop(process: subprocess.Popen) -> int:
    """Wait for a group's leader; on Ctrl-C or SIGTERM (KeyboardInterrupt) stop the whole group, then re-raise."""
    try:
        return process.wait()
    except KeyboardInterrupt:
        stop_groups([process])
        raise
