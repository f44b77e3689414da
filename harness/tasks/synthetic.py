"""The embedded synthetic task: short reviews written by a grammar and scored by an exact gold reward.

The world
---------
A prompt names a topic and the subject of the first sentence, for example ``"hotel review : the room"``.
The completion finishes that sentence and may add more: ``" was very clean . i loved the breakfast ."``.
Every text is lowercase words separated by single spaces; ``.``, ``,`` and ``:`` are words of their own,
so a whitespace tokenizer built from :func:`vocabulary` covers every text the grammar writes. A
completion starts with one space and never ends with one; the end-of-sequence token is not part of the
text (``stopped`` says whether the model emitted it).

The grammar (every sentence ends with ``.``)::

    sentence          := clause ( [","] ("but" | "and") clause )*
    clause            := subject copula adjective_phrase | person verb object
    subject, object   := "the" NOUN | "it"
    adjective_phrase  := ["very" | "really" | "extremely"] ADJECTIVE | "not" ADJECTIVE
    person            := "i" | "we"

The gold reward
---------------
The review is the prompt's subject (the words after ``:``) followed by the completion. Its gold reward is
the sum of these terms (:func:`gold_reward_breakdown` returns them one by one):

* ``sentiment``: a clause's polarity is its adjective's or verb's lexicon value (+1, -1 or 0), times 1.5
  after an intensifier, negated after "not"; a grammatical sentence's polarity is the sum of its clauses
  (so "clean but rude" is 0), clipped to [-1.5, 1.5]; the term is the mean over grammatical sentences, so
  repeating a good sentence or piling up clauses cannot raise it past 1.5;
* ``broken_grammar``: -1.0 x the fraction of sentences that do not parse (an unknown word, a missing or
  doubled word, a last sentence without its full stop);
* ``repetition``: -0.5 x the fraction of sentences that repeat an earlier sentence or reuse an adjective
  the review already used;
* ``missing_stop``: -1.0 when the model did not emit the end-of-sequence token;
* ``too_long``: -0.5 per sentence beyond four, at most -1.5;
* ``empty``: -2.0 for a completion with no words (the other terms are then 0, except ``missing_stop``).

A fluent, positive, varied review of one to four sentences that stops scores between 1.0 and 1.5;
texts a model can plausibly write score between about -3 and 1.5.

The data
--------
The SFT corpus samples each review's mood uniformly from positive, negative, mixed and neutral and adds
realistic flaws (a broken sentence in about 12% of reviews, a repeated sentence or adjective in about 10%),
so its mean gold reward is near 0 and a policy that imitates it is mediocre. Preference pairs are two
independent SFT samples for one prompt, labelled with Bradley-Terry noise on the gold reward. The
reference for an evaluation prompt is the best of K grammar samples by gold reward. Training prompts
(SFT, preference, online) and evaluation prompts come from disjoint sets of (topic, noun) combinations.
Everything is a pure function of the seed; this module imports neither torch nor transformers.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from harness.errors import require
from harness.tasks.common import TaskData

# ---------------------------------------------------------------------------------------------------------
# The lexicon
# ---------------------------------------------------------------------------------------------------------

# Nouns are singular so that "the X was ..." is always grammatical; a noun may belong to several topics.
TOPIC_NOUNS: dict[str, tuple[str, ...]] = {
    "restaurant": (
        "food",
        "service",
        "waiter",
        "menu",
        "dessert",
        "soup",
        "steak",
        "table",
        "wine",
        "bread",
        "pasta",
        "salad",
        "kitchen",
        "price",
        "atmosphere",
        "music",
    ),
    "hotel": (
        "room",
        "bed",
        "staff",
        "lobby",
        "breakfast",
        "pool",
        "view",
        "shower",
        "location",
        "reception",
        "carpet",
        "balcony",
        "gym",
        "elevator",
        "price",
        "service",
    ),
    "movie": (
        "plot",
        "ending",
        "acting",
        "soundtrack",
        "villain",
        "hero",
        "script",
        "pacing",
        "dialogue",
        "cinematography",
        "cast",
        "director",
        "sequel",
        "trailer",
        "music",
        "atmosphere",
    ),
    "phone": (
        "screen",
        "battery",
        "camera",
        "speaker",
        "charger",
        "case",
        "keyboard",
        "software",
        "display",
        "price",
        "design",
        "microphone",
        "button",
        "signal",
        "app",
        "storage",
    ),
    "book": (
        "plot",
        "ending",
        "author",
        "chapter",
        "cover",
        "prose",
        "character",
        "narrator",
        "translation",
        "story",
        "dialogue",
        "pacing",
        "illustration",
        "index",
        "glossary",
        "sequel",
    ),
    "laptop": (
        "screen",
        "battery",
        "keyboard",
        "trackpad",
        "fan",
        "charger",
        "display",
        "hinge",
        "speaker",
        "webcam",
        "software",
        "design",
        "price",
        "port",
        "processor",
        "storage",
    ),
    "cafe": (
        "coffee",
        "latte",
        "barista",
        "pastry",
        "croissant",
        "tea",
        "muffin",
        "sandwich",
        "table",
        "music",
        "service",
        "price",
        "atmosphere",
        "terrace",
        "espresso",
        "cake",
    ),
    "game": (
        "artwork",
        "story",
        "gameplay",
        "soundtrack",
        "level",
        "boss",
        "character",
        "multiplayer",
        "map",
        "ending",
        "tutorial",
        "puzzle",
        "interface",
        "price",
        "music",
        "pacing",
    ),
    "gym": (
        "equipment",
        "trainer",
        "locker",
        "shower",
        "pool",
        "class",
        "music",
        "staff",
        "price",
        "sauna",
        "treadmill",
        "schedule",
        "membership",
        "towel",
        "mat",
        "parking",
    ),
    "car": (
        "engine",
        "seat",
        "dashboard",
        "brake",
        "steering",
        "mileage",
        "trunk",
        "radio",
        "interior",
        "paint",
        "tire",
        "price",
        "design",
        "heater",
        "mirror",
        "gearbox",
    ),
}
NOUNS: frozenset[str] = frozenset(noun for nouns in TOPIC_NOUNS.values() for noun in nouns)

POSITIVE_ADJECTIVES = (
    "clean",
    "friendly",
    "great",
    "excellent",
    "delicious",
    "comfortable",
    "fast",
    "quiet",
    "lovely",
    "helpful",
    "perfect",
    "fresh",
    "beautiful",
    "reliable",
    "bright",
    "smooth",
    "cozy",
    "charming",
    "brilliant",
    "wonderful",
    "pleasant",
    "superb",
)
NEGATIVE_ADJECTIVES = (
    "dirty",
    "rude",
    "terrible",
    "awful",
    "slow",
    "noisy",
    "bland",
    "broken",
    "boring",
    "cramped",
    "stale",
    "overpriced",
    "dull",
    "greasy",
    "flimsy",
    "buggy",
    "confusing",
    "disappointing",
    "horrible",
    "unpleasant",
    "weak",
    "poor",
)
NEUTRAL_ADJECTIVES = (
    "okay",
    "average",
    "ordinary",
    "standard",
    "typical",
    "small",
    "large",
    "new",
    "simple",
    "plain",
    "normal",
    "basic",
)
ADJECTIVE_POLARITY: dict[str, int] = {
    **{word: 1 for word in POSITIVE_ADJECTIVES},
    **{word: -1 for word in NEGATIVE_ADJECTIVES},
    **{word: 0 for word in NEUTRAL_ADJECTIVES},
}

POSITIVE_VERBS = ("loved", "liked", "enjoyed", "adored", "appreciated", "praised")
NEGATIVE_VERBS = ("hated", "disliked", "regretted", "despised", "loathed", "avoided")
NEUTRAL_VERBS = ("tried", "noticed", "used", "ordered", "checked", "saw")
VERB_POLARITY: dict[str, int] = {
    **{word: 1 for word in POSITIVE_VERBS},
    **{word: -1 for word in NEGATIVE_VERBS},
    **{word: 0 for word in NEUTRAL_VERBS},
}

COPULAS = ("was", "is", "seemed", "felt", "looked")
INTENSIFIERS = ("very", "really", "extremely")
PERSONS = ("i", "we")
CONNECTIVES = ("but", "and")
PRONOUN = "it"
DETERMINER = "the"
NEGATION = "not"
FULL_STOP, COMMA, COLON = ".", ",", ":"
PROMPT_WORD = "review"

# ---------------------------------------------------------------------------------------------------------
# The gold reward's constants
# ---------------------------------------------------------------------------------------------------------

INTENSIFIER_SCALE = 1.5
SENTENCE_POLARITY_LIMIT = 1.5  # piling "and" clauses onto a sentence cannot push it further
BROKEN_GRAMMAR_WEIGHT = 1.0  # per unit fraction of sentences that do not parse
REPETITION_WEIGHT = 0.5  # per unit fraction of sentences that repeat a sentence or an adjective
MISSING_STOP_PENALTY = -1.0
GOLD_MAX_SENTENCES = 4  # the gold reward's length limit; equal to the default grammar's longest review
TOO_LONG_PENALTY_PER_SENTENCE = -0.5
TOO_LONG_PENALTY_FLOOR = -1.5
EMPTY_COMPLETION_VALUE = -2.0

# ---------------------------------------------------------------------------------------------------------
# The SFT distribution's rates (chosen so that its mean gold is near 0 with a spread)
# ---------------------------------------------------------------------------------------------------------

DEFAULT_MAX_SENTENCES = 4
MOODS = ("positive", "negative", "mixed", "neutral")
COMPOUND_SENTENCE_RATE = 0.3  # a sentence with two clauses joined by "and" (or "but" when mixed)
COMMA_BEFORE_CONNECTIVE_RATE = 0.5
VERB_CLAUSE_RATE = 0.3  # "i loved the X" instead of "the X was great" (never the prompt's own clause)
PRONOUN_RATE = 0.2  # "it" instead of "the X"
INTENSIFIER_RATE = 0.35
NEGATION_RATE = 0.1  # "not dirty" for a positive clause, "not clean" for a negative one
BROKEN_SENTENCE_RATE = 0.12
REPETITION_RATE = 0.10


# The gold reward is exact: the grammar and lexicon that generated the data also judge it.
HAS_GOLD_REWARD = True


@dataclass
class SyntheticReviewsConfig:
    num_sft_examples: int = 3000
    # (prompt, completion) pairs in the SFT corpus
    num_preference_pairs: int = 2000
    # (prompt, chosen, rejected) pairs for the reward model and DPO
    num_heldout_pairs: int = 300
    # pairs kept out of reward-model training, for its held-out accuracy
    num_train_prompts: int = 512
    # prompts for the online algorithms (GRPO, PPO); they may repeat
    num_eval_prompts: int = 64
    # held-out prompts, never in any training split; distinct up to half of the (topic, noun) combinations
    reference_candidates: int = 16
    # K grammar samples per eval prompt; the best by gold reward is the BLEU/ROUGE reference
    label_noise_scale: float = 0.5
    # Bradley-Terry temperature in gold units: P(a preferred to b) = sigmoid((gold_a - gold_b) / scale)
    max_sentences: int = DEFAULT_MAX_SENTENCES
    # the grammar writes 1..max_sentences sentences per review (the gold reward penalises more than 4)

    def __post_init__(self) -> None:
        # Every split feeds a stage (SFT, reward model, DPO, GRPO, evaluation): an empty one is refused here,
        # before anything runs, rather than failing minutes later inside a trainer.
        for name in (
            "num_sft_examples",
            "num_preference_pairs",
            "num_heldout_pairs",
            "num_train_prompts",
            "num_eval_prompts",
            "reference_candidates",
            "max_sentences",
        ):
            require(getattr(self, name) >= 1, name, f"must be >= 1, got {getattr(self, name)}")
        require(self.label_noise_scale > 0, "label_noise_scale", f"must be > 0, got {self.label_noise_scale}")


# The registry loads every task module's `Config`.
Config = SyntheticReviewsConfig


def vocabulary() -> list[str]:
    """Every word a prompt or a grammar sample can contain, sorted and without duplicates."""
    words = {FULL_STOP, COMMA, COLON, PROMPT_WORD, DETERMINER, PRONOUN, NEGATION}
    words.update(TOPIC_NOUNS, NOUNS, ADJECTIVE_POLARITY, VERB_POLARITY)
    words.update(COPULAS, INTENSIFIERS, PERSONS, CONNECTIVES)
    return sorted(words)


# ---------------------------------------------------------------------------------------------------------
# Parsing and the gold reward
# ---------------------------------------------------------------------------------------------------------


def _parse_noun_phrase(words: list[str], position: int) -> int | None:
    """Position after "the NOUN" or "it" starting at `position`, or None."""
    if position < len(words) and words[position] == PRONOUN:
        return position + 1
    if position + 1 < len(words) and words[position] == DETERMINER and words[position + 1] in NOUNS:
        return position + 2
    return None


def _parse_adjective_phrase(words: list[str], position: int) -> tuple[float, int] | None:
    if position >= len(words):
        return None
    modifier = words[position]
    if modifier in INTENSIFIERS or modifier == NEGATION:
        position += 1
    if position >= len(words) or words[position] not in ADJECTIVE_POLARITY:
        return None
    polarity = float(ADJECTIVE_POLARITY[words[position]])
    if modifier in INTENSIFIERS:
        polarity *= INTENSIFIER_SCALE
    elif modifier == NEGATION:
        polarity = -polarity
    return polarity, position + 1


def _parse_clause(words: list[str], position: int) -> tuple[float, int] | None:
    """(polarity, position after the clause) for a clause starting at `position`, or None."""
    if position < len(words) and words[position] in PERSONS:
        verb_position = position + 1
        if verb_position >= len(words) or words[verb_position] not in VERB_POLARITY:
            return None
        end = _parse_noun_phrase(words, verb_position + 1)
        if end is None:
            return None
        return float(VERB_POLARITY[words[verb_position]]), end
    after_subject = _parse_noun_phrase(words, position)
    if after_subject is None or after_subject >= len(words) or words[after_subject] not in COPULAS:
        return None
    return _parse_adjective_phrase(words, after_subject + 1)


def sentence_polarity(words: list[str]) -> float | None:
    """The clipped polarity of one sentence (its words, no full stop); None if it does not parse."""
    parsed = _parse_clause(words, 0)
    if parsed is None:
        return None
    total, position = parsed
    while position < len(words):
        if words[position] == COMMA:
            position += 1
        if position >= len(words) or words[position] not in CONNECTIVES:
            return None
        parsed = _parse_clause(words, position + 1)
        if parsed is None:
            return None
        polarity, position = parsed
        total += polarity  # "but" and "and" both add: "clean but rude" is neutral overall
    return max(-SENTENCE_POLARITY_LIMIT, min(SENTENCE_POLARITY_LIMIT, total))


def _prompt_subject(prompt: str) -> list[str]:
    """The words after the prompt's last ":" (the first sentence's subject); none if there is no ":"."""
    words = prompt.split()
    if COLON not in words:
        return []
    last_colon = len(words) - 1 - words[::-1].index(COLON)
    return words[last_colon + 1 :]


def _split_sentences(words: list[str]) -> list[tuple[list[str], bool]]:
    """(words, ended with a full stop) per sentence; an unfinished last sentence is kept, marked False."""
    sentences: list[tuple[list[str], bool]] = []
    current: list[str] = []
    for word in words:
        if word == FULL_STOP:
            sentences.append((current, True))
            current = []
        else:
            current.append(word)
    if current:
        sentences.append((current, False))
    return sentences


def _repetitive_sentence_count(sentences: list[list[str]]) -> int:
    """Sentences that repeat an earlier sentence or use an adjective the review already used."""
    seen_sentences: set[tuple[str, ...]] = set()
    seen_adjectives: set[str] = set()
    count = 0
    for words in sentences:
        repeats = tuple(words) in seen_sentences
        for word in words:
            if word in ADJECTIVE_POLARITY:
                repeats = repeats or word in seen_adjectives
                seen_adjectives.add(word)
        seen_sentences.add(tuple(words))
        count += repeats
    return count


def gold_reward_breakdown(prompt: str, completion: str, stopped: bool) -> dict[str, float]:
    """The gold reward's terms (see the module docstring); they sum to :func:`gold_reward`.

    Total on any strings: unknown words, garbage and empty text score low, never raise.
    """
    breakdown = {
        "sentiment": 0.0,
        "broken_grammar": 0.0,
        "repetition": 0.0,
        "missing_stop": 0.0 if stopped else MISSING_STOP_PENALTY,
        "too_long": 0.0,
        "empty": 0.0,
    }
    completion_words = completion.split()
    if not completion_words:
        breakdown["empty"] = EMPTY_COMPLETION_VALUE
        return breakdown

    sentences = _split_sentences(_prompt_subject(prompt) + completion_words)
    polarities = [sentence_polarity(words) if ended else None for words, ended in sentences]
    grammatical = [polarity for polarity in polarities if polarity is not None]
    sentence_count = len(sentences)

    if grammatical:
        breakdown["sentiment"] = sum(grammatical) / len(grammatical)
    broken_fraction = (sentence_count - len(grammatical)) / sentence_count
    breakdown["broken_grammar"] = -BROKEN_GRAMMAR_WEIGHT * broken_fraction
    repetitive_fraction = _repetitive_sentence_count([words for words, _ in sentences]) / sentence_count
    breakdown["repetition"] = -REPETITION_WEIGHT * repetitive_fraction
    extra_sentences = max(0, sentence_count - GOLD_MAX_SENTENCES)
    breakdown["too_long"] = max(TOO_LONG_PENALTY_FLOOR, TOO_LONG_PENALTY_PER_SENTENCE * extra_sentences)
    return breakdown


def gold_reward(prompt: str, completion: str, stopped: bool) -> float:
    """The exact gold reward of `completion` for `prompt`; `stopped` says whether the model emitted EOS."""
    return sum(gold_reward_breakdown(prompt, completion, stopped).values())


# ---------------------------------------------------------------------------------------------------------
# The grammar's sampler (the SFT distribution)
# ---------------------------------------------------------------------------------------------------------


def make_prompt(topic: str, noun: str) -> str:
    return f"{topic} {PROMPT_WORD} {COLON} {DETERMINER} {noun}"


def parse_prompt(prompt: str) -> tuple[str, str]:
    """(topic, noun) of a prompt made by :func:`make_prompt`; ValueError for anything else."""
    words = prompt.split()
    if (
        len(words) != 5
        or words[0] not in TOPIC_NOUNS
        or words[1:4] != [PROMPT_WORD, COLON, DETERMINER]
        or words[4] not in NOUNS
    ):
        raise ValueError(f"not a synthetic review prompt: {prompt!r}")
    return words[0], words[4]


class _ReviewWriter:
    """Writes one clean review; nouns and adjectives are drawn without replacement so it never repeats."""

    def __init__(self, rng: random.Random, topic: str, subject_noun: str):
        self.rng = rng
        self.unused_nouns = [noun for noun in TOPIC_NOUNS[topic] if noun != subject_noun]
        self.used_adjectives: set[str] = set()

    def noun_phrase(self) -> list[str]:
        if self.rng.random() < PRONOUN_RATE or not self.unused_nouns:
            return [PRONOUN]
        noun = self.unused_nouns.pop(self.rng.randrange(len(self.unused_nouns)))
        return [DETERMINER, noun]

    def adjective(self, polarity: int) -> str:
        same_polarity = [word for word, value in ADJECTIVE_POLARITY.items() if value == polarity]
        # Only a review longer than the lexicon allows runs out of fresh adjectives.
        candidates = [word for word in same_polarity if word not in self.used_adjectives] or same_polarity
        adjective = self.rng.choice(candidates)
        self.used_adjectives.add(adjective)
        return adjective

    def adjective_phrase(self, polarity: int) -> list[str]:
        if polarity != 0 and self.rng.random() < NEGATION_RATE:
            return [NEGATION, self.adjective(-polarity)]
        if self.rng.random() < INTENSIFIER_RATE:
            return [self.rng.choice(INTENSIFIERS), self.adjective(polarity)]
        return [self.adjective(polarity)]

    def clause(self, polarity: int, subject: list[str] | None) -> list[str]:
        """A clause of sign `polarity`; `subject` fixes a copular clause's subject (the prompt's noun)."""
        if subject is None and self.rng.random() < VERB_CLAUSE_RATE:
            verbs = [verb for verb, value in VERB_POLARITY.items() if value == polarity]
            return [self.rng.choice(PERSONS), self.rng.choice(verbs), *self.noun_phrase()]
        subject = subject if subject is not None else self.noun_phrase()
        return [*subject, self.rng.choice(COPULAS), *self.adjective_phrase(polarity)]

    def clause_polarities(self, mood: str) -> tuple[list[int], str]:
        """The signs of one sentence's clauses and the connective joining them."""
        compound = self.rng.random() < COMPOUND_SENTENCE_RATE
        if mood == "mixed":
            if compound:
                signs = [1, -1]
                self.rng.shuffle(signs)
                return signs, "but"
            return [self.rng.choice((1, -1))], "and"
        sign = {"positive": 1, "negative": -1, "neutral": 0}[mood]
        return ([sign, sign] if compound else [sign]), "and"

    def sentence(self, mood: str, subject: list[str] | None) -> list[str]:
        signs, connective = self.clause_polarities(mood)
        words = self.clause(signs[0], subject)
        for sign in signs[1:]:
            if self.rng.random() < COMMA_BEFORE_CONNECTIVE_RATE:
                words.append(COMMA)
            words.append(connective)
            words.extend(self.clause(sign, None))
        return words

    def review(self, mood: str, subject: list[str], sentence_count: int) -> list[list[str]]:
        sentences = [self.sentence(mood, subject)]
        while len(sentences) < sentence_count:
            candidate = self.sentence(mood, None)
            # "i loved it" can come out twice; a clean review never repeats a sentence.
            if candidate not in sentences:
                sentences.append(candidate)
        return sentences


def _break_sentence(rng: random.Random, words: list[str], protected: int) -> list[str]:
    """A version of the sentence that does not parse: words shuffled, one dropped or one doubled.

    The first `protected` words belong to the prompt, which a model cannot change, so they stay.
    """
    head, editable = words[:protected], words[protected:]
    for _ in range(8):
        edited = list(editable)
        operation = rng.choice(("shuffle", "drop", "double"))
        if operation == "shuffle":
            rng.shuffle(edited)
        elif operation == "drop" and edited:
            del edited[rng.randrange(len(edited))]
        elif edited:
            position = rng.randrange(len(edited))
            edited.insert(position, edited[position])
        if sentence_polarity(head + edited) is None:
            return head + edited
    # Every clause ends in a content word, so the sentence without its last word never parses.
    return head + editable[:-1]


def _adjective_positions(sentence: list[str]) -> list[int]:
    return [position for position, word in enumerate(sentence) if word in ADJECTIVE_POLARITY]


def _repeat_something(rng: random.Random, sentences: list[list[str]]) -> None:
    """Reuse an earlier adjective in a later sentence, or copy a sentence further down (in place)."""
    later_with_adjective = [
        index
        for index in range(1, len(sentences))
        if _adjective_positions(sentences[index])
        and any(_adjective_positions(sentence) for sentence in sentences[:index])
    ]
    if later_with_adjective and rng.random() < 0.5:
        index = rng.choice(later_with_adjective)
        earlier_adjectives = [word for sentence in sentences[:index] for word in sentence if word in ADJECTIVE_POLARITY]
        position = rng.choice(_adjective_positions(sentences[index]))
        sentences[index][position] = rng.choice(earlier_adjectives)
        return
    source = rng.randrange(len(sentences))
    sentences.insert(rng.randint(source + 1, len(sentences)), list(sentences[source]))


def _render_completion(sentences: list[list[str]], prompt_words: int) -> str:
    words = [word for sentence in sentences for word in (*sentence, FULL_STOP)]
    return " " + " ".join(words[prompt_words:])


def sample_review(rng: random.Random, prompt: str, max_sentences: int = DEFAULT_MAX_SENTENCES) -> str:
    """One completion for `prompt` from the SFT distribution: a uniform mood, 1..max_sentences sentences,
    and occasionally a broken sentence or a repetition (the flaws that keep imitation mediocre)."""
    topic, noun = parse_prompt(prompt)
    subject = [DETERMINER, noun]
    mood = rng.choice(MOODS)
    sentence_count = rng.randint(1, max_sentences)
    sentences = _ReviewWriter(rng, topic, noun).review(mood, subject, sentence_count)
    if rng.random() < REPETITION_RATE:
        _repeat_something(rng, sentences)
    if rng.random() < BROKEN_SENTENCE_RATE:
        index = rng.randrange(len(sentences))
        sentences[index] = _break_sentence(rng, sentences[index], len(subject) if index == 0 else 0)
    return _render_completion(sentences, len(subject))


# ---------------------------------------------------------------------------------------------------------
# The task data
# ---------------------------------------------------------------------------------------------------------


def _split_prompts(rng: random.Random, num_eval_prompts: int) -> tuple[list[str], list[str]]:
    """(training prompts, evaluation prompts): disjoint (topic, noun) combinations, at most half held out."""
    prompts = sorted({make_prompt(topic, noun) for topic, nouns in TOPIC_NOUNS.items() for noun in nouns})
    rng.shuffle(prompts)
    heldout_count = min(num_eval_prompts, len(prompts) // 2)
    return prompts[heldout_count:], prompts[:heldout_count]


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    exp_x = math.exp(x)  # this form never overflows for very negative x
    return exp_x / (1.0 + exp_x)


def _preference_pair(rng: random.Random, prompt: str, config: SyntheticReviewsConfig) -> dict:
    first = sample_review(rng, prompt, config.max_sentences)
    second = sample_review(rng, prompt, config.max_sentences)
    for _ in range(8):  # a pair of identical texts teaches nothing
        if second != first:
            break
        second = sample_review(rng, prompt, config.max_sentences)
    margin = gold_reward(prompt, first, True) - gold_reward(prompt, second, True)
    first_preferred = rng.random() < _sigmoid(margin / config.label_noise_scale)
    chosen, rejected = (first, second) if first_preferred else (second, first)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def _best_reference(rng: random.Random, prompt: str, config: SyntheticReviewsConfig) -> str:
    candidates = [sample_review(rng, prompt, config.max_sentences) for _ in range(config.reference_candidates)]
    return max(candidates, key=lambda completion: gold_reward(prompt, completion, True))


def build_task_data(config: SyntheticReviewsConfig, seed: int) -> TaskData:
    """All splits of the synthetic task, a pure function of (config, seed)."""

    # One independent stream per split (string seeds are hashed deterministically by `random`), so
    # changing one split's size leaves the other splits as they were.
    def stream(name: str) -> random.Random:
        return random.Random(f"synthetic-reviews:{seed}:{name}")

    train_prompts_pool, eval_prompts_pool = _split_prompts(stream("split"), config.num_eval_prompts)

    sft_rng = stream("sft")
    sft = []
    for _ in range(config.num_sft_examples):
        prompt = sft_rng.choice(train_prompts_pool)
        sft.append({"prompt": prompt, "completion": sample_review(sft_rng, prompt, config.max_sentences)})

    preference_rng = stream("preferences")
    preferences = [
        _preference_pair(preference_rng, preference_rng.choice(train_prompts_pool), config)
        for _ in range(config.num_preference_pairs)
    ]
    heldout_rng = stream("heldout-preferences")
    heldout_preferences = [
        _preference_pair(heldout_rng, heldout_rng.choice(train_prompts_pool), config)
        for _ in range(config.num_heldout_pairs)
    ]

    online_rng = stream("train-prompts")
    train_prompts = [online_rng.choice(train_prompts_pool) for _ in range(config.num_train_prompts)]

    # Distinct eval prompts first; cycle through them only if more are asked for than are held out.
    eval_rng = stream("eval")
    eval_rows = []
    for index in range(config.num_eval_prompts):
        prompt = eval_prompts_pool[index % len(eval_prompts_pool)]
        eval_rows.append({"prompt": prompt, "reference": _best_reference(eval_rng, prompt, config)})

    return TaskData(
        sft=sft,
        preferences=preferences,
        heldout_preferences=heldout_preferences,
        train_prompts=train_prompts,
        eval=eval_rows,
    )
