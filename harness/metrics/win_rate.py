"""Win points of a candidate against another answer, pair by pair (docs/DESIGN.md §6).

A win rate is the mean of these points over the pairs; the evaluator stores the points per sample
(eval/samples.jsonl), so that the report can resample them over prompts.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

WIN, TIE, LOSS = 1.0, 0.5, 0.0


def win_points(candidate: list[float], other: list[float]) -> list[float]:
    """Per pair: 1 when the candidate's score is higher, 1/2 on a tie, 0 when lower.

    Index i of both lists must score the same prompt (and, against a baseline policy, the same sample slot),
    so that each comparison holds everything but the answer fixed.
    """
    if len(candidate) != len(other):
        raise ValueError(
            f"win points need two equally long score lists; got {len(candidate)} candidate and "
            f"{len(other)} other scores"
        )
    return [WIN if mine > theirs else TIE if mine == theirs else LOSS for mine, theirs in zip(candidate, other)]
