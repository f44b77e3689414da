"""The MLflow UI as the leaderboard: one run per (arm, configuration) in experiment
``harness/<suite>/leaderboard``, holding the means over seeds and their 95% interval bounds.

The numbers are the report's (`tables.summarise` over the same cells, so the UI and reports/<suite>.md agree to
the digit): a t interval over seeds with two or more seeds, a bootstrap over prompts with one. Every
configuration with complete cells gets a row (`harness.current` says which one the report shows); seeds of one
configuration are pooled, configurations never are.

Each row has an identity, its key (`harness.leaderboard_key` = "<arm>:<config>"), and re-publishing updates
the key's run in place: new numbers, texts and name over the old ones, a metric the row no longer has set to NaN.
Then the runs of keys no longer published are deleted, and of several runs of one key all but the oldest (start
time, then run id). No lock is taken (a tracking server may be shared by hosts); instead every interleaving of
publishers with the same cells converges on one run per key: a publisher that creates a key's run searches the
key again and writes into the oldest run it finds, and the oldest run of a key is never deleted, while every
younger one is seen beside it by whoever created the later of the two. A reader never sees an empty board, and
a crash in between is undone by the next publish. Cell runs are never touched.

The printed link opens the runs table (``workflowType=machine_learning``: MLflow 3.17.2's UI otherwise opens
its GenAI pages) with the view saved in the experiment tag ``mlflow.sharedViewState.leaderboard``: sorted by
the headline metric (gold reward where the suite has a gold judge, else proxy reward), with the leaderboard
columns selected. The envelope format is the one the UI's "Views" menu writes (name, createdAt, updatedAt and
the JSON state), so the view is also listed there. The suite's own experiment gets a view "cells" (every cell
run, flat, by its eval/ headline) for `LeaderboardLink.cells_url`.

What no tag can do in 3.17.2 (measured in headless Chromium): choose the page a click from the experiment
list lands on. The UI takes the workflow from the URL's ``workflowType``, else from the browser's remembered
switch (localStorage ``mlflow.workflowType_v1``, GenAI by default), and ignores ``mlflow.experimentKind`` for
it; the tag is set anyway, as the UI's own kind selector would.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

from harness import record
from harness.metrics.catalog import headline_metrics
from harness.report.frame import (
    algorithm_order,
    complete_cells,
    cost_metric_names,
    current_configs,
    find_experiment,
    kind_filter,
    metric_direction,
    open_client,
    row_config_params,
    search_all_runs,
)
from harness.report.records import REPORT_ARTIFACT_PATH, load_suite_records, quiet_downloads
from harness.report.tables import INTERVAL_OVER_PROMPTS, clipped_bounds, interval_label, reported_text, summarise
from harness.tracking import PARAM_VALUE_LIMIT, artifact_location

if TYPE_CHECKING:
    import pandas as pd

    from harness.report.records import SuiteRecords

logger = logging.getLogger(__name__)

DEFAULT_UI = "http://127.0.0.1:5000"
# The registry's headline metrics (rewards, what they cost in divergence, the win rates): the columns a reader
# scans first, where logged. Their bounds follow the headline only, to keep the table narrow enough to read.
_SHOWN_METRICS = headline_metrics()
_SHOWN_COSTS = (record.COST_TOKENS_GENERATED, record.COST_WALL_TIME_S)
_MAX_PARAM_COLUMNS = 6
_PARAM_BATCH = 100


@dataclass(frozen=True)
class LeaderboardLink:
    """Where the published leaderboard is: its experiment, its headline metric and its saved view."""

    experiment_id: str
    experiment_name: str
    headline_metric: str
    view_key: str
    run_ids: tuple[str, ...]
    suite_experiment_id: str = ""

    def url(self, base: str = DEFAULT_UI) -> str:
        """The runs table of the leaderboard experiment, sorted by the headline metric, its columns shown."""
        return _runs_url(base, self.experiment_id, self.view_key)

    def cells_url(self, base: str = DEFAULT_UI) -> str:
        """The suite's own experiment on its runs table: every cell run (one per algorithm and seed), flat,
        sorted by the headline metric."""
        return _runs_url(base, self.suite_experiment_id, record.CELLS_VIEW_KEY)


def _runs_url(base: str, experiment_id: str, view_key: str) -> str:
    query = urlencode({"workflowType": record.WORKFLOW_TYPE_TRAINING, "viewStateShareKey": view_key})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"


@dataclass
class LeaderboardRow:
    """One (arm, configuration): what its leaderboard run holds."""

    arm: str
    config: str
    current: bool
    cell_runs: list[str]
    seeds: list[int]
    interval: str
    metrics: dict[str, float]
    params: dict[str, str]
    # metric -> "mean ± half-width" (or "mean [low, high]") exactly as the Markdown report prints it
    texts: dict[str, str]

    @property
    def key(self) -> str:
        return f"{self.arm}:{self.config}"

    @property
    def run_name(self) -> str:
        # The configuration the report shows goes by the arm's name; older ones carry their key.
        return self.arm if self.current else f"{self.arm} (config {self.config or '—'})"


def headline_metric(cells: "pd.DataFrame") -> str:
    """gold_reward where a complete cell logged it (the suite has a gold judge), else proxy_reward."""
    column = record.EVAL_PREFIX + "gold_reward"
    complete = complete_cells(cells)
    if column in complete and complete[column].notna().any():
        return "gold_reward"
    return "proxy_reward"


def leaderboard_rows(records: "SuiteRecords", confidence: float = 0.95) -> list[LeaderboardRow]:
    """Per (arm, configuration) with complete cells: means and interval bounds as the report computes
    them. Current configurations first, in the report's arm order."""
    import pandas as pd

    cells = complete_cells(records.cells)
    if cells.empty:
        return []
    current = current_configs(records.cells)
    # One-seed win-rate bootstraps pair a cell's samples with its seed's baseline cell.
    baseline = cells[(cells["arm"] == record.BASELINE) & (cells["config"] == current.get(record.BASELINE))]
    rows = []
    for (arm, config), group in cells.groupby(["arm", "config"], sort=False):
        pooled = group if arm == record.BASELINE else pd.concat([group, baseline])
        summary = summarise(pooled, records.samples, confidence)
        summary = summary[summary["arm"] == arm]
        bootstrapped = summary[summary["interval"] == INTERVAL_OVER_PROMPTS]
        prompts = int(bootstrapped["n"].max()) if not bootstrapped.empty else 0
        newest = group.sort_values(["start_time", "run_id"], kind="mergesort").iloc[-1]
        params = row_config_params(arm, newest.to_dict())
        rows.append(
            LeaderboardRow(
                arm=arm,
                config=config,
                current=current.get(arm) == config,
                cell_runs=list(group.sort_values("seed")["run_id"]),
                seeds=sorted(int(seed) for seed in group["seed"]),
                interval=_interval_basis(summary, len(group), prompts),
                metrics=_row_metrics(summary, group),
                params={"arm": arm, "config": config, **params},
                texts={
                    row.metric: reported_text(row.metric, row.mean, row.low, row.high, row.interval)
                    for row in summary.itertuples()
                    if math.isfinite(row.mean)
                },
            )
        )
    order = {name: index for index, name in enumerate(algorithm_order(cells["arm"]))}
    return sorted(rows, key=lambda row: (not row.current, order[row.arm], row.config))


def _interval_basis(summary: "pd.DataFrame", seeds: int, prompts: int) -> str:
    """What the row's intervals are over: "t over 3 seeds", and where a metric has fewer finite values than the
    row has seeds (a cell that did not log it), how many that metric has: "t over 3 seeds (gold_reward: 2)"."""

    label = interval_label(seeds, set(summary["interval"]), prompts)
    if seeds < 2:
        return label  # one cell: a bootstrap over its prompts, per metric, or no interval
    fewer = [
        f"{row.metric}: {row.n}" + ("" if row.n >= 2 else ", no interval")
        for row in summary.itertuples()
        if 0 < row.n < seeds
    ]
    return f"{label} ({'; '.join(fewer)})" if fewer else label


def _row_metrics(summary: "pd.DataFrame", group: "pd.DataFrame") -> dict[str, float]:
    metrics = {record.SEEDS_METRIC: float(len(group))}
    for row in summary.itertuples():
        if not math.isfinite(row.mean):
            continue
        metrics[row.metric] = float(row.mean)
        low, high = clipped_bounds(row.metric, row.low, row.high)
        if math.isfinite(low) and math.isfinite(high):
            metrics[row.metric + record.CI_LOW_SUFFIX] = low
            metrics[row.metric + record.CI_HIGH_SUFFIX] = high
    # Spend is reported as the mean over seeds: what one run of this configuration costs.
    for name in cost_metric_names(group):
        values = group[record.COST_PREFIX + name].dropna()
        if not values.empty:
            metrics[record.COST_PREFIX + name] = float(values.mean())
    return metrics


# --- the saved view -----------------------------------------------------------------------------


def _column(kind: str, name: str) -> str:
    # The UI's canonical column key: attributes|params|metrics|tags, a dot, the name in backticks.
    return f"{kind}.`{name}`"


def _differing_params(rows: list[LeaderboardRow]) -> list[str]:
    """Config params whose value differs between rows of one arm or between arms: what tells the rows apart
    besides the arm itself."""
    values: dict[str, set] = {}
    for row in rows:
        for key, value in row.params.items():
            values.setdefault(key, set()).add(value)
    keys = [key for key, seen in values.items() if len(seen) > 1 and key not in ("arm", "config")]
    # An algorithm's own knobs first (what a sweep varies), then shared sections.
    keys.sort(key=lambda key: (not key.startswith(record.ALGORITHMS_SECTION + "."), key))
    return keys[:_MAX_PARAM_COLUMNS]


def view_state(rows: list[LeaderboardRow], headline: str) -> dict:
    """The runs page's state: search facets (sort) and UI state (columns), as the UI saves a view."""
    present = {name for row in rows for name in row.metrics}
    # The report's own text first (what a reader compares with reports/<suite>.md), then the numbers, which
    # the UI can sort.
    columns = [_column("tags", record.TAG_REPORTED_PREFIX + headline)]
    headline_metrics = [headline, headline + record.CI_LOW_SUFFIX, headline + record.CI_HIGH_SUFFIX]
    columns += [_column("metrics", name) for name in headline_metrics if name in present]
    # What tells the rows apart next to the headline, before the grid's column virtualisation hides it.
    columns += [_column("params", key) for key in _differing_params(rows)]
    others = [name for name in _SHOWN_METRICS if name != headline]
    others += [record.SEEDS_METRIC] + [record.COST_PREFIX + name for name in _SHOWN_COSTS]
    columns += [_column("metrics", name) for name in others if name in present]
    columns += [_column("tags", record.TAG_INTERVAL), _column("tags", record.TAG_CURRENT)]
    # Wide enough for "mean [low, high]" and "bootstrap over 64 prompts" at the UI's font; the rest keep the
    # UI's default width.
    widths = {columns[0]: 190, _column("tags", record.TAG_INTERVAL): 190}
    return {
        "searchFilter": "",
        "orderByKey": _column("metrics", headline),
        "orderByAsc": metric_direction(headline) == "lower",
        "selectedColumns": columns,
        "columnOrder": columns,
        "columnWidths": widths,
        "runListHidden": False,
        "viewMaximized": False,
    }


def cells_view_state(cells: "pd.DataFrame", headline: str) -> dict:
    """The suite experiment's view: only cell runs (the invocations that nest them are left out, so the cells
    read as one flat table), best headline first, with what identifies a cell and what it scored."""
    present = set(cells.columns)
    columns = [_column("tags", tag) for tag in (record.TAG_ARM, record.TAG_SEED, record.TAG_STATUS)]
    metrics = [headline] + [name for name in _SHOWN_METRICS if name != headline]
    columns += [
        _column("metrics", record.EVAL_PREFIX + name) for name in metrics if record.EVAL_PREFIX + name in present
    ]
    columns += [
        _column("metrics", record.COST_PREFIX + name) for name in _SHOWN_COSTS if record.COST_PREFIX + name in present
    ]
    return {
        "searchFilter": f"tags.`{record.TAG_KIND}` = '{record.KIND_CELL}'",
        "orderByKey": _column("metrics", record.EVAL_PREFIX + headline),
        "orderByAsc": metric_direction(headline) == "lower",
        "selectedColumns": columns,
        "columnOrder": columns,
        "runListHidden": False,
        "viewMaximized": False,
    }


def view_tag_value(state: dict, name: str, now_ms: int) -> str:
    """The saved-view envelope the UI reads from ``mlflow.sharedViewState.<key>``: the state as a JSON string
    inside {name, createdAt, updatedAt, state}."""
    return json.dumps({"name": name, "createdAt": now_ms, "updatedAt": now_ms, "state": json.dumps(state)})


# --- publishing ---------------------------------------------------------------------------------


def publish_leaderboard(tracking_uri: str, suite: str, *, records: "SuiteRecords | None" = None) -> LeaderboardLink:
    """Aggregate the suite's cell runs into leaderboard runs, one per row key, updating the previous ones in place
    (module docstring: concurrent publishers converge on one run per key), and return the link
    that opens them sorted by the headline metric. `records`: what `load_suite_records` read, when the caller
    (the report) already has it. Raises frame.ReportError when the suite has no finished cells."""

    started = time.perf_counter()
    records = records if records is not None else load_suite_records(tracking_uri, suite)
    rows = leaderboard_rows(records)
    headline = headline_metric(records.cells)
    client = open_client(tracking_uri)
    suite_experiment = find_experiment(client, suite, tracking_uri)
    experiment_id = _leaderboard_experiment(client, tracking_uri, suite)
    with tempfile.TemporaryDirectory(prefix="harness-leaderboard-") as scratch:
        figures = _figures(client, records, Path(scratch))
        run_ids = write_rows(client, experiment_id, suite, suite_experiment.experiment_id, rows, figures)
    delete_stale_runs(client, experiment_id, {row.key for row in rows})
    now_ms = int(time.time() * 1000)
    state = view_state(rows, headline)
    experiment_tags = [
        (
            experiment_id,
            record.SHARED_VIEW_TAG_PREFIX + record.LEADERBOARD_VIEW_KEY,
            view_tag_value(state, f"{suite} leaderboard by {headline}", now_ms),
        ),
        (
            suite_experiment.experiment_id,
            record.SHARED_VIEW_TAG_PREFIX + record.CELLS_VIEW_KEY,
            view_tag_value(cells_view_state(records.cells, headline), f"{suite} cells by {headline}", now_ms),
        ),
        (experiment_id, record.TAG_HEADLINE, headline),
        (experiment_id, record.NOTE_TAG, _experiment_note(suite, headline)),
        *(
            (experiment, record.EXPERIMENT_KIND_TAG, record.EXPERIMENT_KIND_TRAINING)
            for experiment in (experiment_id, suite_experiment.experiment_id)
        ),
    ]
    for experiment, name, value in experiment_tags:
        _idempotently(client.set_experiment_tag, experiment, name, value)
    logger.info("published %d leaderboard runs of %s in %.1fs", len(run_ids), suite, time.perf_counter() - started)
    return LeaderboardLink(
        experiment_id=experiment_id,
        experiment_name=record.leaderboard_experiment_name(suite),
        headline_metric=headline,
        view_key=record.LEADERBOARD_VIEW_KEY,
        run_ids=tuple(run_ids),
        suite_experiment_id=suite_experiment.experiment_id,
    )


def _leaderboard_experiment(client, tracking_uri: str, suite: str) -> str:

    name = record.leaderboard_experiment_name(suite)
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    # Beside the suite's own artifacts, never relative to the current directory.
    try:
        return client.create_experiment(name, artifact_location=artifact_location(tracking_uri, f"{suite}/leaderboard"))
    except Exception as error:  # another publisher created it a moment ago: publish into that one
        from harness.tracking_retry import error_code

        created = client.get_experiment_by_name(name) if error_code(error) == "RESOURCE_ALREADY_EXISTS" else None
        if created is None:
            raise
        return created.experiment_id


def _figures(client, records: "SuiteRecords", folder: Path) -> list[Path]:
    """The report's PNGs: those the report logged on the newest invocation run (the same files, no second
    drawing: drawing is most of a publish's time), else drawn here."""
    from harness.report.markdown import draw_plots, plot_file_names

    names = list(plot_file_names(records.suite).values())
    newest = records.newest_invocation
    try:
        logged = (
            {Path(item.path).name for item in client.list_artifacts(newest, REPORT_ARTIFACT_PATH)} if newest else set()
        )
        if logged.issuperset(names):
            with quiet_downloads():
                return [
                    Path(client.download_artifacts(newest, f"{REPORT_ARTIFACT_PATH}/{name}", str(folder)))
                    for name in names
                ]
        return draw_plots(records, folder, plot_file_names(records.suite))
    except Exception as error:  # a figure is a nicety on these runs; the numbers are the point
        logger.warning("leaderboard figures not logged: %s", str(error).splitlines()[0] if str(error) else error)
        return []


def write_report_and_leaderboard(tracking_uri: str, suite: str, out_dir: str | Path) -> tuple[Path, LeaderboardLink]:
    """`markdown.write_report` then `publish_leaderboard` on one reading of the store (each alone reads it)."""
    from harness.report.markdown import write_report

    records = load_suite_records(tracking_uri, suite)
    report = write_report(tracking_uri, suite, out_dir, records=records)
    # The report has just logged its figures on the newest invocation run, where the leaderboard takes them.
    return report, publish_leaderboard(tracking_uri, suite, records=records)


# --- one run per key, whoever publishes ------------------------------------------------------------


def _idempotently(write, *args, **kwargs):
    """A write that another publisher may make at the same moment. MLflow's SQL store looks for a tag or param
    before inserting it, so the second of two concurrent first writes fails on the table's unique key (measured:
    "UNIQUE constraint failed: experiment_tags.key"); the write sets a value, so once more finds the row and
    updates it."""
    from mlflow.exceptions import MlflowException

    try:
        return write(*args, **kwargs)
    except MlflowException:
        return write(*args, **kwargs)


def _canonical_order(run) -> tuple[int, str]:
    """The oldest run of a key is its run: every publisher orders a key's runs the same way, whatever it saw."""
    return run.info.start_time, run.info.run_id


def _leaderboard_runs_by_key(client, experiment_id: str, key: str | None = None) -> dict[str, list]:
    """Active leaderboard runs by their key (one key's when `key` is given), oldest first; a run without a key
    (written before keys existed) is under ""."""
    filter_string = kind_filter(record.KIND_LEADERBOARD)
    if key is not None:
        filter_string += f" and tags.`{record.TAG_LEADERBOARD_KEY}` = '{key}'"
    by_key: dict[str, list] = {}
    for run in search_all_runs(client, experiment_id, filter_string):
        by_key.setdefault(run.data.tags.get(record.TAG_LEADERBOARD_KEY, ""), []).append(run)
    return {found: sorted(runs, key=_canonical_order) for found, runs in by_key.items()}


def write_rows(
    client, experiment_id: str, suite: str, suite_experiment_id: str, rows: list[LeaderboardRow], figures: list[Path]
) -> list[str]:
    """The first phase of a publish: each row written into its key's run (updated in place), created where the
    key has none. Returns the run ids, in the rows' order."""
    existing = _leaderboard_runs_by_key(client, experiment_id)
    run_ids = []
    for row in rows:
        runs = existing.get(row.key) or _created_run(client, experiment_id, suite, row)
        _write_row(client, runs[0], suite, suite_experiment_id, row, figures)
        run_ids.append(runs[0].info.run_id)
    return run_ids


def _created_run(client, experiment_id: str, suite: str, row: LeaderboardRow) -> list:
    """A new run for the row's key, then the key's runs as the store holds them now, oldest first: another
    publisher may have created one at the same time, and whichever is older is the one both write into. This
    search, after the create, is what lets `delete_stale_runs` leave exactly one (see the module docstring)."""
    tags = {record.TAG_KIND: record.KIND_LEADERBOARD, record.TAG_SUITE: suite, record.TAG_LEADERBOARD_KEY: row.key}
    created = client.create_run(experiment_id, run_name=row.run_name, tags=tags)
    return _leaderboard_runs_by_key(client, experiment_id, row.key).get(row.key) or [created]


def delete_stale_runs(client, experiment_id: str, keys: set[str]) -> None:
    """The second phase of a publish: delete the leaderboard runs whose key is not in `keys` (configurations no
    longer published, runs without a key) and every run of a key but its oldest."""
    for key, runs in _leaderboard_runs_by_key(client, experiment_id).items():
        for run in runs if key not in keys else runs[1:]:
            client.delete_run(run.info.run_id)


def _write_row(client, run, suite: str, suite_experiment_id: str, row: LeaderboardRow, figures: list[Path]) -> None:
    """The row into `run`, over what an earlier publish wrote there: tags and the name replaced, metrics logged
    anew (the newest value is the one shown), a metric or text the row no longer has set to NaN or removed.
    Params never change for a key (they are the configuration it hashes), so only missing ones are logged."""
    from mlflow.entities import Metric, Param, RunTag

    run_id = run.info.run_id
    tags = _row_tags(row, suite, suite_experiment_id)
    for name in run.data.tags:
        if name.startswith(record.TAG_REPORTED_PREFIX) and name not in tags:
            _delete_tag(client, run_id, name)
    if run.info.run_name != row.run_name:
        client.update_run(run_id, name=row.run_name)
    timestamp = int(time.time() * 1000)
    values = {**{name: math.nan for name in run.data.metrics}, **row.metrics}
    metrics = [Metric(name, value, timestamp, 0) for name, value in values.items()]
    params = [Param(key, _param_value(value)) for key, value in row.params.items() if key not in run.data.params]
    tag_list = [RunTag(name, value) for name, value in tags.items()]
    for start in range(0, max(len(metrics), len(params), len(tag_list)), _PARAM_BATCH):
        _idempotently(
            client.log_batch,
            run_id,
            metrics=metrics[start : start + _PARAM_BATCH],
            params=params[start : start + _PARAM_BATCH],
            tags=tag_list[start : start + _PARAM_BATCH],
        )
    for figure in figures:
        client.log_artifact(run_id, str(figure), record.LEADERBOARD_FIGURES_ARTIFACT_PATH)
    client.set_terminated(run_id, status="FINISHED")


def _delete_tag(client, run_id: str, name: str) -> None:
    """Remove a text the row no longer has; another publisher may have removed it first."""
    from mlflow.exceptions import MlflowException

    try:
        client.delete_tag(run_id, name)
    except MlflowException:
        if name in client.get_run(run_id).data.tags:
            raise


def _row_tags(row: LeaderboardRow, suite: str, suite_experiment_id: str) -> dict[str, str]:
    return {
        record.TAG_KIND: record.KIND_LEADERBOARD,
        record.TAG_SUITE: suite,
        record.TAG_ARM: row.arm,
        record.TAG_ALGORITHM: record.algorithm_of(row.arm),
        record.TAG_CONFIG: row.config,
        record.TAG_LEADERBOARD_KEY: row.key,
        record.TAG_CURRENT: "true" if row.current else "false",
        record.TAG_INTERVAL: row.interval,
        record.TAG_CELL_RUNS: ",".join(row.cell_runs),
        record.NOTE_TAG: _run_note(row, suite_experiment_id),
        **{record.TAG_REPORTED_PREFIX + metric: text for metric, text in row.texts.items()},
    }


def _param_value(value) -> str:

    text = str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[: PARAM_VALUE_LIMIT - 3] + "..."


def _run_note(row: LeaderboardRow, suite_experiment_id: str) -> str:
    links = ", ".join(
        f"[seed {seed}](#/experiments/{suite_experiment_id}/runs/{run_id})"
        for seed, run_id in zip(row.seeds, row.cell_runs)
    )
    status = "the configuration the report shows" if row.current else "an earlier configuration, not in the report"
    return (
        f"`{row.arm}`, config `{row.config or '—'}` ({status}): means over {len(row.seeds)} seed(s), 95% "
        f"interval {row.interval}; `<metric>{record.CI_LOW_SUFFIX}` and `<metric>{record.CI_HIGH_SUFFIX}` are its "
        f"bounds. Cell runs: {links}."
    )


def _experiment_note(suite: str, headline: str) -> str:
    return (
        f"The leaderboard of suite `{suite}`: one run per algorithm and configuration, the means over seeds of "
        f"the cell runs in experiment `{record.experiment_name(suite)}` with their 95% interval bounds "
        f"(`<metric>{record.CI_LOW_SUFFIX}`, `<metric>{record.CI_HIGH_SUFFIX}`), as in reports/{suite}.md. "
        f'Rewritten by every `harness run` and `harness report`. The view "{record.LEADERBOARD_VIEW_KEY}" sorts '
        f"by `{headline}`; the figures are logged under `{record.LEADERBOARD_FIGURES_ARTIFACT_PATH}/` on each run."
    )
