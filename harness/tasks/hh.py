"""Anthropic HH-RLHF dialogue preferences (Bai et al. 2022), helpful-base by default.

Datasets
--------
* ``Anthropic/hh-rlhf`` with ``data_dir="helpful-base"`` (other subsets: harmless-base, helpful-online,
  helpful-rejection-sampled, red-team-attempts; about 160k train / 8.5k test over all subsets,
  unverified): ``chosen`` and ``rejected`` are whole transcripts,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant: <reply>"``, that differ only in
  the final reply. :func:`split_transcript` cuts each into prompt = everything up to and including the
  last ``"\\n\\nAssistant:"`` and completion = the rest; chosen and rejected must give the same prompt.
* ``trl-lib/hh-rlhf-helpful-base`` (TRL's conversational form of the same data; set ``data_dir`` to null):
  ``prompt`` is a message list, ``chosen`` / ``rejected`` one assistant message each. The messages are
  rendered back to the transcript text form (:func:`render_transcript`), so both sources give the same
  prompts and completions. Implicit-prompt rows (``chosen`` / ``rejected`` as whole message lists) work too.

SFT rows are the chosen replies of the train split; online prompts are its prompts; evaluation prompts
come from the test split with the chosen reply as the reference; held-out pairs are the test split's
pairs. Completions are ``" " + reply.strip()``. Pairs whose two replies are equal are dropped (they carry no
preference); a row without an Assistant turn, or whose chosen and rejected differ before the last reply,
is a :class:`~harness.tasks.loading.TaskDataError` naming the row.

Published anchors (ANCHORS.md)
------------------------------
* Xu et al. 2024 ("Is DPO Superior to PPO for LLM Alignment?", ICML 2024): PPO surpasses the other
  alignment methods in all cases, HH-RLHF included; key PPO factors are advantage normalization, large
  batches and an EMA reference model. Exact HH tables not retrieved.
* A commonly used gold/proxy reward model for HH-style text: ``OpenAssistant/reward-model-deberta-v3-large-v2``
  (unverified).

There is no gold reward (``HAS_GOLD_REWARD`` is False): HH is judged by a reward model or a judge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness.tasks.common import TaskData
from harness.tasks.loading import (
    Source,
    SourceRow,
    as_completion,
    distinct_prompts,
    iter_source_rows,
    log_split,
    messages_field,
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

HAS_GOLD_REWARD = False
HUMAN_MARKER = "\n\nHuman:"
ASSISTANT_MARKER = "\n\nAssistant:"
ROLE_MARKERS = {"user": HUMAN_MARKER, "assistant": ASSISTANT_MARKER}


@dataclass
class HHConfig:
    dataset: str = "Anthropic/hh-rlhf"
    # Hub id: Anthropic/hh-rlhf (transcripts) or trl-lib/hh-rlhf-helpful-base (messages; set data_dir null)
    data_dir: str | None = "helpful-base"
    # sub-folder of the Hub repository: the HH subset
    path: str | None = None
    # local file or folder read instead of dataset (see harness.tasks.loading for the layouts)
    revision: str | None = None
    # Hub commit or tag of dataset; None = main (pin it for a published run)
    train_split: str = "train"
    # split for SFT rows, preference pairs and online training prompts
    test_split: str = "test"
    # split for held-out pairs and evaluation prompts
    num_sft_examples: int = 20000
    # first N usable train rows (their chosen replies)
    num_preference_pairs: int = 20000
    # first N usable train pairs (pairs with equal replies are dropped)
    num_heldout_pairs: int = 500
    # first N usable test pairs
    num_train_prompts: int = 20000
    # first N distinct train prompts, for the online algorithms
    num_eval_prompts: int = 500
    # first N distinct test prompts that no training split uses
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
Config = HHConfig


# ---------------------------------------------------------------------------------------------------------
# Transcripts and messages
# ---------------------------------------------------------------------------------------------------------


def split_transcript(transcript: str) -> tuple[str, str]:
    """(prompt up to and including the last "\\n\\nAssistant:", the reply after it as a completion).

    Raises ValueError when there is no Assistant turn or the final reply is empty.
    """
    cut = transcript.rfind(ASSISTANT_MARKER)
    if cut < 0:
        raise ValueError("no '\\n\\nAssistant:' turn in the transcript")
    prompt_end = cut + len(ASSISTANT_MARKER)
    reply = transcript[prompt_end:]
    if not reply.strip():
        raise ValueError("the final Assistant turn is empty")
    return transcript[:prompt_end], as_completion(reply)


def render_transcript(messages: list[dict]) -> str:
    """A conversation as HH transcript text, ending with "\\n\\nAssistant:" for the reply to come.

    A system message becomes plain text before the first turn (HH has none; UltraFeedback rarely does).
    """
    parts = []
    for message in messages:
        content = message["content"].strip()
        if message["role"] == "system":
            parts.append(content)
        else:
            parts.append(f"{ROLE_MARKERS[message['role']]} {content}")
    parts.append(ASSISTANT_MARKER)
    return "".join(parts)


def conversational_pair(row: SourceRow) -> tuple[list[dict], str, str]:
    """(prompt messages, chosen reply, rejected reply) of a conversational preference row.

    Explicit prompt: `prompt` is a message list and `chosen` / `rejected` hold one assistant message each.
    Implicit prompt: `chosen` / `rejected` are whole conversations that share everything but the last
    (assistant) message; a string `prompt` column (HuggingFaceH4/ultrafeedback_binarized) is used only when
    the conversations hold nothing but the reply.
    """
    chosen, rejected = messages_field(row, "chosen"), messages_field(row, "rejected")
    prompt_value = row.data.get("prompt")
    if isinstance(prompt_value, list):
        prompt = messages_field(row, "prompt")
        for column, reply in (("chosen", chosen), ("rejected", rejected)):
            if len(reply) != 1:
                problem = f"column '{column}' must hold exactly one assistant message, got {len(reply)}"
                raise row_error(row.where, row.index, problem)
    else:
        prompt = chosen[:-1]
        if prompt != rejected[:-1]:
            raise row_error(row.where, row.index, "chosen and rejected differ before their last message")
        if not prompt and prompt_value is not None:
            prompt = [{"role": "user", "content": text_field(row, "prompt")}]
    _check_prompt_messages(row, prompt)
    for column, reply in (("chosen", chosen), ("rejected", rejected)):
        if reply[-1]["role"] != "assistant":
            raise row_error(row.where, row.index, f"column '{column}' must end with an assistant message")
    return prompt, as_completion(chosen[-1]["content"]), as_completion(rejected[-1]["content"])


def _check_prompt_messages(row: SourceRow, prompt: list[dict]) -> None:
    if not prompt:
        raise row_error(row.where, row.index, "no prompt messages before the reply")
    if prompt[-1]["role"] != "user":
        raise row_error(row.where, row.index, "the prompt must end with a user message")


def transcript_pair(row: SourceRow) -> tuple[str, str, str]:
    """(prompt, chosen completion, rejected completion) of a row in either HH form."""
    if isinstance(row.data.get("prompt"), list) or isinstance(row.data.get("chosen"), list):
        messages, chosen, rejected = conversational_pair(row)
        return render_transcript(messages), chosen, rejected
    pieces = []
    for column in ("chosen", "rejected"):
        transcript = text_field(row, column)
        try:
            pieces.append(split_transcript(transcript))
        except ValueError as error:
            raise row_error(row.where, row.index, f"column '{column}': {error}") from None
    (prompt, chosen), (rejected_prompt, rejected) = pieces
    if prompt != rejected_prompt:
        raise row_error(row.where, row.index, "chosen and rejected differ before the last '\n\nAssistant:' turn")
    return prompt, chosen, rejected


# ---------------------------------------------------------------------------------------------------------
# Building the splits
# ---------------------------------------------------------------------------------------------------------


def _pair_row(row: SourceRow) -> dict:
    prompt, chosen, rejected = transcript_pair(row)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _distinct_pair(row: SourceRow) -> dict | None:
    pair = _pair_row(row)
    return pair if pair["chosen"] != pair["rejected"] else None


def _source(config: HHConfig, split: str) -> Source:
    return Source(
        config.path or config.dataset,
        split,
        config.revision,
        data_dir=None if config.path else config.data_dir,
        trust_remote_code=config.trust_remote_code,
    )


def build_task_data(config: HHConfig, seed: int) -> TaskData:
    """The HH splits: the first N usable rows of each split, in source order (`seed` does not change data)."""
    del seed
    train_source, test_source = _source(config, config.train_split), _source(config, config.test_split)

    def take(source: Source, convert, count: int, what: str) -> list[dict]:
        what = f"hh {what} from {source.describe()}"
        return take_converted(iter_source_rows(source), convert, count, what, config.skip_malformed_rows)

    train_pairs = take(train_source, _pair_row, max(config.num_sft_examples, config.num_train_prompts), "train rows")
    sft = [{"prompt": pair["prompt"], "completion": pair["chosen"]} for pair in train_pairs[: config.num_sft_examples]]
    train_prompts = distinct_prompts(train_pairs, config.num_train_prompts)
    preferences = take(train_source, _distinct_pair, config.num_preference_pairs, "preference pairs")
    heldout_preferences = take(test_source, _distinct_pair, config.num_heldout_pairs, "held-out pairs")

    keep_unseen = unseen_prompts(training_prompts(sft, preferences, extra=train_prompts))
    eval_rows = take(test_source, lambda row: keep_unseen(_eval_row(row)), config.num_eval_prompts, "eval prompts")
    for what, source, rows in (
        ("sft", train_source, sft),
        ("preferences", train_source, preferences),
        ("held-out pairs", test_source, heldout_preferences),
        ("eval", test_source, eval_rows),
    ):
        log_split(f"hh {what}", source, rows)
    return TaskData(sft, preferences, heldout_preferences, train_prompts, eval_rows)


def _eval_row(row: SourceRow) -> dict:
    pair = _pair_row(row)
    return {"prompt": pair["prompt"], "reference": pair["chosen"]}


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    raise NotImplementedError(
        "task 'hh' has no gold reward (HAS_GOLD_REWARD is False): score HH with a reward model or a judge"
    )
