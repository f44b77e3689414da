"""REINFORCE++ (Hu et al. 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language
Models", arXiv:2501.03262), our own implementation on the update PPO uses (`harness.algorithms.onpolicy`), with
OpenRLHF's `--advantage_estimator reinforce` as the reference implementation read (its experience maker:
`compute_reward`, `get_cumulative_returns` and the advantage normalisation over all experiences).

What is implemented, one update at a time:

1. Rollout: B prompts, one completion each, sampled from the current policy exactly as PPO samples them
   (PPO.md §2.2: pure sampling at temperature T, truncation after the first EOS), scored by the harness's
   training reward (proxy RM or gold, with the missing-stop penalty).
2. Per-token reward (the paper's eq. for r_t; PPO's KL-in-reward code, `ppo_math.per_token_rewards`):
   r_t = -beta * KL_t at every response token plus the sequence score at the last one, with
   KL_t = log pi_old(y_t) - log pi_ref(y_t) (k1) from teacher-forced forwards at T, as in PPO.md §2.4.
3. Returns and advantages: no critic. The return is the discounted reward-to-go G_t = sum_{s>=t} gamma^(s-t)
   r_s (gamma = 1 by default, so G_t = score - beta * sum_{s>=t} KL_s, the paper's advantage before
   normalisation), and the advantage is G_t normalised over the whole global batch: mean and standard
   deviation over every valid token of every rollout of the update, on all ranks (the paper's "global batch
   normalisation", OpenRLHF's normalisation over all experiences).
4. Optimisation: PPO's clipped surrogate (epsilon 0.2) over minibatches, token aggregation "sum over the
   minibatch's valid tokens / their global count" (PPO.md §2.8), AdamW with gradient clipping; no value loss,
   no entropy bonus.
5. Logging: PPO's statistics under `reinforce_pp/`, with the curves every algorithm shares (harness.record):
   `budget_fraction` (update / updates) and `kl_per_sequence` (the per-sequence k1 sum of the rollouts to the
   reference, mean over rollouts, also logged as `kl`).

Departures and choices (from the paper and from OpenRLHF's defaults):

- The advantage normalisation uses the unbiased token variance and (x - mean) / sqrt(var + 1e-8) (PPO's
  whitening, shared code); OpenRLHF divides by the population variance clamped at 1e-8. Over the thousands of
  tokens of a batch the two differ by a factor sqrt(n / (n - 1)).
- Token aggregation is PPO's (a token sum over the minibatch's global valid-token count, exact under
  gradient accumulation); OpenRLHF's default takes a token mean per micro-batch.
- One completion per prompt (the paper's REINFORCE++ for general RLHF, OpenRLHF's example with
  n_samples_per_prompt 1); the "REINFORCE++ w/ baseline" variant (group-mean baseline) is not implemented.
- The KL estimator in the reward defaults to k1 (the paper's eq., OpenRLHF's default); k3 is a flag, as in PPO.
  beta is fixed (no adaptive controller): it is the knob a frontier sweeps.
- No reward normalisation and no reward clipping (OpenRLHF clips to [-10, 10]): the suite's reward is
  already on a fixed scale and shared by every algorithm.
- Dropout is off everywhere, LoRA's own dropout modules included (`lora.dropout` is ignored, as in PPO:
  dropout on in training and off when scoring would make the ratio differ from 1 before any step).
- Learning rate: linear decay to 0 over the updates by default (OpenRLHF: cosine with warm-up); sizes and
  rates suit the tiny CPU suite, not the paper's 7B runs (rollout batch 1024, lr 5e-7 in OpenRLHF's example).
- `ppo_epochs` defaults to 1 (OpenRLHF's `max_epochs` 1 for REINFORCE++): one pass over each update's rollouts
  in B / minibatch_size optimizer steps.
- With LoRA the reference is the policy with its adapters disabled, as in PPO. Multi-process runs (Accelerate
  DDP) shard rollouts and reduce every count, moment and statistic exactly as PPO does (shared code).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

from harness import record
from harness.algorithms import onpolicy
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require

logger = logging.getLogger(__name__)

SPEC = AlgorithmSpec(
    family=record.FAMILY_ONLINE_POLICY_GRADIENT,
    kl_knob="kl_coef",  # beta of the per-token KL penalty in the reward
    kl_knob_raises_kl=False,
    describe_data=lambda config: (
        "one completion per prompt sampled from its current policy each update, scored by the training reward"
    ),
    curves=("reward", "completions/mean_length", "entropy"),  # KL: the shared kl_per_sequence
    watched=("loss", "grad_norm", "reward", "kl"),
)

NAME = "reinforce_pp"  # the registry name: config keys in errors, the prefix of its own statistics
PREFIX = f"{NAME}/"


@dataclass
class Config:
    rollouts_per_update: int = 64
    # B: prompts drawn per update, one rollout each (global over all processes; the batch advantages are
    # normalised over)
    minibatch_size: int = 16
    # rollouts per optimizer step, global over all processes
    micro_batch_size: int = 16
    # rollouts per forward/backward (per device); gradients accumulate over a minibatch exactly
    rollout_batch_size: int = 64
    # rollouts per generate() call and per no-grad scoring forward (per device; memory knob only)
    ppo_epochs: int = 1
    # passes over each update's rollouts (OpenRLHF max_epochs 1)
    learning_rate: float = 5e-4
    # peak learning rate, decayed to 0 over the updates by lr_scheduler
    lr_scheduler: str = "linear"
    # "linear", "cosine" or "constant"; stepped once per update
    adam_epsilon: float = 1e-5
    # AdamW eps
    max_grad_norm: float = 1.0
    # gradient clipping
    kl_coef: float = 0.01
    # beta of the per-token KL penalty in the reward (OpenRLHF's example: init_kl_coef 0.01)
    kl_estimator: str = "k1"
    # per-token KL in the reward: "k1" (the paper's, unbiased gradient) or "k3" (a flag for experiments)
    gamma: float = 1.0
    # discount of the reward-to-go
    clip_epsilon: float = 0.2
    # ratio clip range of the surrogate

    def __post_init__(self):
        require(
            self.rollouts_per_update >= 2,
            "rollouts_per_update",
            "must be >= 2 (advantages are normalised over the batch)",
        )
        require(self.minibatch_size > 0, "minibatch_size", "must be > 0")
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
        require(
            self.lr_scheduler in ("linear", "cosine", "constant"), "lr_scheduler", "must be linear, cosine or constant"
        )
        require(self.adam_epsilon > 0, "adam_epsilon", "must be > 0")
        require(self.max_grad_norm > 0, "max_grad_norm", "must be > 0")
        require(self.kl_coef >= 0, "kl_coef", "must be >= 0")
        require(
            self.kl_estimator in ("k1", "k3"),
            "kl_estimator",
            "must be 'k1' or 'k3' (k2 is biased and never goes in the reward, PPO.md §2.4)",
        )
        require(0 < self.gamma <= 1, "gamma", "must be in (0, 1]")
        require(0 < self.clip_epsilon < 1, "clip_epsilon", "must be in (0, 1)")


def train(context):

    config: Config = context.config
    setup = onpolicy.prepare(context, NAME, "REINFORCE++")  # the checks and seeds PPO has
    # The rollout engine (rollouts.generator=vllm) holds memory outside the models: released however training ends.
    with contextlib.closing(setup):
        learner = build_learner(context, setup.accelerator)
        scheduler = onpolicy.make_scheduler(config.lr_scheduler, learner.policy_optimizer, setup.num_updates)
        # value_clip is read only with a critic, entropy_coef 0: the loss is the clipped surrogate alone.
        settings = onpolicy.LossSettings(setup.temperature, config.clip_epsilon, value_clip=0.0, entropy_coef=0.0)
        spend = onpolicy.Spend()
        onpolicy.start_progress(context, setup)
        for update in range(1, setup.num_updates + 1):
            sampled = onpolicy.sample_rollouts(context, setup, learner.policy)
            learning_rate = scheduler.get_last_lr()[0]
            statistics = learn_from_rollouts(
                learner,
                sampled.rollouts,
                sampled.scores,
                settings,
                config,
                setup.local_minibatch,
                setup.minibatch_generator,
            )
            scheduler.step()  # once per update
            onpolicy.finish_update(
                context,
                setup,
                learner.policy,
                update,
                statistics,
                sampled,
                spend,
                {"learning_rate": learning_rate},
                "REINFORCE++",
            )
        return onpolicy.finish(context, setup, learner.policy, spend)


@dataclass
class Learner:
    """The policy (wrapped by Accelerate), its frozen reference (the adapter-disabled policy under LoRA) and its
    optimizer. There is no critic."""

    policy: Any
    reference: Any
    policy_optimizer: Any
    accelerator: Any


def build_learner(context, accelerator) -> Learner:

    config: Config = context.config
    policy, reference, lora = onpolicy.load_policy_and_reference(context, NAME, accelerator)
    policy = onpolicy.adapt_policy(policy, lora, context.suite.gradient_checkpointing)
    optimizer = onpolicy.policy_optimizer(policy, config.learning_rate, config.adam_epsilon)
    policy, optimizer = accelerator.prepare(policy, optimizer)
    if lora:
        reference = onpolicy.AdapterDisabledReference(policy, accelerator.unwrap_model(policy))
    return Learner(policy, reference, optimizer, accelerator)


def advantages(scores, logp_old, logp_ref, mask, config: Config, accelerator):
    """REINFORCE++ advantages ``[B, L]`` of this rank's rollouts and the per-token KL estimate that shaped them.

    Rewards r_t = -beta KL_t plus the score at the last valid token (PPO's KL-in-reward); returns
    G_t = r_t + gamma G_{t+1}, which is GAE with every value 0 and lambda 1 (delta_t = r_t), so PPO's GAE code
    computes them; then whitening over the valid tokens of the whole global batch (OpenRLHF normalises the
    returns over all experiences the same way). 0 where ``mask`` is False.
    """
    import torch

    from harness.algorithms import ppo_math

    rewards, per_token_kl = ppo_math.per_token_rewards(
        scores, logp_old, logp_ref, mask, config.kl_coef, kl_estimator=config.kl_estimator
    )
    no_values = torch.zeros_like(rewards)
    returns, _ = ppo_math.gae_advantages_and_returns(rewards, no_values, mask, config.gamma, 1.0)
    return onpolicy.whiten(returns, mask, accelerator, shift_mean=True), per_token_kl


def learn_from_rollouts(
    learner: Learner, rollouts, scores, settings, config: Config, local_minibatch: int, minibatch_generator
) -> dict[str, float]:
    """One update from this rank's rollouts (`onpolicy.Rollouts`) and sequence scores: log-probs, advantages,
    the epochs of clipped-surrogate steps and the update's statistics (global over ranks, as PPO's)."""

    accelerator = learner.accelerator
    started = time.perf_counter()
    logp_old, logp_ref, _, rollout_entropy = onpolicy.score_rollout(
        learner.policy,
        learner.reference,
        None,
        rollouts,
        settings.temperature,
        config.rollout_batch_size,
        accelerator,
    )
    seconds_score = time.perf_counter() - started
    token_advantages, per_token_kl = advantages(scores, logp_old, logp_ref, rollouts.mask, config, accelerator)
    batch = onpolicy.TrainingBatch(
        rollouts.prompt_ids,
        rollouts.prompt_mask,
        rollouts.response_ids,
        rollouts.mask,
        logp_old,
        None,
        token_advantages,
        None,
        rollouts.prompt_starts,
        rollouts.response_lengths,
    )

    started = time.perf_counter()
    learner.policy.train()
    update_statistics = onpolicy.optimise(
        onpolicy.Models(learner.policy, learner.policy_optimizer),
        batch,
        settings,
        onpolicy.EpochSettings(config.ppo_epochs, config.micro_batch_size, config.max_grad_norm, target_kl=0.0),
        local_minibatch,
        minibatch_generator,
        accelerator,
        PREFIX,
    )
    seconds_train = time.perf_counter() - started

    rollout_statistics = onpolicy.rollout_statistics(
        scores,
        per_token_kl,
        logp_old,
        logp_ref,
        rollouts.mask,
        rollouts.has_stop,
        rollout_entropy,
        config.kl_coef,
        accelerator,
        PREFIX,
    )
    seconds_score, seconds_train = onpolicy.slowest_rank_seconds([seconds_score, seconds_train], accelerator)
    return {
        **rollout_statistics,
        **update_statistics,
        f"{PREFIX}seconds_score": seconds_score,
        f"{PREFIX}seconds_train": seconds_train,
    }
