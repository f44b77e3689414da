"""One cell on several processes, as a user runs it: `launcher.num_processes=2` on the CPU (gloo ranks under
`accelerate launch`), through the CLI in a subprocess, on a scaled-down tiny suite.

DPO and GRPO cells complete with two ranks, every training curve is logged once per step (by the main process
only), and the cell's cost says it ran on two processes. (test_no_orphans.py sends SIGTERM while ranks train.)
The run starts from the session's shared prepared stages (prepared.py): it pays for the two cells only.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command
from prepared import with_prepared_stages

pytestmark = pytest.mark.slow

OVERRIDES = [*SCALED_DOWN_TINY, "launcher.num_processes=2"]


def cell_runs(cwd: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness/tiny")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["harness.cell"]: run for run in runs if run.data.tags.get("harness.kind") == "cell"}, client


def test_dpo_and_grpo_train_on_two_ranks_and_log_once(scaled_down_run, tmp_path):
    with_prepared_stages(scaled_down_run, tmp_path)
    result = subprocess.run(
        harness_run_command(*OVERRIDES, "only=[dpo,grpo]"), cwd=tmp_path, capture_output=True, text=True, timeout=1500
    )
    assert result.returncode == 0, result.stderr[-3000:]
    cells, client = cell_runs(tmp_path)
    for cell in ("dpo-s0", "grpo-s0"):
        run = cells[cell]
        assert run.info.status == "FINISHED"
        assert run.data.metrics["cost/processes"] == 2.0
        train_keys = [key for key in run.data.metrics if key.startswith("train/")]
        assert train_keys, f"{cell} logged no training curve"
        for key in train_keys:
            steps = Counter(point.step for point in client.get_metric_history(run.info.run_id, key))
            assert max(steps.values()) == 1, f"{cell} {key} logged twice at a step: {steps}"
    ranks = list((tmp_path / "runs" / "tiny" / "invocations").glob("*/train-dpo-s0.rank[0-9].log"))
    assert len(ranks) == 2, "each rank writes its own log"
