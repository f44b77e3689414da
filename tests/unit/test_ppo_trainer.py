"""End-to-end checks E1-E5 and E7 of docs/PPO.md §5.2 for harness.algorithms.ppo, and the refusal of bad settings.

The fixture is the spec's, adapted to the harness's GPT-2: a randomly initialised tiny GPT-2 over a 16-token
word vocabulary (0 = pad, 1 = EOS, 2 = unk, 13 ordinary words), a critic initialised from a "reward model"
that is the same backbone with a fresh scalar head, prompts of 2-4 words, max_new_tokens 8, T = 1. The
training reward is the spec's rule reward, "count the target token": (# of "good" in the completion) / 8.
Everything runs on CPU in fp32 with one thread and deterministic algorithms. The thresholds are the spec's
starting points, calibrated once on this implementation (measured values in the comments).
"""

from __future__ import annotations

import math
import random
import types
from pathlib import Path

import pytest
import torch
from contexts import unit_context

from harness import logprobs
from harness.algorithms import onpolicy, ppo, ppo_math
from harness.config import LoraConfig, ModelConfig, SamplingConfig, build
from harness.errors import ConfigError
from harness.modeling import EOS_TOKEN, build_tiny_causal_lm, build_word_tokenizer, save_checkpoint

ORDINARY_WORDS = ["a", "b", "c", "d", "e", "f", "g", "h", "good", "x", "y", "z", "q"]
PROMPT_WORDS = ORDINARY_WORDS[:8]
TARGET_WORD = "good"
MAX_NEW_TOKENS = 8
TINY_MODEL = ModelConfig(n_embd=32, n_layer=2, n_head=4, max_positions=64)


def count_target_reward(prompts, completions, stopped):
    """PPO.md §5.2 fixture: score = (# of the target token in the truncated response) / 8."""
    return [completion.split().count(TARGET_WORD) / MAX_NEW_TOKENS for completion in completions]


def first_word_reward(prompts, completions, stopped):
    """A return the critic can explain from the state: 1 when the prompt starts with a-d, plus the target count."""
    return [
        float(prompt.split()[0] in PROMPT_WORDS[:4]) + completion.split().count(TARGET_WORD) / MAX_NEW_TOKENS
        for prompt, completion in zip(prompts, completions)
    ]


@pytest.fixture(scope="module", autouse=True)
def deterministic_cpu():
    """PPO.md §5.2 fixture: one thread, deterministic algorithms; restored for the other test modules."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A base (SFT) checkpoint and a reward model built from it (same vocabulary), plus 256 prompts."""
    from transformers import AutoModelForSequenceClassification

    root = tmp_path_factory.mktemp("ppo_models")
    tokenizer = build_word_tokenizer(ORDINARY_WORDS, max_length=64)
    assert len(tokenizer) == 16 and tokenizer.pad_token_id == 0 and tokenizer.eos_token_id == 1
    save_checkpoint(build_tiny_causal_lm(TINY_MODEL, tokenizer, seed=0), tokenizer, root / "base")
    torch.manual_seed(0)  # the reward model's fresh scalar head
    reward_model = AutoModelForSequenceClassification.from_pretrained(root / "base", num_labels=1)
    save_checkpoint(reward_model, tokenizer, root / "reward_model")
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(PROMPT_WORDS) for _ in range(rng.randint(2, 4))) for _ in range(256)]
    return types.SimpleNamespace(root=root, base=root / "base", reward_model=root / "reward_model", prompts=prompts)


def run_ppo(
    models,
    output_dir: Path,
    updates: int,
    rollouts: int = 64,
    seed: int = 0,
    reward=count_target_reward,
    lora: LoraConfig | None = None,
    **config_values,
):
    """Train PPO for `updates` updates; returns (logged metrics per update, TrainResult)."""
    config = ppo.Config(
        **{
            "rollouts_per_update": rollouts,
            "minibatch_size": rollouts // 2,  # M = 2 (PPO.md §5.2 E1)
            "micro_batch_size": rollouts // 2,
            "ppo_epochs": 4,
            "learning_rate": 1e-3,
            "critic_learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "kl_coef": 0.01,
            **config_values,
        }
    )
    logged: list[tuple[int, dict[str, float]]] = []
    context = unit_context(
        "ppo",
        config,
        base_dir=models.base,
        reward_model_dir=models.reward_model,
        output_dir=output_dir,
        prompts_budget=updates * rollouts,
        max_new_tokens=MAX_NEW_TOKENS,
        prompts=models.prompts,
        reward=reward,
        log=lambda step, metrics: logged.append((step, dict(metrics))),
        seed=seed,
        lora=lora,
    )
    result = ppo.train(context)
    assert [step for step, _ in logged] == list(range(1, updates + 1))
    return [metrics for _, metrics in logged], result


def series(logged, name):
    return [metrics[name] for metrics in logged]


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


@pytest.fixture(scope="module")
def small_kl_run(tiny_models, tmp_path_factory):
    """PPO.md §5.2 E1 settings: rollouts of 64, K=4, M=2, lr 1e-3, beta 0.01 (20 updates instead of 30)."""
    return run_ppo(tiny_models, tmp_path_factory.mktemp("e1"), updates=20, kl_coef=0.01)


# ---------------------------------------------------------------------------------------------------------
# E1 — reward goes up
# ---------------------------------------------------------------------------------------------------------


def test_e1_reward_rises(small_kl_run):
    logged, result = small_kl_run
    rewards = series(logged, "reward")
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    # Measured: first five 0.11, last five 0.98 (random init scores about 0.05).
    assert last >= 3 * first and last >= 0.3, rewards
    # PPO.md §5.2 E1: stop rate and length are logged, and nothing is NaN anywhere.
    for metrics in logged:
        assert all(math.isfinite(value) for value in metrics.values()), metrics
        assert 0.0 <= metrics["ppo/stop_rate"] <= 1.0
        assert 1.0 <= metrics["completions/mean_length"] <= MAX_NEW_TOKENS
    assert result.spend["completions_generated"] == 20 * 64
    assert result.spend["optimizer_steps"] == 20 * 4 * 2
    assert result.spend["tokens_generated"] == pytest.approx(sum(m["completions/mean_length"] * 64 for m in logged))


def test_logged_metric_names_follow_grpo_where_they_mean_the_same(small_kl_run):
    logged, _ = small_kl_run
    expected = {
        # TRL GRPO's names
        "reward",
        "reward_std",
        "kl",
        "entropy",
        "loss",
        "learning_rate",
        "grad_norm",
        "completions/mean_length",
        "completions/clipped_ratio",
        "clip_ratio/region_mean",
        # PPO's own
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/approx_kl",
        "ppo/value_clip_fraction",
        "ppo/ratio_mean",
        "ppo/non_score_reward",
        "ppo/rlhf_reward",
        "ppo/kl_coef",
        "ppo/stop_rate",
        "completions_generated",
        "tokens_generated",
    }
    assert expected <= set(logged[0])
    for metrics in logged:
        # objective/rlhf_reward = score + non_score_reward, non_score_reward = -beta * KL (PPO.md §2.13).
        assert metrics["ppo/rlhf_reward"] == pytest.approx(metrics["reward"] + metrics["ppo/non_score_reward"])
        assert metrics["ppo/non_score_reward"] == pytest.approx(-0.01 * metrics["kl"], abs=1e-6)
        assert metrics["completions/clipped_ratio"] == pytest.approx(1.0 - metrics["ppo/stop_rate"])


def test_shared_curves_and_the_declared_curves_are_logged(small_kl_run):
    from harness import record

    logged, _ = small_kl_run
    for update, metrics in enumerate(logged, start=1):
        assert metrics[record.TRAIN_BUDGET_FRACTION] == pytest.approx(update / len(logged))
        # The per-sequence k1 sum of the rollouts, mean over rollouts: PPO's `kl` under the shared name.
        assert metrics[record.TRAIN_KL_PER_SEQUENCE] == metrics["kl"]
    assert set(ppo.SPEC.curves) | set(ppo.SPEC.watched) <= set(logged[0])


def test_checkpoint_is_a_standard_hugging_face_folder(small_kl_run, tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, result = small_kl_run
    assert (result.checkpoint_dir / "model.safetensors").is_file()
    model = AutoModelForCausalLM.from_pretrained(result.checkpoint_dir, use_safetensors=True)
    tokenizer = AutoTokenizer.from_pretrained(result.checkpoint_dir)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    base = load_weights(tiny_models.base)
    trained = load_weights(result.checkpoint_dir)
    assert any(not torch.equal(base[name], trained[name]) for name in base)  # the policy did train
    assert model.config.vocab_size == len(tokenizer)


# ---------------------------------------------------------------------------------------------------------
# E2 — a huge beta keeps the KL near 0
# ---------------------------------------------------------------------------------------------------------


def exact_sequence_kl(checkpoint: Path, reference: Path, prompts: list[str], seed: int = 0) -> float:
    """Mean exact KL(policy || reference) of sampled responses, with the harness evaluator's code (PPO.md §3.3)."""
    from harness.generation.base import SamplingSettings
    from harness.generation.hf import HFGenerator
    from harness.metrics.kl import response_kl
    from harness.modeling import load_causal_lm

    generations = HFGenerator("cpu", batch_size=64).generate(
        checkpoint, prompts, 2, SamplingSettings(1.0, 0, 1.0, MAX_NEW_TOKENS), seed
    )
    kl = response_kl(
        load_causal_lm(checkpoint),
        load_causal_lm(reference),
        [g.prompt_ids for g in generations],
        [g.completion_ids for g in generations],
        pad_id=0,
    )["kl"]
    return sum(kl) / len(kl)


def test_e2_huge_kl_coefficient_keeps_kl_near_zero(tiny_models, tmp_path_factory):
    pinned, pinned_result = run_ppo(tiny_models, tmp_path_factory.mktemp("e2_pinned"), updates=12, kl_coef=50.0)
    free, free_result = run_ppo(tiny_models, tmp_path_factory.mktemp("e2_free"), updates=12, kl_coef=0.0)
    prompts = tiny_models.prompts[:64]
    pinned_kl = exact_sequence_kl(pinned_result.checkpoint_dir, tiny_models.base, prompts)
    free_kl = exact_sequence_kl(free_result.checkpoint_dir, tiny_models.base, prompts)
    # Measured: beta 50 -> exact KL 0.071 nats; beta 0 -> 16.1 nats; logged k1 KL at most 0.17.
    # Calibrated (PPO.md §5.2 allows it) above the spec's starting points of 0.05 and 0.1: with whitened
    # advantages and Adam, every step moves the policy by about the learning rate even when the advantages
    # are only KL noise, so the KL settles on a floor that scales with lr (0.028 nats at lr 5e-4), not with beta.
    assert pinned_kl < 0.15 and pinned_kl <= 0.1 * free_kl, (pinned_kl, free_kl)
    assert max(series(pinned, "kl")) <= 0.3  # objective/kl (k1, noisy) stays near 0 throughout
    pinned_gain = sum(series(pinned, "reward")[-4:]) / 4 - sum(series(pinned, "reward")[:4]) / 4
    free_gain = sum(series(free, "reward")[-4:]) / 4 - sum(series(free, "reward")[:4]) / 4
    assert pinned_gain < free_gain, (pinned_gain, free_gain)


@pytest.fixture(scope="module")
def confident_models(tiny_models, tmp_path_factory):
    """The fixture's models with a base whose output is peaked (final LayerNorm gain x10), as a pretrained
    model's is. The random base is near-uniform (entropy 2.76 of log 16 = 2.77) and stays so under LoRA:
    adapters reach the residual stream only through the final LayerNorm, whose gain and the tied output
    embeddings they do not train (measured: reward 0.06 -> 0.10 in 20 updates at any learning rate)."""
    from harness.modeling import load_causal_lm, load_tokenizer

    model = load_causal_lm(tiny_models.base)
    with torch.no_grad():
        model.transformer.ln_f.weight.mul_(10.0)
    folder = tmp_path_factory.mktemp("confident") / "base"
    save_checkpoint(model, load_tokenizer(tiny_models.base), folder)
    return types.SimpleNamespace(**{**vars(tiny_models), "base": folder})


def test_lora_policy_learns_with_the_adapter_disabled_network_as_its_reference(confident_models, tmp_path):
    """PPO with LoRA adapters: the reward rises, E3 still holds, the first update's policy is exactly its
    reference (the adapter starts at B = 0) and the reference stays the SFT model while the policy moves; the
    saved checkpoint is the merged full model with the adapter beside it."""
    lora = LoraConfig(enabled=True, r=8, alpha=16.0, stages=["ppo"])
    logged, result = run_ppo(confident_models, tmp_path, updates=12, lora=lora, learning_rate=3e-3)
    rewards = series(logged, "reward")
    first, last = sum(rewards[:3]) / 3, sum(rewards[-3:]) / 3
    # Measured: first three 0.26, last three 0.97 (entropy 0.98 -> 0.18).
    assert last >= 2 * first and last >= 0.6, rewards
    assert logged[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # policy == adapter-disabled reference before training
    assert logged[-1]["kl"] > 1.0  # measured 8.0: the reference did not follow the policy
    for metrics in logged:
        assert metrics["ppo/first_minibatch_ratio_deviation"] <= 1e-5
    assert (result.checkpoint_dir / "adapter" / "adapter_config.json").is_file()
    merged, base = load_weights(result.checkpoint_dir), load_weights(confident_models.base)
    assert merged.keys() == base.keys()  # a plain model: no lora_A / lora_B tensors left
    assert any(not torch.equal(merged[name], base[name]) for name in base)


def test_lora_dropout_is_off_so_old_and_new_log_probs_come_from_one_network(tiny_models, tmp_path):
    """`lora.dropout` 0.1: peft's adapter dropout acts in train mode only, so unless PPO turns it off the
    minibatch forwards (train mode) differ from the scoring forwards (eval mode) and the first minibatch's ratio
    is not 1. Update 1 cannot tell (the adapter starts at B = 0, so its dropout has nothing to drop); update 2
    starts from a trained adapter. Measured without the fix: max |rho - 1| = 0.015 at update 2's first minibatch."""
    lora = LoraConfig(enabled=True, r=4, alpha=8.0, dropout=0.1, stages=["ppo"])
    logged, _ = run_ppo(tiny_models, tmp_path, updates=2, rollouts=16, lora=lora, learning_rate=3e-3, ppo_epochs=2)
    for metrics in logged:
        assert metrics["ppo/first_minibatch_ratio_deviation"] <= 1e-5
        assert metrics["ppo/first_minibatch_approx_kl"] <= 1e-10
    assert logged[-1]["ppo/ratio_max"] > 1.0 + 1e-3  # the adapter did train between the two updates


# ---------------------------------------------------------------------------------------------------------
# E3 — ratio 1 and no clipping on the first minibatch of the first epoch
# ---------------------------------------------------------------------------------------------------------


def test_e3_first_minibatch_has_ratio_one_and_no_clipping(small_kl_run):
    logged, _ = small_kl_run
    for metrics in logged:  # the first minibatch of every update: no optimizer step has happened yet
        assert metrics["ppo/first_minibatch_ratio_deviation"] <= 1e-5  # max |rho - 1| on valid tokens
        assert metrics["ppo/first_minibatch_clip_fraction"] == 0.0
        assert metrics["ppo/first_minibatch_approx_kl"] <= 1e-10
        assert metrics["ppo/first_minibatch_value_clip_fraction"] == 0.0
    # The check can fail: later minibatches of the same updates do move the ratio and clip.
    assert max(series(logged, "ppo/ratio_max")) > 1.05
    assert max(series(logged, "clip_ratio/region_mean")) > 0.0


def test_e3_zero_learning_rate_keeps_ratio_one_and_parameters_unchanged(tiny_models, tmp_path):
    logged, result = run_ppo(tiny_models, tmp_path, updates=2, learning_rate=0.0, critic_learning_rate=0.0)
    for metrics in logged:  # every epoch and minibatch (stable-baselines#458 sanity check)
        assert abs(metrics["ppo/ratio_max"] - 1.0) <= 1e-5 and abs(metrics["ppo/ratio_min"] - 1.0) <= 1e-5
        assert metrics["clip_ratio/region_mean"] == 0.0
        assert metrics["ppo/value_clip_fraction"] == 0.0
    base, trained = load_weights(tiny_models.base), load_weights(result.checkpoint_dir)
    assert base.keys() == trained.keys()
    assert all(torch.equal(base[name], trained[name]) for name in base)


# ---------------------------------------------------------------------------------------------------------
# E4 — determinism
# ---------------------------------------------------------------------------------------------------------


def without_timings(logged):
    return [{name: value for name, value in metrics.items() if "seconds" not in name} for metrics in logged]


def test_e4_same_seed_gives_identical_results(tiny_models, tmp_path):
    first, first_result = run_ppo(tiny_models, tmp_path / "first", updates=3, seed=7)
    second, second_result = run_ppo(tiny_models, tmp_path / "second", updates=3, seed=7)
    other, other_result = run_ppo(tiny_models, tmp_path / "other", updates=3, seed=8)
    assert without_timings(first) == without_timings(second)
    assert first_result.spend == second_result.spend
    first_weights = load_weights(first_result.checkpoint_dir)
    second_weights = load_weights(second_result.checkpoint_dir)
    assert all(torch.equal(first_weights[name], second_weights[name]) for name in first_weights)
    # A different seed gives a different result.
    other_weights = load_weights(other_result.checkpoint_dir)
    assert without_timings(first) != without_timings(other)
    assert any(not torch.equal(first_weights[name], other_weights[name]) for name in first_weights)


# ---------------------------------------------------------------------------------------------------------
# E5 — the critic learns
# ---------------------------------------------------------------------------------------------------------


def test_e5_critic_loss_falls_with_a_frozen_policy(tiny_models, tmp_path):
    # Policy lr 0, critic lr > 0, 20 rollouts. The return is mostly a function of the prompt (its first word),
    # so a critic that reads the state at the right index (PPO.md §1 alignment) can explain it.
    logged, _ = run_ppo(
        tiny_models,
        tmp_path,
        updates=20,
        rollouts=32,
        reward=first_word_reward,
        learning_rate=0.0,
        critic_learning_rate=3e-3,
    )
    value_loss = series(logged, "ppo/value_loss")
    first, last = sum(value_loss[:5]) / 5, sum(value_loss[-5:]) / 5
    explained = series(logged, "ppo/explained_variance")
    # Measured: value loss 0.073 (first five) -> 0.0035 (last five); explained variance 0.98 at the end.
    assert last < 0.5 * first, value_loss
    assert explained[-1] > 0.5, explained
    assert max(abs(value) for value in series(logged, "kl")) < 1e-5  # the frozen policy stays the reference


# ---------------------------------------------------------------------------------------------------------
# E7 — gradient accumulation is exact
# ---------------------------------------------------------------------------------------------------------


def uneven_minibatch(policy, pad_id: int = 0, eos_id: int = 1) -> onpolicy.TrainingBatch:
    """8 rollouts with response lengths 1..8 in mixed order and left-padded prompts of 2-4 tokens."""
    generator = torch.Generator().manual_seed(3)
    rows, prompt_length, response_length = 8, 4, 8
    lengths = torch.tensor([1, 6, 3, 8, 2, 7, 4, 5])
    prompt_lengths = torch.tensor([2, 4, 3, 4, 2, 3, 4, 2])
    prompt_mask = torch.arange(prompt_length) >= (prompt_length - prompt_lengths).unsqueeze(1)
    prompt_ids = torch.where(prompt_mask, torch.randint(3, 16, (rows, prompt_length), generator=generator), pad_id)
    response_ids = torch.randint(3, 16, (rows, response_length), generator=generator)
    response_ids[torch.arange(rows), lengths - 1] = eos_id  # stop token at e_b = len_b - 1
    truncated = ppo_math.truncate_after_stop(response_ids, [eos_id], pad_id)
    mask = truncated.mask
    with torch.no_grad():
        inputs = logprobs.build_forward_inputs(
            prompt_ids, truncated.response_ids, prompt_mask=prompt_mask, response_mask=mask
        )
        logits = onpolicy.response_logits(policy, inputs, response_length)
        logp = logprobs.token_logprobs_from_logits(logits, truncated.response_ids, 1.0, mask=mask)
    # Old log-probs off by up to +-0.4 so that ratios spread over both sides of the clip range.
    logp_old = torch.where(mask, logp + 0.8 * (torch.rand(rows, response_length, generator=generator) - 0.5), 0.0)
    zero = torch.zeros(rows, response_length)
    return onpolicy.TrainingBatch(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=truncated.response_ids,
        mask=mask,
        logp_old=logp_old,
        values_old=torch.where(mask, torch.randn(rows, response_length, generator=generator) * 0.3, zero),
        advantages=torch.where(mask, torch.randn(rows, response_length, generator=generator), zero),
        returns=torch.where(mask, torch.randn(rows, response_length, generator=generator), zero),
        prompt_starts=prompt_length - prompt_lengths,
        response_lengths=truncated.lengths,
    )


def test_e7_one_micro_batch_of_8_equals_four_of_2(tiny_models):
    from accelerate import Accelerator

    from harness.modeling import load_causal_lm

    accelerator = Accelerator(cpu=True)
    policy = load_causal_lm(tiny_models.base).train()
    critic = ppo._load_critic("reward_model", tiny_models.base, tiny_models.reward_model, False).train()
    batch = uneven_minibatch(policy)
    settings = onpolicy.LossSettings(temperature=1.0, clip_epsilon=0.2, value_clip=0.2, entropy_coef=0.01)
    token_count = batch.mask.sum().float()

    def gradients(split_into_micro_batches_of: int, per_micro_batch_count: bool = False):
        policy.zero_grad(set_to_none=True)
        critic.zero_grad(set_to_none=True)
        if per_micro_batch_count:
            # The TRL bug PPO.md §2.8 warns about: a token-mean per micro-batch, divided by the number of
            # micro-batches (what Accelerate's gradient accumulation does).
            micro_batches = torch.arange(8).split(split_into_micro_batches_of)
            for rows in micro_batches:
                micro = batch.rows(rows)
                onpolicy.accumulate_minibatch_gradients(
                    policy, critic, micro, micro.mask.sum().float(), settings, split_into_micro_batches_of, accelerator
                )
            for parameter in (*policy.parameters(), *critic.parameters()):
                if parameter.grad is not None:
                    parameter.grad /= len(micro_batches)
        else:
            onpolicy.accumulate_minibatch_gradients(
                policy, critic, batch, token_count, settings, split_into_micro_batches_of, accelerator
            )
        return [p.grad.clone() for p in (*policy.parameters(), *critic.parameters()) if p.grad is not None]

    one_of_eight = gradients(8)
    four_of_two = gradients(2)
    assert len(one_of_eight) == len(four_of_two) > 0
    largest_difference = max((a - b).abs().max().item() for a, b in zip(one_of_eight, four_of_two))
    assert largest_difference <= 1e-6, largest_difference  # measured: 6e-8
    # The check can fail: per-micro-batch token means give a different gradient on these uneven lengths.
    wrong = gradients(2, per_micro_batch_count=True)
    assert max((a - b).abs().max().item() for a, b in zip(one_of_eight, wrong)) > 1e-4


def test_e7_end_to_end_update_is_the_same_for_any_micro_batch_size(tiny_models, tmp_path):
    whole, whole_result = run_ppo(
        tiny_models, tmp_path / "whole", updates=1, rollouts=8, minibatch_size=8, micro_batch_size=8, ppo_epochs=1
    )
    split, split_result = run_ppo(
        tiny_models, tmp_path / "split", updates=1, rollouts=8, minibatch_size=8, micro_batch_size=2, ppo_epochs=1
    )
    assert whole[0]["completions/min_length"] < whole[0]["completions/max_length"]  # uneven lengths
    whole_weights, split_weights = load_weights(whole_result.checkpoint_dir), load_weights(split_result.checkpoint_dir)
    for name in whole_weights:
        torch.testing.assert_close(whole_weights[name], split_weights[name], atol=1e-6, rtol=0.0)
    assert whole[0]["ppo/policy_loss"] == pytest.approx(split[0]["ppo/policy_loss"], abs=1e-6)
    assert whole[0]["ppo/value_loss"] == pytest.approx(split[0]["ppo/value_loss"], abs=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Bad settings are refused with a one-line error before training starts
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "key"),
    [
        ({"rollouts_per_update": 64, "minibatch_size": 128}, "minibatch_size"),
        ({"rollouts_per_update": 64, "minibatch_size": 24}, "minibatch_size"),
        ({"minibatch_size": 16, "micro_batch_size": 5}, "micro_batch_size"),
        ({"kl_estimator": "k2"}, "kl_estimator"),
        ({"kl_controller": "pid"}, "kl_controller"),
        ({"clip_epsilon": 0.0}, "clip_epsilon"),
        ({"rollouts_per_update": 1, "minibatch_size": 1, "micro_batch_size": 1}, "rollouts_per_update"),
    ],
)
def test_bad_config_is_refused_with_one_line_naming_the_key(values, key):
    with pytest.raises(ConfigError) as error:
        build(ppo.Config, values, "algorithms.ppo.")
    message = str(error.value)
    assert "\n" not in message and f"'algorithms.ppo.{key}'" in message, message


def test_defaults_are_valid():
    defaults = build(ppo.Config, {}, "algorithms.ppo.")
    assert defaults.rollouts_per_update % defaults.minibatch_size == 0
    assert ppo.Config().kl_controller == "fixed" and ppo.Config().entropy_coef == 0.0


def refuses_before_training(models, tmp_path, **model_paths) -> str:
    """Run train() on altered models; return its one-line error and check that no update was logged."""
    altered = types.SimpleNamespace(**{**vars(models), **model_paths})
    calls = []
    with pytest.raises(ValueError) as error:  # ConfigError is a ValueError
        run_ppo(altered, tmp_path / "out", updates=1, reward=lambda *a: calls.append(a) or [0.0] * 64)
    assert not calls and not (tmp_path / "out" / "model").exists()
    message = str(error.value)
    assert "\n" not in message
    return message


def test_pad_equal_to_eos_is_refused(tiny_models, tmp_path):
    from transformers import AutoTokenizer

    folder = tmp_path / "pad_is_eos"
    tokenizer = AutoTokenizer.from_pretrained(tiny_models.base)
    tokenizer.pad_token = EOS_TOKEN
    save_checkpoint(reloaded_causal_lm(tiny_models.base), tokenizer, folder)
    message = refuses_before_training(tiny_models, tmp_path, base=folder)
    assert "pad" in message and "EOS" in message


def reloaded_causal_lm(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder)


def other_vocabulary_reward_model(folder: Path, with_tokenizer: bool) -> Path:
    from transformers import AutoModelForSequenceClassification

    tokenizer = build_word_tokenizer(ORDINARY_WORDS + ["extra", "words", "here"], max_length=64)
    model = build_tiny_causal_lm(TINY_MODEL, tokenizer, seed=1)
    save_checkpoint(model, tokenizer, folder / "backbone")
    classifier = AutoModelForSequenceClassification.from_pretrained(folder / "backbone", num_labels=1)
    classifier.save_pretrained(folder / "reward_model", safe_serialization=True)
    if with_tokenizer:
        tokenizer.save_pretrained(folder / "reward_model")
    return folder / "reward_model"


def test_reward_model_with_another_vocabulary_and_no_tokenizer_is_refused(tiny_models, tmp_path):
    reward_model = other_vocabulary_reward_model(tmp_path, with_tokenizer=False)
    message = refuses_before_training(tiny_models, tmp_path, reward_model=reward_model)
    assert "vocabulary of 19 tokens" in message and "16" in message and "tokenizer" in message


def test_reward_model_with_its_own_other_tokenizer_gets_a_critic_from_the_policy(tiny_models, tmp_path):
    from harness.modeling import load_tokenizer

    tokenizer = load_tokenizer(tiny_models.base)
    reward_model = other_vocabulary_reward_model(tmp_path, with_tokenizer=True)
    assert ppo._critic_source(tiny_models.base, reward_model, tokenizer, False) == "policy"
    assert ppo._critic_source(tiny_models.base, tiny_models.reward_model, tokenizer, False) == "reward_model"
    critic = ppo._load_critic("policy", tiny_models.base, reward_model, False)
    assert torch.count_nonzero(critic.classifier.score.weight) == 0  # zero value head (PPO.md §2.1 option)


def test_not_enough_prompts_for_one_batch_is_refused(tiny_models, tmp_path):
    few = types.SimpleNamespace(**{**vars(tiny_models), "prompts": tiny_models.prompts[:10]})
    with pytest.raises(ConfigError, match="rollouts_per_update"):
        run_ppo(few, tmp_path, updates=1)


# ---------------------------------------------------------------------------------------------------------
# U20 on the trainer's own forward path: recomputed old log-probs are the sampling distribution
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_u20_recomputed_logprobs_match_generation_scores(tiny_models, temperature):
    # PPO.md §5.1 U20 with the trainer's GenerationConfig and forward inputs. The random tiny model samples
    # the pad token inside responses, so this also pins that such a token stays attended (see _forward_inputs).
    from harness.modeling import load_causal_lm, load_tokenizer

    tokenizer, policy = load_tokenizer(tiny_models.base), load_causal_lm(tiny_models.base)
    generation_config = onpolicy.rollout_generation_config(
        SamplingConfig(temperature=temperature, max_new_tokens=MAX_NEW_TOKENS), eos_id=1, pad_id=0
    )
    generation_config.output_scores, generation_config.return_dict_in_generate = True, True
    encoded = tokenizer(tiny_models.prompts[:32], return_tensors="pt", padding=True, padding_side="left")
    torch.manual_seed(0)
    with torch.inference_mode():
        output = policy.generate(**encoded, generation_config=generation_config)
    raw_responses = output.sequences[:, encoded.input_ids.shape[1] :]
    truncated = ppo_math.truncate_after_stop(raw_responses, [1], 0)
    # With top_k=0, top_p=1 the processed scores are logits / T: their log-softmax is the sampling distribution.
    sampled_logprobs = torch.log_softmax(torch.stack(output.scores, dim=1).float(), dim=-1)
    sampled_logprobs = sampled_logprobs.gather(-1, raw_responses.unsqueeze(-1)).squeeze(-1)
    with torch.no_grad():
        inputs = logprobs.build_forward_inputs(
            encoded.input_ids, truncated.response_ids, prompt_mask=encoded.attention_mask, response_mask=truncated.mask
        )
        logits = onpolicy.response_logits(policy, inputs, truncated.response_ids.shape[1])
        recomputed = logprobs.token_logprobs_from_logits(
            logits, truncated.response_ids, temperature, mask=truncated.mask
        )
    difference = torch.where(truncated.mask, sampled_logprobs - recomputed, 0.0).abs().max().item()
    assert difference <= 1e-4, difference  # measured: 5e-7
    assert bool((truncated.response_ids[truncated.mask] == 0).any())  # a sampled pad token was scored correctly


def test_critic_keeps_a_trained_score_bias_that_the_bias_free_head_would_drop(tiny_models, tmp_path):
    # PPO.md §2.1 "RM head bias" (trl#1783): AutoModelForSequenceClassification's score layer has no bias, so a
    # trained score.bias is dropped on load with only a warning; the critic restores it.
    import shutil

    from safetensors.torch import load_file, save_file

    reward_model = tmp_path / "reward_model_with_bias"
    shutil.copytree(tiny_models.reward_model, reward_model)
    weights = load_file(str(reward_model / "model.safetensors"))
    weights["score.bias"] = torch.tensor([0.75])
    save_file(weights, str(reward_model / "model.safetensors"), metadata={"format": "pt"})
    critic = ppo._load_critic("reward_model", tiny_models.base, reward_model, False)
    assert critic.classifier.score.bias is not None
    assert critic.classifier.score.bias.item() == 0.75
    torch.testing.assert_close(critic.classifier.score.weight, weights["score.weight"])


def test_optional_paths_adaptive_kl_warmup_entropy_whitening_and_early_stop(tiny_models, tmp_path):
    logged, result = run_ppo(
        tiny_models,
        tmp_path,
        updates=2,
        kl_coef=0.01,
        kl_controller="adaptive",
        kl_target=6.0,
        kl_horizon=10000.0,
        critic_warmup_updates=1,
        entropy_coef=0.01,
        whiten_rewards=True,
        score_clip=0.1,
        target_kl=1e-9,
    )
    first, second = logged
    # PPO.md §2.10, U18: KL 0 in update 1 (policy = reference) -> e = -0.2, beta *= 1 - 0.2 * 64 / 10000.
    assert first["ppo/kl_coef"] == 0.01
    assert second["ppo/kl_coef"] == pytest.approx(0.01 * (1 - 0.2 * 64 / 10000), rel=1e-9)
    # Critic warm-up (PPO.md §2.11): the policy does not move in update 1, so no epoch stops early there.
    assert first["learning_rate"] == 0.0 and first["ppo/ratio_max"] == pytest.approx(1.0, abs=1e-6)
    assert first["ppo/optimizer_steps"] == 4 * 2
    # target_kl: update 2 stops after its first epoch (M = 2 optimizer steps).
    assert second["ppo/optimizer_steps"] == 2 and result.spend["optimizer_steps"] == 10
    assert second["ppo/entropy_bonus"] > 0 and second["loss"] == pytest.approx(
        second["ppo/policy_loss"] - 0.01 * second["ppo/entropy_bonus"]
    )
    assert max(first["reward"], second["reward"]) <= 0.1  # score_clip
    assert all(math.isfinite(value) for metrics in logged for value in metrics.values())
