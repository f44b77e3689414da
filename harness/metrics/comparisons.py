"""The pairwise comparisons of the evaluation samples (harness.metrics.catalog.Comparison): gold points and a
judge's verdicts against the SFT baseline's completion at the same (prompt, sample slot), and against the
prompt's reference; one scorer, `Comparisons`, because the judge is asked every comparison in one call.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.judges.base import gold_agreement
from harness.metrics.catalog import VS_REFERENCE, VS_SFT, Comparison
from harness.metrics.sample import Sample
from harness.metrics.scorers import GoldScorer
from harness.metrics.win_rate import win_points
from harness.tasks.common import TASK_PROMPT


class Comparisons:
    """Against SFT (where there are baseline samples: the SFT baseline's eval/samples.jsonl rows, aligned by
    (prompt_index, sample_index); None for the baseline itself) and against the references (rows with a
    non-empty reference). `judge`: an object with compare(prompts, candidates, others, candidates_stopped,
    others_stopped) -> list[PairVerdict] (harness.judges.base), asked against SFT where `judge_vs_sft` and
    against the references where `judge_vs_reference`. `gold_scorer`: scores the references, where the samples
    have a gold reward."""

    def __init__(
        self,
        rows: list[dict],
        baseline_samples: list[dict] | None,
        gold_scorer: GoldScorer | None,
        judge,
        judge_vs_sft: bool,
        judge_vs_reference: bool,
    ):
        self.rows, self.baseline_samples, self.gold_scorer = rows, baseline_samples, gold_scorer
        self.judge, self.judge_vs_sft, self.judge_vs_reference = judge, judge_vs_sft, judge_vs_reference

    def score(self, samples: list[Sample]) -> None:
        has_gold = self.gold_scorer is not None
        comparisons = []
        if self.baseline_samples is not None:
            comparisons.append(_against_sft(samples, self.baseline_samples, has_gold, self.judge_vs_sft))
        comparisons.append(
            _against_references(samples, self.gold_scorer if has_gold else None, self.judge_vs_reference)
        )
        _judge_and_record(
            samples,
            [c for c in comparisons if c is not None],
            self.judge,
            _judge_prompts(self.rows, samples, self.judge),
        )


@dataclass
class _Pairs:
    """One comparison of the samples at `indices` with `others` (SFT's samples or the references)."""

    comparison: Comparison
    indices: list[int]
    others: list[str]
    others_stopped: list[bool]
    gold_points: list[float] | None
    judged: bool


def _against_sft(samples: list[Sample], baseline_samples: list[dict], has_gold: bool, judged: bool) -> _Pairs:
    """Each sample against the baseline's sample at the same (prompt, sample slot), with gold points where there
    is gold (catalog.VS_SFT's fields)."""
    others = _aligned_baseline(samples, baseline_samples)
    gold_points = None
    if has_gold:
        if any(other.get("gold_reward") is None for other in others):
            raise ValueError(
                "the SFT baseline's samples have no gold_reward: evaluate the baseline with the same "
                "gold scorer before the win rate against it"
            )
        gold_points = win_points([s.gold_reward for s in samples], [o["gold_reward"] for o in others])
    return _Pairs(
        VS_SFT,
        list(range(len(samples))),
        [o["completion"] for o in others],
        [bool(o["stopped"]) for o in others],
        gold_points,
        judged,
    )


def _aligned_baseline(samples: list[Sample], baseline_samples: list[dict]) -> list[dict]:
    """The baseline's sample at each sample's (prompt_index, sample_index): by key, not by list position, so a
    file in another order still pairs every completion with its own slot."""
    by_slot = {(b["prompt_index"], b["sample_index"]): b for b in baseline_samples}
    others = []
    for sample in samples:
        key = (sample.prompt_index, sample.sample_index)
        other = by_slot.get(key)
        if other is None:
            raise ValueError(
                f"the SFT baseline's samples have no completion for prompt {key[0]}, sample {key[1]}: the baseline "
                "was evaluated with other prompts or samples_per_prompt; evaluate it again with this configuration"
            )
        if other["prompt"] != sample.prompt:
            raise ValueError(
                f"the SFT baseline's prompt {key[0]} is not this evaluation's prompt {key[0]}: the two "
                "were evaluated on different prompts"
            )
        others.append(other)
    return others


def _against_references(samples: list[Sample], gold_scorer: GoldScorer | None, judged: bool) -> _Pairs | None:
    """Each sample whose prompt has a non-empty reference against that reference (scored as a completion that
    stopped), with gold points where there is gold (catalog.VS_REFERENCE's fields); None when there is nothing
    to compare or nothing to compare with."""
    if gold_scorer is None and not judged:
        return None
    indices = [i for i, sample in enumerate(samples) if sample.reference.strip()]
    if not indices:
        return None
    prompts = [samples[i].prompt for i in indices]
    references = [samples[i].reference for i in indices]
    gold_points = None
    if gold_scorer is not None:
        # Each distinct (prompt, reference) once: a prompt's samples all face the same reference.
        distinct = list(dict.fromkeys(zip(prompts, references)))
        scores = dict(
            zip(distinct, gold_scorer([p for p, _ in distinct], [r for _, r in distinct], [True] * len(distinct)))
        )
        gold_points = win_points(
            [samples[i].gold_reward for i in indices], [scores[pair] for pair in zip(prompts, references)]
        )
    return _Pairs(VS_REFERENCE, indices, references, [True] * len(indices), gold_points, judged)


def _judge_prompts(rows: list[dict], samples: list[Sample], judge) -> list[str]:
    """Each sample's request as the judge is shown it: a model judge reads it as the task wrote it, not in the
    policy's chat markup; the gold judge (reads_task_prompt False) the prompt the policy answered, which is the
    key the gold scorer scores by, as for the gold win rates (a chat-templated gsm8k knows only that one in a
    process that did not build the task data)."""
    if not getattr(judge, "reads_task_prompt", True):
        return [sample.prompt for sample in samples]
    return [rows[sample.prompt_index].get(TASK_PROMPT, sample.prompt) for sample in samples]


def _judge_and_record(samples: list[Sample], comparisons: list[_Pairs], judge, judge_prompts: list[str]) -> None:
    """Ask the judge every comparison in one call (a vLLM judge starts one engine per call), then write each
    comparison's fields into the samples."""
    asked = [pairs for pairs in comparisons if judge is not None and pairs.judged]
    verdicts: list = []
    if asked:
        verdicts = judge.compare(
            [judge_prompts[i] for pairs in asked for i in pairs.indices],
            [samples[i].completion for pairs in asked for i in pairs.indices],
            [other for pairs in asked for other in pairs.others],
            [samples[i].stopped for pairs in asked for i in pairs.indices],
            [stopped for pairs in asked for stopped in pairs.others_stopped],
        )
        expected = sum(len(pairs.indices) for pairs in asked)
        if len(verdicts) != expected:
            raise ValueError(f"the judge returned {len(verdicts)} verdicts for {expected} comparisons")
    start = 0
    for pairs in comparisons:
        own = None
        if any(pairs is judged for judged in asked):
            own, start = verdicts[start : start + len(pairs.indices)], start + len(pairs.indices)
        _record_comparison(samples, pairs.indices, pairs.comparison, pairs.gold_points, own)


def _record_comparison(
    samples: list[Sample],
    indices: list[int],
    comparison: Comparison,
    gold_points: list[float] | None,
    verdicts: list | None,
) -> None:
    """Write one comparison's fields into samples[indices] (null into the other samples, so every row of the
    file has the same fields): the gold points where there is gold, the judge's verdict where there is a judge,
    and their agreement where there are both."""
    position = {index: rank for rank, index in enumerate(indices)}
    for index, sample in enumerate(samples):
        rank = position.get(index)
        if gold_points is not None:
            sample.comparisons[comparison.gold_points] = None if rank is None else gold_points[rank]
        if verdicts is None:
            continue
        verdict = None if rank is None else verdicts[rank]
        sample.comparisons[comparison.judge_points] = None if verdict is None else verdict.points
        sample.comparisons[comparison.judge_probability] = None if verdict is None else verdict.candidate_probability
        sample.comparisons[comparison.judge_orders_agree] = None if verdict is None else float(verdict.orders_agree)
        sample.comparisons[comparison.judge_unparseable] = None if verdict is None else verdict.unparseable
        sample.comparisons[comparison.judge_raw] = (
            None if verdict is None else [verdict.candidate_first.raw, verdict.candidate_second.raw]
        )
        if gold_points is not None:
            sample.comparisons[comparison.judge_gold_agreement] = (
                None if verdict is None else gold_agreement(verdict.points, gold_points[rank])
            )
