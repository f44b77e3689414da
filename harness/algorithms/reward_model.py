"""Reward model: a scalar-head sequence classifier trained on the task's preference pairs (TRL RewardTrainer,
Bradley-Terry loss −log σ(r_chosen − r_rejected); Stiennon et al. 2020).

It is the proxy reward PPO and GRPO optimise and one of the evaluator's scores. Its accuracy on held-out
pairs is measured here, with the same scorer the evaluator uses, and recorded next to the checkpoint.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from harness.algorithms.context import no_progress
from harness.modeling import auto_tokenizer, load_tokenizer
from harness.rewards import REWARD_METADATA, ProxyRewardModel

logger = logging.getLogger(__name__)


def train_reward_model(
    sft_dir: Path, task_data, suite, seed: int, output_dir: Path, log_metrics, progress=no_progress, flush_metrics=None
) -> tuple[Path, dict]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig, RewardTrainer

    from harness.algorithms.trl_support import (
        common_training_arguments,
        harness_callbacks,
        save_trained_classifier,
        silence_console_logging,
        train_resuming,
    )

    if not task_data.preferences:
        raise ValueError("the task produced no preference pairs for the reward model")
    config = suite.reward_model
    tokenizer = load_tokenizer(sft_dir)
    torch.manual_seed(seed)  # the fresh scalar head's initialisation
    model = AutoModelForSequenceClassification.from_pretrained(sft_dir, num_labels=1, use_safetensors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    arguments = RewardConfig(
        **common_training_arguments(
            suite, seed, output_dir, learning_rate=config.learning_rate, lr_scheduler="linear", epochs=config.epochs
        ),
        per_device_train_batch_size=config.batch_size,
        disable_dropout=True,
        max_length=tokenizer.model_max_length,
        center_rewards_coefficient=None,
    )
    trainer = RewardTrainer(
        model=model,
        args=arguments,
        train_dataset=Dataset.from_list(task_data.preferences),
        processing_class=tokenizer,
        callbacks=harness_callbacks(log_metrics, progress, flush_metrics=flush_metrics),
    )
    silence_console_logging(trainer)
    train_resuming(trainer, output_dir)
    checkpoint = save_trained_classifier(trainer, tokenizer, output_dir)  # no pickle (training_args.bin) beside it

    metrics = {"heldout_accuracy": heldout_accuracy(checkpoint, task_data.heldout_preferences, suite.device)}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return checkpoint, metrics


def load_reward_model(task_data, suite, output_dir: Path) -> tuple[Path, dict]:
    """Use an existing sequence classifier as the reward model: copy it (safetensors) with its own tokenizer
    into the stage folder, record which logit is the reward, and measure it on the held-out pairs."""
    from transformers import AutoModelForSequenceClassification

    config = suite.reward_model
    tokenizer = auto_tokenizer(config.name_or_path, trust_remote_code=config.trust_remote_code)
    model = AutoModelForSequenceClassification.from_pretrained(
        config.name_or_path, use_safetensors=True, trust_remote_code=config.trust_remote_code
    )
    if config.score_index >= model.config.num_labels:
        raise ValueError(
            f"reward_model.score_index={config.score_index} but '{config.name_or_path}' has {model.config.num_labels} output(s)"
        )
    if tokenizer.pad_token_id is None:  # batch scoring pads; the classifier must know which tokens are padding
        tokenizer.add_special_tokens({"pad_token": "[PAD]"})
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    checkpoint = output_dir / "model"
    model.save_pretrained(checkpoint, safe_serialization=True)
    tokenizer.save_pretrained(checkpoint)
    (checkpoint / REWARD_METADATA).write_text(json.dumps({"score_index": config.score_index}))
    metrics = {"heldout_accuracy": heldout_accuracy(checkpoint, task_data.heldout_preferences, suite.device)}
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return checkpoint, metrics


def heldout_accuracy(reward_model_dir: Path, pairs: list[dict], device: str) -> float:
    """Fraction of held-out pairs whose chosen completion the reward model scores higher (ties count 1/2)."""

    if not pairs:
        return float("nan")
    scorer = ProxyRewardModel(reward_model_dir, device)
    prompts = [pair["prompt"] for pair in pairs]
    stopped = [True] * len(pairs)  # dataset completions all end with EOS, as in training
    chosen = scorer.score(prompts, [pair["chosen"] for pair in pairs], stopped)
    rejected = scorer.score(prompts, [pair["rejected"] for pair in pairs], stopped)
    wins = sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(chosen, rejected))
    return wins / len(pairs)
