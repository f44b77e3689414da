"""What every model judge backend shares: both orders of each comparison, and reading the judge's answer.

A backend only answers single orders (`judge_orders`: (prompt, first, second) -> OrderVerdict); this module
asks each comparison twice, candidate first then candidate second, and pairs the two answers into a
PairVerdict (harness/judges/base.py combines them). An answer is read from the probabilities of the two
labels where the backend has them (P(first label) renormalised over the two), else from the judge's text by
one rule, `parse_answer`, for every backend.

A backend that generates (vllm, openai) reads the probabilities where the reply gives its answer
(`reply_verdict`): at the first generated token that is a label and at which the reply so far parses as that
label ("**B**": the token "B", not the "**" before it, whose alternatives say nothing about the verdict).
"""

from __future__ import annotations

import logging
import math
import re

from harness.judges.base import OrderVerdict, PairVerdict

logger = logging.getLogger(__name__)


class JudgeError(RuntimeError):
    """A judge could not answer (endpoint unreachable or refusing, vLLM worker failed): one line."""


class PairwiseJudge:
    """The evaluator's judge: `compare` and `close`. Subclasses implement `judge_orders`."""

    # A model judge is shown each request as the task wrote it, not in the policy's chat markup.
    reads_task_prompt = True

    def compare(
        self,
        prompts: list[str],
        candidates: list[str],
        others: list[str],
        candidates_stopped: list[bool],
        others_stopped: list[bool],
    ) -> list[PairVerdict]:
        """Each candidate against the other answer at the same index, in both orders. Model judges read only
        the text; the stopped flags are the gold judge's."""
        lengths = {len(prompts), len(candidates), len(others), len(candidates_stopped), len(others_stopped)}
        if len(lengths) != 1:
            raise ValueError(
                f"judge.compare needs lists of one length, got {len(prompts)} prompts, "
                f"{len(candidates)} candidates, {len(others)} others and "
                f"{len(candidates_stopped)}/{len(others_stopped)} stopped flags"
            )
        count = len(prompts)
        if not count:
            return []
        orders = [(p, c, o) for p, c, o in zip(prompts, candidates, others)]
        orders += [(p, o, c) for p, c, o in zip(prompts, candidates, others)]
        verdicts = self.judge_orders(orders)
        return [PairVerdict(verdicts[index], verdicts[count + index]) for index in range(count)]

    def judge_orders(self, orders: list[tuple[str, str, str]]) -> list[OrderVerdict]:
        raise NotImplementedError

    def close(self) -> None:
        pass


def probability_verdict(
    first_logprob: float, second_logprob: float, labels: tuple[str, str], text: str = ""
) -> OrderVerdict | None:
    """P(first label) / (P(first label) + P(second label)) from the two labels' log-probabilities; None when
    neither has any probability (both -inf) or a value is not a number. The raw record keeps both
    log-probabilities and any generated text."""
    if math.isnan(first_logprob) or math.isnan(second_logprob) or first_logprob == second_logprob == -math.inf:
        return None
    difference = second_logprob - first_logprob  # logistic form: no overflow, and exact when both are tiny
    first_better = 1.0 / (1.0 + math.exp(difference)) if difference < 700 else 0.0
    raw = f"{labels[0]}={first_logprob:.6g} {labels[1]}={second_logprob:.6g}"
    return OrderVerdict(first_better, f"{raw} | {text}" if text else raw)


def text_verdict(text: str, labels: tuple[str, str]) -> OrderVerdict:
    """1.0 / 0.0 from the parsed text; first_better None when the text names neither label."""
    answer = parse_answer(text, labels)
    return OrderVerdict(None if answer is None else 1.0 - answer, text)


# Markdown emphasis, quotes and brackets around a label: "**B**", "`A`", "[[A]]", "(B)".
_DECORATION = re.compile(r"[*_`\"'\[\]()#]")
# A short lead-in before the label: "Answer:", "Preferred:", "Final verdict -".
_LEAD_IN = re.compile(r"^[A-Za-z][A-Za-z ]{0,40}[:\-]\s*")


def parse_answer(text: str, labels: tuple[str, str]) -> int | None:
    """Which label the judge's text gives: 0 (first answer better), 1 (second) or None.

    The label must open the answer, after markdown decoration and an optional short lead-in ending in a colon
    ("A", "B.", "**B**", "Answer: A", "Preferred: B - shorter"); case matters ("a" is a word). Anything else,
    "I cannot decide" or "Summary A", is unparseable: the judge did not follow its instructions."""
    body = _DECORATION.sub("", text).strip()
    for candidate in (body, _LEAD_IN.sub("", body, count=1)):
        matched = [index for index, label in enumerate(labels) if re.match(re.escape(label) + r"(?!\w)", candidate)]
        if matched:  # both only when one label begins the other ("A" and "A+"): the longer one
            return max(matched, key=lambda index: len(labels[index]))
    return None


def reply_verdict(
    tokens: list[str], top_logprobs: list[list[tuple[str, float]]], text: str, labels: tuple[str, str]
) -> OrderVerdict:
    """One order's verdict from a generated reply: `tokens` are its generated tokens as text, `top_logprobs`
    the (token text, log-probability) alternatives at each of them. The labels' renormalised probabilities at
    the reply's answer token (`answer_position`) when both labels are among its alternatives; else the text,
    parsed (first_better None when it names neither label: unparseable, never scored)."""
    position = answer_position(tokens, labels)
    if position is not None and position < len(top_logprobs):
        logprobs = label_logprobs(top_logprobs[position], labels)
        if logprobs is not None:
            verdict = probability_verdict(*logprobs, labels, text)
            if verdict is not None:
                return verdict
    return text_verdict(text, labels)


def answer_position(tokens: list[str], labels: tuple[str, str]) -> int | None:
    """The index of the token where the reply gives its answer: the first token that is a label (`token_label`)
    and at which the reply so far parses (`parse_answer`) as that label; None when there is none. A label
    inside a sentence ("I cannot decide between A and B") is no answer."""
    reply = ""
    for index, token in enumerate(tokens):
        reply += token
        label = token_label(token, labels)
        if label is not None and parse_answer(reply, labels) == label:
            return index
    return None


def token_label(token: str, labels: tuple[str, str]) -> int | None:
    """Which label a token stands for: 0 or 1 when, without spaces and markdown decoration, it is that label or
    the start of it and not of the other one ("A", " A", "**A" for label A); else None ("**", "Answer")."""
    piece = _DECORATION.sub("", token).strip()
    if not piece:
        return None
    starts = [label.startswith(piece) for label in labels]
    if starts[0] == starts[1]:
        return None
    return 0 if starts[0] else 1


def label_logprobs(top_logprobs: list[tuple[str, float]], labels: tuple[str, str]) -> tuple[float, float] | None:
    """Each label's log-probability among the top tokens at one generated position, or None when either label
    is missing. Every token that stands for a label (`token_label`: "A" or " A" for label A) counts for it;
    several such tokens add up."""
    found: list[list[float]] = [[], []]
    for token, logprob in top_logprobs:
        label = token_label(token, labels)
        if label is not None:
            found[label].append(logprob)
    if not found[0] or not found[1]:
        return None
    return _logsumexp(found[0]), _logsumexp(found[1])


def _logsumexp(values: list[float]) -> float:
    top = max(values)
    if top == -math.inf:
        return top
    return top + math.log(sum(math.exp(value - top) for value in values))


def answer_token_ids(tokenizer, labels: tuple[str, str], where: str) -> tuple[int, int]:
    """The first token of each label as the judge would write it first in its reply; a tokenizer that gives
    both labels the same first token, or an unknown one, cannot tell them apart by probability."""
    ids = []
    for label in labels:
        encoded = tokenizer(label, add_special_tokens=False)["input_ids"]
        if not encoded or encoded[0] == tokenizer.unk_token_id:
            raise ValueError(f"judge answer label '{label}' is not a token of the tokenizer of {where}")
        ids.append(encoded[0])
    if ids[0] == ids[1]:
        raise ValueError(
            f"judge answer labels {labels[0]!r} and {labels[1]!r} start with the same token in the "
            f"tokenizer of {where}: their probabilities cannot be told apart (use labels such as A and B)"
        )
    return ids[0], ids[1]
