"""What the algorithms trained by TRL's online trainers share (GRPOTrainer: grpo, dr_grpo, dapo, gspo;
RLOOTrainer: rloo): one train() wiring, so that they sample with the same settings, read the same reward,
spend the same budget and save, snapshot and resume alike. Each algorithm module keeps its own objective
(the trainer arguments that make it that algorithm) and passes them here.

Imported only from inside `train` functions, so it may import torch, transformers and trl at module level.

Batches (DESIGN.md §9): `prompts_per_step` is global. TRL's `per_device_train_batch_size` counts completions,
so each of the W processes gets `prompts_per_step * num_generations / W` completions per optimizer step (W
must divide it; no gradient accumulation): one optimizer step trains on `prompts_per_step` prompts and
`prompts_per_step * num_generations` completions whatever W; with `num_iterations` k each generated batch is
trained on k times (k optimizer steps), so the budget's fresh prompts take k times as many steps. With `steps_per_generation` S > 1 TRL samples
S steps' prompts at once and splits the rollout into S minibatches, one per optimizer step (the policy that
sampled them is then up to S - 1 steps stale, which is what makes clipping fire). TRL's sampler hands the G
completions of a prompt to whichever ranks hold them and gathers the rewards before the group advantages; its
logged statistics are gathered over ranks, so the spend derived from them is global.
"""

from __future__ import annotations

import functools
import math

from harness import record
from harness.algorithms.lora import peft_config
from harness.modeling import load_tokenizer

# GRPOTrainer features none of our GRPO-family algorithms uses, pinned off so that a TRL release that changes
# a default cannot switch one on (they are code, not options: changing one makes it another algorithm).
GRPO_FEATURES_OFF = dict(
    delta=None,  # INTELLECT-2's two-sided clipping
    top_entropy_quantile=1.0,  # "Beyond the 80/20 rule" high-entropy token selection: all tokens kept
    entropy_coef=0.0,  # entropy bonus
    use_adaptive_entropy=False,
    off_policy_mask_threshold=None,  # DeepSeek-V3.2 off-policy sequence masking
    multi_objective_aggregation="sum_then_normalize",  # one reward function: the same either way
    sync_ref_model=False,  # the reference stays the frozen SFT policy (TR-DPO would move it)
)

# RLOOTrainer's counterparts of the above.
RLOO_FEATURES_OFF = dict(
    reward_clip_range=None,
    sync_ref_model=False,
)


def train_online(context, *, trainer_class, config_class, objective: dict, watched, sequence_kl):
    """Train context.config's policy with TRL's `trainer_class` (GRPOTrainer or RLOOTrainer) and its
    `config_class`, `objective` holding the algorithm's own trainer arguments (loss, KL weight, clipping, ...).

    context.config must have num_generations, prompts_per_step, learning_rate and lr_scheduler."""
    from datasets import Dataset

    from harness.algorithms.trl_support import (
        check_process_group,
        common_training_arguments,
        harness_callbacks,
        logged_completion_tokens,
        per_device_batch_size,
        steps_for_budget,
        train_and_save,
    )

    config = context.config
    name = record.algorithm_of(context.algorithm)
    sampling = context.suite.sampling
    tokenizer = load_tokenizer(context.base_dir)
    prompts = context.task_data.train_prompts
    if not prompts:
        raise ValueError(f"the task produced no training prompts for {name}")
    # Each generated batch is trained on num_iterations times (TRL repeats it, µ in the GRPO paper), so the budget's
    # batches of fresh prompts take num_iterations optimizer steps each.
    iterations = objective.get("num_iterations", 1)
    batches = steps_for_budget(context.suite.budget, config.prompts_per_step, config.num_generations)
    steps = batches * iterations
    if objective.get("mask_truncated_completions"):  # TRL's kl then averages over completions that stopped only
        sequence_kl = functools.partial(sequence_kl, terminated_only=True)
    completions_per_step = config.prompts_per_step * config.num_generations

    arguments = config_class(
        **common_training_arguments(
            context.suite,
            context.seed,
            context.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            max_steps=steps,
        ),
        # TRL counts completions, not prompts; the global batch stays completions_per_step (module docstring).
        per_device_train_batch_size=per_device_batch_size(
            completions_per_step, f"algorithms.{name}.prompts_per_step x num_generations"
        ),
        num_generations=config.num_generations,
        disable_dropout=True,  # TRL's default too, set because a policy with dropout scores differently
        # The suite's sampling settings, the same for every online algorithm (PPO's too).
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=None,
        repetition_penalty=1.0,
        max_completion_length=sampling.max_new_tokens,
        generation_kwargs=None,
        shuffle_dataset=True,
        log_completions=False,
        reward_weights=None,  # one reward function, weight 1
        **objective,
    )
    check_process_group(arguments.world_size)  # ranks that did not join one group would each train alone
    trainer = trainer_class(
        model=str(context.base_dir),  # TRL builds the frozen reference from the same folder when beta > 0
        reward_funcs=[trl_reward_function(context.reward_function, tokenizer.eos_token_id)],
        args=arguments,
        train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]),
        processing_class=tokenizer,
        peft_config=peft_config(context.suite, name),
        callbacks=harness_callbacks(
            context.log_metrics, context.progress, context, steps, watched=watched, sequence_kl=sequence_kl
        ),
    )
    # TRL samples a whole rollout (steps_per_generation batches at once, each trained on num_iterations times),
    # the last one even when training stops before its final minibatch.
    per_rollout = arguments.steps_per_generation * iterations
    rollouts = math.ceil(steps / per_rollout)
    return train_and_save(
        trainer,
        context,
        tokenizer,
        lambda trained: {  # global: prompts and completions of all ranks
            record.COST_PROMPTS_SEEN: float(batches * config.prompts_per_step),
            record.COST_COMPLETIONS_GENERATED: float(rollouts * arguments.steps_per_generation * completions_per_step),
            # TRL logs the mean completion length once per rollout, over its global generation batch.
            record.COST_TOKENS_GENERATED: logged_completion_tokens(trained, trained.args.generation_batch_size),
        },
    )


def trl_reward_function(reward_function, eos_token_id: int):
    """Adapt the harness's (prompts, completions, stopped) reward to TRL's reward-function signature."""

    def training_reward(prompts, completions, completion_ids, **_):
        # GRPOTrainer and RLOOTrainer keep the EOS token in completion_ids when the completion stopped and cut
        # everything after it (their EOS masking).
        stopped = [bool(ids) and ids[-1] == eos_token_id for ids in completion_ids]
        return reward_function(list(prompts), list(completions), stopped)

    return training_reward
