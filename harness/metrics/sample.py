"""One evaluation sample, as the evaluator's scorers fill it in and as eval/samples.jsonl holds it (one row each).

A sample is created from a draw (its prompt, completion, reference, length and stop) and each scorer of
harness.metrics.scorers sets its own fields. `to_row` writes the file's row: the fields in one fixed order, a
field nobody scored left out (no gold scorer: no gold_reward), except the comparison fields, which are null on
the samples a comparison skipped so that every row of a file has the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from harness.metrics.catalog import BEST_OF_N_KL_ESTIMATE


@dataclass
class Sample:
    prompt_index: int
    sample_index: int  # the sample slot of its prompt (best-of-n: the slot, not the draw)
    prompt: str  # as the policy saw it (chat-templated where the suite uses a template)
    completion: str
    reference: str
    length: int  # generated tokens without the EOS token, so that stopping itself costs no length
    stopped: bool
    # The draw itself (harness.generation.base.Generation): token ids for the KL's forward passes; not written.
    generation: Any = field(default=None, repr=False, compare=False)
    gold_reward: float | None = None
    proxy_reward: float | None = None
    kl: float | None = None  # nats per sequence to the reference (best-of-n: the analytic bound)
    kl_k1: float | None = None  # sampled-token estimates beside the exact KL (none for best-of-n)
    kl_k3: float | None = None
    best_of_n_kl_estimate: float | None = None  # best-of-n: its prompt's estimate from the candidates' rewards
    rouge1: float | None = None
    rouge2: float | None = None
    rougeL: float | None = None
    # harness.metrics.catalog.Comparison fields (win points, the judge's verdicts), in the order they were set
    comparisons: dict[str, Any] = field(default_factory=dict)
    # Best-of-n: n, which of its candidates was kept, and their rewards in draw order.
    best_of: int | None = None
    kept_candidate: int | None = None
    candidate_selection_rewards: list[float] | None = None
    candidate_gold_rewards: list[float] | None = None

    def to_row(self) -> dict:
        """The eval/samples.jsonl row (and what harness.metrics.catalog.summarise reads)."""
        row: dict[str, Any] = {
            "prompt_index": self.prompt_index,
            "sample_index": self.sample_index,
            "prompt": self.prompt,
            "completion": self.completion,
            "reference": self.reference,
        }
        _put(row, "gold_reward", self.gold_reward)
        _put(row, "proxy_reward", self.proxy_reward)
        _put(row, "kl", self.kl)
        _put(row, "kl_k1", self.kl_k1)
        _put(row, "kl_k3", self.kl_k3)
        _put(row, BEST_OF_N_KL_ESTIMATE, self.best_of_n_kl_estimate)
        _put(row, "rouge1", self.rouge1)
        _put(row, "rouge2", self.rouge2)
        _put(row, "rougeL", self.rougeL)
        row["length"] = self.length
        row["stopped"] = self.stopped
        row.update(self.comparisons)
        _put(row, "best_of", self.best_of)
        _put(row, "kept_candidate", self.kept_candidate)
        _put(row, "candidate_selection_rewards", self.candidate_selection_rewards)
        _put(row, "candidate_gold_rewards", self.candidate_gold_rewards)
        return row


def _put(row: dict, key: str, value) -> None:
    if value is not None:
        row[key] = value
