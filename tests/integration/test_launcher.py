"""One cell on several processes, as a user runs it: `launcher.num_processes=2` on the CPU (gloo ranks under
`accelerate launch`), through the CLI in a subprocess, on a scaled-down tiny suite.

- DPO and GRPO cells complete with two ranks, and every training curve is logged once per step (by the main
  process only), with the cell's cost saying it ran on two processes;
- SIGTERM to `harness run` while the ranks train leaves no process of the run behind (the process tree is
  read before the signal and checked after the command has exited).
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command

pytestmark = pytest.mark.slow

OVERRIDES = [*SCALED_DOWN_TINY, "launcher.num_processes=2"]


def cell_runs(cwd: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness/tiny")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["harness.cell"]: run for run in runs if run.data.tags.get("harness.kind") == "cell"}, client


def test_dpo_and_grpo_train_on_two_ranks_and_log_once(tmp_path):
    result = subprocess.run(harness_run_command(*OVERRIDES, "only=[dpo,grpo]"), cwd=tmp_path, capture_output=True,
                            text=True, timeout=1500)
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


def test_sigterm_while_ranks_train_leaves_no_process_behind(tmp_path):
    process = subprocess.Popen(harness_run_command(*OVERRIDES, "only=[dpo]", "checkpoint_every=2"), cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    invocations = tmp_path / "runs" / "tiny" / "invocations"
    deadline = time.monotonic() + 900
    family: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        if list(invocations.glob("*/train-dpo-s0.rank1.log")):
            family = descendants(process.pid)
            if len(family) >= 3:  # the launcher and its two ranks
                break
        time.sleep(0.1)
    assert process.poll() is None and len(family) >= 3, "the ranks never started"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-2000:]
    time.sleep(1)
    alive = [pid for pid in family if is_alive(pid)]
    assert not alive, f"left behind: {[(pid, command_of(pid)) for pid in alive]}"
    cells, _ = cell_runs(tmp_path)
    assert cells["dpo-s0"].info.status == "KILLED"


def descendants(root: int) -> set[int]:
    """Every process whose chain of parents reaches `root`, read from /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def is_alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_of(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_text().replace("\0", " ")[:200]
    except OSError:
        return "?"
