"""The one evaluator: every checkpoint of every algorithm is sampled and scored the same way (DESIGN §6).

Held-out prompts, N samples per prompt drawn by the settings' generation strategy (harness.generation.strategies:
the checkpoint's own samples, or best-of-n's kept ones), then the scorers, in this order, each over the same
Sample records (harness.metrics.sample, the rows of eval/samples.jsonl):

1. on every draw: the gold reward (`gold_scorer`: the task's exact reward or a held-out reward model) and the
   proxy reward (the reward model the online algorithms optimised), which best-of-n selects by;
2. the strategy keeps the evaluation's samples among the draws;
3. on the kept samples: the KL to the SFT reference where the policy is a model (harness.metrics.scorers.PolicyKL,
   at the training temperature too; best-of-n's is its bound, set by the strategy), ROUGE against the prompt's
   reference, and the pairwise comparisons (harness.metrics.comparisons): gold points and a judge's verdicts
   against the SFT baseline's completion at the same (prompt, sample slot), and against the prompt's reference.

The summary is harness.metrics.catalog.summarise: the mean of every registered per-sample field, and the
corpus-level metrics (BLEU with sacrebleu's signature, distinct-n, the KL at the training temperature).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.generation.base import SamplingSettings
from harness.generation.strategies import Sampling
from harness.metrics.catalog import Corpus, summarise
from harness.metrics.comparisons import Comparisons
from harness.metrics.sample import Sample
from harness.metrics.scorers import GoldReward, GoldScorer, PolicyKL, ProxyReward, Rouge, draws_at_train_temperature
from harness.modeling import resolve_device
from harness.rewards import as_completion

logger = logging.getLogger(__name__)


@dataclass
class EvaluationSettings:
    """How a cell's checkpoints are evaluated: everything but the checkpoint and the generator.

    eval_rows: the task's evaluation rows (prompt, reference), the first `config.num_prompts` of them used.
    config: the suite's evaluation section. reference_dir: the SFT policy, the KL's reference.
    gold_scorer: callable(prompts, completions, stopped) -> scores, or None where there is no gold reward.
    baseline_samples: the SFT baseline's eval/samples.jsonl rows, for the comparisons against SFT; None for the
    baseline itself. judge, judge_vs_sft, judge_vs_reference: harness.metrics.comparisons.Comparisons'.
    train_temperature: the suite's training temperature, for kl_train_temperature.
    strategy: how the samples are drawn (harness.generation.strategies: Sampling, or BestOfN for best-of-n)."""

    eval_rows: list[dict]
    config: object
    seed: int
    device: str
    reference_dir: Path
    reward_model_dir: Path
    gold_scorer: GoldScorer | None = None
    baseline_samples: list[dict] | None = None
    judge: object = None
    judge_vs_sft: bool = True
    judge_vs_reference: bool = True
    train_temperature: float | None = None
    strategy: object = field(default_factory=Sampling)

    @property
    def rows(self) -> list[dict]:
        return self.eval_rows[: self.config.num_prompts] if self.config.num_prompts else self.eval_rows

    def draws_at_train_temperature(self) -> bool:
        """Whether each evaluation draws a second set of samples at the training temperature."""
        return draws_at_train_temperature(self.config, self.train_temperature, self.strategy.policy_is_a_model)


@dataclass
class Evaluation:
    samples: list[dict]  # the eval/samples.jsonl rows
    summary: dict[str, float]
    bleu_signature: str
    seconds: dict[str, float] = field(default_factory=dict)  # "generate" and "score" wall time
    completions_generated: int = 0  # every completion sampled: best-of-n's candidates and the draws at the
    # training temperature included
    # The draws at the training temperature behind kl_train_temperature (prompt_index, sample_index, completion,
    # stopped, kl, kl_k1, kl_k3); empty when none were drawn.
    train_temperature_samples: list[dict] = field(default_factory=list)


def evaluate_checkpoint(checkpoint: Path, generator, settings: EvaluationSettings) -> Evaluation:
    """Draw `config.samples_per_prompt` samples per evaluation prompt from `checkpoint` with `generator` by the
    settings' strategy, and score them (module docstring)."""

    config, strategy = settings.config, settings.strategy
    device = resolve_device(settings.device)
    rows = settings.rows
    if not rows:
        raise ValueError("the task has no evaluation prompts")
    strategy.check(has_gold_scorer=settings.gold_scorer is not None)
    prompts = [row["prompt"] for row in rows]
    sampling = SamplingSettings(config.temperature, config.top_k, config.top_p, config.max_new_tokens)

    started = time.perf_counter()
    generations = strategy.draw(generator, checkpoint, prompts, config.samples_per_prompt, sampling, settings.seed)
    generate_seconds = time.perf_counter() - started
    scoring_started = time.perf_counter()

    drawn = [_sample(generation, prompts, rows) for generation in generations]
    rewards = [GoldReward(settings.gold_scorer)] if settings.gold_scorer else []
    rewards.append(ProxyReward(settings.reward_model_dir, device, config.batch_size))
    for scorer in rewards:
        scorer.score(drawn)
    samples = strategy.select(drawn)
    kl = (
        PolicyKL(
            checkpoint,
            settings.reference_dir,
            device,
            config,
            generator,
            prompts,
            settings.seed,
            settings.train_temperature,
        )
        if strategy.policy_is_a_model
        else None
    )
    comparisons = Comparisons(
        rows,
        settings.baseline_samples,
        settings.gold_scorer,
        settings.judge,
        settings.judge_vs_sft,
        settings.judge_vs_reference,
    )
    for scorer in ([kl] if kl else []) + [Rouge(), comparisons]:
        scorer.score(samples)

    train_temperature_samples = kl.train_temperature_samples if kl else []
    extra_generate_seconds = kl.generate_seconds if kl else 0.0  # the draws at the training temperature
    rows_written = [sample.to_row() for sample in samples]
    corpus = Corpus(rows_written, train_temperature_samples or None)
    summary = summarise(corpus)
    seconds = {
        "generate": generate_seconds + extra_generate_seconds,
        "score": time.perf_counter() - scoring_started - extra_generate_seconds,
    }
    completions_generated = len(generations) + (kl.completions_generated if kl else 0)
    return Evaluation(rows_written, summary, corpus.bleu[1], seconds, completions_generated, train_temperature_samples)


def _sample(generation, prompts: list[str], rows: list[dict]) -> Sample:
    """A draw as an unscored sample."""

    return Sample(
        prompt_index=generation.prompt_index,
        sample_index=generation.sample_index,
        prompt=prompts[generation.prompt_index],
        completion=as_completion(generation.text),
        reference=as_completion(rows[generation.prompt_index]["reference"]),
        # Length in generated tokens without the EOS token, so stopping itself costs no length.
        length=len(generation.completion_ids) - (1 if generation.stopped else 0),
        stopped=generation.stopped,
        generation=generation,
    )
