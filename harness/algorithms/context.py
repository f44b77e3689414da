"""What every algorithm receives and returns: the shared context of one (algorithm, seed) cell."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.algorithms.lora import save_policy
from harness.modeling import auto_tokenizer

# (prompts, completions, stopped) -> one scalar training reward per completion
RewardFunction = Callable[[list[str], list[str], list[bool]], list[float]]
# (step, {name: value}) -> None; names arrive without the "train/" prefix
MetricsLogger = Callable[[int, dict[str, float]], None]
# (advance, total=None) -> None: moves the stage's progress bar; `total` sets its length once known
Progress = Callable[..., None]


def no_progress(advance: int = 1, total: int | None = None) -> None:
    """The Progress of a context that shows no bar."""


@dataclass
class TrainContext:
    algorithm: str
    config: Any  # the algorithm's own Config dataclass
    suite: Any  # harness.config.SuiteConfig: sampling, reward, budget, precision, device
    seed: int
    base_dir: Path  # the SFT checkpoint: the initial policy and the frozen reference of every algorithm
    reward_model_dir: Path
    task_data: Any  # harness.tasks TaskData
    reward_function: RewardFunction  # the training reward (proxy or gold, with the missing-stop penalty)
    output_dir: Path  # the cell's training folder; the final checkpoint goes to output_dir / "model"
    log_metrics: MetricsLogger
    progress: Progress = no_progress
    flush_metrics: Callable[[], None] = lambda: None  # write what log_metrics queued (before a resume checkpoint)
    snapshots: int = 0  # intermediate checkpoints to save, evenly spaced over training (evaluation.checkpoints)

    @property
    def snapshot_dir(self) -> Path:
        """Where intermediate checkpoints go, one `step-<N>` folder each (N = the algorithm's own step count)."""
        return self.output_dir / "snapshots"


def snapshot_steps(total_steps: int, count: int) -> set[int]:
    """`count` steps evenly spaced over 1..total_steps, excluding the last (the final checkpoint is saved
    anyway): the same fractions of training for every algorithm, whatever its unit of a step."""
    if count <= 0 or total_steps <= 1:
        return set()
    return {max(1, round(total_steps * k / (count + 1))) for k in range(1, count + 1)} - {total_steps}


def save_snapshot(model, base_dir: Path, folder: Path) -> None:
    """An intermediate checkpoint as a standard HF folder (merged when the policy trains with LoRA):
    safetensors weights plus the policy's tokenizer, taken from the initial policy's folder `base_dir`."""

    save_policy(model, base_dir, folder)
    auto_tokenizer(base_dir).save_pretrained(folder)


@dataclass
class TrainResult:
    checkpoint_dir: Path
    # actual spend: prompts_seen, completions_generated, tokens_generated, optimizer_steps
    spend: dict[str, float] = field(default_factory=dict)
    # the algorithm's own step count at the end (TRL: optimizer steps; PPO: updates), the unit of its snapshots
    final_step: int = 0
