"""Best-of-n: n samples from the SFT policy, the one the training reward scores highest kept; no training.

The inference-time baseline of RLHF comparisons (Stiennon et al. 2020, "Learning to summarize from human
feedback", arXiv:2009.01325; Gao et al. 2022, "Scaling laws for reward model overoptimization",
arXiv:2210.10760, whose best-of-n curves are a reference point for reward against KL). Its KL to the
reference is reported as the analytic bound log n - (n-1)/n (Beirami et al. 2024, "Theoretical guarantees on
the best-of-n alignment policy", arXiv:2401.01879, Theorem 3.1; the earlier papers used it as the exact
value): there is no policy model to run forward passes on. Beside it, eval/best_of_n_kl_estimate estimates the
KL from the candidates already drawn (below).

What is implemented: for every evaluation sample (prompt, sample slot), `n` independent completions of the
prompt are drawn from the SFT checkpoint with the evaluator's own sampling settings, each is scored,
and the one with the highest training reward is kept; every other metric (gold reward, proxy reward, length,
stop rate, BLEU, ROUGE, distinct-n, win rate against SFT) is computed on the kept completions exactly as for
any checkpoint. The sampling and selection are a generation strategy the evaluator calls
(harness.generation.strategies.BestOfN); `train` trains nothing and hands on the SFT checkpoint itself.

Choices and departures, each a decision of ours:
- Selection reward: the suite's training reward, the one every online algorithm optimises (reward.source):
  by default the proxy reward model's score minus `reward.missing_stop_penalty` for a completion without EOS
  (harness.rewards.training_reward_function); the task's gold reward under `reward.source=gold`. The issue
  and the papers select by the reward model's score alone; with the penalty best-of-n is charged for a
  truncated completion as the online algorithms are. The scores are the evaluator's own: the proxy score a
  candidate is selected by is the one eval/proxy_reward reports for it (one reward model pass, not two).
  Budget settings do not apply: nothing trains.
- Ties: the first of the tied completions in draw order is kept. The draws are exchangeable, so this is the
  uniformly random tie-break of the best-of-n policy's definition.
- KL: eval/kl is log n - (n-1)/n in nats for every prompt, an upper bound on KL(best-of-n || SFT), both at
  the evaluation's sampling settings (the cell is tagged record.TAG_KL_IS_BOUND). It comes close to the true
  value when every single completion has small probability under the SFT policy, and is loose where a few
  completions carry most of the mass (short completions from a small model: with two equally likely outcomes
  the true KL never exceeds log 2, whatever n; Beirami et al. §3). So best-of-n's points on a reward-versus-KL
  frontier sit at or to the right of where they belong. eval/kl_k1 and eval/kl_k3, sampled-token estimates,
  are not reported: the best-of-n policy's log-probabilities are not available. n = 1 is the SFT policy
  itself, KL exactly 0.
- KL estimate: eval/best_of_n_kl_estimate (harness.generation.strategies.best_of_n_kl_estimate) takes the
  empirical distribution F of a prompt's candidates' selection rewards (all of its sample slots' candidates)
  for the SFT policy's: best-of-n keeps a reward value v with probability F(v)^n - F(v-)^n against SFT's
  F(v) - F(v-), which gives KL(best-of-n || SFT) exactly for that distribution, ties included (they make it
  smaller than the bound); the mean over prompts is the metric. It is biased low where a prompt has few
  candidates (m distinct rewards give at most what a policy of m outcomes could), and it is the KL of the
  selection alone: best-of-n changes nothing but which reward values it keeps. eval/kl stays the bound.
- Samples: the n candidates of slot j of a prompt are the evaluator's draws j*n .. j*n+n-1 of that prompt
  (one `generate` call of samples_per_prompt x n per prompt) under the seed evaluation seed +
  harness.generation.strategies.BEST_OF_N_SEED_OFFSET: a stream disjoint from the SFT baseline's samples (the
  evaluation seed). With the evaluation seed itself, the vLLM backend (one random stream per (seed, prompt,
  draw)) made slot 0's candidates include the baseline's own sample 0, and a selection that knows its opponent
  beats it more often than the n/(n+1) of independent draws (0.875 instead of 0.800 at n = 4 when selecting
  by gold). So n = 1 is an independent evaluation of the SFT policy, not a copy of the baseline's.
- Cost: no training spend (zeros, no optimizer steps); the inference-time spend is logged at evaluation as
  cost/completions_per_answer = n and cost/eval_completions_generated (every candidate drawn), where n reward
  model scores per answer are the price of the method.
- No intermediate checkpoints (evaluation.checkpoints does not apply) and no LoRA (SPEC.trains_policy is False).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from harness import record
from harness.algorithms.spec import AlgorithmSpec
from harness.errors import require

logger = logging.getLogger(__name__)

SPEC = AlgorithmSpec(
    family=record.FAMILY_INFERENCE_TIME,
    kl_knob="n",  # candidates per answer: the bound log n - (n-1)/n grows with it
    kl_knob_raises_kl=True,
    describe_data=lambda config: (
        f"{config.n} samples from the SFT policy per answer, the one the training reward "
        "scores highest kept (no training)"
    ),
    trains_policy=False,  # nothing trains, nothing is logged per step: no curves, nothing watched
)


@dataclass
class Config:
    n: int = 4
    # completions drawn from the SFT policy per evaluation answer; the best by the training reward is kept

    def __post_init__(self):
        require(self.n >= 1, "n", "must be >= 1")


def train(context):
    """Nothing to train and nothing logged: the SFT checkpoint is the policy best-of-n samples from, handed on
    as the cell's checkpoint without a copy; the evaluator does the sampling and selection."""
    from harness.algorithms.context import TrainResult

    return TrainResult(
        checkpoint_dir=context.base_dir,
        final_step=0,
        spend={
            record.COST_PROMPTS_SEEN: 0.0,
            record.COST_COMPLETIONS_GENERATED: 0.0,
            record.COST_TOKENS_GENERATED: 0.0,
            record.COST_OPTIMIZER_STEPS: 0.0,
        },
    )
