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
                client,
                experiment_id,
                parent,
                root / "runs",
                algorithm=algorithm,
                seed=seed,
                start_minute=minute,
                eval_values=summary,
                samples=rows,
                seeds_param="[0, 1]",
            )
            logged[(algorithm, seed)] = summary
            minute += 1
    client.set_tag(parent, record.TAG_CELL_RUNS, ",".join(run_ids.values()))
    client.set_terminated(parent, status="FINISHED")
    return {
        "uri": uri,
        "root": root,
        "experiment_id": experiment_id,
        "logged": logged,
        "run_ids": run_ids,
        "samples": samples,
        "database": database,
    }


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
        algorithm = run.data.tags[record.TAG_ARM]
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
        assert run.data.tags[record.TAG_CELL_RUNS].split(",") == [
            suite_store["run_ids"][(algorithm, s)] for s in (0, 1)
        ]
        assert run.data.params["arm"] == algorithm and run.data.tags[record.TAG_ALGORITHM] == algorithm  # unswept
        assert run.data.tags[record.TAG_CURRENT] == "true"


def test_headline_values_match_the_markdown_report(suite_store, published, tmp_path):
    from harness.report.markdown import write_report

    _, runs = published
    text = write_report(suite_store["uri"], SUITE, tmp_path).read_text(encoding="utf-8")
    for run in runs:
        algorithm = run.data.tags[record.TAG_ARM]
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
    assert state["selectedColumns"][:4] == [
        "tags.`report.gold_reward`",
        "metrics.`gold_reward`",
        "metrics.`gold_reward_ci_low`",
        "metrics.`gold_reward_ci_high`",
    ]
    assert "metrics.`win_rate_vs_sft`" in state["selectedColumns"]
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert link.url() == (
        f"http://127.0.0.1:5000/#/experiments/{link.experiment_id}/runs"
        "?workflowType=machine_learning&viewStateShareKey=leaderboard"
    )
    assert link.url("http://host:8080/").startswith("http://host:8080/#/experiments/")
    # The suite's own experiment: its cells, flat, by their eval/ headline.
    suite_experiment = _client(suite_store["uri"]).get_experiment(suite_store["experiment_id"])
    cells = json.loads(json.loads(suite_experiment.tags["mlflow.sharedViewState.cells"])["state"])
    assert cells["searchFilter"] == "tags.`harness.kind` = 'cell'"
    assert cells["orderByKey"] == "metrics.`eval/gold_reward`" and cells["orderByAsc"] is False
    assert link.cells_url() == (
        f"http://127.0.0.1:5000/#/experiments/{suite_store['experiment_id']}/runs"
        "?workflowType=machine_learning&viewStateShareKey=cells"
    )


def test_republishing_updates_the_same_runs_in_place_and_leaves_the_cells_alone(suite_store, published):
    """A row's identity is its key: publishing again writes into the key's run (same run id, same numbers), so a
    reader never sees the board change size and no second publisher can delete what the first wrote."""
    client = _client(suite_store["uri"])
    first_link, first_runs = published
    cells_before = {run_id: client.get_run(run_id).data for run_id in suite_store["run_ids"].values()}
    second = publish_leaderboard(suite_store["uri"], SUITE)
    runs = _active_leaderboard_runs(suite_store["uri"])
    assert len(runs) == 3 and sorted(run.info.run_name for run in runs) == ["dpo", "grpo", "sft"]
    assert second.run_ids == first_link.run_ids
    same = {run.info.run_name: run.data for run in runs}
    for run in first_runs:
        assert same[run.info.run_name].metrics == run.data.metrics  # the same numbers, rewritten
        assert same[run.info.run_name].tags == run.data.tags
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
        new_dpo.append(
            _log_cell(
                client,
                experiment_id,
                parent,
                suite_store["root"] / "runs2",
                algorithm="dpo",
                seed=seed,
                start_minute=101 + seed,
                eval_values=_eval_summary(rows, suite_store["samples"][("sft", seed)]),
                samples=rows,
                seeds_param="[0, 1]",
                dpo_beta="0.3",
                cell_hash=f"dpo-s{seed}-beta-0.3",
            )
        )
    reused = [suite_store["run_ids"][(algorithm, seed)] for algorithm in ("sft", "grpo") for seed in (0, 1)]
    client.set_tag(parent, record.TAG_CELL_RUNS, ",".join(reused + new_dpo))
    client.set_terminated(parent, status="FINISHED")

    publish_leaderboard(suite_store["uri"], SUITE)
    publish_leaderboard(suite_store["uri"], SUITE)
    runs = _active_leaderboard_runs(suite_store["uri"])
    keys = [run.data.tags[record.TAG_LEADERBOARD_KEY] for run in runs]
    assert len(keys) == len(set(keys)) == 4
    dpo = {run.data.params["algorithms.dpo.beta"]: run for run in runs if run.data.tags[record.TAG_ARM] == "dpo"}
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
        _log_cell(
            client,
            experiment_id,
            parent,
            tmp_path / "runs",
            algorithm=algorithm,
            seed=0,
            start_minute=1 + offset,
            eval_values={"proxy_reward": value, "kl": 0.1 * offset},
        )
    link = publish_leaderboard(uri, SUITE)
    assert link.headline_metric == "proxy_reward"
    state = json.loads(
        json.loads(client.get_experiment(link.experiment_id).tags["mlflow.sharedViewState.leaderboard"])["state"]
    )
    assert state["orderByKey"] == "metrics.`proxy_reward`"


# --- concurrent publishers: one run per key, whatever the interleaving ---------------------------


def _one_seed_store(empty_database, root):  # noqa: F811
    """sft and dpo at seed 0: two leaderboard keys, an empty leaderboard experiment."""
    from harness.report.leaderboard_runs import _leaderboard_experiment, leaderboard_rows
    from harness.report.records import load_suite_records

    uri, _, client, experiment_id = _new_store(empty_database, root)
    parent = _start_invocation(client, experiment_id, 0)
    for offset, (algorithm, value) in enumerate((("sft", 0.5), ("dpo", 0.9))):
        _log_cell(
            client,
            experiment_id,
            parent,
            root / "runs",
            algorithm=algorithm,
            seed=0,
            start_minute=1 + offset,
            eval_values={"gold_reward": value, "kl": 0.1 * offset},
        )
    rows = leaderboard_rows(load_suite_records(uri, SUITE))
    return uri, client, experiment_id, _leaderboard_experiment(client, uri, SUITE), rows


def _active_by_key(client, leaderboard_id) -> dict[str, list]:
    runs = client.search_runs([leaderboard_id], filter_string=f"tags.`{record.TAG_KIND}` = 'leaderboard'")
    by_key = {}
    for run in runs:
        by_key.setdefault(run.data.tags.get(record.TAG_LEADERBOARD_KEY), []).append(run)
    return by_key


def test_two_publishers_writing_then_deleting_in_turn_leave_one_run_per_configuration(empty_database, tmp_path):  # noqa: F811
    """The order that emptied the board: A writes, B writes, A deletes what it did not write, B likewise. Each
    phase is the real function a publish runs; with keys, B writes into A's runs and neither deletes them."""
    from harness.report.leaderboard_runs import delete_stale_runs, write_rows

    _, client, experiment_id, leaderboard_id, rows = _one_seed_store(empty_database, tmp_path)
    keys = {row.key for row in rows}
    written_by_a = write_rows(client, leaderboard_id, SUITE, experiment_id, rows, [])
    written_by_b = write_rows(client, leaderboard_id, SUITE, experiment_id, rows, [])
    delete_stale_runs(client, leaderboard_id, keys)
    delete_stale_runs(client, leaderboard_id, keys)
    by_key = _active_by_key(client, leaderboard_id)
    assert set(by_key) == keys == {"sft:" + rows[0].config, "dpo:" + rows[1].config}
    assert all(len(runs) == 1 for runs in by_key.values()), by_key
    assert written_by_a == written_by_b
    for row in rows:
        assert by_key[row.key][0].data.metrics["gold_reward"] == {"sft": 0.5, "dpo": 0.9}[row.arm]


def test_two_publishers_creating_one_key_at_once_converge_on_its_oldest_run(empty_database, tmp_path):  # noqa: F811
    """Both found no run for a key and both create one: each searches the key again after creating and writes
    into the oldest run it sees; the deletes then leave that oldest run, holding the row. A run without a key
    (an older publish's) and a run of a key no longer published go too."""
    from harness.report.leaderboard_runs import _created_run, _write_row, delete_stale_runs

    _, client, experiment_id, leaderboard_id, rows = _one_seed_store(empty_database, tmp_path)
    client.create_run(leaderboard_id, tags={record.TAG_KIND: record.KIND_LEADERBOARD})
    client.create_run(
        leaderboard_id,
        tags={record.TAG_KIND: record.KIND_LEADERBOARD, record.TAG_LEADERBOARD_KEY: "dpo:no-longer-published"},
    )
    dpo = next(row for row in rows if row.arm == "dpo")
    seen_by_a = _created_run(client, leaderboard_id, SUITE, dpo)
    seen_by_b = _created_run(client, leaderboard_id, SUITE, dpo)
    assert len(seen_by_a) == 1 and len(seen_by_b) == 2  # B's search sees A's run beside its own
    oldest = min(seen_by_b, key=lambda run: (run.info.start_time, run.info.run_id)).info.run_id
    assert seen_by_b[0].info.run_id == oldest
    _write_row(client, seen_by_a[0], SUITE, experiment_id, dpo, [])
    _write_row(client, seen_by_b[0], SUITE, experiment_id, dpo, [])
    delete_stale_runs(client, leaderboard_id, {row.key for row in rows})
    delete_stale_runs(client, leaderboard_id, {row.key for row in rows})
    by_key = _active_by_key(client, leaderboard_id)
    assert set(by_key) == {dpo.key}
    assert [run.info.run_id for run in by_key[dpo.key]] == [oldest]
    assert by_key[dpo.key][0].data.metrics["gold_reward"] == 0.9
    assert by_key[dpo.key][0].info.run_name == "dpo" and by_key[dpo.key][0].info.status == "FINISHED"


# --- labels: the report's clipped interval, the interval's basis per metric ----------------------

# Two-sided 95% Student-t quantile at 2 degrees of freedom (three seeds), from a printed table.
T_95_DF2 = 4.303


def test_a_win_rate_reads_as_its_clipped_interval_and_a_missing_value_shows_in_the_basis(empty_database, tmp_path):  # noqa: F811
    """dpo's win rates 0.9, 0.95, 1.0 over three seeds: 0.95 ± 4.303 · 0.05 / √3 = ± 0.124 reaches 1.074, so the
    text reads "0.950 [0.826, 1.000]" as the report's win-rate table prints it. dpo's seed 2 logged no gold
    reward: the row says its gold reward is over 2 values, not 3."""
    from harness.report.markdown import write_report

    uri, _, client, experiment_id = _new_store(empty_database, tmp_path)
    parent = _start_invocation(client, experiment_id, 0)
    minute = 1
    for seed in range(3):
        for algorithm in ("sft", "dpo"):
            values = (
                {"gold_reward": 0.1 * seed, "kl": 0.0}
                if algorithm == "sft"
                else {"kl": 1.0 + seed, "win_rate_vs_sft": (0.9, 0.95, 1.0)[seed]}
            )
            if algorithm == "dpo" and seed < 2:
                values["gold_reward"] = (0.5, 0.7)[seed]
            _log_cell(
                client,
                experiment_id,
                parent,
                tmp_path / "runs",
                algorithm=algorithm,
                seed=seed,
                start_minute=minute,
                eval_values=values,
            )
            minute += 1
    client.set_terminated(parent, status="FINISHED")
    publish_leaderboard(uri, SUITE)
    runs = {run.data.tags[record.TAG_ARM]: run for run in _active_leaderboard_runs(uri)}
    half = T_95_DF2 * 0.05 / math.sqrt(3)
    assert 0.95 + half > 1.0
    text = f"0.950 [{0.95 - half:.3f}, 1.000]"
    assert text == "0.950 [0.826, 1.000]"
    dpo = runs["dpo"].data
    assert dpo.tags["report.win_rate_vs_sft"] == text
    assert dpo.metrics["win_rate_vs_sft_ci_high"] == 1.0
    assert dpo.metrics["win_rate_vs_sft_ci_low"] == pytest.approx(0.95 - half, abs=1e-9)
    report = write_report(uri, SUITE, tmp_path).read_text(encoding="utf-8")
    assert "[0.826, 1.000]" in report
    # Gold over dpo's two values: 0.6 ± 12.706 · 0.1414 / √2; the basis names the metric with fewer values.
    assert dpo.tags["report.gold_reward"] == f"0.600 ± {T_95_DF1 * math.sqrt(0.02) / math.sqrt(2):.3f}"
    assert dpo.tags[record.TAG_INTERVAL] == "t over 3 seeds (gold_reward: 2)"
    assert runs["sft"].data.tags[record.TAG_INTERVAL] == "t over 3 seeds"


def test_a_row_written_over_an_older_one_drops_what_it_no_longer_has(empty_database, tmp_path):  # noqa: F811
    """Updating in place must not leave an older publish's numbers behind: a metric the row no longer has reads
    NaN (MLflow cannot delete a metric) and its text is removed; the name follows the row."""
    import dataclasses

    from harness.report.leaderboard_runs import _write_row, write_rows

    _, client, experiment_id, leaderboard_id, rows = _one_seed_store(empty_database, tmp_path)
    dpo = next(row for row in rows if row.arm == "dpo")
    [run_id] = write_rows(client, leaderboard_id, SUITE, experiment_id, [dpo], [])
    assert "kl" in client.get_run(run_id).data.metrics and "report.kl" in client.get_run(run_id).data.tags
    narrower = dataclasses.replace(
        dpo,
        current=False,
        metrics={name: value for name, value in dpo.metrics.items() if name != "kl"},
        texts={name: text for name, text in dpo.texts.items() if name != "kl"},
    )
    _write_row(client, client.get_run(run_id), SUITE, experiment_id, narrower, [])
    after = client.get_run(run_id)
    assert math.isnan(after.data.metrics["kl"]) and after.data.metrics["gold_reward"] == 0.9
    assert "report.kl" not in after.data.tags and after.data.tags["report.gold_reward"] == dpo.texts["gold_reward"]
    assert after.info.run_name == narrower.run_name != dpo.run_name
    assert after.data.tags[record.TAG_CURRENT] == "false"
