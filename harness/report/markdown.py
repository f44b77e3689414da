"""The Markdown report of a suite, rebuilt from MLflow alone (DESIGN §4): reports/<suite>.md and its PNGs.

The text depends only on what the tracking store holds: no clock, no paths, no tracking URI, so
regenerating from a copy of the database gives a byte-identical file and the report can be diffed. The
report and its plots are also logged under report/ on the suite's newest invocation run.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from harness import record
from harness.metrics.catalog import METRICS, column_label, direction_arrow
from harness.record import experiment_name
from harness.registry import ALGORITHMS
from harness.report import claims, frontier
from harness.report.frame import (
    BASELINE_ALGORITHM,
    COMPLETE,
    EVALUATION_PARAM_PREFIX,
    FAILED,
    algorithm_order,
    complete_cells,
    split_configurations,
)
from harness.report.leaderboard_runs import headline_metric
from harness.report.plots import (
    CURVE_X_LABEL,
    plot_frontier,
    plot_reward_vs_cost,
    plot_reward_vs_kl,
    plot_training_comparison,
    plot_training_curves,
)
from harness.report.records import REPORT_ARTIFACT_PATH, SuiteRecords, load_suite_records, log_report_files
from harness.report.samples import WIN_RATE_METRIC
from harness.report.stats import MAX_SEEDS_NEEDED
from harness.report.tables import (
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    INTERVAL_OVER_PROMPTS,
    INTERVAL_OVER_SEEDS,
    MISSING,
    PAIRWISE_METRICS,
    REWARD_AND_KL_METRICS,
    WIN_RATE_METRICS,
    clipped_bounds,
    cost_table,
    format_estimate,
    main_table,
    other_configurations,
    summarise,
    win_rate_table,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

# Cost columns that count things print as integers; the others carry one decimal.
_INTEGER_COSTS = (
    record.COST_PROMPTS_SEEN,
    record.COST_COMPLETIONS_GENERATED,
    record.COST_TOKENS_GENERATED,
    record.COST_OPTIMIZER_STEPS,
)
_COST_HEADERS = {
    record.COST_PROMPTS_SEEN: "prompts seen",
    record.COST_COMPLETIONS_GENERATED: "completions generated",
    record.COST_TOKENS_GENERATED: "tokens generated",
    record.COST_OPTIMIZER_STEPS: "optimizer steps",
    record.COST_WALL_TIME_S: "wall time (s)",
    record.COST_PEAK_MEMORY_MB: "peak memory (MB)",
}
# Table headers a reader knows: each arm (an algorithm at one sweep point) is a row headed "algorithm".
_HEADERS = {"arm": "algorithm"}
_SHORT_HASH = 12
_SHORT_COMMIT = 12
# Evaluation params that do not shape the samples: the generator has its own line, batch size only changes
# speed, and the prompt and sample counts have theirs.
_NOT_SAMPLING_PARAMS = (
    "evaluation.generator",
    "evaluation.batch_size",
    "evaluation.num_prompts",
    "evaluation.samples_per_prompt",
)
# Package versions the header names, from each cell's manifest.json; vllm only where it was installed.
_REPORTED_PACKAGES = ("torch", "transformers", "trl", "peft", "mlflow", "vllm")
_OPTIONAL_PACKAGES = ("peft", "vllm")  # not in manifests written before they were recorded
_BUILT_MODEL_SHAPE = (
    ("n_layer", "{} layers"),
    ("n_head", "{} heads"),
    ("n_embd", "hidden size {}"),
    ("max_positions", "context {} tokens"),
)
# Sampling params in the order a reader looks for them; others follow alphabetically.
_SAMPLING_ORDER = ("temperature", "top_k", "top_p", "max_new_tokens")
# The figures, in the order the report shows them: file suffix, section title, alt text.
PLOTS = (
    (
        "frontier",
        "Reward vs KL frontier",
        "Gold and proxy reward against KL, each algorithm's achievable front (upper concave hull)",
    ),
    (
        "training_comparison",
        "Training: every algorithm on shared axes",
        "Training reward and KL per sequence of every algorithm against the fraction of the training budget",
    ),
    ("reward_vs_kl", "Reward against KL", "Gold and proxy reward against KL and √KL, one point per seed"),
    (
        "training_curves",
        "Training diagnostics per family",
        "Each algorithm's own training curves, grouped per family, against the fraction of the training budget",
    ),
    ("reward_vs_cost", "Reward against cost", "Gold reward against tokens generated and wall time"),
)
# Figures shown inside a section of their own rather than among the figures at the end.
_OWN_SECTION_PLOTS = ("frontier",)
# What a reader needs to read a figure, above it.
_PLOT_CAPTIONS = {
    "training_comparison": (
        f"x: the {CURVE_X_LABEL} (`{record.TRAIN_PREFIX}{record.TRAIN_BUDGET_FRACTION}`; step / last step for runs "
        "that did not log it), the same for every algorithm; one line per algorithm (mean over seeds), colour by "
        f"algorithm, marker by family. KL is `{record.TRAIN_PREFIX}{record.TRAIN_KL_PER_SEQUENCE}` in nats per "
        f"sequence; reward is `{record.TRAIN_PREFIX}reward`, the score of the sampled completions (online "
        "algorithms). A panel whose top line is more than twice the next is clipped above the runner-up, and its "
        "title names the line and its peak."
    ),
    "training_curves": (
        "Each algorithm's own curves in its own units, a panel per family and curve (line style: seed)."
    ),
}
_BOUND_MARK = "†"
_SHORT_MARK = "‡"
_MOST_NAMED = 6  # a "no clear winner among ..." sentence names at most this many, then counts the rest
_DIGITS = 3


def write_report(tracking_uri: str, suite: str, out_dir: str | Path, *, records: SuiteRecords | None = None) -> Path:
    """Write out_dir/<suite>.md and its PNGs from MLflow, log them under report/ on the newest invocation
    run, and return the .md path. `records`: what `load_suite_records` read, when the caller has it.
    Raises frame.ReportError when the suite has no experiment or no cells."""
    records = records if records is not None else load_suite_records(tracking_uri, suite)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_names = plot_file_names(suite)
    plot_paths = draw_plots(records, out_dir, plot_names)
    report_path = out_dir / f"{_file_stem(suite)}.md"
    report_path.write_text(render_markdown(records, plot_names), encoding="utf-8")
    logger.info("wrote %s", report_path)
    log_report_files(tracking_uri, records.newest_invocation, [report_path, *plot_paths])
    return report_path


def _file_stem(suite: str) -> str:
    # A suite given as a path must not turn into sub-folders of the report folder.
    return re.sub(r"[^A-Za-z0-9._-]+", "_", suite)


def plot_file_names(suite: str) -> dict[str, str]:
    """The PNG file name of each figure in PLOTS, by its key ("reward_vs_kl", ...)."""
    return {key: f"{_file_stem(suite)}_{key}.png" for key, _, _ in PLOTS}


def draw_plots(records: SuiteRecords, out_dir: Path, plot_names: dict) -> list[Path]:
    """Draw the report's figures (PLOTS order) into out_dir; the leaderboard runs log the same files."""
    suite, cells = records.suite, records.cells
    return [
        plot_frontier(
            cells,
            records.histories,
            out_dir / plot_names["frontier"],
            title=f"{suite}: reward against KL, each algorithm's achievable front over its sweep points and "
            "checkpoints",
        ),
        plot_training_comparison(
            cells,
            records.histories,
            out_dir / plot_names["training_comparison"],
            title=f"{suite}: every algorithm while it trains (mean over seeds; marker: family)",
        ),
        plot_reward_vs_kl(
            cells,
            out_dir / plot_names["reward_vs_kl"],
            title=f"{suite}: reward against KL to the reference policy (one point per seed; "
            "lines through intermediate checkpoints)",
            histories=records.histories,
        ),
        plot_training_curves(
            cells,
            records.histories,
            out_dir / plot_names["training_curves"],
            title=f"{suite}: each algorithm's own training curves, per family (line style: seed)",
        ),
        plot_reward_vs_cost(
            cells,
            out_dir / plot_names["reward_vs_cost"],
            title=f"{suite}: gold reward against training cost (one point per seed)",
        ),
    ]


def render_markdown(records: SuiteRecords, plot_names: dict) -> str:
    """The whole report as text, from what `load_suite_records` read."""
    # Every table reads the same intervals; the bootstraps are computed once.
    summary = summarise(records.cells, records.samples)
    chosen = claims.chosen_frontier(records)
    book = claims.suite_claims(records, summary, chosen)
    sections = [
        _header(records),
        _results_section(records, summary, book),
        _win_rate_section(records, summary, book),
        _judge_section(records, summary),
        _frontier_section(chosen, plot_names, book),
        _other_configurations_section(records.cells),
        _failures_section(records.cells),
        _cost_section(records.cells),
        _figures_section(plot_names),
        _runs_section(records),
    ]
    return "\n\n".join(section.rstrip("\n") for section in sections if section) + "\n"


# --- header -------------------------------------------------------------------------------------


def _reported(cells: "pd.DataFrame") -> "pd.DataFrame":
    """The complete cells of each arm's current configuration: what the tables compare."""
    current, _ = split_configurations(cells)
    return complete_cells(current)


def _header(records: SuiteRecords) -> str:
    cells, suite = records.cells, records.suite
    reported = _reported(cells)
    newest = cells["start_time"].max().strftime("%Y-%m-%d %H:%M UTC")
    invocations = len(records.invocations)
    lines = [
        f"# Alignment report: `{suite}`",
        "",
        f"Built from MLflow experiment `{experiment_name(suite)}` alone: {len(cells)} cell runs from "
        f"{invocations} `harness run` invocation{'s' if invocations != 1 else ''}; the newest cell run started "
        f"{newest}.",
        "",
        f"- **Cells:** {_cell_counts(cells)}",
        f"- **Algorithms:** {', '.join(algorithm_order(reported['arm'])) or MISSING}",
        f"- **Seeds:** {_seeds(reported)}",
        f"- **Base model:** {_base_model(reported)}; prompts: {_prompt_format(reported)}",
        f"- **Weights trained:** {_weights_trained(reported)}",
        f"- **Task:** {_task(reported, records.manifests)}",
        f"- **Evaluation:** {_evaluation_set(reported, records.samples)}; generator {_generator(reported)}; "
        f"sampling {_sampling_summary(reported, EVALUATION_PARAM_PREFIX)}",
        f"- **Training sampling (online methods):** {_sampling_summary(reported, 'sampling.')}",
        f"- **Budget:** {_budget(reported)}",
        f"- **Training reward:** {_training_reward_sentence(reported)}",
        f"- **Gold reward:** {_gold_sentence(reported)}",
        f"- **Judge:** {_judge_sentence(reported)}",
        *_data_lines(reported),
        f"- **Versions:** {_versions(records.manifests)}",
        f"- **Code:** {_code(records.manifests)}",
        f"- **Hardware:** {_hardware(records.manifests)}",
    ]
    lines += [f"- **Note:** {note}" for note in _kl_validity_notes(reported)]
    return "\n".join(lines)


def _gold_sentence(cells: "pd.DataFrame") -> str:
    """What `gold_reward` is in this report: the task's exact reward or a held-out RM, never the proxy."""
    labels = _tag_labels(cells, "gold_label")
    if not labels:
        return "none (the task has no gold reward and no held-out RM was given): the proxy is the only reward here"
    held_out = [label for label in labels if label.startswith("held-out RM")]
    text = ", ".join(labels)
    if held_out:
        text += (
            " — a reward model no algorithm trained on, reported as `gold_reward` and kept apart from "
            "`proxy_reward` (the RM the algorithms optimised)"
        )
    return text


def _judge_sentence(cells: "pd.DataFrame") -> str:
    labels = _tag_labels(cells, "judge_label")
    if not labels:
        return "none"
    kind = _param(cells, "judge.kind")
    template = _param(cells, "judge.template") if kind != "gold" else None
    text = (
        f"{', '.join(labels)}{f'; template `{template}`' if template else ''}; every comparison asked in both "
        "orders (the candidate first, then second), a disagreement counts as a tie"
    )
    if kind == "trained":
        text += (
            "; the trained judge learns from the same Bradley-Terry-noisy preference pairs as the reward model "
            "and the offline losses, so its win rates are a second proxy, not an independent judge"
        )
    return text


def _tag_labels(cells: "pd.DataFrame", column: str) -> list[str]:
    """The distinct values of a tag column other than "none" (runs written before the tag existed have none)."""
    if column not in cells.columns:
        return []
    return sorted({label for label in cells[column].dropna() if label != "none"})


def _data_lines(reported: "pd.DataFrame") -> list[str]:
    """What each algorithm learned from, in its own words: the sentences its cells declared (record.TAG_DATA,
    written from the options each trained with), each once."""
    lines = []
    for name in algorithm_order(reported["algorithm"]):
        if name == BASELINE_ALGORITHM or "data" not in reported:
            continue
        sentences = [
            sentence
            for sentence in reported.loc[reported["algorithm"] == name, "data"]
            if isinstance(sentence, str) and sentence
        ]
        lines += [f"  - `{name}`: {sentence}" for sentence in dict.fromkeys(sentences)]
    return ["- **Data:**", *lines] if lines else []


def _seeds(reported: "pd.DataFrame") -> str:
    seeds = ", ".join(str(seed) for seed in sorted(set(reported["seed"])))
    per_arm = reported.groupby("arm").size()
    if per_arm.nunique() <= 1:
        return seeds or MISSING
    counts = ", ".join(f"{name} {int(per_arm[name])}" for name in algorithm_order(per_arm.index))
    return f"{seeds} (seeds per algorithm: {counts})"


def _param(cells: "pd.DataFrame", key: str) -> str | None:
    """The single value of a param over `cells`, or None when absent; joined with " / " where it differs."""
    if key not in cells.columns:
        return None
    values = sorted({str(value) for value in cells[key].dropna()})
    if not values:
        return None
    return values[0] if len(values) == 1 else " / ".join(values) + " (differs between cells)"


def _base_model(cells: "pd.DataFrame") -> str:
    source = _param(cells, "model.source")
    preset = _param(cells, "model.preset")
    name = _param(cells, "model.name_or_path")
    parts = []
    if preset:
        parts.append(f"preset `{preset}`")
    if name:
        parts.append(f"`{name}`")
    if source == "build":
        shape = [
            template.format(_param(cells, f"model.{key}"))
            for key, template in _BUILT_MODEL_SHAPE
            if _param(cells, f"model.{key}")
        ]
        parts.append("built by the harness" + (f" ({', '.join(shape)})" if shape else ""))
    elif source:
        parts.append(f"loaded from {source}")
    return ", ".join(parts) if parts else "not recorded"


def _prompt_format(cells: "pd.DataFrame") -> str:
    values = sorted({str(value) for value in cells["prompt_format"].dropna()})
    if not values:
        return "not recorded"
    text = " / ".join(values) + (" (differs between cells)" if len(values) > 1 else "")
    system = _param(cells, "model.system_prompt")
    return text + (f', system prompt "{system}"' if system and "chat template" in values else "")


def _weights_trained(cells: "pd.DataFrame") -> str:
    """Full fine-tuning, or which stages trained LoRA adapters and their shape."""

    # The stages `lora.stages` may name (SFT and every registered algorithm), among those these cells ran, in the
    # registry's order: its list of names, which imports no algorithm's module.
    adapted = {
        stage
        for row in cells.to_dict("records")
        if isinstance(row.get("lora_stages"), str)
        for stage in row["lora_stages"].split(",")
    }
    stages = [stage for stage in (BASELINE_ALGORITHM, *ALGORITHMS.names()) if stage in adapted]
    if not stages:
        return "all (full fine-tuning)"
    modules = (_param(cells, "lora.target_modules") or "?").strip("[]").replace("'", "")
    shape = f"rank {_param(cells, 'lora.r')}, alpha {_param(cells, 'lora.alpha')}, modules {modules}"
    return f"LoRA adapters ({shape}) in {', '.join(stages)}, merged into each evaluated checkpoint; any other stage trains every weight"


def _task(cells: "pd.DataFrame", manifests: dict) -> str:
    name = _param(cells, "task.name") or "not recorded"
    fingerprints = {}
    for row in cells.itertuples():
        fingerprint = manifests.get(row.run_id, {}).get("data_fingerprint")
        if fingerprint:
            fingerprints.setdefault(int(row.seed), set()).add(str(fingerprint))
    if not fingerprints:
        return f"`{name}`; data fingerprint not recorded"
    parts = [f"`{' / '.join(sorted(values))}` (seed {seed})" for seed, values in sorted(fingerprints.items())]
    return f"`{name}`; data fingerprint {', '.join(parts)}"


def _evaluation_set(cells: "pd.DataFrame", samples: dict) -> str:
    """Prompts × samples per prompt as evaluated (counted in eval/samples.jsonl), else as configured."""
    shapes = set()
    for run_id in cells["run_id"]:
        frame = samples.get(run_id)
        if frame is not None and not frame.empty and "prompt_index" in frame:
            prompts = frame["prompt_index"].nunique()
            shapes.add((prompts, len(frame)))
    if len(shapes) == 1:
        prompts, completions = shapes.pop()
        per_prompt = completions / prompts
        per_prompt_text = f"{per_prompt:.0f}" if per_prompt.is_integer() else f"{per_prompt:.1f}"
        return f"{prompts} held-out prompts × {per_prompt_text} samples = {completions} completions per cell"
    if shapes:
        return "prompt and sample counts differ between cells: " + ", ".join(f"{p}×{c}" for p, c in sorted(shapes))
    prompts = _param(cells, "evaluation.num_prompts") or "?"
    per_prompt = _param(cells, "evaluation.samples_per_prompt") or "?"
    return f"{prompts} held-out prompts × {per_prompt} samples (configured; no samples artifact read)"


def _generator(cells: "pd.DataFrame") -> str:
    # The harness.generator tag, else the evaluation.generator param of the resolved config.
    values = sorted({str(value) for value in cells["generator"].dropna()})
    if values:
        return values[0] if len(values) == 1 else " / ".join(values) + " (differs between cells)"
    return _param(cells, "evaluation.generator") or "not recorded"


def _cell_counts(cells: "pd.DataFrame") -> str:
    complete = int((cells["status"] == COMPLETE).sum())
    failed = int((cells["status"] == FAILED).sum())
    return f"{len(cells)} ({complete} complete, {failed} failed)"


def _sampling_columns(cells: "pd.DataFrame", prefix: str) -> list[str]:
    known = [prefix + name for name in _SAMPLING_ORDER if prefix + name in cells.columns]
    others = sorted(c for c in cells.columns if c.startswith(prefix) and c not in known)
    return [key for key in known + others if key not in _NOT_SAMPLING_PARAMS]


def _sampling_summary(cells: "pd.DataFrame", prefix: str) -> str:
    parts = [
        f"{column.removeprefix(prefix)}={_param(cells, column)}"
        for column in _sampling_columns(cells, prefix)
        if _param(cells, column) is not None
    ]
    return ", ".join(parts) if parts else "not recorded"


def _budget(cells: "pd.DataFrame") -> str:
    """The budget policy and the number it fixes: equal_prompts -> budget.prompts, equal_X -> budget.X."""
    trained = cells[cells["arm"] != BASELINE_ALGORITHM]
    policy = _param(trained, "budget.policy")
    if policy is None:
        return "not recorded" if not trained.empty else "no trained algorithm"
    quantity = policy.removeprefix("equal_")
    amount = _param(trained, f"budget.{quantity}")
    if amount is None:
        return f"`{policy}`"
    readable = quantity.replace("_", " ")
    return f"`{policy}`: every algorithm trains on {amount} {readable} (`budget.{quantity}`)"


def _training_reward_sentence(cells: "pd.DataFrame") -> str:
    kinds = sorted({str(value) for value in cells["training_reward"].dropna()})
    if kinds == ["proxy"]:
        return (
            "proxy. The online algorithms optimised the reward model that also scores `proxy_reward` below, "
            "so `proxy_reward` is not independent of training; `gold_reward` is the held-out judgement."
        )
    if kinds == ["gold"]:
        return (
            "gold. The online algorithms optimised the gold reward itself, so `gold_reward` below measures "
            "the training target, not a held-out judgement; `proxy_reward` was not optimised."
        )
    if not kinds:
        return "not recorded, so it is unknown whether `proxy_reward` or `gold_reward` was the training target."
    return f"differs between cells ({', '.join(kinds)}): compare reward columns only between cells that share it."


def _manifest_values(manifests: dict, read) -> list[str]:
    return sorted({str(value) for value in (read(manifest) for manifest in manifests.values()) if value is not None})


def _versions(manifests: dict) -> str:
    if not manifests:
        return "not recorded (no manifest.json artifact)"
    parts = []
    for package in _REPORTED_PACKAGES:
        values = _manifest_values(
            manifests, lambda manifest, package=package: (manifest.get("versions") or {}).get(package)
        )
        if not values:
            if package not in _OPTIONAL_PACKAGES:
                parts.append(f"{package} not recorded")
            continue
        parts.append(f"{package} {' / '.join(values)}" + (" (differs between cells)" if len(values) > 1 else ""))
    return ", ".join(parts)


def _code(manifests: dict) -> str:
    commits = _manifest_values(manifests, lambda manifest: manifest.get("git_commit"))
    if not commits:
        return "git commit not recorded"
    dirty = any(manifest.get("git_dirty") for manifest in manifests.values())
    text = "git commit " + " / ".join(f"`{commit[:_SHORT_COMMIT]}`" for commit in commits)
    if len(commits) > 1:
        text += " (differs between cells)"
    return text + (", with uncommitted changes" if dirty else ", clean working tree")


def _hardware(manifests: dict) -> str:
    def describe(manifest: dict) -> str | None:
        hardware = manifest.get("hardware") or {}
        if not hardware:
            return None
        if hardware.get("cuda"):
            return f"GPU {hardware['cuda']}"
        return f"CPU only, {hardware.get('cpu_count', '?')} cores"

    values = _manifest_values(manifests, describe)
    if not values:
        return "not recorded"
    return " / ".join(values) + (" (differs between cells)" if len(values) > 1 else "")


def _parse_number(text) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _kl_validity_notes(cells: "pd.DataFrame") -> list[str]:
    """When `kl` is not KL(π‖π_ref) of the distribution that was sampled, or not at the temperature the online
    algorithms trained at, say so (DESIGN §6)."""

    def values(key: str) -> set[float]:
        if key not in cells.columns:
            return set()
        return {number for number in map(_parse_number, cells[key].dropna()) if number is not None}

    notes = []
    truncation = [f"top_k={v:g}" for v in values("evaluation.top_k") if v > 0]
    truncation += [f"top_p={v:g}" for v in values("evaluation.top_p") if v < 1.0]
    if truncation:
        notes.append(
            f"evaluation sampling is truncated ({', '.join(truncation)}): the samples come from the truncated "
            "distribution, but `kl` sums the exact per-token KL of the untruncated policy along them, so it is not "
            "the KL of the distribution that was sampled."
        )
    evaluation_temperatures = values("evaluation.temperature")
    if any(t != 1.0 for t in evaluation_temperatures):
        shown = ", ".join(f"{t:g}" for t in sorted(evaluation_temperatures))
        notes.append(
            f"evaluation samples are drawn at temperature {shown}: `kl` is between the policy and the "
            "reference both at that temperature, not at 1."
        )
    training_temperatures = values("sampling.temperature") - evaluation_temperatures
    if training_temperatures:
        shown = ", ".join(f"{t:g}" for t in sorted(training_temperatures))
        notes.append(
            f"the online algorithms sampled at temperature {shown} in training: `kl_train_temperature` is "
            "the exact KL at that temperature, on separate untruncated draws at that temperature."
        )
    return notes


# --- results ------------------------------------------------------------------------------------


def _arrow(metric: str) -> str:

    try:
        return direction_arrow(metric)
    except KeyError:
        return ""


def _with_arrows(table: "pd.DataFrame") -> "pd.DataFrame":
    """Metric columns headed by the registry: name, arrow and unit ("kl ↓ (nats)")."""

    metrics = [column for column in table.columns if column not in ("seeds", "interval")]
    return table.rename(columns={metric: column_label(metric) for metric in metrics})


def _markdown_table(table: "pd.DataFrame", index: bool = True, left: tuple[str, ...] = ()) -> str:
    """Numbers right-aligned so their digits line up; the index and the `left` columns (words) left-aligned."""
    alignment = (["left"] if index else []) + ["left" if column in left else "right" for column in table.columns]
    shown = table.rename(columns=_HEADERS).rename_axis(_HEADERS.get(table.index.name, table.index.name))
    # disable_numparse keeps "0.500" as written instead of letting tabulate reformat it as 0.5.
    return shown.fillna(MISSING).to_markdown(index=index, disable_numparse=True, colalign=alignment)


def _results_section(records: SuiteRecords, summary: "pd.DataFrame", book: claims.ClaimBook) -> str:
    cells = records.cells
    intro = (
        "## Results\n\n"
        "One row per algorithm, over the seeds of its current configuration; the `interval` column names the "
        "row's 95% interval. *t over k seeds*: mean ± half-width of the Student-t interval over seeds (a value "
        "marked *(n seeds)* is over the n seeds that logged it). *bootstrap over n prompts* (one seed): mean "
        f"[low, high], percentiles of {BOOTSTRAP_RESAMPLES} resamples of the evaluation prompts (seed "
        f"{BOOTSTRAP_SEED}); this is prompt noise only, not seed-to-seed variation, and corpus-level metrics "
        f"(BLEU, distinct-n) get none. **Bold**: best mean per metric (on KL among trained algorithms only: "
        f"{BASELINE_ALGORITHM} is the reference); whether a difference is real is the paired comparisons' "
        "verdict below, not the bold. ↑ higher is better, ↓ lower is better."
    )
    full = main_table(cells, summary=summary)
    if full.empty:
        return intro + "\n\nNo cell completed: there are no results to compare."
    metrics = [column for column in full.columns if column not in ("seeds", "interval")]
    reward_metrics = [metric for metric in metrics if metric in REWARD_AND_KL_METRICS]
    text_metrics = [metric for metric in metrics if metric not in REWARD_AND_KL_METRICS]
    parts = [intro]
    if reward_metrics:
        table = _with_arrows(full[["seeds", "interval"] + reward_metrics])
        parts.append("### Reward and KL\n\n" + _markdown_table(table, left=("interval",)))
    if text_metrics:
        # The rows and their intervals are those of the table above; repeating the columns only widens this one.
        table = _with_arrows(full[text_metrics])
        intro_text = "### Text against the references\n\nSame rows and intervals as above."
        parts.append(intro_text + "\n\n" + _markdown_table(table))
    parts.append(_statistics_paragraph(book))
    parts.append(_headline_differences(book, cells, headline_metric(cells)))
    parts.append(_noise_paragraph(book))
    return "\n\n".join(part for part in parts if part)


def _statistics_paragraph(book: claims.ClaimBook) -> str:
    return (
        "**How claims are made.** Seeds share task data, SFT policy and reward model, so every comparison below is "
        "paired: the per-seed difference, its mean over the seeds both sides have and the 95% paired-t interval "
        f"of that mean. The report makes {book.tested} such comparisons; a difference is called **real** only when "
        f"its Holm-corrected p-value (over all {book.tested}) is below {claims.ALPHA:g}, so the chance that any "
        f"claim here is a fluke is at most {claims.ALPHA:g}. Beside a difference that is not real, *seeds needed* "
        f"estimates how many seeds would make it real at its observed mean and spread (paired t at level "
        f"{claims.ALPHA:g} / {max(book.tested, 1)}, power {claims.POWER:g}); an estimate, not a promise. "
        "Numbers that depend on sampling (PPO, the GRPO family, RLOO, REINFORCE++, online DPO, best-of-n) differ "
        "from one CPU to another at the same commit and seed, because float reductions are ordered differently: "
        "compare runs made on one machine, and read the seed spread, not the digits."
    )


def _difference_text(comparison: claims.Comparison) -> str:
    difference = comparison.difference
    if math.isnan(difference.mean):
        return MISSING
    mean = difference.mean - comparison.null
    if math.isnan(difference.low):
        return f"{mean:+.{_DIGITS}f} (1 seed)"
    return f"{mean:+.{_DIGITS}f} ± {(difference.high - difference.low) / 2:.{_DIGITS}f}"


def _holm_text(comparison: claims.Comparison) -> str:
    return MISSING if math.isnan(comparison.holm_p) else f"{comparison.holm_p:.3g}"


def _verdict_text(comparison: claims.Comparison, better: str | None = None, worse: str | None = None) -> str:
    if math.isnan(comparison.holm_p):
        return "no test (1 seed)"
    if not comparison.real:
        return "not real"
    if better is not None:
        return better if comparison.favours_first else worse
    return f"real: {comparison.winner} better"


def _seeds_needed_text(comparison: claims.Comparison) -> str:
    needed = comparison.seeds_needed
    if comparison.real or math.isnan(comparison.holm_p):
        return ""
    if math.isnan(needed):
        return MISSING
    if math.isinf(needed):
        return f"> {MAX_SEEDS_NEEDED}" if comparison.difference.mean != comparison.null else "never (no difference)"
    return f"≈ {needed:.0f}"


def _pairs_table(comparisons: list[claims.Comparison]) -> str:
    import pandas as pd

    rows = [
        {
            "comparison": f"{c.first} − {c.second}",
            "difference": _difference_text(c),
            "seeds": str(c.difference.n),
            "Holm p": _holm_text(c),
            "verdict": _verdict_text(c),
            "seeds needed": _seeds_needed_text(c),
        }
        for c in comparisons
    ]
    return _markdown_table(pd.DataFrame(rows), index=False, left=("comparison", "verdict"))


def _leader_sentence(comparisons: list[claims.Comparison], means: dict[str, float], where: str) -> str:
    contenders = [name for name, value in means.items() if math.isfinite(value)]
    if len(contenders) < 2:
        return ""
    tested = [c for c in comparisons if not math.isnan(c.holm_p)]
    if not tested:
        return f"{where}: one seed, so no paired comparison: no algorithm can be said to lead."
    top, tied = claims.leader(comparisons, contenders, means)
    if top is not None:
        return f"{where}: **{top} leads**: its paired difference to each of the other {len(contenders) - 1} is real."
    shown = ", ".join(tied[:_MOST_NAMED]) + (f" and {len(tied) - _MOST_NAMED} more" if len(tied) > _MOST_NAMED else "")
    return (
        f"{where}: no clear winner among {shown} ({tied[0]} has the best mean; its lead over the others named "
        "is not real)."
    )


def _headline_differences(book: claims.ClaimBook, cells: "pd.DataFrame", headline: str) -> str:
    comparisons = book.of(claims.HEADLINE, headline)
    if not comparisons:
        return ""
    means = claims.seed_table(cells, headline).mean().to_dict()
    real = sum(c.real for c in comparisons)
    return (
        f"### Paired differences on {headline} {_arrow(headline)}\n\n"
        + _leader_sentence(comparisons, means, f"On {headline}")
        + "\n\n"
        + f"{real} of the {len(comparisons)} differences are real.\n\n"
        + f"<details><summary>Every pair on {headline}: first − second</summary>\n\n"
        + _pairs_table(comparisons)
        + "\n\n</details>"
    ).replace("  ", " ")


def _noise_paragraph(book: claims.ClaimBook) -> str:
    """The best against the runner-up on every other metric, paired and corrected like every claim."""
    lines = []
    for comparison in book.of(claims.BEST_VERSUS_RUNNER_UP):
        metric = comparison.metric
        verdict = _verdict_text(comparison, better=f"{comparison.first} better", worse=f"{comparison.second} better")
        needed = _seeds_needed_text(comparison)
        lines.append(
            f"- {metric} {_arrow(metric)}: {comparison.first} − {comparison.second} "
            f"{_difference_text(comparison)}, Holm p {_holm_text(comparison)}: {verdict}"
            + (f" (seeds needed {needed})" if needed else "")
        )
    if not lines:
        return ""
    return "**Best against runner-up on the other metrics** (by mean; paired, Holm-corrected):\n\n" + "\n".join(lines)


# --- win rate -----------------------------------------------------------------------------------


def _win_rate_section(records: SuiteRecords, summary: "pd.DataFrame", book: claims.ClaimBook) -> str:
    """The gold win rate against SFT (always a section: it says so when nothing was logged), then every other
    win rate that was logged: gold against the reference, the judge against SFT and against the reference."""
    sections = [_one_win_rate_section(records, summary, WIN_RATE_METRIC, book)]
    for metric in WIN_RATE_METRICS:
        if metric != WIN_RATE_METRIC and metric in set(summary["metric"]):
            sections.append(_one_win_rate_section(records, summary, metric, book))
    return "\n\n".join(sections)


def _win_rate_verdict(row, comparisons: dict, opponent: str) -> str:
    """Over seeds: the verdict of the corrected test against 1/2. With one seed (a bootstrap over prompts): the
    interval against 1/2, prompt noise only and outside the correction, and said so."""
    comparison = comparisons.get(row.arm)
    if row.interval == INTERVAL_OVER_SEEDS and comparison is not None:
        verdict = _verdict_text(comparison, better=f"beats {opponent}", worse=f"loses to {opponent}")
        needed = _seeds_needed_text(comparison)
        return (
            "inside the noise" + (f" (seeds needed {needed})" if needed else "") if verdict == "not real" else verdict
        )
    if row.verdict in ("no interval", "inside the noise"):
        return row.verdict
    return f"{row.verdict} (1 seed: prompt noise only, uncorrected)"


def _one_win_rate_section(records: SuiteRecords, summary: "pd.DataFrame", metric: str, book: claims.ClaimBook) -> str:

    info = METRICS[metric]
    if metric == WIN_RATE_METRIC:
        title = f"## Win rate against {BASELINE_ALGORITHM}"
        what = (
            f"Each completion's gold reward against the {BASELINE_ALGORITHM} baseline's completion for the "
            "same prompt and sample slot (same seed): win 1, tie 1/2, loss 0."
        )
    else:
        title = f"## {info.label[0].upper()}{info.label[1:]} (`{metric}`)"
        what = f"Per completion: {info.description}."
    table = win_rate_table(records.cells, summary=summary, metric=metric)
    intro = (
        f"{title}\n\n{what} With several seeds, the 95% t interval "
        "over the per-seed win rates; with one seed, a bootstrap over prompts of the per-pair points "
        f"({BOOTSTRAP_RESAMPLES} resamples, seed {BOOTSTRAP_SEED}); bounds are clipped to [0, 1], the range a "
        "win rate can take. The verdict over seeds is the t test of the per-seed win rates against 1/2, "
        "Holm-corrected with every other comparison of the report; with one seed, the bootstrap interval "
        "against 1/2."
    )
    if table.empty:
        return f"{title}\n\nNo win rate was logged (the task has no gold reward, or no trained algorithm completed)."
    comparisons = {c.first: c for c in book.of(claims.WIN_RATE, metric)}
    opponent = "the reference" if info.versus == "reference" else BASELINE_ALGORITHM
    shown = table.assign(
        verdict=[_win_rate_verdict(row, comparisons, opponent) for row in table.itertuples()],
        win_rate=[f"{value:.3f}" for value in table["win_rate"]],
        interval_95=[_bracket(metric, low, high) for low, high in zip(table["low"], table["high"])],
        over=[_interval_basis(row) for row in table.itertuples()],
    )
    shown = shown[["arm", "win_rate", "interval_95", "over", "verdict"]]
    shown.columns = ["arm", "win rate", "95% interval", "interval over", "verdict"]
    return intro + "\n\n" + _markdown_table(shown, index=False, left=("arm", "interval over", "verdict"))


def _judge_section(records: SuiteRecords, summary: "pd.DataFrame") -> str:
    """How far the judge's verdicts can be trusted: its order agreement, unparseable answers, agreement with gold
    where the suite has gold, and (judge.kind trained) its agreement with gold on held-out preference pairs."""
    present = set(summary["metric"])
    diagnostics = [metric for metric in PAIRWISE_METRICS if metric not in WIN_RATE_METRICS and metric in present]
    held_out = _held_out_judge_agreement(_reported(records.cells))
    if not diagnostics and not held_out:
        return ""
    lines = [
        "## Judge diagnostics",
        "",
        "*Order agreement*: the fraction of comparisons whose two orders picked the same answer (a judge that "
        "always answers with one position scores 0; a disagreement counts as a tie in the win rates). "
        "*Unparseable rate*: the fraction of judge calls with no usable answer (such a comparison is a tie). "
        "*Agreement with gold*: over the comparisons gold does not tie, 1 when the judge picks gold's winner, 1/2 "
        "when it ties, 0 when it picks gold's loser.",
    ]
    if held_out:
        lines += ["", held_out]
    if diagnostics:
        table = _with_arrows(main_table(records.cells, summary=summary, metrics=diagnostics))
        lines += ["", _markdown_table(table, left=("interval",))]
    return "\n".join(lines)


def _held_out_judge_agreement(cells: "pd.DataFrame") -> str:
    """The trained judge's agreement with gold on held-out pairs, per seed, from prepare/<PREPARE_JUDGE_AGREEMENT>."""
    column = record.PREPARE_PREFIX + record.PREPARE_JUDGE_AGREEMENT
    if column not in cells.columns or cells[column].dropna().empty:
        return ""
    per_seed = cells.dropna(subset=[column]).groupby("seed")[column].first()
    shown = ", ".join(f"seed {seed} {value:.3f}" for seed, value in per_seed.items())
    return (
        f"**Trained judge against gold on held-out preference pairs** (never trained on, relabelled by the gold "
        f"reward without noise): {shown}; mean {per_seed.mean():.3f}."
    )


def _bracket(metric: str, low: float, high: float) -> str:
    if math.isnan(low) or math.isnan(high):
        return MISSING
    # A t interval over few seeds can reach past 1 or below 0; no win rate lies there.
    low, high = clipped_bounds(metric, low, high)
    return f"[{low:.3f}, {high:.3f}]"


def _interval_basis(row) -> str:
    if row.interval == INTERVAL_OVER_SEEDS:
        return f"{row.n} seeds"
    if row.interval == INTERVAL_OVER_PROMPTS:
        return f"{row.n} prompts (1 seed)"
    return MISSING


# --- reward vs KL frontier ---------------------------------------------------------------------


def _frontier_section(chosen: frontier.Frontier, plot_names: dict, book: claims.ClaimBook) -> str:
    _, title, alt = next(plot for plot in PLOTS if plot[0] == "frontier")
    intro = (
        f"## {title}\n\n"
        "Every evaluated checkpoint of every arm (sweep point) of an algorithm, as the mean over seeds, faint; each "
        "algorithm's achievable front as a line from the "
        f"{BASELINE_ALGORITHM} point at KL 0, where every algorithm starts: the upper concave hull of its points, "
        "since a mixture of two policies reaches the reward of the chord between them at that KL or less. KL is "
        "`eval/kl`: KL(π‖π_ref) summed over the response, in **nats per sequence**, on the evaluation samples.\n\n"
        f"![{alt}]({plot_names['frontier']})"
    )
    if not chosen.fronts:
        return intro + "\n\nNo trained algorithm logged KL and reward: there is no frontier to compare."
    return intro + "\n\n" + _matched_kl_text(chosen, book)


def _knob(points: "pd.DataFrame") -> str:
    """The option an algorithm's frontier runs along, the direction of more KL (both as its cells declared them:
    record.TAG_KL_KNOB), and the values its arms (sweep points) took, from its frontier `points`:
    "beta ↓ (0.03, 0.1, 0.3)" reads "less KL as beta grows"."""
    declared = points[points["kl_knob"].map(lambda knob: isinstance(knob, str) and bool(knob))]
    if declared.empty:
        return "—"
    knob, raises_kl = declared["kl_knob"].iloc[-1], bool(declared["kl_knob_raises_kl"].iloc[-1])
    arrow = "↑" if raises_kl else "↓"
    values = {
        point.split("=", 1)[1]
        for arm in points["arm"].unique()
        for point in record.sweep_point_of(arm).split(",")
        if point.startswith(knob + "=")
    }
    return f"{knob} {arrow}" + (f" ({', '.join(sorted(values, key=_numbers_first))})" if values else "")


def _numbers_first(value: str) -> tuple:
    """Sort key: numbers by value, then anything else by its text."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def _matched_kl_text(chosen: frontier.Frontier, book: claims.ClaimBook) -> str:
    """The matched-KL table (rows: algorithm; columns: KL levels), its marks, and per level who leads."""
    import pandas as pd

    metric, table, levels = chosen.metric, chosen.table, chosen.levels
    explanation = (
        f"### {metric} at matched KL\n\n"
        f"The best {metric} each seed's front (its checkpoints of every arm and its own {BASELINE_ALGORITHM} "
        "point) reaches with KL at most the level, then the mean over seeds ± the half-width of the 95% Student-t "
        "interval over seeds (the value alone with one seed). Adding a checkpoint or an arm can only raise a value. "
        f"{_SHORT_MARK}: some seed's points all have less KL than the level, so its value is the best it reached "
        "at a smaller KL. Levels: round values up to the largest KL an algorithm reached in every seed. "
        "*knob*: the option each algorithm's arms sweep (↓: less KL as it grows, ↑: more) and the values they took."
    )
    if not levels:
        return explanation + "\n\nNo algorithm moved off KL 0: nothing to compare at matched KL."
    points = chosen.points
    rows = {}
    for algorithm, own in table.groupby("algorithm", sort=False):
        first = own.iloc[0]
        name = f"{algorithm} {_BOUND_MARK}" if first["kl_is_bound"] else algorithm
        row = {
            "family": first["family"] if isinstance(first["family"], str) else "unknown",
            "seeds": str(int(first["seeds"])),
            "knob": _knob(points[points["algorithm"] == algorithm]),
        }
        for item in own.itertuples():
            value = format_estimate(item.mean, (item.high - item.low) / 2)
            row[f"KL {frontier.format_level(item.level)}"] = f"{value} {_SHORT_MARK}" if item.short else value
        rows[name] = row
    shown = pd.DataFrame.from_dict(rows, orient="index").rename_axis("algorithm")
    text = explanation + "\n\n" + _markdown_table(shown, left=("family",))
    bound = table[table["kl_is_bound"].astype(bool)]["algorithm"].drop_duplicates().tolist()
    if bound:
        text += (
            f"\n\n{_BOUND_MARK} KL is an upper bound (best-of-n: log n − (n−1)/n), not an estimate: the true "
            "point lies at or left of it, so these values are lower bounds on its reward at that KL, and "
            f"{', '.join(bound)} take part in no comparison below."
        )
    return text + "\n\n" + _matched_kl_verdicts(chosen, book)


def _matched_kl_verdicts(chosen: frontier.Frontier, book: claims.ClaimBook) -> str:
    """Per level: who leads (a real paired difference against every other algorithm there), else who cannot be
    told apart; then every pair's difference, folded."""
    table = chosen.table[~chosen.table["kl_is_bound"].astype(bool)]
    sentences, folded = [], []
    for level in chosen.levels:
        at_level = table[table["level"] == level]
        means = dict(zip(at_level["algorithm"], at_level["mean"]))
        comparisons = book.of(claims.MATCHED_KL, chosen.metric, level)
        sentence = _leader_sentence(comparisons, means, f"at KL {frontier.format_level(level)}")
        if sentence:
            sentences.append(f"- {sentence[0].upper()}{sentence[1:]}")
        if comparisons:
            folded.append(
                f"<details><summary>Every pair at KL {frontier.format_level(level)}: first − second"
                f"</summary>\n\n{_pairs_table(comparisons)}\n\n</details>"
            )
    if not sentences:
        return "**Who leads at matched KL:** fewer than two algorithms with a measured KL: nothing to compare."
    return (
        "**Who leads at matched KL** (paired over seeds, Holm-corrected):\n\n"
        + "\n".join(sentences)
        + ("\n\n" + "\n\n".join(folded) if folded else "")
    )


# --- other configurations, failures, cost, figures, runs ----------------------------------------


_MAX_DIFFERENCES = 3


def _other_configurations_section(cells: "pd.DataFrame") -> str:
    others = other_configurations(cells)
    if others.empty:
        return ""
    lines = [
        "## Other configurations",
        "",
        "Each algorithm is reported under the configuration the newest `harness run` used (or, if it was not part of that run, of its newest complete cell); cells of its other "
        "configurations are left out of every table above rather than pooled as seeds:",
        "",
    ]
    for row in others.itertuples():
        differences = row.differences[:_MAX_DIFFERENCES]
        more = len(row.differences) - len(differences)
        changed = "; ".join(f"`{difference}`" for difference in differences) or "no param differs"
        if more > 0:
            changed += f"; and {more} more"
        seeds = ", ".join(str(seed) for seed in row.seeds)
        lines.append(
            f"- `{row.arm}` config `{row.config or MISSING}` (seed{'s' if len(row.seeds) != 1 else ''} {seeds}; "
            f"{row.complete} complete, {row.failed} failed): {changed}"
        )
    return "\n".join(lines)


def _failures_section(cells: "pd.DataFrame") -> str:
    failed = cells[cells["status"] == FAILED]
    if failed.empty:
        return "## Failed cells\n\nNone: every cell completed."
    lines = [
        f"- `{row.cell}` ({row.arm}, seed {row.seed}, config `{row.config or MISSING}`, run `{row.run_id}`): "
        f"{_one_line(row.failure)}"
        for row in failed.itertuples()
    ]
    return "## Failed cells\n\nThese cells are left out of every statistic above.\n\n" + "\n".join(lines)


def _one_line(text) -> str:
    if text is None or (isinstance(text, float) and math.isnan(text)) or not str(text).strip():
        return "no reason recorded"
    return " ".join(str(text).split())


def _format_cost(name: str, value: float) -> str:
    if value is None or math.isnan(value):
        return MISSING
    if name in _INTEGER_COSTS:
        return f"{value:,.0f}"
    return f"{value:,.1f}"


def _cost_section(cells: "pd.DataFrame") -> str:
    table = cost_table(cells)
    cost_names = [column for column in table.columns if column not in ("cell", "arm", "seed", "status")]
    for name in cost_names:
        table[name] = [_format_cost(name, value) for value in table[name].astype(float)]
    table["seed"] = table["seed"].astype(str)
    table = table.rename(columns=_COST_HEADERS)
    intro = (
        "## Cost per cell\n\n"
        "What training spent in each cell of the current configurations, failed cells included (their spend was "
        f"real); the {BASELINE_ALGORITHM} baseline trains nothing. Peak memory is the CUDA peak allocated on a "
        "GPU and the process's peak resident memory on a CPU (an upper bound)."
    )
    if all(table[_COST_HEADERS[name]].eq(MISSING).all() for name in record.COST_METRICS):
        intro += " No cell logged a cost metric."
    return intro + "\n\n" + _markdown_table(table, index=False, left=("cell", "arm", "status"))


def _figures_section(plot_names: dict) -> str:
    parts = []
    for key, title, alt in PLOTS:
        if key in _OWN_SECTION_PLOTS:
            continue
        caption = f"{_PLOT_CAPTIONS[key]}\n\n" if key in _PLOT_CAPTIONS else ""
        parts.append(f"## {title}\n\n{caption}![{alt}]({plot_names[key]})")
    return "\n\n".join(parts)


def _runs_section(records: SuiteRecords) -> str:
    cells = records.cells
    reported = set(_reported(cells)["run_id"])
    runs = cells[["cell", "status", "config", "cell_hash", "run_id"]].copy()
    runs.insert(2, "in tables", ["yes" if run_id in reported else "no" for run_id in runs["run_id"]])
    runs["config"] = [f"`{value}`" if value else MISSING for value in runs["config"].fillna("")]
    runs["cell_hash"] = [f"`{value[:_SHORT_HASH]}`" if value else MISSING for value in runs["cell_hash"].fillna("")]
    runs["run_id"] = [f"`{value}`" for value in runs["run_id"]]
    parent = records.newest_invocation
    logged = (
        f" The report and its figures are also logged under `{REPORT_ARTIFACT_PATH}/` on the newest invocation "
        f"run `{parent}`."
        if parent
        else ""
    )
    intro = (
        "## Runs\n\nEvery number above comes from these MLflow runs; each holds the resolved config (params), "
        f"the manifest and the per-sample generations (`eval/samples.jsonl`).{logged}"
    )
    return intro + "\n\n" + runs.to_markdown(index=False, disable_numparse=True)
