"""The schema every task produces, and its storage in a run folder (plain JSON: no pickles)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from harness.errors import UserError


class TaskDataError(UserError, ValueError):
    """Bad task data: one line naming the file (or dataset id) and the row, and the problem."""


@dataclass
class TaskData:
    sft: list[dict]
    # {"prompt": str, "completion": str}
    preferences: list[dict]
    # {"prompt": str, "chosen": str, "rejected": str}
    heldout_preferences: list[dict]
    # same schema as preferences, kept out of reward-model training
    train_prompts: list[str]
    # prompts for online algorithms
    eval: list[dict]
    # {"prompt": str, "reference": str}; prompts no training split uses. Once rendered in the policy's chat
    # template, a row also keeps the prompt as the task wrote it under TASK_PROMPT (what a judge is shown).


TASK_PROMPT = "task_prompt"


def save_task_data(data: TaskData, path: Path) -> None:
    path.write_text(json.dumps(dataclasses.asdict(data)))


def load_task_data(path: Path) -> TaskData:
    return TaskData(**json.loads(path.read_text()))


def words_of(task_data) -> list[str]:
    """Every whitespace-separated word in a task's texts, sorted: a word-level vocabulary for a stand-in model."""
    texts = [*task_data.train_prompts]
    for row in task_data.sft:
        texts += [row["prompt"], row["completion"]]
    for row in task_data.preferences + task_data.heldout_preferences:
        texts += [row["prompt"], row["chosen"], row["rejected"]]
    for row in task_data.eval:
        texts += [row["prompt"], row["reference"]]
    return sorted({word for text in texts for word in text.split()})
