"""MLflow -> pandas: one row per cell run, the long (tidy) form, and per-sample tables.

The report never reads run folders: MLflow is the system of record (DESIGN §4), so a teammate with only
the tracking server regenerates the same report. Every name it reads (experiment, tags, metric prefixes,
artifact paths) comes from `harness.record`, the schema the writers use:

- experiment ``harness/<suite>``; a parent run per invocation and a child run per cell (kind ``cell``);
- cell tags: algorithm (the arm: "dpo@beta=0.03" for a sweep point), its registry algorithm, sweep point and
  family, whether its KL is a bound, seed, cell, cell hash, status, failure, generator, prompt format, training
  reward; runs written before the arm tags fall back to what the arm's name and the algorithm's module say;
- metrics ``eval/<name>`` (final), ``train/<name>`` (history), ``cost/<name>``;
- params: the flattened resolved config; artifact ``eval/samples.jsonl``.

Runs of one suite from several `harness run` invocations pool into one frame. A cell is keyed by
(algorithm, seed, cell_hash); because the cell hash also covers the seed's own data and models, a seed-free
``config`` key is derived from the params of the sections the hash covers (`record.cell_sections`), so that
seeds of one configuration group together and a changed configuration stands apart (`split_configurations`).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd

from harness import record
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

# The order cost metrics are shown in: what was consumed first, then what it cost.
COST_METRICS = (
    "prompts_seen",
    "completions_generated",
    "tokens_generated",
    "optimizer_steps",
    "wall_time_s",
    "peak_memory_mb",
)

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
    dict.fromkeys(record.cell_sections(record.BASELINE) + record.TRAINED_CELL_SECTIONS
                  + (record.ALGORITHMS_SECTION, record.LORA_SECTION, "device"))
)
CONFIG_KEY_LENGTH = 8

IDENTITY_COLUMNS = [
    "run_id",
    "suite",
    "algorithm",  # the arm: each arm (an algorithm at one sweep point) is its own row of the report
    "algorithm_name",  # the arm's registry algorithm
    "sweep_point",  # "beta=0.03"; "" when not swept
    "family",  # one of record.FAMILIES; None when neither the run nor the module says
    "kl_is_bound",  # True where eval/kl is an analytic upper bound (best-of-n), not an estimate
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


class ReportError(Exception):
    """A report cannot be built from what MLflow holds; the message is one line for the user."""


# --- what each algorithm's module declares (harness/registry.py) ----------------------------------------


@dataclass(frozen=True)
class AlgorithmInfo:
    """The metadata the report reads from an algorithm's module."""

    family: str | None
    curves: tuple[str, ...]  # its own train/* curves (names without the prefix)
    describe_data: "Callable[[dict], str] | None"
    kl_knob: str | None = None  # the option a frontier sweeps
    kl_knob_raises_kl: bool = False  # whether a larger value allows more KL


_NO_INFO = AlgorithmInfo(family=None, curves=(), describe_data=None)


@functools.lru_cache(maxsize=None)
def algorithm_info(name: str) -> AlgorithmInfo:
    """What `name`'s module declares; nothing for the baseline, an unknown name or a module that does not
    import (a report of old runs must not depend on every algorithm's code importing today)."""
    from harness.registry import ALGORITHMS

    if name == BASELINE_ALGORITHM or name not in ALGORITHMS:
        return _NO_INFO
    try:
        module = ALGORITHMS.get(name)
    except Exception as error:  # any import failure: the report goes on without this module's metadata
        logger.warning("algorithm '%s' does not import (%s); the report has no metadata for it", name,
                       str(error).splitlines()[0] if str(error) else type(error).__name__)
        return _NO_INFO
    describe = getattr(module, "describe_data", None)
    return AlgorithmInfo(
        family=getattr(module, "FAMILY", None),
        curves=tuple(getattr(module, "CURVES", ())),
        describe_data=describe if callable(describe) else None,
        kl_knob=getattr(module, "KL_KNOB", None),
        kl_knob_raises_kl=bool(getattr(module, "KL_KNOB_RAISES_KL", False)),
    )


# The train/ curves every training algorithm logs under one name and unit (record.TRAIN_*); the budget fraction
# is the x-axis of every curve, not a curve of its own.
SHARED_CURVES = (record.TRAIN_KL_PER_SEQUENCE,)
CURVE_X = record.TRAIN_BUDGET_FRACTION


def training_curve_metrics(algorithms) -> tuple[str, ...]:
    """The train/* metric names the report reads for `algorithms` (registry names or arms): the x-axis, the
    shared curves, then each algorithm's own CURVES."""
    names = [CURVE_X, *SHARED_CURVES]
    for algorithm in algorithm_order({record.algorithm_of(arm) for arm in algorithms}):
        names += algorithm_info(algorithm).curves
    return tuple(record.TRAIN_PREFIX + name for name in dict.fromkeys(names))


def algorithm_order(algorithms) -> list[str]:
    """The SFT baseline first (everything is compared with it), then the others alphabetically."""
    unique = sorted(set(algorithms))
    baseline = [name for name in unique if name == BASELINE_ALGORITHM]
    return baseline + [name for name in unique if name != BASELINE_ALGORITHM]


def eval_metric_names(df: "pd.DataFrame") -> list[str]:
    """Bare eval metric names present in `df`, catalog order first, then any unknown ones sorted."""
    from harness.metrics.catalog import METRICS

    present = {column[len(EVAL_PREFIX):] for column in df.columns if column.startswith(EVAL_PREFIX)}
    known = [name for name in METRICS if name in present]
    return known + sorted(present - set(known))


def cost_metric_names(df: "pd.DataFrame") -> list[str]:
    present = {column[len(COST_PREFIX):] for column in df.columns if column.startswith(COST_PREFIX)}
    known = [name for name in COST_METRICS if name in present]
    return known + sorted(present - set(known))


def metric_direction(name: str) -> str:
    """'higher', 'lower' or 'neutral' for a bare metric name; unknown metrics have no direction."""
    from harness.metrics.catalog import METRICS

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
    return Path(tracking_uri[len(prefix):])


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
    algorithm, seed = tags.get(record.TAG_ALGORITHM), tags.get(record.TAG_SEED)
    try:
        seed = int(seed)
    except (TypeError, ValueError):
        logger.warning("skipping run %s: no integer %s tag (got %r)", run.info.run_id, record.TAG_SEED, seed)
        return None
    if not algorithm:
        logger.warning("skipping run %s: no %s tag", run.info.run_id, record.TAG_ALGORITHM)
        return None

    status = tags.get(record.TAG_STATUS)
    if status is None:
        # A run MLflow marks FAILED died before the pipeline could tag it.
        status = FAILED if run.info.status == "FAILED" else COMPLETE
    failure = tags.get(record.TAG_FAILURE)
    if status == FAILED and not failure and run.info.status == "FAILED":
        failure = f"the MLflow run ended as FAILED without a {record.TAG_FAILURE} tag"

    name = tags.get(record.TAG_FAMILY_ALGORITHM) or record.algorithm_of(algorithm)
    row = {
        "run_id": run.info.run_id,
        "suite": tags.get(record.TAG_SUITE, suite),
        "algorithm": algorithm,
        "algorithm_name": name,
        "sweep_point": tags.get(record.TAG_SWEEP_POINT, record.sweep_point_of(algorithm)),
        "family": tags.get(record.TAG_FAMILY) or algorithm_info(name).family,
        "kl_is_bound": tags.get(record.TAG_KL_IS_BOUND) == "true",
        "seed": seed,
        "cell": tags.get(record.TAG_CELL, f"{algorithm}-s{seed}"),
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
    row["config"] = config_key(algorithm, params)
    return row


def _loaded(key: str) -> bool:
    return any(record.in_section(key, section) for section in _LOADED_SECTIONS)


def config_params(algorithm: str, params: dict) -> dict:
    """The params that decide `algorithm`'s result at a given seed: those of the sections its cell hash covers
    (`record.cell_sections`), and the LoRA settings where a stage of the cell trained adapters."""
    sections = record.cell_sections(algorithm)
    if any(trains_with_lora(params, stage) for stage in record.lora_stages(algorithm)):
        sections += (record.LORA_SECTION,)
    return {
        key: value
        for key, value in params.items()
        if isinstance(value, str) and any(record.in_section(key, section) for section in sections)
    }


def trains_with_lora(params: dict, stage: str) -> bool:
    """Whether a cell's logged params say `stage` (sft for the baseline) trained LoRA adapters: named in
    lora.stages, or an algorithm that trains the policy under its "algorithms" entry (config.EVERY_ALGORITHM)."""
    from harness.config import EVERY_ALGORITHM, trains_with_adapters

    stages = str(params.get("lora.stages", ""))
    every_algorithm = f"'{EVERY_ALGORITHM}'" in stages and stage != record.BASELINE and trains_with_adapters(stage)
    named = f"'{stage}'" in stages or every_algorithm
    return params.get("lora.enabled") == "True" and named


def config_key(algorithm: str, params: dict) -> str:
    """A short, seed-free name of a cell's configuration; "" when the run logged none of its params."""
    import hashlib
    import json

    relevant = config_params(algorithm, params)
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
    """Keep one run per (algorithm, seed, cell_hash): the latest complete one, else the latest failed one.

    A rerun of the same config after a failure (or a repeated run) must not count a seed twice, and a
    failure that a later rerun fixed is history, not a result.
    """
    ranked = df.assign(_is_complete=df["status"].eq(COMPLETE))
    ranked = ranked.sort_values(["_is_complete", "start_time", "run_id"], kind="mergesort")
    kept = ranked.drop_duplicates(["algorithm", "seed", "cell_hash"], keep="last")
    dropped = len(df) - len(kept)
    if dropped:
        logger.info("dropped %d superseded cell runs", dropped)
    return kept.drop(columns="_is_complete")


def sort_cells(df: "pd.DataFrame") -> "pd.DataFrame":
    """Baseline first, then algorithms alphabetically, then seed and start time: a stable report order."""
    import pandas as pd

    order = algorithm_order(df["algorithm"])
    algorithm_rank = pd.Categorical(df["algorithm"], categories=order, ordered=True)
    return (
        df.assign(_algorithm_rank=algorithm_rank)
        .sort_values(["_algorithm_rank", "seed", "start_time", "run_id"], kind="mergesort")
        .drop(columns="_algorithm_rank")
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
    """Per algorithm, the configuration its results are reported under: the one the newest `harness run`
    used (its cells may have been computed by earlier runs), else that of its newest complete cell.

    The newest invocation's, because that is the suite as the user runs it now; failing that (the algorithm
    was not part of it), the newest complete cell, because a changed config is what the user means now and a
    new config whose first cell crashed has no results to show (its failure is listed on its own).
    """
    chosen = {}
    latest = df["in_latest_invocation"] if "in_latest_invocation" in df else False
    narrow = df[["algorithm", "status", "start_time", "run_id", "config"]].assign(latest=latest)
    for algorithm, runs in narrow.groupby("algorithm", sort=False):
        used_now = runs[runs["latest"] & (runs["status"] == COMPLETE)]
        if not used_now.empty:
            chosen[algorithm] = used_now["config"].iloc[-1]
            continue
        complete = runs[runs["status"] == COMPLETE]
        candidates = complete if not complete.empty else runs
        newest = candidates.sort_values(["start_time", "run_id"], kind="mergesort").iloc[-1]
        chosen[algorithm] = newest["config"]
    return chosen


def split_configurations(df: "pd.DataFrame") -> tuple["pd.DataFrame", "pd.DataFrame"]:
    """(cells of each algorithm's current configuration, cells of its other configurations).

    Different configurations are never pooled as if they were seeds: the report shows the current one and
    names the others.
    """
    if df.empty:
        return df, df
    is_current = df["algorithm"].map(current_configs(df)) == df["config"]
    return df[is_current], df[~is_current]


def sample_count(samples: "pd.DataFrame | None") -> float:
    """How many generated completions a per-seed value averages: the rows of eval/samples.jsonl."""
    return float(len(samples)) if samples is not None and not samples.empty else float("nan")


def tidy(df: "pd.DataFrame", samples: dict | None = None) -> "pd.DataFrame":
    """Long form of the complete cells' eval metrics: (suite, algorithm, seed, metric, value, n, direction).

    `metric` is the bare catalog name ("gold_reward"); `n` is the number of evaluated completions behind the
    value (rows of the cell's eval/samples.jsonl in `samples`, a dict run_id -> frame; NaN when not loaded);
    `direction` comes from the catalog ("neutral" for metrics it does not know). Every configuration of an
    algorithm is kept: `split_configurations` decides what is compared.
    """
    import pandas as pd

    names = eval_metric_names(df)
    columns = ["suite", "algorithm", "seed", "metric", "value", "n", "direction"]
    if not names:
        return pd.DataFrame(columns=columns)
    samples = samples or {}
    cells = complete_cells(df)
    wide = cells[["suite", "algorithm", "seed"] + [EVAL_PREFIX + name for name in names]].assign(
        n=[sample_count(samples.get(run_id)) for run_id in cells["run_id"]]
    )
    long = wide.melt(id_vars=["suite", "algorithm", "seed", "n"], var_name="metric", value_name="value")
    long["metric"] = long["metric"].str.slice(len(EVAL_PREFIX))
    long = long.dropna(subset=["value"])
    long["direction"] = long["metric"].map(metric_direction)
    return long[columns].reset_index(drop=True)
