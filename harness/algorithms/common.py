"""Pure tensor math of the harness's own on-policy trainers (PPO, REINFORCE++: ``ppo.py``, ``onpolicy.py``,
``reinforce_pp.py``): no models, no I/O.

Every function here is specified in ``docs/PPO.md`` (the harness PPO specification), called by those trainers
and unit-tested in ``tests/unit/test_ppo_math.py`` against the hand-computed values of PPO.md §5.1 (U1-U12,
U16, U18-U20). The math TRL runs for the other algorithms (GRPO advantages and loss aggregations, the DPO
loss) is not here: its oracles live in ``tests/unit/test_trl_math.py``, checked against what TRL computes.
The section of PPO.md (and, where the spec names one, the source it summarises) is cited beside the lines
that implement each detail.

Conventions (PPO.md §1):

- Response tensors have shape ``[B, L]``: ``B`` rollouts, ``L`` response positions, right-padded after the
  first stop token.
- ``mask`` is a boolean (or 0/1) tensor of the same shape, 1 for valid response tokens, i.e. positions
  ``t <= e_b`` where ``e_b`` is the index of the first stop token (or ``L-1`` if there is none). The stop
  token itself is a valid action.
- Every statistic takes an explicit mask. Padded positions are never filled with sentinel values that a
  statistic could pick up (the TRL ``INVALID_LOGPROB`` bug, PPO.md §6.8); functions that return per-token
  tensors return exact zeros there.
- Losses are aggregated as ``sum over valid tokens / token_count`` where ``token_count`` is the number of
  valid tokens of the whole minibatch (all micro-batches, all ranks), so gradient accumulation over
  micro-batches is exact (PPO.md §2.8, test E7).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch

KLEstimator = Literal["k1", "k3"]

# Rows of [N, V] logits handled at once by the chunked log-prob and entropy functions. With V = 150k and
# fp32 one chunk is ~600 MB at most; this bounds peak memory instead of materialising [B, L, V] (PPO.md §2.15).
DEFAULT_LOGIT_ROWS_PER_CHUNK = 1024


# ---------------------------------------------------------------------------------------------------------
# Masked reductions (PPO.md §1 "Masked reductions", §2.5, §2.7)
# ---------------------------------------------------------------------------------------------------------


def _as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """Return ``mask`` as a boolean tensor (accepts bool, 0/1 integer or 0/1 float masks)."""
    return mask if mask.dtype == torch.bool else mask != 0


def _zero_outside_mask(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    # torch.where instead of values * mask: a pad holding inf or NaN times 0 is NaN, and must not leak into
    # any statistic (PPO.md §2.7 "Padding must not enter the statistics"; SkyRL#1782).
    return torch.where(_as_bool_mask(mask), values, torch.zeros((), dtype=values.dtype, device=values.device))


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` over positions where ``mask`` is set, over ``dim`` (all elements if ``None``)."""
    masked_values = _zero_outside_mask(values, mask)
    return masked_values.sum() if dim is None else masked_values.sum(dim=dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of valid positions in ``mask`` (as a float tensor, so it can divide directly)."""
    valid = _as_bool_mask(mask).to(torch.float32)
    return valid.sum() if dim is None else valid.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Masked mean ``sum(v*m) / max(sum(m), 1)``.

    A row (or a whole tensor) without valid positions yields 0, never NaN (PPO.md §1 "Masked reductions",
    U1). No host synchronisation: safe inside micro-batch loops.
    """
    total = masked_sum(values, mask, dim=dim)
    # max(sum(m), 1) (PPO.md §1): an all-padding row contributes 0 instead of 0/0 = NaN.
    count = masked_count(mask, dim=dim).clamp(min=1.0).to(total.dtype)
    return total / count


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Masked variance over all valid positions, unbiased (``n-1``) by default.

    Raises ``ValueError`` when there are too few valid positions (fewer than 2 for the unbiased estimate,
    none for the population one): an ``n-1 = 0`` denominator would emit NaN or inf (PPO.md §6.1 "Whitening
    with fewer than 2 elements"; TRL ``masked_var`` comment; SB3#325; U2). The check reads the count on the
    host, which is acceptable because whitening happens once per rollout, not per micro-batch.
    """
    count = int(masked_count(mask).item())
    minimum_count = 2 if unbiased else 1
    if count < minimum_count:
        raise ValueError(
            f"masked_var needs at least {minimum_count} valid positions (unbiased={unbiased}), got {count}"
        )
    mean = masked_mean(values, mask)
    squared_deviation = (values - mean) ** 2
    sum_squared_deviation = masked_sum(squared_deviation, mask)
    # PPO.md §2.7: the unbiased estimate (torch's default), not numpy's population estimate.
    denominator = count - 1 if unbiased else count
    return sum_squared_deviation / denominator


def masked_whiten(
    values: torch.Tensor,
    mask: torch.Tensor,
    shift_mean: bool = True,
    unbiased: bool = True,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Whiten ``values`` with the masked mean and masked variance of the valid positions.

    ``(v - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back so only the scale
    changes (used for reward whitening, PPO.md §2.5). Masked positions are returned as exact zeros, and their
    input values have no influence on the result (PPO.md §2.7, U2 invariance).
    """
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask, unbiased=unbiased)
    # PPO.md §2.7: A <- (A - mu) / sqrt(sigma^2 + 1e-8); eps keeps a zero-variance batch finite (§6.1).
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        # PPO.md §2.5: reward whitening keeps the mean, only rescales (TRL whiten(shift_mean=False)).
        whitened = whitened + mean
    # PPO.md §2.7 "then A <- A*m": pads stay exactly 0 so later sums over them are harmless.
    return _zero_outside_mask(whitened, mask)


def masked_min_max(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``values`` over valid positions.

    The reductions start from +inf / -inf, the identity elements of min / max, so results of several
    micro-batches combine exactly with ``torch.minimum`` / ``torch.maximum``; with an empty mask the result is
    that identity. No host synchronisation.
    """
    bool_mask = _as_bool_mask(mask)
    positive_infinity = torch.tensor(float("inf"), dtype=values.dtype, device=values.device)
    minimum = torch.where(bool_mask, values, positive_infinity).amin()
    maximum = torch.where(bool_mask, values, -positive_infinity).amax()
    return minimum, maximum


# ---------------------------------------------------------------------------------------------------------
# Stop tokens, response mask, special ids (PPO.md §1, §2.2 step 4, §2.3, §6.3)
# ---------------------------------------------------------------------------------------------------------


def validate_special_token_ids(pad_id: int, eos_id: int, extra_stop_ids: Iterable[int] = ()) -> None:
    """Raise ``ValueError`` unless the pad id differs from EOS and from every extra stop id.

    With ``pad == eos`` the EOS is masked as padding, the model never learns to stop and score heads read the
    wrong token (PPO.md §1 "Token ids", §6.3; N+ paper headline detail; U3).
    """
    stop_ids = {int(eos_id), *(int(stop_id) for stop_id in extra_stop_ids)}
    if int(pad_id) in stop_ids:
        raise ValueError(
            f"pad_id ({pad_id}) must differ from the EOS id and every stop id {sorted(stop_ids)} (PPO.md §6.3)"
        )


@dataclass(frozen=True)
class TruncatedResponses:
    """Responses cut after their first stop token (PPO.md §1 "Response mask and lengths").

    Attributes:
        response_ids: ``[B, L]`` ids with every token after the first stop token replaced by ``pad_id``.
        mask: ``[B, L]`` bool, True for ``t <= e_b`` (the stop token is a valid action).
        last_index: ``[B]`` long, ``e_b``: the first stop position, or ``L-1`` when there is no stop token.
        has_stop: ``[B]`` bool, whether a stop token was found.
    """

    response_ids: torch.Tensor
    mask: torch.Tensor
    last_index: torch.Tensor
    has_stop: torch.Tensor

    @property
    def lengths(self) -> torch.Tensor:
        """``len_b = e_b + 1`` (PPO.md §1)."""
        return self.last_index + 1


def truncate_after_stop(response_ids: torch.Tensor, stop_ids: Iterable[int], pad_id: int) -> TruncatedResponses:
    """Truncate ``[B, L]`` responses after the first token in the stop set and build the response mask.

    ``stop_ids`` is the configured stop set S (EOS plus any extra stop ids). Checking the whole set, not only
    ``eos_token_id``, avoids the TRL bug where a custom stop token was never recognised (trl#3750, trl#5338
    bug 2; PPO.md §2.3, U3). Raises ``ValueError`` if ``pad_id`` is in the stop set (PPO.md §6.3).
    """
    stop_id_list = sorted({int(stop_id) for stop_id in stop_ids})
    if not stop_id_list:
        raise ValueError("the stop set must contain at least the EOS id (PPO.md §1 'Token ids')")
    if int(pad_id) in stop_id_list:
        raise ValueError(f"pad_id ({pad_id}) must not be a stop id {stop_id_list} (PPO.md §6.3)")
    if response_ids.dim() != 2:
        raise ValueError(f"response_ids must have shape [B, L], got {tuple(response_ids.shape)}")

    batch_size, response_length = response_ids.shape
    stop_id_tensor = torch.tensor(stop_id_list, dtype=response_ids.dtype, device=response_ids.device)
    is_stop = torch.isin(response_ids, stop_id_tensor)
    has_stop = is_stop.any(dim=1)
    positions = torch.arange(response_length, device=response_ids.device).expand(batch_size, response_length)
    # First stop index: the smallest position holding a stop id (positions without one count as L).
    first_stop = torch.where(is_stop, positions, torch.full_like(positions, response_length)).amin(dim=1)
    # PPO.md §1: e_b = first stop index, or L-1 when the response was cut at max length.
    last_index = torch.where(has_stop, first_stop, torch.full_like(first_stop, response_length - 1))
    # PPO.md §1: m[b,t] = 1 iff t <= e_b; the stop token is inside the mask (TRL GRPO completion mask).
    mask = positions <= last_index.unsqueeze(1)
    # PPO.md §2.2 step 4: every token after the first stop token becomes pad.
    truncated_ids = torch.where(mask, response_ids, torch.full_like(response_ids, int(pad_id)))
    return TruncatedResponses(response_ids=truncated_ids, mask=mask, last_index=last_index, has_stop=has_stop)


# ---------------------------------------------------------------------------------------------------------
# Forward-pass inputs and alignment (PPO.md §1 "Forward-pass inputs", "Alignment")
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ForwardInputs:
    """Inputs of every teacher-forced forward (policy, reference, critic, RM), PPO.md §1."""

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
# Log-probs and entropy from logits, at temperature T (PPO.md §1 "Temperature", §2.9, §2.15)
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
        token_ids = torch.where(_as_bool_mask(mask), token_ids, torch.zeros_like(token_ids))
    flat_logits, leading_shape = _flatten_logits(logits)
    flat_ids = token_ids.reshape(-1)
    chunk_logprobs = []
    for start in range(0, flat_logits.shape[0], rows_per_chunk):
        # Upcast per chunk, not the whole [N, V] tensor (PPO.md §2.1 "Dtype", §2.15 "Upcast to fp32 per chunk").
        scaled_logits = _at_least_fp32(flat_logits[start : start + rows_per_chunk]) / temperature
        chosen_logit = scaled_logits.gather(1, flat_ids[start : start + rows_per_chunk].unsqueeze(1)).squeeze(1)
        chunk_logprobs.append(chosen_logit - torch.logsumexp(scaled_logits, dim=1))
    if not chunk_logprobs:  # zero rows: nothing to gather
        return flat_logits.new_zeros(leading_shape, dtype=torch.promote_types(flat_logits.dtype, torch.float32))
    logprobs = torch.cat(chunk_logprobs).reshape(leading_shape)
    return logprobs if mask is None else _zero_outside_mask(logprobs, mask)


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
        return flat_logits.new_zeros(leading_shape, dtype=torch.promote_types(flat_logits.dtype, torch.float32))
    return torch.cat(chunk_entropies).reshape(leading_shape)


# ---------------------------------------------------------------------------------------------------------
# KL estimators (PPO.md §2.4, §2.9 statistics, U8-U10; Schulman, "Approximating KL Divergence")
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
    log_ratio = logp_other - logp_sampled
    return torch.expm1(log_ratio) - log_ratio


def kl_estimate(logp_sampled: torch.Tensor, logp_other: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Dispatch to :func:`kl_k1` or :func:`kl_k3` by name. k2 ``(log r)^2 / 2`` is not offered: it is biased
    (``+mu^4/8`` for unit Gaussians) and must never go in the reward (PPO.md §2.4, U9)."""
    if estimator == "k1":
        return kl_k1(logp_sampled, logp_other)
    if estimator == "k3":
        return kl_k3(logp_sampled, logp_other)
    raise ValueError(f"unknown KL estimator {estimator!r}; expected 'k1' or 'k3'")


# ---------------------------------------------------------------------------------------------------------
# Per-token rewards (PPO.md §2.4, §2.5)
# ---------------------------------------------------------------------------------------------------------


def last_valid_index(mask: torch.Tensor) -> torch.Tensor:
    """``e_b`` recovered from a prefix mask: ``sum(m) - 1``, clamped to 0 for an all-padding row."""
    return (masked_count(mask, dim=1).long() - 1).clamp(min=0)


def per_token_rewards(
    scores: torch.Tensor,
    logp_old: torch.Tensor,
    logp_ref: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    kl_estimator: KLEstimator = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards ``r_t = -beta * k_t + 1[t == e_b] * s_b`` and the per-token KL ``k_t``.

    - ``k_t`` is k1(old, ref) by default: its expected sum is the sequence KL and the score-function gradient
      is that of the KL-regularised objective (PPO.md §2.4; Ziegler et al., N-details blog policy detail 8).
      ``"k3"`` is offered as a flag only; ``"k2"`` is refused because its expectation is biased (§2.4, U9).
    - The score ``s_b`` (after the missing-stop penalty, §2.3) lands on the last valid token ``e_b``, whose
      next state is terminal; not one slot later as in TRL (PPO.md §2.4 "Where the score lands"; trl#1893).
    - ``r_t = 0`` where ``m = 0``; the returned KL is also zero there.

    Call it on detached rollout tensors: the reward is a constant for the policy gradient.
    """
    if kl_estimator == "k2":
        raise ValueError("k2 must never be used in the reward: its expectation is biased (PPO.md §2.4, U9)")
    bool_mask = _as_bool_mask(mask)
    per_token_kl = _zero_outside_mask(kl_estimate(logp_old, logp_ref, kl_estimator), bool_mask)
    rewards = -kl_coef * per_token_kl
    row_has_tokens = bool_mask.any(dim=1)
    # Score of a row without any valid token (should not happen) is dropped rather than put on a pad.
    score_contribution = torch.where(row_has_tokens, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
    rewards = rewards.scatter_add(1, last_valid_index(bool_mask).unsqueeze(1), score_contribution.unsqueeze(1))
    return rewards, per_token_kl


# ---------------------------------------------------------------------------------------------------------
# GAE (PPO.md §2.6, U6, U7)
# ---------------------------------------------------------------------------------------------------------


def gae_advantages_and_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over ``[B, L]`` response tokens; returns ``(advantages, returns)``.

    Reverse recursion with ``V_L = 0`` and ``A_L = 0``:
    ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, ``G_t = A_t + V_t``.

    Values and rewards are first zeroed outside the mask. Because masked positions only follow the last valid
    token ``e_b``, this makes the plain recursion terminal-aware: the state after ``e_b`` has value 0 and
    garbage in the pads cannot leak back (PPO.md §2.6; OpenRLHF ``experience_maker`` does the same). Returns
    ``G`` are the critic targets, taken before advantage whitening. Both outputs are zero where ``m = 0``.
    The loop runs over ``L`` and is vectorised over ``B`` (PPO.md §2.6 "Implementation").
    """
    bool_mask = _as_bool_mask(mask)
    # PPO.md §2.6: V_t <- V_old[t]*m_t, r_t <- r_t*m_t (via where, so NaN/inf pads cannot survive).
    masked_values = _zero_outside_mask(values, bool_mask)
    masked_rewards = _zero_outside_mask(rewards, bool_mask)
    response_length = rewards.shape[1]
    next_value = torch.zeros_like(masked_values[:, 0])  # V_L = 0: bootstrap 0 after the last position.
    next_advantage = torch.zeros_like(masked_values[:, 0])  # A_L = 0.
    advantages_reversed = []
    for t in reversed(range(response_length)):
        delta = masked_rewards[:, t] + gamma * next_value - masked_values[:, t]
        next_advantage = delta + gamma * lam * next_advantage
        next_value = masked_values[:, t]
        advantages_reversed.append(next_advantage)
    advantages = torch.stack(advantages_reversed[::-1], dim=1)
    # G = A + V, before whitening (PPO.md §2.6; §2.7 "Returns G are not whitened").
    returns = advantages + masked_values
    # PPO.md §2.6: "Finally multiply A and G by m".
    return _zero_outside_mask(advantages, bool_mask), _zero_outside_mask(returns, bool_mask)


# ---------------------------------------------------------------------------------------------------------
# Losses with global-token-count aggregation (PPO.md §2.8, §2.9, U11, U12)
# ---------------------------------------------------------------------------------------------------------


def _check_token_count(token_count: float | torch.Tensor) -> None:
    if isinstance(token_count, (int, float)) and token_count <= 0:
        raise ValueError(f"token_count must be positive, got {token_count}")


@dataclass(frozen=True)
class PolicyLossOutput:
    """Clipped-surrogate loss of one micro-batch and its statistics.

    ``loss``, ``clip_fraction``, ``approx_kl_k3`` and ``approx_kl_k1`` are all ``sum over valid tokens /
    token_count``: with the minibatch's global token count, summing them over its micro-batches gives exactly
    the minibatch token-mean (PPO.md §2.8, §2.13 "sums and counts, not means of means"). Statistics are
    detached. ``ratio`` is the per-token (detached) importance ratio, zero at masked positions.
    """

    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl_k3: torch.Tensor
    approx_kl_k1: torch.Tensor
    ratio: torch.Tensor


def clipped_policy_loss(
    logp_new: torch.Tensor,
    logp_old: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    token_count: float | torch.Tensor,
    clip_epsilon: float = 0.2,
    log_ratio_clamp: float = 20.0,
) -> PolicyLossOutput:
    """PPO clipped surrogate ``sum_t m_t max(-A rho, -A clip(rho, 1-eps, 1+eps)) / N`` (PPO.md §2.9).

    - ``rho = exp(clamp(logp_new - logp_old, -20, 20))``: the log-ratio is clamped before ``exp`` so one bad
      token cannot overflow (PPO.md §2.9, §6.1; verl, OpenRLHF).
    - ``N = token_count`` is the number of valid tokens in the whole minibatch, not this micro-batch
      (PPO.md §2.8, E7).
    - ``clip_fraction`` counts tokens where the clipped branch is strictly active, ``-A clip(rho) > -A rho``
      (TRL/verl definition, not CleanRL's ``|rho-1| > eps``; PPO.md §2.9, U11).
    - ``approx_kl_k3 = (rho - 1) - log rho`` (CleanRL) and ``approx_kl_k1 = logp_old - logp_new``, old->new.
    """
    _check_token_count(token_count)
    bool_mask = _as_bool_mask(mask)
    log_ratio = (logp_new - logp_old).clamp(-log_ratio_clamp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped_objective_loss = -advantages * ratio
    clipped_objective_loss = -advantages * ratio.clamp(1.0 - clip_epsilon, 1.0 + clip_epsilon)
    # Pessimistic bound: the larger loss = -min(rho A, clip(rho) A) (Schulman et al. 2017, PPO.md §2.9).
    per_token_loss = torch.maximum(unclipped_objective_loss, clipped_objective_loss)
    loss = masked_sum(per_token_loss, bool_mask) / token_count
    with torch.no_grad():
        clipped_branch_active = (clipped_objective_loss > unclipped_objective_loss).to(per_token_loss.dtype)
        clip_fraction = masked_sum(clipped_branch_active, bool_mask) / token_count
        detached_log_ratio = log_ratio.detach()
        approx_kl_k3 = masked_sum(torch.expm1(detached_log_ratio) - detached_log_ratio, bool_mask) / token_count
        approx_kl_k1 = masked_sum(-detached_log_ratio, bool_mask) / token_count
        masked_ratio = _zero_outside_mask(ratio.detach(), bool_mask)
    return PolicyLossOutput(
        loss=loss,
        clip_fraction=clip_fraction,
        approx_kl_k3=approx_kl_k3,
        approx_kl_k1=approx_kl_k1,
        ratio=masked_ratio,
    )


@dataclass(frozen=True)
class ValueLossOutput:
    """Clipped value loss of one micro-batch; both fields are ``sum over valid tokens / token_count``."""

    loss: torch.Tensor
    clip_fraction: torch.Tensor


def clipped_value_loss(
    values_new: torch.Tensor,
    values_old: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    token_count: float | torch.Tensor,
    value_clip_range: float = 0.2,
) -> ValueLossOutput:
    """Clipped value loss ``sum_t m_t 0.5 max((V - G)^2, (Vc - G)^2) / N`` (PPO.md §2.9, U12).

    ``Vc = V_old + clip(V_new - V_old, -eps_v, eps_v)`` clips around the rollout-time values (in reward
    units, so with an unnormalised RM 0.2 can freeze the critic). ``clip_fraction`` counts tokens where the
    clipped error is strictly larger, i.e. the clipped branch is the active one.
    """
    _check_token_count(token_count)
    bool_mask = _as_bool_mask(mask)
    clipped_values = values_old + (values_new - values_old).clamp(-value_clip_range, value_clip_range)
    unclipped_squared_error = (values_new - returns) ** 2
    clipped_squared_error = (clipped_values - returns) ** 2
    per_token_loss = 0.5 * torch.maximum(unclipped_squared_error, clipped_squared_error)
    loss = masked_sum(per_token_loss, bool_mask) / token_count
    with torch.no_grad():
        # Only where the clamp changed the value: inside the range V_old + (V_new - V_old) equals V_new up to
        # rounding, and a strict comparison of the two errors would count rounding noise as clipping (seen as
        # a value clip fraction of about 0.2 after one small step, different on 1 and 2 processes).
        clamp_active = (values_new - values_old).abs() > value_clip_range
        clipped_branch_active = (clamp_active & (clipped_squared_error > unclipped_squared_error)).to(
            per_token_loss.dtype
        )
        clip_fraction = masked_sum(clipped_branch_active, bool_mask) / token_count
    return ValueLossOutput(loss=loss, clip_fraction=clip_fraction)


def token_sum_over_count(
    per_token_values: torch.Tensor, mask: torch.Tensor, token_count: float | torch.Tensor
) -> torch.Tensor:
    """``sum(v * m) / token_count``: the micro-batch share of a minibatch token-mean (PPO.md §2.8).

    Used for the entropy term ``L_H = sum m H / N`` (PPO.md §2.9) and any other additive statistic.
    """
    _check_token_count(token_count)
    return masked_sum(per_token_values, mask) / token_count


# ---------------------------------------------------------------------------------------------------------
# KL coefficient controllers (PPO.md §2.10, U18)
# ---------------------------------------------------------------------------------------------------------


class FixedKLController:
    """Constant beta, the harness default: beta stays a controlled variable to sweep (PPO.md §2.10)."""

    def __init__(self, kl_coef: float) -> None:
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """No-op; returns the unchanged beta (same interface as :class:`AdaptiveKLController`)."""
        return self.value


class AdaptiveKLController:
    """Ziegler et al. (2019) proportional controller on beta (PPO.md §2.10; N-details blog policy detail 11).

    After each rollout: ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta (1 + e n_steps / horizon)``,
    with ``n_steps`` the number of episodes in the rollout batch. ``current_kl`` must be in the units of
    ``target``: OpenAI feeds the batch-mean *sequence* KL to the reference (target 6), verl the per-token mean.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("target and horizon must be positive")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Apply one controller step and return the new beta."""
        proportional_error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon
        return self.value
