"""The one TrainContext the unit tests train with (a module of its own for the reason shared_models.py is)."""

from __future__ import annotations

import types
from pathlib import Path

from harness.algorithms.context import TrainContext
from harness.config import BudgetConfig, LoraConfig, SamplingConfig, SuiteConfig


def unit_context(
    algorithm: str,
    config,
    *,
    base_dir: Path,
    output_dir: Path,
    prompts_budget: int,
    max_new_tokens: int,
    prompts=(),
    pairs=(),
    reward=None,
    log=None,
    reward_model_dir: Path | None = None,
    seed: int = 0,
    snapshots: int = 0,
    checkpoint_every: int = 0,
    lora: LoraConfig | None = None,
) -> TrainContext:
    """`algorithm`'s context on a CPU suite that samples as every algorithm does (temperature 1, top_k 0, top_p
    1: PPO.md §3.1) under an equal_prompts budget of `prompts_budget` prompts. The task's data is `prompts` and the
    preference `pairs`; `reward` is the training reward (0 for every completion when None); `log(step, metrics)`
    receives what the algorithm logs."""
    suite = SuiteConfig(
        name="unit-test",
        device="cpu",
        sampling=SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens),
        budget=BudgetConfig(policy="equal_prompts", prompts=prompts_budget),
        checkpoint_every=checkpoint_every,
        lora=lora or LoraConfig(),
    )
    return TrainContext(
        algorithm=algorithm,
        config=config,
        suite=suite,
        seed=seed,
        base_dir=base_dir,
        reward_model_dir=reward_model_dir or base_dir,
        task_data=types.SimpleNamespace(train_prompts=list(prompts), preferences=list(pairs)),
        reward_function=reward or (lambda prompts, completions, stopped: [0.0] * len(completions)),
        output_dir=output_dir,
        log_metrics=log or (lambda step, metrics: None),
        snapshots=snapshots,
    )


def config_of(name: str, **values):
    """`name`'s Config as a suite builds it: its Config's defaults, its preset's (a variant's), then `values`."""
    from harness.algorithms.spec import algorithm
    from harness.config import build

    resolved = algorithm(name)
    return build(resolved.config_class, {**resolved.defaults, **values}, f"algorithms.{name}.")
