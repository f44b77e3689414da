"""KTO: Kahneman-Tversky Optimization (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic
Optimization", arXiv:2402.01306), through TRL's KTOTrainer.

What is implemented: the paper's KTO loss (its §3; TRL's loss_type "kto") on unpaired examples, from the SFT
checkpoint with the SFT checkpoint as the frozen reference. The examples come from the preference pairs: every
pair gives two, its chosen completion as desirable (label True) and its rejected completion as undesirable
(label False), each with the pair's prompt. With r = log π(y|x) − log π_ref(y|x) (summed over completion
tokens, EOS included: TRL appends it) and the reference point z0, an example's loss is
    desirable:   λ_D · (1 − σ(β·(r − z0)))        undesirable:   λ_U · (1 − σ(β·(z0 − r)))
averaged over the batch (trl kto_trainer `_compute_loss`); λ_D, λ_U are `desirable_weight`,
`undesirable_weight`, set explicitly (1.0 each: every pair gives one desirable and one undesirable example, so
λ_D·n_D / (λ_U·n_U) = 1 lies in the paper's recommended [1, 4/3]). β is the KL knob: a larger β keeps the
policy closer to the reference.

The reference point z0 is TRL's estimate of KL(π‖π_ref) as the paper proposes (§4.1): the mean over the
batch of log π(y'|x) − log π_ref(y'|x) on mismatched pairs, each prompt x paired with the completion y' of the
previous example in its per-device batch (the completions rotated by one), gathered over ranks, clamped at 0
and detached (no gradient flows through it). It needs a per-device batch of at least 2 examples.

Departures:
- From the paper: none in the loss. The data split is the one the paper uses to train KTO on its paired
  preference datasets (y_w desirable, y_l undesirable), so KTO here never sees data DPO does not.
- From TRL: we unpair and order the examples ourselves. TRL would unpair a paired dataset into blocks (all of a
  map batch's chosen, then all its rejected) and, since KTO needs a sequential sampler for its mismatched KL
  pairs, would train on batches of a single label. Here the examples are shuffled once with the cell's seed and
  consumed in that order (the sampler stays sequential, as TRL requires; a second pass over the data, if the
  budget asks for one, repeats the order). Shuffling also keeps a pair's two examples from being neighbours,
  which would give the KL estimate matched pairs.
- From TRL's defaults, set so they are logged and equal across algorithms: dropout off, no warm-up, this
  config's learning rate and schedule, max_length = the model's context, no gradient checkpointing and fp32
  unless the suite asks (KTOConfig defaults both on).

Budget: `batch_size` counts pairs per optimizer step, as DPO's does, so one step trains on 2·batch_size
examples and the suite's prompt budget buys as many steps as DPO's. The N = steps·batch_size pairs the budget
pays for (a seeded sample when the task has more) give the 2N examples, so KTO sees exactly N prompts and 2N
completions, as DPO does (under `equal_completions` a pair is two completions, as for DPO). Data source: as for DPO
(harness/algorithms/preference_pairs.py), the task's pairs or, with `pairs_source: reward_model`, pairs
sampled from the SFT policy and labelled by the suite's reward model.

Several processes: 2·batch_size examples per step globally, each of the W processes gets 2·batch_size / W
(W must divide it); Accelerate's default batch sharding hands every process whole per-device batches of the
sequential order, the blocks within which TRL rotated the completions for the KL pairs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness import record
from harness.algorithms.preference_pairs import PAIRS_SOURCES, describe_pairs, train_on_pairs
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require, require_scheduler

logger = logging.getLogger(__name__)

SPEC = AlgorithmSpec(
    family=record.FAMILY_OFFLINE_PREFERENCE,
    kl_knob="beta",  # scale of the log-ratio inside the sigmoid: larger beta keeps the policy closer to the reference
    kl_knob_raises_kl=False,
    describe_data=lambda config: (
        f"unpaired examples from {describe_pairs(config.pairs_source)}: each pair's chosen "
        "completion as desirable, its rejected one as undesirable"
    ),
    curves=("loss", "kl", "rewards/margins"),
    watched=("loss", "grad_norm", "kl", "rewards/chosen", "rewards/rejected"),
)


@dataclass
class Config:
    beta: float = 0.1
    # scale of the reward log-ratio in the sigmoid: larger beta keeps the policy closer to the reference
    desirable_weight: float = 1.0
    # λ_D: weight of the desirable (chosen) examples' losses
    undesirable_weight: float = 1.0
    # λ_U: weight of the undesirable (rejected) examples' losses
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    batch_size: int = 16
    # preference pairs per optimizer step, global over all processes: 2 x batch_size unpaired examples
    pairs_source: str = "dataset"
    # "dataset": the task's preference pairs; "reward_model": pairs sampled from the SFT policy and labelled
    # by the suite's reward model

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta > 0, "beta", "must be > 0")
        require(self.desirable_weight > 0, "desirable_weight", "must be > 0")
        require(self.undesirable_weight > 0, "undesirable_weight", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.pairs_source in PAIRS_SOURCES, "pairs_source", "must be 'dataset' or 'reward_model'")


def train(context):
    from trl import KTOConfig, KTOTrainer

    config: Config = context.config
    return train_on_pairs(
        context,
        arguments_class=KTOConfig,
        trainer_class=KTOTrainer,
        watched=SPEC.watched,
        objective=dict(
            beta=config.beta,
            loss_type="kto",
            desirable_weight=config.desirable_weight,
            undesirable_weight=config.undesirable_weight,
            train_sampling_strategy="sequential",  # TRL's rotated KL pairs are built for this order (docstring)
            precompute_ref_log_probs=False,
        ),
        rows_per_pair=2,  # a pair's desirable and undesirable example
        to_rows=unpaired_examples,
    )


def unpaired_examples(pairs: list[dict], count: int, seed: int) -> list[dict]:
    """Two KTO examples for each of `count` preference pairs (a seeded sample of them when there are more),
    chosen as desirable (label True) and rejected as undesirable (label False), shuffled with `seed` (module
    docstring: TRL trains them in this order)."""
    import random

    rng = random.Random(seed)
    chosen_pairs = rng.sample(pairs, count) if count < len(pairs) else pairs
    examples = [
        example
        for pair in chosen_pairs
        for example in (
            {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True},
            {"prompt": pair["prompt"], "completion": pair["rejected"], "label": False},
        )
    ]
    rng.shuffle(examples)
    logger.info("KTO: %d pairs unpaired into %d desirable and %d undesirable examples", *[len(chosen_pairs)] * 3)
    return examples
