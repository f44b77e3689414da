"""RLOO: REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style
Optimization for Learning from Human Feedback in LLMs", arXiv:2402.14740), through TRL's RLOOTrainer.

What is implemented (TRL rloo_trainer `_generate_and_score_completions` and `_compute_loss`): k completions
per prompt sampled from the current policy; each completion's reward is the training reward minus beta times
its sequence KL estimate, the k1 sum Σ_t log π(y_t)/π_ref(y_t) over its tokens against the frozen SFT
reference (the paper's KL-shaped reward); its advantage is that reward minus the mean of the other k - 1
completions' rewards of the same prompt (the paper's leave-one-out baseline); the loss is -advantage x
the completion's summed log-probability (REINFORCE with the whole completion as one action, as in the paper),
averaged over completions. Advantages are not normalised (`normalize_advantages` false, as in the paper).

Departures from the paper:
- TRL writes the loss as PPO's clipped surrogate on the sequence ratio; with one optimizer step per rollout
  (`num_iterations` 1, `steps_per_generation` 1, set here) the ratio is 1 and its gradient is the paper's
  REINFORCE gradient exactly.
- k defaults to 8, GRPO's group size, so both draw the same completions per prompt (the paper's k is 2 or 4).
- The training reward is the suite's (a reward model's score or the gold reward, minus the missing-stop
  penalty); the paper's models, data and batch sizes are not reproduced.
Departures from TRL's defaults: dropout off, the suite's sampling settings; every RLOOConfig setting that
changes results is set here (beta, num_generations, normalize_advantages, epsilon, epsilon_high,
mask_truncated_completions, num_iterations, steps_per_generation; reward clipping and reference syncing
pinned off in trl_online.RLOO_FEATURES_OFF).

KL curve: RLOOTrainer logs `kl` as the token mean of the k1 log-ratio over the step's completion tokens
(summed over all ranks' tokens, divided by their count); times the completions' mean length it is the k1 sum
per completion averaged over completions, the nats per sequence of record.TRAIN_KL_PER_SEQUENCE: the same
conversion as GRPOTrainer's (trl_support.grpo_sequence_kl), with k1 in place of k3.

Rollouts: transformers generate(), or TRL's colocated vLLM engine when the suite's `rollouts.generator`
resolves to vllm (CUDA only; harness.generation.rollouts). RLOOTrainer has no importance-sampling correction of
vLLM's sampler mismatch (GRPOTrainer's `vllm_importance_sampling_correction`).

Training, sampling, budget, snapshots, resume and several processes: harness/algorithms/trl_online.py.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require, require_scheduler

SPEC = AlgorithmSpec(
    family=record.FAMILY_ONLINE_POLICY_GRADIENT,
    kl_knob="beta",  # weight of the sequence KL subtracted from the reward
    kl_knob_raises_kl=False,
    describe_data=lambda config: "completions it samples from its current policy, scored by the training reward",
    curves=("reward", "kl", "completions/mean_length", "entropy"),
    watched=("loss", "grad_norm", "reward", "kl"),
)


@dataclass
class Config:
    beta: float = 0.05
    # weight of the sequence's k1 KL to the reference subtracted from its reward (0 = no KL, no reference model)
    num_generations: int = 8
    # k: completions sampled per prompt; each one's baseline is the mean reward of the other k - 1
    prompts_per_step: int = 8
    # prompts per optimizer step, global over all processes
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    normalize_advantages: bool = False
    # scale the batch's advantages to mean 0 and std 1 (not in the paper)

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (the baseline is the other samples)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")


def train(context):
    from trl import RLOOConfig, RLOOTrainer

    from harness.algorithms.trl_online import RLOO_FEATURES_OFF, train_online
    from harness.algorithms.trl_support import grpo_sequence_kl
    from harness.generation.rollouts import trl_vllm_arguments

    config: Config = context.config
    objective = dict(
        beta=config.beta,
        normalize_advantages=config.normalize_advantages,
        # One on-policy step per rollout: the clipped surrogate's ratio is 1, so the clip range never acts and
        # the gradient is REINFORCE's (module docstring).
        num_iterations=1,
        steps_per_generation=1,
        epsilon=0.2,
        epsilon_high=0.2,
        mask_truncated_completions=False,
        **RLOO_FEATURES_OFF,
        # rollouts.generator=vllm: TRL's colocated vLLM samples them (CUDA only, refused here otherwise)
        **trl_vllm_arguments(context.suite, context.algorithm),
    )
    # RLOOTrainer's `kl` is a token mean like GRPOTrainer's (of k1 instead of k3), so the same conversion gives
    # nats per sequence (module docstring).
    return train_online(
        context,
        trainer_class=RLOOTrainer,
        config_class=RLOOConfig,
        objective=objective,
        watched=SPEC.watched,
        sequence_kl=grpo_sequence_kl,
    )
