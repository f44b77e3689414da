"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath, arXiv:2402.03300), through TRL's
GRPOTrainer.

What is implemented: G completions per prompt sampled from the current policy; the training reward of each
(the reward model's score, or the task's gold reward when `reward.source=gold`, minus the missing-stop
penalty); advantages normalised within each group (PPO.md §3.1); the clipped surrogate with a k3 KL term to
the frozen SFT reference in the loss, multiplied by the importance ratio (`use_bias_correction_kl`) so that
the penalised divergence is the reverse KL(π‖π_ref) PPO penalises (PPO.md §3.1, U10).

Every TRL default that changes a comparison is set here from our config (PPO.md §3.1): beta (TRL: 0.0, no
reference at all), loss_type (token-sum over the global token count, "dapo"), scale_rewards, epsilon,
num_iterations, dropout off (TRL leaves it on), and the suite's shared sampling settings (temperature,
top_k=0, top_p=1, max_new_tokens) that PPO uses too.

On CUDA, `use_vllm` makes TRL sample the rollouts with vLLM (colocated on the training GPU, or from a
`trl vllm-serve` server); TRL then corrects the sampler mismatch by importance sampling unless
`vllm_importance_sampling_correction` is off. On CPU it is refused at train start (TRL's colocate fails).

Several processes (`accelerate launch`, DESIGN.md §9): `prompts_per_step` is global. TRL's
`per_device_train_batch_size` counts completions, so each of the W processes gets
`prompts_per_step * num_generations / W` completions per step (W must divide it; no gradient accumulation),
and one optimizer step still consumes `prompts_per_step` prompts and generates `prompts_per_step *
num_generations` completions whatever W. TRL's sampler hands the G completions of a prompt to whichever ranks
hold them and gathers the rewards before the group advantages; the "dapo" loss divides by the global
active-token count. Its logged statistics are gathered over ranks, so the spend derived from them is global.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness import record
from harness.config import require

logger = logging.getLogger(__name__)

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
    # token aggregation: "dapo" = token sum over the global active-token count (PPO's aggregation)
    scale_rewards: str = "group"
    # advantage scale: "group" (std within the group), "batch", or "none" (Dr. GRPO)
    epsilon: float = 0.2
    # clip range of the importance ratio
    num_iterations: int = 1
    # optimisation passes per generated batch (1 = the ratio is 1 and the clip never fires)
    use_bias_correction_kl: bool = True
    # multiply k3 by the ratio: the gradient of the reverse KL, as PPO penalises (PPO.md §3.1)
    use_vllm: bool = False
    # sample the rollouts with TRL's vLLM integration instead of transformers generate() (CUDA only)
    vllm_mode: str = "colocate"
    # "colocate": vLLM shares the training GPU in this process; "server": a separate `trl vllm-serve`
    vllm_gpu_memory_utilization: float = 0.3
    # fraction of GPU memory the colocated vLLM may take for weights and KV cache (colocate only)
    vllm_server_host: str = "127.0.0.1"
    # host of the `trl vllm-serve` server (server only)
    vllm_server_port: int = 8000
    # port of the `trl vllm-serve` server (server only)
    vllm_importance_sampling_correction: bool = True
    # reweight by pi_train/pi_vllm to correct vLLM's slightly different sampler (TRL's default, logged)

    def __post_init__(self):
        require(self.beta >= 0, "beta", "must be >= 0")
        require(self.num_generations >= 2, "num_generations", "must be >= 2 (advantages are relative to a group)")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")
        require(self.loss_type in ("grpo", "bnpo", "dapo", "dr_grpo"), "loss_type", "must be grpo, bnpo, dapo or dr_grpo")
        require(self.scale_rewards in ("group", "batch", "none"), "scale_rewards", "must be group, batch or none")
        require(0 < self.epsilon < 1, "epsilon", "must be in (0, 1)")
        require(self.num_iterations > 0, "num_iterations", "must be > 0")
        require(self.vllm_mode in ("colocate", "server"), "vllm_mode", "must be colocate or server")
        require(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization", "must be in (0, 1]")
        require(bool(self.vllm_server_host), "vllm_server_host", "must not be empty")
        require(0 < self.vllm_server_port < 65536, "vllm_server_port", "must be a TCP port (1-65535)")


def train(context):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from harness.algorithms.context import TrainResult
    from harness.algorithms.trl_support import (
        attach_trainer,
        check_process_group,
        common_training_arguments,
        grpo_sequence_kl,
        harness_callbacks,
        per_device_batch_size,
        save_trained_policy,
        silence_console_logging,
        steps_for_budget,
        train_resuming,
    )
    from harness.algorithms.lora import peft_config
    from harness.modeling import load_tokenizer

    config: Config = context.config
    check_vllm_rollouts_possible(config)
    sampling = context.suite.sampling
    tokenizer = load_tokenizer(context.base_dir)
    prompts = context.task_data.train_prompts
    if not prompts:
        raise ValueError("the task produced no training prompts for GRPO")
    steps = steps_for_budget(context.suite.budget, config.prompts_per_step, config.num_generations)
    completions_per_step = config.prompts_per_step * config.num_generations

    arguments = GRPOConfig(
        **common_training_arguments(
            context.suite,
            context.seed,
            context.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            max_steps=steps,
        ),
        # TRL counts completions, not prompts; the global batch stays completions_per_step (module docstring).
        per_device_train_batch_size=per_device_batch_size(
            completions_per_step, "algorithms.grpo.prompts_per_step x num_generations"
        ),
        num_generations=config.num_generations,
        beta=config.beta,
        loss_type=config.loss_type,
        scale_rewards=config.scale_rewards,
        epsilon=config.epsilon,
        num_iterations=config.num_iterations,
        use_bias_correction_kl=config.use_bias_correction_kl,
        disable_dropout=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        repetition_penalty=1.0,
        max_completion_length=sampling.max_new_tokens,
        mask_truncated_completions=False,
        shuffle_dataset=True,
        log_completions=False,
        **vllm_rollout_arguments(config),
    )
    check_process_group(arguments.world_size)  # ranks that did not join one group would each train alone
    trainer = GRPOTrainer(
        model=str(context.base_dir),
        reward_funcs=[_trl_reward_function(context.reward_function, tokenizer.eos_token_id)],
        args=arguments,
        train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]),
        processing_class=tokenizer,
        peft_config=peft_config(context.suite, "grpo"),
        callbacks=harness_callbacks(context.log_metrics, context.progress, context, steps, watched=WATCHED,
                                    sequence_kl=grpo_sequence_kl),
    )
    attach_trainer(trainer)  # snapshots gather sharded weights through it (ZeRO-3, FSDP)
    silence_console_logging(trainer)
    train_resuming(trainer, context.output_dir)
    checkpoint = save_trained_policy(trainer, context.base_dir, tokenizer, context.output_dir)
    return TrainResult(
        checkpoint_dir=checkpoint,
        final_step=trainer.state.global_step,
        spend={  # global: prompts and completions of all ranks
            "prompts_seen": float(steps * config.prompts_per_step),
            "completions_generated": float(steps * completions_per_step),
            "tokens_generated": float(_completion_tokens(trainer)),
            "optimizer_steps": float(trainer.state.global_step),
        },
    )


def check_vllm_rollouts_possible(config: Config) -> None:
    """Refuse `use_vllm` where TRL's vLLM rollouts cannot work, before any model is loaded.

    TRL's colocated vLLM fails on CPU at its first weight sync ('Parameter' object has no attribute
    'weight_loader', ENVIRONMENT.md), and its server mode syncs weights over NCCL: both need CUDA.
    """
    import importlib.util

    import torch

    from harness.config import ConfigError

    if not config.use_vllm:
        return
    if not torch.cuda.is_available():
        raise ConfigError("'algorithms.grpo.use_vllm' needs a CUDA GPU (TRL's vLLM rollouts fail on CPU); set it to false")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError("'algorithms.grpo.use_vllm' needs vllm installed: run scripts/install_vllm.sh")


def vllm_rollout_arguments(config: Config) -> dict:
    """GRPOConfig's vLLM fields, only when vLLM samples the rollouts: otherwise TRL's defaults are unused."""
    if not config.use_vllm:
        return {}
    arguments = {
        "use_vllm": True,
        "vllm_mode": config.vllm_mode,
        "vllm_importance_sampling_correction": config.vllm_importance_sampling_correction,
    }
    if config.vllm_mode == "colocate":
        arguments["vllm_gpu_memory_utilization"] = config.vllm_gpu_memory_utilization
    else:
        arguments["vllm_server_host"] = config.vllm_server_host
        arguments["vllm_server_port"] = config.vllm_server_port
    return arguments


def _trl_reward_function(reward_function, eos_token_id: int):
    """Adapt the harness's (prompts, completions, stopped) reward to TRL's reward-function signature."""

    def training_reward(prompts, completions, completion_ids, **_):
        # TRL keeps the EOS token in completion_ids when the completion stopped (grpo_trainer, EOS masking).
        stopped = [bool(ids) and ids[-1] == eos_token_id for ids in completion_ids]
        return reward_function(list(prompts), list(completions), stopped)

    return training_reward


def _completion_tokens(trainer) -> float:
    """Generated tokens: TRL logs the mean completion length per step, over the completions gathered from all
    ranks; sum mean x global completions per step (per device x processes) over steps."""
    global_batch = trainer.args.per_device_train_batch_size * trainer.args.world_size
    total = 0.0
    for entry in trainer.state.log_history:
        if "completions/mean_length" in entry:
            total += entry["completions/mean_length"] * global_batch
    return total
