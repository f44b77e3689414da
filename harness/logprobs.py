"""Teacher-forced log-probabilities and the KL estimators built on them, written once.

The evaluator's KL (``harness.metrics.kl``) and the on-policy trainers (PPO, REINFORCE++: ``onpolicy.py``) both
read the divergence to the reference from here, so the numbers the reward-KL frontier compares come from one
computation, and a fix here reaches both (docs/PPO.md §3.3 "one evaluator for all"). Pure tensor math, no
models and no I/O:

- the inputs of every teacher-forced forward (``build_forward_inputs``, PPO.md §1 "Forward-pass inputs");
- per-token log-probabilities, entropies and exact KLs from ``[..., V]`` logits at temperature T, computed in
  chunks of rows, each upcast to fp32 on its own, so no ``[B, L, V]`` fp32 tensor is ever materialised
  (PPO.md §1 "Temperature", §2.15);
- the single-sample estimators k1 and k3 (PPO.md §2.4, U8-U10).

Masked positions (pads) never enter a result: they are gathered at a harmless id and returned as exact zeros
(PPO.md §1, §2.7). The section of PPO.md each detail follows is cited beside its lines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]

# Rows of [N, V] logits handled at once by the chunked functions below. With V = 150k and fp32 one chunk is
# ~600 MB at most; this bounds peak memory instead of materialising [B, L, V] (PPO.md §2.15).
DEFAULT_LOGIT_ROWS_PER_CHUNK = 1024


# ---------------------------------------------------------------------------------------------------------
# Masks (PPO.md §1 "Masked reductions", §2.7)
# ---------------------------------------------------------------------------------------------------------


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a boolean tensor (accepts bool, 0/1 integer or 0/1 float masks)."""
    return mask if mask.dtype == torch.bool else mask != 0


def zero_outside_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``values`` where ``mask`` is set, exact zeros elsewhere."""
    # torch.where instead of values * mask: a pad holding inf or NaN times 0 is NaN, and must not leak into
    # any statistic (PPO.md §2.7 "Padding must not enter the statistics"; SkyRL#1782).
    return torch.where(as_bool_mask(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))


# ---------------------------------------------------------------------------------------------------------
# Forward-pass inputs (PPO.md §1 "Forward-pass inputs", "Alignment")
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardInputs:
    """Inputs of every teacher-forced forward (policy, reference, critic, RM, the evaluator's KL), PPO.md §1."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor


def build_forward_inputs(
    prompt_ids: torch.Tensor,
    response_ids: torch.Tensor,
    pad_id: int | None = None,
    pad_replacement_id: int = 0,
    *,
    prompt_mask: torch.Tensor | None = None,
    response_mask: torch.Tensor | None = None,
) -> ForwardInputs:
    """Concatenate left-padded prompts ``[B, P]`` and right-padded responses ``[B, L]`` into forward inputs.

    - ``attention_mask``: from ``prompt_mask`` and ``response_mask`` when given, else ``x != pad_id`` (PPO.md
      §1). Prefer the masks: a policy that *samples* the pad token inside a response was attending to it in
      ``generate``, and ``x != pad_id`` would hide it from the recomputed log-probs, which then are not the
      sampling distribution (0.24 nats off on a tiny model, found with the U20 check).
    - ``position_ids = cumsum(attention_mask) - attention_mask``: 0 for left pads, then 0, 1, 2, ... for real
      tokens, so a sequence gets the same positions whatever its left padding (PPO.md §1; TRL
      ``forward()``; omitting them cost 34 nats on GPT-2 in trl#6800; U19).
    - unattended ids replaced by ``pad_replacement_id`` so a ``[PAD]`` added without resizing the embeddings
      never reaches the embedding lookup (PPO.md §1, §2.1 "Pad token").

    With P prompt columns, the logits at absolute index ``P-1+t`` predict response token ``t`` (PPO.md §1
    "Alignment").
    """
    sequence_ids = torch.cat([prompt_ids, response_ids], dim=1)
    if prompt_mask is not None and response_mask is not None:
        attention_mask = torch.cat([prompt_mask.bool(), response_mask.bool()], dim=1)
    elif pad_id is not None:
        attention_mask = sequence_ids != pad_id
    else:
        raise ValueError("build_forward_inputs needs pad_id or both prompt_mask and response_mask")
    attention_long = attention_mask.long()
    position_ids = torch.cumsum(attention_long, dim=1) - attention_long
    input_ids = torch.where(attention_mask, sequence_ids, torch.full_like(sequence_ids, pad_replacement_id))
    return ForwardInputs(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids)


# ---------------------------------------------------------------------------------------------------------
# Log-probs, entropy and exact KL from logits, at temperature T (PPO.md §1 "Temperature", §2.9, §2.15, §3.3)
# ---------------------------------------------------------------------------------------------------------


def _check_temperature(temperature: float) -> None:
    # PPO.md §6.1: temperature 0 divides by zero; require T > 0 rather than adding TRL's 1e-7.
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


def _at_least_fp32(logits: torch.Tensor) -> torch.Tensor:
    # PPO.md §2.1 "Dtype": upcast bf16/fp16 logits to fp32 before softmax-type reductions; keep fp64 as is.
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _flatten_logits(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Size]:
    """View ``[..., V]`` logits as ``[N, V]`` rows, returning the leading shape to restore."""
    leading_shape = logits.shape[:-1]
    return logits.reshape(-1, logits.shape[-1]), leading_shape


def _empty_result(flat_logits: torch.Tensor, leading_shape: torch.Size) -> torch.Tensor:
    # Zero rows: nothing to compute, but the caller still gets the dtype a non-empty input would give.
    return flat_logits.new_zeros(leading_shape, dtype=torch.promote_types(flat_logits.dtype, torch.float32))


def token_logprobs_from_logits(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float = 1.0,
    mask: torch.Tensor | None = None,
    rows_per_chunk: int = DEFAULT_LOGIT_ROWS_PER_CHUNK,
) -> torch.Tensor:
    """Log-probability of ``token_ids`` under ``softmax(logits / temperature)``; shape ``logits.shape[:-1]``.

    ``log p(y) = z_y/T - logsumexp(z/T)``: the chosen logit is gathered and a row-wise logsumexp subtracted,
    ``rows_per_chunk`` rows at a time, so no ``[B, L, V]`` log-softmax is ever materialised and each chunk is
    upcast to fp32 on its own (PPO.md §2.15 "Never materialise [B, L, V] log-softmax"; TRL
    ``selective_log_softmax`` #2799; OpenRLHF chunked logsumexp). Gradients flow through.

    Every policy *and* reference log-prob uses the same ``T`` as sampling (PPO.md §1 "Temperature"; trl#3169,
    OpenRLHF#853). If ``mask`` is given, masked positions are gathered at id 0 (pad ids may lie outside the
    vocabulary) and returned as exact zeros.
    """
    _check_temperature(temperature)
    if token_ids.shape != logits.shape[:-1]:
        raise ValueError(f"token_ids shape {tuple(token_ids.shape)} must equal logits.shape[:-1]")
    if mask is not None:
        token_ids = torch.where(as_bool_mask(mask), token_ids, torch.zeros_like(token_ids))
    flat_logits, leading_shape = _flatten_logits(logits)
    flat_ids = token_ids.reshape(-1)
    chunk_logprobs = []
    for start in range(0, flat_logits.shape[0], rows_per_chunk):
        # Upcast per chunk, not the whole [N, V] tensor (PPO.md §2.1 "Dtype", §2.15 "Upcast to fp32 per chunk").
        scaled_logits = _at_least_fp32(flat_logits[start : start + rows_per_chunk]) / temperature
        chosen_logit = scaled_logits.gather(1, flat_ids[start : start + rows_per_chunk].unsqueeze(1)).squeeze(1)
        chunk_logprobs.append(chosen_logit - torch.logsumexp(scaled_logits, dim=1))
    if not chunk_logprobs:
        return _empty_result(flat_logits, leading_shape)
    logprobs = torch.cat(chunk_logprobs).reshape(leading_shape)
    return logprobs if mask is None else zero_outside_mask(logprobs, mask)


def entropy_from_logits(
    logits: torch.Tensor, temperature: float = 1.0, rows_per_chunk: int = DEFAULT_LOGIT_ROWS_PER_CHUNK
) -> torch.Tensor:
    """Exact categorical entropy of ``softmax(logits / temperature)``; shape ``logits.shape[:-1]``.

    ``H = logsumexp(z/T) - sum_v softmax(z/T)_v * (z/T)_v`` (PPO.md §2.9 "Entropy bonus"), computed in fp32,
    chunk by chunk (PPO.md §2.15). This is the exact entropy, not ``-log p`` of the sampled token, whose
    on-policy gradient is zero (PPO.md §4.1 item 4). Wrap in ``torch.no_grad()`` when only logging it.
    """
    _check_temperature(temperature)
    flat_logits, leading_shape = _flatten_logits(logits)
    chunk_entropies = []
    for start in range(0, flat_logits.shape[0], rows_per_chunk):
        scaled_logits = _at_least_fp32(flat_logits[start : start + rows_per_chunk]) / temperature
        probabilities = torch.softmax(scaled_logits, dim=1)
        chunk_entropies.append(torch.logsumexp(scaled_logits, dim=1) - (probabilities * scaled_logits).sum(dim=1))
    if not chunk_entropies:
        return _empty_result(flat_logits, leading_shape)
    return torch.cat(chunk_entropies).reshape(leading_shape)


def exact_kl_from_logits(
    policy_logits: torch.Tensor,
    reference_logits: torch.Tensor,
    temperature: float = 1.0,
    rows_per_chunk: int = DEFAULT_LOGIT_ROWS_PER_CHUNK,
) -> torch.Tensor:
    """Exact ``KL(p || q) = sum_v p_v (log p_v - log q_v)`` at every position, ``p = softmax(policy / T)`` and
    ``q = softmax(reference / T)``; shape ``logits.shape[:-1]``, never negative.

    The evaluator's KL (PPO.md §3.3 "The harness evaluator"): over the whole vocabulary, so it needs both full
    log-softmaxes, computed ``rows_per_chunk`` rows at a time and upcast to fp32 per chunk (PPO.md §2.1
    "Dtype", §2.15); low-precision log-softmax is a known source of wrong and negative KLs (PPO.md §6.1).
    """
    _check_temperature(temperature)
    if policy_logits.shape != reference_logits.shape:
        raise ValueError(
            f"policy logits {tuple(policy_logits.shape)} and reference logits "
            f"{tuple(reference_logits.shape)} must have the same shape"
        )
    flat_policy, leading_shape = _flatten_logits(policy_logits)
    flat_reference, _ = _flatten_logits(reference_logits)
    chunk_kls = []
    for start in range(0, flat_policy.shape[0], rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        policy_log_probs = torch.log_softmax(_at_least_fp32(flat_policy[rows]) / temperature, dim=1)
        reference_log_probs = torch.log_softmax(_at_least_fp32(flat_reference[rows]) / temperature, dim=1)
        policy_probs = policy_log_probs.exp()
        # Tokens the policy never emits (p = 0, e.g. logits of -inf) contribute nothing; without the `where`,
        # 0 · (−inf − log q) would be NaN.
        per_token_terms = torch.where(
            policy_probs > 0,
            policy_probs * (policy_log_probs - reference_log_probs),
            torch.zeros_like(policy_probs),
        )
        chunk_kls.append(per_token_terms.sum(dim=1))
    if not chunk_kls:
        return _empty_result(flat_policy, leading_shape)
    kl = torch.cat(chunk_kls).reshape(leading_shape)
    # Mathematically KL >= 0, but when p ≈ q the float sum of terms of both signs can land a few ulps below
    # zero; clamping keeps the "never negative" promise without moving any real value.
    return kl.clamp_min(0.0)


# ---------------------------------------------------------------------------------------------------------
# KL estimators (PPO.md §2.4, §2.9 statistics, §3.3, U8-U10; Schulman, "Approximating KL Divergence")
# ---------------------------------------------------------------------------------------------------------
# Convention: ``logp_sampled`` is the log-prob under the distribution the tokens were sampled from (q), and
# ``logp_other`` under the other one (p). With log r = logp_other - logp_sampled, both estimators have
# expectation KL(q || p) under q.


def kl_k1(logp_sampled: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    """``k1 = log q - log p = -log r``: unbiased for KL(q||p), can be negative per token (PPO.md §2.4)."""
    return logp_sampled - logp_other


def kl_k3(logp_sampled: torch.Tensor, logp_other: torch.Tensor) -> torch.Tensor:
    """``k3 = (r - 1) - log r``: non-negative, unbiased, low variance; its gradient is *not* the reverse-KL
    gradient when used as a loss (PPO.md §2.4, §3.1, U10)."""
    return k3_from_log_ratio(logp_other - logp_sampled)


def k3_from_log_ratio(log_ratio: torch.Tensor) -> torch.Tensor:
    """``(r - 1) - log r`` from ``log r`` itself, for callers that hold a (clamped) log-ratio: PPO's
    ``approx_kl`` statistic (PPO.md §2.9)."""
    # expm1, not exp(.) - 1: near r = 1, where k3 ~ (log r)^2 / 2 is tiny, exp(.) - 1 loses it to rounding.
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logp_sampled: torch.Tensor, logp_other: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Dispatch to :func:`kl_k1` or :func:`kl_k3` by name. k2 ``(log r)^2 / 2`` is not offered: it is biased
    (``+mu^4/8`` for unit Gaussians) and must never go in the reward (PPO.md §2.4, U9)."""
    if estimator == "k1":
        return kl_k1(logp_sampled, logp_other)
    if estimator == "k3":
        return kl_k3(logp_sampled, logp_other)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")
