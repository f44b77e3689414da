"""PPO and REINFORCE++ math: the pure tensor functions of the harness's own on-policy trainers (``ppo.py``,
``reinforce_pp.py`` and what they share in ``onpolicy.py``), no models, no I/O.

Every function here is specified in ``docs/PPO.md`` (the harness PPO specification), called by those trainers
and unit-tested in ``tests/unit/test_ppo_math.py`` against the hand-computed values of PPO.md §5.1 (U1-U7,
U11, U12, U18). What the evaluator shares with the trainers (forward inputs, tempered log-probs, entropy, the
k1/k3 estimators) is ``harness.logprobs``, tested in the same file (U8-U10, U16, U19, U20), so that the KL the
trainers shape their reward with and the KL the evaluator reports come from one computation (PPO.md §3.3). The
math TRL runs for the other algorithms (GRPO advantages and loss aggregations, the DPO loss) is not here: its
oracles live in ``tests/unit/test_trl_math.py``, checked against what TRL computes. The section of PPO.md (and,
where the spec names one, the source it summarises) is cited beside the lines that implement each detail.

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

import torch

from harness.logprobs import KLEstimator, as_bool_mask, k3_from_log_ratio, kl_estimate, zero_outside_mask

# ---------------------------------------------------------------------------------------------------------
# Masked reductions (PPO.md §1 "Masked reductions", §2.5, §2.7)
# ---------------------------------------------------------------------------------------------------------


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``values`` over positions where ``mask`` is set, over ``dim`` (all elements if ``None``)."""
    masked_values = zero_outside_mask(values, mask)
    return masked_values.sum() if dim is None else masked_values.sum(dim=dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of valid positions in ``mask`` (as a float tensor, so it can divide directly)."""
    valid = as_bool_mask(mask).to(torch.float32)
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
    return zero_outside_mask(whitened, mask)


def masked_min_max(values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum and maximum of ``values`` over valid positions.

    The reductions start from +inf / -inf, the identity elements of min / max, so results of several
    micro-batches combine exactly with ``torch.minimum`` / ``torch.maximum``; with an empty mask the result is
    that identity. No host synchronisation.
    """
    bool_mask = as_bool_mask(mask)
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
    bool_mask = as_bool_mask(mask)
    per_token_kl = zero_outside_mask(kl_estimate(logp_old, logp_ref, kl_estimator), bool_mask)
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
    bool_mask = as_bool_mask(mask)
    # PPO.md §2.6: V_t <- V_old[t]*m_t, r_t <- r_t*m_t (via where, so NaN/inf pads cannot survive).
    masked_values = zero_outside_mask(values, bool_mask)
    masked_rewards = zero_outside_mask(rewards, bool_mask)
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
    return zero_outside_mask(advantages, bool_mask), zero_outside_mask(returns, bool_mask)


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
    bool_mask = as_bool_mask(mask)
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
        approx_kl_k3 = masked_sum(k3_from_log_ratio(detached_log_ratio), bool_mask) / token_count
        approx_kl_k1 = masked_sum(-detached_log_ratio, bool_mask) / token_count
        masked_ratio = zero_outside_mask(ratio.detach(), bool_mask)
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
    bool_mask = as_bool_mask(mask)
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
