"""MLflow -> pandas: one row per cell run, and per-sample tables.

The report never reads run folders: MLflow is the system of record (DESIGN §4), so a teammate with only
the tracking server regenerates the same report. Every name it reads (experiment, tags, metric prefixes,
artifact paths) comes from `harness.record`, the schema the writers use:

- experiment ``harness/<suite>``; a parent run per invocation and a child run per cell (kind ``cell``);
- cell tags: the arm ("dpo@beta=0.03" for a sweep point), its registry algorithm and sweep point, what the
  algorithm declares (family, KL knob and its direction, own training curves, what it learned from), whether its
  KL is a bound, seed, cell, cell hash, status, failure, generator, prompt format, training reward. The report
  never imports an algorithm's module: a report of old runs must not depend on today's code, so what a run does
  not say is missing (runs written before the arm tag held the arm in the algorithm tag);
- metrics ``eval/<name>`` (final), ``train/<name>`` (history), ``cost/<name>``;
- params: the flattened resolved config; artifact ``eval/samples.jsonl``.

Runs of one suite from several `harness run` invocations pool into one frame. A cell is keyed by
(arm, seed, cell_hash); because the cell hash also covers the seed's own data and models, a seed-free
``config`` key is derived from the params of the sections the hash covers (`record.cell_sections`), so that
seeds of one configuration group together and a changed configuration stands apart (`split_configurations`).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

from harness import record
from harness.errors import UserError
from harness.metrics.catalog import METRICS
from harness.record import (
    COST_PREFIX,
    EVAL_PREFIX,
    PREPARE_PREFIX,
    experiment_name,
)

logger = logging.getLogger(__name__)

BASELINE_ALGORITHM = record.BASELINE
COMPLETE = record.STATUS_COMPLETE
FAILED = record.STATUS_FAILED

# Sampling parameters of the evaluator, in the order a reader looks for them. Any other
# ``evaluation.*`` param is loaded too, after these.
SAMPLING_PARAMS = (
    "evaluation.num_prompts",
    "evaluation.samples_per_prompt",
    "evaluation.temperature",
    "evaluation.top_k",
    "evaluation.top_p",
    "evaluation.max_new_tokens",
)
EVALUATION_PARAM_PREFIX = "evaluation."

# Params the report reads: every section a cell's identity covers (the header states them), the other
# algorithms' sections, LoRA settings and the device.
_LOADED_SECTIONS = tuple(
    dict.fromkeys(
        record.cell_sections(record.BASELINE)
        + record.TRAINED_CELL_SECTIONS
        + (record.ALGORITHMS_SECTION, record.LORA_SECTION, "device")
    )
)
CONFIG_KEY_LENGTH = 8

IDENTITY_COLUMNS = [
    "run_id",
    "suite",
    "arm",  # each arm (an algorithm at one sweep point) is its own row of the report
    "algorithm",  # the arm's registry algorithm
    "sweep_point",  # "beta=0.03"; "" when not swept
    # What the algorithm declares (record.TAG_FAMILY ...); None, False or () where the run does not say (the
    # baseline, runs written before these tags):
    "family",  # one of record.FAMILIES
    "kl_knob",  # the option a frontier sweeps
    "kl_knob_raises_kl",  # True when a larger value of it allows more KL
    "curves",  # its own train/ curves, names without the prefix, as a tuple
    "data",  # one sentence: what it learned from
    "kl_is_bound",  # True where eval/kl is an analytic upper bound (best-of-n), not an estimate
    "lora_stages",  # the cell's stages that trained LoRA adapters, comma-separated ("" for full fine-tuning)
    "seed",
    "cell",
    "cell_hash",
    "status",
    "failure",
    "start_time",
    "generator",
    "training_reward",
    "prompt_format",
    "gold_label",  # what eval/gold_reward is (record.TAG_GOLD)
    "judge_label",  # who judged eval/judge_* (record.TAG_JUDGE)
    "config",
]

# MLflow run statuses worth reporting: a RUNNING run has no final numbers yet, a KILLED one never will.
_REPORTED_RUN_STATUSES = ("FINISHED", "FAILED")
_PAGE_SIZE = 1000


class ReportError(UserError):
    """A report cannot be built from what MLflow holds; the message is one line for the user."""


# The train/ curves every training algorithm logs under one name and unit (record.TRAIN_*); the budget fraction
# is the x-axis of every curve, not a curve of its own.
SHARED_CURVES = (record.TRAIN_KL_PER_SEQUENCE,)
CURVE_X = record.TRAIN_BUDGET_FRACTION


def training_curve_metrics(curves) -> tuple[str, ...]:
    """The train/* metric names the report reads for a cell whose algorithm declares `curves` (its "curves"
    column): the x-axis, the shared curves, then its own."""
    names = [CURVE_X, *SHARED_CURVES, *curves]
    return tuple(record.TRAIN_PREFIX + name for name in dict.fromkeys(names))


def declared_curves(cells: "pd.DataFrame") -> dict[str, tuple[str, ...]]:
    """Registry algorithm -> the train/ curves its cells declared (the "curves" column): its newest cell's that
    declares any, so that an algorithm draws one set of panels even where an older run declared another. An
    algorithm none of whose cells declares any is left out."""
    if "curves" not in cells or cells.empty:
        return {}
    newest_last = cells.sort_values(["start_time", "run_id"], kind="mergesort") if "start_time" in cells else cells
    return {algorithm: curves for algorithm, curves in zip(newest_last["algorithm"], newest_last["curves"]) if curves}


def algorithm_order(names) -> list[str]:
    """Arms or registry algorithms: the SFT baseline first (everything is compared with it), then the others
    alphabetically."""
    unique = sorted(set(names))
    baseline = [name for name in unique if name == BASELINE_ALGORITHM]
    return baseline + [name for name in unique if name != BASELINE_ALGORITHM]


def eval_metric_names(df: "pd.DataFrame") -> list[str]:
    """Bare eval metric names present in `df`, catalog order first, then any unknown ones sorted."""

    present = {column[len(EVAL_PREFIX) :] for column in df.columns if column.startswith(EVAL_PREFIX)}
    known = [name for name in METRICS if name in present]
    return known + sorted(present - set(known))


def cost_metric_names(df: "pd.DataFrame") -> list[str]:
    present = {column[len(COST_PREFIX) :] for column in df.columns if column.startswith(COST_PREFIX)}
    known = [name for name in record.COST_METRICS if name in present]
    return known + sorted(present - set(known))


def metric_direction(name: str) -> str:
    """'higher', 'lower' or 'neutral' for a bare metric name; unknown metrics have no direction."""

    info = METRICS.get(name)
    return info.direction if info is not None else "neutral"


def open_client(tracking_uri: str):
    """An MlflowClient for `tracking_uri`, refusing to create a SQLite file that is not there.

    MLflow creates an empty database for any sqlite URI it is given; a report pointed at a wrong path
    should say so instead of leaving a stray mlflow.db behind.
    """
    import mlflow

    database = _sqlite_path(tracking_uri)
    if database is not None and not database.exists():
        raise ReportError(f"no MLflow database at {database} (tracking URI {tracking_uri})")
    return mlflow.MlflowClient(tracking_uri=tracking_uri)


def _sqlite_path(tracking_uri: str) -> Path | None:
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    # "sqlite:////abs/db" keeps its leading slash after the prefix; "sqlite:///rel.db" is relative.
    return Path(tracking_uri[len(prefix) :])


def find_experiment(client, suite: str, tracking_uri: str):
    from mlflow.exceptions import MlflowException

    name = experiment_name(suite)
    try:
        experiment = client.get_experiment_by_name(name)
    except MlflowException as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ReportError(f"cannot read suite '{suite}' from {tracking_uri}: {first_line}") from error
    if experiment is None:
        raise ReportError(
            f"no MLflow experiment '{name}' for suite '{suite}' at {tracking_uri}; "
            f"run `harness run suite={suite}` first"
        )
    return experiment


def kind_filter(kind: str) -> str:
    """An MLflow search filter for the runs of one record kind (cell, invocation, leaderboard)."""
    return f"tags.`{record.TAG_KIND}` = '{kind}'"


def search_all_runs(client, experiment_id: str, filter_string: str) -> list:
    runs, page_token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            filter_string=filter_string,
            max_results=_PAGE_SIZE,
            order_by=["attributes.start_time ASC"],
            page_token=page_token,
        )
        runs.extend(page)
        page_token = page.token
        if not page_token:
            return runs


def _run_row(run, suite: str) -> dict | None:
    """One flat dict per cell run, or None (with a warning) when the run lacks its identity tags."""
    import pandas as pd

    tags = run.data.tags
    # Runs written before record.TAG_ARM held the arm in TAG_ALGORITHM.
    arm, seed = tags.get(record.TAG_ARM) or tags.get(record.TAG_ALGORITHM), tags.get(record.TAG_SEED)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        logger.warning("skipping run %s: no integer %s tag (got %r)", run.info.run_id, record.TAG_SEED, seed)
        return None
    if not arm:
        logger.warning("skipping run %s: no %s tag", run.info.run_id, record.TAG_ARM)
        return None
    algorithm = (tags.get(record.TAG_ALGORITHM) if record.TAG_ARM in tags else None) or record.algorithm_of(arm)

    status = tags.get(record.TAG_STATUS)
    if status is None:
        # A run MLflow marks FAILED died before the pipeline could tag it.
        status = FAILED if run.info.status == "FAILED" else COMPLETE
    failure = tags.get(record.TAG_FAILURE)
    if status == FAILED and not failure and run.info.status == "FAILED":
        failure = f"the MLflow run ended as FAILED without a {record.TAG_FAILURE} tag"

    row = {
        "run_id": run.info.run_id,
        "suite": tags.get(record.TAG_SUITE, suite),
        "arm": arm,
        "algorithm": algorithm,
        "sweep_point": tags.get(record.TAG_SWEEP_POINT, record.sweep_point_of(arm)),
        "family": tags.get(record.TAG_FAMILY) or None,
        "kl_knob": tags.get(record.TAG_KL_KNOB) or None,
        "kl_knob_raises_kl": tags.get(record.TAG_KL_KNOB_RAISES_KL) == "true",
        "curves": tuple(name for name in tags.get(record.TAG_CURVES, "").split(",") if name),
        "data": tags.get(record.TAG_DATA) or None,
        "kl_is_bound": tags.get(record.TAG_KL_IS_BOUND) == "true",
        "lora_stages": tags.get(record.TAG_LORA_STAGES, ""),
        "seed": seed,
        "cell": tags.get(record.TAG_CELL, f"{arm}-s{seed}"),
        "cell_hash": tags.get(record.TAG_CELL_HASH, ""),
        "status": status,
        "failure": failure,
        "start_time": pd.Timestamp(run.info.start_time, unit="ms", tz="UTC"),
        "generator": tags.get(record.TAG_GENERATOR),
        "training_reward": tags.get(record.TAG_TRAINING_REWARD),
        "prompt_format": tags.get(record.TAG_PROMPT_FORMAT),
        "gold_label": tags.get(record.TAG_GOLD),
        "judge_label": tags.get(record.TAG_JUDGE),
    }
    for key, value in run.data.metrics.items():
        if key.startswith((EVAL_PREFIX, COST_PREFIX, PREPARE_PREFIX)):
            row[key] = float(value)
    params = {key: value for key, value in run.data.params.items() if _loaded(key)}
    row.update(params)
    row["config"] = config_key(arm, params, row["lora_stages"])
    return row


def _loaded(key: str) -> bool:
    return any(record.in_section(key, section) for section in _LOADED_SECTIONS)


def config_params(arm: str, params: dict, lora_stages: str) -> dict:
    """The params that decide `arm`'s result at a given seed: those of the sections its cell hash covers
    (`record.cell_sections`), and the LoRA settings where a stage of the cell trained adapters (`lora_stages`,
    the cell's record.TAG_LORA_STAGES)."""
    sections = record.cell_sections(arm)
    if set(record.lora_stages(arm)) & set(lora_stages.split(",")):
        sections += (record.LORA_SECTION,)
    return {
        key: value
        for key, value in params.items()
        if isinstance(value, str) and any(record.in_section(key, section) for section in sections)
    }


def row_config_params(arm: str, row: dict) -> dict:
    """config_params of a frame row: its params are its string values, its LoRA stages its lora_stages column."""
    lora_stages = row.get("lora_stages")
    params = {key: value for key, value in row.items() if isinstance(value, str)}
    return config_params(arm, params, lora_stages if isinstance(lora_stages, str) else "")


def config_key(arm: str, params: dict, lora_stages: str) -> str:
    """A short, seed-free name of a cell's configuration; "" when the run logged none of its params."""
    import hashlib
    import json

    relevant = config_params(arm, params, lora_stages)
    if not relevant:
        return ""
    text = json.dumps(sorted(relevant.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:CONFIG_KEY_LENGTH]


def _ordered_columns(df: "pd.DataFrame") -> list[str]:
    eval_columns = [EVAL_PREFIX + name for name in eval_metric_names(df)]
    cost_columns = [COST_PREFIX + name for name in cost_metric_names(df)]
    prepare_columns = sorted(column for column in df.columns if column.startswith(PREPARE_PREFIX))
    known_params = [key for key in SAMPLING_PARAMS if key in df.columns]
    other_params = sorted(column for column in df.columns if _loaded(column))
    other_params = [column for column in other_params if column not in known_params]
    return IDENTITY_COLUMNS + eval_columns + cost_columns + prepare_columns + known_params + other_params


def dedupe_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    """Keep one run per (arm, seed, cell_hash): the latest complete one, else the latest failed one.

    A rerun of the same config after a failure (or a repeated run) must not count a seed twice, and a
    failure that a later rerun fixed is history, not a result.
    """
    ranked = df.assign(_is_complete=df["status"].eq(COMPLETE))
    ranked = ranked.sort_values(["_is_complete", "start_time", "run_id"], kind="mergesort")
    kept = ranked.drop_duplicates(["arm", "seed", "cell_hash"], keep="last")
    dropped = len(df) - len(kept)
    if dropped:
        logger.info("dropped %d superseded cell runs", dropped)
    return kept.drop(columns="_is_complete")


def sort_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    """Baseline first, then arms alphabetically, then seed and start time: a stable report order."""
    import pandas as pd

    order = algorithm_order(df["arm"])
    arm_rank = pd.Categorical(df["arm"], categories=order, ordered=True)
    return (
        df.assign(_arm_rank=arm_rank)
        .sort_values(["_arm_rank", "seed", "start_time", "run_id"], kind="mergesort")
        .drop(columns="_arm_rank")
        .reset_index(drop=True)
    )


def load_cell_runs(tracking_uri: str, suite: str) -> "pd.DataFrame":
    """One row per cell of `suite`: identity tags, eval/* and cost/* metrics, evaluation params.

    Runs still RUNNING or KILLED are left out; duplicates of a cell config are resolved by
    `dedupe_cells`. Raises ReportError when the suite has no experiment or no cell runs.
    """
    import pandas as pd

    client = open_client(tracking_uri)
    experiment = find_experiment(client, suite, tracking_uri)
    runs = search_all_runs(client, experiment.experiment_id, kind_filter(record.KIND_CELL))
    rows = [_run_row(run, suite) for run in runs if run.info.status in _REPORTED_RUN_STATUSES]
    rows = [row for row in rows if row is not None]
    if not rows:
        raise ReportError(f"experiment '{experiment_name(suite)}' at {tracking_uri} has no finished cell runs")

    df = pd.DataFrame(rows)
    df = df[_ordered_columns(df)]
    df["in_latest_invocation"] = df["run_id"].isin(latest_invocation_cells(client, experiment.experiment_id))
    return sort_cells(dedupe_cells(df))


def latest_invocation_cells(client, experiment_id: str) -> set[str]:
    """Run ids of the cells the newest `harness run` used, computed or kept from earlier runs (the pipeline
    lists them in its parent run's TAG_CELL_RUNS tag); empty when that run recorded none."""
    newest = client.search_runs(
        [experiment_id],
        filter_string=kind_filter(record.KIND_INVOCATION),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    listed = newest[0].data.tags.get(record.TAG_CELL_RUNS, "") if newest else ""
    return {run_id for run_id in listed.split(",") if run_id}


def complete_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    """Only cells whose evaluation finished: a failed cell's partial numbers are not results."""
    return df[df["status"] == COMPLETE]


def current_configs(df: "pd.DataFrame") -> dict[str, str]:
    """Per arm, the configuration its results are reported under: the one the newest `harness run`
    used (its cells may have been computed by earlier runs), else that of its newest complete cell.

    The newest invocation's, because that is the suite as the user runs it now; failing that (the arm
    was not part of it), the newest complete cell, because a changed config is what the user means now and a
    new config whose first cell crashed has no results to show (its failure is listed on its own).
    """
    chosen = {}
    latest = df["in_latest_invocation"] if "in_latest_invocation" in df else False
    narrow = df[["arm", "status", "start_time", "run_id", "config"]].assign(latest=latest)
    for arm, runs in narrow.groupby("arm", sort=False):
        used_now = runs[runs["latest"] & (runs["status"] == COMPLETE)]
        if not used_now.empty:
            chosen[arm] = used_now["config"].iloc[-1]
            continue
        complete = runs[runs["status"] == COMPLETE]
        candidates = complete if not complete.empty else runs
        newest = candidates.sort_values(["start_time", "run_id"], kind="mergesort").iloc[-1]
        chosen[arm] = newest["config"]
    return chosen


def split_configurations(df: "pd.DataFrame") -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(cells of each arm's current configuration, cells of its other configurations).

    Different configurations are never pooled as if they were seeds: the report shows the current one and
    names the others.
    """
    if df.empty:
        return df, df
    is_current = df["arm"].map(current_configs(df)) == df["config"]
    return df[is_current], df[~is_current]
