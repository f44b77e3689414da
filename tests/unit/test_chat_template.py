"""Chat templates (harness.tasks.chat): prompts to messages, rendering, and the task data the pipeline uses."""

from __future__ import annotations

import pytest

from harness.modeling import build_word_tokenizer
from harness.tasks.chat import (
    ChatTemplateError,
    apply_chat_template,
    prompt_messages,
    render_prompt,
    uses_chat_template,
)
from harness.tasks.common import TaskData

WORDS = ["how", "are", "you", "fine", "thanks", "and", "be", "brief", "2", "+", "=", "?", "4", "####"]


@pytest.fixture(scope="module")
def chatml():
    return build_word_tokenizer(WORDS, max_length=64, chatml=True)


def test_hh_transcript_becomes_turns_without_the_empty_closing_assistant():
    transcript = "\n\nHuman: how are you?\n\nAssistant: fine, thanks.\n\nHuman: and you?\n\nAssistant:"
    assert prompt_messages(transcript) == [
        {"role": "user", "content": "how are you?"},
        {"role": "assistant", "content": "fine, thanks."},
        {"role": "user", "content": "and you?"},
    ]


def test_other_prompts_are_one_user_message():
    assert prompt_messages("SUBREDDIT: r/x\nPOST: long text\nTL;DR:") == [
        {"role": "user", "content": "SUBREDDIT: r/x\nPOST: long text\nTL;DR:"}
    ]
    # text before the first marker means it is not a transcript
    assert prompt_messages("Note\n\nHuman: hi\n\nAssistant:") == [
        {"role": "user", "content": "Note\n\nHuman: hi\n\nAssistant:"}
    ]


def test_chatml_rendering_by_hand(chatml):
    assert render_prompt("2 + 2 = ?", chatml) == "<|im_start|>user\n2 + 2 = ?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompt("\n\nHuman: how are you?\n\nAssistant:", chatml, system_prompt="be brief") == (
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhow are you?<|im_end|>\n<|im_start|>assistant\n"
    )
    # the markers are single special tokens and <|im_end|> is the EOS, so a completion ends its turn
    ids = chatml("<|im_start|>user\n2 + 2<|im_end|>")["input_ids"]
    assert ids[0] == chatml.convert_tokens_to_ids("<|im_start|>") and ids[-1] == chatml.eos_token_id


def test_a_template_that_writes_the_bos_does_not_get_a_second_one():
    from tokenizers import processors

    tokenizer = build_word_tokenizer(WORDS, max_length=64)
    tokenizer.add_special_tokens({"bos_token": "<s>"})
    bos = tokenizer.bos_token_id
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", bos)]
    )
    tokenizer.chat_template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }} {% endfor %}"
    text = render_prompt("how are you", tokenizer)
    assert text == "how are you "
    assert tokenizer(text)["input_ids"].count(bos) == 1


def test_modes(chatml):
    plain = build_word_tokenizer(WORDS, max_length=64)
    assert uses_chat_template("auto", chatml) and not uses_chat_template("auto", plain)
    assert not uses_chat_template("never", chatml)
    assert uses_chat_template("always", chatml)
    with pytest.raises(
        ChatTemplateError, match="'model.chat_template' is always, but the model's tokenizer has no chat template"
    ):
        uses_chat_template("always", plain)


def test_every_prompt_of_the_task_data_is_rendered_and_completions_are_kept(chatml):
    data = TaskData(
        sft=[{"prompt": "2 + 2 = ?", "completion": " 4"}],
        preferences=[{"prompt": "2 + 2 = ?", "chosen": " 4", "rejected": " 5", "score_chosen": 9.0}],
        heldout_preferences=[{"prompt": "how are you", "chosen": " fine", "rejected": " no"}],
        train_prompts=["2 + 2 = ?", "how are you"],
        eval=[{"prompt": "how are you", "reference": " fine"}],
    )
    chat = apply_chat_template(data, chatml)
    wrap = lambda text: f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"  # noqa: E731
    assert chat.sft == [{"prompt": wrap("2 + 2 = ?"), "completion": " 4"}]
    assert chat.preferences == [{"prompt": wrap("2 + 2 = ?"), "chosen": " 4", "rejected": " 5", "score_chosen": 9.0}]
    assert chat.heldout_preferences[0]["prompt"] == wrap("how are you")
    assert chat.train_prompts == [wrap("2 + 2 = ?"), wrap("how are you")]
    # The evaluation rows keep the prompt as the task wrote it: that is what a judge is shown.
    assert chat.eval == [{"prompt": wrap("how are you"), "reference": " fine", "task_prompt": "how are you"}]
    assert data.sft[0]["prompt"] == "2 + 2 = ?"  # the original is left as it was


def test_gsm8k_verifier_finds_the_answers_of_rendered_prompts(chatml):
    from harness.tasks import gsm8k

    data = TaskData(
        sft=[],
        preferences=[],
        heldout_preferences=[],
        train_prompts=[],
        eval=[{"prompt": "2 + 2 = ?", "reference": " 2 + 2 = 4\n#### 4"}],
    )
    chat = apply_chat_template(data, chatml)
    gsm8k.remember_gold_answers(chat)
    prompt = chat.eval[0]["prompt"]
    assert gsm8k.gold_reward(prompt, " so #### 4", True) == 1.0
    assert gsm8k.gold_reward(prompt, " so #### 5", True) == 0.0
