"""A seed's prepared inputs, as the cell stages read them from complete prepare folders: the task data (in the
policy's chat template where the suite calls for it), the base, SFT, reward-model and judge folders."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.errors import ConfigError
from harness.modeling import context_length, load_tokenizer
from harness.registry import TASKS
from harness.tasks.chat import ChatTemplateError, apply_chat_template, uses_chat_template
from harness.tasks.common import TaskDataError


@dataclass
class TaskInputs:
    task_module: Any
    task_data: Any
    data_fingerprint: str
    base_model: Path
    prompt_format: str  # "chat template" or "plain text": how prompts reached the policy


@dataclass
class Prepared:
    inputs: TaskInputs
    sft_dir: Path
    reward_model_dir: Path
    reward_model_metrics: dict
    judge_dir: Path | None = None  # judge.kind trained: the seed's trained judge
    judge_metrics: dict = dataclasses.field(default_factory=dict)


def task_module(name: str):

    return TASKS.get(name)


def as_chat(task_data, model_folder: Path, model_config):
    """The task data with its prompts in the policy's chat template when the suite and tokenizer call for it,
    and the prompt format the cells record ("chat template" or "plain text")."""

    tokenizer = load_tokenizer(model_folder, trust_remote_code=model_config.trust_remote_code)
    try:
        if not uses_chat_template(model_config.chat_template, tokenizer):
            return task_data, "plain text"
    except ChatTemplateError as error:
        raise ConfigError(str(error)) from None
    return apply_chat_template(task_data, tokenizer, model_config.system_prompt), "chat template"


def check_prompt_lengths(task_data, model_folder: Path, suite) -> None:
    """Refuse a prompt that leaves no room in the context for its completion."""

    limit = context_length(model_folder)
    if limit is None:
        return
    room = max(suite.sampling.max_new_tokens, suite.evaluation.max_new_tokens)
    tokenizer = load_tokenizer(model_folder)
    splits = {"train_prompts": task_data.train_prompts, "eval": [row["prompt"] for row in task_data.eval]}
    for split, prompts in splits.items():
        for row, prompt in enumerate(prompts):
            length = len(tokenizer(prompt)["input_ids"])
            if length + room > limit:
                raise TaskDataError(
                    f"task {split} row {row}: the prompt has {length} tokens, and with {room} new tokens "
                    f"it exceeds the model's context of {limit} (model.max_positions or the model's config)"
                )


def file_fingerprint(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
