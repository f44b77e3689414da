"""SFT: supervised fine-tuning of the base model on the task's (prompt, completion) corpus, TRL SFTTrainer.

The loss covers completion tokens only (TRL `completion_only_loss`), and TRL appends EOS to every completion,
so the SFT policy learns to stop. The result is the initial policy and the frozen reference of every
algorithm, and the baseline row of every report.
"""

from __future__ import annotations

import logging
from pathlib import Path

from harness.algorithms.context import no_progress
from harness.algorithms.lora import peft_config
from harness.modeling import load_tokenizer

logger = logging.getLogger(__name__)


def run_sft(
    base_dir: Path, task_data, suite, seed: int, output_dir: Path, log_metrics, progress=no_progress, flush_metrics=None
) -> Path:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from harness.algorithms.trl_support import (
        common_training_arguments,
        harness_callbacks,
        save_trained_policy,
        silence_console_logging,
        train_resuming,
    )

    if not task_data.sft:
        raise ValueError("the task produced an empty SFT corpus")
    config = suite.sft
    tokenizer = load_tokenizer(base_dir)
    arguments = SFTConfig(
        **common_training_arguments(
            suite, seed, output_dir, learning_rate=config.learning_rate, lr_scheduler="linear", epochs=config.epochs
        ),
        per_device_train_batch_size=config.batch_size,
        completion_only_loss=True,
        packing=False,
        max_length=tokenizer.model_max_length,
    )
    trainer = SFTTrainer(
        model=str(base_dir),
        args=arguments,
        train_dataset=Dataset.from_list(task_data.sft),
        processing_class=tokenizer,
        peft_config=peft_config(suite, "sft"),
        callbacks=harness_callbacks(log_metrics, progress, flush_metrics=flush_metrics),
    )
    silence_console_logging(trainer)
    train_resuming(trainer, output_dir)
    checkpoint = save_trained_policy(trainer, base_dir, tokenizer, output_dir)
    return checkpoint
