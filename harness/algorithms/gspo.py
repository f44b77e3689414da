"""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071), through TRL's GRPOTrainer.

What is implemented: GRPO's group advantages (r minus the group mean, over the group std) with a
sequence-level importance ratio: each completion's ratio is s_i = exp(mean over its tokens of
log π(y_t)/π_old(y_t)), the paper's length-normalised sequence likelihood ratio (TRL
`importance_sampling_level="sequence"`, grpo_trainer `_compute_loss`), clipped as a whole to
[1 - epsilon, 1 + epsilon_high] and applied to every token of the completion; the loss is the mean over each
completion's tokens, then over completions (`loss_type="grpo"`), which for a ratio constant within a
completion is the paper's per-sequence objective (1/G) Σ_i min(s_i A_i, clip(s_i) A_i). Clipping ranges are
the paper's (§5.1: 3e-4 below, 4e-4 above: sequence ratios are geometric means of token ratios, so they
move far less than token ratios), and each rollout is split into 4 minibatches, one optimizer step each
(§5.1; `steps_per_generation` 4): only then is the policy stale within a rollout and the sequence-level clip
does anything. With one step per rollout the ratio is 1 and GSPO's gradient equals GRPO's with the "grpo" loss.

Departures from the paper:
- KL: the paper trains without a KL term (beta = 0); ours keeps a k3 penalty to the frozen SFT reference,
  weighted by `beta` (the KL knob a frontier sweeps) and multiplied by the sequence ratio
  (`use_bias_correction_kl`, TRL broadcasts the sequence weight onto the per-token KL). beta = 0 gives the
  paper's objective.
- The training reward is the suite's (a reward model's score or the gold reward, minus the missing-stop
  penalty); the paper's setup (its models, data, batch sizes) is not reproduced: model, data, budget and
  sampling are the suite's.
- The per-sequence KL curve (record.TRAIN_KL_PER_SEQUENCE) is logged on the optimizer steps that sample a
  rollout only (every `steps_per_generation` steps): TRL logs the completions' mean length only there.
Departures from TRL's defaults: beta (TRL: 0.0), loss_type (TRL: "dapo"), importance_sampling_level (TRL:
"token"), epsilon and epsilon_high (TRL: 0.2 both), steps_per_generation (TRL: = gradient accumulation, 1),
dropout off, the suite's sampling settings; the unused GRPOTrainer features are pinned off
(trl_online.GRPO_FEATURES_OFF).

Training, sampling, budget, snapshots, resume and several processes: harness/algorithms/trl_online.py. The
budget counts optimizer steps, so a rollout holds steps_per_generation steps' prompts and the number of
prompts and completions is the same as GRPO's at the same prompts_per_step.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.config import require, require_scheduler

# What the harness reads from an algorithm module (harness/registry.py).
FAMILY = record.FAMILY_ONLINE_POLICY_GRADIENT
KL_KNOB = "beta"  # weight of the k3 KL penalty in the loss
KL_KNOB_RAISES_KL = False
TRAINS_POLICY = True
CURVES = ("reward", "kl", "completions/mean_length", "entropy", "clip_ratio/region_mean")
WATCHED = ("loss", "grad_norm", "reward", "kl")


def describe_data(options: dict) -> str:
    return "completions it samples from its current policy, scored by the training reward"


@dataclass
class Config:
    beta: float = 0.04
    # weight of the per-token k3 KL to the reference in the loss (0 = the paper's objective, no reference model)
    num_generations: int = 8
    # group size G: completions sampled per prompt
    prompts_per_step: int = 8
    # prompts per optimizer step, global over all processes
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    epsilon: float = 3e-4
    # clip range of the sequence ratio, lower side: s >= 1 - epsilon (paper §5.1)
    epsilon_high: float = 4e-4
    # clip range of the sequence ratio, upper side: s <= 1 + epsilon_high (paper §5.1)
    steps_per_generation: int = 4
    # optimizer steps per rollout: the rollout is split into this many minibatches (paper §5.1: 4)
    num_iterations: int = 1
    # optimisation passes over each rollout
    use_bias_correction_kl: bool = True
    # multiply k3 by the (sequence) ratio, as grpo.py

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages are relative to a group)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.epsilon_high >= self.epsilon, "epsilon_high", "must be >= epsilon")
        require(self.steps_per_generation > 0, "steps_per_generation", "must be > 0")
        require(self.num_iterations > 0, "num_iterations", "must be > 0")


def train(context):
    from trl import GRPOConfig, GRPOTrainer

    from harness.algorithms.trl_online import GRPO_FEATURES_OFF, train_online
    from harness.algorithms.trl_support import grpo_sequence_kl

    config: Config = context.config
    objective = dict(
        beta=config.beta,
        # The per-completion token mean: with one ratio per completion, the paper's per-sequence objective
        # (TRL warns that its token-sum losses would weight each sequence by its length instead).
        loss_type="grpo",
        scale_rewards="group",
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        importance_sampling_level="sequence",  # the paper's s_i: one ratio per completion
        mask_truncated_completions=False,
        num_iterations=config.num_iterations,
        steps_per_generation=config.steps_per_generation,
        use_bias_correction_kl=config.use_bias_correction_kl,
        **GRPO_FEATURES_OFF,
    )
    return train_online(context, trainer_class=GRPOTrainer, config_class=GRPOConfig, objective=objective,
                        watched=WATCHED, sequence_kl=grpo_sequence_kl)
