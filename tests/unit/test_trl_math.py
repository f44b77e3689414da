"""What TRL computes for the harness's GRPO and DPO, checked against oracles written from the papers.

The oracles (GRPO's group-relative advantages and token aggregations, DPO's sigmoid loss) live here, not in
the product: the product runs TRL's code. Each is checked twice: against the hand-computed values of
docs/PPO.md §5.1 (U13-U15), so the oracle itself is right, and against what TRL actually computed inside
`harness.algorithms.grpo.train` / `dpo.train` on a tiny model, so a change of TRL's behaviour (its defaults
moved between releases and will again) or of the settings the harness passes fails here.
"""

from __future__ import annotations

import math
import random
import types

import pytest
import torch
import torch.nn.functional as F
from contexts import unit_context
from shared_models import WORDS


def assert_close(actual, expected, atol: float = 1e-6) -> None:
    actual = torch.as_tensor(actual)
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0.0)


# ---------------------------------------------------------------------------------------------------------
# Oracles
# ---------------------------------------------------------------------------------------------------------


def group_relative_advantages(rewards: torch.Tensor, group_size: int, scale: str, eps: float = 1e-4):
    """GRPO advantages of rewards laid out group by group (Shao et al. 2024, arXiv:2402.03300, §4.1.2).

    ``A = (R - mean_group R) / (std + eps)``, with the unbiased std of the group ("group"), of the whole batch
    ("batch"), or no division ("none", Dr. GRPO, arXiv:2503.20783). A zero-variance group gives 0.
    """
    grouped = rewards.reshape(-1, group_size)
    centred = (grouped - grouped.mean(dim=1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(dim=1, unbiased=True).repeat_interleave(group_size)
    else:
        std = rewards.std(unbiased=True)
    return centred / (std + eps)


def aggregate_token_losses(per_token_loss, mask, loss_type: str, max_completion_length: int):
    """The scalar loss of ``[B, L]`` per-token losses under each of GRPOConfig's loss types (PPO.md §3.1, U14).

    grpo: mean over sequences of each sequence's token mean (length-biased, arXiv:2503.20783 §3.1);
    bnpo and dapo: sum over all tokens / token count (DAPO, arXiv:2503.14476, token-level loss);
    dr_grpo: sum over all tokens / (B * max_completion_length).
    """
    mask = mask.bool()
    masked = torch.where(mask, per_token_loss, torch.zeros_like(per_token_loss))
    if loss_type == "grpo":
        return (masked.sum(dim=1) / mask.sum(dim=1).clamp(min=1)).mean()
    if loss_type in ("bnpo", "dapo"):
        return masked.sum() / mask.sum().clamp(min=1)
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token_loss.shape[0] * max_completion_length)
    raise ValueError(loss_type)


def dpo_sigmoid_loss(policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta: float):
    """Per-pair DPO loss ``-logsigmoid(beta [(pi_c - pi_r) - (ref_c - ref_r)])`` and the implicit rewards
    ``beta (log pi - log pi_ref)`` (Rafailov et al. 2023, arXiv:2305.18290, eq. 7; PPO.md §4.3). Inputs are
    sums of completion-token log-probs."""
    logits = (policy_chosen - policy_rejected) - (reference_chosen - reference_rejected)
    losses = -F.logsigmoid(beta * logits)  # logsigmoid, never log(sigmoid(x)): that underflows below x ~ -103
    return losses, beta * (policy_chosen - reference_chosen), beta * (policy_rejected - reference_rejected)


# ---------------------------------------------------------------------------------------------------------
# The oracles against PPO.md §5.1's hand-computed values
# ---------------------------------------------------------------------------------------------------------


def test_u13_group_advantages_hand_values():
    # PPO.md U13: [1,0,0,1] unbiased std -> +-0.8658754 with eps 1e-4 (TRL's); "none" -> +-0.5;
    # [0.2,0.4,0.9] -> [-0.8320503, -0.2773501, 1.1094004] with a negligible eps; [1,1,1,1] -> 0.
    rewards, expected = torch.tensor([1.0, 0.0, 0.0, 1.0]), 0.8658754
    assert_close(group_relative_advantages(rewards, 4, "group"), [expected, -expected, -expected, expected])
    assert_close(group_relative_advantages(rewards, 4, "none"), [0.5, -0.5, -0.5, 0.5])
    three = group_relative_advantages(torch.tensor([0.2, 0.4, 0.9], dtype=torch.float64), 3, "group", eps=1e-12)
    assert_close(three, [-0.8320503, -0.2773501, 1.1094004])
    assert_close(group_relative_advantages(torch.ones(4), 4, "group"), [0.0] * 4)


@pytest.mark.parametrize(("loss_type", "expected"), [("grpo", 1.5), ("dapo", 1.25), ("dr_grpo", 0.8333333)])
def test_u14_aggregation_hand_values(loss_type, expected):
    # PPO.md U14: losses [[2,.,.],[1,1,1]], mask [[1,0,0],[1,1,1]], L_max 3 (the "." are NaN garbage).
    per_token_loss = torch.tensor([[2.0, float("nan"), float("nan")], [1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]])
    assert_close(aggregate_token_losses(per_token_loss, mask, loss_type, 3), expected)


def test_u15_dpo_hand_values():
    # PPO.md U15: pi_c=-10, pi_r=-12, ref_c=ref_r=-11, beta=0.1 -> loss 0.5981389, dL/dpi_c = -0.0450166,
    # rewards 0.1 / -0.1; -logsigmoid(-1000) = 1000, finite.
    chosen = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    rejected = torch.tensor([-12.0], dtype=torch.float64, requires_grad=True)
    reference = torch.tensor([-11.0], dtype=torch.float64)
    losses, chosen_rewards, rejected_rewards = dpo_sigmoid_loss(chosen, rejected, reference, reference, 0.1)
    assert_close(losses, [0.5981389])
    losses.sum().backward()
    assert_close(chosen.grad, [-0.0450166])
    assert_close(rejected.grad, [0.0450166])
    assert_close(chosen_rewards.detach(), [0.1])
    assert_close(rejected_rewards.detach(), [-0.1])
    zero = torch.tensor([0.0])
    assert_close(dpo_sigmoid_loss(zero, torch.tensor([1000.0]), zero, zero, 1.0)[0], [1000.0])


# ---------------------------------------------------------------------------------------------------------
# The oracles against what TRL computes inside the harness's own train()
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base_model(tiny_models):
    return tiny_models / "base"


def train(module, config, base_dir, output_dir, prompts, *, pairs=(), reward_function=None, max_new_tokens=6):
    """`module.train` on the tiny model with a budget of `len(prompts)` prompts; returns the logged metrics."""

    logged = []
    context = unit_context(
        module.__name__.rsplit(".", 1)[-1],
        config,
        base_dir=base_dir,  # also the reward model's folder, unused: the reward function is given
        output_dir=output_dir,
        prompts_budget=len(prompts),
        max_new_tokens=max_new_tokens,
        prompts=prompts,
        pairs=pairs,
        reward=reward_function,
        log=lambda step, metrics: logged.append((step, metrics)),
    )
    module.train(context)
    return logged


def capture(monkeypatch, cls, name: str, before=None):
    """Record every call of `cls.name` (its arguments and result) while delegating to TRL's own method."""
    calls = []
    original = getattr(cls, name)

    def recording(self, *args, **kwargs):
        seen = before(self, *args, **kwargs) if before else None
        result = original(self, *args, **kwargs)
        calls.append(types.SimpleNamespace(args=args, result=result, seen=seen))
        return result

    monkeypatch.setattr(cls, name, recording)
    return calls


# Two groups of G=4: one with spread rewards, one with equal rewards (its advantages must be exactly 0 under
# every scaling). The reward function returns them by position, so they are known whatever was sampled.
GROUP_REWARDS = [0.2, 0.4, 0.9, 0.1, 0.3, 0.3, 0.3, 0.3]


@pytest.mark.parametrize(("scale_rewards", "loss_type"), [("group", "dapo"), ("batch", "grpo"), ("none", "dr_grpo")])
def test_grpo_advantages_and_loss_are_the_papers(base_model, tmp_path, monkeypatch, scale_rewards, loss_type):
    from trl import GRPOTrainer

    from harness.algorithms import grpo

    scored = capture(monkeypatch, GRPOTrainer, "_generate_and_score_completions")
    losses = capture(monkeypatch, GRPOTrainer, "compute_loss")
    max_new_tokens = 24  # long enough that some completions stop early, so lengths differ and aggregations too
    config = grpo.Config(
        num_generations=4, prompts_per_step=2, beta=0.0, scale_rewards=scale_rewards, loss_type=loss_type
    )
    train(
        grpo,
        config,
        base_model,
        tmp_path,
        ["a b", "c d e"],
        reward_function=lambda ps, completions, stopped: GROUP_REWARDS[: len(completions)],
        max_new_tokens=max_new_tokens,
    )

    assert len(scored) == 1 and len(losses) == 1  # one step: one generation batch, one loss
    batch = scored[0].result
    expected = group_relative_advantages(torch.tensor(GROUP_REWARDS), 4, scale_rewards)
    assert_close(batch["advantages"], expected, atol=1e-5)
    assert batch["advantages"][4:].eq(0).all()

    # One iteration on fresh samples: the ratio is exactly 1 and beta is 0, so every token's loss is -A.
    mask = batch["completion_mask"]
    lengths = mask.sum(dim=1)
    assert lengths.unique().numel() > 1, "all completions have one length: the aggregations would coincide"
    per_token_loss = -batch["advantages"].unsqueeze(1).expand(mask.shape)
    expected_loss = aggregate_token_losses(per_token_loss, mask, loss_type, max_new_tokens)
    assert_close(losses[0].result.detach(), expected_loss, atol=1e-6)


def test_dpo_loss_and_rewards_are_the_papers(base_model, tmp_path, monkeypatch):
    """TRL's loss and logged implicit rewards at every step equal the oracle on log-probs computed here: plain
    forward passes of the policy being trained and of a fresh copy of the SFT checkpoint (the reference).
    After the first step the policy has moved, so the loss is no longer ln 2."""
    from transformers import AutoModelForCausalLM
    from trl import DPOTrainer

    from harness.algorithms import dpo

    reference = AutoModelForCausalLM.from_pretrained(base_model).eval()
    beta = 0.5

    def sequence_logps(model, inputs):
        """Sum of log p(completion token) per row; rows are [chosen..., rejected...] (TRL's batch layout)."""
        model_inputs = {key: value for key, value in inputs.items() if key not in ("completion_mask",)}
        with torch.no_grad():
            logits = model(**model_inputs).logits[:, :-1].float()
        targets = inputs["input_ids"][:, 1:]
        token_logps = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        completion = inputs["completion_mask"][:, 1:].bool()
        return torch.where(completion, token_logps, torch.zeros_like(token_logps)).sum(dim=1).chunk(2)

    def oracle(self, model, inputs, *args, **kwargs):
        # Only what a plain forward takes: nothing TRL-specific (precomputed reference log-probs) is reused.
        assert set(inputs) <= {"input_ids", "attention_mask", "completion_mask"}, sorted(inputs)
        return (*sequence_logps(model, inputs), *sequence_logps(reference, inputs))

    calls = capture(monkeypatch, DPOTrainer, "compute_loss", before=oracle)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4))) for _ in range(12)]
    pairs = [
        {
            "prompt": prompt,
            "chosen": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))) + " good",
            "rejected": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 4))),
        }
        for prompt in prompts
    ]
    logged = train(
        dpo, dpo.Config(beta=beta, batch_size=4, learning_rate=1e-2), base_model, tmp_path, prompts, pairs=pairs
    )

    assert len(calls) == 3
    logged_by_step = {step: metrics for step, metrics in logged if "rewards/chosen" in metrics}
    for step, call in enumerate(calls, start=1):
        policy_chosen, policy_rejected, reference_chosen, reference_rejected = call.seen
        losses, chosen_rewards, rejected_rewards = dpo_sigmoid_loss(
            policy_chosen, policy_rejected, reference_chosen, reference_rejected, beta
        )
        assert_close(call.result.detach(), losses.mean(), atol=1e-5)
        metrics = logged_by_step[step]  # the harness logs every step
        assert metrics["rewards/chosen"] == pytest.approx(chosen_rewards.mean().item(), abs=1e-5)
        assert metrics["rewards/margins"] == pytest.approx((chosen_rewards - rejected_rewards).mean().item(), abs=1e-5)
    assert_close(calls[0].result.detach(), math.log(2.0), atol=1e-6)  # policy = reference before any update
    assert abs(calls[-1].result.item() - math.log(2.0)) > 1e-2  # the last step checks a non-trivial loss
