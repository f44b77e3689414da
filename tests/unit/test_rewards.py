"""The training reward every online algorithm optimises (PPO.md §2.3, U4): the proxy reward model's score
minus the missing-stop penalty for a completion that did not stop, or the task's gold reward, which charges a
missing stop itself and so gets no second penalty."""

from __future__ import annotations

import types

import pytest

WORDS = ["a", "b", "c", "good", "bad"]


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    import torch
    from transformers import AutoModelForSequenceClassification

    from harness.config import ModelConfig
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint

    root = tmp_path_factory.mktemp("reward")
    tokenizer = build_word_tokenizer(WORDS, max_length=32)
    save_checkpoint(
        build_tiny_causal_lm(ModelConfig(n_embd=16, n_layer=1, n_head=2, max_positions=32), tokenizer, seed=0),
        tokenizer,
        root / "base",
    )
    torch.manual_seed(0)
    save_checkpoint(
        AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1), tokenizer, root / "rm"
    )
    return root / "rm"


def test_the_proxy_reward_loses_the_penalty_only_where_the_completion_did_not_stop(reward_model_dir):
    from harness.rewards import ProxyRewardModel, training_reward_function

    prompts, completions = ["a b", "a b", "c"], [" good", " good", " bad a"]
    stopped = [True, False, False]
    reward = training_reward_function("proxy", 1.5, None, reward_model_dir, "cpu")
    raw = ProxyRewardModel(reward_model_dir).score(prompts, completions, stopped)
    assert reward(prompts, completions, stopped) == pytest.approx([raw[0], raw[1] - 1.5, raw[2] - 1.5], abs=1e-6)
    # The same text scored as stopped and as cut off: the score itself differs (EOS is part of the text the
    # reward model reads) and the penalty comes on top.
    assert raw[0] != raw[1]


def test_the_gold_reward_is_not_penalised_twice():
    from harness.rewards import training_reward_function

    calls = []

    def gold_reward(prompt, completion, stopped):
        calls.append((prompt, completion, stopped))
        return -2.0 if not stopped else 1.0

    task = types.SimpleNamespace(gold_reward=gold_reward)
    reward = training_reward_function("gold", 1.5, task, None, "cpu")
    assert reward(["p", "q"], ["x", ""], [True, False]) == [1.0, -2.0]
    assert calls == [("p", " x", True), ("q", "", False)]  # completions as the task schema writes them
