"""The preference pairs the offline preference algorithms (dpo, ipo, simpo, kto) learn from.

One module, so that the four learn from exactly the same data and the family comparison compares losses, not
data: with `pairs_source: dataset` the task's preference pairs (the reward model's training data), with
`pairs_source: reward_model` pairs sampled from the SFT policy and labelled by the suite's reward model.

Sampled pairs keep only samples that stopped (emitted EOS within max_new_tokens). TRL's DPOTrainer and
KTOTrainer append EOS to every completion that does not end with it (dpo_trainer/kto_trainer `add_eos`), so a
truncated sample would be trained on as a completion that chose to stop there; TRL 1.16 offers no way to keep a
completion open. A pair with a truncated sample is dropped, counted and logged (spend
`pairs_dropped_truncated`).
"""

from __future__ import annotations

import logging

from harness import record

logger = logging.getLogger(__name__)

PAIRS_SOURCES = ("dataset", "reward_model")


def train_on_pairs(
    context,
    *,
    arguments_class,
    trainer_class,
    objective: dict,
    watched,
    rows_per_pair: int = 1,
    to_rows=None,
    trainer_arguments: dict | None = None,
):
    """Train context.config's policy with TRL's `trainer_class` and its `arguments_class` on the pairs: what
    dpo, ipo, simpo and kto share, each passing its own objective (the trainer arguments that make it that
    algorithm), its watched statistics and, for KTO, how pairs become rows (`to_rows(pairs, count, seed)`,
    `rows_per_pair` rows per pair in a batch).

    context.config must have batch_size (pairs per optimizer step, global over all processes: each gets
    batch_size / processes), learning_rate, lr_scheduler and pairs_source. Under the `equal_prompts` budget a
    pair is one prompt and two completions seen, not generated."""
    from datasets import Dataset

    from harness.algorithms.lora import peft_config
    from harness.algorithms.trl_support import (
        check_process_group,
        common_training_arguments,
        harness_callbacks,
        per_device_batch_size,
        steps_for_budget,
        train_and_save,
    )
    from harness.modeling import load_tokenizer

    config, name = context.config, context.algorithm
    tokenizer = load_tokenizer(context.base_dir)
    steps = steps_for_budget(context.suite.budget, config.batch_size, completions_per_prompt=2)
    count = steps * config.batch_size
    arguments = arguments_class(
        **common_training_arguments(
            context.suite,
            context.seed,
            context.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            max_steps=steps,
        ),
        # The global batch stays config.batch_size pairs whatever the number of processes.
        per_device_train_batch_size=per_device_batch_size(
            rows_per_pair * config.batch_size, f"algorithms.{name}.batch_size"
        ),
        disable_dropout=True,
        max_length=tokenizer.model_max_length,
        **objective,
    )
    # Reading world_size sets up the Trainer's process group now (gloo on the CPU with use_cpu), before any
    # pairs are sampled across ranks; a launch whose ranks did not join one group is refused.
    check_process_group(arguments.world_size)
    pairs, generated = training_pairs(context, config.pairs_source, count, name)
    rows = to_rows(pairs, count, context.seed) if to_rows else pairs
    trainer = trainer_class(
        model=str(context.base_dir),  # TRL builds the frozen reference from the same folder (SimPO: none)
        args=arguments,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=peft_config(context.suite, name),
        callbacks=harness_callbacks(context.log_metrics, context.progress, context, steps, watched=watched),
        **(trainer_arguments or {}),
    )
    return train_and_save(
        trainer,
        context,
        tokenizer,
        lambda _: {  # global: the pairs of all ranks
            record.COST_PROMPTS_SEEN: float(count),  # steps x the global batch: a pair's two completions are one prompt
            **generated,  # completions and tokens sampled for the pairs: 0 with the dataset's pairs
        },
    )


def describe_pairs(pairs_source: str) -> str:
    """The report's sentence on the pairs an offline preference algorithm learned from, given its pairs_source."""
    if pairs_source == "reward_model":
        return (
            "pairs sampled from the SFT policy (two completions per training prompt, both stopped), labelled by "
            "the suite's reward model"
        )
    return "the task's preference pairs (the reward model's training data)"


def training_pairs(context, pairs_source: str, count: int, algorithm: str) -> tuple[list[dict], dict[str, float]]:
    """({prompt, chosen, rejected} pairs, their generation spend) for `count` training prompts.

    The spend is global over ranks: completions_generated, tokens_generated, and with sampled pairs
    pairs_dropped_truncated (0 with the dataset's pairs, which sample nothing)."""
    if pairs_source == "reward_model":
        pairs, spend = reward_model_pairs(context, count, algorithm)
    else:
        pairs, spend = (
            context.task_data.preferences,
            {record.COST_COMPLETIONS_GENERATED: 0.0, record.COST_TOKENS_GENERATED: 0.0},
        )
    if not pairs:
        raise ValueError(f"no preference pairs for {algorithm} (pairs_source={pairs_source})")
    return pairs, spend


def reward_model_pairs(context, count: int, algorithm: str) -> tuple[list[dict], dict[str, float]]:
    """On-policy preference pairs: two samples per training prompt from the SFT policy, labelled by the
    suite's reward model (not the gold reward, even when online algorithms train on gold: these are the pairs
    a team without a gold judge would have). Ties carry no preference and are dropped; so is a pair with a
    sample that did not stop (module docstring).

    With several processes each rank samples and scores a contiguous slice of the prompts (its own seed, on its
    own device), and the slices' pairs and counts are all-gathered in rank order: every rank returns the same
    list and the same global spend."""
    from harness.generation.base import SamplingSettings
    from harness.generation.hf import HFGenerator
    from harness.rewards import ProxyRewardModel, as_completion

    rank, world_size = _process_rank_and_count()
    prompts = context.task_data.train_prompts
    prompts = [prompts[i % len(prompts)] for i in range(count)]
    shard = len(prompts) // world_size + (1 if rank < len(prompts) % world_size else 0)
    start = rank * (len(prompts) // world_size) + min(rank, len(prompts) % world_size)
    prompts = prompts[start : start + shard]
    device = _rank_device(context.suite.device)
    sampling = context.suite.sampling
    settings = SamplingSettings(sampling.temperature, sampling.top_k, sampling.top_p, sampling.max_new_tokens)
    # One seed per rank: the slices are independent draws; a single process keeps the seed it always had.
    samples = HFGenerator(device).generate(context.base_dir, prompts, 2, settings, context.seed + 7919 * rank)
    completions = [as_completion(sample.text) for sample in samples]
    stopped = [sample.stopped for sample in samples]
    repeated_prompts = [prompts[sample.prompt_index] for sample in samples]
    scores = ProxyRewardModel(context.reward_model_dir, device).score(repeated_prompts, completions, stopped)
    pairs, truncated = [], 0
    for first in range(0, len(samples), 2):  # samples come prompt-major: (prompt, 0), (prompt, 1)
        a, b = first, first + 1
        if not (stopped[a] and stopped[b]):
            truncated += 1
            continue
        if scores[a] == scores[b] or not completions[a] or not completions[b]:
            continue
        chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
        pairs.append({"prompt": repeated_prompts[a], "chosen": completions[chosen], "rejected": completions[rejected]})
    local = (pairs, len(samples), sum(len(sample.completion_ids) for sample in samples), truncated)
    shards = _all_gather_objects(local, world_size)
    pairs = [pair for shard_pairs, _, _, _ in shards for pair in shard_pairs]
    spend = {
        record.COST_COMPLETIONS_GENERATED: float(sum(shard[1] for shard in shards)),
        record.COST_TOKENS_GENERATED: float(sum(shard[2] for shard in shards)),
        "pairs_dropped_truncated": float(sum(shard[3] for shard in shards)),
    }
    logger.info(
        "%s: %d reward-model-labelled pairs from %d prompts (%d dropped: a sample did not stop)",
        algorithm,
        len(pairs),
        count,
        int(spend["pairs_dropped_truncated"]),
    )
    return pairs, spend


def _process_rank_and_count() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank_device(device: str) -> str:
    """This rank's device: its own GPU (LOCAL_RANK, set by the launcher) when the suite trains on CUDA."""
    import os

    from harness.modeling import resolve_device

    device = resolve_device(device)
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        return f"cuda:{int(os.environ['LOCAL_RANK'])}"
    return device


def _all_gather_objects(value, world_size: int) -> list:
    """Every rank's `value`, in rank order (picklable objects between our own processes only)."""
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    gathered = [None] * world_size
    dist.all_gather_object(gathered, value)
    return gathered
