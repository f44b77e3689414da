"""DPO: Direct Preference Optimization (Rafailov et al. 2023, arXiv:2305.18290), through TRL's DPOTrainer.

What is implemented: the sigmoid loss −log σ(β·[(log π_c − log π_r) − (log π_ref,c − log π_ref,r)]) on
(prompt, chosen, rejected) pairs, the SFT checkpoint as both the initial policy and the frozen reference
(PPO.md §3.2). Sequence log-probs sum over completion tokens only, EOS included (TRL appends it).

Departures from TRL defaults, set here so they are logged and equal across algorithms: dropout off, no
warm-up, the learning rate and schedule of this config, max_length = the model's context.

`label_smoothing` (ε) is read by TRL 1.16 only in its robust (rDPO, Chowdhury et al. 2024, arXiv:2403.00409),
exo_pair, aot and aot_unpaired losses; its sigmoid loss ignores it without a word (older TRL releases smoothed
the sigmoid loss, cDPO). So ε > 0 with any other loss_type is refused at validation rather than silently
dropped: for ε-robust DPO set `loss_type: robust` (the logged loss_type is the loss that trained).

Data (PPO.md §3.4, a team decision written down; harness/algorithms/preference_pairs.py, shared by the offline
preference family): by default (`pairs_source: dataset`) DPO learns from the same preference pairs the reward
model was trained on (for `tiny`, labelled by the gold reward with Bradley-Terry noise). With `pairs_source:
reward_model` it learns from on-policy pairs instead: two completions per training prompt sampled from the SFT
policy with the suite's sampling settings, the one the suite's reward model scores higher as chosen (ties
dropped, and pairs with a sample that did not stop dropped and counted: TRL would append EOS to it and train it
as a completion that stopped). Under the `equal_prompts` budget DPO consumes one pair per training prompt.

Several processes (`accelerate launch`, DESIGN.md §9): `batch_size` is the global number of pairs per
optimizer step. Each of the W processes gets `per_device_train_batch_size = batch_size / W` pairs (W must
divide it; no gradient accumulation), and DDP averages the per-rank mean losses, which is the mean over the
global batch; so the same steps consume the same pairs and budget whatever W. With `pairs_source:
reward_model` every rank samples and scores its own slice of the prompts, and the pairs are all-gathered so
every rank trains on the same list; the generation spend counts every rank's completions once.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.preference_pairs import PAIRS_SOURCES, describe_pairs, train_on_pairs
from harness.algorithms.spec import AlgorithmSpec, Preset
from harness.errors import require, require_scheduler

SPEC = AlgorithmSpec(
    family=record.FAMILY_OFFLINE_PREFERENCE,
    kl_knob="beta",  # the implicit KL strength: larger beta keeps the policy closer to the reference
    kl_knob_raises_kl=False,
    describe_data=lambda config: describe_pairs(config.pairs_source),
    curves=("loss", "rewards/margins", "rewards/accuracies"),
    watched=("loss", "grad_norm", "rewards/margins", "rewards/chosen"),
)

# TRL 1.16 losses that read label_smoothing (dpo_trainer._compute_loss); every other loss ignores it.
LABEL_SMOOTHING_LOSSES = ("robust", "exo_pair", "aot", "aot_unpaired")

# DPOTrainer's loss types (TRL 1.16 dpo_trainer `_compute_loss`), refused here rather than at train start.
TRL_LOSSES = (
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sft",
    "sigmoid_norm",
)


@dataclass
class Config:
    beta: float = 0.1
    # strength of the implicit KL to the reference (not comparable to PPO's or GRPO's beta)
    loss_type: str = "sigmoid"
    # TRL loss: "sigmoid" is the DPO paper's; "robust", "hinge", ... are TRL's alternatives ("ipo" is this
    # module's IPO preset)
    label_smoothing: float = 0.0
    # assumed rate of flipped preference labels, read only by the robust (rDPO), exo_pair, aot and aot_unpaired
    # losses; 0 = the paper's loss
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    batch_size: int = 16
    # preference pairs per optimizer step, global over all processes (each gets batch_size / processes)
    pairs_source: str = "dataset"
    # "dataset": the task's preference pairs; "reward_model": pairs sampled from the SFT policy and labelled
    # by the suite's reward model (the report's params say which)

    def __post_init__(self):
        require(
            self.loss_type in TRL_LOSSES, "loss_type", f"must be one of TRL 1.16's DPO losses: {', '.join(TRL_LOSSES)}"
        )
        require_scheduler(self.lr_scheduler)
        require(self.beta > 0, "beta", "must be > 0")
        require(0 <= self.label_smoothing < 0.5, "label_smoothing", "must be in [0, 0.5)")
        require(
            self.label_smoothing == 0 or self.loss_type in LABEL_SMOOTHING_LOSSES,
            "label_smoothing",
            f"is ignored by TRL's '{self.loss_type}' loss; use loss_type robust (rDPO) or "
            f"{', '.join(LABEL_SMOOTHING_LOSSES[1:])}, or label_smoothing 0",
        )
        require(self.loss_type != "exo_pair" or self.label_smoothing > 0, "label_smoothing", "must be > 0 for exo_pair")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.batch_size > 0, "batch_size", "must be > 0")
        require(self.pairs_source in PAIRS_SOURCES, "pairs_source", "must be 'dataset' or 'reward_model'")


def train(context):
    from trl import DPOConfig, DPOTrainer

    config: Config = context.config
    return train_on_pairs(
        context,
        arguments_class=DPOConfig,
        trainer_class=DPOTrainer,
        watched=SPEC.watched,
        objective=dict(
            beta=config.beta,
            loss_type=[config.loss_type],
            label_smoothing=config.label_smoothing,
            precompute_ref_log_probs=False,
        ),
    )


# -- variants: other defaults of the same Config, nothing else ----------------------------------------------

IPO = Preset(
    values={"loss_type": "ipo", "beta": 0.5},
    about="""IPO: Identity Preference Optimisation (Azar et al. 2023, "A General Theoretical Paradigm to Understand
Learning from Human Preferences", arXiv:2310.12036), DPOTrainer with `loss_type="ipo"`: the squared loss of the
paper's Eq. 17, (h - 1/(2 tau))^2, where h is the chosen-minus-rejected difference of log-ratios to the frozen
reference. tau is `beta` (TRL's name): the target margin is 1/(2 beta), so a larger beta keeps the policy closer
to the reference; beta 0.5 pulls the margin towards 1 nat per token.
Departure from the paper: TRL 1.16 length-normalises h (dpo_trainer `_compute_loss`): each sequence's log-ratio,
summed over its completion tokens (EOS included), is divided by its number of completion tokens, so the target
margin is in nats per token; TRL notes the IPO authors confirmed the normalised form is the one behind the
paper's results. Data, budget and several processes as DPO's.""",
)
