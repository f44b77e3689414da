"""IPO: Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm to Understand
Learning from Human Preferences", arXiv:2310.12036), through TRL's DPOTrainer with `loss_type="ipo"`.

What is implemented: the squared loss of the paper's Eq. 17, (h − 1/(2τ))², where h is the chosen-minus-
rejected difference of log-ratios to the frozen reference, on (prompt, chosen, rejected) pairs; the SFT
checkpoint is both the initial policy and the reference. τ is this config's `beta` (TRL's name): the target
margin is 1/(2·beta), so a larger beta keeps the policy closer to the reference.

Departures:
- From the paper: TRL 1.16 length-normalises h (dpo_trainer `_compute_loss`, loss_type "ipo"): each
  sequence's log-ratio log π(y|x) − log π_ref(y|x), summed over its completion tokens, is divided by the number
  of completion tokens (EOS included, which TRL appends), so h is a difference of per-token mean log-ratios.
  Eq. 17 uses whole-sequence log-probabilities; TRL notes the IPO authors confirmed the normalised form is the
  one behind the paper's results. The target margin 1/(2·beta) is therefore in nats per token.
- From TRL's defaults, set so they are logged and equal across algorithms: dropout off, no warm-up, this
  config's learning rate and schedule, max_length = the model's context.

Data: the same pairs as DPO (harness/algorithms/preference_pairs.py): the task's preference pairs, or with
`pairs_source: reward_model` pairs sampled from the SFT policy and labelled by the suite's reward model, pairs
with a sample that did not stop dropped. One pair per training prompt under the `equal_prompts` budget.

Several processes: `batch_size` is the global number of pairs per optimizer step, as for DPO.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.preference_pairs import PAIRS_SOURCES, describe_pairs
from harness.config import require, require_scheduler

# What the harness reads from an algorithm module (harness/registry.py).
FAMILY = record.FAMILY_OFFLINE_PREFERENCE
KL_KNOB = "beta"  # τ of Eq. 17: the target margin is 1/(2·beta), so a larger beta moves less from the reference
KL_KNOB_RAISES_KL = False
TRAINS_POLICY = True
CURVES = ("loss", "rewards/margins", "rewards/accuracies")
WATCHED = ("loss", "grad_norm", "rewards/margins", "rewards/chosen")


def describe_data(options: dict) -> str:
    return describe_pairs(options)


@dataclass
class Config:
    beta: float = 0.1
    # τ: regularisation strength; the loss pulls the per-token log-ratio margin towards 1/(2·beta)
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    batch_size: int = 16
    # preference pairs per optimizer step, global over all processes (each gets batch_size / processes)
    pairs_source: str = "dataset"
    # "dataset": the task's preference pairs; "reward_model": pairs sampled from the SFT policy and labelled
    # by the suite's reward model

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta > 0, "beta", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.pairs_source in PAIRS_SOURCES, "pairs_source", "must be 'dataset' or 'reward_model'")


def train(context):
    from trl import DPOConfig, DPOTrainer

    from harness.algorithms.preference_pairs import train_on_pairs

    config: Config = context.config
    return train_on_pairs(context, arguments_class=DPOConfig, trainer_class=DPOTrainer, watched=WATCHED, objective=dict(
        beta=config.beta,
        loss_type=["ipo"],
        precompute_ref_log_probs=False,
    ))
