"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290), through TRL's DPOTrainer.

What is implemented: the sigmoid loss −log σ(β·[(log π_c − log π_r) − (log π_ref,c − log π_ref,r)]) on the
task's (prompt, chosen, rejected) pairs, the SFT checkpoint as both the initial policy and the frozen
reference (PPO.md §3.2). Sequence log-probs sum over completion tokens only (TRL).

Departures from TRL defaults, set here so they are logged and equal across algorithms: dropout off, no
warm-up, the learning rate and schedule of this config, max_length = the model's context.

Data (PPO.md §3.4, a team decision written down): by default (`pairs_source: dataset`) DPO learns from the
same preference pairs the reward model was trained on (for `tiny`, labelled by the gold reward with
Bradley-Terry noise). With `pairs_source: reward_model` it learns from on-policy pairs instead: two
completions per training prompt sampled from the SFT policy with the suite's sampling settings, the one the
suite's reward model scores higher as chosen (ties dropped). Under the `equal_prompts` budget DPO consumes
one pair per training prompt.

Several processes (`accelerate launch`, DESIGN.md §9): `batch_size` is the global number of pairs per
optimizer step. Each of the W processes gets `per_device_train_batch_size = batch_size / W` pairs (W must
divide it; no gradient accumulation), and DDP averages the per-rank mean losses, which is the mean over the
global batch; so the same steps consume the same pairs and budget whatever W. With `pairs_source:
reward_model` every rank samples and scores its own slice of the prompts, and the pairs are all-gathered so
every rank trains on the same list; the generation spend counts every rank's completions once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness import record
from harness.config import require

logger = logging.getLogger(__name__)

# What the harness reads from an algorithm module (harness/registry.py).
FAMILY = record.FAMILY_OFFLINE_PREFERENCE
KL_KNOB = "beta"  # the implicit KL strength: larger beta keeps the policy closer to the reference
KL_KNOB_RAISES_KL = False
TRAINS_POLICY = True
CURVES = ("loss", "rewards/margins", "rewards/accuracies")
WATCHED = ("loss", "grad_norm", "rewards/margins", "rewards/chosen")


def describe_data(options: dict) -> str:
    if options.get("pairs_source") == "reward_model":
        return ("pairs sampled from the SFT policy (two completions per training prompt), labelled by the suite's "
                "reward model")
    return "the task's preference pairs (the reward model's training data)"


@dataclass
class Config:
    beta: float = 0.1
    # strength of the implicit KL to the reference (not comparable to PPO's or GRPO's beta)
    loss_type: str = "sigmoid"
    # TRL loss: "sigmoid" is the DPO paper's; "ipo", "hinge", ... are TRL's alternatives
    label_smoothing: float = 0.0
    # conservative-DPO smoothing of the preference labels (0 = the paper's loss)
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    batch_size: int = 16
    # preference pairs per optimizer step, global over all processes (each gets batch_size / processes)
    pairs_source: str = "dataset"
    # "dataset": the task's preference pairs; "reward_model": pairs sampled from the SFT policy and labelled
    # by the suite's reward model (the report's params say which)

    def __post_init__(self):
        require(self.beta > 0, "beta", "must be > 0")
        require(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.pairs_source in ("dataset", "reward_model"), "pairs_source", "must be 'dataset' or 'reward_model'")


def train(context):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from harness.algorithms.context import TrainResult
    from harness.algorithms.trl_support import (
        attach_trainer,
        check_process_group,
        common_training_arguments,
        harness_callbacks,
        per_device_batch_size,
        save_trained_policy,
        silence_console_logging,
        steps_for_budget,
        train_resuming,
    )
    from harness.algorithms.lora import peft_config
    from harness.modeling import load_tokenizer

    config: Config = context.config
    tokenizer = load_tokenizer(context.base_dir)
    # A pair holds two completions (seen, not generated) for the equal_completions policy.
    steps = steps_for_budget(context.suite.budget, config.batch_size, completions_per_prompt=2)

    arguments = DPOConfig(
        **common_training_arguments(
            context.suite,
            context.seed,
            context.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            max_steps=steps,
        ),
        # The global batch stays config.batch_size whatever the number of processes (module docstring).
        per_device_train_batch_size=per_device_batch_size(config.batch_size, "algorithms.dpo.batch_size"),
        beta=config.beta,
        loss_type=[config.loss_type],
        label_smoothing=config.label_smoothing,
        disable_dropout=True,
        max_length=tokenizer.model_max_length,
        precompute_ref_log_probs=False,
    )
    # Reading world_size sets up the Trainer's process group now (gloo on the CPU with use_cpu), before any
    # pairs are sampled across ranks; a launch whose ranks did not join one group is refused.
    check_process_group(arguments.world_size)
    generated = {"completions": 0.0, "tokens": 0.0}
    if config.pairs_source == "reward_model":
        pairs = reward_model_pairs(context, steps * config.batch_size, generated)
    else:
        pairs = context.task_data.preferences
    if not pairs:
        raise ValueError(f"no preference pairs for DPO (pairs_source={config.pairs_source})")

    trainer = DPOTrainer(
        model=str(context.base_dir),  # TRL builds the frozen reference from the same folder
        args=arguments,
        train_dataset=Dataset.from_list(pairs),
        processing_class=tokenizer,
        peft_config=peft_config(context.suite, "dpo"),
        callbacks=harness_callbacks(context.log_metrics, context.progress, context, steps, watched=WATCHED),
    )
    attach_trainer(trainer)  # snapshots gather sharded weights through it (ZeRO-3, FSDP)
    silence_console_logging(trainer)
    train_resuming(trainer, context.output_dir)
    checkpoint = save_trained_policy(trainer, context.base_dir, tokenizer, context.output_dir)
    return TrainResult(
        checkpoint_dir=checkpoint,
        final_step=trainer.state.global_step,
        spend={  # global: the pairs of all ranks (steps x the global batch)
            "prompts_seen": float(steps * config.batch_size),
            "completions_generated": generated["completions"],  # 0 with the dataset's pairs: DPO samples nothing
            "tokens_generated": generated["tokens"],
            "optimizer_steps": float(trainer.state.global_step),
        },
    )


def reward_model_pairs(context, count: int, generated: dict) -> list[dict]:
    """On-policy preference pairs: two samples per training prompt from the SFT policy, labelled by the
    suite's reward model (not the gold reward, even when online algorithms train on gold: these are the pairs
    a team without a gold judge would have). Ties carry no preference and are dropped.

    With several processes each rank samples and scores a contiguous slice of the prompts (its own seed, on its
    own device), and the slices' pairs and counts are all-gathered in rank order: every rank returns the same
    list, and `generated` holds the global counts."""
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
    pairs = []
    for first in range(0, len(samples), 2):  # samples come prompt-major: (prompt, 0), (prompt, 1)
        a, b = first, first + 1
        if scores[a] == scores[b] or not completions[a] or not completions[b]:
            continue
        chosen, rejected = (a, b) if scores[a] > scores[b] else (b, a)
        pairs.append({"prompt": repeated_prompts[a], "chosen": completions[chosen], "rejected": completions[rejected]})
    local = (pairs, float(len(samples)), float(sum(len(sample.completion_ids) for sample in samples)))
    shards = _all_gather_objects(local, world_size)
    pairs = [pair for shard_pairs, _, _ in shards for pair in shard_pairs]
    generated["completions"] += sum(completions for _, completions, _ in shards)
    generated["tokens"] += sum(tokens for _, _, tokens in shards)
    logger.info("DPO: %d reward-model-labelled pairs from %d prompts", len(pairs), count)
    return pairs


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
