"""harness.algorithms.reinforce_pp against oracles written here from the paper's formulas (arXiv:2501.03262):
the advantages its update computes on a fixed batch, the loss and gradient its minibatch step computes, and a
short train() run (the reward rises, the first minibatch's ratio is 1, the shared curves are logged).

The fixture is PPO's (tests/unit/test_ppo_trainer.py): a random tiny GPT-2 over a 16-token word vocabulary
(0 = pad, 1 = EOS), prompts of 2-4 words, max_new_tokens 8, T = 1, the rule reward "count the target word",
one thread, deterministic algorithms, fp32 on CPU.
"""

from __future__ import annotations

import math
import random
import types
from pathlib import Path

import pytest
import torch
from contexts import unit_context
from shared_models import WORDS

from harness import record
from harness.algorithms import onpolicy, ppo_math, reinforce_pp
from harness.config import LoraConfig, build
from harness.errors import ConfigError

TARGET_WORD = "good"
MAX_NEW_TOKENS = 8
ONE_PROCESS = types.SimpleNamespace(num_processes=1)  # all `onpolicy.whiten` reads of an Accelerator


def count_target_reward(prompts, completions, stopped):
    return [completion.split().count(TARGET_WORD) / MAX_NEW_TOKENS for completion in completions]


@pytest.fixture(scope="module", autouse=True)
def deterministic_cpu():
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tiny_models):
    """The shared base (SFT) checkpoint and 256 prompts; REINFORCE++ loads no reward model (the folder is PPO's)."""
    root = tiny_models
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4))) for _ in range(256)]
    return types.SimpleNamespace(base=root / "base", reward_model=root / "base", prompts=prompts)


def run_reinforce_pp(
    models, output_dir: Path, updates: int, rollouts: int = 64, lora: LoraConfig | None = None, **config_values
):
    config = reinforce_pp.Config(
        **{
            "rollouts_per_update": rollouts,
            "minibatch_size": rollouts // 4,
            "micro_batch_size": rollouts // 8,
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            **config_values,
        }
    )
    logged: list[tuple[int, dict[str, float]]] = []
    context = unit_context(
        "reinforce_pp",
        config,
        base_dir=models.base,
        reward_model_dir=models.reward_model,
        output_dir=output_dir,
        prompts_budget=updates * rollouts,
        max_new_tokens=MAX_NEW_TOKENS,
        prompts=models.prompts,
        reward=count_target_reward,
        log=lambda step, metrics: logged.append((step, dict(metrics))),
        lora=lora,
    )
    result = reinforce_pp.train(context)
    assert [step for step, _ in logged] == list(range(1, updates + 1))
    return [metrics for _, metrics in logged], result


# ---------------------------------------------------------------------------------------------------------
# Advantages: rewards-to-go of the KL-shaped rewards, whitened over the whole batch
# ---------------------------------------------------------------------------------------------------------


def hand_computed_advantages(scores, logp_old, logp_ref, lengths, kl_coef, gamma, estimator):
    """The paper's advantage from its formula, in float64 Python: per-token reward -beta KL_t plus the score at
    the last token, G_t = sum_{s >= t} gamma^(s - t) r_s, then (G - mean) / sqrt(var + 1e-8) with the mean and
    the unbiased variance over every valid token of the batch. Pads stay 0."""
    returns = []
    for score, old, ref, length in zip(scores, logp_old, logp_ref, lengths):
        kl = [
            old[t] - ref[t] if estimator == "k1" else math.exp(ref[t] - old[t]) - 1 - (ref[t] - old[t])
            for t in range(length)
        ]
        rewards = [-kl_coef * kl[t] + (score if t == length - 1 else 0.0) for t in range(length)]
        returns.append([sum(gamma ** (s - t) * rewards[s] for s in range(t, length)) for t in range(length)])
    tokens = [value for row in returns for value in row]
    mean = sum(tokens) / len(tokens)
    variance = sum((value - mean) ** 2 for value in tokens) / (len(tokens) - 1)
    width = len(logp_old[0])
    return [
        [(row[t] - mean) / math.sqrt(variance + 1e-8) if t < len(row) else 0.0 for t in range(width)] for row in returns
    ]


@pytest.mark.parametrize(("gamma", "estimator"), [(1.0, "k1"), (0.9, "k1"), (1.0, "k3")])
def test_advantages_are_the_batch_whitened_rewards_to_go_of_the_kl_shaped_rewards(gamma, estimator):
    scores = [1.0, -0.5, 2.0, 0.25]
    lengths = [4, 2, 1, 3]
    # Pads hold garbage (9.0): it must not reach the rewards, the returns or the batch statistics.
    logp_old = [[-1.0, -2.0, -0.5, -1.5], [-0.3, -2.2, 9.0, 9.0], [-1.1, 9.0, 9.0, 9.0], [-0.7, -0.2, -3.0, 9.0]]
    logp_ref = [[-1.5, -1.0, -0.7, -1.2], [-0.9, -1.8, 9.0, 9.0], [-0.4, 9.0, 9.0, 9.0], [-1.7, -0.1, -2.5, 9.0]]
    mask = torch.arange(4) < torch.tensor(lengths).unsqueeze(1)
    config = reinforce_pp.Config(
        rollouts_per_update=4, minibatch_size=4, micro_batch_size=4, kl_coef=0.1, gamma=gamma, kl_estimator=estimator
    )
    advantages, per_token_kl = reinforce_pp.advantages(
        torch.tensor(scores), torch.tensor(logp_old), torch.tensor(logp_ref), mask, config, ONE_PROCESS
    )
    expected = hand_computed_advantages(scores, logp_old, logp_ref, lengths, 0.1, gamma, estimator)
    torch.testing.assert_close(advantages, torch.tensor(expected), atol=1e-5, rtol=0.0)
    assert float(advantages[mask].mean()) == pytest.approx(0.0, abs=1e-6)  # whitened over the whole batch
    assert float(advantages[mask].std()) == pytest.approx(1.0, abs=1e-4)
    assert bool((per_token_kl[~mask] == 0).all())


def test_advantages_of_a_literal_batch():
    # beta 0: rewards-to-go are the score on every token of its row: [1, 1 | 0]; mean 2/3, unbiased variance
    # 1/3, so A = (1 - 2/3) / sqrt(1/3) = 0.5773503 and (0 - 2/3) / sqrt(1/3) = -1.1547005.
    config = reinforce_pp.Config(rollouts_per_update=2, minibatch_size=2, micro_batch_size=2, kl_coef=0.0)
    mask = torch.tensor([[True, True], [True, False]])
    zeros = torch.zeros(2, 2)
    advantages, _ = reinforce_pp.advantages(torch.tensor([1.0, 0.0]), zeros, zeros, mask, config, ONE_PROCESS)
    torch.testing.assert_close(
        advantages, torch.tensor([[0.5773503, 0.5773503], [-1.1547005, 0.0]]), atol=1e-6, rtol=0.0
    )


# ---------------------------------------------------------------------------------------------------------
# The minibatch step: the clipped surrogate over the minibatch's valid-token count, no value loss
# ---------------------------------------------------------------------------------------------------------


def fixed_batch(policy, generator) -> onpolicy.TrainingBatch:
    """8 rollouts with response lengths 1..8 in mixed order, left-padded prompts of 2-4 tokens, old log-probs
    off the current ones by up to +-0.4 (ratios on both sides of the clip range) and REINFORCE++ advantages."""
    rows, prompt_length, response_length = 8, 4, 8
    lengths = torch.tensor([1, 6, 3, 8, 2, 7, 4, 5])
    prompt_lengths = torch.tensor([2, 4, 3, 4, 2, 3, 4, 2])
    prompt_mask = torch.arange(prompt_length) >= (prompt_length - prompt_lengths).unsqueeze(1)
    prompt_ids = torch.where(prompt_mask, torch.randint(3, 16, (rows, prompt_length), generator=generator), 0)
    response_ids = torch.randint(3, 16, (rows, response_length), generator=generator)
    response_ids[torch.arange(rows), lengths - 1] = 1  # EOS at e_b = len_b - 1
    truncated = ppo_math.truncate_after_stop(response_ids, [1], 0)
    mask = truncated.mask
    with torch.no_grad():
        logp = independent_logprobs(policy, prompt_ids, prompt_mask, truncated.response_ids, mask)
    logp_old = torch.where(mask, logp + 0.8 * (torch.rand(rows, response_length, generator=generator) - 0.5), 0.0)
    logp_ref = torch.where(mask, logp + 0.3 * torch.randn(rows, response_length, generator=generator), 0.0)
    config = reinforce_pp.Config(rollouts_per_update=8, minibatch_size=8, micro_batch_size=8)
    advantages, _ = reinforce_pp.advantages(
        torch.randn(rows, generator=generator), logp_old, logp_ref, mask, config, ONE_PROCESS
    )
    return onpolicy.TrainingBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=truncated.response_ids,
        mask=mask,
        logp_old=logp_old,
        values_old=None,
        advantages=advantages,
        returns=None,
        prompt_starts=prompt_length - prompt_lengths,
        response_lengths=truncated.lengths,
    )


def independent_logprobs(policy, prompt_ids, prompt_mask, response_ids, mask):
    """log pi(y_t) at T = 1 from one full forward, built here (not with the product's helpers): positions count
    real tokens, the logits at absolute index P - 1 + t predict response token t."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    attention = torch.cat([prompt_mask, mask], dim=1).long()
    positions = (attention.cumsum(dim=1) - 1).clamp(min=0)
    logits = policy(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits.float()
    prompt_length, response_length = prompt_ids.shape[1], response_ids.shape[1]
    predicting = torch.log_softmax(logits[:, prompt_length - 1 : prompt_length - 1 + response_length], dim=-1)
    return torch.where(mask, predicting.gather(-1, response_ids.unsqueeze(-1)).squeeze(-1), 0.0)


def test_minibatch_loss_and_gradient_are_the_clipped_surrogate_over_the_global_token_count(models):
    from accelerate import Accelerator

    from harness.modeling import load_causal_lm

    policy = load_causal_lm(models.base).train()
    onpolicy.disable_dropout(policy)
    batch = fixed_batch(policy, torch.Generator().manual_seed(3))
    mask, token_count = batch.mask, batch.mask.sum().float()

    # The oracle: -min(rho A, clip(rho, 0.8, 1.2) A) per token, summed over valid tokens / their count.
    policy.zero_grad(set_to_none=True)
    logp_new = independent_logprobs(policy, batch.prompt_ids, batch.prompt_mask, batch.response_ids, mask)
    ratio = torch.exp(logp_new - batch.logp_old)
    surrogate = torch.minimum(ratio * batch.advantages, ratio.clamp(0.8, 1.2) * batch.advantages)
    expected_loss = -torch.where(mask, surrogate, 0.0).sum() / token_count
    expected_loss.backward()
    expected_loss = expected_loss.detach()
    expected_gradients = [p.grad.clone() for p in policy.parameters()]
    clipped = (ratio.clamp(0.8, 1.2) * batch.advantages < ratio * batch.advantages) & mask
    assert 0 < int(clipped.sum()) < int(mask.sum())  # both branches of the clip are exercised

    # What REINFORCE++'s optimiser step computes: micro-batches of 3 rows of uneven lengths, no critic.
    policy.zero_grad(set_to_none=True)
    settings = onpolicy.LossSettings(temperature=1.0, clip_epsilon=0.2, value_clip=0.0, entropy_coef=0.0)
    statistics = onpolicy.accumulate_minibatch_gradients(
        policy, None, batch, token_count, settings, 3, Accelerator(cpu=True)
    )
    assert float(statistics["policy_loss"]) == pytest.approx(float(expected_loss), abs=1e-6)
    assert float(statistics["clip_fraction"]) == pytest.approx(float(clipped.sum() / token_count), abs=1e-6)
    assert "value_loss" not in statistics
    largest = max((p.grad - g).abs().max().item() for p, g in zip(policy.parameters(), expected_gradients))
    assert largest <= 1e-5, largest


# ---------------------------------------------------------------------------------------------------------
# A short training run
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def short_run(models, tmp_path_factory):
    return run_reinforce_pp(models, tmp_path_factory.mktemp("reinforce_pp_run"), updates=16)


def test_reward_rises_and_every_update_starts_at_ratio_one(short_run):
    logged, result = short_run
    rewards = [metrics["reward"] for metrics in logged]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    # Measured: first four 0.09, last four 0.54 (random init scores about 0.05; final KL 8.2 nats).
    assert last >= 3 * first and last >= 0.3, rewards
    for metrics in logged:
        assert all(math.isfinite(value) for value in metrics.values()), metrics
        assert metrics["reinforce_pp/first_minibatch_ratio_deviation"] <= 1e-5
        assert metrics["reinforce_pp/first_minibatch_clip_fraction"] == 0.0
        assert metrics["reinforce_pp/optimizer_steps"] == 4  # one epoch of B / minibatch_size steps
        assert not any("value" in name for name in metrics)  # no critic
    assert result.spend["completions_generated"] == 16 * 64
    assert result.spend["optimizer_steps"] == 16 * 4
    assert (result.checkpoint_dir / "model.safetensors").is_file()


def test_shared_curves_are_logged_every_update(short_run):
    logged, _ = short_run
    for update, metrics in enumerate(logged, start=1):
        assert metrics[record.TRAIN_BUDGET_FRACTION] == pytest.approx(update / len(logged))
        # The per-sequence k1 sum of the rollouts, mean over rollouts: the `kl` statistic under the shared name.
        assert metrics[record.TRAIN_KL_PER_SEQUENCE] == metrics["kl"]
        assert metrics["reinforce_pp/non_score_reward"] == pytest.approx(-0.01 * metrics["kl"], abs=1e-6)
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # the policy starts as the reference
    assert logged[-1]["kl"] > 0.1
    assert set(reinforce_pp.SPEC.curves) | set(reinforce_pp.SPEC.watched) <= set(logged[0])


def test_lora_dropout_is_off_so_every_update_starts_at_ratio_one(models, tmp_path):
    lora = LoraConfig(enabled=True, r=4, alpha=8.0, dropout=0.1, stages=["reinforce_pp"])
    logged, _ = run_reinforce_pp(models, tmp_path, updates=2, rollouts=16, lora=lora, learning_rate=3e-3, ppo_epochs=2)
    for metrics in logged:  # update 2 starts from a trained adapter, whose dropout would matter
        assert metrics["reinforce_pp/first_minibatch_ratio_deviation"] <= 1e-5
    assert logged[-1]["reinforce_pp/ratio_max"] > 1.0 + 1e-3


# ---------------------------------------------------------------------------------------------------------
# Settings and what the harness reads from the module
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"rollouts_per_update": 64, "minibatch_size": 24}, "minibatch_size"),
        ({"minibatch_size": 16, "micro_batch_size": 5}, "micro_batch_size"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"gamma": 0.0}, "gamma"),
        ({"clip_epsilon": 1.0}, "clip_epsilon"),
        ({"rollouts_per_update": 1, "minibatch_size": 1, "micro_batch_size": 1}, "rollouts_per_update"),
    ],
)
def test_bad_config_is_refused_with_one_line_naming_the_key(values, key):
    with pytest.raises(ConfigError) as error:
        build(reinforce_pp.Config, values, "algorithms.reinforce_pp.")
    message = str(error.value)
    assert "\n" not in message and f"'algorithms.reinforce_pp.{key}'" in message, message


def test_defaults_and_spec():
    from harness.algorithms.spec import algorithm

    defaults = reinforce_pp.Config()
    assert (defaults.ppo_epochs, defaults.kl_estimator, defaults.gamma) == (1, "k1", 1.0)  # Hu 2025's choices
    resolved = algorithm("reinforce_pp")
    assert resolved.module is reinforce_pp and resolved.defaults == {}
    spec = resolved.spec
    assert spec.family == record.FAMILY_ONLINE_POLICY_GRADIENT
    assert spec.kl_knob == "kl_coef" and hasattr(defaults, spec.kl_knob)
    assert spec.trains_policy and not spec.kl_knob_raises_kl
    assert "sampled from its current policy" in spec.describe_data(defaults)
    ppo = algorithm("ppo").spec
    assert ppo.family == record.FAMILY_ACTOR_CRITIC and ppo.kl_knob == "kl_coef"
