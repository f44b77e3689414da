"""Tests for harness.metrics.kl: hand-computed values (docs/PPO.md §5.1 U8, U17), masks,
estimator properties, and the model-level evaluator against an unbatched recomputation."""

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from harness.metrics.kl import response_kl, sequence_kl_estimates

LN2 = math.log(2.0)
LN3 = math.log(3.0)

# p = softmax([ln 2, 0, 0]) = [2, 1, 1] / 4 = [0.5, 0.25, 0.25]
POLICY_LOGITS_3 = torch.tensor([LN2, 0.0, 0.0])
# q = softmax([0, 0, ln 2]) = [1, 1, 2] / 4 = [0.25, 0.25, 0.5]
REFERENCE_LOGITS_3 = torch.tensor([0.0, 0.0, LN2])


# ---------------------------------------------------------------------------------------------
# The exact per-token KL, as the evaluator computes it
# ---------------------------------------------------------------------------------------------


def exact_token_kl(policy_logits, reference_logits, temperature=1.0):
    """The evaluator's exact KL(p || q) at each position of [..., V] logits: `sequence_kl_estimates`'s "kl"
    of one-token responses (the sampled id does not enter the exact KL)."""
    vocabulary = policy_logits.shape[-1]
    policy = policy_logits.reshape(-1, 1, vocabulary)
    reference = reference_logits.reshape(-1, 1, vocabulary)
    ids = torch.zeros(policy.shape[0], 1, dtype=torch.long)
    kl = sequence_kl_estimates(policy, reference, ids, torch.ones_like(ids), temperature)["kl"]
    return kl.reshape(policy_logits.shape[:-1])


def test_exact_kl_three_token_pair_matches_hand_value():
    # U17: KL = 0.5·ln(0.5/0.25) + 0.25·ln(0.25/0.25) + 0.25·ln(0.25/0.5)
    #         = 0.5·ln2 + 0 − 0.25·ln2 = 0.25·ln2 = 0.1732868
    kl = exact_token_kl(POLICY_LOGITS_3, REFERENCE_LOGITS_3)
    assert kl.item() == pytest.approx(0.1732868, abs=1e-6)


def test_exact_kl_two_token_pair_and_argument_order():
    # U8 with the policy as the sampling distribution: p = softmax([0, 0]) = [0.5, 0.5],
    # q = softmax([0, ln 3]) = [1, 3] / 4 = [0.25, 0.75].
    # KL(p‖q) = 0.5·ln(0.5/0.25) + 0.5·ln(0.5/0.75) = 0.5·ln(4/3) = 0.1438410
    # KL(q‖p) = 0.25·ln(0.25/0.5) + 0.75·ln(0.75/0.5) = −0.1732868 + 0.3040988 = 0.1308120
    policy_logits = torch.tensor([0.0, 0.0])
    reference_logits = torch.tensor([0.0, LN3])
    assert exact_token_kl(policy_logits, reference_logits).item() == pytest.approx(0.1438410, abs=1e-6)
    # Swapped arguments give the other direction: guards against computing KL(ref‖policy).
    assert exact_token_kl(reference_logits, policy_logits).item() == pytest.approx(0.1308120, abs=1e-6)


def test_exact_kl_applies_temperature_to_both_models():
    # U17 at T = 0.5: logits double, so p ∝ [4, 1, 1] = [2/3, 1/6, 1/6], q ∝ [1, 1, 4] = [1/6, 1/6, 2/3].
    # KL = (2/3)·ln((2/3)/(1/6)) + (1/6)·0 + (1/6)·ln((1/6)/(2/3)) = (2/3)·ln4 − (1/6)·ln4
    #    = 0.5·ln4 = ln2 = 0.6931472
    kl_tempered = exact_token_kl(POLICY_LOGITS_3, REFERENCE_LOGITS_3, temperature=0.5)
    assert kl_tempered.item() == pytest.approx(0.6931472, abs=1e-6)


def test_exact_kl_rejects_non_positive_temperature():
    with pytest.raises(ValueError, match="temperature"):
        exact_token_kl(POLICY_LOGITS_3, REFERENCE_LOGITS_3, temperature=0.0)


def test_exact_kl_keeps_leading_shape_and_upcasts_half_precision():
    policy = torch.stack([POLICY_LOGITS_3, REFERENCE_LOGITS_3]).reshape(2, 1, 3)
    reference = torch.stack([REFERENCE_LOGITS_3, REFERENCE_LOGITS_3]).reshape(2, 1, 3)
    kl = exact_token_kl(policy.to(torch.bfloat16), reference.to(torch.bfloat16))
    assert kl.shape == (2, 1)
    assert kl.dtype == torch.float32
    # bf16 rounds ln2 to 0.69140625, so the tolerance is that of the inputs, not of the maths.
    assert kl[0, 0].item() == pytest.approx(0.1732868, abs=2e-3)
    assert kl[1, 0].item() == 0.0


def test_exact_kl_is_never_negative_on_random_logits():
    generator = torch.Generator().manual_seed(0)
    policy = torch.randn(64, 16, 50, generator=generator) * 3
    unrelated_reference = torch.randn(64, 16, 50, generator=generator) * 3
    # Nearly identical distributions are where float round-off can push the sum below zero.
    nearly_same_reference = policy + 1e-6 * torch.randn(64, 16, 50, generator=generator)
    assert (exact_token_kl(policy, unrelated_reference) >= 0).all()
    assert (exact_token_kl(policy, nearly_same_reference) >= 0).all()
    assert (exact_token_kl(policy, unrelated_reference) > 0.1).float().mean() > 0.9


def test_exact_kl_ignores_tokens_the_policy_never_emits():
    # p = [1, 0] puts no mass on token 1, so q's −inf there must not turn 0·inf into NaN.
    policy = torch.tensor([0.0, -math.inf])
    reference = torch.tensor([0.0, 0.0])  # q = [0.5, 0.5] → KL = 1·ln(1/0.5) = ln2
    assert exact_token_kl(policy, reference).item() == pytest.approx(LN2, abs=1e-6)


def test_exact_kl_equals_enumeration_over_the_vocabulary():
    # U17 on random logits: sum over valid positions of sum_v p(v) [log p(v) - log q(v)] at temperature T,
    # enumerated here in float64 with the probabilities written out.
    generator = torch.Generator().manual_seed(3)
    policy = torch.randn(3, 5, 7, generator=generator) * 2
    reference = torch.randn(3, 5, 7, generator=generator) * 2
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    temperature = 0.7
    p = torch.exp(policy.double() / temperature)
    p = p / p.sum(-1, keepdim=True)
    q = torch.exp(reference.double() / temperature)
    q = q / q.sum(-1, keepdim=True)
    enumerated = ((p * (p / q).log()).sum(-1) * mask).sum(-1)
    ids = torch.randint(0, 7, (3, 5), generator=generator)
    estimates = sequence_kl_estimates(policy, reference, ids, mask, temperature)
    assert estimates["kl"].tolist() == pytest.approx(enumerated.tolist(), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# sequence_kl_estimates
# ---------------------------------------------------------------------------------------------


def _repeat_over_positions(logits: torch.Tensor, length: int) -> torch.Tensor:
    return logits.reshape(1, 1, -1).repeat(1, length, 1)


def test_sequence_estimates_on_known_tokens():
    # Same p = [0.5, 0.25, 0.25] and q = [0.25, 0.25, 0.5] at three positions, tokens 0, 1, 2.
    # exact: 3 · 0.25·ln2 = 0.75·ln2 = 0.5198604
    # k1 = log p − log q: ln(0.5/0.25) + ln(0.25/0.25) + ln(0.25/0.5) = ln2 + 0 − ln2 = 0
    # k3 = r − ln r − 1 with r = q/p: r = 0.5 → 0.5 + ln2 − 1 = 0.1931472; r = 1 → 0;
    #      r = 2 → 2 − ln2 − 1 = 0.3068528; sum = 0.5
    estimates = sequence_kl_estimates(
        _repeat_over_positions(POLICY_LOGITS_3, 3),
        _repeat_over_positions(REFERENCE_LOGITS_3, 3),
        response_ids=torch.tensor([[0, 1, 2]]),
        response_mask=torch.tensor([[1, 1, 1]]),
    )
    assert set(estimates) == {"kl", "kl_k1", "kl_k3"}
    assert estimates["kl"].shape == (1,)
    assert estimates["kl"].item() == pytest.approx(0.5198604, abs=1e-6)
    assert estimates["kl_k1"].item() == pytest.approx(0.0, abs=1e-6)
    assert estimates["kl_k3"].item() == pytest.approx(0.5, abs=1e-6)


def test_sequence_estimates_single_token_values():
    # Token 0 alone: k1 = ln(0.5/0.25) = ln2 = 0.6931472; k3 = 0.5 + ln2 − 1 = 0.1931472.
    # Token 2 alone: k1 = ln(0.25/0.5) = −0.6931472 (k1 can be negative); k3 = 2 − ln2 − 1 = 0.3068528.
    estimates = sequence_kl_estimates(
        POLICY_LOGITS_3.reshape(1, 1, 3).repeat(2, 1, 1),
        REFERENCE_LOGITS_3.reshape(1, 1, 3).repeat(2, 1, 1),
        response_ids=torch.tensor([[0], [2]]),
        response_mask=torch.tensor([[1], [1]]),
    )
    assert estimates["kl_k1"].tolist() == pytest.approx([0.6931472, -0.6931472], abs=1e-6)
    assert estimates["kl_k3"].tolist() == pytest.approx([0.1931472, 0.3068528], abs=1e-6)
    assert estimates["kl"].tolist() == pytest.approx([0.1732868, 0.1732868], abs=1e-6)


def test_sequence_estimates_use_temperature_for_sampled_tokens():
    # T = 0.5: p = [2/3, 1/6, 1/6], q = [1/6, 1/6, 2/3]. Token 0: k1 = ln((2/3)/(1/6)) = ln4 = 1.3862944;
    # r = 1/4 → k3 = 0.25 + ln4 − 1 = 0.6362944; exact = ln2 = 0.6931472.
    estimates = sequence_kl_estimates(
        POLICY_LOGITS_3.reshape(1, 1, 3),
        REFERENCE_LOGITS_3.reshape(1, 1, 3),
        response_ids=torch.tensor([[0]]),
        response_mask=torch.tensor([[1]]),
        temperature=0.5,
    )
    assert estimates["kl_k1"].item() == pytest.approx(1.3862944, abs=1e-6)
    assert estimates["kl_k3"].item() == pytest.approx(0.6362944, abs=1e-6)
    assert estimates["kl"].item() == pytest.approx(0.6931472, abs=1e-6)


def test_sequence_estimates_exclude_masked_positions_even_with_garbage():
    # Row 0: positions 0 and 1 are real (tokens 0 and 1), position 2 is padding holding an id
    # outside the vocabulary and a reference logit of −inf (an infinite KL if it were counted).
    # exact = 2 · 0.25·ln2 = 0.3465736; k1 = ln2 + 0 = 0.6931472; k3 = 0.1931472 + 0 = 0.1931472
    # Row 1: only position 0 is real, token 2: exact = 0.1732868, k1 = −0.6931472, k3 = 0.3068528
    policy = _repeat_over_positions(POLICY_LOGITS_3, 3).repeat(2, 1, 1)
    reference = _repeat_over_positions(REFERENCE_LOGITS_3, 3).repeat(2, 1, 1)
    reference[:, 2] = torch.tensor([-math.inf, 0.0, 0.0])
    estimates = sequence_kl_estimates(
        policy,
        reference,
        response_ids=torch.tensor([[0, 1, 99], [2, 99, 99]]),
        response_mask=torch.tensor([[1, 1, 0], [1, 0, 0]]),
    )
    assert estimates["kl"].tolist() == pytest.approx([0.3465736, 0.1732868], abs=1e-6)
    assert estimates["kl_k1"].tolist() == pytest.approx([0.6931472, -0.6931472], abs=1e-6)
    assert estimates["kl_k3"].tolist() == pytest.approx([0.1931472, 0.3068528], abs=1e-6)


def test_sequence_estimates_are_exactly_zero_for_identical_logits():
    logits = torch.randn(4, 7, 11, generator=torch.Generator().manual_seed(1)) * 4
    response_ids = torch.randint(0, 11, (4, 7), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(4, 7, dtype=torch.long)
    estimates = sequence_kl_estimates(logits, logits.clone(), response_ids, mask)
    for name in ("kl", "kl_k1", "kl_k3"):
        assert torch.equal(estimates[name], torch.zeros(4)), name


def test_sequence_estimates_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="same shape"):
        sequence_kl_estimates(torch.zeros(1, 2, 3), torch.zeros(1, 2, 4), torch.zeros(1, 2), torch.ones(1, 2))
    with pytest.raises(ValueError, match="response_ids"):
        sequence_kl_estimates(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.zeros(1, 3), torch.ones(1, 3))


def test_monte_carlo_mean_of_k1_and_k3_approaches_exact_kl():
    # p = [0.9, 0.025, 0.025, 0.025, 0.025], q uniform 0.2.
    # KL(p‖q) = 0.9·ln(4.5) + 0.1·ln(0.125) = 1.3536697 − 0.2079442 = 1.1457255
    # KL(q‖p) = 0.2·ln(0.2/0.9) + 0.8·ln(8) = −0.3008155 + 1.6635532 = 1.3627377
    # std(k1) ≈ 1.075 and std(k3) ≈ 1.26 under p, so with 100k samples the standard error is
    # ≈ 0.004; a margin of 0.03 is ~8 SE, while a wrong direction is off by 0.217 and a wrong
    # sign by 2.29.
    exact_forward_kl = 1.1457255
    reverse_kl = 1.3627377
    policy_logits = torch.log(torch.tensor([0.9, 0.025, 0.025, 0.025, 0.025]))
    reference_logits = torch.zeros(5)
    assert exact_token_kl(policy_logits, reference_logits).item() == pytest.approx(exact_forward_kl, abs=1e-5)

    sample_count = 100_000
    generator = torch.Generator().manual_seed(1234)
    samples = torch.multinomial(policy_logits.softmax(-1), sample_count, replacement=True, generator=generator)
    estimates = sequence_kl_estimates(
        policy_logits.expand(sample_count, 1, 5),
        reference_logits.expand(sample_count, 1, 5),
        response_ids=samples.reshape(sample_count, 1),
        response_mask=torch.ones(sample_count, 1),
    )
    margin = 0.03
    assert abs(exact_forward_kl - reverse_kl) > 5 * margin  # the margin can tell them apart
    assert estimates["kl_k1"].mean().item() == pytest.approx(exact_forward_kl, abs=margin)
    assert estimates["kl_k3"].mean().item() == pytest.approx(exact_forward_kl, abs=margin)
    # The exact estimator has no sampling noise at all.
    assert torch.allclose(estimates["kl"], torch.full((sample_count,), exact_forward_kl), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# response_kl on tiny GPT-2 models
# ---------------------------------------------------------------------------------------------

VOCAB_SIZE = 20


def _tiny_gpt2(seed: int, dropout: float = 0.0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=16,
        n_layer=1,
        n_head=2,
        n_positions=32,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        # Larger than GPT-2's 0.02 so that the two models differ by KLs of order 0.1-1 and
        # position embeddings visibly move the logits.
        initializer_range=0.1,
        bos_token_id=0,
        eos_token_id=1,
    )
    return GPT2LMHeadModel(config).eval()


@pytest.fixture(scope="module")
def policy_and_reference() -> tuple[GPT2LMHeadModel, GPT2LMHeadModel]:
    return _tiny_gpt2(seed=0), _tiny_gpt2(seed=1)


def _unbatched_kl(
    policy: GPT2LMHeadModel,
    reference: GPT2LMHeadModel,
    prompt: list[int],
    response: list[int],
    temperature: float = 1.0,
    position_offset: int = 0,
) -> dict[str, float]:
    """One sequence, no padding, default positions, float64 maths: the obvious computation."""
    if not response:
        return {"kl": 0.0, "kl_k1": 0.0, "kl_k3": 0.0}
    sequence = torch.tensor([prompt + response])
    positions = torch.arange(sequence.shape[1]).unsqueeze(0) + position_offset
    with torch.no_grad():
        policy_logits = policy(sequence, position_ids=positions).logits[0].double()
        reference_logits = reference(sequence, position_ids=positions).logits[0].double()
    totals = {"kl": 0.0, "kl_k1": 0.0, "kl_k3": 0.0}
    for t, token in enumerate(response):
        # The logits at the token before y_t predict y_t.
        log_p = torch.log_softmax(policy_logits[len(prompt) - 1 + t] / temperature, dim=-1)
        log_q = torch.log_softmax(reference_logits[len(prompt) - 1 + t] / temperature, dim=-1)
        totals["kl"] += float((log_p.exp() * (log_p - log_q)).sum())
        log_ratio = float(log_p[token] - log_q[token])
        totals["kl_k1"] += log_ratio
        totals["kl_k3"] += math.exp(-log_ratio) + log_ratio - 1.0
    return totals


PROMPTS = [[2, 3], [4, 5, 6, 7, 8, 9, 10], [11], [5, 5, 12, 13], [3, 14, 15, 16, 17], [2], [6, 7]]
RESPONSES = [[4, 5, 6, 1], [7], [], [8, 5, 9, 10, 11, 12], [13, 14], [15, 16, 17, 18, 1], []]


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_response_kl_batched_with_padding_matches_unbatched(policy_and_reference, temperature):
    policy, reference = policy_and_reference
    # pad_id 5 is also a real token in the data: masks must come from lengths, not from ids.
    # batch_size 3 makes chunks of different widths, and the last chunk holds one empty response.
    batched = response_kl(policy, reference, PROMPTS, RESPONSES, pad_id=5, temperature=temperature, batch_size=3)
    expected = [
        _unbatched_kl(policy, reference, prompt, response, temperature) for prompt, response in zip(PROMPTS, RESPONSES)
    ]
    assert set(batched) == {"kl", "kl_k1", "kl_k3"}
    for name in ("kl", "kl_k1", "kl_k3"):
        assert all(isinstance(value, float) for value in batched[name])
        assert batched[name] == pytest.approx([row[name] for row in expected], abs=1e-5), name
    # The data must actually exercise the computation: clearly different models, empty → 0.
    assert min(batched["kl"][i] for i in (0, 1, 3, 4, 5)) > 1e-3
    assert batched["kl"][2] == batched["kl"][6] == 0.0


def test_response_kl_is_independent_of_batch_composition(policy_and_reference):
    policy, reference = policy_and_reference
    prompt, response = [2, 3], [4, 5, 6, 1]
    # pad_id 20 lies outside the 20-token vocabulary: it must be replaced before the forward.
    alone = response_kl(policy, reference, [prompt], [response], pad_id=VOCAB_SIZE)
    # Batch-mates with prompts 3 and 7 tokens longer give this row 3 and 7 left pads, and their
    # longer responses give it right pads.
    with_longer_prompts = response_kl(
        policy,
        reference,
        [[7, 8, 9, 10, 11], prompt, [12, 13, 14, 15, 16, 17, 18, 2, 3]],
        [[4, 4, 4, 4, 4, 4, 4], response, [9]],
        pad_id=VOCAB_SIZE,
    )
    padded_by_three = {name: values[1] for name, values in with_longer_prompts.items()}
    padded_by_seven = response_kl(
        policy,
        reference,
        [prompt, [12, 13, 14, 15, 16, 17, 18, 2, 3]],
        [response, [9]],
        pad_id=VOCAB_SIZE,
    )
    for name in ("kl", "kl_k1", "kl_k3"):
        assert padded_by_three[name] == pytest.approx(alone[name][0], abs=1e-5), name
        assert padded_by_seven[name][0] == pytest.approx(alone[name][0], abs=1e-5), name

    # The check has teeth: had the left pads shifted the positions (no position_ids), this
    # GPT-2 would have scored the response differently by far more than the tolerance.
    shifted = _unbatched_kl(policy, reference, prompt, response, position_offset=7)
    assert abs(shifted["kl"] - alone["kl"][0]) > 1e-3


def test_response_kl_of_a_model_with_itself_is_exactly_zero(policy_and_reference):
    policy, _ = policy_and_reference
    result = response_kl(policy, policy, PROMPTS, RESPONSES, pad_id=5, batch_size=4)
    for name in ("kl", "kl_k1", "kl_k3"):
        assert result[name] == [0.0] * len(PROMPTS), name


def test_response_kl_runs_in_eval_mode_and_restores_training_flags():
    policy, reference = _tiny_gpt2(seed=0, dropout=0.5), _tiny_gpt2(seed=1, dropout=0.5)
    expected = response_kl(policy, reference, PROMPTS[:2], RESPONSES[:2], pad_id=5)
    policy.train()
    # Dropout at 0.5 would change the numbers on every call if the models stayed in train mode.
    first = response_kl(policy, reference, PROMPTS[:2], RESPONSES[:2], pad_id=5)
    second = response_kl(policy, reference, PROMPTS[:2], RESPONSES[:2], pad_id=5)
    assert first == expected == second
    assert policy.training and not reference.training


def test_response_kl_rejects_mismatched_inputs(policy_and_reference):
    policy, reference = policy_and_reference
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        response_kl(policy, reference, [[1], [2]], [[3]], pad_id=5)
    with pytest.raises(ValueError, match="prompt 0 is empty"):
        response_kl(policy, reference, [[]], [[3]], pad_id=5)
