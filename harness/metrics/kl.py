"""KL(policy || reference) over sampled responses, as the evaluator reports it.

The evaluator reports one KL for every checkpoint of every algorithm (docs/DESIGN.md §6,
docs/PPO.md §3.3): the *exact* per-token divergence over the whole vocabulary, summed along each
sampled response. It is unbiased for the sequence KL and never negative. The k1 and k3
single-sample estimates are reported beside it as cross-checks; they use only the log-probs of
the sampled tokens, which is what the training loops of PPO (k1) and GRPO (k3) see.

Naming: p is the policy (the distribution the responses were sampled from), q the reference.
All maths runs in float32 whatever the model dtype: low-precision log-softmax is a known source
of wrong and negative KLs (docs/PPO.md §6.1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

logger = logging.getLogger(__name__)

KL_ESTIMATE_NAMES = ("kl", "kl_k1", "kl_k3")


def _tempered_log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / T) in float32 (docs/PPO.md §1 "Temperature")."""
    if temperature <= 0:
        # T = 0 would divide by zero (docs/PPO.md §6.1); greedy decoding has no KL to estimate.
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def _exact_kl_from_log_probs(
    policy_log_probs: torch.Tensor, reference_log_probs: torch.Tensor
) -> torch.Tensor:
    policy_probs = policy_log_probs.exp()
    # Tokens the policy never emits (p = 0, e.g. logits of -inf) contribute nothing; without the
    # `where`, 0 · (−inf − log q) would be NaN.
    per_token_terms = torch.where(
        policy_probs > 0,
        policy_probs * (policy_log_probs - reference_log_probs),
        torch.zeros_like(policy_probs),
    )
    kl = per_token_terms.sum(dim=-1)
    # Mathematically KL >= 0, but when p ≈ q the float sum of terms of both signs can land a few
    # ulps below zero; clamping keeps the "never negative" promise without moving any real value.
    return kl.clamp_min(0.0)


def sequence_kl_estimates(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    temperature: float = 1.0,
) -> dict[str, torch.Tensor]:
    """Per-sequence KL estimates summed over the masked response positions.

    Shapes: logits [B, L, V], already aligned so that position t predicts response_ids[:, t]
    (docs/PPO.md §1 "Alignment"); response_ids and response_mask [B, L], mask in {0, 1}.

    Returns float32 tensors of shape [B]:
      "kl"    exact Σ_t KL(p_t || q_t) over the vocabulary (unbiased, never negative);
      "kl_k1" Σ_t (log p − log q) at the sampled token (unbiased, can be negative per sample);
      "kl_k3" Σ_t (r − log r − 1) with r = q/p at the sampled token (unbiased, never negative).
    """
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(
            f"policy logits {tuple(policy_logits.shape)} and reference logits "
            f"{tuple(reference_logits.shape)} must have the same shape"
        )
    if response_ids.shape != policy_logits.shape[:-1] or response_mask.shape != response_ids.shape:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must both be logits.shape[:-1] = "
            f"{tuple(policy_logits.shape[:-1])}"
        )
    valid = response_mask.to(device=policy_logits.device).bool()
    zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)

    # One log-softmax per model, shared by the exact KL and the sampled-token estimates: with a
    # large vocabulary these [B, L, V] tensors dominate the evaluator's memory.
    policy_log_probs = _tempered_log_probs(policy_logits, temperature)
    reference_log_probs = _tempered_log_probs(reference_logits, temperature)
    exact_per_token = _exact_kl_from_log_probs(policy_log_probs, reference_log_probs)

    # Masked positions may hold a pad id outside the embedding table; gather a harmless id there.
    response_ids = response_ids.to(valid.device).long()
    safe_ids = torch.where(valid, response_ids, torch.zeros_like(response_ids)).unsqueeze(-1)
    sampled_policy_log_prob = policy_log_probs.gather(-1, safe_ids).squeeze(-1)
    sampled_reference_log_prob = reference_log_probs.gather(-1, safe_ids).squeeze(-1)

    log_ratio = sampled_policy_log_prob - sampled_reference_log_prob  # log p − log q
    k1_per_token = log_ratio
    # k3 = (q/p) − log(q/p) − 1 (Schulman, "Approximating KL divergence"); log(q/p) = −log_ratio.
    k3_per_token = torch.exp(-log_ratio) + log_ratio - 1.0

    # `where`, not multiplication by the mask: a padded position may hold inf, and inf · 0 is NaN.
    return {
        "kl": torch.where(valid, exact_per_token, zeros).sum(dim=-1),
        "kl_k1": torch.where(valid, k1_per_token, zeros).sum(dim=-1),
        "kl_k3": torch.where(valid, k3_per_token, zeros).sum(dim=-1),
    }


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _build_padded_batch(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Left-padded prompts + right-padded responses, following docs/PPO.md §1.

    Returns (input_ids, attention_mask, response_tensor, response_mask, prompt_width), where
    input_ids already has pads replaced by 0 and the masks come from the lengths, so that a real
    token that happens to equal pad_id is never mistaken for padding.
    """
    batch_size = len(prompt_ids)
    prompt_width = max(len(prompt) for prompt in prompt_ids)
    response_width = max(len(response) for response in response_ids)
    total_width = prompt_width + response_width

    sequence = torch.full((batch_size, total_width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, total_width), dtype=torch.long)
    for row, (prompt, response) in enumerate(zip(prompt_ids, response_ids)):
        prompt_start = prompt_width - len(prompt)  # prompts are left-padded (PPO.md §1)
        sequence[row, prompt_start:prompt_width] = torch.tensor(prompt, dtype=torch.long)
        attention_mask[row, prompt_start:prompt_width] = 1
        if response:  # responses are right-padded (PPO.md §1)
            response_end = prompt_width + len(response)
            sequence[row, prompt_width:response_end] = torch.tensor(response, dtype=torch.long)
            attention_mask[row, prompt_width:response_end] = 1

    # PPO.md §1: ids = x with pads replaced by a valid id, since [PAD] may lie outside the
    # embedding table when it was added without resizing.
    input_ids = torch.where(attention_mask.bool(), sequence, torch.zeros_like(sequence))
    response_tensor = input_ids[:, prompt_width:]
    response_mask = attention_mask[:, prompt_width:]
    return input_ids, attention_mask, response_tensor, response_mask, prompt_width


def _response_logits(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_width: int,
    response_width: int,
) -> torch.Tensor:
    """Teacher-forced logits that predict the response tokens, shape [B, L, V]."""
    device = _model_device(model)
    # PPO.md §1: pos = cumsum(attn) − attn gives 0 for left pads and 0, 1, 2, … for real tokens.
    # Without it an absolute-position model (GPT-2) shifts every left-padded row (PPO.md §6.2).
    position_ids = attention_mask.cumsum(dim=-1) - attention_mask
    output = model(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
    )
    # PPO.md §1 "Alignment": logits at absolute index P−1+t predict response token y_t.
    return output.logits[:, prompt_width - 1 : prompt_width - 1 + response_width]


def _validate_response_kl_inputs(
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    batch_size: int,
) -> None:
    if len(prompt_ids) != len(response_ids):
        raise ValueError(
            f"got {len(prompt_ids)} prompts but {len(response_ids)} responses; "
            "pass one prompt per response (repeat a prompt for each of its samples)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for index, prompt in enumerate(prompt_ids):
        if len(prompt) == 0:
            # The first response token is predicted from the last prompt token; with no prompt
            # there is no position whose logits predict it.
            raise ValueError(f"prompt {index} is empty; every prompt needs at least one token")


def response_kl(
    policy_model: torch.nn.Module,
    reference_model: torch.nn.Module,
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    pad_id: int,
    temperature: float = 1.0,
    batch_size: int = 32,
) -> dict[str, list[float]]:
    """Per-sample KL(policy || reference) of each response given its prompt.

    Returns {"kl": [...], "kl_k1": [...], "kl_k3": [...]} as Python floats in input order; an
    empty response gives 0.0 for all three. Both models run in eval mode under inference mode;
    their previous train/eval modes are restored afterwards.
    """
    _validate_response_kl_inputs(prompt_ids, response_ids, batch_size)
    results: dict[str, list[float]] = {name: [] for name in KL_ESTIMATE_NAMES}
    models = (policy_model, reference_model)
    previous_training_flags = [model.training for model in models]
    try:
        for model in models:
            # Dropout would make the KL of a fixed sample random (docs/PPO.md §3.4).
            model.eval()
        with torch.inference_mode():
            for start in range(0, len(prompt_ids), batch_size):
                chunk = _response_kl_chunk(
                    policy_model,
                    reference_model,
                    prompt_ids[start : start + batch_size],
                    response_ids[start : start + batch_size],
                    pad_id,
                    temperature,
                )
                for name in KL_ESTIMATE_NAMES:
                    results[name].extend(chunk[name])
    finally:
        for model, was_training in zip(models, previous_training_flags):
            model.train(was_training)
    logger.debug("computed response KL for %d samples", len(prompt_ids))
    return results


def _response_kl_chunk(
    policy_model: torch.nn.Module,
    reference_model: torch.nn.Module,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    pad_id: int,
    temperature: float,
) -> dict[str, list[float]]:
    response_width = max(len(response) for response in response_ids)
    if response_width == 0:
        # Nothing was generated in this chunk: the KL of an empty response is 0 by definition.
        return {name: [0.0] * len(prompt_ids) for name in KL_ESTIMATE_NAMES}

    input_ids, attention_mask, responses, response_mask, prompt_width = _build_padded_batch(
        prompt_ids, response_ids, pad_id
    )
    policy_logits = _response_logits(
        policy_model, input_ids, attention_mask, prompt_width, response_width
    )
    reference_logits = _response_logits(
        reference_model, input_ids, attention_mask, prompt_width, response_width
    ).to(policy_logits.device)
    estimates = sequence_kl_estimates(
        policy_logits,
        reference_logits,
        responses.to(policy_logits.device),
        response_mask.to(policy_logits.device),
        temperature,
    )
    return {name: estimates[name].cpu().tolist() for name in KL_ESTIMATE_NAMES}
