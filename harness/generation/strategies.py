"""How the evaluator turns a checkpoint into its evaluation samples: the generation strategies.

`Sampling`: the checkpoint's own samples, `samples_per_prompt` draws per prompt at the evaluation seed; the
policy is a model, so its KL is measured with forward passes (harness.metrics.scorers.PolicyKL).

`BestOfN` (harness/algorithms/best_of_n.py): each sample is instead the best of n draws from the checkpoint by
the suite's training reward, and every metric (the judge's included) is computed on the kept samples. Its KL
is the analytic bound log n - (n-1)/n (there is no policy model to run forward passes on, and so no KL at the
training temperature either), with an estimate beside it from the candidates' selection rewards
(`best_of_n_kl_estimate`). The candidates are drawn with the seed `seed + BEST_OF_N_SEED_OFFSET`, a stream
disjoint from the SFT baseline's evaluation samples (seed `seed`) and its draws at the training temperature:
with the evaluation seed itself, slot 0's candidates would include the baseline's own slot-0 sample (the vLLM
generator's streams are per (seed, prompt, draw)), and a selection knowing its opponent beats it more often
than the n/(n+1) of independent draws.

A strategy draws (`draw`) and, once the candidates carry their gold and proxy rewards, keeps the evaluation's
samples among them (`select`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from harness.generation.base import Generation, SamplingSettings
from harness.rewards import with_missing_stop_penalty

# Best-of-n's candidates use seed + this: a prime far from any seed a suite lists (and from the training-
# temperature draws' offset, harness.metrics.scorers.TRAIN_TEMPERATURE_SEED_OFFSET), so that they share no draw
# with the SFT baseline's evaluation samples (seed), its draws at the training temperature or another seed's.
BEST_OF_N_SEED_OFFSET = 2_000_003


@dataclass(frozen=True)
class Sampling:
    """The checkpoint's own samples."""

    policy_is_a_model = True  # its KL is measured with forward passes, at the training temperature too

    def check(self, has_gold_scorer: bool) -> None:
        """Nothing to refuse: plain sampling needs no particular scorer."""

    def draw(
        self,
        generator,
        checkpoint: Path,
        prompts: list[str],
        samples_per_prompt: int,
        sampling: SamplingSettings,
        seed: int,
    ) -> list[Generation]:
        return generator.generate(checkpoint, prompts, samples_per_prompt, sampling, seed)

    def select(self, samples: list) -> list:
        return samples


@dataclass(frozen=True)
class BestOfN:
    """The best-of-n policy of a checkpoint: each sample is the best of `n` draws by the training reward the
    suite's online algorithms optimise (harness.rewards.training_reward_function)."""

    n: int
    reward_source: str  # "proxy": the reward model minus the missing-stop penalty; "gold": the task's gold reward
    missing_stop_penalty: float

    policy_is_a_model = False  # no model to run forward passes on: the KL is the bound

    def check(self, has_gold_scorer: bool) -> None:
        """Refuse, before anything is drawn, a selection by a gold reward that does not exist."""
        if self.reward_source == "gold" and not has_gold_scorer:
            raise ValueError("best-of-n selects by the gold reward (reward.source gold) but there is no gold scorer")

    def draw(
        self,
        generator,
        checkpoint: Path,
        prompts: list[str],
        samples_per_prompt: int,
        sampling: SamplingSettings,
        seed: int,
    ) -> list[Generation]:
        """n candidates per sample slot: slot j's are the prompt's draws j*n .. j*n+n-1, on a stream of their own."""
        return generator.generate(
            checkpoint, prompts, samples_per_prompt * self.n, sampling, seed + BEST_OF_N_SEED_OFFSET
        )

    def select(self, candidates: list) -> list:
        """The kept sample of each (prompt, slot), in (prompt, slot) order, renumbered to its slot, with the
        KL bound, its prompt's KL estimate and what the samples file records of its group."""
        n = self.n
        scores = self._selection_rewards(candidates)
        kl_estimates = _kl_estimates_by_prompt(candidates, scores, n)
        kept = []
        for members in _groups(candidates, n):
            best = max(
                range(len(members)), key=lambda position: scores[members[position]]
            )  # max keeps the first of equals
            sample = candidates[members[best]]
            has_gold = sample.gold_reward is not None
            kept.append(
                dataclasses.replace(
                    sample,
                    sample_index=sample.sample_index // n,
                    # No forward passes: the best-of-n policy has no model; its KL is the bound, the same for every
                    # sample, and beside it each sample carries its prompt's estimate.
                    kl=best_of_n_kl_bound(n),
                    best_of_n_kl_estimate=kl_estimates[sample.prompt_index],
                    best_of=n,
                    kept_candidate=best,
                    candidate_selection_rewards=[scores[i] for i in members],
                    candidate_gold_rewards=[candidates[i].gold_reward for i in members] if has_gold else None,
                )
            )
        return kept

    def _selection_rewards(self, candidates: list) -> list[float]:
        """What best-of-n maximises: the training reward of harness.rewards.training_reward_function, from the
        scores the evaluator already computed (the proxy minus the missing-stop penalty, or the gold reward,
        which already charges a missing stop)."""
        if self.reward_source == "gold":
            return [sample.gold_reward for sample in candidates]

        return with_missing_stop_penalty(
            [sample.proxy_reward for sample in candidates],
            [sample.stopped for sample in candidates],
            self.missing_stop_penalty,
        )


def _groups(candidates: list, n: int) -> list[list[int]]:
    """The indices of each (prompt, slot j)'s candidates (draws j*n .. j*n+n-1) in draw order, groups in
    (prompt, slot) order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(candidates):
        groups.setdefault((sample.prompt_index, sample.sample_index // n), []).append(index)
    return [sorted(groups[key], key=lambda index: candidates[index].sample_index) for key in sorted(groups)]


def _kl_estimates_by_prompt(candidates: list, scores: list[float], n: int) -> dict[int, float]:
    """best_of_n_kl_estimate of each prompt from the selection rewards of all its candidates."""
    pools: dict[int, list[float]] = {}
    for sample, score in zip(candidates, scores, strict=True):
        pools.setdefault(sample.prompt_index, []).append(score)
    return {prompt: best_of_n_kl_estimate(pool, n) for prompt, pool in pools.items()}


def best_of_n_kl_bound(n: int) -> float:
    """log n - (n-1)/n nats: an upper bound on KL(best-of-n || the policy it samples from) for every prompt
    (Beirami et al. 2024, arXiv:2401.01879, Theorem 3.1); exactly 0 for n = 1."""
    return math.log(n) - (n - 1) / n


def best_of_n_kl_estimate(rewards: list[float], n: int) -> float:
    """KL(best-of-n || the policy) in nats per sequence for one prompt, estimated from `rewards`: the selection
    rewards of candidates the policy drew for it (all of the prompt's candidates, every sample slot's), whose
    empirical distribution F stands for the policy's distribution of the selection reward.

    Best-of-n keeps a candidate of the highest reward among n draws, and among candidates of equal reward any
    of them alike (the draws are exchangeable), so it changes the policy only through the reward: a value v of
    probability p(v) = F(v) - F(v-) is kept with probability q(v) = F(v)^n - F(v-)^n, every response of reward v
    by the ratio q(v) / p(v), and KL = sum over the distinct values v of q(v) log(q(v) / p(v)). Ties make it
    smaller than the bound log n - (n-1)/n, which it approaches as the values become many and distinct; from
    few candidates it is biased low (m distinct values give at most what a policy of m outcomes could)."""
    from collections import Counter

    if n < 1 or not rewards:
        raise ValueError(f"best_of_n_kl_estimate needs n >= 1 and some rewards, got n={n} and {len(rewards)}")
    total, below, kl = len(rewards), 0, 0.0
    for _value, count in sorted(Counter(rewards).items()):
        sft = count / total
        best_of = ((below + count) / total) ** n - (below / total) ** n
        if best_of > 0.0:
            kl += best_of * math.log(best_of / sft)
        below += count
    return max(kl, 0.0)  # a sum of terms that is >= 0 exactly, rounding aside
