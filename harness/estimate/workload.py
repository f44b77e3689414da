"""The tokens each stage of a plan trains on, scores (forward only) and generates, from the resolved config alone.

Conventions, shared with the calibration that measures the rates (calibrate.py), so that what the rate absorbs
(padding, early stops, per-step overheads at that batch size) is absorbed the same way on both sides:
- a trained or scored sequence counts the mean prompt plus completion tokens of the task's data;
- a generated sequence counts `max_new_tokens` slots, whether it stopped early or not (a batch decodes until its
  longest member stops), and a rollout trained or scored afterwards counts prompt + max_new_tokens;
- the step counts are the trainers' own: `ceil(budget.prompts_for(c) / per_step)` steps of `per_step` prompts
  (harness/algorithms/trl_support.py steps_for_budget, restated here because that module imports transformers).

Which shape of training an algorithm has is read off its Config's fields (num_generations: a group of sampled
completions per prompt; rollouts_per_update: PPO-style updates; pairs_source: offline pairs; prompts_per_step
alone: online pairs), so a new algorithm built on one of the shared trainers is counted without code here.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

from harness.algorithms.spec import algorithm
from harness.config import fingerprint
from harness.plan import BASE, EVALUATE, JUDGE, REPORT, REWARD_MODEL, SFT, TASK, TRAIN, Plan, Stage
from harness.record import BASELINE, algorithm_of

# Whitespace words per token for a subword tokenizer ("about 0.75 words per token" for English BPE, OpenAI's
# rule of thumb); a model the harness builds uses a word tokenizer, one token per word.
TOKENS_PER_WORD_SUBWORD = 1.33


@dataclass(frozen=True)
class Work:
    """Tokens a stage processes: with a backward pass, forward only, and sampled one at a time."""

    trained: float = 0.0
    scored: float = 0.0
    generated: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.trained + other.trained, self.scored + other.scored, self.generated + other.generated)


@dataclass(frozen=True)
class Lengths:
    """Mean tokens of a task's prompts and of its written completions; `source` says where they come from."""

    prompt: float
    completion: float
    source: str  # "task data" (a prepared seed's data.json), "calibration" (measured by harness calibrate), "guess"


@dataclass(frozen=True)
class TaskSizes:
    sft_examples: int
    preference_pairs: int
    eval_prompts: int


def task_sizes(config, data: dict | None = None) -> TaskSizes:
    """Examples per split: the prepared data's own counts, else the task options every task has."""
    if data is not None:
        return TaskSizes(len(data["sft"]), len(data["preferences"]), len(data["eval"]))
    task = config.task
    return TaskSizes(
        getattr(task, "num_sft_examples", 0),
        getattr(task, "num_preference_pairs", 0),
        getattr(task, "num_eval_prompts", 0),
    )


def prepared_task_data(plan: Plan) -> dict | None:
    """The data of the first seed whose task stage is complete (any seed: the sizes and lengths are the
    options', not the seed's), or None before any run prepared one."""
    for stage in plan.stages:
        if stage.kind == TASK and stage.done:
            return json.loads((Path(stage.folder) / "data.json").read_text())
    return None


def lengths_of(data: dict, tokens_per_word: float) -> Lengths:
    """Mean prompt and completion tokens of a task's SFT corpus and preference pairs."""
    prompts, completions = [], []
    for row in data["sft"]:
        prompts.append(row["prompt"])
        completions.append(row["completion"])
    for row in data["preferences"]:
        prompts.append(row["prompt"])
        completions.extend((row["chosen"], row["rejected"]))

    def mean_tokens(texts):
        return tokens_per_word * sum(len(str(text).split()) for text in texts) / max(1, len(texts))

    return Lengths(mean_tokens(prompts), mean_tokens(completions), "task data")


def task_key(config) -> str:
    """The throughput table's key of a task's measured lengths: its name and options, not the seed (every seed
    draws from the same distribution)."""
    return fingerprint(config.task_name, dataclasses.asdict(config.task))


def tokens_per_word(config) -> float:
    return 1.0 if config.suite.model.source == "build" else TOKENS_PER_WORD_SUBWORD


def guessed_lengths(config) -> Lengths:
    """Before any data exists: prompts and completions of half the rollout limit each (completions usually stop
    well before it); printed as a guess."""
    half = config.suite.sampling.max_new_tokens / 2
    return Lengths(half, half, "guess")


def prompts_consumed(budget, per_step: int, completions_per_prompt: int) -> int:
    """Prompts a trainer of `per_step` prompts a step takes from the budget (whole steps)."""
    steps = max(1, math.ceil(budget.prompts_for(completions_per_prompt) / per_step))
    return steps * per_step


def stage_work(stage: Stage, config, lengths: Lengths, sizes: TaskSizes) -> Work:
    """The tokens of one stage; task data, base model and report process none (their time is a start cost)."""
    suite = config.suite
    written = lengths.prompt + lengths.completion
    if stage.kind == SFT:
        return Work(trained=suite.sft.epochs * sizes.sft_examples * written)
    if stage.kind == REWARD_MODEL:
        if suite.reward_model.source != "train":
            return Work()
        return Work(trained=suite.reward_model.epochs * sizes.preference_pairs * 2 * written)
    if stage.kind == JUDGE:
        # Each comparison is shown in both orders; a judge reads the prompt and both completions.
        training = suite.judge.training
        comparison = lengths.prompt + 2 * lengths.completion
        return Work(
            trained=training.epochs * sizes.preference_pairs * 2 * comparison,
            scored=training.held_out_pairs * 2 * comparison,
        )
    if stage.kind == TRAIN:
        return train_work(stage.arm, config, lengths)
    if stage.kind == EVALUATE:
        return evaluate_work(stage.arm, config, lengths, sizes)
    assert stage.kind in (TASK, BASE, REPORT), stage.kind
    return Work()


def train_work(arm: str, config, lengths: Lengths) -> Work:
    if not algorithm(algorithm_of(arm)).spec.trains_policy:
        return Work()
    options = config.arms[arm]
    budget = config.suite.budget
    rollout_slots = config.suite.sampling.max_new_tokens
    rollout = lengths.prompt + rollout_slots
    written = lengths.prompt + lengths.completion
    if hasattr(options, "num_generations"):  # GRPO and its variants, RLOO: a group of G completions per prompt
        group = options.num_generations
        completions = prompts_consumed(budget, options.prompts_per_step, group) * group
        reference = 1 if getattr(options, "beta", 0) > 0 else 0  # TRL loads no reference model at beta 0
        return Work(
            trained=completions * rollout * getattr(options, "num_iterations", 1),
            scored=completions * rollout * (1 + reference),  # the reward model, the reference
            generated=completions * rollout_slots,
        )
    if hasattr(options, "rollouts_per_update"):  # PPO, REINFORCE++: one rollout per prompt, K epochs over them
        critic = 1 if hasattr(options, "critic_learning_rate") else 0
        rollouts = prompts_consumed(budget, options.rollouts_per_update, 1)
        return Work(
            trained=options.ppo_epochs * rollouts * rollout * (1 + critic),
            # old log-probs, the reference's, the reward model's score, the critic's values
            scored=rollouts * rollout * (3 + critic),
            generated=rollouts * rollout_slots,
        )
    if hasattr(options, "pairs_source"):  # DPO, IPO, SimPO, KTO: a pair (two sequences) per prompt
        pairs = prompts_consumed(budget, options.batch_size, 2)
        sampled = options.pairs_source != "dataset"  # pairs drawn from the policy and labelled
        length = rollout if sampled else written
        return Work(
            trained=pairs * 2 * length,
            scored=pairs * 2 * length * (2 if sampled else 1),  # the reference (and the labeller)
            generated=pairs * 2 * rollout_slots if sampled else 0.0,
        )
    if hasattr(options, "prompts_per_step"):  # online DPO: two sampled completions per prompt, labelled
        completions = prompts_consumed(budget, options.prompts_per_step, 2) * 2
        return Work(
            trained=completions * rollout, scored=completions * rollout * 2, generated=completions * rollout_slots
        )
    return Work()  # a training shape this module does not know: counted by its start cost only


def evaluate_work(arm: str, config, lengths: Lengths, sizes: TaskSizes) -> Work:
    """One evaluation: samples of every checkpoint, scored by the policy and reference (KL), the proxy reward
    model, a held-out gold model when there is one, and the judge (both orders, against each opponent)."""
    suite = config.suite
    evaluation = suite.evaluation
    prompts = evaluation.num_prompts or sizes.eval_prompts
    if sizes.eval_prompts:
        prompts = min(prompts, sizes.eval_prompts)
    trained = arm != BASELINE and _trains(arm)
    # best-of-n draws n completions for each answer it keeps; a trained policy is sampled at every checkpoint
    draws = getattr(config.arms[arm], "n", 1) if arm != BASELINE and not trained else 1
    checkpoints = 1 + evaluation.checkpoints if trained else 1
    samples = prompts * evaluation.samples_per_prompt * draws * checkpoints
    sequence = lengths.prompt + evaluation.max_new_tokens
    scorers = 3 + (1 if suite.gold.source == "reward_model" else 0)
    judged = 0.0
    if suite.judge.enabled:
        opponents = 1 if arm == BASELINE else 2  # the references; and the SFT samples
        judged = 2 * opponents * (samples / draws) * (lengths.prompt + 2 * evaluation.max_new_tokens)
    return Work(scored=samples * sequence * scorers + judged, generated=samples * evaluation.max_new_tokens)


def _trains(arm: str) -> bool:
    return algorithm(algorithm_of(arm)).spec.trains_policy
