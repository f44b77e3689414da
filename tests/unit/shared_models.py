"""The tiny models the unit tests that train or evaluate share (the `tiny_models` fixture in conftest.py), and
their vocabulary. A module of its own because both test folders have a conftest.py: `from conftest import`
would find whichever was imported first."""

from __future__ import annotations

from pathlib import Path

# The vocabulary of the tiny models; prompts are drawn from the first eight words.
WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "good", "x", "y", "z", "q"]


def build_tiny_models(root: Path) -> Path:
    """`root/base` (a 2-layer, 32-wide causal LM over WORDS, seed 0) and `root/reward_model` (a sequence
    classifier with one label, initialised from base with torch seed 0)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    from harness.config import ModelConfig
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint

    tokenizer = build_word_tokenizer(WORDS, max_length=64)
    tiny = ModelConfig(n_embd=32, n_layer=2, n_head=4, max_positions=64)
    save_checkpoint(build_tiny_causal_lm(tiny, tokenizer, seed=0), tokenizer, root / "base")
    torch.manual_seed(0)
    reward_model = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    save_checkpoint(reward_model, tokenizer, root / "reward_model")
    return root
