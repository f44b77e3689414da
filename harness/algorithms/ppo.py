"""PPO-RLHF: Proximal Policy Optimization (Schulman et al. 2017, arXiv:1707.06347) applied to language models
as in Ziegler et al. 2019 (arXiv:1909.08593) and Stiennon et al. 2020 (arXiv:2009.01325). Our own
implementation: TRL removed its PPOTrainer (huggingface/trl#7020). `docs/PPO.md` is the specification; the
section implementing each detail is cited beside the line that does it.

What is implemented, one update at a time:

1. Rollout (PPO.md §2.2): B prompts from a seeded shuffled order (drop_last per pass over the prompts);
   pure sampling at temperature T from the current policy (eval mode, inference_mode, KV cache, a complete
   GenerationConfig); truncation after the first EOS.
2. Scoring (§2.2 step 6, §2.3): old and reference log-probs recomputed by teacher-forced forwards at T;
   per-token values from the critic; the sequence score is the harness's training reward
   (`context.reward_function`: proxy RM score or gold reward, already including the missing-stop penalty, so
   PPO and GRPO optimise the same number).
3. Rewards and advantages (§2.4-§2.7): per-token k1 KL penalty -beta*(logp_old - logp_ref) plus the score at
   the last valid token; GAE(gamma, lambda) with masking; advantages whitened over the whole batch.
4. Optimisation (§2.8, §2.9): K epochs over shuffled minibatches (a dedicated seeded generator); clipped
   surrogate and clipped value loss, optional exact-entropy bonus; every loss is a sum over valid tokens
   divided by the minibatch's global valid-token count, so gradient accumulation over micro-batches is exact.
5. KL controller (§2.10): fixed beta (default) or the adaptive controller of Ziegler et al.

Models (§2.1): trainable policy and frozen reference, both from the SFT checkpoint; a separate critic
initialised from the reward model (backbone + scalar `score` head read at every position); dropout off in all
of them. The reward model itself is reached only through `context.reward_function`, which tokenises text with
the reward model's own tokenizer.

Departures and choices, where the spec leaves one open:

- The sequence score comes from `context.reward_function` on decoded text rather than from a token-level RM
  forward: this is what GRPO optimises, and it lets a reward model with its own tokenizer score any policy.
- A critic cannot read token ids of another vocabulary: if the reward model's vocabulary differs from the
  policy's and it ships its own tokenizer, the critic is initialised from the SFT backbone with a zero score
  head instead (§2.1 option, warned); without its own tokenizer such a reward model is refused.
- Separate optimisers for policy and critic (AdamW, eps 1e-5, §2.12), so there is no `vf_coef`: the critic is
  trained on L_v alone (§2.9 "With a separate critic optimizer") and its step size is `critic_learning_rate`.
- The attention mask of teacher-forced forwards comes from the prompt and response masks, not from
  ``x != pad_id`` (§1): pure sampling can emit the pad token inside a response, and ``generate`` attended to
  it, so masking it would make the recomputed log-probs differ from the sampling distribution.
- Learning rates decay linearly to 0 over the updates (§2.12), stepped once per update.
- With LoRA (`lora.enabled` and "ppo" in `lora.stages`), the policy trains adapters and the reference is the
  same network with its adapters disabled (§2.1 table; TRL's `null_ref_context`): one copy of the weights.
  The critic trains all its weights.
- Multi-process (Accelerate, DESIGN.md §9) runs shard every update's B rollouts across ranks: every rank draws
  the same global prompt batch and keeps its contiguous slice of B / world (so `rollouts_per_update`,
  `minibatch_size` are global and must divide by the number of processes; `micro_batch_size` and
  `rollout_batch_size` are per device). Whitening uses all-reduced sums (§2.7); every loss is divided by the
  minibatch's all-reduced valid-token count and DDP's gradient average is undone, so the step equals the
  one-process step on the whole batch (§2.8); every logged statistic is a global sum, count, min or max, or a
  gather of per-sequence values (§2.13); spend counts are global. Checkpoints are written by the main process
  behind barriers. `tests/unit/test_ppo_distributed.py` runs one update on 2 gloo processes and compares the
  weights, gradients and statistics with the one-process update of the same rollouts.

Pure, reusable math (masks, log-probs, KL estimators, rewards, GAE, losses, controllers) lives in
`harness.algorithms.common` and is unit-tested against PPO.md §5.1; this module wires it to models.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.config import ConfigError, require

logger = logging.getLogger(__name__)

# PPO.md §2.14: the harness's sources for the defaults below; sizes suit the tiny CPU suite.


@dataclass
class Config:
    rollouts_per_update: int = 64
    # B: prompts drawn per update, one rollout each (global over all processes, each rank takes B / world; the
    # batch that advantages are whitened over)
    minibatch_size: int = 16
    # rollouts per optimizer step, global over all processes; B / minibatch_size minibatches (M) per epoch
    micro_batch_size: int = 16
    # rollouts per forward/backward (per device); gradients accumulate over a minibatch exactly (PPO.md §2.8)
    rollout_batch_size: int = 64
    # rollouts per generate() call and per no-grad scoring forward (per device; memory knob only)
    ppo_epochs: int = 4
    # K: passes over each update's rollouts (TRL, OpenAI, CleanRL: 4)
    learning_rate: float = 5e-4
    # policy peak learning rate, decayed linearly to 0 over the updates (PPO.md §2.12); 0 freezes the policy
    critic_learning_rate: float = 1e-3
    # critic peak learning rate (its own AdamW, same schedule); 0 freezes the critic
    lr_scheduler: str = "linear"
    # "linear" (to 0 over the updates), "cosine" or "constant"; stepped once per update
    adam_epsilon: float = 1e-5
    # AdamW eps of both optimizers (CleanRL; PPO.md §2.12)
    max_grad_norm: float = 1.0
    # gradient clipping, applied to policy and critic separately (PPO.md §2.12)
    kl_coef: float = 0.05
    # beta of the per-token KL penalty in the reward (initial value with the adaptive controller)
    kl_controller: str = "fixed"
    # "fixed" (beta is a controlled variable, the harness default) or "adaptive" (Ziegler et al., PPO.md §2.10)
    kl_target: float = 6.0
    # adaptive controller only: target batch-mean sequence KL to the reference, in nats
    kl_horizon: float = 10000.0
    # adaptive controller only: horizon in episodes
    kl_estimator: str = "k1"
    # per-token KL in the reward: "k1" (unbiased gradient, PPO.md §2.4) or "k3" (a flag for experiments)
    gamma: float = 1.0
    # GAE discount over response tokens
    lam: float = 0.95
    # GAE lambda
    clip_epsilon: float = 0.2
    # policy ratio clip range
    value_clip: float = 0.2
    # critic clip range around the rollout-time values, in reward units
    entropy_coef: float = 0.0
    # weight of the exact-entropy bonus (0 = none, as TRL, verl and OpenRLHF)
    whiten_rewards: bool = False
    # rescale per-token rewards over the batch, keeping their mean (PPO.md §2.5)
    score_clip: float = 0.0
    # clip sequence scores to [-score_clip, score_clip] (OpenRLHF uses 10); 0 = no clipping
    target_kl: float = 0.0
    # stop an update's remaining epochs once an epoch's mean approx KL (k3, old->new) exceeds this; 0 = never
    critic_warmup_updates: int = 0
    # first updates that train only the critic (OpenRLHF critic.freezing_steps; PPO.md §2.11)

    def __post_init__(self):
        require(
            self.rollouts_per_update >= 2,
            "rollouts_per_update",
            "must be >= 2 (advantages are whitened over the batch)",
        )
        require(self.minibatch_size > 0, "minibatch_size", "must be > 0")
        require(
            self.minibatch_size <= self.rollouts_per_update,
            "minibatch_size",
            f"({self.minibatch_size}) must be <= rollouts_per_update ({self.rollouts_per_update})",
        )
        require(
            self.rollouts_per_update % self.minibatch_size == 0,
            "minibatch_size",
            f"({self.minibatch_size}) must divide rollouts_per_update ({self.rollouts_per_update})",
        )
        require(self.micro_batch_size > 0, "micro_batch_size", "must be > 0")
        require(
            self.minibatch_size % self.micro_batch_size == 0,
            "micro_batch_size",
            f"({self.micro_batch_size}) must divide minibatch_size ({self.minibatch_size})",
        )
        require(self.rollout_batch_size > 0, "rollout_batch_size", "must be > 0")
        require(self.ppo_epochs > 0, "ppo_epochs", "must be > 0")
        require(self.learning_rate >= 0, "learning_rate", "must be >= 0")
        require(self.critic_learning_rate >= 0, "critic_learning_rate", "must be >= 0")
        require(
            self.lr_scheduler in ("linear", "cosine", "constant"), "lr_scheduler", "must be linear, cosine or constant"
        )
        require(self.adam_epsilon > 0, "adam_epsilon", "must be > 0")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        require(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        require(self.kl_controller in ("fixed", "adaptive"), "kl_controller", "must be 'fixed' or 'adaptive'")
        require(self.kl_target > 0, "kl_target", "must be > 0")
        require(self.kl_horizon > 0, "kl_horizon", "must be > 0")
        require(
            self.kl_estimator in ("k1", "k3"),
            "kl_estimator",
            "must be 'k1' or 'k3' (k2 is biased and never goes in the reward, PPO.md §2.4)",
        )
        require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        require(0 <= self.lam <= 1, "lam", "must be in [0, 1]")
        require(0 < self.clip_epsilon < 1, "clip_epsilon", "must be in (0, 1)")
        require(self.value_clip > 0, "value_clip", "must be > 0")
        require(self.entropy_coef >= 0, "entropy_coef", "must be >= 0")
        require(self.score_clip >= 0, "score_clip", "must be >= 0 (0 = no clipping)")
        require(self.target_kl >= 0, "target_kl", "must be >= 0 (0 = no early stop)")
        require(self.critic_warmup_updates >= 0, "critic_warmup_updates", "must be >= 0")


# ---------------------------------------------------------------------------------------------------------
# Data that flows between the phases of one update
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TrainingBatch:
    """One update's rollouts on this rank, fixed for every PPO epoch (PPO.md §2.2 step 6: no autograd graph).

    Prompts ``[B, P]`` are left-padded, responses ``[B, L]`` right-padded after the first stop token
    (PPO.md §1). ``logp_old``, ``values_old``, ``advantages`` and ``returns`` are ``[B, L]`` and exactly 0
    where ``mask`` is False. ``prompt_mask`` marks real prompt tokens; ``prompt_starts`` (left pads per row)
    and ``response_lengths`` (``len_b``) are CPU copies, so micro-batches can be trimmed without a host
    synchronisation (PPO.md §2.15).
    """

    prompt_ids: Any
    prompt_mask: Any
    response_ids: Any
    mask: Any
    logp_old: Any
    values_old: Any
    advantages: Any
    returns: Any
    prompt_starts: Any
    response_lengths: Any

    def rows(self, index) -> TrainingBatch:
        """The batch restricted to the rows in ``index`` (a LongTensor on any device)."""
        return TrainingBatch(
            *(getattr(self, name)[index.to(getattr(self, name).device)] for name in self.__dataclass_fields__)
        )

    def forward_inputs(self):
        """Trimmed forward inputs of these rows, their response mask and response length (see below)."""
        return _trimmed_forward_inputs(
            self.prompt_ids, self.prompt_mask, self.response_ids, self.mask, self.prompt_starts, self.response_lengths
        )


def _trimmed_forward_inputs(prompt_ids, prompt_mask, response_ids, mask, prompt_starts, response_lengths):
    """Forward inputs without the prompt columns that are pad in every row and the columns after the longest
    response; returns ``(inputs, response mask, L)``.

    Outputs do not change: positions come from the attention mask and attention is causal (PPO.md §1). The
    lengths are CPU tensors, so this needs no host synchronisation (PPO.md §2.15).
    """
    from harness.algorithms import common

    first_prompt_column = min(int(prompt_starts.min()), prompt_ids.shape[1] - 1)  # keep one prompt column
    response_length = max(int(response_lengths.max()), 1)
    mask = mask[:, :response_length]
    inputs = common.build_forward_inputs(
        prompt_ids[:, first_prompt_column:],
        response_ids[:, :response_length],
        prompt_mask=prompt_mask[:, first_prompt_column:],
        response_mask=mask,
    )
    return inputs, mask, response_length


@dataclass
class LossSettings:
    """What one minibatch's forward/backward needs besides the batch: Config values and the sampling T."""

    temperature: float
    clip_epsilon: float
    value_clip: float
    entropy_coef: float


# ---------------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------------


def train(context):
    import torch

    from harness.algorithms import common
    from harness.algorithms.context import TrainResult, snapshot_steps
    from harness.algorithms.lora import inner_model
    from harness.algorithms.trl_support import steps_for_budget
    from harness.modeling import load_tokenizer

    config: Config = context.config
    suite = context.suite
    sampling = suite.sampling
    temperature = float(sampling.temperature)

    # ---- Refuse bad settings before any model is loaded (PPO.md §6.3, §2.1) -----------------------------
    tokenizer = load_tokenizer(context.base_dir, trust_remote_code=suite.model.trust_remote_code)  # pad != EOS
    pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    try:
        common.validate_special_token_ids(pad_id, eos_id)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    prompts = list(context.task_data.train_prompts)
    if len(prompts) < config.rollouts_per_update:
        raise ConfigError(
            f"'algorithms.ppo.rollouts_per_update' ({config.rollouts_per_update}) exceeds the task's "
            f"{len(prompts)} training prompts"
        )
    if sampling.top_k != 0 or sampling.top_p != 1.0:
        logger.warning(
            "PPO samples with top_k=%s, top_p=%s: the sampler is not the distribution the loss uses (PPO.md §2.2)",
            sampling.top_k,
            sampling.top_p,
        )

    accelerator = make_accelerator(suite)
    world_size, rank = accelerator.num_processes, accelerator.process_index
    local_minibatch = local_minibatch_size(config, world_size)
    num_updates = steps_for_budget(suite.budget, config.rollouts_per_update, completions_per_prompt=1)
    logger.info(
        "PPO: %d updates of %d rollouts, %d epochs x %d minibatches, %d processes",
        num_updates,
        config.rollouts_per_update,
        config.ppo_epochs,
        config.rollouts_per_update // config.minibatch_size,
        world_size,
    )

    # ---- Seeds (PPO.md §5.2 E4): per-rank sampling seed, shared prompt and minibatch orders -------------
    torch.manual_seed(context.seed + rank * 100003)  # TRL L481; N-details general detail 6
    prompt_generator = torch.Generator().manual_seed(context.seed)
    minibatch_generator = torch.Generator().manual_seed(context.seed + 1)

    # ---- Four models (PPO.md §2.1) --------------------------------------------------------------------
    learner = build_learner(context, tokenizer, accelerator)
    policy = learner.policy
    # Schedulers stay unprepared: Accelerate would step them once per process; ours step once per update.
    policy_scheduler = _scheduler(config.lr_scheduler, learner.policy_optimizer, num_updates)
    critic_scheduler = _scheduler(config.lr_scheduler, learner.critic_optimizer, num_updates)
    kl_controller = (
        common.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.kl_controller == "adaptive"
        else common.FixedKLController(config.kl_coef)
    )

    # generate() and generation_config belong to the transformers model, inside a PeftModel when adapted
    unwrapped_policy = inner_model(accelerator.unwrap_model(policy))
    saved_generation_config = unwrapped_policy.generation_config
    rollout_generation_config = _rollout_generation_config(sampling, eos_id, pad_id)
    settings = LossSettings(temperature, config.clip_epsilon, config.value_clip, config.entropy_coef)
    # Every rank draws the same global prompt batches (same seed) and keeps its own slice of each.
    prompt_batches = _prompt_batches(prompts, config.rollouts_per_update, prompt_generator)

    completions_generated = 0
    tokens_generated = 0
    optimizer_steps = 0
    if accelerator.is_main_process:  # one bar per stage, moved by the main process only
        context.progress(0, total=num_updates)  # one tick per update
    snapshot_updates = snapshot_steps(num_updates, context.snapshots)
    for update in range(1, num_updates + 1):
        local_prompts = shard_rows(next(prompt_batches), rank, world_size)

        # ---- 1. Rollout (PPO.md §2.2 steps 1-5) -----------------------------------------------------
        started = time.perf_counter()
        policy.eval()
        # The model's own generation_config.json must not inject anything (transformers#35045): our complete
        # config is also the model default while sampling, so no unset field is filled from the file.
        unwrapped_policy.generation_config = rollout_generation_config
        prompt_ids, prompt_mask, prompt_starts, raw_response_ids = _generate(
            unwrapped_policy, tokenizer, local_prompts, rollout_generation_config, config.rollout_batch_size,
            accelerator,
        )
        unwrapped_policy.generation_config = saved_generation_config
        truncated = common.truncate_after_stop(raw_response_ids, [eos_id], pad_id)  # §2.2 step 4
        rollouts = Rollouts.from_truncated(prompt_ids, prompt_mask, prompt_starts, truncated)  # §2.2 step 5
        seconds_generate = time.perf_counter() - started

        # ---- 2. Sequence scores (PPO.md §2.3) ---------------------------------------------------------------
        started = time.perf_counter()
        completions = [
            tokenizer.decode(row[:length].tolist(), skip_special_tokens=True)
            for row, length in zip(rollouts.response_ids.cpu(), rollouts.response_lengths.tolist())
        ]
        stopped = rollouts.has_stop.cpu().tolist()
        # The harness's training reward, the one GRPO optimises: it already subtracts the missing-stop penalty
        # (PPO.md §2.3), so it is not applied a second time here.
        scores = torch.tensor(
            context.reward_function(local_prompts, completions, stopped), dtype=torch.float32, device=accelerator.device
        )
        seconds_reward = time.perf_counter() - started

        # ---- 3.-4. Log-probs, values, advantages, K epochs of minibatch updates (PPO.md §2.2 step 6-§2.9) -----
        train_policy = update > config.critic_warmup_updates
        learning_rate = policy_scheduler.get_last_lr()[0]
        critic_learning_rate = critic_scheduler.get_last_lr()[0]
        kl_coef = kl_controller.value
        statistics = learn_from_rollouts(
            learner, rollouts, scores, kl_coef, settings, config, local_minibatch, minibatch_generator, train_policy
        )
        optimizer_steps += statistics.pop("optimizer_steps")
        policy_scheduler.step()  # once per rollout (TRL; PPO.md §2.8)
        critic_scheduler.step()

        # ---- 5. KL controller, spend, one row of statistics (PPO.md §2.10, §2.13) ---------------------------
        kl_controller.update(statistics["kl"], n_steps=config.rollouts_per_update)  # global KL, same on all ranks
        completions_generated += config.rollouts_per_update  # global: every rank's slice of the batch
        tokens_generated += int(statistics.pop("_tokens"))  # global: summed over the gathered response lengths
        # The wall clock of an update is the slowest rank's (the others wait for it in the next all-reduce).
        seconds_generate, seconds_reward = (
            _reduce_max(torch.tensor([seconds_generate, seconds_reward]), accelerator).tolist()
            if world_size > 1
            else (seconds_generate, seconds_reward)
        )
        metrics = {
            **statistics,
            "learning_rate": learning_rate if train_policy else 0.0,
            "ppo/critic_learning_rate": critic_learning_rate,
            "completions_generated": float(completions_generated),
            "tokens_generated": float(tokens_generated),
            "ppo/seconds_generate": seconds_generate,
            "ppo/seconds_score": seconds_reward + statistics["ppo/seconds_score"],
        }
        metrics["loss"] = metrics["ppo/policy_loss"] - config.entropy_coef * metrics.get("ppo/entropy_bonus", 0.0)
        _abort_if_not_finite(update, metrics)  # every value is global, so every rank stops at the same update
        if accelerator.is_main_process:
            context.log_metrics(update, metrics)
        if update in snapshot_updates:  # an intermediate checkpoint for the evaluator
            _save_checkpoint(learner, context.base_dir, tokenizer, context.snapshot_dir / f"step-{update}")
        if accelerator.is_main_process:
            context.progress(1)
        logger.info(
            "PPO update %d/%d: reward %.4f kl %.4f clipfrac %.3f value loss %.4f",
            update,
            num_updates,
            metrics["reward"],
            metrics["kl"],
            metrics["clip_ratio/region_mean"],
            metrics["ppo/value_loss"],
        )

    # ---- Standard Hugging Face checkpoint: safetensors + tokenizer (the evaluator and vLLM load it) ---------
    unwrapped_policy.generation_config = saved_generation_config
    checkpoint = _save_checkpoint(learner, context.base_dir, tokenizer, Path(context.output_dir) / "model")
    return TrainResult(
        checkpoint_dir=checkpoint,
        final_step=num_updates,
        # Global spend: B rollouts per update over all ranks; optimizer steps are synchronous across ranks, so
        # one step of the data-parallel model counts once (not once per rank).
        spend={
            "prompts_seen": float(num_updates * config.rollouts_per_update),
            "completions_generated": float(completions_generated),
            "tokens_generated": float(tokens_generated),
            "optimizer_steps": float(optimizer_steps),
        },
    )


# ---------------------------------------------------------------------------------------------------------
# Multi-process pieces (PPO.md §2.7, §2.8, §2.13; DESIGN.md §9): each rank holds B / world rollouts
# ---------------------------------------------------------------------------------------------------------


def make_accelerator(suite):
    """The Accelerator of a PPO run. It learns the process group from the launcher's environment:
    `accelerate launch` / torchrun set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (and
    ACCELERATE_USE_CPU with `--cpu`), and Accelerate initialises torch.distributed from them (gloo on CPU, nccl
    on GPUs); a plain `python` process has none of them and is a world of one."""
    from accelerate import Accelerator, DistributedType

    from harness.algorithms.trl_support import check_process_group
    from harness.modeling import resolve_device

    accelerator = Accelerator(
        cpu=resolve_device(suite.device) == "cpu",
        mixed_precision="bf16" if suite.precision == "bf16" else "no",  # never fp16 (PPO.md §2.1, trl#1614)
    )
    check_process_group(accelerator.num_processes)
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        # Sharded weights would need every rank inside generate() until all finish (synced_gpus) and inside
        # every save (a gathered state dict); neither is written here yet, so refuse rather than hang.
        raise ConfigError(
            f"PPO runs on one process or with DDP (configs/accelerate/ddp.yaml), not {accelerator.distributed_type.value}"
        )
    return accelerator


def local_minibatch_size(config: Config, world_size: int) -> int:
    """Rollouts of one minibatch on one rank: B, the minibatch and the micro-batch are global, per device and
    global as documented on Config, so the same update is computed whatever the number of processes."""
    _per_rank(config.rollouts_per_update, world_size, "rollouts_per_update")
    local_minibatch = _per_rank(config.minibatch_size, world_size, "minibatch_size")
    if local_minibatch % config.micro_batch_size != 0:
        raise ConfigError(
            f"'algorithms.ppo.micro_batch_size' ({config.micro_batch_size}) must divide the per-device minibatch "
            f"({local_minibatch} = minibatch_size / {world_size} processes)"
        )
    return local_minibatch


def shard_rows(rows: list, rank: int, world_size: int) -> list:
    """This rank's contiguous slice of a global batch (the batch size is divisible by the world size)."""
    size = len(rows) // world_size
    return rows[rank * size : (rank + 1) * size]


@dataclass
class Learner:
    """The trained models of one run, wrapped by Accelerate (DDP with several processes), and their optimizers.

    ``reference`` is the frozen SFT model, or the policy with its adapters disabled under LoRA (PPO.md §2.1).
    """

    policy: Any
    reference: Any
    critic: Any
    policy_optimizer: Any
    critic_optimizer: Any
    accelerator: Any


def build_learner(context, tokenizer, accelerator) -> Learner:
    """Policy, reference and critic loaded from the context's checkpoints (PPO.md §2.1), prepared for the run."""
    import torch

    from harness.algorithms.lora import peft_config
    from harness.modeling import load_causal_lm

    config: Config = context.config
    suite = context.suite
    trust = suite.model.trust_remote_code
    critic_source = _critic_source(context.base_dir, context.reward_model_dir, tokenizer, trust)
    lora = peft_config(suite, "ppo")
    policy = load_causal_lm(context.base_dir, "cpu", trust_remote_code=trust)
    reference = None if lora else load_causal_lm(context.base_dir, "cpu", trust_remote_code=trust)
    critic = _load_critic(critic_source, context.base_dir, context.reward_model_dir, trust)
    for model in (policy, reference, critic.classifier):
        if model is not None:
            _disable_dropout(model)  # PPO.md §2.1: dropout off everywhere (Ziegler et al.; TRL L489-491)
    if reference is not None:
        reference.requires_grad_(False).eval()
        reference.to(accelerator.device)
    if suite.gradient_checkpointing:
        # PPO.md §6.7: the non-reentrant variant (TRL #4811), which needs no input gradients under LoRA either;
        # enabled on the inner models before wrapping (#5245).
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        critic.classifier.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora:
        from peft import get_peft_model

        policy = get_peft_model(policy, lora)  # only the adapters require grad from here on

    policy_optimizer = torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate, eps=config.adam_epsilon,
        weight_decay=0.0,
    )
    critic_optimizer = torch.optim.AdamW(
        critic.parameters(), lr=config.critic_learning_rate, eps=config.adam_epsilon, weight_decay=0.0
    )
    # With several processes the models come back wrapped in DDP, which all-reduces their gradients.
    policy, critic, policy_optimizer, critic_optimizer = accelerator.prepare(
        policy, critic, policy_optimizer, critic_optimizer
    )
    if lora:
        reference = AdapterDisabledReference(policy, accelerator.unwrap_model(policy))
    return Learner(policy, reference, critic, policy_optimizer, critic_optimizer, accelerator)


@dataclass
class Rollouts:
    """This rank's sampled rollouts of one update (PPO.md §1 shapes): left-padded prompts ``[b, P]`` with their
    mask and left-pad counts (CPU), responses ``[b, L]`` right-padded after the first stop token, their mask,
    lengths (CPU) and whether each contains a stop token."""

    prompt_ids: Any
    prompt_mask: Any
    prompt_starts: Any
    response_ids: Any
    mask: Any
    response_lengths: Any
    has_stop: Any

    @classmethod
    def from_truncated(cls, prompt_ids, prompt_mask, prompt_starts, truncated) -> Rollouts:
        response_lengths = truncated.lengths.cpu()  # one host transfer per update
        response_length = int(response_lengths.max())  # PPO.md §2.2 step 5: drop all-pad trailing columns
        return cls(
            prompt_ids,
            prompt_mask,
            prompt_starts,
            truncated.response_ids[:, :response_length],
            truncated.mask[:, :response_length],
            response_lengths,
            truncated.has_stop,
        )


def learn_from_rollouts(
    learner: Learner,
    rollouts: Rollouts,
    scores,
    kl_coef: float,
    settings: LossSettings,
    config: Config,
    local_minibatch: int,
    minibatch_generator,
    train_policy: bool = True,
) -> dict[str, float]:
    """One PPO update from this rank's rollouts and sequence scores: log-probs and values, rewards, GAE,
    whitening, K epochs of minibatch steps, and the update's statistics.

    Every returned statistic is global (reduced over all ranks, so every rank returns the same numbers), as is
    ``_tokens`` (response tokens of the whole batch); ``optimizer_steps`` counts synchronous steps.
    """
    import torch

    from harness.algorithms import common

    accelerator = learner.accelerator
    world_size = accelerator.num_processes
    started = time.perf_counter()
    mask = rollouts.mask
    if config.score_clip > 0:
        scores = scores.clamp(-config.score_clip, config.score_clip)  # PPO.md §2.3 optional clipping
    # PPO.md §2.2 step 6: old and reference log-probs and values, teacher-forced, no grad.
    logp_old, logp_ref, values_old, rollout_entropy = _score_rollout(
        learner.policy, learner.reference, learner.critic, rollouts.prompt_ids, rollouts.prompt_mask,
        rollouts.response_ids, mask, rollouts.prompt_starts, rollouts.response_lengths, settings,
        config.rollout_batch_size, accelerator,
    )
    seconds_score = time.perf_counter() - started

    # ---- Rewards, GAE, whitening (PPO.md §2.4-§2.7) ------------------------------------------------------
    rewards, per_token_kl = common.per_token_rewards(
        scores, logp_old, logp_ref, mask, kl_coef, kl_estimator=config.kl_estimator
    )
    if config.whiten_rewards:
        rewards = _whiten(rewards, mask, accelerator, shift_mean=False)  # §2.5, global moments
    # GAE runs along each row, so it needs nothing from other ranks (§2.6).
    advantages, returns = common.gae_advantages_and_returns(rewards, values_old, mask, config.gamma, config.lam)
    raw_advantage_moments = _global_moments(advantages, mask, accelerator)
    # §2.7: once per rollout batch, over the valid tokens of all ranks (all-reduced sum m, sum A m, sum (A-mu)^2 m).
    advantages = _whiten(advantages, mask, accelerator, shift_mean=True)
    batch = TrainingBatch(
        rollouts.prompt_ids, rollouts.prompt_mask, rollouts.response_ids, mask, logp_old, values_old, advantages,
        returns, rollouts.prompt_starts, rollouts.response_lengths,
    )

    # ---- K epochs of minibatch updates (PPO.md §2.8, §2.9) -----------------------------------------------
    started = time.perf_counter()
    learner.policy.train()
    learner.critic.train()
    update_statistics = _optimise(
        learner.policy,
        learner.critic,
        learner.policy_optimizer,
        learner.critic_optimizer,
        batch,
        settings,
        config,
        local_minibatch,
        minibatch_generator,
        accelerator,
        train_policy,
    )
    seconds_train = time.perf_counter() - started

    # ---- Statistics (PPO.md §2.13), gathered or reduced over ranks ---------------------------------------
    rollout_statistics = _rollout_statistics(
        scores, per_token_kl, logp_old, logp_ref, mask, rollouts.has_stop, rollout_entropy, kl_coef, accelerator
    )
    value_statistics = _value_statistics(returns, values_old, mask, raw_advantage_moments, accelerator)
    timings = torch.tensor([seconds_score, seconds_train])
    if world_size > 1:
        timings = _reduce_max(timings, accelerator)  # the slowest rank sets the pace of a synchronous update
    seconds_score, seconds_train = timings.tolist()
    return {
        **rollout_statistics,
        **update_statistics,
        **value_statistics,
        "ppo/seconds_score": seconds_score,
        "ppo/seconds_train": seconds_train,
    }


def _save_checkpoint(learner: Learner, base_dir: Path, tokenizer, folder: Path) -> Path:
    """Write the policy as a standard HF folder (merged under LoRA) plus its tokenizer, from the main process
    only, and return once it is complete on disk for every rank (the barrier after the write)."""
    from harness.algorithms.lora import save_policy

    accelerator = learner.accelerator
    accelerator.wait_for_everyone()  # no rank is still inside an update that could change the weights
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(learner.policy), base_dir, folder)
        tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()
    return Path(folder)


# ---------------------------------------------------------------------------------------------------------
# Setup: settings checks, models, schedules
# ---------------------------------------------------------------------------------------------------------


def _per_rank(value: int, world_size: int, key: str) -> int:
    if value % world_size != 0:
        raise ConfigError(f"'algorithms.ppo.{key}' ({value}) must be divisible by the {world_size} processes")
    return value // world_size


def _has_own_tokenizer(folder: Path) -> bool:
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return any((Path(folder) / name).is_file() for name in tokenizer_files)


def _critic_source(base_dir: Path, reward_model_dir: Path, tokenizer, trust_remote_code: bool) -> str:
    """"reward_model" when the critic can start from the RM (same vocabulary), "policy" otherwise (PPO.md §2.1).

    A critic reads the policy's token ids, so it must share the policy's vocabulary. A reward model with
    another vocabulary and no tokenizer of its own can neither score text nor initialise a critic: refused.
    """
    from transformers import AutoConfig

    from harness.modeling import auto_tokenizer

    policy_vocabulary = AutoConfig.from_pretrained(base_dir, trust_remote_code=trust_remote_code).vocab_size
    reward_config = AutoConfig.from_pretrained(reward_model_dir, trust_remote_code=trust_remote_code)
    if getattr(reward_config, "num_labels", 1) != 1:
        raise ConfigError(
            f"reward model in '{reward_model_dir}' must have one scalar output, not {reward_config.num_labels}"
        )
    if _has_own_tokenizer(reward_model_dir):
        reward_tokenizer = auto_tokenizer(reward_model_dir, trust_remote_code=trust_remote_code)
        same_vocabulary = reward_tokenizer.get_vocab() == tokenizer.get_vocab()
        same_vocabulary = same_vocabulary and reward_config.vocab_size == policy_vocabulary
        if not same_vocabulary:
            logger.warning(
                "the reward model's vocabulary differs from the policy's: the critic starts from the SFT backbone "
                "with a zero value head instead of the reward model (PPO.md §2.1 option)"
            )
        return "reward_model" if same_vocabulary else "policy"
    if reward_config.vocab_size != policy_vocabulary:
        raise ConfigError(
            f"reward model in '{reward_model_dir}' has a vocabulary of {reward_config.vocab_size} tokens, the policy "
            f"{policy_vocabulary}, and it has no tokenizer of its own to score the policy's text"
        )
    return "reward_model"


def _load_critic(source: str, base_dir: Path, reward_model_dir: Path, trust_remote_code: bool):
    """The critic: a separate copy of the reward model (backbone + scalar head), read at every position."""
    import torch
    from transformers import AutoModelForSequenceClassification

    folder = reward_model_dir if source == "reward_model" else base_dir
    classifier, loading_info = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code, output_loading_info=True
    )
    if source == "policy":
        # PPO.md §2.1: a value head on the SFT backbone starts at zero (OpenAI's N(0, 0) head).
        with torch.no_grad():
            for parameter in _score_head(classifier).parameters():
                parameter.zero_()
    else:
        _restore_score_bias(classifier, folder, loading_info)
    return _token_value_model_class()(classifier)


def _score_head(classifier):
    head = getattr(classifier, "score", None)
    if head is None:
        raise ConfigError(f"{type(classifier).__name__} has no 'score' head; the critic needs backbone + score")
    return head


def _restore_score_bias(classifier, folder: Path, loading_info: dict) -> None:
    """Put back a trained ``score.bias`` that a bias-free ``score`` layer dropped on load (PPO.md §2.1; trl#1783)."""
    import torch
    from safetensors import safe_open

    dropped = [key for key in loading_info.get("unexpected_keys", ()) if key.endswith("score.bias")]
    if not dropped:
        return
    for file in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as handle:
            if dropped[0] in handle.keys():
                bias = handle.get_tensor(dropped[0])
                break
    else:
        return
    head = _score_head(classifier)
    restored = torch.nn.Linear(head.in_features, head.out_features, bias=True, dtype=head.weight.dtype)
    with torch.no_grad():
        restored.weight.copy_(head.weight)
        restored.bias.copy_(bias.to(head.weight.dtype))
    classifier.score = restored
    logger.info("restored the reward model's score.bias (%s) that the bias-free head dropped", bias.tolist())


def _token_value_model_class():
    """A module (defined on first use, so importing this file stays torch-free) that outputs per-token values."""
    import torch

    class TokenValueModel(torch.nn.Module):
        """Per-token values from a ``*ForSequenceClassification`` model: its ``score`` head on every hidden state.

        The classifier's own forward returns one pooled logit found by scanning for pads (trl#1063, trl#2778);
        the critic needs a value per position, so the backbone is called and the head applied to the response
        positions only (PPO.md §2.2 step 6). Wrapping it as a module lets Accelerate/DDP see its forward.
        """

        def __init__(self, classifier):
            super().__init__()
            self.classifier = classifier

        def forward(self, input_ids, attention_mask, position_ids, response_length: int):
            hidden = self.classifier.base_model(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            ).last_hidden_state
            # PPO.md §1 "Alignment": V_t is the output at absolute index P-1+t, the state before y_t.
            prompt_length = input_ids.shape[1] - response_length
            response_hidden = hidden[:, prompt_length - 1 : prompt_length - 1 + response_length]
            # Values stay fp32 (PPO.md §2.1 "Dtype").
            return self.classifier.score(response_hidden).squeeze(-1).float()

    return TokenValueModel


class AdapterDisabledReference:
    """The frozen reference of a LoRA policy: the policy's own forward with its adapters off, which is exactly
    the SFT model (PPO.md §2.1 table; TRL `null_ref_context`), at no memory for a second copy."""

    def __init__(self, policy, peft_model):
        self.policy, self.peft_model = policy, peft_model  # the (possibly wrapped) module, the PeftModel inside

    def __call__(self, **inputs):
        with self.peft_model.disable_adapter():
            return self.policy(**inputs)


def _disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def _scheduler(name: str, optimizer, num_updates: int):
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=0, num_training_steps=num_updates)


def _rollout_generation_config(sampling, eos_id: int, pad_id: int):
    """A complete GenerationConfig for pure sampling (PPO.md §2.2 step 2)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,  # never greedy (trl#242)
        temperature=float(sampling.temperature),
        top_k=int(sampling.top_k),  # HF's default is 50 (transformers#38549); the suite's default is 0
        top_p=float(sampling.top_p),
        repetition_penalty=1.0,
        max_new_tokens=int(sampling.max_new_tokens),
        min_new_tokens=0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_id,  # stop at EOS: far faster than running to max length (trl#2387)
        pad_token_id=pad_id,
        use_cache=True,
        num_return_sequences=1,
    )


def _prompt_batches(prompts: list[str], batch_size: int, generator):
    """Endless batches of prompts: a seeded shuffle per pass, drop_last (PPO.md §2.2 step 1)."""
    import torch

    while True:
        order = torch.randperm(len(prompts), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [prompts[index] for index in order[start : start + batch_size]]


# ---------------------------------------------------------------------------------------------------------
# Rollout: generation and no-grad scoring passes
# ---------------------------------------------------------------------------------------------------------


def _generate(policy, tokenizer, prompts: list[str], generation_config, chunk_size: int, accelerator):
    """Sample one response per prompt.

    Returns left-padded prompts ``[B, P]``, their mask, the number of left pads per row (CPU) and the raw
    responses ``[B, L]`` (pad after a finished row's EOS, not yet truncated).
    """
    import torch

    prompt_ids, attention_mask, prompt_starts = encode_prompts(tokenizer, prompts, accelerator.device)
    prompt_length = prompt_ids.shape[1]
    chunks = []
    with torch.inference_mode(), accelerator.autocast():
        for start in range(0, len(prompts), chunk_size):
            # HF generate derives position ids from the mask (N-details general detail 3.4).
            output = policy.generate(
                input_ids=prompt_ids[start : start + chunk_size],
                attention_mask=attention_mask[start : start + chunk_size],
                generation_config=generation_config,
            )
            chunks.append(output[:, prompt_length:])
    response_length = max(chunk.shape[1] for chunk in chunks)
    pad_id = generation_config.pad_token_id
    # clone(): tensors made under inference_mode cannot be saved for backward later (embedding indices).
    responses = torch.cat(
        [torch.nn.functional.pad(chunk, (0, response_length - chunk.shape[1]), value=pad_id) for chunk in chunks]
    ).clone()
    return prompt_ids.clone(), attention_mask.bool(), prompt_starts, responses


def encode_prompts(tokenizer, prompts: list[str], device):
    """Left-padded prompt ids ``[b, P]`` and attention mask on ``device``, and the left pads per row on the CPU.

    Left padding: generation continues from the right edge of every prompt (PPO.md §1). ``P`` is this rank's
    longest prompt; outputs do not depend on it (positions come from the mask, PPO.md §1).
    """
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    prompt_starts = (encoded["attention_mask"] == 0).sum(dim=1)  # left pads per row, on the CPU
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device), prompt_starts


def _response_logits(policy, inputs, response_length: int):
    """Policy logits that predict each response token, ``[b, L, V]``, without logits for prompt positions."""
    # PPO.md §2.15: only response positions reach lm_head (logits_to_keep). The L+1 kept positions are
    # absolute P-1 .. P+L-1; PPO.md §1 "Alignment": logits at P-1+t predict y_t, so the last one is dropped.
    logits = policy(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        use_cache=False,
        logits_to_keep=response_length + 1,
    ).logits
    return logits[:, :-1]


def _critic_values(critic, inputs, mask):
    """Per-token values ``V_t`` for response positions, 0 where ``mask`` is False (PPO.md §2.2 step 6)."""
    import torch

    values = critic(inputs.input_ids, inputs.attention_mask, inputs.position_ids, mask.shape[1])
    return torch.where(mask, values, torch.zeros_like(values))


def _score_rollout(
    policy, reference, critic, prompt_ids, prompt_mask, response_ids, mask, prompt_starts, response_lengths,
    settings: LossSettings, chunk_size: int, accelerator,
):
    """``logp_old``, ``logp_ref``, ``V_old`` and the exact entropy, teacher-forced, no grad (PPO.md §2.2 step 6).

    Recomputed, not taken from generate's scores, which come out of the logits processors (trl#2358). Both
    log-probs are at the sampling temperature T (trl#3169, OpenRLHF#853). Micro-batched (TRL
    ``local_rollout_forward_batch_size``), with padding trimmed per chunk.
    """
    import torch

    from harness.algorithms import common

    batch_size, response_length = response_ids.shape
    logp_old = torch.zeros(batch_size, response_length, device=response_ids.device)
    logp_ref = torch.zeros_like(logp_old)
    values_old = torch.zeros_like(logp_old)
    entropy = torch.zeros_like(logp_old)
    critic.eval()
    with torch.no_grad(), accelerator.autocast():
        for start in range(0, batch_size, chunk_size):
            rows = slice(start, start + chunk_size)
            inputs, chunk_mask, length = _trimmed_forward_inputs(
                prompt_ids[rows], prompt_mask[rows], response_ids[rows], mask[rows], prompt_starts[rows],
                response_lengths[rows],
            )
            chunk_responses = response_ids[rows, :length]
            policy_logits = _response_logits(policy, inputs, length)
            logp_old[rows, :length] = common.token_logprobs_from_logits(
                policy_logits, chunk_responses, settings.temperature, mask=chunk_mask
            )
            # Exact entropy of the rollout policy for logging (PPO.md §2.13 objective/entropy), in chunks.
            chunk_entropy = common.entropy_from_logits(policy_logits, settings.temperature)
            entropy[rows, :length] = torch.where(chunk_mask, chunk_entropy, torch.zeros_like(chunk_entropy))
            del policy_logits
            reference_logits = _response_logits(reference, inputs, length)
            logp_ref[rows, :length] = common.token_logprobs_from_logits(
                reference_logits, chunk_responses, settings.temperature, mask=chunk_mask
            )
            del reference_logits
            values_old[rows, :length] = _critic_values(critic, inputs, chunk_mask)
    return logp_old, logp_ref, values_old, entropy


# ---------------------------------------------------------------------------------------------------------
# Optimisation
# ---------------------------------------------------------------------------------------------------------


def _optimise(
    policy,
    critic,
    policy_optimizer,
    critic_optimizer,
    batch: TrainingBatch,
    settings: LossSettings,
    config: Config,
    local_minibatch: int,
    minibatch_generator,
    accelerator,
    train_policy: bool,
) -> dict[str, float]:
    """K epochs over shuffled minibatches; one optimizer step per minibatch (PPO.md §2.8).

    Returns the update's statistics averaged over its optimizer steps, plus the first minibatch's own (the
    E3 sanity check: ratio 1 and no clipping before any step, PPO.md §5.2) and ``optimizer_steps``.
    """
    import torch

    totals: dict[str, Any] = {}
    first_minibatch: dict[str, Any] | None = None
    steps = 0
    batch_size = batch.mask.shape[0]
    for _ in range(config.ppo_epochs):
        # A dedicated seeded generator, shared by all ranks (PPO.md §2.8; §5.2 E4).
        permutation = torch.randperm(batch_size, generator=minibatch_generator)
        epoch_approx_kl = []
        for minibatch_rows in permutation.split(local_minibatch):
            policy_optimizer.zero_grad(set_to_none=True)
            critic_optimizer.zero_grad(set_to_none=True)
            # PPO.md §2.8: N = valid tokens of the whole minibatch across micro-batches and ranks.
            minibatch = batch.rows(minibatch_rows)
            token_count = _reduce_sum(minibatch.mask.sum().float(), accelerator).clamp(min=1.0)
            statistics = accumulate_minibatch_gradients(
                policy, critic, minibatch, token_count, settings, config.micro_batch_size, accelerator, train_policy
            )
            policy_grad_norm = accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            critic_grad_norm = accelerator.clip_grad_norm_(critic.parameters(), config.max_grad_norm)
            # During critic warm-up the policy has no gradients, so its step changes nothing; it still runs so
            # that the learning-rate schedule keeps its order (scheduler steps follow optimizer steps).
            policy_optimizer.step()
            critic_optimizer.step()
            steps += 1
            statistics["grad_norm"] = torch.as_tensor(policy_grad_norm, dtype=torch.float32).detach()
            statistics["critic_grad_norm"] = torch.as_tensor(critic_grad_norm, dtype=torch.float32).detach()
            if first_minibatch is None:
                first_minibatch = dict(statistics)
            for name, value in statistics.items():
                if name == "ratio_min":
                    totals[name] = torch.minimum(totals[name], value) if name in totals else value
                elif name == "ratio_max":
                    totals[name] = torch.maximum(totals[name], value) if name in totals else value
                else:
                    totals[name] = totals.get(name, 0.0) + value
            epoch_approx_kl.append(statistics["approx_kl"])
        if config.target_kl > 0:
            # CleanRL target_kl: a host sync once per epoch, only when the early stop is on.
            epoch_kl = float(torch.stack(epoch_approx_kl).mean().item())
            if epoch_kl > config.target_kl:
                logger.info(
                    "approx KL %.4f > target_kl %.4f: stopping this update's epochs early", epoch_kl, config.target_kl
                )
                break

    # Per-step means of additive statistics; token-level ratio moments from global sums (PPO.md §2.13).
    ratio_count = totals.pop("ratio_count").clamp(min=1.0)
    ratio_mean = totals.pop("ratio_sum") / ratio_count
    ratio_var = totals.pop("ratio_sq_sum") / ratio_count - ratio_mean**2
    first_minibatch_deviation = torch.maximum(
        (first_minibatch["ratio_max"] - 1.0).abs(), (first_minibatch["ratio_min"] - 1.0).abs()
    )
    result = {
        "ppo/policy_loss": totals["policy_loss"] / steps,
        "ppo/value_loss": totals["value_loss"] / steps,
        "clip_ratio/region_mean": totals["clip_fraction"] / steps,
        "ppo/value_clip_fraction": totals["value_clip_fraction"] / steps,
        "ppo/approx_kl": totals["approx_kl"] / steps,
        "ppo/approx_kl_k1": totals["approx_kl_k1"] / steps,
        "ppo/ratio_mean": ratio_mean,
        "ppo/ratio_var": ratio_var.clamp(min=0.0),
        "ppo/ratio_min": totals["ratio_min"],
        "ppo/ratio_max": totals["ratio_max"],
        "grad_norm": totals["grad_norm"] / steps,
        "ppo/critic_grad_norm": totals["critic_grad_norm"] / steps,
        "ppo/first_minibatch_ratio_deviation": first_minibatch_deviation,
        "ppo/first_minibatch_clip_fraction": first_minibatch["clip_fraction"],
        "ppo/first_minibatch_approx_kl": first_minibatch["approx_kl"],
        "ppo/first_minibatch_value_clip_fraction": first_minibatch["value_clip_fraction"],
    }
    if "entropy_bonus" in totals:
        result["ppo/entropy_bonus"] = totals["entropy_bonus"] / steps
    # One host transfer per update for all of them (PPO.md §2.13 "call .item() once per rollout").
    device = batch.mask.device
    values = torch.stack([torch.as_tensor(value, dtype=torch.float32).to(device) for value in result.values()])
    metrics = dict(zip(result, values.cpu().tolist()))
    metrics["ppo/optimizer_steps"] = float(steps)
    metrics["optimizer_steps"] = steps
    return metrics


def accumulate_minibatch_gradients(
    policy,
    critic,
    minibatch: TrainingBatch,
    token_count,
    settings: LossSettings,
    micro_batch_size: int,
    accelerator,
    train_policy: bool = True,
) -> dict[str, Any]:
    """Forward and backward one minibatch in micro-batches; gradients accumulate in ``.grad``.

    Every loss is ``sum over valid tokens / token_count`` with ``token_count`` the minibatch's global valid-token
    count, so the accumulated gradient is the same however the minibatch is split (PPO.md §2.8, §5.2 E7).
    Returns detached statistics (sums over micro-batches of token-count-normalised values, so they are
    minibatch token-means; ratio moments as sums and counts). No host synchronisation.
    """
    import torch

    from harness.algorithms import common

    # DDP averages gradients over ranks; the losses are already divided by the global token count, so the sum
    # over ranks is wanted: undo the average (a factor 1 on one process).
    world_size = accelerator.num_processes
    micro_batches = list(torch.arange(minibatch.mask.shape[0]).split(micro_batch_size))
    statistics: dict[str, Any] = {}

    def add(name, value):
        statistics[name] = statistics[name] + value if name in statistics else value

    for number, micro_rows in enumerate(micro_batches):
        micro = minibatch.rows(micro_rows)
        inputs, mask, length = micro.forward_inputs()
        response_ids = micro.response_ids[:, :length]
        last = number == len(micro_batches) - 1
        with contextlib.ExitStack() as stack:
            if not last:  # DDP: all-reduce gradients once per minibatch, not per micro-batch
                stack.enter_context(accelerator.no_sync(policy))
                stack.enter_context(accelerator.no_sync(critic))
            loss = torch.zeros((), device=mask.device)
            if train_policy:
                logits = _response_logits(policy, inputs, length)
                logp_new = common.token_logprobs_from_logits(logits, response_ids, settings.temperature, mask=mask)
                # PPO.md §2.9: clipped surrogate, clamped log-ratio, L_pg = sum m pg / N.
                policy_output = common.clipped_policy_loss(
                    logp_new, micro.logp_old[:, :length], micro.advantages[:, :length], mask, token_count,
                    settings.clip_epsilon,
                )
                loss = loss + policy_output.loss
                if settings.entropy_coef > 0:
                    # PPO.md §2.9: exact entropy of the tempered distribution, L = ... - c_e sum m H / N.
                    entropy_bonus = common.token_sum_over_count(
                        common.entropy_from_logits(logits, settings.temperature), mask, token_count
                    )
                    loss = loss - settings.entropy_coef * entropy_bonus
                    add("entropy_bonus", entropy_bonus.detach())
                del logits
            else:
                with torch.no_grad():  # critic warm-up: statistics only (PPO.md §2.11)
                    logits = _response_logits(policy, inputs, length)
                    logp_new = common.token_logprobs_from_logits(logits, response_ids, settings.temperature, mask=mask)
                    policy_output = common.clipped_policy_loss(
                        logp_new, micro.logp_old[:, :length], micro.advantages[:, :length], mask, token_count,
                        settings.clip_epsilon,
                    )
                    del logits
            values_new = _critic_values(critic, inputs, mask)
            # PPO.md §2.9: value loss clipped around the rollout-time values, L_v = sum m vf / N; the critic has
            # its own optimizer, so L_v is added unweighted (the two networks share no parameter).
            value_output = common.clipped_value_loss(
                values_new, micro.values_old[:, :length], micro.returns[:, :length], mask, token_count,
                settings.value_clip,
            )
            loss = loss + value_output.loss
            accelerator.backward(loss * world_size)

        ratio = policy_output.ratio
        ratio_min, ratio_max = common.masked_min_max(ratio, mask)
        add("policy_loss", policy_output.loss.detach())
        add("clip_fraction", policy_output.clip_fraction)
        add("approx_kl", policy_output.approx_kl_k3)
        add("approx_kl_k1", policy_output.approx_kl_k1)
        add("value_loss", value_output.loss.detach())
        add("value_clip_fraction", value_output.clip_fraction)
        add("ratio_sum", common.masked_sum(ratio, mask))
        add("ratio_sq_sum", common.masked_sum(ratio**2, mask))
        add("ratio_count", common.masked_count(mask))
        statistics["ratio_min"] = torch.minimum(statistics.get("ratio_min", ratio_min), ratio_min)
        statistics["ratio_max"] = torch.maximum(statistics.get("ratio_max", ratio_max), ratio_max)

    # Global sums over ranks (sums and counts, not means of means; PPO.md §2.13).
    for name in list(statistics):
        if name == "ratio_min":
            statistics[name] = -_reduce_max(-statistics[name], accelerator)
        elif name == "ratio_max":
            statistics[name] = _reduce_max(statistics[name], accelerator)
        else:
            statistics[name] = _reduce_sum(statistics[name], accelerator)
    return statistics


# ---------------------------------------------------------------------------------------------------------
# Cross-rank reductions and the statistics that need them (pure math missing from common.py)
# ---------------------------------------------------------------------------------------------------------


def _reduce_sum(tensor, accelerator):
    return accelerator.reduce(tensor.clone(), reduction="sum") if accelerator.num_processes > 1 else tensor


def _reduce_max(tensor, accelerator):
    """Element-wise maximum over ranks (a gather: Accelerate's reduce has no max); same shape and device."""
    if accelerator.num_processes == 1:
        return tensor
    # nccl only moves tensors on the rank's device; gloo takes CPU tensors too.
    gathered = accelerator.gather(tensor.to(accelerator.device).reshape(1, -1))
    return gathered.amax(dim=0).reshape(tensor.shape).to(tensor.device)


def _global_moments(values, mask, accelerator):
    """Count, mean and unbiased variance of ``values`` over the valid tokens of all ranks (PPO.md §2.7).

    Two passes (the mean first, then squared deviations from it), so no ``E[x^2] - E[x]^2`` cancellation.
    """
    from harness.algorithms import common

    values = values.float()
    count_and_total = _reduce_sum(_stack(common.masked_count(mask), common.masked_sum(values, mask)), accelerator)
    count = count_and_total[0]
    mean = count_and_total[1] / count.clamp(min=1.0)
    squared_deviations = _reduce_sum(common.masked_sum((values - mean) ** 2, mask), accelerator)
    variance = squared_deviations / (count - 1).clamp(min=1.0)
    return count, mean, variance


def _stack(*tensors):
    import torch

    return torch.stack([tensor.float() for tensor in tensors])


def _whiten(values, mask, accelerator, shift_mean: bool):
    """Masked whitening over the whole rollout batch (PPO.md §2.5, §2.7); global moments across ranks."""
    import torch

    from harness.algorithms import common

    if accelerator.num_processes == 1:
        return common.masked_whiten(values, mask, shift_mean=shift_mean)
    count, mean, variance = _global_moments(values, mask, accelerator)
    if float(count.item()) < 2:
        raise ValueError("whitening needs at least 2 valid tokens (PPO.md §6.1)")
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def _rollout_statistics(scores, per_token_kl, logp_old, logp_ref, mask, has_stop, entropy, kl_coef, accelerator):
    """Objective and completion statistics of one rollout batch (PPO.md §2.13), from gathered per-sequence values.

    Names follow TRL GRPO where they mean the same (reward, reward_std, kl, entropy, completions/*), PPO-only
    ones are under ``ppo/``.
    """
    from harness.algorithms import common

    lengths = common.masked_count(mask, dim=1)
    per_sequence = _stack(
        scores,
        common.masked_sum(common.kl_k1(logp_old, logp_ref), mask, dim=1),  # objective/kl: sum_t m k1_t
        common.masked_sum(common.kl_k3(logp_old, logp_ref), mask, dim=1),  # objective/kl_k3 cross-check
        common.masked_sum(-kl_coef * per_token_kl, mask, dim=1),  # non-score reward, with the reward's estimator
        lengths,
        has_stop.float(),
        common.masked_sum(entropy, mask, dim=1),
    )
    gathered = accelerator.gather(per_sequence.T.contiguous()).T if accelerator.num_processes > 1 else per_sequence
    scores_all, kl_all, kl_k3_all, non_score_all, lengths_all, stop_all, entropy_all = gathered.cpu().double()
    tokens = float(lengths_all.sum())
    reward = float(scores_all.mean())
    non_score_reward = float(non_score_all.mean())
    stop_rate = float(stop_all.mean())
    return {
        "reward": reward,
        "reward_std": float(scores_all.std()) if len(scores_all) > 1 else 0.0,
        "kl": float(kl_all.mean()),
        "entropy": float(entropy_all.sum()) / max(tokens, 1.0),
        "completions/mean_length": float(lengths_all.mean()),
        "completions/min_length": float(lengths_all.min()),
        "completions/max_length": float(lengths_all.max()),
        "completions/clipped_ratio": 1.0 - stop_rate,  # fraction without EOS, cut at max_new_tokens
        "ppo/stop_rate": stop_rate,
        "ppo/kl_k3": float(kl_k3_all.mean()),
        "ppo/kl_per_token": float(kl_all.sum()) / max(tokens, 1.0),
        "ppo/non_score_reward": non_score_reward,
        "ppo/rlhf_reward": reward + non_score_reward,  # score - beta KL (PPO.md §6.8 wording)
        "ppo/kl_coef": float(kl_coef),
        "_tokens": tokens,
    }


def _value_statistics(returns, values_old, mask, raw_advantage_moments, accelerator) -> dict[str, float]:
    """Critic health (PPO.md §2.13 val/*): explained variance 1 - Var(G - V)/Var(G), raw advantage moments."""
    _, returns_mean, returns_variance = _global_moments(returns, mask, accelerator)
    _, values_mean, _ = _global_moments(values_old, mask, accelerator)
    _, _, residual_variance = _global_moments(returns - values_old, mask, accelerator)
    _, advantage_mean, advantage_variance = raw_advantage_moments
    returns_variance, residual_variance = float(returns_variance), float(residual_variance)
    return {
        "ppo/explained_variance": 1.0 - residual_variance / returns_variance if returns_variance > 0 else 0.0,
        "ppo/advantage_mean_raw": float(advantage_mean),
        "ppo/advantage_std_raw": math.sqrt(float(advantage_variance)),
        "ppo/returns_mean": float(returns_mean),
        "ppo/values_mean": float(values_mean),
    }


def _abort_if_not_finite(update: int, metrics: dict[str, float]) -> None:
    """NaN weights surface later as sampling errors (trl#229); stop at the first non-finite statistic (§6.1)."""
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if bad:
        raise FloatingPointError(f"PPO update {update}: non-finite {', '.join(bad)} (PPO.md §6.1)")
