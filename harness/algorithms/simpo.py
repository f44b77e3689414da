"""SimPO: Simple Preference Optimization with a reference-free reward (Meng, Xia and Chen 2024,
arXiv:2405.14734), our own loss on TRL's DPOTrainer data pipeline.

What is implemented: the paper's Eq. 6,
    L = −log σ( β/|y_w| · log π(y_w|x) − β/|y_l| · log π(y_l|x) − γ ),
on (prompt, chosen y_w, rejected y_l) pairs, starting from the SFT checkpoint. There is no reference model:
the implicit reward is the length-normalised log-probability β/|y|·log π(y|x), and |y| counts the completion's
tokens, EOS included (TRL appends it). γ (`gamma`) is absolute, as in Eq. 6 and TRL's `simpo_gamma`, not the
γ/β ratio the authors' later code tunes: so sweeping β (the KL knob) moves the target margin γ/β, in nats per
token, as well.

Why our own loss: TRL 1.16 keeps SimPO only in `trl.experimental.cpo` (CPOTrainer, loss_type "simpo",
cpo_alpha 0). It does run here (checked with TRL 1.16.0: two steps on a tiny model), but the namespace warns on
import that it may change or go without notice, TRL is discussing removing it, and CPOTrainer has its own older
data pipeline (DPODataCollatorWithPadding) and forward pass, so SimPO would see other tokenisation and
log-probs than DPO and IPO. `SimPOTrainer` below keeps TRL DPOTrainer's dataset preparation, collation
(input_ids of [chosen; rejected], completion_mask) and per-token log-probs (its fused LM head, as for DPO) and
replaces only the loss. TRL builds no reference model for it: `precompute_ref_log_probs=True` stops DPOTrainer
from loading one, and the reference pass it would then run over the dataset is skipped (nothing reads it).

Departures:
- From the paper: none in the loss. SimPO has no reference, so nothing in training measures or bounds the KL
  to the SFT policy; it is measured only by the evaluator.
- From TRL's defaults: dropout off, no warm-up, this config's learning rate and schedule, max_length = the
  model's context. The paper's β (2-10) and learning rates (3e-7 to 1e-6 for 7-8B models) are far from this
  harness's tiny models; the preset's values are this harness's own.

KL_KNOB_RAISES_KL is True, measured rather than derived: on `tiny` (learning rate 2e-4, γ = 1, the budget's
64 steps) the evaluator's KL to SFT rose with β: 0.42, 0.44, 0.56, 0.80 nats at β = 1, 2, 4, 8 (seed 0), 0.28
and 1.28 at β = 1 and 8 (seed 1), while gold reward fell past β = 2. The loss's shape suggests the opposite (a
larger β saturates the sigmoid at a smaller margin, as DPO's β does), but with Adam the step size does not
shrink as pairs saturate: a larger β only concentrates the gradient on the pairs the policy still orders
wrongly (β acts as a sample filter), and with no reference to pull it back the policy moves further. A frontier
sweep of β shows the direction on each suite.

Data: the same pairs as DPO (harness/algorithms/preference_pairs.py). One pair per training prompt under the
`equal_prompts` budget. Several processes: `batch_size` is the global number of pairs per step, as for DPO;
the loss is the per-rank mean, averaged by DDP, and the logged statistics are gathered over ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.preference_pairs import PAIRS_SOURCES, describe_pairs, train_on_pairs
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require, require_scheduler

SPEC = AlgorithmSpec(
    family=record.FAMILY_OFFLINE_PREFERENCE,
    kl_knob="beta",  # reward scale; the target per-token margin is gamma/beta
    kl_knob_raises_kl=True,  # measured on tiny, not derived (module docstring)
    describe_data=lambda config: describe_pairs(config.pairs_source),
    curves=("loss", "rewards/margins", "rewards/accuracies"),
    watched=("loss", "grad_norm", "rewards/margins", "rewards/chosen"),
)


@dataclass
class Config:
    beta: float = 2.0
    # β: scale of the length-normalised reward β/|y|·log π(y|x) (the paper's range is 2-10)
    gamma: float = 1.0
    # γ: the target reward margin; the policy's per-token log-prob margin is pushed past γ/β (the paper tunes
    # it with β; γ/β = 0.5 here)
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
        require(self.gamma >= 0, "gamma", "must be >= 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.pairs_source in PAIRS_SOURCES, "pairs_source", "must be 'dataset' or 'reward_model'")


def train(context):
    from trl import DPOConfig

    config: Config = context.config
    return train_on_pairs(
        context,
        arguments_class=DPOConfig,
        trainer_class=simpo_trainer_class(),
        watched=SPEC.watched,
        objective=dict(beta=config.beta, precompute_ref_log_probs=True),  # no reference model is built (docstring)
        trainer_arguments=dict(gamma=config.gamma),
    )


def simpo_trainer_class():
    """TRL's DPOTrainer with the SimPO loss in place of its own (defined here so that importing this module
    does not import TRL)."""
    import torch.nn.functional as F
    from trl import DPOTrainer

    class SimPOTrainer(DPOTrainer):
        def __init__(self, *args, gamma: float, **kwargs):
            self.gamma = gamma
            super().__init__(*args, **kwargs)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            # SimPO has no reference: skip the reference pass DPOTrainer runs with precompute_ref_log_probs.
            return dataset

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            mode = "train" if self.model.training else "eval"
            completion_mask = inputs["completion_mask"]
            labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
            # DPOTrainer's fused LM head: per-token log-probs of the labels (0 where masked), as DPO gets them.
            outputs = model(
                input_ids=inputs["input_ids"],
                attention_mask=inputs["attention_mask"],
                labels=labels,
                fused_lm_head=True,
                use_cache=False,
            )
            per_token_logps = outputs.log_probs[:, -(completion_mask.size(1) - 1) :]
            lengths = completion_mask.sum(dim=1).clamp(min=1)  # |y|: completion tokens, EOS included
            mean_logps = per_token_logps.sum(dim=1) / lengths
            chosen, rejected = mean_logps.chunk(2, dim=0)  # the collator puts [chosen; rejected]
            # Eq. 6 of arXiv:2405.14734: −log σ(β/|y_w| log π(y_w|x) − β/|y_l| log π(y_l|x) − γ)
            chosen_rewards, rejected_rewards = self.beta * chosen, self.beta * rejected
            loss = -F.logsigmoid(chosen_rewards - rejected_rewards - self.gamma).mean()

            gather = self.accelerator.gather_for_metrics
            chosen_rewards, rejected_rewards = gather(chosen_rewards.detach()), gather(rejected_rewards.detach())
            metrics = self._metrics[mode]
            metrics["rewards/chosen"].append(chosen_rewards.mean().item())
            metrics["rewards/rejected"].append(rejected_rewards.mean().item())
            metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
            metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
            return (loss, outputs) if return_outputs else loss

    return SimPOTrainer
