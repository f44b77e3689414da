"""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025, arXiv:2503.14476), through
TRL's GRPOTrainer.

What is implemented, of the paper's four techniques:
- Clip-higher (§3.1): the importance ratio is clipped to [1 - epsilon, 1 + epsilon_high] with the paper's
  epsilon 0.2 and epsilon_high 0.28 (GRPOConfig `epsilon`, `epsilon_high`).
- Token-level policy-gradient loss (§3.3): the masked per-token losses summed over the batch and divided by
  its number of active tokens (TRL `loss_type="dapo"`: the global count over all processes).
- Overlong filtering (§3.4, the masking the paper evaluates before its soft punishment): completions that hit
  max_new_tokens without stopping are left out of the loss (TRL `mask_truncated_completions`); they still
  count in their group's reward mean and std.
- Group advantages as GRPO's: r minus the group mean, over the group std (`scale_rewards="group"`).

Departures from the paper:
- Dynamic sampling (§3.2, over-sampling and dropping groups whose rewards are all equal until the batch is
  full) is not in TRL and not implemented: groups with zero reward spread stay in the batch with advantage 0,
  so a step may train on fewer informative groups. (With a learned reward model's continuous scores such
  groups are rare; with a discrete gold reward they are not.)
- Soft overlong punishment (§3.4, a length-dependent reward penalty) is not implemented; the suite's
  missing-stop penalty applies to truncated completions instead, and with overlong filtering on it moves
  their group's baseline only.
- KL: the paper removes the KL term (beta = 0); ours keeps GRPO's k3 penalty to the frozen SFT reference,
  weighted by `beta` (the KL knob a frontier sweeps), multiplied by the importance ratio
  (`use_bias_correction_kl`, as grpo.py). beta = 0 gives the paper's objective.
- The training reward is the suite's (a reward model's score or the gold reward), not a verifiable one; the
  paper's setup (its model, data, batch sizes, 16 minibatch updates per rollout) is not reproduced: model,
  data, budget and sampling are the suite's, and `steps_per_generation` (default 1, as grpo.py) sets the
  minibatch updates per rollout. With 1 the ratio is 1 and clip-higher never fires; raise it to make the
  decoupled clip matter.
Departures from TRL's defaults: beta (TRL: 0.0), epsilon_high (TRL: = epsilon), mask_truncated_completions
(TRL: off), dropout off, the suite's sampling settings; the unused GRPOTrainer features are pinned off
(trl_online.GRPO_FEATURES_OFF).

Training, sampling, budget, snapshots, resume and several processes: harness/algorithms/trl_online.py.
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
CURVES = ("reward", "kl", "completions/mean_length", "entropy", "clip_ratio/high_mean")
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
    epsilon: float = 0.2
    # clip range of the importance ratio, lower side: ratio >= 1 - epsilon (the paper's epsilon_low)
    epsilon_high: float = 0.28
    # clip range, upper side: ratio <= 1 + epsilon_high (the paper's clip-higher)
    mask_truncated_completions: bool = True
    # overlong filtering: completions cut at max_new_tokens are left out of the loss
    num_iterations: int = 1
    # optimisation passes per rollout
    steps_per_generation: int = 1
    # optimizer steps per rollout (minibatches); > 1 makes the policy stale within a rollout, so clipping fires
    use_bias_correction_kl: bool = True
    # multiply k3 by the ratio: the gradient of the reverse KL (as grpo.py)

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages are relative to a group)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.epsilon_high >= self.epsilon, "epsilon_high", "must be >= epsilon (clip-higher)")
        require(self.num_iterations > 0, "num_iterations", "must be > 0")
        require(self.steps_per_generation > 0, "steps_per_generation", "must be > 0")


def train(context):
    from trl import GRPOConfig, GRPOTrainer

    from harness.algorithms.trl_online import GRPO_FEATURES_OFF, train_online
    from harness.algorithms.trl_support import grpo_sequence_kl

    config: Config = context.config
    objective = dict(
        beta=config.beta,
        loss_type="dapo",  # token-level loss over the global active-token count (paper §3.3)
        scale_rewards="group",
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        importance_sampling_level="token",
        mask_truncated_completions=config.mask_truncated_completions,
        num_iterations=config.num_iterations,
        steps_per_generation=config.steps_per_generation,
        use_bias_correction_kl=config.use_bias_correction_kl,
        **GRPO_FEATURES_OFF,
    )
    return train_online(context, trainer_class=GRPOTrainer, config_class=GRPOConfig, objective=objective,
                        watched=WATCHED, sequence_kl=grpo_sequence_kl)
