"""`harness run suite=tiny` end to end, as a user runs it: in a subprocess, in an empty directory.

One run of the default suite on one of its seeds, every algorithm, is shared by the tests of this module: the learning outcome
of every algorithm with margins, the MLflow structure read back with `mlflow.search_runs`, the report, and a
rerun that resumes instead of starting over. A smaller run from scratch gives the very `eval/*` metrics of the
session's shared scaled-down run (prepared.py) on the same seed: CPU runs are deterministic. The run of two options
starts from the shared run's prepared stages and pays for its cells only.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SCALED_DOWN_TINY, run_harness
from prepared import reference_eval_metrics, with_prepared_stages

from harness.config import load_config

pytestmark = pytest.mark.slow

ALGORITHMS = list(load_config("tiny").algorithms)
# tiny itself, one seed of three: every algorithm at its full budget, judged by the gold reward (the check that the
# judging path pairs, orders and combines answers right; test_judged_tiny.py covers the trained judge)
LEARNING_TINY = ["seeds=[0]", "judge.kind=gold"]
# Gold-reward gain over the SFT baseline each algorithm must clear, with KL > MIN_KL and a win rate above
# MIN_WIN_RATE (seed 0, 64 prompts x 8 samples). Measured on seed 0 (gain / KL nats / win rate): dpo +0.233 /
# 0.23 / 0.597, ipo +0.216 / 0.46 / 0.594, simpo +0.200 / 0.42 / 0.572, kto +0.148 / 0.24 / 0.572, online_dpo
# +0.101 / 0.12 / 0.554, grpo +0.503 / 1.02 / 0.715, dr_grpo +0.550 / 1.07 / 0.726, dapo +0.491 / 1.11 / 0.696,
# gspo +0.426 / 0.49 / 0.675, rloo +0.586 / 1.44 / 0.723, reinforce_pp +0.849 / 2.44 / 0.797, ppo +0.973 / 2.30
# / 0.852, best_of_n +0.658 / 0.64 (the bound) / 0.734. The margins are about half of that. A broken
# implementation misses them: swapped preferences or a reward with the wrong sign lose gold; no training, or
# sampling from the wrong checkpoint, leaves KL at 0 and the win rate at 1/2; best-of-n selecting at random
# keeps SFT's gold. (At a quarter of the budget the offline losses, KTO and online DPO do not yet clear SFT on
# this seed: measured, which is why the test pays for the full budget.)
OFFLINE = ("dpo", "ipo", "simpo", "kto")
GOLD_MARGIN = {
    **{name: 0.07 for name in OFFLINE},
    "online_dpo": 0.05,
    **{name: 0.2 for name in ("grpo", "dr_grpo", "dapo", "gspo", "rloo")},
    "reinforce_pp": 0.4,
    "ppo": 0.4,
    "best_of_n": 0.3,
}
MIN_KL = 0.05
MIN_WIN_RATE = {
    **{name: 0.53 for name in OFFLINE},
    "online_dpo": 0.52,
    **{name: 0.6 for name in ("grpo", "dr_grpo", "dapo", "gspo", "rloo")},
    "reinforce_pp": 0.65,
    "ppo": 0.7,
    "best_of_n": 0.65,
}


def tracking_uri(cwd: Path) -> str:
    return f"sqlite:///{cwd / 'runs' / 'mlflow.db'}"


def cell_runs(cwd: Path):
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(cwd))
    runs = mlflow.search_runs(experiment_names=["harness/tiny"], filter_string="tags.`harness.kind` = 'cell'")
    return runs


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("tiny")
    result = run_harness(cwd, *LEARNING_TINY)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return cwd, result


def test_every_algorithm_beats_sft_on_gold_reward_at_positive_kl(default_run):
    cwd, _ = default_run
    runs = cell_runs(cwd)
    by_algorithm = runs.groupby("tags.harness.algorithm")
    gold = by_algorithm["metrics.eval/gold_reward"].mean()
    kl = by_algorithm["metrics.eval/kl"].mean()
    win = by_algorithm["metrics.eval/win_rate_vs_sft"].mean()
    assert set(gold.index) == {"sft", *ALGORITHMS}
    for algorithm in ALGORITHMS:
        assert gold[algorithm] > gold["sft"] + GOLD_MARGIN[algorithm], (algorithm, gold.to_dict())
        assert kl[algorithm] > MIN_KL, (algorithm, kl.to_dict())
        assert win[algorithm] > MIN_WIN_RATE[algorithm], (algorithm, win.to_dict())
    assert kl["sft"] == 0.0  # the baseline is its own reference


def read_samples(cwd: Path, arm: str) -> list[dict]:
    (path,) = (cwd / "runs" / "tiny").glob(f"cells/{arm}-s0-*/eval/samples.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def points(mine: float, theirs: float) -> float:
    return 1.0 if mine > theirs else 0.0 if mine < theirs else 0.5


def test_the_gold_reward_as_judge_reproduces_the_gold_win_rates_exactly(default_run):
    """judge.kind gold asks both orders of every comparison like any judge and compares gold rewards. Per
    sample, recomputed here from the gold rewards in the samples files: the judge was shown the candidate and
    SFT's completion of the same (prompt, slot) in both orders (its raw answers name both gold rewards, candidate
    first, then SFT first), its points are the hand-computed ones, and its win rates equal the evaluator's gold
    win rates to the last digit for every algorithm, against SFT and against the references. (Issue 20, finding
    9: order agreement 1 and no unparseable answer, checked before, hold for the gold judge whatever the
    evaluator pairs.)"""
    cwd, _ = default_run
    runs = cell_runs(cwd).set_index("tags.harness.algorithm")
    sft = {(s["prompt_index"], s["sample_index"]): s for s in read_samples(cwd, "sft")}
    for algorithm in ALGORITHMS:
        samples = read_samples(cwd, algorithm)
        for sample in samples:
            other = sft[(sample["prompt_index"], sample["sample_index"])]
            mine, theirs = sample["gold_reward"], other["gold_reward"]
            assert sample["judge_vs_sft_raw"] == [
                f"gold {mine:.6g} vs {theirs:.6g}",
                f"gold {theirs:.6g} vs {mine:.6g}",
            ]
            assert sample["judge_vs_sft"] == points(mine, theirs), (algorithm, sample["prompt_index"])
            assert sample["judge_vs_reference"] == sample["win_vs_reference"]
        by_hand = sum(
            points(s["gold_reward"], sft[(s["prompt_index"], s["sample_index"])]["gold_reward"]) for s in samples
        ) / len(samples)
        assert runs.loc[algorithm, "metrics.eval/judge_win_rate_vs_sft"] == pytest.approx(by_hand, abs=1e-12)
    for versus in ("sft", "reference"):
        judged = runs[f"metrics.eval/judge_win_rate_vs_{versus}"].dropna()
        gold = runs[f"metrics.eval/win_rate_vs_{versus}"].dropna()
        assert set(judged.index) == ({*ALGORITHMS} if versus == "sft" else {"sft", *ALGORITHMS})
        assert judged.to_dict() == gold.to_dict()
    # Not a vacuous equality: the win rates differ between algorithms and from 1/2.
    assert runs["metrics.eval/win_rate_vs_sft"].dropna().nunique() > 5


def test_mlflow_structure(default_run):
    import mlflow

    cwd, _ = default_run
    mlflow.set_tracking_uri(tracking_uri(cwd))
    parents = mlflow.search_runs(experiment_names=["harness/tiny"], filter_string="tags.`harness.kind` = 'invocation'")
    assert len(parents) == 1
    runs = cell_runs(cwd)
    seeds = [0]
    assert len(runs) == (1 + len(ALGORITHMS)) * len(seeds)  # the sft baseline and every algorithm per seed
    assert set(runs["tags.mlflow.parentRunId"]) == {parents.iloc[0]["run_id"]}
    assert set(runs["tags.harness.status"]) == {"complete"}
    assert set(runs["status"]) == {"FINISHED"}
    assert sorted(runs["tags.harness.cell"]) == sorted(f"{a}-s{s}" for a in ("sft", *ALGORITHMS) for s in seeds)
    # Params are the flattened resolved config; each cell carries only its own algorithm's options.
    dpo = runs[runs["tags.harness.algorithm"] == "dpo"].iloc[0]
    assert dpo["params.algorithms.dpo.beta"] == "0.1"
    assert dpo["params.evaluation.samples_per_prompt"] == "8"
    trained = runs[runs["tags.harness.algorithm"] != "sft"]
    for metric in (
        "gold_reward",
        "proxy_reward",
        "kl",
        "bleu",
        "rouge1",
        "rouge2",
        "rougeL",
        "length",
        "stop_rate",
        "distinct_1",
        "distinct_2",
        "win_rate_vs_sft",
    ):
        assert not trained[f"metrics.eval/{metric}"].isna().any(), metric
    # KL estimates from forward passes exist for every policy model; best-of-n has none (its kl is the bound).
    for metric in ("kl_k1", "kl_k3"):
        estimated = trained["tags.harness.kl_is_bound"] != "true"
        assert not trained[estimated][f"metrics.eval/{metric}"].isna().any(), metric
        assert trained[~estimated][f"metrics.eval/{metric}"].isna().all(), metric
    for metric in ("prompts_seen", "optimizer_steps", "wall_time_s", "peak_memory_mb", "completions_generated"):
        assert (runs[runs["tags.harness.algorithm"] != "sft"][f"metrics.cost/{metric}"] >= 0).all()
    grpo = runs[runs["tags.harness.algorithm"] == "grpo"].iloc[0]
    assert grpo["metrics.cost/tokens_generated"] > 0
    # train/* step metrics have a history, and the artifacts are there.
    client = mlflow.MlflowClient(tracking_uri(cwd))
    history = client.get_metric_history(grpo["run_id"], "train/reward")
    assert len(history) > 10
    # The shared curves: every training algorithm's budget fraction ends at 1; the online ones log KL per
    # sequence in nats; the algorithm's registry name, family and sweep point are tags.
    from harness.algorithms.spec import algorithm as resolve

    for _, run in runs[runs["tags.harness.algorithm"] != "sft"].iterrows():
        spec = resolve(run["tags.harness.algorithm"]).spec
        assert run["tags.harness.family"] == spec.family and run["tags.harness.sweep_point"] == ""
        if not spec.trains_policy:
            continue
        fraction = client.get_metric_history(run["run_id"], "train/budget_fraction")
        assert max(point.value for point in fraction) == pytest.approx(1.0), run["tags.harness.algorithm"]
        if spec.family in ("online policy gradient", "actor-critic", "online preference"):
            assert client.get_metric_history(run["run_id"], "train/kl_per_sequence"), run["tags.harness.algorithm"]
    artifacts = {a.path for a in client.list_artifacts(grpo["run_id"])}
    assert {"eval", "manifest.json", "config"} <= artifacts
    samples = Path(client.download_artifacts(grpo["run_id"], "eval/samples.jsonl", str(cwd / "dl")))
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert len(rows) == 64 * 8
    assert {"prompt", "completion", "reference", "gold_reward", "proxy_reward", "kl", "stopped"} <= set(rows[0])
    manifest = json.loads(Path(client.download_artifacts(grpo["run_id"], "manifest.json", str(cwd / "dl"))).read_text())
    assert manifest["versions"]["trl"] and manifest["data_fingerprint"]


def test_report_and_final_message(default_run):
    cwd, result = default_run
    report = (cwd / "reports" / "tiny.md").read_text()
    for algorithm in ("sft", *ALGORITHMS):
        assert f"| {algorithm} " in report, algorithm
    assert "## Reward vs KL frontier" in report and (cwd / "reports" / "tiny_frontier.png").is_file()
    assert (cwd / "reports" / "tiny_reward_vs_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "report: reports/tiny.md" in result.stdout
    assert f"mlflow ui --backend-store-uri {tracking_uri(cwd)}" in result.stdout


def test_rerun_skips_complete_work_and_duplicates_no_runs(default_run):
    cwd, _ = default_run
    before = cell_runs(cwd)
    rerun = run_harness(cwd, *LEARNING_TINY)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "complete in an earlier run" in rerun.stdout
    assert " train" not in "".join(line for line in rerun.stdout.splitlines() if line.startswith("✓"))
    after = cell_runs(cwd)
    assert sorted(after["run_id"]) == sorted(before["run_id"])


def test_intermediate_checkpoints_and_reward_model_labelled_dpo_pairs(scaled_down_run, tmp_path):
    """One scaled-down run for two options (CI time), from the shared run's prepared stages:
    - evaluation.checkpoints=2: each trained algorithm is evaluated at two snapshots before its final model,
      logged as eval/* history at its training steps; the final value is the latest (the one tables use);
    - algorithms.dpo.pairs_source=reward_model: DPO trains on pairs sampled from the SFT policy and labelled
      by the reward model, and its spend says so."""
    import mlflow

    with_prepared_stages(scaled_down_run, tmp_path)
    result = run_harness(
        tmp_path,
        *SCALED_DOWN_TINY,
        "only=[dpo,grpo]",
        "evaluation.checkpoints=2",
        "algorithms.dpo.pairs_source=reward_model",
        "algorithms.grpo.prompts_per_step=8",  # 8 steps of the 64 prompts (tiny's 32 a step leaves 2: one snapshot)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = cell_runs(tmp_path)
    client = mlflow.MlflowClient(tracking_uri(tmp_path))
    for _, run in runs[runs["tags.harness.algorithm"] != "sft"].iterrows():
        history = sorted(client.get_metric_history(run["run_id"], "eval/kl"), key=lambda point: point.step)
        assert len(history) == 3, [(p.step, p.value) for p in history]
        assert history[-1].value == run["metrics.eval/kl"]
        assert history[0].step < history[1].step < history[2].step
    assert b"PNG" in (tmp_path / "reports" / "tiny_reward_vs_kl.png").read_bytes()[:8]

    dpo = runs[runs["tags.harness.algorithm"] == "dpo"].iloc[0]
    assert dpo["params.algorithms.dpo.pairs_source"] == "reward_model"
    # two sampled completions per training prompt: the spend says so, where the dataset's pairs cost none
    assert dpo["metrics.cost/completions_generated"] == 2 * dpo["metrics.cost/prompts_seen"]
    assert dpo["metrics.eval/kl"] > 0
    assert "reward model" in (tmp_path / "reports" / "tiny.md").read_text()


def test_same_seed_gives_identical_eval_metrics(scaled_down_run, tmp_path):
    """Two runs from scratch on the same seed, each in its own folder and process: this one and the session's shared
    run (which also ran PPO: its cells of the same configuration have the same folder hash and must have the same
    numbers). DPO reads a fixed dataset, GRPO samples its own: both sources of nondeterminism."""
    result = run_harness(tmp_path, *SCALED_DOWN_TINY, "only=[dpo,grpo]")
    assert result.returncode == 0, result.stderr[-3000:]
    runs = cell_runs(tmp_path)
    # A metric a cell does not have (the baseline's win rate against itself) is NaN, and NaN != NaN.
    mine = {
        run["tags.harness.cell"]: {
            key: value for key, value in run.items() if key.startswith("metrics.eval/") and value == value
        }
        for _, run in runs.iterrows()
    }
    assert sorted(mine) == ["dpo-s0", "grpo-s0", "sft-s0"]
    shared = reference_eval_metrics(scaled_down_run, tuple(mine))
    assert mine == {
        cell: {f"metrics.{key}": value for key, value in metrics.items()} for cell, metrics in shared.items()
    }
    assert any(metrics.get("metrics.eval/kl", 0) != 0 for metrics in mine.values())  # trained: not the SFT copy
