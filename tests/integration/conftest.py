"""Shared by the end-to-end tests: a scaled-down tiny suite that runs in about a minute on 2 cores."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCALED_DOWN_TINY = [
    # The three algorithms every end-to-end test was written for (a later only= in a test's overrides wins);
    # test_tiny_suite.py runs all of them.
    "only=[dpo,grpo,ppo]",
    # tiny trains a judge per seed; the end-to-end tests of everything else skip it (test_judged_tiny.py runs it)
    "judge.kind=none",
    "seeds=[0]",
    "task.num_sft_examples=400",
    "task.num_preference_pairs=200",
    "task.num_heldout_pairs=50",
    "task.num_train_prompts=64",
    "task.num_eval_prompts=8",
    "sft.epochs=1",
    "reward_model.epochs=1",
    "budget.prompts=64",
    "evaluation.num_prompts=8",
    "evaluation.samples_per_prompt=2",
    "sampling.max_new_tokens=16",
    "evaluation.max_new_tokens=16",
]


def harness_run_command(*overrides: str, suite: str = "tiny") -> list[str]:
    return [sys.executable, "-m", "harness", "run", f"suite={suite}", *overrides]


def run_harness(cwd: Path, *overrides: str, suite: str = "tiny", timeout: float = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        harness_run_command(*overrides, suite=suite), cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def scaled_down_run(tmp_path_factory) -> Path:
    """The session's one from-scratch run of SCALED_DOWN_TINY (prepared.py): its prepared stages to copy and its
    cells' numbers to compare with. Read only: copy out of it, never run the harness in it."""
    from prepared import make_scaled_down_run

    return make_scaled_down_run(tmp_path_factory.mktemp("scaled-down-run"))
