"""Wall time of one scaled-down `tiny` suite under each executor, as ratios to the serial run, in one process.

    .venv/bin/python benchmarks/executors.py [--repeats N] [--tiny-budgets] [key=value ...]

Runs `harness run suite=tiny` (three seeds, three algorithms, small budgets) as a user does (a subprocess in a
fresh temporary folder each time, so nothing is resumed) with `executor.max_parallel=1` (serial, in process),
`executor.max_parallel=2` (two worker processes) and `executor=ray ray.address=local` (two Ray actors on a Ray
instance started by the run itself, its start-up included), in turn, and prints the median wall time of each
and its ratio to serial. Every stage uses one torch thread (executor.cpus_per_stage=1) so that the three give
the same numbers; the script checks that they do.

Each worker imports torch, transformers and TRL once and keeps them for every stage it runs, so two stages at
once on two cores cost what the stages cost: with three seeds there is almost always a second stage ready.
"""

from __future__ import annotations

import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# --tiny-budgets: three of tiny's algorithms at tiny's own budgets (about two minutes serial), where Ray's own
# start and stop (about 5 s) no longer weigh as much as in the 40 s scaled-down run.
THREE_ALGORITHMS = ["only=[dpo,grpo,ppo]", "seeds=[0,1,2]", "executor.cpus_per_stage=1"]
SCALED_DOWN = [
    *THREE_ALGORITHMS,
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
EXECUTORS = {
    "serial": ["executor.max_parallel=1"],
    "max_parallel=2": ["executor.max_parallel=2"],
    "ray": ["executor=ray", "ray.address=local"],
}


def run_once(suite: list[str], extra: list[str]) -> tuple[float, dict]:
    with tempfile.TemporaryDirectory() as folder:
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "harness", "run", "suite=tiny", *suite, *extra],
            cwd=folder,
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            sys.exit(f"executors.py: {' '.join(extra)} exited {result.returncode}: {result.stderr[-2000:]}")
        return seconds, _eval_metrics(Path(folder) / "runs" / "mlflow.db")


def _eval_metrics(database: Path) -> dict:
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT r.name, m.key, m.value FROM runs r JOIN latest_metrics m ON r.run_uuid = m.run_uuid "
            "JOIN tags t ON t.run_uuid = r.run_uuid WHERE t.key = 'harness.kind' AND t.value = 'cell' "
            "AND m.key LIKE 'eval/%'"
        ).fetchall()
    return {f"{name} {key}": value for name, key, value in rows}


def main(repeats: int, suite: list[str], overrides: list[str]) -> None:
    times = {name: [] for name in EXECUTORS}
    metrics = {}
    for _ in range(repeats):
        for name, extra in EXECUTORS.items():  # in turn, so a drift of the machine's speed hits all alike
            seconds, metrics[name] = run_once(suite, [*extra, *overrides])
            times[name].append(seconds)
    serial = statistics.median(times["serial"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>15}: median {median:7.1f} s over {len(values)} run(s), {median / serial:.2f}x serial")
    same = all(metrics[name] == metrics["serial"] for name in EXECUTORS)
    print(f"eval metrics identical across executors: {same} ({len(metrics['serial'])} values)")
    print(json.dumps({name: values for name, values in times.items()}))


if __name__ == "__main__":
    arguments = sys.argv[1:]
    count = 1
    if arguments[:1] == ["--repeats"]:
        count, arguments = int(arguments[1]), arguments[2:]
    chosen = SCALED_DOWN
    if arguments[:1] == ["--tiny-budgets"]:
        chosen, arguments = THREE_ALGORITHMS, arguments[1:]
    main(count, chosen, arguments)
