"""Executors end to end, as a user runs them (the CLI in a subprocess), on a scaled-down tiny suite:

- `executor.max_parallel=2` (two long-lived worker processes, each taking one ready stage after another) gives
  exactly the serial run's numbers;
- `executor=ray` on a real local Ray cluster (`ray start --head` on loopback, 2 CPUs) logging to a real
  `mlflow server` on loopback gives the serial run's numbers and MLflow structure; a Ray worker killed with
  SIGKILL during one cell's training fails that cell alone, and the rerun completes it in the same MLflow run.

Every run pins one torch thread per stage (executor.cpus_per_stage=1): float reductions depend on the thread
count, so bit-equal numbers across executors are only promised at an equal count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command

pytestmark = pytest.mark.slow

OVERRIDES = [*SCALED_DOWN_TINY, "only=[dpo,ppo]", "checkpoint_every=2", "executor.cpus_per_stage=1"]
BIN = Path(sys.executable).parent
# Params that say where and how a run ran, not what it computed.
PLACEMENT_PARAMS = ("executor.", "ray.", "tracking.", "output_dir", "reports_dir")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run(cwd: Path, *extra: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        harness_run_command(*OVERRIDES, *extra), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def client_for(uri: str):
    import mlflow

    return mlflow.MlflowClient(uri)


def runs_of(uri: str):
    client = client_for(uri)
    experiment = client.get_experiment_by_name("harness/tiny")
    return client.search_runs([experiment.experiment_id], max_results=1000)


def eval_metrics(uri: str) -> dict[str, dict[str, float]]:
    return {
        run.data.tags["harness.cell"]: {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
        for run in runs_of(uri)
        if run.data.tags.get("harness.kind") == "cell" and run.info.status == "FINISHED"
    }


def structure(uri: str) -> dict:
    """What a reader of the store sees, without ids, times and placement: kinds, cells and their params."""
    runs = runs_of(uri)
    cells = {}
    for run in runs:
        if run.data.tags.get("harness.kind") == "cell":
            params = {k: v for k, v in run.data.params.items() if not k.startswith(PLACEMENT_PARAMS)}
            cells[run.data.tags["harness.cell"]] = (run.data.tags["harness.cell_hash"], params, run.info.status)
    parents = [run for run in runs if run.data.tags.get("harness.kind") == "invocation"]
    return {
        "cells": cells,
        "parent_params": sorted(k for k in parents[0].data.params if not k.startswith(PLACEMENT_PARAMS)),
    }


def sqlite_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("serial")
    result = run(cwd, "executor.max_parallel=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return cwd


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=open(folder / "server.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    _wait_for(lambda: _health(port), 120, f"mlflow server on port {port} (log: {folder / 'server.log'})")
    yield uri
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    port = free_port()
    # The test's own cluster on loopback, without token authentication: Ray 2.60 turns it on for `ray start`
    # once ~/.ray/auth_token exists (any `ray.init()` of a local instance writes one), and then refuses the
    # run's driver, which does not read that file.
    environment = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    started = subprocess.run(
        [
            str(BIN / "ray"),
            "start",
            "--head",
            "--num-cpus",
            "2",
            "--port",
            str(port),
            "--node-ip-address",
            "127.0.0.1",
            "--include-dashboard",
            "false",
            "--disable-usage-stats",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=environment,
    )
    assert started.returncode == 0, started.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120, env=environment)


def run_killing_the_dpo_worker(cwd: Path, uri: str, *extra: str) -> dict:
    """Run with `extra`, SIGKILL the worker process that trains DPO once it has saved a checkpoint; the run must
    end with exit code 2 naming that cell alone. Returns the cell runs by cell."""
    process = subprocess.Popen(
        harness_run_command(*OVERRIDES, *extra), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    train = cwd / "runs" / "tiny" / "cells"
    pid_files = lambda: list(train.glob("dpo-s0-*/train/worker.pid"))  # noqa: E731
    _wait_for(
        lambda: pid_files() and list(train.glob("dpo-s0-*/train/trainer/checkpoint-*/trainer_state.json")),
        600,
        "a DPO checkpoint",
        process,
    )
    os.kill(int(pid_files()[0].read_text()), signal.SIGKILL)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 2, stderr[-3000:]
    assert "1 cell(s) failed: dpo-s0" in stderr
    cells = cell_runs(uri)
    assert cells["dpo-s0"].info.status == "FAILED" and cells["ppo-s0"].info.status == "FINISHED"
    return cells


def cell_runs(uri: str) -> dict:
    return {run.data.tags["harness.cell"]: run for run in runs_of(uri) if run.data.tags.get("harness.kind") == "cell"}


def test_two_stages_at_once_give_the_serial_numbers(serial, tmp_path):
    result = run(tmp_path, "executor.max_parallel=2")
    assert result.returncode == 0, result.stderr[-3000:]
    assert eval_metrics(sqlite_uri(tmp_path)) == eval_metrics(sqlite_uri(serial))
    assert structure(sqlite_uri(tmp_path)) == structure(sqlite_uri(serial))
    # Each stage has its own log beside its stage file, and the eleven stages ran in two processes, not nine.
    invocation = next((tmp_path / "runs" / "tiny" / "invocations").iterdir())
    logs = {path.name for path in invocation.glob("*.log")}
    assert {"sft-s0.log", "train-dpo-s0.log", "evaluate-ppo-s0.log"} <= logs
    outcomes = [json.loads(path.read_text()) for path in invocation.glob("*.outcome.json")]
    assert len(outcomes) == 9 and len({outcome["pid"] for outcome in outcomes}) == 2


def test_a_killed_worker_fails_its_stage_alone_and_a_fresh_worker_takes_the_rest(serial, tmp_path):
    """SIGKILL the worker process that trains DPO once it has saved a checkpoint: that cell fails with the
    worker's exit status, the other stages go on in a fresh worker, and the rerun resumes DPO in its MLflow run."""
    cells = run_killing_the_dpo_worker(tmp_path, sqlite_uri(tmp_path), "executor.max_parallel=2")
    assert "worker process was killed by signal 9" in cells["dpo-s0"].data.tags["harness.failure"]

    result = run(tmp_path, "executor.max_parallel=2")
    assert result.returncode == 0, result.stderr[-3000:]
    rerun = cell_runs(sqlite_uri(tmp_path))
    assert rerun["dpo-s0"].info.run_id == cells["dpo-s0"].info.run_id and len(rerun) == 3
    assert eval_metrics(sqlite_uri(tmp_path)) == eval_metrics(sqlite_uri(serial))


def test_ray_gives_the_serial_numbers_and_a_killed_worker_fails_its_cell_alone(
    serial, mlflow_server, ray_cluster, tmp_path
):
    ray_args = ["executor=ray", f"ray.address={ray_cluster}", f"tracking.uri={mlflow_server}"]
    # The first attempt: SIGKILL the Ray actor that trains DPO once it has saved a checkpoint.
    first = run_killing_the_dpo_worker(tmp_path, mlflow_server, *ray_args)
    assert "Ray worker ended" in first["dpo-s0"].data.tags["harness.failure"]

    # The rerun resumes DPO from its checkpoint, in the same MLflow run, and keeps the rest.
    result = run(tmp_path, *ray_args)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = runs_of(mlflow_server)
    cells = [run for run in runs if run.data.tags.get("harness.kind") == "cell"]
    assert sorted(run.data.tags["harness.cell"] for run in cells) == ["dpo-s0", "ppo-s0", "sft-s0"]  # none twice
    assert {run.data.tags["harness.cell"]: run.info.run_id for run in cells}["dpo-s0"] == first["dpo-s0"].info.run_id
    assert not [run for run in runs if run.info.status == "RUNNING"]
    assert eval_metrics(mlflow_server) == eval_metrics(sqlite_uri(serial))
    assert structure(mlflow_server) == structure(sqlite_uri(serial))


def test_plan_lists_what_a_rerun_skips_without_importing_torch(serial):
    code = (
        "import sys; from harness.cli import main; code = main(['plan', 'suite=tiny', *sys.argv[1:]]); "
        "assert 'torch' not in sys.modules, 'plan imported torch'; sys.exit(code)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, *OVERRIDES], cwd=serial, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith("#")}
    for stage in ("task-s0", "sft-s0", "reward_model-s0", "train:dpo-s0", "evaluate:dpo-s0", "evaluate:sft-s0"):
        assert "complete: skipped" in lines[stage], lines[stage]
    assert "runs last" in lines["report"]
    # A changed DPO setting is a new cell: its stages are to run again, the rest stays skipped.
    changed = subprocess.run(
        [sys.executable, "-c", code, *OVERRIDES, "algorithms.dpo.beta=0.5"],
        cwd=serial,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = {line.split()[0]: line for line in changed.stdout.splitlines() if line and not line.startswith("#")}
    assert "to run" in lines["train:dpo-s0"] and "complete: skipped" in lines["train:ppo-s0"]


def _health(port: int) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _wait_for(condition, seconds: float, what: str, process: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            pytest.fail(f"the command ended before {what}: {process.stderr.read()[-3000:]}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")
