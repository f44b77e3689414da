"""Dr. GRPO: GRPO Done Right (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective",
arXiv:2503.20783), through TRL's GRPOTrainer.

What is implemented: GRPO (harness/algorithms/grpo.py) without its two normalisations that the paper shows
bias the optimisation. (1) No division by each completion's length: TRL's `loss_type="dr_grpo"` sums the
masked per-token losses and divides by a constant, completions x max_new_tokens (grpo_trainer
`_compute_loss`), as the paper's unbiased objective does with the generation budget. (2) No division of the
advantage by the group's reward std: `scale_rewards="none"` keeps A_i = r_i - mean(r_group). Everything else
is GRPO's: G completions per prompt from the current policy, the training reward, the clipped surrogate.

Departures from the paper, all stated as settings here:
- KL: the paper trains without a KL term (beta = 0, rule-based rewards); ours keeps GRPO's k3 penalty to the
  frozen SFT reference, weighted by `beta` (the KL knob a frontier sweeps), multiplied by the importance ratio
  (`use_bias_correction_kl`, as in grpo.py). beta = 0 gives the paper's objective.
- The training reward is the suite's (a learned reward model's score or the gold reward, minus the missing-stop
  penalty), not the paper's verifiable math reward.
- The paper's training setup (its models, MATH data, batch sizes, learning rate) is not reproduced: model, data,
  budget and sampling are the suite's, and one optimizer step is taken per rollout (`steps_per_generation` 1,
  `num_iterations` 1), as in grpo.py, so the ratio is 1 and the clip never fires.
Departures from TRL's defaults: beta (TRL: 0.0), dropout off, the suite's sampling settings; every GRPOConfig
setting that changes results is set from Config and logged, the unused features pinned off
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
CURVES = ("reward", "kl", "completions/mean_length", "entropy")
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
    loss_type: str = "dr_grpo"
    # token aggregation: "dr_grpo" = token sum over completions x max_new_tokens (the paper's constant)
    scale_rewards: str = "none"
    # advantage scale: "none" = the paper's unscaled A = r - mean(group)
    epsilon: float = 0.2
    # clip range of the importance ratio, lower side
    epsilon_high: float = 0.2
    # clip range, upper side
    num_iterations: int = 1
    # optimisation passes per rollout
    steps_per_generation: int = 1
    # optimizer steps per rollout (minibatches)
    use_bias_correction_kl: bool = True
    # multiply k3 by the ratio: the gradient of the reverse KL (as grpo.py)

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages are relative to a group)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.loss_type in ("dr_grpo", "dapo"), "loss_type",
                "must be dr_grpo or dapo (the paper's point is no per-completion length normalisation)")
        require(self.scale_rewards in ("none", "batch"), "scale_rewards",
                "must be none or batch (the paper's point is no per-group std normalisation)")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.epsilon_high >= self.epsilon, "epsilon_high", "must be >= epsilon")
        require(self.num_iterations > 0, "num_iterations", "must be > 0")
        require(self.steps_per_generation > 0, "steps_per_generation", "must be > 0")


def train(context):
    from trl import GRPOConfig, GRPOTrainer

    from harness.algorithms.trl_online import GRPO_FEATURES_OFF, train_online
    from harness.algorithms.trl_support import grpo_sequence_kl

    config: Config = context.config
    objective = dict(
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        epsilon=config.epsilon,
        epsilon_high=config.epsilon_high,
        importance_sampling_level="token",
        mask_truncated_completions=False,
        num_iterations=config.num_iterations,
        steps_per_generation=config.steps_per_generation,
        use_bias_correction_kl=config.use_bias_correction_kl,
        **GRPO_FEATURES_OFF,
    )
    return train_online(context, trainer_class=GRPOTrainer, config_class=GRPOConfig, objective=objective,
                        watched=WATCHED, sequence_kl=grpo_sequence_kl)
