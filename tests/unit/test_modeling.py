"""Built stand-in models and tokenizers survive the save and reload every stage does."""

from __future__ import annotations

import pytest

from harness.config import ModelConfig
from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, load_tokenizer, save_checkpoint

WORDS = ["the", "cat", "sat", "on", "mat", "user"]
TEXT = "<|im_start|>user\nthe cat sat<|im_end|>"


@pytest.mark.parametrize("chatml", [False, True])
@pytest.mark.parametrize("architecture", ["gpt2", "gpt_neox", "qwen2", "llama"])
def test_a_saved_word_tokenizer_reloads_as_itself_beside_any_model_family(architecture, chatml, tmp_path):
    # transformers 5 would rebuild it as the family's own class (Qwen2Tokenizer for qwen2), two unknowns for
    # "the cat sat"; harness.modeling.auto_tokenizer keeps the saved tokenizer.json as it is.
    tokenizer = build_word_tokenizer(WORDS, max_length=32, chatml=chatml)
    shape = ModelConfig(n_embd=32, n_layer=1, n_head=2, max_positions=32, architecture=architecture)
    model = build_tiny_causal_lm(shape, tokenizer, seed=0)
    assert model.config.model_type == architecture
    reloaded = load_tokenizer(save_checkpoint(model, tokenizer, tmp_path / architecture))
    for text in ("the cat sat on the mat", TEXT):
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert (reloaded.eos_token_id, reloaded.pad_token_id) == (tokenizer.eos_token_id, tokenizer.pad_token_id)
    assert bool(reloaded.chat_template) == chatml
    if chatml:
        assert reloaded.eos_token == "<|im_end|>"
        assert reloaded(TEXT)["input_ids"][0] == reloaded.convert_tokens_to_ids("<|im_start|>")
