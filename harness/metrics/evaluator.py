"""The one evaluator: every checkpoint of every algorithm is sampled and scored the same way (DESIGN §6).

Held-out prompts, N samples per prompt from the generator, then per sample: gold reward (the task's exact
reward), proxy reward (the reward model the online algorithms optimised), KL to the SFT reference computed
with transformers forward passes on the sampled token ids (exact over the vocabulary, with the k1 and k3
sums as cross-checks), ROUGE against the prompt's reference, length and stop; per checkpoint: BLEU with
sacrebleu's signature, distinct-n, and the win rate against the SFT baseline's samples.

Best-of-n (`best_of`, harness/algorithms/best_of_n.py): each sample is instead the best of n draws from the
checkpoint by the suite's training reward, every metric is computed on the kept samples, and the KL is the
analytic bound log n - (n-1)/n (there is no policy model to run forward passes on).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class Evaluation:
    samples: list[dict]
    summary: dict[str, float]
    bleu_signature: str
    seconds: dict[str, float] = field(default_factory=dict)  # "generate" and "score" wall time
    completions_generated: int = 0  # every completion sampled, best-of-n's candidates included


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


def evaluate_checkpoint(
    *,
    checkpoint: Path,
    reference_dir: Path,
    reward_model_dir: Path,
    task_module,
    eval_rows: list[dict],
    config,
    seed: int,
    device: str,
    generator,
    baseline_gold: list[float] | None = None,
    best_of: BestOf | None = None,
) -> Evaluation:
    """Sample `config.samples_per_prompt` completions per evaluation prompt from `checkpoint` and score them;
    with `best_of`, each of them is the best of `best_of.n` draws (module docstring)."""
    import torch

    from harness.generation.base import SamplingSettings
    from harness.metrics.kl import response_kl
    from harness.metrics.text import bleu, distinct_n, rouge
    from harness.metrics.win_rate import win_rate
    from harness.modeling import load_causal_lm, load_tokenizer, resolve_device
    from harness.rewards import ProxyRewardModel, as_completion

    device = resolve_device(device)
    rows = eval_rows[: config.num_prompts] if config.num_prompts else eval_rows
    if not rows:
        raise ValueError("the task has no evaluation prompts")
    prompts = [row["prompt"] for row in rows]
    sampling = SamplingSettings(config.temperature, config.top_k, config.top_p, config.max_new_tokens)

    n = best_of.n if best_of else 1
    started = time.perf_counter()
    generations = generator.generate(checkpoint, prompts, config.samples_per_prompt * n, sampling, seed)
    generated = time.perf_counter()
    completions_generated = len(generations)

    completions = [as_completion(g.text) for g in generations]
    stopped = [g.stopped for g in generations]
    sample_prompts = [prompts[g.prompt_index] for g in generations]

    has_gold = task_module.HAS_GOLD_REWARD
    nan = float("nan")
    gold = [task_module.gold_reward(p, c, s) if has_gold else nan for p, c, s in zip(sample_prompts, completions, stopped)]
    proxy = ProxyRewardModel(reward_model_dir, device, config.batch_size).score(sample_prompts, completions, stopped)
    candidates: list[dict] = []
    if best_of:
        scores = _selection_rewards(best_of, proxy, gold, stopped)
        kept, candidates = _keep_best(generations, scores, gold, n)
        generations = [dataclasses.replace(generations[i], sample_index=generations[i].sample_index // n) for i in kept]
        completions, stopped, sample_prompts = ([values[i] for i in kept] for values in (completions, stopped, sample_prompts))
        gold, proxy = [gold[i] for i in kept], [proxy[i] for i in kept]
        # No forward passes: the best-of-n policy has no model; its KL is the bound, the same for every sample.
        kl = {"kl": [best_of_n_kl_bound(n)] * len(kept)}
    else:
        pad_id = load_tokenizer(checkpoint).pad_token_id
        policy, reference = load_causal_lm(checkpoint, device), load_causal_lm(reference_dir, device)
        with torch.inference_mode():
            kl = response_kl(
                policy,
                reference,
                [g.prompt_ids for g in generations],
                [g.completion_ids for g in generations],
                pad_id=pad_id,
                temperature=config.temperature,
                batch_size=config.batch_size,
            )
    references = [rows[g.prompt_index]["reference"] for g in generations]
    hypotheses = [c.strip() for c in completions]
    reference_texts = [r.strip() for r in references]
    rouge_scores = rouge(hypotheses, reference_texts)
    bleu_score, bleu_signature = bleu(hypotheses, reference_texts)
    # Length in generated tokens without the EOS token, so stopping itself costs no length.
    lengths = [len(g.completion_ids) - (1 if g.stopped else 0) for g in generations]

    samples = [
        {
            "prompt_index": g.prompt_index,
            "sample_index": g.sample_index,
            "prompt": sample_prompts[i],
            "completion": completions[i],
            "reference": references[i],
            "gold_reward": gold[i],
            "proxy_reward": proxy[i],
            **{name: values[i] for name, values in kl.items()},
            "rouge1": rouge_scores["rouge1"][i],
            "rouge2": rouge_scores["rouge2"][i],
            "rougeL": rouge_scores["rougeL"][i],
            "length": lengths[i],
            "stopped": stopped[i],
            **(candidates[i] if best_of else {}),
        }
        for i, g in enumerate(generations)
    ]
    summary = {
        "gold_reward": _mean(gold),
        "proxy_reward": _mean(proxy),
        **{name: _mean(values) for name, values in kl.items()},
        "bleu": bleu_score,
        "rouge1": _mean(rouge_scores["rouge1"]),
        "rouge2": _mean(rouge_scores["rouge2"]),
        "rougeL": _mean(rouge_scores["rougeL"]),
        "length": _mean(lengths),
        "stop_rate": _mean([float(s) for s in stopped]),
        "distinct_1": distinct_n(hypotheses, 1),
        "distinct_2": distinct_n(hypotheses, 2),
    }
    if not has_gold:
        del summary["gold_reward"]
    if baseline_gold is not None and has_gold:
        # Index-aligned: the same (prompt, sample index) pairs, so the comparison is per prompt.
        summary["win_rate_vs_sft"] = win_rate(gold, baseline_gold)
    scored = time.perf_counter()
    return Evaluation(samples, summary, bleu_signature, {"generate": generated - started, "score": scored - generated},
                      completions_generated)


def _selection_rewards(best_of: BestOf, proxy: list[float], gold: list[float], stopped: list[bool]) -> list[float]:
    """What best-of-n maximises: the training reward of harness.rewards.training_reward_function, from the
    scores already computed here (the proxy minus the missing-stop penalty, or the gold reward, which already
    charges a missing stop)."""
    if best_of.reward_source == "gold":
        return list(gold)
    from harness.rewards import with_missing_stop_penalty

    return with_missing_stop_penalty(proxy, stopped, best_of.missing_stop_penalty)


def _keep_best(generations, scores: list[float], gold: list[float], n: int) -> tuple[list[int], list[dict]]:
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
        records.append({
            "best_of": n,
            "kept_candidate": best,
            "candidate_selection_rewards": [scores[index] for index in members],
            "candidate_gold_rewards": [gold[index] for index in members],
        })
    return kept, records


def _mean(values) -> float:
    values = list(values)
    return float(sum(values) / len(values)) if values else float("nan")
