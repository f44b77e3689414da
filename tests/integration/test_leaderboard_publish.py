"""Two publishers at once on one real `mlflow server` (loopback, SQLite behind it): two Python processes call
`publish_leaderboard` at the same moment, as two `harness report` (or a report and the end of a `harness run`) on
different hosts would. No lock is shared between them; the board must still hold exactly one run per
configuration, with the numbers the cells logged, after every round: from an empty board (both create the runs)
and from a published one (both update them in place).

The cells are written through the server by test_report's writer (the way the pipeline logs them); the oracle is
the mean over seeds of what each cell logged.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from test_tracking_faults import Server

from harness import record

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "unit"))  # test_report's store writer, shared with the unit tests

from test_report import (  # noqa: E402
    GROWING_PER_PROMPT,
    GROWING_PROMPTS,
    SUITE,
    _eval_summary,
    _log_cell,
    _random_samples,
    _start_invocation,
)

pytestmark = pytest.mark.slow

ALGORITHMS = ("sft", "dpo", "grpo")
SEEDS = (0, 1)
ROUNDS = 3
PUBLISH_TIMEOUT_S = 300
# Each publisher reads the store first, says it is ready, then waits for the go file: both publish at once.
PUBLISHER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from harness.report.leaderboard_runs import publish_leaderboard
    from harness.report.records import load_suite_records

    uri, suite, folder, name = sys.argv[1:5]
    records = load_suite_records(uri, suite)
    Path(folder, "ready-" + name).touch()
    while not Path(folder, "go").exists():
        time.sleep(0.01)
    link = publish_leaderboard(uri, suite, records=records)
    print(",".join(link.run_ids))
""")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    started = Server(tmp_path_factory.mktemp("publish-server"))
    started.start()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def cells(server, tmp_path_factory):
    """sft, dpo and grpo at seeds 0 and 1, logged through the server; returns the gold reward each logged."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    experiment_id = client.create_experiment(record.experiment_name(SUITE))
    parent = _start_invocation(client, experiment_id, 0)
    folder = tmp_path_factory.mktemp("cells")
    gold, run_ids, samples, minute = {}, [], {}, 1
    for seed in SEEDS:
        rng = np.random.default_rng(20 + seed)
        for index, algorithm in enumerate(ALGORITHMS):
            rows = _random_samples(rng, GROWING_PROMPTS, GROWING_PER_PROMPT, 0.3 * index, 1.0 + index)
            samples[(algorithm, seed)] = rows
            values = _eval_summary(rows, samples.get(("sft", seed)))
            run_ids.append(
                _log_cell(
                    client,
                    experiment_id,
                    parent,
                    folder,
                    algorithm=algorithm,
                    seed=seed,
                    start_minute=minute,
                    eval_values=values,
                    samples=rows,
                    seeds_param="[0, 1]",
                )
            )
            gold[(algorithm, seed)] = values["gold_reward"]
            minute += 1
    client.set_tag(parent, record.TAG_CELL_RUNS, ",".join(run_ids))
    client.set_terminated(parent, status="FINISHED")
    return gold


def _publish_at_once(uri: str, folder: Path) -> list[str]:
    folder.mkdir()
    publishers = [
        subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, uri, SUITE, str(folder), name],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    deadline = time.monotonic() + PUBLISH_TIMEOUT_S
    while not all((folder / f"ready-{name}").exists() for name in ("a", "b")):
        assert all(process.poll() is None for process in publishers), [process.communicate() for process in publishers]
        assert time.monotonic() < deadline, "the publishers did not get ready"
        time.sleep(0.05)
    (folder / "go").touch()
    outputs = []
    for process in publishers:
        stdout, stderr = process.communicate(timeout=PUBLISH_TIMEOUT_S)
        assert process.returncode == 0, stderr[-3000:]
        outputs.append(stdout.strip().splitlines()[-1])
    return outputs


def _leaderboard_runs(client) -> list:
    experiment = client.get_experiment_by_name(record.leaderboard_experiment_name(SUITE))
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{record.TAG_KIND}` = 'leaderboard'")


def test_two_processes_publishing_at_once_leave_one_run_per_configuration(server, cells, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.uri)
    for round_number in range(ROUNDS):
        if round_number == 2:  # from an empty board again: both publishers create every run
            for run in _leaderboard_runs(client):
                client.delete_run(run.info.run_id)
        printed = _publish_at_once(server.uri, tmp_path / f"round-{round_number}")
        runs = _leaderboard_runs(client)
        arms = sorted(run.data.tags[record.TAG_ARM] for run in runs)
        assert arms == sorted(ALGORITHMS), f"round {round_number}: {arms}"
        keys = [run.data.tags[record.TAG_LEADERBOARD_KEY] for run in runs]
        assert len(set(keys)) == len(keys) == len(ALGORITHMS)
        # Both publishers name the runs that survived: each wrote into the oldest run of a key.
        assert {run.info.run_id for run in runs} == set(printed[0].split(",")) == set(printed[1].split(","))
        for run in runs:
            algorithm = run.data.tags[record.TAG_ARM]
            assert run.data.tags[record.TAG_ALGORITHM] == algorithm  # unswept: the arm is the registry algorithm
            expected = sum(cells[(algorithm, seed)] for seed in SEEDS) / len(SEEDS)
            assert run.data.metrics["gold_reward"] == pytest.approx(expected, abs=1e-12)
            assert run.info.status == "FINISHED" and run.data.tags[record.TAG_INTERVAL] == "t over 2 seeds"
