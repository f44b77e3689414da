"""The online algorithms trained by TRL (dr_grpo, dapo, gspo, rloo, online_dpo, and grpo's settings) check
what runs: each trains for a few steps on tiny models, the trainer it built is observed (its arguments, and
the advantages or loss it computed on the batch it sampled, by wrapping TRL's methods without changing
them), and what TRL computed is compared with values worked out by hand from the rewards fed to it.
"""

from __future__ import annotations

import dataclasses
import math
import random
from pathlib import Path

import pytest
from contexts import config_of, unit_context
from shared_models import WORDS


class FixedRewards:
    """A training reward that ignores the text and hands out `values` in order, one per completion, so that
    the rewards TRL groups are known in advance (it also records the calls)."""

    def __init__(self, values):
        self.values = list(values)
        self.calls = []

    def __call__(self, prompts, completions, stopped):
        rewards = [
            self.values[(len(self.calls) * len(completions) + i) % len(self.values)] for i in range(len(completions))
        ]
        self.calls.append({"completions": list(completions), "stopped": list(stopped), "rewards": rewards})
        return rewards


def train(
    algorithm,
    config,
    models: Path,
    output_dir: Path,
    monkeypatch,
    *,
    prompts_budget: int,
    reward,
    checkpoint_every: int = 0,
    snapshots: int = 0,
):
    """algorithm's train() on the tiny models; returns (the trainer it trained, the logged metrics by step,
    the TrainResult). The trainer is observed through trl_support.train_resuming, which every one calls."""
    from harness.algorithms import spec, trl_support

    trainers = []
    original = trl_support.train_resuming

    def observed(trainer, folder):
        trainers.append(trainer)
        original(trainer, folder)

    monkeypatch.setattr(trl_support, "train_resuming", observed)
    rng = random.Random(0)
    prompts = [" ".join(rng.choice(WORDS[:8]) for _ in range(rng.randint(2, 4))) for _ in range(32)]
    logged: dict[int, dict] = {}
    context = unit_context(
        algorithm,
        config,
        base_dir=models / "base",
        output_dir=output_dir,
        prompts_budget=prompts_budget,
        max_new_tokens=5,
        prompts=prompts,
        reward=reward,
        log=lambda step, metrics: logged.setdefault(step, {}).update(metrics),
        snapshots=snapshots,
        checkpoint_every=checkpoint_every,
    )
    result = spec.algorithm(algorithm).train(context)
    assert len(trainers) == 1
    return trainers[0], logged, result


def observe(monkeypatch, cls, method: str):
    """Wrap cls.method so that every call's (arguments, result) is recorded; behaviour unchanged."""
    calls = []
    original = getattr(cls, method)

    def recorded(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls.append((args, kwargs, result))
        return result

    monkeypatch.setattr(cls, method, recorded)
    return calls


def assert_arguments(trainer, expected: dict):
    ran = {key: getattr(trainer.args, key) for key in expected}
    assert ran == expected


def assert_close(actual, expected, tolerance=1e-5):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        assert a == pytest.approx(e, abs=tolerance), (actual, expected)


def leave_one_out(group):
    return [r - (sum(group) - r) / (len(group) - 1) for r in group]


def sample_std(group):
    mean = sum(group) / len(group)
    return math.sqrt(sum((r - mean) ** 2 for r in group) / (len(group) - 1))


# Two prompts x four completions per step, in TRL's order (a prompt's completions are consecutive).
REWARDS = [1.0, 3.0, 0.0, 8.0, 2.0, 2.0, 5.0, -1.0]


@pytest.mark.slow
def test_rloo_trains_with_its_settings_and_leave_one_out_advantages(tiny_models, tmp_path, monkeypatch):
    from trl import RLOOTrainer

    from harness.algorithms import rloo

    scored = observe(monkeypatch, RLOOTrainer, "_generate_and_score_completions")
    config = rloo.Config(beta=0.0, num_generations=4, prompts_per_step=2, normalize_advantages=False)
    trainer, logged, result = train(
        "rloo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=4, reward=FixedRewards(REWARDS)
    )
    assert_arguments(
        trainer,
        {
            "beta": 0.0,
            "num_generations": 4,
            "normalize_advantages": False,
            "num_iterations": 1,
            "steps_per_generation": 1,
            "epsilon": 0.2,
            "epsilon_high": 0.2,
            "mask_truncated_completions": False,
            "reward_clip_range": None,
            "per_device_train_batch_size": 8,
            "temperature": 1.0,
            "max_completion_length": 5,
        },
    )
    assert result.final_step == 2 and result.spend["completions_generated"] == 16
    # The paper's leave-one-out baseline, by hand: each completion's reward minus the mean of its 3 siblings'.
    by_hand = leave_one_out(REWARDS[:4]) + leave_one_out(REWARDS[4:])
    assert by_hand[:4] == pytest.approx([1 - 11 / 3, 0.0, -4.0, 8 - 4 / 3])
    assert len(scored) == 2
    for _, _, output in scored:
        assert_close(output["advantages"].tolist(), by_hand)
    assert logged[2]["budget_fraction"] == 1.0


@pytest.mark.slow
def test_rloo_logs_sequence_kl_in_nats(tiny_models, tmp_path, monkeypatch):
    """With beta > 0 RLOO logs `kl` as a token mean; kl_per_sequence is it times the mean length."""
    from harness.algorithms import rloo

    config = rloo.Config(beta=0.1, num_generations=2, prompts_per_step=2)
    _, logged, _ = train(
        "rloo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=4, reward=FixedRewards([1.0, 0.0])
    )
    step = logged[2]
    assert step["kl_per_sequence"] == pytest.approx(step["kl"] * step["completions/mean_length"])
    assert step["kl"] != 0.0  # one update has moved the policy off the reference


@pytest.mark.slow
def test_dr_grpo_advantages_are_not_scaled_by_the_group_std(tiny_models, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    scored = observe(monkeypatch, GRPOTrainer, "_generate_and_score_completions")
    config = config_of("dr_grpo", num_generations=4, prompts_per_step=2)
    trainer, _, _ = train(
        "dr_grpo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=2, reward=FixedRewards(REWARDS)
    )
    assert_arguments(
        trainer,
        {
            "loss_type": "dr_grpo",
            "scale_rewards": "none",
            "beta": 0.04,
            "epsilon": 0.2,
            "epsilon_high": 0.2,
            "importance_sampling_level": "token",
            "mask_truncated_completions": False,
            "use_bias_correction_kl": True,
            "num_iterations": 1,
            "steps_per_generation": 1,
            "top_entropy_quantile": 1.0,
            "delta": None,
            "entropy_coef": 0.0,
        },
    )
    # A = r - mean(group), no division by the group's std (the paper's correction).
    by_hand = [r - sum(REWARDS[:4]) / 4 for r in REWARDS[:4]] + [r - sum(REWARDS[4:]) / 4 for r in REWARDS[4:]]
    ((_, _, output),) = scored
    assert_close(output["advantages"].tolist(), by_hand)


@pytest.mark.slow
def test_dapo_clips_higher_masks_truncation_and_scales_by_the_group_std(tiny_models, tmp_path, monkeypatch):
    from trl import GRPOTrainer

    scored = observe(monkeypatch, GRPOTrainer, "_generate_and_score_completions")
    reward = FixedRewards(REWARDS)
    config = config_of("dapo", num_generations=4, prompts_per_step=2)
    trainer, _, _ = train("dapo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=2, reward=reward)
    assert_arguments(
        trainer,
        {
            "loss_type": "dapo",
            "scale_rewards": "group",
            "epsilon": 0.2,
            "epsilon_high": 0.28,
            "mask_truncated_completions": True,
            "importance_sampling_level": "token",
            "beta": 0.04,
        },
    )
    assert trainer.epsilon_low == 0.2 and trainer.epsilon_high == 0.28  # what its loss clips with
    by_hand = []
    for group in (REWARDS[:4], REWARDS[4:]):
        mean = sum(group) / 4
        by_hand += [(r - mean) / (sample_std(group) + 1e-4) for r in group]  # TRL's std: Bessel-corrected
    ((_, _, output),) = scored
    assert_close(output["advantages"].tolist(), by_hand)
    # Overlong filtering: a completion the reward saw as not stopped has no token left in the loss.
    stopped = reward.calls[0]["stopped"]
    kept = output["completion_mask"].sum(dim=1).tolist()
    assert [count > 0 for count in kept] == stopped


@pytest.mark.slow
def test_gspo_clips_one_sequence_level_ratio_per_completion(tiny_models, tmp_path, monkeypatch):
    """On the second minibatch of a rollout the policy has moved: the loss TRL computed there is the paper's
    per-sequence objective with s_i = exp(mean_t log π/π_old), not the token-level one."""
    import torch
    from trl import GRPOTrainer

    losses = []
    original = GRPOTrainer._compute_loss

    def observed(self, model, inputs):
        loss = original(self, model, inputs)
        ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with torch.no_grad():  # the same weights the loss saw: the optimizer has not stepped yet
            logps, _, _ = self._get_per_token_logps_and_entropies(
                model, ids, attention, inputs["completion_ids"].size(1)
            )
        losses.append(
            (
                loss.item(),
                logps,
                inputs.get("old_per_token_logps"),
                inputs["advantages"],
                inputs["completion_mask"].float(),
            )
        )
        return loss

    monkeypatch.setattr(GRPOTrainer, "_compute_loss", observed)
    config = config_of(
        "gspo", beta=0.0, num_generations=2, prompts_per_step=2, steps_per_generation=2, learning_rate=1e-2
    )
    trainer, _, _ = train(
        "gspo",
        config,
        tiny_models,
        tmp_path,
        monkeypatch,
        prompts_budget=4,
        reward=FixedRewards([1.0, 0.0, 0.0, 2.0, 3.0, 1.0, 0.5, 0.0]),
    )
    assert_arguments(
        trainer,
        {
            "importance_sampling_level": "sequence",
            "loss_type": "grpo",
            "epsilon": 3e-4,
            "epsilon_high": 4e-4,
            "steps_per_generation": 2,
            "beta": 0.0,
        },
    )
    low, high = 1 - 3e-4, 1 + 4e-4
    stale = losses[1::2]  # the second minibatch of each rollout
    assert len(losses) == 2 and len(stale) == 1
    loss, logps, old, advantages, mask = stale[0]
    assert old is not None
    log_ratio = (logps - old) * mask
    sequence = torch.exp(log_ratio.sum(1) / mask.sum(1))
    assert (sequence - 1).abs().max() > 4e-4  # the policy moved: the clip has something to do
    per_sequence = -torch.min(sequence * advantages, sequence.clamp(low, high) * advantages)
    assert loss == pytest.approx(per_sequence.mean().item(), abs=1e-6)
    # The token-level objective on the same batch gives another number, so the check above discriminates.
    token = torch.exp(logps - old)
    per_token = -torch.min(token * advantages[:, None], token.clamp(low, high) * advantages[:, None])
    token_level = ((per_token * mask).sum(1) / mask.sum(1)).mean().item()
    assert abs(token_level - loss) > 1e-6


@pytest.mark.slow
def test_grpo_sets_every_result_changing_setting_from_its_config(tiny_models, tmp_path, monkeypatch):
    from harness.algorithms import grpo

    config = grpo.Config(
        num_generations=2,
        prompts_per_step=2,
        loss_type="grpo",
        scale_rewards="batch",
        epsilon=0.1,
        epsilon_high=0.3,
        mask_truncated_completions=True,
        importance_sampling_level="sequence",
        use_bias_correction_kl=False,
    )
    trainer, _, _ = train(
        "grpo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=2, reward=FixedRewards([1.0, 0.0])
    )
    fields = (
        "beta",
        "num_generations",
        "loss_type",
        "scale_rewards",
        "epsilon",
        "epsilon_high",
        "importance_sampling_level",
        "mask_truncated_completions",
        "num_iterations",
        "steps_per_generation",
        "use_bias_correction_kl",
    )
    # Each is a Config field (so the cell logs it as a param) and reached GRPOConfig unchanged.
    assert set(fields) <= {field.name for field in dataclasses.fields(grpo.Config)}
    assert_arguments(trainer, {name: getattr(config, name) for name in fields})


@pytest.mark.slow
def test_online_dpo_loss_and_kl_match_a_hand_computation(tiny_models, tmp_path, monkeypatch):
    """The pair of each prompt is labelled by the training reward (the higher one chosen); TRL's loss on it is
    mean -log σ(β·[(log π_c - log π_r) - (log π_ref,c - log π_ref,r)]), sums over the completion's tokens; and
    kl_per_sequence is the mean over completions of Σ_t (log π - log π_ref)."""
    from trl.experimental.online_dpo import OnlineDPOTrainer

    from harness.algorithms import online_dpo

    forwards = observe(monkeypatch, OnlineDPOTrainer, "_forward")
    steps = observe(monkeypatch, OnlineDPOTrainer, "training_step")
    reward = FixedRewards([0.0, 5.0, 2.0, 1.0, 4.0, 3.0, 1.0, 6.0])  # no ties: the label is unambiguous
    beta = 0.3
    config = online_dpo.Config(beta=beta, prompts_per_step=4, learning_rate=1e-2)
    trainer, logged, result = train(
        "online_dpo", config, tiny_models, tmp_path, monkeypatch, prompts_budget=8, reward=reward
    )
    assert_arguments(
        trainer,
        {
            "beta": beta,
            "loss_type": "sigmoid",
            "missing_eos_penalty": None,
            "per_device_train_batch_size": 4,
            "max_new_tokens": 5,
            "temperature": 1.0,
            "top_k": 0,
            "top_p": 1.0,
        },
    )
    assert result.final_step == 2 and result.spend["completions_generated"] == 16
    assert len(steps) == 2 and len(forwards) == 4  # per step: the policy, then the reference
    for step in range(2):
        arguments, _, policy = forwards[2 * step]  # (model, prompt_ids, prompt_mask, completion_ids, mask, ...)
        _, _, reference = forwards[2 * step + 1]
        completion_ids, mask = arguments[3], arguments[4].float()
        policy_sums = (policy.detach() * mask).sum(1).tolist()
        reference_sums = (reference * mask).sum(1).tolist()
        rewards = reward.calls[step]["rewards"]
        losses = []
        for i in range(4):  # completion i and i + 4 answer prompt i
            chosen, rejected = (i, i + 4) if rewards[i] >= rewards[i + 4] else (i + 4, i)
            margin = (policy_sums[chosen] - policy_sums[rejected]) - (reference_sums[chosen] - reference_sums[rejected])
            losses.append(-math.log(1 / (1 + math.exp(-beta * margin))))
        assert steps[step][2].item() == pytest.approx(sum(losses) / 4, abs=1e-5)
        kl = sum(p - r for p, r in zip(policy_sums, reference_sums)) / 8
        assert logged[step + 1]["kl_per_sequence"] == pytest.approx(kl, abs=1e-4)
        # The judge saw a completion as stopped exactly when TRL kept an EOS in it.
        eos = trainer.processing_class.eos_token_id
        assert reward.calls[step]["stopped"] == [eos in ids for ids in completion_ids.tolist()]
    assert result.spend["tokens_generated"] > 0


@pytest.mark.slow
def test_online_dpo_snapshots_and_resumes(tiny_models, tmp_path, monkeypatch):
    """OnlineDPOTrainer saves its own checkpoints: an interrupted run picks up where it stopped."""
    from harness.algorithms import online_dpo

    config = online_dpo.Config(prompts_per_step=2)
    _, logged, result = train(
        "online_dpo",
        config,
        tiny_models,
        tmp_path,
        monkeypatch,
        prompts_budget=4,
        reward=FixedRewards([1.0, 0.0]),
        checkpoint_every=1,
        snapshots=1,
    )
    assert result.final_step == 2 and (tmp_path / "snapshots" / "step-1" / "model.safetensors").is_file()
    assert not list(tmp_path.rglob("training_args.bin"))
    _, logged, result = train(
        "online_dpo",
        config,
        tiny_models,
        tmp_path,
        monkeypatch,
        prompts_budget=6,
        reward=FixedRewards([1.0, 0.0]),
        checkpoint_every=1,
    )
    assert result.final_step == 3 and sorted(logged) == [3]  # steps 1-2 were not trained again
    # Tokens of all three steps: the lengths the judge logged survive in the resumed log history.
    assert len([entry for entry in _history(tmp_path) if "completions/mean_length" in entry]) == 3


def _history(output_dir: Path) -> list[dict]:
    import json

    (checkpoint,) = sorted((output_dir / "trainer").glob("checkpoint-*"))
    return json.loads((checkpoint / "trainer_state.json").read_text())["log_history"]


@pytest.mark.parametrize(
    "algorithm, values, key",
    [
        ("dapo", {"epsilon": 0.2, "epsilon_high": 0.1}, "epsilon_high"),
        ("gspo", {"epsilon": 3e-4, "epsilon_high": 1e-4}, "epsilon_high"),
        ("grpo", {"importance_sampling_level": "group"}, "importance_sampling_level"),
        ("dr_grpo", {"scale_rewards": "sometimes"}, "scale_rewards"),
        ("rloo", {"num_generations": 1}, "num_generations"),
        ("online_dpo", {"beta": 0.0}, "beta"),
    ],
)
def test_a_bad_value_names_its_key(algorithm, values, key):
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match=f"'algorithms.{algorithm}.{key}'"):
        config_of(algorithm, **values)


@pytest.mark.parametrize("algorithm", ["grpo", "dapo", "rloo", "online_dpo"])
def test_trl_vllm_rollouts_are_refused_on_cpu_in_one_line_before_any_model(algorithm, tmp_path):
    """TRL's colocated vLLM fails on CPU at its first weight sync: rollouts.generator=vllm is refused there, naming
    the switch, before anything is loaded (the base folder does not even exist)."""
    import torch

    from harness.algorithms import spec
    from harness.config import RolloutsConfig
    from harness.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs TRL's vLLM rollouts")
    context = unit_context(
        algorithm,
        config_of(algorithm),
        base_dir=tmp_path / "no-model",
        output_dir=tmp_path / "out",
        prompts_budget=8,
        max_new_tokens=4,
        prompts=["the cat"],
    )
    context.suite.rollouts = RolloutsConfig(generator="vllm")
    with pytest.raises(ConfigError) as error:
        spec.algorithm(algorithm).train(context)
    message = str(error.value)
    assert "'rollouts.generator'" in message and "CUDA" in message and "\n" not in message, message
