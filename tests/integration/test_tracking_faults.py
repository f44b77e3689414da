"""The tracking store's faults, injected for real on scaled-down tiny runs (issue 15):

- a real `mlflow server` on loopback SIGKILLed while a DPO cell trains and restarted on the same port and
  store: the command completes, with the final numbers and every training metric of an uninterrupted run,
  nothing RUNNING and one run per cell;
- a server SIGTERMed mid-cell that never comes back: the command ends in about `tracking.retry_seconds` with
  one line naming the URI (exit code 2, no traceback), every completed stage kept on disk; once the server is
  back, the same command resumes the cell from its checkpoint to the uninterrupted run's numbers while a
  second suite runs on the same server at the same time;
- two suites started at once on one fresh SQLite file: both complete with the uninterrupted run's numbers and
  every metric, no "database is locked", both reports written.

The session's shared scaled-down run (prepared.py) is the uninterrupted reference (CPU runs are deterministic:
its DPO and SFT-baseline cells are these runs' cells, without the resume checkpoints); every run here starts from
a copy of its prepared stages (task data, base model, SFT, reward model), so each runs the SFT baseline and the
DPO cell only.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command
from prepared import with_prepared_stages

pytestmark = pytest.mark.slow

# Checkpoints every 2 optimizer steps: DPO's 4 steps leave a checkpoint to stop the server at and resume from.
# One stage after another in the command's own process, as the tests below expect of the stage that meets an
# outage (DPO, after the SFT baseline's cell) and of what the terminal says about it; one torch thread, so the
# numbers equal those of the shared run (two workers of one thread each on these 2-core machines).
OVERRIDES = [
    *SCALED_DOWN_TINY,
    "only=[dpo]",
    "checkpoint_every=2",
    "executor.max_parallel=1",
    "executor.cpus_per_stage=1",
]
CHECKPOINT = "cells/dpo-s0-*/train/trainer/checkpoint-*"
SUITE_FILE = Path(__file__).resolve().parents[2] / "suites" / "tiny.yaml"


# ---------------------------------------------------------------------------------------------------------
# Helpers: a real tracking server, the harness as a user runs it, and what a user reads back from MLflow
# ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """`mlflow server` on loopback, one worker, its runs in a SQLite file and its artifacts in a folder of
    `folder`: stopped and started again on the same port and store, as an operator restarts it."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self, timeout: float = 180) -> None:
        log = open(self.folder / "server.log", "a")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--backend-store-uri",
                f"sqlite:///{self.folder / 'server.db'}",
                "--artifacts-destination",
                str(self.folder / "artifacts"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own group: its workers stop with it
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None, (self.folder / "server.log").read_text()[-3000:]
                time.sleep(0.3)
        raise AssertionError(f"mlflow server did not start in {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            self.process.wait(timeout=60)
        self.process = None


@pytest.fixture
def server(tmp_path):
    started = Server(tmp_path / "server")
    started.start()
    yield started
    started.stop(signal.SIGKILL)


def start_harness(cwd: Path, *extra: str, suite: str = "tiny") -> subprocess.Popen:
    return subprocess.Popen(
        harness_run_command(*OVERRIDES, *extra, suite=suite),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(process: subprocess.Popen, timeout: float = 600) -> tuple[int, str, str]:
    stdout, stderr = process.communicate(timeout=timeout)
    return process.returncode, stdout, stderr


def wait_for(cwd: Path, pattern: str, process: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not list(cwd.glob(pattern)):
        assert process.poll() is None, f"the command ended before {pattern} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {pattern} after {timeout}s"
        time.sleep(0.05)


def suite_copy(folder: Path, name: str) -> Path:
    """A second suite: the tiny suite under another name (another experiment, another run folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    shutil.copy(SUITE_FILE, path)
    return path


def record(uri: str, suite: str) -> dict:
    """What a user checks in MLflow: every run's status, and per cell run its eval/* values and train/* histories."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"harness/{suite}")
    assert experiment is not None, f"no experiment harness/{suite} at {uri}"
    runs = client.search_runs([experiment.experiment_id])
    cells = [run for run in runs if run.data.tags.get("harness.kind") == "cell"]
    return {
        "statuses": sorted((run.info.run_name, run.info.status) for run in runs),
        "cell_names": sorted(run.data.tags["harness.cell"] for run in cells),
        "eval": {
            run.data.tags["harness.cell"]: {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
            for run in cells
            if run.info.status == "FINISHED"
        },
        "train": {
            run.data.tags["harness.cell"]: {
                key: sorted(
                    (m.step, None if timing(key) else m.value) for m in client.get_metric_history(run.info.run_id, key)
                )
                for key in run.data.metrics
                if key.startswith("train/")
            }
            for run in cells
        },
    }


def timing(key: str) -> bool:
    """The trainer's wall-clock figures (train_runtime, samples per second) differ run to run: steps only."""
    return "runtime" in key or "per_second" in key


def assert_same_results(got: dict, reference: dict, metrics: bool = True) -> None:
    assert got["cell_names"] == ["dpo-s0", "sft-s0"], got["statuses"]  # one run per cell: none duplicated
    assert not [name for name, status in got["statuses"] if status == "RUNNING"], got["statuses"]
    assert got["eval"] == reference["eval"]
    if metrics:  # no metric lost (and none doubled) on the way
        assert got["train"] == reference["train"]


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("harness: error:")]


# The cells of OVERRIDES, which the shared run holds beside others.
CELLS = ("dpo-s0", "sft-s0")


@pytest.fixture(scope="module")
def reference(scaled_down_run) -> tuple[Path, dict]:
    """The uninterrupted run: the shared run's folder (prepared stages to copy) and its record of OVERRIDES' cells."""
    shared = record(f"sqlite:///{scaled_down_run / 'runs' / 'mlflow.db'}", "tiny")
    expected = {part: {cell: shared[part][cell] for cell in CELLS} for part in ("eval", "train")}
    return scaled_down_run, expected


# ---------------------------------------------------------------------------------------------------------
# Tracking server outages
# ---------------------------------------------------------------------------------------------------------


def test_a_server_killed_mid_cell_and_restarted_loses_nothing(reference, server, tmp_path):
    folder, expected = reference
    cwd = with_prepared_stages(folder, tmp_path / "run")
    run = start_harness(cwd, f"tracking.uri={server.uri}")  # the default window (minutes) covers a restart
    wait_for(cwd / "runs" / "tiny", CHECKPOINT, run)
    server.stop(signal.SIGKILL)  # a crash: in-flight requests are cut
    time.sleep(5)
    server.start()

    code, stdout, stderr = finish(run)
    assert code == 0, (stdout + stderr)[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert any(f"'{server.uri}' answers again" in line for line in stderr.splitlines()), stderr[-3000:]
    assert_same_results(record(server.uri, "tiny"), expected)


def test_a_server_that_never_comes_back_ends_in_one_line_then_the_rerun_resumes(reference, server, tmp_path):
    folder, expected = reference
    cwd = with_prepared_stages(folder, tmp_path / "run")
    window = 15
    tracking = [f"tracking.uri={server.uri}", f"tracking.retry_seconds={window}"]
    run = start_harness(cwd, *tracking)
    wait_for(cwd / "runs" / "tiny", CHECKPOINT, run)
    server.stop(signal.SIGTERM)
    stopped = time.monotonic()

    code, stdout, stderr = finish(run)
    waited = time.monotonic() - stopped
    assert code == 2, (stdout + stderr)[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = error_lines(stderr)
    assert len(errors) == 1 and server.uri in errors[0] and "tracking.retry_seconds" in errors[0], stderr[-3000:]
    assert waited < window + 60, f"ended {waited:.0f}s after the server stopped (window {window}s)"
    # Every completed stage kept: the prepared stages, the SFT baseline's cell, and DPO's checkpoint to resume from.
    from harness.runs import OutputFolder

    root = cwd / "runs" / "tiny"
    for stage in [*root.glob("prepare/*-s0-*"), *root.glob("cells/sft-s0-*")]:
        assert OutputFolder(stage).done, f"{stage} lost its completion"
    assert list(root.glob(CHECKPOINT))

    # The server is back: the same command resumes, while another suite runs on the same server at once.
    server.start()
    other = with_prepared_stages(folder, tmp_path / "other", suite="tiny2")
    second = start_harness(other, f"tracking.uri={server.uri}", suite=str(suite_copy(tmp_path / "suites", "tiny2")))
    rerun = start_harness(cwd, *tracking)
    code, stdout, stderr = finish(rerun)
    assert code == 0, (stdout + stderr)[-3000:]
    second_code, second_out, second_err = finish(second)
    assert second_code == 0, (second_out + second_err)[-3000:]

    resumed = record(server.uri, "tiny")
    # Training resumed from its checkpoint: the final numbers are the reference's, and every step has its metrics
    # (the steps after the checkpoint logged again; TRL's train/num_tokens counts afresh after a resume).
    assert_same_results(resumed, expected, metrics=False)
    for key, points in expected["train"]["dpo-s0"].items():
        assert {step for step, _ in points} <= {step for step, _ in resumed["train"]["dpo-s0"][key]}, key
    killed = [name for name, status in resumed["statuses"] if status == "KILLED"]
    assert killed == ["tiny-invocation"], resumed["statuses"]  # the first invocation, closed by the rerun
    assert_same_results(record(server.uri, "tiny2"), expected)


# ---------------------------------------------------------------------------------------------------------
# Concurrent suites on one store
# ---------------------------------------------------------------------------------------------------------


def test_two_suites_at_once_on_one_fresh_sqlite_file(reference, tmp_path):
    folder, expected = reference
    cwd = with_prepared_stages(folder, tmp_path / "run")
    with_prepared_stages(folder, cwd, suite="tiny2")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"  # no tables yet: both commands find it new
    # Stages in each command's own process as in the reference: executor.max_parallel=2 would train with one
    # thread per stage, and its floating-point sums would differ from the reference's in the 5th digit.
    extra = [f"tracking.uri={uri}"]
    runs = [
        start_harness(cwd, *extra),
        start_harness(cwd, *extra, suite=str(suite_copy(tmp_path / "suites", "tiny2"))),
    ]
    results = [finish(run) for run in runs]
    for code, stdout, stderr in results:
        assert code == 0, (stdout + stderr)[-3000:]
        assert "locked" not in stdout + stderr and "Traceback" not in stderr, (stdout + stderr)[-3000:]
    for suite in ("tiny", "tiny2"):
        assert (cwd / "reports" / f"{suite}.md").is_file()
        assert_same_results(record(uri, suite), expected)


OPEN_AT_ONCE = """
import sys, time
from harness.tracking import Tracker
uri, suite, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # every process opens the fresh file at the same moment
tracker = Tracker(uri, suite)
run_id = tracker.start_invocation(suite, {})
tracker.log_metrics(run_id, {"x": 1.0})
tracker.finish(run_id)
"""


def test_commands_opening_a_fresh_sqlite_file_at_once_all_start(tmp_path):
    """The first use of a SQLite file creates MLflow's tables: without a lock, processes doing it at once fail
    ("duplicate column name: step", "table _alembic_tmp_metrics already exists") and can leave the file
    half-migrated for good."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    start = time.time() + 8  # after every interpreter has imported MLflow
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", OPEN_AT_ONCE, uri, suite, str(start)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for suite in ("tiny", "tiny", "tiny2", "tiny3")  # two of one suite: its experiment is created once
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=180)
        assert process.returncode == 0, stderr[-3000:]
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiments = sorted(e.name for e in client.search_experiments())
    assert experiments == ["Default", "harness/tiny", "harness/tiny2", "harness/tiny3"]
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 4 and all(run.info.status == "FINISHED" and run.data.metrics == {"x": 1.0} for run in runs)


def test_a_run_another_live_command_writes_is_not_closed_as_stale(tmp_path):
    """The same suite in two output folders on one store: a command starting closes the runs a dead command
    left RUNNING (SIGKILL, a crash), never those of the other command still writing them. On this host the
    heartbeat's process is checked (a recycled pid or a dead one is stale at once)."""
    from harness.record import TAG_HEARTBEAT
    from harness.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    # A live `harness run` of this suite elsewhere: a real process with "harness" in its command line.
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)", "harness", "run", "suite=tiny"])
    try:
        run_id = tracker.start_invocation("tiny", {})
        tracker.set_tags(run_id, {TAG_HEARTBEAT: f"{time.time():.0f} {socket.gethostname()}:{other.pid}"})
        assert tracker.kill_stale_runs("tiny") == []
        assert tracker.client.get_run(run_id).info.status == "RUNNING"
    finally:
        other.kill()
        other.wait()
    assert tracker.kill_stale_runs("tiny") == [run_id]  # its process died: the run is closed, its beat still fresh
    assert tracker.client.get_run(run_id).info.status == "KILLED"


def test_another_hosts_run_is_live_while_its_heartbeat_is_fresh(tmp_path):
    """A run of another host cannot have its process checked: its heartbeat's age decides, and its cells follow
    their invocation's beat. Oracle: beats 10 s old are live, beats STALE_AFTER_SECONDS + 1 s old are stale."""
    from harness.record import PARENT_RUN_TAG, TAG_HEARTBEAT
    from harness.tracking import STALE_AFTER_SECONDS, Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    elsewhere = "another-host.example:4242"
    fresh, stale = f"{time.time() - 10:.0f} {elsewhere}", f"{time.time() - STALE_AFTER_SECONDS - 1:.0f} {elsewhere}"
    live_parent = tracker.start_invocation("tiny", {})
    tracker.set_tags(live_parent, {TAG_HEARTBEAT: fresh})
    live_cell = tracker.start_cell(live_parent, "dpo-s0", {"harness.suite": "tiny"})
    tracker.set_tags(live_cell, {TAG_HEARTBEAT: stale})  # its own beat old, its invocation's fresh: live
    dead_parent = tracker.start_invocation("tiny", {})
    tracker.set_tags(dead_parent, {TAG_HEARTBEAT: stale})
    dead_cell = tracker.start_cell(dead_parent, "ppo-s0", {"harness.suite": "tiny"})
    tracker.set_tags(dead_cell, {TAG_HEARTBEAT: stale})
    assert tracker.client.get_run(dead_cell).data.tags[PARENT_RUN_TAG] == dead_parent
    assert sorted(tracker.kill_stale_runs("tiny")) == sorted([dead_parent, dead_cell])
    statuses = {
        run_id: tracker.client.get_run(run_id).info.status
        for run_id in (live_parent, live_cell, dead_parent, dead_cell)
    }
    assert statuses == {live_parent: "RUNNING", live_cell: "RUNNING", dead_parent: "KILLED", dead_cell: "KILLED"}


def test_the_heartbeat_is_refreshed_while_the_block_runs(tmp_path, monkeypatch):
    from harness import tracking
    from harness.record import TAG_HEARTBEAT

    monkeypatch.setattr(tracking, "HEARTBEAT_SECONDS", 0.2)  # the interval, not the thing under test
    tracker = tracking.Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "tiny")
    run_id = tracker.start_invocation("tiny", {})
    cell = tracker.start_cell(run_id, "dpo-s0", {"harness.suite": "tiny"})
    beat = lambda run: float(tracker.client.get_run(run).data.tags[TAG_HEARTBEAT].split()[0])  # noqa: E731
    tracker.set_tags(run_id, {TAG_HEARTBEAT: f"1000 {socket.gethostname()}:1"})
    tracker.set_tags(cell, {TAG_HEARTBEAT: f"1000 {socket.gethostname()}:1"})
    with tracker.heartbeat(run_id, lambda: [cell]):
        time.sleep(1.5)
    now = time.time()
    assert now - 5 < beat(run_id) <= now and now - 5 < beat(cell) <= now
    assert tracker.client.get_run(run_id).data.tags[TAG_HEARTBEAT].endswith(f"{socket.gethostname()}:{os.getpid()}")


def test_a_store_unreachable_when_the_command_starts_is_refused_at_once(tmp_path):
    """The retry window is for a store that answered and went away, not for a wrong URI: refused in seconds."""
    from harness.tracking import Tracker, TrackingError

    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TrackingError) as refused:
        Tracker(uri, "tiny", retry_seconds=300)
    assert time.monotonic() - started < 30
    assert uri in str(refused.value) and "\n" not in str(refused.value)


# ---------------------------------------------------------------------------------------------------------
# The end-of-run report during an outage, and two hosts on one server (issue 23)
# ---------------------------------------------------------------------------------------------------------


def invocations(uri: str, suite: str = "tiny") -> list:
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name(f"harness/{suite}")
    if experiment is None:
        return []
    return client.search_runs([experiment.experiment_id], filter_string="tags.`harness.kind` = 'invocation'")


def poll(condition, process: subprocess.Popen, what: str, timeout: float = 600, every: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, f"the command ended before {what}: {process.communicate()}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(every)


def test_the_report_rides_out_a_server_stopped_while_it_runs(reference, server, tmp_path):
    """The invocation's run is closed just before the report reads the store (and rewrites the leaderboard runs,
    several seconds of work): the server is SIGKILLed at that moment and restarted 5 s later. The report's reads
    wait for it like the run's writes did, and the command completes with the uninterrupted run's record."""
    import mlflow

    folder, expected = reference
    cwd = with_prepared_stages(folder, tmp_path / "run")
    run = start_harness(cwd, f"tracking.uri={server.uri}")
    finished = lambda: any(r.info.status == "FINISHED" for r in invocations(server.uri))  # noqa: E731
    poll(finished, run, "a closed invocation run")
    server.stop(signal.SIGKILL)
    time.sleep(5)
    server.start()

    code, stdout, stderr = finish(run)
    assert code == 0, (stdout + stderr)[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert "did not answer (the report)" in stderr, stderr[-3000:]  # the outage met the report, not a write
    assert f"'{server.uri}' answers again" in stderr, stderr[-3000:]
    assert (cwd / "reports" / "tiny.md").is_file()
    assert_same_results(record(server.uri, "tiny"), expected)
    client = mlflow.MlflowClient(server.uri)
    board = client.get_experiment_by_name("harness/tiny/leaderboard")
    rows = client.search_runs([board.experiment_id])
    assert sorted(r.data.tags["harness.algorithm"] for r in rows) == ["dpo", "sft"]  # one row each: none doubled


def start_on_host(host: str, cwd: Path, *extra: str) -> subprocess.Popen:
    """`harness run` on a host of its own name: a UTS namespace (unshare) gives the process another host name,
    as a second machine has, on the same loopback server."""
    command = [
        "unshare",
        "--user",
        "--map-root-user",
        "--uts",
        "sh",
        "-c",
        'hostname "$0" && exec "$@"',
        host,
        *harness_run_command(*OVERRIDES, *extra),
    ]
    return subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_hosts_on_one_server_never_close_each_others_live_runs(reference, server, tmp_path):
    """host-a runs the suite; host-b starts the same suite against the same server while host-a's run is live.
    host-b closes RUNNING runs whose writer is gone before it starts; host-a's pid cannot be checked from
    host-b, its heartbeat can: it stays RUNNING, and both complete with the uninterrupted run's numbers."""
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "--uts", "hostname", "x"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"no user namespaces here to give a process another host name: {probe.stderr!r}")
    folder, expected = reference
    first = start_on_host("host-a", with_prepared_stages(folder, tmp_path / "a"), f"tracking.uri={server.uri}")
    poll(lambda: len(invocations(server.uri)) == 1, first, "host-a's invocation run", every=0.2)
    second = start_on_host("host-b", with_prepared_stages(folder, tmp_path / "b"), f"tracking.uri={server.uri}")
    try:
        # host-b makes its invocation run right after closing stale runs.
        poll(lambda: len(invocations(server.uri)) == 2, second, "host-b's invocation run", every=0.2)
        assert first.poll() is None, "host-a's run ended before host-b started: nothing was tested"
        by_host = {r.data.tags["harness.owner"].rpartition(":")[0]: r for r in invocations(server.uri)}
        assert set(by_host) == {"host-a", "host-b"}
        assert by_host["host-a"].info.status == "RUNNING", "host-b closed host-a's live run"
    finally:
        results = [finish(process) for process in (first, second)]
    for code, stdout, stderr in results:
        assert code == 0, (stdout + stderr)[-3000:]
    got = record(server.uri, "tiny")
    assert [status for _, status in got["statuses"]] == ["FINISHED"] * 6, got["statuses"]  # 2 invocations, 4 cells
    for cell, metrics in expected["eval"].items():
        assert got["eval"][cell] == metrics
