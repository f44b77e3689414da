"""Unit tests of docs/PPO.md §5.1 for harness.algorithms.ppo_math and harness.logprobs, the PPO trainer's math
(CPU, seconds).

U1-U12, U16 and U18-U20 are here. U4 (the missing-stop penalty) belongs to the reward function, U13-U15 (GRPO
and DPO) are checked against TRL in test_trl_math.py, U17 (the evaluator's exact KL) in test_metrics_kl.py.
Expected numbers are the spec's float64 references; fp32 checks use atol=1e-6 unless the spec states
another tolerance (PPO.md §5 preamble). Each test cites the U-number it implements.
"""

from __future__ import annotations

import math

import pytest
import torch

from harness import logprobs
from harness.algorithms import ppo_math

ATOL = 1e-6  # PPO.md §5: "Use atol=1e-6 in fp32 unless another tolerance is stated."
EOS_ID = 1
PAD_ID = 0


def assert_close(actual: torch.Tensor, expected, atol: float = ATOL) -> None:
    expected_tensor = torch.as_tensor(expected, dtype=actual.dtype)
    torch.testing.assert_close(actual, expected_tensor, atol=atol, rtol=0.0)


# ---------------------------------------------------------------------------------------------------------
# U1 — masked mean
# ---------------------------------------------------------------------------------------------------------


def test_u01_masked_mean_ignores_padding():
    # PPO.md U1: v=[1,2,3,100], m=[1,1,1,0] -> 2.0
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert_close(ppo_math.masked_mean(values, mask), 2.0)
    assert_close(ppo_math.masked_sum(values, mask), 6.0)


def test_u01_masked_mean_empty_row_is_zero_not_nan():
    # PPO.md U1: "A row with sum(m)=0 must return 0, not NaN."
    values = torch.tensor([[1.0, 2.0, 3.0, 100.0], [5.0, float("nan"), 7.0, float("inf")]])
    mask = torch.tensor([[True, True, True, False], [False, False, False, False]])
    row_means = ppo_math.masked_mean(values, mask, dim=1)
    assert_close(row_means, [2.0, 0.0])
    assert torch.isfinite(row_means).all()


# ---------------------------------------------------------------------------------------------------------
# U2 — masked whiten
# ---------------------------------------------------------------------------------------------------------


def test_u02_masked_whiten_unbiased_and_population():
    # PPO.md U2: mean 2, unbiased var 1 -> [-1,0,1,0]; population var 2/3 -> [-1.2247449, 0, 1.2247449, 0]
    values = torch.tensor([1.0, 2.0, 3.0, -7.0])
    mask = torch.tensor([1, 1, 1, 0])
    assert_close(ppo_math.masked_var(values, mask), 1.0)
    assert_close(ppo_math.masked_var(values, mask, unbiased=False), 0.666667, atol=1e-6)
    assert_close(ppo_math.masked_whiten(values, mask), [-1.0, 0.0, 1.0, 0.0])
    assert_close(ppo_math.masked_whiten(values, mask, unbiased=False), [-1.2247449, 0.0, 1.2247449, 0.0])


def test_u02_masked_whiten_is_invariant_to_pad_values():
    # PPO.md U2 invariance (SkyRL#1782): a pad of 1e6 (or inf) changes nothing.
    mask = torch.tensor([1, 1, 1, 0])
    reference = ppo_math.masked_whiten(torch.tensor([1.0, 2.0, 3.0, 0.0]), mask)
    for pad_value in (1e6, float("inf")):
        whitened = ppo_math.masked_whiten(torch.tensor([1.0, 2.0, 3.0, pad_value]), mask)
        torch.testing.assert_close(whitened, reference, atol=0.0, rtol=0.0)


def test_u02_masked_whiten_without_mean_shift_adds_mean_back():
    # PPO.md U2: shift_mean=False adds 2 back -> [1, 2, 3] (pad stays 0).
    values = torch.tensor([1.0, 2.0, 3.0, 1e6])
    mask = torch.tensor([1, 1, 1, 0])
    assert_close(ppo_math.masked_whiten(values, mask, shift_mean=False), [1.0, 2.0, 3.0, 0.0])


def test_u02_masked_whiten_single_valid_element_raises():
    # PPO.md U2: sum(m)=1 must raise or skip, never emit NaN (TRL masked_var L257; SB3#325; ROLL#475).
    with pytest.raises(ValueError):
        ppo_math.masked_whiten(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 1, 0]))
    with pytest.raises(ValueError):
        ppo_math.masked_var(torch.tensor([1.0, 2.0]), torch.tensor([0, 0]), unbiased=False)


# ---------------------------------------------------------------------------------------------------------
# U3 — truncation and mask
# ---------------------------------------------------------------------------------------------------------


def test_u03_truncates_after_eos():
    # PPO.md U3: [5,7,EOS,9,9] -> [5,7,EOS,PAD,PAD], m=[1,1,1,0,0], e=2, has_stop=True;
    #            [5,7,8,9,9]   -> unchanged, m all ones, e=4, has_stop=False.
    responses = torch.tensor([[5, 7, EOS_ID, 9, 9], [5, 7, 8, 9, 9]])
    truncated = ppo_math.truncate_after_stop(responses, stop_ids=[EOS_ID], pad_id=PAD_ID)
    assert truncated.response_ids.tolist() == [[5, 7, EOS_ID, PAD_ID, PAD_ID], [5, 7, 8, 9, 9]]
    assert truncated.mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert truncated.last_index.tolist() == [2, 4]
    assert truncated.has_stop.tolist() == [True, False]
    assert truncated.lengths.tolist() == [3, 5]


def test_u03_first_stop_wins_and_custom_stop_id_counts():
    # PPO.md U3: custom stop id 8 with EOS != 8: [5,7,8,9,9] -> [5,7,8,PAD,PAD], has_stop=True (trl#3750).
    # The second row also checks that the *first* of several stop tokens ends the response.
    responses = torch.tensor([[5, 7, 8, 9, 9], [5, EOS_ID, 8, EOS_ID, 9]])
    truncated = ppo_math.truncate_after_stop(responses, stop_ids=[EOS_ID, 8], pad_id=PAD_ID)
    assert truncated.response_ids.tolist() == [[5, 7, 8, PAD_ID, PAD_ID], [5, EOS_ID, PAD_ID, PAD_ID, PAD_ID]]
    assert truncated.has_stop.tolist() == [True, True]
    assert truncated.last_index.tolist() == [2, 1]


def test_u03_pad_equal_to_eos_raises():
    # PPO.md U3: building the harness with pad_id == eos_id must raise (§6.3).
    with pytest.raises(ValueError):
        ppo_math.validate_special_token_ids(pad_id=EOS_ID, eos_id=EOS_ID)
    with pytest.raises(ValueError):
        ppo_math.validate_special_token_ids(pad_id=8, eos_id=EOS_ID, extra_stop_ids=[8])
    ppo_math.validate_special_token_ids(pad_id=PAD_ID, eos_id=EOS_ID, extra_stop_ids=[8])
    with pytest.raises(ValueError):
        ppo_math.truncate_after_stop(torch.tensor([[5, 7, 8]]), stop_ids=[EOS_ID], pad_id=EOS_ID)


# ---------------------------------------------------------------------------------------------------------
# U5 — per-token rewards
# ---------------------------------------------------------------------------------------------------------

U5_LOGP_OLD = torch.tensor([[-1.0, -2.0]])
U5_LOGP_REF = torch.tensor([[-1.5, -1.0]])
U5_MASK = torch.tensor([[1, 1]])
U5_SCORE = torch.tensor([2.0])


def test_u05_per_token_rewards_k1():
    # PPO.md U5 (k1): KL [0.5, -1.0], rewards [-0.05, 2.1]
    rewards, per_token_kl = ppo_math.per_token_rewards(U5_SCORE, U5_LOGP_OLD, U5_LOGP_REF, U5_MASK, kl_coef=0.1)
    assert_close(per_token_kl, [[0.5, -1.0]])
    assert_close(rewards, [[-0.05, 2.1]])


def test_u05_per_token_rewards_k3():
    # PPO.md U5 (k3): KL [0.1065307, 0.7182818], rewards [-0.0106531, 1.9281718]
    rewards, per_token_kl = ppo_math.per_token_rewards(
        U5_SCORE, U5_LOGP_OLD, U5_LOGP_REF, U5_MASK, kl_coef=0.1, kl_estimator="k3"
    )
    assert_close(per_token_kl, [[0.1065307, 0.7182818]])
    assert_close(rewards, [[-0.0106531, 1.9281718]])


def test_u05_k2_is_refused_in_the_reward():
    # PPO.md §2.4 "Never put k2 in the reward": its expectation is biased (U9).
    with pytest.raises(ValueError):
        ppo_math.per_token_rewards(U5_SCORE, U5_LOGP_OLD, U5_LOGP_REF, U5_MASK, kl_coef=0.1, kl_estimator="k2")


# ---------------------------------------------------------------------------------------------------------
# U6 — reward placement
# ---------------------------------------------------------------------------------------------------------


def test_u06_score_lands_on_last_valid_token():
    # PPO.md U6: m=[1,1,1,0,0], score 2, beta=0, V=0, gamma=lam=1 -> r=[0,0,2,0,0], A=[2,2,2,0,0]
    mask = torch.tensor([[1, 1, 1, 0, 0]])
    logp = torch.zeros(1, 5)
    rewards, _ = ppo_math.per_token_rewards(torch.tensor([2.0]), logp, logp, mask, kl_coef=0.0)
    assert_close(rewards, [[0.0, 0.0, 2.0, 0.0, 0.0]])
    advantages, _ = ppo_math.gae_advantages_and_returns(rewards, torch.zeros(1, 5), mask, gamma=1.0, lam=1.0)
    assert_close(advantages, [[2.0, 2.0, 2.0, 0.0, 0.0]])


def test_u06_kl_penalty_and_score_together():
    # PPO.md U6: k1=[0.5,-1,0.2], beta=0.1 -> r=[-0.05, 0.1, 1.98], A=[2.03, 2.08, 1.98]
    mask = torch.tensor([[1, 1, 1]])
    logp_old = torch.tensor([[0.5, -1.0, 0.2]])  # logp_ref = 0, so k1 = logp_old
    rewards, per_token_kl = ppo_math.per_token_rewards(
        torch.tensor([2.0]), logp_old, torch.zeros(1, 3), mask, kl_coef=0.1
    )
    assert_close(per_token_kl, [[0.5, -1.0, 0.2]])
    assert_close(rewards, [[-0.05, 0.1, 1.98]])
    advantages, _ = ppo_math.gae_advantages_and_returns(rewards, torch.zeros(1, 3), mask, gamma=1.0, lam=1.0)
    assert_close(advantages, [[2.03, 2.08, 1.98]])


# ---------------------------------------------------------------------------------------------------------
# U7 — GAE
# ---------------------------------------------------------------------------------------------------------


def gae_closed_form(rewards, values, mask, gamma, lam):
    """Loop-free GAE, the oracle of the trainer's loop: ``A_t = sum_{k >= t} (gamma lam)^(k-t) delta_k`` as one
    ``[L, L]`` matrix product, values and rewards zeroed outside the mask (PPO.md §2.6 "A faster scan must
    match the loop"; lm-human-preference-details ``tests/test_gae.py``)."""
    mask = mask.bool()
    values = torch.where(mask, values, torch.zeros_like(values))
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    next_values = torch.cat([values[:, 1:], torch.zeros_like(values[:, :1])], dim=1)
    deltas = rewards + gamma * next_values - values
    positions = torch.arange(rewards.shape[1])
    steps_ahead = positions.unsqueeze(0) - positions.unsqueeze(1)  # [t, k] -> k - t
    decay = torch.tensor(gamma * lam, dtype=deltas.dtype)
    # (gamma lam)^0 = 1 on the diagonal even when gamma lam = 0.
    discount = torch.where(steps_ahead >= 0, decay ** steps_ahead.clamp(min=0).to(deltas.dtype), 0.0)
    advantages = deltas @ discount.T.to(deltas.dtype)
    return torch.where(mask, advantages, torch.zeros_like(advantages))


@pytest.mark.parametrize(
    ("gamma", "lam", "expected_advantages", "expected_returns"),
    [
        (1.0, 0.95, [0.46575, 0.385, 0.3], [0.96575, 0.985, 1.0]),
        (1.0, 1.0, [0.5, 0.4, 0.3], [1.0, 1.0, 1.0]),
        (1.0, 0.0, [0.1, 0.1, 0.3], None),
        (0.9, 0.95, [0.2849575, 0.2865, 0.3], [0.7849575, 0.8865, 1.0]),
    ],
)
def test_u07_gae_table(gamma, lam, expected_advantages, expected_returns):
    # PPO.md U7 table: r=[0,0,1], V=[0.5,0.6,0.7], terminal after t=2.
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    advantages, returns = ppo_math.gae_advantages_and_returns(rewards, values, mask, gamma=gamma, lam=lam)
    assert_close(advantages, [expected_advantages])
    if expected_returns is not None:
        assert_close(returns, [expected_returns])
    assert_close(gae_closed_form(rewards, values, mask, gamma, lam), [expected_advantages])


def test_u07_gae_ignores_garbage_values_in_padding():
    # PPO.md U7 padding: r=[0,1,0,0], V=[0.5,0.7,9,9], m=[1,1,0,0] -> A=[0.485, 0.3, 0, 0]
    # (gamma=1, lam=0.95: the harness defaults, which reproduce the spec's 0.485 = 0.2 + 0.95*0.3).
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.7, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 0, 0]])
    advantages, returns = ppo_math.gae_advantages_and_returns(rewards, values, mask, gamma=1.0, lam=0.95)
    assert_close(advantages, [[0.485, 0.3, 0.0, 0.0]])
    assert_close(returns, [[0.985, 1.0, 0.0, 0.0]])


def test_u07_vectorised_matches_loop():
    # PPO.md U7: random r, V of shape [20, 40] -> the trainer's loop equals the loop-free oracle to 1e-10 (float64).
    generator = torch.Generator().manual_seed(0)
    rewards = torch.randn(20, 40, generator=generator, dtype=torch.float64)
    values = torch.randn(20, 40, generator=generator, dtype=torch.float64)
    lengths = torch.randint(1, 41, (20,), generator=generator)
    mask = torch.arange(40).unsqueeze(0) < lengths.unsqueeze(1)
    loop_advantages, _ = ppo_math.gae_advantages_and_returns(rewards, values, mask, gamma=0.99, lam=0.95)
    closed_form_advantages = gae_closed_form(rewards, values, mask, gamma=0.99, lam=0.95)
    torch.testing.assert_close(loop_advantages, closed_form_advantages, atol=1e-10, rtol=0.0)


def test_u07_whitened_advantages_leave_returns_alone():
    # PPO.md §2.7: whitening over valid tokens only, pads zero; returns G are not whitened (the trainer's
    # single-process whitening is masked_whiten).
    rewards = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 2.0]])
    values = torch.tensor([[0.5, 0.7, 9.0, 9.0], [0.1, 0.2, 0.3, 0.4]])
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    advantages, returns = ppo_math.gae_advantages_and_returns(rewards, values, mask)
    whitened = ppo_math.masked_whiten(advantages, mask)
    assert_close(ppo_math.masked_mean(whitened, mask), 0.0)
    assert_close(ppo_math.masked_var(whitened, mask), 1.0, atol=1e-5)
    assert whitened[0, 2:].eq(0).all()
    assert_close(returns[0], [0.985, 1.0, 0.0, 0.0])


# ---------------------------------------------------------------------------------------------------------
# U8 — KL estimators on a discrete pair (exact enumeration)
# ---------------------------------------------------------------------------------------------------------


def test_u08_kl_estimators_by_enumeration():
    # PPO.md U8: q=[0.5,0.5] (sampling), p=[0.25,0.75]: E[k1]=E[k3]=0.1438410,
    # and KL(p||q)=0.1308120 guards against swapped arguments.
    q = torch.tensor([0.5, 0.5], dtype=torch.float64)
    p = torch.tensor([0.25, 0.75], dtype=torch.float64)
    expectation = {name: (q * logprobs.kl_estimate(q.log(), p.log(), name)).sum() for name in ("k1", "k3")}
    assert_close(expectation["k1"], 0.1438410)
    assert_close(expectation["k3"], 0.1438410)
    assert_close(expectation["k1"], 0.5 * math.log(4.0 / 3.0))
    swapped = (p * logprobs.kl_k1(p.log(), q.log())).sum()
    assert_close(swapped, 0.1308120)
    assert abs(swapped.item() - expectation["k1"].item()) > 1e-2


# ---------------------------------------------------------------------------------------------------------
# U9 — KL estimators on Gaussians (Monte Carlo)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mu", "true_kl", "k3_std_over_kl"), [(0.1, 0.005, 1.42), (1.0, 0.5, 1.70)])
def test_u09_kl_estimators_on_gaussians(mu, true_kl, k3_std_over_kl):
    # PPO.md U9: q=N(0,1) sampling, p=N(mu,1), n=2e6, fixed seed; means within 3% relative,
    # std/KL within 5% of Schulman's table; std(k1) = mu. (The harness has no k2: biased, PPO.md §2.4.)
    generator = torch.Generator().manual_seed(1234)
    samples = torch.randn(2_000_000, generator=generator, dtype=torch.float64)
    log_q = -0.5 * samples**2  # the shared -0.5 log(2 pi) cancels in every estimator
    log_p = -0.5 * (samples - mu) ** 2
    k1 = logprobs.kl_k1(log_q, log_p)
    k3 = logprobs.kl_k3(log_q, log_p)
    assert k3.min().item() >= 0.0
    assert k3.mean().item() == pytest.approx(true_kl, rel=0.03)
    # k1 has std mu, so its Monte Carlo standard error relative to KL is 20/sqrt(n) = 1.4% at mu=0.1: the
    # spec's 3% would be only ~2 standard errors there. Use 5 standard errors instead (7% at mu=0.1,
    # 0.7% at mu=1), which still rejects a wrong sign or a swapped pair.
    k1_tolerance = max(0.03 * true_kl, 5 * mu / math.sqrt(samples.numel()))
    assert k1.mean().item() == pytest.approx(true_kl, abs=k1_tolerance)
    assert k1.std().item() == pytest.approx(mu, rel=0.01)
    assert (k3.std() / true_kl).item() == pytest.approx(k3_std_over_kl, rel=0.05)


# ---------------------------------------------------------------------------------------------------------
# U10 — gradients of KL estimators used as losses
# ---------------------------------------------------------------------------------------------------------


def _expected_estimator_gradient(estimator: str, multiply_by_ratio: bool = False) -> torch.Tensor:
    """sum_a pibar(a) grad_theta k(a; theta) at theta=[0,0], p_ref=[0.25,0.75] (PPO.md U10)."""
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    log_policy = torch.log_softmax(theta, dim=0)
    sampling_probabilities = log_policy.exp().detach()  # pibar: the detached sampling distribution ("old")
    log_reference = torch.tensor([0.25, 0.75], dtype=torch.float64).log()
    per_action_estimate = logprobs.kl_estimate(log_policy, log_reference, estimator)
    if multiply_by_ratio:
        ratio = torch.exp(log_policy - sampling_probabilities.log())  # rho = pi / pibar, carries the gradient
        per_action_estimate = ratio * per_action_estimate
    (sampling_probabilities * per_action_estimate).sum().backward()
    return theta.grad


def test_u10_kl_estimator_gradients():
    # PPO.md U10: k1 -> [0,0]; k3 -> forward-KL gradient [+0.25, -0.25];
    # k3*rho -> reverse-KL gradient [+0.2746531, -0.2746531].
    assert_close(_expected_estimator_gradient("k1"), [0.0, 0.0])
    assert_close(_expected_estimator_gradient("k3"), [0.25, -0.25])
    assert_close(_expected_estimator_gradient("k3", multiply_by_ratio=True), [0.2746531, -0.2746531])


def test_u10_true_kl_gradients():
    # PPO.md U10: grad KL(pi||p) = pi (log(pi/p) - KL) = [+0.2746531, -0.2746531]; grad KL(p||pi) = pi - p.
    theta = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([0.25, 0.75], dtype=torch.float64)
    policy = torch.softmax(theta, dim=0)
    (reverse_gradient,) = torch.autograd.grad((policy * (policy / reference).log()).sum(), theta)
    policy = torch.softmax(theta, dim=0)
    (forward_gradient,) = torch.autograd.grad((reference * (reference / policy).log()).sum(), theta)
    assert_close(reverse_gradient, [0.2746531, -0.2746531])
    assert_close(forward_gradient, [0.25, -0.25])


# ---------------------------------------------------------------------------------------------------------
# U11 — PPO clipped surrogate
# ---------------------------------------------------------------------------------------------------------


def test_u11_clipped_policy_loss_values_and_gradient():
    # PPO.md U11: rho=[1.5,0.5,1.1,0.7] (fed as log rho), A=[1,1,-1,-1], eps=0.2:
    # per token [-1.2,-0.5,1.1,0.8], L_pg=0.05, clipfrac 0.5, grad wrt logp_new [0,-0.125,0.275,0],
    # approx_kl k3=0.0872617, k1=0.1372617.
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]], dtype=torch.float64)
    logp_new = ratio.log().requires_grad_(True)
    logp_old = torch.zeros_like(ratio)
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]], dtype=torch.float64)
    mask = torch.ones(1, 4, dtype=torch.bool)
    output = ppo_math.clipped_policy_loss(logp_new, logp_old, advantages, mask, token_count=4, clip_epsilon=0.2)
    assert_close(output.loss, 0.05)
    assert_close(output.clip_fraction, 0.5)
    output.loss.backward()
    assert_close(logp_new.grad, [[0.0, -0.125, 0.275, 0.0]])
    assert_close(output.approx_kl_k3, 0.0872617)
    assert_close(output.approx_kl_k1, 0.1372617)


def test_u11_clipfrac_is_not_cleanrl_definition():
    # PPO.md U11: CleanRL's |rho-1|>eps gives 0.75 here; the harness definition must give 0.5.
    ratio = torch.tensor([[1.5, 0.5, 1.1, 0.7]])
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    output = ppo_math.clipped_policy_loss(ratio.log(), torch.zeros(1, 4), advantages, mask, token_count=4)
    cleanrl_clipfrac = ((ratio - 1).abs() > 0.2).float().mean()
    assert_close(cleanrl_clipfrac, 0.75)
    assert_close(output.clip_fraction, 0.5)


def test_u11_ratio_statistics_and_padding():
    # PPO.md §2.9/§2.13: the trainer's ratio statistics (masked sums of rho and rho^2, masked_min_max) see
    # valid tokens only; a padded huge log-ratio is ignored.
    logp_new = torch.tensor([[math.log(1.5), math.log(0.5), 50.0]])
    mask = torch.tensor([[1, 1, 0]])
    output = ppo_math.clipped_policy_loss(logp_new, torch.zeros(1, 3), torch.ones(1, 3), mask, token_count=2)
    assert_close(output.ratio, [[1.5, 0.5, 0.0]])
    count = ppo_math.masked_count(mask)
    mean = ppo_math.masked_sum(output.ratio, mask) / count
    assert_close(mean, 1.0)
    assert_close(ppo_math.masked_sum(output.ratio**2, mask) / count - mean**2, 0.25)
    minimum, maximum = ppo_math.masked_min_max(output.ratio, mask)
    assert_close(minimum, 0.5)
    assert_close(maximum, 1.5)
    assert torch.isfinite(output.loss)


def test_u11_global_token_count_makes_micro_batches_exact():
    # PPO.md §2.8 (pure-math core of E7): summing micro-batch losses divided by the global token count
    # equals the full-minibatch token-mean, with uneven lengths (6 vs 4 tokens); a mean of per-micro-batch
    # means does not.
    generator = torch.Generator().manual_seed(3)
    logp_new = torch.randn(4, 5, generator=generator, dtype=torch.float64) * 0.3
    logp_old = torch.randn(4, 5, generator=generator, dtype=torch.float64) * 0.3
    advantages = torch.randn(4, 5, generator=generator, dtype=torch.float64)
    mask = torch.arange(5).unsqueeze(0) < torch.tensor([[1], [5], [2], [2]])
    token_count = mask.sum().item()
    full = ppo_math.clipped_policy_loss(logp_new, logp_old, advantages, mask, token_count)
    halves = [
        ppo_math.clipped_policy_loss(logp_new[rows], logp_old[rows], advantages[rows], mask[rows], token_count)
        for rows in (slice(0, 2), slice(2, 4))
    ]
    torch.testing.assert_close(halves[0].loss + halves[1].loss, full.loss, atol=1e-12, rtol=0.0)
    torch.testing.assert_close(
        halves[0].clip_fraction + halves[1].clip_fraction, full.clip_fraction, atol=1e-12, rtol=0.0
    )
    per_micro_batch_means = [
        ppo_math.clipped_policy_loss(
            logp_new[rows], logp_old[rows], advantages[rows], mask[rows], mask[rows].sum().item()
        ).loss
        for rows in (slice(0, 2), slice(2, 4))
    ]
    assert abs((sum(per_micro_batch_means) / 2 - full.loss).item()) > 1e-3


# ---------------------------------------------------------------------------------------------------------
# U12 — clipped value loss
# ---------------------------------------------------------------------------------------------------------


def test_u12_clipped_value_loss():
    # PPO.md U12: V_old=[0,0], V_new=[0.5,-0.1], G=[1,1], eps_v=0.2 -> L_v=0.4625, clipfrac 0.5,
    # grad wrt V_new = [0, -0.55].
    values_new = torch.tensor([[0.5, -0.1]], dtype=torch.float64, requires_grad=True)
    values_old = torch.zeros(1, 2, dtype=torch.float64)
    returns = torch.ones(1, 2, dtype=torch.float64)
    mask = torch.ones(1, 2, dtype=torch.bool)
    output = ppo_math.clipped_value_loss(values_new, values_old, returns, mask, token_count=2, value_clip_range=0.2)
    assert_close(output.loss, 0.4625)
    assert_close(output.clip_fraction, 0.5)
    output.loss.backward()
    assert_close(values_new.grad, [[0.0, -0.55]])


# ---------------------------------------------------------------------------------------------------------
# U16 — entropy and temperature
# ---------------------------------------------------------------------------------------------------------


def test_u16_entropy_and_temperature():
    # PPO.md U16: [0,0,0,0] -> ln 4 = 1.3862944; [0, ln 3] -> 0.5623351, at T=0.5 -> 0.3250830.
    assert_close(logprobs.entropy_from_logits(torch.zeros(1, 4)), [1.3862944])
    two_way_logits = torch.tensor([[0.0, math.log(3.0)]])
    assert_close(logprobs.entropy_from_logits(two_way_logits), [0.5623351])
    assert_close(logprobs.entropy_from_logits(two_way_logits, temperature=0.5), [0.3250830])


def test_u16_logprob_uses_temperature():
    # PPO.md U16: log p(token 1) = ln 0.75 = -0.2876821 at T=1 and ln 0.9 = -0.1053605 at T=0.5.
    # A path that forgets /T would give -0.2876821 at T=0.5 and fail.
    logits = torch.tensor([[0.0, math.log(3.0)]])
    token = torch.tensor([1])
    assert_close(logprobs.token_logprobs_from_logits(logits, token, temperature=1.0), [-0.2876821])
    assert_close(logprobs.token_logprobs_from_logits(logits, token, temperature=0.5), [-0.1053605])
    with pytest.raises(ValueError):
        logprobs.token_logprobs_from_logits(logits, token, temperature=0.0)


def test_u16_chunked_logprobs_and_entropy_match_full_softmax():
    # PPO.md §2.15: the chunked gather must equal the full log-softmax gather, gradients included.
    generator = torch.Generator().manual_seed(5)
    logits = torch.randn(3, 7, 11, generator=generator, dtype=torch.float64).requires_grad_(True)
    tokens = torch.randint(0, 11, (3, 7), generator=generator)
    chunked = logprobs.token_logprobs_from_logits(logits, tokens, temperature=0.7, rows_per_chunk=4)
    full = torch.log_softmax(logits / 0.7, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert chunked.dtype == torch.float64  # fp64 stays fp64; only lower precisions are upcast
    torch.testing.assert_close(chunked, full, atol=1e-12, rtol=0.0)
    (chunked_gradient,) = torch.autograd.grad(chunked.sum(), logits)
    (full_gradient,) = torch.autograd.grad(full.sum(), logits)
    torch.testing.assert_close(chunked_gradient, full_gradient, atol=1e-12, rtol=0.0)
    probabilities = torch.softmax(logits.detach() / 0.7, dim=-1)
    full_entropy = -(probabilities * probabilities.log()).sum(-1)
    chunked_entropy = logprobs.entropy_from_logits(logits.detach(), temperature=0.7, rows_per_chunk=4)
    torch.testing.assert_close(chunked_entropy, full_entropy, atol=1e-12, rtol=0.0)
    # bf16 logits are upcast to fp32 before the reductions (PPO.md §2.1 "Dtype").
    bf16_logprobs = logprobs.token_logprobs_from_logits(logits.detach().bfloat16(), tokens, temperature=0.7)
    assert bf16_logprobs.dtype == torch.float32


def test_u16_masked_logprobs_accept_out_of_vocabulary_pad_ids():
    # PPO.md §1/§2.1: a [PAD] id beyond the vocabulary must not be gathered; masked outputs are exact zeros.
    logits = torch.zeros(1, 3, 4)
    tokens = torch.tensor([[2, 1, 99]])
    token_logprobs = logprobs.token_logprobs_from_logits(logits, tokens, mask=torch.tensor([[1, 1, 0]]))
    assert_close(token_logprobs, [[math.log(0.25), math.log(0.25), 0.0]])


# ---------------------------------------------------------------------------------------------------------
# U18 — adaptive KL controller
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("current_kl", "expected_beta"), [(12.0, 0.100512), (3.0, 0.099488), (6.6, 0.100256)])
def test_u18_adaptive_kl_controller(current_kl, expected_beta):
    # PPO.md U18: beta=0.1, target 6, horizon 10000, n=256.
    controller = ppo_math.AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000.0)
    assert controller.update(current_kl, n_steps=256) == pytest.approx(expected_beta, abs=1e-9)
    assert controller.value == pytest.approx(expected_beta, abs=1e-9)


def test_u18_fixed_kl_controller_never_moves():
    # PPO.md §2.10: the harness default keeps beta constant.
    controller = ppo_math.FixedKLController(0.05)
    assert controller.update(100.0, n_steps=256) == 0.05


# ---------------------------------------------------------------------------------------------------------
# U19 — alignment and padding invariance
# ---------------------------------------------------------------------------------------------------------
# The spec runs a tiny random transformer. This pure-math version uses a tiny causal model with *absolute*
# position embeddings written in torch (prefix mean of token + position embeddings, then a vocabulary head
# and a value head), which is sensitive to exactly the two bugs U19 targets: missing
# position_ids under left padding and off-by-one slicing. The model-level version belongs to the
# integration tests.


class TinyAbsolutePositionModel(torch.nn.Module):
    def __init__(self, vocab_size: int = 16, hidden_size: int = 8, max_positions: int = 32) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(11)
        self.token_embedding = torch.nn.Parameter(torch.randn(vocab_size, hidden_size, generator=generator))
        self.position_embedding = torch.nn.Parameter(torch.randn(max_positions, hidden_size, generator=generator))
        self.lm_head = torch.nn.Parameter(torch.randn(hidden_size, vocab_size, generator=generator))
        self.value_head = torch.nn.Parameter(torch.randn(hidden_size, generator=generator))

    def forward(self, input_ids, attention_mask, position_ids):
        embeddings = self.token_embedding[input_ids] + self.position_embedding[position_ids]
        sequence_length = input_ids.shape[1]
        causal = torch.ones(sequence_length, sequence_length, dtype=torch.bool).tril()
        weights = (causal.unsqueeze(0) & attention_mask.bool().unsqueeze(1)).float()
        hidden = torch.tanh(weights @ embeddings / weights.sum(-1, keepdim=True).clamp(min=1.0))
        return hidden @ self.lm_head, hidden @ self.value_head


def _left_pad(prompt: list[int], width: int) -> list[int]:
    return [PAD_ID] * (width - len(prompt)) + prompt


def _response_slice(per_position, prompt_length: int, response_length: int):
    # PPO.md §1 "Alignment": the output at absolute index P-1+t predicts y_t (the trainer slices the same way).
    return per_position[:, prompt_length - 1 : prompt_length - 1 + response_length]


def _score_batch(model, prompts, responses, temperature=0.7, use_position_ids=True):
    """Scores rows like the rollout does: §1 inputs, response slice, log-probs at T, values."""
    truncated = ppo_math.truncate_after_stop(torch.tensor(responses), stop_ids=[EOS_ID], pad_id=PAD_ID)
    prompt_ids = torch.tensor(prompts)
    inputs = logprobs.build_forward_inputs(prompt_ids, truncated.response_ids, pad_id=PAD_ID)
    position_ids = inputs.position_ids
    if not use_position_ids:
        position_ids = torch.arange(inputs.input_ids.shape[1]).expand_as(inputs.input_ids)
    logits, values = model(inputs.input_ids, inputs.attention_mask, position_ids)
    prompt_length, response_length = prompt_ids.shape[1], truncated.response_ids.shape[1]
    response_logits = _response_slice(logits, prompt_length, response_length)
    token_logprobs = logprobs.token_logprobs_from_logits(
        response_logits, truncated.response_ids, temperature, mask=truncated.mask
    )
    response_values = _response_slice(values, prompt_length, response_length) * truncated.mask
    return token_logprobs, response_values


def test_u19_padding_and_batch_mates_do_not_change_scores():
    # PPO.md U19: one (prompt, response) pair with left pads 0, 3, 7 and different batch-mates:
    # logp and V identical to 1e-5.
    model = TinyAbsolutePositionModel()
    prompt, response = [3, 4, 5], [6, 7, EOS_ID, 9]
    results = []
    for extra_left_pad, batch_mate_prompt, batch_mate_response in (
        (0, [8], [9, 9, 9, 9]),
        (3, [10, 11, 12, 13, 14, 15], [EOS_ID, 3, 3, 3]),
        (7, [3], [5, 6, 7, 8]),
    ):
        width = len(prompt) + extra_left_pad
        prompts = [_left_pad(prompt, width), _left_pad(batch_mate_prompt, max(width, len(batch_mate_prompt)))]
        width = max(len(row) for row in prompts)
        prompts = [_left_pad([t for t in row if t != PAD_ID], width) for row in prompts]
        assert prompts[0].count(PAD_ID) >= extra_left_pad
        results.append(_score_batch(model, prompts, [response, batch_mate_response]))
    for other in results[1:]:
        for reference_tensor, other_tensor in zip(results[0], other):
            torch.testing.assert_close(other_tensor[0], reference_tensor[0], atol=1e-5, rtol=0.0)


def test_u19_response_slice_is_aligned_with_prefixes():
    # PPO.md §1 "Alignment": the log-prob of y_t must come from the output after the prefix (q, y_<t).
    # Ground truth: run the model on each unpadded prefix and read its last position.
    model = TinyAbsolutePositionModel()
    prompt, response = [3, 4, 5], [6, 7, EOS_ID]
    token_logprobs, values = _score_batch(model, [_left_pad(prompt, 6)], [response], temperature=0.7)
    for t, token in enumerate(response):
        prefix = torch.tensor([prompt + response[:t]])
        logits, prefix_values = model(prefix, torch.ones_like(prefix), torch.arange(prefix.shape[1]).unsqueeze(0))
        expected_logprob = torch.log_softmax(logits[0, -1] / 0.7, dim=-1)[token]
        torch.testing.assert_close(token_logprobs[0, t], expected_logprob, atol=1e-5, rtol=0.0)
        torch.testing.assert_close(values[0, t], prefix_values[0, -1], atol=1e-5, rtol=0.0)


def test_u19_missing_position_ids_is_detected():
    # PPO.md U19: omitting position_ids under left padding must change the scores (trl#6800/#6819).
    model = TinyAbsolutePositionModel()
    prompts = [_left_pad([3, 4, 5], 10)]
    responses = [[6, 7, EOS_ID, 9]]
    with_positions, _ = _score_batch(model, prompts, responses)
    without_positions, _ = _score_batch(model, prompts, responses, use_position_ids=False)
    assert (with_positions - without_positions).abs().max().item() > 1e-3


# ---------------------------------------------------------------------------------------------------------
# U20 — old log-probs from generation scores vs teacher-forced recompute
# ---------------------------------------------------------------------------------------------------------
# The spec compares HF generate(output_scores=True) with a recompute. Pure-math version: the "generation
# scores" are produced from fixed logits by the logits processors HF applies (temperature, top-k, repetition
# penalty, written here after their documented semantics), tokens are sampled from them, and their
# log-softmax is compared with token_logprobs_from_logits(logits, tokens, T). The model-level version
# belongs to the integration tests.


def _generation_scores(logits, previous_tokens, temperature, top_k=0, repetition_penalty=1.0):
    scores = logits.clone()
    if repetition_penalty != 1.0:
        # HF RepetitionPenaltyLogitsProcessor: seen tokens have positive logits divided, negative multiplied.
        seen = torch.zeros_like(scores, dtype=torch.bool)
        for row, tokens in enumerate(previous_tokens):
            seen[row, tokens] = True
        penalised = torch.where(scores > 0, scores / repetition_penalty, scores * repetition_penalty)
        scores = torch.where(seen, penalised, scores)
    scores = scores / temperature
    if top_k > 0:
        kth_largest = scores.topk(top_k, dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth_largest, float("-inf"))
    return scores


def _max_score_recompute_gap(top_k=0, repetition_penalty=1.0, temperature=0.7):
    generator = torch.Generator().manual_seed(21)
    logits = torch.randn(64, 100, generator=generator) * 3.0
    previous_tokens = [torch.randint(0, 100, (10,), generator=generator) for _ in range(64)]
    scores = _generation_scores(logits, previous_tokens, temperature, top_k, repetition_penalty)
    sampled = torch.multinomial(torch.softmax(scores, dim=-1), 1, generator=generator).squeeze(-1)
    from_scores = torch.log_softmax(scores, dim=-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
    recomputed = logprobs.token_logprobs_from_logits(logits, sampled, temperature)
    return (from_scores - recomputed).abs().max().item()


def test_u20_pure_sampling_scores_match_recompute():
    # PPO.md U20: with the §2.2 generation config (temperature only) the two agree within 1e-4.
    assert _max_score_recompute_gap() < 1e-4


@pytest.mark.parametrize(("top_k", "repetition_penalty"), [(50, 1.0), (0, 1.2)])
def test_u20_truncated_or_penalised_sampling_is_detected(top_k, repetition_penalty):
    # PPO.md U20: top_k=50 or repetition_penalty=1.2 must show a mismatch (trl#2358).
    assert _max_score_recompute_gap(top_k=top_k, repetition_penalty=repetition_penalty) > 1e-4
