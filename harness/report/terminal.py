"""`harness leaderboard`: the report's comparison in the terminal, narrow enough to read.

By default the columns a reader ranks by: the algorithm, its seeds, the headline reward (gold where the suite
has a gold judge, else proxy) with its interval, the proxy reward, the KL, the win rate against SFT with its
interval, and the paired verdict where the leaderboard frame carries one (a `verdict` column). `--metrics`
picks columns, `--all` shows every metric. The numbers are the report's: means from
`tables.leaderboard_frame`, intervals from `tables.summarise` over the same per-sample tables, printed by the
same `format_interval`.

A table never cuts a name or a number ("…"): when the columns do not fit the terminal, the lowest-ranked
columns are left out and one line says which. Whenever stdout is not a terminal (a pipe, a file) the table is
plain text with every column; `--format markdown|csv|json` give the same rows for other tools.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

FORMATS = ("table", "markdown", "csv", "json")
VERDICT_COLUMN = "verdict"  # the paired headline comparison with SFT (claims.verdicts_against_baseline)
PROXY_METRIC = "proxy_reward"
KL_METRIC = "kl"
GOLD_METRIC = "gold_reward"
GUTTER = "  "
# The default columns in the order a reader's eye goes, and the rank by which they are kept when the terminal
# is too narrow (0 is kept longest; the algorithm is never left out).
_ALGORITHM_RANK = -1
_DEFAULT_RANKS = {"headline": 0, "win_rate": 1, VERDICT_COLUMN: 2, KL_METRIC: 3, "seeds": 4, PROXY_METRIC: 5}


def add_leaderboard_options(parser) -> None:
    """The `leaderboard` sub-command's arguments (on the parser cli.py creates for it)."""
    parser.add_argument(
        "items",
        nargs="*",
        metavar="suite=NAME|key=value",
        help="suite=NAME (a name in suites/ or a YAML path) followed by key=value overrides",
    )
    parser.add_argument(
        "--sort",
        default=None,
        metavar="METRIC",
        help="metric to sort by, best first (default: the headline, gold_reward or proxy_reward)",
    )
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument(
        "--metrics",
        default=None,
        metavar="A,B,C",
        help="comma-separated metrics to show instead of the default columns",
    )
    chosen.add_argument("--all", action="store_true", help="every metric the suite logged")
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default="table",
        help="table (fitted to the terminal; plain text when piped), markdown, csv or json",
    )


def command_leaderboard(args) -> int:
    """Print the leaderboard of the suite in `args.items` in `args.format`; raises ConfigError (exit 2 in
    cli.main) for an unknown metric in --sort or --metrics, ReportError when the suite has no cells."""
    from rich.console import Console

    from harness.cli import _load
    from harness.pipeline import tracking_uri_of
    from harness.report.records import load_suite_records

    config = _load(args.items)
    records = load_suite_records(tracking_uri_of(config), config.suite.name)
    board = build_leaderboard(
        records.cells,
        records.samples,
        sort_by=args.sort,
        metrics=_parse_metrics(args.metrics),
        every_metric=args.all,
        records=records,
    )
    console = Console(highlight=False, soft_wrap=True)
    if args.format == "table":
        width = console.width if console.is_terminal else None
        for line in render_table(board, width, styled=console.is_terminal):
            console.print(line, markup=console.is_terminal)
    else:
        print(RENDERERS[args.format](board), end="")
    return 0


def _parse_metrics(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [name.strip().removeprefix("eval/") for name in text.split(",") if name.strip()]
    if not names:
        from harness.errors import ConfigError

        raise ConfigError("--metrics is empty: name at least one metric (see `harness list metrics`)")
    return names


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One column of the leaderboard: `key` a metric name, "arm", "seeds" or "verdict"."""

    key: str
    header: str  # the name with its direction arrow: "gold_reward ↑"
    unit: str  # "(gold units)", or "" where there is none
    texts: tuple[str, ...]  # one per row, as printed
    rank: int  # kept longer when lower
    numeric: bool = True


@dataclass(frozen=True)
class Leaderboard:
    suite: str
    sorted_by: str
    columns: tuple[Column, ...]
    # For csv and json: per row, the arm (under "algorithm", the header a reader knows), seeds, interval method,
    # and each metric's mean (and its bounds where the table shows an interval), the verdict where there is one.
    records: tuple[dict, ...]
    intervals: str  # what the intervals are, for the title: "95%: t over 3 seeds"


def build_leaderboard(
    cells: "pd.DataFrame",
    samples: dict,
    *,
    sort_by: str | None = None,
    metrics: list[str] | None = None,
    every_metric: bool = False,
    records=None,
) -> Leaderboard:
    """The leaderboard of the cell frame of `frame.load_cell_runs` (with its per-sample tables, as
    `records.load_suite_records` reads them): rows in `tables.leaderboard_frame` order, sorted by `sort_by`
    (default the headline metric), columns the default set, `metrics`, or every metric. `records` (the whole
    `SuiteRecords`): the verdict column, each algorithm's paired headline comparison with SFT as the report
    states it (`claims.suite_claims`: Holm-corrected over the report's comparisons)."""
    from harness.report.leaderboard_runs import headline_metric
    from harness.report.tables import leaderboard_frame, main_table, summarise

    headline = headline_metric(cells)
    summary = summarise(cells, samples)
    logged = list(dict.fromkeys(summary["metric"]))
    sort_by = sort_by.removeprefix("eval/") if sort_by else headline
    _require_known([sort_by], logged, "--sort")
    if metrics is not None:
        _require_known(metrics, logged, "--metrics")
    frame = leaderboard_frame(cells, sort_by=sort_by)
    if records is not None:
        from harness.report.claims import suite_claims, verdicts_against_baseline

        verdicts = verdicts_against_baseline(suite_claims(records, summary), headline)
        frame[VERDICT_COLUMN] = [verdicts.get(arm, "") for arm in frame.index]
    arms = list(frame.index)
    shown, ranks = _shown_metrics(frame, logged, headline, metrics, every_metric)
    with_interval = {name for name in shown if name == headline or name in _win_rates()}
    texts = _interval_texts(summary, arms)
    # Headed "algorithm": a reader reads each arm as an algorithm (at a sweep point).
    columns = [Column("arm", "algorithm", "", tuple(arms), _ALGORITHM_RANK, numeric=False)]
    if "seeds" in ranks:
        columns.append(Column("seeds", "seeds", "", tuple(str(int(n)) for n in frame["seeds"]), ranks["seeds"]))
    for name in shown:
        cells_text = [
            texts.get((arm, name)) if name in with_interval else _mean_text(frame.at[arm, name]) for arm in arms
        ]
        columns.append(_metric_column(name, cells_text, ranks[name]))
    if VERDICT_COLUMN in ranks:
        verdicts = tuple(_plain_text(value) for value in frame[VERDICT_COLUMN])
        columns.append(Column(VERDICT_COLUMN, VERDICT_COLUMN, "", verdicts, ranks[VERDICT_COLUMN], numeric=False))
    interval_labels = main_table(cells, samples, summary=summary, metrics=shown)["interval"]
    records = tuple(_record(frame, summary, arm, shown, with_interval, interval_labels.get(arm)) for arm in arms)
    suite = ", ".join(sorted(set(cells["suite"].dropna()))) if "suite" in cells else ""
    return Leaderboard(suite, sort_by, tuple(columns), records, _intervals_title(interval_labels))


def _win_rates() -> tuple[str, ...]:
    from harness.report.tables import WIN_RATE_METRICS

    return WIN_RATE_METRICS


def _require_known(names: list[str], logged: list[str], option: str) -> None:
    from harness.errors import ConfigError
    from harness.registry import did_you_mean

    for name in names:
        if name not in logged:
            raise ConfigError(
                f"unknown metric '{name}' for {option};{did_you_mean(name, logged)} "
                f"this suite logged: {', '.join(logged)}"
            )


def _shown_metrics(frame, logged: list[str], headline: str, metrics, every_metric: bool):
    """The metric columns in display order, and each column's rank (metrics, seeds and verdict)."""
    from harness.report.samples import WIN_RATE_METRIC

    if every_metric or metrics is not None:
        shown = logged if every_metric else list(dict.fromkeys(metrics))
        ranks = {"seeds": len(shown), **{name: index for index, name in enumerate(shown)}}
        if VERDICT_COLUMN in frame:
            ranks[VERDICT_COLUMN] = len(shown) + 1
        return shown, ranks
    wanted = [headline, PROXY_METRIC, KL_METRIC, WIN_RATE_METRIC]
    shown = [name for name in dict.fromkeys(wanted) if name in logged]
    names = {headline: "headline", WIN_RATE_METRIC: "win_rate"}
    ranks = {name: _DEFAULT_RANKS[names.get(name, name)] for name in shown}
    ranks["seeds"] = _DEFAULT_RANKS["seeds"]
    if VERDICT_COLUMN in frame:
        ranks[VERDICT_COLUMN] = _DEFAULT_RANKS[VERDICT_COLUMN]
    return shown, ranks


def _interval_texts(summary: "pd.DataFrame", arms: list[str]) -> dict[tuple[str, str], str]:
    """(arm, metric) -> the text the Markdown report prints: "mean ± half-width" (t over seeds) or
    "mean [low, high]" (bootstrap) in its results table; for a metric with a range (a win rate) "mean [low,
    high]" with the bounds clipped to that range, as in its win-rate tables."""
    return {(row.arm, row.metric): _interval_text(row) for row in summary.itertuples() if row.arm in set(arms)}


def _interval_text(row) -> str:
    from harness.metrics.catalog import METRICS
    from harness.report.tables import DIGITS, format_interval

    metric = METRICS.get(row.metric)
    if (
        metric is None
        or metric.bounds is None
        or not (math.isfinite(row.mean) and math.isfinite(row.low) and math.isfinite(row.high))
    ):
        return format_interval(row.mean, row.low, row.high, row.interval)
    from harness.report.tables import clipped_bounds

    low, high = clipped_bounds(row.metric, row.low, row.high)
    return f"{row.mean:.{DIGITS}f} [{low:.{DIGITS}f}, {high:.{DIGITS}f}]"


def _mean_text(value) -> str:
    from harness.report.tables import DIGITS, MISSING

    return MISSING if value is None or not math.isfinite(float(value)) else f"{float(value):.{DIGITS}f}"


def _plain_text(value) -> str:
    from harness.report.tables import MISSING

    return MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _metric_column(name: str, texts: list, rank: int) -> Column:
    from harness.metrics.catalog import METRICS
    from harness.report.tables import MISSING

    metric = METRICS.get(name)
    header = f"{name} {metric.arrow}".strip() if metric is not None else name
    unit = f"({metric.unit})" if metric is not None and metric.unit else ""
    return Column(name, header, unit, tuple(text or MISSING for text in texts), rank)


def _record(
    frame, summary: "pd.DataFrame", arm: str, shown: list[str], with_interval: set, interval: str | None
) -> dict:
    from harness.report.tables import clipped_bounds

    row = {"algorithm": arm, "seeds": int(frame.at[arm, "seeds"]), "interval": interval}
    rows = summary[summary["arm"] == arm].set_index("metric")
    for name in shown:
        row[name] = _number(frame.at[arm, name])
        if name in with_interval and name in rows.index:
            low, high = clipped_bounds(name, float(rows.at[name, "low"]), float(rows.at[name, "high"]))
            row[f"{name}_low"], row[f"{name}_high"] = _number(low), _number(high)
    if VERDICT_COLUMN in frame:
        verdict = frame.at[arm, VERDICT_COLUMN]
        row[VERDICT_COLUMN] = None if _plain_text(verdict) == _plain_text(None) else str(verdict)
    return row


def _number(value) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def _intervals_title(labels) -> str:
    distinct = [label for label in dict.fromkeys(labels.dropna()) if label]
    return "95% intervals: " + "; ".join(distinct) if distinct else "no intervals"


# --- the outputs --------------------------------------------------------------------------------


def fit_to_width(columns: tuple[Column, ...], width: int | None) -> tuple[list[Column], list[Column]]:
    """The columns that fit in `width` characters (None: all), leaving out the highest-ranked first, and the
    ones left out. The algorithm and the best-ranked metric stay even when they alone are wider."""
    kept = list(columns)
    dropped = []
    while width is not None and _table_width(kept) > width and len(kept) > 2:
        worst = max(kept, key=lambda column: column.rank)
        kept.remove(worst)
        dropped.append(worst)
    return kept, dropped


def _column_width(column: Column) -> int:
    return max(len(column.header), len(column.unit), *(len(text) for text in column.texts))


def _table_width(columns: list[Column]) -> int:
    return sum(_column_width(column) for column in columns) + len(GUTTER) * (len(columns) - 1)


def render_table(board: Leaderboard, width: int | None, *, styled: bool = False) -> list[str]:
    """The table as lines: a title, two header lines (name with arrow, unit), a rule, one line per algorithm,
    and a line naming the columns left out to fit `width` (None: nothing left out). With `styled`, rich markup
    makes the headers bold (the caller prints with markup on a terminal only)."""
    from rich.markup import escape

    kept, dropped = fit_to_width(board.columns, width)
    widths = [_column_width(column) for column in kept]

    def line(values) -> str:
        cells = [
            value.rjust(size) if column.numeric else value.ljust(size)
            for value, size, column in zip(values, widths, kept)
        ]
        return GUTTER.join(cells).rstrip()

    def header(text: str) -> str:
        return f"[bold]{escape(text)}[/bold]" if styled else text

    title = f"harness leaderboard: {board.suite} (sorted by {board.sorted_by}; {board.intervals})"
    lines = [escape(part) if styled else part for part in _wrapped(title, width)]
    lines.append(header(line([column.header for column in kept])))
    if any(column.unit for column in kept):
        lines.append(header(line([column.unit for column in kept])))
    lines.append(GUTTER.join("-" * size for size in widths))
    for index in range(len(kept[0].texts)):
        text = line([column.texts[index] for column in kept])
        lines.append(escape(text) if styled else text)
    if dropped:
        names = ", ".join(column.key for column in dropped)
        note = f"left out to fit {width} columns: {names} (--format markdown, csv or json shows every column)"
        lines += [escape(part) if styled else part for part in _wrapped(note, width)]
    return lines


def _wrapped(text: str, width: int | None) -> list[str]:
    """A sentence broken between words to fit `width` (a terminal would break it inside a word)."""
    import textwrap

    return textwrap.wrap(text, width, break_long_words=False) if width else [text]


def render_markdown(board: Leaderboard) -> str:
    """A GitHub table of every column (a document wraps or scrolls it, so nothing is left out)."""
    headers = [f"{column.header} {column.unit}".strip() for column in board.columns]
    alignments = ["---:" if column.numeric else ":---" for column in board.columns]
    rows = [[column.texts[index] for column in board.columns] for index in range(len(board.records))]
    table = [headers, alignments, *rows]
    title = f"**harness leaderboard: {board.suite}** (sorted by {board.sorted_by}; {board.intervals})"
    return title + "\n\n" + "\n".join("| " + " | ".join(row) + " |" for row in table) + "\n"


def render_csv(board: Leaderboard) -> str:
    """One row per algorithm with the numbers (means and interval bounds) unformatted; empty where missing."""
    import csv
    import io

    fields = list(dict.fromkeys(key for row in board.records for key in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for row in board.records:
        writer.writerow({key: "" if value is None else value for key, value in row.items()})
    return out.getvalue()


def render_json(board: Leaderboard) -> str:
    """{"suite", "sorted_by", "rows": [...]}: the csv's rows, missing values as null."""
    return (
        json.dumps({"suite": board.suite, "sorted_by": board.sorted_by, "rows": list(board.records)}, indent=2) + "\n"
    )


RENDERERS = {"markdown": render_markdown, "csv": render_csv, "json": render_json}
