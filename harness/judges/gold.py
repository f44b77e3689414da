"""judge.kind gold: the gold reward as a pairwise judge, the sanity check of the judging machinery.

It asks both orders like any judge, and each order's verdict is the comparison of the two answers' gold
rewards (equal rewards: 1/2), so its win rate against SFT must equal the evaluator's gold win rate
(`win_rate_vs_sft`) exactly; a difference means the judge path pairs, orders or combines answers wrongly.
"""

from __future__ import annotations

import logging

from harness.judges.base import TIE, OrderVerdict, PairVerdict

logger = logging.getLogger(__name__)


class GoldJudge:
    # It is shown the prompt the policy answered (in its chat template, where the suite has one), the key the
    # gold scorer knows (gsm8k's verifier looks its answer up by it), not the task's own words that a model
    # judge reads: the evaluator asks (harness.metrics.comparisons._judge_prompts).
    reads_task_prompt = False

    def __init__(self, gold_scorer):
        self.gold_scorer = gold_scorer  # callable(prompts, completions, stopped) -> list[float]

    def compare(
        self,
        prompts: list[str],
        candidates: list[str],
        others: list[str],
        candidates_stopped: list[bool],
        others_stopped: list[bool],
    ) -> list[PairVerdict]:
        candidate_scores = self.gold_scorer(prompts, candidates, candidates_stopped)
        other_scores = self.gold_scorer(prompts, others, others_stopped)
        return [
            PairVerdict(_order(candidate, other), _order(other, candidate))
            for candidate, other in zip(candidate_scores, other_scores, strict=True)
        ]

    def close(self) -> None:
        pass


def _order(first: float, second: float) -> OrderVerdict:
    """One order's verdict: the first answer is better with probability 1, 0, or 1/2 on equal gold."""
    first_better = 1.0 if first > second else 0.0 if first < second else TIE
    return OrderVerdict(first_better, f"gold {first:.6g} vs {second:.6g}")
