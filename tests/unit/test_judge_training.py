"""The trained pairwise judge (harness/judges/training.py) on a small version of the embedded task: one-sentence
reviews with nearly noise-free labels, so that a one-layer judge learns to compare in seconds.

It must beat chance on held-out pairs, be a standard causal-LM folder whose chat template renders the
comparison with the answer labels as single tokens, report the agreement that an independent forward pass over
that folder gives, and train deterministically for a seed.
"""

from __future__ import annotations

import dataclasses

import pytest

from harness.config import JudgeTrainingConfig
from harness.judges.templates import JudgeTemplate
from harness.tasks.common import TaskData
from harness.tasks.synthetic import SyntheticReviewsConfig, build_task_data, gold_reward

# Splits the judge does not read are kept at one row (they cost time to build).
SMALL_TASK = SyntheticReviewsConfig(
    num_sft_examples=1,
    num_preference_pairs=2000,
    num_heldout_pairs=200,
    num_train_prompts=1,
    num_eval_prompts=1,
    reference_candidates=1,
    max_sentences=1,
    label_noise_scale=0.05,
)
SMALL_JUDGE = JudgeTrainingConfig(epochs=4, learning_rate=1e-2, batch_size=32, n_layer=1, n_embd=32)
TEMPLATE = JudgeTemplate(
    name="test",
    description="",
    system="You judge reviews .",
    user="{prompt} A: {first} B: {second} Which is better ?",
    answers=("A", "B"),
)
# Measured with this task, judge and template (seeds 0-3, one thread): held-out agreement with gold 0.80, 0.87,
# 0.77, 0.81, over about 165 pairs without a gold tie each (a standard error of about 0.03); chance is 0.5.
BEATS_CHANCE = 0.68


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from harness.judges.training import train_judge

    data = build_task_data(SMALL_TASK, seed=0)
    folder = tmp_path_factory.mktemp("judge") / "model"
    metrics = train_judge(data, TEMPLATE, SMALL_JUDGE, folder, seed=0, device="cpu", gold_reward=gold_reward)
    return data, folder, metrics


def _gold_points(pair: dict) -> float:
    chosen, rejected = (gold_reward(pair["prompt"], pair[key], True) for key in ("chosen", "rejected"))
    return 1.0 if chosen > rejected else 0.0 if chosen < rejected else 0.5


def test_trained_judge_beats_chance_on_held_out_pairs(trained):
    data, _, metrics = trained
    assert metrics["train_pairs"] == 2000 and metrics["held_out_pairs"] == 200
    assert metrics["judge_gold_agreement_held_out"] >= BEATS_CHANCE
    # The training labels' own agreement with gold, counted here by hand: nearly noise-free labels agree
    # almost always, and the pairs gold ties on are left out of both figures.
    gold = [_gold_points(pair) for pair in data.heldout_preferences]
    assert metrics["held_out_gold_ties"] == gold.count(0.5)
    untied = [points for points in gold if points != 0.5]
    assert metrics["label_gold_agreement_held_out"] == pytest.approx(sum(untied) / len(untied))
    assert metrics["train_seconds"] > 0 and 0 < metrics["final_loss"] < 0.69  # below chance's ln 2


def test_folder_is_a_causal_lm_whose_chat_template_renders_single_token_labels(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, folder, metrics = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.max_position_embeddings == metrics["max_positions"]
    for label in TEMPLATE.answers:
        ids = tokenizer(label, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids[0] != tokenizer.unk_token_id
    pair = data.heldout_preferences[0]
    text = tokenizer.apply_chat_template(
        TEMPLATE.messages(pair["prompt"], pair["chosen"], pair["rejected"]), tokenize=False, add_generation_prompt=True
    )
    assert text == (
        f"<|im_start|>system\nYou judge reviews .<|im_end|>\n<|im_start|>user\n{pair['prompt']} A: "
        f"{pair['chosen']} B: {pair['rejected']} Which is better ?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Every word of the template and of the task is in the vocabulary: the judge reads no unknown word.
    assert tokenizer.unk_token_id not in tokenizer(text, add_special_tokens=False)["input_ids"]


def test_reported_agreement_is_what_the_saved_judge_says(trained):
    """Each held-out pair in both orders, one unbatched forward pass each over the reloaded folder:
    P(A) / (P(A) + P(B)) at the answer position, combined by hand (the candidate, the chosen answer, wins only
    when both orders prefer it)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, folder, metrics = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    label_ids = [tokenizer.convert_tokens_to_ids(label) for label in TEMPLATE.answers]

    def first_better(prompt: str, first: str, second: str) -> float:
        text = tokenizer.apply_chat_template(
            TEMPLATE.messages(prompt, first, second), tokenize=False, add_generation_prompt=True
        )
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, -1, label_ids]
        return torch.softmax(logits, dim=-1)[0].item()

    judged, agreements, orders_agree = [], [], []
    for pair in data.heldout_preferences:
        chosen_first = first_better(pair["prompt"], pair["chosen"], pair["rejected"])
        chosen_second = 1.0 - first_better(pair["prompt"], pair["rejected"], pair["chosen"])
        points = (
            1.0 if min(chosen_first, chosen_second) > 0.5 else 0.0 if max(chosen_first, chosen_second) < 0.5 else 0.5
        )
        orders_agree.append(points != 0.5)
        gold = _gold_points(pair)
        judged.append(points)
        if gold != 0.5:
            agreements.append(0.5 if points == 0.5 else float(points == gold))
    # One pair flipping across 1/2 between the batched and unbatched passes (float rounding) is tolerated.
    assert metrics["judge_gold_agreement_held_out"] == pytest.approx(
        sum(agreements) / len(agreements), abs=1.01 / len(agreements)
    )
    assert metrics["judge_label_agreement_held_out"] == pytest.approx(sum(judged) / len(judged), abs=1.01 / len(judged))
    assert metrics["judge_order_agreement_held_out"] == pytest.approx(
        sum(orders_agree) / len(orders_agree), abs=1.01 / len(judged)
    )


def test_training_forward_pass_equals_one_pass_over_each_whole_comparison(trained):
    """Training encodes the opening all comparisons share once per batch (a key-value cache) and pads on the
    right after it; the answer logits must be those of one plain forward pass over each comparison alone."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.judges import training

    data, folder, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder).eval()
    rendered = training._both_orders(tokenizer, TEMPLATE, data.heldout_preferences[:6], (7, 9))
    opening, examples = training._split_shared_opening(rendered)
    assert len(opening) >= 8  # the system turn and "<|im_start|> user" at least
    with torch.no_grad():
        hidden, _, real = training._hidden_states(model, opening, examples, tokenizer.pad_token_id, "cpu")
        cached = model.get_output_embeddings()(hidden[torch.arange(len(examples)), real.sum(dim=1) - 1])
        alone = torch.stack([model(input_ids=torch.tensor([ids])).logits[0, -1] for ids, _ in rendered])
    assert len({len(ids) for ids, _ in rendered}) > 1  # the batch really is padded
    torch.testing.assert_close(cached, alone, rtol=1e-4, atol=1e-5)


def test_training_is_deterministic_for_a_seed(tmp_path):
    from safetensors.torch import load_file

    from harness.judges.training import train_judge

    data = build_task_data(dataclasses.replace(SMALL_TASK, num_preference_pairs=64, num_heldout_pairs=16), seed=1)
    short = JudgeTrainingConfig(epochs=1, learning_rate=1e-2, batch_size=16, n_layer=1, n_embd=32)

    def run(seed: int, name: str):
        metrics = train_judge(data, TEMPLATE, short, tmp_path / name, seed=seed, device="cpu", gold_reward=gold_reward)
        metrics.pop("train_seconds")
        return metrics, load_file(tmp_path / name / "model.safetensors")

    first, again, other = run(5, "first"), run(5, "again"), run(6, "other")
    assert first[0] == again[0]
    assert first[1].keys() == again[1].keys() and all((first[1][k] == again[1][k]).all() for k in first[1])
    assert any(not (first[1][k] == other[1][k]).all() for k in first[1])  # the seed is used


def test_bad_input_is_one_line_naming_the_culprit(tmp_path):
    from harness.judges.training import train_judge

    pair = {"prompt": "hotel review : the room", "chosen": " was clean .", "rejected": " was dirty ."}
    empty = TaskData(sft=[], preferences=[], heldout_preferences=[pair], train_prompts=[], eval=[])
    with pytest.raises(ValueError, match="no preference pairs"):
        train_judge(empty, TEMPLATE, SMALL_JUDGE, tmp_path / "a", seed=0, device="cpu")
    odd = TaskData(sft=[], preferences=[pair], heldout_preferences=[pair], train_prompts=[], eval=[])
    with pytest.raises(ValueError, match=r"judge\.training\.n_embd=33 must be even"):
        train_judge(odd, TEMPLATE, JudgeTrainingConfig(n_embd=33), tmp_path / "b", seed=0, device="cpu")
