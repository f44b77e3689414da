"""Child processes that never outlive the harness: each is started in its own session (process group), and
an interrupted parent stops the whole group, so `accelerate launch` ranks and vLLM workers go with it.

A parent that cannot stop anything (SIGKILLed: a Ray worker killed by Ray, by the OOM killer, by `kill -9`) is
covered by Linux's parent-death signal: every child started here, and every rank of `accelerate launch`
(`die_with_parent`, called first thing in a rank: torch starts ranks in sessions of their own), is SIGKILLed by
the kernel the moment its parent dies."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

GRACE_SECONDS = 30  # what an interrupted child gets to close its MLflow run as KILLED before SIGKILL


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def start_group(command: list[str], **popen) -> subprocess.Popen:
    """Popen in a new session: the child and everything it starts form one group that `stop_groups` ends; the
    child is SIGKILLed if this process dies first."""
    popen.setdefault("stdin", subprocess.DEVNULL)  # a worker reads its stages there; anything else reads nothing
    return subprocess.Popen(command, start_new_session=True, preexec_fn=_death_signal_setter(os.getpid()), **popen)


def die_with_parent(expected_parent: str = "") -> None:
    """Ask the kernel to SIGKILL this process when its parent dies. A parent that died before this call has
    already handed us to a reaper: then exit now. `expected_parent`: a word of the parent's command line
    (checked because a reaper's pid is not always 1)."""
    parent = os.getppid()
    setter = _death_signal_setter(parent)
    if setter is None:
        return
    setter()
    if expected_parent:
        try:
            command = Path(f"/proc/{parent}/cmdline").read_bytes()
        except OSError:
            command = b""
        if expected_parent.encode() not in command:
            os._exit(1)


def _death_signal_setter(parent: int):
    """A function for the child's side of fork (it must take no locks: libc is loaded here, in the parent):
    set the parent-death signal, then exit if the parent is already gone. None where there is no prctl."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_signal() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # it died between fork and prctl: no signal will come
            os._exit(1)

    return set_signal


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
