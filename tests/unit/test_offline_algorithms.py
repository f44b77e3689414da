"""The offline preference family (ipo, simpo, kto, and dpo's two defects) checked against what runs.

Each training test runs the algorithm's own train() for two optimizer steps on tiny models, observes the
trainer's training_step (the batch it received, the policy's weights before the step, the loss it returned),
and recomputes that loss by hand from the batch with a plain forward pass of the policy (and of the SFT
reference), so a wrong loss type, normalisation, weight or data wiring in the product or in TRL shows up.
Step 2 is the one checked: after one update the policy differs from the reference, so the log-ratios are not
all zero.
"""

from __future__ import annotations

import random
import types
from pathlib import Path

import pytest
from contexts import config_of, unit_context
from shared_models import WORDS


def preference_pairs(count: int = 8) -> list[dict]:
    """Pairs whose completions differ in length, so that length normalisation changes the loss."""
    rng = random.Random(0)

    def words(n):
        return " ".join(rng.choice(WORDS[:8]) for _ in range(n))

    return [
        {
            "prompt": words(rng.randint(2, 3)),
            "chosen": " " + words(rng.randint(1, 2)) + " good",
            "rejected": " " + words(rng.randint(3, 6)),
        }
        for _ in range(count)
    ]


def context_for(algorithm: str, config, models: Path, output_dir: Path, prompts_budget: int, pairs=None):

    pairs = preference_pairs() if pairs is None else pairs
    return unit_context(
        algorithm,
        config,
        base_dir=models / "base",
        reward_model_dir=models / "reward_model",
        output_dir=output_dir,
        prompts_budget=prompts_budget,
        max_new_tokens=6,
        prompts=[pair["prompt"] for pair in pairs],
        pairs=pairs,
    )


@pytest.fixture
def steps_taken(monkeypatch):
    """Every training_step of any TRL trainer: the trainer, its batch, the policy's weights before the step and
    the loss it returned (observed, not replaced)."""
    from transformers import Trainer

    taken = []
    original = Trainer.training_step

    def observed(self, model, inputs, num_items_in_batch=None):
        weights = {name: value.detach().clone() for name, value in model.state_dict().items()}
        batch = {name: value.clone() if hasattr(value, "clone") else value for name, value in inputs.items()}
        loss = original(self, model, inputs, num_items_in_batch)
        taken.append(types.SimpleNamespace(trainer=self, inputs=batch, weights=weights, loss=float(loss)))
        return loss

    monkeypatch.setattr(Trainer, "training_step", observed)
    return taken


def causal_lm(models: Path, weights=None):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(models / "base")
    if weights is not None:
        model.load_state_dict(weights)
    return model.eval()


def completion_logps(model, input_ids, attention_mask, completion_mask):
    """Sum of log π(token | prefix) over the completion tokens of each row: a plain forward and log-softmax."""
    import torch

    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].double()
    token_logps = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_logps * completion_mask[:, 1:]).sum(dim=1)


def pair_logps(models: Path, step):
    """(policy, reference) summed completion log-probs of a preference batch, and completion lengths."""
    batch = step.inputs
    rows = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    policy = completion_logps(causal_lm(models, step.weights), *rows)
    reference = completion_logps(causal_lm(models), *rows)
    return policy, reference, batch["completion_mask"].sum(dim=1).double()


def assert_batch_is_pairs(step, pairs, tokenizer_dir: Path):
    """The first half of the batch holds prompt + chosen + EOS, the second prompt + rejected + EOS, row by row."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids, mask = step.inputs["input_ids"], step.inputs["attention_mask"]
    rows = [tuple(row[m.bool()].tolist()) for row, m in zip(ids, mask)]
    half = len(rows) // 2
    encoded = {
        (
            tuple(tokenizer(p["prompt"] + p["chosen"] + tokenizer.eos_token)["input_ids"]),
            tuple(tokenizer(p["prompt"] + p["rejected"] + tokenizer.eos_token)["input_ids"]),
        )
        for p in pairs
    }
    assert set(zip(rows[:half], rows[half:])) <= encoded


def test_ipo_trains_on_trl_ipo_loss_with_per_token_normalised_margins(tiny_models, tmp_path, steps_taken):
    from harness.algorithms.spec import algorithm

    config = config_of("ipo", beta=0.5, batch_size=4)
    result = algorithm("ipo").train(context_for("ipo", config, tiny_models, tmp_path, prompts_budget=8))
    assert result.final_step == 2 and len(steps_taken) == 2
    assert (tmp_path / "model" / "model.safetensors").is_file()
    step = steps_taken[1]
    assert_batch_is_pairs(step, preference_pairs(), tiny_models / "base")

    policy, reference, lengths = pair_logps(tiny_models, step)
    ratios = policy - reference
    chosen, rejected = (ratios / lengths).chunk(2)
    expected = ((chosen - rejected - 1 / (2 * config.beta)) ** 2).mean().item()  # Eq. 17, per-token margins
    assert step.loss == pytest.approx(expected, rel=1e-5)
    # The check can tell: without the length normalisation the loss would differ.
    whole_chosen, whole_rejected = ratios.chunk(2)
    unnormalised = ((whole_chosen - whole_rejected - 1 / (2 * config.beta)) ** 2).mean().item()
    assert abs(unnormalised - expected) > 1e-3


def test_simpo_loss_is_the_papers_length_normalised_reference_free_margin(tiny_models, tmp_path, steps_taken):
    import torch

    from harness.algorithms import simpo

    config = simpo.Config(beta=2.0, gamma=1.0, batch_size=4)
    result = simpo.train(context_for("simpo", config, tiny_models, tmp_path, prompts_budget=8))
    assert result.final_step == 2 and len(steps_taken) == 2
    trainer = steps_taken[0].trainer
    assert trainer.ref_model is None  # reference-free: TRL loaded no second model
    assert "ref_chosen_logps" not in trainer.train_dataset.column_names  # and ran no reference pass
    step = steps_taken[1]
    assert_batch_is_pairs(step, preference_pairs(), tiny_models / "base")

    policy, _, lengths = pair_logps(tiny_models, step)
    chosen, rejected = (policy / lengths).chunk(2)
    gamma = config.gamma
    # Eq. 6 of arXiv:2405.14734: −log σ(β/|y_w| log π(y_w|x) − β/|y_l| log π(y_l|x) − γ)
    expected = -torch.nn.functional.logsigmoid(config.beta * chosen - config.beta * rejected - gamma).mean().item()
    assert step.loss == pytest.approx(expected, rel=1e-5)
    # The check can tell: with summed (not length-normalised) log-probs, or without γ, the loss would differ.
    whole_chosen, whole_rejected = policy.chunk(2)
    summed = -torch.nn.functional.logsigmoid(config.beta * (whole_chosen - whole_rejected) - gamma).mean().item()
    no_gamma = -torch.nn.functional.logsigmoid(config.beta * (chosen - rejected)).mean().item()
    assert abs(summed - expected) > 1e-3 and abs(no_gamma - expected) > 1e-3


def test_kto_unpairs_chosen_as_desirable_and_rejected_as_undesirable_in_a_seeded_order():
    from harness.algorithms.kto import unpaired_examples

    pairs = preference_pairs(8)
    examples = unpaired_examples(pairs, 8, seed=0)
    desirable = [e for e in examples if e["label"] is True]
    undesirable = [e for e in examples if e["label"] is False]
    assert len(desirable) == len(undesirable) == 8 and len(examples) == 16
    assert sorted((e["prompt"], e["completion"]) for e in desirable) == sorted(
        (p["prompt"], p["chosen"]) for p in pairs
    )
    assert sorted((e["prompt"], e["completion"]) for e in undesirable) == sorted(
        (p["prompt"], p["rejected"]) for p in pairs
    )
    assert unpaired_examples(pairs, 8, seed=0) == examples  # the cell's seed fixes the order
    assert [e["label"] for e in examples] != [True, False] * 8  # shuffled: not each pair's two side by side
    # A budget of 3 pairs out of 8: both examples of exactly 3 pairs.
    budgeted = unpaired_examples(pairs, 3, seed=0)
    assert len(budgeted) == 6 and sum(e["label"] for e in budgeted) == 3
    kept = {(e["prompt"], e["completion"]) for e in budgeted}
    assert sum((p["prompt"], p["chosen"]) in kept and (p["prompt"], p["rejected"]) in kept for p in pairs) == 3


def test_kto_trains_on_the_unpaired_examples_with_trls_kl_reference_point(tiny_models, tmp_path, steps_taken):
    import torch

    from harness.algorithms import kto

    config = kto.Config(beta=0.1, desirable_weight=1.0, undesirable_weight=1.5, batch_size=4)
    result = kto.train(context_for("kto", config, tiny_models, tmp_path, prompts_budget=8))
    assert result.final_step == 2 and len(steps_taken) == 2
    assert result.spend["prompts_seen"] == 8  # two steps of 4 pairs: 16 examples
    trainer = steps_taken[0].trainer
    assert sum(trainer.train_dataset["label"]) == 8 and len(trainer.train_dataset) == 16
    # The trainer consumed the seeded order, 2 x batch_size examples per step.
    trained_labels = [label for step in steps_taken for label in step.inputs["label"].tolist()]
    assert trained_labels == [e["label"] for e in kto.unpaired_examples(preference_pairs(), 8, seed=0)]

    step, batch = steps_taken[1], steps_taken[1].inputs
    policy, reference = causal_lm(tiny_models, step.weights), causal_lm(tiny_models)
    main = (batch["input_ids"], batch["attention_mask"], batch["completion_mask"])
    mismatched = (batch["KL_input_ids"], batch["KL_attention_mask"], batch["KL_completion_mask"])
    ratios = completion_logps(policy, *main) - completion_logps(reference, *main)
    z0 = (completion_logps(policy, *mismatched) - completion_logps(reference, *mismatched)).mean().clamp(min=0)
    assert z0 > 1e-3  # the reference point is exercised, not clamped away
    desirable = batch["label"].bool()
    losses = torch.where(
        desirable,
        config.desirable_weight * (1 - torch.sigmoid(config.beta * (ratios - z0))),
        config.undesirable_weight * (1 - torch.sigmoid(config.beta * (z0 - ratios))),
    )
    assert step.loss == pytest.approx(losses.mean().item(), rel=1e-5)
    # The mismatched completions are the batch's own, rotated by one (TRL's KL estimate of the paper's §4.1).
    completions = [tuple(row[m.bool()].tolist()) for row, m in zip(batch["input_ids"], batch["completion_mask"])]
    kl_completions = [
        tuple(row[m.bool()].tolist()) for row, m in zip(batch["KL_input_ids"], batch["KL_completion_mask"])
    ]
    assert kl_completions == completions[-1:] + completions[:-1]


def test_dpo_refuses_label_smoothing_that_its_loss_would_ignore():
    from harness.config import load_config
    from harness.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config("tiny", ["algorithms.dpo.label_smoothing=0.1"])
    message = str(error.value)
    assert "\n" not in message and message.startswith("'algorithms.dpo.label_smoothing' is ignored by TRL's 'sigmoid'")
    assert load_config("tiny", ["algorithms.dpo.label_smoothing=0.1", "algorithms.dpo.loss_type=robust"])
    assert load_config("tiny", ["algorithms.dpo.label_smoothing=0"])


def test_dpo_label_smoothing_reaches_the_robust_loss(tiny_models, tmp_path, steps_taken):
    import torch.nn.functional as F

    from harness.algorithms import dpo

    config = dpo.Config(loss_type="robust", label_smoothing=0.2, beta=0.1, batch_size=4)
    dpo.train(context_for("dpo", config, tiny_models, tmp_path, prompts_budget=8))
    step = steps_taken[1]
    policy, reference, _ = pair_logps(tiny_models, step)
    chosen, rejected = (policy - reference).chunk(2)
    logits, eps = config.beta * (chosen - rejected), config.label_smoothing
    # rDPO (arXiv:2403.00409): the unbiased loss under a flip rate eps
    expected = (((1 - eps) * -F.logsigmoid(logits) + eps * F.logsigmoid(-logits)) / (1 - 2 * eps)).mean().item()
    assert step.loss == pytest.approx(expected, rel=1e-5)
    assert abs(-F.logsigmoid(logits).mean().item() - expected) > 1e-4  # ε changed the loss


def sampled(prompts, patterns):
    """Generation objects: per prompt two samples, each (text, stopped), as HFGenerator returns them."""
    from harness.generation.base import Generation

    generations = []
    for index, _ in enumerate(prompts):
        for sample_index, (text, stopped) in enumerate(patterns[index % len(patterns)]):
            ids = list(range(3, 3 + len(text.split()))) + ([1] if stopped else [])
            generations.append(Generation(index, sample_index, [2], ids, text, stopped))
    return generations


def test_sampled_pairs_with_a_truncated_sample_are_dropped_and_counted(tiny_models, tmp_path, monkeypatch, steps_taken):
    from harness.algorithms import dpo
    from harness.generation.hf import HFGenerator
    from harness.rewards import ProxyRewardModel

    patterns = [
        [("good a", True), ("b c d", True)],  # kept
        [("good q q q q q q", False), ("b", True)],  # one truncated: dropped
        [("q q q q q q", False), ("good q q q q q", False)],  # both truncated: dropped
        [("e f", True), ("good e", True)],  # kept
    ]
    monkeypatch.setattr(
        HFGenerator, "generate", lambda self, checkpoint, prompts, n, settings, seed: sampled(prompts, patterns)
    )
    # The proxy prefers "good"; distinct scores, no ties.
    monkeypatch.setattr(
        ProxyRewardModel,
        "score",
        lambda self, prompts, completions, stopped: [
            float(c.count("good")) + 0.01 * i for i, c in enumerate(completions)
        ],
    )
    config = dpo.Config(pairs_source="reward_model", batch_size=2)
    result = dpo.train(context_for("dpo", config, tiny_models, tmp_path, prompts_budget=4))
    assert result.spend["pairs_dropped_truncated"] == 2
    assert result.spend["completions_generated"] == 8
    dataset = steps_taken[0].trainer.train_dataset
    eos = "</s>"
    assert sorted(zip(dataset["chosen"], dataset["rejected"])) == [
        (" good a" + eos, " b c d" + eos),
        (" good e" + eos, " e f" + eos),
    ]
    # Nothing of a truncated sample reached a training batch.
    assert all(" q" not in text for text in [*dataset["chosen"], *dataset["rejected"]])
