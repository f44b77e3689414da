"""The metric registry: every metric the evaluator reports, defined once (DESIGN §6).

Each entry says what the number means (name, description), how to read it (direction, unit) and how it is
computed (level):

- a *sample*-level metric is the mean of one eval/samples.jsonl field over the completions, nulls skipped
  (times `field_scale`); the report resamples that field over prompts for its one-seed intervals;
- a *corpus*-level metric is computed from all completions at once (BLEU, distinct-n) or from draws of its own
  (kl_train_temperature), by its `compute` function; it has no per-prompt values and so no bootstrap.

The evaluator's summary (`summarise`), `harness list metrics`, the report's tables, column and axis labels
and the samples schema (harness/report/samples.py) all read this module: adding a metric means adding one
entry here, and a sample-level one also means the evaluator writing its field.
"""

from __future__ import annotations

import difflib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from harness.metrics.text import bleu, distinct_n

logger = logging.getLogger(__name__)

Direction = Literal["higher", "lower", "neutral"]
Level = Literal["sample", "corpus"]
Group = Literal["reward", "kl", "text", "pairwise"]
DIRECTIONS = ("higher", "lower", "neutral")
LEVELS = ("sample", "corpus")
# Which table a metric belongs to: what the algorithms optimised, what it cost in divergence, the text itself,
# and the pairwise comparisons (win rates and judge statistics), which have tables of their own.
GROUPS = ("reward", "kl", "text", "pairwise")
_ARROWS = {"higher": "↑", "lower": "↓", "neutral": ""}

# Units. A FRACTION lies in [0, 1], so its interval bounds are clipped there (`Metric.bounds`).
FRACTION = "fraction"
NATS = "nats"
TOKENS = "tokens"
GOLD_UNITS = "gold units"  # the task's exact reward or the held-out reward model's score
RM_UNITS = "RM units"  # the proxy reward model's score
BLEU_POINTS = "0-100"


@dataclass
class Corpus:
    """What the metrics are computed from: the evaluation's samples (dicts as in eval/samples.jsonl) and, where
    they were drawn, the separate samples at the training temperature (each with its "kl")."""

    samples: list[dict]
    train_temperature_samples: list[dict] | None = None

    @property
    def hypotheses(self) -> list[str]:
        return [sample["completion"].strip() for sample in self.samples]

    @functools.cached_property
    def bleu(self) -> tuple[float, str]:
        """sacrebleu's corpus BLEU against each prompt's reference, and its signature (computed once: the
        evaluator records the signature beside the number)."""

        return bleu(self.hypotheses, [sample["reference"].strip() for sample in self.samples])


@dataclass(frozen=True)
class Metric:
    name: str
    direction: Direction
    unit: str
    level: Level
    group: Group
    description: str
    field: str | None = None  # sample level: the eval/samples.jsonl field it is the mean of
    field_scale: float = 1.0  # sample level: the metric is field_scale x the field's mean
    compute: Callable[[Corpus], float | None] | None = None  # corpus level; None: not computable for this corpus
    label: str = ""  # what a plot axis calls it; the name with spaces when empty
    versus: str | None = None  # pairwise metrics: what the completion is compared with ("sft" or "reference")
    headline: bool = False  # one of the few columns shown where space is short (the MLflow leaderboard view)

    def __post_init__(self) -> None:
        def check(condition: bool, problem: str) -> None:
            if not condition:
                raise ValueError(f"metric {self.name!r}: {problem}")

        check(self.direction in DIRECTIONS, f"direction must be one of {DIRECTIONS}, got {self.direction!r}")
        check(self.level in LEVELS, f"level must be one of {LEVELS}, got {self.level!r}")
        check(self.group in GROUPS, f"group must be one of {GROUPS}, got {self.group!r}")
        if self.level == "sample":
            check(bool(self.field) and self.compute is None, "a sample-level metric has a field and no compute")
        else:
            check(self.compute is not None and not self.field, "a corpus-level metric has a compute and no field")

    @property
    def bounds(self) -> tuple[float, float] | None:
        """The range the metric can take where its unit fixes one: an interval is clipped to it."""
        return (0.0, 1.0) if self.unit == FRACTION else None

    @property
    def arrow(self) -> str:
        return _ARROWS[self.direction]

    def value(self, corpus: Corpus) -> float | None:
        """The metric on this corpus; None when it does not apply (its field absent or all null, or its compute
        says so)."""
        if self.level == "corpus":
            return self.compute(corpus)
        values = [sample[self.field] for sample in corpus.samples if sample.get(self.field) is not None]
        if not values:
            return None
        return self.field_scale * sum(float(value) for value in values) / len(values)


@dataclass(frozen=True)
class Comparison:
    """The eval/samples.jsonl fields and metric names of one pairwise comparison: each completion against
    SFT's completion at the same (prompt, sample slot), or against the prompt's reference."""

    versus: str

    # --- per-sample fields the evaluator writes ---
    @property
    def gold_points(self) -> str:
        """1 / 1/2 / 0: the completion's gold reward against the other answer's (only where gold exists)."""
        return f"win_vs_{self.versus}"

    @property
    def judge_points(self) -> str:
        """PairVerdict.points: 1 when both orders prefer the completion, 0 when both prefer the other, else 1/2."""
        return f"judge_vs_{self.versus}"

    @property
    def judge_probability(self) -> str:
        return f"judge_vs_{self.versus}_probability"  # PairVerdict.candidate_probability (null when unparseable)

    @property
    def judge_orders_agree(self) -> str:
        return f"judge_vs_{self.versus}_agree"  # 1.0 / 0.0: PairVerdict.orders_agree

    @property
    def judge_unparseable(self) -> str:
        return f"judge_vs_{self.versus}_unparseable"  # 0, 1 or 2 orders without a usable answer

    @property
    def judge_raw(self) -> str:
        return f"judge_vs_{self.versus}_raw"  # [candidate-first order's raw answer, candidate-second order's]

    @property
    def judge_gold_agreement(self) -> str:
        """harness.judges.base.gold_agreement of the judge's and gold's points; null when gold ties."""
        return f"judge_gold_agree_vs_{self.versus}"

    # --- summary metrics ---
    @property
    def gold_win_rate(self) -> str:
        return f"win_rate_vs_{self.versus}"

    @property
    def judge_win_rate(self) -> str:
        return f"judge_win_rate_vs_{self.versus}"


VS_SFT = Comparison("sft")
VS_REFERENCE = Comparison("reference")
COMPARISONS = (VS_SFT, VS_REFERENCE)
_OPPONENTS = {
    "sft": "the SFT baseline's completion at the same (prompt, sample slot)",
    "reference": "the prompt's reference answer (scored as stopped), where there is one",
}


def _pairwise_metrics(comparison: Comparison) -> list[Metric]:
    versus, opponent = comparison.versus, _OPPONENTS[comparison.versus]
    return [
        Metric(
            comparison.gold_win_rate,
            "higher",
            FRACTION,
            "sample",
            "pairwise",
            f"gold reward against {opponent}: win 1, tie 1/2, loss 0",
            field=comparison.gold_points,
            label=f"win rate against {versus} (gold)",
            versus=versus,
            headline=True,
        ),
        Metric(
            comparison.judge_win_rate,
            "higher",
            FRACTION,
            "sample",
            "pairwise",
            f"the pairwise judge against {opponent}, both orders: 1 when both prefer the completion, 0 when both "
            "prefer the other, 1/2 otherwise",
            field=comparison.judge_points,
            label=f"win rate against {versus} (judge)",
            versus=versus,
            headline=True,
        ),
        Metric(
            f"judge_order_agreement_vs_{versus}",
            "higher",
            FRACTION,
            "sample",
            "pairwise",
            f"fraction of comparisons with {versus} where the judge's two orders pick the same answer",
            field=comparison.judge_orders_agree,
            versus=versus,
        ),
        Metric(
            f"judge_unparseable_rate_vs_{versus}",
            "lower",
            FRACTION,
            "sample",
            "pairwise",
            f"fraction of the judge's answers (two per comparison with {versus}) that could not be parsed",
            field=comparison.judge_unparseable,
            field_scale=0.5,
            versus=versus,
        ),
        Metric(
            f"judge_gold_agreement_vs_{versus}",
            "higher",
            FRACTION,
            "sample",
            "pairwise",
            f"comparisons with {versus} where gold does not tie: 1 when the judge picks gold's winner, "
            "1/2 when it ties, 0 when it picks gold's loser",
            field=comparison.judge_gold_agreement,
            versus=versus,
        ),
    ]


def _distinct(n: int) -> Callable[[Corpus], float]:
    def compute(corpus: Corpus) -> float:

        return distinct_n(corpus.hypotheses, n)

    return compute


def _bleu(corpus: Corpus) -> float:
    return corpus.bleu[0]


def _kl_train_temperature(corpus: Corpus) -> float | None:
    draws = corpus.train_temperature_samples
    if not draws:
        return None
    return sum(draw["kl"] for draw in draws) / len(draws)


def _registry(*metrics: Metric) -> dict[str, Metric]:
    registry: dict[str, Metric] = {}
    for metric in metrics:
        if metric.name in registry:
            raise ValueError(f"metric {metric.name!r} is registered twice")
        registry[metric.name] = metric
    return registry


_KL_SUM = "summed over the response at the evaluation temperature (nats per sequence)"
# The samples field (and metric) of best-of-n's estimated KL (harness.generation.strategies.best_of_n_kl_estimate).
BEST_OF_N_KL_ESTIMATE = "best_of_n_kl_estimate"

METRICS: dict[str, Metric] = _registry(
    Metric(
        "gold_reward",
        "higher",
        GOLD_UNITS,
        "sample",
        "reward",
        "the task's exact reward, or a held-out reward model (gold.source reward_model)",
        field="gold_reward",
        label="gold reward",
        headline=True,
    ),
    Metric(
        "proxy_reward",
        "higher",
        RM_UNITS,
        "sample",
        "reward",
        "score of the reward model the online algorithms optimised",
        field="proxy_reward",
        label="proxy reward",
        headline=True,
    ),
    Metric(
        "kl",
        "lower",
        NATS,
        "sample",
        "kl",
        f"exact KL(policy||reference) over the vocabulary, {_KL_SUM}; for best-of-n the analytic upper bound "
        "log n - (n-1)/n (tag harness.kl_is_bound)",
        field="kl",
        label="KL(π‖π_ref) per response",
        headline=True,
    ),
    Metric(
        BEST_OF_N_KL_ESTIMATE,
        "lower",
        NATS,
        "sample",
        "kl",
        "best-of-n only: KL(best-of-n||the policy it samples) in nats per sequence, estimated per prompt from "
        "the selection rewards of all its candidates (their empirical distribution), averaged over prompts; "
        "at or below the bound eval/kl, biased low when a prompt has few candidates",
        field=BEST_OF_N_KL_ESTIMATE,
        label="estimated KL(best-of-n‖π_ref) per response",
    ),
    Metric(
        "kl_k1",
        "lower",
        NATS,
        "sample",
        "kl",
        f"k1 estimate Σ(log p − log q) at the sampled tokens, {_KL_SUM}",
        field="kl_k1",
        label="k1 KL estimate per response",
    ),
    Metric(
        "kl_k3",
        "lower",
        NATS,
        "sample",
        "kl",
        f"k3 estimate Σ(q/p − log(q/p) − 1) at the sampled tokens, {_KL_SUM}",
        field="kl_k3",
        label="k3 KL estimate per response",
    ),
    Metric(
        "kl_train_temperature",
        "lower",
        NATS,
        "corpus",
        "kl",
        "exact KL(policy||reference) at the training temperature (sampling.temperature), on separate untruncated "
        "draws at that temperature; only where it differs from the evaluation temperature",
        compute=_kl_train_temperature,
        label="KL(π‖π_ref) per response at the training temperature",
    ),
    Metric(
        "bleu",
        "higher",
        BLEU_POINTS,
        "corpus",
        "text",
        "sacrebleu corpus BLEU against the prompts' references (signature in tag harness.bleu_signature)",
        compute=_bleu,
        label="BLEU",
    ),
    Metric(
        "rouge1",
        "higher",
        FRACTION,
        "sample",
        "text",
        "ROUGE-1 F-measure against the reference",
        field="rouge1",
        label="ROUGE-1",
    ),
    Metric(
        "rouge2",
        "higher",
        FRACTION,
        "sample",
        "text",
        "ROUGE-2 F-measure against the reference",
        field="rouge2",
        label="ROUGE-2",
    ),
    Metric(
        "rougeL",
        "higher",
        FRACTION,
        "sample",
        "text",
        "ROUGE-L F-measure against the reference",
        field="rougeL",
        label="ROUGE-L",
    ),
    Metric(
        "length",
        "neutral",
        TOKENS,
        "sample",
        "text",
        "response length without the EOS token",
        field="length",
        label="response length",
    ),
    Metric(
        "stop_rate",
        "higher",
        FRACTION,
        "sample",
        "text",
        "fraction of responses that ended with EOS",
        field="stopped",
        label="stop rate",
    ),
    Metric(
        "distinct_1",
        "higher",
        FRACTION,
        "corpus",
        "text",
        "unique unigrams / all unigrams across responses",
        compute=_distinct(1),
        label="distinct-1",
    ),
    Metric(
        "distinct_2",
        "higher",
        FRACTION,
        "corpus",
        "text",
        "unique bigrams / all bigrams across responses",
        compute=_distinct(2),
        label="distinct-2",
    ),
    *(metric for comparison in COMPARISONS for metric in _pairwise_metrics(comparison)),
)


def metric_info(name: str) -> Metric:
    """The registry entry of `name`; KeyError naming the closest known metrics when there is none."""
    if name not in METRICS:
        close_matches = difflib.get_close_matches(name, METRICS, n=3)
        hint = f" Did you mean {', '.join(close_matches)}?" if close_matches else ""
        raise KeyError(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(METRICS)}")
    return METRICS[name]


def direction_arrow(name: str) -> str:
    """Return "↑" when higher is better, "↓" when lower is better, "" for neutral metrics."""
    return metric_info(name).arrow


def column_label(name: str) -> str:
    """A table column's header: "kl ↓ (nats)"; the bare name for a column the registry does not know."""
    metric = METRICS.get(name)
    if metric is None:
        return name
    return " ".join(part for part in (name, metric.arrow, f"({metric.unit})") if part)


def axis_label(name: str, sqrt: bool = False) -> str:
    """A plot axis: "KL(π‖π_ref) per response (nats)"; with `sqrt`, "√KL(π‖π_ref) per response (√nats)"."""
    metric = metric_info(name)
    label = metric.label or name.replace("_", " ")
    return f"√{label} (√{metric.unit})" if sqrt else f"{label} ({metric.unit})"


def sample_fields() -> dict[str, str]:
    """Sample-level metric -> the eval/samples.jsonl field it is the mean of: the samples schema."""
    return {metric.name: metric.field for metric in METRICS.values() if metric.level == "sample"}


def names_in(*groups: Group) -> tuple[str, ...]:
    """The metrics of these groups, in registry order."""
    return tuple(metric.name for metric in METRICS.values() if metric.group in groups)


def headline_metrics() -> tuple[str, ...]:
    return tuple(metric.name for metric in METRICS.values() if metric.headline)


def summarise(corpus: Corpus) -> dict[str, float]:
    """Every registered metric that applies to `corpus`, in registry order: the evaluator's summary (eval/* in
    MLflow). A field no metric is registered for gives nothing."""
    summary = {}
    for metric in METRICS.values():
        value = metric.value(corpus)
        if value is not None:
            summary[metric.name] = float(value)
    return summary
