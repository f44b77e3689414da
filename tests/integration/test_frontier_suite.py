"""A scaled-down `tiny-frontier` end to end: sweep points are cells, the report draws each algorithm's
reward-vs-KL front and tabulates gold reward at matched KL, best-of-n's gold rises with n, and a rerun with one
more sweep point trains only that point.

The matched-KL table is checked against MLflow: each seed's points (every evaluated checkpoint of every arm,
read back as eval/* history, and the seed's SFT cell at KL 0) go through a front and an interpolation written
here independently of harness/report/frontier.py, and the mean over seeds must equal the table's number.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, run_harness
from prepared import with_prepared_stages

from harness.report.frontier import BEST_OF_N_KL_ESTIMATE

pytestmark = pytest.mark.slow

SUITE = "tiny-frontier"
SCALED_DOWN_FRONTIER = [
    *[item for item in SCALED_DOWN_TINY if not item.startswith(("seeds=", "evaluation."))],
    "seeds=[0,1]",  # intervals over seeds need two
    "evaluation.num_prompts=16",
    "evaluation.samples_per_prompt=4",
    "evaluation.max_new_tokens=16",
    "evaluation.checkpoints=1",
    "only=[dpo,best_of_n]",
    "sweep.algorithms.dpo.beta=[0.03,0.3]",
    "sweep.algorithms.best_of_n.n=[1,4,16]",
]


def tracking_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"


def cell_runs(cwd: Path):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cwd))
    return mlflow.search_runs(experiment_names=[f"harness/{SUITE}"], filter_string="tags.`harness.kind` = 'cell'")


@pytest.fixture(scope="module")
def frontier_run(scaled_down_run, tmp_path_factory):
    # Seed 0's prepared stages are the shared run's (the same task, model, SFT and reward model settings); seed 1
    # is prepared here.
    cwd = with_prepared_stages(scaled_down_run, tmp_path_factory.mktemp("frontier"), suite=SUITE)
    result = run_harness(cwd, *SCALED_DOWN_FRONTIER, suite=SUITE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd


def test_every_sweep_point_is_its_own_cell_named_and_tagged_by_its_point(frontier_run):
    runs = cell_runs(frontier_run)
    arms = ["dpo@beta=0.03", "dpo@beta=0.3", "best_of_n@n=1", "best_of_n@n=4", "best_of_n@n=16"]
    assert sorted(runs["tags.mlflow.runName"]) == sorted(f"{arm}-s{seed}" for arm in [*arms, "sft"] for seed in (0, 1))
    dpo = runs[runs["tags.harness.arm"] == "dpo@beta=0.03"]
    assert set(dpo["tags.harness.algorithm"]) == {"dpo"} and set(dpo["tags.harness.sweep_point"]) == {"beta=0.03"}
    assert set(dpo["params.algorithms.dpo.beta"]) == {"0.03"}  # the arm's own value, not the suite's
    assert set(dpo["tags.harness.family"]) == {"offline preference"}
    # What the algorithm declares, on the cell: the report reads it from there, never from the module.
    assert set(dpo["tags.harness.kl_knob"]) == {"beta"} and set(dpo["tags.harness.kl_knob_raises_kl"]) == {"false"}
    assert runs["tags.harness.cell_hash"].is_unique  # every point of every seed its own cell
    bound = runs[runs["tags.harness.algorithm"] == "best_of_n"]
    assert set(bound["tags.harness.kl_is_bound"]) == {"true"}


def test_best_of_n_gold_rises_with_n_its_kl_bound_and_estimate(frontier_run):
    import math

    runs = cell_runs(frontier_run)
    gold = runs.groupby("tags.harness.arm")["metrics.eval/gold_reward"].mean()
    kl = runs.groupby("tags.harness.arm")["metrics.eval/kl"].mean()
    for n in (1, 4, 16):
        assert kl[f"best_of_n@n={n}"] == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
    # n=1 is the SFT policy itself, drawn from a stream disjoint from SFT's own evaluation samples: its estimated
    # KL is exactly 0 and its gold SFT's up to sampling noise (2 seeds x 64 samples; gold's spread is about 1).
    estimate = runs.groupby("tags.harness.arm")[f"metrics.eval/{BEST_OF_N_KL_ESTIMATE}"].mean()
    assert estimate["best_of_n@n=1"] == pytest.approx(0.0, abs=1e-12)
    assert 0.0 < estimate["best_of_n@n=4"] <= kl["best_of_n@n=4"] + 1e-12
    assert gold["best_of_n@n=1"] == pytest.approx(gold["sft"], abs=0.35)
    # Measured here (2 seeds, 16 prompts x 4 samples): sft -1.682, n=4 -1.258, n=16 -1.168. Selecting by a random
    # or inverted reward would leave gold at SFT's or below it; mixing up the groups of n would not rise with n.
    assert gold["best_of_n@n=4"] > gold["sft"] + 0.2, gold.to_dict()
    assert gold["best_of_n@n=16"] > gold["best_of_n@n=4"], gold.to_dict()


def _best_within(points: list[tuple[float, float]], level: float) -> float:
    """The best reward a mixture of at most two of the points reaches with KL at most `level`, by brute force: a
    point within the level, or the chord between one below and one above it (a linear programme over mixtures
    in two dimensions has an optimum on at most two points)."""
    best = max(r for k, r in points if k <= level)
    for k0, r0 in points:
        for k1, r1 in points:
            if k0 <= level < k1:
                best = max(best, r0 + (r1 - r0) * (level - k0) / (k1 - k0))
    return best


def _seed_points(cwd: Path, algorithm: str, seed: int) -> list[tuple[float, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cwd))
    runs = cell_runs(cwd)
    runs = runs[runs["tags.harness.seed"] == str(seed)]
    sft = runs[runs["tags.harness.algorithm"] == "sft"].iloc[0]
    points = [(0.0, float(sft["metrics.eval/gold_reward"]))]
    for _, run in runs[runs["tags.harness.algorithm"] == algorithm].iterrows():
        # best-of-n sits at its estimated KL (eval/kl is the bound log n - (n-1)/n).
        estimate = run.get(f"metrics.eval/{BEST_OF_N_KL_ESTIMATE}")
        kl_metric = f"eval/{BEST_OF_N_KL_ESTIMATE}" if estimate is not None and estimate == estimate else "eval/kl"
        kl = {p.step: p.value for p in client.get_metric_history(run["run_id"], kl_metric)}
        gold = {p.step: p.value for p in client.get_metric_history(run["run_id"], "eval/gold_reward")}
        points += [(kl[step], gold[step]) for step in kl]
    return points


def test_the_report_draws_the_frontier_and_its_matched_kl_table_equals_fronts_recomputed_from_mlflow(frontier_run):
    report = (frontier_run / "reports" / f"{SUITE}.md").read_text()
    assert (frontier_run / "reports" / f"{SUITE}_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = report.split("## Reward vs KL frontier", 1)[1].split("\n## ", 1)[0]
    assert "### gold_reward at matched KL" in section
    assert "**Who leads at matched KL**" in section
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    levels = [float(name.split()[1]) for name in header if name.startswith("KL ")]
    assert levels, header
    # The matched-KL table's rows (the folded pair tables below it start "| first − second").
    cells = ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])
    rows = {row[0]: row for row in cells if row[0] in ("dpo", "best_of_n", "best_of_n †")}
    # best-of-n's KL is estimated from its candidates (no † bound mark) and it takes part in the comparisons.
    assert set(rows) == {"dpo", "best_of_n"}, rows
    assert rows["dpo"][header.index("knob")] == "beta ↓ (0.03, 0.3)"  # the module's KL_KNOB and the arms' values
    assert rows["best_of_n"][header.index("knob")] == "n ↑ (1, 4, 16)"
    compared = 0
    for algorithm in ("dpo", "best_of_n"):
        points = [_seed_points(frontier_run, algorithm, seed) for seed in (0, 1)]
        for column, level in zip([name for name in header if name.startswith("KL ")], levels):
            values = [_best_within(seed_points, level) for seed_points in points]
            shown = rows[algorithm][header.index(column)]
            mean = re.match(r"(-?\d+\.\d+)", shown)
            assert mean, (algorithm, level, shown)
            assert float(mean.group(1)) == pytest.approx(sum(values) / 2, abs=6e-4), (algorithm, level, points)
            # ‡ exactly where some seed's own points all lie below the level.
            short = any(max(k for k, _ in seed_points[1:]) < level for seed_points in points)
            assert shown.endswith("‡") == short, (algorithm, level, shown)
            compared += 1
    assert compared >= 4


def test_a_rerun_with_one_more_point_trains_only_that_point(frontier_run):
    before = cell_runs(frontier_run)
    widened = [item for item in SCALED_DOWN_FRONTIER if not item.startswith("sweep.algorithms.best_of_n")]
    result = run_harness(frontier_run, *widened, "sweep.algorithms.best_of_n.n=[1,4,16,2]", suite=SUITE)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = set(re.findall(r"^✓ (\S+) train [\d.]+s$", result.stdout, flags=re.MULTILINE))
    assert trained == {"best_of_n@n=2-s0", "best_of_n@n=2-s1"}, result.stdout[-3000:]
    after = cell_runs(frontier_run)
    assert set(before["run_id"]) < set(after["run_id"])
    assert sorted(set(after["tags.harness.cell"]) - set(before["tags.harness.cell"])) == [
        "best_of_n@n=2-s0",
        "best_of_n@n=2-s1",
    ]
