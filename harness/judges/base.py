"""What every pairwise judge returns, and how the two orders of one comparison become one verdict.

A comparison puts the candidate's answer and another answer (SFT's at the same prompt and sample slot, or the
dataset's reference) before the judge twice: candidate first ("A") then candidate second ("B"). Position bias
cancels because the candidate wins only when both orders prefer it; when the orders disagree the pair is a
tie, worth 1/2 (so a judge that always answers "A" scores exactly 1/2, whatever it is shown).
"""

from __future__ import annotations

from dataclasses import dataclass

TIE = 0.5


@dataclass(frozen=True)
class OrderVerdict:
    """One order's answer. `first_better` is the judge's probability that the answer shown first is better,
    renormalised over the two answer tokens, where the backend gives token probabilities; else 1.0 / 0.0 from
    the parsed text. None when the answer could not be parsed (no probabilities and no recognisable label)."""

    first_better: float | None
    raw: str = ""  # the judge's text (or the two answer tokens' log-probabilities), for eval/samples.jsonl


@dataclass(frozen=True)
class PairVerdict:
    """The candidate against the other answer, both orders combined."""

    candidate_first: OrderVerdict  # candidate shown as "A"
    candidate_second: OrderVerdict  # candidate shown as "B"

    @property
    def unparseable(self) -> int:
        """How many of the two orders gave no usable answer (0, 1 or 2)."""
        return sum(v.first_better is None for v in (self.candidate_first, self.candidate_second))

    @property
    def candidate_probability(self) -> float | None:
        """P(candidate better) averaged over both orders (position bias cancels in the mean); None when
        either order is unparseable."""
        if self.unparseable:
            return None
        return (self.candidate_first.first_better + (1.0 - self.candidate_second.first_better)) / 2

    @property
    def points(self) -> float:
        """1 when both orders prefer the candidate, 0 when both prefer the other answer, 1/2 otherwise: the
        orders disagree, one says exactly 1/2, or either is unparseable (counted in `unparseable`)."""
        if self.unparseable:
            return TIE
        first, second = self.candidate_first.first_better, 1.0 - self.candidate_second.first_better
        if first > TIE and second > TIE:
            return 1.0
        if first < TIE and second < TIE:
            return 0.0
        return TIE

    @property
    def orders_agree(self) -> bool:
        """Both orders parsed and picked the same answer (not a tie by disagreement)."""
        return self.points != TIE or (
            not self.unparseable and self.candidate_first.first_better == TIE == self.candidate_second.first_better
        )


def gold_agreement(judge_points: float, gold_points: float) -> float | None:
    """How well one judged pair matches the gold reward's verdict: 1 when the judge picks gold's winner, 1/2
    when the judge ties, 0 when it picks gold's loser; None when gold itself ties (nothing to agree with)."""
    if gold_points == TIE:
        return None
    if judge_points == TIE:
        return TIE
    return 1.0 if judge_points == gold_points else 0.0
