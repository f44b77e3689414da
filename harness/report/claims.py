"""Every comparison the report states, tested as one family (issue 20).

Seeds share task data, SFT policy and reward model, so two algorithms' results on one seed are correlated and
the unit of a comparison is the per-seed difference: a paired t over the seeds both have
(`stats.paired_difference`). A win rate against 1/2 is the same test with one side fixed. The report makes
many comparisons (every pair of algorithms on the headline metric and at every matched-KL level, the best
against the runner-up on every other metric, every win rate against 1/2), so with 95% intervals some would
come out "real" by chance alone: a difference is called real only when Holm's correction over all of them
keeps it below ALPHA (family-wise error ALPHA over the whole report). Beside a comparison that is not real, the
number of seeds at which the observed difference would be real at its observed spread (`stats.seeds_needed`,
at ALPHA / m, the level Holm's first step asks; an estimate that takes the observed numbers as the truth).

With one seed nothing is paired: no comparison is made, and the report says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from harness.metrics.catalog import METRICS
from harness.report import frontier
from harness.report.frame import (
    BASELINE_ALGORITHM,
    EVAL_PREFIX,
    algorithm_order,
    complete_cells,
    metric_direction,
    split_configurations,
)
from harness.report.stats import PairedDifference, holm, paired_difference, seeds_needed
from harness.report.tables import PAIRWISE_METRICS, WIN_RATE_METRICS

if TYPE_CHECKING:
    import pandas as pd

    from harness.report.frontier import Frontier
    from harness.report.records import SuiteRecords

ALPHA = 0.05
POWER = 0.8
# What the report's sections call each kind of comparison.
HEADLINE = "headline"
MATCHED_KL = "matched KL"
BEST_VERSUS_RUNNER_UP = "best vs runner-up"
WIN_RATE = "win rate"


@dataclass
class Comparison:
    """first − second (or first − null) over the seeds both have, oriented so that a positive difference favours
    `first` for a metric where higher is better. `level`: the matched-KL level, None elsewhere."""

    kind: str
    metric: str
    level: float | None
    first: str
    second: str | None  # None: against the constant `null` (a win rate against 1/2)
    null: float
    higher_is_better: bool
    difference: PairedDifference
    holm_p: float = math.nan
    seeds_needed: float = math.nan

    @property
    def real(self) -> bool:
        return self.holm_p < ALPHA

    @property
    def favours_first(self) -> bool:
        return (self.difference.mean > self.null) == self.higher_is_better

    @property
    def winner(self) -> str | None:
        """The side the difference favours, when it is real; None otherwise."""
        if not self.real:
            return None
        return self.first if self.favours_first else self.second


@dataclass
class ClaimBook:
    """All comparisons of one report; `settle` applies Holm's correction over them and the power estimates."""

    comparisons: list[Comparison] = field(default_factory=list)
    settled: bool = False

    def add(self, comparison: Comparison) -> Comparison:
        if self.settled:
            raise RuntimeError("a comparison added after the correction would escape it")
        self.comparisons.append(comparison)
        return comparison

    @property
    def tested(self) -> int:
        """m: the comparisons with a p-value (two or more seeds), over which Holm corrects."""
        return sum(not math.isnan(comparison.difference.p_value) for comparison in self.comparisons)

    def settle(self) -> "ClaimBook":
        adjusted = holm([comparison.difference.p_value for comparison in self.comparisons])
        m = max(self.tested, 1)
        for comparison, holm_p in zip(self.comparisons, adjusted):
            comparison.holm_p = holm_p
            difference = comparison.difference
            if not math.isnan(holm_p) and not comparison.real:
                comparison.seeds_needed = seeds_needed(
                    difference.mean - comparison.null, difference.sd, ALPHA / m, POWER
                )
        self.settled = True
        return self

    def of(self, kind: str, metric: str | None = None, level: float | None = None) -> list[Comparison]:
        return [
            comparison
            for comparison in self.comparisons
            if comparison.kind == kind
            and (metric is None or comparison.metric == metric)
            and (level is None or comparison.level == level)
        ]


# --- per-seed values ------------------------------------------------------------------------------


def seed_table(cells: "pd.DataFrame", metric: str) -> "pd.DataFrame":
    """index seed, one column per arm of the current configurations' complete cells: the metric's
    final value (NaN where the cell did not log it)."""
    current, _ = split_configurations(cells)
    complete = complete_cells(current)
    column = EVAL_PREFIX + metric
    if column not in complete:
        import pandas as pd

        return pd.DataFrame()
    table = complete.pivot_table(index="seed", columns="arm", values=column, aggfunc="first")
    return table.reindex(columns=[name for name in algorithm_order(complete["arm"]) if name in table.columns])


def compare(
    kind: str,
    metric: str,
    values: "pd.DataFrame",
    first: str,
    second: str,
    *,
    higher_is_better: bool,
    level: float | None = None,
) -> Comparison:
    """first − second over the seeds where both have a value."""
    both = values[[first, second]].dropna()
    difference = paired_difference((both[first] - both[second]).to_numpy(float))
    return Comparison(kind, metric, level, first, second, 0.0, higher_is_better, difference)


def compare_with_constant(kind: str, metric: str, values, subject: str, null: float) -> Comparison:
    return Comparison(kind, metric, None, subject, None, null, True, paired_difference(values, null=null))


def bound_kl_algorithms(cells: "pd.DataFrame") -> list[str]:
    """The arms whose eval/kl is only a bound (record.TAG_KL_IS_BOUND)."""
    if "kl_is_bound" not in cells:
        return []
    return sorted(set(cells.loc[cells["kl_is_bound"].eq(True), "arm"]))


# --- the report's comparisons ---------------------------------------------------------------------


def every_pair(
    book: ClaimBook, kind: str, metric: str, values: "pd.DataFrame", higher_is_better: bool, level: float | None = None
) -> None:
    """better − worse (by mean over seeds) for every pair of columns: every difference reads as a lead."""
    names = list(values.columns)
    means = values.mean()
    for position, one in enumerate(names):
        for other in names[position + 1 :]:
            first, second = (one, other) if (means[one] >= means[other]) == higher_is_better else (other, one)
            book.add(compare(kind, metric, values, first, second, higher_is_better=higher_is_better, level=level))


def best_against_runner_up(book: ClaimBook, metric: str, values: "pd.DataFrame", bound_kl: tuple = ()) -> None:
    """The best and the runner-up by mean over seeds, for a metric with a direction (on KL, SFT is the reference,
    not a contender, and an algorithm whose KL is only a bound (`bound_kl`) has no KL to compare)."""
    direction = metric_direction(metric)
    if direction == "neutral":
        return

    if metric in METRICS and METRICS[metric].group == "kl":  # the catalog's KL group, as tables' bold reads it
        values = values.drop(columns=[BASELINE_ALGORITHM, *bound_kl], errors="ignore")
    means = values.mean().dropna().sort_values(ascending=direction == "lower", kind="mergesort")
    if len(means) < 2:
        return
    book.add(
        compare(
            BEST_VERSUS_RUNNER_UP,
            metric,
            values,
            means.index[0],
            means.index[1],
            higher_is_better=direction == "higher",
        )
    )


def matched_kl_comparisons(book: ClaimBook, metric: str, seed_values: "pd.DataFrame") -> None:
    """Every pair of algorithms at every level, over each seed's value there (frontier.matched_kl_values). An
    algorithm whose KL is only a bound takes part in no comparison: its point is not where its policy is."""
    measured = seed_values[~seed_values["kl_is_bound"].astype(bool)]
    for level, rows in measured.groupby("level", sort=True):
        values = rows.pivot_table(index="seed", columns="algorithm", values="value", aggfunc="first")
        values = values.reindex(columns=[name for name in algorithm_order(rows["algorithm"]) if name in values.columns])
        every_pair(book, MATCHED_KL, metric, values, higher_is_better=True, level=float(level))


def leader(
    comparisons: list[Comparison], contenders: list[str], means: dict[str, float]
) -> tuple[str | None, list[str]]:
    """(the leader, []) when the algorithm with the best mean has a real difference in its favour against every
    other contender; else (None, the contenders it cannot be told apart from, itself first)."""
    if not contenders:
        return None, []
    top = max(contenders, key=lambda name: means[name])
    tied = [top]
    for other in contenders:
        if other == top:
            continue
        pair = next((c for c in comparisons if {c.first, c.second} == {top, other}), None)
        if pair is None or pair.winner != top:
            tied.append(other)
    # Best mean first: the sentence reads from the top down.
    return (top, []) if len(tied) == 1 else (None, sorted(tied, key=lambda name: -means[name]))


def report_claims(
    cells: "pd.DataFrame",
    metrics: list[str],
    headline: str,
    win_rates: list[str],
    matched_kl: "pd.DataFrame | None",
    matched_kl_metric: str | None,
) -> ClaimBook:
    """The report's comparisons, settled: every pair of algorithms on the `headline` metric; the best against
    the runner-up on each other metric of `metrics`; each algorithm's win rate (`win_rates`) against 1/2; every
    pair at every matched-KL level (`matched_kl`: frontier.matched_kl_values)."""

    book = ClaimBook()
    headline_values = seed_table(cells, headline)
    if not headline_values.empty:
        every_pair(book, HEADLINE, headline, headline_values, higher_is_better=metric_direction(headline) != "lower")
    bound_kl = tuple(bound_kl_algorithms(cells))
    for metric in metrics:
        if metric != headline:
            values = seed_table(cells, metric)
            if not values.empty:
                best_against_runner_up(book, metric, values, bound_kl)
    for metric in win_rates:
        values = seed_table(cells, metric)
        for algorithm in values.columns:
            if METRICS[metric].versus == "sft" and algorithm == BASELINE_ALGORITHM:
                continue  # against itself: no comparison
            book.add(compare_with_constant(WIN_RATE, metric, values[algorithm].to_numpy(float), algorithm, 0.5))
    if matched_kl is not None and not matched_kl.empty:
        matched_kl_comparisons(book, matched_kl_metric, matched_kl)
    return book.settle()


def chosen_frontier(records: "SuiteRecords") -> "Frontier":
    """Gold's frontier where the task has gold, else the proxy's: the matched-KL table compares one reward."""

    gold = frontier.build_frontier(records.cells, records.histories, frontier.GOLD)
    return gold if not gold.points.empty else frontier.build_frontier(records.cells, records.histories, frontier.PROXY)


def suite_claims(records: "SuiteRecords", summary: "pd.DataFrame", chosen: "Frontier | None" = None) -> ClaimBook:
    """The report's comparisons of a suite (what `harness report` and `harness leaderboard` both state), from
    what `records.load_suite_records` read and `tables.summarise` computed."""
    from harness.report.leaderboard_runs import headline_metric

    chosen = chosen if chosen is not None else chosen_frontier(records)
    present = list(dict.fromkeys(summary.dropna(subset=["mean"])["metric"]))
    compared = [metric for metric in present if metric not in PAIRWISE_METRICS]
    win_rates = [metric for metric in WIN_RATE_METRICS if metric in present]
    return report_claims(
        records.cells, compared, headline_metric(records.cells), win_rates, chosen.seed_values, chosen.metric
    )


def verdicts_against_baseline(book: ClaimBook, headline: str) -> dict[str, str]:
    """Per algorithm, its paired headline comparison with SFT in a few words: "beats sft", "below sft",
    "not real (≈ k seeds)", or "1 seed"."""
    verdicts = {}
    for comparison in book.of(HEADLINE, headline):
        if BASELINE_ALGORITHM not in (comparison.first, comparison.second):
            continue
        algorithm = comparison.second if comparison.first == BASELINE_ALGORITHM else comparison.first
        if math.isnan(comparison.holm_p):
            verdicts[algorithm] = "1 seed"
        elif comparison.real:
            verdicts[algorithm] = f"{'beats' if comparison.winner == algorithm else 'below'} {BASELINE_ALGORITHM}"
        elif math.isfinite(comparison.seeds_needed):
            verdicts[algorithm] = f"not real (≈ {comparison.seeds_needed:.0f} seeds)"
        else:
            verdicts[algorithm] = "not real"
    return verdicts
