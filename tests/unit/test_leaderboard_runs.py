"""Leaderboard runs against a real MLflow SQLite store filled the way the pipeline fills it (test_report's
writer): one run per (algorithm, configuration) with the means over seeds and their bounds, computed here by
hand from the values the cells logged; re-publishing replaces the runs; a rerun with a changed DPO setting
leaves one row per configuration; the cell runs are never touched.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from test_report import (
    GROWING_PER_PROMPT,
    GROWING_PROMPTS,
    PNG_SIGNATURE,
    SUITE,
    _eval_summary,
    _log_cell,
    _new_store,
    _random_samples,
    _start_invocation,
    empty_database,  # noqa: F401  (a fixture this module's store copies)
)

from harness import record
from harness.report.leaderboard_runs import publish_leaderboard

# Two-sided 95% Student-t quantile at 1 degree of freedom (two seeds), from a printed table.
T_95_DF1 = 12.706
SHIFTS = {"sft": (0.0, 0.0), "dpo": (0.3, 1.0), "grpo": (0.5, 2.0)}


def _client(uri):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def suite_store(empty_database, tmp_path_factory):  # noqa: F811
    """Invocation 1: sft, dpo, grpo at seeds 0 and 1; what each cell logged is kept as the oracle."""
    root = tmp_path_factory.mktemp("leaderboard")
    uri, database, client, experiment_id = _new_store(empty_database, root)
    logged, run_ids, samples = {}, {}, {}
    parent = _start_invocation(client, experiment_id, 0)
    minute = 1
    for seed in (0, 1):
        rng = np.random.default_rng(10 + seed)
        for algorithm, (gold_shift, kl_scale) in SHIFTS.items():
            rows = _random_samples(rng, GROWING_PROMPTS, GROWING_PER_PROMPT, gold_shift, kl_scale)
            samples[(algorithm, seed)] = rows
            summary = _eval_summary(rows, samples.get(("sft", seed)))
            run_ids[(algorithm, seed)] = _log_cell(
                client, experiment_id, parent, root / "runs", algorithm=algorithm, seed=seed, start_minute=minute,
                eval_values=summary, samples=rows, seeds_param="[0, 1]",
            )
            logged[(algorithm, seed)] = summary
            minute += 1
    client.set_tag(parent, record.TAG_CELL_RUNS, ",".join(run_ids.values()))
    client.set_terminated(parent, status="FINISHED")
    return {"uri": uri, "root": root, "experiment_id": experiment_id, "logged": logged, "run_ids": run_ids,
            "samples": samples, "database": database}


def _active_leaderboard_runs(uri):
    client = _client(uri)
    experiment = client.get_experiment_by_name(record.leaderboard_experiment_name(SUITE))
    return client.search_runs([experiment.experiment_id], filter_string=f"tags.`{record.TAG_KIND}` = 'leaderboard'")


def _by_hand(values):
    """Mean and 95% t bounds over two seeds: mean ± 12.706 · s / √2."""
    mean = sum(values) / len(values)
    s = math.sqrt(sum((value - mean) ** 2 for value in values) / (len(values) - 1))
    half = T_95_DF1 * s / math.sqrt(len(values))
    return mean, mean - half, mean + half


@pytest.fixture(scope="module")
def published(suite_store):
    link = publish_leaderboard(suite_store["uri"], SUITE)
    return link, _active_leaderboard_runs(suite_store["uri"])


def test_one_run_per_algorithm_with_means_and_t_bounds_by_hand(suite_store, published):
    link, runs = published
    assert sorted(run.info.run_name for run in runs) == ["dpo", "grpo", "sft"]
    assert sorted(run.info.run_id for run in runs) == sorted(link.run_ids)
    for run in runs:
        algorithm = run.data.tags[record.TAG_ALGORITHM]
        metrics = run.data.metrics
        for name in ("gold_reward", "proxy_reward", "kl"):
            mean, low, high = _by_hand([suite_store["logged"][(algorithm, seed)][name] for seed in (0, 1)])
            assert metrics[name] == pytest.approx(mean, abs=1e-12)
            if algorithm == "sft" and name == "kl":
                continue  # the reference itself: KL 0 at every seed, bounds 0 too
            assert metrics[name + "_ci_low"] == pytest.approx(low, abs=1e-9)
            assert metrics[name + "_ci_high"] == pytest.approx(high, abs=1e-9)
        assert metrics["seeds"] == 2.0
        assert run.data.tags[record.TAG_INTERVAL] == "t over 2 seeds"
        if algorithm != "sft":
            _, low, high = _by_hand([suite_store["logged"][(algorithm, seed)]["win_rate_vs_sft"] for seed in (0, 1)])
            assert metrics["win_rate_vs_sft_ci_low"] == pytest.approx(max(low, 0.0), abs=1e-9)
            assert metrics["win_rate_vs_sft_ci_high"] == pytest.approx(min(high, 1.0), abs=1e-9)
            assert metrics["cost/tokens_generated"] == 1234.0  # every cell logged the same spend
        assert run.data.tags[record.TAG_CELL_RUNS].split(",") == [suite_store["run_ids"][(algorithm, s)] for s in (0, 1)]
        assert run.data.params["algorithm"] == algorithm
        assert run.data.tags[record.TAG_CURRENT] == "true"


def test_headline_values_match_the_markdown_report(suite_store, published, tmp_path):
    from harness.report.markdown import write_report

    _, runs = published
    text = write_report(suite_store["uri"], SUITE, tmp_path).read_text(encoding="utf-8")
    for run in runs:
        algorithm = run.data.tags[record.TAG_ALGORITHM]
        row = next(line for line in text.splitlines() if line.startswith(f"| {algorithm} ") and "t over" in line)
        mean = run.data.metrics["gold_reward"]
        half = (run.data.metrics["gold_reward_ci_high"] - run.data.metrics["gold_reward_ci_low"]) / 2
        assert f"{mean:.3f} ± {half:.3f}" in row
        assert run.data.tags["report.gold_reward"] == f"{mean:.3f} ± {half:.3f}"


def test_figures_are_logged_on_every_run(suite_store, published, tmp_path):
    _, runs = published
    client = _client(suite_store["uri"])
    for run in runs:
        paths = {artifact.path for artifact in client.list_artifacts(run.info.run_id, "figures")}
        assert "figures/tiny_reward_vs_kl.png" in paths, paths
    local = client.download_artifacts(runs[0].info.run_id, "figures/tiny_reward_vs_kl.png", str(tmp_path))
    assert open(local, "rb").read().startswith(PNG_SIGNATURE)


def test_saved_view_sorts_by_the_headline_and_shows_the_leaderboard_columns(suite_store, published):
    link, _ = published
    experiment = _client(suite_store["uri"]).get_experiment(link.experiment_id)
    assert experiment.name == "harness/tiny/leaderboard"
    envelope = json.loads(experiment.tags["mlflow.sharedViewState.leaderboard"])
    assert isinstance(envelope["name"], str) and isinstance(envelope["createdAt"], int)
    state = json.loads(envelope["state"])
    assert state["orderByKey"] == "metrics.`gold_reward`" and state["orderByAsc"] is False
    assert state["selectedColumns"][:4] == ["tags.`report.gold_reward`", "metrics.`gold_reward`",
                                            "metrics.`gold_reward_ci_low`", "metrics.`gold_reward_ci_high`"]
    assert "metrics.`win_rate_vs_sft`" in state["selectedColumns"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert link.url() == (f"http://127.0.0.1:5000/#/experiments/{link.experiment_id}/runs"
                          "?workflowType=machine_learning&viewStateShareKey=leaderboard")
    assert link.url("http://host:8080/").startswith("http://host:8080/#/experiments/")
    # The suite's own experiment: its cells, flat, by their eval/ headline.
    suite_experiment = _client(suite_store["uri"]).get_experiment(suite_store["experiment_id"])
    cells = json.loads(json.loads(suite_experiment.tags["mlflow.sharedViewState.cells"])["state"])
    assert cells["searchFilter"] == "tags.`harness.kind` = 'cell'"
    assert cells["orderByKey"] == "metrics.`eval/gold_reward`" and cells["orderByAsc"] is False
    assert link.cells_url() == (f"http://127.0.0.1:5000/#/experiments/{suite_store['experiment_id']}/runs"
                                "?workflowType=machine_learning&viewStateShareKey=cells")


def test_republishing_replaces_the_runs_and_leaves_the_cells_alone(suite_store, published):
    client = _client(suite_store["uri"])
    first_link, first_runs = published
    cells_before = {run_id: client.get_run(run_id).data for run_id in suite_store["run_ids"].values()}
    second = publish_leaderboard(suite_store["uri"], SUITE)
    runs = _active_leaderboard_runs(suite_store["uri"])
    assert len(runs) == 3 and sorted(run.info.run_name for run in runs) == ["dpo", "grpo", "sft"]
    assert set(second.run_ids).isdisjoint(first_link.run_ids)
    for run in first_runs:
        assert client.get_run(run.info.run_id).info.lifecycle_stage == "deleted"
    same = {run.info.run_name: run.data.metrics for run in runs}
    for run in first_runs:
        assert same[run.info.run_name] == run.data.metrics  # the same numbers, rewritten
    for run_id, data in cells_before.items():
        after = client.get_run(run_id)
        assert after.info.lifecycle_stage == "active"
        assert (after.data.metrics, after.data.params, after.data.tags) == (data.metrics, data.params, data.tags)


def test_a_rerun_with_a_changed_setting_leaves_one_row_per_configuration(suite_store, published):
    """Invocation 2 reruns DPO with beta 0.3 (a new configuration) and reuses sft and grpo; publishing twice
    leaves four rows: sft, grpo, the current dpo and the earlier dpo, each once."""
    client = _client(suite_store["uri"])
    experiment_id = suite_store["experiment_id"]
    parent = _start_invocation(client, experiment_id, 100)
    new_dpo = []
    for seed in (0, 1):
        rows = _random_samples(np.random.default_rng(50 + seed), GROWING_PROMPTS, GROWING_PER_PROMPT, 0.8, 3.0)
        new_dpo.append(_log_cell(
            client, experiment_id, parent, suite_store["root"] / "runs2", algorithm="dpo", seed=seed,
            start_minute=101 + seed, eval_values=_eval_summary(rows, suite_store["samples"][("sft", seed)]),
            samples=rows, seeds_param="[0, 1]", dpo_beta="0.3", cell_hash=f"dpo-s{seed}-beta-0.3",
        ))
    reused = [suite_store["run_ids"][(algorithm, seed)] for algorithm in ("sft", "grpo") for seed in (0, 1)]
    client.set_tag(parent, record.TAG_CELL_RUNS, ",".join(reused + new_dpo))
    client.set_terminated(parent, status="FINISHED")

    publish_leaderboard(suite_store["uri"], SUITE)
    publish_leaderboard(suite_store["uri"], SUITE)
    runs = _active_leaderboard_runs(suite_store["uri"])
    keys = [run.data.tags[record.TAG_LEADERBOARD_KEY] for run in runs]
    assert len(keys) == len(set(keys)) == 4
    dpo = {run.data.params["algorithms.dpo.beta"]: run for run in runs if run.data.tags[record.TAG_ALGORITHM] == "dpo"}
    assert set(dpo) == {"0.1", "0.3"}
    assert dpo["0.3"].info.run_name == "dpo" and dpo["0.3"].data.tags[record.TAG_CURRENT] == "true"
    assert dpo["0.1"].data.tags[record.TAG_CURRENT] == "false" and dpo["0.1"].info.run_name.startswith("dpo (config ")
    assert dpo["0.3"].data.tags[record.TAG_CELL_RUNS].split(",") == new_dpo
    # The setting that tells the two dpo rows apart is a column of the saved view.
    experiment = client.get_experiment_by_name(record.leaderboard_experiment_name(SUITE))
    state = json.loads(json.loads(experiment.tags["mlflow.sharedViewState.leaderboard"])["state"])
    assert state["selectedColumns"][4] == "params.`algorithms.dpo.beta`"


def test_without_a_gold_reward_the_headline_is_the_proxy(empty_database, tmp_path):  # noqa: F811
    uri, _, client, experiment_id = _new_store(empty_database, tmp_path)
    parent = _start_invocation(client, experiment_id, 0)
    for offset, (algorithm, value) in enumerate((("sft", 0.5), ("dpo", 0.9))):
        _log_cell(client, experiment_id, parent, tmp_path / "runs", algorithm=algorithm, seed=0,
                  start_minute=1 + offset, eval_values={"proxy_reward": value, "kl": 0.1 * offset})
    link = publish_leaderboard(uri, SUITE)
    assert link.headline_metric == "proxy_reward"
    state = json.loads(json.loads(client.get_experiment(link.experiment_id).tags[
        "mlflow.sharedViewState.leaderboard"])["state"])
    assert state["orderByKey"] == "metrics.`proxy_reward`"
