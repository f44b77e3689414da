"""Every metric the evaluator reports: its name, which direction is better, and its units.

The report uses this to label columns and draw ↑/↓ arrows; adding a metric to the evaluator
means adding it here.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from typing import Literal

logger = logging.getLogger(__name__)

Direction = Literal["higher", "lower", "neutral"]
_DIRECTIONS = ("higher", "lower", "neutral")
_ARROWS = {"higher": "↑", "lower": "↓", "neutral": ""}


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: Direction
    description: str

    def __post_init__(self) -> None:
        if self.direction not in _DIRECTIONS:
            raise ValueError(
                f"metric {self.name!r}: direction must be one of {_DIRECTIONS}, "
                f"got {self.direction!r}"
            )


def _catalog(*infos: MetricInfo) -> dict[str, MetricInfo]:
    return {info.name: info for info in infos}


METRICS: dict[str, MetricInfo] = _catalog(
    MetricInfo(
        "gold_reward",
        "higher",
        "reward from the suite's programmatic or held-out judge (judge units)",
    ),
    MetricInfo(
        "proxy_reward", "higher", "score from the reward model the algorithms optimised (RM units)"
    ),
    MetricInfo(
        "kl",
        "lower",
        "exact KL(policy||reference) over the vocabulary, summed over the response (nats); for best-of-n "
        "the analytic upper bound log n - (n-1)/n (tag harness.kl_is_bound)",
    ),
    MetricInfo(
        "kl_k1",
        "lower",
        "k1 estimate Σ(log p − log q) at sampled tokens, summed over the response (nats)",
    ),
    MetricInfo(
        "kl_k3", "lower", "k3 estimate Σ(q/p − log(q/p) − 1) at sampled tokens, summed (nats)"
    ),
    MetricInfo("bleu", "higher", "sacrebleu corpus BLEU against the suite's references (0-100)"),
    MetricInfo("rouge1", "higher", "ROUGE-1 F-measure against the reference (0-1)"),
    MetricInfo("rouge2", "higher", "ROUGE-2 F-measure against the reference (0-1)"),
    MetricInfo("rougeL", "higher", "ROUGE-L F-measure against the reference (0-1)"),
    MetricInfo("length", "neutral", "response length (tokens)"),
    MetricInfo("stop_rate", "higher", "fraction of responses that ended with EOS (0-1)"),
    MetricInfo("distinct_1", "higher", "unique unigrams / all unigrams across responses (0-1)"),
    MetricInfo("distinct_2", "higher", "unique bigrams / all bigrams across responses (0-1)"),
    MetricInfo(
        "win_rate_vs_sft",
        "higher",
        "fraction of (prompt, sample) pairs where gold reward beats the SFT baseline, "
        "ties count 1/2 (0-1)",
    ),
)


def direction_arrow(name: str) -> str:
    """Return "↑" when higher is better, "↓" when lower is better, "" for neutral metrics."""
    if name not in METRICS:
        close_matches = difflib.get_close_matches(name, METRICS, n=3)
        hint = f" Did you mean {', '.join(close_matches)}?" if close_matches else ""
        raise KeyError(f"unknown metric {name!r}.{hint} Known metrics: {', '.join(METRICS)}")
    return _ARROWS[METRICS[name].direction]
