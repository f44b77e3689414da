"""The one evaluator: every checkpoint of every algorithm is sampled and scored the same way (DESIGN §6).

Held-out prompts, N samples per prompt from the generator, then per sample: gold reward (`gold_scorer`: the
task's exact reward or a held-out reward model), proxy reward (the reward model the online algorithms
optimised), KL to the SFT reference computed with transformers forward passes on the sampled token ids (exact
over the vocabulary, with the k1 and k3 sums as cross-checks), ROUGE against the prompt's reference, length and
stop; and the pairwise comparisons (harness.metrics.catalog.Comparison): gold points and a judge's verdicts
against the SFT baseline's completion at the same (prompt, sample slot), and against the prompt's reference.
The summary is harness.metrics.catalog.summarise: the mean of every registered per-sample field, and the
corpus-level metrics (BLEU with sacrebleu's signature, distinct-n, the KL at the training temperature).

KL at the training temperature (`train_temperature`, the suite's sampling.temperature): the sequence-level KL
at temperature T, KL(π_T || π_ref,T), is an expectation over responses drawn from π_T. The evaluation samples
are drawn at evaluation.temperature, so summing the per-token KL at T along them estimates no sequence KL at
all (the prefixes come from the wrong distribution); when the two temperatures differ, a second set of
responses is drawn at T, untruncated (top-k 0, top-p 1, so that they are draws from π_T itself), with the same
prompts and samples per prompt and the seed `seed + TRAIN_TEMPERATURE_SEED_OFFSET` (a stream of its own, not a
copy of the evaluation draws), and kl_train_temperature is the mean exact KL at T over them.

Best-of-n (`best_of`, harness/algorithms/best_of_n.py): each sample is instead the best of n draws from the
checkpoint by the suite's training reward, every metric (the judge's included) is computed on the kept samples,
and the KL is the analytic bound log n - (n-1)/n (there is no policy model to run forward passes on, and so
no KL at the training temperature either), with an estimate beside it from the candidates' selection rewards
(`best_of_n_kl_estimate`). The candidates are drawn with the seed `seed + BEST_OF_N_SEED_OFFSET`, a stream
disjoint from the SFT baseline's evaluation samples (seed `seed`) and its draws at the training temperature:
with the evaluation seed itself, slot 0's candidates would include the baseline's own slot-0 sample (the vLLM
generator's streams are per (seed, prompt, draw)), and a selection knowing its opponent beats it more often
than the n/(n+1) of independent draws.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from harness.judges.base import gold_agreement
from harness.metrics.catalog import BEST_OF_N_KL_ESTIMATE, VS_REFERENCE, VS_SFT, Comparison, Corpus, summarise
from harness.metrics.win_rate import win_points
from harness.tasks.common import TASK_PROMPT

logger = logging.getLogger(__name__)

# The training-temperature draws use seed + this: a prime far from any seed a suite lists, so that their stream
# never coincides with an evaluation's.
TRAIN_TEMPERATURE_SEED_OFFSET = 1_000_003
# Best-of-n's candidates use seed + this: another such prime, so that they share no draw with the SFT baseline's
# evaluation samples (seed), its draws at the training temperature (seed + the offset above) or another seed's.
BEST_OF_N_SEED_OFFSET = 2_000_003

GoldScorer = Callable[[list[str], list[str], list[bool]], list[float]]


@dataclass
class Evaluation:
    samples: list[dict]
    summary: dict[str, float]
    bleu_signature: str
    seconds: dict[str, float] = field(default_factory=dict)  # "generate" and "score" wall time
    completions_generated: int = 0  # every completion sampled: best-of-n's candidates and the draws at the
    # training temperature included
    # The draws at the training temperature behind kl_train_temperature (prompt_index, sample_index, completion,
    # stopped, kl, kl_k1, kl_k3); empty when none were drawn.
    train_temperature_samples: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class BestOf:
    """Evaluate the best-of-n policy of a checkpoint: each sample is the best of `n` draws by the training
    reward the suite's online algorithms optimise (harness.rewards.training_reward_function)."""

    n: int
    reward_source: str  # "proxy": the reward model minus the missing-stop penalty; "gold": the task's gold reward
    missing_stop_penalty: float


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
    for value, count in sorted(Counter(rewards).items()):
        sft = count / total
        best_of = ((below + count) / total) ** n - (below / total) ** n
        if best_of > 0.0:
            kl += best_of * math.log(best_of / sft)
        below += count
    return max(kl, 0.0)  # a sum of terms that is >= 0 exactly, rounding aside


def draws_at_train_temperature(config, train_temperature: float | None, best_of: BestOf | None) -> bool:
    """Whether the evaluation draws a second set of samples at the training temperature (module docstring)."""
    return (train_temperature is not None and best_of is None
            and not math.isclose(train_temperature, config.temperature))


def evaluate_checkpoint(
    *,
    checkpoint: Path,
    reference_dir: Path,
    reward_model_dir: Path,
    eval_rows: list[dict],
    config,
    seed: int,
    device: str,
    generator,
    gold_scorer: GoldScorer | None = None,
    baseline_samples: list[dict] | None = None,
    judge=None,
    judge_vs_sft: bool = True,
    judge_vs_reference: bool = True,
    train_temperature: float | None = None,
    best_of: BestOf | None = None,
) -> Evaluation:
    """Sample `config.samples_per_prompt` completions per evaluation prompt from `checkpoint` and score them;
    with `best_of`, each of them is the best of `best_of.n` draws (module docstring).

    gold_scorer: callable(prompts, completions, stopped) -> scores, or None where there is no gold reward.
    baseline_samples: the SFT baseline's samples (its eval/samples.jsonl rows) for the comparisons against SFT,
    aligned by (prompt_index, sample_index); None for the baseline itself. judge: an object with
    compare(prompts, candidates, others, candidates_stopped, others_stopped) -> list[PairVerdict]
    (harness.judges.base), asked against SFT (`judge_vs_sft`, where there are baseline samples) and against the
    references (`judge_vs_reference`, rows with a non-empty reference). train_temperature: the suite's training
    temperature, for kl_train_temperature.
    """
    import torch

    from harness.generation.base import SamplingSettings
    from harness.metrics.kl import response_kl
    from harness.metrics.text import rouge
    from harness.modeling import load_causal_lm, load_tokenizer, resolve_device
    from harness.rewards import ProxyRewardModel, as_completion

    device = resolve_device(device)
    rows = eval_rows[: config.num_prompts] if config.num_prompts else eval_rows
    if not rows:
        raise ValueError("the task has no evaluation prompts")
    if best_of and best_of.reward_source == "gold" and gold_scorer is None:
        raise ValueError("best-of-n selects by the gold reward (reward.source gold) but there is no gold scorer")
    prompts = [row["prompt"] for row in rows]
    sampling = SamplingSettings(config.temperature, config.top_k, config.top_p, config.max_new_tokens)

    n = best_of.n if best_of else 1
    started = time.perf_counter()
    draw_seed = seed + BEST_OF_N_SEED_OFFSET if best_of else seed  # disjoint from the baseline (docstring)
    generations = generator.generate(checkpoint, prompts, config.samples_per_prompt * n, sampling, draw_seed)
    generate_seconds = time.perf_counter() - started
    extra_generate_seconds = 0.0  # the draws at the training temperature, taken while scoring
    completions_generated = len(generations)
    scoring_started = time.perf_counter()

    completions = [as_completion(g.text) for g in generations]
    stopped = [g.stopped for g in generations]
    sample_prompts = [prompts[g.prompt_index] for g in generations]

    gold = gold_scorer(sample_prompts, completions, stopped) if gold_scorer else None
    proxy = ProxyRewardModel(reward_model_dir, device, config.batch_size).score(sample_prompts, completions, stopped)
    candidates: list[dict] = []
    train_temperature_samples: list[dict] = []
    if best_of:
        scores = _selection_rewards(best_of, proxy, gold, stopped)
        kl_estimates = _kl_estimates_by_prompt(generations, scores, n)
        kept, candidates = _keep_best(generations, scores, gold, n)
        generations = [dataclasses.replace(generations[i], sample_index=generations[i].sample_index // n) for i in kept]
        completions, stopped, sample_prompts = ([values[i] for i in kept] for values in (completions, stopped, sample_prompts))
        proxy = [proxy[i] for i in kept]
        gold = [gold[i] for i in kept] if gold is not None else None
        # No forward passes: the best-of-n policy has no model; its KL is the bound, the same for every sample,
        # and beside it each sample carries its prompt's estimate.
        kl = {"kl": [best_of_n_kl_bound(n)] * len(kept),
              BEST_OF_N_KL_ESTIMATE: [kl_estimates[g.prompt_index] for g in generations]}
    else:
        pad_id = load_tokenizer(checkpoint).pad_token_id
        policy, reference = load_causal_lm(checkpoint, device), load_causal_lm(reference_dir, device)

        def kl_of(draws, temperature: float) -> dict[str, list[float]]:
            with torch.inference_mode():
                return response_kl(policy, reference, [g.prompt_ids for g in draws], [g.completion_ids for g in draws],
                                   pad_id=pad_id, temperature=temperature, batch_size=config.batch_size)

        kl = kl_of(generations, config.temperature)
        if draws_at_train_temperature(config, train_temperature, best_of):
            # Untruncated: the exact KL at T is the KL of the distribution these responses are drawn from.
            at_train = SamplingSettings(train_temperature, 0, 1.0, config.max_new_tokens)
            drawing = time.perf_counter()
            draws = generator.generate(checkpoint, prompts, config.samples_per_prompt, at_train,
                                       seed + TRAIN_TEMPERATURE_SEED_OFFSET)
            extra_generate_seconds = time.perf_counter() - drawing
            completions_generated += len(draws)
            train_kl = kl_of(draws, train_temperature)
            train_temperature_samples = [
                {"prompt_index": g.prompt_index, "sample_index": g.sample_index, "completion": as_completion(g.text),
                 "stopped": g.stopped, **{name: values[i] for name, values in train_kl.items()}}
                for i, g in enumerate(draws)
            ]
    references = [as_completion(rows[g.prompt_index]["reference"]) for g in generations]
    rouge_scores = rouge([c.strip() for c in completions], [r.strip() for r in references])
    # Length in generated tokens without the EOS token, so stopping itself costs no length.
    lengths = [len(g.completion_ids) - (1 if g.stopped else 0) for g in generations]

    samples = [
        {
            "prompt_index": g.prompt_index,
            "sample_index": g.sample_index,
            "prompt": sample_prompts[i],
            "completion": completions[i],
            "reference": references[i],
            **({"gold_reward": gold[i]} if gold is not None else {}),
            "proxy_reward": proxy[i],
            **{name: values[i] for name, values in kl.items()},
            "rouge1": rouge_scores["rouge1"][i],
            "rouge2": rouge_scores["rouge2"][i],
            "rougeL": rouge_scores["rougeL"][i],
            "length": lengths[i],
            "stopped": stopped[i],
        }
        for i, g in enumerate(generations)
    ]
    comparisons = []
    if baseline_samples is not None:
        comparisons.append(_against_sft(samples, baseline_samples, gold is not None, judge_vs_sft))
    comparisons.append(_against_references(samples, gold_scorer if gold is not None else None, judge_vs_reference))
    _judge_and_record(samples, [c for c in comparisons if c is not None], judge, _judge_prompts(rows, samples, judge))
    for sample, record in zip(samples, candidates):
        sample.update(record)

    corpus = Corpus(samples, train_temperature_samples or None)
    summary = summarise(corpus)
    seconds = {"generate": generate_seconds + extra_generate_seconds,
               "score": time.perf_counter() - scoring_started - extra_generate_seconds}
    return Evaluation(samples, summary, corpus.bleu[1], seconds, completions_generated, train_temperature_samples)


# --- pairwise comparisons ---------------------------------------------------------------------------


@dataclass
class _Pairs:
    """One comparison of the samples at `indices` with `others` (SFT's samples or the references)."""

    comparison: Comparison
    indices: list[int]
    others: list[str]
    others_stopped: list[bool]
    gold_points: list[float] | None
    judged: bool


def _against_sft(samples: list[dict], baseline_samples: list[dict], has_gold: bool, judged: bool) -> _Pairs:
    """Each sample against the baseline's sample at the same (prompt, sample slot), with gold points where there
    is gold (catalog.VS_SFT's fields)."""
    others = _aligned_baseline(samples, baseline_samples)
    gold_points = None
    if has_gold:
        if any(other.get("gold_reward") is None for other in others):
            raise ValueError("the SFT baseline's samples have no gold_reward: evaluate the baseline with the same "
                             "gold scorer before the win rate against it")
        gold_points = win_points([s["gold_reward"] for s in samples], [o["gold_reward"] for o in others])
    return _Pairs(VS_SFT, list(range(len(samples))), [o["completion"] for o in others],
                  [bool(o["stopped"]) for o in others], gold_points, judged)


def _aligned_baseline(samples: list[dict], baseline_samples: list[dict]) -> list[dict]:
    """The baseline's sample at each sample's (prompt_index, sample_index): by key, not by list position, so a
    file in another order still pairs every completion with its own slot."""
    by_slot = {(b["prompt_index"], b["sample_index"]): b for b in baseline_samples}
    others = []
    for sample in samples:
        key = (sample["prompt_index"], sample["sample_index"])
        other = by_slot.get(key)
        if other is None:
            raise ValueError(
                f"the SFT baseline's samples have no completion for prompt {key[0]}, sample {key[1]}: the baseline "
                "was evaluated with other prompts or samples_per_prompt; evaluate it again with this configuration"
            )
        if other["prompt"] != sample["prompt"]:
            raise ValueError(f"the SFT baseline's prompt {key[0]} is not this evaluation's prompt {key[0]}: the two "
                             "were evaluated on different prompts")
        others.append(other)
    return others


def _against_references(samples: list[dict], gold_scorer: GoldScorer | None, judged: bool) -> _Pairs | None:
    """Each sample whose prompt has a non-empty reference against that reference (scored as a completion that
    stopped), with gold points where there is gold (catalog.VS_REFERENCE's fields); None when there is nothing
    to compare or nothing to compare with."""
    if gold_scorer is None and not judged:
        return None
    indices = [i for i, sample in enumerate(samples) if sample["reference"].strip()]
    if not indices:
        return None
    prompts = [samples[i]["prompt"] for i in indices]
    references = [samples[i]["reference"] for i in indices]
    gold_points = None
    if gold_scorer is not None:
        # Each distinct (prompt, reference) once: a prompt's samples all face the same reference.
        distinct = list(dict.fromkeys(zip(prompts, references)))
        scores = dict(zip(distinct, gold_scorer([p for p, _ in distinct], [r for _, r in distinct],
                                                [True] * len(distinct))))
        gold_points = win_points([samples[i]["gold_reward"] for i in indices],
                                  [scores[pair] for pair in zip(prompts, references)])
    return _Pairs(VS_REFERENCE, indices, references, [True] * len(indices), gold_points, judged)


def _judge_prompts(rows: list[dict], samples: list[dict], judge) -> list[str]:
    """Each sample's request as the judge is shown it: a model judge reads it as the task wrote it, not in the
    policy's chat markup; the gold judge (reads_task_prompt False) the prompt the policy answered, which is the
    key the gold scorer scores by, as for the gold win rates (a chat-templated gsm8k knows only that one in a
    process that did not build the task data)."""
    if not getattr(judge, "reads_task_prompt", True):
        return [sample["prompt"] for sample in samples]
    return [rows[sample["prompt_index"]].get(TASK_PROMPT, sample["prompt"]) for sample in samples]


def _judge_and_record(samples: list[dict], comparisons: list[_Pairs], judge, judge_prompts: list[str]) -> None:
    """Ask the judge every comparison in one call (a vLLM judge starts one engine per call), then write each
    comparison's fields into the samples."""
    asked = [pairs for pairs in comparisons if judge is not None and pairs.judged]
    verdicts: list = []
    if asked:
        verdicts = judge.compare(
            [judge_prompts[i] for pairs in asked for i in pairs.indices],
            [samples[i]["completion"] for pairs in asked for i in pairs.indices],
            [other for pairs in asked for other in pairs.others],
            [samples[i]["stopped"] for pairs in asked for i in pairs.indices],
            [stopped for pairs in asked for stopped in pairs.others_stopped],
        )
        expected = sum(len(pairs.indices) for pairs in asked)
        if len(verdicts) != expected:
            raise ValueError(f"the judge returned {len(verdicts)} verdicts for {expected} comparisons")
    start = 0
    for pairs in comparisons:
        own = None
        if any(pairs is judged for judged in asked):
            own, start = verdicts[start : start + len(pairs.indices)], start + len(pairs.indices)
        _record_comparison(samples, pairs.indices, pairs.comparison, pairs.gold_points, own)


def _record_comparison(samples: list[dict], indices: list[int], comparison: Comparison,
                       gold_points: list[float] | None, verdicts: list | None) -> None:
    """Write one comparison's fields into samples[indices] (null into the other samples, so every row of the
    file has the same fields): the gold points where there is gold, the judge's verdict where there is a judge,
    and their agreement where there are both."""
    position = {index: rank for rank, index in enumerate(indices)}
    for index, sample in enumerate(samples):
        rank = position.get(index)
        if gold_points is not None:
            sample[comparison.gold_points] = None if rank is None else gold_points[rank]
        if verdicts is None:
            continue
        verdict = None if rank is None else verdicts[rank]
        sample[comparison.judge_points] = None if verdict is None else verdict.points
        sample[comparison.judge_probability] = None if verdict is None else verdict.candidate_probability
        sample[comparison.judge_orders_agree] = None if verdict is None else float(verdict.orders_agree)
        sample[comparison.judge_unparseable] = None if verdict is None else verdict.unparseable
        sample[comparison.judge_raw] = (None if verdict is None
                                        else [verdict.candidate_first.raw, verdict.candidate_second.raw])
        if gold_points is not None:
            sample[comparison.judge_gold_agreement] = (None if verdict is None
                                                       else gold_agreement(verdict.points, gold_points[rank]))


# --- best-of-n --------------------------------------------------------------------------------------


def _selection_rewards(best_of: BestOf, proxy: list[float], gold: list[float] | None,
                       stopped: list[bool]) -> list[float]:
    """What best-of-n maximises: the training reward of harness.rewards.training_reward_function, from the
    scores already computed here (the proxy minus the missing-stop penalty, or the gold reward, which already
    charges a missing stop)."""
    if best_of.reward_source == "gold":
        return list(gold)
    from harness.rewards import with_missing_stop_penalty

    return with_missing_stop_penalty(proxy, stopped, best_of.missing_stop_penalty)


def _kl_estimates_by_prompt(generations, scores: list[float], n: int) -> dict[int, float]:
    """best_of_n_kl_estimate of each prompt from the selection rewards of all its candidates."""
    pools: dict[int, list[float]] = {}
    for g, score in zip(generations, scores, strict=True):
        pools.setdefault(g.prompt_index, []).append(score)
    return {prompt: best_of_n_kl_estimate(pool, n) for prompt, pool in pools.items()}


def _keep_best(generations, scores: list[float], gold: list[float] | None, n: int) -> tuple[list[int], list[dict]]:
    """For each (prompt, slot j), the index of the best of draws j*n .. j*n+n-1 by `scores`, the first of them
    on a tie; and per kept sample what the samples file records of its group, in draw order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for index, g in enumerate(generations):
        groups.setdefault((g.prompt_index, g.sample_index // n), []).append(index)
    kept, records = [], []
    for key in sorted(groups):
        members = sorted(groups[key], key=lambda index: generations[index].sample_index)
        best = max(range(len(members)), key=lambda position: scores[members[position]])  # max keeps the first of equals
        kept.append(members[best])
        record = {"best_of": n, "kept_candidate": best, "candidate_selection_rewards": [scores[i] for i in members]}
        if gold is not None:
            record["candidate_gold_rewards"] = [gold[index] for index in members]
        records.append(record)
    return kept, records
