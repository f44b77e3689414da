"""Chat templates: every prompt of a task's data laid out as the policy's chat template lays out a conversation.

Applied once per seed, right after the base model (whose tokenizer holds the template) is prepared, so SFT,
the reward model, every algorithm and the evaluator all see the same prompt text; task adapters stay
template-free. A prompt becomes messages (an HH transcript, ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``, turn by
turn; any other prompt one user message), then the template renders them with its generation prompt
(``"...<|im_start|>assistant\\n"`` for ChatML). Completions are untouched: they are the assistant's reply that
follows, and the model's EOS (``<|im_end|>`` for an instruct model) ends them as it ends a turn.
"""

from __future__ import annotations

import dataclasses
import re

from harness.errors import UserError
from harness.tasks.common import TASK_PROMPT, TaskData
from harness.tasks.hh import ROLE_MARKERS

# The HH transcript's turn markers (the ones harness.tasks.hh.render_transcript writes), and their roles.
ROLES = {marker: role for role, marker in ROLE_MARKERS.items()}
TURN_MARKER = re.compile("(" + "|".join(re.escape(marker) for marker in ROLES) + ")")


class ChatTemplateError(UserError, ValueError):
    """The suite asks for a chat template the tokenizer cannot provide."""


def prompt_messages(prompt: str) -> list[dict]:
    """A prompt as chat messages: an HH transcript turn by turn (its empty closing "Assistant:" dropped, since
    the generation prompt stands for it), any other text as one user message."""
    parts = TURN_MARKER.split(prompt)
    if len(parts) < 3 or parts[0].strip():  # no transcript, or text before its first turn
        return [{"role": "user", "content": prompt.strip()}]
    messages = [
        {"role": ROLES[marker], "content": content.strip()} for marker, content in zip(parts[1::2], parts[2::2])
    ]
    if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def uses_chat_template(mode: str, tokenizer) -> bool:
    """Whether prompts get the tokenizer's chat template under `model.chat_template` = auto | always | never."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if mode == "always" and not has_template:
        raise ChatTemplateError(
            "'model.chat_template' is always, but the model's tokenizer has no chat template (use auto or never)"
        )
    return mode != "never" and has_template


def render_prompt(prompt: str, tokenizer, system_prompt: str = "") -> str:
    messages = prompt_messages(prompt)
    if system_prompt:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    # Templates such as Llama 3's write the BOS themselves, and the tokenizer adds one again when it encodes:
    # the model would see two. Leave the BOS to the tokenizer, as every trainer and generator here encodes so.
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and _adds_bos(tokenizer):
        text = text[len(bos) :]
    return text


def apply_chat_template(task_data: TaskData, tokenizer, system_prompt: str = "") -> TaskData:
    """The same task data with every prompt rendered by the tokenizer's chat template."""
    rendered: dict[str, str] = {}

    def render(prompt: str) -> str:
        if prompt not in rendered:
            rendered[prompt] = render_prompt(prompt, tokenizer, system_prompt)
        return rendered[prompt]

    def rows(items: list[dict]) -> list[dict]:
        return [{**row, "prompt": render(row["prompt"])} for row in items]

    return dataclasses.replace(
        task_data,
        sft=rows(task_data.sft),
        preferences=rows(task_data.preferences),
        heldout_preferences=rows(task_data.heldout_preferences),
        train_prompts=[render(prompt) for prompt in task_data.train_prompts],
        # A judge reads the request as the task wrote it, not wrapped in the policy's chat markup.
        eval=[{**row, "prompt": render(row["prompt"]), TASK_PROMPT: row["prompt"]} for row in task_data.eval],
    )


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("x")["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id
