"""Online DPO: Direct Language Model Alignment from Online AI Feedback (Guo et al. 2024, OAIF,
arXiv:2402.04792), through TRL's experimental OnlineDPOTrainer (trl.experimental.online_dpo, TRL 1.16).

What is implemented (online_dpo_trainer `training_step`): every optimizer step, two completions per prompt
are sampled from the current policy with the suite's sampling settings; both are scored by the training
reward (context.reward_function: the suite's reward model, or the gold reward with `reward.source=gold`,
minus the missing-stop penalty), the higher-scored one is "chosen"; the loss is DPO's
-log σ(β·[(log π_c - log π_r) - (log π_ref,c - log π_ref,r)]) against the frozen SFT reference, sequence
log-probs summed over the completion's tokens (its EOS included, padding not). The paper's annotator is an
LLM asked which of the two is better; here the suite's reward model is the judge (the issue's setting), so the
policy learns from the same signal as the online policy-gradient algorithms.

Departures from the paper:
- The judge is a scalar reward model compared on the two samples, not an LLM prompted for a preference.
- Ties: TRL labels the first sample chosen when the two scores are equal (`first >= second`). Two identical
  completions give no gradient (their log-ratios cancel); two different completions with equal scores give
  an arbitrary preference, which a continuous reward model's scores make rare but a discrete gold reward may
  not. Not corrected here.
- The paper's models, data, batch sizes and learning rate are not reproduced: the suite's.
Departures from TRL's defaults, set here so they are logged and equal across algorithms: learning rate and
schedule (TRL: 5e-7), temperature (TRL: 0.9; ours the suite's, as every online algorithm), max_new_tokens
(the suite's, TRL: 64), max_length = the model's context (TRL: 512), missing_eos_penalty off (the training
reward already holds the suite's missing-stop penalty), dropout off, no warm-up.

KL curve: the trainer's own `objective/kl` sums the log-ratio over every position of the padded completion
tensor, padding included, so it is not used. Its `rewards/chosen` and `rewards/rejected` are β times the
masked log-ratio sums of the chosen and the rejected completions (means over the step's pairs, gathered over
ranks); (chosen + rejected) / 2β is then the k1 sum Σ_t log π/π_ref per completion averaged over all the
step's completions: record.TRAIN_KL_PER_SEQUENCE in nats, the same estimator as RLOO's.

Budget: a step consumes `prompts_per_step` prompts and generates two completions of each, so the same
trl_support.steps_for_budget as every algorithm. Several processes (DESIGN.md §9): `prompts_per_step` is
global, each of the W processes samples and trains on prompts_per_step / W prompts (W must divide it; no
gradient accumulation), and DDP averages the per-rank mean losses.

Sampling: transformers generate(), or TRL's colocated vLLM engine when the suite's `rollouts.generator` resolves
to vllm (CUDA only, refused on CPU; harness.generation.rollouts).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import record
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require, require_scheduler

SPEC = AlgorithmSpec(
    family=record.FAMILY_ONLINE_PREFERENCE,
    kl_knob="beta",  # the implicit KL strength of the DPO loss: larger beta keeps the policy closer to the reference
    kl_knob_raises_kl=False,
    describe_data=lambda config: (
        "pairs it samples from its current policy each step (two completions per "
        "prompt), labelled by the training reward"
    ),
    curves=("loss", "rewards/margins", "rewards/accuracies", "objective/scores", "objective/scores_margin"),
    watched=("loss", "grad_norm", "rewards/margins", "objective/scores"),
)


@dataclass
class Config:
    beta: float = 0.1
    # strength of the implicit KL to the reference (as DPO's; not comparable to GRPO's or PPO's beta)
    prompts_per_step: int = 8
    # prompts per optimizer step, global over all processes; each gives one pair (two sampled completions)
    learning_rate: float = 1e-3
    # peak learning rate
    lr_scheduler: str = "linear"
    # transformers scheduler name

    def __post_init__(self):
        require_scheduler(self.lr_scheduler)
        require(self.beta > 0, "beta", "must be > 0")
        require(self.prompts_per_step > 0, "prompts_per_step", "must be > 0")
        require(self.learning_rate > 0, "learning_rate", "must be > 0")


def train(context):
    import warnings

    from datasets import Dataset

    with warnings.catch_warnings():  # TRL warns on every import from trl.experimental
        warnings.simplefilter("ignore")
        from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    from harness.algorithms.lora import peft_config
    from harness.algorithms.trl_support import (
        check_process_group,
        common_training_arguments,
        harness_callbacks,
        logged_completion_tokens,
        per_device_batch_size,
        steps_for_budget,
        train_and_save,
    )
    from harness.generation.rollouts import trl_vllm_arguments
    from harness.modeling import load_tokenizer

    config: Config = context.config
    name = record.algorithm_of(context.algorithm)
    sampling = context.suite.sampling
    # rollouts.generator=vllm: TRL's colocated vLLM samples the pairs (CUDA only, refused here before any model)
    vllm_arguments = trl_vllm_arguments(context.suite, context.algorithm)
    tokenizer = load_tokenizer(context.base_dir)
    prompts = context.task_data.train_prompts
    if not prompts:
        raise ValueError("the task produced no training prompts for online DPO")
    steps = steps_for_budget(context.suite.budget, config.prompts_per_step, completions_per_prompt=2)

    arguments = OnlineDPOConfig(
        **common_training_arguments(
            context.suite,
            context.seed,
            context.output_dir,
            learning_rate=config.learning_rate,
            lr_scheduler=config.lr_scheduler,
            max_steps=steps,
        ),
        # The global batch stays config.prompts_per_step whatever the number of processes (module docstring).
        per_device_train_batch_size=per_device_batch_size(
            config.prompts_per_step, f"algorithms.{name}.prompts_per_step"
        ),
        beta=[config.beta],
        loss_type="sigmoid",  # DPO's loss, as the paper
        missing_eos_penalty=None,  # the training reward already holds the suite's missing-stop penalty
        disable_dropout=True,
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=None,
        repetition_penalty=1.0,
        max_new_tokens=sampling.max_new_tokens,
        generation_kwargs=None,
        max_length=tokenizer.model_max_length,
        reward_weights=None,  # one reward function, weight 1
        **vllm_arguments,
    )
    check_process_group(arguments.world_size)  # ranks that did not join one group would each train alone
    judge = PairJudge(context.reward_function, tokenizer.eos_token_id, tokenizer.pad_token_id)
    trainer = OnlineDPOTrainer(
        model=str(context.base_dir),  # TRL copies it into the frozen reference
        reward_funcs=[judge],
        args=arguments,
        train_dataset=Dataset.from_list([{"prompt": prompt} for prompt in prompts]),
        processing_class=tokenizer,
        peft_config=peft_config(context.suite, name),
        callbacks=harness_callbacks(
            context.log_metrics,
            context.progress,
            context,
            steps,
            watched=SPEC.watched,
            sequence_kl=lambda logs: sequence_kl(logs, config.beta),
        ),
    )
    judge.trainer = trainer  # it logs the completions' length into the trainer's statistics
    completions_per_step = 2 * config.prompts_per_step
    return train_and_save(
        trainer,
        context,
        tokenizer,
        lambda trained: {  # global: prompts and completions of all ranks
            record.COST_PROMPTS_SEEN: float(steps * config.prompts_per_step),
            record.COST_COMPLETIONS_GENERATED: float(steps * completions_per_step),
            record.COST_TOKENS_GENERATED: logged_completion_tokens(
                trained, completions_per_step
            ),  # the judge logs it per step
        },
    )


class PairJudge:
    """The training reward as OnlineDPOTrainer's reward function (TRL's signature), which also records the
    completions' mean length, gathered over ranks, into the trainer's logged statistics (TRL logs none):
    the tokens-generated spend comes from it and survives a resume in the trainer's log history.

    OnlineDPOTrainer cuts each completion after its first EOS and pads the rest (experimental.utils
    truncate_right), so a completion stopped when its ids hold the EOS token."""

    def __init__(self, reward_function, eos_token_id: int, pad_token_id: int):
        self.reward_function = reward_function
        self.eos_token_id, self.pad_token_id = eos_token_id, pad_token_id
        self.trainer = None

    def __call__(self, prompts, completions, completion_ids, **_):
        import torch

        stopped = [self.eos_token_id in ids for ids in completion_ids]
        if self.trainer is not None:
            lengths = [
                ids.index(self.eos_token_id) + 1 if stop else sum(token != self.pad_token_id for token in ids)
                for ids, stop in zip(completion_ids, stopped)
            ]
            device = self.trainer.accelerator.device
            gathered = self.trainer.accelerator.gather(torch.tensor(lengths, dtype=torch.float32, device=device))
            self.trainer.stats.setdefault("completions/mean_length", []).append(gathered.mean().item())
        return self.reward_function(list(prompts), list(completions), stopped)


def sequence_kl(logs: dict, beta: float) -> float | None:
    """Nats per completion from OnlineDPOTrainer's statistics (module docstring): its rewards/chosen and
    rewards/rejected are β x the mean masked log-ratio sum of the step's chosen and rejected completions."""
    if "rewards/chosen" not in logs or "rewards/rejected" not in logs:
        return None
    return (float(logs["rewards/chosen"]) + float(logs["rewards/rejected"])) / (2 * beta)
