"""Pairwise judges: templates, both orders of a comparison, reading answers, and the hf backend on stand-in
judge models (tests/judge_models.py). The vllm and openai backends: tests/integration/test_judge_backends.py."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/judge_models.py, shared with integration
from judge_models import build_constant_judge, build_judge_tokenizer, build_varied_judge  # noqa: E402

from harness.config import JudgeConfig  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.judges.base import OrderVerdict, PairVerdict  # noqa: E402
from harness.judges.pairwise import (  # noqa: E402
    JudgeError,
    PairwiseJudge,
    answer_token_ids,
    label_logprobs,
    parse_answer,
    probability_verdict,
)
from harness.judges.templates import load_template  # noqa: E402

PROMPTS = ["the cat sat", "a dog ran on the mat", "big red", "happy", "it was very", "not good"]
CANDIDATES = ["good cat", "it was very bad and sad", "red", "not happy at all", "small", "the blue mat is good"]
OTHERS = ["bad dog", "the mat", "blue small red big", "very happy dog", "sad", "a"]
STOPPED = [True] * len(PROMPTS)

# A short template whose rendering is easy to write out by hand (see test_hf_judge_matches_hand_computed_oracle).
SHORT_TEMPLATE = """\
description: short
system: which is better
user: "{prompt} A {first} B {second} A or B"
answers: [A, B]
"""


@pytest.fixture(scope="module")
def judges(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("judges")
    return {
        "always_a": build_constant_judge(root / "always_a", "A"),
        "always_b": build_constant_judge(root / "always_b", "B"),
        "varied": build_varied_judge(root / "varied"),
    }


@pytest.fixture
def short_template(tmp_path) -> Path:
    path = tmp_path / "short.yaml"
    path.write_text(SHORT_TEMPLATE)
    return path


def hf_judge(folder: Path, template: str = "generic", batch_size: int = 16):
    from harness.judges.open import open_judge

    return open_judge(
        JudgeConfig(kind="model", model=str(folder), backend="hf", template=template, batch_size=batch_size),
        folder,
        "cpu",
    )


# --- templates -----------------------------------------------------------------------------------------------


def test_shipped_templates_load_and_render_every_placeholder():
    for name in ("generic", "tldr", "hh"):
        template = load_template(name)
        assert template.answers == ("A", "B") and template.description and template.system
        *system, user = template.messages("PROMPT-TEXT", "FIRST-TEXT", "SECOND-TEXT")
        assert system == [{"role": "system", "content": template.system}]
        assert user["role"] == "user" and "{" not in user["content"]
        content = user["content"]
        assert content.index("PROMPT-TEXT") < content.index("FIRST-TEXT") < content.index("SECOND-TEXT")


def test_rendering_is_one_pass_and_a_missing_system_gives_no_system_message(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text('user: "Q: {prompt} | 1: {first} | 2: {second}"\nanswers: [first, second]\n')
    template = load_template(str(path))
    # A prompt that itself contains "{second}" stays as written: placeholders are filled in one pass.
    assert template.messages("why {second}?", "x {prompt}", "y") == [
        {"role": "user", "content": "Q: why {second}? | 1: x {prompt} | 2: y"}
    ]
    assert template.answers == ("first", "second")


@pytest.mark.parametrize(
    "text, problem",
    [
        ('user: "{prompt} {first}"\nanswers: [A, B]\n', "lacks the placeholder(s) {second}"),
        ('user: "{prompt} {first} {second}"\nanswers: [A, A]\n', "two distinct labels"),
        ('user: "{prompt} {first} {second}"\nanswers: [A]\n', "two non-empty labels"),
        ('user: "{prompt} {first} {second}"\nanswers: [A, " "]\n', "two non-empty labels"),
        ('user: "{prompt} {first} {second}"\nanswers: A\n', "two non-empty labels"),
        ('user: "{prompt} {first} {second}"\nanswers: [A, B]\nanswer: [A, B]\n', "unknown key(s) answer"),
        ('user: "{prompt} {first} {second} {reference}"\nanswers: [A, B]\n', "unknown placeholder(s) {reference}"),
        (
            'system: "judge {prompt}"\nuser: "{prompt} {first} {second}"\nanswers: [A, B]\n',
            "'system' has a placeholder",
        ),
        ("answers: [A, B]\n", "has no 'user' message"),
        ("- just a list\n", "must be a mapping"),
        ('user: "{prompt}\n', "cannot be read"),
    ],
)
def test_a_bad_template_is_a_one_line_error_naming_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad_template.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_template(str(path))
    message = str(raised.value)
    assert "\n" not in message and "bad_template.yaml" in message and problem in message, message


def test_an_unknown_template_name_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"'tdlr' is neither a known template \(.*tldr.*\) nor a file"):
        load_template("tdlr")


# --- both orders and their verdicts ------------------------------------------------------------------------------


def test_pair_verdicts_from_hand_made_orders():
    def pair(first: float | None, second: float | None) -> PairVerdict:
        return PairVerdict(OrderVerdict(first, "1"), OrderVerdict(second, "2"))

    # (candidate-first P(first better), candidate-second P(first better)) -> points, P(candidate), agree, unparseable
    cases = [
        ((0.9, 0.2), 1.0, 0.85, True, 0),  # candidate preferred in both orders
        ((0.3, 0.6), 0.0, 0.35, True, 0),  # the other answer preferred in both orders
        ((0.9, 0.8), 0.5, 0.55, False, 0),  # "A" both times: position bias, a tie
        ((0.1, 0.1), 0.5, 0.5, False, 0),  # "B" both times
        ((1.0, 0.0), 1.0, 1.0, True, 0),  # text verdicts
        ((0.5, 0.5), 0.5, 0.5, True, 0),  # an exact tie in both orders agrees with itself
        ((None, 0.0), 0.5, None, False, 1),  # one order unparseable: a tie, counted
        ((None, None), 0.5, None, False, 2),
    ]
    for (first, second), points, probability, agree, unparseable in cases:
        verdict = pair(first, second)
        assert verdict.points == points, (first, second)
        assert verdict.orders_agree is agree, (first, second)
        assert verdict.unparseable == unparseable, (first, second)
        if probability is None:
            assert verdict.candidate_probability is None
        else:
            assert verdict.candidate_probability == pytest.approx(probability)


class ContainsWordJudge(PairwiseJudge):
    """A rule judge: the answer containing "good" is better; neither or both is no answer. It records what
    it was shown, so the test can see which answer went first in each order."""

    def __init__(self):
        self.shown: list[tuple[str, str, str]] = []

    def judge_orders(self, orders):
        self.shown.extend(orders)
        verdicts = []
        for _, first, second in orders:
            first_good, second_good = "good" in first.split(), "good" in second.split()
            answer = 1.0 if first_good and not second_good else 0.0 if second_good and not first_good else None
            verdicts.append(OrderVerdict(answer, f"{first} / {second}"))
        return verdicts


def test_compare_asks_both_orders_and_pairs_them_back_to_their_comparison():
    judge = ContainsWordJudge()
    verdicts = judge.compare(["p0", "p1", "p2"], ["good x", "x", "x"], ["y", "good y", "y"], [True] * 3, [False] * 3)
    assert judge.shown == [
        ("p0", "good x", "y"),
        ("p1", "x", "good y"),
        ("p2", "x", "y"),
        ("p0", "y", "good x"),
        ("p1", "good y", "x"),
        ("p2", "y", "x"),
    ]
    assert [v.candidate_first.raw for v in verdicts] == ["good x / y", "x / good y", "x / y"]
    assert [v.candidate_second.raw for v in verdicts] == ["y / good x", "good y / x", "y / x"]
    assert [v.points for v in verdicts] == [1.0, 0.0, 0.5]
    assert [v.orders_agree for v in verdicts] == [True, True, False]
    assert [v.unparseable for v in verdicts] == [0, 0, 2]
    assert judge.compare([], [], [], [], []) == []
    with pytest.raises(ValueError, match="lists of one length"):
        judge.compare(["p"], ["a", "b"], ["c"], [True], [True])


# --- reading answers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, answer",
    [
        ("A", 0),
        ("B", 1),
        ("B.", 1),
        (" A\n", 0),
        ("**B**", 1),
        ("`A`", 0),
        ("[[B]]", 1),
        ("Answer: A", 0),
        ("Preferred: B - it is shorter", 1),
        ("A is better", 0),
        ("**Answer:** B", 1),
        ("A: the first one", 0),
        ("I cannot decide", None),
        ("", None),
        ("a", None),
        ("Summary A", None),
        ("AB", None),
        ("Both", None),
        ("The answer is B", None),
    ],
)
def test_parse_answer(text, answer):
    assert parse_answer(text, ("A", "B")) == answer


def test_parse_answer_with_longer_labels():
    labels = ("Summary 1", "Summary 2")
    assert parse_answer("Summary 2", labels) == 1
    assert parse_answer("Better: Summary 1.", labels) == 0
    assert parse_answer("Summary 12", labels) is None
    assert parse_answer("A+", ("A", "A+")) == 1  # one label begins the other: the longer one is meant


def test_probability_verdict_renormalises_over_the_two_labels():
    verdict = probability_verdict(math.log(0.3), math.log(0.1), ("A", "B"), "A")
    assert verdict.first_better == pytest.approx(0.75)
    assert verdict.raw.startswith("A=-1.20397 B=-2.30259") and verdict.raw.endswith("| A")
    assert probability_verdict(-5.0, -5.0, ("A", "B")).first_better == 0.5
    assert probability_verdict(-math.inf, -2.0, ("A", "B")).first_better == 0.0
    assert probability_verdict(-math.inf, -math.inf, ("A", "B")) is None
    assert probability_verdict(-1000.0, -0.001, ("A", "B")).first_better == pytest.approx(0.0, abs=1e-300)


def test_label_logprobs_from_an_apis_top_tokens():
    top = [("A", math.log(0.5)), (" A", math.log(0.1)), ("B", math.log(0.2)), ("**", math.log(0.1)), (" ", -1.0)]
    first, second = label_logprobs(top, ("A", "B"))
    assert math.exp(first) == pytest.approx(0.6) and math.exp(second) == pytest.approx(0.2)
    assert label_logprobs([("A", -0.1), ("C", -3.0)], ("A", "B")) is None  # B is not among them
    # "Summary" starts both labels and counts for neither; "1" and " 2" tell them apart.
    assert label_logprobs([("Summary", -0.01), ("1", -5.0)], ("Summary 1", "Summary 2")) is None


def test_answer_labels_must_be_distinct_known_tokens():
    tokenizer = build_judge_tokenizer()
    assert answer_token_ids(tokenizer, ("A", "B"), "x") == tuple(tokenizer.convert_tokens_to_ids(["A", "B"]))
    with pytest.raises(ValueError, match="label 'Zebra' is not a token of the tokenizer of x"):
        answer_token_ids(tokenizer, ("A", "Zebra"), "x")
    with pytest.raises(ValueError, match="start with the same token"):
        answer_token_ids(tokenizer, ("A", "A B"), "x")


# --- the hf backend on stand-in judges ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["always_a", "always_b"])
def test_a_judge_that_always_answers_one_label_gives_exactly_one_half(judges, name):
    verdicts = hf_judge(judges[name]).compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)
    expected_first_better = 1.0 if name == "always_a" else 0.0
    for verdict in verdicts:
        assert verdict.candidate_first.first_better == pytest.approx(expected_first_better, abs=1e-8)
        assert verdict.candidate_second.first_better == pytest.approx(expected_first_better, abs=1e-8)
        assert verdict.points == 0.5 and not verdict.orders_agree and verdict.unparseable == 0
        assert verdict.candidate_probability == pytest.approx(0.5)


def test_hf_judge_matches_hand_computed_oracle(judges, short_template):
    """first_better = softmax over the next token, P(A) / (P(A) + P(B)), of one unpadded forward pass on the
    ChatML text written out here by hand."""
    import torch

    from harness.modeling import auto_tokenizer, load_causal_lm

    verdicts = hf_judge(judges["varied"], str(short_template)).compare(
        PROMPTS[:2], CANDIDATES[:2], OTHERS[:2], STOPPED[:2], STOPPED[:2]
    )
    tokenizer, model = auto_tokenizer(judges["varied"]), load_causal_lm(judges["varied"])
    a, b = tokenizer.convert_tokens_to_ids(["A", "B"])
    for index, verdict in enumerate(verdicts):
        for order, (first, second) in zip(
            (verdict.candidate_first, verdict.candidate_second),
            ((CANDIDATES[index], OTHERS[index]), (OTHERS[index], CANDIDATES[index])),
        ):
            text = (
                "<|im_start|>system\nwhich is better<|im_end|>\n"
                f"<|im_start|>user\n{PROMPTS[index]} A {first} B {second} A or B<|im_end|>\n"
                "<|im_start|>assistant\n"
            )
            ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
            with torch.no_grad():
                probabilities = torch.softmax(model(input_ids=ids).logits[0, -1], dim=-1)
            expected = float(probabilities[a] / (probabilities[a] + probabilities[b]))
            assert order.first_better == pytest.approx(expected, abs=1e-6)
            logprob_a = float(torch.log(probabilities[a]))
            assert order.raw.startswith(f"A={logprob_a:.6g}"[:8])


def test_padding_and_batching_cannot_change_an_answer(judges):
    """Comparisons of mixed lengths in one batch give the probabilities each gives alone."""
    batched = hf_judge(judges["varied"], batch_size=16).compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)
    alone = hf_judge(judges["varied"], batch_size=1).compare(PROMPTS, CANDIDATES, OTHERS, STOPPED, STOPPED)
    together = [v.candidate_first.first_better for v in batched] + [v.candidate_second.first_better for v in batched]
    single = [v.candidate_first.first_better for v in alone] + [v.candidate_second.first_better for v in alone]
    assert together == pytest.approx(single, abs=1e-5)
    assert max(together) - min(together) > 0.3  # the judge does read its input: the check has teeth


def test_open_judge_picks_the_backend(judges, monkeypatch):
    from harness.judges.hf import HFJudge
    from harness.judges.open import open_judge
    from harness.judges.openai import OpenAIJudge

    trained = JudgeConfig(kind="trained", backend="vllm", template="tldr")
    assert isinstance(open_judge(trained, judges["always_a"], "cpu"), HFJudge)  # trained judges always use hf
    monkeypatch.setenv("HARNESS_TEST_JUDGE_KEY", "secret")
    remote = JudgeConfig(
        kind="model",
        model="gpt-x",
        backend="openai",
        base_url="http://127.0.0.1:9/v1",
        api_key_env="HARNESS_TEST_JUDGE_KEY",
    )
    judge = open_judge(remote, "gpt-x", "cpu")  # opening sends nothing
    assert isinstance(judge, OpenAIJudge) and judge.url == "http://127.0.0.1:9/v1/chat/completions"
    monkeypatch.delenv("HARNESS_TEST_JUDGE_KEY")
    with pytest.raises(JudgeError, match="environment variable HARNESS_TEST_JUDGE_KEY, which is not set"):
        open_judge(remote, "gpt-x", "cpu")
    with pytest.raises(ValueError, match="not judge.kind gold"):
        open_judge(JudgeConfig(kind="gold"), "", "cpu")


def test_vllm_verdicts_from_worker_outputs(judges):
    """The vllm backend's reading of what its worker returns (the engine itself: integration tests): both
    labels among the answer token's top log-probabilities -> their probabilities; otherwise the generated
    text."""
    from harness.judges.vllm import VLLMJudge

    judge = VLLMJudge(str(judges["always_a"]), load_template("generic"), 16, 8, "cpu")
    tokenizer = judge.tokenizer
    a, b = tokenizer.convert_tokens_to_ids(["A", "B"])
    eos = tokenizer.eos_token_id
    both = judge._verdict(
        {"token_ids": [b, eos], "top_logprobs": [{str(a): math.log(0.2), str(b): math.log(0.6)}, {str(eos): 0.0}]}
    )
    assert both.first_better == pytest.approx(0.25) and both.raw.endswith("| B")
    only_b = judge._verdict({"token_ids": [b, a], "top_logprobs": [{str(b): -0.1}, {str(a): -0.1}]})
    assert only_b == OrderVerdict(0.0, "B A")
    unknown = tokenizer.convert_tokens_to_ids("cat")
    neither = judge._verdict({"token_ids": [unknown, eos, a], "top_logprobs": [{str(unknown): -0.1}] * 3})
    assert neither == OrderVerdict(None, "cat")


def test_vllm_reads_the_label_probabilities_at_the_answer_token_not_the_first_token(judges):
    """Issue 20, finding 3: the reply "**B**" whose first token's top log-probabilities are {"**": -0.05,
    "A": -3.2, "B": -4.1} was scored from that first token, as preferring A (0.711). The answer is the "B":
    at its position, B -0.02 against A -4.0 gives P(A) = 1 / (1 + e^3.98) by hand."""
    from harness.judges.vllm import VLLMJudge

    judge = VLLMJudge(str(judges["always_a"]), load_template("generic"), 16, 8, "cpu")
    stars, a, b = judge.tokenizer.convert_tokens_to_ids(["**", "A", "B"])
    eos = judge.tokenizer.eos_token_id
    output = {
        "token_ids": [stars, b, stars, eos],
        "top_logprobs": [
            {str(stars): -0.05, str(a): -3.2, str(b): -4.1},
            {str(b): -0.02, str(a): -4.0},
            {str(stars): -0.01},
            {str(eos): -0.001},
        ],
    }
    verdict = judge._verdict(output)
    assert verdict.first_better == pytest.approx(1 / (1 + math.exp(3.98)))
    assert verdict.first_better < 0.5 and verdict.raw.endswith("| ** B **")
    # The answer token's alternatives lack A: the text decides, B.
    output["top_logprobs"][1] = {str(b): -0.02}
    assert judge._verdict(output) == OrderVerdict(0.0, "** B **")
    # No label anywhere in the reply: unparseable, whatever the first token's alternatives say.
    cat = judge.tokenizer.convert_tokens_to_ids("cat")
    nothing = judge._verdict(
        {
            "token_ids": [stars, cat, eos],
            "top_logprobs": [
                {str(stars): -0.05, str(a): -3.2, str(b): -4.1},
                {str(cat): -0.1, str(a): -3.0, str(b): -3.5},
                {str(eos): 0.0},
            ],
        }
    )
    assert nothing.first_better is None


@pytest.mark.parametrize(
    "tokens, position",
    [
        (["**", "B", "**"], 1),
        (["A"], 0),
        (["Answer", ":", " A"], 2),
        (["I", " cannot", " decide", " between", " A", " and", " B"], None),  # labels, but no answer
        (["**", "cat", "**"], None),
        ([" **B", "**"], 0),
    ],
)
def test_answer_position(tokens, position):
    from harness.judges.pairwise import answer_position

    assert answer_position(tokens, ("A", "B")) == position


def test_reply_verdict_reads_the_answer_tokens_alternatives():
    from harness.judges.pairwise import reply_verdict

    first = [("**", -0.05), ("A", -3.2), ("B", -4.1)]
    answer = [("B", -0.1), (" A", math.log(0.1)), ("A", math.log(0.2))]  # " A" and "A" both stand for A
    verdict = reply_verdict(["**", "B", "**"], [first, answer, []], "**B**", ("A", "B"))
    assert verdict.first_better == pytest.approx(0.3 / (0.3 + math.exp(-0.1)))
    assert reply_verdict(
        ["I", " cannot", " decide"], [first, first, first], "I cannot decide", ("A", "B")
    ) == OrderVerdict(None, "I cannot decide")
    assert reply_verdict([], [], "B", ("A", "B")) == OrderVerdict(0.0, "B")  # no log-probabilities: the text
