"""Reliability on real, scaled-down runs of the tiny suite, as a user runs them (a subprocess each):

- a run killed with SIGKILL at several points (inside SFT, reward-model, DPO and GRPO training) and
  resumed by the same command ends with exactly the metrics of an uninterrupted run, with no duplicated
  and no RUNNING MLflow runs (the uninterrupted run is the session's shared one, prepared.py: the same cells,
  without the resume checkpoints, which must not change a number);
- a diverging algorithm (NaN loss) fails alone: the other cells complete, the report marks the failure,
  and the exit code says so (from the shared run's prepared stages: the failure is a cell's).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command
from prepared import reference_eval_metrics, with_prepared_stages

pytestmark = pytest.mark.slow

# Checkpoints every 2 optimizer steps give every training stage a point to be killed after and resumed from.
OVERRIDES = [*SCALED_DOWN_TINY, "checkpoint_every=2"]


def command(*extra: str) -> list[str]:
    return harness_run_command(*OVERRIDES, *extra)


def cells(cwd: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness/tiny")
    return client.search_runs([experiment.experiment_id]), client


def eval_metrics(cwd: Path) -> dict[str, dict[str, float]]:
    runs, _ = cells(cwd)
    return {
        run.data.tags["harness.cell"]: {k: v for k, v in run.data.metrics.items() if k.startswith("eval/")}
        for run in runs
        if run.data.tags.get("harness.kind") == "cell" and run.info.status == "FINISHED"
    }


def run_until_killed(cwd: Path, checkpoint_glob: str, timeout: float = 900) -> bool:
    """Start the command, SIGKILL it as soon as a file matching `checkpoint_glob` exists; False if the
    command finished first."""
    process = subprocess.Popen(command(), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if list(cwd.glob(checkpoint_glob)):
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            return True
        time.sleep(0.05)
    process.wait(timeout=60)
    return False


def test_sigkill_at_several_points_then_resume_equals_an_uninterrupted_run(scaled_down_run, tmp_path):
    resumed = tmp_path / "killed"
    resumed.mkdir()
    # Two kills right after a checkpoint is complete (trainer_state.json is written last: the stage must
    # resume from it) and two as soon as a checkpoint folder appears (likely mid-save: the cut-short
    # checkpoint must be discarded and the older one, or a fresh start, used).
    kill_points = [
        "runs/tiny/prepare/sft-*/trainer/checkpoint-*/trainer_state.json",
        "runs/tiny/prepare/reward_model-*/trainer/checkpoint-*",
        "runs/tiny/cells/dpo-*/train/trainer/checkpoint-*",
        "runs/tiny/cells/grpo-*/train/trainer/checkpoint-*/trainer_state.json",
    ]
    kills = [point for point in kill_points if run_until_killed(resumed, point)]
    assert len(kills) >= 3, f"the run finished before most kill points: killed at {kills}"
    final = subprocess.run(command(), cwd=resumed, capture_output=True, text=True, timeout=1500)
    assert final.returncode == 0, final.stderr[-2000:]

    assert eval_metrics(resumed) == reference_eval_metrics(scaled_down_run)
    runs, _ = cells(resumed)
    cell_runs = [r for r in runs if r.data.tags.get("harness.kind") == "cell"]
    assert sorted(r.data.tags["harness.cell"] for r in cell_runs) == [
        "dpo-s0",
        "grpo-s0",
        "ppo-s0",
        "sft-s0",
    ]  # none twice
    assert not [r for r in runs if r.info.status == "RUNNING"]
    killed_parents = [r for r in runs if r.data.tags.get("harness.kind") == "invocation" and r.info.status == "KILLED"]
    assert len(killed_parents) == len(kills)


def test_a_diverging_algorithm_fails_alone_and_the_report_says_why(scaled_down_run, tmp_path):
    with_prepared_stages(scaled_down_run, tmp_path)
    # A learning rate of 1e30 makes DPO's weights overflow within two steps: a real divergence, no mock. (Not PPO
    # too: GRPO beside it shows the failure stays DPO's.)
    result = subprocess.run(
        command("only=[dpo,grpo]", "algorithms.dpo.learning_rate=1e30"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert result.returncode == 2
    assert "1 cell(s) failed: dpo-s0" in result.stderr
    runs, _ = cells(tmp_path)
    by_cell = {r.data.tags["harness.cell"]: r for r in runs if r.data.tags.get("harness.kind") == "cell"}
    assert by_cell["dpo-s0"].info.status == "FAILED"
    assert "training diverged" in by_cell["dpo-s0"].data.tags["harness.failure"]
    assert by_cell["grpo-s0"].info.status == "FINISHED"
    assert by_cell["sft-s0"].info.status == "FINISHED"
    report = (tmp_path / "reports" / "tiny.md").read_text()
    assert "dpo-s0" in report and "training diverged" in report


def test_the_banner_is_one_line_with_the_algorithms_counted(tmp_path):
    """Thirteen algorithms are a count, not a list that wraps to three lines in a log (stdout is a pipe here).
    SCALED_DOWN_TINY[0] is its `only=`: left out, the run has all of tiny's algorithms."""
    process = subprocess.Popen(
        harness_run_command(*SCALED_DOWN_TINY[1:], "executor.max_parallel=2"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        banner = process.stdout.readline()
        second = process.stdout.readline()  # the first stage's line
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=300)
    assert banner.rstrip("\n") == (
        "harness run suite=tiny seeds=[0] 13 algorithms (+ sft baseline) executor=local (2 workers)"
    ), banner
    assert not second.startswith(("executor", " ")), f"the banner went on: {second!r}"
