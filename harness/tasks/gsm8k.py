"""GSM8K grade-school math (Cobbe et al. 2021) with an exact answer verifier as the gold reward.

Dataset
-------
``openai/gsm8k``, config ``main`` (train 7,473 / test 1,319, unverified): ``question`` and ``answer``, a
worked rationale (with ``<<48/2=24>>`` calculator notes) whose last line is ``#### <number>``. A row whose
answer lacks ``#### <number>`` is a :class:`~harness.tasks.loading.TaskDataError`.

* prompt = ``"{instruction}\\n\\nQuestion: {question}\\nAnswer:"`` (the instruction is a config field);
* SFT completion and evaluation reference = ``" " + answer`` (rationale and ``####`` line, notes kept);
* SFT rows, preference pairs and online prompts come from the train split, held-out pairs and evaluation
  prompts from the test split.

The gold reward
---------------
:func:`gold_reward` is 1.0 when the completion's final number equals the gold number and 0.0 otherwise.
The final number is the first number after the last ``####`` when there is one, else the last number in
the text; ``1,234`` is 1234, ``-5`` is negative, ``3.50`` equals ``3.5``, and a sentence's full stop is not
a decimal point. ``stopped`` is ignored: a truncated completion is graded on what it says (as verl does),
so the missing-stop penalty is not part of this gold reward.

How the gold number is found from the prompt: the module keeps a dict ``prompt -> gold number``.
:func:`build_task_data` fills it for every prompt it emits (SFT, pairs, online prompts, evaluation). A
process that reads a saved TaskData instead (a resumed run, a worker) must call
:func:`remember_gold_answers` with it first: that recovers the gold of every prompt that has an answer in
the data (SFT completions, chosen answers, evaluation references). Online prompts are the first questions
of the train split, like SFT rows, so they are covered whenever ``num_train_prompts <= num_sft_examples``
(the defaults); it warns about any prompt it cannot cover. A prompt with no known gold raises
:class:`UnknownPromptError` rather than scoring 0, which would look like a wrong answer.

Preference pairs: chosen = the question's reference answer, rejected = the reference answer of another
question (with a different gold number), picked with the seed. This is a weak synthetic negative (the
rejected text is fluent, correct math for the wrong question), so a reward model trained on it learns
relevance more than correctness, and DPO on it is a weak baseline; for GSM8K the online algorithms should
optimise the gold reward itself (``reward.source: gold``). Real, RM- or verifier-labelled pairs of the
policy's own samples would be the stronger choice.

Published anchors (ANCHORS.md; verl ``docs/algo/baseline.md``, strict ``####`` extraction)
-----------------------------------------------------------------------------------------
* Qwen2.5-0.5B-Instruct: HF **49.6** -> PPO **56.7**; PRIME 58.7; GRPO-LoRA 54.3.
* Qwen2.5-1.5B-Instruct GRPO-LoRA **77.9**; Qwen2.5-3B-Instruct **86.1**.
* gemma-2-2b-it 23.9 -> SFT 52.06 -> SFT+PPO **64.02**; deepseek-llm-7b-chat PPO 69.5; Qwen2-7B-Instruct GRPO 89.
* DeepSeekMath (GRPO): GSM8K 82.9 -> 88.2, Instruct -> RL (unverified).
"""

from __future__ import annotations

import logging
import random
import re
from dataclasses import dataclass
from decimal import Decimal

from harness.tasks.common import TaskData
from harness.tasks.loading import (
    Source,
    SourceRow,
    TaskDataError,
    as_completion,
    distinct_prompts,
    iter_source_rows,
    log_split,
    one_line,
    require_distinct_splits,
    require_limits,
    require_text_options,
    row_error,
    take_converted,
    text_field,
    training_prompts,
    unseen_prompts,
)

logger = logging.getLogger(__name__)

HAS_GOLD_REWARD = True
ANSWER_MARKER = "####"
DEFAULT_INSTRUCTION = (
    "Solve the math word problem. Think step by step, then write the final answer as a number after '####'."
)
# A number: optional sign, digits with optional thousands commas, optional decimals. The sign counts only
# when no word character precedes it ("10-3" is two numbers, not 10 and -3), and a number may not start
# right after a letter, digit or point ("x2", "v1.5"), nor does a sentence's full stop join it ("42." is 42).
NUMBER_PATTERN = re.compile(r"(?<![\w.])-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])-?\.\d+")
# Pairs need a pool of other questions to draw negatives from, even when few pairs are asked for.
NEGATIVE_POOL_MIN = 64
NEGATIVE_DRAWS = 32

_GOLD_ANSWERS: dict[str, Decimal] = {}


class UnknownPromptError(LookupError):
    """gold_reward was asked about a prompt whose gold answer this process has not seen."""


@dataclass
class GSM8KConfig:
    dataset: str = "openai/gsm8k"
    # Hub id of the dataset (question, answer)
    subset: str | None = "main"
    # the dataset's Hub config name ("main"; "socratic" has sub-question rationales); not called `name`,
    # which in a suite's `task:` section names the task itself
    path: str | None = None
    # local file or folder read instead of dataset (see harness.tasks.loading for the layouts)
    revision: str | None = None
    # Hub commit or tag of dataset; None = main (pin it for a published run)
    train_split: str = "train"
    # split for SFT rows, preference pairs and online prompts
    test_split: str = "test"
    # split for held-out pairs and evaluation prompts
    instruction: str = DEFAULT_INSTRUCTION
    # text before "Question: ..." in every prompt; empty for none
    num_sft_examples: int = 7473
    # first N train rows (7473 = the whole train split)
    num_preference_pairs: int = 7473
    # synthetic pairs (rejected = another question's answer) over the first N train rows
    num_heldout_pairs: int = 500
    # synthetic pairs over the first N test rows
    num_train_prompts: int = 7473
    # first N distinct train questions, for the online algorithms
    num_eval_prompts: int = 1319
    # first N distinct test questions that no training split uses (1319 = the whole test split, as verl)
    skip_malformed_rows: bool = False
    # drop malformed rows with a warning instead of stopping at the first one
    trust_remote_code: bool = False
    # allow a Hub loading script (datasets >= 4 runs none)

    def __post_init__(self) -> None:
        # Every split feeds a stage: an empty one is refused here, not minutes later inside a trainer.
        require_limits(self)
        require_text_options(self, ("dataset", "train_split", "test_split"))
        require_distinct_splits(self, "train_split", "test_split")


# The registry loads every task module's `Config`.
Config = GSM8KConfig


# ---------------------------------------------------------------------------------------------------------
# Numbers and the verifier
# ---------------------------------------------------------------------------------------------------------


def parse_number(text: str) -> Decimal:
    """A matched number as a Decimal ("1,234" -> 1234; "3.50" == "3.5" as Decimals)."""
    return Decimal(text.replace(",", ""))


def final_number(text: str) -> Decimal | None:
    """The answer a completion gives: the first number after its last "####", else its last number."""
    if ANSWER_MARKER in text:
        after_marker = NUMBER_PATTERN.search(text.rsplit(ANSWER_MARKER, 1)[1])
        if after_marker:
            return parse_number(after_marker.group())
    numbers = NUMBER_PATTERN.findall(text)
    return parse_number(numbers[-1]) if numbers else None


def gold_number(answer: str) -> Decimal | None:
    """The gold number of a reference answer: strictly the number right after its last "####"."""
    if ANSWER_MARKER not in answer:
        return None
    match = NUMBER_PATTERN.match(answer.rsplit(ANSWER_MARKER, 1)[1].strip())
    return parse_number(match.group()) if match else None


def is_correct(completion: str, gold: Decimal) -> bool:
    answer = final_number(completion)
    return answer is not None and answer == gold


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    """1.0 when the completion's final number equals the prompt's gold number, else 0.0 (see the docstring)."""
    del stopped  # graded on what the text says; see the module docstring
    gold = _GOLD_ANSWERS.get(prompt.strip())
    if gold is None:
        raise UnknownPromptError(
            f"no gold answer known for prompt '{one_line(prompt)}': build the task data in this process or "
            "call harness.tasks.gsm8k.remember_gold_answers(task_data) first"
        )
    return 1.0 if is_correct(completion, gold) else 0.0


def _remember(prompt: str, gold: Decimal) -> None:
    key = prompt.strip()
    known = _GOLD_ANSWERS.get(key)
    if known is not None and known != gold:
        logger.warning("prompt '%s' has two gold answers, %s and %s; keeping the later", one_line(key), known, gold)
    _GOLD_ANSWERS[key] = gold


def remember_gold_answers(task_data: TaskData) -> int:
    """Fill the prompt -> gold table from saved task data; returns how many prompts it now knows.

    Golds come from the "#### <number>" of SFT completions, chosen answers and evaluation references.
    """
    answered = [(row["prompt"], row["completion"]) for row in task_data.sft]
    answered += [(row["prompt"], row["chosen"]) for row in task_data.preferences + task_data.heldout_preferences]
    answered += [(row["prompt"], row["reference"]) for row in task_data.eval]
    for prompt, answer in answered:
        gold = gold_number(answer)
        if gold is not None:
            _remember(prompt, gold)
    unknown = [prompt for prompt in task_data.train_prompts if prompt.strip() not in _GOLD_ANSWERS]
    if unknown:
        logger.warning(
            "%d online training prompts have no answer in the task data, so gold_reward cannot score them; "
            "rebuild the task data in this process (build_task_data)",
            len(unknown),
        )
    return len(_GOLD_ANSWERS)


# ---------------------------------------------------------------------------------------------------------
# Building the splits
# ---------------------------------------------------------------------------------------------------------


def make_prompt(question: str, instruction: str = DEFAULT_INSTRUCTION) -> str:
    body = f"Question: {question.strip()}\nAnswer:"
    return f"{instruction.strip()}\n\n{body}" if instruction.strip() else body


def _problem(row: SourceRow, instruction: str) -> dict:
    """{"prompt", "answer", "gold"} of one dataset row."""
    question, answer = text_field(row, "question"), text_field(row, "answer")
    if ANSWER_MARKER not in answer:
        raise row_error(row.where, row.index, "answer has no '#### <number>' final line")
    gold = gold_number(answer)
    if gold is None:
        after_marker = one_line(answer.rsplit(ANSWER_MARKER, 1)[1].strip())
        raise row_error(row.where, row.index, f"answer's '####' is not followed by a number: '{after_marker}'")
    return {"prompt": make_prompt(question, instruction), "answer": as_completion(answer), "gold": gold}


def _synthetic_pairs(problems: list[dict], count: int, rng: random.Random, what: str) -> list[dict]:
    """chosen = a problem's own answer, rejected = another problem's answer with a different gold number."""
    if len(problems) < 2:
        raise TaskDataError(f"{what}: synthetic pairs need at least 2 questions, the source gave {len(problems)}")
    pairs = []
    for index, problem in enumerate(problems[:count]):
        negative = _other_answer(problems, problem["gold"], rng)
        if negative is None:
            logger.info("%s: question %d has no other question with a different answer; no pair", what, index)
            continue
        pairs.append({"prompt": problem["prompt"], "chosen": problem["answer"], "rejected": negative["answer"]})
    return pairs


def _other_answer(problems: list[dict], gold: Decimal, rng: random.Random) -> dict | None:
    # Random draws find a different answer almost at once; the scan only settles pools of equal answers.
    for _ in range(NEGATIVE_DRAWS):
        candidate = rng.choice(problems)
        if candidate["gold"] != gold:
            return candidate
    others = [problem for problem in problems if problem["gold"] != gold]
    return rng.choice(others) if others else None


def _source(config: GSM8KConfig, split: str) -> Source:
    return Source(
        config.path or config.dataset,
        split,
        config.revision,
        name=None if config.path else config.subset,
        trust_remote_code=config.trust_remote_code,
    )


def build_task_data(config: GSM8KConfig, seed: int) -> TaskData:
    """The GSM8K splits (first N rows in source order) and the seeded synthetic preference pairs."""
    train_source, test_source = _source(config, config.train_split), _source(config, config.test_split)

    def problems(source: Source, wanted: int, what: str, keep=lambda item: item, pool: int = 0) -> list[dict]:
        # `pool` reads extra rows to draw negatives from; it is not a request, so no shortfall warning.
        return take_converted(
            iter_source_rows(source),
            lambda row: keep(_problem(row, config.instruction)),
            max(wanted, pool),
            f"gsm8k {what} from {source.describe()}",
            config.skip_malformed_rows,
            wanted=wanted,
        )

    train_wanted = max(config.num_sft_examples, config.num_train_prompts, config.num_preference_pairs)
    train_problems = problems(train_source, train_wanted, "train rows", pool=NEGATIVE_POOL_MIN)
    heldout_problems = problems(test_source, config.num_heldout_pairs, "held-out rows", pool=NEGATIVE_POOL_MIN)

    sft = [{"prompt": p["prompt"], "completion": p["answer"]} for p in train_problems[: config.num_sft_examples]]
    train_prompts = distinct_prompts(train_problems, config.num_train_prompts)
    # Separate streams, so that changing one split's size leaves the other's pairs as they were.
    preferences = _synthetic_pairs(
        train_problems,
        config.num_preference_pairs,
        random.Random(f"gsm8k:{seed}:preferences"),
        "gsm8k preference pairs",
    )
    heldout_preferences = _synthetic_pairs(
        heldout_problems, config.num_heldout_pairs, random.Random(f"gsm8k:{seed}:heldout"), "gsm8k held-out pairs"
    )

    keep_unseen = unseen_prompts(training_prompts(sft, preferences, extra=train_prompts))
    eval_problems = problems(test_source, config.num_eval_prompts, "eval prompts", keep_unseen)
    eval_rows = [{"prompt": p["prompt"], "reference": p["answer"]} for p in eval_problems]

    for problem in train_problems + heldout_problems + eval_problems:
        _remember(problem["prompt"], problem["gold"])
    for what, source, rows in (
        ("sft", train_source, sft),
        ("preferences", train_source, preferences),
        ("held-out pairs", test_source, heldout_preferences),
        ("eval", test_source, eval_rows),
    ):
        log_split(f"gsm8k {what}", source, rows)
    return TaskData(sft, preferences, heldout_preferences, train_prompts, eval_rows)
