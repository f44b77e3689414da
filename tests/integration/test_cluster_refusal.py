"""A Ray cluster that cannot be joined, and one whose worker dies under a multi-process stage (issue 23), as a user
meets them (the CLI in a subprocess), against real `ray start` clusters on loopback:

- a closed port, a malformed `ray.address` (refused without connecting), a name that does not resolve, and a real
  cluster that requires a token the run does not have: each refused within 30 s in one line naming
  `ray.address`, exit code 2, no banner, no Ray log line, no run folder and no MLflow store made;
- a Ray worker SIGKILLed while it runs `accelerate launch` with two ranks: the launcher and both ranks are gone
  at once (the process table read from /proc), and the cell fails alone.

Every Ray process here is this module's own: its clusters live in their own temporary folders (never `ray stop`,
which ends every Ray cluster of the machine), and HOME is a temporary folder, so no ~/.ray/auth_token is read or
written.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command
from prepared import with_prepared_stages

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
RUN = [*SCALED_DOWN_TINY, "only=[dpo]", "executor=ray"]
REFUSED_WITHIN_SECONDS = 30
TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(home: Path, **extra: str) -> dict[str, str]:
    values = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    return {**values, "HOME": str(home), "RAY_USAGE_STATS_ENABLED": "0", **extra}


class Cluster:
    """`ray start --head` on loopback in a temporary folder of its own; stopped by killing its own processes."""

    def __init__(self, home: Path, **ray_environment: str):
        # Ray's Unix sockets live under its temp folder: the path must stay short (108 bytes for a socket's path).
        self.folder = Path(tempfile.mkdtemp(prefix="/tmp/hr"))
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = environment(home, **ray_environment)
        started = subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                "--head",
                "--num-cpus",
                "2",
                "--port",
                str(self.port),
                "--node-ip-address",
                "127.0.0.1",
                "--include-dashboard",
                "false",
                "--disable-usage-stats",
                "--temp-dir",
                str(self.folder),
            ],
            capture_output=True,
            text=True,
            timeout=180,
            env=self.env,
        )
        assert started.returncode == 0, started.stderr[-2000:]

    def stop(self) -> None:
        for pid in processes_mentioning(str(self.folder)):
            os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def open_cluster(home):
    cluster = Cluster(home, RAY_AUTH_MODE="disabled")
    yield cluster
    cluster.stop()


def refused(cwd: Path, home: Path, address: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    result = subprocess.run(
        harness_run_command(*RUN, f"ray.address={address}"),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=180,
        env=environment(home),
    )
    return result, time.monotonic() - started


def assert_refused_in_one_line(result: subprocess.CompletedProcess, seconds: float, cwd: Path, *said: str) -> None:
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert seconds < REFUSED_WITHIN_SECONDS, f"refused after {seconds:.0f}s"
    assert result.stdout == "", f"printed before refusing: {result.stdout!r}"  # no banner
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), result.stderr[-3000:]  # no Ray log line
    for words in ("ray.address=", *said):
        assert words in lines[0], lines[0]
    assert not (cwd / "runs").exists() and not list(cwd.rglob("mlflow.db")), "a refused run left files behind"


def test_a_closed_port_is_refused_in_seconds(tmp_path, home):
    port = free_port()  # nothing listens there once the probe is closed
    result, seconds = refused(tmp_path, home, f"127.0.0.1:{port}")
    assert_refused_in_one_line(
        result, seconds, tmp_path, f"tried a TCP connection to 127.0.0.1:{port}", "connection refused"
    )


@pytest.mark.parametrize(
    "address, why",
    [
        ("256.1.1.1:6379", "'256.1.1.1' is not an IP address"),
        ("10.0.0.1", "expected <host>:<port>"),
        ("head.example.com:99999", "port 99999 is outside 1-65535"),
        ("head_node!:6379", "'head_node!' is not a host name"),
    ],
)
def test_a_malformed_address_is_refused_without_connecting(tmp_path, home, address, why):
    result, seconds = refused(tmp_path, home, address)
    # "is not an address" is said by the parser, before any name lookup or connection.
    assert_refused_in_one_line(result, seconds, tmp_path, f"ray.address={address} is not an address Ray can join", why)


def test_a_name_that_does_not_resolve_is_refused(tmp_path, home):
    result, seconds = refused(tmp_path, home, "ray-head.invalid:6379")  # .invalid never resolves (RFC 2606)
    assert_refused_in_one_line(result, seconds, tmp_path, "'ray-head.invalid' does not resolve")


def test_a_cluster_that_needs_a_token_is_refused(tmp_path, home):
    cluster = Cluster(home, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN)
    try:
        result, seconds = refused(tmp_path, home, cluster.address)
    finally:
        cluster.stop()
    assert_refused_in_one_line(result, seconds, tmp_path, cluster.address, "authentication token")


def test_the_validate_command_refuses_a_malformed_address(tmp_path, home):
    result = subprocess.run(
        [sys.executable, "-m", "harness", "validate", "suite=tiny", "executor=ray", "ray.address=256.1.1.1:6379"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "ray.address=256.1.1.1:6379 is not an address" in result.stderr, result.stderr


def test_ranks_die_with_their_sigkilled_ray_worker(scaled_down_run, tmp_path, home, open_cluster):
    with_prepared_stages(scaled_down_run, tmp_path)  # the shared prepared stages: the first Ray task trains DPO
    process = subprocess.Popen(
        harness_run_command(
            *RUN, f"ray.address={open_cluster.address}", "launcher.num_processes=2", "executor.retries=0"
        ),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment(home),
    )
    try:
        kill_the_worker_while_ranks_train(process, tmp_path)
        stdout, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:  # a failed assertion: this test's command goes too
            process.kill()
            process.communicate()
    assert process.returncode == 2, (stdout + stderr)[-3000:]
    assert "1 cell(s) failed: dpo-s0" in stderr, stderr[-3000:]
    assert not [pid for pid in processes_mentioning(str(tmp_path)) if is_alive(pid)], "a process of the run is left"


def kill_the_worker_while_ranks_train(process: subprocess.Popen, cwd: Path) -> None:
    pid_files = lambda: list((cwd / "runs" / "tiny" / "cells").glob("dpo-s0-*/train/worker.pid"))  # noqa: E731
    # A rank is `python -u -m harness.stages <file> --rank`; the launcher's own command line names it too.
    ranks = lambda: [
        pid
        for pid in processes_mentioning(str(cwd))  # noqa: E731
        if "--rank" in command_of(pid) and "accelerate" not in command_of(pid)
    ]
    deadline = time.monotonic() + 900
    while not (pid_files() and len(ranks()) >= 2):
        assert process.poll() is None, f"the command ended before two ranks trained: {process.communicate()}"
        assert time.monotonic() < deadline, "two ranks never started"
        time.sleep(0.2)
    time.sleep(2)  # the ranks are past their start (a rank's own guard is set first thing)
    worker = int(pid_files()[0].read_text())
    launched = set(ranks()) | {parent_of(pid) for pid in ranks()}  # the ranks and `accelerate launch`
    assert worker not in launched and len(launched) == 3, [(pid, command_of(pid)) for pid in launched]

    os.kill(worker, signal.SIGKILL)
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and [pid for pid in launched if is_alive(pid)]:
        time.sleep(0.1)
    left = [(pid, command_of(pid)) for pid in launched if is_alive(pid)]
    assert not left, f"outlived their SIGKILLed Ray worker: {left}"


# ---------------------------------------------------------------------------------------------------------
# The process table, as `ps` reads it
# ---------------------------------------------------------------------------------------------------------


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and text in command_of(int(entry.name)) and int(entry.name) != os.getpid():
            found.append(int(entry.name))
    return found


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def parent_of(pid: int) -> int:
    return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])


def is_alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
