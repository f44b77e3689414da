"""The evaluator's scoring steps: each a small scorer that fills its own fields of every Sample in place.

The rewards (`GoldReward`, `ProxyReward`) score every draw, before a generation strategy keeps some of them
(best-of-n selects by them); `PolicyKL`, `Rouge` and harness.metrics.comparisons.Comparisons score the kept
samples. Each scorer sees the samples in the same order, and scores them all in one call, so that batches are
what they were when the evaluator was one function.

KL at the training temperature (`PolicyKL`'s `train_temperature`, the suite's sampling.temperature): the
sequence-level KL at temperature T, KL(π_T || π_ref,T), is an expectation over responses drawn from π_T. The
evaluation samples are drawn at evaluation.temperature, so summing the per-token KL at T along them estimates no
sequence KL at all (the prefixes come from the wrong distribution); when the two temperatures differ, a second
set of responses is drawn at T, untruncated (top-k 0, top-p 1, so that they are draws from π_T itself), with the
same prompts and samples per prompt and the seed `seed + TRAIN_TEMPERATURE_SEED_OFFSET` (a stream of its own,
not a copy of the evaluation draws), and kl_train_temperature is the mean exact KL at T over them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from harness.generation.base import SamplingSettings
from harness.metrics.sample import Sample
from harness.metrics.text import rouge
from harness.modeling import load_causal_lm, load_tokenizer
from harness.rewards import ProxyRewardModel, as_completion

# The training-temperature draws use seed + this: a prime far from any seed a suite lists, so that their stream
# never coincides with an evaluation's (best-of-n's candidates use another, generation.strategies).
TRAIN_TEMPERATURE_SEED_OFFSET = 1_000_003

GoldScorer = Callable[[list[str], list[str], list[bool]], list[float]]


class Scorer(Protocol):
    def score(self, samples: list[Sample]) -> None: ...


def draws_at_train_temperature(config, train_temperature: float | None, policy_is_a_model: bool) -> bool:
    """Whether the evaluation draws a second set of samples at the training temperature (module docstring)."""
    return (
        train_temperature is not None and policy_is_a_model and not math.isclose(train_temperature, config.temperature)
    )


class GoldReward:
    """gold_reward: the task's exact reward or a held-out reward model (harness.rewards.gold_reward_function)."""

    def __init__(self, gold_scorer: GoldScorer):
        self.gold_scorer = gold_scorer

    def score(self, samples: list[Sample]) -> None:
        scores = self.gold_scorer(
            [s.prompt for s in samples], [s.completion for s in samples], [s.stopped for s in samples]
        )
        for sample, value in zip(samples, scores):
            sample.gold_reward = value


class ProxyReward:
    """proxy_reward: the reward model the online algorithms optimised."""

    def __init__(self, reward_model_dir: Path, device: str, batch_size: int):
        self.reward_model_dir, self.device, self.batch_size = reward_model_dir, device, batch_size

    def score(self, samples: list[Sample]) -> None:

        model = ProxyRewardModel(self.reward_model_dir, self.device, self.batch_size)
        scores = model.score([s.prompt for s in samples], [s.completion for s in samples], [s.stopped for s in samples])
        for sample, value in zip(samples, scores):
            sample.proxy_reward = value


class PolicyKL:
    """kl, kl_k1, kl_k3 to the SFT reference, from transformers forward passes on the sampled token ids (exact
    over the vocabulary, with the k1 and k3 sums as cross-checks); and, where the training temperature differs
    from the evaluation's, the draws at it behind kl_train_temperature (module docstring), kept in
    `train_temperature_samples` with the time and the completions they took."""

    def __init__(
        self,
        checkpoint: Path,
        reference_dir: Path,
        device: str,
        config,
        generator,
        prompts: list[str],
        seed: int,
        train_temperature: float | None,
    ):
        self.checkpoint, self.reference_dir, self.device, self.config = checkpoint, reference_dir, device, config
        self.generator, self.prompts, self.seed, self.train_temperature = generator, prompts, seed, train_temperature
        self.train_temperature_samples: list[dict] = []  # prompt_index, sample_index, completion, stopped, kl, ...
        self.generate_seconds = 0.0
        self.completions_generated = 0

    def score(self, samples: list[Sample]) -> None:
        import torch

        from harness.metrics.kl import response_kl

        config = self.config
        pad_id = load_tokenizer(self.checkpoint).pad_token_id
        policy, reference = (
            load_causal_lm(self.checkpoint, self.device),
            load_causal_lm(self.reference_dir, self.device),
        )

        def kl_of(draws, temperature: float) -> dict[str, list[float]]:
            with torch.inference_mode():
                return response_kl(
                    policy,
                    reference,
                    [g.prompt_ids for g in draws],
                    [g.completion_ids for g in draws],
                    pad_id=pad_id,
                    temperature=temperature,
                    batch_size=config.batch_size,
                )

        kl = kl_of([s.generation for s in samples], config.temperature)
        for index, sample in enumerate(samples):
            sample.kl, sample.kl_k1, sample.kl_k3 = kl["kl"][index], kl["kl_k1"][index], kl["kl_k3"][index]
        if draws_at_train_temperature(config, self.train_temperature, policy_is_a_model=True):
            self._score_at_train_temperature(kl_of)

    def _score_at_train_temperature(self, kl_of) -> None:

        config = self.config
        # Untruncated: the exact KL at T is the KL of the distribution these responses are drawn from.
        at_train = SamplingSettings(self.train_temperature, 0, 1.0, config.max_new_tokens)
        drawing = time.perf_counter()
        draws = self.generator.generate(
            self.checkpoint,
            self.prompts,
            config.samples_per_prompt,
            at_train,
            self.seed + TRAIN_TEMPERATURE_SEED_OFFSET,
        )
        self.generate_seconds = time.perf_counter() - drawing
        self.completions_generated = len(draws)
        train_kl = kl_of(draws, self.train_temperature)
        self.train_temperature_samples = [
            {
                "prompt_index": g.prompt_index,
                "sample_index": g.sample_index,
                "completion": as_completion(g.text),
                "stopped": g.stopped,
                **{name: values[i] for name, values in train_kl.items()},
            }
            for i, g in enumerate(draws)
        ]


class Rouge:
    """rouge1, rouge2, rougeL against the prompt's reference."""

    def score(self, samples: list[Sample]) -> None:

        scores = rouge([s.completion.strip() for s in samples], [s.reference.strip() for s in samples])
        for index, sample in enumerate(samples):
            sample.rouge1, sample.rouge2, sample.rougeL = (
                scores["rouge1"][index],
                scores["rouge2"][index],
                scores["rougeL"][index],
            )
