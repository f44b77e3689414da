"""Tables built from the cell frame of `frame.load_cell_runs`: the main comparison, the win rate against the
SFT baseline, the terminal leaderboard, the cost per cell and the other configurations. Which differences are
real is for harness/report/claims.py (paired over seeds, corrected over the report).

Only complete cells of each arm's current configuration enter the statistics; failed cells are
listed by the report, not averaged, and other configurations are named, not pooled as seeds.

Intervals per arm (an algorithm at one sweep point: a row of every table): with two or more seeds, a
Student-t interval over seeds; with one seed, a bootstrap over prompts of the per-sample values in
eval/samples.jsonl (`samples`: run_id -> frame).
"""

from __future__ import annotations

import difflib
import logging
import math
from typing import TYPE_CHECKING

from harness import record
from harness.metrics.catalog import COMPARISONS, METRICS, names_in
from harness.report.frame import (
    BASELINE_ALGORITHM,
    COST_PREFIX,
    EVAL_PREFIX,
    ReportError,
    algorithm_order,
    complete_cells,
    cost_metric_names,
    eval_metric_names,
    metric_direction,
    row_config_params,
    split_configurations,
)
from harness.report.samples import WIN_RATE_METRIC, per_sample_values
from harness.report.stats import ConfidenceInterval, bootstrap_mean_ci, mean_ci

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

MISSING = "—"
DIGITS = 3
BASELINE = BASELINE_ALGORITHM
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
# How a row's interval was obtained.
INTERVAL_OVER_SEEDS = "t over seeds"
INTERVAL_OVER_PROMPTS = "bootstrap over prompts"
NO_INTERVAL = "none"
# The metrics of the first results table: what the algorithms were after and what it cost in divergence.
REWARD_AND_KL_METRICS = names_in("reward", "kl")
# Win rates and judge statistics: tables of their own (`win_rate_table`), not columns of the main one.
PAIRWISE_METRICS = names_in("pairwise")
# The pairwise metrics that are win rates (1/2 is a coin flip), gold's and the judge's, against SFT and the reference.
WIN_RATE_METRICS = tuple(
    name for comparison in COMPARISONS for name in (comparison.gold_win_rate, comparison.judge_win_rate)
)
SUMMARY_COLUMNS = ["arm", "metric", "direction", "mean", "low", "high", "half_width", "n", "seeds", "interval"]


# --- intervals ----------------------------------------------------------------------------------


def _current_complete(df: "pd.DataFrame") -> "pd.DataFrame":
    current, _ = split_configurations(df)
    return complete_cells(current)


def _single_seed_interval(cell: dict, metric: str, samples: dict, baseline_run_id, confidence: float):
    """Bootstrap over prompts of the metric's per-sample field (catalog) for a one-seed cell; the logged metric
    stays the point estimate."""
    values = per_sample_values(samples.get(cell["run_id"]), metric, samples.get(baseline_run_id))
    logged = float(cell[EVAL_PREFIX + metric])
    if values is None or values.empty:
        return ConfidenceInterval(logged, math.nan, math.nan, 1), NO_INTERVAL
    interval = bootstrap_mean_ci(
        values["value"].to_numpy(float),
        values["prompt_index"].to_numpy(),
        n_resamples=BOOTSTRAP_RESAMPLES,
        seed=BOOTSTRAP_SEED,
        confidence=confidence,
    )
    mean = logged if math.isfinite(logged) else interval.mean
    return interval._replace(mean=mean), INTERVAL_OVER_PROMPTS


def _metric_frame(cells: "pd.DataFrame", metrics: list[str]) -> "pd.DataFrame":
    """Only what the statistics read: the wide frame carries every param, which makes each row lookup slow."""
    return cells[["run_id", "arm", "seed"] + [EVAL_PREFIX + metric for metric in metrics]]


def summarise(df: "pd.DataFrame", samples: dict | None = None, confidence: float = 0.95) -> "pd.DataFrame":
    """One row per (arm, eval metric) over the complete cells of each arm's current configuration.

    Columns: arm, metric, direction, mean, low, high, half_width, n, seeds, interval. With two or more
    seeds `interval` is INTERVAL_OVER_SEEDS and `n` counts seeds; with one seed it is INTERVAL_OVER_PROMPTS
    (n counts prompts) where `samples` holds the cell's per-sample values, else NO_INTERVAL (n = 1).
    Arms come baseline first, metrics in catalog order.
    """
    import pandas as pd

    samples = samples or {}
    cells = _current_complete(df)
    # A column only a failed cell logged is not a result of any arm.
    metrics = [name for name in eval_metric_names(cells) if cells[EVAL_PREFIX + name].notna().any()]
    cells = _metric_frame(cells, metrics)
    # The win rate of a cell is against the baseline of its own seed, as the evaluator computed it.
    baselines = cells[cells["arm"] == BASELINE]
    baseline_runs = dict(zip(baselines["seed"], baselines["run_id"]))
    rows = []
    for arm in algorithm_order(cells["arm"]):
        arm_cells = cells[cells["arm"] == arm]
        seeds = len(arm_cells)
        only_cell = arm_cells.iloc[0].to_dict() if seeds == 1 else None
        for metric in metrics:
            column = arm_cells[EVAL_PREFIX + metric].to_numpy(dtype=float)
            if only_cell is not None and math.isfinite(column[0]):
                baseline_run_id = baseline_runs.get(only_cell["seed"])
                interval, method = _single_seed_interval(only_cell, metric, samples, baseline_run_id, confidence)
            else:
                interval = mean_ci(column, confidence)
                method = INTERVAL_OVER_SEEDS if interval.n >= 2 else NO_INTERVAL
            rows.append(
                {
                    "arm": arm,
                    "metric": metric,
                    "direction": metric_direction(metric),
                    **interval._asdict(),
                    "half_width": interval.half_width,
                    "seeds": seeds,
                    "interval": method,
                }
            )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def _interval_of(row) -> ConfidenceInterval:
    return ConfidenceInterval(float(row["mean"]), float(row["low"]), float(row["high"]), int(row["n"]))


# --- formatting ---------------------------------------------------------------------------------


def format_estimate(mean: float, half_width: float, digits: int = DIGITS) -> str:
    """ "mean ± half-width", just the mean when there is no interval (one seed), "—" when nothing was logged."""
    if math.isnan(mean):
        return MISSING
    if math.isnan(half_width):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half_width:.{digits}f}"


def format_interval(mean: float, low: float, high: float, method: str, digits: int = DIGITS) -> str:
    """A t interval is symmetric and reads "mean ± half-width"; a bootstrap interval need not be, so it reads
    "mean [low, high]"; no interval reads as the mean alone."""
    if math.isnan(mean):
        return MISSING
    if method == INTERVAL_OVER_PROMPTS and not (math.isnan(low) or math.isnan(high)):
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return format_estimate(mean, (high - low) / 2, digits)


def interval_label(seeds: int, methods: set[str], prompts: int) -> str:
    """What a row's intervals are, for the table: "t over 3 seeds", "bootstrap over 64 prompts", "none"."""
    if seeds >= 2:
        return f"t over {seeds} seeds"
    if INTERVAL_OVER_PROMPTS in methods:
        return f"bootstrap over {prompts} prompts"
    return "none (1 seed)"


def clipped_bounds(metric: str, low: float, high: float) -> tuple[float, float]:
    """A rate's bounds clipped to the range it can take (the catalog's `Metric.bounds`): a t interval over few
    seeds can reach past 1 where no win rate lies."""
    bounds = METRICS[metric].bounds if metric in METRICS else None
    if bounds is None:
        return float(low), float(high)
    return max(float(low), bounds[0]), min(float(high), bounds[1])


def reported_text(metric: str, mean: float, low: float, high: float, method: str) -> str:
    """A metric's value as the report prints it: "mean ± half-width" for a t interval, "mean [low, high]" for a
    bootstrap, and "mean [low, high]" with the clipped bounds where clipping made a t interval lopsided
    ("0.950 [0.850, 1.000]", never "0.950 ± 0.100")."""
    clipped_low, clipped_high = clipped_bounds(metric, low, high)
    if (clipped_low, clipped_high) != (low, high) and math.isfinite(clipped_low) and math.isfinite(clipped_high):
        # format_interval writes "mean [low, high]" for an interval that need not be symmetric (a bootstrap's)
        return format_interval(mean, clipped_low, clipped_high, INTERVAL_OVER_PROMPTS)
    return format_interval(mean, low, high, method)


# --- main table ---------------------------------------------------------------------------------


def _best_arms(metric_rows: "pd.DataFrame", digits: int = DIGITS) -> set[str]:
    """Arms whose mean is best for this metric's direction; none for neutral metrics.

    Means are compared as displayed (rounded), so two cells that read the same are both marked.
    """
    direction = metric_rows["direction"].iloc[0]
    finite = _contenders(metric_rows).dropna(subset=["mean"])
    if direction == "neutral" or finite.empty:
        return set()
    rounded = finite["mean"].round(digits)
    best = rounded.max() if direction == "higher" else rounded.min()
    return set(finite.loc[rounded == best, "arm"])


def _contenders(metric_rows: "pd.DataFrame") -> "pd.DataFrame":
    """Rows that can be best: for KL metrics not the baseline, which is the reference itself (KL 0 by
    construction, not an achievement)."""
    metric = METRICS.get(metric_rows["metric"].iloc[0])
    if metric is not None and metric.group == "kl":
        return metric_rows[metric_rows["arm"] != BASELINE]
    return metric_rows


def _seed_counts(df: "pd.DataFrame") -> "pd.Series":
    return _current_complete(df).groupby("arm").size()


def main_table(
    df: "pd.DataFrame",
    samples: dict | None = None,
    confidence: float = 0.95,
    metrics: list[str] | None = None,
    *,
    summary: "pd.DataFrame | None" = None,
) -> "pd.DataFrame":
    """The comparison table: index arm (baseline first), "seeds", "interval" (which interval the row
    uses), then one column per eval metric in catalog order (`metrics` picks some) holding "mean ± half-width"
    (t over seeds) or "mean [low, high]" (bootstrap over prompts); the best per non-neutral metric in **bold**.
    The pairwise metrics (win rates, judge statistics) have their own table (`win_rate_table`) and are left out
    unless `metrics` names them.
    `summary`: `summarise(df, samples, confidence)` when the caller already has it (it is the costly part).
    """
    import pandas as pd

    summary = summarise(df, samples, confidence) if summary is None else summary
    pairwise = set(PAIRWISE_METRICS)
    wanted = metrics if metrics is not None else [m for m in dict.fromkeys(summary["metric"]) if m not in pairwise]
    summary = summary[summary["metric"].isin(wanted)]
    arms = algorithm_order(_current_complete(df)["arm"])
    table = pd.DataFrame(index=pd.Index(arms, name="arm"))
    table["seeds"] = _seed_counts(df).reindex(arms).fillna(0).astype(int)
    table["interval"] = [_row_interval_label(summary, arm) for arm in arms]
    for metric in [name for name in wanted if name in set(summary["metric"])]:
        metric_rows = summary[summary["metric"] == metric]
        best = _best_arms(metric_rows)
        cells = {}
        for row in metric_rows.itertuples():
            text = reported_text(metric, row.mean, row.low, row.high, row.interval)
            text = f"**{text}**" if row.arm in best else text
            # A metric some seeds did not log: its interval is over fewer seeds than the row's label says.
            if row.seeds >= 2 and row.n < row.seeds and not math.isnan(row.mean):
                text += f" *({row.n} seed{'s' if row.n != 1 else ''})*"
            cells[row.arm] = text
        table[metric] = pd.Series(cells, dtype=object).reindex(arms)
    return table


def _row_interval_label(summary: "pd.DataFrame", arm: str) -> str:
    rows = summary[summary["arm"] == arm]
    if rows.empty:
        return MISSING
    bootstrapped = rows[rows["interval"] == INTERVAL_OVER_PROMPTS]
    prompts = int(bootstrapped["n"].max()) if not bootstrapped.empty else 0
    return interval_label(int(rows["seeds"].iloc[0]), set(rows["interval"]), prompts)


# --- win rate -----------------------------------------------------------------------------------


# What a win rate's verdict calls the other side, by the registry's `versus`.
_OPPONENT_NAMES = {"sft": BASELINE, "reference": "the reference"}


def win_rate_table(
    df: "pd.DataFrame",
    samples: dict | None = None,
    confidence: float = 0.95,
    *,
    summary: "pd.DataFrame | None" = None,
    metric: str = WIN_RATE_METRIC,
) -> "pd.DataFrame":
    """A win rate (`metric`: by default the gold reward against the SFT baseline; also win_rate_vs_reference
    and the judge's judge_win_rate_vs_*; ties 1/2) of each arm, with its interval.

    Columns: arm, win_rate, low, high, n, seeds, interval, verdict. The verdict compares the interval
    with 1/2 (a coin flip): "beats sft", "loses to sft" (against the reference: "beats the reference", ...),
    "inside the noise", or "no interval". The baseline has a row only against the reference: against itself
    it is no comparison. `summary` as in `main_table`.
    """
    if metric not in WIN_RATE_METRICS:
        raise ValueError(f"'{metric}' is not a win rate; win rates: {', '.join(WIN_RATE_METRICS)}")
    versus = METRICS[metric].versus
    summary = summarise(df, samples, confidence) if summary is None else summary
    rows = summary[summary["metric"] == metric]
    if versus == "sft":
        rows = rows[rows["arm"] != BASELINE]
    rows = rows.dropna(subset=["mean"]).rename(columns={"mean": "win_rate"})
    opponent = _OPPONENT_NAMES[versus]
    rows = rows.assign(verdict=[_verdict(low, high, opponent) for low, high in zip(rows["low"], rows["high"])])
    columns = ["arm", "win_rate", "low", "high", "n", "seeds", "interval", "verdict"]
    return rows[columns].reset_index(drop=True)


def _verdict(low: float, high: float, opponent: str) -> str:
    if math.isnan(low) or math.isnan(high):
        return "no interval"
    if low > 0.5:
        return f"beats {opponent}"
    if high < 0.5:
        return f"loses to {opponent}"
    return "inside the noise"


# --- leaderboard --------------------------------------------------------------------------------


def leaderboard_frame(df: "pd.DataFrame", sort_by: str | None = None) -> "pd.DataFrame":
    """Numbers for a terminal table: index arm, "seeds", the mean of every eval metric.

    `sort_by` names a metric ("gold_reward" or "eval/gold_reward"); rows are then ordered best first by
    its direction (unknown or neutral metrics: largest first). Without it: baseline first, then A-Z.
    Each arm's current configuration only, as in the report.
    """
    summary = summarise(df)
    means = summary.pivot(index="arm", columns="metric", values="mean")
    arms = algorithm_order(_current_complete(df)["arm"])
    metrics = list(dict.fromkeys(summary["metric"]))
    board = means.reindex(index=arms, columns=metrics)
    board.insert(0, "seeds", _seed_counts(df).reindex(arms).fillna(0).astype(int))
    board.columns.name = None
    if sort_by is None:
        return board
    metric = sort_by.removeprefix(EVAL_PREFIX)
    if metric not in metrics:
        raise ReportError(_unknown_metric_message(sort_by, metrics))
    ascending = metric_direction(metric) == "lower"
    return board.sort_values(metric, ascending=ascending, na_position="last", kind="mergesort")


def _unknown_metric_message(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name.removeprefix(EVAL_PREFIX), known, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"cannot sort by unknown metric '{name}'{hint} (known: {', '.join(known)})"


# --- cost ---------------------------------------------------------------------------------------


def cost_table(df: "pd.DataFrame") -> "pd.DataFrame":
    """What each cell of the current configurations spent, failed cells included (their spend is real):
    cell, arm, seed, status, then prompts_seen, completions_generated, tokens_generated,
    optimizer_steps, wall_time_s, peak_memory_mb (always, NaN where a cell logged none: the baseline trains
    nothing), then any other cost metric, under their bare names."""
    current, _ = split_configurations(df)
    extra = [name for name in cost_metric_names(current) if name not in record.COST_METRICS]
    names = list(record.COST_METRICS) + extra
    table = current.reindex(columns=["cell", "arm", "seed", "status"] + [COST_PREFIX + name for name in names])
    return table.rename(columns={COST_PREFIX + name: name for name in names}).reset_index(drop=True)


# --- other configurations -----------------------------------------------------------------------


def _params_of(row) -> dict:
    return row_config_params(row["arm"], row)


def _param_differences(params: dict, current: dict) -> list[str]:
    differences = []
    for key in sorted(set(params) | set(current)):
        value, now = params.get(key, "absent"), current.get(key, "absent")
        if value != now:
            differences.append(f"{key}={value} (current {now})")
    return differences


def other_configurations(df: "pd.DataFrame") -> "pd.DataFrame":
    """Configurations of an arm other than its current one: arm, config, seeds (sorted list),
    complete (cells), failed (cells), differences (params that differ from the current configuration,
    "key=value (current value)"). These cells are left out of every statistic."""
    import pandas as pd

    current, others = split_configurations(df)
    columns = ["arm", "config", "seeds", "complete", "failed", "differences"]
    rows = []
    for (arm, config), cells in others.groupby(["arm", "config"], sort=False):
        reference = current[current["arm"] == arm].sort_values("start_time", kind="mergesort")
        now = _params_of(reference.iloc[-1]) if not reference.empty else {}
        newest = cells.sort_values("start_time", kind="mergesort").iloc[-1]
        rows.append(
            {
                "arm": arm,
                "config": config,
                "seeds": sorted(int(seed) for seed in set(cells["seed"])),
                "complete": int((cells["status"] == "complete").sum()),
                "failed": int((cells["status"] == "failed").sum()),
                "differences": _param_differences(_params_of(newest), now),
            }
        )
    table = pd.DataFrame(rows, columns=columns)
    if table.empty:
        return table
    rank = {name: index for index, name in enumerate(algorithm_order(table["arm"]))}
    table = table.assign(_rank=table["arm"].map(rank)).sort_values(["_rank", "config"], kind="mergesort")
    return table.drop(columns="_rank").reset_index(drop=True)
