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
6. Logging (§2.13): one row per update of the statistics below, plus the curves every algorithm shares
   (harness.record): `budget_fraction` (update / updates) and `kl_per_sequence` (the per-sequence k1 sum of
   the rollouts to the reference, mean over rollouts: the `kl` statistic under the shared name).

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
  The critic trains all its weights. `lora.dropout` is ignored: dropout is off everywhere (§2.1), LoRA's own
  dropout modules included, since peft's dropout acts in train mode only and would make the minibatch
  forwards a different network from the one that scored the rollouts (the ratio would not start at 1, §5.2 E3).
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
`harness.algorithms.ppo_math` and is unit-tested against PPO.md §5.1. Everything of the update but the critic and
the advantages (rollouts, scoring, KL-in-reward, whitening, the epochs of clipped-surrogate steps, logging,
checkpoints) lives in `harness.algorithms.onpolicy`, shared with REINFORCE++; this module adds the critic,
GAE, the KL controller and critic warm-up.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import record
from harness.algorithms import onpolicy
from harness.algorithms.onpolicy import AdapterDisabledReference
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import ConfigError, require

logger = logging.getLogger(__name__)

SPEC = AlgorithmSpec(
    family=record.FAMILY_ACTOR_CRITIC,
    kl_knob="kl_coef",  # beta of the per-token KL penalty in the reward
    kl_knob_raises_kl=False,
    describe_data=lambda config: (
        "one completion per prompt sampled from its current policy each update, scored by the training reward"
    ),
    curves=("reward", "completions/mean_length", "entropy", "ppo/value_loss"),  # KL: the shared kl_per_sequence
    watched=("loss", "grad_norm", "reward", "kl", "ppo/value_loss"),
)


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
# Entry point
# ---------------------------------------------------------------------------------------------------------

NAME = "ppo"  # the registry name: config keys in errors, the prefix of PPO's own statistics
PREFIX = f"{NAME}/"


def train(context):
    from harness.algorithms import ppo_math

    config: Config = context.config
    setup = onpolicy.prepare(context, NAME, "PPO")  # refuses bad settings, seeds (PPO.md §6.3, §5.2 E4)
    # The rollout engine (rollouts.generator=vllm) holds memory outside the models: released however training ends.
    with contextlib.closing(setup):
        learner = build_learner(context, setup.tokenizer, setup.accelerator)  # PPO.md §2.1
        policy_scheduler = onpolicy.make_scheduler(config.lr_scheduler, learner.policy_optimizer, setup.num_updates)
        critic_scheduler = onpolicy.make_scheduler(config.lr_scheduler, learner.critic_optimizer, setup.num_updates)
        kl_controller = (
            ppo_math.AdaptiveKLController(config.kl_coef, config.kl_target, config.kl_horizon)
            if config.kl_controller == "adaptive"
            else ppo_math.FixedKLController(config.kl_coef)
        )
        settings = onpolicy.LossSettings(setup.temperature, config.clip_epsilon, config.value_clip, config.entropy_coef)
        spend = onpolicy.Spend()
        onpolicy.start_progress(context, setup)
        for update in range(1, setup.num_updates + 1):
            # ---- 1.-2. Rollout and sequence scores (PPO.md §2.2 steps 1-5, §2.3) ----------------------------
            sampled = onpolicy.sample_rollouts(context, setup, learner.policy)

            # ---- 3.-4. Log-probs, values, advantages, K epochs of minibatch updates (PPO.md §2.2 step 6-§2.9) -----
            train_policy = update > config.critic_warmup_updates
            learning_rate = policy_scheduler.get_last_lr()[0]
            critic_learning_rate = critic_scheduler.get_last_lr()[0]
            statistics = learn_from_rollouts(
                learner,
                sampled.rollouts,
                sampled.scores,
                kl_controller.value,
                settings,
                config,
                setup.local_minibatch,
                setup.minibatch_generator,
                train_policy,
            )
            policy_scheduler.step()  # once per rollout (TRL; PPO.md §2.8)
            critic_scheduler.step()

            # ---- 5. KL controller, spend, one row of statistics (PPO.md §2.10, §2.13) ---------------------------
            kl_controller.update(statistics["kl"], n_steps=config.rollouts_per_update)  # global KL, same on all ranks
            learning_rates = {
                "learning_rate": learning_rate if train_policy else 0.0,
                f"{PREFIX}critic_learning_rate": critic_learning_rate,
            }
            onpolicy.finish_update(
                context,
                setup,
                learner.policy,
                update,
                statistics,
                sampled,
                spend,
                learning_rates,
                "PPO",
                config.entropy_coef,
            )
        return onpolicy.finish(context, setup, learner.policy, spend)


# ---------------------------------------------------------------------------------------------------------
# The models (PPO.md §2.1) and one update
# ---------------------------------------------------------------------------------------------------------


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

    config: Config = context.config
    suite = context.suite
    trust = suite.model.trust_remote_code
    critic_source = _critic_source(context.base_dir, context.reward_model_dir, tokenizer, trust)
    policy, reference, lora = onpolicy.load_policy_and_reference(context, NAME, accelerator)
    critic = _load_critic(critic_source, context.base_dir, context.reward_model_dir, trust)
    onpolicy.disable_dropout(critic.classifier)  # PPO.md §2.1: dropout off everywhere
    if suite.gradient_checkpointing:
        # PPO.md §6.7: the non-reentrant variant (TRL #4811), on the inner model before wrapping (#5245).
        critic.classifier.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    policy = onpolicy.adapt_policy(policy, lora, suite.gradient_checkpointing)

    policy_optimizer = onpolicy.policy_optimizer(policy, config.learning_rate, config.adam_epsilon)
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


def learn_from_rollouts(
    learner: Learner,
    rollouts,
    scores,
    kl_coef: float,
    settings,
    config: Config,
    local_minibatch: int,
    minibatch_generator,
    train_policy: bool = True,
) -> dict[str, float]:
    """One PPO update from this rank's rollouts (`onpolicy.Rollouts`) and sequence scores: log-probs and values,
    rewards, GAE, whitening, K epochs of minibatch steps, and the update's statistics.

    Every returned statistic is global (reduced over all ranks, so every rank returns the same numbers), as is
    ``_tokens`` (response tokens of the whole batch); ``optimizer_steps`` counts synchronous steps.
    """
    from harness.algorithms import ppo_math

    accelerator = learner.accelerator
    started = time.perf_counter()
    mask = rollouts.mask
    if config.score_clip > 0:
        scores = scores.clamp(-config.score_clip, config.score_clip)  # PPO.md §2.3 optional clipping
    # PPO.md §2.2 step 6: old and reference log-probs and values, teacher-forced, no grad.
    logp_old, logp_ref, values_old, rollout_entropy = onpolicy.score_rollout(
        learner.policy,
        learner.reference,
        learner.critic,
        rollouts,
        settings.temperature,
        config.rollout_batch_size,
        accelerator,
    )
    seconds_score = time.perf_counter() - started

    # ---- Rewards, GAE, whitening (PPO.md §2.4-§2.7) ------------------------------------------------------
    rewards, per_token_kl = ppo_math.per_token_rewards(
        scores, logp_old, logp_ref, mask, kl_coef, kl_estimator=config.kl_estimator
    )
    if config.whiten_rewards:
        rewards = onpolicy.whiten(rewards, mask, accelerator, shift_mean=False)  # §2.5, global moments
    # GAE runs along each row, so it needs nothing from other ranks (§2.6).
    advantages, returns = ppo_math.gae_advantages_and_returns(rewards, values_old, mask, config.gamma, config.lam)
    raw_advantage_moments = onpolicy.global_moments(advantages, mask, accelerator)
    # §2.7: once per rollout batch, over the valid tokens of all ranks (all-reduced sum m, sum A m, sum (A-mu)^2 m).
    advantages = onpolicy.whiten(advantages, mask, accelerator, shift_mean=True)
    batch = onpolicy.TrainingBatch(
        rollouts.prompt_ids,
        rollouts.prompt_mask,
        rollouts.response_ids,
        mask,
        logp_old,
        values_old,
        advantages,
        returns,
        rollouts.prompt_starts,
        rollouts.response_lengths,
    )

    # ---- K epochs of minibatch updates (PPO.md §2.8, §2.9) -----------------------------------------------
    started = time.perf_counter()
    learner.policy.train()
    learner.critic.train()
    update_statistics = onpolicy.optimise(
        onpolicy.Models(learner.policy, learner.policy_optimizer, learner.critic, learner.critic_optimizer),
        batch,
        settings,
        onpolicy.EpochSettings(config.ppo_epochs, config.micro_batch_size, config.max_grad_norm, config.target_kl),
        local_minibatch,
        minibatch_generator,
        accelerator,
        PREFIX,
        train_policy,
    )
    seconds_train = time.perf_counter() - started

    # ---- Statistics (PPO.md §2.13), gathered or reduced over ranks ---------------------------------------
    rollout_statistics = onpolicy.rollout_statistics(
        scores,
        per_token_kl,
        logp_old,
        logp_ref,
        mask,
        rollouts.has_stop,
        rollout_entropy,
        kl_coef,
        accelerator,
        PREFIX,
    )
    value_statistics = _value_statistics(returns, values_old, mask, raw_advantage_moments, accelerator)
    seconds_score, seconds_train = onpolicy.slowest_rank_seconds([seconds_score, seconds_train], accelerator)
    return {
        **rollout_statistics,
        **update_statistics,
        **value_statistics,
        f"{PREFIX}seconds_score": seconds_score,
        f"{PREFIX}seconds_train": seconds_train,
    }


def _value_statistics(returns, values_old, mask, raw_advantage_moments, accelerator) -> dict[str, float]:
    """Critic health (PPO.md §2.13 val/*): explained variance 1 - Var(G - V)/Var(G), raw advantage moments."""

    _, returns_mean, returns_variance = onpolicy.global_moments(returns, mask, accelerator)
    _, values_mean, _ = onpolicy.global_moments(values_old, mask, accelerator)
    _, _, residual_variance = onpolicy.global_moments(returns - values_old, mask, accelerator)
    _, advantage_mean, advantage_variance = raw_advantage_moments
    returns_variance, residual_variance = float(returns_variance), float(residual_variance)
    return {
        "ppo/explained_variance": 1.0 - residual_variance / returns_variance if returns_variance > 0 else 0.0,
        "ppo/advantage_mean_raw": float(advantage_mean),
        "ppo/advantage_std_raw": math.sqrt(float(advantage_variance)),
        "ppo/returns_mean": float(returns_mean),
        "ppo/values_mean": float(values_mean),
    }


# ---------------------------------------------------------------------------------------------------------
# The critic: a copy of the reward model read at every position (PPO.md §2.1)
# ---------------------------------------------------------------------------------------------------------


def _has_own_tokenizer(folder: Path) -> bool:
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
    return any((Path(folder) / name).is_file() for name in tokenizer_files)


def _critic_source(base_dir: Path, reward_model_dir: Path, tokenizer, trust_remote_code: bool) -> str:
    """ "reward_model" when the critic can start from the RM (same vocabulary), "policy" otherwise (PPO.md §2.1).

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
