"""UltraFeedback binarized (Cui et al. 2023; Tunstall et al. 2023): chat preferences scored by GPT-4.

Datasets
--------
* ``trl-lib/ultrafeedback_binarized`` (train 62.1k, test 1k; TRL's DPO default): ``chosen`` and
  ``rejected`` are whole conversations (a user message, then the assistant reply), with ``score_chosen``
  and ``score_rejected``.
* ``HuggingFaceH4/ultrafeedback_binarized`` (splits ``train_prefs`` about 61,135 / ``test_prefs`` about
  2,000, plus ``*_sft`` and ``*_gen``): ``prompt, prompt_id, chosen, rejected, messages, score_chosen,
  score_rejected``; set ``train_split: train_prefs`` and ``test_split: test_prefs``.
* Explicit-prompt rows (``prompt`` a message list, ``chosen`` / ``rejected`` one assistant message each)
  are read too.

The prompt is every message before the reply. Its text form is the HH transcript
(``"\\n\\nHuman: {question}\\n\\nAssistant:"``, ``prompt_format: transcript``) or the user text alone
(``prompt_format: plain``, for a pipeline that applies a chat template itself). Every row also keeps the
messages as ``prompt_messages`` (a list of ``{"role", "content"}``), for chat templates; the name avoids
``messages``, which TRL's trainers read as a whole conversation. Preference rows keep ``score_chosen`` /
``score_rejected`` when the source has them. SFT rows are the chosen replies of the train split;
evaluation prompts come from the test split with the chosen reply as the reference. Completions are
``" " + reply.strip()``.

Published anchors (ANCHORS.md)
------------------------------
* Ivison et al. 2024 ("Unpacking DPO and PPO", Tülu 2 13B): PPO beats DPO by up to 2.5% in math and
  1.2% in general domains; better preference data gives up to 8%; UltraFeedback was the best dataset
  (unverified detail).
* TRL's DPO documentation trains ``Qwen/Qwen3-0.6B`` on ``trl-lib/ultrafeedback_binarized``.

There is no gold reward (``HAS_GOLD_REWARD`` is False): score with a reward model (for example the
Skywork-Reward-V2 series) or a judge.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness.errors import require
from harness.tasks.common import TaskData
from harness.tasks.hh import conversational_pair, render_transcript
from harness.tasks.loading import (
    Source,
    SourceRow,
    distinct_prompts,
    iter_source_rows,
    log_split,
    number_field,
    require_distinct_splits,
    require_limits,
    require_text_options,
    take_converted,
    training_prompts,
    unseen_prompts,
)

logger = logging.getLogger(__name__)

HAS_GOLD_REWARD = False
PROMPT_FORMATS = ("transcript", "plain")
SCORE_COLUMNS = ("score_chosen", "score_rejected")


@dataclass
class UltraFeedbackConfig:
    dataset: str = "trl-lib/ultrafeedback_binarized"
    # Hub id: trl-lib/ultrafeedback_binarized or HuggingFaceH4/ultrafeedback_binarized
    path: str | None = None
    # local file or folder read instead of dataset (see harness.tasks.loading for the layouts)
    revision: str | None = None
    # Hub commit or tag of dataset; None = main (pin it for a published run)
    train_split: str = "train"
    # split for SFT rows, preference pairs and online prompts ("train_prefs" for the H4 dataset)
    test_split: str = "test"
    # split for held-out pairs and evaluation prompts ("test_prefs" for the H4 dataset)
    prompt_format: str = "transcript"
    # "transcript" ("\n\nHuman: ...\n\nAssistant:") or "plain" (the user text only)
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
        formats = ", ".join(PROMPT_FORMATS)
        require(
            self.prompt_format in PROMPT_FORMATS,
            "prompt_format",
            f"must be one of {formats}, got '{self.prompt_format}'",
        )


# The registry loads every task module's `Config`.
Config = UltraFeedbackConfig


def prompt_text(messages: list[dict], prompt_format: str) -> str:
    """The prompt messages as text: an HH transcript, or the user turns' text joined by blank lines."""
    if prompt_format == "transcript":
        return render_transcript(messages)
    return "\n\n".join(message["content"].strip() for message in messages if message["role"] == "user")


def _pair_row(row: SourceRow, prompt_format: str) -> dict:
    messages, chosen, rejected = conversational_pair(row)
    pair = {
        "prompt": prompt_text(messages, prompt_format),
        "chosen": chosen,
        "rejected": rejected,
        "prompt_messages": messages,
    }
    for column in SCORE_COLUMNS:
        if column in row.data:
            pair[column] = number_field(row, column)
    return pair


def _source(config: UltraFeedbackConfig, split: str) -> Source:
    return Source(config.path or config.dataset, split, config.revision, trust_remote_code=config.trust_remote_code)


def build_task_data(config: UltraFeedbackConfig, seed: int) -> TaskData:
    """The UltraFeedback splits: the first N usable rows of each split, in source order (`seed` unused)."""
    del seed
    train_source, test_source = _source(config, config.train_split), _source(config, config.test_split)

    def pair(row: SourceRow) -> dict:
        return _pair_row(row, config.prompt_format)

    def distinct_pair(row: SourceRow) -> dict | None:
        item = pair(row)
        return item if item["chosen"] != item["rejected"] else None  # no preference signal

    def take(source: Source, convert, count: int, what: str) -> list[dict]:
        what = f"ultrafeedback {what} from {source.describe()}"
        return take_converted(iter_source_rows(source), convert, count, what, config.skip_malformed_rows)

    train_pairs = take(train_source, pair, max(config.num_sft_examples, config.num_train_prompts), "train rows")
    sft = [
        {"prompt": item["prompt"], "completion": item["chosen"], "prompt_messages": item["prompt_messages"]}
        for item in train_pairs[: config.num_sft_examples]
    ]
    train_prompts = distinct_prompts(train_pairs, config.num_train_prompts)
    preferences = take(train_source, distinct_pair, config.num_preference_pairs, "preference pairs")
    heldout_preferences = take(test_source, distinct_pair, config.num_heldout_pairs, "held-out pairs")

    keep_unseen = unseen_prompts(training_prompts(sft, preferences, extra=train_prompts))

    def eval_row(row: SourceRow) -> dict | None:
        item = pair(row)
        return keep_unseen(
            {"prompt": item["prompt"], "reference": item["chosen"], "prompt_messages": item["prompt_messages"]}
        )

    eval_rows = take(test_source, eval_row, config.num_eval_prompts, "eval prompts")
    for what, source, rows in (
        ("sft", train_source, sft),
        ("preferences", train_source, preferences),
        ("held-out pairs", test_source, heldout_preferences),
        ("eval", test_source, eval_rows),
    ):
        log_split(f"ultrafeedback {what}", source, rows)
    return TaskData(sft, preferences, heldout_preferences, train_prompts, eval_rows)


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    raise NotImplementedError(
        "task 'ultrafeedback' has no gold reward (HAS_GOLD_REWARD is False): score it with a reward model or a judge"
    )
