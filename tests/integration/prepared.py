"""The one scaled-down tiny run that the end-to-end modules share instead of each preparing from scratch.

`harness run` on conftest.SCALED_DOWN_TINY (dpo, grpo and ppo, seed 0) is made once per test session, in a
subprocess from an empty folder, by the `scaled_down_run` fixture (conftest.py). Modules use it two ways:

- its prepared stages (task data, base model, SFT, reward model of seed 0), copied into a module's own folder
  by `with_prepared_stages`: a run there finds them complete and skips them, as a user's rerun does, because
  prepared folders are named by the hash of exactly the settings that determine them (harness/plan.py
  prepare_hashes): the cell, tracking, checkpointing, launcher and executor settings a module adds do not change
  them, and a folder of another hash is simply not used. A module pays only for its cells.
- its finished cells, read back from its MLflow store as the reference an interrupted, resumed or repeated run
  must reproduce (CPU runs are deterministic): `reference_eval_metrics`. Nobody writes into the shared run: a
  module that reruns a suite copies the prepared stages and runs its cells in its own folder.

A test about preparing itself (a kill during SFT, a fresh run's banner, a damaged SFT model recomputed) still
prepares: it starts from an empty folder, or damages its own copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import SCALED_DOWN_TINY, run_harness

# The cells of the shared run, for tests that compare with a subset of them.
SHARED_RUN_CELLS = ("dpo-s0", "grpo-s0", "ppo-s0", "sft-s0")


def make_scaled_down_run(cwd: Path) -> Path:
    """`harness run suite=tiny` on SCALED_DOWN_TINY in `cwd`, from nothing; `cwd` once it succeeded."""
    result = run_harness(cwd, *SCALED_DOWN_TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd


def with_prepared_stages(shared_run: Path, cwd: Path, suite: str = "tiny") -> Path:
    """`cwd` (created if needed) holding a copy of the shared run's prepared stages under `runs/<suite>/`, as a
    rerun would find them; a suite of another name (tiny-frontier, a second suite) uses the seed-0 stages too
    where its settings give the same hashes."""
    shutil.copytree(shared_run / "runs" / "tiny" / "prepare", cwd / "runs" / suite / "prepare", symlinks=True)
    return cwd


def reference_eval_metrics(shared_run: Path, cells: tuple[str, ...] = SHARED_RUN_CELLS) -> dict[str, dict]:
    """The eval/* metrics each of `cells` logged in the shared run (FINISHED cell runs), by cell name."""
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{shared_run / 'runs' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("harness/tiny")
    found = {}
    for run in client.search_runs([experiment.experiment_id]):
        cell = run.data.tags.get("harness.cell")
        if run.data.tags.get("harness.kind") == "cell" and run.info.status == "FINISHED" and cell in cells:
            found[cell] = {key: value for key, value in run.data.metrics.items() if key.startswith("eval/")}
    assert sorted(found) == sorted(cells), f"the shared run lacks cells: {sorted(found)}"
    return found
