"""`harness leaderboard` (harness.report.terminal) against the real MLflow stores of test_report.py: the growing
suite at one seed (bootstrap intervals over prompts, the widest texts) and at two seeds (t over seeds).

The oracle is the report's own tables: `tables.main_table` (the Markdown results table's texts),
`tables.win_rate_table` (its win-rate section, bounds clipped to [0, 1]) and `tables.leaderboard_frame` (the
means and the order). Printed at 80 columns on a (forced) terminal, the table must fit without "…" and say
what it left out; piped, it is plain text with every default column.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re

import pytest
from test_report import SUITE, empty_database, growing  # noqa: F401 - the stores are test_report's fixtures

from harness.errors import ConfigError
from harness.report.records import load_suite_records
from harness.report.tables import leaderboard_frame, main_table, win_rate_table
from harness.report.terminal import add_leaderboard_options, build_leaderboard, command_leaderboard, fit_to_width

ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEFAULT_COLUMNS = ["algorithm", "seeds", "gold_reward", "proxy_reward", "kl", "win_rate_vs_sft"]


def _leaderboard(uri: str, *options: str, monkeypatch, capsys, terminal_width: int | None = None) -> str:
    parser = argparse.ArgumentParser()
    add_leaderboard_options(parser)
    args = parser.parse_args([f"suite={SUITE}", f"tracking.uri={uri}", *options])
    if terminal_width is None:
        monkeypatch.setenv("TTY_COMPATIBLE", "0")  # whatever runs pytest, stdout is a pipe here
    else:
        monkeypatch.setenv("TTY_COMPATIBLE", "1")
        monkeypatch.setenv("COLUMNS", str(terminal_width))
    assert command_leaderboard(args) == 0
    return capsys.readouterr().out


def _report_texts(uri: str) -> dict[str, dict[str, str]]:
    """algorithm -> column -> the text the report prints: its results table and its win-rate column."""
    records = load_suite_records(uri, SUITE)
    table = main_table(records.cells, records.samples)
    texts = {
        algorithm: {column: str(value).strip("*") for column, value in row.items()}
        for algorithm, row in table.iterrows()
    }
    wins = win_rate_table(records.cells, records.samples)
    for row in wins.itertuples():
        texts[row.arm]["win_rate_vs_sft"] = f"{row.win_rate:.3f} [{max(row.low, 0):.3f}, {min(row.high, 1):.3f}]"
    return texts


def _rows(lines: list[str], algorithms) -> dict[str, str]:
    return {line.split()[0]: line for line in lines if line.split() and line.split()[0] in set(algorithms)}


def test_at_80_columns_it_fits_leaves_out_the_lowest_ranked_and_prints_the_reports_numbers(
    growing, monkeypatch, capsys
):
    uri = growing["one_seed"]
    out = _leaderboard(uri, monkeypatch=monkeypatch, capsys=capsys, terminal_width=80)
    lines = ANSI.sub("", out).splitlines()
    assert "…" not in out
    report = _report_texts(uri)
    # The title, the dropped-columns note and every table line fit: nothing relies on the terminal's wrapping.
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    # One seed: the headline and the win rate carry bootstrap brackets (21 and 20 characters): with algorithm
    # (9), seeds (5), proxy reward (14), kl (6), the verdict (7: "verdict", "1 seed") and six gutters of 2 the
    # default columns need 94 > 80, so the lowest-ranked, the proxy reward, goes (78 left) and one line says so.
    header = next(line for line in lines if line.startswith("algorithm"))
    assert header.split() == ["algorithm", "seeds", "gold_reward", "↑", "kl", "↓", "win_rate_vs_sft", "↑", "verdict"]
    note = " ".join(lines[lines.index(next(line for line in lines if line.startswith("left out"))) :])
    assert note == "left out to fit 80 columns: proxy_reward (--format markdown, csv or json shows every column)"
    rows = _rows(lines, report)
    assert list(rows) == list(leaderboard_frame(load_suite_records(uri, SUITE).cells, sort_by="gold_reward").index)
    for algorithm, line in rows.items():
        assert report[algorithm]["gold_reward"] in line, (algorithm, line)
        if algorithm != "sft":
            assert report[algorithm]["win_rate_vs_sft"] in line, (algorithm, line)
            assert line.endswith("1 seed")  # one seed: no paired comparison, no verdict


def _report_pair_verdict(uri: str, first: str, second: str, folder) -> str:
    from harness.report.markdown import write_report

    text = write_report(uri, SUITE, folder / "report").read_text(encoding="utf-8")
    row = next(
        line for line in text.splitlines() if line.startswith((f"| {first} − {second} ", f"| {second} − {first} "))
    )
    return [cell.strip() for cell in row.strip("|").split("|")][4]


def test_piped_it_is_plain_text_with_every_default_column_and_the_reports_numbers(
    growing, monkeypatch, capsys, tmp_path
):
    uri = growing["two_seeds"]
    out = _leaderboard(uri, monkeypatch=monkeypatch, capsys=capsys)
    assert "\x1b[" not in out and "…" not in out and "left out" not in out
    lines = out.splitlines()
    assert lines[0] == f"harness leaderboard: {SUITE} (sorted by gold_reward; 95% intervals: t over 2 seeds)"
    headers = lines[1].split()
    assert [name for name in DEFAULT_COLUMNS if name in headers] == DEFAULT_COLUMNS
    report = _report_texts(uri)
    frame = leaderboard_frame(load_suite_records(uri, SUITE).cells, sort_by="gold_reward")
    rows = _rows(lines, report)
    assert list(rows) == list(frame.index)
    for algorithm, line in rows.items():
        assert report[algorithm]["gold_reward"] in line  # "0.583 ± 0.123": t over seeds
        assert f"{frame.at[algorithm, 'proxy_reward']:.3f}" in line and f"{frame.at[algorithm, 'kl']:.3f}" in line
        assert line.split()[1] == "2"  # seeds
        if algorithm != "sft":
            assert report[algorithm]["win_rate_vs_sft"] in line
            # The verdict is the report's: its paired row "algorithm − sft" (or "sft − algorithm") on gold.
            verdict = _report_pair_verdict(uri, algorithm, "sft", tmp_path)
            expected = {
                "not real": "not real",
                f"real: {algorithm} better": "beats sft",
                "real: sft better": "below sft",
            }[verdict]
            assert expected in line.split("  ")[-1], (line, verdict)


def test_csv_and_json_hold_the_report_means_and_bounds(growing, monkeypatch, capsys):
    uri = growing["two_seeds"]
    records = load_suite_records(uri, SUITE)
    frame = leaderboard_frame(records.cells, sort_by="gold_reward")
    wins = win_rate_table(records.cells, records.samples).set_index("arm")
    rows = list(
        csv.DictReader(io.StringIO(_leaderboard(uri, "--format", "csv", monkeypatch=monkeypatch, capsys=capsys)))
    )
    document = json.loads(_leaderboard(uri, "--format", "json", monkeypatch=monkeypatch, capsys=capsys))
    assert [row["algorithm"] for row in rows] == [row["algorithm"] for row in document["rows"]] == list(frame.index)
    for row, record in zip(rows, document["rows"]):
        algorithm = row["algorithm"]
        for metric in ("gold_reward", "proxy_reward", "kl"):
            assert float(row[metric]) == pytest.approx(frame.at[algorithm, metric], abs=1e-12)
            assert record[metric] == pytest.approx(frame.at[algorithm, metric], abs=1e-12)
        if algorithm == "sft":
            assert row["win_rate_vs_sft"] == "" and record["win_rate_vs_sft"] is None
        else:
            assert record["win_rate_vs_sft_low"] == pytest.approx(max(wins.at[algorithm, "low"], 0.0))
            assert record["win_rate_vs_sft_high"] == pytest.approx(min(wins.at[algorithm, "high"], 1.0))
        assert record["interval"] == "t over 2 seeds"


def test_markdown_all_and_chosen_metrics(growing, monkeypatch, capsys):
    uri = growing["two_seeds"]
    every = _leaderboard(uri, "--all", "--format", "markdown", monkeypatch=monkeypatch, capsys=capsys)
    header = next(line for line in every.splitlines() if line.startswith("| algorithm"))
    for metric in (
        "gold_reward",
        "proxy_reward",
        "kl",
        "kl_k1",
        "rouge1",
        "length",
        "stop_rate",
        "bleu",
        "win_rate_vs_sft",
        "win_rate_vs_reference",
    ):
        assert f" {metric} " in header, metric
    chosen = _leaderboard(uri, "--metrics", "length,kl", "--sort", "kl", monkeypatch=monkeypatch, capsys=capsys)
    lines = chosen.splitlines()
    assert lines[1].split()[:4] == ["algorithm", "seeds", "length", "kl"] and "gold_reward" not in chosen
    frame = leaderboard_frame(load_suite_records(uri, SUITE).cells, sort_by="kl")
    assert list(_rows(lines, frame.index)) == list(frame.index) == ["sft", "dpo", "grpo"]  # KL lowest first


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--metrics", "gold_rewrd"], "unknown metric 'gold_rewrd' for --metrics; did you mean 'gold_reward'?"),
        (["--sort", "lenght"], "unknown metric 'lenght' for --sort; did you mean 'length'?"),
        (["--metrics", ","], "--metrics is empty"),
    ],
)
def test_an_unknown_metric_is_a_one_line_error_naming_it(growing, monkeypatch, capsys, options, message):
    with pytest.raises(ConfigError) as error:
        _leaderboard(growing["two_seeds"], *options, monkeypatch=monkeypatch, capsys=capsys)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_verdict_column_of_the_leaderboard_frame_is_shown_and_kept_before_kl(growing, monkeypatch):
    """The hook for the paired verdict: a `verdict` column of tables.leaderboard_frame becomes a column ranked
    after the win rate, so at a width that holds one more column than the headline and win rate, it stays."""
    from harness.report import tables

    real = tables.leaderboard_frame

    def with_verdict(df, sort_by=None):
        frame = real(df, sort_by=sort_by)
        return frame.assign(verdict=["—" if name == "sft" else f"{name} beats sft" for name in frame.index])

    monkeypatch.setattr(tables, "leaderboard_frame", with_verdict)
    records = load_suite_records(growing["two_seeds"], SUITE)
    board = build_leaderboard(records.cells, records.samples)
    assert [column.key for column in board.columns][-1] == "verdict"
    assert "grpo beats sft" in next(column for column in board.columns if column.key == "verdict").texts
    # Widths by hand: algorithm 9, seeds 5, gold "0.625 ± 2.912" 13, proxy header 14, kl "(nats)" 6, win rate
    # "0.792 [0.262, 1.000]" 20, verdict "grpo beats sft" 14: 81 + 6 gutters of 2 = 93. Leaving out the proxy
    # reward gives 77, then seeds 70, then kl 62, then the verdict 46.
    expected = {
        93: [],
        80: ["proxy_reward"],
        77: ["proxy_reward"],
        70: ["proxy_reward", "seeds"],
        62: ["proxy_reward", "seeds", "kl"],
        61: ["proxy_reward", "seeds", "kl", "verdict"],
    }
    for width, left_out in expected.items():
        kept, dropped = fit_to_width(board.columns, width)
        assert [column.key for column in dropped] == left_out, width
        assert {"arm", "gold_reward", "win_rate_vs_sft"} <= {column.key for column in kept}
