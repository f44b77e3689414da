"""TL;DR summarization of Reddit posts (Stiennon et al. 2020), in TRL's formats.

Datasets
--------
* ``trl-lib/tldr`` (splits train / validation / test, from OpenAI's ``tldr_3_filtered``; about
  116.7k / 6.4k / 6.6k rows, unverified): ``prompt`` =
  ``"SUBREDDIT: r/{subreddit}\\n\\nTITLE: {title}\\n\\nPOST: {post}\\n\\nTL;DR:"``, ``completion`` =
  ``" " + summary``. SFT rows and online training prompts come from its train split; evaluation prompts
  from its validation split, with the human summary as the BLEU/ROUGE reference.
* ``trl-lib/tldr-preference`` (train 92.9k, validation 86.1k; built from ``openai/summarize_from_feedback``
  "comparisons"): ``prompt``, ``chosen``, ``rejected`` strings. Preference pairs come from train, the
  reward model's held-out pairs from validation. Its validation split also holds CNN/DailyMail articles
  (prompts ``"TITLE: ...\\n\\n{article}\\n\\nTL;DR:"``); ``reddit_only_preferences`` keeps Reddit posts only.

Every completion is stored as ``" " + text.strip()`` (the harness's completion form), so that
``prompt + completion`` reads ``"...TL;DR: summary"`` for SFT and preference rows alike. Evaluation rows
whose prompt any training split uses are dropped (and logged).

Published anchors (ANCHORS.md)
------------------------------
* TRL PPO, Pythia-1B-deduped (SFT ``cleanrl/EleutherAI_pythia-1b-deduped__sft__tldr``, RM
  ``cleanrl/EleutherAI_pythia-1b-deduped__reward__tldr``), lr 3e-6, 1M episodes, missing-EOS penalty 1.0:
  **PPO 64.7% vs SFT 33.0%** preferred over the reference summary (GPT-4o-mini judge); RLOO 51.2%.
* Judge sensitivity on the same checkpoints (1000 examples): ``trl-lib/ppo_tldr`` 46.3% (Llama-3-70B),
  52.5% (gpt-3.5-turbo-0125), 63.0% (gpt-4o-mini); ``trl-lib/rloo_tldr`` 31.4 / 51.6 / 51.2.
* Huang et al. 2024 (N+ implementation details): Pythia 1B-6.9B, PPO lr 3e-6, kl_coef 0.05, 1M episodes.

There is no gold reward: TL;DR is judged by a reward model or an LLM judge, so ``HAS_GOLD_REWARD`` is
False and :func:`gold_reward` raises.
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
PROMPT_END = "TL;DR:"
REDDIT_PROMPT_START = "SUBREDDIT: r/"


@dataclass
class TLDRConfig:
    sft_dataset: str = "trl-lib/tldr"
    # Hub id of the SFT / prompt dataset (prompt, completion)
    sft_path: str | None = None
    # local file or folder read instead of sft_dataset (see harness.tasks.loading for the layouts)
    sft_revision: str | None = None
    # Hub commit or tag of sft_dataset; None = main (pin it for a published run)
    sft_split: str = "train"
    # split for SFT rows and online training prompts
    eval_split: str = "validation"
    # split for evaluation prompts and their reference summaries
    preference_dataset: str = "trl-lib/tldr-preference"
    # Hub id of the preference dataset (prompt, chosen, rejected)
    preference_path: str | None = None
    # local file or folder read instead of preference_dataset
    preference_revision: str | None = None
    # Hub commit or tag of preference_dataset; None = main
    preference_split: str = "train"
    # split for reward-model / DPO pairs
    heldout_split: str = "validation"
    # split for the reward model's held-out pairs
    reddit_only_preferences: bool = True
    # drop preference pairs whose prompt is not a Reddit post (the CNN/DailyMail rows of validation)
    num_sft_examples: int = 20000
    # first N usable rows of sft_split
    num_preference_pairs: int = 20000
    # first N usable pairs of preference_split (pairs with chosen == rejected are dropped)
    num_heldout_pairs: int = 1000
    # first N usable pairs of heldout_split
    num_train_prompts: int = 20000
    # first N distinct prompts of sft_split, for the online algorithms
    num_eval_prompts: int = 1000
    # first N distinct eval_split prompts that no training split uses (1000 = the judge anchors' size)
    skip_malformed_rows: bool = False
    # drop malformed rows with a warning instead of stopping at the first one
    trust_remote_code: bool = False
    # allow a Hub loading script (datasets >= 4 runs none)

    def __post_init__(self) -> None:
        # Every split feeds a stage: an empty one is refused here, not minutes later inside a trainer.
        require_limits(self)
        text_options = (
            "sft_dataset",
            "sft_split",
            "eval_split",
            "preference_dataset",
            "preference_split",
            "heldout_split",
        )
        require_text_options(self, text_options)
        require_distinct_splits(self, "sft_split", "eval_split")


# The registry loads every task module's `Config`.
Config = TLDRConfig


def _source(config: TLDRConfig, kind: str, split: str) -> Source:
    dataset, path, revision = (
        (config.sft_dataset, config.sft_path, config.sft_revision)
        if kind == "sft"
        else (config.preference_dataset, config.preference_path, config.preference_revision)
    )
    return Source(path or dataset, split, revision, trust_remote_code=config.trust_remote_code)


def _summarization_prompt(row: SourceRow) -> str:
    prompt = text_field(row, "prompt")
    if not prompt.rstrip().endswith(PROMPT_END):
        raise row_error(row.where, row.index, f"prompt does not end with '{PROMPT_END}'")
    return prompt


def _sft_row(row: SourceRow) -> dict:
    return {"prompt": _summarization_prompt(row), "completion": as_completion(text_field(row, "completion"))}


def _preference_pair(row: SourceRow, reddit_only: bool) -> dict | None:
    prompt = _summarization_prompt(row)
    chosen, rejected = as_completion(text_field(row, "chosen")), as_completion(text_field(row, "rejected"))
    if chosen == rejected:  # no preference signal: a reward model can only score it 50%
        return None
    if reddit_only and not prompt.startswith(REDDIT_PROMPT_START):
        return None
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def build_task_data(config: TLDRConfig, seed: int) -> TaskData:
    """The TL;DR splits: the first N usable rows of each source split, in source order.

    The data do not depend on `seed` (a real dataset is fixed; seeds vary training, not data).
    """
    del seed
    sft_source = _source(config, "sft", config.sft_split)
    train_rows = take_converted(
        iter_source_rows(sft_source),
        _sft_row,
        max(config.num_sft_examples, config.num_train_prompts),
        f"tldr sft rows from {sft_source.describe()}",
        config.skip_malformed_rows,
    )
    sft = train_rows[: config.num_sft_examples]
    train_prompts = distinct_prompts(train_rows, config.num_train_prompts)

    pair_splits = []
    pair_requests = (
        (config.preference_split, config.num_preference_pairs),
        (config.heldout_split, config.num_heldout_pairs),
    )
    for split, count in pair_requests:
        source = _source(config, "preference", split)
        pairs = take_converted(
            iter_source_rows(source),
            lambda row: _preference_pair(row, config.reddit_only_preferences),
            count,
            f"tldr preference pairs from {source.describe()}",
            config.skip_malformed_rows,
        )
        log_split(f"tldr {split} pairs", source, pairs)
        pair_splits.append(pairs)
    preferences, heldout_preferences = pair_splits

    eval_source = _source(config, "sft", config.eval_split)
    keep_unseen = unseen_prompts(training_prompts(sft, preferences, extra=train_prompts))
    eval_rows = take_converted(
        iter_source_rows(eval_source),
        lambda row: keep_unseen(_eval_row(row)),
        config.num_eval_prompts,
        f"tldr eval prompts from {eval_source.describe()}",
        config.skip_malformed_rows,
    )
    log_split("tldr sft", sft_source, sft)
    log_split("tldr eval", eval_source, eval_rows)
    return TaskData(sft, preferences, heldout_preferences, train_prompts, eval_rows)


def _eval_row(row: SourceRow) -> dict:
    item = _sft_row(row)
    return {"prompt": item["prompt"], "reference": item["completion"]}


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    raise NotImplementedError(
        "task 'tldr' has no gold reward (HAS_GOLD_REWARD is False): score TL;DR with a reward model or a judge"
    )
