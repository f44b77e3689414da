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
def frontier_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("frontier")
    result = run_harness(cwd, *SCALED_DOWN_FRONTIER, suite=SUITE)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd


def test_every_sweep_point_is_its_own_cell_named_and_tagged_by_its_point(frontier_run):
    runs = cell_runs(frontier_run)
    arms = ["dpo@beta=0.03", "dpo@beta=0.3", "best_of_n@n=1", "best_of_n@n=4", "best_of_n@n=16"]
    assert sorted(runs["tags.mlflow.runName"]) == sorted(f"{arm}-s{seed}" for arm in [*arms, "sft"] for seed in (0, 1))
    dpo = runs[runs["tags.harness.algorithm"] == "dpo@beta=0.03"]
    assert set(dpo["tags.harness.algorithm_name"]) == {"dpo"} and set(dpo["tags.harness.sweep_point"]) == {"beta=0.03"}
    assert set(dpo["params.algorithms.dpo.beta"]) == {"0.03"}  # the arm's own value, not the suite's
    assert set(dpo["tags.harness.family"]) == {"offline preference"}
    assert runs["tags.harness.cell_hash"].is_unique  # every point of every seed its own cell
    bound = runs[runs["tags.harness.algorithm_name"] == "best_of_n"]
    assert set(bound["tags.harness.kl_is_bound"]) == {"true"}


def test_best_of_n_gold_rises_with_n_and_its_kl_is_the_bound(frontier_run):
    import math

    runs = cell_runs(frontier_run)
    gold = runs.groupby("tags.harness.algorithm")["metrics.eval/gold_reward"].mean()
    kl = runs.groupby("tags.harness.algorithm")["metrics.eval/kl"].mean()
    for n in (1, 4, 16):
        assert kl[f"best_of_n@n={n}"] == pytest.approx(math.log(n) - (n - 1) / n, abs=1e-12)
    # n=1 is the SFT policy itself, sampled with the same seeds: the same samples, the same gold.
    assert gold["best_of_n@n=1"] == pytest.approx(gold["sft"], abs=1e-9)
    # Measured here (2 seeds, 16 prompts x 4 samples): sft -1.682, n=4 -1.258, n=16 -1.168. Selecting by a random
    # or inverted reward would leave gold at SFT's or below it; mixing up the groups of n would not rise with n.
    assert gold["best_of_n@n=4"] > gold["sft"] + 0.2, gold.to_dict()
    assert gold["best_of_n@n=16"] > gold["best_of_n@n=4"], gold.to_dict()


def _front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Upper-left Pareto front, by KL: keep a point when no other has KL <= and reward >= (one strictly)."""
    kept = [p for p in points if not any(q != p and q[0] <= p[0] and q[1] >= p[1] for q in points)]
    return sorted(set(kept))


def _at(front: list[tuple[float, float]], level: float) -> float | None:
    if level > front[-1][0]:
        return None
    for (k0, r0), (k1, r1) in zip(front, front[1:]):
        if k0 <= level <= k1:
            return r0 + (r1 - r0) * (level - k0) / (k1 - k0)
    return front[0][1] if level == front[0][0] else None


def _seed_points(cwd: Path, algorithm: str, seed: int) -> list[tuple[float, float]]:
    import mlflow

    client = mlflow.MlflowClient(tracking_uri(cwd))
    runs = cell_runs(cwd)
    runs = runs[runs["tags.harness.seed"] == str(seed)]
    sft = runs[runs["tags.harness.algorithm"] == "sft"].iloc[0]
    points = [(0.0, float(sft["metrics.eval/gold_reward"]))]
    for _, run in runs[runs["tags.harness.algorithm_name"] == algorithm].iterrows():
        kl = {p.step: p.value for p in client.get_metric_history(run["run_id"], "eval/kl")}
        gold = {p.step: p.value for p in client.get_metric_history(run["run_id"], "eval/gold_reward")}
        points += [(kl[step], gold[step]) for step in kl]
    return points


def test_the_report_draws_the_frontier_and_its_matched_kl_table_equals_fronts_recomputed_from_mlflow(frontier_run):
    report = (frontier_run / "reports" / f"{SUITE}.md").read_text()
    assert (frontier_run / "reports" / f"{SUITE}_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    section = report.split("## Reward vs KL frontier", 1)[1].split("\n## ", 1)[0]
    assert "### gold_reward at matched KL" in section
    assert "**Which family leads:**" in section
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    levels = [float(name.split()[1]) for name in header if name.startswith("KL ")]
    assert levels, header
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == {"dpo", "best_of_n †"}
    assert rows["dpo"][header.index("knob")] == "beta ↓ (0.03, 0.3)"  # the module's KL_KNOB and the arms' values
    assert rows["best_of_n †"][header.index("knob")] == "n ↑ (1, 4, 16)"
    compared = 0
    for algorithm, row in (("dpo", rows["dpo"]), ("best_of_n", rows["best_of_n †"])):
        fronts = [_front(_seed_points(frontier_run, algorithm, seed)) for seed in (0, 1)]
        for column, level in zip([name for name in header if name.startswith("KL ")], levels):
            values = [_at(front, level) for front in fronts]
            shown = row[header.index(column)]
            if any(value is None for value in values):
                assert shown == "—", (algorithm, level, shown, fronts)
                continue
            mean = re.match(r"(-?\d+\.\d+)", shown)
            assert mean, (algorithm, level, shown)
            assert float(mean.group(1)) == pytest.approx(sum(values) / 2, abs=6e-4), (algorithm, level, fronts)
            compared += 1
    assert compared >= 2  # at least one level where the numbers were compared, not only dashes


def test_a_rerun_with_one_more_point_trains_only_that_point(frontier_run):
    before = cell_runs(frontier_run)
    widened = [item for item in SCALED_DOWN_FRONTIER if not item.startswith("sweep.algorithms.best_of_n")]
    result = run_harness(frontier_run, *widened, "sweep.algorithms.best_of_n.n=[1,4,16,2]", suite=SUITE)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = set(re.findall(r"^✓ (\S+) train [\d.]+s$", result.stdout, flags=re.MULTILINE))
    assert trained == {"best_of_n@n=2-s0", "best_of_n@n=2-s1"}, result.stdout[-3000:]
    after = cell_runs(frontier_run)
    assert set(before["run_id"]) < set(after["run_id"])
    assert sorted(set(after["tags.harness.cell"]) - set(before["tags.harness.cell"])) == ["best_of_n@n=2-s0", "best_of_n@n=2-s1"]
