"""The embedded synthetic review task: hand-computed gold rewards, determinism, schema and statistics."""

import random
import statistics

import pytest

from harness.tasks.synthetic import (
    SyntheticReviewsConfig,
    TaskData,
    build_task_data,
    gold_reward,
    gold_reward_breakdown,
    sample_review,
    vocabulary,
)

PROMPT = "hotel review : the room"


@pytest.fixture(scope="module")
def default_data() -> TaskData:
    return build_task_data(SyntheticReviewsConfig(), seed=0)


def _gold(prompt: str, completion: str) -> float:
    return gold_reward(prompt, completion, stopped=True)


def _all_texts(data: TaskData) -> list[str]:
    texts = [row["prompt"] for row in data.sft] + [row["completion"] for row in data.sft]
    for row in data.preferences + data.heldout_preferences:
        texts += [row["prompt"], row["chosen"], row["rejected"]]
    texts += data.train_prompts
    for row in data.eval:
        texts += [row["prompt"], row["reference"]]
    return texts


# --- gold reward, computed by hand ----------------------------------------------------------------------

HAND_COMPUTED = [
    # clean positive: "the room was very clean" 1 x 1.5, "the staff seemed friendly" 1 -> mean 1.25
    (" was very clean . the staff seemed friendly .", True, 1.25),
    # negative: "the room was dirty" -1, "i hated the breakfast" -1 -> mean -1.0
    (" was dirty . i hated the breakfast .", True, -1.0),
    # mixed: "clean , but ... rude" is 1 + (-1) = 0
    (" was clean , but the staff seemed rude .", True, 0.0),
    # mixed with an intensifier: 1.5 + (-1) = 0.5
    (" was very clean but the staff seemed rude .", True, 0.5),
    # intensifier: 1 x 1.5
    (" was really comfortable .", True, 1.5),
    # two intensified clauses: 1.5 + 1.5 = 3.0, clipped to 1.5
    (" was very clean and the bed was extremely comfortable .", True, 1.5),
    # negation flips a negative adjective: -(-1) = 1
    (" was not dirty .", True, 1.0),
    # broken second sentence (no copula): sentiment 1.0 over the one grammatical sentence, broken -1.0 x 1/2
    (" was clean . the staff friendly .", True, 0.5),
    # unfinished last sentence counts as broken: 1.0 - 1.0 x 1/2
    (" was clean . the bed was", True, 0.5),
    # repeated sentence: sentiment mean(1, 1, 1) = 1.0, repetition -0.5 x 1/3
    (" was clean . the bed was comfortable . the bed was comfortable .", True, 1.0 - 0.5 / 3),
    # repeated adjective: sentiment 1.0, the second sentence reuses "clean": -0.5 x 1/2
    (" was clean . the bed was clean .", True, 0.75),
    # the clean positive review without the end-of-sequence token: 1.25 - 1.0
    (" was very clean . the staff seemed friendly .", False, 0.25),
    # empty completion: -2.0, and -1.0 more without a stop
    ("", True, -2.0),
    ("   ", True, -2.0),
    ("", False, -3.0),
    # garbage: one unfinished sentence "the room banana xyz qq" that does not parse: -1.0 x 1/1
    (" banana xyz qq", True, -1.0),
    # six fluent distinct sentences: sentiment 1.0, too long by two: -0.5 x 2
    (
        " was clean . the bed was comfortable . the view was lovely . the pool was quiet ."
        " the gym was bright . the lobby was charming .",
        True,
        0.0,
    ),
]


@pytest.mark.parametrize(("completion", "stopped", "expected"), HAND_COMPUTED)
def test_gold_reward_matches_hand_computed_values(completion, stopped, expected):
    assert gold_reward(PROMPT, completion, stopped) == pytest.approx(expected, abs=1e-12)


def test_too_long_penalty_has_a_floor():
    # ten sentences, each with a distinct positive adjective: sentiment 1.0, too long floored at -1.5
    adjectives = ["clean", "comfortable", "lovely", "quiet", "bright", "charming", "cozy", "fresh", "superb", "great"]
    completion = " was clean ." + "".join(f" it was {adjective} ." for adjective in adjectives[1:])
    breakdown = gold_reward_breakdown(PROMPT, completion, stopped=True)
    assert breakdown["too_long"] == -1.5
    assert gold_reward(PROMPT, completion, True) == pytest.approx(-0.5)


def test_breakdown_sums_to_gold_reward_and_names_each_term():
    completion = " was very clean . the staff friendly . the staff friendly"
    breakdown = gold_reward_breakdown(PROMPT, completion, stopped=False)
    terms = {"sentiment", "broken_grammar", "repetition", "missing_stop", "too_long", "empty"}
    assert set(breakdown) == terms
    # sentiment 1.5 (only the first sentence parses), broken -1.0 x 2/3, repetition -0.5 x 1/3, no stop -1.0
    assert breakdown["sentiment"] == pytest.approx(1.5)
    assert breakdown["broken_grammar"] == pytest.approx(-2 / 3)
    assert breakdown["repetition"] == pytest.approx(-0.5 / 3)
    assert breakdown["missing_stop"] == -1.0
    assert sum(breakdown.values()) == pytest.approx(gold_reward(PROMPT, completion, stopped=False))


@pytest.mark.parametrize(
    "prompt,completion",
    [
        ("", ""),
        ("no colon here", " was clean ."),
        (PROMPT, ". . . , , : :"),
        (PROMPT, " the the the the"),
        (PROMPT, " was not very clean ."),
        (PROMPT, " was clean but"),
        (PROMPT, "\twas\nclean\u00e9 ."),
        ("hotel review : the", " was clean ."),
        (PROMPT, " was clean ." * 200),
    ],
)
def test_gold_reward_never_raises_and_stays_in_range(prompt, completion):
    for stopped in (True, False):
        value = gold_reward(prompt, completion, stopped)
        assert isinstance(value, float)
        assert -6.0 <= value <= 1.5


def test_a_prompt_without_a_subject_leaves_the_first_sentence_broken():
    # "was clean" has no subject: one sentence, broken -> -1.0
    assert _gold("no colon here", " was clean .") == pytest.approx(-1.0)


# --- the data -------------------------------------------------------------------------------------------


def test_same_seed_gives_identical_data_and_different_seeds_differ(default_data):
    assert build_task_data(SyntheticReviewsConfig(), seed=0) == default_data
    other = build_task_data(SyntheticReviewsConfig(), seed=1)
    assert other.sft != default_data.sft
    assert other.preferences != default_data.preferences
    assert other.eval != default_data.eval


def test_each_split_has_its_own_random_stream(default_data):
    # changing the SFT corpus's size must not reshuffle the preference pairs or the eval set
    smaller = build_task_data(SyntheticReviewsConfig(num_sft_examples=10), seed=0)
    assert smaller.sft == default_data.sft[:10]
    assert smaller.preferences == default_data.preferences
    assert smaller.eval == default_data.eval


def test_sample_review_is_a_pure_function_of_its_rng():
    first = [sample_review(random.Random(7), PROMPT) for _ in range(3)]
    assert first[0] == first[1] == first[2]
    with pytest.raises(ValueError, match="not a synthetic review prompt"):
        sample_review(random.Random(0), "tell me a joke")


def test_split_sizes_follow_the_config(default_data):
    config = SyntheticReviewsConfig()
    assert len(default_data.sft) == config.num_sft_examples
    assert len(default_data.preferences) == config.num_preference_pairs
    assert len(default_data.heldout_preferences) == config.num_heldout_pairs
    assert len(default_data.train_prompts) == config.num_train_prompts
    assert len(default_data.eval) == config.num_eval_prompts
    assert len({row["prompt"] for row in default_data.eval}) == config.num_eval_prompts


def test_rows_have_the_common_schema(default_data):
    assert all(set(row) == {"prompt", "completion"} for row in default_data.sft)
    for row in default_data.preferences + default_data.heldout_preferences:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["chosen"] != row["rejected"]
    assert all(set(row) == {"prompt", "reference"} for row in default_data.eval)
    assert all(isinstance(prompt, str) for prompt in default_data.train_prompts)

    completions = [row["completion"] for row in default_data.sft]
    completions += [row[key] for row in default_data.preferences for key in ("chosen", "rejected")]
    completions += [row["reference"] for row in default_data.eval]
    for completion in completions:
        assert isinstance(completion, str)
        assert completion.startswith(" ") and not completion.startswith("  ")
        assert not completion.endswith(" ")
        assert "  " not in completion
    prompts = {row["prompt"] for row in default_data.sft} | set(default_data.train_prompts)
    for prompt in prompts:
        topic, review, colon, determiner, _noun = prompt.split(" ")
        assert (review, colon, determiner) == ("review", ":", "the")
        assert prompt == prompt.strip()


def test_every_word_is_in_the_vocabulary(default_data):
    words = vocabulary()
    assert words == sorted(set(words))
    assert 150 <= len(words) <= 500
    known = set(words)
    unknown = {word for text in _all_texts(default_data) for word in text.split()} - known
    assert unknown == set()


def test_eval_prompts_are_disjoint_from_every_training_prompt(default_data):
    training_prompts = (
        {row["prompt"] for row in default_data.sft}
        | {row["prompt"] for row in default_data.preferences}
        | {row["prompt"] for row in default_data.heldout_preferences}
        | set(default_data.train_prompts)
    )
    eval_prompts = {row["prompt"] for row in default_data.eval}
    assert eval_prompts.isdisjoint(training_prompts)


# --- statistics, with margins ---------------------------------------------------------------------------


def test_sft_is_mediocre_and_references_are_clearly_better(default_data):
    sft_gold = [_gold(row["prompt"], row["completion"]) for row in default_data.sft]
    reference_gold = [_gold(row["prompt"], row["reference"]) for row in default_data.eval]
    sft_mean = statistics.mean(sft_gold)
    assert -0.5 <= sft_mean <= 0.5
    assert statistics.pstdev(sft_gold) > 0.5  # a spread, not one mediocre review repeated
    assert statistics.mean(reference_gold) >= sft_mean + 1.0
    assert max(sft_gold) >= 1.0  # the best achievable gold is within the grammar's reach


def test_sft_corpus_has_flaws_at_moderate_rates(default_data):
    breakdowns = [gold_reward_breakdown(row["prompt"], row["completion"], True) for row in default_data.sft]
    broken = statistics.mean(b["broken_grammar"] < 0 for b in breakdowns)
    repetitive = statistics.mean(b["repetition"] < 0 for b in breakdowns)
    assert 0.08 <= broken <= 0.18
    assert 0.06 <= repetitive <= 0.16


def _chosen_better_fraction(data: TaskData) -> float:
    return statistics.mean(
        _gold(row["prompt"], row["chosen"]) > _gold(row["prompt"], row["rejected"]) for row in data.preferences
    )


def test_preference_labels_follow_gold_with_bradley_terry_noise(default_data):
    noisy = _chosen_better_fraction(default_data)
    assert 0.6 <= noisy <= 0.95
    sharp = _chosen_better_fraction(build_task_data(SyntheticReviewsConfig(label_noise_scale=0.05), seed=0))
    assert sharp >= noisy + 0.05


@pytest.mark.parametrize(
    "field,value",
    [
        ("num_sft_examples", -1),
        ("num_eval_prompts", 0),
        ("reference_candidates", 0),
        ("label_noise_scale", 0.0),
    ],
)
def test_config_rejects_impossible_values(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticReviewsConfig(**{field: value})
