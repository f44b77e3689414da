"""IMDB sentiment continuation: the classic TRL PPO setting (Ziegler et al. 2019 style, on movie reviews).

Dataset
-------
``stanfordnlp/imdb`` (train 25k / test 25k / unsupervised 50k, unverified): ``text`` (a review, with
``<br />`` line breaks) and ``label`` (0 negative, 1 positive; the unsupervised split's -1 is refused). The
Hub splits are sorted by label, so the adapter reads a whole split and interleaves negative and positive
reviews (in source order) before taking the first N: every limit gives a balanced, deterministic sample.

The task
--------
A review is cut into words (``<br />`` removed when ``strip_html_breaks``). With a random generator seeded
by (seed, split, row index), each review draws a prompt length of ``prompt_min_words``..``prompt_max_words``
words (2-8, as TRL's 2-8 prompt tokens) and a continuation length of
``completion_min_words``..``completion_max_words`` (4-16, as TRL's 4-16 new tokens). The prompt is the
review's first words; the SFT completion and the evaluation reference are the words that follow
(``" " + words``). Reviews too short for their cut are dropped. SFT rows and online prompts come from the
train split, evaluation prompts from the test split (dropping any prompt a training split uses).

The reward is a sentiment classifier's positive logit, ``lvwerra/distilbert-imdb`` by default
(:data:`REWARD_CLASSIFIER`; TRL uses the raw logit, ``function_to_apply="none"``). It is a real model that
the pipeline loads, not this module, so ``HAS_GOLD_REWARD`` is False and :func:`gold_reward` raises.

Label-based preferences: the i-th negative and the i-th positive review of a split form a pair. One of the
two (a seeded coin flip) donates the prompt, its first k words; chosen = the positive review's words after
position k and rejected = the negative review's words after position k, both of the donor's continuation
length. The pair thus compares continuations of the same prompt length and the same length, labelled by
the reviews' sentiment, not by a judgement of the continuation; the coin flip keeps "continues the
prompt's own review" from predicting the label. Held-out pairs are built the same way from the test split.

Published anchor (ANCHORS.md)
-----------------------------
* TRL ``gpt2-sentiment`` notebook: policy ``lvwerra/gpt2-imdb``, reward ``lvwerra/distilbert-imdb`` (raw
  logit), lr 1.41e-5: mean reward **-0.51 -> 1.68**, median **-0.46 -> 2.68**, on a 16-sample batch (a
  direction check only).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from harness.errors import require
from harness.tasks.common import TaskData
from harness.tasks.loading import (
    Source,
    SourceRow,
    TaskDataError,
    distinct_prompts,
    iter_source_rows,
    label_field,
    log_split,
    require_distinct_splits,
    require_limits,
    require_text_options,
    take_converted,
    text_field,
    training_prompts,
    unseen_prompts,
)

logger = logging.getLogger(__name__)

HAS_GOLD_REWARD = False
REWARD_CLASSIFIER = "lvwerra/distilbert-imdb"
# The policy of the published anchor (GPT-2 fine-tuned on IMDB); the suite's model preset chooses its own.
ANCHOR_POLICY = "lvwerra/gpt2-imdb"
NEGATIVE, POSITIVE = 0, 1
HTML_BREAKS = ("<br />", "<br/>", "<br>")


@dataclass
class IMDBConfig:
    dataset: str = "stanfordnlp/imdb"
    # Hub id of the dataset (text, label)
    path: str | None = None
    # local file or folder read instead of dataset (see harness.tasks.loading for the layouts)
    revision: str | None = None
    # Hub commit or tag of dataset; None = main (pin it for a published run)
    train_split: str = "train"
    # split for SFT rows, preference pairs and online prompts
    test_split: str = "test"
    # split for held-out pairs and evaluation prompts
    prompt_min_words: int = 2
    # shortest prompt, in words (TRL: 2 tokens)
    prompt_max_words: int = 8
    # longest prompt, in words (TRL: 8 tokens)
    completion_min_words: int = 4
    # shortest continuation, in words (TRL: 4 new tokens); shorter reviews are dropped
    completion_max_words: int = 16
    # longest continuation, in words (TRL: 16 new tokens)
    strip_html_breaks: bool = True
    # replace the reviews' "<br />" markup with spaces
    num_sft_examples: int = 10000
    # first N usable reviews of the balanced train order
    num_preference_pairs: int = 5000
    # label-based pairs (one negative and one positive train review each)
    num_heldout_pairs: int = 500
    # label-based pairs from the test split
    num_train_prompts: int = 10000
    # first N distinct train prompts, for the online algorithms
    num_eval_prompts: int = 512
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
        require_limits(self, ("prompt_min_words", "completion_min_words"))
        require(
            self.prompt_max_words >= self.prompt_min_words,
            "prompt_max_words",
            f"must be >= prompt_min_words ({self.prompt_min_words}), got {self.prompt_max_words}",
        )
        require(
            self.completion_max_words >= self.completion_min_words,
            "completion_max_words",
            f"must be >= completion_min_words ({self.completion_min_words}), got {self.completion_max_words}",
        )


# The registry loads every task module's `Config`.
Config = IMDBConfig


def review_words(text: str, strip_html_breaks: bool, limit: int) -> list[str]:
    """The review's first `limit` words (splitting only that far: reviews run to thousands of words)."""
    if strip_html_breaks:
        for markup in HTML_BREAKS:
            text = text.replace(markup, " ")
    return text.split(maxsplit=limit)[:limit]


def _cut(config: IMDBConfig, seed: int, split: str, index: int) -> tuple[int, int]:
    """(prompt words, continuation words) of one review, from its own seeded generator."""
    rng = random.Random(f"imdb:{seed}:{split}:{index}")
    return (
        rng.randint(config.prompt_min_words, config.prompt_max_words),
        rng.randint(config.completion_min_words, config.completion_max_words),
    )


def _review(row: SourceRow, config: IMDBConfig, seed: int, split: str) -> dict | None:
    """{"words", "label", "cut"} of one row; None for a review too short for its cut."""
    text, label = text_field(row, "text"), label_field(row, "label", (NEGATIVE, POSITIVE))
    prompt_length, completion_length = _cut(config, seed, split, row.index)
    # Every review keeps the longest cut's words: a pair cuts both of its reviews at the donor's place.
    words = review_words(text, config.strip_html_breaks, config.prompt_max_words + config.completion_max_words)
    if len(words) < prompt_length + config.completion_min_words:
        return None
    return {"words": words, "label": label, "cut": (prompt_length, completion_length)}


def interleave_labels(reviews: list[dict]) -> list[dict]:
    """Negative, positive, negative, ... in source order within each label; the longer label's rest last."""
    negatives = [review for review in reviews if review["label"] == NEGATIVE]
    positives = [review for review in reviews if review["label"] == POSITIVE]
    balanced = [review for pair in zip(negatives, positives) for review in pair]
    shorter = min(len(negatives), len(positives))
    return balanced + negatives[shorter:] + positives[shorter:]


def _continuation_row(review: dict) -> dict:
    prompt_length, completion_length = review["cut"]
    words = review["words"]
    return {
        "prompt": " ".join(words[:prompt_length]),
        "completion": " " + " ".join(words[prompt_length : prompt_length + completion_length]),
    }


def _label_pairs(reviews: list[dict], count: int, minimum_length: int, rng: random.Random) -> list[dict]:
    """Pairs of the i-th negative and i-th positive review, cut at the same place (see the docstring)."""
    negatives = [review for review in reviews if review["label"] == NEGATIVE]
    positives = [review for review in reviews if review["label"] == POSITIVE]
    pairs = []
    for negative, positive in zip(negatives, positives):
        if len(pairs) >= count:
            break
        donor = positive if rng.random() < 0.5 else negative
        prompt_length, completion_length = donor["cut"]
        # Both continuations get the same length, so that length cannot predict the label.
        length = min(completion_length, len(positive["words"]) - prompt_length, len(negative["words"]) - prompt_length)
        if length < minimum_length:  # one review is too short for the donor's cut
            continue
        pairs.append(
            {
                "prompt": " ".join(donor["words"][:prompt_length]),
                "chosen": " " + " ".join(positive["words"][prompt_length : prompt_length + length]),
                "rejected": " " + " ".join(negative["words"][prompt_length : prompt_length + length]),
            }
        )
    return pairs


def _source(config: IMDBConfig, split: str) -> Source:
    return Source(config.path or config.dataset, split, config.revision, trust_remote_code=config.trust_remote_code)


def _balanced_reviews(config: IMDBConfig, seed: int, source: Source) -> list[dict]:
    # The whole split is read: the Hub's order is by label, so its first N rows would all be negative.
    reviews = take_converted(
        iter_source_rows(source),
        lambda row: _review(row, config, seed, source.split),
        None,
        f"imdb reviews from {source.describe()}",
        config.skip_malformed_rows,
    )
    return interleave_labels(reviews)


def _require_pairs(pairs: list[dict], count: int, source: Source) -> list[dict]:
    if not pairs:
        raise TaskDataError(f"imdb pairs from {source.describe()}: needs both negative (0) and positive (1) reviews")
    if len(pairs) < count:
        logger.warning("imdb pairs from %s: asked for %d, the split gave %d", source.describe(), count, len(pairs))
    return pairs


def build_task_data(config: IMDBConfig, seed: int) -> TaskData:
    """The IMDB continuation splits; the seed draws each review's cut and each pair's prompt donor."""
    train_source, test_source = _source(config, config.train_split), _source(config, config.test_split)
    train_reviews = _balanced_reviews(config, seed, train_source)
    test_reviews = _balanced_reviews(config, seed, test_source)

    train_rows = [_continuation_row(review) for review in train_reviews]
    sft = train_rows[: config.num_sft_examples]
    train_prompts = distinct_prompts(train_rows, config.num_train_prompts)
    preferences = _require_pairs(
        _label_pairs(
            train_reviews,
            config.num_preference_pairs,
            config.completion_min_words,
            random.Random(f"imdb:{seed}:preferences"),
        ),
        config.num_preference_pairs,
        train_source,
    )
    heldout_preferences = _require_pairs(
        _label_pairs(
            test_reviews, config.num_heldout_pairs, config.completion_min_words, random.Random(f"imdb:{seed}:heldout")
        ),
        config.num_heldout_pairs,
        test_source,
    )

    keep_unseen = unseen_prompts(training_prompts(sft, preferences, extra=train_prompts))
    eval_rows = []
    for review in test_reviews:
        if len(eval_rows) >= config.num_eval_prompts:
            break
        row = keep_unseen(_continuation_row(review))
        if row is not None:
            eval_rows.append({"prompt": row["prompt"], "reference": row["completion"]})
    if not eval_rows:
        raise TaskDataError(f"imdb eval prompts from {test_source.describe()}: every prompt is also a training prompt")
    for what, source, rows in (
        ("sft", train_source, sft),
        ("preferences", train_source, preferences),
        ("held-out pairs", test_source, heldout_preferences),
        ("eval", test_source, eval_rows),
    ):
        log_split(f"imdb {what}", source, rows)
    return TaskData(sft, preferences, heldout_preferences, train_prompts, eval_rows)


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    raise NotImplementedError(
        f"task 'imdb' has no gold reward (HAS_GOLD_REWARD is False): its reward is the sentiment classifier "
        f"{REWARD_CLASSIFIER}'s positive logit, which the pipeline loads as a model"
    )
