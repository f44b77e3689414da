"""No pickle in the folders the harness writes for DPO and GRPO (issue 15), and resume still works without it.

transformers' Trainer saves its TrainingArguments with `torch.save` (a pickle, `training_args.bin`) into every
checkpoint; loading one needs `torch.load(weights_only=False)`. The final checkpoint (output_dir/model) and
the snapshots are written by `save_pretrained` (safetensors and JSON only); the resume checkpoints
(output_dir/trainer/checkpoint-N) lose the file through `NoPickleInCheckpointsCallback`, and a training run
resumed from such a checkpoint continues where it stopped.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from contexts import unit_context
from shared_models import WORDS


def train(algorithm: str, config, models: Path, output_dir: Path, prompts_budget: int):
    """One algorithm's train() on the tiny models; returns (logged steps, TrainResult)."""
    from harness.algorithms import spec

    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4))) for _ in range(64)]
    pairs = [
        {
            "prompt": prompt,
            "chosen": " ".join(rng.choice(WORDS) for _ in range(3)) + " good",
            "rejected": " ".join(rng.choice(WORDS) for _ in range(3)),
        }
        for prompt in prompts
    ]
    logged: list[int] = []
    context = unit_context(
        algorithm,
        config,
        base_dir=models / "base",
        reward_model_dir=models / "reward_model",
        output_dir=output_dir,
        prompts_budget=prompts_budget,
        max_new_tokens=6,
        prompts=prompts,
        pairs=pairs,
        reward=lambda ps, completions, stopped: [c.split().count("good") / 6 for c in completions],
        log=lambda step, metrics: logged.append(step),
        snapshots=1,
        checkpoint_every=2,  # resume checkpoints under output_dir/trainer
    )
    return logged, spec.algorithm(algorithm).train(context)


def assert_no_pickled_arguments(output_dir: Path) -> None:
    final = output_dir / "model"
    snapshots = sorted((output_dir / "snapshots").glob("step-*"))
    resume = sorted((output_dir / "trainer").glob("checkpoint-*"))
    # The folders exist and hold what they should, so an empty glob cannot pass the check below.
    assert (final / "model.safetensors").is_file()
    assert snapshots and all((folder / "model.safetensors").is_file() for folder in snapshots)
    assert resume and all((folder / "trainer_state.json").is_file() for folder in resume)
    for folder in [final, *snapshots, *resume]:
        assert not (folder / "training_args.bin").exists(), folder
    # The folders the evaluator and vLLM load hold no pickle of any kind.
    for folder in [final, *snapshots]:
        assert not [path.name for path in folder.rglob("*") if path.suffix in (".bin", ".pt", ".pth", ".pkl")]


@pytest.mark.slow
def test_dpo_writes_no_pickled_arguments_and_resumes_without_them(tiny_models, tmp_path):
    from harness.algorithms import dpo

    config = dpo.Config(batch_size=8)
    # An interrupted run: 4 of the 6 steps, leaving trainer/checkpoint-4 behind.
    steps, result = train("dpo", config, tiny_models, tmp_path, prompts_budget=32)
    assert result.final_step == 4 and steps[:4] == [1, 2, 3, 4]
    assert_no_pickled_arguments(tmp_path)
    # The same stage with its full budget picks up checkpoint-4 (no training_args.bin in it) and goes on.
    steps, result = train("dpo", config, tiny_models, tmp_path, prompts_budget=48)
    assert result.final_step == 6
    assert steps[0] == 5, steps  # steps 1-4 were not trained again
    assert_no_pickled_arguments(tmp_path)


@pytest.mark.slow
def test_grpo_writes_no_pickled_arguments(tiny_models, tmp_path):
    from harness.algorithms import grpo

    _, result = train("grpo", grpo.Config(num_generations=2, prompts_per_step=4), tiny_models, tmp_path, 16)
    assert result.final_step == 4
    assert_no_pickled_arguments(tmp_path)
