"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300), through TRL's
GRPOTrainer.

What is implemented: G completions per prompt sampled from the current policy; the training reward of each
(the reward model's score, or the task's gold reward when `reward.source=gold`, minus the missing-stop
penalty); advantages normalised within each group (PPO.md §3.1); the clipped surrogate with a k3 KL term to
the frozen SFT reference in the loss, multiplied by the importance ratio (`use_bias_correction_kl`) so that
the penalised divergence is the reverse KL(π‖π_ref) PPO penalises (PPO.md §3.1, U10).

Every TRL setting that changes results is a field of Config, passed to GRPOConfig explicitly and logged with
the Config (PPO.md §3.1), because TRL's defaults moved between releases and will again: beta (TRL 1.16: 0.0,
no reference at all), loss_type (token sum over the global token count, "dapo"), scale_rewards,
use_bias_correction_kl, mask_truncated_completions, epsilon and epsilon_high (the clip range's two sides),
importance_sampling_level, num_iterations and steps_per_generation; the GRPOTrainer features we never use
(entropy bonus, high-entropy token selection, two-sided clipping, off-policy masking, reference syncing) are
pinned off in trl_online.GRPO_FEATURES_OFF. Dropout is off (PPO.md §3.1), and the suite's shared sampling
settings (temperature, top_k=0, top_p=1, max_new_tokens) are the ones PPO uses too.

Departures from the paper: the paper's loss averages each completion's tokens then the group ("grpo");
ours defaults to the token sum over the batch's tokens ("dapo"), PPO's aggregation, so that GRPO and PPO
differ in their advantage only. The paper's KL estimator is k3 without the ratio factor; ours multiplies by
it (use_bias_correction_kl, above), which changes the KL gradient only.

When the suite's `rollouts.generator` resolves to vllm (harness.generation.rollouts), TRL samples the rollouts
with vLLM (colocated on the training GPU, or from a `trl vllm-serve` server: `vllm_mode`); TRL then corrects the
sampler mismatch by importance sampling unless `vllm_importance_sampling_correction` is off. On CPU it is refused
at train start (TRL's colocate fails there).

Variants (each a Preset below and a registry line; each runs this module's train() with other defaults, so
vLLM rollouts, LoRA, snapshots and resume work for all of them): Dr. GRPO (DR_GRPO), DAPO (DAPO), GSPO (GSPO).

Training, sampling, budget, snapshots, resume and several processes: harness/algorithms/trl_online.py, shared
with rloo. With several processes the "dapo" loss divides by the global active-token count.
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.spec import AlgorithmSpec, Preset
from harness.errors import require, require_scheduler

SPEC = AlgorithmSpec(
    family=record.FAMILY_ONLINE_POLICY_GRADIENT,
    kl_knob="beta",  # weight of the k3 KL penalty in the loss
    kl_knob_raises_kl=False,
    describe_data=lambda config: "completions it samples from its current policy, scored by the training reward",
    curves=("reward", "kl", "completions/mean_length", "entropy"),
    watched=("loss", "grad_norm", "reward", "kl"),
)


@dataclass
class Config:
    beta: float = 0.04
    # weight of the per-token k3 KL to the reference in the loss (0 = no KL term and no reference model)
    num_generations: int = 8
    # group size G: completions sampled per prompt
    prompts_per_step: int = 8
    # prompts per optimizer step, global over all processes, so num_generations * prompts_per_step completions
    # per step (each process generates and trains on 1 / processes of them)
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name
    loss_type: str = "dapo"
    # token aggregation: "dapo" = token sum over the global active-token count (PPO's aggregation); "grpo" =
    # mean over each completion's tokens, then over completions (the paper's); "dr_grpo" = token sum over
    # completions x max_new_tokens; "bnpo" = token sum over this process's active-token count
    scale_rewards: str = "group"
    # advantage scale: "group" (std within the group), "batch", or "none" (Dr. GRPO)
    epsilon: float = 0.2
    # clip range of the importance ratio, lower side: ratio >= 1 - epsilon
    epsilon_high: float = 0.2
    # clip range, upper side: ratio <= 1 + epsilon_high (DAPO's clip-higher when above epsilon)
    importance_sampling_level: str = "token"
    # "token": one ratio per token; "sequence": one per completion, the mean of its token log-ratios (GSPO)
    mask_truncated_completions: bool = False
    # leave completions that hit max_new_tokens without stopping out of the loss (DAPO's overlong filtering);
    # they still count in their group's advantage baseline
    num_iterations: int = 1
    # optimisation passes per generated batch (1 with steps_per_generation 1 = the ratio is 1, no clipping)
    steps_per_generation: int = 1
    # optimizer steps per rollout: the rollout holds this many steps' prompts, split into minibatches
    use_bias_correction_kl: bool = True
    # multiply k3 by the ratio: the gradient of the reverse KL, as PPO penalises (PPO.md §3.1)
    vllm_mode: str = "colocate"
    # with rollouts.generator=vllm: "colocate" (vLLM shares the training GPU in this process) or "server" (a
    # separate `trl vllm-serve`)
    vllm_gpu_memory_utilization: float = 0.3
    # fraction of GPU memory the colocated vLLM may take for weights and KV cache (colocate only)
    vllm_server_host: str = "127.0.0.1"
    # host of the `trl vllm-serve` server (server only)
    vllm_server_port: int = 8000
    # port of the `trl vllm-serve` server (server only)
    vllm_importance_sampling_correction: bool = True
    # reweight by pi_train/pi_vllm to correct vLLM's slightly different sampler (TRL's default, logged)

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages are relative to a group)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(
            self.loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"), "loss_type", "must be grpo, bnpo, dapo or dr_grpo"
        )
        require(self.scale_rewards in ("group", "batch", "none"), "scale_rewards", "must be group, batch or none")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.epsilon_high >= self.epsilon, "epsilon_high", "must be >= epsilon")
        require(
            self.importance_sampling_level in ("token", "sequence"),
            "importance_sampling_level",
            "must be token or sequence",
        )
        require(self.num_iterations > 0, "num_iterations", "must be > 0")
        require(self.steps_per_generation > 0, "steps_per_generation", "must be > 0")
        require(self.vllm_mode in ("colocate", "server"), "vllm_mode", "must be colocate or server")
        require(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
        require(bool(self.vllm_server_host), "vllm_server_host", "must not be empty")
        require(0 < self.vllm_server_port < 65536, "vllm_server_port", "must be a TCP port (1-65535)")


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
        importance_sampling_level=config.importance_sampling_level,
        mask_truncated_completions=config.mask_truncated_completions,
        num_iterations=config.num_iterations,
        steps_per_generation=config.steps_per_generation,
        use_bias_correction_kl=config.use_bias_correction_kl,
        **GRPO_FEATURES_OFF,
        **vllm_rollout_arguments(context),
    )
    return train_online(
        context,
        trainer_class=GRPOTrainer,
        config_class=GRPOConfig,
        objective=objective,
        watched=SPEC.watched,
        sequence_kl=grpo_sequence_kl,
    )


def vllm_rollout_arguments(context) -> dict:
    """GRPOConfig's vLLM fields when the cell's rollouts.generator resolves to vllm (refused where it cannot run,
    before any model is loaded), else none: TRL's defaults then go unused."""
    from harness.generation.rollouts import trl_vllm_arguments

    config: Config = context.config
    arguments = trl_vllm_arguments(
        context.suite,
        context.algorithm,
        mode=config.vllm_mode,
        gpu_memory_utilization=config.vllm_gpu_memory_utilization,
        server_host=config.vllm_server_host,
        server_port=config.vllm_server_port,
    )
    if arguments:
        arguments["vllm_importance_sampling_correction"] = config.vllm_importance_sampling_correction
    return arguments


# -- variants: other defaults of the same Config, nothing else ----------------------------------------------

DR_GRPO = Preset(
    values={"loss_type": "dr_grpo", "scale_rewards": "none"},
    about="""Dr. GRPO: GRPO Done Right (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
Perspective", arXiv:2503.20783): GRPO without the two normalisations the paper shows bias the optimisation.
(1) No division by each completion's length: `loss_type="dr_grpo"` sums the masked per-token losses and divides
by a constant, completions x max_new_tokens (TRL grpo_trainer `_compute_loss`), as the paper's objective does with
the generation budget. (2) No division of the advantage by the group's reward std: `scale_rewards="none"` keeps
A_i = r_i - mean(r_group). Everything else is GRPO's.
Departures from the paper: the paper trains without KL (beta = 0) on a verifiable math reward; ours keeps GRPO's
k3 penalty (the KL knob a frontier sweeps; beta = 0 gives the paper's objective) and the suite's training reward,
model, data and budget, with one optimizer step per rollout (the ratio is 1, the clip never fires).""",
)

DAPO = Preset(
    values={"epsilon_high": 0.28, "mask_truncated_completions": True},
    curves=(*SPEC.curves, "clip_ratio/high_mean"),
    about="""DAPO: Decoupled Clip and Dynamic sAmpling Policy Optimization (Yu et al. 2025, arXiv:2503.14476).
Of the paper's four techniques: clip-higher (§3.1: the ratio clipped to [1 - epsilon, 1 + epsilon_high], the
paper's 0.2 and 0.28); the token-level loss (§3.3: GRPO's default `loss_type="dapo"`, the per-token losses summed
over the batch and divided by its active-token count over all processes); overlong filtering (§3.4:
`mask_truncated_completions`, completions cut at max_new_tokens are left out of the loss but count in their
group's reward mean and std); group advantages as GRPO's.
Departures from the paper: dynamic sampling (§3.2, re-sampling groups whose rewards are all equal) is not in TRL
and not implemented, such groups stay in the batch with advantage 0; the soft overlong punishment (§3.4) is not
implemented (the suite's missing-stop penalty applies instead); the paper removes the KL term, ours keeps GRPO's
k3 penalty (beta = 0 gives the paper's objective); the paper's 16 minibatch updates per rollout are not
reproduced: `steps_per_generation` is 1 as for GRPO, so the ratio is 1 and clip-higher never fires unless it is
raised.""",
)

GSPO = Preset(
    values={
        "loss_type": "grpo",
        "importance_sampling_level": "sequence",
        "epsilon": 3e-4,
        "epsilon_high": 4e-4,
        "steps_per_generation": 4,
    },
    curves=(*SPEC.curves, "clip_ratio/region_mean"),
    about="""GSPO: Group Sequence Policy Optimization (Zheng et al. 2025, arXiv:2507.18071): GRPO's group advantages
with a sequence-level importance ratio, s_i = exp(mean over the completion's tokens of log pi/pi_old)
(`importance_sampling_level="sequence"`), clipped as a whole and applied to every token of the completion; the
loss is the mean over each completion's tokens, then over completions (`loss_type="grpo"`), which for a ratio
constant within a completion is the paper's per-sequence objective. Clip ranges are the paper's (§5.1: 3e-4 below,
4e-4 above, since sequence ratios are geometric means of token ratios) and each rollout is split into 4
minibatches, one optimizer step each (§5.1, `steps_per_generation` 4), so the policy is stale within a rollout
and the clip acts.
Departures from the paper: the paper trains without KL (beta = 0); ours keeps a k3 penalty weighted by beta and
multiplied by the sequence ratio (beta = 0 gives the paper's objective); the suite's training reward, model, data
and budget. The per-sequence KL curve is logged on the steps that sample a rollout only (every
steps_per_generation steps).""",
)
