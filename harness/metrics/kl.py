"""KL(policy || reference) over sampled responses, as the evaluator reports it.

The evaluator reports one KL for every checkpoint of every algorithm (docs/DESIGN.md §6,
docs/PPO.md §3.3): the *exact* per-token divergence over the whole vocabulary, summed along each
sampled response. It is unbiased for the sequence KL and never negative. The k1 and k3
single-sample estimates are reported beside it as cross-checks; they use only the log-probs of
the sampled tokens, which is what the training loops of PPO (k1) and GRPO (k3) see.

The maths (forward inputs, tempered log-probs, the exact KL, k1 and k3) is `harness.logprobs`,
the same the PPO and REINFORCE++ trainers use, so the KL on the frontier and the KL they train
against cannot drift apart; this module batches the samples and runs the two models.

Naming: p is the policy (the distribution the responses were sampled from), q the reference.
All maths runs in at least float32 whatever the model dtype: low-precision log-softmax is a known
source of wrong and negative KLs (docs/PPO.md §6.1).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from harness import logprobs

logger = logging.getLogger(__name__)

KL_ESTIMATE_NAMES = ("kl", "kl_k1", "kl_k3")


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

    Returns tensors of shape [B], float32 (float64 for float64 logits):
      "kl"    exact Σ_t KL(p_t || q_t) over the vocabulary (unbiased, never negative);
      "kl_k1" Σ_t (log p − log q) at the sampled token (unbiased, can be negative per sample);
      "kl_k3" Σ_t (r − log r − 1) with r = q/p at the sampled token (unbiased, never negative).
    """
    if response_ids.shape != policy_logits.shape[:-1] or response_mask.shape != response_ids.shape:
        raise ValueError(
            f"response_ids {tuple(response_ids.shape)} and response_mask "
            f"{tuple(response_mask.shape)} must both be logits.shape[:-1] = "
            f"{tuple(policy_logits.shape[:-1])}"
        )
    valid = response_mask.to(device=policy_logits.device).bool()
    zeros = torch.zeros(valid.shape, dtype=torch.float32, device=valid.device)

    # PPO.md §3.3: the exact divergence over the vocabulary, both models at the same T, in row
    # chunks so that no [B, L, V] float32 log-softmax is held (PPO.md §2.15).
    exact_per_token = logprobs.exact_kl_from_logits(policy_logits, reference_logits, temperature)

    # The sampled tokens' log-probs, computed as the trainers compute logp_old and logp_ref (PPO.md
    # §1 "Temperature", §2.15); masked positions may hold a pad id outside the embedding table, and
    # are gathered at a harmless id and returned as 0.
    response_ids = response_ids.to(valid.device).long()
    sampled_policy_log_prob = logprobs.token_logprobs_from_logits(policy_logits, response_ids, temperature, mask=valid)
    sampled_reference_log_prob = logprobs.token_logprobs_from_logits(
        reference_logits, response_ids, temperature, mask=valid
    )
    # The responses were sampled from p, so p is the sampling side of both estimators (PPO.md §2.4).
    k1_per_token = logprobs.kl_k1(sampled_policy_log_prob, sampled_reference_log_prob)
    k3_per_token = logprobs.kl_k3(sampled_policy_log_prob, sampled_reference_log_prob)

    # `where`, not multiplication by the mask: a padded position may hold inf, and inf · 0 is NaN.
    return {
        "kl": torch.where(valid, exact_per_token, zeros).sum(dim=-1),
        "kl_k1": torch.where(valid, k1_per_token, zeros).sum(dim=-1),
        "kl_k3": torch.where(valid, k3_per_token, zeros).sum(dim=-1),
    }


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _padded_rows(
    rows: Sequence[Sequence[int]], width: int, pad_id: int, left: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists as a [len(rows), width] tensor padded with pad_id, and the mask of real tokens.

    The mask comes from the lengths, so that a real token that happens to equal pad_id is never
    mistaken for padding.
    """
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for row, tokens in enumerate(rows):
        if tokens:
            columns = slice(width - len(tokens), width) if left else slice(0, len(tokens))
            ids[row, columns] = torch.tensor(tokens, dtype=torch.long)
            mask[row, columns] = True
    return ids, mask


def _response_logits(
    model: torch.nn.Module, inputs: logprobs.ForwardInputs, prompt_width: int, response_width: int
) -> torch.Tensor:
    """Teacher-forced logits that predict the response tokens, shape [B, L, V]."""
    device = _model_device(model)
    # The position ids of PPO.md §1 (built by logprobs.build_forward_inputs): without them an
    # absolute-position model (GPT-2) shifts every left-padded row (PPO.md §6.2).
    output = model(
        input_ids=inputs.input_ids.to(device),
        attention_mask=inputs.attention_mask.to(device),
        position_ids=inputs.position_ids.to(device),
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

    prompt_width = max(len(prompt) for prompt in prompt_ids)
    # Prompts left-padded, responses right-padded (PPO.md §1).
    prompts, prompt_mask = _padded_rows(prompt_ids, prompt_width, pad_id, left=True)
    responses, response_mask = _padded_rows(response_ids, response_width, pad_id, left=False)
    inputs = logprobs.build_forward_inputs(prompts, responses, prompt_mask=prompt_mask, response_mask=response_mask)
    policy_logits = _response_logits(policy_model, inputs, prompt_width, response_width)
    reference_logits = _response_logits(reference_model, inputs, prompt_width, response_width).to(policy_logits.device)
    estimates = sequence_kl_estimates(
        policy_logits,
        reference_logits,
        responses.to(policy_logits.device),
        response_mask.to(policy_logits.device),
        temperature,
    )
    return {name: estimates[name].cpu().tolist() for name in KL_ESTIMATE_NAMES}
