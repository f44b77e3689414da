"""judge.kind trained: a small pairwise judge the harness trains on a suite's preference pairs.

It is the embedded suite's stand-in for an LLM judge: a causal LM with a ChatML word tokenizer that reads the
judge template rendered with a prompt and two answers, and answers with one of the template's two labels
(answers[0]: the first answer is better, answers[1]: the second). It is saved as a standard Hugging Face folder,
and its held-out agreement is measured through the hf judge backend the evaluator opens it with: chat template
with a generation prompt, then the probabilities of the two labels' first tokens at the next position.

Training, and why each choice (all measured on tiny's 4000 pairs; the numbers are in the docstrings below):
* every pair in both orders (chosen first -> answers[0], chosen second -> answers[1]), so the judge has no
  position bias to learn; the two orders of a pair always share a batch, which is what lets it leave chance;
* the loss is the answer token's cross-entropy plus the next-token loss on the comparison's text: from the
  answer alone a judge this small learns to compare slowly and less well;
* a Llama-family model (untied output head, rotary positions): a GPT-2 of the same size never left chance;
* AdamW at judge.training.learning_rate decaying linearly to 0, judge.training.epochs, dropout off, seeded.

Its agreement with the gold reward is measured on held-out pairs that it never trained on, relabelled by gold
without noise, next to the agreement of the noisy training labels themselves with gold (the Bradley-Terry
label noise bounds what any judge trained on them can reach).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from harness.config import ModelConfig
from harness.judges.base import TIE, PairVerdict, gold_agreement
from harness.judges.hf import HFJudge
from harness.judges.pairwise import answer_token_ids
from harness.judges.templates import prompt_token_ids
from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, resolve_device, save_checkpoint
from harness.tasks.common import words_of

logger = logging.getLogger(__name__)

HEADS_PER_WIDTH = 16  # up to one attention head per 16 hidden units (2 heads at width 32, 4 at 64)
LANGUAGE_MODELLING_WEIGHT = 1.0  # next-token loss on the comparison's text, next to the answer's (see _training_losses)
FINAL_LOSS_STEPS = 50  # the reported final loss is the mean of the last steps': one step's loss is noisy
LENGTH_GROUP_BATCHES = 50  # batches sorted by length together (transformers' group_by_length uses 50 too)
HELD_OUT_BATCH_SIZE = 64  # held-out comparisons per forward pass while measuring agreement
POSITION_HEADROOM = 2  # the judge's positions: this many times the longest comparison in the task's data
TOKENIZER_LENGTH_UNTIL_MEASURED = 1_000_000  # replaced by the judge's positions once the longest comparison is known


@dataclass(frozen=True)
class _Example:
    """One rendered comparison after the opening every comparison shares, and the label the judge should answer."""

    token_ids: list[int]
    label_id: int


# --- tokenizer and examples ----------------------------------------------------------------------------------


def _judge_vocabulary(task_data, template) -> list[str]:
    """The task's words, the template's words (rendered with empty answers) and the two answer labels, so that
    nothing the judge is shown during training is an unknown word and each label is one token."""

    template_text = " ".join(message["content"] for message in template.messages("", "", ""))
    return sorted(set(words_of(task_data)) | set(template_text.split()) | set(template.answers))


def _render(tokenizer, template, prompt: str, first: str, second: str) -> list[int]:
    """Token ids of the comparison up to where the judge answers, exactly as the judge backends render it."""

    return prompt_token_ids(tokenizer, template.messages(prompt, first, second))


def _both_orders(tokenizer, template, pairs: list[dict], label_ids: tuple[int, int]) -> list[tuple[list[int], int]]:
    """Each pair twice, as (token ids, label): chosen shown first (the first label), then chosen second (the second)."""
    rendered = []
    for pair in pairs:
        prompt, chosen, rejected = pair["prompt"], pair["chosen"], pair["rejected"]
        rendered.append((_render(tokenizer, template, prompt, chosen, rejected), label_ids[0]))
        rendered.append((_render(tokenizer, template, prompt, rejected, chosen), label_ids[1]))
    return rendered


def _split_shared_opening(rendered: list[tuple[list[int], int]]) -> tuple[list[int], list[_Example]]:
    """The tokens every rendered comparison starts with (the system message and the template's opening words),
    and the examples without them. Training encodes the opening once per batch instead of once per comparison:
    it is about 40% of every comparison under the generic template. At least one token of each comparison stays
    outside the opening, so every example has a position to answer at."""
    opening = min(len(ids) for ids, _ in rendered) - 1
    first = rendered[0][0]
    for ids, _ in rendered:
        while ids[:opening] != first[:opening]:
            opening -= 1
    return first[:opening], [_Example(ids[opening:], label) for ids, label in rendered]


def _hidden_states(model, opening: list[int], examples: list[_Example], pad_id: int, device: str):
    """(the model's last hidden states at each comparison's tokens after the opening, those token ids, which of
    them are real rather than padding). The same numbers as one forward pass over each whole comparison: the
    shared opening is a key-value cache here, computed once for the batch, and right padding after it keeps every
    real token at the position it has in the unpadded comparison."""
    import torch

    count, width = len(examples), max(len(example.token_ids) for example in examples)
    ids = torch.full((count, width), pad_id, dtype=torch.long)
    real = torch.zeros((count, width), dtype=torch.long)
    for row, example in enumerate(examples):
        ids[row, : len(example.token_ids)] = torch.tensor(example.token_ids)
        real[row, : len(example.token_ids)] = 1
    ids, real = ids.to(device), real.to(device)
    body = model.base_model
    cache = None
    if opening:
        cache = body(input_ids=torch.tensor([opening], device=device), use_cache=True).past_key_values
        cache.batch_repeat_interleave(count)
    mask = torch.cat([torch.ones((count, len(opening)), dtype=torch.long, device=device), real], dim=1)
    positions = torch.arange(len(opening), len(opening) + width, device=device).expand(count, -1)
    hidden = body(
        input_ids=ids, attention_mask=mask, past_key_values=cache, position_ids=positions, use_cache=False
    ).last_hidden_state
    return hidden, ids, real


def _training_losses(model, opening: list[int], examples: list[_Example], pad_id: int, device: str):
    """(the loss to minimise, the answer token's loss, the language-modelling loss): the answer's cross-entropy
    plus LANGUAGE_MODELLING_WEIGHT x the mean next-token cross-entropy over the comparison's other tokens.

    The language-modelling term is there because the answer alone teaches too slowly: to predict an answer's
    next word the judge must track that answer's own mood apart from the other answer's, which is the feature
    the comparison needs. Measured on tiny's data (seed 0, width 64, 3 epochs): held-out agreement with gold
    0.75 on the answer token alone, 0.81 with the term at weight 1."""
    import torch
    from torch.nn.functional import cross_entropy

    hidden, ids, real = _hidden_states(model, opening, examples, pad_id, device)
    logits = model.get_output_embeddings()(hidden)
    last = real.sum(dim=1) - 1
    labels = torch.tensor([example.label_id for example in examples], device=device)
    answer_loss = cross_entropy(logits[torch.arange(len(examples), device=device), last], labels)
    next_tokens = ids[:, 1:].masked_fill(real[:, 1:] == 0, -100)
    if not (next_tokens != -100).any():  # every comparison is one token past the opening: nothing to model
        return answer_loss, answer_loss, answer_loss.new_zeros(())
    language_loss = cross_entropy(logits[:, :-1].flatten(0, 1), next_tokens.flatten(), ignore_index=-100)
    return answer_loss + LANGUAGE_MODELLING_WEIGHT * language_loss, answer_loss, language_loss


def _epoch_batches(examples: list[_Example], batch_size: int, generator) -> list[list[int]]:
    """One epoch's batches of example indices. A batch holds whole pairs, both orders side by side (examples 2i
    and 2i+1): whatever the judge makes of an answer's content regardless of its position then cancels within
    the batch, leaving the gradient of the comparison itself. Measured on tiny's data (answer loss only, seed 0,
    3 epochs): at chance throughout with the orders shuffled apart, 0.75 held-out agreement with gold with them
    side by side.
    Pairs are shuffled, sorted by length within groups of LENGTH_GROUP_BATCHES batches so that a batch pads
    little (as transformers' group_by_length does), and the batches shuffled again."""
    import torch

    pairs_per_batch = max(1, batch_size // 2)
    order = torch.randperm(len(examples) // 2, generator=generator).tolist()
    group = pairs_per_batch * LENGTH_GROUP_BATCHES
    batches = []
    for start in range(0, len(order), group):
        chunk = sorted(order[start : start + group], key=lambda pair: len(examples[2 * pair].token_ids))
        for offset in range(0, len(chunk), pairs_per_batch):
            batches.append([2 * pair + side for pair in chunk[offset : offset + pairs_per_batch] for side in (0, 1)])
    return [batches[index] for index in torch.randperm(len(batches), generator=generator).tolist()]


# --- the model -----------------------------------------------------------------------------------------------


def _build_judge_model(training, tokenizer, max_positions: int, seed: int):
    """A Llama-family causal LM: its output head is untied from the input embeddings and its positions are rotary.
    Measured on tiny's data with this module's training, a GPT-2 (tied embeddings, learned positions) of the same
    size stayed at chance: held-out agreement with gold 0.53 after 3 epochs, against 0.81 for Llama. On a toy
    comparison task the tied Qwen2 failed too while Llama and GPT-NeoX, both untied, learnt it in a few hundred
    steps: the untied head seems to be what matters."""

    heads = _attention_heads(training.n_embd)
    shape = ModelConfig(
        n_layer=training.n_layer,
        n_embd=training.n_embd,
        n_head=heads,
        max_positions=max_positions,
        architecture="llama",
    )
    return build_tiny_causal_lm(shape, tokenizer, seed)


def _attention_heads(width: int) -> int:
    """Up to one attention head per HEADS_PER_WIDTH units: the most heads whose size divides the width and is
    even (rotary positions rotate pairs of dimensions)."""
    for heads in range(max(1, width // HEADS_PER_WIDTH), 0, -1):
        if width % heads == 0 and (width // heads) % 2 == 0:
            return heads
    raise ValueError(f"judge.training.n_embd={width} must be even: rotary positions rotate pairs of dimensions")


def _train(
    model, opening: list[int], examples: list[_Example], training, seed: int, pad_id: int, device: str
) -> tuple[float, float]:
    """AdamW with linear decay to 0; returns the final answer-token and language-modelling losses."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(len(examples) / 2 / max(1, training.batch_size // 2))
    total_steps = max(1, round(training.epochs * steps_per_epoch))
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / total_steps)
    model.train()
    answer_losses: list[float] = []
    language_losses: list[float] = []
    batches: list[list[int]] = []
    for step in range(total_steps):
        if not batches:  # a fractional last epoch stops part-way through its batches
            batches = _epoch_batches(examples, training.batch_size, generator)
        batch = [examples[index] for index in batches.pop()]
        loss, answer_loss, language_loss = _training_losses(model, opening, batch, pad_id, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        answer_losses.append(answer_loss.item())
        language_losses.append(language_loss.item())
        if (step + 1) % steps_per_epoch == 0:
            logger.info(
                "judge training: epoch %d, answer loss %.4f, language-modelling loss %.4f",
                (step + 1) // steps_per_epoch,
                _mean(answer_losses[-steps_per_epoch:]),
                _mean(language_losses[-steps_per_epoch:]),
            )
    model.eval()
    return _mean(answer_losses[-FINAL_LOSS_STEPS:]), _mean(language_losses[-FINAL_LOSS_STEPS:])


# --- held-out agreement --------------------------------------------------------------------------------------


def _held_out_verdicts(folder: Path, template, pairs: list[dict], device: str) -> list[PairVerdict]:
    """The saved judge's verdicts on held-out pairs, chosen answer as the candidate, through the hf backend the
    evaluator opens it with (so the figure is the evaluator's judge, reloaded from its folder)."""

    if not pairs:
        return []
    judge = HFJudge(str(folder), template, HELD_OUT_BATCH_SIZE, device)
    try:
        stopped = [True] * len(pairs)  # dataset answers all ended; model judges ignore the flags anyway
        return judge.compare(
            [pair["prompt"] for pair in pairs],
            [pair["chosen"] for pair in pairs],
            [pair["rejected"] for pair in pairs],
            stopped,
            stopped,
        )
    finally:
        judge.close()


def _held_out_agreement(
    verdicts: list[PairVerdict], pairs: list[dict], gold_reward: Callable[[str, str, bool], float] | None
) -> dict:
    """Agreement of the judge's verdicts on held-out pairs with the gold reward (without noise) where there is
    one and with the pairs' own noisy labels, the judge's order agreement, and the noisy labels' agreement with
    gold (what the training labels themselves reach)."""
    result = {
        "held_out_pairs": len(pairs),
        # The label says the chosen answer (the candidate here) wins: 1 point for it.
        "judge_label_agreement_held_out": _mean([gold_agreement(verdict.points, 1.0) for verdict in verdicts]),
        "judge_order_agreement_held_out": _mean([float(verdict.orders_agree) for verdict in verdicts]),
        "judge_gold_agreement_held_out": None,
        "label_gold_agreement_held_out": None,
        "held_out_gold_ties": None,
    }
    if gold_reward is not None:
        gold_points = [_gold_points(gold_reward, pair) for pair in pairs]
        result["judge_gold_agreement_held_out"] = _mean(
            [gold_agreement(verdict.points, gold) for verdict, gold in zip(verdicts, gold_points, strict=True)]
        )
        result["label_gold_agreement_held_out"] = _mean([gold_agreement(1.0, gold) for gold in gold_points])
        result["held_out_gold_ties"] = sum(gold == TIE for gold in gold_points)
    return result


def _gold_points(gold_reward, pair: dict) -> float:
    """Gold's verdict on chosen vs rejected, without noise: 1, 0, or 1/2 on a tie. Dataset answers all stopped."""
    chosen = gold_reward(pair["prompt"], pair["chosen"], True)
    rejected = gold_reward(pair["prompt"], pair["rejected"], True)
    return 1.0 if chosen > rejected else 0.0 if chosen < rejected else TIE


def _mean(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return sum(present) / len(present) if present else None


# --- the entry point -----------------------------------------------------------------------------------------


def train_judge(
    task_data,
    template,
    training,
    folder: Path,
    seed: int,
    device: str,
    gold_reward: Callable[[str, str, bool], float] | None = None,
) -> dict:
    """Train the judge on `task_data.preferences`, save it as a Hugging Face folder in `folder`, and measure it on
    up to `training.held_out_pairs` of `task_data.heldout_preferences`.

    `template`: the loaded judge template (system, user with {prompt} {first} {second}, answers);
    `training`: harness.config.JudgeTrainingConfig; `gold_reward(prompt, completion, stopped)`: the task's exact
    reward, or None where the task has none (then only the agreement with the held-out labels is measured).
    Returns the metrics: judge_gold_agreement_held_out, label_gold_agreement_held_out,
    judge_label_agreement_held_out, judge_order_agreement_held_out, held_out_pairs, held_out_gold_ties,
    train_pairs, train_seconds (tokenizer, rendering, training and saving; not the held-out measurement),
    final_loss (the answer token's), final_language_modelling_loss, max_positions (None where there is nothing
    to measure).
    """
    import torch

    if not task_data.preferences:
        raise ValueError("the task produced no preference pairs to train the judge on")
    started = time.perf_counter()
    device = resolve_device(device)
    held_out = task_data.heldout_preferences[: training.held_out_pairs]
    tokenizer = build_word_tokenizer(
        _judge_vocabulary(task_data, template), TOKENIZER_LENGTH_UNTIL_MEASURED, chatml=True
    )
    label_ids = answer_token_ids(tokenizer, template.answers, "the judge being trained")
    rendered = _both_orders(tokenizer, template, task_data.preferences, label_ids)
    longest = max(len(ids) for ids, _ in rendered + _both_orders(tokenizer, template, held_out, label_ids))
    # Rotary positions have no table to train, so room beyond the longest comparison in the data costs nothing
    # and the evaluator's backend, which refuses a comparison longer than the model's positions, can still
    # judge answers somewhat longer than the dataset's.
    max_positions = POSITION_HEADROOM * (longest + 1)
    tokenizer.model_max_length = max_positions
    opening, train_examples = _split_shared_opening(rendered)

    torch.manual_seed(seed)
    model = _build_judge_model(training, tokenizer, max_positions, seed).to(device)
    final_loss, final_language_loss = _train(
        model, opening, train_examples, training, seed, tokenizer.pad_token_id, device
    )
    train_seconds = time.perf_counter() - started
    save_checkpoint(model, tokenizer, folder)
    del model

    metrics = {
        **_held_out_agreement(_held_out_verdicts(folder, template, held_out, device), held_out, gold_reward),
        "train_pairs": len(task_data.preferences),
        "train_seconds": train_seconds,
        "final_loss": final_loss,
        "final_language_modelling_loss": final_language_loss,
        "max_positions": max_positions,
    }
    logger.info("trained judge: %s", metrics)
    return metrics
